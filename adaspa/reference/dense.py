"""Dense attention, one query chunk at a time, plus the small pieces every reference op shares.

The reference never builds the full `Lq x Lk` score matrix: it walks the queries in
chunks of `QUERY_CHUNK` rows, so the largest temporary is `[B, H, QUERY_CHUNK, Lk]`
(8 MiB in float32 for one head at Lk = 32K).
"""

from __future__ import annotations

from typing import Iterator, Tuple

import torch

from .._validation import check_attention_inputs, resolve_scale

QUERY_CHUNK = 64


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 for float64 inputs (the oracle), float32 for everything else."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def query_chunks(length: int, size: int) -> Iterator[slice]:
    """Consecutive slices of `size` rows covering `range(length)`; the last may be shorter."""
    for start in range(0, length, size):
        yield slice(start, min(start + size, length))


def scores(q_chunk: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """`scale * q_chunk @ k^T` in the compute dtype.

    Shapes: q_chunk `[B, H, C, D]`, k `[B, H, Lk, D]` -> `[B, H, C, Lk]`.
    """
    dtype = compute_dtype(q_chunk)
    return scale * (q_chunk.to(dtype) @ k.to(dtype).transpose(-1, -2))


def softmax_with_lse(s: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Row softmax of `s [..., C, Lk]` and its log-sum-exp `[..., C]`.

    Entries equal to -inf are masked keys. A row with no finite entry (an empty
    block-sparse row) gets probabilities 0 and lse -inf instead of NaN.
    """
    lse = torch.logsumexp(s, dim=-1)  # [..., C]
    finite_lse = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    probs = torch.exp(s - finite_lse.unsqueeze(-1))  # exp(-inf) = 0 on masked keys
    return probs, lse


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale=None):
    """Dense softmax attention, returning the output and the row log-sum-exp.

    `out_i = sum_j softmax(scale * q_i . k_j)_j v_j`, `lse_i = log sum_j exp(scale * q_i . k_j)`.
    Computes in float64 for float64 inputs, else float32.

    Args:
        q: `[B, H, Lq, D]` floating, any strides.
        k, v: `[B, H, Lk, D]`, q's dtype and device.
        scale: softmax scale; `1/sqrt(D)` when None.

    Returns:
        out: `[B, H, Lq, D]` in q's dtype.
        lse: float32 `[B, H, Lq]`, natural log.

    Example:
        >>> q, k, v = torch.randn(1, 2, 100, 32), torch.randn(1, 2, 70, 32), torch.randn(1, 2, 70, 32)
        >>> out, lse = attention(q, k, v)
        >>> tuple(out.shape), lse.dtype
        ((1, 2, 100, 32), torch.float32)
        >>> ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        >>> bool(torch.allclose(out, ref, atol=1e-5))
        True
    """
    shape = check_attention_inputs(q, k, v)
    scale = resolve_scale(scale, shape.head_dim)
    dtype = compute_dtype(q)
    out = torch.zeros(q.shape, dtype=dtype, device=q.device)  # [B, H, Lq, D]
    lse = torch.zeros(q.shape[:3], dtype=dtype, device=q.device)  # [B, H, Lq]
    k_c, v_c = k.to(dtype), v.to(dtype)
    for rows in query_chunks(shape.q_len, QUERY_CHUNK):
        probs, lse[:, :, rows] = softmax_with_lse(scores(q[:, :, rows], k_c, scale))  # [B, H, C, Lk]
        out[:, :, rows] = probs @ v_c
    return out.to(q.dtype), lse.to(torch.float32)
