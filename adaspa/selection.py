"""Pattern selection: which key blocks each query block keeps (ALGORITHM.md §3).

Everything here is pure torch and runs on the device of `mass` without a
host-device synchronization: per-row `k` is a tensor, and "keep the top k" is a
rank comparison after a stable sort, never a Python loop over rows or a
`.item()`. The only host-side work is on shapes and Python floats.

Ties in mass are broken by block index (lower index wins), so the selection is
deterministic on every device: `torch.sort(..., stable=True)` keeps equal values
in their original order.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch

from ._validation import check_4d_floating, check_block_size, check_sparsity, num_blocks
from .mask import BlockSparseMask

__all__ = ["text_sink_blocks", "select_blocks", "recall", "head_adaptive_sparsity"]

Sparsity = Union[float, torch.Tensor]

_K_EPS = 1e-6  # ALGORITHM.md §3: k = ceil((1 - s) * n - 1e-6), so s=0.8, n=10 gives 2, not 3.


def text_sink_blocks(
    q_len: int,
    kv_len: int,
    text_len: int,
    *,
    text_position: str = "last",
    block_size: int = 64,
    device=None,
) -> torch.Tensor:
    """The forced (text-sink) blocks of ALGORITHM.md §3, bool `[nq, nk]`.

    Every key block holding at least one text token is kept for every query
    block (a column of True), and every query block holding at least one text
    token keeps every key block (a row of True). A block that straddles the
    text/video boundary counts as a text block.

    The text occupies the first (`text_position="first"`, CogVideoX) or the last
    (`"last"`, HunyuanVideo) `text_len` tokens of *both* sequences; when
    `q_len != kv_len` this means the first/last `text_len` tokens of the query
    sequence and of the key sequence separately. `text_len=0` (Wan) gives an
    all-False mask.

    Args:
        q_len, kv_len: token lengths (>= 1).
        text_len: number of text tokens, `0 <= text_len <= min(q_len, kv_len)`.
        text_position: `"first"` or `"last"`.
        block_size: power of two >= 16.
        device: where the result lives (default CPU).

    Returns:
        bool `[ceil(q_len/bs), ceil(kv_len/bs)]`.

    Example:
        >>> text_sink_blocks(192, 192, 70, text_position="first", block_size=64).int().tolist()
        [[1, 1, 1], [1, 1, 1], [1, 1, 0]]
    """
    check_block_size(block_size)
    for name, value in (("q_len", q_len), ("kv_len", kv_len), ("text_len", text_len)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if q_len < 1 or kv_len < 1:
        raise ValueError(f"q_len and kv_len must be >= 1, got q_len={q_len}, kv_len={kv_len}")
    if not 0 <= text_len <= min(q_len, kv_len):
        raise ValueError(f"text_len must lie in [0, min(q_len, kv_len) = {min(q_len, kv_len)}], "
                         f"got {text_len}")
    if text_position not in ("first", "last"):
        raise ValueError(f"text_position must be 'first' or 'last', got {text_position!r}")

    def text_blocks(length: int) -> torch.Tensor:
        start = torch.arange(0, length, block_size, device=device)  # [n] first token of each block
        end = (start + block_size).clamp(max=length)  # one past the last token
        if text_position == "first":
            return start < text_len
        return end > length - text_len

    q_text = text_blocks(q_len)  # [nq]
    k_text = text_blocks(kv_len)  # [nk]
    return q_text[:, None] | k_text[None, :]


def _check_mass(mass, name: str = "mass") -> None:
    check_4d_floating(mass, name, "[B, H, nq, nk]")
    if 0 in mass.shape:
        raise ValueError(f"{name} must have no empty dimension, got shape {tuple(mass.shape)}")


def _broadcast_sparsity(sparsity: Sparsity, mass: torch.Tensor) -> torch.Tensor:
    """`sparsity` as float64 `[B, H]` on mass's device."""
    sparsity = check_sparsity(sparsity)
    batch, heads = mass.shape[:2]
    if isinstance(sparsity, float):
        return torch.full((batch, heads), sparsity, dtype=torch.float64, device=mass.device)
    try:
        shape = torch.broadcast_shapes(tuple(sparsity.shape), (batch, heads))
    except RuntimeError:
        shape = None
    if shape != (batch, heads):
        raise ValueError(f"sparsity must be a float or a tensor broadcastable to [B, H] = "
                         f"[{batch}, {heads}], got shape {tuple(sparsity.shape)}")
    # float64 before `1 - s`: a float64 tensor gives the k of the same Python float. A
    # float32 tensor is taken at its float32 value (0.9 is 0.89999998), which moves k by
    # one for some n >= 50, so exact tiers travel as float64.
    return sparsity.to(device=mass.device, dtype=torch.float64).expand(batch, heads)


def _broadcasts_to(x: torch.Tensor, shape) -> bool:
    """True if `x` broadcasts to exactly `shape` (not to a larger one)."""
    try:
        return torch.broadcast_shapes(tuple(x.shape), tuple(shape)) == tuple(shape)
    except RuntimeError:
        return False


def _broadcast_forced(forced: Optional[torch.Tensor], mass: torch.Tensor) -> torch.Tensor:
    """`forced` as bool `[B, H, nq, nk]` (an expanded view) on mass's device."""
    if forced is None:
        return torch.zeros(1, 1, 1, 1, dtype=torch.bool, device=mass.device).expand(mass.shape)
    if not isinstance(forced, torch.Tensor) or forced.dtype != torch.bool:
        raise TypeError(f"forced must be a bool tensor broadcastable to [B, H, nq, nk] = "
                        f"{list(mass.shape)}, got {getattr(forced, 'dtype', type(forced).__name__)}")
    if not _broadcasts_to(forced, mass.shape):
        raise ValueError(f"forced must be broadcastable to [B, H, nq, nk] = {list(mass.shape)}, "
                         f"got shape {tuple(forced.shape)}")
    # A CPU mask (e.g. from text_sink_blocks) is copied host-to-device: no sync.
    return forced.to(mass.device).expand(mass.shape)


def _num_kept(sparsity: torch.Tensor, n_candidates: torch.Tensor) -> torch.Tensor:
    """`k = ceil((1 - s) * n - 1e-6)` clamped to `[0, n]`, elementwise (int64)."""
    n = n_candidates.to(torch.float64)
    k = torch.ceil((1.0 - sparsity) * n - _K_EPS)
    return torch.minimum(k.clamp(min=0), n).to(torch.int64)


def _rank_candidates(score: torch.Tensor, forced: torch.Tensor) -> torch.Tensor:
    """Rank of every entry along the last dim: candidates by score desc, ties by index, forced last.

    Two stable sorts give a lexicographic order (not forced, then score, then
    index) without assuming anything about the values of `score` (a forced
    entry never displaces a candidate, whatever its mass).
    """
    by_score = torch.sort(score, dim=-1, descending=True, stable=True).indices
    forced_in_order = forced.gather(-1, by_score).to(torch.uint8)
    order = by_score.gather(-1, torch.sort(forced_in_order, dim=-1, stable=True).indices)
    slots = torch.arange(score.shape[-1], device=score.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, slots)


def _keep_blocks(mass: torch.Tensor, sparsity: torch.Tensor, forced: torch.Tensor,
                 rowwise: bool) -> torch.Tensor:
    """Bool `[B, H, nq, nk]`: forced blocks plus the top-k candidates per row (or per map)."""
    batch, heads, nq, nk = mass.shape
    if rowwise:
        n_candidates = (~forced).sum(-1)  # [B, H, nq]
        k = _num_kept(sparsity[..., None], n_candidates)  # [B, H, nq]
        rank = _rank_candidates(mass, forced)  # [B, H, nq, nk]
        return forced | (rank < k[..., None])
    flat_forced = forced.reshape(batch, heads, nq * nk)
    n_candidates = (~flat_forced).sum(-1)  # [B, H]
    k = _num_kept(sparsity, n_candidates)  # [B, H]
    rank = _rank_candidates(mass.reshape(batch, heads, nq * nk), flat_forced)  # [B, H, nq*nk]
    return (flat_forced | (rank < k[..., None])).reshape(batch, heads, nq, nk)


def _host_width(sparsity, forced: Optional[torch.Tensor], nk: int, rowwise: bool) -> int:
    """Widest row of the result, when it is known without reading device data; else `nk`."""
    if not rowwise or not isinstance(sparsity, float):
        return nk
    if forced is None:
        n_forced = [0]
    elif forced.device.type == "cpu":
        rows = torch.broadcast_to(forced, (*forced.shape[:-1], nk) if forced.dim() else (nk,))
        n_forced = rows.reshape(-1, nk).sum(-1).unique().tolist()
    else:
        return nk
    width = max(f + min(max(math.ceil((1.0 - sparsity) * (nk - f) - _K_EPS), 0), nk - f) for f in n_forced)
    return max(width, 1)


def select_blocks(
    mass: torch.Tensor,
    sparsity: Sparsity,
    *,
    block_size: int,
    q_len: int,
    kv_len: int,
    forced: Optional[torch.Tensor] = None,
    rowwise: bool = True,
) -> BlockSparseMask:
    """Keep, per (batch, head, query block), the `k` candidate key blocks of largest mass.

    Candidates are the blocks not in `forced`; forced blocks are always kept and
    do not count toward `k = ceil((1 - s) * n_candidates - 1e-6)`, clamped to
    `[0, n_candidates]`, with `s` the sparsity of the row's (batch, head). Equal
    masses are broken by block index (lower first).

    `rowwise=False` is the paper's Eq. 14, kept for teaching: one top-k over the
    whole `[nq, nk]` map of each (batch, head), with the same formula applied to
    the map's total candidate count. Rows may then keep nothing.

    No host-device synchronization happens on CUDA. The result's `max_kept` is
    `nk` unless `sparsity` is a Python float and `forced` is None or on the CPU,
    in which case it is the exact widest row, computed on the host.

    Args:
        mass: float `[B, H, nq, nk]`, the block attention mass (ALGORITHM.md §1).
        sparsity: float in [0, 1], or a floating tensor broadcastable to `[B, H]`
            (float64 for exact decimals: a float32 0.9 is 0.89999998 and keeps one
            more block when `0.1 * n_candidates` is an integer >= 5).
        block_size: power of two >= 16; `nq = ceil(q_len/bs)`, `nk = ceil(kv_len/bs)`.
        q_len, kv_len: token lengths the mass was computed for.
        forced: optional bool, broadcastable to `[B, H, nq, nk]` (e.g. `text_sink_blocks`).
        rowwise: row-wise top-k (default, ALGORITHM.md §3) or a global top-k per map.

    Returns:
        `BlockSparseMask` with `block_size`, `q_len`, `kv_len` as given.

    Example:
        >>> mass = torch.tensor([[[[0.1, 0.5, 0.2, 0.2], [0.4, 0.3, 0.2, 0.1]]]])  # [1, 1, 2, 4]
        >>> m = select_blocks(mass, 0.5, block_size=64, q_len=128, kv_len=256)
        >>> m.to_dense().int().tolist()
        [[[[0, 1, 1, 0], [1, 1, 0, 0]]]]
    """
    _check_mass(mass)
    check_block_size(block_size)
    if not isinstance(rowwise, bool):
        raise TypeError(f"rowwise must be a bool, got {type(rowwise).__name__}")
    for name, value in (("q_len", q_len), ("kv_len", kv_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    nq, nk = num_blocks(q_len, block_size), num_blocks(kv_len, block_size)
    if tuple(mass.shape[2:]) != (nq, nk):
        raise ValueError(f"mass must have shape [B, H, nq={nq}, nk={nk}] for q_len={q_len}, "
                         f"kv_len={kv_len}, block_size={block_size}; got {tuple(mass.shape)}")
    s = _broadcast_sparsity(sparsity, mass)  # [B, H] float64
    forced_full = _broadcast_forced(forced, mass)  # [B, H, nq, nk]
    keep = _keep_blocks(mass, s, forced_full, rowwise)  # [B, H, nq, nk]
    full = BlockSparseMask.from_dense(keep, block_size, q_len, kv_len)
    host_sparsity = sparsity if isinstance(sparsity, torch.Tensor) else float(sparsity)
    width = _host_width(host_sparsity, forced, nk, rowwise)
    if width == nk:
        return full
    return BlockSparseMask(full.indices[..., :width].contiguous(), full.counts, block_size, q_len, kv_len)


def recall(mass: torch.Tensor, mask) -> torch.Tensor:
    """Fraction of the attention mass a mask keeps, `sum(mass * M) / sum(mass)` per (batch, head).

    Args:
        mass: float `[B, H, nq, nk]`.
        mask: a `BlockSparseMask` of the same block grid, or bool `[B, H, nq, nk]`
            (broadcastable).

    Returns:
        float32 `[B, H]`. A head whose total mass is 0 gives NaN.

    Example:
        >>> mass = torch.tensor([[[[3.0, 1.0], [0.0, 4.0]]]])
        >>> keep = torch.tensor([[[[True, False], [False, True]]]])
        >>> recall(mass, keep).tolist()
        [[0.875]]
    """
    _check_mass(mass)
    if isinstance(mask, BlockSparseMask):
        if (mask.batch, mask.heads, mask.num_q_blocks, mask.num_kv_blocks) != tuple(mass.shape):
            raise ValueError(f"mask covers [B, H, nq, nk] = {[mask.batch, mask.heads, mask.num_q_blocks, mask.num_kv_blocks]}"
                             f", but mass has shape {list(mass.shape)}")
        dense = mask.to_dense()
    elif isinstance(mask, torch.Tensor) and mask.dtype == torch.bool:
        if not _broadcasts_to(mask, mass.shape):
            raise ValueError(f"mask must be broadcastable to mass's shape {list(mass.shape)}, "
                             f"got {tuple(mask.shape)}")
        dense = mask
    else:
        raise TypeError(f"mask must be a BlockSparseMask or a bool tensor [B, H, nq, nk], "
                        f"got {getattr(mask, 'dtype', type(mask).__name__)}")
    return _recall64(mass, dense.to(mass.device)).to(torch.float32)


def _recall64(mass: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """float64 `[B, H]` recall; the tiers compare this against the threshold, before any rounding."""
    mass64 = mass.to(torch.float64)
    kept = torch.where(keep, mass64, 0.0).sum((-1, -2))
    return kept / mass64.sum((-1, -2))


def head_adaptive_sparsity(
    mass: torch.Tensor,
    sparsity: Sparsity,
    *,
    recall_threshold: float = 0.8,
    forced: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The three sparsity tiers of ALGORITHM.md §3, per batch element, float64 `[B, H]`.

    Every head's recall is measured with the row-wise top-k mask at its base
    sparsity `s` (forced blocks included). With `n` = the number of heads whose
    recall is strictly above `recall_threshold`, capped at `H // 2`, the heads
    are sorted by recall (descending, ties by head index): the first `n` get
    `(1 + s) / 2`, the last `n` get `max(0, (3s - 1) / 2)`, the rest keep `s`.
    With a scalar `s` the mean over heads stays `s` unless the clamp at 0
    bites (`s < 1/3`). Runs without host sync (`n` is a tensor). The tiers are
    float64 so that `select_blocks` computes `k` from the exact decimal
    (a float32 0.9 would keep one block more per row at 50 candidates).

    Args:
        mass: float `[B, H, nq, nk]`.
        sparsity: base sparsity, float or tensor broadcastable to `[B, H]`.
        recall_threshold: the paper's 0.8.
        forced: optional bool, broadcastable to `[B, H, nq, nk]`.

    Returns:
        float64 `[B, H]`, the sparsity each head should use.

    Example:
        >>> mass = torch.zeros(1, 4, 1, 10)
        >>> mass[0, 0, 0, 0] = mass[0, 1, 0, :2] = 1.0   # heads 0, 1: all mass in 2 blocks
        >>> mass[0, 2:] = 1.0                             # heads 2, 3: uniform
        >>> [round(x, 4) for x in head_adaptive_sparsity(mass, 0.8)[0].tolist()]
        [0.9, 0.9, 0.7, 0.7]
    """
    _check_mass(mass)
    if isinstance(recall_threshold, bool) or not isinstance(recall_threshold, (int, float)):
        raise TypeError(f"recall_threshold must be a float, got {type(recall_threshold).__name__}")
    heads = mass.shape[1]
    s = _broadcast_sparsity(sparsity, mass)  # [B, H] float64
    forced_full = _broadcast_forced(forced, mass)
    keep = _keep_blocks(mass, s, forced_full, rowwise=True)  # [B, H, nq, nk]
    head_recall = _recall64(mass, keep)  # [B, H] float64
    n = (head_recall > recall_threshold).sum(-1, keepdim=True).clamp(max=heads // 2)  # [B, 1]
    order = torch.sort(head_recall, dim=-1, descending=True, stable=True).indices  # [B, H]
    slots = torch.arange(heads, device=mass.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(-1, order, slots)  # [B, H]
    high = (1.0 + s) / 2.0
    low = ((3.0 * s - 1.0) / 2.0).clamp(min=0.0)
    return torch.where(rank < n, high, torch.where(rank >= heads - n, low, s))  # [B, H] float64
