"""Block-sparse attention: dense attention restricted to the key blocks a mask keeps.

The compressed `BlockSparseMask` is expanded one query block at a time into a
token mask over the keys, and the softmax runs over the kept keys only
(ALGORITHM.md section 4). Query rows that keep nothing get `out = 0`, `lse = -inf`.
"""

from __future__ import annotations

import torch

from .._validation import check_attention_inputs, check_mask_matches, resolve_scale
from .dense import compute_dtype, query_chunks, scores, softmax_with_lse


def key_token_mask(block_row: torch.Tensor, block_size: int, kv_len: int) -> torch.Tensor:
    """Expand kept key blocks `block_row [B, H, nk]` (bool) to kept keys `[B, H, kv_len]`.

    Keys past `kv_len` in a partial last block do not exist and are cut off.
    """
    return block_row.repeat_interleave(block_size, dim=-1)[..., :kv_len]


def block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask, *, scale=None):
    """Attention over the kept key blocks of `mask` only, with its row log-sum-exp.

    Args:
        q: `[B, H, Lq, D]` floating, any strides.
        k, v: `[B, H, Lk, D]`, q's dtype and device.
        mask: `adaspa.BlockSparseMask` for `(B, H, Lq, Lk)` on q's device; its
            `block_size` is the block size of this op.
        scale: softmax scale; `1/sqrt(D)` when None.

    Returns:
        out: `[B, H, Lq, D]` in q's dtype; 0 on rows whose query block keeps no key block.
        lse: float32 `[B, H, Lq]` over the kept keys; -inf on empty rows.

    Example:
        >>> from adaspa.mask import BlockSparseMask
        >>> q, k, v = torch.randn(1, 1, 100, 16), torch.randn(1, 1, 100, 16), torch.randn(1, 1, 100, 16)
        >>> keep = torch.tensor([[[[True, False], [False, False]]]])  # [B, H, nq, nk]
        >>> out, lse = block_sparse_attention(q, k, v, BlockSparseMask.from_dense(keep, 64, 100, 100))
        >>> bool(torch.isinf(lse[0, 0, 64:]).all()), float(out[0, 0, 64:].abs().max())
        (True, 0.0)
    """
    shape = check_attention_inputs(q, k, v)
    check_mask_matches(mask, shape, q.device)
    scale = resolve_scale(scale, shape.head_dim)
    dtype = compute_dtype(q)
    keep_blocks = mask.to_dense()  # [B, H, nq, nk]
    out = torch.zeros(q.shape, dtype=dtype, device=q.device)  # [B, H, Lq, D]
    lse = torch.zeros(q.shape[:3], dtype=dtype, device=q.device)  # [B, H, Lq]
    k_c, v_c = k.to(dtype), v.to(dtype)
    for p, rows in enumerate(query_chunks(shape.q_len, mask.block_size)):
        keep = key_token_mask(keep_blocks[:, :, p], mask.block_size, shape.kv_len)  # [B, H, Lk]
        s = scores(q[:, :, rows], k_c, scale)  # [B, H, bs, Lk]
        probs, lse[:, :, rows] = softmax_with_lse(s.masked_fill(~keep[:, :, None, :], float("-inf")))
        out[:, :, rows] = probs @ v_c
    return out.to(q.dtype), lse.to(torch.float32)
