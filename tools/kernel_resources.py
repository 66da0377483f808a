"""Registers, spills and shared memory of the package's kernels on Hopper, without a GPU.

Not part of the package. Compiles each kernel of `adaspa.kernels` for sm_90a with the
Triton that is installed (it ships its own ptxas and cuobjdump, so a CPU-only machine
will do) and prints what ptxas allocated per config: registers per thread, local-memory
stack per thread (spills) and shared memory per program. That is the check behind the
register counts in docs/kernel-tuning.md: one program of 8 warps fits once per SM below
256 registers, twice below 128. Usage: `python tools/kernel_resources.py` (half a
minute); the configs listed are the ones the autotuner picked on the H200 at D = 128,
bf16, through the copy engine (TMA).
"""

from __future__ import annotations

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


def resources(kernel, signature: dict, constants: dict, num_warps: int, num_stages: int) -> str:
    """Compile `kernel` for sm_90a and return its registers, spill stack and shared memory."""
    source = ASTSource(fn=kernel, signature={**signature, **{name: "constexpr" for name in constants}},
                       constexprs=constants)
    compiled = triton.compile(source, target=HOPPER, options={"num_warps": num_warps, "num_stages": num_stages})
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        usage = subprocess.run([cuobjdump, "--dump-resource-usage", cubin.name], capture_output=True, text=True,
                               check=True).stdout
    regs, stack = re.search(r"REG:(\d+) STACK:(\d+)", usage).groups()
    return f"{regs:>4} registers, {stack:>5} B stack, {compiled.metadata.shared // 1024:>4} KiB shared"


def tiles(rows: int) -> str:
    """Signature type of a TMA descriptor of `[1, 1, rows, D]` bf16 boxes (`_launch.row_tiles`)."""
    return f"tensordesc<bf16[1,1,{rows},{D}]>"


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


def sparse(block_n, bs, warps, stages, even_k=True):
    signature = {"Q": "*bf16", "K": tiles(block_n), "V": tiles(block_n), "O": "*bf16", "LSE": "*fp32",
                 "INDICES": "*i32", "COUNTS": "*i32", "ORDER": "*i32", **strides("q", "k", "v", "o"),
                 **ints("H", "LQ", "LK", "NQB", "MAX_KEPT"), "qk_scale": "fp32"}
    constants = dict(HEAD_D=D, BLOCK_D=D, BS=bs, ORDERED=False, EVEN_K=even_k, PRECISION="tf32", TMA=True,
                     BLOCK_N=block_n)
    return resources(block_sparse._block_sparse_attention_fwd_kernel, signature, constants, warps, stages)


def main() -> None:
    rows = [
        ("dense attention, 128 x 64, 3 stages", lambda: attention(128, 64, 64, False, 8, 3)),
        ("fused search, block 64, 128 x 64, 3 stages", lambda: attention(128, 64, 64, True, 8, 3)),
        ("fused search, block 128, 128 x 64, 3 stages", lambda: attention(128, 64, 128, True, 8, 3)),
        ("fused search, block 128, 128 x 128, 2 stages", lambda: attention(128, 128, 128, True, 8, 2)),
        ("LSE-cached search, block 64, 256 x 64, 3 stages", lambda: cached_search(256, 64, 64, 16, 3)),
        ("LSE-cached search, block 128, 256 x 64, 3 stages", lambda: cached_search(256, 64, 128, 16, 3)),
        ("block-sparse, block 64, 64-row tiles, 3 stages", lambda: sparse(64, 64, 4, 3)),
        ("block-sparse, block 64, ragged Lk", lambda: sparse(64, 64, 4, 3, even_k=False)),
        ("block-sparse, block 128, 128-row tiles, 2 stages", lambda: sparse(128, 128, 8, 2)),
    ]
    for name, compile_one in rows:
        print(f"{name:<52}{compile_one()}", flush=True)


if __name__ == "__main__":
    main()
