"""The one tolerance rule adaspa's tests use, and a helper to produce its two baselines.

The rule (from flash-attention's tests): an implementation run on low-precision
inputs may be off the float64 oracle by at most twice what the reference itself is
off when run on those same low-precision inputs, plus a small floor:

    max|actual - oracle| <= ratio * max|reference - oracle| + floor * max(1, max|oracle|)

so a tolerance is never a hand-picked number. Torch only; safe to import at runtime.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import torch


def _float64(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x.detach().to(torch.float64)


def _max_abs(x: torch.Tensor) -> float:
    return float(x.abs().max()) if x.numel() else 0.0


def _finite_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`|a - b|` where both are finite, 0 where both hold the same infinity."""
    same_inf = torch.isinf(a) & (a == b)
    return torch.where(same_inf, torch.zeros_like(a), a - b).abs()


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """`max|actual - expected| / max|expected|`, in float64; matching infinities count as equal.

    Returns the plain absolute error when `expected` is all zero.

    Example:
        >>> round(relative_error(torch.tensor([1.0, 2.1]), torch.tensor([1.0, 2.0])), 4)
        0.05
    """
    a, e = _float64(actual, "actual"), _float64(expected, "expected")
    if a.shape != e.shape:
        raise ValueError(f"actual {tuple(a.shape)} and expected {tuple(e.shape)} must have the same shape")
    err = _max_abs(_finite_diff(a, e))
    scale = _max_abs(torch.where(torch.isinf(e), torch.zeros_like(e), e))
    return err / scale if scale > 0 else err


def assert_close(actual: torch.Tensor, oracle: torch.Tensor, reference: Optional[torch.Tensor] = None, *,
                 name: str = "", ratio: float = 2.0, floor: float = 1e-5) -> None:
    """Assert `actual` is as close to the float64 `oracle` as the reference's own rounding allows.

    Passes iff `max|actual - oracle| <= ratio * max|reference - oracle| + floor * max(1, max|oracle|)`,
    where `reference` is the reference implementation run on the same low-precision
    inputs as `actual` (None: the bound is the floor alone). Fails on any NaN, on
    shape mismatch, and unless infinities (the -inf lse of empty block-sparse rows)
    sit at the same positions with the same sign in all given tensors.

    Args:
        actual: the result under test, any shape and floating dtype.
        oracle: the reference run in float64 on the upcast inputs, same shape.
        reference: the reference run on the low-precision inputs, same shape, or None.
        name: what is compared, for the failure message.
        ratio, floor: the rule's constants.

    Example:
        >>> oracle = torch.tensor([1.0, float("-inf")], dtype=torch.float64)
        >>> assert_close(torch.tensor([1.001, float("-inf")]), oracle, torch.tensor([1.002, float("-inf")]))
        >>> assert_close(torch.tensor([1.1, float("-inf")]), oracle, name="lse")
        Traceback (most recent call last):
            ...
        AssertionError: lse: max|actual - oracle| = 0.1 > bound 1e-05 ...
    """
    label = name or "tensor"
    tensors = {"actual": _float64(actual, "actual"), "oracle": _float64(oracle, "oracle")}
    if reference is not None:
        tensors["reference"] = _float64(reference, "reference")
    o = tensors["oracle"]
    for key, x in tensors.items():
        if x.shape != o.shape:
            raise AssertionError(f"{label}: {key} has shape {tuple(x.shape)}, oracle has {tuple(o.shape)}")
        if x.device != o.device:
            tensors[key] = x.to(o.device)
    for key, x in tensors.items():
        if torch.isnan(x).any():
            raise AssertionError(f"{label}: {key} has {int(torch.isnan(x).sum())} NaN entries")
        inf_mismatch = (torch.isinf(x) | torch.isinf(o)) & (x != o)
        if inf_mismatch.any():
            where = tuple(inf_mismatch.nonzero()[0].tolist())
            raise AssertionError(f"{label}: {key} and oracle disagree on infinities at {int(inf_mismatch.sum())} "
                                 f"positions, first {where}: {float(x[where])} vs {float(o[where])}")
    diff = _finite_diff(tensors["actual"], o)
    err = _max_abs(diff)
    ref_err = _max_abs(_finite_diff(tensors["reference"], o)) if reference is not None else 0.0
    magnitude = _max_abs(torch.where(torch.isinf(o), torch.zeros_like(o), o))
    bound = ratio * ref_err + floor * max(1.0, magnitude)
    if not err <= bound:
        flat = diff.flatten().argmax()
        index = tuple(int(i) for i in torch.unravel_index(flat, diff.shape)) if diff.dim() else ()
        raise AssertionError(
            f"{label}: max|actual - oracle| = {err:.4g} > bound {bound:.4g} "
            f"(= {ratio} * reference error {ref_err:.4g} + {floor} * max(1, {magnitude:.4g})); "
            f"worst at {index}: actual {float(tensors['actual'][index])}, oracle {float(o[index])}"
        )


def token_mask(mask) -> torch.Tensor:
    """The bool token mask `[B, H, Lq, Lk]` of a `BlockSparseMask` (True: query i may attend key j).

    The block-sparse oracle of the tests is a dense masked softmax with this mask
    (ALGORITHM.md section 4); keys and queries past the lengths in a partial tail
    block do not exist and are cut off. Builds the full `Lq x Lk` mask: test sizes only.

    Example:
        >>> from adaspa import BlockSparseMask
        >>> keep = torch.tensor([[[[True, False], [False, True]]]])  # [B, H, nq, nk]
        >>> tokens = token_mask(BlockSparseMask.from_dense(keep, block_size=16, q_len=20, kv_len=18))
        >>> tuple(tokens.shape), int(tokens.sum())  # 16 x 16 + 4 x 2 kept pairs
        ((1, 1, 20, 18), 264)
    """
    bs = mask.block_size
    rows = mask.to_dense().repeat_interleave(bs, dim=2)[:, :, : mask.q_len]  # [B, H, Lq, nk]
    return rows.repeat_interleave(bs, dim=3)[..., : mask.kv_len]


def _upcast(x: Any) -> Any:
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        return x.to(torch.float64)
    return x


def oracle_and_reference(fn: Callable, *args, **kwargs) -> Tuple[Any, Any]:
    """Run a reference op twice: on float64 upcasts of every floating tensor argument
    (the oracle) and on the arguments as given (the reference). Returns `(oracle, reference)`,
    each what `fn` returns, e.g. `(out [B, H, Lq, D], lse [B, H, Lq])` for `reference.attention`.

    Non-tensor arguments (a `BlockSparseMask`, `block_size`, `scale`) pass through unchanged.

    Example:
        >>> from adaspa import reference
        >>> q = k = v = torch.randn(1, 1, 40, 16, dtype=torch.bfloat16)
        >>> (o_out, o_lse), (r_out, r_lse) = oracle_and_reference(reference.attention, q, k, v)
        >>> o_out.dtype, r_out.dtype
        (torch.float64, torch.bfloat16)
        >>> assert_close(r_out, o_out, r_out, name="out")
    """
    oracle = fn(*(_upcast(a) for a in args), **{key: _upcast(a) for key, a in kwargs.items()})
    reference = fn(*args, **kwargs)
    return oracle, reference
