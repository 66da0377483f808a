"""The reference ops against independent float64 computations, and their properties.

Independent means: written here from torch primitives (softmax, logsumexp, SDPA with
a boolean token mask, block sums of the dense softmax), never by calling another
reference op, except where the test is about two ops agreeing.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from adaspa import reference
from adaspa.mask import BlockSparseMask
from adaspa.reference import dense
from adaspa.testing import assert_close, oracle_and_reference, token_mask

LOW_PRECISION = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class Case(NamedTuple):
    batch: int
    heads: int
    q_len: int
    kv_len: int
    head_dim: int
    block_size: int
    dtype: str
    seed: int

    def qkv(self, dtype=None):
        """Seeded `q [B,H,Lq,D]`, `k, v [B,H,Lk,D]` in `dtype` (default: the case's dtype)."""
        gen = torch.Generator().manual_seed(self.seed)
        dtype = dtype or LOW_PRECISION[self.dtype]
        q = torch.randn(self.batch, self.heads, self.q_len, self.head_dim, generator=gen)
        k = torch.randn(self.batch, self.heads, self.kv_len, self.head_dim, generator=gen)
        v = torch.randn(self.batch, self.heads, self.kv_len, self.head_dim, generator=gen)
        return q.to(dtype), k.to(dtype), v.to(dtype)

    def random_mask(self, keep_prob=0.5):
        """A seeded random block mask with at least one all-empty query-block row when nq > 1."""
        gen = torch.Generator().manual_seed(self.seed + 1)
        nq, nk = math.ceil(self.q_len / self.block_size), math.ceil(self.kv_len / self.block_size)
        keep = torch.rand(self.batch, self.heads, nq, nk, generator=gen) < keep_prob
        if nq > 1:
            keep[:, :, -1] = False
        return BlockSparseMask.from_dense(keep, self.block_size, self.q_len, self.kv_len)


@st.composite
def cases(draw, max_len=256):
    return Case(
        batch=draw(st.integers(1, 2)),
        heads=draw(st.integers(1, 2)),
        q_len=draw(st.integers(1, max_len)),
        kv_len=draw(st.integers(1, max_len)),
        head_dim=draw(st.sampled_from([16, 32, 64, 128])),
        block_size=draw(st.sampled_from([16, 32, 64, 128])),
        dtype=draw(st.sampled_from(sorted(LOW_PRECISION))),
        seed=draw(st.integers(0, 2**16)),
    )


def pinned(fn):
    """Pin the awkward lengths: L=1, bs-1, bs+1, 97, 1025 (the long one kept cheap: B=H=1, D=16)."""
    for case in [
        Case(1, 1, 1, 1, 16, 16, "float32", 0),
        Case(1, 2, 63, 63, 32, 64, "bfloat16", 1),
        Case(2, 1, 65, 65, 64, 64, "float16", 2),
        Case(1, 1, 97, 97, 128, 32, "float32", 3),
        Case(1, 1, 1025, 1025, 16, 128, "bfloat16", 4),
        Case(1, 1, 1, 97, 16, 16, "float16", 5),
    ]:
        fn = example(case=case)(fn)
    return fn


def explicit_attention(q, k, v, scale, keep=None):
    """Float64 masked softmax attention written out in full: `(out, lse)` with `keep [.., Lq, Lk]` bool."""
    s = scale * q @ k.transpose(-1, -2)
    if keep is not None:
        s = s.masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    probs = torch.softmax(s, dim=-1).nan_to_num(0.0)
    return probs @ v, lse


def block_sums(probs: torch.Tensor, block_size: int) -> torch.Tensor:
    """Sum `probs [B, H, Lq, Lk]` over every (query block, key block) tile by explicit slicing."""
    lq, lk = probs.shape[-2:]
    starts_q, starts_k = range(0, lq, block_size), range(0, lk, block_size)
    return torch.stack([
        torch.stack([probs[..., i:i + block_size, j:j + block_size].sum((-1, -2)) for j in starts_k], -1)
        for i in starts_q
    ], -2)


def test_attention_matches_softmax_and_sdpa():
    q, k, v = Case(2, 3, 130, 97, 32, 64, "float32", 0).qkv(torch.float64)
    for scale in (None, 0.3):
        out, lse = reference.attention(q, k, v, scale=scale)
        s = (scale or 1 / math.sqrt(32)) * q @ k.transpose(-1, -2)
        assert out.dtype == torch.float64 and lse.dtype == torch.float32
        assert_close(out, torch.softmax(s, -1) @ v, name="out vs softmax")
        assert_close(out, F.scaled_dot_product_attention(q, k, v, scale=scale), name="out vs sdpa")
        assert_close(lse, torch.logsumexp(s, -1), name="lse vs logsumexp")


def test_attention_accepts_any_strides():
    q, k, v = Case(2, 3, 70, 50, 16, 16, "float32", 1).qkv(torch.float64)
    # [B, L, H, D] storage viewed as [B, H, L, D], as a DiT's projections produce it.
    q_t, k_t, v_t = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v))
    assert not q_t.is_contiguous()
    for op in (reference.attention, reference.attention_with_block_mass):
        for got, want in zip(op(q_t, k_t, v_t), op(q, k, v)):
            assert_close(got, want, name=f"{op.__name__} on strided inputs")


def test_block_sparse_matches_sdpa_with_token_mask():
    case = Case(2, 2, 200, 150, 32, 64, "float32", 2)
    q, k, v = case.qkv(torch.float64)
    mask = case.random_mask()
    keep = token_mask(mask)  # [B, H, Lq, Lk]
    empty = ~keep.any(-1)  # [B, H, Lq]
    assert empty.any() and not empty.all()
    out, lse = reference.block_sparse_attention(q, k, v, mask)
    sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    assert_close(out[~empty], sdpa[~empty], name="out vs sdpa on non-empty rows")
    assert bool((out[empty] == 0).all()), "empty rows must give out = 0"
    s = q @ k.transpose(-1, -2) / math.sqrt(32)
    assert_close(lse, torch.logsumexp(s.masked_fill(~keep, float("-inf")), -1), name="lse with -inf rows")


def test_mass_is_block_sums_of_dense_softmax():
    for bs in (16, 64):
        case = Case(1, 2, 150, 90, 16, bs, "float32", 3)
        q, k, v = case.qkv(torch.float64)
        _, _, mass = reference.attention_with_block_mass(q, k, v, block_size=bs)
        probs = torch.softmax(q @ k.transpose(-1, -2) / 4.0, dim=-1)  # scale 1/sqrt(16)
        assert mass.dtype == torch.float32 and mass.shape == (1, 2, math.ceil(150 / bs), math.ceil(90 / bs))
        assert_close(mass, block_sums(probs, bs), name=f"mass bs={bs}")


def test_fused_search_equals_separate_calls():
    case = Case(2, 2, 130, 100, 32, 32, "float32", 4)
    q, k, v = case.qkv(torch.float64)
    out, lse, mass = reference.attention_with_block_mass(q, k, v, block_size=32, scale=0.2)
    out_d, lse_d = reference.attention(q, k, v, scale=0.2)
    assert_close(out, out_d, name="out")
    assert_close(lse, lse_d, name="lse")
    # lse is float32, so the cached-lse mass differs from the fused one by float32 rounding of lse only.
    assert_close(reference.block_mass(q, k, lse, block_size=32, scale=0.2), mass, name="mass from exact lse")


def test_block_mass_uses_the_given_lse():
    q, k, v = Case(1, 1, 64, 64, 16, 16, "float32", 5).qkv(torch.float64)
    _, lse, mass = reference.attention_with_block_mass(q, k, v, block_size=16)
    stale = reference.block_mass(q, k, lse + 1.0, block_size=16)
    assert_close(stale, mass / math.e, name="mass with lse + 1")


class LargestAllocation(TorchDispatchMode):
    """Records the largest number of elements of any tensor produced while active."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for x in result if isinstance(result, (tuple, list)) else [result]:
            if isinstance(x, torch.Tensor):
                self.numel = max(self.numel, x.numel())
        return result


@pytest.mark.parametrize("op", ["attention", "attention_with_block_mass", "block_mass", "block_sparse_attention"])
def test_no_full_score_matrix(op):
    """No op allocates more than one query chunk's scores `[B, H, chunk, Lk]`.

    Measuring the tensors, not the process memory, keeps this check exact and fast;
    a real L = 32768 run (B = H = 1, D = 64) takes ~70 s per op on 2 CPU cores with a
    peak RSS of ~310 MiB, too slow for CI.
    """
    length, bs = 512, 64
    q, k, v = Case(1, 1, length, length, 16, bs, "float32", 6).qkv()
    lse = torch.zeros(1, 1, length)
    calls = {
        "attention": lambda: reference.attention(q, k, v),
        "attention_with_block_mass": lambda: reference.attention_with_block_mass(q, k, v, block_size=bs),
        "block_mass": lambda: reference.block_mass(q, k, lse, block_size=bs),
        "block_sparse_attention": lambda: reference.block_sparse_attention(
            q, k, v, BlockSparseMask.full(1, 1, length, length, bs)),
    }
    with LargestAllocation() as record:
        calls[op]()
    assert record.numel <= max(bs, dense.QUERY_CHUNK) * length < length * length


def test_attention_chunking_is_invisible(monkeypatch):
    q, k, v = Case(1, 2, 100, 70, 16, 16, "float32", 7).qkv(torch.float64)
    out, lse = reference.attention(q, k, v)
    monkeypatch.setattr(dense, "QUERY_CHUNK", 7)
    out_7, lse_7 = reference.attention(q, k, v)
    assert_close(out_7, out, name="out, chunk 7")
    assert_close(lse_7, lse, name="lse, chunk 7")


@pinned
@given(case=cases())
def test_low_precision_reference_vs_oracle(case):
    """On fp32/fp16/bf16 inputs the reference (float32 inside) is within 2x the output
    dtype's own rounding of the float64 oracle: the rounding of `oracle.to(dtype)` is the bound."""
    q, k, v = case.qkv()
    bs = case.block_size
    (o_out, o_lse, o_mass), (out, lse, mass) = oracle_and_reference(
        reference.attention_with_block_mass, q, k, v, block_size=bs)
    assert out.dtype == q.dtype and lse.dtype == mass.dtype == torch.float32
    assert_close(out, o_out, o_out.to(q.dtype), name="out")
    assert_close(lse, o_lse, name="lse")
    assert_close(mass, o_mass, name="mass")
    (o_sp_out, o_sp_lse), (sp_out, sp_lse) = oracle_and_reference(
        reference.block_sparse_attention, q, k, v, case.random_mask())
    assert_close(sp_out, o_sp_out, o_sp_out.to(q.dtype), name="block-sparse out")
    assert_close(sp_lse, o_sp_lse, name="block-sparse lse")


@pinned
@given(case=cases())
def test_mass_rows_sum_to_valid_query_count(case):
    q, k, v = case.qkv()
    _, lse, mass = reference.attention_with_block_mass(q, k, v, block_size=case.block_size)
    starts = torch.arange(0, case.q_len, case.block_size)
    valid = (case.q_len - starts).clamp(max=case.block_size).to(torch.float32)  # [nq]
    assert_close(mass.sum(-1), valid.expand(case.batch, case.heads, -1), name="mass row sums")
    assert_close(reference.block_mass(q, k, lse, block_size=case.block_size), mass, name="cached vs fused")


@pinned
@given(case=cases())
def test_keep_all_blocks_equals_dense(case):
    q, k, v = case.qkv()
    full = BlockSparseMask.full(case.batch, case.heads, case.q_len, case.kv_len, case.block_size)
    out, lse = reference.block_sparse_attention(q, k, v, full)
    out_d, lse_d = reference.attention(q, k, v)
    assert_close(out, out_d, name="out")
    assert_close(lse, lse_d, name="lse")


@pinned
@given(case=cases(max_len=160))
def test_block_sparse_vs_explicit_masked_softmax(case):
    q, k, v = case.qkv(torch.float64)
    mask = case.random_mask()
    out, lse = reference.block_sparse_attention(q, k, v, mask)
    want_out, want_lse = explicit_attention(q, k, v, 1 / math.sqrt(case.head_dim), token_mask(mask))
    assert_close(out, want_out, name="out")
    assert_close(lse, want_lse, name="lse")


def test_reference_exports_exactly_the_four_ops():
    assert sorted(reference.__all__) == [
        "attention", "attention_with_block_mass", "block_mass", "block_sparse_attention"]
