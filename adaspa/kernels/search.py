"""Block attention mass from a cached LSE: the LSE-cached search kernel.

`mass[b, h, p, c] = sum_{i in block p, j in block c} exp(scale * q_i . k_j - lse_i)`.

Work per (query tile, key tile): one `[BLOCK_M, D] x [D, MASS_N]` dot (half the matrix
work of attention: no `P @ V`), one exp2 per score, and a reduction of the tile to
`[BLOCK_M / BS, MASS_N / BS]` block sums (a key tile narrower than a block adds into a
running sum, stored at the block's last tile). No V is read and no output is written except
`mass` (`B * H * nq * nk` floats, tiny next to Q and K). The exp2 count equals
attention's, yet at 128-wide tiles dropping the exp2 saves only 2%: the matrix loop and
the block reduction bound this kernel (docs/kernel-tuning.md, run 3). On Hopper, half
inputs with D of 64 or 128 at block 64 / 128 go to the warp-specialized Gluon kernel of
`hopper_search.py` instead (`_launch.use_hopper_search`; 0.51x / 0.53x SDPA-cuDNN time on
an H100 at L = 118784, against 0.56x / 0.58x for this kernel).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._validation import check_attention_inputs, check_block_size, num_blocks, require_lse, resolve_scale
from ._launch import (LOG2E, SMEM_BUDGET, check_kernel_block_size, check_kernel_inputs, dot, dot_precision,
                      fixed_config, key_tile_fits, load_q_tile, load_rows, padded_head_dim, row_tiles, set_tile_rows,
                      smem_estimate, strides4, tma_eligible, use_autotune, use_hopper_search, wide_float32_rows)


@triton.jit
def _tile_block_sums(b_q, b_k, start, LK, b_lse2, qk_scale, BLOCK_M: tl.constexpr, MASS_N: tl.constexpr,
                     BS: tl.constexpr, MASK_N: tl.constexpr, PRECISION: tl.constexpr):
    """Sums of `exp2(qk * qk_scale - lse2)` over each (query block, key block) part of one key tile.

    `b_k` is the `[MASS_N, BLOCK_D]` key tile at `start` (zeros past Lk), `b_lse2` the
    log2-domain LSE per query row (`+inf` on rows past Lq so they add 0). Returns
    `[QB, MASS_N // BS]`, or `[QB, 1]` for a tile narrower than a block, where QB is the
    number of query blocks the tile touches (`BLOCK_M // BS`, or 1 for part of a block).
    """
    # [BLOCK_M, MASS_N]
    b_p = tl.math.exp2(dot(b_q, tl.trans(b_k), PRECISION) * qk_scale - b_lse2[:, None])
    if MASK_N:
        b_p = tl.where((start + tl.arange(0, MASS_N) < LK)[None, :], b_p, 0.0)
    if BLOCK_M <= BS and MASS_N <= BS:
        # One query block, one key block, or parts of them: a plain reduction, no reshape. [1, 1]
        return tl.zeros([1, 1], tl.float32) + tl.sum(tl.sum(b_p, axis=1), axis=0)
    else:
        GROUP: tl.constexpr = BS if MASS_N > BS else MASS_N
        ROWS: tl.constexpr = BS if BLOCK_M > BS else BLOCK_M
        # [BLOCK_M, MASS_N // GROUP]: within rows (no shared memory)
        b_cols = tl.sum(tl.reshape(b_p, (BLOCK_M, MASS_N // GROUP, GROUP)), axis=2)
        # [QB, MASS_N // GROUP]: across rows
        return tl.sum(tl.reshape(b_cols, (BLOCK_M // ROWS, ROWS, MASS_N // GROUP)), axis=1)


@triton.jit
def query_blocks_of_tile(i_m, NQB, BLOCK_M: tl.constexpr, BS: tl.constexpr):
    """The query blocks that query tile `i_m` of BLOCK_M rows lies in, `[QB]`, and which of
    them exist (`< NQB`): `BLOCK_M // BS` whole blocks, or the one block a tile of part of
    a block (BLOCK_M < BS) lies in."""
    if BLOCK_M >= BS:
        o_qb = i_m * (BLOCK_M // BS) + tl.arange(0, BLOCK_M // BS)
    else:
        o_qb = i_m // (BS // BLOCK_M) + tl.arange(0, 1)
    return o_qb, o_qb < NQB


@triton.jit
def put_mass(p_mass, b_mass, m_put, ADD: tl.constexpr):
    """Write block sums `b_mass` to `p_mass` where `m_put`; with ADD add them instead.

    ADD is for query tiles of part of a block (BLOCK_M < BS: float32 with D > 128 at block
    128, `_launch.wide_float32_rows`), where the two tiles of one block each add their
    half into a zeroed MASS. Two adds onto an exact zero give the same float in either
    order, so the result stays deterministic.
    """
    if ADD:
        tl.atomic_add(p_mass, b_mass, mask=m_put, sem="relaxed")
    else:
        tl.store(p_mass, b_mass, mask=m_put)


def mass_output(shape: tuple, device: torch.device, block_m: int, block_size: int) -> torch.Tensor:
    """The float32 `mass` `[B, H, nq, nk]` a kernel of `block_m`-row query tiles writes:
    uninitialised, or zeroed when the tiles cover part of a block (`put_mass` adds into it)."""
    alloc = torch.zeros if block_m < block_size else torch.empty
    return alloc(shape, device=device, dtype=torch.float32)


@triton.jit
def _mass_step(b_q, b_k, start, LK, b_lse2, b_run, MASS, o_mass_row, NKB, m_qb, qk_scale,
               BLOCK_M: tl.constexpr, MASS_N: tl.constexpr, BS: tl.constexpr,
               MASK_N: tl.constexpr, PRECISION: tl.constexpr):
    """Store the block sums of the key tile at `start` into MASS (rows `o_mass_row`, valid
    where `m_qb`; added, not stored, for query tiles of part of a block); returns `b_run`.
    A tile narrower than a block adds into `b_run [QB, 1]` and stores at the block's last tile."""
    b_blk = _tile_block_sums(b_q, b_k, start, LK, b_lse2, qk_scale, BLOCK_M, MASS_N, BS, MASK_N, PRECISION)
    if MASS_N >= BS:
        o_kb = start // BS + tl.arange(0, MASS_N // BS)
        put_mass(MASS + o_mass_row[:, None] + o_kb[None, :], b_blk, m_qb[:, None] & (o_kb[None, :] < NKB),
                 BLOCK_M < BS)
    else:
        b_run += b_blk
        ends_block = ((start + MASS_N) % BS == 0) | (start + MASS_N >= LK)
        put_mass(MASS + o_mass_row[:, None] + start // BS, b_run, m_qb[:, None] & ends_block, BLOCK_M < BS)
        b_run = tl.where(ends_block, 0.0, b_run)
    return b_run


@triton.jit
def _block_mass_fwd_kernel(
    Q, K, LSE, MASS,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_lb, stride_lh, stride_lm,
    H, LQ, LK, NQB, NKB, qk_scale,
    HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr, BS: tl.constexpr, PRECISION: tl.constexpr,
    TMA: tl.constexpr, BLOCK_M: tl.constexpr, MASS_N: tl.constexpr,
):
    """One program per (query tile of BLOCK_M rows, batch * head): pass 2 of the search alone.

    A query tile holds whole blocks, or part of one (then MASS must be zeroed: `put_mass`).
    K is a `row_tiles` descriptor when TMA, else a tensor read through pointers.
    """
    i_m = tl.program_id(0)
    i_bh = tl.program_id(1)
    i_b = i_bh // H
    i_h = i_bh % H
    # [BLOCK_M, BLOCK_D]
    b_q, o_m, m_m, m_d = load_q_tile(Q, i_b, i_h, i_m, stride_qb, stride_qh, stride_qm, stride_qd, LQ,
                                     HEAD_D, BLOCK_M, BLOCK_D)
    b_lse = tl.load(LSE + i_b.to(tl.int64) * stride_lb + i_h.to(tl.int64) * stride_lh + o_m.to(tl.int64) * stride_lm,
                    mask=m_m, other=0.0)
    b_lse2 = tl.where(m_m, b_lse.to(tl.float32) * 1.4426950408889634, float("inf"))

    o_qb, m_qb = query_blocks_of_tile(i_m, NQB, BLOCK_M, BS)
    o_mass_row = (i_bh.to(tl.int64) * NQB + o_qb) * NKB

    if TMA:
        p_k = K
    else:
        # [MASS_N, BLOCK_D] pointers of the first key tile
        p_k = (K + i_b.to(tl.int64) * stride_kb + i_h.to(tl.int64) * stride_kh
               + tl.arange(0, MASS_N)[:, None] * stride_kn + tl.arange(0, BLOCK_D)[None, :] * stride_kd)
    # Block sums of the key block in progress when tiles are narrower than blocks. [QB, 1]
    QB: tl.constexpr = BLOCK_M // BS if BLOCK_M > BS else 1
    b_run = tl.zeros([QB, 1], tl.float32)
    lk_full = (LK // MASS_N) * MASS_N
    for start in range(0, lk_full, MASS_N):
        b_k = load_rows(K, p_k, i_b, i_h, start, LK, m_d, MASS_N, BLOCK_D, False, TMA)
        b_run = _mass_step(b_q, b_k, start, LK, b_lse2, b_run, MASS, o_mass_row, NKB, m_qb, qk_scale,
                           BLOCK_M, MASS_N, BS, False, PRECISION)
        if not TMA:
            p_k += MASS_N * stride_kn
    if lk_full < LK:
        b_k = load_rows(K, p_k, i_b, i_h, lk_full, LK, m_d, MASS_N, BLOCK_D, True, TMA)
        _mass_step(b_q, b_k, lk_full, LK, b_lse2, b_run, MASS, o_mass_row, NKB, m_qb, qk_scale,
                   BLOCK_M, MASS_N, BS, True, PRECISION)


def _mass_configs_prune(configs, named_args, **kwargs):
    args = {**named_args, **kwargs}
    bs, block_d = args["BS"], args["BLOCK_D"]
    kept = [c for c in configs
            if c.kwargs["BLOCK_M"] % bs == 0 and key_tile_fits(c.kwargs["MASS_N"], bs)
            and not (block_d > 128 and c.kwargs["BLOCK_M"] > 64)
            and smem_estimate(c.num_stages, c.kwargs["BLOCK_M"], c.kwargs["MASS_N"], block_d, with_v=False)
            <= SMEM_BUDGET]
    return kept or configs[:1]


# 3 tile heights x 2 tile widths x 2 pipeline depths = 12, with one warpgroup per 64 rows;
# query tiles must hold whole blocks, key tiles whole blocks or a whole fraction of one
# (64 at block 128), and all must fit shared memory, which leaves 11 configs at block 64
# and 7 at block 128 for D = 128. 256-row tiles halve the K traffic per query row (run 3).
_MASS_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "MASS_N": bn}, num_warps=bm // 16, num_stages=s,
                  pre_hook=set_tile_rows({"K": "MASS_N"}))
    for bm in (64, 128, 256) for bn in (64, 128) for s in (2, 3)
]

_block_mass_tuned = triton.autotune(
    configs=_MASS_CONFIGS, key=["BS", "BLOCK_D", "TMA"], prune_configs_by={"early_config_prune": _mass_configs_prune}
)(_block_mass_fwd_kernel)


def fixed_tile(bs: int, block_d: int, dtype: torch.dtype) -> int:
    """Tile edge for the untuned path (interpreter, fp32, odd D): whole blocks, at least 64 wide
    (32 at D > 128, where a 64 x 256 fp32 accumulator already fills the registers), except
    float32 at D > 128, whose tiles stop at `wide_float32_rows` (half a block at block 128)."""
    tile = max(bs, 64) if block_d <= 128 else max(bs, 32)
    cap = wide_float32_rows(dtype, block_d)
    return tile if cap is None else min(tile, cap)


def block_mass(q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor, *, block_size: int = 64, scale=None):
    """LSE-cached search: block attention mass from a cached LSE, without V or an output.

    Args:
        q: `[B, H, Lq, D]` float16 / bfloat16 / float32 CUDA tensor, any strides.
        k: `[B, H, Lk, D]`, same dtype and device.
        lse: `[B, H, Lq]` natural-log LSE of the same rows (e.g. from `attention`).
        block_size: tokens per block, one of 16, 32, 64, 128.
        scale: softmax scale, default `1/sqrt(D)`.

    Returns:
        mass: float32 `[B, H, nq, nk]`, `mass[b,h,p,c] = sum exp(scale*q_i.k_j - lse_i)` over
        query block `p` and key block `c`.

    Example:
        >>> q = torch.randn(1, 2, 200, 64, device="cuda", dtype=torch.bfloat16)
        >>> k = torch.randn(1, 2, 300, 64, device="cuda", dtype=torch.bfloat16)
        >>> from adaspa.kernels import attention
        >>> _, lse = attention(q, k, k)
        >>> block_mass(q, k, lse, block_size=64).shape
        torch.Size([1, 2, 4, 5])
    """
    return _block_mass(q, k, lse, block_size=block_size, scale=scale)


def _block_mass(q, k, lse, *, block_size, scale, config=None):
    """`block_mass`, autotuned or (tests) with one given `triton.Config` of `_MASS_CONFIGS`; without a
    config, the Gluon kernel where `use_hopper_search` says so."""
    require_lse(lse)
    shape = check_attention_inputs(q, k, lse=lse)
    check_block_size(block_size)
    check_kernel_block_size(block_size)
    check_kernel_inputs(q, shape.head_dim)
    scale = resolve_scale(scale, shape.head_dim)
    if config is None and use_hopper_search(q, k, block_size=block_size):
        from .hopper_search import hopper_block_mass

        return hopper_block_mass(q, k, lse, block_size=block_size, scale=scale)
    B, H, LQ, LK, D = shape
    nq, nk = num_blocks(LQ, block_size), num_blocks(LK, block_size)
    block_d = padded_head_dim(D)
    tma = tma_eligible(k, block_d=block_d)
    tuned = config is None and use_autotune(q.dtype, block_d, block_size)
    if config is None and not tuned:
        tile = fixed_tile(block_size, block_d, q.dtype)
        config = triton.Config({"BLOCK_M": tile, "MASS_N": tile},
                               **fixed_config(tile, tile, block_d, q.element_size(), with_v=False))
    mass = mass_output((B, H, nq, nk), q.device, block_size if tuned else config.kwargs["BLOCK_M"], block_size)
    # Descriptor tiles: the config's width, or (autotuned) any width the pre-hook then resizes.
    rows = block_size if tuned else config.kwargs["MASS_N"]
    args = (q, row_tiles(k, rows, block_d) if tma else k, lse, mass, *strides4(q), *strides4(k),
            lse.stride(0), lse.stride(1), lse.stride(2), H, LQ, LK, nq, nk, scale * LOG2E)
    meta = dict(HEAD_D=D, BLOCK_D=block_d, BS=block_size, PRECISION=dot_precision(q.dtype), TMA=tma)
    grid = lambda m: (triton.cdiv(LQ, m["BLOCK_M"]), B * H)  # noqa: E731
    if tuned:
        _block_mass_tuned[grid](*args, **meta)
    else:
        _block_mass_fwd_kernel[grid(config.kwargs)](*args, **meta, **config.all_kwargs())
    return mass
