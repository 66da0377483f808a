"""`BlockSparseMask`: exact round trips, token-level density, FlexAttention agreement, validation."""

from __future__ import annotations

import math
from typing import NamedTuple

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from adaspa.mask import BlockSparseMask
from adaspa.testing import token_mask


class MaskCase(NamedTuple):
    batch: int
    heads: int
    q_len: int
    kv_len: int
    block_size: int
    keep_prob: float
    seed: int

    @property
    def nq(self):
        return math.ceil(self.q_len / self.block_size)

    @property
    def nk(self):
        return math.ceil(self.kv_len / self.block_size)

    def dense(self) -> torch.Tensor:
        """Seeded random bool block mask `[B, H, nq, nk]`."""
        gen = torch.Generator().manual_seed(self.seed)
        return torch.rand(self.batch, self.heads, self.nq, self.nk, generator=gen) < self.keep_prob


@st.composite
def mask_cases(draw):
    return MaskCase(
        batch=draw(st.integers(1, 2)),
        heads=draw(st.integers(1, 3)),
        q_len=draw(st.integers(1, 600)),
        kv_len=draw(st.integers(1, 600)),
        block_size=draw(st.sampled_from([16, 32, 64, 128])),
        keep_prob=draw(st.sampled_from([0.0, 0.3, 0.7, 1.0])),
        seed=draw(st.integers(0, 2**16)),
    )


def pinned(fn):
    """L=1, bs-1, bs+1, 97, 1025, and Lq != Lk."""
    for case in [
        MaskCase(1, 1, 1, 1, 16, 1.0, 0),
        MaskCase(1, 2, 63, 63, 64, 0.5, 1),
        MaskCase(2, 1, 65, 65, 64, 0.5, 2),
        MaskCase(1, 1, 97, 97, 32, 0.5, 3),
        MaskCase(1, 1, 1025, 1025, 16, 0.3, 4),
        MaskCase(1, 2, 1, 1025, 128, 0.5, 5),
    ]:
        fn = example(case=case)(fn)
    return fn


def decode_flex(block_mask) -> torch.Tensor:
    """Rebuild the bool block mask `[B, H, nq, nk]` from a FlexAttention BlockMask's kv lists."""
    counts, indices = block_mask.kv_num_blocks, block_mask.kv_indices  # [B, H, nq], [B, H, nq, nk]
    b, h, nq, nk = indices.shape
    dense = torch.zeros(b, h, nq, nk, dtype=torch.bool)
    for bi in range(b):
        for hi in range(h):
            for p in range(nq):
                dense[bi, hi, p, indices[bi, hi, p, : counts[bi, hi, p]].long()] = True
    return dense


def narrowed(mask: BlockSparseMask) -> BlockSparseMask:
    """The same pattern with `indices` cut to the widest row (as `select_blocks` may produce)."""
    width = max(int(mask.counts.max()), 1)
    return BlockSparseMask(mask.indices[..., :width].contiguous(), mask.counts, mask.block_size,
                           mask.q_len, mask.kv_len)


@pinned
@given(case=mask_cases())
def test_from_dense_to_dense_round_trip(case):
    dense = case.dense()
    mask = BlockSparseMask.from_dense(dense, case.block_size, case.q_len, case.kv_len)
    assert mask.indices.dtype == mask.counts.dtype == torch.int32
    assert mask.indices.shape == (case.batch, case.heads, case.nq, case.nk)
    assert torch.equal(mask.counts, dense.sum(-1, dtype=torch.int32))
    assert torch.equal(mask.to_dense(), dense)
    slot = torch.arange(case.nk)
    valid = slot < mask.counts.unsqueeze(-1)
    assert bool((mask.indices[~valid] == 0).all()), "padding past counts must be 0"
    ascending = mask.indices[..., 1:] > mask.indices[..., :-1]
    assert bool(ascending[valid[..., 1:]].all()), "kept indices must be strictly ascending"


@pinned
@given(case=mask_cases())
def test_to_dense_from_dense_round_trip(case):
    mask = narrowed(BlockSparseMask.from_dense(case.dense(), case.block_size, case.q_len, case.kv_len))
    again = BlockSparseMask.from_dense(mask.to_dense(), case.block_size, case.q_len, case.kv_len)
    assert again == mask
    width = mask.indices.shape[-1]
    assert torch.equal(again.indices[..., :width], mask.indices)


@pinned
@given(case=mask_cases())
def test_density_counts_valid_token_pairs(case):
    dense = case.dense()
    mask = BlockSparseMask.from_dense(dense, case.block_size, case.q_len, case.kv_len)
    tokens = token_mask(mask)
    want = (tokens.sum((-1, -2), dtype=torch.float64) / (case.q_len * case.kv_len)).to(torch.float32)
    density = mask.density()
    assert density.dtype == torch.float32 and density.shape == (case.batch, case.heads)
    assert torch.equal(density, want)


@pinned
@given(case=mask_cases())
def test_flex_block_mask_agrees_with_to_dense(case):
    mask = BlockSparseMask.from_dense(case.dense(), case.block_size, case.q_len, case.kv_len)
    for variant in (mask, narrowed(mask)):
        block_mask = variant.to_flex_block_mask()
        assert block_mask.BLOCK_SIZE == (case.block_size, case.block_size)
        assert tuple(block_mask.seq_lengths) == (case.q_len, case.kv_len)
        assert block_mask.full_kv_num_blocks is None, "every kept block must be a partial (mask_mod) block"
        assert torch.equal(decode_flex(block_mask), variant.to_dense())
        assert torch.equal(block_mask.to_dense().bool(), variant.to_dense())


def test_full_keeps_everything_including_tails():
    mask = BlockSparseMask.full(2, 3, 100, 130, 64)
    assert mask.counts.tolist() == [[[3, 3]] * 3] * 2
    assert bool(mask.to_dense().all())
    assert torch.equal(mask.density(), torch.ones(2, 3))
    assert mask.num_q_blocks == 2 and mask.num_kv_blocks == 3 and (mask.batch, mask.heads) == (2, 3)


def test_density_weights_partial_tail_blocks():
    # q: blocks of 64 and 36 tokens; k: 64 and 6. Keeping only the (tail, tail) block keeps 36 * 6 pairs.
    dense = torch.tensor([[[[False, False], [False, True]]]])
    mask = BlockSparseMask.from_dense(dense, 64, 100, 70)
    assert mask.density().item() == pytest.approx(36 * 6 / (100 * 70), rel=1e-7)
    q_sizes, k_sizes = mask.block_token_counts()
    assert q_sizes.tolist() == [64, 36] and k_sizes.tolist() == [64, 6]


def test_equality_and_copies():
    dense = MaskCase(1, 2, 200, 150, 64, 0.5, 7).dense()
    mask = BlockSparseMask.from_dense(dense, 64, 200, 150)
    assert mask == BlockSparseMask.from_dense(dense.clone(), 64, 200, 150)
    assert mask == narrowed(mask)
    assert mask != BlockSparseMask.from_dense(dense, 64, 200, 160)
    assert mask != BlockSparseMask.from_dense(~dense, 64, 200, 150)
    assert mask.to("cpu") == mask and mask.to("meta").device.type == "meta"
    with pytest.raises(TypeError):
        hash(mask)
    assert "block_size=64, q_len=200, kv_len=150" in repr(mask)


def _ok():
    return torch.zeros(1, 1, 2, 3, dtype=torch.int32), torch.zeros(1, 1, 2, dtype=torch.int32)


@pytest.mark.parametrize("change,match", [
    (lambda i, c: (i.long(), c, 64, 100, 100), r"^indices must be int32"),
    (lambda i, c: (i[0], c[0], 64, 100, 100), r"^indices must be int32 \[B, H, nq, max_kept\]"),
    (lambda i, c: (i, c.long(), 64, 100, 100), r"^counts must be int32 \[B, H, nq\]"),
    (lambda i, c: (i, c[..., :1], 64, 100, 100), r"^counts must be int32 \[B, H, nq\] = \(1, 1, 2\)"),
    (lambda i, c: (i, c, 64, 0, 100), r"^q_len and kv_len must be >= 1"),
    (lambda i, c: (i, c, 64, 100, 0), r"^q_len and kv_len must be >= 1"),
    (lambda i, c: (i, c, 64, 200, 100), r"^indices has 2 query blocks, expected ceil\(q_len / block_size\) = 4"),
    (lambda i, c: (i, c.to("meta"), 64, 100, 100), r"^indices and counts must be on the same device"),
    (lambda i, c: (i, c, 48, 100, 100), r"^block_size must be a power of two >= 16"),
])
def test_constructor_validation(change, match):
    with pytest.raises(ValueError, match=match):
        BlockSparseMask(*change(*_ok()))


def test_from_dense_validation():
    with pytest.raises(ValueError, match=r"^dense must be a bool tensor \[B, H, nq, nk\]"):
        BlockSparseMask.from_dense(torch.ones(1, 1, 2, 2), 64, 100, 100)
    with pytest.raises(ValueError, match=r"^dense must be a bool tensor"):
        BlockSparseMask.from_dense(torch.ones(2, 2, dtype=torch.bool), 64, 100, 100)
    with pytest.raises(ValueError, match=r"^dense must have shape \[B, H, nq=2, nk=3\]"):
        BlockSparseMask.from_dense(torch.ones(1, 1, 2, 2, dtype=torch.bool), 64, 100, 130)
    with pytest.raises(TypeError, match=r"^block_size must be an int"):
        BlockSparseMask.from_dense(torch.ones(1, 1, 2, 2, dtype=torch.bool), 64.0, 100, 100)
