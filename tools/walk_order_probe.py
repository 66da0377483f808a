"""Block-sparse attention at block 64 with kept blocks walked in key order or rotated, against FlexAttention.

Not part of the package. Times `_block_sparse_attention` with `period=0` (key order), with
each `--periods` value and with its default (rotated once a head's K / V outgrow half of
L2), all with `BLOCK64_CONFIG`, and FlexAttention on the benchmark's random masks (B=1,
H=24, D=128, bf16, `--budget` uniform or tiered), round-robin: every provider once per
round, `--rounds` rounds, the median kept. Round-robin because at L = 118784 these
kernels hold the H100 at its 700 W power cap, where the SM
clock drops from 1980 MHz to 1300-1750 MHz within ~0.3 s, so whichever provider runs first
after an idle gap is flattered (4-5% in run 4 of docs/bench/h100-v8/; docs/kernel-tuning.md,
"Kernel v8"). The numbers behind `walks_rotate` (docs/kernel-tuning.md, "Kernel v9"). Usage,
on a GPU: `python tools/walk_order_probe.py --lengths 118784 32768 --out probe.jsonl` (about
3 minutes).
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from adaspa.bench import Providers, attention_flops, bench_ms, random_mask
from adaspa.kernels.block_sparse import BLOCK64_CONFIG, _block_sparse_attention

B, H, D, BLOCK = 1, 24, 128, 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[118784, 32768])
    parser.add_argument("--densities", type=float, nargs="+", default=[0.5, 0.2, 0.1, 0.05])
    parser.add_argument("--periods", type=int, nargs="*", default=[132, 528])
    parser.add_argument("--budget", default="uniform", choices=["uniform", "tiered"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="walk_order_probe.jsonl")
    args = parser.parse_args()
    providers = Providers()
    with open(args.out, "a") as out:
        for length in args.lengths:
            g = torch.Generator(device="cuda").manual_seed(length)
            q, k, v = (torch.randn(B, H, length, D, generator=g, device="cuda", dtype=torch.bfloat16)
                       for _ in range(3))
            for density in args.densities:
                mask = random_mask(B, H, length, BLOCK, density, args.budget, "cuda")
                flops = attention_flops(B, H, length, length, D, float(mask.density().mean()))
                calls = {f"period_{p}": (lambda p=p: _block_sparse_attention(q, k, v, mask, period=p,
                                                                             config=BLOCK64_CONFIG))
                         for p in [0, *args.periods]}
                calls["default"] = lambda: _block_sparse_attention(q, k, v, mask, config=BLOCK64_CONFIG)
                calls["flex"] = providers.flex_call(q, k, v, mask)
                for call in calls.values():  # compile and autotune outside the timed rounds
                    call()
                tflops = {name: [] for name in calls}
                for _ in range(args.rounds):
                    for name, call in calls.items():
                        tflops[name].append(flops / bench_ms(call) * 1e-9)
                row = {"L": length, "budget": args.budget, "density": density,
                       **{name: round(statistics.median(t), 1) for name, t in tflops.items()},
                       "card": torch.cuda.get_device_name()}
                print(json.dumps(row), flush=True)
                out.write(json.dumps(row) + "\n")
            del q, k, v
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
