"""The default workload of `python -m adaspa demo`: a real clip from the shipped tiny video DiT.

The same caption and the same noise are sampled twice, once with dense attention
in every layer and once with one `AdaSpaAttention` per layer running the whole
schedule. The demo shows the progress, prints the schedule each step ran (phase,
kept density), and writes both clips side by side, the selected masks of the
search steps, and PSNR/SSIM of the AdaSpa clip against the dense one together
with the attention time of each run.

On a CPU the AdaSpa phases run the PyTorch reference (written for reading, not
speed) and the default run is shortened to 10 steps so that it finishes in
60-80 s on two idle cores; the schedule keeps the paper's proportions (dense warm-up for
the first 20% of the steps, searches at 20% and 60%). On a GPU it runs the full
50 steps with the Triton kernels.

Example:
    >>> from adaspa.demo_video import VideoDemoOptions, run_video_demo
    >>> report = run_video_demo(VideoDemoOptions(steps=3, frames=2, warmup_steps=1, search_steps=(1, 2),
    ...                                          guidance=1.0, out=None, progress=False))
    >>> [row["phase"] for row in report["rows"]], report["adaspa"]["density"] < 1
    (['dense', 'search', 'cached_search'], True)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import torch

from .config import AdaSpaConfig, scale_steps
from .fidelity import TimedAttention, psnr, ssim
from .layer import AdaSpaAttention
from .models import DEFAULT_CAPTION, DenseAttention, load_default, save_video, tokenize
from .models.sample import euler_sample

CPU_STEPS = 10


def paper_schedule(steps: int) -> Tuple[int, Tuple[int, ...]]:
    """Warm-up and search steps in the paper's proportions (10 and (10, 30) of 50) for `steps` steps.

    Example:
        >>> paper_schedule(50), paper_schedule(10)
        ((10, (10, 30)), (2, (2, 6)))
    """
    return scale_steps((10,), steps)[0], scale_steps((10, 30), steps)


@dataclass
class VideoDemoOptions:
    """Settings of the model demo; None means "the default for the device" (see `resolve`)."""

    caption: str = DEFAULT_CAPTION
    steps: Optional[int] = None
    frames: Optional[int] = None
    guidance: float = 3.0
    sparsity: float = 0.8
    block_size: int = 64
    warmup_steps: Optional[int] = None
    search_steps: Optional[Tuple[int, ...]] = None
    head_adaptive: bool = True
    lse_cache: bool = True
    backend: str = "auto"
    device: str = "auto"
    seed: int = 0
    out: Optional[str] = "adaspa-demo"
    progress: bool = True

    def resolve(self) -> "VideoDemoOptions":
        """Fill in the device-dependent defaults: 50 steps on a GPU, 10 on a CPU, the paper's schedule."""
        device = self.device if self.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        steps = self.steps if self.steps is not None else (50 if device == "cuda" else CPU_STEPS)
        warmup, search = paper_schedule(steps)
        return VideoDemoOptions(**{**self.__dict__, "device": device, "steps": steps,
                                   "warmup_steps": warmup if self.warmup_steps is None else self.warmup_steps,
                                   "search_steps": search if self.search_steps is None else tuple(self.search_steps)})


def _sample(model, tokens, layers, options, desc: str) -> torch.Tensor:
    from .demo import _progress  # demo imports this module for its command line

    model.attention = layers
    bar = _progress(options.steps, desc, options.progress)
    video = euler_sample(model, tokens, steps=options.steps, seed=options.seed, guidance=options.guidance,
                         frames=options.frames, callback=(lambda i, x: bar.update(1)) if bar else None)
    if bar is not None:
        bar.close()
    return ((video.float().cpu() + 1) / 2).clamp(0, 1)  # [1, F, 3, H, W]


def run_video_demo(options: VideoDemoOptions) -> dict:
    """Sample the caption densely and with AdaSpa; return (and write to `options.out`) the comparison.

    Returns a dict with `rows` (per step: phase and mean kept density over the
    layers), `dense` and `adaspa` (attention ms; AdaSpa also density, recall),
    `psnr`, `ssim`, the resolved settings, and `files` written.
    """
    options = options.resolve()
    device = torch.device(options.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = load_default(device=device, dtype=dtype)
    tokens = tokenize(options.caption, model.config.text_len)[None]
    config = AdaSpaConfig(
        block_size=options.block_size, sparsity=options.sparsity, warmup_steps=options.warmup_steps,
        search_steps=options.search_steps, head_adaptive=options.head_adaptive, lse_cache=options.lse_cache,
        text_len=model.config.text_len, text_position="first", backend=options.backend,
        min_seq_len=0,  # the clip is ~2K tokens: below the GPU crossover, but the demo is about what AdaSpa selects
    )
    if device.type == "cuda":  # compile the kernels (every phase) outside the timed runs
        warm_config = config.replace(warmup_steps=0, search_steps=(0, 1))
        model.attention = [AdaSpaAttention(warm_config) for _ in range(model.config.depth)]
        euler_sample(model, tokens, steps=3, guidance=options.guidance, frames=options.frames)

    dense_layers = [TimedAttention(DenseAttention()) for _ in range(model.config.depth)]
    adaspa_layers = [TimedAttention(AdaSpaAttention(config)) for _ in range(model.config.depth)]
    start = time.perf_counter()
    dense_clip = _sample(model, tokens, dense_layers, options, "dense ")
    dense_wall = time.perf_counter() - start
    start = time.perf_counter()
    adaspa_clip = _sample(model, tokens, adaspa_layers, options, "AdaSpa")
    adaspa_wall = time.perf_counter() - start

    grid = (model.config.height // model.config.patch, model.config.width // model.config.patch)  # tokens per frame
    records = [layer.history for layer in adaspa_layers]  # [layer][step]
    rows = []
    for step in range(options.steps):
        per_layer = [history[step].as_dict() for history in records]
        # The fused search returns the exact dense output: every pair is kept at that step
        # (its record holds the density of the new mask, used from the next step on).
        kept = [1.0 if r["phase"] == "search" else r["density"] for r in per_layer]
        rows.append(dict(step=step, phase=per_layer[0]["phase"], density=sum(kept) / len(kept)))
    recalls = [r["recall"] for history in records for r in (x.as_dict() for x in history) if r["recall"] is not None]
    report = dict(
        caption=options.caption, steps=options.steps, frames=int(dense_clip.shape[1]), guidance=options.guidance,
        warmup_steps=options.warmup_steps, search_steps=list(options.search_steps), sparsity=options.sparsity,
        device=str(device), grid=grid, tokens=model.config.text_len + int(dense_clip.shape[1]) * grid[0] * grid[1],
        rows=rows,
        dense=dict(attention_ms=sum(a.timer.total_ms() for a in dense_layers), wall_s=dense_wall),
        adaspa=dict(attention_ms=sum(a.timer.total_ms() for a in adaspa_layers), wall_s=adaspa_wall,
                    density=sum(r["density"] for r in rows) / len(rows),
                    recall=sum(recalls) / len(recalls) if recalls else None),
        psnr=float(psnr(adaspa_clip, dense_clip)[0]),
        ssim=float(ssim(adaspa_clip, dense_clip, window=min(11, dense_clip.shape[-1]))[0]),
        files=[],
    )
    if options.out:
        report["files"] = _save(Path(options.out), dense_clip[0], adaspa_clip[0], adaspa_layers, report, config)
    return report


def _save(out: Path, dense_clip, adaspa_clip, adaspa_layers, report: dict, config: AdaSpaConfig) -> List[str]:
    from .viz import plot_head_masks, plot_schedule

    out.mkdir(parents=True, exist_ok=True)
    files = [save_video(dense_clip, str(out / "dense.gif")), save_video(adaspa_clip, str(out / "adaspa.gif")),
             save_video(torch.cat([dense_clip, adaspa_clip], dim=-1), str(out / "dense_vs_adaspa.gif"))]
    grid = report["grid"]
    layout = dict(text_len=config.text_len, text_position="first", frames=report["frames"], height=grid[0],
                  width=grid[1], block_size=config.block_size)
    for index in (0, len(adaspa_layers) - 1):
        attention = adaspa_layers[index].inner
        figure = plot_head_masks(attention.mask.to("cpu"), head_sparsity=attention.head_sparsity.cpu(),
                                 layout=layout)
        figure.suptitle(f"layer {index}: masks of the last search (batch element 0 = conditional branch)")
        files.append(str(out / f"masks_layer{index}.png"))
        figure.savefig(files[-1], dpi=110)
    phases = [[record.phase for record in layer.history] for layer in adaspa_layers]
    figure = plot_schedule(phases)
    files.append(str(out / "schedule.png"))
    figure.savefig(files[-1], dpi=110)
    files.append(str(out / "summary.json"))
    Path(files[-1]).write_text(json.dumps({k: v for k, v in report.items() if k != "files"}, indent=2))
    return files


def format_video_report(report: dict) -> str:
    """The per-step schedule and the summary as printable text."""
    lines = [f"{'step':>4}  {'phase':<13} {'density':>7}"]
    lines += [f"{r['step']:>4}  {r['phase']:<13} {r['density']:>7.3f}" for r in report["rows"]]
    d, a = report["dense"], report["adaspa"]
    recall = "n/a" if a["recall"] is None else f"{a['recall']:.3f}"
    lines += [
        "",
        f"clip       \"{report['caption']}\": {report['frames']} frames, {report['tokens']} tokens, "
        f"{report['steps']} steps, guidance {report['guidance']}, on {report['device']}",
        f"schedule   dense warm-up {report['warmup_steps']} steps, searches at {report['search_steps']}, "
        f"sparsity {report['sparsity']}",
        f"AdaSpa     mean density {a['density']:.3f} over all steps, mean recall at the searches {recall}",
        f"fidelity   PSNR {report['psnr']:.2f} dB, SSIM {report['ssim']:.4f} (AdaSpa clip vs dense clip, same noise)",
        f"attention  dense {d['attention_ms']:.0f} ms, AdaSpa {a['attention_ms']:.0f} ms "
        f"(wall: {d['wall_s']:.1f} s vs {a['wall_s']:.1f} s)",
    ]
    if report["device"] == "cpu":
        lines.append("note       on a CPU the run is shortened (10 steps unless --steps is given) and AdaSpa runs "
                     "the PyTorch reference, which is slower than dense SDPA; the speedup needs the GPU kernels")
    return "\n".join(lines)
