"""Baseline patterns: exact masks on hand-checked layouts, density targeting, pooled and token-level estimates."""

import math

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from adaspa import BlockSparseMask, reference
from adaspa.baselines import (
    column_mask,
    pooled_qk_mass,
    random_blocks_mask,
    spatial_mask,
    temporal_mask,
    token_topk_recall,
    window_mask,
)
from adaspa.selection import recall, select_blocks, text_sink_blocks
from adaspa.testing import assert_close

FACTORIES = {"column": column_mask, "window": window_mask, "spatial": spatial_mask, "temporal": temporal_mask}


def _grid(rows):
    return torch.tensor(rows, dtype=torch.bool)


def test_static_masks_hand_checked_layout_with_text_first():
    # 16 text tokens, then 3 frames of 4 x 8 = 32 tokens; blocks of 16:
    # block 0 = text, blocks 1-2 = frame 0 (rows 0-1, rows 2-3), 3-4 = frame 1, 5-6 = frame 2.
    kw = dict(text_len=16, text_position="first", block_size=16)
    text = [1] * 7
    spatial = spatial_mask(3, 4, 8, radius=0, **kw).to_dense()[0, 0]
    assert torch.equal(spatial, _grid([text,
                                       [1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0],
                                       [1, 0, 0, 1, 1, 0, 0], [1, 0, 0, 1, 1, 0, 0],
                                       [1, 0, 0, 0, 0, 1, 1], [1, 0, 0, 0, 0, 1, 1]]))
    spatial1 = spatial_mask(3, 4, 8, radius=1, **kw).to_dense()[0, 0]
    assert torch.equal(spatial1, _grid([text,
                                        [1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0, 0],
                                        [1] * 7, [1] * 7,
                                        [1, 0, 0, 1, 1, 1, 1], [1, 0, 0, 1, 1, 1, 1]]))
    temporal = temporal_mask(3, 4, 8, radius=0, **kw).to_dense()[0, 0]
    assert torch.equal(temporal, _grid([text,
                                        [1, 1, 0, 1, 0, 1, 0], [1, 0, 1, 0, 1, 0, 1],
                                        [1, 1, 0, 1, 0, 1, 0], [1, 0, 1, 0, 1, 0, 1],
                                        [1, 1, 0, 1, 0, 1, 0], [1, 0, 1, 0, 1, 0, 1]]))
    # Row 1 and row 2 are one apart, so radius 1 links the two halves of every frame.
    assert temporal_mask(3, 4, 8, radius=1, **kw).to_dense().all()
    column = column_mask(3, 4, 8, radius=2, **kw).to_dense()[0, 0]
    assert torch.equal(column, _grid([text] + [[1, 1, 1, 0, 0, 0, 0]] * 6))
    window = window_mask(3, 4, 8, radius=1, **kw).to_dense()[0, 0]
    assert torch.equal(window, _grid([text,
                                      [1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0],
                                      [1, 0, 1, 1, 1, 0, 0], [1, 0, 0, 1, 1, 1, 0],
                                      [1, 0, 0, 0, 1, 1, 1], [1, 0, 0, 0, 0, 1, 1]]))


def test_static_masks_text_last_straddling_block():
    # 2 frames of 2 x 8 = 16 tokens, 8 text tokens last: L = 40, blocks of 16:
    # block 0 = frame 0, block 1 = frame 1, block 2 = 8 text tokens (partial block).
    mask = spatial_mask(2, 2, 8, radius=0, text_len=8, text_position="last", block_size=16, batch=2, heads=3)
    assert (mask.batch, mask.heads, mask.q_len, mask.kv_len) == (2, 3, 40, 40)
    expected = _grid([[1, 0, 1], [0, 1, 1], [1, 1, 1]])
    assert torch.equal(mask.to_dense(), expected.expand(2, 3, 3, 3))
    # Text straddling a block: 20 text tokens first, frames of 16; blocks of 16 -> block 1 mixes
    # 4 text tokens with 12 of frame 0, so it is a text block (full row and column).
    mask = spatial_mask(2, 2, 8, radius=0, text_len=20, text_position="first", block_size=16)
    expected = _grid([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]])
    assert torch.equal(mask.to_dense()[0, 0], expected)


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("target", [0.1, 0.3, 0.55])
def test_density_target_picks_the_closest_radius(name, target):
    factory = FACTORIES[name]
    kw = dict(text_len=24, text_position="last", block_size=16)
    chosen = factory(4, 4, 8, density=target, **kw)
    max_radius = {"column": 8, "window": 10, "spatial": 3, "temporal": 7}[name]
    densities = [float(factory(4, 4, 8, radius=r, **kw).density()[0, 0]) for r in range(max_radius + 1)]
    assert densities == sorted(densities)
    best = min(range(len(densities)), key=lambda r: (abs(densities[r] - target), r))
    assert chosen == factory(4, 4, 8, radius=best, **kw)


def test_static_mask_bad_inputs():
    with pytest.raises(ValueError, match="exactly one of density"):
        window_mask(2, 4, 4, density=0.3, radius=1)
    with pytest.raises(ValueError, match="exactly one of density"):
        window_mask(2, 4, 4)
    with pytest.raises(ValueError, match="radius"):
        window_mask(2, 4, 4, radius=-1)
    with pytest.raises(ValueError, match="density"):
        spatial_mask(2, 4, 4, density=1.5)
    with pytest.raises(ValueError, match="frames"):
        temporal_mask(0, 4, 4, radius=0)
    with pytest.raises(ValueError, match="block_size"):
        column_mask(2, 4, 4, radius=1, block_size=48)


def test_random_blocks_mask_counts_and_determinism():
    forced = text_sink_blocks(300, 300, 40, block_size=32)
    a = random_blocks_mask(2, 3, 300, 300, 0.25, block_size=32, seed=7, forced=forced)
    b = random_blocks_mask(2, 3, 300, 300, 0.25, block_size=32, seed=7, forced=forced)
    c = random_blocks_mask(2, 3, 300, 300, 0.25, block_size=32, seed=8, forced=forced)
    assert a == b and not a == c
    n_forced = forced.sum(-1)
    k = torch.tensor([math.ceil(0.25 * (10 - int(f)) - 1e-6) for f in n_forced])
    assert torch.equal(a.counts, (n_forced + k).to(torch.int32).expand(2, 3, 10))
    assert bool((a.to_dense() >= forced).all())


def _pooled_oracle(q, k, bs, scale):
    """Loops over blocks in float64: softmax over key blocks of pooled scores with log-size terms."""
    q, k = q.double(), k.double()
    lq, lk = q.shape[2], k.shape[2]
    nq, nk = -(-lq // bs), -(-lk // bs)
    out = torch.zeros(*q.shape[:2], nq, nk, dtype=torch.float64)
    for p in range(nq):
        qm = q[:, :, p * bs:(p + 1) * bs].mean(2)
        scores = torch.stack([scale * (qm * k[:, :, c * bs:(c + 1) * bs].mean(2)).sum(-1)
                              + math.log(min(bs, lk - c * bs)) for c in range(nk)], -1)
        out[:, :, p] = torch.softmax(scores, -1) * min(bs, lq - p * bs)
    return out


@given(lq=st.integers(1, 150), lk=st.integers(1, 150), bs=st.sampled_from([16, 32]), seed=st.integers(0, 99))
@example(lq=97, lk=33, bs=32, seed=0)
@example(lq=1, lk=1, bs=16, seed=0)
def test_pooled_qk_mass_matches_loop_oracle(lq, lk, bs, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 2, lq, 16, generator=g, dtype=torch.float64)
    k = torch.randn(2, 2, lk, 16, generator=g, dtype=torch.float64)
    got = pooled_qk_mass(q, k, block_size=bs)
    assert got.dtype == torch.float32
    assert_close(got, _pooled_oracle(q, k, bs, 0.25), name="pooled mass")


def test_pooled_qk_mass_is_exact_for_block_constant_inputs():
    # q, k constant within each block (partial tails included): the pooled score is the true score.
    bs, lq, lk = 16, 70, 45
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, -(-lq // bs), 8, generator=g, dtype=torch.float64).repeat_interleave(bs, 2)[:, :, :lq]
    k = torch.randn(1, 2, -(-lk // bs), 8, generator=g, dtype=torch.float64).repeat_interleave(bs, 2)[:, :, :lk]
    _, lse, mass = reference.attention_with_block_mass(q, k, k, block_size=bs)
    assert_close(pooled_qk_mass(q, k, block_size=bs), mass.double(), name="pooled vs exact mass")


def _dense_token_topk_recall(q, k, s):
    probs = torch.softmax(q.double() @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1]), -1)
    keep = min(max(math.ceil((1 - s) * k.shape[2] - 1e-6), 0), k.shape[2])
    top = probs.sort(-1, descending=True).values[..., :keep]
    return top.sum((-1, -2)) / q.shape[2]


@pytest.mark.parametrize("s", [0.0, 0.5, 0.9, 1.0])
def test_token_topk_recall_matches_dense_and_chunks_agree(s):
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 3, 97, 16, generator=g) * 2
    k = torch.randn(2, 3, 61, 16, generator=g) * 2
    expected = _dense_token_topk_recall(q, k, s)
    for chunk in (1, 10, 256):
        got = token_topk_recall(q, k, s, chunk=chunk)
        assert got.dtype == torch.float32 and got.shape == (2, 3)
        assert torch.allclose(got.double(), expected, atol=1e-5), (chunk, got, expected)
    if s == 0.0:
        assert torch.allclose(got, torch.ones(2, 3))
    if s == 1.0:
        assert torch.equal(got, torch.zeros(2, 3))


def test_token_topk_bounds_block_topk_and_pooled_is_no_better():
    # L = 8 blocks of 16, (1 - s) * nk = 2 blocks = (1 - s) * L tokens: equal budgets per query.
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 4, 128, 16, generator=g) * 3
    k = torch.randn(1, 4, 128, 16, generator=g) * 3
    _, _, mass = reference.attention_with_block_mass(q, k, k, block_size=16)
    block = recall(mass, select_blocks(mass, 0.75, block_size=16, q_len=128, kv_len=128))
    pooled = recall(mass, select_blocks(pooled_qk_mass(q, k, block_size=16), 0.75, block_size=16,
                                        q_len=128, kv_len=128))
    token = token_topk_recall(q, k, 0.75)
    assert bool((token >= block - 1e-6).all()), (token, block)
    assert bool((block >= pooled - 1e-6).all()), (block, pooled)


def test_baseline_bad_inputs():
    q = torch.randn(1, 1, 10, 8)
    with pytest.raises(ValueError, match="k"):
        pooled_qk_mass(q, torch.randn(1, 2, 10, 8))
    with pytest.raises(ValueError, match="block_size"):
        pooled_qk_mass(q, q, block_size=20)
    with pytest.raises(ValueError, match="sparsity"):
        token_topk_recall(q, q, -0.1)
    with pytest.raises(ValueError, match="chunk"):
        token_topk_recall(q, q, 0.5, chunk=0)
    with pytest.raises(ValueError, match="density"):
        random_blocks_mask(1, 1, 64, 64, 2.0)
    assert isinstance(random_blocks_mask(1, 1, 64, 64, 1.0, block_size=16), BlockSparseMask)
    for name, args in (("batch", (0, 1, 64, 64)), ("heads", (1, -1, 64, 64)), ("q_len", (1, 1, 0, 64)),
                       ("kv_len", (1, 1, 64, 64.5))):
        with pytest.raises(ValueError, match=name):
            random_blocks_mask(*args, 0.5, block_size=16)
