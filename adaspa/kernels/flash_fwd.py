"""Dense flash attention forward with LSE, and the fused search (attention + block mass).

The key loop is FlashAttention-2's online softmax in the log2 domain: the scale is folded
with log2(e) into `qk_scale`, so each score costs one FMA and one exp2.

The fused search gets the block mass from the same loop, without a second pass over K.
Each key tile already sums `p = exp2(s - m)` per row for the running sum `l`; summed
per key block instead, and stored as `log2(sum) + m` (the row's log-sum of `2**s` over
that block, independent of the running max `m`), these row sums are the mass before
normalisation. After the loop, `mass[p, c] = sum_rows exp2(stored - lse2)` over the rows
of query block `p`: exactly the `sum exp(s - lse)` of ALGORITHM.md's pass 2, whose extra
`QK^T` (half an attention) it replaces by a store of one float per (row, key block) and
one read back. A key tile narrower than a block carries its rows' sums to the block's
last tile (`_attend_tile`). The stored rows live in a scratch slot that the program holds
while it runs (`_attention_fwd_kernel`); the scratch is O(L) (`_launch.SCRATCH_ROWS_PER_SM`).

`online_softmax_step` is the one FlashAttention-2 step of the package: the block-sparse
kernel runs it too, over its kept tiles.

K and V tiles come through the tensor copy engine (TMA descriptors, `_launch.row_tiles`)
when `_launch.tma_eligible` says so, else through pointers; run 3 in docs/kernel-tuning.md
measured the difference.

Per (query tile, key tile): two `BLOCK_M x BLOCK_N x D` dots (4 * M * N * D FLOPs) and
one exp2 per score; memory traffic is Q + O once and K, V once per query tile (mostly
served by L2 at these sizes), plus, for the fused search, 4 bytes per (row, key block)
written and read once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._validation import check_attention_inputs, check_block_size, num_blocks, resolve_scale
from ._launch import (LOG2E, SMEM_BUDGET, check_kernel_block_size, check_kernel_inputs, dot, dot_precision,
                      fixed_config, key_tile_fits, load_q_tile, load_rows, padded_head_dim, row_tiles, scratch_slots,
                      set_tile_rows, smem_estimate, store_out_tile, strides4, tma_eligible, to_dtype, use_autotune,
                      use_hopper_kernel, use_hopper_search)
from .search import fixed_tile, mass_output, put_mass, query_blocks_of_tile


@triton.jit
def _group_row_sums(b_p, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP: tl.constexpr):
    """`[BLOCK_M, BLOCK_N]` -> `[BLOCK_M, BLOCK_N // GROUP]`: each row's sum over each group of GROUP keys.

    A sum within rows: in the MMA layout a row lives in one quad of threads, so this takes
    register adds and two shuffles, no shared memory and no barrier.
    """
    if BLOCK_N == GROUP:
        return tl.sum(b_p, axis=1)[:, None]
    else:
        return tl.sum(tl.reshape(b_p, (BLOCK_M, BLOCK_N // GROUP, GROUP)), axis=2)


@triton.jit
def online_softmax_step(b_q, b_k, b_v, m_key, b_m, b_l, b_acc, qk_scale,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP: tl.constexpr,
                        MASK_N: tl.constexpr, PRECISION: tl.constexpr):
    """One FlashAttention-2 step over a `[BLOCK_N, BLOCK_D]` key tile `b_k` and value tile `b_v`.

    Updates the running row max `b_m`, sum `b_l` (`[BLOCK_M]`) and output accumulator
    `b_acc` (`[BLOCK_M, BLOCK_D]`), and also returns the tile's rescale factor `alpha` and
    its row sums of `p = exp2(s - m)` per group of GROUP keys (`[BLOCK_M, BLOCK_N // GROUP]`;
    the fused search's per-block sums, dead code otherwise). With MASK_N only the keys
    where `m_key [BLOCK_N]` is true count; every tile must hold at least one.
    """
    # [BLOCK_M, BLOCK_N] raw scores; qk_scale > 0, so max(s) * qk_scale is the max of the scaled
    # scores and each probability costs one FMA (s * qk_scale - m) before its exp2.
    b_s = dot(b_q, tl.trans(b_k), PRECISION)
    if MASK_N:
        b_s = tl.where(m_key[None, :], b_s, float("-inf"))
    b_m_new = tl.maximum(b_m, tl.max(b_s, axis=1) * qk_scale)
    b_alpha = tl.math.exp2(b_m - b_m_new)
    b_p = tl.math.exp2(b_s * qk_scale - b_m_new[:, None])
    b_rows = _group_row_sums(b_p, BLOCK_M, BLOCK_N, GROUP)
    b_l = b_l * b_alpha + tl.sum(b_rows, axis=1)
    # [BLOCK_M, BLOCK_D]
    b_acc = b_acc * b_alpha[:, None] + dot(to_dtype(b_p, b_v.dtype, PRECISION), b_v, PRECISION)
    return b_m_new, b_l, b_acc, b_alpha, b_rows


@triton.jit
def _store_row_sums(p_slot, b_vals, kb_first, NKB, m_store, BLOCK_M: tl.constexpr, N_KB: tl.constexpr):
    """Write `b_vals [BLOCK_M, N_KB]`, the rows' values for key blocks `kb_first ..`, to the
    program's scratch slot, laid out `[nk, BLOCK_M]` (a block's rows contiguous: coalesced);
    nothing where the scalar `m_store` is false."""
    o_kb = kb_first + tl.arange(0, N_KB)
    tl.store(p_slot + o_kb[None, :] * BLOCK_M + tl.arange(0, BLOCK_M)[:, None], b_vals,
             mask=(o_kb < NKB)[None, :] & m_store)


@triton.jit
def _sum_slot_into_mass(p_slot, b_lse2, MASS, o_mass_row, NKB, m_qb, BLOCK_M: tl.constexpr, BS: tl.constexpr):
    """`mass[p, c] = sum` over query block `p`'s rows of `exp2(stored - lse2)`, where the slot
    holds `stored = log2(sum_j 2**s_ij)` per row `i` and key block `c` (`[nk, BLOCK_M]`).

    `b_lse2` is `+inf` on rows past Lq (they add 0); `o_mass_row` / `m_qb` are the tile's
    query blocks' row offsets in MASS and their validity (a tile of part of a block adds
    its sums: `search.put_mass`). Runs once per query tile, `CHUNK`
    key blocks at a time; the first barrier orders it after the slot's writes (made by other
    threads of the program), the last one before the slot is given back.
    """
    CHUNK: tl.constexpr = 8192 // BLOCK_M
    o_r = tl.arange(0, BLOCK_M)
    tl.debug_barrier()
    for kb0 in range(0, NKB, CHUNK):
        o_kb = kb0 + tl.arange(0, CHUNK)
        m_kb = o_kb < NKB
        # [CHUNK, BLOCK_M]
        b_p = tl.math.exp2(tl.load(p_slot + o_kb[:, None] * BLOCK_M + o_r[None, :], mask=m_kb[:, None], other=0.0)
                           - b_lse2[None, :])
        # [CHUNK, QB]
        if BLOCK_M <= BS:
            b_blk = tl.sum(b_p, axis=1)[:, None]
        else:
            b_blk = tl.sum(tl.reshape(b_p, (CHUNK, BLOCK_M // BS, BS)), axis=2)
        put_mass(MASS + o_mass_row[None, :] + o_kb[:, None], b_blk, m_kb[:, None] & m_qb[None, :], BLOCK_M < BS)
    tl.debug_barrier()


@triton.jit
def _attend_tile(b_q, b_k, b_v, start, LK, b_m, b_l, b_acc, b_run, qk_scale, p_slot, NKB,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BS: tl.constexpr, MASK_N: tl.constexpr,
                 WITH_MASS: tl.constexpr, PRECISION: tl.constexpr):
    """The online-softmax step over the key / value tiles at `start`; returns the updated
    (m, l, acc, run). WITH_MASS also stores each row's `log2(sum of 2**s)` over every key
    block the tile completes. A tile narrower than a block (BLOCK_N < BS) adds its row sums
    to `b_run [BLOCK_M, 1]` (rescaled with the running max) and stores at the block's end."""
    m_key = start + tl.arange(0, BLOCK_N) < LK
    # Row sums per key block for the fused search; one plain row sum for dense attention.
    GROUP: tl.constexpr = BS if WITH_MASS and BLOCK_N > BS else BLOCK_N
    b_m, b_l, b_acc, b_alpha, b_rows = online_softmax_step(b_q, b_k, b_v, m_key, b_m, b_l, b_acc, qk_scale,
                                                           BLOCK_M, BLOCK_N, GROUP, MASK_N, PRECISION)
    if WITH_MASS:
        if BLOCK_N >= BS:
            # [BLOCK_M, BLOCK_N // BS]; log2(0) = -inf for key blocks past Lk (not stored)
            _store_row_sums(p_slot, tl.math.log2(b_rows) + b_m[:, None], start // BS, NKB, True,
                            BLOCK_M, BLOCK_N // BS)
        else:
            b_run = b_run * b_alpha[:, None] + b_rows
            ends_block = ((start + BLOCK_N) % BS == 0) | (start + BLOCK_N >= LK)
            _store_row_sums(p_slot, tl.math.log2(b_run) + b_m[:, None], start // BS, NKB, ends_block, BLOCK_M, 1)
            b_run = tl.where(ends_block, 0.0, b_run)
    return b_m, b_l, b_acc, b_run


@triton.jit
def _attention_tile(
    Q, K, V, O, LSE, MASS, p_slot, i_m, i_bh,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    H, LQ, LK, NQB, NKB, qk_scale,
    HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr, BS: tl.constexpr, WITH_MASS: tl.constexpr,
    PRECISION: tl.constexpr, TMA: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Output and LSE (and with WITH_MASS the block mass) of query tile `i_m` of (batch * head) `i_bh`."""
    i_b = i_bh // H
    i_h = i_bh % H
    # [BLOCK_M, BLOCK_D]
    b_q, o_m, m_m, m_d = load_q_tile(Q, i_b, i_h, i_m, stride_qb, stride_qh, stride_qm, stride_qd, LQ,
                                     HEAD_D, BLOCK_M, BLOCK_D)
    if TMA:
        p_k = K
        p_v = V
    else:
        # [BLOCK_N, BLOCK_D] pointers of the first key / value tile
        o_n = tl.arange(0, BLOCK_N)
        o_d = tl.arange(0, BLOCK_D)
        p_k = (K + i_b.to(tl.int64) * stride_kb + i_h.to(tl.int64) * stride_kh + o_n[:, None] * stride_kn
               + o_d[None, :] * stride_kd)
        p_v = (V + i_b.to(tl.int64) * stride_vb + i_h.to(tl.int64) * stride_vh + o_n[:, None] * stride_vn
               + o_d[None, :] * stride_vd)

    b_m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    b_l = tl.zeros([BLOCK_M], tl.float32)
    b_acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    # Row sums of the key block in progress when tiles are narrower than blocks (fused search).
    b_run = tl.zeros([BLOCK_M, 1], tl.float32)
    lk_full = (LK // BLOCK_N) * BLOCK_N
    for start in range(0, lk_full, BLOCK_N):
        b_k = load_rows(K, p_k, i_b, i_h, start, LK, m_d, BLOCK_N, BLOCK_D, False, TMA)
        b_v = load_rows(V, p_v, i_b, i_h, start, LK, m_d, BLOCK_N, BLOCK_D, False, TMA)
        b_m, b_l, b_acc, b_run = _attend_tile(b_q, b_k, b_v, start, LK, b_m, b_l, b_acc, b_run, qk_scale, p_slot,
                                              NKB, BLOCK_M, BLOCK_N, BS, False, WITH_MASS, PRECISION)
        if not TMA:
            p_k += BLOCK_N * stride_kn
            p_v += BLOCK_N * stride_vn
    if lk_full < LK:
        b_k = load_rows(K, p_k, i_b, i_h, lk_full, LK, m_d, BLOCK_N, BLOCK_D, True, TMA)
        b_v = load_rows(V, p_v, i_b, i_h, lk_full, LK, m_d, BLOCK_N, BLOCK_D, True, TMA)
        b_m, b_l, b_acc, b_run = _attend_tile(b_q, b_k, b_v, lk_full, LK, b_m, b_l, b_acc, b_run, qk_scale, p_slot,
                                              NKB, BLOCK_M, BLOCK_N, BS, True, WITH_MASS, PRECISION)

    # Every row sees >= 1 key (Lk >= 1), so l > 0 and the LSE is finite.
    b_lse2 = b_m + tl.math.log2(b_l)
    store_out_tile(O, b_acc / b_l[:, None], i_b, i_h, o_m, m_m, m_d, stride_ob, stride_oh, stride_om, stride_od,
                   BLOCK_D, PRECISION)
    tl.store(LSE + i_bh.to(tl.int64) * LQ + o_m, b_lse2 * 0.6931471805599453, mask=m_m)
    if WITH_MASS:
        o_qb, m_qb = query_blocks_of_tile(i_m, NQB, BLOCK_M, BS)
        _sum_slot_into_mass(p_slot, tl.where(m_m, b_lse2, float("inf")), MASS,
                            (i_bh.to(tl.int64) * NQB + o_qb) * NKB, NKB, m_qb, BLOCK_M, BS)


@triton.jit
def _attention_fwd_kernel(
    Q, K, V, O, LSE, MASS, SCRATCH, LOCKS,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    H, LQ, LK, NQB, NKB, SLOT_ROWS, qk_scale,
    HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr, BS: tl.constexpr, WITH_MASS: tl.constexpr,
    PRECISION: tl.constexpr, TMA: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One program per (query tile of BLOCK_M rows, batch * head). LSE and MASS are contiguous.

    The fused search (WITH_MASS) keeps its per-row block log-sums in one of the
    `SLOT_ROWS // BLOCK_M` scratch slots of SCRATCH (`[nk, BLOCK_M]` floats each): a program
    takes a free one (spin lock per slot in LOCKS, all zeros between launches) and frees it
    when done. There are more slots than programs fit on the GPU at once, so the first slot
    tried is nearly always free; a program that waits only waits for running ones.
    MASS, SCRATCH, LOCKS and SLOT_ROWS are unused without WITH_MASS.

    K and V are `row_tiles` descriptors when TMA, else tensors read through pointers.
    """
    if WITH_MASS:
        n_slots = SLOT_ROWS // BLOCK_M
        slot = (tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)) % n_slots
        while tl.atomic_cas(LOCKS + slot, 0, 1) != 0:
            slot = (slot + 1) % n_slots
        p_slot = SCRATCH + slot.to(tl.int64) * NKB * BLOCK_M
    else:
        p_slot = SCRATCH
    _attention_tile(Q, K, V, O, LSE, MASS, p_slot, tl.program_id(0), tl.program_id(1),
                    stride_qb, stride_qh, stride_qm, stride_qd, stride_kb, stride_kh, stride_kn, stride_kd,
                    stride_vb, stride_vh, stride_vn, stride_vd, stride_ob, stride_oh, stride_om, stride_od,
                    H, LQ, LK, NQB, NKB, qk_scale, HEAD_D, BLOCK_D, BS, WITH_MASS, PRECISION, TMA,
                    BLOCK_M, BLOCK_N)
    if WITH_MASS:
        # After the slot's last read (_sum_slot_into_mass ends with a barrier).
        tl.atomic_xchg(LOCKS + slot, 0)


def _attention_configs_prune(configs, named_args, **kwargs):
    args = {**named_args, **kwargs}
    bs, block_d, with_mass = args["BS"], args["BLOCK_D"], args["WITH_MASS"]
    kept = [c for c in configs
            if not (with_mass and (c.kwargs["BLOCK_M"] % bs or not key_tile_fits(c.kwargs["BLOCK_N"], bs)))
            and not (block_d > 128 and c.kwargs["BLOCK_M"] > 64)
            and smem_estimate(c.num_stages, c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], block_d) <= SMEM_BUDGET]
    return kept or configs[:1]


# Tile heights 64/128 x widths 64/128 x pipeline depth 2/3, with 4 warps for 64-row tiles
# and 8 for 128-row tiles (one warpgroup per 64 rows, as wgmma wants): 8 configs, few
# enough that a first call compiles them in seconds. The fused search also needs query
# tiles of whole blocks and key tiles of whole blocks or whole fractions of one; with the
# shared-memory budget that leaves, for D = 128, 6 configs for dense attention and for the
# fused search 6 at block 64 and 3 at block 128.
_ATTENTION_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=bm // 16, num_stages=s,
                  pre_hook=set_tile_rows({"K": "BLOCK_N", "V": "BLOCK_N"}))
    for bm in (64, 128) for bn in (64, 128) for s in (2, 3)
]

_attention_tuned = triton.autotune(
    configs=_ATTENTION_CONFIGS, key=["BS", "BLOCK_D", "WITH_MASS", "TMA"],
    prune_configs_by={"early_config_prune": _attention_configs_prune},
)(_attention_fwd_kernel)


def _launch(q, k, v, *, block_size, scale, with_mass, config=None):
    """Dense attention or (with_mass) the fused search, autotuned or (tests) with one given
    `triton.Config` of `_ATTENTION_CONFIGS`. Without a config, both go to the Gluon kernel where
    `use_hopper_kernel` / `use_hopper_search` say so (dense attention's mass is then None)."""
    shape = check_attention_inputs(q, k, v)
    check_kernel_inputs(q, shape.head_dim)
    scale = resolve_scale(scale, shape.head_dim)
    if config is None and not with_mass and use_hopper_kernel(q, k, v):
        from .hopper import hopper_attention

        out, lse = hopper_attention(q, k, v, scale=scale)
        return out, lse, None
    if config is None and with_mass and use_hopper_search(q, k, v, block_size=block_size):
        from .hopper import hopper_attention_with_block_mass

        return hopper_attention_with_block_mass(q, k, v, block_size=block_size, scale=scale)
    B, H, LQ, LK, D = shape
    nq, nk = num_blocks(LQ, block_size), num_blocks(LK, block_size)
    block_d = padded_head_dim(D)
    tma = tma_eligible(k, v, block_d=block_d)
    tuned = config is None and use_autotune(q.dtype, block_d, block_size)
    if config is None and not tuned:
        tile = fixed_tile(block_size, block_d, q.dtype)
        config = triton.Config({"BLOCK_M": tile, "BLOCK_N": tile},
                               **fixed_config(tile, tile, block_d, q.element_size()))
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty(B, H, LQ, device=q.device, dtype=torch.float32)
    if with_mass:
        mass = mass_output((B, H, nq, nk), q.device, block_size if tuned else config.kwargs["BLOCK_M"], block_size)
        scratch, locks, slot_rows = scratch_slots(q.device, nk)
    else:
        mass = scratch = locks = lse  # unused by the kernel
        slot_rows = 0
    # Descriptor tiles: the config's height, or (autotuned) any height the pre-hook then resizes.
    rows = block_size if tuned else config.kwargs["BLOCK_N"]
    k_arg, v_arg = (row_tiles(k, rows, block_d), row_tiles(v, rows, block_d)) if tma else (k, v)
    args = (q, k_arg, v_arg, out, lse, mass, scratch, locks, *strides4(q), *strides4(k), *strides4(v),
            *strides4(out), H, LQ, LK, nq, nk, slot_rows, scale * LOG2E)
    meta = dict(HEAD_D=D, BLOCK_D=block_d, BS=block_size, WITH_MASS=with_mass, PRECISION=dot_precision(q.dtype),
                TMA=tma)
    grid = lambda m: (triton.cdiv(LQ, m["BLOCK_M"]), B * H)  # noqa: E731
    if tuned:
        _attention_tuned[grid](*args, **meta)
    else:
        _attention_fwd_kernel[grid(config.kwargs)](*args, **meta, **config.all_kwargs())
    return out, lse, mass


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale=None):
    """Dense attention forward that also returns the natural-log LSE.

    Args:
        q: `[B, H, Lq, D]` float16 / bfloat16 / float32 CUDA tensor, any strides, D <= 256.
        k, v: `[B, H, Lk, D]`, same dtype and device.
        scale: softmax scale, default `1/sqrt(D)`.

    Returns:
        out: `[B, H, Lq, D]` in q's dtype; lse: float32 `[B, H, Lq]`.

    Example:
        >>> q = torch.randn(1, 2, 200, 64, device="cuda", dtype=torch.bfloat16)
        >>> k = v = torch.randn(1, 2, 300, 64, device="cuda", dtype=torch.bfloat16)
        >>> out, lse = attention(q, k, v)
        >>> out.shape, lse.shape
        (torch.Size([1, 2, 200, 64]), torch.Size([1, 2, 200]))
    """
    out, lse, _ = _launch(q, k, v, block_size=64, scale=scale, with_mass=False)
    return out, lse


def attention_with_block_mass(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, block_size: int = 64,
                              scale=None):
    """Fused search: dense output, LSE and the exact block attention mass in one launch.

    Args:
        q: `[B, H, Lq, D]` float16 / bfloat16 / float32 CUDA tensor, any strides, D <= 256.
        k, v: `[B, H, Lk, D]`, same dtype and device.
        block_size: tokens per block, one of 16, 32, 64, 128.
        scale: softmax scale, default `1/sqrt(D)`.

    Returns:
        out `[B, H, Lq, D]` (q's dtype), lse float32 `[B, H, Lq]`, mass float32
        `[B, H, nq, nk]` whose row `p` sums to the number of valid queries in block `p`.

    Example:
        >>> q = torch.randn(1, 2, 200, 64, device="cuda", dtype=torch.bfloat16)
        >>> k = v = torch.randn(1, 2, 300, 64, device="cuda", dtype=torch.bfloat16)
        >>> out, lse, mass = attention_with_block_mass(q, k, v, block_size=64)
        >>> mass.shape, round(mass[0, 0, -1].sum().item())
        (torch.Size([1, 2, 4, 5]), 8)
    """
    check_block_size(block_size)
    check_kernel_block_size(block_size)
    return _launch(q, k, v, block_size=block_size, scale=scale, with_mass=True)
