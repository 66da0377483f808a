"""Block-sparse attention on masks of equal counts that share K / V between rows to different degrees.

Not part of the package. The benchmark (`python -m adaspa.bench`) keeps random blocks per
row, so a key block is needed by a fraction `density` of a head's rows, and rows of one
head share nothing else. This probe times the block-sparse kernel at the benchmark shape
(B=1, H=24, D=128, bf16) on four masks with the same count in every row:

- `random`: the benchmark's (`select_blocks` on uniform random mass);
- `shared`: every row of a head keeps the same random blocks (all rows read the same K / V);
- `band`: the blocks nearest the diagonal (neighbouring rows read nearly the same K / V);
- `offset`: a contiguous run of blocks at a random offset per row (contiguous, unshared).

Each mask runs through the package's default path (`default`: at block 64 with rotated
walks once a head's K / V outgrow half of L2) and, at block 64, in key order
(`period_0`), round-robin: every call once per round, `--rounds` rounds, the median kept
(kernel-tuning.md, kernel v8, "The power cap"). `l2_tbps` is the K / V bytes the kernel
read (32 KiB per kept 64-row block, 64 KiB per 128-row one) per second: what the memory
system delivered. The numbers behind "What bounds block 64" in docs/kernel-tuning.md
(H100: docs/bench/h100-v5/run3, docs/bench/h100-v10/). Usage, on a GPU:
`python tools/locality_probe.py --out probe.jsonl` (about two minutes).
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from adaspa import kernels
from adaspa.bench import attention_flops, bench_ms, random_mask, tier_sparsity
from adaspa.kernels.block_sparse import BLOCK64_CONFIG, _block_sparse_attention
from adaspa.selection import select_blocks

B, H, D = 1, 24, 128
MASK_KINDS = ("random", "shared", "band", "offset")


def probe_mask(kind: str, length: int, block_size: int, density: float, seed: int = 1):
    """A uniform-budget mask of `kind` (one of `MASK_KINDS`) keeping as many blocks per row as
    `random_mask` does at `density`."""
    if kind == "random":
        return random_mask(B, H, length, block_size, density, "uniform", "cuda")
    nb = -(-length // block_size)
    g = torch.Generator(device="cuda").manual_seed(seed)
    p = torch.arange(nb, device="cuda")
    if kind == "shared":
        # [B, H, 1, nb]: one random row per head
        mass = torch.rand(B, H, 1, nb, generator=g, device="cuda").expand(B, H, nb, nb)
    elif kind == "band":
        # [nb, nb]: closer blocks weigh more (ties go to the lower index)
        mass = -(p[:, None] - p[None, :]).abs().float().expand(B, H, nb, nb)
    elif kind == "offset":
        # [B, H, nb, nb]: blocks off, off + 1, ... (wrapping around), off random per row
        offset = torch.randint(0, nb, (B, H, nb, 1), generator=g, device="cuda")
        mass = -((p.view(1, 1, 1, nb) - offset) % nb).float()
    else:
        raise ValueError(f"kind must be one of {MASK_KINDS}, got {kind!r}")
    sparsity = tier_sparsity(H, density, "uniform").to("cuda").expand(B, H).contiguous()
    return select_blocks(mass.contiguous(), sparsity, block_size=block_size, q_len=length, kv_len=length)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--length", type=int, default=118784)
    parser.add_argument("--block-sizes", type=int, nargs="+", default=[64])
    parser.add_argument("--densities", type=float, nargs="+", default=[0.2, 0.05])
    parser.add_argument("--kinds", nargs="+", default=list(MASK_KINDS), choices=MASK_KINDS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="locality_probe.jsonl")
    args = parser.parse_args()
    L = args.length
    g = torch.Generator(device="cuda").manual_seed(L)
    q, k, v = (torch.randn(B, H, L, D, generator=g, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    with open(args.out, "a") as out:
        for bs in args.block_sizes:
            for density in args.densities:
                for kind in args.kinds:
                    mask = probe_mask(kind, L, bs, density)
                    actual = float(mask.density().mean())
                    flops = attention_flops(B, H, L, L, D, actual)
                    kv_bytes = float(mask.counts.sum()) * 2 * bs * D * q.element_size()
                    calls = {"default": lambda: kernels.block_sparse_attention(q, k, v, mask)}
                    if bs == 64:
                        calls["period_0"] = lambda: _block_sparse_attention(q, k, v, mask, period=0,
                                                                            config=BLOCK64_CONFIG)
                    for call in calls.values():  # compile outside the timed rounds
                        call()
                    ms = {name: [] for name in calls}
                    for _ in range(args.rounds):
                        for name, call in calls.items():
                            ms[name].append(bench_ms(call))
                    ms = {name: statistics.median(t) for name, t in ms.items()}
                    row = {"L": L, "bs": bs, "density": density, "mask": kind, "actual": round(actual, 4),
                           "tflops": {name: round(flops / t * 1e-9, 1) for name, t in ms.items()},
                           "l2_tbps": {name: round(kv_bytes / t * 1e-9, 2) for name, t in ms.items()},
                           "card": torch.cuda.get_device_name()}
                    print(json.dumps(row), flush=True)
                    out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
