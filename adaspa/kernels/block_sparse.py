"""Head-adaptive block-sparse attention over a `BlockSparseMask`.

One program per (batch, head, query block) walks the `counts[b, h, p]` kept key blocks
listed in `indices[b, h, p]`. On Hopper with aligned half-precision inputs each kept
block's K and V rows come through the tensor copy engine (TMA: one `[BS, D]` box per
block, zeros past Lk); otherwise the kernel gathers `KPI` kept blocks per iteration
through pointers into one `[KPI * BS, D]` key tile (so a 16-row block size still gets
64-wide dots). The softmax runs over the kept keys only; a row with no kept block
writes `out = 0`, `lse = -inf`.

Load balance: heads keep different numbers of blocks (three tiers), and rows differ too.
Programs are launched heavy-first: a device-side stable argsort of `counts` (descending)
gives each program id its row, so the longest rows start in the first wave and the
short ones fill the tail (longest-processing-time-first list scheduling), instead of a
tier of heavy heads starting last and setting the time. The argsort is one small launch
over `B * H * nq` ints, with no host sync; docs/kernel-tuning.md compares it with the
naive order.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._validation import check_attention_inputs, check_mask_matches, resolve_scale
from ._launch import (LOG2E, SMEM_BUDGET, check_block_tiles_fit, check_kernel_block_size, check_kernel_inputs, dot,
                      dot_precision, fixed_config, load_q_tile, load_rows, padded_head_dim, row_tiles, smem_estimate,
                      store_out_tile, strides4, tma_eligible, to_dtype, use_autotune)


@triton.jit
def _block_sparse_attention_fwd_kernel(
    Q, K, V, O, LSE, INDICES, COUNTS, ORDER,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    H, LQ, LK, NQB, MAX_KEPT, qk_scale,
    HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr, BS: tl.constexpr, ORDERED: tl.constexpr,
    PRECISION: tl.constexpr, TMA: tl.constexpr, KPI: tl.constexpr,
):
    """Program `pid` handles row `ORDER[pid]` (or `pid`) of the flattened `[B * H * nq]` mask.

    K and V are `row_tiles` descriptors of `[BS, BLOCK_D]` tiles when TMA (then KPI = 1),
    else tensors read through pointers.
    """
    BLOCK_N: tl.constexpr = KPI * BS
    pid = tl.program_id(0)
    if ORDERED:
        i_row = tl.load(ORDER + pid).to(tl.int64)
    else:
        i_row = pid.to(tl.int64)
    i_bh = i_row // NQB
    i_p = i_row % NQB
    i_b = i_bh // H
    i_h = i_bh % H
    n_kept = tl.load(COUNTS + i_row)
    p_idx = INDICES + i_row * MAX_KEPT

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
    for it in range(0, tl.cdiv(n_kept, KPI)):
        if TMA:
            # One kept block per tile, fetched by the copy engine (zeros past Lk).
            b_blk = tl.load(p_idx + it)
            m_key = b_blk * BS + o_n < LK
            b_kt = tl.trans(load_rows(K, K, i_b.to(tl.int32), i_h.to(tl.int32), b_blk * BS, LK, m_d, BS, BLOCK_D,
                                      False, True))
            b_v = load_rows(V, V, i_b.to(tl.int32), i_h.to(tl.int32), b_blk * BS, LK, m_d, BS, BLOCK_D, False, True)
        elif KPI == 1:
            # One kept block per tile: a scalar index and contiguous rows, which the
            # pipeliner turns into plain async copies.
            b_blk = tl.load(p_idx + it)
            o_key = b_blk.to(tl.int64) * BS + o_n
            m_key = o_key < LK
        else:
            # Slot of the kept list each key row of the tile comes from. [BLOCK_N]
            o_slot = it * KPI + o_n // BS
            m_slot = o_slot < n_kept
            b_blk = tl.load(p_idx + o_slot, mask=m_slot, other=0)
            o_key = (b_blk * BS + o_n % BS).to(tl.int64)
            m_key = m_slot & (o_key < LK)
        if not TMA:
            b_kt = tl.load(k_base + o_key[None, :] * stride_kn + o_d[:, None] * stride_kd,
                           mask=m_d[:, None] & m_key[None, :], other=0.0)
            b_v = tl.load(v_base + o_key[:, None] * stride_vn + o_d[None, :] * stride_vd,
                          mask=m_key[:, None] & m_d[None, :], other=0.0)
        # -inf on masked keys, added in the same FMA as the scale (a select per score costs more).
        b_bias = tl.where(m_key, 0.0, float("-inf"))
        # [BS, BLOCK_N], log2 domain; every tile holds >= 1 valid key, so b_m_new is finite.
        b_s = dot(b_q, b_kt, PRECISION) * qk_scale + b_bias[None, :]
        b_m_new = tl.maximum(b_m, tl.max(b_s, axis=1))
        b_alpha = tl.math.exp2(b_m - b_m_new)
        b_p = tl.math.exp2(b_s - b_m_new[:, None])
        b_l = b_l * b_alpha + tl.sum(b_p, axis=1)
        b_acc = b_acc * b_alpha[:, None] + dot(to_dtype(b_p, b_v.dtype, PRECISION), b_v, PRECISION)
        b_m = b_m_new

    m_live = b_l > 0
    b_out = tl.where(m_live[:, None], b_acc / tl.where(m_live, b_l, 1.0)[:, None], 0.0)
    b_lse = tl.where(m_live, (b_m + tl.math.log2(tl.where(m_live, b_l, 1.0))) * 0.6931471805599453,
                     float("-inf"))
    store_out_tile(O, b_out, i_b, i_h, o_m, m_m, m_d, stride_ob, stride_oh, stride_om, stride_od, BLOCK_D, PRECISION)
    tl.store(LSE + i_bh * LQ + o_m, b_lse, mask=m_m)


def _sparse_configs_prune(configs, named_args, **kwargs):
    args = {**named_args, **kwargs}
    bs = args["BS"]
    kept = [c for c in configs if 64 <= c.kwargs["KPI"] * bs <= 256 and c.num_warps == max(4, bs // 16)
            and not (args["TMA"] and c.kwargs["KPI"] != 1)
            and smem_estimate(c.num_stages, bs, c.kwargs["KPI"] * bs, args["BLOCK_D"]) <= SMEM_BUDGET]
    return kept or configs[:1]


# Key blocks gathered per iteration (1, 2, 4) x warps (4, 8) x pipeline depth (2, 3, 4) = 18;
# the pruning keeps one warpgroup per 64 query rows (4 warps at block 64, 8 at 128), a
# key tile 64-256 wide (narrower wastes the tensor cores), one block per tile for TMA, and
# the pipelined tiles within shared memory: for D = 128, 3 configs at block 64 and 1 at
# block 128 through TMA (4 and 1 through pointers; docs/kernel-tuning.md).
_SPARSE_CONFIGS = [
    triton.Config({"KPI": kpi}, num_warps=w, num_stages=s)
    for kpi in (1, 2, 4) for w in (4, 8) for s in (2, 3, 4)
]

_block_sparse_tuned = triton.autotune(
    configs=_SPARSE_CONFIGS, key=["BS", "BLOCK_D", "ORDERED", "TMA"],
    prune_configs_by={"early_config_prune": _sparse_configs_prune},
)(_block_sparse_attention_fwd_kernel)


def heavy_first_order(counts: torch.Tensor) -> torch.Tensor:
    """Flattened row ids of `counts [B, H, nq]` sorted by count, largest first (int32, on device)."""
    return torch.argsort(counts.reshape(-1), descending=True, stable=True).to(torch.int32)


def _block_sparse_attention(q, k, v, mask, *, scale=None, heavy_first=True, config=None):
    """`block_sparse_attention`, optionally in row order, autotuned or (tests) with one given
    `triton.Config` of `_SPARSE_CONFIGS`."""
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
    order = heavy_first_order(counts) if heavy_first else counts
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty(B, H, LQ, device=q.device, dtype=torch.float32)
    tma = tma_eligible(k, v, block_d=block_d)
    k_arg, v_arg = (row_tiles(k, bs, block_d), row_tiles(v, bs, block_d)) if tma else (k, v)
    args = (q, k_arg, v_arg, out, lse, indices, counts, order, *strides4(q), *strides4(k), *strides4(v),
            *strides4(out), H, LQ, LK, nq, indices.shape[-1], scale * LOG2E)
    meta = dict(HEAD_D=D, BLOCK_D=block_d, BS=bs, ORDERED=heavy_first, PRECISION=dot_precision(q.dtype), TMA=tma)
    grid = (B * H * nq,)
    if config is None and use_autotune(q.dtype, block_d, bs):
        _block_sparse_tuned[grid](*args, **meta)
        return out, lse
    if config is None:
        kpi = 1 if tma else max(1, 64 // bs)
        config = triton.Config({"KPI": kpi}, **fixed_config(bs, kpi * bs, block_d, q.element_size()))
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
