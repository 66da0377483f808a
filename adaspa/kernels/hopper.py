"""Warp-specialized attention for Hopper (sm_90), written in Gluon: dense, block-sparse and the fused search.

Why a second kernel. The Triton kernels run the softmax of a key tile and its two matrix
products one after the other: Triton 3.6 waits on every `tl.dot` whose result the next
iteration carries, and has no warp specialization on Hopper, so the tensor cores idle while
a tile's exp2 runs (docs/kernel-tuning.md). Gluon exposes what FlashAttention-3 uses:

- partitions: a producer warp streams K / V tiles with the copy engine (TMA) into a
  `STAGES`-deep ring, with a ready and an empty mbarrier per slot; two consumer
  warpgroups each own 64 query rows of a 128-row block and share every K / V tile;
- in each consumer, `S_j = Q K_j^T` and `O += P_{j-1} V_{j-1}` are issued as async
  wgmmas and the softmax of `S_j` runs while `P_{j-1} V_{j-1}` is on the tensor cores;
- the consumers are separate partitions with no CTA-wide barrier between them, so one
  runs its softmax while the other's products run (ping-pong, left to the warp scheduler).

One program is one (batch, head, 128-row query block); dense attention is the same loop
over every key block. With `WITH_MASS` (dense only) it is also the fused search: per tile
each consumer stores `log2(row sum) + running max` of every key block into a scratch slot
the program holds, and after the loop sums `exp2(stored - lse2)` over its rows into the
block mass (the one-pass scheme of the Triton kernel, `flash_fwd.py`).

Block 64 (`CONSUMERS = 1`) is the same kernel with one consumer and 64-row K / V tiles:
one program per 64-row query block, two programs per SM (112 KiB of shared memory at
D = 128, 8 warps of 128 registers), the two programs' consumers alternating as the two
consumers of a block-128 program do. Its rows walk their kept blocks from staggered starts
once a head's K / V outgrow half of L2 (`block_sparse.walks_rotate`, "Rotated walks" in
block_sparse.py), the Triton kernel's rule. It visits the blocks in the same order and
rounds the same way as the Triton kernel, whose outputs it matched bit for bit on the H100.

Measured on an H100 at L = 118784 (docs/benchmarks.md, kernels v6, v7 and v10): dense
1.01-1.02x SDPA-cuDNN throughput in the sweeps, against 0.855x for the Triton kernel;
block-sparse at block 128 564-670 TFLOP/s effective at densities 0.05-1, against 437-479;
at block 64 468-520 against the Triton kernel's 446-495, 2.6-5.4% faster round-robin (the
softmax of a tile under the previous tile's `P V`: without any softmax the Triton loop
reached 488-515, what random 64-row tiles allow on that card, whose 700 W power cap holds
every kernel here at about 1.5 GHz: docs/kernel-tuning.md, "After v11"); the fused search
1.125x / 1.066x SDPA-cuDNN time at block 64 / 128, against 1.298x / 1.302x.

When it runs (`_launch.use_hopper_kernel`, `use_hopper_search`): a CUDA tensor on a
compute-capability 9.x GPU, Triton >= 3.6, float16 / bfloat16, D of 64 or 128, strides the
copy engine accepts (`_launch.tma_eligible`); block size 64 or 128 for block-sparse
attention and for the fused search. fp32, other head dims and block sizes, the interpreter
and other GPUs run the Triton kernels. `ADASPA_GLUON=0` turns this path off (A/B runs;
tests run both).
"""

from __future__ import annotations

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from ._launch import LOG2E, scratch_slots

#: Query rows per consumer warpgroup (one wgmma M tile of 4 warps); a program has two, or one at block 64.
WG_ROWS = gl.constexpr(64)
#: Rows of a query block and of a key tile with two consumers (dense, block 128, the fused search).
BLOCK = gl.constexpr(128)
#: Ring depth of 128-row tiles: three slots were no faster than two within the spread
#: between runs (docs/kernel-tuning.md, "Kernel v6").
STAGES = 2
#: Registers per thread: 12 warps (two consumer warpgroups, one producer warp padded to a
#: warpgroup) at 168 fill the register file; the producer gives back all but 24 and each
#: consumer takes 240 (no spills: tests/test_hopper.py compiles it and checks).
MAXNREG = 168
#: Block 64 (one consumer): ring depth of 64-row tiles, and registers per thread of its 8
#: warps (one consumer warpgroup, one producer warp padded to a warpgroup). 3 slots take
#: 112 KiB at D = 128 and 128 registers leave room for a second program on the SM: two
#: programs per SM, as the Triton kernel (docs/kernel-tuning.md, "Kernel v10").
BLOCK64_STAGES = 3
BLOCK64_MAXNREG = 128
CONSUMER_REGS = gl.constexpr(240)
PRODUCER_REGS = gl.constexpr(24)


@gluon.jit
def _kept_count(COUNTS, i_row, LK, KEY_ROWS: gl.constexpr, DENSE: gl.constexpr):
    """Number of key blocks row `i_row` of the mask keeps; every block when DENSE."""
    if DENSE:
        return gl.cdiv(LK, KEY_ROWS)
    else:
        return gl.load(COUNTS + i_row)


@gluon.jit
def _walk_slot(slot, first, n_kept):
    """Slot of the kept list visited `slot`-th by a walk that starts at slot `first` and wraps
    around the `n_kept` kept blocks (`first = 0`: key order). The Gluon twin of
    `block_sparse._walk_slot`: a `gluon.jit` kernel cannot call a `triton.jit` function."""
    slot = slot + first
    return gl.where(slot >= n_kept, slot - n_kept, slot)


@gluon.jit
def _count_below(p_idx, n_kept, bound):
    """How many of the `n_kept` sorted kept-block indices at `p_idx` are below key block
    `bound`: the slot where a rotated walk starts (block_sparse.py, "Rotated walks"); the
    Gluon twin of `block_sparse._count_below`, over the 4 warps of the calling program."""
    CHUNK: gl.constexpr = 256
    layout: gl.constexpr = gl.BlockedLayout([CHUNK // 128], [32], [4], [0])
    below = 0
    for c in range(0, n_kept, CHUNK):
        o = c + gl.arange(0, CHUNK, layout=layout)
        b_idx = gl.load(p_idx + o, mask=o < n_kept, other=bound)
        below += gl.sum((b_idx < bound).to(gl.int32), axis=0)
    return below


@gluon.jit
def _produce_kv(k_desc, v_desc, k_smem, v_smem, k_ready, v_ready, k_empty, v_empty, INDICES, COUNTS, i_row, i_b, i_h,
                first, LK, MAX_KEPT, DENSE: gl.constexpr, KEY_ROWS: gl.constexpr, STAGES: gl.constexpr):
    """Producer warp: copy the K and V tiles of every kept block into the ring, walking the
    kept list from slot `first` on and wrapping around (`_walk_slot`)."""
    n_kept = _kept_count(COUNTS, i_row, LK, KEY_ROWS, DENSE)
    p_idx = INDICES + i_row.to(gl.int64) * MAX_KEPT
    # The next block index is loaded one tile ahead, so its latency is not on the copy's path.
    if DENSE:
        blk_next = 0
    else:
        blk_next = gl.load(p_idx + _walk_slot(0, first, n_kept), mask=n_kept > 0, other=0)
    for it in range(n_kept):
        st = it % STAGES
        phase = (it // STAGES) & 1
        blk = blk_next
        if DENSE:
            blk_next = it + 1
        else:
            blk_next = gl.load(p_idx + _walk_slot(gl.minimum(it + 1, n_kept - 1), first, n_kept))
        # A fresh mbarrier counts as having completed the phase before 0, so the first
        # pass over the ring does not wait.
        mbarrier.wait(k_empty.index(st), phase ^ 1)
        mbarrier.expect(k_ready.index(st), k_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(k_desc, [i_b, i_h, blk * KEY_ROWS, 0], k_ready.index(st), k_smem.index(st))
        mbarrier.wait(v_empty.index(st), phase ^ 1)
        mbarrier.expect(v_ready.index(st), v_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(v_desc, [i_b, i_h, blk * KEY_ROWS, 0], v_ready.index(st), v_smem.index(st))


@gluon.jit
def _mask_keys(b_s, o_col, INDICES, i_row, it, first, n_kept, LK, MAX_KEPT, DENSE: gl.constexpr,
               EVEN_K: gl.constexpr, KEY_ROWS: gl.constexpr):
    """Scores of keys past Lk (in the last, partial block) set to -inf; a no-op when EVEN_K."""
    if not EVEN_K:
        if DENSE:
            start = it * KEY_ROWS
        else:
            start = gl.load(INDICES + i_row.to(gl.int64) * MAX_KEPT + _walk_slot(it, first, n_kept)) * KEY_ROWS
        b_s = gl.where((start + o_col < LK)[None, :], b_s, float("-inf"))
    return b_s


@gluon.jit
def _store_block_sums(b_pf, b_m, p_rows, kb_first, NKB, BS: gl.constexpr):
    """Fused search: store `log2(row sum) + m` of the tile's key blocks into the scratch slot
    (`p_rows + kb * BLOCK` addresses this consumer's 64 rows of key block kb); returns the
    tile's row sums for the softmax. `exp2(stored - lse2)` is then the block's share of a row."""
    rows_s: gl.constexpr = b_m.type.layout
    o_r = gl.arange(0, WG_ROWS, layout=rows_s)
    if BS == BLOCK:
        b_rows = gl.sum(b_pf, axis=1)
        gl.store(p_rows + kb_first * BLOCK + o_r, gl.log2(b_rows) + b_m)
    else:
        # Two 64-key blocks per tile: [64, 128] -> [64, 2, 64] -> two [64].
        b_lo, b_hi = gl.split(gl.sum(gl.reshape(b_pf, [WG_ROWS, 2, BLOCK // 2]), axis=2))
        b_lo = gl.convert_layout(b_lo, rows_s)
        b_hi = gl.convert_layout(b_hi, rows_s)
        gl.store(p_rows + kb_first * BLOCK + o_r, gl.log2(b_lo) + b_m)
        gl.store(p_rows + (kb_first + 1) * BLOCK + o_r, gl.log2(b_hi) + b_m, mask=kb_first + 1 < NKB)
        b_rows = b_lo + b_hi
    return b_rows


@gluon.jit
def _sum_slot_into_mass(p_rows, b_lse2, MASS, i_bh, row0, MASS_NQB, NKB, BS: gl.constexpr):
    """Fused search epilogue: `mass[p, c] += sum over this consumer's rows of exp2(stored - lse2)`.

    Key blocks go GROUP at a time through a `[64, GROUP]` tile, one reduction across the
    warps per group. At block 64 the rows are one query block (a plain store); at block 128
    the two consumers' halves are added into a zeroed `mass` (two addends onto zero: the
    result does not depend on their order)."""
    GROUP: gl.constexpr = 8
    sums_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                          instr_shape=[16, GROUP, 16])
    o_r = gl.arange(0, WG_ROWS, layout=gl.SliceLayout(1, sums_layout))
    o_g = gl.arange(0, GROUP, layout=gl.SliceLayout(0, sums_layout))
    b_lse2 = gl.convert_layout(b_lse2, gl.SliceLayout(1, sums_layout))
    i_qb = row0 // BS
    p_mass = MASS + (i_bh.to(gl.int64) * MASS_NQB + i_qb) * NKB
    # The slot's values were stored by other threads of this warpgroup.
    gl.thread_barrier()
    for kb0 in range(0, NKB, GROUP):
        m_kb = kb0 + o_g < NKB
        b_v = gl.load(p_rows + (kb0 + o_g)[None, :] * BLOCK + o_r[:, None], mask=m_kb[None, :], other=float("-inf"))
        b_mass = gl.sum(gl.exp2(b_v - b_lse2[:, None]), axis=0)
        if BS == BLOCK:
            gl.atomic_add(p_mass + kb0 + o_g, b_mass, mask=m_kb & (i_qb < MASS_NQB))
        else:
            gl.store(p_mass + kb0 + o_g, b_mass, mask=m_kb & (i_qb < MASS_NQB))
    # Every read of the slot is done before the lock is released.
    gl.thread_barrier()


@gluon.jit
def _consume(o_desc, q_rows, k_smem, v_smem, q_bar, k_ready, v_ready, k_empty, v_empty, LSE, INDICES, COUNTS,
             i_row, i_b, i_h, i_bh, row0, first, LQ, LK, MAX_KEPT, qk_scale, MASS, p_rows, LOCK, MASS_NQB, NKB,
             HEAD_D: gl.constexpr, DENSE: gl.constexpr, EVEN_K: gl.constexpr, WITH_MASS: gl.constexpr,
             BS: gl.constexpr, KEY_ROWS: gl.constexpr, STAGES: gl.constexpr):
    """Consumer warpgroup: online softmax of its 64 query rows over the kept key tiles of
    KEY_ROWS rows (in the producer's order, from slot `first`), then O (through its Q tile
    and the copy engine) and the LSE; with WITH_MASS (dense only) also its share of the block
    mass, through its rows `p_rows` of a scratch slot."""
    dtype: gl.constexpr = q_rows.dtype
    # Accumulator layouts of the two products (wgmma, 4 warps along M) and P as the
    # register operand of the second, which the compiler reads in place from S's registers.
    mma_s: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                    instr_shape=[16, KEY_ROWS, 16])
    mma_o: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                    instr_shape=[16, HEAD_D, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma_o, k_width=2)
    rows_s: gl.constexpr = gl.SliceLayout(1, mma_s)
    rows_o: gl.constexpr = gl.SliceLayout(1, mma_o)

    n_kept = _kept_count(COUNTS, i_row, LK, KEY_ROWS, DENSE)
    # [WG_ROWS, HEAD_D]
    b_q = q_rows.reshape([WG_ROWS, HEAD_D])
    o_col = gl.arange(0, KEY_ROWS, layout=gl.SliceLayout(0, mma_s))
    b_m = gl.full([WG_ROWS], float("-inf"), gl.float32, layout=rows_s)
    b_l = gl.zeros([WG_ROWS], gl.float32, layout=rows_s)
    # [WG_ROWS, HEAD_D]
    b_acc = gl.zeros([WG_ROWS, HEAD_D], gl.float32, layout=mma_o)
    # [WG_ROWS, KEY_ROWS]; S is written with use_acc=False, so this only gives its layout.
    b_s0 = gl.zeros([WG_ROWS, KEY_ROWS], gl.float32, layout=mma_s)
    b_p = gl.zeros([WG_ROWS, KEY_ROWS], dtype, layout=p_layout)
    mbarrier.wait(q_bar, 0)

    if n_kept > 0:
        # Tile 0: scores and softmax; there is no previous P @ V to overlap with.
        mbarrier.wait(k_ready.index(0), 0)
        b_s = warpgroup_mma(b_q, k_smem.index(0).reshape([KEY_ROWS, HEAD_D]).permute((1, 0)), b_s0, use_acc=False)
        mbarrier.arrive(k_empty.index(0), count=1)
        b_s = _mask_keys(b_s, o_col, INDICES, i_row, 0, first, n_kept, LK, MAX_KEPT, DENSE, EVEN_K, KEY_ROWS)
        b_m = gl.max(b_s, axis=1) * qk_scale
        b_pf = gl.exp2(b_s * qk_scale - b_m[:, None])
        if WITH_MASS:
            b_l = _store_block_sums(b_pf, b_m, p_rows, 0, NKB, BS)
        else:
            b_l = gl.sum(b_pf, axis=1)
        b_p = gl.convert_layout(b_pf.to(dtype), p_layout)

    for it in range(1, n_kept):
        st = it % STAGES
        prev = (it - 1) % STAGES
        mbarrier.wait(k_ready.index(st), (it // STAGES) & 1)
        s_token = warpgroup_mma(b_q, k_smem.index(st).reshape([KEY_ROWS, HEAD_D]).permute((1, 0)), b_s0,
                                use_acc=False, is_async=True)
        mbarrier.wait(v_ready.index(prev), ((it - 1) // STAGES) & 1)
        o_token = warpgroup_mma(b_p, v_smem.index(prev).reshape([KEY_ROWS, HEAD_D]), b_acc, is_async=True)
        # S of this tile is done (one group, P @ V of the last tile, may still run).
        b_s = warpgroup_mma_wait(1, deps=(s_token, ))
        mbarrier.arrive(k_empty.index(st), count=1)
        b_s = _mask_keys(b_s, o_col, INDICES, i_row, it, first, n_kept, LK, MAX_KEPT, DENSE, EVEN_K, KEY_ROWS)
        # The scale is folded into exp2's argument: one FMA per score. Every tile holds
        # >= 1 valid key, so the running max stays finite.
        b_m_new = gl.maximum(b_m, gl.max(b_s, axis=1) * qk_scale)
        b_alpha = gl.exp2(b_m - b_m_new)
        b_pf = gl.exp2(b_s * qk_scale - b_m_new[:, None])
        if WITH_MASS:
            b_l = b_l * b_alpha + _store_block_sums(b_pf, b_m_new, p_rows, it * (KEY_ROWS // BS), NKB, BS)
        else:
            b_l = b_l * b_alpha + gl.sum(b_pf, axis=1)
        b_m = b_m_new
        b_acc, b_p = warpgroup_mma_wait(0, deps=(o_token, b_p))
        mbarrier.arrive(v_empty.index(prev), count=1)
        b_acc = b_acc * gl.convert_layout(b_alpha, rows_o)[:, None]
        b_p = gl.convert_layout(b_pf.to(dtype), p_layout)

    if n_kept > 0:
        last = (n_kept - 1) % STAGES
        mbarrier.wait(v_ready.index(last), ((n_kept - 1) // STAGES) & 1)
        b_acc = warpgroup_mma(b_p, v_smem.index(last).reshape([KEY_ROWS, HEAD_D]), b_acc)

    # A row with no kept block: out = 0, lse = -inf.
    m_live = b_l > 0
    b_l_safe = gl.where(m_live, b_l, 1.0)
    b_out = b_acc / gl.convert_layout(b_l_safe, rows_o)[:, None]
    b_lse = gl.where(m_live, (b_m + gl.log2(b_l_safe)) * 0.6931471805599453, float("-inf"))
    o_row = row0 + gl.arange(0, WG_ROWS, layout=rows_s)
    gl.store(LSE + i_bh.to(gl.int64) * LQ + o_row, b_lse, mask=o_row < LQ)
    if WITH_MASS:
        # log2-domain LSE; +inf past Lq so those rows add 0.
        _sum_slot_into_mass(p_rows, gl.where(o_row < LQ, b_m + gl.log2(b_l_safe), float("inf")), MASS, i_bh, row0,
                            MASS_NQB, NKB, BS)
        gl.atomic_add(LOCK, -1)
    # Only this warpgroup's finished wgmmas read its Q tile, so the tile can hold O; the
    # copy engine clips rows past Lq.
    b_q.store(b_out.to(dtype))
    fence_async_shared()
    tma.async_copy_shared_to_global(o_desc, [i_b, i_h, row0, 0], q_rows)
    tma.store_wait(pendings=0)


@gluon.jit
def _attention_ws_fwd_kernel(q_desc, k_desc, v_desc, o_desc, LSE, INDICES, COUNTS, ORDER,
                             H, LQ, LK, NQB, MAX_KEPT, PERIOD, qk_scale, MASS, SCRATCH, LOCKS, N_SLOTS, MASS_NQB, NKB,
                             HEAD_D: gl.constexpr, DENSE: gl.constexpr, ORDERED: gl.constexpr, EVEN_K: gl.constexpr,
                             WITH_MASS: gl.constexpr, BS: gl.constexpr, CONSUMERS: gl.constexpr,
                             STAGES: gl.constexpr, ROTATED: gl.constexpr):
    """Program `pid` handles mask row `ORDER[pid]` (or `pid`) of the flattened `[B * H * nq]`
    rows, i.e. one query block of `64 * CONSUMERS` rows (128: two consumers share each 128-row
    K / V tile; 64: one consumer, 64-row tiles): Q, then the partitions. With ROTATED the
    kept blocks are walked from the first one at or after key block
    `(pid mod PERIOD) * nk / PERIOD` on, wrapping around (block_sparse.py, "Rotated walks").

    WITH_MASS (the fused search, dense, two consumers): the program first takes a free slot
    of SCRATCH (`N_SLOTS` slots of `[NKB, 128]` floats; spin lock per slot in LOCKS, zero when
    free, set to 2 and counted down by each consumer when it has read its rows), and adds its
    block mass, `[MASS_NQB, NKB]` blocks of BS tokens per (batch, head), into MASS."""
    KEY_ROWS: gl.constexpr = WG_ROWS * CONSUMERS
    dtype: gl.constexpr = q_desc.dtype
    pid = gl.program_id(0)
    if ORDERED:
        i_row = gl.load(ORDER + pid)
    else:
        i_row = pid
    i_bh = i_row // NQB
    i_p = i_row % NQB
    i_b = i_bh // H
    i_h = i_bh % H

    if WITH_MASS:
        slot = pid % N_SLOTS
        while gl.atomic_cas(LOCKS + slot, 0, 2) != 0:
            slot = (slot + 1) % N_SLOTS
        p_rows = SCRATCH + slot.to(gl.int64) * NKB * BLOCK
    else:
        slot = 0
        p_rows = SCRATCH
    first = 0
    if ROTATED:
        first = _count_below(INDICES + i_row.to(gl.int64) * MAX_KEPT, gl.load(COUNTS + i_row),
                             ((pid % PERIOD) * gl.cdiv(LK, KEY_ROWS)) // PERIOD)

    # A [1, 1, 64, D] Q tile per consumer (each later holds that consumer's O) and the K / V
    # ring of [1, 1, KEY_ROWS, D] tiles; tiles as the copy engine writes them.
    q_smem = gl.allocate_shared_memory(dtype, [CONSUMERS, 1, 1, WG_ROWS, HEAD_D], q_desc.layout)
    k_smem = gl.allocate_shared_memory(dtype, [STAGES, 1, 1, KEY_ROWS, HEAD_D], k_desc.layout)
    v_smem = gl.allocate_shared_memory(dtype, [STAGES, 1, 1, KEY_ROWS, HEAD_D], v_desc.layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    k_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(v_ready.index(i), count=1)
        # Every consumer releases a slot.
        mbarrier.init(k_empty.index(i), count=CONSUMERS)
        mbarrier.init(v_empty.index(i), count=CONSUMERS)
    mbarrier.expect(q_bar, CONSUMERS * q_desc.block_type.nbytes)
    for c in gl.static_range(CONSUMERS):
        tma.async_copy_global_to_shared(q_desc, [i_b, i_h, i_p * KEY_ROWS + c * WG_ROWS, 0], q_bar, q_smem.index(c))

    # The argument tuples are written in the call: assigned to a variable first, their
    # constexprs would become tensors.
    if CONSUMERS == 2:
        gl.warp_specialize([
            (_consume, (o_desc, q_smem.index(0), k_smem, v_smem, q_bar, k_ready, v_ready, k_empty, v_empty, LSE,
                        INDICES, COUNTS, i_row, i_b, i_h, i_bh, i_p * KEY_ROWS, first, LQ, LK, MAX_KEPT, qk_scale,
                        MASS, p_rows, LOCKS + slot, MASS_NQB, NKB, HEAD_D, DENSE, EVEN_K, WITH_MASS, BS, KEY_ROWS,
                        STAGES)),
            (_consume, (o_desc, q_smem.index(1), k_smem, v_smem, q_bar, k_ready, v_ready, k_empty, v_empty, LSE,
                        INDICES, COUNTS, i_row, i_b, i_h, i_bh, i_p * KEY_ROWS + WG_ROWS, first, LQ, LK, MAX_KEPT,
                        qk_scale, MASS, p_rows + WG_ROWS, LOCKS + slot, MASS_NQB, NKB, HEAD_D, DENSE, EVEN_K,
                        WITH_MASS, BS, KEY_ROWS, STAGES)),
            (_produce_kv, (k_desc, v_desc, k_smem, v_smem, k_ready, v_ready, k_empty, v_empty, INDICES, COUNTS, i_row,
                           i_b, i_h, first, LK, MAX_KEPT, DENSE, KEY_ROWS, STAGES)),
        ], [4, 1], [CONSUMER_REGS, PRODUCER_REGS])
    else:
        gl.warp_specialize([
            (_consume, (o_desc, q_smem.index(0), k_smem, v_smem, q_bar, k_ready, v_ready, k_empty, v_empty, LSE,
                        INDICES, COUNTS, i_row, i_b, i_h, i_bh, i_p * KEY_ROWS, first, LQ, LK, MAX_KEPT, qk_scale,
                        MASS, p_rows, LOCKS + slot, MASS_NQB, NKB, HEAD_D, DENSE, EVEN_K, WITH_MASS, BS, KEY_ROWS,
                        STAGES)),
            (_produce_kv, (k_desc, v_desc, k_smem, v_smem, k_ready, v_ready, k_empty, v_empty, INDICES, COUNTS, i_row,
                           i_b, i_h, first, LK, MAX_KEPT, DENSE, KEY_ROWS, STAGES)),
        ], [1], [PRODUCER_REGS])


def _row_tiles(x: torch.Tensor, rows: int) -> TensorDescriptor:
    """Copy-engine descriptor over `x [B, H, L, D]` giving `[1, 1, rows, D]` tiles (zeros past L)."""
    dim = x.shape[-1]
    element = gl.bfloat16 if x.dtype == torch.bfloat16 else gl.float16
    layout = gl.NVMMASharedLayout.get_default_for([1, 1, rows, dim], element)
    return TensorDescriptor(x, list(x.shape), list(x.stride()), [1, 1, rows, dim], layout)


def hopper_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask=None, *, scale: float,
                     order: torch.Tensor = None, period: int = 0):
    """Dense (`mask=None`) or block-sparse attention through the warp-specialized kernel.

    Inputs are checked by the caller (`adaspa.kernels`) and must pass `_launch.use_hopper_kernel`.

    Args:
        q: `[B, H, Lq, D]`; k, v: `[B, H, Lk, D]`, float16 / bfloat16, D in (64, 128).
        mask: a `BlockSparseMask` of block size 128 (two consumers per program) or 64 (one),
            or None for dense attention.
        scale: softmax scale.
        order: optional int32 `[B * H * nq]` order in which programs take the mask's rows.
        period: 0 walks each row's kept blocks in key order; `P > 0` walks them rotated with
            period P (block_sparse.py, "Rotated walks"; block 64 uses it).

    Returns:
        out `[B, H, Lq, D]` in q's dtype, lse float32 `[B, H, Lq]` (natural log).

    Example:
        >>> q = k = v = torch.randn(1, 2, 300, 128, device="cuda", dtype=torch.bfloat16)
        >>> out, lse = hopper_attention(q, k, v, scale=128 ** -0.5)
        >>> out.shape, lse.shape
        (torch.Size([1, 2, 300, 128]), torch.Size([1, 2, 300]))
    """
    out, lse, _ = _launch_ws(q, k, v, mask, scale=scale, order=order, mass_block_size=None, period=period)
    return out, lse


def block64_footprint(head_dim: int, element_bytes: int):
    """`(shared bytes, registers)` one program of the block-64 kernel holds: a 64-row Q tile
    and `BLOCK64_STAGES` 64-row K and V tiles; 8 warps of `BLOCK64_MAXNREG` registers.

    Example:
        >>> block64_footprint(128, 2)  # 112 KiB, 32K registers: two programs per H100 SM
        (114688, 32768)
    """
    return (1 + 2 * BLOCK64_STAGES) * WG_ROWS.value * head_dim * element_bytes, 8 * 32 * BLOCK64_MAXNREG


def hopper_attention_with_block_mass(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, block_size: int,
                                     scale: float):
    """Fused search through the warp-specialized kernel: dense out, LSE and the block mass in one pass.

    Inputs are checked by the caller (`adaspa.kernels.attention_with_block_mass`) and must pass
    `_launch.use_hopper_search`.

    Args:
        q: `[B, H, Lq, D]`; k, v: `[B, H, Lk, D]`, float16 / bfloat16, D in (64, 128).
        block_size: 64 or 128, the mass's block size.
        scale: softmax scale.

    Returns:
        out `[B, H, Lq, D]` in q's dtype, lse float32 `[B, H, Lq]`, mass float32 `[B, H, nq, nk]`.

    Example:
        >>> q = k = v = torch.randn(1, 2, 300, 128, device="cuda", dtype=torch.bfloat16)
        >>> out, lse, mass = hopper_attention_with_block_mass(q, k, v, block_size=64, scale=128 ** -0.5)
        >>> mass.shape
        torch.Size([1, 2, 5, 5])
    """
    return _launch_ws(q, k, v, None, scale=scale, order=None, mass_block_size=block_size)


def _launch_ws(q, k, v, mask, *, scale, order, mass_block_size, period=0):
    """Launch `_attention_ws_fwd_kernel`: dense, block-sparse (a mask) or the fused search (a mass block size)."""
    B, H, LQ, D = q.shape
    LK = k.shape[2]
    # Rows of a query block and of a key tile: the mask's block size, else 128.
    rows = BLOCK.value if mask is None else mask.block_size
    consumers = rows // WG_ROWS.value
    nq = triton.cdiv(LQ, rows)
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty(B, H, LQ, device=q.device, dtype=torch.float32)
    if mask is None:
        indices = counts = lse  # unused by the kernel
        max_kept = 0
    else:
        indices, counts = mask.indices.contiguous(), mask.counts.contiguous()
        max_kept = indices.shape[-1]
    if mass_block_size is None:
        mass = scratch = locks = lse  # unused by the kernel
        n_slots = mass_nq = nk = 0
    else:
        mass_nq, nk = triton.cdiv(LQ, mass_block_size), triton.cdiv(LK, mass_block_size)
        # Block 128 adds the two consumers' halves of each entry, so it starts from zeros.
        mass = (torch.zeros if mass_block_size == BLOCK.value else torch.empty)(B, H, mass_nq, nk, device=q.device,
                                                                                dtype=torch.float32)
        scratch, locks, slot_rows = scratch_slots(q.device, nk)
        n_slots = slot_rows // BLOCK.value
    _attention_ws_fwd_kernel[(B * H * nq, )](
        _row_tiles(q, WG_ROWS.value), _row_tiles(k, rows), _row_tiles(v, rows),
        _row_tiles(out, WG_ROWS.value), lse, indices, counts, counts if order is None else order,
        H, LQ, LK, nq, max_kept, max(period, 1), scale * LOG2E, mass, scratch, locks, n_slots, mass_nq, nk,
        HEAD_D=D, DENSE=mask is None, ORDERED=order is not None, EVEN_K=LK % rows == 0,
        WITH_MASS=mass_block_size is not None, BS=mass_block_size or rows, CONSUMERS=consumers,
        STAGES=STAGES if consumers == 2 else BLOCK64_STAGES, ROTATED=period > 0, num_warps=4,
        maxnreg=MAXNREG if consumers == 2 else BLOCK64_MAXNREG)
    return out, lse, mass
