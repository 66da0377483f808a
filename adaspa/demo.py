"""`python -m adaspa demo`: run a full AdaSpa schedule and show what it does.

The default workload is the shipped tiny video DiT (`adaspa.demo_video`). This
module runs the other one, `--workload synthetic`, and the command line of both.
On the synthetic video-DiT workload (`adaspa.synthetic`: text + frames, heads of
four kinds, inputs drifting over the denoising steps) every layer gets its own
`AdaSpaAttention` and runs the whole schedule. At every step the demo also
computes the exact dense attention (output, block mass) to measure what AdaSpa
costs in quality: the recall of the mask in use and the relative output error.
It prints a per-step table and a summary and writes PNGs and the table into
`--out`.

The all-dense baseline is `F.scaled_dot_product_attention`, the attention a model
runs without AdaSpa. On a CPU the AdaSpa phases run the PyTorch reference, written
for reading rather than speed, so the summary also times the same backend's dense
attention (`attention`) to show what the sparsity saves like for like; the speedup
over SDPA needs the GPU kernels.

Example:
    >>> from adaspa.demo import DemoOptions, run_demo
    >>> result = run_demo(DemoOptions(size="tiny", steps=6, warmup_steps=2, search_steps=(2, 4), layers=1,
    ...                               block_size=16, out=None, progress=False))
    >>> [row["phase"] for row in result.rows]
    ['dense', 'dense', 'search', 'sparse', 'cached_search', 'sparse']
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from .config import AdaSpaConfig
from .demo_video import CPU_STEPS, VideoDemoOptions, format_video_report, paper_schedule, run_video_demo
from .layer import AdaSpaAttention, _ops_for
from .selection import recall
from .synthetic import HEAD_KINDS, SyntheticVideoConfig, synthetic_qkv

# (frames, height, width, text_len, heads, head_dim) of each --size.
SIZES: Dict[str, Tuple[int, int, int, int, int, int]] = {
    "tiny": (2, 8, 8, 16, 4, 32),        #    144 tokens: tests
    "small": (3, 12, 16, 64, 8, 64),     #    640 tokens: the CPU default (< 1 min on 2 cores)
    "medium": (8, 24, 32, 128, 16, 64),  #  6,272 tokens
    "large": (16, 32, 48, 256, 16, 128),  # 24,832 tokens: the GPU default
}
WORKLOADS = ("synthetic", "model")
PHASES = ("dense", "search", "sparse", "cached_search")


@dataclass
class DemoOptions:
    """Everything the demo can be told; `python -m adaspa demo --help` documents each.

    `size="auto"` picks `"large"` on a GPU and `"small"` on the CPU; `tokens`
    (if given) replaces the preset's frame count to reach about that many tokens.
    """

    workload: str = "synthetic"
    size: str = "auto"
    tokens: Optional[int] = None
    steps: int = 50
    layers: int = 3
    batch: int = 1
    sparsity: float = 0.8
    block_size: int = 64
    warmup_steps: int = 10
    search_steps: Tuple[int, ...] = (10, 30)
    head_adaptive: bool = True
    lse_cache: bool = True
    text_position: str = "last"
    drift: float = 0.1
    backend: str = "auto"
    device: str = "auto"
    dtype: str = "auto"
    seed: int = 0
    out: Optional[str] = "adaspa-demo"
    progress: bool = True


@dataclass
class DemoResult:
    """What the demo measured. `rows`: one dict per step (means over layers)."""

    rows: List[dict]
    summary: dict
    files: List[str] = field(default_factory=list)


def _resolve(options: DemoOptions):
    if options.workload not in WORKLOADS:
        raise ValueError(f"workload must be one of {WORKLOADS}, got {options.workload!r}")
    if options.workload == "model":
        raise ValueError("run_demo runs the synthetic workload; the model workload is adaspa.demo_video")
    device = options.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    size = options.size
    if size == "auto":
        size = "large" if device == "cuda" else "small"
    if size not in SIZES:
        raise ValueError(f"size must be 'auto' or one of {tuple(SIZES)}, got {size!r}")
    frames, height, width, text_len, heads, head_dim = SIZES[size]
    if options.tokens is not None:
        if options.tokens <= text_len:
            raise ValueError(f"tokens must exceed the {text_len} text tokens of size {size!r}, got {options.tokens}")
        frames = max(1, round((options.tokens - text_len) / (height * width)))
    dtype = options.dtype
    if dtype == "auto":
        dtype = "bfloat16" if device == "cuda" else "float32"
    if dtype not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"dtype must be 'auto', 'float32', 'float16' or 'bfloat16', got {dtype!r}")
    if options.layers < 1 or options.steps < 1 or options.batch < 1:
        raise ValueError(f"layers, steps and batch must be >= 1, got {options.layers}, {options.steps}, "
                         f"{options.batch}")
    config = AdaSpaConfig(
        block_size=options.block_size, sparsity=options.sparsity, warmup_steps=options.warmup_steps,
        search_steps=tuple(options.search_steps), head_adaptive=options.head_adaptive, lse_cache=options.lse_cache,
        text_len=text_len, text_position=options.text_position, backend=options.backend, min_seq_len=0,
    )
    workloads = [
        SyntheticVideoConfig(
            batch=options.batch, heads=heads, head_dim=head_dim, frames=frames, height=height, width=width,
            text_len=text_len, text_position=options.text_position, drift=options.drift, num_steps=options.steps,
            # Each layer mixes the head kinds in a different order, as real layers do.
            head_kinds=tuple(HEAD_KINDS[(h + layer) % len(HEAD_KINDS)] for h in range(heads)),
        )
        for layer in range(options.layers)
    ]
    return config, workloads, torch.device(device), getattr(torch, dtype), size


class DriftingInputs:
    """`q, k, v` of one layer at any step, built on the device from three `synthetic_qkv` samples.

    `synthetic_qkv` moves its tensors along `x(t) = x0 + (cos(phi_t) - 1) A + sin(phi_t) B`
    (see `adaspa.synthetic`), which is linear in two fixed directions, so the samples at
    step 0, the middle and the last step give every other step exactly (up to float32
    rounding) without generating a large workload on the CPU at every step.
    tests/test_demo.py checks this against `synthetic_qkv`.

    Example:
        >>> cfg = SyntheticVideoConfig(heads=2, head_dim=16, frames=2, height=4, width=4, num_steps=10)
        >>> q, k, v = DriftingInputs(cfg, seed=0, dtype=torch.float32, device="cpu").at(3)
        >>> bool(torch.allclose(q, synthetic_qkv(cfg, step=3, seed=0)[0], atol=1e-5))
        True
    """

    def __init__(self, workload: SyntheticVideoConfig, *, seed: int, dtype, device):
        self.workload, self.seed, self.dtype, self.device = workload, seed, dtype, device
        last = workload.num_steps - 1
        self.exact = last < 2 or workload.drift == 0
        if self.exact:
            return
        self.steps = (last // 2, last)
        samples = [synthetic_qkv(workload, step=s, seed=seed, device=device) for s in (0,) + self.steps]
        self.base = samples[0]  # 3 x [B, H, L, D] float32
        (c1, d1), (c2, d2) = (self._coefficients(s) for s in self.steps)
        det = c1 * d2 - c2 * d1
        self.a, self.b = [], []
        for x0, x1, x2 in zip(*samples):
            r1, r2 = x1 - x0, x2 - x0
            self.a.append((d2 * r1 - d1 * r2) / det)
            self.b.append((c1 * r2 - c2 * r1) / det)

    def _coefficients(self, step: int) -> Tuple[float, float]:
        phi = (math.pi / 2) * step / (self.workload.num_steps - 1)
        return math.cos(phi) - 1.0, math.sin(phi)

    def at(self, step: int):
        """`(q, k, v)` of `step`, each `[B, H, L, D]` in the demo's dtype on its device."""
        if self.exact:
            return synthetic_qkv(self.workload, step=step, seed=self.seed, dtype=self.dtype, device=self.device)
        c, d = self._coefficients(step)
        return tuple((x0 + c * a + d * b).to(self.dtype) for x0, a, b in zip(self.base, self.a, self.b))


def _timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    value = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return value, time.perf_counter() - start


class _TextBar:
    """A minimal progress bar on stderr for when tqdm is not installed."""

    def __init__(self, total: int, desc: str):
        self.total, self.desc, self.n = total, desc, 0

    def update(self, n: int = 1) -> None:
        self.n += n
        filled = int(30 * self.n / self.total)
        sys.stderr.write(f"\r{self.desc} [{'#' * filled}{'.' * (30 - filled)}] {self.n}/{self.total}")
        sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\n")


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _TextBar(total, desc)
    return tqdm(total=total, desc=desc, unit="step")


def run_demo(options: DemoOptions) -> DemoResult:
    """Run the schedule on every layer, measure it against dense attention, save the results.

    Returns:
        A `DemoResult`: `rows` (per step: phase, density, recall, error, times),
        `summary` (totals and means) and the written `files` (empty if `out` is None).
    """
    config, workloads, device, dtype, size = _resolve(options)
    layers = [AdaSpaAttention(config) for _ in workloads]
    ops = _ops_for(config.backend, torch.empty(0, device=device))
    if options.progress:
        print(f"generating synthetic inputs of {len(workloads)} layers ({workloads[0].seq_len} tokens) ...",
              file=sys.stderr)
    inputs = [DriftingInputs(w, seed=options.seed + i, dtype=dtype, device=device) for i, w in enumerate(workloads)]
    _warm_up(config, inputs[0])
    rows: List[dict] = []
    layer_recalls: List[List[float]] = [[] for _ in layers]  # [layer][step], NaN on dense steps
    first_search: Dict[str, object] = {}
    bar = _progress(options.steps, "AdaSpa schedule", options.progress)
    for step in range(options.steps):
        per_layer = []
        for index, layer in enumerate(layers):
            q, k, v = inputs[index].at(step)
            out, t_adaspa = _timed(lambda: layer(q, k, v, step=step), device)
            _, t_dense = _timed(lambda: F.scaled_dot_product_attention(q, k, v), device)
            kept, error = 1.0, 0.0  # a dense step is the all-dense baseline itself
            if layer.phase != "dense":
                exact, _, mass = ops.attention_with_block_mass(q, k, v, block_size=config.block_size)  # the truth
                kept, error = float(recall(mass, layer.mask).mean()), _relative_l2(out, exact)
            per_layer.append(dict(phase=layer.phase, density=layer.history[-1].as_dict()["density"], recall=kept,
                                  error=error, t_adaspa=t_adaspa, t_dense=t_dense))
            layer_recalls[index].append(math.nan if layer.phase == "dense" else kept)
            if layer.phase == "search" and index not in first_search:
                first_search[index] = (mass.cpu(), layer.mask.to("cpu"), layer.head_sparsity.cpu())
        phases = {r["phase"] for r in per_layer}
        rows.append(dict(
            step=step,
            phase=phases.pop() if len(phases) == 1 else "mixed",
            density=sum(r["density"] for r in per_layer) / len(per_layer),
            recall=sum(r["recall"] for r in per_layer) / len(per_layer),
            error=max(r["error"] for r in per_layer),
            adaspa_ms=1e3 * sum(r["t_adaspa"] for r in per_layer),
            dense_ms=1e3 * sum(r["t_dense"] for r in per_layer),
        ))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()

    same_backend_dense = _same_backend_dense_ms(ops, inputs, options.steps, device)
    summary = _summarize(rows, options, config, workloads[0], size, device, dtype, same_backend_dense)
    files = _save(options.out, rows, summary, layers, layer_recalls, workloads[0], first_search,
                                   config) if options.out else []
    return DemoResult(rows, summary, files)


def _relative_l2(out: torch.Tensor, dense: torch.Tensor) -> float:
    """`||out - dense|| / ||dense||` over the whole tensor (max-abs errors single out rare rows)."""
    out, dense = out.double(), dense.double()
    return float((out - dense).norm() / dense.norm())


def _warm_up(config: AdaSpaConfig, inputs: DriftingInputs) -> None:
    """One untimed pass through every phase, so Triton compilation and lazy imports stay out of the timings."""
    layer = AdaSpaAttention(config.replace(warmup_steps=0, search_steps=(0, 1)))
    q, k, v = inputs.at(0)
    for step in range(3):
        layer(q, k, v, step=step)
    F.scaled_dot_product_attention(q, k, v)


def _same_backend_dense_ms(ops, inputs: List[DriftingInputs], steps: int, device) -> float:
    """All-dense time of the backend's own `attention` over the whole run (timed at step 0, times steps)."""
    total = 0.0
    ops.attention(*inputs[0].at(0))  # untimed: compiles the kernel on a GPU
    for layer_inputs in inputs:
        q, k, v = layer_inputs.at(0)
        _, seconds = _timed(lambda: ops.attention(q, k, v), device)
        total += seconds
    return 1e3 * total * steps


def _summarize(rows, options, config, workload, size, device, dtype, same_backend_dense_ms) -> dict:
    by_phase = {p: sum(r["adaspa_ms"] for r in rows if r["phase"] == p) for p in PHASES}
    not_dense = [r for r in rows if r["phase"] != "dense"]
    adaspa_ms = sum(r["adaspa_ms"] for r in rows)
    dense_ms = sum(r["dense_ms"] for r in rows)
    return dict(
        workload=options.workload, size=size, tokens=workload.seq_len, heads=workload.heads,
        head_dim=workload.head_dim, batch=workload.batch, layers=options.layers, steps=options.steps,
        device=str(device), dtype=str(dtype).replace("torch.", ""),
        backend="kernels" if (config.backend == "auto" and device.type == "cuda") else
        ("reference" if config.backend == "auto" else config.backend),
        sparsity=config.sparsity, block_size=config.block_size, search_steps=list(config.search_steps),
        adaspa_ms=adaspa_ms, dense_sdpa_ms=dense_ms, dense_same_backend_ms=same_backend_dense_ms,
        speedup_vs_sdpa=dense_ms / adaspa_ms, speedup_vs_same_backend=same_backend_dense_ms / adaspa_ms,
        ms_by_phase=by_phase,
        mean_density=sum(r["density"] for r in not_dense) / max(len(not_dense), 1) if not_dense else 1.0,
        mean_recall=sum(r["recall"] for r in not_dense) / len(not_dense) if not_dense else 1.0,
        max_error=max(r["error"] for r in rows),
        mean_error=sum(r["error"] for r in rows) / len(rows),
    )


TABLE_COLUMNS = ("step", "phase", "density", "recall", "error", "adaspa_ms", "dense_ms")


def format_table(rows: List[dict]) -> str:
    """The per-step table as aligned text.

    Example:
        >>> print(format_table([dict(step=0, phase="dense", density=1.0, recall=1.0, error=0.0,
        ...                          adaspa_ms=1.5, dense_ms=1.5)]))
        step  phase          density  recall  rel.L2 err  adaspa ms  dense ms
           0  dense            1.000   1.000     0.0e+00       1.50      1.50
    """
    lines = ["step  phase          density  recall  rel.L2 err  adaspa ms  dense ms"]
    for r in rows:
        lines.append(f"{r['step']:4d}  {r['phase']:<13s}  {r['density']:7.3f}  {r['recall']:6.3f}  "
                     f"{r['error']:10.1e}  {r['adaspa_ms']:9.2f}  {r['dense_ms']:8.2f}")
    return "\n".join(lines)


def format_summary(s: dict) -> str:
    """The summary as a few lines of text."""
    phase_ms = ", ".join(f"{p} {ms:.0f} ms" for p, ms in s["ms_by_phase"].items() if ms)
    return "\n".join([
        f"workload   {s['workload']} ({s['size']}): {s['layers']} layers x {s['steps']} steps, B={s['batch']}, "
        f"H={s['heads']}, L={s['tokens']}, D={s['head_dim']}, {s['dtype']} on {s['device']}, "
        f"backend {s['backend']}",
        f"schedule   sparsity {s['sparsity']}, blocks of {s['block_size']}, searches at {s['search_steps']}",
        f"attention  AdaSpa {s['adaspa_ms']:.0f} ms ({phase_ms})",
        f"           all-dense SDPA {s['dense_sdpa_ms']:.0f} ms -> {s['speedup_vs_sdpa']:.2f}x; "
        f"all-dense {s['backend']} attention {s['dense_same_backend_ms']:.0f} ms -> "
        f"{s['speedup_vs_same_backend']:.2f}x",
        f"quality    mean density {s['mean_density']:.3f}, mean recall {s['mean_recall']:.3f} (sparse steps), "
        f"relative L2 error vs dense: max {s['max_error']:.1e}, mean {s['mean_error']:.1e}",
    ])


def _save(out, rows, summary, layers, layer_recalls, workload, first_search, config) -> List[str]:
    from . import viz

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    table = folder / "steps.csv"
    with table.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    written.append(table)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    written.append(folder / "summary.json")

    layout = dict(text_len=workload.text_len, text_position=workload.text_position, frames=workload.frames,
                  height=workload.height, width=workload.width, block_size=config.block_size)
    figures = {}
    if 0 in first_search:
        mass, mask, head_sparsity = first_search[0]
        figures["block_mass.png"] = viz.plot_block_mass(mass, head=0, layout=layout)
        figures["masks.png"] = viz.plot_head_masks(mask, head_sparsity=head_sparsity, layout=layout)
    figures["recall.png"] = viz.plot_recall_over_steps(
        {f"layer {i}": values for i, values in enumerate(layer_recalls)}, phases=[r["phase"] for r in rows])
    figures["schedule.png"] = viz.plot_schedule({f"layer {i}": [r.phase for r in layer.history]
                                                 for i, layer in enumerate(layers)})
    for name, fig in figures.items():
        fig.savefig(folder / name, dpi=110)
        written.append(folder / name)
    return [str(p) for p in written]


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except on on/off flags, where "(default: True)" of a --no-... flag misleads."""

    def _get_help_string(self, action):
        return action.help if action.nargs == 0 else super()._get_help_string(action)


def build_parser(prog: str = "python -m adaspa demo") -> argparse.ArgumentParser:
    """The demo's command line; every option maps to a `DemoOptions` field."""
    d = DemoOptions()
    p = argparse.ArgumentParser(
        prog=prog,
        description="Show AdaSpa at work. Default (--workload model): the shipped tiny video DiT generates a "
                    "clip with dense attention and with AdaSpa from the same noise; prints the schedule, "
                    "PSNR/SSIM and attention times, writes both clips as GIFs and the selected masks. "
                    "--workload synthetic: a full schedule on synthetic video-DiT attention, showing per "
                    "denoising step the phase, the kept density, the recall of the mask against the exact "
                    "dense attention, the relative output error and the time; then a summary and PNGs.",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--workload", choices=WORKLOADS, default="model",
                   help="'model': the shipped tiny video DiT generates a clip with dense attention and with "
                        "AdaSpa (adaspa.demo_video); 'synthetic': adaspa.synthetic q/k/v drifting over steps, "
                        "measured against exact dense attention at every step")
    p.add_argument("--caption", default=VideoDemoOptions.caption,
                   help="model workload: the caption (words of adaspa.models.VOCAB)")
    p.add_argument("--guidance", type=float, default=VideoDemoOptions.guidance,
                   help="model workload: classifier-free guidance scale (1 = off)")
    p.add_argument("--frames", type=int, default=None,
                   help="model workload: frames of the clip (default: the model's 8)")
    p.add_argument("--size", choices=("auto",) + tuple(SIZES), default=d.size,
                   help="workload preset: " + "; ".join(
                       f"{n}={f}x{h}x{w} frames+{t} text tokens, {hd} heads of dim {dd}"
                       for n, (f, h, w, t, hd, dd) in SIZES.items()) + "; auto: large on a GPU, small on CPU")
    p.add_argument("--tokens", type=int, default=d.tokens,
                   help="about this many tokens per sequence (changes the preset's frame count)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"denoising steps (default: {d.steps}; the model workload on a CPU: "
                        f"{CPU_STEPS}, about 1-1.5 min on 2 idle cores)")
    p.add_argument("--layers", type=int, default=d.layers,
                   help="attention layers, each with its own synthetic inputs and AdaSpa state")
    p.add_argument("--batch", type=int, default=d.batch, help="batch size (e.g. 2 for CFG as a batch)")
    p.add_argument("--sparsity", type=float, default=d.sparsity, help="base sparsity in [0, 1]")
    p.add_argument("--block-size", type=int, default=d.block_size, help="block size (a power of two >= 16)")
    p.add_argument("--warmup-steps", type=int, default=None,
                   help="dense warm-up steps (default: 20%% of the steps, the paper's 10 of 50)")
    p.add_argument("--search-steps", type=lambda s: tuple(int(x) for x in s.split(",")), default=None,
                   help="comma-separated search steps, the first fused, the later ones LSE-cached "
                        "(default: at 20%% and 60%% of the steps, the paper's 10,30 of 50)")
    p.add_argument("--no-head-adaptive", dest="head_adaptive", action="store_false",
                   help="give every head the base sparsity instead of the three tiers")
    p.add_argument("--no-lse-cache", dest="lse_cache", action="store_false",
                   help="run the fused search again at later search steps")
    p.add_argument("--text-position", choices=("first", "last"), default=d.text_position,
                   help="where the text tokens sit (CogVideoX: first, HunyuanVideo: last)")
    p.add_argument("--drift", type=float, default=d.drift, help="how much q, k, v move over the steps")
    p.add_argument("--backend", choices=("auto", "kernels", "reference"), default=d.backend,
                   help="ops for search/sparse steps: auto = Triton kernels on CUDA, reference on CPU")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=d.device,
                   help="auto = cuda if available")
    p.add_argument("--dtype", choices=("auto", "float32", "float16", "bfloat16"), default=d.dtype,
                   help="auto = bfloat16 on cuda, float32 on cpu")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the synthetic inputs (layer i uses seed+i)")
    p.add_argument("--out", default=d.out, help="folder for steps.csv, summary.json and the PNGs")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p


def main(argv=None) -> int:
    """Entry point of `python -m adaspa demo`; returns the exit status."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    model_only = {name: args.pop(name) for name in ("caption", "guidance", "frames")}
    if args["workload"] == "model":
        names = set(VideoDemoOptions.__dataclass_fields__)
        try:
            report = run_video_demo(VideoDemoOptions(**model_only, **{k: v for k, v in args.items() if k in names}))
        except ValueError as err:
            parser.error(str(err))
        print(format_video_report(report))
        if report["files"]:
            print(f"\nwrote {len(report['files'])} files to {Path(args['out']).resolve()}: "
                  + ", ".join(Path(f).name for f in report["files"]))
        return 0
    steps = args["steps"] if args["steps"] is not None else DemoOptions.steps
    warmup, search = paper_schedule(steps)
    args.update(steps=steps, warmup_steps=warmup if args["warmup_steps"] is None else args["warmup_steps"],
                search_steps=search if args["search_steps"] is None else args["search_steps"])
    options = DemoOptions(**args)
    try:
        result = run_demo(options)
    except ValueError as err:
        parser.error(str(err))
    print(format_table(result.rows))
    print()
    print(format_summary(result.summary))
    if result.files:
        print(f"\nwrote {len(result.files)} files to {Path(options.out).resolve()}: "
              + ", ".join(Path(f).name for f in result.files))
    return 0


__all__ = ["DemoOptions", "DemoResult", "DriftingInputs", "run_demo", "format_table", "format_summary", "build_parser", "main"]
