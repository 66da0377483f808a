"""Block-sparse attention with random masks against masks of the same counts with K / V locality.

Not part of the package. The benchmark (`python -m adaspa.bench`) keeps random blocks per
row, so the programs that run at once share no K / V beyond their head's. This probe
times the block-sparse kernel at the benchmark shape (B=1, H=24, D=128, bf16) on those
masks and on band masks: every row keeps the same number of blocks, the ones nearest the
diagonal, so neighbouring rows read the same K / V. The difference is what K / V reads
that miss L2 cost (docs/kernel-tuning.md, "After v5"; H100 numbers in
docs/bench/h100-v5/run3_locality_probe.jsonl). It also times every block-sparse config
on the random mask at density 0.2. Usage, on a GPU:
`python tools/locality_probe.py --out probe.jsonl` (about half a minute after compiling).
"""

from __future__ import annotations

import argparse
import json

import torch

from adaspa import kernels
from adaspa.bench import attention_flops, bench_ms, random_mask, tier_sparsity
from adaspa.kernels import block_sparse
from adaspa.selection import select_blocks

B, H, D = 1, 24, 128


def band_mask(length: int, block_size: int, density: float, generator: torch.Generator):
    """Every head and row keeps the blocks nearest the diagonal, as many as `random_mask` keeps."""
    nb = -(-length // block_size)
    p = torch.arange(nb, device="cuda")
    # [nb, nb]: closer blocks weigh more; the noise only breaks ties
    mass = -(p[:, None] - p[None, :]).abs().float() + 0.01 * torch.rand(nb, nb, generator=generator, device="cuda")
    sparsity = tier_sparsity(H, density, "uniform").to("cuda").expand(B, H).contiguous()
    return select_blocks(mass.expand(B, H, nb, nb).contiguous(), sparsity, block_size=block_size, q_len=length,
                         kv_len=length)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--length", type=int, default=118784)
    parser.add_argument("--out", default="locality_probe.jsonl")
    args = parser.parse_args()
    L = args.length
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(B, H, L, D, generator=g, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    flops = attention_flops(B, H, L, L, D)
    with open(args.out, "a") as out:
        def emit(**row):
            print(json.dumps(row), flush=True)
            out.write(json.dumps(row) + "\n")

        for bs in (64, 128):
            for density in (0.2, 0.05):
                masks = {"random": random_mask(B, H, L, bs, density, "uniform", "cuda"),
                         "band": band_mask(L, bs, density, g)}
                for name, mask in masks.items():
                    actual = float(mask.density().mean())
                    ms = bench_ms(lambda: kernels.block_sparse_attention(q, k, v, mask))
                    emit(bs=bs, density=density, mask=name, actual=round(actual, 4), ms=round(ms, 3),
                         tflops=round(flops * actual / ms * 1e-9, 1),
                         config=str(block_sparse._block_sparse_tuned.best_config))
            mask = random_mask(B, H, L, bs, 0.2, "uniform", "cuda")
            actual = float(mask.density().mean())
            meta = dict(HEAD_D=D, BLOCK_D=D, BS=bs, PRECISION="tf32", TMA=True, ORDERED=False, EVEN_K=L % bs == 0)
            for config in block_sparse._sparse_configs_prune(block_sparse._SPARSE_CONFIGS, {}, **meta):
                ms = bench_ms(lambda: block_sparse._block_sparse_attention(q, k, v, mask, config=config))
                emit(bs=bs, density=0.2, mask="random", config=str(config), ms=round(ms, 3),
                     tflops=round(flops * actual / ms * 1e-9, 1))


if __name__ == "__main__":
    main()
