"""GPU-only kernel tests: no host syncs, CUDA-graph capture, 64-bit offsets, every tuning config.

Run on a GPU with `pytest -m gpu tests/test_kernels_gpu.py` (skipped without CUDA). The
hypothesis equivalence tests live in tests/test_kernels.py and also run on a GPU.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from adaspa import BlockSparseMask, reference
from adaspa.testing import assert_close, oracle_and_reference

pytestmark = pytest.mark.gpu


def qkv(batch, heads, length, dim, dtype=torch.bfloat16, seq_major=True, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    if seq_major:
        return [torch.randn(batch, length, heads, dim, generator=g, device="cuda", dtype=dtype).transpose(1, 2)
                for _ in range(3)]
    return [torch.randn(batch, heads, length, dim, generator=g, device="cuda", dtype=dtype) for _ in range(3)]


@contextlib.contextmanager
def no_host_sync():
    """Any host-device synchronization inside the block raises (pending work is waited for first)."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def adaptive_mask(mass, length, block_size, sparsity=0.8):
    from adaspa.selection import head_adaptive_sparsity, select_blocks

    tiers = head_adaptive_sparsity(mass, sparsity)
    return select_blocks(mass, tiers, block_size=block_size, q_len=length, kv_len=length)


def sparse_step(q, k, v, block_size):
    """Search, LSE-cached search and block-sparse attention, as the layer runs them."""
    from adaspa import kernels

    out, lse, mass = kernels.attention_with_block_mass(q, k, v, block_size=block_size)
    mask = adaptive_mask(mass, q.shape[2], block_size)
    mass_again = kernels.block_mass(q, k, lse, block_size=block_size)
    sparse_out, sparse_lse = kernels.block_sparse_attention(q, k, v, mask)
    dense_out, dense_lse = kernels.attention(q, k, v)
    return out, lse, mass, mass_again, sparse_out, sparse_lse, dense_out, dense_lse


@pytest.mark.parametrize("block_size", [64, 128])
def test_sparse_step_makes_no_host_sync(block_size):
    q, k, v = qkv(1, 4, 1000, 128)
    sparse_step(q, k, v, block_size)  # autotuning synchronizes, so it happens before the check
    with no_host_sync():
        results = sparse_step(q, k, v, block_size)
    assert all(not torch.isnan(r).any() for r in results)


@pytest.mark.parametrize("block_size", [64, 128])
def test_sparse_step_replays_in_a_cuda_graph(block_size):
    from adaspa import kernels

    q, k, v = qkv(1, 4, 1000, 128, seed=1)
    _, lse, mass = kernels.attention_with_block_mass(q, k, v, block_size=block_size)
    mask = adaptive_mask(mass, q.shape[2], block_size)
    static_q = q.clone()
    kernels.block_sparse_attention(static_q, k, v, mask)
    kernels.block_mass(static_q, k, lse, block_size=block_size)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        g_out, g_lse = kernels.block_sparse_attention(static_q, k, v, mask)
        g_mass = kernels.block_mass(static_q, k, lse, block_size=block_size)
    for seed in (2, 3):
        static_q.copy_(qkv(1, 4, 1000, 128, seed=seed)[0])
        graph.replay()
        out, lse_eager = kernels.block_sparse_attention(static_q, k, v, mask)
        assert torch.equal(g_out, out) and torch.equal(g_lse, lse_eager)
        assert torch.equal(g_mass, kernels.block_mass(static_q, k, lse, block_size=block_size))


def assert_every_op_matches_oracle(q, k, v, block_size):
    """Fused search, dense attention, LSE-cached search and block-sparse attention (on the
    head-adaptive mask of the exact mass) against the float64 oracle."""
    from adaspa import kernels

    oracle, ref = oracle_and_reference(reference.attention_with_block_mass, q, k, v, block_size=block_size)
    for name, a, o, r in zip(("dense out", "dense lse"), kernels.attention(q, k, v), oracle, ref):
        assert_close(a, o, r, name=name)
    mask = adaptive_mask(ref[2], q.shape[2], block_size)
    for name, a, o, r in zip(("out", "lse", "mass"), kernels.attention_with_block_mass(q, k, v, block_size=block_size),
                             oracle, ref):
        assert_close(a, o, r, name=name)
    o_mass, r_mass = oracle_and_reference(reference.block_mass, q, k, ref[1], block_size=block_size)
    assert_close(kernels.block_mass(q, k, ref[1], block_size=block_size), o_mass, r_mass, name="cached mass")
    (o_out, o_lse), (r_out, r_lse) = oracle_and_reference(reference.block_sparse_attention, q, k, v, mask)
    out, lse = kernels.block_sparse_attention(q, k, v, mask)
    assert_close(out, o_out, r_out, name="sparse out")
    assert_close(lse, o_lse, r_lse, name="sparse lse")


@pytest.mark.parametrize("block_size", [64, 128])
def test_tuned_kernels_match_oracle_at_video_sizes(block_size):
    """The autotuned path (bf16, D=128, [B, L, H, D] layout) against the float64 oracle."""
    assert_every_op_matches_oracle(*qkv(1, 3, 2000, 128, seed=4), block_size)


@pytest.mark.parametrize("dtype, dim, block_size", [
    (torch.float32, 256, 128), (torch.float32, 128, 128), (torch.float16, 256, 128),
    (torch.bfloat16, 256, 64), (torch.float32, 72, 16), (torch.bfloat16, 40, 32),
])
def test_untuned_path_matches_oracle_at_its_largest_tiles(dtype, dim, block_size):
    """The fixed-config path (fp32, D not in {64, 128}, block 16 / 32) fits shared memory and is right.

    fp32 tiles of 128 x 128 and D = 256 tiles are where a fixed 2-stage pipeline would ask
    for more than the 227 KiB a block may use; `fixed_config` must drop to what fits. At
    fp32 D = 256 block 128 whole-block tiles cannot fit: the block ops run half-block tiles.
    """
    assert_every_op_matches_oracle(*qkv(1, 2, 333, dim, dtype=dtype, seed=7), block_size)


@pytest.mark.parametrize("length", [777, 768])
@pytest.mark.parametrize("tma", [True, False])
@pytest.mark.parametrize("op", ["attention", "attention_with_block_mass", "block_mass", "block_sparse"])
@pytest.mark.parametrize("block_size", [64, 128])
def test_every_config_matches_oracle(block_size, op, tma, length, monkeypatch):
    """Each config of each autotuned kernel, launched on its own on bf16 inputs, through the
    copy engine (TMA) and through pointers (`ADASPA_TMA=0`), with a ragged length and a whole
    number of blocks (where the block-sparse kernel drops its key mask)."""
    from adaspa.kernels import block_sparse, flash_fwd, search

    monkeypatch.setenv("ADASPA_TMA", "1" if tma else "0")
    B, H, L, D = 1, 2, length, 128
    q, k, v = qkv(B, H, L, D, seed=5)
    (o_out, o_lse, o_mass), (r_out, r_lse, r_mass) = oracle_and_reference(
        reference.attention_with_block_mass, q, k, v, block_size=block_size)
    meta = dict(HEAD_D=D, BLOCK_D=D, BS=block_size, PRECISION="tf32", TMA=tma)

    if op.startswith("attention"):
        with_mass = op == "attention_with_block_mass"
        configs = flash_fwd._attention_configs_prune(flash_fwd._ATTENTION_CONFIGS, {}, **meta, WITH_MASS=with_mass)
        for config in configs:
            out, lse, mass = flash_fwd._launch(q, k, v, block_size=block_size, scale=None, with_mass=with_mass,
                                               config=config)
            assert_close(out, o_out, r_out, name=f"out {config}")
            assert_close(lse, o_lse, r_lse, name=f"lse {config}")
            if with_mass:
                assert_close(mass, o_mass, r_mass, name=f"mass {config}")
    elif op == "block_mass":
        o_m, r_m = oracle_and_reference(reference.block_mass, q, k, r_lse, block_size=block_size)
        configs = search._mass_configs_prune(search._MASS_CONFIGS, {}, **meta)
        for config in configs:
            mass = search._block_mass(q, k, r_lse, block_size=block_size, scale=None, config=config)
            assert_close(mass, o_m, r_m, name=f"cached mass {config}")
    else:
        mask = adaptive_mask(r_mass, L, block_size, sparsity=0.7)
        (o_out, o_lse), (r_out, r_lse) = oracle_and_reference(reference.block_sparse_attention, q, k, v, mask)
        configs = block_sparse._sparse_configs_prune(block_sparse._SPARSE_CONFIGS, {}, **meta)
        assert not tma or all(c.kwargs["BLOCK_N"] <= block_size for c in configs)
        for config in configs:
            out, lse = block_sparse._block_sparse_attention(q, k, v, mask, config=config)
            assert_close(out, o_out, r_out, name=f"sparse out {config}")
            assert_close(lse, o_lse, r_lse, name=f"sparse lse {config}")
    assert configs


def test_offsets_past_two_to_the_31():
    """B * H * L * D > 2**31 elements: base offsets must be 64-bit (the last heads would be garbage)."""
    from adaspa import kernels

    B, H, L, D = 1, 16400, 1024, 128
    assert B * H * L * D > 2**31
    q, k, v = qkv(B, H, L, D, seed=6)
    out, lse = kernels.attention(q, k, v)
    mask = BlockSparseMask.full(B, H, L, L, 128, device="cuda")
    sparse_out, sparse_lse = kernels.block_sparse_attention(q, k, v, mask)
    _, _, mass = kernels.attention_with_block_mass(q, k, v, block_size=128)
    tail = slice(H - 2, H)
    (o_out, o_lse), (r_out, r_lse) = oracle_and_reference(reference.attention, q[:, tail], k[:, tail], v[:, tail])
    for name, a in (("out", out), ("sparse out", sparse_out)):
        assert_close(a[:, tail], o_out, r_out, name=name)
    for name, a in (("lse", lse), ("sparse lse", sparse_lse)):
        assert_close(a[:, tail], o_lse, r_lse, name=name)
    rows = mass[:, tail].sum(-1)
    assert torch.allclose(rows, torch.full_like(rows, 128.0), rtol=1e-3)


def test_rotated_walks_at_block_64():
    """Rows walked from staggered starts (block 64, once a head's K / V outgrow half of L2):
    every config at periods 1, 7 and 264 against the oracle, period 1 bit for bit against the
    walk in key order; then the default path just past the rule's length on this GPU (rotated
    there, with the period the kernel's shared memory and registers give; on Hopper the
    Gluon kernel, else the Triton one) against the oracle, with no host sync and replayed in
    a CUDA graph."""
    from adaspa.bench import random_mask
    from adaspa.kernels import block_sparse
    from adaspa.kernels._launch import use_hopper_kernel
    from adaspa.kernels.block_sparse import BLOCK64_CONFIG, L2_SHARE, _block_sparse_attention, resident_programs

    B, H, L, D = 1, 3, 2000, 128
    q, k, v = qkv(B, H, L, D, seed=8)
    _, _, r_mass = oracle_and_reference(reference.attention_with_block_mass, q, k, v, block_size=64)[1]
    mask = adaptive_mask(r_mass, L, 64, sparsity=0.5)
    (o_out, o_lse), (r_out, r_lse) = oracle_and_reference(reference.block_sparse_attention, q, k, v, mask)
    meta = dict(HEAD_D=D, BLOCK_D=D, BS=64, PRECISION="tf32", TMA=True)
    for config in block_sparse._sparse_configs_prune(block_sparse._SPARSE_CONFIGS, {}, **meta):
        in_order = _block_sparse_attention(q, k, v, mask, period=0, config=config)
        for period in (1, 7, 264):
            out, lse = _block_sparse_attention(q, k, v, mask, period=period, config=config)
            assert_close(out, o_out, r_out, name=f"out, period {period}, {config}")
            assert_close(lse, o_lse, r_lse, name=f"lse, period {period}, {config}")
            if period == 1:
                assert torch.equal(out, in_order[0]) and torch.equal(lse, in_order[1]), config

    props = torch.cuda.get_device_properties(0)
    L = int(props.L2_cache_size * L2_SHARE / (2 * D * 2)) + 4096  # one head's K and V: past the rule's bound
    assert block_sparse.walks_rotate(2 * L * D * 2, props.L2_cache_size, 64)
    q, k, v = qkv(1, 1, L, D, seed=9)
    mask = random_mask(1, 1, L, 64, 0.1, "uniform", "cuda")
    (o_out, o_lse), (r_out, r_lse) = oracle_and_reference(reference.block_sparse_attention, q, k, v, mask)
    want = _block_sparse_attention(q, k, v, mask)  # compiles before the sync check
    assert_close(want[0], o_out, r_out, name="out, default rotated walks")
    assert_close(want[1], o_lse, r_lse, name="lse, default rotated walks")
    if use_hopper_kernel(q, k, v, 64):
        from adaspa.kernels.hopper import block64_footprint, hopper_attention

        def walk(period):
            return hopper_attention(q, k, v, mask, scale=D ** -0.5, period=period)

        # 112 KiB of shared memory and 8 warps of 128 registers a program: 2 programs a SM.
        assert resident_programs(q.device, *block64_footprint(D, 2)) == 2 * props.multi_processor_count
    else:
        def walk(period):
            return _block_sparse_attention(q, k, v, mask, period=period, config=BLOCK64_CONFIG)

    in_order = walk(0)
    assert not torch.equal(want[0], in_order[0])  # the default did rotate: some rows round differently
    if torch.cuda.get_device_capability() >= (9, 0):
        # Hopper: 227 KiB of shared memory a program at most, either kernel takes 112 KiB: 2 programs a SM.
        assert resident_programs(q.device, 112 * 1024) == 2 * props.multi_processor_count
        again = walk(2 * props.multi_processor_count)
        assert torch.equal(again[0], want[0]) and torch.equal(again[1], want[1])
    with no_host_sync():
        got = _block_sparse_attention(q, k, v, mask)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        g_out, g_lse = _block_sparse_attention(q, k, v, mask)
    for _ in range(2):
        graph.replay()
        assert torch.equal(g_out, want[0]) and torch.equal(g_lse, want[1])
