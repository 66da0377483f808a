"""Registers, spills and shared memory of the package's kernels on Hopper, without a GPU.

Not part of the package. Compiles each kernel of `adaspa.kernels` for sm_90a with the
Triton that is installed (it ships its own ptxas and cuobjdump, so a CPU-only machine
will do) and prints what ptxas allocated per config: registers per thread, local-memory
stack per thread (spills) and shared memory per program. That is the check behind the
register counts in docs/kernel-tuning.md: one program of 8 warps fits once per SM below
256 registers, twice below 128. Usage: `python tools/kernel_resources.py` (half a
minute); the configs listed are the ones the autotuner picked on the H200 at D = 128,
bf16, through the copy engine (TMA), then the warp-specialized Gluon kernel
(`adaspa/kernels/hopper.py`) and the Gluon LSE-cached search (`hopper_search.py`). `--only TEXT` keeps the rows whose name contains TEXT and
`--json` prints one JSON object per row (tests/test_hopper.py runs
`--only Gluon --json`). Run it without `TRITON_INTERPRET`: the interpreter replaces the
kernels by Python functions, which cannot be compiled.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from adaspa.kernels import block_sparse, flash_fwd, search

HOPPER = GPUTarget("cuda", 90, 32)
D = 128


def resources(kernel, signature: dict, constants: dict, num_warps: int, num_stages: int = 3,
              maxnreg: int = None) -> dict:
    """Compile `kernel` (Triton or, for a `gluon.jit` function, Gluon) for sm_90a; return its
    registers per thread, spill stack bytes per thread and shared KiB per program."""
    from triton.experimental.gluon._runtime import GluonASTSource, GluonJITFunction

    make_source = GluonASTSource if isinstance(kernel, GluonJITFunction) else ASTSource
    source = make_source(fn=kernel, signature={**signature, **{name: "constexpr" for name in constants}},
                         constexprs=constants)
    options = {"num_warps": num_warps, "num_stages": num_stages}
    if maxnreg is not None:
        options["maxnreg"] = maxnreg
    compiled = triton.compile(source, target=HOPPER, options=options)
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        usage = subprocess.run([cuobjdump, "--dump-resource-usage", cubin.name], capture_output=True, text=True,
                               check=True).stdout
    regs, stack = re.search(r"REG:(\d+) STACK:(\d+)", usage).groups()
    return {"registers": int(regs), "stack_bytes": int(stack), "shared_kib": compiled.metadata.shared // 1024}


def tiles(rows: int, head_dim: int = D, layout=None) -> str:
    """Signature type of a TMA descriptor of `[1, 1, rows, head_dim]` bf16 boxes (`_launch.row_tiles`;
    with the shared-memory `layout` for Gluon's descriptors, `hopper._row_tiles`)."""
    return f"tensordesc<bf16[1,1,{rows},{head_dim}]{'' if layout is None else ',' + repr(layout)}>"


def strides(*tensors: str) -> dict:
    return {f"stride_{t}{axis}": "i32" for t in tensors for axis in ("b", "h", "m" if t in "qo" else "n", "d")}


def ints(*names: str) -> dict:
    return {name: "i32" for name in names}


def attention(block_m, block_n, bs, with_mass, warps, stages):
    signature = {"Q": "*bf16", "K": tiles(block_n), "V": tiles(block_n), "O": "*bf16", "LSE": "*fp32",
                 "MASS": "*fp32", "SCRATCH": "*fp32", "LOCKS": "*i32", **strides("q", "k", "v", "o"),
                 **ints("H", "LQ", "LK", "NQB", "NKB", "SLOT_ROWS"), "qk_scale": "fp32"}
    constants = dict(HEAD_D=D, BLOCK_D=D, BS=bs, WITH_MASS=with_mass, PRECISION="tf32", TMA=True,
                     BLOCK_M=block_m, BLOCK_N=block_n)
    return resources(flash_fwd._attention_fwd_kernel, signature, constants, warps, stages)


def cached_search(block_m, mass_n, bs, warps, stages):
    signature = {"Q": "*bf16", "K": tiles(mass_n), "LSE": "*fp32", "MASS": "*fp32", **strides("q", "k"),
                 **ints("stride_lb", "stride_lh", "stride_lm", "H", "LQ", "LK", "NQB", "NKB"), "qk_scale": "fp32"}
    constants = dict(HEAD_D=D, BLOCK_D=D, BS=bs, PRECISION="tf32", TMA=True, BLOCK_M=block_m, MASS_N=mass_n)
    return resources(search._block_mass_fwd_kernel, signature, constants, warps, stages)


def sparse(block_n, bs, warps, stages, even_k=True, rotated=False):
    signature = {"Q": "*bf16", "K": tiles(block_n), "V": tiles(block_n), "O": "*bf16", "LSE": "*fp32",
                 "INDICES": "*i32", "COUNTS": "*i32", "ORDER": "*i32", **strides("q", "k", "v", "o"),
                 **ints("H", "LQ", "LK", "NQB", "MAX_KEPT", "WALK_PERIOD"), "qk_scale": "fp32"}
    constants = dict(HEAD_D=D, BLOCK_D=D, BS=bs, EVEN_K=even_k, ROTATED=rotated,
                     PRECISION="tf32", TMA=True, BLOCK_M=bs, BLOCK_N=block_n)
    return resources(block_sparse._block_sparse_attention_fwd_kernel, signature, constants, warps, stages)


def gluon_attention(head_dim, dense, ordered=False, even_k=True, mass_bs=None, block=128, rotated=False):
    """The warp-specialized attention kernel; `block=64` is its one-consumer block-64 form."""
    from triton.experimental.gluon import language as gl

    from adaspa.kernels import hopper

    def gluon_tiles(rows):
        return tiles(rows, head_dim, gl.NVMMASharedLayout.get_default_for([1, 1, rows, head_dim], gl.bfloat16))

    signature = {"q_desc": gluon_tiles(64), "k_desc": gluon_tiles(block), "v_desc": gluon_tiles(block),
                 "o_desc": gluon_tiles(64), "LSE": "*fp32", "INDICES": "*i32", "COUNTS": "*i32", "ORDER": "*i32",
                 **ints("H", "LQ", "LK", "NQB", "MAX_KEPT", "PERIOD"), "qk_scale": "fp32", "MASS": "*fp32",
                 "SCRATCH": "*fp32", "LOCKS": "*i32", **ints("N_SLOTS", "MASS_NQB", "NKB")}
    one_consumer = block == 64
    constants = dict(HEAD_D=head_dim, DENSE=dense, ORDERED=ordered, EVEN_K=even_k, WITH_MASS=mass_bs is not None,
                     BS=mass_bs or block, CONSUMERS=block // 64,
                     STAGES=hopper.BLOCK64_STAGES if one_consumer else hopper.STAGES, ROTATED=rotated)
    return resources(hopper._attention_ws_fwd_kernel, signature, constants, 4,
                     maxnreg=hopper.BLOCK64_MAXNREG if one_consumer else hopper.MAXNREG)


def gluon_cached_search(head_dim, bs, even_k=True):
    from triton.experimental.gluon import language as gl

    from adaspa.kernels import hopper_search

    rows = hopper_search.TILE.value
    tile = tiles(rows, head_dim, gl.NVMMASharedLayout.get_default_for([1, 1, rows, head_dim], gl.bfloat16))
    signature = {"q_desc": tile, "k_desc": tile, "LSE": "*fp32", "MASS": "*fp32",
                 **ints("stride_lb", "stride_lh", "stride_lm", "H", "LQ", "LK", "NQB", "NKB", "NQT"), "qk_scale": "fp32"}
    constants = dict(BS=bs, HEAD_D=head_dim, EVEN_K=even_k)
    return resources(hopper_search._block_mass_ws_kernel, signature, constants, 4, maxnreg=hopper_search.MAXNREG)


ROWS = [
    ("dense attention, 128 x 64, 3 stages", lambda: attention(128, 64, 64, False, 8, 3)),
    ("fused search, block 64, 128 x 64, 3 stages", lambda: attention(128, 64, 64, True, 8, 3)),
    ("fused search, block 128, 128 x 64, 3 stages", lambda: attention(128, 64, 128, True, 8, 3)),
    ("fused search, block 128, 128 x 128, 2 stages", lambda: attention(128, 128, 128, True, 8, 2)),
    ("LSE-cached search, block 64, 256 x 64, 3 stages", lambda: cached_search(256, 64, 64, 16, 3)),
    ("LSE-cached search, block 128, 256 x 64, 3 stages", lambda: cached_search(256, 64, 128, 16, 3)),
    ("block-sparse, block 64, 64-row tiles, 3 stages", lambda: sparse(64, 64, 4, 3)),
    ("block-sparse, block 64, ragged Lk", lambda: sparse(64, 64, 4, 3, even_k=False)),
    ("block-sparse, block 64, rotated walks", lambda: sparse(64, 64, 4, 3, rotated=True)),
    ("block-sparse, block 128, 128-row tiles, 2 stages", lambda: sparse(128, 128, 8, 2)),
    ("Gluon, block-sparse, D = 128", lambda: gluon_attention(128, dense=False, ordered=True)),
    ("Gluon, block-sparse 64, D = 128, rotated", lambda: gluon_attention(128, False, True, block=64, rotated=True)),
    ("Gluon, block-sparse 64, D = 64, ragged, rotated", lambda: gluon_attention(64, False, True, False, block=64,
                                                                                 rotated=True)),
    ("Gluon, dense, D = 64, ragged Lk, heavy-first order", lambda: gluon_attention(64, True, True, False)),
    ("Gluon, fused search, block 64, D = 128", lambda: gluon_attention(128, True, mass_bs=64)),
    ("Gluon, fused search, block 128, D = 64, ragged Lk", lambda: gluon_attention(64, True, even_k=False, mass_bs=128)),
    ("Gluon, LSE-cached search, block 64, D = 128", lambda: gluon_cached_search(128, 64)),
    ("Gluon, LSE-cached search, block 128, D = 64, ragged Lk", lambda: gluon_cached_search(64, 128, False)),
]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="keep the rows whose name contains this text")
    parser.add_argument("--json", action="store_true", help="one JSON object per row")
    args = parser.parse_args(argv)
    for name, compile_one in ROWS:
        if args.only not in name:
            continue
        r = compile_one()
        if args.json:
            print(json.dumps({"name": name, **r}), flush=True)
        else:
            print(f"{name:<52}{r['registers']:>4} registers, {r['stack_bytes']:>5} B stack, "
                  f"{r['shared_kib']:>4} KiB shared", flush=True)


if __name__ == "__main__":
    main()
