"""`adaspa.kernels` against `adaspa.reference` and the float64 oracle.

Every comparison uses the one rule of `adaspa.testing.assert_close`: the kernel may be off
the float64 oracle by at most twice what the reference is off on the same low-precision
inputs, plus the floor. On CPU the kernels run in Triton's interpreter (CI sets
TRITON_INTERPRET=1 for the whole run; shapes stay small); with CUDA they run on the GPU,
and HYPOTHESIS_PROFILE=gpu draws more examples. Outputs are NaN-poisoned by conftest.
"""

from __future__ import annotations

import inspect
import os

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from adaspa import BlockSparseMask, reference
from adaspa.selection import head_adaptive_sparsity, select_blocks, text_sink_blocks
from adaspa.testing import assert_close, oracle_and_reference

ON_GPU = torch.cuda.is_available()
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
pytestmark = pytest.mark.skipif(not (ON_GPU or INTERPRET),
                                reason="kernels need CUDA or TRITON_INTERPRET=1 (the CI sets it)")
DEVICE = "cuda" if ON_GPU else "cpu"


def examples(interpreted: int) -> int:
    """Hypothesis examples: `interpreted` under the CPU interpreter, the profile's count on a GPU."""
    return settings.default.max_examples if ON_GPU else min(interpreted, settings.default.max_examples)


def kernels():
    from adaspa import kernels as k

    return k


DTYPES = st.sampled_from([torch.float16, torch.bfloat16, torch.float32])
HEAD_DIMS = st.sampled_from([16, 32, 40, 64] if not ON_GPU else [16, 40, 64, 72, 128, 256])
BLOCKS = st.sampled_from([16, 32, 64] if not ON_GPU else [16, 32, 64, 128])
MAX_LEN = 160 if not ON_GPU else 700


def make_qkv(batch, heads, q_len, kv_len, dim, dtype, seq_major, seed):
    """Random q, k, v; `seq_major` builds them as [B, L, H, D] and transposes (no copy)."""
    g = torch.Generator().manual_seed(seed)

    def one(length):
        if seq_major:
            return torch.randn(batch, length, heads, dim, generator=g).to(DEVICE, dtype).transpose(1, 2)
        return torch.randn(batch, heads, length, dim, generator=g).to(DEVICE, dtype)

    return one(q_len), one(kv_len), one(kv_len)


# The 2x rule measures the reference's own error as a max over the output; for half
# dtypes that max only reaches the rounding step of the output (half an ulp) when there
# are enough elements, so half-precision draws keep B*H*Lq*D >= MIN_HALF_OUTPUTS.
# The reference rounds once (fp32 inside); the kernel also rounds P to q's dtype before
# P @ V, as every flash kernel does, which costs up to another half ulp. float32 draws
# take any Lq, so single-row and tail cases are still drawn.
MIN_HALF_OUTPUTS = 4096


@st.composite
def shapes(draw):
    batch, heads = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    dim, dtype = draw(HEAD_DIMS), draw(DTYPES)
    min_q = 1 if dtype == torch.float32 else -(-MIN_HALF_OUTPUTS // (batch * heads * dim))
    return dict(batch=batch, heads=heads, q_len=draw(st.integers(min_q, max(min_q, MAX_LEN))),
                kv_len=draw(st.integers(1, MAX_LEN)), dim=dim, dtype=dtype,
                seq_major=draw(st.booleans()), seed=draw(st.integers(0, 2**16)))


def test_signatures_match_reference():
    for name in reference.__all__:
        assert inspect.signature(getattr(kernels(), name)) == inspect.signature(getattr(reference, name)), name
    assert sorted(kernels().__all__) == sorted(reference.__all__)


@settings(max_examples=examples(15), suppress_health_check=[HealthCheck.too_slow])
@given(shape=shapes(), scale=st.sampled_from([None, 0.3]))
@example(shape=dict(batch=1, heads=2, q_len=97, kv_len=129, dim=40, dtype=torch.bfloat16, seq_major=True,
                    seed=1), scale=None)
def test_attention_matches_oracle(shape, scale):
    q, k, v = make_qkv(**shape)
    oracle, ref = oracle_and_reference(reference.attention, q, k, v, scale=scale)
    out, lse = kernels().attention(q, k, v, scale=scale)
    assert out.dtype == q.dtype and lse.dtype == torch.float32
    assert_close(out, oracle[0], ref[0], name="out")
    assert_close(lse, oracle[1], ref[1], name="lse")


@settings(max_examples=examples(15), suppress_health_check=[HealthCheck.too_slow])
@given(shape=shapes(), block_size=BLOCKS)
@example(shape=dict(batch=1, heads=1, q_len=65, kv_len=100, dim=64, dtype=torch.float16, seq_major=False,
                    seed=2), block_size=64)
@example(shape=dict(batch=1, heads=2, q_len=70, kv_len=45, dim=200, dtype=torch.bfloat16, seq_major=True,
                    seed=6), block_size=32)
def test_fused_search_matches_oracle(shape, block_size):
    q, k, v = make_qkv(**shape)
    oracle, ref = oracle_and_reference(reference.attention_with_block_mass, q, k, v, block_size=block_size)
    out, lse, mass = kernels().attention_with_block_mass(q, k, v, block_size=block_size)
    assert mass.dtype == torch.float32
    assert_close(out, oracle[0], ref[0], name="out")
    assert_close(lse, oracle[1], ref[1], name="lse")
    assert_close(mass, oracle[2], ref[2], name="mass")


@settings(max_examples=examples(12), suppress_health_check=[HealthCheck.too_slow])
@given(shape=shapes(), block_size=BLOCKS)
@example(shape=dict(batch=2, heads=1, q_len=33, kv_len=160, dim=32, dtype=torch.bfloat16, seq_major=True,
                    seed=3), block_size=32)
def test_lse_cached_search_matches_oracle(shape, block_size):
    q, k, v = make_qkv(**shape)
    _, lse = reference.attention(q, k, v)
    oracle, ref = oracle_and_reference(reference.block_mass, q, k, lse, block_size=block_size)
    mass = kernels().block_mass(q, k, lse, block_size=block_size)
    assert_close(mass, oracle, ref, name="mass")
    rows = mass.sum(-1)
    q_tokens = (q.shape[2] - torch.arange(rows.shape[-1], device=rows.device) * block_size).clamp(max=block_size)
    assert torch.allclose(rows, q_tokens.to(rows.dtype).expand_as(rows), rtol=1e-3)


@settings(max_examples=examples(6), suppress_health_check=[HealthCheck.too_slow])
@given(shape=shapes(), block_size=BLOCKS, drift=st.sampled_from([0.2, 1.0]))
def test_lse_cached_search_with_a_stale_lse(shape, block_size, drift):
    """The lse of an earlier step (drifted q, k): the kernel must use the lse it is given.

    With the exact lse (the test above) a kernel that recomputed the lse itself would pass;
    here rows no longer sum to the query count and only the given lse reproduces the oracle.
    """
    q, k, v = make_qkv(**shape)
    q_old, k_old, v_old = make_qkv(**{**shape, "seed": shape["seed"] + 1})
    _, stale = reference.attention(q + drift * q_old, k + drift * k_old, v)
    oracle, ref = oracle_and_reference(reference.block_mass, q, k, stale, block_size=block_size)
    assert_close(kernels().block_mass(q, k, stale, block_size=block_size), oracle, ref, name="mass")


def adaptive_mask(q, k, v, block_size, sparsity, text_len, text_position):
    """A mask as the pipeline makes it: exact mass, text sink, head-adaptive tiers, row-wise top-k."""
    _, _, mass = reference.attention_with_block_mass(q, k, v, block_size=block_size)
    forced = None
    if text_len:
        forced = text_sink_blocks(q.shape[2], k.shape[2], text_len, text_position=text_position,
                                  block_size=block_size).to(mass.device)
    tiers = head_adaptive_sparsity(mass, sparsity, forced=forced)
    return select_blocks(mass, tiers, block_size=block_size, q_len=q.shape[2], kv_len=k.shape[2], forced=forced)


def with_empty_rows(mask: BlockSparseMask, fraction: float, seed: int) -> BlockSparseMask:
    """`mask` with about `fraction` of its (batch, head, query block) rows keeping nothing."""
    g = torch.Generator().manual_seed(seed)
    drop = (torch.rand(mask.counts.shape, generator=g) < fraction).to(mask.device)
    counts = torch.where(drop, 0, mask.counts).to(torch.int32)
    indices = torch.where(drop.unsqueeze(-1), 0, mask.indices).to(torch.int32)
    return BlockSparseMask(indices, counts, mask.block_size, mask.q_len, mask.kv_len)


@settings(max_examples=examples(25), suppress_health_check=[HealthCheck.too_slow])
@given(shape=shapes(), block_size=BLOCKS, sparsity=st.sampled_from([0.0, 0.5, 0.8, 0.95]),
       text_len=st.integers(0, 40), text_position=st.sampled_from(["first", "last"]),
       empty=st.sampled_from([0.0, 0.3]))
@example(shape=dict(batch=1, heads=4, q_len=150, kv_len=150, dim=32, dtype=torch.bfloat16, seq_major=True,
                    seed=4), block_size=16, sparsity=0.8, text_len=20, text_position="last", empty=0.3)
@example(shape=dict(batch=1, heads=2, q_len=70, kv_len=45, dim=256, dtype=torch.float16, seq_major=False,
                    seed=7), block_size=32, sparsity=0.5, text_len=0, text_position="last", empty=0.3)
def test_block_sparse_attention_matches_oracle(shape, block_size, sparsity, text_len, text_position, empty):
    q, k, v = make_qkv(**shape)
    text_len = min(text_len, q.shape[2], k.shape[2])
    mask = with_empty_rows(adaptive_mask(q, k, v, block_size, sparsity, text_len, text_position),
                           empty, shape["seed"])
    oracle, ref = oracle_and_reference(reference.block_sparse_attention, q, k, v, mask)
    out, lse = kernels().block_sparse_attention(q, k, v, mask)
    assert_close(out, oracle[0], ref[0], name="out")
    assert_close(lse, oracle[1], ref[1], name="lse")
    empty_rows = (mask.counts == 0).repeat_interleave(block_size, dim=-1)[..., : q.shape[2]]
    assert bool((lse[empty_rows] == float("-inf")).all()) and bool((out[empty_rows] == 0).all())


@pytest.mark.parametrize("dtype, block_size", [(torch.float16, 16), (torch.bfloat16, 32)])
def test_block_sparse_attention_with_three_tiers_matches_oracle(dtype, block_size):
    """Random q, k rarely give a head recall > 0.8, so the hypothesis test's tiers are mostly
    uniform; the synthetic workload's spatial / temporal / sink / diffuse heads do get different
    tiers, i.e. different kept counts per head: the uneven load the kernel has to spread."""
    from adaspa.synthetic import SyntheticVideoConfig, synthetic_qkv

    config = SyntheticVideoConfig(heads=4, head_dim=32, frames=2, height=16, width=8, text_len=16,
                                  text_position="first")
    q, k, v = synthetic_qkv(config, seed=3, dtype=dtype, device=DEVICE)
    mask = adaptive_mask(q, k, v, block_size, 0.8, config.text_len, config.text_position)
    # Uniform tiers would give every head the same kept count (same k per row, same text sink).
    counts_per_head = mask.counts.sum(-1).flatten().tolist()
    assert len(set(counts_per_head)) >= 2, counts_per_head
    oracle, ref = oracle_and_reference(reference.block_sparse_attention, q, k, v, mask)
    out, lse = kernels().block_sparse_attention(q, k, v, mask)
    assert_close(out, oracle[0], ref[0], name="out")
    assert_close(lse, oracle[1], ref[1], name="lse")


@settings(max_examples=examples(8), suppress_health_check=[HealthCheck.too_slow])
@given(shape=shapes(), block_size=BLOCKS)
def test_keep_all_mask_equals_dense(shape, block_size):
    q, k, v = make_qkv(**shape)
    mask = BlockSparseMask.full(q.shape[0], q.shape[1], q.shape[2], k.shape[2], block_size, device=DEVICE)
    oracle, ref = oracle_and_reference(reference.attention, q, k, v)
    out, lse = kernels().block_sparse_attention(q, k, v, mask)
    assert_close(out, oracle[0], ref[0], name="out")
    assert_close(lse, oracle[1], ref[1], name="lse")


def test_heavy_first_order_gives_the_same_result():
    from adaspa.kernels.block_sparse import _block_sparse_attention, heavy_first_order

    q, k, v = make_qkv(1, 3, 100, 100, 32, torch.float16, False, 5)
    # Heads at three densities plus empty rows, so counts differ and the order is not the identity.
    g = torch.Generator().manual_seed(5)
    keep = torch.rand(1, 3, 7, 7, generator=g) < torch.tensor([0.9, 0.5, 0.2])[None, :, None, None]
    mask = BlockSparseMask.from_dense(keep.to(DEVICE), 16, 100, 100)
    order = heavy_first_order(mask.counts).cpu()
    counts = mask.counts.reshape(-1).cpu()
    assert sorted(order.tolist()) == list(range(counts.numel()))
    assert order.tolist() != list(range(counts.numel())) and bool((counts == 0).any())
    assert bool((counts[order][:-1] >= counts[order][1:]).all())
    ordered = _block_sparse_attention(q, k, v, mask, heavy_first=True)
    naive = _block_sparse_attention(q, k, v, mask, heavy_first=False)
    assert torch.equal(ordered[0], naive[0]) and torch.equal(ordered[1], naive[1])
    # Random q, k rarely give any head recall > 0.8, so the hypothesis test's tiers are mostly
    # uniform; this mask's per-head budgets differ, so check it against the oracle too.
    oracle, ref = oracle_and_reference(reference.block_sparse_attention, q, k, v, mask)
    assert_close(ordered[0], oracle[0], ref[0], name="out")
    assert_close(ordered[1], oracle[1], ref[1], name="lse")


def test_long_rows_launch_first_and_once_per_mask():
    """Rows over LONG_ROW_FACTOR x the mean count (AdaSpa's text rows) launch first, the rest in
    row order; the order is computed once per mask; it does not change a bit of the result."""
    import gc

    from adaspa.kernels import block_sparse
    from adaspa.kernels.block_sparse import _block_sparse_attention, launch_order, long_rows_first_order

    counts = torch.full((2, 3, 8), 3, dtype=torch.int32)
    assert long_rows_first_order(counts).tolist() == list(range(48))  # no long rows: row order
    counts[0, 1, 7] = counts[1, 2, 0] = 80  # 80 > 4 x mean (~6.2)
    counts[1, 0, 4] = 20  # under 4 x mean: stays in place
    order = long_rows_first_order(counts).tolist()
    assert order[:2] == [15, 40] and order[2:] == [r for r in range(48) if r not in (15, 40)]

    q, k, v = make_qkv(1, 2, 130, 130, 32, torch.float16, False, 7)
    keep = torch.zeros(1, 2, 9, 9, dtype=torch.bool)
    keep[..., 0] = True  # a "text" column
    keep[:, :, 8] = True  # a "text" row keeping every key block
    keep[0, 0, 3, 2] = keep[0, 1, 5, 6] = True
    mask = BlockSparseMask.from_dense(keep.to(DEVICE), 16, 130, 130)
    assert launch_order(mask).tolist()[:2] == [8, 17]
    assert launch_order(mask) is launch_order(mask)
    out, lse = _block_sparse_attention(q, k, v, mask)
    row_order = block_sparse._launch_orders[id(mask.counts)] = torch.arange(18, dtype=torch.int32, device=DEVICE)
    assert launch_order(mask) is row_order
    naive = _block_sparse_attention(q, k, v, mask)
    assert torch.equal(out, naive[0]) and torch.equal(lse, naive[1])
    oracle, ref = oracle_and_reference(reference.block_sparse_attention, q, k, v, mask)
    assert_close(out, oracle[0], ref[0], name="out")
    assert_close(lse, oracle[1], ref[1], name="lse")
    kept = len(block_sparse._launch_orders)
    del mask
    gc.collect()
    assert len(block_sparse._launch_orders) == kept - 1


@settings(max_examples=examples(10), suppress_health_check=[HealthCheck.too_slow])
@given(shape=shapes(), block_size=BLOCKS, period=st.sampled_from([2, 3, 5]),
       sparsity=st.sampled_from([0.0, 0.5, 0.8]), empty=st.sampled_from([0.0, 0.3]))
def test_rotated_walks_match_oracle(shape, block_size, period, sparsity, empty):
    """Rows walked from a staggered start, wrapping around (the default at block 64 once a
    head's K / V outgrow L2, and only on a GPU; forced here), with periods shorter and longer
    than the grid, and empty rows. A period of 1 starts every row at key block 0: the walk in
    key order, bit for bit."""
    from adaspa.kernels.block_sparse import _block_sparse_attention

    q, k, v = make_qkv(**shape)
    mask = with_empty_rows(adaptive_mask(q, k, v, block_size, sparsity, 0, "first"), empty, shape["seed"])
    oracle, ref = oracle_and_reference(reference.block_sparse_attention, q, k, v, mask)
    out, lse = _block_sparse_attention(q, k, v, mask, period=period)
    assert_close(out, oracle[0], ref[0], name="out")
    assert_close(lse, oracle[1], ref[1], name="lse")
    if not ON_GPU:
        # On a GPU the calls may autotune to different configs; tests/test_kernels_gpu.py checks per config.
        in_order = _block_sparse_attention(q, k, v, mask, period=0)
        from_zero = _block_sparse_attention(q, k, v, mask, period=1)
        assert torch.equal(from_zero[0], in_order[0]) and torch.equal(from_zero[1], in_order[1])


def test_rotated_walks_with_rows_longer_than_one_scan_chunk():
    """A program counts the kept blocks before its start 256 slots at a time: with 590 kept
    blocks of 600 and a period of 2, the second row starts at key block 300 (slot 295), so
    the count takes two chunks, and the walk must still visit each of the row's slots once.
    (Which slot a walk starts from changes only rounding, so this checks the walk, not
    the start.)"""
    from adaspa.kernels.block_sparse import _block_sparse_attention

    q, k, v = make_qkv(1, 1, 32, 9600, 16, torch.float16, False, 9)
    keep = torch.ones(1, 1, 2, 600, dtype=torch.bool)
    keep[..., ::60] = False  # 590 blocks a row
    mask = BlockSparseMask.from_dense(keep.to(DEVICE), 16, 32, 9600)
    assert mask.counts.min() > 256
    oracle, ref = oracle_and_reference(reference.block_sparse_attention, q, k, v, mask)
    out, lse = _block_sparse_attention(q, k, v, mask, period=2)
    assert_close(out, oracle[0], ref[0], name="out")
    assert_close(lse, oracle[1], ref[1], name="lse")


def test_rotation_rule():
    """`walks_rotate`: block 64 only, once one head's K and V fill more than half of L2; and
    the period must be None or an int >= 0."""
    from adaspa.kernels.block_sparse import L2_SHARE, _block_sparse_attention, walks_rotate

    l2, head = 50 * 2**20, 2 * 118784 * 128 * 2  # the H100's L2; one head's K and V at the benchmark shape
    assert walks_rotate(head, l2, 64)
    assert not walks_rotate(head, l2, 128) and not walks_rotate(head, l2, 32)
    assert not walks_rotate(int(L2_SHARE * l2), l2, 64) and walks_rotate(int(L2_SHARE * l2) + 1, l2, 64)
    q, k, v = make_qkv(1, 1, 64, 64, 16, torch.float16, False, 1)
    mask = BlockSparseMask.full(1, 1, 64, 64, 16, device=DEVICE)
    for bad in (-1, 1.5, "2"):
        with pytest.raises(ValueError, match="period must be None or an int >= 0"):
            _block_sparse_attention(q, k, v, mask, period=bad)


def rising_scores_qkv(dtype, length, dim=32):
    """q, k, v `[1, 2, length, dim]` whose scores rise ~3.8 (log2) per 64 keys, plus noise: the
    running max grows on every key tile, so every tile rescales the accumulator (random q, k
    rarely do this: their max settles after a tile or two)."""
    g = torch.Generator().manual_seed(13)
    # score(i, j) ~ 0.0416 * j (natural log) = 0.06 * j in log2, plus noise
    q = (torch.randn(1, 2, length, dim, generator=g) * 0.3 + torch.eye(dim)[0] * dim ** 0.5)
    ramp = torch.arange(length, dtype=torch.float32)[:, None] * 0.0416 * torch.eye(dim)[0]
    k = torch.randn(1, 2, length, dim, generator=g) * 0.3 + ramp
    v = torch.randn(1, 2, length, dim, generator=g)
    return tuple(x.to(DEVICE, dtype) for x in (q, k, v))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_scores_that_grow_along_the_keys(dtype):
    """Every tile rescales the accumulator (`rising_scores_qkv`), and the fused search stores
    each block's row sums against a different max."""
    from adaspa.kernels.block_sparse import _block_sparse_attention

    dim, length, block_size = 32, 330, 16
    q, k, v = rising_scores_qkv(dtype, length, dim)
    # The ramp does what rising_scores_qkv says: the row max of row 0 grows from every 64-key
    # tile to the next, by more than 16 (log2) over the row.
    s2 = (q[0, 0, 0].double() @ k[0, 0].double().T) * dim ** -0.5 * 1.4426950408889634
    tile_max = torch.stack([t.max() for t in s2.split(64)])
    assert bool((tile_max[1:] > tile_max[:-1]).all()) and float(tile_max[-1] - tile_max[0]) > 16
    oracle, ref = oracle_and_reference(reference.attention_with_block_mass, q, k, v, block_size=block_size)
    for name, a, o, r in zip(("out", "lse", "mass"),
                             kernels().attention_with_block_mass(q, k, v, block_size=block_size), oracle, ref):
        assert_close(a, o, r, name=name)
    for name, a, o, r in zip(("dense out", "dense lse"), kernels().attention(q, k, v), oracle, ref):
        assert_close(a, o, r, name=name)
    mask = BlockSparseMask.full(1, 2, length, length, block_size, device=DEVICE)
    for name, a, o, r in zip(("sparse out", "sparse lse"), kernels().block_sparse_attention(q, k, v, mask),
                             oracle, ref):
        assert_close(a, o, r, name=name)
    # Rotated walks: most rows start past key 0, so the max falls when the walk wraps around.
    for name, a, o, r in zip(("rotated out", "rotated lse"), _block_sparse_attention(q, k, v, mask, period=3),
                             oracle, ref):
        assert_close(a, o, r, name=name)


@pytest.mark.parametrize("dtype, length", [(torch.float16, 330), (torch.float16, 320), (torch.float32, 330),
                                           (torch.float32, 320)])
def test_key_tiles_narrower_than_blocks(dtype, length):
    """The autotuned configs may cut each block into key tiles (64 rows at block 128). The
    fused search then carries each row's sum across a block's tiles, rescaled as the max
    grows; the cached search carries its block sums; the sparse kernel walks every kept block
    tile by tile. Checked with 16-row tiles at block 32 on rising scores (the max grows inside
    every block), through the copy engine (float16) and pointers (float32), with Lk ragged
    (330) and a whole number of blocks (320, where the sparse kernel drops its key mask)."""
    import triton

    from adaspa.kernels import block_sparse, flash_fwd, search

    block_size, tile = 32, 16
    q, k, v = rising_scores_qkv(dtype, length)

    def config(**tiles):
        return triton.Config(tiles, num_warps=4, num_stages=1)

    oracle, ref = oracle_and_reference(reference.attention_with_block_mass, q, k, v, block_size=block_size)
    fused = flash_fwd._launch(q, k, v, block_size=block_size, scale=None, with_mass=True,
                              config=config(BLOCK_M=block_size, BLOCK_N=tile))
    for name, a, o, r in zip(("out", "lse", "mass"), fused, oracle, ref):
        assert_close(a, o, r, name=name)
    o_mass, r_mass = oracle_and_reference(reference.block_mass, q, k, ref[1], block_size=block_size)
    cached = search._block_mass(q, k, ref[1], block_size=block_size, scale=None,
                                config=config(BLOCK_M=2 * block_size, MASS_N=tile))
    assert_close(cached, o_mass, r_mass, name="cached mass")
    nb = -(-length // block_size)
    keep = torch.rand(1, 2, nb, nb, generator=torch.Generator().manual_seed(3)) < 0.6
    keep[0, 0, 0] = False  # an empty row
    keep[0, 1, :, -1] = True  # the last (partial when ragged) block kept by every row of a head
    mask = BlockSparseMask.from_dense(keep.to(DEVICE), block_size, length, length)
    (o_out, o_lse), (r_out, r_lse) = oracle_and_reference(reference.block_sparse_attention, q, k, v, mask)
    out, lse = block_sparse._block_sparse_attention(q, k, v, mask, config=config(BLOCK_N=tile))
    assert_close(out, o_out, r_out, name="sparse out")
    assert_close(lse, o_lse, r_lse, name="sparse lse")


@pytest.mark.parametrize("key_tile", [16, 64])
def test_query_tiles_of_half_a_block(key_tile):
    """Query tiles may cover half a block (float32 with D > 128 at block 128 runs so): two
    programs share each query block; in the sparse kernel both walk the block's kept list,
    in the searches each adds its half of the mass into a zeroed tensor, deterministically. Checked
    with 16-row query tiles at block 32, key tiles narrower (16) and wider (64) than a block,
    on rising scores, with Lq and Lk ragged."""
    import triton

    from adaspa.kernels import block_sparse, flash_fwd, search

    block_size, tile = 32, 16
    q, k, v = rising_scores_qkv(torch.float32, 330)

    def config(**tiles):
        return triton.Config(tiles, num_warps=4, num_stages=1)

    oracle, ref = oracle_and_reference(reference.attention_with_block_mass, q, k, v, block_size=block_size)
    fused = [flash_fwd._launch(q, k, v, block_size=block_size, scale=None, with_mass=True,
                               config=config(BLOCK_M=tile, BLOCK_N=key_tile)) for _ in range(2)]
    for name, a, o, r in zip(("out", "lse", "mass"), fused[0], oracle, ref):
        assert_close(a, o, r, name=name)
    assert torch.equal(fused[0][2], fused[1][2])
    o_mass, r_mass = oracle_and_reference(reference.block_mass, q, k, ref[1], block_size=block_size)
    cached = [search._block_mass(q, k, ref[1], block_size=block_size, scale=None,
                                 config=config(BLOCK_M=tile, MASS_N=key_tile)) for _ in range(2)]
    assert_close(cached[0], o_mass, r_mass, name="cached mass")
    assert torch.equal(cached[0], cached[1])
    nb = -(-330 // block_size)
    keep = torch.rand(1, 2, nb, nb, generator=torch.Generator().manual_seed(4)) < 0.6
    keep[0, 0, 0] = False  # an empty row
    mask = BlockSparseMask.from_dense(keep.to(DEVICE), block_size, 330, 330)
    (o_out, o_lse), (r_out, r_lse) = oracle_and_reference(reference.block_sparse_attention, q, k, v, mask)
    out, lse = block_sparse._block_sparse_attention(q, k, v, mask, config=config(BLOCK_M=tile, BLOCK_N=key_tile))
    assert_close(out, o_out, r_out, name="sparse out")
    assert_close(lse, o_lse, r_lse, name="sparse lse")


def test_float32_wide_heads_at_block_128():
    """float32 with D > 128 at block 128, which the block ops refused until their tiles could
    cover half a block: all three through the public functions, against the oracle."""
    q, k, v = make_qkv(1, 2, 200, 150, 160, torch.float32, True, 8)
    oracle, ref = oracle_and_reference(reference.attention_with_block_mass, q, k, v, block_size=128)
    for name, a, o, r in zip(("out", "lse", "mass"), kernels().attention_with_block_mass(q, k, v, block_size=128),
                             oracle, ref):
        assert_close(a, o, r, name=name)
    o_mass, r_mass = oracle_and_reference(reference.block_mass, q, k, ref[1], block_size=128)
    assert_close(kernels().block_mass(q, k, ref[1], block_size=128), o_mass, r_mass, name="cached mass")
    keep = torch.tensor([[[[True, False], [True, True]], [[False, True], [False, False]]]])
    mask = BlockSparseMask.from_dense(keep.to(DEVICE), 128, 200, 150)
    (o_out, o_lse), (r_out, r_lse) = oracle_and_reference(reference.block_sparse_attention, q, k, v, mask)
    out, lse = kernels().block_sparse_attention(q, k, v, mask)
    assert_close(out, o_out, r_out, name="sparse out")
    assert_close(lse, o_lse, r_lse, name="sparse lse")


def test_fused_search_takes_free_scratch_slots(monkeypatch):
    """Programs of the fused search hold a scratch slot each: with every other slot already
    held (as by programs still running on a GPU), they must probe on to a free one, leave the
    held ones alone, free their own, and still give the exact mass."""
    from adaspa.kernels import flash_fwd
    from adaspa.kernels._launch import scratch_slots

    taken = {}

    def half_held(device, nk):
        scratch, locks, rows = scratch_slots(device, nk)
        scratch.fill_(float("nan"))
        locks[::2] = 1
        taken.update(scratch=scratch, locks=locks)
        return scratch, locks, rows

    monkeypatch.setattr(flash_fwd, "scratch_slots", half_held)
    q, k, v = make_qkv(2, 3, 150, 130, 32, torch.float16, False, 9)
    oracle, ref = oracle_and_reference(reference.attention_with_block_mass, q, k, v, block_size=16)
    for name, a, o, r in zip(("out", "lse", "mass"), kernels().attention_with_block_mass(q, k, v, block_size=16),
                             oracle, ref):
        assert_close(a, o, r, name=name)
    locks = taken["locks"].cpu()
    assert bool((locks[::2] == 1).all()) and bool((locks[1::2] == 0).all())
    # [slots, nk * tile rows]: held slots untouched (still NaN), free ones written
    tile = flash_fwd.fixed_tile(16, 32, torch.float16)
    slots = taken["scratch"].cpu().view(-1, 130 // 16 + 1, tile).flatten(1)
    assert bool(slots[0::2].isnan().all()) and not bool(slots[1::2].isnan().all())


@pytest.mark.parametrize("aligned", [True, False])
def test_tma_and_pointer_paths_match_oracle(aligned):
    """Half inputs with 16-byte aligned rows take the copy-engine (TMA) path; rows that are not
    (a slice one element into a wider buffer) read through pointers. Both must be exact."""
    from adaspa.kernels._launch import padded_head_dim, tma_eligible

    dim, length, block_size = 40, 150, 32
    g = torch.Generator().manual_seed(11)
    # [B=1, H=2, L, D] views into [1, L, 2, width] buffers: a width of 48 halves keeps rows
    # 96-byte aligned; starting one element into 41-wide rows leaves base and strides unaligned.
    width, first = (48, 0) if aligned else (dim + 1, 1)
    wide = torch.randn(3, 1, length, 2, width, generator=g).to(DEVICE, torch.float16)
    q, k, v = (x[..., first:first + dim].transpose(1, 2) for x in wide)
    hopper = INTERPRET or torch.cuda.get_device_capability()[0] >= 9
    assert tma_eligible(k, v, block_d=padded_head_dim(dim)) == (aligned and hopper)
    oracle, ref = oracle_and_reference(reference.attention_with_block_mass, q, k, v, block_size=block_size)
    for name, a, o, r in zip(("out", "lse", "mass"),
                             kernels().attention_with_block_mass(q, k, v, block_size=block_size), oracle, ref):
        assert_close(a, o, r, name=name)
    o_mass, r_mass = oracle_and_reference(reference.block_mass, q, k, ref[1], block_size=block_size)
    assert_close(kernels().block_mass(q, k, ref[1], block_size=block_size), o_mass, r_mass, name="cached mass")
    keep = torch.rand(1, 2, 5, 5, generator=g) < 0.6
    mask = BlockSparseMask.from_dense(keep.to(DEVICE), block_size, length, length)
    (o_out, o_lse), (r_out, r_lse) = oracle_and_reference(reference.block_sparse_attention, q, k, v, mask)
    out, lse = kernels().block_sparse_attention(q, k, v, mask)
    assert_close(out, o_out, r_out, name="sparse out")
    assert_close(lse, o_lse, r_lse, name="sparse lse")


def small_inputs(dim=32, dtype=torch.float16, device=DEVICE):
    return [torch.randn(1, 2, 40, dim, device=device).to(dtype) for _ in range(3)]


def test_cpu_tensors_without_interpreter_raise(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q, k, v = small_inputs(device="cpu")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        kernels().attention(q, k, v)


def test_unsupported_inputs_raise_naming_the_limit():
    q, k, v = small_inputs(dim=288)
    with pytest.raises(ValueError, match="D must be <= 256"):
        kernels().attention(q, k, v)
    q, k, v = small_inputs(dtype=torch.float64)
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        kernels().attention_with_block_mass(q, k, v)
    q, k, v = small_inputs()
    with pytest.raises(ValueError, match=r"block_size must be one of \(16, 32, 64, 128\)"):
        kernels().attention_with_block_mass(q, k, v, block_size=256)
    mask = BlockSparseMask.full(1, 2, 40, 40, 256, device=DEVICE)
    with pytest.raises(ValueError, match="mask.block_size"):
        kernels().block_sparse_attention(q, k, v, mask)


def test_bad_inputs_get_the_references_messages():
    """Each shared check raises the same error type and the same message from both back ends."""
    q, k, v = small_inputs()
    _, lse = reference.attention(q, k, v)
    mask = BlockSparseMask.full(1, 2, 40, 40, 16, device=DEVICE)
    bad_calls = [
        ("attention", (q, k[:, :1], v), {}),
        ("attention", (q, k, v), {"scale": -1.0}),
        ("attention", (q[0], k, v), {}),
        ("attention", (q, k, v[:, :, :-1]), {}),
        ("attention", (q, k.to(torch.int32), v), {}),
        ("attention", (q, k.float(), v), {}),
        ("attention", (q[:, :, :0], k, v), {}),
        ("attention_with_block_mass", (q, k, v), {"block_size": 48}),
        ("attention_with_block_mass", (q, k, v), {"block_size": 64.0}),
        ("attention_with_block_mass", (q, k[:, :1], v), {}),
        ("block_mass", (q, k, lse[:, :, :-1]), {}),
        ("block_mass", (q, k, None), {}),
        ("block_mass", (q, k, lse.to(torch.int32)), {}),
        ("block_mass", (q, k, lse), {"block_size": 24}),
        ("block_mass", (q, k, lse), {"scale": float("nan")}),
        ("block_sparse_attention", (q, k, v, BlockSparseMask.full(1, 2, 41, 40, 16, device=DEVICE)), {}),
        ("block_sparse_attention", (q, k, v, mask.to_dense()), {}),
        ("block_sparse_attention", (q, k, v, mask), {"scale": 0}),
    ]
    for name, args, kwargs in bad_calls:
        with pytest.raises((ValueError, TypeError)) as expected:
            getattr(reference, name)(*args, **kwargs)
        with pytest.raises(type(expected.value)) as got:
            getattr(kernels(), name)(*args, **kwargs)
        assert str(got.value) == str(expected.value), name
