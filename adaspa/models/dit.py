"""A tiny MM-DiT for text-to-video in pixel space, built like the real ones.

Text tokens are joined with video tokens in one self-attention, text first as in
CogVideoX; video tokens carry a 3D rotary embedding over (frame, row, column);
queries and keys are RMS-normalized per head; the diffusion time enters through
adaLN (one shared projection plus a learned per-block table, as in PixArt-alpha,
which keeps the parameter count low enough to ship the weights).

Every layer's attention is a swappable callable `attn(q, k, v, *, step) -> out`
on `[B, H, L, D]` tensors: dense SDPA by default, `adaspa.AdaSpaAttention` per
layer after `model.set_attention(AdaSpaConfig(...))`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import AdaSpaConfig
from ..layer import AdaSpaAttention


@dataclass(frozen=True)
class DiTConfig:
    """Sizes of `TinyVideoDiT`.

    `frames`, `height`, `width` are the training clip size in pixels; the model
    also accepts other sizes divisible by `patch` (RoPE positions are absolute).
    `pooled_text` adds the mean of the caption's token embeddings to the adaLN
    conditioning (as SD3 adds its pooled text embedding), a direct global path
    for the caption besides the joint attention. The joint sequence is
    `L = text_len + frames * (height / patch) * (width / patch)` tokens, text first;
    each attention layer sees `q, k, v: [B, heads, L, dim / heads]`.

    Example:
        >>> DiTConfig().video_tokens(), DiTConfig().head_dim
        (2048, 32)
    """

    dim: int = 256
    depth: int = 8
    heads: int = 8
    mlp_ratio: float = 2.0
    patch: int = 2
    channels: int = 3
    frames: int = 8
    height: int = 32
    width: int = 32
    text_len: int = 8
    vocab_size: int = 19
    rope_theta: float = 100.0
    pooled_text: bool = True

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    def video_tokens(self, frames: Optional[int] = None, height: Optional[int] = None,
                     width: Optional[int] = None) -> int:
        """Number of video tokens for a clip of the given (or training) size."""
        f, h, w = frames or self.frames, height or self.height, width or self.width
        return f * (h // self.patch) * (w // self.patch)


class DenseAttention:
    """Plain dense attention, `F.scaled_dot_product_attention` on `[B, H, L, D]`; ignores `step`.

    Example:
        >>> q = torch.randn(1, 2, 10, 8)
        >>> DenseAttention()(q, q, q, step=0).shape
        torch.Size([1, 2, 10, 8])
    """

    def __call__(self, q, k, v, *, step=None):
        return F.scaled_dot_product_attention(q, k, v)

    def __repr__(self):
        return "DenseAttention()"


def rope_angles(config: DiTConfig, frames: int, rows: int, cols: int, device=None) -> torch.Tensor:
    """Rotation angles `[text_len + frames*rows*cols, head_dim // 2]`; text tokens get angle 0.

    The head dimension is split between the three axes (a quarter to frames,
    the rest shared by rows and columns, every share even).
    """
    half = config.head_dim // 2
    n_frame = max(1, half // 4)
    n_row = (half - n_frame) // 2
    n_col = half - n_frame - n_row

    def freqs(n):
        return config.rope_theta ** (-torch.arange(n, device=device, dtype=torch.float64) / n)

    f, r, c = torch.meshgrid(
        torch.arange(frames, device=device, dtype=torch.float64),
        torch.arange(rows, device=device, dtype=torch.float64),
        torch.arange(cols, device=device, dtype=torch.float64),
        indexing="ij",
    )
    video = torch.cat([
        f.reshape(-1, 1) * freqs(n_frame),
        r.reshape(-1, 1) * freqs(n_row),
        c.reshape(-1, 1) * freqs(n_col),
    ], dim=1)  # [N_video, half]
    text = torch.zeros(config.text_len, half, device=device, dtype=torch.float64)
    return torch.cat([text, video]).float()


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate pairs `(x[..., i], x[..., i + D/2])` of `x [B, H, L, D]` by `angles [L, D/2]`."""
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features `[B, dim]` of diffusion times `t [B]` in [0, 1]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=-1)


class Block(nn.Module):
    """Joint text+video transformer block with adaLN modulation and QK RMSNorm."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        dim, hidden = config.dim, int(config.dim * config.mlp_ratio)
        self.heads = config.heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.RMSNorm(config.head_dim, eps=1e-6)
        self.k_norm = nn.RMSNorm(config.head_dim, eps=1e-6)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.modulation = nn.Parameter(torch.randn(6, dim) / math.sqrt(dim))

    def forward(self, x, mod, angles, attn, step):
        # x: [B, L, D]; mod: [B, 6, D]
        batch, length, dim = x.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = (mod + self.modulation).unbind(1)  # each [B, D]
        h = self.norm1(x) * (1 + scale1[:, None]) + shift1[:, None]
        # [3, B, H, L, Dh]
        q, k, v = self.qkv(h).view(batch, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        q = apply_rope(self.q_norm(q), angles).to(v.dtype)
        k = apply_rope(self.k_norm(k), angles).to(v.dtype)
        out = attn(q, k, v, step=step)  # [B, H, L, Dh]
        x = x + gate1[:, None] * self.proj(out.transpose(1, 2).reshape(batch, length, dim))
        h = self.norm2(x) * (1 + scale2[:, None]) + shift2[:, None]
        return x + gate2[:, None] * self.mlp(h)


class TinyVideoDiT(nn.Module):
    """Text-to-video MM-DiT predicting the rectified-flow velocity of a pixel-space clip.

    `forward(video [B, F, C, H, W], t [B], tokens [B, text_len], *, step=None)`
    returns the velocity `[B, F, C, H, W]`; `step` (the sampler's step index) is
    passed on to every layer's attention callable, which AdaSpa's schedule needs.

    Example:
        >>> model = TinyVideoDiT(DiTConfig(dim=32, depth=2, heads=2, frames=2, height=8, width=8))
        >>> video = torch.randn(1, 2, 3, 8, 8)
        >>> model(video, torch.rand(1), torch.zeros(1, 8, dtype=torch.long)).shape
        torch.Size([1, 2, 3, 8, 8])
    """

    def __init__(self, config: DiTConfig = DiTConfig()):
        super().__init__()
        if config.dim % config.heads or (config.dim // config.heads) % 2:
            raise ValueError(f"config.dim={config.dim} must split into {config.heads} heads of even size")
        self.config = config
        dim, patch_dim = config.dim, config.channels * config.patch ** 2
        self.patch_embed = nn.Linear(patch_dim, dim)
        self.text_embed = nn.Embedding(config.vocab_size, dim)
        self.text_pos = nn.Parameter(torch.randn(config.text_len, dim) * 0.02)
        self.time_mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_mod = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        if config.pooled_text:
            self.text_pool = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.out_modulation = nn.Parameter(torch.randn(2, dim) / math.sqrt(dim))
        self.out = nn.Linear(dim, patch_dim)
        nn.init.zeros_(self.time_mod[1].weight)
        nn.init.zeros_(self.time_mod[1].bias)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.attention: list = [DenseAttention() for _ in range(config.depth)]

    def set_attention(self, spec="dense") -> list:
        """Choose every layer's attention: `"dense"`, an `AdaSpaConfig` (one `AdaSpaAttention`
        per layer), or a factory `layer_index -> attn(q, k, v, *, step)`. Returns the callables.

        An `AdaSpaConfig` gets the model's text layout (`text_len`, text first) filled in.

        Example:
            >>> model = TinyVideoDiT(DiTConfig(dim=32, depth=2, heads=2))
            >>> model.set_attention(lambda i: DenseAttention())
            [DenseAttention(), DenseAttention()]
        """
        if isinstance(spec, str):
            if spec != "dense":
                raise ValueError(f"attention must be 'dense', an AdaSpaConfig or a factory, got {spec!r}")
            self.attention = [DenseAttention() for _ in range(self.config.depth)]
        elif isinstance(spec, AdaSpaConfig):
            config = dataclasses.replace(spec, text_len=self.config.text_len, text_position="first")
            self.attention = [AdaSpaAttention(config) for _ in range(self.config.depth)]
        elif callable(spec):
            self.attention = [spec(i) for i in range(self.config.depth)]
        else:
            raise TypeError(f"attention must be 'dense', an AdaSpaConfig or a callable factory, "
                            f"got {type(spec).__name__}")
        return self.attention

    def reset_attention(self) -> None:
        """Forget per-clip attention state (masks, cached LSE) before a new sample."""
        for attn in self.attention:
            reset = getattr(attn, "reset", None)
            if reset is not None:
                reset()

    def patchify(self, video: torch.Tensor) -> torch.Tensor:
        """`[B, F, C, H, W]` -> tokens `[B, F*(H/p)*(W/p), C*p*p]` in (frame, row, column) order."""
        b, f, c, h, w = video.shape
        p = self.config.patch
        x = video.reshape(b, f, c, h // p, p, w // p, p).permute(0, 1, 3, 5, 2, 4, 6)
        return x.reshape(b, f * (h // p) * (w // p), c * p * p)

    def unpatchify(self, tokens: torch.Tensor, frames: int, height: int, width: int) -> torch.Tensor:
        """Inverse of `patchify`."""
        p, c = self.config.patch, self.config.channels
        b = tokens.shape[0]
        x = tokens.reshape(b, frames, height // p, width // p, c, p, p).permute(0, 1, 4, 2, 5, 3, 6)
        return x.reshape(b, frames, c, height, width)

    def forward(self, video: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor, *, step=None) -> torch.Tensor:
        if video.dim() != 5:
            raise ValueError(f"video must be [B, F, C, H, W], got shape {tuple(video.shape)}")
        b, f, c, h, w = video.shape
        p = self.config.patch
        if c != self.config.channels or h % p or w % p:
            raise ValueError(f"video must have {self.config.channels} channels and H, W divisible by {p}, "
                             f"got shape {tuple(video.shape)}")
        if tokens.shape != (b, self.config.text_len):
            raise ValueError(f"tokens must be [B={b}, text_len={self.config.text_len}], got {tuple(tokens.shape)}")
        text = self.text_embed(tokens) + self.text_pos  # [B, T, D]
        x = torch.cat([text, self.patch_embed(self.patchify(video))], dim=1)  # [B, T + N, D]
        cond = self.time_mlp(timestep_embedding(t.expand(b), self.config.dim).to(text.dtype))  # [B, D]
        if self.config.pooled_text:
            present = (tokens != 0).unsqueeze(-1).to(text.dtype)  # [B, T, 1]; <pad> is id 0
            pooled = (self.text_embed(tokens) * present).sum(1) / present.sum(1).clamp(min=1)  # [B, D]
            cond = cond + self.text_pool(pooled)
        mod = self.time_mod(cond).view(b, 6, self.config.dim)  # [B, 6, D]
        angles = rope_angles(self.config, f, h // p, w // p, device=video.device)  # [L, Dh/2]
        for block, attn in zip(self.blocks, self.attention):
            x = block(x, mod, angles, attn, step)
        shift, scale = (cond[:, None] + self.out_modulation).unbind(1)  # [B, D] each
        x = self.norm_out(x[:, self.config.text_len:]) * (1 + scale[:, None]) + shift[:, None]
        return self.unpatchify(self.out(x), f, h, w)
