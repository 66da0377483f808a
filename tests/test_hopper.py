"""The warp-specialized Gluon kernels: attention and the fused search (`hopper.py`), and the
LSE-cached search (`hopper_search.py`).

On a CPU (CI): they compile for sm_90a with the installed Triton, without spilling.
On a Hopper GPU: `kernels.attention`, `kernels.block_sparse_attention`,
`kernels.attention_with_block_mass` and `kernels.block_mass` dispatch to them for the inputs
`_launch.use_hopper_kernel` / `use_hopper_search` accept, and they match the float64 oracle
by the 2x-own-error rule on awkward shapes, layouts, empty rows and the heavy-first order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adaspa import BlockSparseMask, reference
from adaspa.testing import assert_close, oracle_and_reference

ROOT = Path(__file__).resolve().parents[1]


def test_kernels_compile_for_hopper_without_spills():
    """tools/kernel_resources.py compiles two variants of each Gluon kernel for sm_90a, in a process
    without TRITON_INTERPRET (under the interpreter `gluon.jit` functions cannot compile)."""
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "kernel_resources.py"), "--only", "Gluon", "--json"],
                            env=env, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 8, result.stdout
    for row in rows:
        assert row["stack_bytes"] == 0, f"{row['name']}: {row['stack_bytes']} bytes of spills"
    # Attention and fused search: Q (2 x 64 rows) and two 128-row K and V slots. LSE-cached
    # search: Q (4 x 64 rows) and six 64-row K slots. 160 KiB at D = 128, 80 at D = 64.
    # Block 64: Q (64 rows) and three 64-row K and V slots, as `hopper.block64_footprint`
    # counts: 112 KiB at D = 128, 56 at D = 64.
    from adaspa.kernels.hopper import block64_footprint

    assert [row["shared_kib"] for row in rows] == [160, 112, 56, 80, 160, 80, 160, 80]
    assert [block64_footprint(dim, 2)[0] // 1024 for dim in (128, 64)] == [112, 56]


def _qkv(batch, heads, q_len, kv_len, dim, dtype, seq_major, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)

    def make(length):
        if seq_major:
            return torch.randn(batch, length, heads, dim, generator=g, device="cuda", dtype=dtype).transpose(1, 2)
        return torch.randn(batch, heads, length, dim, generator=g, device="cuda", dtype=dtype)

    return make(q_len), make(kv_len), make(kv_len)


def _random_mask(batch, heads, q_len, kv_len, keep, seed, block_size=128):
    """Random mask keeping about `keep` of each row, with row 1 of head 0 empty."""
    from adaspa.selection import select_blocks

    g = torch.Generator(device="cuda").manual_seed(seed)
    nq, nk = -(-q_len // block_size), -(-kv_len // block_size)
    mass = torch.rand(batch, heads, nq, nk, generator=g, device="cuda")
    mask = select_blocks(mass, torch.full((batch, heads), 1.0 - keep, device="cuda"), block_size=block_size,
                         q_len=q_len, kv_len=kv_len)
    counts = mask.counts.clone()
    counts[0, 0, min(1, nq - 1)] = 0
    return BlockSparseMask(mask.indices, counts, block_size, q_len, kv_len)


@pytest.fixture
def hopper_calls(monkeypatch):
    """The `order` of each call that reaches `hopper.hopper_attention` (the dispatch imports it
    per call): None for dense attention, the launch order of a block-sparse call."""
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("needs a Hopper GPU")
    from adaspa.kernels import hopper

    calls = []
    original = hopper.hopper_attention

    def counted(*args, **kwargs):
        calls.append(kwargs.get("order"))
        return original(*args, **kwargs)

    monkeypatch.setattr(hopper, "hopper_attention", counted)
    return calls


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, dim, seq_major, q_len, kv_len", [
    (torch.bfloat16, 128, True, 1000, 1000),
    (torch.bfloat16, 128, False, 777, 1500),
    (torch.float16, 64, True, 300, 2049),
    (torch.float16, 128, False, 1024, 640),
])
def test_dense_and_sparse_match_oracle(hopper_calls, dtype, dim, seq_major, q_len, kv_len):
    from adaspa import kernels
    from adaspa.kernels import block_sparse

    q, k, v = _qkv(2, 3, q_len, kv_len, dim, dtype, seq_major, seed=q_len)
    (o_out, o_lse), (r_out, r_lse) = oracle_and_reference(reference.attention, q, k, v)
    out, lse = kernels.attention(q, k, v)
    assert_close(out, o_out, r_out, name="dense out")
    assert_close(lse, o_lse, r_lse, name="dense lse")

    for block_size in (128, 64):
        mask = _random_mask(2, 3, q_len, kv_len, keep=0.4, seed=q_len, block_size=block_size)
        (o_out, o_lse), (r_out, r_lse) = oracle_and_reference(reference.block_sparse_attention, q, k, v, mask)
        out, lse = kernels.block_sparse_attention(q, k, v, mask)
        assert_close(out, o_out, r_out, name=f"sparse out, block {block_size}")
        assert_close(lse, o_lse, r_lse, name=f"sparse lse, block {block_size}")
        empty = slice(block_size, 2 * block_size)
        assert torch.isinf(lse[0, 0, empty]).all() and (out[0, 0, empty] == 0).all(), "empty row"
        assert torch.equal(hopper_calls[-1], block_sparse.launch_order(mask)), "launched long rows first"
    assert hopper_calls[0] is None and len(hopper_calls) == 3


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, dim, seq_major, q_len, kv_len", [
    (torch.bfloat16, 128, True, 1000, 2049),
    (torch.float16, 64, False, 700, 1024),
])
def test_block64_rotated_walks_match_oracle(dtype, dim, seq_major, q_len, kv_len):
    """The block-64 kernel walking rows from staggered starts (ragged Lk included: the last,
    partial block may come anywhere in a rotated walk) against the oracle; period 1 starts
    every walk at key block 0, so it is the walk in key order bit for bit."""
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("needs a Hopper GPU")
    from adaspa.kernels.hopper import hopper_attention

    q, k, v = _qkv(2, 3, q_len, kv_len, dim, dtype, seq_major, seed=kv_len)
    mask = _random_mask(2, 3, q_len, kv_len, keep=0.4, seed=kv_len, block_size=64)
    (o_out, o_lse), (r_out, r_lse) = oracle_and_reference(reference.block_sparse_attention, q, k, v, mask)
    in_order = hopper_attention(q, k, v, mask, scale=dim ** -0.5)
    for period in (1, 7, 264):
        out, lse = hopper_attention(q, k, v, mask, scale=dim ** -0.5, period=period)
        assert_close(out, o_out, r_out, name=f"out, period {period}")
        assert_close(lse, o_lse, r_lse, name=f"lse, period {period}")
        if period == 1:
            assert torch.equal(out, in_order[0]) and torch.equal(lse, in_order[1])


@pytest.mark.gpu
def test_heavy_first_order_and_keep_all_mask(hopper_calls):
    """Without rotated walks each program does the same work in any order (here heavy first
    against the default, long rows first), and a keep-all mask is the dense loop over the same
    tiles: both are bit-for-bit equal."""
    from adaspa import kernels
    from adaspa.kernels import block_sparse

    q, k, v = _qkv(1, 3, 900, 900, 128, torch.bfloat16, True, seed=9)
    mask = _random_mask(1, 3, 900, 900, keep=0.3, seed=9)
    row_out, row_lse = kernels.block_sparse_attention(q, k, v, mask)
    heavy_out, heavy_lse = block_sparse._block_sparse_attention(q, k, v, mask, heavy_first=True)
    assert torch.equal(row_out, heavy_out) and torch.equal(row_lse, heavy_lse)
    full_out, full_lse = kernels.block_sparse_attention(q, k, v, BlockSparseMask.full(1, 3, 900, 900, 128,
                                                                                     device="cuda"))
    dense_out, dense_lse = kernels.attention(q, k, v)
    assert torch.equal(full_out, dense_out) and torch.equal(full_lse, dense_lse)
    mask128, mask = mask, _random_mask(1, 3, 900, 900, keep=0.3, seed=9, block_size=64)
    row_out, row_lse = kernels.block_sparse_attention(q, k, v, mask)
    heavy_out, heavy_lse = block_sparse._block_sparse_attention(q, k, v, mask, heavy_first=True)
    assert torch.equal(row_out, heavy_out) and torch.equal(row_lse, heavy_lse), "block 64"
    assert [order is None for order in hopper_calls] == [False, False, False, True, False, False]
    for heavy, counts in ((hopper_calls[1], mask128.counts), (hopper_calls[5], mask.counts)):
        counts = counts.reshape(-1)[heavy.long()]
        assert bool((counts[:-1] >= counts[1:]).all()), "heavy first"


@pytest.mark.gpu
@pytest.mark.parametrize("block_size", [128, 64])
def test_triton_path_when_turned_off(hopper_calls, monkeypatch, block_size):
    from adaspa import kernels

    q, k, v = _qkv(1, 2, 500, 500, 128, torch.bfloat16, True, seed=3)
    mask = _random_mask(1, 2, 500, 500, keep=0.5, seed=3, block_size=block_size)
    paths = _gluon_and_triton(monkeypatch, hopper_calls, lambda: kernels.block_sparse_attention(q, k, v, mask))
    _assert_paths_close(paths, ("out", "lse"),
                        *oracle_and_reference(reference.block_sparse_attention, q, k, v, mask))


def _gluon_and_triton(monkeypatch, calls, run):
    """`(gluon, triton)`: `run()` with `ADASPA_GLUON=1` (one call reaches the Gluon kernel,
    recorded in `calls`) and with `ADASPA_GLUON=0` (none does)."""
    monkeypatch.setenv("ADASPA_GLUON", "0")
    triton_result = run()
    assert calls == []
    monkeypatch.setenv("ADASPA_GLUON", "1")
    gluon_result = run()
    assert len(calls) == 1
    return gluon_result, triton_result


def _assert_paths_close(paths, names, oracle, ref):
    """Both paths' results (tuples named `names`) against the oracle's and reference's tuples."""
    for path, results in zip(("gluon", "triton"), paths):
        for name, got, o, r in zip(names, results, oracle, ref):
            assert_close(got, o, r, name=f"{path} {name}")


def _count_calls(monkeypatch, module_name, function_name):
    """Calls (their `block_size`) that reach `adaspa.kernels.<module_name>.<function_name>`; the
    dispatch imports the function per call, so patching the module attribute sees them."""
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("needs a Hopper GPU")
    import importlib

    module = importlib.import_module(f"adaspa.kernels.{module_name}")
    calls = []
    original = getattr(module, function_name)

    def counted(*args, **kwargs):
        calls.append(kwargs["block_size"])
        return original(*args, **kwargs)

    monkeypatch.setattr(module, function_name, counted)
    return calls


#: The searches' shapes: ragged Lq and Lk, D of 64 and 128, both dtypes and layouts, and
#: Lq = 40, where a program's last consumers hold no rows.
SEARCH_CASES = pytest.mark.parametrize("dtype, dim, seq_major, q_len, kv_len", [
    (torch.bfloat16, 128, True, 1000, 1000),
    (torch.bfloat16, 128, False, 777, 1500),
    (torch.float16, 64, True, 300, 2049),
    (torch.float16, 128, False, 40, 640),
])


@pytest.fixture
def search_calls(monkeypatch):
    return _count_calls(monkeypatch, "hopper_search", "hopper_block_mass")


@pytest.fixture
def fused_calls(monkeypatch):
    return _count_calls(monkeypatch, "hopper", "hopper_attention_with_block_mass")


@pytest.mark.gpu
@SEARCH_CASES
@pytest.mark.parametrize("block_size", [64, 128])
def test_cached_search_matches_oracle(search_calls, dtype, dim, seq_major, q_len, kv_len, block_size):
    """Ragged Lq and Lk, programs whose last consumers lie past Lq, and an LSE with strides
    (a `[B, L, H]` tensor transposed); block 128 adds two halves per entry, so two calls
    must also agree bit for bit."""
    from adaspa import kernels

    q, k, v = _qkv(2, 3, q_len, kv_len, dim, dtype, seq_major, seed=q_len + block_size)
    _, (_, r_lse) = oracle_and_reference(reference.attention, q, k, v)
    lse = r_lse.transpose(1, 2).contiguous().transpose(1, 2)
    o_mass, r_mass = oracle_and_reference(reference.block_mass, q, k, lse, block_size=block_size)
    mass = kernels.block_mass(q, k, lse, block_size=block_size)
    assert_close(mass, o_mass, r_mass, name="mass")
    assert torch.equal(mass, kernels.block_mass(q, k, lse, block_size=block_size)), "not deterministic"
    assert search_calls == [block_size, block_size]


@pytest.mark.gpu
@pytest.mark.parametrize("lse_dtype", [torch.bfloat16, torch.float64])
def test_cached_search_reads_any_float_lse(search_calls, lse_dtype):
    """An LSE of another floating dtype is read as float32, as the Triton kernel reads it."""
    from adaspa import kernels

    q, k, v = _qkv(1, 2, 300, 400, 128, torch.bfloat16, False, seed=6)
    _, (_, r_lse) = oracle_and_reference(reference.attention, q, k, v)
    lse = r_lse.to(lse_dtype)
    o_mass, r_mass = oracle_and_reference(reference.block_mass, q, k, lse, block_size=64)
    assert_close(kernels.block_mass(q, k, lse, block_size=64), o_mass, r_mass, name=f"mass, {lse_dtype} lse")
    assert search_calls == [64]


@pytest.mark.gpu
def test_cached_search_triton_path_when_turned_off(search_calls, monkeypatch):
    from adaspa import kernels

    q, k, v = _qkv(1, 2, 500, 700, 128, torch.bfloat16, True, seed=4)
    _, (_, r_lse) = oracle_and_reference(reference.attention, q, k, v)
    paths = _gluon_and_triton(monkeypatch, search_calls, lambda: (kernels.block_mass(q, k, r_lse, block_size=64), ))
    assert search_calls == [64]
    o_mass, r_mass = oracle_and_reference(reference.block_mass, q, k, r_lse, block_size=64)
    _assert_paths_close(paths, ("mass", ), (o_mass, ), (r_mass, ))


@pytest.mark.gpu
@SEARCH_CASES
@pytest.mark.parametrize("block_size", [64, 128])
def test_fused_search_matches_oracle(fused_calls, dtype, dim, seq_major, q_len, kv_len, block_size):
    """out, lse and mass match the oracle; ragged Lq and Lk, an odd number of 64-blocks in the
    last 128-key tile, and (block 128) two consumers' halves added per entry, deterministically.
    (out and lse are close to the dense kernel's, not bitwise equal: on the H100 they differed
    in the last bits, 2026-11-27; the cause was not looked into.)"""
    from adaspa import kernels

    q, k, v = _qkv(2, 3, q_len, kv_len, dim, dtype, seq_major, seed=q_len + 7 * block_size)
    o_all, r_all = oracle_and_reference(reference.attention_with_block_mass, q, k, v, block_size=block_size)
    out, lse, mass = kernels.attention_with_block_mass(q, k, v, block_size=block_size)
    for name, got, oracle, ref in zip(("out", "lse", "mass"), (out, lse, mass), o_all, r_all):
        assert_close(got, oracle, ref, name=name)
    again = kernels.attention_with_block_mass(q, k, v, block_size=block_size)
    assert torch.equal(mass, again[2]), "not deterministic"
    assert fused_calls == [block_size, block_size]


@pytest.mark.gpu
def test_fused_search_triton_path_when_turned_off(fused_calls, monkeypatch):
    from adaspa import kernels

    q, k, v = _qkv(1, 2, 500, 700, 128, torch.bfloat16, True, seed=5)
    paths = _gluon_and_triton(monkeypatch, fused_calls,
                              lambda: kernels.attention_with_block_mass(q, k, v, block_size=64))
    assert fused_calls == [64]
    _assert_paths_close(paths, ("out", "lse", "mass"),
                        *oracle_and_reference(reference.attention_with_block_mass, q, k, v, block_size=64))
