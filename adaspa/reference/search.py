"""The exact block search: block attention mass, fused with attention or from a cached lse.

`mass[b, h, p, c] = sum_{i in query block p, j in key block c} exp(scale * q_i . k_j - lse_i)`,
the softmax probability query block `p` puts on key block `c` (ALGORITHM.md section 1).
Both ops walk the queries one block at a time, so the largest temporary is
`[B, H, block_size, Lk]`; the block loop is also what makes the row sums per query block.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._validation import check_attention_inputs, check_block_size, num_blocks, require_lse, resolve_scale
from .dense import compute_dtype, query_chunks, scores, softmax_with_lse


def key_block_sums(probs: torch.Tensor, block_size: int) -> torch.Tensor:
    """Sum `probs [B, H, C, Lk]` over the C queries and over each key block -> `[B, H, nk]`.

    The key axis is zero-padded to a whole number of blocks, so a partial last
    block sums only its real keys.
    """
    kv_len = probs.shape[-1]
    nk = num_blocks(kv_len, block_size)
    per_key = probs.sum(dim=-2)  # [B, H, Lk]
    padded = F.pad(per_key, (0, nk * block_size - kv_len))  # [B, H, nk * bs]
    return padded.unflatten(-1, (nk, block_size)).sum(dim=-1)


def attention_with_block_mass(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, block_size: int = 64,
                              scale=None):
    """The fused search: exact dense attention plus the block attention mass.

    Args:
        q: `[B, H, Lq, D]` floating, any strides.
        k, v: `[B, H, Lk, D]`, q's dtype and device.
        block_size: tokens per block on both axes, a power of two >= 16.
        scale: softmax scale; `1/sqrt(D)` when None.

    Returns:
        out: `[B, H, Lq, D]` in q's dtype (identical to `attention`).
        lse: float32 `[B, H, Lq]`, natural log.
        mass: float32 `[B, H, ceil(Lq/bs), ceil(Lk/bs)]`; row `p` sums to the number
            of queries in block `p`.

    Example:
        >>> q, k, v = torch.randn(1, 1, 100, 16), torch.randn(1, 1, 80, 16), torch.randn(1, 1, 80, 16)
        >>> out, lse, mass = attention_with_block_mass(q, k, v, block_size=64)
        >>> tuple(mass.shape)
        (1, 1, 2, 2)
        >>> mass.sum(-1).round().tolist()
        [[[64.0, 36.0]]]
    """
    shape = check_attention_inputs(q, k, v)
    check_block_size(block_size)
    scale = resolve_scale(scale, shape.head_dim)
    dtype = compute_dtype(q)
    nq, nk = num_blocks(shape.q_len, block_size), num_blocks(shape.kv_len, block_size)
    out = torch.zeros(q.shape, dtype=dtype, device=q.device)  # [B, H, Lq, D]
    lse = torch.zeros(q.shape[:3], dtype=dtype, device=q.device)  # [B, H, Lq]
    mass = torch.zeros(shape.batch, shape.heads, nq, nk, dtype=dtype, device=q.device)
    k_c, v_c = k.to(dtype), v.to(dtype)
    for p, rows in enumerate(query_chunks(shape.q_len, block_size)):
        probs, lse[:, :, rows] = softmax_with_lse(scores(q[:, :, rows], k_c, scale))  # [B, H, bs, Lk]
        out[:, :, rows] = probs @ v_c
        mass[:, :, p] = key_block_sums(probs, block_size)
    return out.to(q.dtype), lse.to(torch.float32), mass.to(torch.float32)


def block_mass(q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor, *, block_size: int = 64, scale=None):
    """The LSE-cached search: block attention mass normalised by a given `lse`.

    With the exact lse of `(q, k)` this equals the `mass` of `attention_with_block_mass`;
    with a stale lse (cached at an earlier denoising step) rows no longer sum
    exactly to the query count, which is the point of the approximation: no V,
    no output, half the work.

    Args:
        q: `[B, H, Lq, D]` floating, any strides.
        k: `[B, H, Lk, D]`, q's dtype and device.
        lse: `[B, H, Lq]` floating (float32 from the fused search), on q's device.
        block_size: tokens per block on both axes, a power of two >= 16.
        scale: softmax scale; `1/sqrt(D)` when None.

    Returns:
        mass: float32 `[B, H, ceil(Lq/bs), ceil(Lk/bs)]`.

    Example:
        >>> q, k, v = torch.randn(1, 1, 100, 16), torch.randn(1, 1, 80, 16), torch.randn(1, 1, 80, 16)
        >>> _, lse, mass = attention_with_block_mass(q, k, v, block_size=64)
        >>> bool(torch.allclose(block_mass(q, k, lse, block_size=64), mass, atol=1e-5))
        True
    """
    require_lse(lse)
    shape = check_attention_inputs(q, k, lse=lse)
    check_block_size(block_size)
    scale = resolve_scale(scale, shape.head_dim)
    dtype = compute_dtype(q)
    nq, nk = num_blocks(shape.q_len, block_size), num_blocks(shape.kv_len, block_size)
    mass = torch.zeros(shape.batch, shape.heads, nq, nk, dtype=dtype, device=q.device)
    k_c, lse_c = k.to(dtype), lse.to(dtype)
    for p, rows in enumerate(query_chunks(shape.q_len, block_size)):
        probs = torch.exp(scores(q[:, :, rows], k_c, scale) - lse_c[:, :, rows, None])  # [B, H, bs, Lk]
        mass[:, :, p] = key_block_sums(probs, block_size)
    return mass.to(torch.float32)
