"""Head-adaptive block-sparse attention over a `BlockSparseMask`.

One program per (batch, head, query block) walks the `counts[b, h, p]` kept key blocks
listed in `indices[b, h, p]`, one key tile at a time, with dense attention's online-softmax
step (`flash_fwd.online_softmax_step`). A key tile is a whole kept block or a whole
fraction of one (e.g. 64 rows at block 128), read as contiguous rows: on Hopper with
aligned half-precision inputs through the tensor copy engine (TMA: one `[BLOCK_N, D]` box,
zeros past Lk), else through pointers. Through pointers a tile may also gather several
kept blocks row by row (so a 16-row block size still gets 64-wide dots). The softmax runs
over the kept keys only; a row with no kept block writes `out = 0`, `lse = -inf`.

Load balance: heads keep different numbers of blocks (three tiers), and rows differ too.
Programs are launched in row order, (batch, head, query block), so neighbouring programs
share a head's K / V in L2. Each head has `nq` programs (1856 at L = 118784, block 64),
far more than run at once, so a heavy head never runs alone and only the last wave can
be uneven. Longest-first order (`heavy_first=True` of `_block_sparse_attention`: a device
argsort of `counts`, descending) was the default until kernel v5; side by side on the
H200 it was slower in 20-26 of 30 tiered cases per run (up to 11% at L = 16384, where
its extra launch shows) and at most 2.4% faster (docs/kernels.md, docs/benchmarks.md).

Key ranges (block 64, long sequences; `ranges_for` decides, `ADASPA_KEY_RANGES=1` turns
them off). Every program of a head reads from all of that head's K / V with random masks,
and once those outgrow L2 (61 MB at L = 118784, D = 128, against the H100's 50 MB) many
reads go to HBM. The kernel can then
split each row into `KEY_RANGES` key ranges, one program each, launched range by range
within a head so that the programs running together read one range (~20 MB). The program
of range `r` resumes from the online-softmax state `(m, l, acc)` that range `r - 1` left in
an fp32 scratch (`B * H * nq * 64 * D` floats, 1.5 GB at L = 118784: O(L), not O(L^2)), and
the last range normalizes and stores. Order comes from a ticket counter, not the program
id, so a program only waits for one that has already started. On the H100 at L = 118784
this took block 64 from 386-411 to 405-490 TFLOP/s (docs/kernel-tuning.md, "Kernel v8").
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from .._validation import check_attention_inputs, check_mask_matches, resolve_scale
from ._launch import (LOG2E, SMEM_BUDGET, check_block_tiles_fit, check_kernel_block_size, check_kernel_inputs,
                      dot_precision, fixed_config, key_tile_fits, load_q_tile, load_rows, padded_head_dim, row_tiles,
                      set_tile_rows, smem_estimate, store_out_tile, strides4, tma_eligible, use_autotune,
                      use_hopper_kernel)
from .flash_fwd import online_softmax_step


@triton.jit
def _block_sparse_attention_fwd_kernel(
    Q, K, V, O, LSE, INDICES, COUNTS, ORDER, FLAGS, PART_ACC, PART_ML,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    H, LQ, LK, NQB, MAX_KEPT, RANGE_BLOCKS, qk_scale,
    HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr, BS: tl.constexpr, ORDERED: tl.constexpr, EVEN_K: tl.constexpr,
    KEY_RANGES: tl.constexpr, PRECISION: tl.constexpr, TMA: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Program `pid` handles row `ORDER[pid]` (or `pid`) of the flattened `[B * H * nq]` mask,
    or with KEY_RANGES > 1 the kept blocks of one row in one key range (`_row_and_range`).

    A key tile of BLOCK_N rows is either `BLOCK_N // BS` kept blocks gathered row by row
    (pointers only) or a whole fraction of one kept block (`BS // BLOCK_N` tiles per block).
    EVEN_K (Lk a multiple of BS) means every tile of one block lies inside Lk, so those
    tiles skip the key mask. K and V are `row_tiles` descriptors of `[BLOCK_N, BLOCK_D]`
    tiles when TMA, else tensors read through pointers. With KEY_RANGES > 1 (never with
    ORDERED), range `r` covers key blocks `[r * RANGE_BLOCKS, (r + 1) * RANGE_BLOCKS)`;
    FLAGS holds a done-ranges count per row and then the ticket counter (all zero at
    launch), PART_ML `[rows, 2]` and PART_ACC `[rows, BLOCK_D]` the state handed from one
    range to the next; all three are unused otherwise.
    """
    # Kept blocks per key tile (> 1: gathered) and key tiles per kept block.
    KPT: tl.constexpr = BLOCK_N // BS if BLOCK_N > BS else 1
    TPB: tl.constexpr = BS // BLOCK_N if BS > BLOCK_N else 1
    pid = tl.program_id(0)
    if ORDERED:
        i_row = tl.load(ORDER + pid).to(tl.int64)
    elif KEY_RANGES > 1:
        i_row, i_range = _row_and_range(FLAGS, NQB, KEY_RANGES)
    else:
        i_row = pid.to(tl.int64)
    i_bh = i_row // NQB
    i_p = i_row % NQB
    i_b = i_bh // H
    i_h = i_bh % H
    n_kept = tl.load(COUNTS + i_row)
    p_idx = INDICES + i_row * MAX_KEPT
    if KEY_RANGES > 1:
        # This program's part of the sorted kept list: blocks in [lo, lo + RANGE_BLOCKS).
        first, n_kept = _range_slice(p_idx, n_kept, MAX_KEPT, i_range * RANGE_BLOCKS, RANGE_BLOCKS)
        p_idx += first

    # [BS, BLOCK_D]
    b_q, o_m, m_m, m_d = load_q_tile(Q, i_b, i_h, i_p, stride_qb, stride_qh, stride_qm, stride_qd, LQ,
                                     HEAD_D, BS, BLOCK_D)
    o_d = tl.arange(0, BLOCK_D)
    o_n = tl.arange(0, BLOCK_N)
    if not TMA:
        k_base = K + i_b * stride_kb + i_h * stride_kh
        v_base = V + i_b * stride_vb + i_h * stride_vh

    b_m = tl.full([BS], float("-inf"), tl.float32)
    b_l = tl.zeros([BS], tl.float32)
    b_acc = tl.zeros([BS, BLOCK_D], tl.float32)
    if KEY_RANGES > 1:
        # [BS] scratch rows of this query block; [BS, BLOCK_D] its partial accumulator
        o_part = i_row * BS + tl.arange(0, BS)
        p_part = PART_ACC + o_part[:, None] * BLOCK_D + tl.arange(0, BLOCK_D)[None, :]
        if i_range > 0:
            b_m, b_l, b_acc = _resume_partial(FLAGS + i_row, i_range, PART_ML + o_part * 2, p_part)
    # Kept-block index of the next tile, loaded one iteration ahead: the tile's address then
    # does not wait on a global load in its own iteration (which cost 22-28% at density 1;
    # two iterations ahead stopped Triton from pipelining K and V; kernel-tuning.md, kernel v5).
    b_blk_next = tl.load(p_idx, mask=n_kept > 0, other=0)
    for it in range(0, tl.cdiv(n_kept, KPT) * TPB):
        if KPT == 1:
            # Part `it % TPB` of one kept block: a scalar index and contiguous rows, which
            # the copy engine (TMA, zeros past Lk) or the pipeliner's async copies fetch.
            b_blk = b_blk_next
            b_blk_next = tl.load(p_idx + tl.minimum((it + 1) // TPB, n_kept - 1))
            start = b_blk * BS + (it % TPB) * BLOCK_N
            m_key = start + o_n < LK
            if TMA:
                b_k = load_rows(K, K, i_b.to(tl.int32), i_h.to(tl.int32), start, LK, m_d, BLOCK_N, BLOCK_D, False,
                                True)
                b_v = load_rows(V, V, i_b.to(tl.int32), i_h.to(tl.int32), start, LK, m_d, BLOCK_N, BLOCK_D, False,
                                True)
            else:
                o_key = start.to(tl.int64) + o_n
        else:
            # Slot of the kept list each key row of the tile comes from. [BLOCK_N]
            o_slot = it * KPT + o_n // BS
            m_slot = o_slot < n_kept
            o_key = (tl.load(p_idx + o_slot, mask=m_slot, other=0) * BS + o_n % BS).to(tl.int64)
            m_key = m_slot & (o_key < LK)
        if not TMA:
            b_k = tl.load(k_base + o_key[:, None] * stride_kn + o_d[None, :] * stride_kd,
                          mask=m_key[:, None] & m_d[None, :], other=0.0)
            b_v = tl.load(v_base + o_key[:, None] * stride_vn + o_d[None, :] * stride_vd,
                          mask=m_key[:, None] & m_d[None, :], other=0.0)
        # Every tile holds >= 1 valid key, so the running max stays finite.
        b_m, b_l, b_acc, _, _ = online_softmax_step(b_q, b_k, b_v, m_key, b_m, b_l, b_acc, qk_scale,
                                                    BS, BLOCK_N, BLOCK_N, KPT > 1 or not EVEN_K, PRECISION)

    if KEY_RANGES > 1:
        if i_range == KEY_RANGES - 1:
            _store_row(O, LSE, b_m, b_l, b_acc, i_b, i_h, i_bh, o_m, m_m, m_d, stride_ob, stride_oh, stride_om,
                       stride_od, LQ, BLOCK_D, PRECISION)
        else:
            _hand_on_partial(FLAGS + i_row, i_range, PART_ML + o_part * 2, p_part, b_m, b_l, b_acc)
    else:
        _store_row(O, LSE, b_m, b_l, b_acc, i_b, i_h, i_bh, o_m, m_m, m_d, stride_ob, stride_oh, stride_om,
                   stride_od, LQ, BLOCK_D, PRECISION)


@triton.jit
def _store_row(O, LSE, b_m, b_l, b_acc, i_b, i_h, i_bh, o_m, m_m, m_d, stride_ob, stride_oh, stride_om, stride_od,
               LQ, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
    """Normalize a query block's online-softmax state and store out and lse; a row with no
    kept key (`l = 0`) gets `out = 0`, `lse = -inf`."""
    m_live = b_l > 0
    b_out = tl.where(m_live[:, None], b_acc / tl.where(m_live, b_l, 1.0)[:, None], 0.0)
    b_lse = tl.where(m_live, (b_m + tl.math.log2(tl.where(m_live, b_l, 1.0))) * 0.6931471805599453, float("-inf"))
    store_out_tile(O, b_out, i_b, i_h, o_m, m_m, m_d, stride_ob, stride_oh, stride_om, stride_od, BLOCK_D, PRECISION)
    tl.store(LSE + i_bh * LQ + o_m, b_lse, mask=m_m)


@triton.jit
def _row_and_range(FLAGS, NQB, KEY_RANGES: tl.constexpr):
    """`(row, key range)` of this program, numbered in the order programs start.

    Tickets come from a counter (`FLAGS[-1]`, zero at launch), not from the program id, so
    every lower ticket belongs to a program that has already started: the wait in
    `_resume_partial` is only ever on a running or finished program. Ticket order is
    (batch * head, key range, query block): a head's programs of one range run together and
    share that range's K / V in L2.
    """
    ticket = tl.atomic_add(FLAGS + tl.num_programs(0) // KEY_RANGES, 1).to(tl.int64)
    per_head = NQB * KEY_RANGES
    return (ticket // per_head) * NQB + ticket % NQB, (ticket % per_head) // NQB


@triton.jit
def _range_slice(p_idx, n_kept, MAX_KEPT, lo, RANGE_BLOCKS):
    """`(first, n)`: of the `n_kept` sorted kept-block indices at `p_idx`, the `n` from slot
    `first` on lie in `[lo, lo + RANGE_BLOCKS)`. The first chunk is read up to MAX_KEPT, so
    its load need not wait for `n_kept`; longer lists take more chunks."""
    CHUNK: tl.constexpr = 256
    first, n = _chunk_slice(p_idx, 0, n_kept, MAX_KEPT, lo, RANGE_BLOCKS, CHUNK)
    for c in range(CHUNK, n_kept, CHUNK):
        first_c, n_c = _chunk_slice(p_idx, c, n_kept, MAX_KEPT, lo, RANGE_BLOCKS, CHUNK)
        first += first_c
        n += n_c
    return first, n


@triton.jit
def _chunk_slice(p_idx, c, n_kept, MAX_KEPT, lo, RANGE_BLOCKS, CHUNK: tl.constexpr):
    """`_range_slice`'s counts over slots `[c, c + CHUNK)`."""
    o = c + tl.arange(0, CHUNK)
    b_rel = tl.load(p_idx + o, mask=o < MAX_KEPT, other=0) - lo
    m_kept = o < n_kept
    return (tl.sum((m_kept & (b_rel < 0)).to(tl.int32)),
            tl.sum((m_kept & (b_rel >= 0) & (b_rel < RANGE_BLOCKS)).to(tl.int32)))


@triton.jit
def _resume_partial(p_flag, i_range, p_ml, p_part):
    """The online-softmax state `(m [BS], l [BS], acc [BS, BLOCK_D])` that the program of the
    previous key range handed on, once its flag says it is there."""
    done = tl.atomic_add(p_flag, 0, sem="acquire")
    while done < i_range:
        done = tl.atomic_add(p_flag, 0, sem="acquire")
    # Read past L1: the state was written by another SM.
    b_m = tl.load(p_ml, cache_modifier=".cg")
    b_l = tl.load(p_ml + 1, cache_modifier=".cg")
    return b_m, b_l, tl.load(p_part, cache_modifier=".cg")


@triton.jit
def _hand_on_partial(p_flag, i_range, p_ml, p_part, b_m, b_l, b_acc):
    """Store the online-softmax state for the next key range's program and raise the flag."""
    tl.store(p_ml, b_m)
    tl.store(p_ml + 1, b_l)
    tl.store(p_part, b_acc)
    # Every thread's stores before the flag (the barrier), the flag with release semantics.
    tl.debug_barrier()
    tl.atomic_xchg(p_flag, i_range + 1, sem="release")


def _sparse_configs_prune(configs, named_args, **kwargs):
    args = {**named_args, **kwargs}
    bs = args["BS"]
    kept = [c for c in configs if 64 <= c.kwargs["BLOCK_N"] <= 256 and key_tile_fits(c.kwargs["BLOCK_N"], bs)
            and c.num_warps == max(4, bs // 16) and not (args["TMA"] and c.kwargs["BLOCK_N"] > bs)
            and smem_estimate(c.num_stages, bs, c.kwargs["BLOCK_N"], args["BLOCK_D"]) <= SMEM_BUDGET]
    return kept or configs[:1]


# Key tile rows (64, 128, 256) x warps (4, 8) x pipeline depth (2, 3, 4) = 18; the pruning
# keeps one warpgroup per 64 query rows (4 warps at block 64, 8 at 128), key tiles of whole
# blocks or whole fractions of one, 64-256 rows (narrower wastes the tensor cores), no
# gathered tiles for TMA, and the pipelined tiles within shared memory: for D = 128, 3
# configs at block 64 and 4 at block 128 through TMA (4 and 4 through pointers;
# docs/kernel-tuning.md).
_SPARSE_CONFIGS = [
    triton.Config({"BLOCK_N": bn}, num_warps=w, num_stages=s, pre_hook=set_tile_rows({"K": "BLOCK_N", "V": "BLOCK_N"}))
    for bn in (64, 128, 256) for w in (4, 8) for s in (2, 3, 4)
]

_block_sparse_tuned = triton.autotune(
    configs=_SPARSE_CONFIGS, key=["BS", "BLOCK_D", "ORDERED", "EVEN_K", "TMA"],
    prune_configs_by={"early_config_prune": _sparse_configs_prune},
)(_block_sparse_attention_fwd_kernel)

# The same with key ranges: the flags and the ticket counter start at zero for every timed run.
_block_sparse_ranges_tuned = triton.autotune(
    configs=_SPARSE_CONFIGS, key=["BS", "BLOCK_D", "EVEN_K", "TMA", "KEY_RANGES"],
    prune_configs_by={"early_config_prune": _sparse_configs_prune}, reset_to_zero=["FLAGS"],
)(_block_sparse_attention_fwd_kernel)

#: Most key ranges a row is split into (`ADASPA_KEY_RANGES` lowers it; 1 turns splitting
#: off); the share of L2 one range's K and V may fill; and kept blocks per range (of the
#: mask's widest row) below which a split costs more than it saves (docs/kernel-tuning.md,
#: "Kernel v8").
MAX_KEY_RANGES = 4
L2_SHARE = 0.5
MIN_KEPT_PER_RANGE = 80


def key_ranges(k: torch.Tensor, block_size: int, max_kept: int) -> int:
    """Key ranges the block-sparse kernel splits rows into, for keys `k [B, H, Lk, D]` and a
    mask of `block_size` whose rows keep at most `max_kept` blocks (`ranges_for` on the
    device's L2 size; 1 off the GPU).

    Example:
        >>> k = torch.empty(1, 24, 118784, 128, device="cuda", dtype=torch.bfloat16)
        >>> key_ranges(k, 64, max_kept=371)  # H100, 50 MB of L2
        3
    """
    if k.device.type != "cuda":
        return 1
    l2_bytes = torch.cuda.get_device_properties(k.device).L2_cache_size
    return ranges_for(2 * k.shape[2] * k.shape[3] * k.element_size(), l2_bytes, block_size, max_kept)


def ranges_for(head_kv_bytes: int, l2_bytes: int, block_size: int, max_kept: int) -> int:
    """Key ranges for one head's K and V of `head_kv_bytes` on a GPU with `l2_bytes` of L2.

    At block 64 a program does 64 FLOPs per byte of K / V, so its rate depends on K / V
    reads hitting L2. The programs that run at once belong to one head and, with random
    masks, read all of its K / V: once a head's K and V exceed L2 (61 MB at Lk = 118784,
    D = 128, bf16, against the H100's 50 MB) many reads go to HBM. Split into key ranges
    of at most `L2_SHARE` of L2 each, the programs of one head and range run together.
    Each range costs a program a fixed start and a hand-over of its state, so a range
    should hold at least `MIN_KEPT_PER_RANGE` kept blocks of the widest row, and there are
    at most `MAX_KEY_RANGES`, or `ADASPA_KEY_RANGES` if that is lower. 1 (no split) at
    block 128 (128 FLOPs per byte) and whenever a head's K / V fit in `L2_SHARE` of L2
    (L <= 51200 at D = 128, bf16, on the H100).

    Example:
        >>> ranges_for(2 * 118784 * 128 * 2, 50 * 2**20, block_size=64, max_kept=1856)
        3
        >>> ranges_for(2 * 32768 * 128 * 2, 50 * 2**20, block_size=64, max_kept=512)
        1
    """
    if block_size != 64:
        return 1
    cap = os.environ.get("ADASPA_KEY_RANGES", str(MAX_KEY_RANGES))
    if not cap.isdigit() or int(cap) < 1:
        raise ValueError(f"ADASPA_KEY_RANGES must be a positive integer, got {cap!r}")
    most = min(MAX_KEY_RANGES, int(cap))
    to_fit_l2 = math.ceil(head_kv_bytes / (L2_SHARE * l2_bytes))
    return max(1, min(most, to_fit_l2, max_kept // MIN_KEPT_PER_RANGE))


def heavy_first_order(counts: torch.Tensor) -> torch.Tensor:
    """Flattened row ids of `counts [B, H, nq]` sorted by count, largest first (int32, on device)."""
    return torch.argsort(counts.reshape(-1), descending=True, stable=True).to(torch.int32)


def _block_sparse_attention(q, k, v, mask, *, scale=None, heavy_first=False, config=None, ranges=None):
    """`block_sparse_attention`, optionally launching the longest rows first, autotuned or
    (tests) with one given `triton.Config` of `_SPARSE_CONFIGS`, with `ranges` key ranges
    (default `key_ranges`; 1 with `heavy_first`)."""
    shape = check_attention_inputs(q, k, v)
    check_mask_matches(mask, shape, q.device)
    check_kernel_block_size(mask.block_size, "mask.block_size")
    check_kernel_inputs(q, shape.head_dim)
    check_block_tiles_fit(q.dtype, shape.head_dim, mask.block_size, "mask.block_size")
    scale = resolve_scale(scale, shape.head_dim)
    B, H, LQ, LK, D = shape
    bs = mask.block_size
    nq = mask.num_q_blocks
    block_d = padded_head_dim(D)
    indices = mask.indices.contiguous()
    counts = mask.counts.contiguous()
    if config is None and use_hopper_kernel(q, k, v, bs):
        from .hopper import hopper_attention

        return hopper_attention(q, k, v, mask, scale=scale, order=heavy_first_order(counts) if heavy_first else None)
    order = heavy_first_order(counts) if heavy_first else counts
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty(B, H, LQ, device=q.device, dtype=torch.float32)
    tma = tma_eligible(k, v, block_d=block_d)
    tuned = config is None and use_autotune(q.dtype, block_d, bs)
    if config is None and not tuned:
        block_n = bs if tma else max(bs, 64)
        config = triton.Config({"BLOCK_N": block_n}, **fixed_config(bs, block_n, block_d, q.element_size()))
    # Descriptor tiles: the config's height, or (autotuned) any height the pre-hook then resizes.
    rows = bs if tuned else config.kwargs["BLOCK_N"]
    k_arg, v_arg = (row_tiles(k, rows, block_d), row_tiles(v, rows, block_d)) if tma else (k, v)
    if ranges is None:
        ranges = 1 if heavy_first else key_ranges(k, bs, indices.shape[-1])
    if ranges < 1 or (heavy_first and ranges > 1):
        raise ValueError(f"ranges must be >= 1, and 1 with heavy_first; got {ranges}")
    if ranges > 1:
        # Per row: a done-ranges flag, then the ticket counter; the online-softmax state
        # handed from one range to the next: m and l [rows, 2], acc [rows, BLOCK_D].
        flags = torch.zeros(B * H * nq + 1, device=q.device, dtype=torch.int32)
        part_ml = torch.empty(B * H * nq * bs, 2, device=q.device, dtype=torch.float32)
        part_acc = torch.empty(B * H * nq * bs, block_d, device=q.device, dtype=torch.float32)
    else:
        flags = part_ml = part_acc = counts  # unused
    args = (q, k_arg, v_arg, out, lse, indices, counts, order, flags, part_acc, part_ml, *strides4(q), *strides4(k),
            *strides4(v), *strides4(out), H, LQ, LK, nq, indices.shape[-1], -(-mask.num_kv_blocks // ranges),
            scale * LOG2E)
    meta = dict(HEAD_D=D, BLOCK_D=block_d, BS=bs, ORDERED=heavy_first, EVEN_K=LK % bs == 0, KEY_RANGES=ranges,
                PRECISION=dot_precision(q.dtype), TMA=tma)
    grid = (B * H * nq * ranges,)
    if tuned:
        (_block_sparse_ranges_tuned if ranges > 1 else _block_sparse_tuned)[grid](*args, **meta)
    else:
        _block_sparse_attention_fwd_kernel[grid](*args, **meta, **config.all_kwargs())
    return out, lse


def block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask, *, scale=None):
    """Attention restricted to the key blocks `mask` keeps, per (batch, head, query block).

    The softmax runs over the kept keys only; keys past Lk in a kept partial block are
    ignored; a row whose query block keeps no key block gets `out = 0`, `lse = -inf`.

    Args:
        q: `[B, H, Lq, D]` float16 / bfloat16 / float32 CUDA tensor, any strides, D <= 256.
        k, v: `[B, H, Lk, D]`, same dtype and device.
        mask: `BlockSparseMask` for (B, H, Lq, Lk) on q's device; its `block_size`
            (16, 32, 64 or 128; <= 64 for float32 with D > 128) is the block size of the attention.
        scale: softmax scale, default `1/sqrt(D)`.

    Returns:
        out `[B, H, Lq, D]` in q's dtype, lse float32 `[B, H, Lq]` (natural log).

    Example:
        >>> from adaspa import BlockSparseMask
        >>> q = k = v = torch.randn(1, 2, 256, 64, device="cuda", dtype=torch.bfloat16)
        >>> mask = BlockSparseMask.full(1, 2, 256, 256, 64, device="cuda")
        >>> out, lse = block_sparse_attention(q, k, v, mask)
        >>> out.shape
        torch.Size([1, 2, 256, 64])
    """
    return _block_sparse_attention(q, k, v, mask, scale=scale)
