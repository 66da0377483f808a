"""Warp-specialized LSE-cached search for Hopper (sm_90), written in Gluon.

`mass[b, h, p, c] = sum_{i in block p, j in block c} exp(scale * q_i . k_j - lse_i)`, the
same as `search.block_mass`, for the inputs `_launch.use_hopper_search` accepts.

Why a second kernel. Per score this search does half an attention's matrix work but a full
attention's exp2, so the tensor cores and the exp unit carry about equal loads (docs/
kernel-tuning.md, "The two numbers"). The Triton kernel runs them one after the other inside
a program whose warps move in lockstep. Here the work of a program is split across
partitions that run independently:

- a producer warp streams 64-key tiles of K with the copy engine (TMA) into a
  `STAGES`-deep ring, with a ready and an empty mbarrier per slot;
- four consumer warpgroups each own 64 query rows (Q in registers) and share every K tile:
  `S = Q K^T` (one wgmma), `exp2(S * qk_scale - lse2)`, row sums. While one consumer's exp2
  runs, another's `Q K^T` is on the tensor cores; nothing orders them but the ring;
- a consumer keeps the row sums of `GROUP` key blocks in the columns of a `[64, GROUP]`
  register tile and sums it across its four warps (shared memory and a barrier) once per
  GROUP key blocks, not once per block.

One program is one (batch, head, 256 query rows). At block 64 a consumer's 64 rows are one
query block and each tile one key block, so every mass entry is stored once. At block 128 a
query block spans two consumers (of one program or of two): each adds its half with an
atomic add into a zeroed `mass`; two addends onto zero give the same float in either order,
so the result is deterministic.

Measured on an H100 at L = 118784 (docs/benchmarks.md, kernel v7): 150 ms at block 64 and
155 ms at block 128, against 170 / 177 ms for the Triton kernel in the same process; in the
benchmark sweep 0.514x / 0.531x SDPA-cuDNN time, against 0.561x / 0.582x. Choices
measured and not kept (two score tiles in flight per consumer, three consumers, 128-key
tiles, part of the exp2 on the FMA pipe) are in docs/kernel-tuning.md, "Kernel v7".
"""

from __future__ import annotations

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma

from ._launch import LOG2E
from .hopper import _row_tiles

#: Query rows per consumer warpgroup (one wgmma M tile of 4 warps) and keys per K tile.
TILE = gl.constexpr(64)
#: Consumer warpgroups per program; with the producer, 5 warpgroups.
CONSUMERS = gl.constexpr(4)
#: Ring depth: 6 slots of 64 x D keys (96 KiB at D = 128) measured 3% faster than 4.
STAGES = gl.constexpr(6)
#: Key blocks whose row sums a consumer holds before one reduction across its warps.
GROUP = gl.constexpr(8)
#: Registers per thread: 5 warpgroups at 96 fill the register file; the producer gives back
#: all but 24 and each consumer takes 120 (no spills: tests/test_hopper.py compiles it).
MAXNREG = 96
CONSUMER_REGS = gl.constexpr(120)
PRODUCER_REGS = gl.constexpr(24)


@gluon.jit
def _produce_k(k_desc, k_smem, k_ready, k_empty, i_b, i_h, LK):
    """Producer warp: copy every 64-key tile of K, in order, into the ring."""
    for j in range(gl.cdiv(LK, TILE)):
        st = j % STAGES
        # A fresh mbarrier counts as having completed the phase before 0, so the first
        # pass over the ring does not wait.
        mbarrier.wait(k_empty.index(st), ((j // STAGES) & 1) ^ 1)
        mbarrier.expect(k_ready.index(st), k_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(k_desc, [i_b, i_h, j * TILE, 0], k_ready.index(st), k_smem.index(st))


@gluon.jit
def _consume_mass(q_rows, k_smem, q_bar, k_ready, k_empty, LSE, MASS, i_bh, i_b, i_h, row0, NQB, NKB, LQ, LK,
                  stride_lb, stride_lh, stride_lm, qk_scale,
                  BS: gl.constexpr, HEAD_D: gl.constexpr, EVEN_K: gl.constexpr):
    """Consumer warpgroup: block sums of its 64 query rows over every key tile."""
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, TILE, 16])
    # The row sums' tile: the same rows per thread as the scores, GROUP columns.
    sums_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                          instr_shape=[16, GROUP, 16])
    q_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    TILES_PER_BLOCK: gl.constexpr = BS // TILE

    o_row = row0 + gl.arange(0, TILE, layout=gl.SliceLayout(1, mma))
    o_col = gl.arange(0, TILE, layout=gl.SliceLayout(0, mma))
    o_slot = gl.arange(0, GROUP, layout=gl.SliceLayout(0, sums_layout))
    b_lse = gl.load(LSE + i_b.to(gl.int64) * stride_lb + i_h.to(gl.int64) * stride_lh + o_row.to(gl.int64) * stride_lm,
                    mask=o_row < LQ, other=0.0)
    # log2-domain LSE; +inf past Lq so those rows add 0.
    b_lse2 = gl.where(o_row < LQ, b_lse.to(gl.float32) * 1.4426950408889634, float("inf"))
    i_qb = row0 // BS
    p_mass = MASS + (i_bh.to(gl.int64) * NQB + i_qb) * NKB
    # [TILE, TILE]; S is written with use_acc=False, so this only gives its layout.
    b_s0 = gl.zeros([TILE, TILE], gl.float32, layout=mma)
    # [TILE, GROUP]: column c holds the row sums of key block `c` of the current group.
    b_sums = gl.zeros([TILE, GROUP], gl.float32, layout=sums_layout)
    mbarrier.wait(q_bar, 0)
    # [TILE, HEAD_D]
    b_q = q_rows.reshape([TILE, HEAD_D]).load(q_layout)

    n_tiles = gl.cdiv(LK, TILE)
    for j in range(n_tiles):
        st = j % STAGES
        mbarrier.wait(k_ready.index(st), (j // STAGES) & 1)
        b_s = warpgroup_mma(b_q, k_smem.index(st).reshape([TILE, HEAD_D]).permute((1, 0)), b_s0, use_acc=False)
        mbarrier.arrive(k_empty.index(st), count=1)
        # The scale is folded into exp2's argument: one FMA per score.
        b_p = gl.exp2(b_s * qk_scale - b_lse2[:, None])
        if not EVEN_K:
            if (j + 1) * TILE > LK:
                b_p = gl.where((j * TILE + o_col < LK)[None, :], b_p, 0.0)
        b_row = gl.convert_layout(gl.sum(b_p, axis=1), gl.SliceLayout(1, sums_layout))
        i_kb = j // TILES_PER_BLOCK
        slot = i_kb % GROUP
        b_sums = gl.where(o_slot[None, :] == slot, b_sums + b_row[:, None], b_sums)
        if ((j + 1) % (GROUP * TILES_PER_BLOCK) == 0) | (j + 1 == n_tiles):
            # [GROUP] block sums of key blocks i_kb - slot ... i_kb; one reduction across warps.
            b_mass = gl.sum(b_sums, axis=0)
            m_store = (o_slot <= slot) & (i_qb < NQB)
            if BS > TILE:
                gl.atomic_add(p_mass + i_kb - slot + o_slot, b_mass, mask=m_store)
            else:
                gl.store(p_mass + i_kb - slot + o_slot, b_mass, mask=m_store)
            b_sums = gl.zeros_like(b_sums)


@gluon.jit
def _block_mass_ws_kernel(q_desc, k_desc, LSE, MASS, stride_lb, stride_lh, stride_lm, H, LQ, LK, NQB, NKB, NQT,
                          qk_scale, BS: gl.constexpr, HEAD_D: gl.constexpr, EVEN_K: gl.constexpr):
    """Program `pid` handles CONSUMERS * 64 query rows of one (batch, head): Q, then the partitions
    (the list below has one entry per consumer)."""
    dtype: gl.constexpr = q_desc.dtype
    pid = gl.program_id(0)
    i_bh = pid // NQT
    i_b = i_bh // H
    i_h = i_bh % H
    row0 = (pid % NQT) * (CONSUMERS * TILE)

    # Four [1, 1, 64, D] Q tiles (one per consumer) and the ring of [1, 1, 64, D] K tiles.
    q_smem = gl.allocate_shared_memory(dtype, [CONSUMERS, 1, 1, TILE, HEAD_D], q_desc.layout)
    k_smem = gl.allocate_shared_memory(dtype, [STAGES, 1, 1, TILE, HEAD_D], k_desc.layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    k_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        # All four consumers release a slot (those past Lq too: they still walk the ring).
        mbarrier.init(k_empty.index(i), count=CONSUMERS)
    mbarrier.expect(q_bar, CONSUMERS * q_desc.block_type.nbytes)
    for c in gl.static_range(CONSUMERS):
        tma.async_copy_global_to_shared(q_desc, [i_b, i_h, row0 + c * TILE, 0], q_bar, q_smem.index(c))

    # The argument tuples are written in the call: assigned to a variable first, their
    # constexprs would become tensors.
    gl.warp_specialize([
        (_consume_mass, (q_smem.index(0), k_smem, q_bar, k_ready, k_empty, LSE, MASS, i_bh, i_b, i_h, row0, NQB, NKB,
                         LQ, LK, stride_lb, stride_lh, stride_lm, qk_scale, BS, HEAD_D, EVEN_K)),
        (_consume_mass, (q_smem.index(1), k_smem, q_bar, k_ready, k_empty, LSE, MASS, i_bh, i_b, i_h, row0 + TILE,
                         NQB, NKB, LQ, LK, stride_lb, stride_lh, stride_lm, qk_scale, BS, HEAD_D, EVEN_K)),
        (_consume_mass, (q_smem.index(2), k_smem, q_bar, k_ready, k_empty, LSE, MASS, i_bh, i_b, i_h,
                         row0 + 2 * TILE, NQB, NKB, LQ, LK, stride_lb, stride_lh, stride_lm, qk_scale, BS, HEAD_D,
                         EVEN_K)),
        (_consume_mass, (q_smem.index(3), k_smem, q_bar, k_ready, k_empty, LSE, MASS, i_bh, i_b, i_h,
                         row0 + 3 * TILE, NQB, NKB, LQ, LK, stride_lb, stride_lh, stride_lm, qk_scale, BS, HEAD_D,
                         EVEN_K)),
        (_produce_k, (k_desc, k_smem, k_ready, k_empty, i_b, i_h, LK)),
    ], [4, 4, 4, 1], [CONSUMER_REGS, CONSUMER_REGS, CONSUMER_REGS, PRODUCER_REGS])


def hopper_block_mass(q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor, *, block_size: int, scale: float):
    """LSE-cached search through the warp-specialized kernel.

    Inputs are checked by the caller (`adaspa.kernels.block_mass`) and must pass
    `_launch.use_hopper_search`.

    Args:
        q: `[B, H, Lq, D]`; k: `[B, H, Lk, D]`, float16 / bfloat16, D in (64, 128).
        lse: `[B, H, Lq]` natural-log LSE of the same rows, any floating dtype (read as
            float32), any strides.
        block_size: 64 or 128.
        scale: softmax scale.

    Returns:
        mass: float32 `[B, H, nq, nk]`.

    Example:
        >>> q = k = torch.randn(1, 2, 300, 128, device="cuda", dtype=torch.bfloat16)
        >>> from adaspa.kernels import attention
        >>> _, lse = attention(q, k, k)
        >>> hopper_block_mass(q, k, lse, block_size=64, scale=128 ** -0.5).shape
        torch.Size([1, 2, 5, 5])
    """
    B, H, LQ, D = q.shape
    LK = k.shape[2]
    nq, nk = triton.cdiv(LQ, block_size), triton.cdiv(LK, block_size)
    n_row_tiles = triton.cdiv(LQ, CONSUMERS.value * TILE.value)
    # Block 128 adds two halves per entry, so it starts from zeros.
    mass = (torch.zeros if block_size > TILE.value else torch.empty)(B, H, nq, nk, device=q.device,
                                                                      dtype=torch.float32)
    _block_mass_ws_kernel[(B * H * n_row_tiles, )](
        _row_tiles(q, TILE.value), _row_tiles(k, TILE.value), lse, mass, lse.stride(0), lse.stride(1), lse.stride(2),
        H, LQ, LK, nq, nk, n_row_tiles, scale * LOG2E,
        BS=block_size, HEAD_D=D, EVEN_K=LK % TILE.value == 0, num_warps=4, maxnreg=MAXNREG)
    return mass
