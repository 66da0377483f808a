"""Synthetic video-DiT queries, keys and values with hierarchical, blockified attention.

Real video DiTs need gigabytes of weights; the structure AdaSpa exploits does
not. This module builds `q, k, v` over a `(frames, height, width)` latent grid
plus text tokens whose attention maps look like the paper's Fig. 2: text and
video form separate regions, video-video splits into frame x frame regions, and
each head concentrates its mass in a few blocks of them.

Tokens are in the model's own order: video frame-major (`frame, row, col`),
with the text block first (CogVideoX) or last (HunyuanVideo). Each head is one
of four kinds:

- `"spatial"`: attends within its own frame, most to nearby `(row, col)`;
- `"temporal"`: attends to the same `(row, col)` in every frame;
- `"sink"`: attends to the text tokens and to the first token of every frame,
  over a weaker local bias (single key tokens that mean-pooling dilutes, which
  is where pooled-Q/K estimates go wrong);
- `"diffuse"`: weak structure, close to uniform (the heads that need a lower
  sparsity, which is what the head-adaptive tiers are for).

Construction: in a "logit space" every query and key is a sum of components,
each placed in its own slice of the head dimension so that their dot products add:

    logit(i, j) = w_frame * <code(frame_i), code(frame_j)>        (same-frame bonus)
                + w_pos * (K_row(row_i - row_j) + K_col(col_i - col_j))   (locality)
                + w_sink * [j is a sink token]                     (text and frame sinks)
                + noise

`code` are orthonormal frame codes (random unit vectors when frames outnumber
the slice), `K_row`, `K_col` are Gaussian kernels of length scale `ell` built
from Fourier features (with few dimensions a sharp kernel gets sidelobes at
far positions, as real heads do), and `w_*`, `ell` depend on the head kind (`HEAD_KIND_WEIGHTS`).
Finally `q` and `k` are multiplied by `head_dim ** 0.25`, so the model's
`scale = 1/sqrt(head_dim)` turns `q . k` back into those logits.

Drift over denoising steps: `synthetic_qkv(..., step=t)` adds
`drift * rms(x) * ((cos(phi_t) - 1) * N1 + sin(phi_t) * N2)`, `phi_t = (pi/2) t / (num_steps - 1)`,
with fixed per-tensor Gaussian directions `N1`, `N2`. Step 0 is the base
sample; consecutive steps differ by about `drift * pi / (2 (num_steps - 1))`
of the tensor's scale, so LSE and pattern change slowly but not at all zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional, Tuple

import torch

__all__ = ["HEAD_KINDS", "HEAD_KIND_WEIGHTS", "SyntheticVideoConfig", "VideoTokenLayout", "synthetic_qkv",
           "video_token_layout"]

HEAD_KINDS = ("spatial", "temporal", "sink", "diffuse")

HEAD_KIND_WEIGHTS = {
    # kind: (w_frame, w_pos, ell, w_sink) — logits, ell in grid cells
    "spatial": (6.0, 3.0, 2.5, 1.0),
    "temporal": (0.0, 6.0, 0.8, 1.0),
    "sink": (2.0, 3.0, 1.5, 10.0),
    "diffuse": (0.5, 0.5, 4.0, 0.5),
}
"""Per head kind: same-frame weight, locality weight, locality length scale (grid cells), sink weight."""


@dataclass(frozen=True)
class SyntheticVideoConfig:
    """Shape and structure of a synthetic video-DiT attention workload, `q, k, v: [B, H, L, D]`.

    Attributes:
        batch, heads, head_dim: the `B`, `H`, `D` of `q, k, v` (`head_dim >= 8`).
        frames, height, width: the latent video grid; `frames * height * width`
            video tokens, frame-major.
        text_len: text tokens (0 for Wan-style self-attention without text).
        text_position: `"first"` (CogVideoX) or `"last"` (HunyuanVideo).
        head_kinds: one of `HEAD_KINDS` per head, or None for the repeating mix
            `spatial, temporal, sink, diffuse, spatial, ...`.
        noise: standard deviation of the random logit noise (query-key pairs).
        drift: how far `q, k, v` move over the `num_steps` denoising steps, in units of
            their own scale (0 keeps every step identical).
        num_steps: denoising steps; `step` runs over `0 .. num_steps - 1`.

    Example:
        >>> cfg = SyntheticVideoConfig(heads=4, frames=2, height=4, width=8, text_len=16)
        >>> cfg.seq_len, cfg.tokens_per_frame, cfg.kinds
        (80, 32, ('spatial', 'temporal', 'sink', 'diffuse'))
    """

    batch: int = 1
    heads: int = 8
    head_dim: int = 64
    frames: int = 4
    height: int = 16
    width: int = 16
    text_len: int = 0
    text_position: str = "last"
    head_kinds: Optional[Tuple[str, ...]] = None
    noise: float = 0.5
    drift: float = 0.1
    num_steps: int = 50

    def __post_init__(self):
        for name in ("batch", "heads", "frames", "height", "width", "num_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if isinstance(self.head_dim, bool) or not isinstance(self.head_dim, int) or self.head_dim < 8:
            raise ValueError(f"head_dim must be an int >= 8, got {self.head_dim!r}")
        if isinstance(self.text_len, bool) or not isinstance(self.text_len, int) or self.text_len < 0:
            raise ValueError(f"text_len must be an int >= 0, got {self.text_len!r}")
        if self.text_position not in ("first", "last"):
            raise ValueError(f"text_position must be 'first' or 'last', got {self.text_position!r}")
        for name in ("noise", "drift"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise ValueError(f"{name} must be a finite float >= 0, got {value!r}")
        if self.head_kinds is not None:
            kinds = tuple(self.head_kinds)
            if len(kinds) != self.heads:
                raise ValueError(f"head_kinds must name one kind per head ({self.heads}), got {len(kinds)}")
            unknown = sorted(set(kinds) - set(HEAD_KINDS))
            if unknown:
                raise ValueError(f"head_kinds must be drawn from {HEAD_KINDS}, got {unknown}")
            object.__setattr__(self, "head_kinds", kinds)

    @property
    def tokens_per_frame(self) -> int:
        return self.height * self.width

    @property
    def video_len(self) -> int:
        return self.frames * self.tokens_per_frame

    @property
    def seq_len(self) -> int:
        """`L = text_len + frames * height * width`."""
        return self.text_len + self.video_len

    @property
    def kinds(self) -> Tuple[str, ...]:
        """The kind of every head (`head_kinds`, or the default repeating mix)."""
        if self.head_kinds is not None:
            return self.head_kinds
        return tuple(HEAD_KINDS[h % len(HEAD_KINDS)] for h in range(self.heads))


class VideoTokenLayout(NamedTuple):
    """What every token index of a synthetic sequence is; each field `[L]`.

    `frame`, `row`, `col` are -1 on text tokens. `is_sink` marks the tokens sink
    heads attend to: every text token and the first token of every frame.

    Example:
        >>> lay = video_token_layout(SyntheticVideoConfig(frames=2, height=1, width=2, text_len=1))
        >>> lay.is_sink.tolist()
        [True, False, True, False, True]
    """

    is_text: torch.Tensor
    frame: torch.Tensor
    row: torch.Tensor
    col: torch.Tensor
    is_sink: torch.Tensor


def video_token_layout(config: SyntheticVideoConfig) -> VideoTokenLayout:
    """Map each token index to (text) or (frame, row, col), on the CPU.

    Example:
        >>> lay = video_token_layout(SyntheticVideoConfig(frames=2, height=2, width=3, text_len=2,
        ...                                                text_position="first"))
        >>> lay.frame.tolist()
        [-1, -1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
        >>> lay.col.tolist()[:8]
        [-1, -1, 0, 1, 2, 0, 1, 2]
    """
    if not isinstance(config, SyntheticVideoConfig):
        raise TypeError(f"config must be a SyntheticVideoConfig, got {type(config).__name__}")
    video = torch.arange(config.video_len)
    v_frame = video // config.tokens_per_frame
    v_row = (video % config.tokens_per_frame) // config.width
    v_col = video % config.width
    text = torch.full((config.text_len,), -1, dtype=torch.int64)

    def place(text_part, video_part):
        parts = (text_part, video_part) if config.text_position == "first" else (video_part, text_part)
        return torch.cat(parts)

    is_text = place(torch.ones(config.text_len, dtype=torch.bool), torch.zeros(config.video_len, dtype=torch.bool))
    frame, row, col = place(text, v_frame), place(text, v_row), place(text, v_col)
    is_sink = is_text | ((row == 0) & (col == 0))
    return VideoTokenLayout(is_text, frame, row, col, is_sink)


def _fourier_features(pos: torch.Tensor, ell: float, n_freq: int) -> torch.Tensor:
    """`[L, 2 n_freq]` features whose dot products approximate `exp(-(a - b)^2 / (2 ell^2))`.

    The frequencies are the `n_freq` midpoint quantiles of the kernel's spectral
    density (a half-normal of scale `1/ell`): a deterministic quadrature, so the
    kernel is the same for every seed and errs only where `n_freq` is too small
    to resolve it (far sidelobes of a sharp kernel).
    """
    u = (torch.arange(n_freq, dtype=torch.float64) + 0.5) / n_freq
    omega = (torch.distributions.Normal(0.0, 1.0).icdf(0.5 + 0.5 * u) / ell).to(torch.float32)  # [M]
    angle = pos.to(torch.float32)[:, None] * omega[None, :]  # [L, M]
    return torch.cat([angle.cos(), angle.sin()], dim=-1) / math.sqrt(n_freq)


def _frame_codes(frames: int, dim: int, g: torch.Generator) -> torch.Tensor:
    """`[frames, dim]` unit codes, orthonormal when `frames <= dim`."""
    codes = torch.randn(max(frames, dim), dim, generator=g)
    if frames <= dim:
        codes = torch.linalg.qr(codes.T).Q.T  # rows orthonormal
    return codes[:frames] / codes[:frames].norm(dim=-1, keepdim=True)


def _head_features(config: SyntheticVideoConfig, kind: str, lay: VideoTokenLayout,
                   g: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """Noise-free logit-space query and key features of one head, each `[L, D]`."""
    w_frame, w_pos, ell, w_sink = HEAD_KIND_WEIGHTS[kind]
    dim = config.head_dim
    d_frame = dim // 4
    n_freq = dim // 8  # per axis; rows and cols take 2 * n_freq dims each
    d_rest = dim - d_frame - 4 * n_freq  # >= 2 for dim >= 8: the sink slot and text codes
    video = ~lay.is_text
    vf = video.to(torch.float32)[:, None]

    frame_code = _frame_codes(config.frames, d_frame, g)[lay.frame.clamp(min=0)] * vf  # [L, d_frame]
    rows = _fourier_features(lay.row, ell, n_freq) * vf  # [L, 2 n_freq]
    cols = _fourier_features(lay.col, ell, n_freq) * vf  # [L, 2 n_freq]
    length = lay.is_text.shape[0]
    text_code = torch.randn(length, d_rest - 1, generator=g) * lay.is_text[:, None] * 0.5

    sink_q = torch.full((length, 1), math.sqrt(w_sink))  # [L, 1]
    sink_k = lay.is_sink.to(torch.float32)[:, None] * math.sqrt(w_sink)  # [L, 1]
    q = torch.cat([math.sqrt(w_frame) * frame_code, math.sqrt(w_pos) * rows, math.sqrt(w_pos) * cols,
                   sink_q, text_code], dim=-1)
    k = torch.cat([math.sqrt(w_frame) * frame_code, math.sqrt(w_pos) * rows, math.sqrt(w_pos) * cols,
                   sink_k, text_code], dim=-1)
    return q, k


def _drifted(x: torch.Tensor, drift: float, step: Optional[int], num_steps: int,
             g: torch.Generator) -> torch.Tensor:
    """`x` moved along a smooth per-step path; both directions are drawn even when unused,
    so the generator advances the same way for every `step`."""
    n1 = torch.randn(x.shape, generator=g)
    n2 = torch.randn(x.shape, generator=g)
    if step is None or drift == 0 or num_steps == 1:
        return x
    phi = (math.pi / 2) * step / (num_steps - 1)
    rms = x.pow(2).mean().sqrt()
    return x + drift * rms * ((math.cos(phi) - 1.0) * n1 + math.sin(phi) * n2)


def synthetic_qkv(
    config: SyntheticVideoConfig,
    *,
    step: Optional[int] = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device="cpu",
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Deterministic synthetic `q, k, v`, each `[B, H, L, D]`, `L = config.seq_len`.

    The same `(config, seed, step)` gives bit-identical tensors on every call
    (generated in float32 on the CPU with a seeded `torch.Generator`, then cast
    and moved). Batch elements share the head structure but get independent
    noise, like two prompts through the same layer. `step=None` and `step=0`
    both give the base sample.

    Args:
        config: the workload.
        step: denoising step in `0 .. config.num_steps - 1`, or None.
        seed: random seed (int).
        dtype: floating dtype of the outputs.
        device: device of the outputs.

    Returns:
        `(q, k, v)`, contiguous `[B, H, L, D]` of `dtype` on `device`.

    Example:
        >>> cfg = SyntheticVideoConfig(heads=2, head_dim=16, frames=2, height=4, width=4, text_len=8)
        >>> q, k, v = synthetic_qkv(cfg, step=3, seed=1)
        >>> tuple(q.shape)
        (1, 2, 40, 16)
        >>> bool((synthetic_qkv(cfg, step=3, seed=1)[0] == q).all())
        True
    """
    if not isinstance(config, SyntheticVideoConfig):
        raise TypeError(f"config must be a SyntheticVideoConfig, got {type(config).__name__}")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int)
                             or not 0 <= step < config.num_steps):
        raise ValueError(f"step must be None or an int in [0, num_steps={config.num_steps}), got {step!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")

    g = torch.Generator().manual_seed(seed)
    lay = video_token_layout(config)
    batch, length, dim = config.batch, config.seq_len, config.head_dim
    features = [_head_features(config, kind, lay, g) for kind in config.kinds]
    q = torch.stack([fq for fq, _ in features])[None].expand(batch, -1, -1, -1)  # [B, H, L, D]
    k = torch.stack([fk for _, fk in features])[None].expand(batch, -1, -1, -1)  # [B, H, L, D]
    # Independent noise on q and k of per-entry std s gives q.k noise of std s^2 sqrt(D).
    entry_std = math.sqrt(config.noise / math.sqrt(dim))
    shape = (batch, config.heads, length, dim)
    q = q + entry_std * torch.randn(shape, generator=g)
    k = k + entry_std * torch.randn(shape, generator=g)
    v = torch.randn(shape, generator=g)

    q = _drifted(q, config.drift, step, config.num_steps, g)
    k = _drifted(k, config.drift, step, config.num_steps, g)
    v = _drifted(v, config.drift, step, config.num_steps, g)
    # The model applies scale = 1/sqrt(D) to q.k; this undoes it so logits are as designed.
    gain = dim ** 0.25
    return tuple(x.to(dtype=dtype, device=device).contiguous() for x in (q * gain, k * gain, v))
