"""Head-adaptive block-sparse attention over a `BlockSparseMask`.

One program per (batch, head, query block) walks the `counts[b, h, p]` kept key blocks
listed in `indices[b, h, p]`, one key tile at a time, with dense attention's online-softmax
step (`flash_fwd.online_softmax_step`). A key tile is a whole kept block or a whole
fraction of one (e.g. 64 rows at block 128), read as contiguous rows: on Hopper with
aligned half-precision inputs through the tensor copy engine (TMA: one `[BLOCK_N, D]` box,
zeros past Lk), else through pointers. Through pointers a tile may also gather several
kept blocks row by row (so a 16-row block size still gets 64-wide dots). The softmax runs
over the kept keys only; a row with no kept block writes `out = 0`, `lse = -inf`. On
Hopper, half-precision inputs the copy engine accepts run the warp-specialized Gluon
kernel instead (`hopper.py`, block 64 and 128, with the same walk order); this kernel
runs everything else, and every input when a test or probe forces a `config` or `period`.

Load balance: heads keep different numbers of blocks (three tiers), and rows differ too.
Programs are launched in row order, (batch, head, query block), so neighbouring programs
share a head's K / V in L2. Each head has `nq` programs (1856 at L = 118784, block 64),
far more than run at once, so a heavy head never runs alone and only the last wave can
be uneven. Longest-first order (`heavy_first=True` of `_block_sparse_attention`: a device
argsort of `counts`, descending) was the default until kernel v5; side by side on the
H200 it was slower in 20-26 of 30 tiered cases per run (up to 11% at L = 16384, where
its extra launch shows) and at most 2.4% faster (docs/kernels.md, docs/benchmarks.md).
What row order does not handle is a few rows far longer than the rest: AdaSpa keeps every
key block for a query block holding text, so with the text last (HunyuanVideo) each head
ends in rows 18x the others at density 0.05, and the last head's run on alone after
everything else. So rows over `LONG_ROW_FACTOR` times the mean launch first and the rest
keep row order (`long_rows_first_order`, computed once per mask, `launch_order`): on the
H100, AdaSpa's masks for a 119K-token video ran 3-4% faster at block 64 and 3-6% at block
128 (d = 0.05-0.1), and masks without such rows launch in row order as before
(docs/kernel-tuning.md, "Kernel v11").

Rotated walks (block 64, long sequences; `walks_rotate` decides). Every program of a head
reads from all of that head's K / V with random masks, and once those outgrow L2 (61 MB at
L = 118784, D = 128, bf16, against the H100's 50 MB) many reads go to HBM, unless the
programs running at once read the same part of them at the same time. Programs start one
after another as slots free up, so program `pid` starts its walk at the first kept block
at or after key block `(pid mod P) * nk / P` and wraps around, where `P` is the number of
programs resident at once (`resident_programs`): the programs running together then stand
at about the same key block, and sweep the head's K / V together. The online softmax is
order-independent up to rounding, so only the last bits change, and they are a fixed
function of `P` (deterministic on one GPU model). On the H100 at L = 118784 this took block
64 from v8's 405-490 to 446-495 TFLOP/s (1.8-1.9x FlexAttention), and it needs no scratch,
where v8's key ranges handed an fp32 state between programs (docs/kernel-tuning.md, "Kernel
v9").
"""

from __future__ import annotations

import weakref

import torch
import triton
import triton.language as tl

from .._validation import check_attention_inputs, check_mask_matches, resolve_scale
from ._launch import (LOG2E, SMEM_BUDGET, check_kernel_block_size, check_kernel_inputs, dot_precision, fixed_config,
                      key_tile_fits, load_q_tile, load_rows, padded_head_dim, row_tiles, set_tile_rows, sm_count,
                      smem_estimate, store_out_tile, strides4, tma_eligible, use_autotune, use_hopper_kernel,
                      wide_float32_rows)
from .flash_fwd import online_softmax_step


@triton.jit(do_not_specialize=["WALK_PERIOD"])
def _block_sparse_attention_fwd_kernel(
    Q, K, V, O, LSE, INDICES, COUNTS, ORDER,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    H, LQ, LK, NQB, MAX_KEPT, WALK_PERIOD, qk_scale,
    HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr, BS: tl.constexpr, EVEN_K: tl.constexpr,
    ROTATED: tl.constexpr, PRECISION: tl.constexpr, TMA: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Program `pid` handles row `ORDER[pid // QPB]` of the flattened `[B * H * nq]` mask, all
    of its query block (BLOCK_M = BS, QPB = 1) or part `pid % QPB` of it (QPB = BS // BLOCK_M
    programs per block: float32 with D > 128 at block 128, `_launch.wide_float32_rows`).

    A key tile of BLOCK_N rows is either `BLOCK_N // BS` kept blocks gathered row by row
    (pointers only) or a whole fraction of one kept block (`BS // BLOCK_N` tiles per block).
    EVEN_K (Lk a multiple of BS) means every tile of one block lies inside Lk, so those
    tiles skip the key mask. K and V are `row_tiles` descriptors of `[BLOCK_N, BLOCK_D]`
    tiles when TMA, else tensors read through pointers. The kept blocks are visited in key
    order, or with ROTATED from the first one at or after key block
    `(pid mod WALK_PERIOD) * nk / WALK_PERIOD` on, wrapping around (`_walk_slot`).
    """
    # Kept blocks per key tile (> 1: gathered) and key tiles per kept block.
    KPT: tl.constexpr = BLOCK_N // BS if BLOCK_N > BS else 1
    TPB: tl.constexpr = BS // BLOCK_N if BS > BLOCK_N else 1
    QPB: tl.constexpr = BS // BLOCK_M
    pid = tl.program_id(0)
    i_row = tl.load(ORDER + pid // QPB).to(tl.int64)
    i_bh = i_row // NQB
    i_p = i_row % NQB
    i_b = i_bh // H
    i_h = i_bh % H
    n_kept = tl.load(COUNTS + i_row)
    p_idx = INDICES + i_row * MAX_KEPT
    first = 0
    if ROTATED:
        first = _count_below(p_idx, n_kept, MAX_KEPT, ((pid % WALK_PERIOD) * tl.cdiv(LK, BS)) // WALK_PERIOD)

    # [BLOCK_M, BLOCK_D]
    b_q, o_m, m_m, m_d = load_q_tile(Q, i_b, i_h, i_p * QPB + pid % QPB, stride_qb, stride_qh, stride_qm, stride_qd,
                                     LQ, HEAD_D, BLOCK_M, BLOCK_D)
    o_d = tl.arange(0, BLOCK_D)
    o_n = tl.arange(0, BLOCK_N)
    if not TMA:
        k_base = K + i_b * stride_kb + i_h * stride_kh
        v_base = V + i_b * stride_vb + i_h * stride_vh

    b_m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    b_l = tl.zeros([BLOCK_M], tl.float32)
    b_acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    # Kept-block index of the next tile, loaded one iteration ahead: the tile's address then
    # does not wait on a global load in its own iteration (which cost 22-28% at density 1;
    # two iterations ahead stopped Triton from pipelining K and V; kernel-tuning.md, kernel v5).
    b_blk_next = tl.load(p_idx + _walk_slot(0, first, n_kept, ROTATED), mask=n_kept > 0, other=0)
    for it in range(0, tl.cdiv(n_kept, KPT) * TPB):
        if KPT == 1:
            # Part `it % TPB` of one kept block: a scalar index and contiguous rows, which
            # the copy engine (TMA, zeros past Lk) or the pipeliner's async copies fetch.
            b_blk = b_blk_next
            b_blk_next = tl.load(p_idx + _walk_slot(tl.minimum((it + 1) // TPB, n_kept - 1), first, n_kept, ROTATED))
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
            o_key = (tl.load(p_idx + _walk_slot(o_slot, first, n_kept, ROTATED), mask=m_slot, other=0) * BS
                     + o_n % BS).to(tl.int64)
            m_key = m_slot & (o_key < LK)
        if not TMA:
            b_k = tl.load(k_base + o_key[:, None] * stride_kn + o_d[None, :] * stride_kd,
                          mask=m_key[:, None] & m_d[None, :], other=0.0)
            b_v = tl.load(v_base + o_key[:, None] * stride_vn + o_d[None, :] * stride_vd,
                          mask=m_key[:, None] & m_d[None, :], other=0.0)
        # Every tile holds >= 1 valid key, so the running max stays finite.
        b_m, b_l, b_acc, _, _ = online_softmax_step(b_q, b_k, b_v, m_key, b_m, b_l, b_acc, qk_scale,
                                                    BLOCK_M, BLOCK_N, BLOCK_N, KPT > 1 or not EVEN_K, PRECISION)

    _store_row(O, LSE, b_m, b_l, b_acc, i_b, i_h, i_bh, o_m, m_m, m_d, stride_ob, stride_oh, stride_om, stride_od,
               LQ, BLOCK_D, PRECISION)


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
def _walk_slot(slot, first, n_kept, ROTATED: tl.constexpr):
    """Slot of the kept list visited `slot`-th: `slot` itself, or with ROTATED `first + slot`
    wrapped around the `n_kept` kept blocks."""
    if ROTATED:
        slot = slot + first
        slot = tl.where(slot >= n_kept, slot - n_kept, slot)
    return slot


@triton.jit
def _count_below(p_idx, n_kept, MAX_KEPT, bound):
    """How many of the `n_kept` sorted kept-block indices at `p_idx` are below key block
    `bound`: the slot of the first kept block at or after it. Read 256 slots at a time; the
    first chunk up to MAX_KEPT, so its load need not wait for `n_kept`."""
    CHUNK: tl.constexpr = 256
    below = _count_below_in_chunk(p_idx, 0, n_kept, MAX_KEPT, bound, CHUNK)
    for c in range(CHUNK, n_kept, CHUNK):
        below += _count_below_in_chunk(p_idx, c, n_kept, MAX_KEPT, bound, CHUNK)
    return below


@triton.jit
def _count_below_in_chunk(p_idx, c, n_kept, MAX_KEPT, bound, CHUNK: tl.constexpr):
    """`_count_below` over slots `[c, c + CHUNK)`."""
    o = c + tl.arange(0, CHUNK)
    b_idx = tl.load(p_idx + o, mask=o < MAX_KEPT, other=0)
    return tl.sum(((o < n_kept) & (b_idx < bound)).to(tl.int32))


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
# docs/kernel-tuning.md). Block 64 through TMA runs `BLOCK64_CONFIG` instead of tuning.
_SPARSE_CONFIGS = [
    triton.Config({"BLOCK_N": bn}, num_warps=w, num_stages=s, pre_hook=set_tile_rows({"K": "BLOCK_N", "V": "BLOCK_N"}))
    for bn in (64, 128, 256) for w in (4, 8) for s in (2, 3, 4)
]

_block_sparse_tuned = triton.autotune(
    configs=_SPARSE_CONFIGS, key=["BS", "BLOCK_D", "EVEN_K", "ROTATED", "TMA"],
    prune_configs_by={"early_config_prune": _sparse_configs_prune},
)(_block_sparse_attention_fwd_kernel)

#: Share of L2 a head's K and V may fill before block-64 rows walk from staggered starts
#: (`walks_rotate`).
L2_SHARE = 0.5

#: The config of block 64 through the copy engine (Hopper) and of rotated walks, instead
#: of the autotuner: 64-row tiles, 3 stages, 2 programs per SM at D = 128. Every probe of
#: kernels v8 and v9 ran it; the autotuner, which times its candidates once per process
#: under the power cap, picked one 7% slower in run 24 (docs/kernel-tuning.md, "Kernel
#: v9"), and rotated walks need the compiled kernel's shared memory before the launch.
BLOCK64_CONFIG = triton.Config({"BLOCK_N": 64}, num_warps=4, num_stages=3)


def walks_rotate(head_kv_bytes: int, l2_bytes: int, block_size: int) -> bool:
    """Whether rows walk their kept blocks from staggered starts, for one head's K and V of
    `head_kv_bytes` on a GPU with `l2_bytes` of L2.

    At block 64 a program does 64 FLOPs per byte of K / V, so its rate depends on K / V
    reads hitting L2. The programs that run at once belong to one head and, with random
    masks, read all of its K / V; once those exceed L2 (61 MB at Lk = 118784, D = 128,
    bf16, against the H100's 50 MB), walks in key order that start at staggered times
    read all of it at once and many reads go to HBM. Rotated walks keep the programs
    running together on one part of it. Only at block 64 (block 128 does 128 FLOPs per
    byte) and once a head's K and V exceed `L2_SHARE` of L2 (above ~51K tokens at D = 128,
    bf16, on the H100): at L = 32768, where they fit, rotating cost up to 3.4%.

    Example:
        >>> walks_rotate(2 * 118784 * 128 * 2, 50 * 2**20, block_size=64)
        True
        >>> walks_rotate(2 * 32768 * 128 * 2, 50 * 2**20, block_size=64)
        False
    """
    return block_size == 64 and head_kv_bytes > L2_SHARE * l2_bytes


def resident_programs(device: torch.device, shared_bytes: int, registers: int = 0) -> int:
    """Programs of `shared_bytes` of shared memory and `registers` registers each (0: not
    counted) that `device` runs at once: its SMs times the programs one SM holds. Where
    registers are not counted and are the tighter limit this overcounts, the safe side: on
    the H100 (264 programs of the block-64 kernel at once) a period of 528 ran within 3.2%
    of 264, and 132 lost about 20% (docs/kernel-tuning.md, "Kernel v9").

    Example:
        >>> resident_programs(torch.device("cuda"), 112 * 1024)  # H100: 132 SMs, 227 KiB a program at most
        264
        >>> resident_programs(torch.device("cuda"), 56 * 1024, registers=32768)  # 64K registers an SM
        264
    """
    index = device.index if device.index is not None else torch.cuda.current_device()
    per_sm = triton.runtime.driver.active.utils.get_device_properties(index)["max_shared_mem"] // max(shared_bytes, 1)
    if registers:
        per_sm = min(per_sm, 65536 // registers)
    return sm_count(device) * max(1, per_sm)


def heavy_first_order(counts: torch.Tensor) -> torch.Tensor:
    """Flattened row ids of `counts [B, H, nq]` sorted by count, largest first (int32, on device)."""
    return torch.argsort(counts.reshape(-1), descending=True, stable=True).to(torch.int32)


#: Rows keeping more than this many times the mean number of blocks launch first (`long_rows_first_order`).
LONG_ROW_FACTOR = 4


def long_rows_first_order(counts: torch.Tensor) -> torch.Tensor:
    """Flattened row ids of `counts [B, H, nq]`: the rows keeping over `LONG_ROW_FACTOR` times
    the mean count first, then the others, each group in row order (int32, on device).

    Example:
        >>> long_rows_first_order(torch.tensor([[[2, 2, 40, 2, 2, 2, 2, 2]]])).tolist()
        [2, 0, 1, 3, 4, 5, 6, 7]
    """
    flat = counts.reshape(-1).to(torch.float32)  # [B * H * nq]
    is_long = (flat > LONG_ROW_FACTOR * flat.mean()).to(torch.int8)
    return torch.argsort(is_long, descending=True, stable=True).to(torch.int32)


# Launch order of each live mask, keyed by the id of its `counts` tensor and dropped with it
# (`launch_order`; masks and tensors compare by value, so they cannot key a WeakKeyDictionary).
_launch_orders: dict = {}


def launch_order(mask) -> torch.Tensor:
    """`long_rows_first_order(mask.counts)`, computed at the first call for `mask` and kept
    while the mask lives: AdaSpa reuses a layer's mask for every step between two searches.
    Not kept when computed during CUDA-graph capture (its kernels are then part of the
    graph). Every order gives a correct result, so a mask whose counts change in place after
    its first call stays correct (its order may then be a slower one). Without rotated walks
    the result does not depend on the order, bit for bit; with them (block 64, long
    sequences) a row's start does, so its last bits do too.

    Example:
        >>> from adaspa import BlockSparseMask
        >>> keep = torch.zeros(1, 1, 9, 9, dtype=torch.bool)
        >>> keep[..., 0] = keep[0, 0, 8] = True  # a text column, and a text row keeping every block
        >>> mask = BlockSparseMask.from_dense(keep, 64, 576, 576)
        >>> launch_order(mask).tolist()
        [8, 0, 1, 2, 3, 4, 5, 6, 7]
        >>> launch_order(mask) is launch_order(mask)
        True
    """
    key = id(mask.counts)
    order = _launch_orders.get(key)
    if order is None:
        order = long_rows_first_order(mask.counts)
        if not (order.is_cuda and torch.cuda.is_current_stream_capturing()):
            _launch_orders[key] = order
            weakref.finalize(mask.counts, _launch_orders.pop, key, None)
    return order


def _block_sparse_attention(q, k, v, mask, *, scale=None, heavy_first=False, config=None, period=None):
    """`block_sparse_attention`, optionally launching the longest rows first, with `config`
    (default: `BLOCK64_CONFIG` at block 64 through the copy engine or with rotated walks,
    else the autotuner; tests pass one of `_SPARSE_CONFIGS`), with kept blocks walked in key
    order (`period=0`) or rotated with period `period` (default: `walks_rotate` on the GPU's
    L2 decides, with a period of `resident_programs`). With neither `config` nor `period`,
    inputs `use_hopper_kernel` accepts run the Gluon kernel (`hopper.hopper_attention`), its
    period from `hopper.block64_footprint`; a `config` or `period` forces this Triton kernel."""
    shape = check_attention_inputs(q, k, v)
    check_mask_matches(mask, shape, q.device)
    check_kernel_block_size(mask.block_size, "mask.block_size")
    check_kernel_inputs(q, shape.head_dim)
    scale = resolve_scale(scale, shape.head_dim)
    if period is not None and (not isinstance(period, int) or period < 0):
        raise ValueError(f"period must be None or an int >= 0, got {period!r}")
    B, H, LQ, LK, D = shape
    bs = mask.block_size
    nq = mask.num_q_blocks
    block_d = padded_head_dim(D)
    indices = mask.indices.contiguous()
    counts = mask.counts.contiguous()
    default_rotation = period is None and q.device.type == "cuda" and walks_rotate(
        2 * LK * D * k.element_size(), torch.cuda.get_device_properties(q.device).L2_cache_size, bs)
    order = heavy_first_order(counts) if heavy_first else launch_order(mask)
    if config is None and period is None and use_hopper_kernel(q, k, v, bs):
        from .hopper import block64_footprint, hopper_attention

        walk_period = resident_programs(q.device, *block64_footprint(D, q.element_size())) if default_rotation else 0
        return hopper_attention(q, k, v, mask, scale=scale, period=walk_period, order=order)
    tma = tma_eligible(k, v, block_d=block_d)
    # One config, not the autotuner: BLOCK64_CONFIG where it fits, else the fixed one below.
    untuned_block64 = bs == 64 and (tma or default_rotation)
    if config is None and untuned_block64 and smem_estimate(
            BLOCK64_CONFIG.num_stages, bs, 64, block_d, elem_bytes=q.element_size()) <= SMEM_BUDGET:
        config = BLOCK64_CONFIG
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty(B, H, LQ, device=q.device, dtype=torch.float32)
    tuned = config is None and not untuned_block64 and use_autotune(q.dtype, block_d, bs)
    if config is None and not tuned:
        # Query and key tiles of whole blocks, or for float32 with D > 128 at block 128 of half blocks.
        cap = wide_float32_rows(q.dtype, D) or bs
        block_m, block_n = min(bs, cap), min(bs if tma else max(bs, 64), cap)
        config = triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n},
                               **fixed_config(block_m, block_n, block_d, q.element_size()))
    # Descriptor tiles: the config's height, or (autotuned) any height the pre-hook then resizes.
    rows = bs if tuned else config.kwargs["BLOCK_N"]
    k_arg, v_arg = (row_tiles(k, rows, block_d), row_tiles(v, rows, block_d)) if tma else (k, v)
    # Query tiles of whole blocks unless the config says otherwise; a config's values win.
    block_m = bs if tuned else config.kwargs.get("BLOCK_M", bs)
    meta = dict(HEAD_D=D, BLOCK_D=block_d, BS=bs, EVEN_K=LK % bs == 0, ROTATED=default_rotation or bool(period),
                PRECISION=dot_precision(q.dtype), TMA=tma, BLOCK_M=block_m)
    if not tuned:
        meta.update(config.all_kwargs())
    grid = (B * H * nq * (bs // block_m),)

    def args(walk_period):
        return (q, k_arg, v_arg, out, lse, indices, counts, order, *strides4(q), *strides4(k), *strides4(v),
                *strides4(out), H, LQ, LK, nq, indices.shape[-1], walk_period, scale * LOG2E)

    if default_rotation:
        # The compiled kernel's shared memory sets how many programs run at once (the
        # period is not specialized on, so this compiles the kernel launched below).
        compiled = _block_sparse_attention_fwd_kernel.warmup(*args(1), grid=grid, **meta)
        period = resident_programs(q.device, compiled.metadata.shared)
    if tuned:
        _block_sparse_tuned[grid](*args(period or 0), **meta)
    else:
        _block_sparse_attention_fwd_kernel[grid](*args(period or 0), **meta)
    return out, lse


def block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask, *, scale=None):
    """Attention restricted to the key blocks `mask` keeps, per (batch, head, query block).

    The softmax runs over the kept keys only; keys past Lk in a kept partial block are
    ignored; a row whose query block keeps no key block gets `out = 0`, `lse = -inf`.

    Args:
        q: `[B, H, Lq, D]` float16 / bfloat16 / float32 CUDA tensor, any strides, D <= 256.
        k, v: `[B, H, Lk, D]`, same dtype and device.
        mask: `BlockSparseMask` for (B, H, Lq, Lk) on q's device; its `block_size`
            (16, 32, 64 or 128) is the block size of the attention.
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
