"""The patterns AdaSpa is compared with: static video masks, a pooled estimate, and the token top-k bound.

The paper (Fig. 5, Table 1) argues that static patterns (columns, windows,
same-frame or same-position masks, as in Sparse VideoGen) and approximate online
searches from mean-pooled Q/K blocks (MInference, SpargeAttn) keep the wrong
blocks, and that AdaSpa's exact block top-k comes close to the token-level top-k
upper bound. This module builds each of them so notebooks and fidelity tests can
measure the claim with `adaspa.selection.recall`.

Static masks are attention-gym style factories: a video layout
`(frames, height, width)` plus text gives a `BlockSparseMask`. Each family has one
integer structural parameter, `radius`:

- `column_mask`: the first `radius` video key blocks, for every query block
  (the "attention sink" columns);
- `window_mask`: key blocks within `radius` blocks of the query block (the diagonal band);
- `spatial_mask`: key tokens in frames within `radius` frames of the query's
  frame (`radius=0`: same frame);
- `temporal_mask`: key tokens, in any frame, within `radius` rows and columns
  of the query's spatial position (`radius=0`: same position);

a block is kept when any of its (query, key) token pairs is. Text rows and
columns are always kept (`adaspa.selection.text_sink_blocks`), as AdaSpa keeps
them, so the comparison is about the video part only. Given `density` instead of
`radius`, the factory picks the radius whose mask density (fraction of token
pairs, `BlockSparseMask.density`) is closest to it, ties to the smaller radius;
density grows with the radius, so a binary search finds it. The structure limits
how close it can get (`spatial_mask` moves in steps of about one frame).
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import torch

from ._validation import check_attention_inputs, check_block_size, check_sparsity, num_blocks, resolve_scale
from .mask import BlockSparseMask
from .selection import select_blocks, text_sink_blocks
from .synthetic import SyntheticVideoConfig, VideoTokenLayout, video_token_layout

__all__ = [
    "column_mask",
    "window_mask",
    "spatial_mask",
    "temporal_mask",
    "random_blocks_mask",
    "pooled_qk_mass",
    "token_topk_recall",
]


def _layout(frames, height, width, text_len, text_position) -> Tuple[VideoTokenLayout, int]:
    cfg = SyntheticVideoConfig(frames=frames, height=height, width=width, text_len=text_len,
                               text_position=text_position)
    return video_token_layout(cfg), cfg.seq_len


def _blocks_from_token_rule(lay: VideoTokenLayout, keep: Callable, block_size: int) -> torch.Tensor:
    """bool `[nq, nk]`: block (p, c) kept when `keep` holds for any of its video token pairs.

    Walks one query block at a time, so memory is `block_size x L`, never `L x L`.
    """
    length = lay.frame.shape[0]
    nk = num_blocks(length, block_size)
    video = ~lay.is_text
    rows = []
    for start in range(0, length, block_size):
        sl = slice(start, min(start + block_size, length))
        pairs = keep(lay, sl) & video[sl, None] & video[None, :]  # [bq, L]
        hit = pairs.any(0)  # [L]
        hit = torch.nn.functional.pad(hit, (0, nk * block_size - length))
        rows.append(hit.view(nk, block_size).any(-1))
    return torch.stack(rows)


def _video_block_index(lay: VideoTokenLayout, block_size: int) -> torch.Tensor:
    """`[n]` indices of the blocks that hold any video token, ascending."""
    length = lay.frame.shape[0]
    n = num_blocks(length, block_size)
    video = torch.nn.functional.pad(~lay.is_text, (0, n * block_size - length))
    return torch.nonzero(video.view(n, block_size).any(-1)).flatten()


def _column_blocks(lay, radius, block_size):
    n = num_blocks(lay.frame.shape[0], block_size)
    cols = torch.zeros(n, dtype=torch.bool)
    cols[_video_block_index(lay, block_size)[:radius]] = True
    return cols[None, :].expand(n, n)


def _window_blocks(lay, radius, block_size):
    idx = torch.arange(num_blocks(lay.frame.shape[0], block_size))
    return (idx[:, None] - idx[None, :]).abs() <= radius


def _spatial_blocks(lay, radius, block_size):
    def keep(lay, sl):
        return (lay.frame[sl, None] - lay.frame[None, :]).abs() <= radius

    return _blocks_from_token_rule(lay, keep, block_size)


def _temporal_blocks(lay, radius, block_size):
    def keep(lay, sl):
        near_row = (lay.row[sl, None] - lay.row[None, :]).abs() <= radius
        near_col = (lay.col[sl, None] - lay.col[None, :]).abs() <= radius
        return near_row & near_col

    return _blocks_from_token_rule(lay, keep, block_size)


def _static_mask(builder, max_radius, frames, height, width, density, radius, text_len, text_position,
                 block_size, batch, heads) -> BlockSparseMask:
    check_block_size(block_size)
    for name, value in (("batch", batch), ("heads", heads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    lay, length = _layout(frames, height, width, text_len, text_position)
    forced = text_sink_blocks(length, length, text_len, text_position=text_position, block_size=block_size)
    hi = max_radius(lay, block_size)

    def build(r: int) -> BlockSparseMask:
        dense = (builder(lay, r, block_size) | forced)[None, None].expand(batch, heads, -1, -1)
        return BlockSparseMask.from_dense(dense.contiguous(), block_size, length, length)

    if (density is None) == (radius is None):
        raise ValueError("give exactly one of density (a target in [0, 1]) and radius (an int >= 0)")
    if radius is not None:
        if isinstance(radius, bool) or not isinstance(radius, int) or radius < 0:
            raise ValueError(f"radius must be an int >= 0, got {radius!r}")
        return build(radius)
    density = check_sparsity(density, "density")
    if not isinstance(density, float):
        raise TypeError("density must be a float in [0, 1]")

    def density_of(r: int) -> float:
        return float(build(r).density()[0, 0])

    lo_r, hi_r = 0, hi  # smallest radius whose density reaches the target lies in [lo_r, hi_r]
    while lo_r < hi_r:
        mid = (lo_r + hi_r) // 2
        if density_of(mid) >= density:
            hi_r = mid
        else:
            lo_r = mid + 1
    best = lo_r
    if best > 0 and abs(density_of(best - 1) - density) <= abs(density_of(best) - density):
        best -= 1
    return build(best)


def column_mask(frames: int, height: int, width: int, *, density: Optional[float] = None,
                radius: Optional[int] = None, text_len: int = 0, text_position: str = "last",
                block_size: int = 64, batch: int = 1, heads: int = 1) -> BlockSparseMask:
    """Every query block keeps the first `radius` video key blocks (static attention-sink columns).

    Args:
        frames, height, width: the latent video grid (frame-major token order).
        density: target fraction of token pairs kept; the radius whose mask is
            closest is chosen (module docstring). Give this or `radius`.
        radius: the structural parameter, an int >= 0.
        text_len, text_position: text tokens, `"first"` or `"last"`; always kept.
        block_size: power of two >= 16.
        batch, heads: leading dims of the (identical) mask.

    Returns:
        `BlockSparseMask` `[batch, heads, nq, nq]` with `q_len = kv_len = text_len + frames*height*width`.

    Example:
        >>> column_mask(2, 4, 8, radius=1, block_size=16).to_dense()[0, 0].int().tolist()
        [[1, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]]
    """
    return _static_mask(_column_blocks, lambda lay, bs: len(_video_block_index(lay, bs)), frames, height,
                        width, density, radius, text_len, text_position, block_size, batch, heads)


def window_mask(frames: int, height: int, width: int, *, density: Optional[float] = None,
                radius: Optional[int] = None, text_len: int = 0, text_position: str = "last",
                block_size: int = 64, batch: int = 1, heads: int = 1) -> BlockSparseMask:
    """Every query block keeps the key blocks within `radius` blocks of it (diagonal band).

    Args:
        frames, height, width: the latent video grid (frame-major token order).
        density: target fraction of token pairs kept; the radius whose mask is
            closest is chosen (module docstring). Give this or `radius`.
        radius: the structural parameter, an int >= 0.
        text_len, text_position: text tokens, `"first"` or `"last"`; always kept.
        block_size: power of two >= 16.
        batch, heads: leading dims of the (identical) mask.

    Returns:
        `BlockSparseMask` `[batch, heads, nq, nq]` with `q_len = kv_len = text_len + frames*height*width`.

    Example:
        >>> window_mask(2, 4, 8, radius=1, block_size=16).to_dense()[0, 0].int().tolist()
        [[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 1, 1]]
    """
    return _static_mask(_window_blocks, lambda lay, bs: num_blocks(lay.frame.shape[0], bs), frames, height,
                        width, density, radius, text_len, text_position, block_size, batch, heads)


def spatial_mask(frames: int, height: int, width: int, *, density: Optional[float] = None,
                 radius: Optional[int] = None, text_len: int = 0, text_position: str = "last",
                 block_size: int = 64, batch: int = 1, heads: int = 1) -> BlockSparseMask:
    """Video queries keep key tokens of frames within `radius` frames of theirs (0: same frame).

    Args:
        frames, height, width: the latent video grid (frame-major token order).
        density: target fraction of token pairs kept; the radius whose mask is
            closest is chosen (module docstring). Give this or `radius`.
        radius: the structural parameter, an int >= 0.
        text_len, text_position: text tokens, `"first"` or `"last"`; always kept.
        block_size: power of two >= 16.
        batch, heads: leading dims of the (identical) mask.

    Returns:
        `BlockSparseMask` `[batch, heads, nq, nq]` with `q_len = kv_len = text_len + frames*height*width`.

    Example:
        >>> spatial_mask(2, 4, 8, radius=0, block_size=16).to_dense()[0, 0].int().tolist()
        [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]
    """
    return _static_mask(_spatial_blocks, lambda lay, bs: frames - 1, frames, height, width, density, radius,
                        text_len, text_position, block_size, batch, heads)


def temporal_mask(frames: int, height: int, width: int, *, density: Optional[float] = None,
                  radius: Optional[int] = None, text_len: int = 0, text_position: str = "last",
                  block_size: int = 64, batch: int = 1, heads: int = 1) -> BlockSparseMask:
    """Video queries keep key tokens within `radius` rows and columns of their position, in every frame.

    Args:
        frames, height, width: the latent video grid (frame-major token order).
        density: target fraction of token pairs kept; the radius whose mask is
            closest is chosen (module docstring). Give this or `radius`.
        radius: the structural parameter, an int >= 0.
        text_len, text_position: text tokens, `"first"` or `"last"`; always kept.
        block_size: power of two >= 16.
        batch, heads: leading dims of the (identical) mask.

    Returns:
        `BlockSparseMask` `[batch, heads, nq, nq]` with `q_len = kv_len = text_len + frames*height*width`.

    Example:
        >>> temporal_mask(2, 4, 8, radius=0, block_size=16).to_dense()[0, 0].int().tolist()
        [[1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1]]
    """
    return _static_mask(_temporal_blocks, lambda lay, bs: max(height, width) - 1, frames, height, width,
                        density, radius, text_len, text_position, block_size, batch, heads)


def random_blocks_mask(batch: int, heads: int, q_len: int, kv_len: int, density: float, *,
                       block_size: int = 64, seed: int = 0,
                       forced: Optional[torch.Tensor] = None) -> BlockSparseMask:
    """Every row keeps the forced blocks plus `ceil(density * n_candidates - 1e-6)` random others.

    The chance baseline: what a pattern with no information about the map
    recalls (about `density` of the mass, in expectation). Seeded; CPU.

    Args:
        batch, heads, q_len, kv_len: the attention shape.
        density: fraction of the candidate (non-forced) blocks kept per row, in [0, 1].
        block_size: power of two >= 16.
        seed: random seed.
        forced: optional bool broadcastable to `[B, H, nq, nk]`, always kept.

    Returns:
        `BlockSparseMask` `[batch, heads, nq, nk]`.

    Example:
        >>> random_blocks_mask(1, 2, 256, 256, 0.5, block_size=64).counts.tolist()
        [[[2, 2, 2, 2], [2, 2, 2, 2]]]
    """
    for name, value in (("batch", batch), ("heads", heads), ("q_len", q_len), ("kv_len", kv_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    density = check_sparsity(density, "density")
    if not isinstance(density, float):
        raise TypeError("density must be a float in [0, 1]")
    check_block_size(block_size)
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(batch, heads, num_blocks(q_len, block_size), num_blocks(kv_len, block_size), generator=g)
    return select_blocks(scores, 1.0 - density, block_size=block_size, q_len=q_len, kv_len=kv_len,
                         forced=forced)


def _block_means(x: torch.Tensor, block_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean over the valid tokens of each block `[B, H, n, D]`, and the token counts `[n]`."""
    length = x.shape[2]
    n = num_blocks(length, block_size)
    padded = torch.nn.functional.pad(x, (0, 0, 0, n * block_size - length))  # [B, H, n*bs, D]
    sums = padded.view(*x.shape[:2], n, block_size, x.shape[-1]).sum(3)  # [B, H, n, D]
    counts = (length - torch.arange(n, device=x.device) * block_size).clamp(max=block_size)  # [n]
    return sums / counts[:, None].to(x.dtype), counts


def pooled_qk_mass(q: torch.Tensor, k: torch.Tensor, *, block_size: int = 64,
                   scale: Optional[float] = None) -> torch.Tensor:
    """Approximate block mass from mean-pooled Q and K blocks (MInference / SpargeAttn style).

    Each block of queries and of keys is replaced by its mean; the pooled score
    `scale * mean_q(p) . mean_k(c) + log(n_keys(c))` is softmaxed over key blocks
    and scaled by the query count of block `p`, so the estimate has the units of
    the exact mass (rows sum to the valid query count) and can go through
    `select_blocks` and be compared with it. The `log(n_keys)` term counts a
    partial tail block by its true size; without it a tail block of one token
    would weigh as much as a full one. When q and k are constant within every
    block the estimate is exact; it misses exactly the within-block variation
    that decides which blocks matter.

    Args:
        q: `[B, H, Lq, D]`; k: `[B, H, Lk, D]`, floating, same dtype and device.
        block_size: power of two >= 16.
        scale: softmax scale, `1/sqrt(D)` when None.

    Returns:
        float32 `[B, H, ceil(Lq/bs), ceil(Lk/bs)]`.

    Example:
        >>> q, k = torch.randn(1, 2, 100, 16), torch.randn(1, 2, 70, 16)
        >>> est = pooled_qk_mass(q, k, block_size=64)
        >>> tuple(est.shape), [round(x) for x in est[0, 0].sum(-1).tolist()]
        ((1, 2, 2, 2), [64, 36])
    """
    shape = check_attention_inputs(q, k)
    check_block_size(block_size)
    scale = resolve_scale(scale, shape.head_dim)
    work = torch.float64 if q.dtype == torch.float64 else torch.float32
    q_mean, q_counts = _block_means(q.to(work), block_size)  # [B, H, nq, D], [nq]
    k_mean, k_counts = _block_means(k.to(work), block_size)  # [B, H, nk, D], [nk]
    scores = scale * q_mean @ k_mean.transpose(-1, -2) + k_counts.to(work).log()  # [B, H, nq, nk]
    return (torch.softmax(scores, dim=-1) * q_counts[:, None].to(work)).to(torch.float32)


def token_topk_recall(q: torch.Tensor, k: torch.Tensor, sparsity: float, *, scale: Optional[float] = None,
                      chunk: int = 256) -> torch.Tensor:
    """Recall of the token-level top-k pattern: the upper bound for any mask of that density.

    Every query keeps its `ceil((1 - s) * Lk - 1e-6)` highest-probability keys
    (the same `k` formula as `select_blocks`, over tokens); the recall is the kept
    softmax mass summed over queries divided by `Lq` (each query's probabilities
    sum to 1, so this is `sum(mass * M) / sum(mass)` at token granularity). Queries are
    processed `chunk` at a time: memory `B * H * chunk * Lk`, never `Lq x Lk` whole.

    Args:
        q: `[B, H, Lq, D]`; k: `[B, H, Lk, D]`, floating.
        sparsity: float in [0, 1].
        scale: softmax scale, `1/sqrt(D)` when None.
        chunk: queries per step (int >= 1).

    Returns:
        float32 `[B, H]`.

    Example:
        >>> q, k = torch.randn(1, 1, 50, 16), torch.randn(1, 1, 40, 16)
        >>> round(token_topk_recall(q, k, 0.0).item(), 5)      # float32 sums: 1 up to rounding
        1.0
    """
    shape = check_attention_inputs(q, k)
    scale = resolve_scale(scale, shape.head_dim)
    sparsity = check_sparsity(sparsity)
    if not isinstance(sparsity, float):
        raise TypeError("sparsity must be a float in [0, 1] (one token budget for all heads)")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be an int >= 1, got {chunk!r}")
    keep = min(max(math.ceil((1.0 - sparsity) * shape.kv_len - 1e-6), 0), shape.kv_len)
    work = torch.float64 if q.dtype == torch.float64 else torch.float32
    kept = torch.zeros(shape.batch, shape.heads, dtype=torch.float64, device=q.device)
    if keep == 0:
        return kept.to(torch.float32)
    k_work = k.to(work)
    for start in range(0, shape.q_len, chunk):
        q_chunk = q[:, :, start:start + chunk].to(work)  # [B, H, c, D]
        probs = torch.softmax(scale * q_chunk @ k_work.transpose(-1, -2), dim=-1)  # [B, H, c, Lk]
        kept += probs.topk(keep, dim=-1, sorted=False).values.sum((-1, -2)).to(torch.float64)
    return (kept / shape.q_len).to(torch.float32)
