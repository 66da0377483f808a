"""Dense flash attention forward with LSE, and the fused search (attention + block mass).

Pass 1 is the online-softmax loop of FlashAttention-2 in the log2 domain: the scale is
folded with log2(e) into `qk_scale`, so each score costs one FMA and one exp2. Pass 2
(fused search only) runs `search._mass_tile` over K again with the final LSE, inside the
same program, so `out`, `lse` and `mass` come from one launch and Q is read once.

K and V tiles come through the tensor copy engine (TMA descriptors, `_launch.row_tiles`)
when `_launch.tma_eligible` says so, else through pointers; run 3 in docs/kernel-tuning.md
measured the difference.

Per (query tile, key tile) pass 1 does two `BLOCK_M x BLOCK_N x D` dots (4 * M * N * D
FLOPs) and one exp2 per score; memory traffic is Q + O once and K, V once per query
tile (mostly served by L2 at these sizes). Pass 2 adds one dot and one exp2 per score.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._validation import check_attention_inputs, check_block_size, num_blocks, resolve_scale
from ._launch import (LOG2E, SMEM_BUDGET, check_kernel_block_size, check_kernel_inputs, dot, dot_precision,
                      fixed_config, load_rows, padded_head_dim, row_tiles, set_tile_rows, smem_estimate, strides4,
                      tma_eligible, to_dtype, use_autotune)
from .search import _mass_tile, fixed_tile


@triton.jit
def _attend_tile(b_q, b_k, b_v, start, LK, b_m, b_l, b_acc, qk_scale,
                 BLOCK_N: tl.constexpr, MASK_N: tl.constexpr, PRECISION: tl.constexpr):
    """One online-softmax step over the `[BLOCK_N, BLOCK_D]` key / value tiles at `start`;
    returns the updated (m, l, acc)."""
    # [BLOCK_M, BLOCK_N] raw scores; qk_scale > 0, so max(s) * qk_scale is the max of the scaled
    # scores and each probability costs one FMA (s * qk_scale - m) before its exp2.
    b_s = dot(b_q, tl.trans(b_k), PRECISION)
    if MASK_N:
        b_s = tl.where((start + tl.arange(0, BLOCK_N) < LK)[None, :], b_s, float("-inf"))
    b_m_new = tl.maximum(b_m, tl.max(b_s, axis=1) * qk_scale)
    b_alpha = tl.math.exp2(b_m - b_m_new)
    b_p = tl.math.exp2(b_s * qk_scale - b_m_new[:, None])
    b_l = b_l * b_alpha + tl.sum(b_p, axis=1)
    # [BLOCK_M, BLOCK_D]
    b_acc = b_acc * b_alpha[:, None] + dot(to_dtype(b_p, b_v.dtype, PRECISION), b_v, PRECISION)
    return b_m_new, b_l, b_acc


@triton.jit
def _attention_fwd_kernel(
    Q, K, V, O, LSE, MASS,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    H, LQ, LK, NQB, NKB, qk_scale,
    HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr, BS: tl.constexpr, WITH_MASS: tl.constexpr,
    PRECISION: tl.constexpr, TMA: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One program per (query tile of BLOCK_M rows, batch * head). LSE and MASS are contiguous.

    K and V are `row_tiles` descriptors when TMA, else tensors read through pointers.
    """
    i_m = tl.program_id(0)
    i_bh = tl.program_id(1)
    i_b = i_bh // H
    i_h = i_bh % H
    o_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    o_d = tl.arange(0, BLOCK_D)
    o_n = tl.arange(0, BLOCK_N)
    m_m = o_m < LQ
    if BLOCK_D == HEAD_D:
        m_d = tl.full([BLOCK_D], 1, tl.int1)
    else:
        m_d = o_d < HEAD_D
    p_q = (Q + i_b.to(tl.int64) * stride_qb + i_h.to(tl.int64) * stride_qh + o_m[:, None].to(tl.int64) * stride_qm
           + o_d[None, :] * stride_qd)
    # [BLOCK_M, BLOCK_D]
    b_q = tl.load(p_q, mask=m_m[:, None] & m_d[None, :], other=0.0)
    if TMA:
        p_k = K
        p_v = V
    else:
        # [BLOCK_N, BLOCK_D] pointers of the first key / value tile
        p_k = (K + i_b.to(tl.int64) * stride_kb + i_h.to(tl.int64) * stride_kh + o_n[:, None] * stride_kn
               + o_d[None, :] * stride_kd)
        p_v = (V + i_b.to(tl.int64) * stride_vb + i_h.to(tl.int64) * stride_vh + o_n[:, None] * stride_vn
               + o_d[None, :] * stride_vd)
    p_k0 = p_k

    b_m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    b_l = tl.zeros([BLOCK_M], tl.float32)
    b_acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    lk_full = (LK // BLOCK_N) * BLOCK_N
    for start in range(0, lk_full, BLOCK_N):
        b_k = load_rows(K, p_k, i_b, i_h, start, LK, m_d, BLOCK_N, BLOCK_D, False, TMA)
        b_v = load_rows(V, p_v, i_b, i_h, start, LK, m_d, BLOCK_N, BLOCK_D, False, TMA)
        b_m, b_l, b_acc = _attend_tile(b_q, b_k, b_v, start, LK, b_m, b_l, b_acc, qk_scale,
                                       BLOCK_N, False, PRECISION)
        if not TMA:
            p_k += BLOCK_N * stride_kn
            p_v += BLOCK_N * stride_vn
    if lk_full < LK:
        b_k = load_rows(K, p_k, i_b, i_h, lk_full, LK, m_d, BLOCK_N, BLOCK_D, True, TMA)
        b_v = load_rows(V, p_v, i_b, i_h, lk_full, LK, m_d, BLOCK_N, BLOCK_D, True, TMA)
        b_m, b_l, b_acc = _attend_tile(b_q, b_k, b_v, lk_full, LK, b_m, b_l, b_acc, qk_scale,
                                       BLOCK_N, True, PRECISION)

    # Every row sees >= 1 key (Lk >= 1), so l > 0 and the LSE is finite.
    b_lse2 = b_m + tl.math.log2(b_l)
    b_out = b_acc / b_l[:, None]
    p_o = (O + i_b.to(tl.int64) * stride_ob + i_h.to(tl.int64) * stride_oh + o_m[:, None].to(tl.int64) * stride_om
           + o_d[None, :] * stride_od)
    tl.store(p_o, to_dtype(b_out, O.dtype.element_ty, PRECISION), mask=m_m[:, None] & m_d[None, :])
    tl.store(LSE + i_bh.to(tl.int64) * LQ + o_m, b_lse2 * 0.6931471805599453, mask=m_m)

    if WITH_MASS:
        b_lse2 = tl.where(m_m, b_lse2, float("inf"))
        o_qb = i_m * (BLOCK_M // BS) + tl.arange(0, BLOCK_M // BS)
        m_qb = o_qb < NQB
        o_mass_row = (i_bh.to(tl.int64) * NQB + o_qb) * NKB
        p_k = p_k0
        for start in range(0, lk_full, BLOCK_N):
            b_k = load_rows(K, p_k, i_b, i_h, start, LK, m_d, BLOCK_N, BLOCK_D, False, TMA)
            _mass_tile(b_q, b_k, start, LK, b_lse2, MASS, o_mass_row, NKB, m_qb, qk_scale,
                       BLOCK_M, BLOCK_N, BS, False, PRECISION)
            if not TMA:
                p_k += BLOCK_N * stride_kn
        if lk_full < LK:
            b_k = load_rows(K, p_k, i_b, i_h, lk_full, LK, m_d, BLOCK_N, BLOCK_D, True, TMA)
            _mass_tile(b_q, b_k, lk_full, LK, b_lse2, MASS, o_mass_row, NKB, m_qb, qk_scale,
                       BLOCK_M, BLOCK_N, BS, True, PRECISION)


def _attention_configs_prune(configs, named_args, **kwargs):
    args = {**named_args, **kwargs}
    bs, block_d, with_mass = args["BS"], args["BLOCK_D"], args["WITH_MASS"]
    kept = [c for c in configs
            if not (with_mass and (c.kwargs["BLOCK_M"] % bs or c.kwargs["BLOCK_N"] % bs))
            and not (block_d > 128 and c.kwargs["BLOCK_M"] > 64)
            and smem_estimate(c.num_stages, c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], block_d) <= SMEM_BUDGET]
    return kept or configs[:1]


# Tile heights 64/128 x widths 64/128 x pipeline depth 2/3, with 4 warps for 64-row tiles
# and 8 for 128-row tiles (one warpgroup per 64 rows, as wgmma wants): 8 configs, few
# enough that a first call compiles them in seconds. The fused search also needs tiles
# holding whole blocks and the shared-memory budget leave 1-8 per key.
_ATTENTION_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=bm // 16, num_stages=s,
                  pre_hook=set_tile_rows({"K": "BLOCK_N", "V": "BLOCK_N"}))
    for bm in (64, 128) for bn in (64, 128) for s in (2, 3)
]

_attention_tuned = triton.autotune(
    configs=_ATTENTION_CONFIGS, key=["BS", "BLOCK_D", "WITH_MASS", "TMA"],
    prune_configs_by={"early_config_prune": _attention_configs_prune},
)(_attention_fwd_kernel)


def _launch(q, k, v, *, block_size, scale, with_mass):
    shape = check_attention_inputs(q, k, v)
    check_kernel_inputs(q, shape.head_dim)
    scale = resolve_scale(scale, shape.head_dim)
    B, H, LQ, LK, D = shape
    nq, nk = num_blocks(LQ, block_size), num_blocks(LK, block_size)
    block_d = padded_head_dim(D)
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty(B, H, LQ, device=q.device, dtype=torch.float32)
    mass = torch.empty(B, H, nq, nk, device=q.device, dtype=torch.float32) if with_mass else lse
    tma = tma_eligible(k, v, block_d=block_d)
    tile = fixed_tile(block_size, block_d)
    # Descriptors start with the untuned tile; the autotuner's pre-hook resizes them per config.
    k_arg, v_arg = (row_tiles(k, tile, block_d), row_tiles(v, tile, block_d)) if tma else (k, v)
    args = (q, k_arg, v_arg, out, lse, mass, *strides4(q), *strides4(k), *strides4(v), *strides4(out),
            H, LQ, LK, nq, nk, scale * LOG2E)
    meta = dict(HEAD_D=D, BLOCK_D=block_d, BS=block_size, WITH_MASS=with_mass, PRECISION=dot_precision(q.dtype),
                TMA=tma)
    if use_autotune(q.dtype, block_d, block_size):
        grid = lambda m: (triton.cdiv(LQ, m["BLOCK_M"]), B * H)  # noqa: E731
        _attention_tuned[grid](*args, **meta)
    else:
        _attention_fwd_kernel[(triton.cdiv(LQ, tile), B * H)](
            *args, **meta, BLOCK_M=tile, BLOCK_N=tile, **fixed_config(tile, tile, block_d, q.element_size()))
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
