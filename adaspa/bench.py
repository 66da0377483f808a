"""`python -m adaspa.bench`: block-sparse and dense attention throughput on one GPU.

Providers (one line each in the plots): `adaspa` (block-sparse kernel, programs in row order),
`adaspa_heavy_first` (same kernel, longest rows launched first; tiered budgets only),
`flex` (FlexAttention, same mask via `to_flex_block_mask()`, compiled), and the dense
`adaspa_dense` (dense kernel with LSE), `sdpa_cudnn`, `sdpa_flash`. Effective TFLOP/s is
`4 * B * H * Lq * Lk * D * density / time` with the mask's actual density, so a sparse
kernel that skips perfectly at the dense kernel's speed scores the dense kernel's rate.

The masks of the sweep keep random blocks (`random_mask`), the case with the least reuse of
K / V between rows. `--video` adds the masks AdaSpa itself selects (budget `video` in the
CSV): `select_blocks` on the exact block mass of a synthetic video (`adaspa.synthetic`,
default 33 x 45 x 80 latent frames + 256 text tokens, HunyuanVideo's 720p 8 s clip,
L = 119056), text blocks forced, at each density of the sweep, with SDPA-cuDNN at that L.

It also times both search kernels (fused search, LSE-cached search) as a fraction of
SDPA-cuDNN dense time, and a small crossover sweep (density 0.2, block 64, short L)
against SDPA dense. Writes `bench.csv`, `search.csv`, `crossover.csv` and, when
matplotlib is installed, `bench_L<L>.png` (via `adaspa.viz.plot_benchmark`) to --out,
and prints one table. The CSV columns are documented in docs/benchmarks.md.

Example:
    $ python -m adaspa.bench --out bench_out                  # full run, about 5 minutes on H100
    $ python -m adaspa.bench --lengths 16384 --densities 0.2 --out /tmp/b   # quick look
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import sys
from typing import Dict, List

import torch

MAIN_FIELDS = ["provider", "L", "block_size", "density", "budget", "actual_density", "ms", "tflops",
               "speedup_vs_cudnn", "B", "H", "D", "dtype", "card", "torch", "triton", "date"]
SEARCH_FIELDS = ["provider", "L", "block_size", "ms", "frac_of_cudnn", "B", "H", "D", "dtype", "card", "torch",
                 "triton", "date"]
CROSS_FIELDS = ["provider", "L", "block_size", "density", "ms", "speedup_vs_cudnn", "B", "H", "D", "dtype",
                "card", "torch", "triton", "date"]


def attention_flops(batch: int, heads: int, q_len: int, kv_len: int, dim: int, density: float = 1.0) -> float:
    """Forward FLOPs of attention: two `[Lq, D] x [D, Lk]`-sized matmuls, scaled by the kept fraction."""
    return 4.0 * batch * heads * q_len * kv_len * dim * density


def tier_sparsity(heads: int, density: float, budget: str) -> torch.Tensor:
    """Per-head sparsity `[H]`: all `1 - density` (uniform), or AdaSpa's three tiers.

    Tiered: with `s = 1 - density`, a quarter of the heads get `(1+s)/2`, a quarter
    `max(0, (3s-1)/2)`, the rest `s` (ALGORITHM.md section 3), so the mean density is
    `density` unless the clamp bites.
    """
    s = 1.0 - density
    sparsity = torch.full((heads,), s, dtype=torch.float64)
    if budget == "tiered":
        n = heads // 4
        sparsity[:n] = (1 + s) / 2
        sparsity[heads - n:] = max(0.0, (3 * s - 1) / 2)
    return sparsity


def random_mask(batch, heads, length, block_size, density, budget, device, seed=0):
    """A `BlockSparseMask` keeping random blocks per row, at the per-head budgets of `tier_sparsity`."""
    from adaspa.selection import select_blocks

    nb = -(-length // block_size)
    g = torch.Generator(device=device).manual_seed(seed)
    mass = torch.rand(batch, heads, nb, nb, generator=g, device=device)
    sparsity = tier_sparsity(heads, density, budget).to(device).expand(batch, heads).contiguous()
    return select_blocks(mass, sparsity, block_size=block_size, q_len=length, kv_len=length)


def bench_ms(fn) -> float:
    """Median time of `fn()` in ms (`triton.testing.do_bench`, CUDA events)."""
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=50, rep=200, return_mode="median"))


def video_config(spec: str, batch: int, heads: int, dim: int):
    """The `SyntheticVideoConfig` of a `--video` spec `FxHxW+T` (latent frames x height x width + text
    tokens, text last as in HunyuanVideo).

    Example:
        >>> video_config("33x45x80+256", 1, 24, 128).seq_len
        119056
    """
    from adaspa.synthetic import SyntheticVideoConfig

    grid, plus, text = spec.partition("+")
    sizes = grid.split("x")
    if len(sizes) != 3 or not all(x.isdigit() and int(x) > 0 for x in sizes) or (plus and not text.isdigit()):
        raise ValueError(f"--video must look like FRAMESxHEIGHTxWIDTH+TEXT (e.g. 33x45x80+256), got {spec!r}")
    frames, height, width = (int(x) for x in sizes)
    return SyntheticVideoConfig(batch=batch, heads=heads, head_dim=dim, frames=frames, height=height, width=width,
                                text_len=int(text or 0), text_position="last")


def environment() -> Dict[str, str]:
    import triton

    return {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "date": datetime.date.today().isoformat()}


class Providers:
    """The timed callables, built once per (L, block size) so compiled code is reused."""

    def __init__(self):
        from torch.nn.attention.flex_attention import flex_attention

        self.flex = torch.compile(flex_attention, dynamic=False)

    @staticmethod
    def sdpa(backend):
        from torch.nn.attention import sdpa_kernel

        def run(q, k, v):
            with sdpa_kernel([backend]):
                return torch.nn.functional.scaled_dot_product_attention(q, k, v)

        return run

    def flex_call(self, q, k, v, mask):
        block_mask = mask.to_flex_block_mask()
        options = {"BLOCK_M": 64, "BLOCK_N": 64} if mask.block_size == 64 else None
        return lambda: self.flex(q, k, v, block_mask=block_mask, kernel_options=options)


def run_main(args, env, providers, rows, search_rows):
    from torch.nn.attention import SDPBackend

    from adaspa import kernels
    from adaspa.kernels.block_sparse import _block_sparse_attention

    B, H, D, dtype = args.batch, args.heads, args.dim, torch.bfloat16
    common = {"B": B, "H": H, "D": D, "dtype": "bf16", **env}
    for L in args.lengths:
        g = torch.Generator(device="cuda").manual_seed(L)
        q, k, v = (torch.randn(B, H, L, D, generator=g, device="cuda", dtype=dtype) for _ in range(3))
        dense_flops = attention_flops(B, H, L, L, D)
        dense = {
            "sdpa_cudnn": bench_ms(lambda: providers.sdpa(SDPBackend.CUDNN_ATTENTION)(q, k, v)),
            "sdpa_flash": bench_ms(lambda: providers.sdpa(SDPBackend.FLASH_ATTENTION)(q, k, v)),
            "adaspa_dense": bench_ms(lambda: kernels.attention(q, k, v)),
        }
        cudnn = dense["sdpa_cudnn"]
        for bs in args.block_sizes:
            for name, ms in dense.items():
                rows.append({"provider": name, "L": L, "block_size": bs, "density": 1.0, "budget": "dense",
                             "actual_density": 1.0, "ms": ms, "tflops": dense_flops / ms * 1e-9,
                             "speedup_vs_cudnn": cudnn / ms, **common})
            _, lse = kernels.attention(q, k, v)
            search = {
                "adaspa_fused_search": bench_ms(lambda: kernels.attention_with_block_mass(q, k, v, block_size=bs)),
                "adaspa_lse_cached_search": bench_ms(lambda: kernels.block_mass(q, k, lse, block_size=bs)),
            }
            for name, ms in search.items():
                search_rows.append({"provider": name, "L": L, "block_size": bs, "ms": ms,
                                    "frac_of_cudnn": ms / cudnn, **common})
            for budget in args.budgets:
                for density in args.densities:
                    mask = random_mask(B, H, L, bs, density, budget, "cuda")
                    actual = float(mask.density().mean())
                    timed = {
                        "adaspa": bench_ms(lambda: kernels.block_sparse_attention(q, k, v, mask)),
                        "flex": bench_ms(providers.flex_call(q, k, v, mask)),
                    }
                    if budget == "tiered":
                        timed["adaspa_heavy_first"] = bench_ms(
                            lambda: _block_sparse_attention(q, k, v, mask, heavy_first=True))
                    for name, ms in timed.items():
                        rows.append({"provider": name, "L": L, "block_size": bs, "density": density,
                                     "budget": budget, "actual_density": actual, "ms": ms,
                                     "tflops": dense_flops * actual / ms * 1e-9, "speedup_vs_cudnn": cudnn / ms,
                                     **common})
                    del mask
                    print(f"L={L} bs={bs} {budget} density={density}: "
                          + ", ".join(f"{n} {ms:.2f} ms" for n, ms in timed.items()), flush=True)
        del q, k, v
        torch.cuda.empty_cache()


def run_video(args, env, providers, rows):
    """The sweep's block sizes and densities on the masks AdaSpa selects for a synthetic video (`--video`)."""
    from torch.nn.attention import SDPBackend

    from adaspa import kernels
    from adaspa.selection import select_blocks, text_sink_blocks
    from adaspa.synthetic import synthetic_qkv

    cfg = video_config(args.video, args.batch, args.heads, args.dim)
    B, H, L, D = cfg.batch, cfg.heads, cfg.seq_len, cfg.head_dim
    common = {"B": B, "H": H, "D": D, "dtype": "bf16", **env}
    q, k, v = synthetic_qkv(cfg, dtype=torch.bfloat16, device="cuda")
    dense_flops = attention_flops(B, H, L, L, D)
    cudnn = bench_ms(lambda: providers.sdpa(SDPBackend.CUDNN_ATTENTION)(q, k, v))
    for bs in args.block_sizes:
        rows.append({"provider": "sdpa_cudnn", "L": L, "block_size": bs, "density": 1.0, "budget": "dense",
                     "actual_density": 1.0, "ms": cudnn, "tflops": dense_flops / cudnn * 1e-9,
                     "speedup_vs_cudnn": 1.0, **common})
        _, _, mass = kernels.attention_with_block_mass(q, k, v, block_size=bs)
        text = text_sink_blocks(L, L, cfg.text_len, text_position=cfg.text_position, block_size=bs)
        for density in (d for d in args.densities if d < 1):
            mask = select_blocks(mass, 1.0 - density, block_size=bs, q_len=L, kv_len=L, forced=text)
            actual = float(mask.density().mean())
            timed = {"adaspa": bench_ms(lambda: kernels.block_sparse_attention(q, k, v, mask)),
                     "flex": bench_ms(providers.flex_call(q, k, v, mask))}
            for name, ms in timed.items():
                rows.append({"provider": name, "L": L, "block_size": bs, "density": density, "budget": "video",
                             "actual_density": actual, "ms": ms, "tflops": dense_flops * actual / ms * 1e-9,
                             "speedup_vs_cudnn": cudnn / ms, **common})
            del mask
            print(f"video L={L} bs={bs} density={density}: "
                  + ", ".join(f"{n} {ms:.2f} ms" for n, ms in timed.items()), flush=True)
        del mass
    del q, k, v
    torch.cuda.empty_cache()
    return L


def run_crossover(args, env, providers, cross_rows):
    from torch.nn.attention import SDPBackend

    from adaspa import kernels

    B, H, D, dtype = args.batch, args.heads, args.dim, torch.bfloat16
    for L in args.crossover_lengths:
        q, k, v = (torch.randn(B, H, L, D, device="cuda", dtype=dtype) for _ in range(3))
        mask = random_mask(B, H, L, 64, 0.2, "uniform", "cuda")
        cudnn = bench_ms(lambda: providers.sdpa(SDPBackend.CUDNN_ATTENTION)(q, k, v))
        timed = {"sdpa_cudnn": cudnn,
                 "sdpa_flash": bench_ms(lambda: providers.sdpa(SDPBackend.FLASH_ATTENTION)(q, k, v)),
                 "adaspa": bench_ms(lambda: kernels.block_sparse_attention(q, k, v, mask))}
        for name, ms in timed.items():
            cross_rows.append({"provider": name, "L": L, "block_size": 64,
                               "density": 1.0 if name.startswith("sdpa") else float(mask.density().mean()),
                               "ms": ms, "speedup_vs_cudnn": cudnn / ms, "B": B, "H": H, "D": D, "dtype": "bf16",
                               **env})


class CsvRows(list):
    """A list of row dicts that also appends each row to a CSV file as it arrives.

    Rows reach the disk as they are measured, so a run cut short (a time limit) keeps
    everything it measured.
    """

    def __init__(self, path: str, fields: List[str]):
        super().__init__()
        self.path, self.fields = path, fields
        with open(path, "w", newline="") as f:
            csv.DictWriter(f, fieldnames=fields).writeheader()

    def append(self, row: dict) -> None:
        super().append(row)
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fields).writerow(
                {key: (f"{row[key]:.4g}" if isinstance(row[key], float) else row[key]) for key in self.fields})


def write_plots(out: str, csv_path: str, lengths, env) -> None:
    try:
        import matplotlib
    except ImportError:
        print(f"matplotlib is not installed: wrote CSVs only; plot later with "
              f"`python -m adaspa.bench --plot-from {csv_path} --out DIR`")
        return
    matplotlib.use("Agg")
    from adaspa.viz import plot_benchmark

    for L in lengths:
        fig = plot_benchmark(csv_path, L=L, title=f"{env.get('card', '')} {env.get('date', '')}, L={L}")
        fig.savefig(os.path.join(out, f"bench_L{L}.png"), dpi=120, bbox_inches="tight")


def print_table(rows, search_rows, cross_rows) -> None:
    print(f"\n{'provider':<26}{'L':>8}{'bs':>5}{'budget':>9}{'density':>9}{'ms':>10}{'TFLOP/s':>9}{'vs cuDNN':>9}")
    for r in rows:
        print(f"{r['provider']:<26}{r['L']:>8}{r['block_size']:>5}{r['budget']:>9}{r['actual_density']:>9.3f}"
              f"{r['ms']:>10.3f}{r['tflops']:>9.1f}{r['speedup_vs_cudnn']:>8.2f}x")
    for r in search_rows:
        print(f"{r['provider']:<26}{r['L']:>8}{r['block_size']:>5}{'search':>9}{'':>9}{r['ms']:>10.3f}"
              f"{'':>9}{r['frac_of_cudnn']:>8.2f}x cuDNN time")
    for r in cross_rows:
        print(f"{r['provider']:<26}{r['L']:>8}{r['block_size']:>5}{'cross':>9}{r['density']:>9.3f}{r['ms']:>10.3f}"
              f"{'':>9}{r['speedup_vs_cudnn']:>8.2f}x")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m adaspa.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench_out", help="folder for the CSVs and plots")
    p.add_argument("--lengths", type=int, nargs="+", default=[16384, 32768, 118784])
    p.add_argument("--block-sizes", type=int, nargs="+", default=[64, 128])
    p.add_argument("--densities", type=float, nargs="+", default=[1.0, 0.5, 0.2, 0.1, 0.05])
    p.add_argument("--budgets", nargs="+", default=["uniform", "tiered"], choices=["uniform", "tiered"])
    p.add_argument("--video", default="33x45x80+256",
                   help="synthetic video FxHxW+T whose AdaSpa masks are timed too; 'none' skips it")
    p.add_argument("--crossover-lengths", type=int, nargs="*", default=[1024, 2048, 4096, 8192, 16384])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=24)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--plot-from", default=None, help="only draw the plots of an existing bench.csv")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args.plot_from:
        with open(args.plot_from) as f:
            lengths = sorted({int(r["L"]) for r in csv.DictReader(f)})
        write_plots(args.out, args.plot_from, lengths, {})
        return 0
    if not torch.cuda.is_available():
        print("adaspa.bench needs a CUDA GPU", file=sys.stderr)
        return 2
    if args.video != "none":
        video_config(args.video, args.batch, args.heads, args.dim)  # a bad spec fails before the sweep
    env = environment()
    print(f"{env['card']}, torch {env['torch']}, triton {env['triton']}, {env['date']}; "
          f"B={args.batch} H={args.heads} D={args.dim} bf16", flush=True)
    providers = Providers()
    bench_csv = os.path.join(args.out, "bench.csv")
    rows = CsvRows(bench_csv, MAIN_FIELDS)
    search_rows = CsvRows(os.path.join(args.out, "search.csv"), SEARCH_FIELDS)
    cross_rows = CsvRows(os.path.join(args.out, "crossover.csv"), CROSS_FIELDS)
    # Autotuning happens at a kernel's first call and is keyed on block size and D, not on
    # L, so the long-sequence sweep runs first and picks the configs.
    run_main(args, env, providers, rows, search_rows)
    lengths = list(args.lengths)
    if args.video != "none":
        lengths.append(run_video(args, env, providers, rows))
    run_crossover(args, env, providers, cross_rows)
    print_table(rows, search_rows, cross_rows)
    write_plots(args.out, bench_csv, lengths, env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
