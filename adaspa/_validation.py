"""Input checks shared by `adaspa.reference` and `adaspa.kernels`.

Both back ends call the same functions here, so a bad argument gets the same
message whichever implementation the caller imported.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch


class AttentionShape(NamedTuple):
    """Sizes of one attention call, read off validated `q`, `k`."""

    batch: int
    heads: int
    q_len: int
    kv_len: int
    head_dim: int


def check_block_size(block_size, name: str = "block_size") -> int:
    """Return `block_size` if it is a power of two >= 16, else raise."""
    if isinstance(block_size, bool) or not isinstance(block_size, int):
        raise TypeError(f"{name} must be an int (a power of two >= 16), got {type(block_size).__name__}")
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"{name} must be a power of two >= 16, got {block_size}")
    return block_size


def check_sparsity(sparsity, name: str = "sparsity"):
    """Check a sparsity given as a float or a tensor: every value in [0, 1].

    A tensor is checked without a host sync only when it lives on the CPU;
    on CUDA the range check is skipped (the caller owns those values).
    """
    if isinstance(sparsity, torch.Tensor):
        if not sparsity.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got {sparsity.dtype}")
        if sparsity.device.type == "cpu" and sparsity.numel() and not bool(
            ((sparsity >= 0) & (sparsity <= 1)).all()
        ):
            raise ValueError(f"{name} must lie in [0, 1], got values in "
                             f"[{float(sparsity.min())}, {float(sparsity.max())}]")
        return sparsity
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise TypeError(f"{name} must be a float in [0, 1] or a tensor, got {type(sparsity).__name__}")
    if not 0.0 <= float(sparsity) <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {sparsity}")
    return float(sparsity)


def check_4d_floating(x, name: str, layout: str) -> None:
    """Raise unless `x` is a 4-D floating tensor; messages name `name` and its `layout`."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {layout}, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be 4-D {layout}, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating point (float16, bfloat16, float32 or float64), got {x.dtype}")


def check_attention_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: Optional[torch.Tensor] = None,
    *,
    lse: Optional[torch.Tensor] = None,
) -> AttentionShape:
    """Validate `q [B,H,Lq,D]`, `k [B,H,Lk,D]`, optional `v [B,H,Lk,D]` and `lse [B,H,Lq]`.

    Raises `TypeError` for non-tensors and non-floating dtypes, `ValueError` for
    shape, dtype-mismatch and device-mismatch errors, each naming the argument.
    """
    check_4d_floating(q, "q", "[B, H, Lq, D]")
    check_4d_floating(k, "k", "[B, H, Lk, D]")
    batch, heads, q_len, head_dim = q.shape
    kv_len = k.shape[2]
    if (k.shape[0], k.shape[1], k.shape[3]) != (batch, heads, head_dim):
        raise ValueError(
            f"k must have shape [B={batch}, H={heads}, Lk, D={head_dim}] to match q {tuple(q.shape)}, "
            f"got {tuple(k.shape)}"
        )
    tensors = {"q": q, "k": k}
    if v is not None:
        check_4d_floating(v, "v", "[B, H, Lk, D]")
        if tuple(v.shape) != (batch, heads, kv_len, head_dim):
            raise ValueError(
                f"v must have shape [B={batch}, H={heads}, Lk={kv_len}, D={head_dim}] to match k, "
                f"got {tuple(v.shape)}"
            )
        tensors["v"] = v
    if q_len == 0 or kv_len == 0 or head_dim == 0:
        raise ValueError(f"q and k need Lq, Lk, D >= 1, got q {tuple(q.shape)} and k {tuple(k.shape)}")
    for name, x in tensors.items():
        if x.dtype != q.dtype:
            raise ValueError(f"{name} must have q's dtype {q.dtype}, got {x.dtype}")
        if x.device != q.device:
            raise ValueError(f"{name} must be on q's device {q.device}, got {x.device}")
    if lse is not None:
        if not isinstance(lse, torch.Tensor):
            raise TypeError(f"lse must be a torch.Tensor of shape [B, H, Lq], got {type(lse).__name__}")
        if tuple(lse.shape) != (batch, heads, q_len):
            raise ValueError(f"lse must have shape [B={batch}, H={heads}, Lq={q_len}], got {tuple(lse.shape)}")
        if not lse.is_floating_point():
            raise TypeError(f"lse must be floating point (float32), got {lse.dtype}")
        if lse.device != q.device:
            raise ValueError(f"lse must be on q's device {q.device}, got {lse.device}")
    return AttentionShape(batch, heads, q_len, kv_len, head_dim)


def require_lse(lse) -> None:
    """Raise unless an lse was passed: `block_mass` needs one, while `check_attention_inputs`
    reads `lse=None` as "no lse to check"."""
    if lse is None:
        raise TypeError("lse must be a torch.Tensor of shape [B, H, Lq], got None")


def resolve_scale(scale, head_dim: int) -> float:
    """`1/sqrt(D)` when `scale` is None, else `scale` checked to be a positive finite number."""
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive finite float, got {scale}")
    return float(scale)


def check_mask_matches(mask, shape: AttentionShape, device: torch.device) -> None:
    """Check that a `BlockSparseMask` fits an attention call of `shape` on `device`."""
    from .mask import BlockSparseMask

    if not isinstance(mask, BlockSparseMask):
        raise TypeError(f"mask must be an adaspa.BlockSparseMask, got {type(mask).__name__}")
    want = (shape.batch, shape.heads, shape.q_len, shape.kv_len)
    got = (mask.batch, mask.heads, mask.q_len, mask.kv_len)
    if got != want:
        raise ValueError(
            f"mask must be for (B, H, Lq, Lk) = {want}, got a mask for {got}"
        )
    if mask.indices.device != device:
        raise ValueError(f"mask must be on q's device {device}, got {mask.indices.device}")


def num_blocks(length: int, block_size: int) -> int:
    """Number of blocks of `block_size` covering `length` tokens (the last may be partial)."""
    return -(-length // block_size)
