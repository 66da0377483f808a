"""Pattern selection (ALGORITHM.md §3) against a brute-force Python oracle.

The oracle below sorts each row with Python's `sorted` and computes `k` with
`math.ceil`, independent of the tensor code. Masses are small integers so ties
are common and sums are exact.
"""

import math

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from adaspa import BlockSparseMask
from adaspa.selection import head_adaptive_sparsity, recall, select_blocks, text_sink_blocks


def _k(s: float, n: int) -> int:
    return min(max(math.ceil((1.0 - s) * n - 1e-6), 0), n)


def _oracle_keep(mass, sparsity, forced, rowwise=True):
    """bool [B, H, nq, nk] by explicit loops; `sparsity` is a [B, H] float64 tensor."""
    batch, heads, nq, nk = mass.shape
    keep = torch.zeros(mass.shape, dtype=torch.bool)
    for b in range(batch):
        for h in range(heads):
            s = float(sparsity[b, h])
            if rowwise:
                groups = [[(p, c) for c in range(nk)] for p in range(nq)]
            else:
                groups = [[(p, c) for p in range(nq) for c in range(nk)]]
            for cells in groups:
                cand = [pc for pc in cells if not forced[b, h, pc[0], pc[1]]]
                cand.sort(key=lambda pc: (-float(mass[b, h, pc[0], pc[1]]), pc[0] * nk + pc[1]))
                for p, c in cand[: _k(s, len(cand))]:
                    keep[b, h, p, c] = True
                for p, c in cells:
                    if forced[b, h, p, c]:
                        keep[b, h, p, c] = True
    return keep


def _oracle_text_sink(q_len, kv_len, text_len, position, bs):
    def is_text(length):
        tok = torch.zeros(length, dtype=torch.bool)
        if text_len:
            if position == "first":
                tok[:text_len] = True
            else:
                tok[length - text_len:] = True
        return torch.tensor([bool(tok[i:i + bs].any()) for i in range(0, length, bs)])

    return is_text(q_len)[:, None] | is_text(kv_len)[None, :]


def _int_mass(batch, heads, nq, nk, seed, high=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, high, (batch, heads, nq, nk), generator=g).to(torch.float32)


@given(
    q_len=st.integers(1, 300),
    kv_len=st.integers(1, 300),
    block_size=st.sampled_from([16, 32, 64]),
    text_len=st.integers(0, 80),
    text_position=st.sampled_from(["first", "last"]),
    sparsity=st.floats(0.0, 1.0),
    per_head=st.booleans(),
    rowwise=st.booleans(),
    seed=st.integers(0, 2**16),
)
@example(q_len=1, kv_len=1, block_size=64, text_len=0, text_position="last", sparsity=0.8,
         per_head=False, rowwise=True, seed=0)
@example(q_len=63, kv_len=65, block_size=64, text_len=0, text_position="first", sparsity=0.5,
         per_head=False, rowwise=True, seed=1)
@example(q_len=97, kv_len=97, block_size=16, text_len=20, text_position="last", sparsity=0.8,
         per_head=True, rowwise=True, seed=2)
@example(q_len=97, kv_len=97, block_size=16, text_len=18, text_position="first", sparsity=0.9,
         per_head=False, rowwise=True, seed=3)
@example(q_len=160, kv_len=160, block_size=32, text_len=40, text_position="first", sparsity=0.8,
         per_head=False, rowwise=False, seed=4)
def test_select_blocks_matches_oracle(q_len, kv_len, block_size, text_len, text_position, sparsity,
                                      per_head, rowwise, seed):
    text_len = min(text_len, q_len, kv_len)
    batch, heads = 2, 3
    nq, nk = -(-q_len // block_size), -(-kv_len // block_size)
    mass = _int_mass(batch, heads, nq, nk, seed)
    forced = text_sink_blocks(q_len, kv_len, text_len, text_position=text_position, block_size=block_size)
    if per_head:
        g = torch.Generator().manual_seed(seed + 1)
        s_arg = torch.rand(1, heads, generator=g, dtype=torch.float64)
        s_bh = s_arg.expand(batch, heads)
    else:
        s_arg = sparsity
        s_bh = torch.full((batch, heads), sparsity, dtype=torch.float64)

    mask = select_blocks(mass, s_arg, block_size=block_size, q_len=q_len, kv_len=kv_len,
                         forced=forced, rowwise=rowwise)
    forced_full = forced.expand(batch, heads, nq, nk)
    expected = _oracle_keep(mass, s_bh, forced_full, rowwise)

    assert isinstance(mask, BlockSparseMask)
    assert (mask.block_size, mask.q_len, mask.kv_len) == (block_size, q_len, kv_len)
    assert torch.equal(mask.to_dense(), expected)
    assert torch.equal(mask.counts, expected.sum(-1, dtype=torch.int32))
    if rowwise:
        n_forced = forced_full.sum(-1)
        k = torch.tensor([[[_k(float(s_bh[b, h]), nk - int(n_forced[b, h, p])) for p in range(nq)]
                           for h in range(heads)] for b in range(batch)], dtype=torch.int32)
        assert torch.equal(mask.counts, n_forced.to(torch.int32) + k)
    # Kept indices come first in each row, ascending, within the stored width.
    width = mask.indices.shape[-1]
    assert int(mask.counts.max()) <= width <= nk
    slot = torch.arange(width)
    valid = slot < mask.counts[..., None]
    idx = mask.indices.long()
    assert bool((idx[..., 1:] > idx[..., :-1])[valid[..., 1:]].all())


@given(q_len=st.integers(1, 200), kv_len=st.integers(1, 200), block_size=st.sampled_from([16, 64]),
       text_len=st.integers(0, 200), position=st.sampled_from(["first", "last"]))
@example(q_len=97, kv_len=97, block_size=16, text_len=17, position="first")
@example(q_len=97, kv_len=97, block_size=16, text_len=17, position="last")
@example(q_len=1, kv_len=1, block_size=64, text_len=1, position="last")
def test_text_sink_blocks_matches_token_oracle(q_len, kv_len, block_size, text_len, position):
    text_len = min(text_len, q_len, kv_len)
    got = text_sink_blocks(q_len, kv_len, text_len, text_position=position, block_size=block_size)
    assert got.dtype == torch.bool
    assert torch.equal(got, _oracle_text_sink(q_len, kv_len, text_len, position, block_size))


def test_text_sink_blocks_hand_checked():
    # 100 tokens, bs 32 -> blocks [0,32) [32,64) [64,96) [96,100); 40 text tokens last:
    # text is tokens 60..99, touching blocks 1, 2, 3.
    got = text_sink_blocks(100, 100, 40, text_position="last", block_size=32)
    expected = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(got, expected)
    # Text first, 33 tokens: straddles into block 1 by one token.
    got = text_sink_blocks(100, 64, 33, text_position="first", block_size=32)
    expected = torch.tensor([[1, 1], [1, 1], [1, 1], [1, 1]], dtype=torch.bool)
    assert torch.equal(got, expected)
    got = text_sink_blocks(128, 128, 32, text_position="first", block_size=32)
    expected = torch.tensor([[1, 1, 1, 1]] + [[1, 0, 0, 0]] * 3, dtype=torch.bool)
    assert torch.equal(got, expected)
    assert not text_sink_blocks(100, 100, 0, block_size=32).any()


@pytest.mark.parametrize("rowwise", [True, False])
def test_sparsity_zero_keeps_all_and_one_keeps_only_forced(rowwise):
    mass = _int_mass(1, 2, 5, 7, seed=0)
    q_len, kv_len = 5 * 16 - 3, 7 * 16 - 9
    full = select_blocks(mass, 0.0, block_size=16, q_len=q_len, kv_len=kv_len, rowwise=rowwise)
    assert full == BlockSparseMask.full(1, 2, q_len, kv_len, 16)
    forced = text_sink_blocks(q_len, kv_len, 20, block_size=16)
    only = select_blocks(mass, 1.0, block_size=16, q_len=q_len, kv_len=kv_len, forced=forced,
                         rowwise=rowwise)
    assert torch.equal(only.to_dense(), forced.expand(1, 2, 5, 7))


def test_k_formula_boundary_and_ties():
    # s = 0.8 over 10 candidates must keep exactly 2 (0.2 * 10 = 2.0000000000000004 in floats).
    mass = torch.ones(1, 1, 1, 10)
    for s in (0.8, torch.tensor(0.8, dtype=torch.float32), torch.tensor([[0.8]], dtype=torch.float64)):
        m = select_blocks(mass, s, block_size=16, q_len=16, kv_len=160)
        assert m.counts.tolist() == [[[2]]]
        # All masses tie: the lowest block indices win.
        assert m.indices[0, 0, 0, :2].tolist() == [0, 1]


def test_forced_blocks_do_not_displace_candidates():
    mass = torch.tensor([[[[9.0, 0.0, 5.0, 1.0, 3.0]]]])
    forced = torch.tensor([True, False, False, False, False])
    m = select_blocks(mass, 0.5, block_size=16, q_len=16, kv_len=80, forced=forced)
    # 4 candidates, k = 2: blocks 2 and 4; block 0 forced.
    assert m.to_dense()[0, 0, 0].tolist() == [True, False, True, False, True]
    assert m.indices.shape[-1] == 3


def test_recall_hand_checked_and_mask_forms_agree():
    mass = torch.tensor([[[[3.0, 1.0], [0.0, 4.0]], [[1.0, 1.0], [1.0, 1.0]]]])  # [1, 2, 2, 2]
    keep = torch.tensor([[True, False], [False, True]])
    r = recall(mass, keep)
    assert r.dtype == torch.float32 and r.shape == (1, 2)
    assert r.tolist() == [[0.875, 0.5]]
    m = BlockSparseMask.from_dense(keep.expand(1, 2, 2, 2).contiguous(), 16, 32, 32)
    assert torch.equal(recall(mass, m), r)


def _oracle_tiers(mass, s, threshold):
    batch, heads = mass.shape[:2]
    s_bh = torch.full((batch, heads), s, dtype=torch.float64)
    keep = _oracle_keep(mass, s_bh, torch.zeros(mass.shape, dtype=torch.bool))
    out = torch.full((batch, heads), s, dtype=torch.float64)
    for b in range(batch):
        rec = [float((mass[b, h] * keep[b, h]).sum()) / float(mass[b, h].sum()) for h in range(heads)]
        n = min(sum(r > threshold for r in rec), heads // 2)
        order = sorted(range(heads), key=lambda h: (-rec[h], h))
        for h in order[:n]:
            out[b, h] = (1 + s) / 2
        for h in order[heads - n:] if n else []:
            out[b, h] = max(0.0, (3 * s - 1) / 2)
    return out


@given(heads=st.integers(1, 8), nq=st.integers(1, 4), nk=st.integers(1, 12),
       sparsity=st.sampled_from([0.0, 0.2, 0.5, 0.8, 0.9, 1.0]), seed=st.integers(0, 2**16))
@example(heads=4, nq=1, nk=10, sparsity=0.8, seed=0)
@example(heads=1, nq=1, nk=1, sparsity=0.8, seed=0)
def test_head_adaptive_sparsity_matches_oracle_and_keeps_mean(heads, nq, nk, sparsity, seed):
    g = torch.Generator().manual_seed(seed)
    # Per-head peakedness spreads recalls across the threshold.
    mass = _int_mass(2, heads, nq, nk, seed, high=3) ** torch.randint(1, 6, (1, heads, 1, 1), generator=g)
    mass = mass + 1.0
    got = head_adaptive_sparsity(mass, sparsity)
    assert got.dtype == torch.float64 and got.shape == (2, heads)
    assert torch.equal(got, _oracle_tiers(mass, sparsity, 0.8))
    if sparsity >= 1 / 3:
        assert torch.allclose(got.double().mean(-1), torch.full((2,), sparsity, dtype=torch.float64),
                              atol=1e-6)


def test_head_adaptive_tiers_at_paper_setting():
    mass = torch.ones(1, 6, 2, 10)
    mass[0, 0, :, 0] = 100.0  # peaked: recall > 0.8 at s = 0.8
    mass[0, 3, :, 4] = 100.0
    mass[0, 5, :, 7] = 100.0
    # Three peaked heads, H // 2 = 3: heads 0, 3, 5 get 0.9, the rest 0.7.
    got = head_adaptive_sparsity(mass, 0.8)
    assert [round(x, 6) for x in got[0].tolist()] == [0.9, 0.7, 0.7, 0.9, 0.7, 0.9]
    # One peaked head of four: n = 1, ties among the uniform heads go by head index.
    mass = torch.ones(1, 4, 2, 10)
    mass[0, 0, :, 0] = 100.0
    assert [round(x, 6) for x in head_adaptive_sparsity(mass, 0.8)[0].tolist()] == [0.9, 0.8, 0.8, 0.7]
    # Forced blocks count toward recall: with 8 of 10 columns forced every head passes 0.8,
    # n = min(4, H // 2) = 2, and heads 1..3 tie at recall 0.9.
    forced = torch.zeros(10, dtype=torch.bool)
    forced[:8] = True
    got = head_adaptive_sparsity(mass, 0.8, forced=forced)
    assert [round(x, 6) for x in got[0].tolist()] == [0.9, 0.9, 0.7, 0.7]


def test_bad_inputs_raise_naming_the_argument():
    mass = torch.rand(1, 2, 3, 4)
    kw = dict(block_size=16, q_len=48, kv_len=64)
    with pytest.raises(ValueError, match="mass"):
        select_blocks(mass[0], 0.5, **kw)
    with pytest.raises(TypeError, match="mass"):
        select_blocks(mass.int(), 0.5, **kw)
    with pytest.raises(ValueError, match="mass must have shape"):
        select_blocks(mass, 0.5, block_size=16, q_len=48, kv_len=65)
    with pytest.raises(ValueError, match="sparsity"):
        select_blocks(mass, 1.5, **kw)
    with pytest.raises(ValueError, match="sparsity"):
        select_blocks(mass, torch.full((3,), 0.5), **kw)
    with pytest.raises(TypeError, match="forced"):
        select_blocks(mass, 0.5, forced=torch.ones(3, 4), **kw)
    with pytest.raises(ValueError, match="forced"):
        select_blocks(mass, 0.5, forced=torch.ones(3, 5, dtype=torch.bool), **kw)
    with pytest.raises(ValueError, match="block_size"):
        select_blocks(mass, 0.5, block_size=24, q_len=48, kv_len=64)
    with pytest.raises(ValueError, match="text_len"):
        text_sink_blocks(100, 50, 60)
    with pytest.raises(ValueError, match="text_position"):
        text_sink_blocks(100, 100, 10, text_position="middle")
    with pytest.raises(ValueError, match="mask"):
        recall(mass, torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask"):
        recall(mass, torch.ones(3, 4))
    with pytest.raises(ValueError, match="mask"):  # broadcastable, but to a 5-D shape
        recall(mass, torch.ones(2, 1, 2, 3, 4, dtype=torch.bool))


@pytest.mark.gpu
def test_selection_on_cuda_does_not_sync():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    mass = _int_mass(2, 4, 9, 9, seed=5).cuda()
    forced = text_sink_blocks(140, 140, 30, block_size=16).cuda()
    s_dev = torch.tensor([[0.9, 0.8, 0.7, 0.8]], device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        tiers = head_adaptive_sparsity(mass, 0.8, forced=forced)
        mask = select_blocks(mass, tiers, block_size=16, q_len=140, kv_len=140, forced=forced)
        per_head = select_blocks(mass, s_dev, block_size=16, q_len=140, kv_len=140, forced=forced)
        global_k = select_blocks(mass, s_dev, block_size=16, q_len=140, kv_len=140, forced=forced, rowwise=False)
        r = recall(mass, mask)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    cpu_tiers = head_adaptive_sparsity(mass.cpu(), 0.8, forced=forced.cpu())
    assert torch.equal(tiers.cpu(), cpu_tiers)
    cpu_mask = select_blocks(mass.cpu(), cpu_tiers, block_size=16, q_len=140, kv_len=140, forced=forced.cpu())
    assert mask.to("cpu") == cpu_mask
    assert per_head.to("cpu") == select_blocks(mass.cpu(), s_dev.cpu(), block_size=16, q_len=140,
                                               kv_len=140, forced=forced.cpu())
    assert global_k.to("cpu") == select_blocks(mass.cpu(), s_dev.cpu(), block_size=16, q_len=140, kv_len=140,
                                               forced=forced.cpu(), rowwise=False)
    assert torch.equal(r.cpu(), recall(mass.cpu(), cpu_mask))


def test_tiers_feed_select_blocks_the_exact_k():
    # Tiers 0.9 / 0.7 at s = 0.8. Stored as float32, 0.9 becomes 0.89999998 and
    # (1 - s) * 50 - 1e-6 = 5.0000002, so a row would keep 6 blocks instead of 5.
    mass = torch.ones(1, 2, 1, 50)
    mass[0, 0, 0, 0] = 1000.0  # head 0 peaked (recall > 0.8), head 1 uniform
    tiers = head_adaptive_sparsity(mass, 0.8)
    assert tiers.tolist() == [[(1 + 0.8) / 2, (3 * 0.8 - 1) / 2]]
    mask = select_blocks(mass, tiers, block_size=16, q_len=16, kv_len=800)
    assert mask.counts[0, :, 0].tolist() == [_k(0.9, 50), _k(0.7, 50)] == [5, 15]
