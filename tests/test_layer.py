"""AdaSpaAttention: the schedule, each phase's output against the float64 oracle,
per-batch-element state, resets, and no host syncs on sparse / cached-search steps."""

import sys
import types
import warnings

import pytest
import torch
import torch.nn.functional as F

from adaspa import AdaSpaAttention, AdaSpaConfig, reference
from adaspa.layer import _ops_for
from adaspa.selection import head_adaptive_sparsity, select_blocks, text_sink_blocks
from adaspa.testing import assert_close, oracle_and_reference

SHORT = dict(warmup_steps=2, search_steps=(2, 4), block_size=16, min_seq_len=0)
PHASES = ["dense", "dense", "search", "sparse", "cached_search", "sparse"]


def qkv(batch=2, heads=4, length=100, dim=16, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    # A shared low-rank component gives the attention map real structure to select.
    base = torch.randn(batch, heads, length, dim, generator=g)
    q = 2.0 * base + torch.randn(batch, heads, length, dim, generator=g)
    k = 2.0 * base.roll(7, dims=2) + torch.randn(batch, heads, length, dim, generator=g)
    v = torch.randn(batch, heads, length, dim, generator=g)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def test_phases_follow_schedule_counting_calls_and_with_explicit_steps():
    q, k, v = qkv()
    counting, explicit = AdaSpaAttention(**SHORT, sparsity=0.5), AdaSpaAttention(**SHORT, sparsity=0.5)
    seen_c, seen_e = [], []
    for step in range(6):
        counting(q, k, v)
        explicit(q, k, v, step=step)
        seen_c.append(counting.phase)
        seen_e.append(explicit.phase)
    assert seen_c == seen_e == PHASES
    assert [r.step for r in counting.history] == list(range(6))
    assert [r.phase for r in counting.history] == PHASES


def test_each_phase_output_matches_the_oracle():
    layer = AdaSpaAttention(**SHORT, sparsity=0.5, text_len=10)
    masks = {}
    for step in range(6):
        q, k, v = qkv(seed=step)  # inputs drift from step to step
        out = layer(q, k, v)
        if layer.phase == "dense":
            assert torch.equal(out, F.scaled_dot_product_attention(q, k, v))
            continue
        if layer.phase == "search":
            (o_out, _), (r_out, _) = oracle_and_reference(reference.attention, q, k, v)
        else:
            (o_out, _), (r_out, _) = oracle_and_reference(reference.block_sparse_attention, q, k, v, layer.mask)
        assert_close(out, o_out, r_out, name=f"out at step {step} ({layer.phase})")
        masks[layer.phase] = layer.mask
    # The cached search applied its new mask at its own step, not the search's mask.
    assert masks["cached_search"] != masks["search"]


def test_search_builds_mask_and_tiers_from_exact_mass():
    q, k, v = qkv()
    layer = AdaSpaAttention(**SHORT, sparsity=0.6, text_len=20, text_position="first")
    for step in range(3):
        layer(q, k, v)
    _, lse, mass = reference.attention_with_block_mass(q, k, v, block_size=16)
    forced = text_sink_blocks(100, 100, 20, text_position="first", block_size=16)
    tiers = head_adaptive_sparsity(mass, 0.6, forced=forced)
    assert torch.equal(layer.head_sparsity, tiers)
    assert layer.mask == select_blocks(mass, tiers, block_size=16, q_len=100, kv_len=100, forced=forced)
    assert bool(layer.mask.to_dense()[..., forced].all())
    assert torch.equal(layer.lse, lse)
    rec = layer.history[-1].recall
    assert rec.shape == (2, 4) and bool(((rec > 0) & (rec <= 1)).all())


def test_cached_search_uses_the_lse_of_the_first_search():
    layer = AdaSpaAttention(**SHORT, sparsity=0.5, head_adaptive=False)
    for step in range(5):
        q, k, v = qkv(seed=10 + step)
        if step == 2:
            lse_first = reference.attention(q, k, v)[1]
        layer(q, k, v)
    mass = reference.block_mass(q, k, lse_first, block_size=16)
    assert layer.phase == "cached_search"
    assert layer.mask == select_blocks(mass, torch.full((2, 4), 0.5), block_size=16, q_len=100, kv_len=100)


def test_lse_cache_off_searches_fused_again():
    layer = AdaSpaAttention(**SHORT, lse_cache=False)
    for step in range(6):
        q, k, v = qkv(seed=20 + step)  # drifting inputs: a stale lse would show
        out = layer(q, k, v)
        if step == 4:
            # The second search is a fused one: exact output, fresh lse, mask from the fresh mass.
            (o_out, o_lse), (r_out, r_lse) = oracle_and_reference(reference.attention, q, k, v)
            assert_close(out, o_out, r_out, name="out of the second fused search")
            assert_close(layer.lse, o_lse, r_lse, name="lse of the second fused search")
            _, _, mass = reference.attention_with_block_mass(q, k, v, block_size=16)
            tiers = head_adaptive_sparsity(mass, layer.config.sparsity)
            assert layer.mask == select_blocks(mass, tiers, block_size=16, q_len=100, kv_len=100)
    assert [r.phase for r in layer.history] == ["dense", "dense", "search", "sparse", "search", "sparse"]


def test_zero_sparsity_equals_dense_over_the_whole_schedule():
    layer = AdaSpaAttention(**SHORT, sparsity=0.0, head_adaptive=False, text_len=7)
    for step in range(6):
        q, k, v = qkv(seed=step, dtype=torch.float64)
        out = layer(q, k, v)
        assert_close(out, F.scaled_dot_product_attention(q, k, v), name=f"step {step}")
        if layer.phase != "dense":
            assert torch.allclose(layer.history[-1].density, torch.ones(2, 4))


def test_head_adaptive_off_gives_every_head_the_base_sparsity():
    layer = AdaSpaAttention(**SHORT, sparsity=0.75, head_adaptive=False)
    q, k, v = qkv()
    for _ in range(3):
        layer(q, k, v)
    assert torch.equal(layer.head_sparsity, torch.full((2, 4), 0.75))


def test_state_is_per_batch_element():
    q, k, v = qkv(batch=2)
    pair = AdaSpaAttention(**SHORT, sparsity=0.7)
    singles = [AdaSpaAttention(**SHORT, sparsity=0.7) for _ in range(2)]
    for _ in range(5):
        pair(q, k, v)
        for b, layer in enumerate(singles):
            layer(q[b:b + 1], k[b:b + 1], v[b:b + 1])
    for b, layer in enumerate(singles):
        assert torch.equal(pair.mask.to_dense()[b], layer.mask.to_dense()[0])
        assert torch.equal(pair.head_sparsity[b], layer.head_sparsity[0])
    assert not torch.equal(pair.mask.to_dense()[0], pair.mask.to_dense()[1])


def test_below_min_seq_len_stays_dense():
    layer = AdaSpaAttention(**{**SHORT, "min_seq_len": 101})
    q, k, v = qkv()
    for _ in range(6):
        assert torch.equal(layer(q, k, v), F.scaled_dot_product_attention(q, k, v))
    assert [r.phase for r in layer.history] == ["dense"] * 6
    assert layer.mask is None


def test_shape_change_warns_and_searches_instead_of_a_stale_mask():
    layer = AdaSpaAttention(**SHORT)
    for _ in range(4):
        layer(*qkv(length=100))
    assert layer.phase == "sparse"
    with pytest.warns(UserWarning, match="sizes changed"):
        layer(*qkv(length=120))
    assert layer.phase == "search" and layer.mask.q_len == 120
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(*qkv(length=120))
    assert layer.phase == "sparse"


def test_step_going_back_and_reset_start_a_new_generation():
    layer = AdaSpaAttention(**SHORT)
    q, k, v = qkv()
    for step in range(4):
        layer(q, k, v, step=step)
    layer(q, k, v, step=0)
    assert layer.phase == "dense" and layer.mask is None and len(layer.history) == 1
    layer.reset()
    assert (layer.history, layer.mask, layer.lse, layer.head_sparsity, layer.phase) == ([], None, None, None, None)
    layer(q, k, v)
    assert layer.history[0].step == 0


def test_history_reads_as_plain_numbers():
    layer = AdaSpaAttention(**SHORT, sparsity=0.5)
    q, k, v = qkv()
    for _ in range(4):
        layer(q, k, v)
    rows = [r.as_dict() for r in layer.history]
    assert rows[0]["density"] == 1.0 and rows[0]["recall"] is None
    assert 0.0 < rows[2]["density"] < 1.0 and 0.0 < rows[2]["recall"] <= 1.0
    assert rows[3]["density"] == rows[2]["density"] and rows[3]["recall"] is None
    assert rows[2]["sparsity"] == pytest.approx(0.5)


@pytest.mark.parametrize("kwargs, error, field", [
    (dict(text_len=101), ValueError, "text_len"),
    (dict(text_len=-1), ValueError, "text_len"),
    (dict(step=-1), ValueError, "step"),
    (dict(step=1.0), TypeError, "step"),
])
def test_bad_call_arguments_name_the_argument(kwargs, error, field):
    with pytest.raises(error, match=field):
        AdaSpaAttention(**SHORT)(*qkv(), **kwargs)


def test_bad_config_and_overrides():
    with pytest.raises(TypeError, match="config"):
        AdaSpaAttention({"sparsity": 0.5})
    with pytest.raises(ValueError, match="sparsity"):
        AdaSpaAttention(AdaSpaConfig(), sparsity=1.2)


def test_auto_backend_picks_reference_on_cpu():
    assert _ops_for("auto", torch.zeros(1)) is reference


_SYNCS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")
# check_sparsity range-checks a sparsity tensor only when it lives on the CPU (it
# skips CUDA tensors), so that read is not a sync on the GPU path.
_ALLOWED_CALLERS = {"check_sparsity"}


def test_sparse_and_cached_search_steps_issue_no_host_sync(monkeypatch):
    trap = {"on": False}

    def forbid(name, original):
        def method(self, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_name
            if trap["on"] and caller not in _ALLOWED_CALLERS:
                raise AssertionError(f"host sync: Tensor.{name} called from {caller}")
            return original(self, *args, **kwargs)
        return method

    for name in _SYNCS:
        monkeypatch.setattr(torch.Tensor, name, forbid(name, getattr(torch.Tensor, name)))

    def untrapped(fn):
        # The heavy ops are the kernels on a GPU (their own sync test covers them);
        # here only the layer's and the selection's code runs under the trap.
        def call(*args, **kwargs):
            trap["on"] = False
            try:
                return fn(*args, **kwargs)
            finally:
                trap["on"] = True
        return call

    ops = types.SimpleNamespace(**{name: untrapped(getattr(reference, name)) for name in
                                   ("attention_with_block_mass", "block_mass", "block_sparse_attention")})
    monkeypatch.setattr("adaspa.layer._ops_for", lambda backend, q: ops)
    layer = AdaSpaAttention(**SHORT, text_len=10)
    q, k, v = qkv()
    for step in range(6):
        trap["on"] = layer.config.phase_at(step) in ("sparse", "cached_search")
        layer(q, k, v)
        trap["on"] = False
    assert [r.phase for r in layer.history] == PHASES
    with pytest.raises(AssertionError, match="host sync"):
        trap["on"] = True
        layer.history[-1].density.item()


@pytest.mark.gpu
def test_kernels_backend_matches_reference_backend_on_cuda():
    q, k, v = (x.cuda().half() for x in qkv(length=1000, dim=64))
    cfg = dict(warmup_steps=1, search_steps=(1, 3), block_size=64, min_seq_len=0, sparsity=0.5)
    fast, slow = AdaSpaAttention(**cfg), AdaSpaAttention(**cfg, backend="reference")
    for _ in range(5):
        out = fast(q, k, v)
        slow(q, k, v)
        assert fast.phase == slow.phase
        if fast.phase != "dense":
            assert fast.mask == slow.mask
            (o_out, _), (r_out, _) = oracle_and_reference(reference.block_sparse_attention, q, k, v, fast.mask)
            if fast.phase == "search":
                (o_out, _), (r_out, _) = oracle_and_reference(reference.attention, q, k, v)
            assert_close(out, o_out, r_out, name=fast.phase)


@pytest.mark.gpu
def test_sparse_and_cached_search_steps_do_not_sync_on_cuda():
    q, k, v = (x.cuda().half() for x in qkv(length=1000, dim=64))
    layer = AdaSpaAttention(warmup_steps=1, search_steps=(1, 3), block_size=64, min_seq_len=0, text_len=30)
    for _ in range(2):
        layer(q, k, v)  # dense, then the fused search (compiles the kernels)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            layer(q, k, v)  # sparse, cached_search, sparse
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert [r.phase for r in layer.history] == ["dense", "search", "sparse", "cached_search", "sparse"]


def test_uniform_sparsity_keeps_the_exact_k_of_the_formula():
    # 800 tokens in blocks of 16: 50 key blocks; s = 0.9 keeps ceil(0.1 * 50 - 1e-6) = 5.
    # A float32 0.9 (0.89999998) would give ceil(5.0000002) = 6.
    layer = AdaSpaAttention(warmup_steps=0, search_steps=(0,), block_size=16, min_seq_len=0,
                            sparsity=0.9, head_adaptive=False)
    layer(*qkv(batch=1, heads=2, length=800))
    assert layer.phase == "search"
    assert layer.mask.counts.unique().tolist() == [5]
    assert layer.head_sparsity.tolist() == [[0.9, 0.9]]
