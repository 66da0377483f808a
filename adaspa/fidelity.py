"""Fidelity benchmark: how close each sparse attention method's clip stays to the dense clip.

`python -m adaspa.fidelity` samples a fixed set of captions and seeds with the
shipped tiny DiT (`adaspa.models`), once with dense attention and once per
method, and reports PSNR and SSIM against the dense clip, the attention density
actually used, the recall of the masks (against the exact block mass of the same
step) and the attention time. It is the structure of the paper's Table 1 and its
ablations, measured on a model that fits in this repository. Results go to
docs/fidelity.md (with card and date) and a plot beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .config import scale_steps
from .mask import BlockSparseMask


def psnr(actual: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio (dB) per clip, for values in [0, 1].

    Args:
        actual, expected: `[N, F, C, H, W]` (or any `[N, ...]`) in [0, 1].
    Returns:
        float64 `[N]`; `inf` where the clips are identical.

    Example:
        >>> x = torch.zeros(1, 2, 3, 4, 4); y = x + 0.1
        >>> round(float(psnr(y, x)[0]), 3)
        20.0
    """
    if actual.shape != expected.shape:
        raise ValueError(f"actual and expected must have the same shape, got {tuple(actual.shape)} "
                         f"and {tuple(expected.shape)}")
    err = (actual.double() - expected.double()).pow(2).flatten(1).mean(1)  # [N]
    return 10 * torch.log10(1.0 / err)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    w = torch.exp(-x * x / (2 * sigma * sigma))
    return w / w.sum()


def ssim(actual: torch.Tensor, expected: torch.Tensor, *, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) per clip, for values in [0, 1].

    Gaussian window (11 taps, sigma 1.5, valid positions only), constants
    `C1 = 0.01^2`, `C2 = 0.03^2`; computed per frame and channel, then averaged.

    Args:
        actual, expected: `[N, F, C, H, W]` in [0, 1], `H, W >= window`.
    Returns:
        float64 `[N]`, 1 for identical clips.

    Example:
        >>> x = torch.rand(2, 2, 3, 16, 16)
        >>> ssim(x, x).tolist()
        [1.0, 1.0]
    """
    if actual.shape != expected.shape or actual.dim() != 5:
        raise ValueError(f"actual and expected must both be [N, F, C, H, W], got {tuple(actual.shape)} "
                         f"and {tuple(expected.shape)}")
    n, f, c, h, w = actual.shape
    if min(h, w) < window:
        raise ValueError(f"frames must be at least window={window} pixels on each side, got {h}x{w}")
    x = actual.double().reshape(n * f * c, 1, h, w)
    y = expected.double().reshape(n * f * c, 1, h, w)
    g = _gaussian_window(window, sigma).to(x.device)

    def blur(z):  # separable Gaussian, valid positions
        z = F.conv2d(z, g.view(1, 1, 1, -1))
        return F.conv2d(z, g.view(1, 1, -1, 1))

    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx * mx
    vy = blur(y * y) - my * my
    cov = blur(x * y) - mx * my
    index = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return index.reshape(n, -1).mean(1)


class _Timer:
    """Accumulates the time of marked sections: CUDA events on a GPU (read once at the end), else wall clock."""

    def __init__(self):
        self.events: list = []
        self.seconds = 0.0

    @contextmanager
    def section(self, device: torch.device):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self.events.append((start, end))
        else:
            t0 = time.perf_counter()
            yield
            self.seconds += time.perf_counter() - t0

    def total_ms(self) -> float:
        if self.events:
            torch.cuda.synchronize()
        return self.seconds * 1e3 + sum(start.elapsed_time(end) for start, end in self.events)


class TimedAttention:
    """Wraps an attention callable (e.g. `AdaSpaAttention`, `DenseAttention`) and times every call.

    With `exact_recall=True` (an `AdaSpaAttention` inside), `search_recalls` collects
    one float32 `[B, H]` per search step: the recall of the new mask under the exact
    block mass of that step's inputs. The fused search's own record is that already;
    at an LSE-cached search the layer records the recall under the mass computed
    with the stale LSE, so the exact mass is computed here, outside the timed section.

    Example:
        >>> from adaspa.models import DenseAttention
        >>> attn = TimedAttention(DenseAttention())
        >>> q = torch.randn(1, 1, 8, 4)
        >>> attn(q, q, q, step=0).shape, attn.timer.total_ms() >= 0
        (torch.Size([1, 1, 8, 4]), True)
    """

    def __init__(self, inner, *, exact_recall: bool = False):
        self.inner = inner
        self.exact_recall = exact_recall
        self.timer = _Timer()
        self.search_recalls: list = []

    @property
    def history(self):
        return getattr(self.inner, "history", [])

    def reset(self):
        self.timer = _Timer()
        self.search_recalls = []
        reset = getattr(self.inner, "reset", None)
        if reset is not None:
            reset()

    def __call__(self, q, k, v, *, step=None):
        with self.timer.section(q.device):
            out = self.inner(q, k, v, step=step)
        phase = getattr(self.inner, "phase", None)
        if self.exact_recall and phase == "search":
            self.search_recalls.append(self.inner.history[-1].recall)
        elif self.exact_recall and phase == "cached_search":
            from .layer import _ops_for
            from .selection import recall

            mask = self.inner.mask
            ops = _ops_for(self.inner.config.backend, q)
            _, _, mass = ops.attention_with_block_mass(q, k, v, block_size=mask.block_size)  # [B, H, nq, nk]
            self.search_recalls.append(recall(mass, mask))
        return out


class MaskScheduleAttention:
    """A non-AdaSpa mask on AdaSpa's schedule: dense before the first search step, then block-sparse.

    `builder(q, k, v, step) -> BlockSparseMask` makes the mask: at every search
    step of `config` (the step order AdaSpa searches on), or at every non-dense
    step when `every_step` is True (Sparse VideoGen profiles every step). At the
    steps where a mask is built, its recall against the exact block mass of that
    step is measured outside the timed section, so it costs the method nothing.
    `history` holds `adaspa.layer.StepRecord`s like `AdaSpaAttention`'s.

    Example:
        >>> from adaspa import AdaSpaConfig, BlockSparseMask
        >>> cfg = AdaSpaConfig(warmup_steps=1, search_steps=(1,), block_size=16, min_seq_len=0)
        >>> full = lambda q, k, v, step: BlockSparseMask.full(1, 1, 32, 32, 16)
        >>> attn = MaskScheduleAttention(cfg, full)
        >>> q = torch.randn(1, 1, 32, 16)
        >>> [bool(torch.allclose(attn(q, q, q, step=s), F.scaled_dot_product_attention(q, q, q), atol=1e-5))
        ...  for s in range(3)]
        [True, True, True]
    """

    def __init__(self, config, builder: Callable, *, every_step: bool = False):
        self.config = config
        self.builder = builder
        self.every_step = every_step
        self.reset()

    def reset(self):
        self.mask = None
        self.history = []
        self.timer = _Timer()

    def __call__(self, q, k, v, *, step=None):
        from .layer import StepRecord, _ops_for
        from .selection import recall

        step = len(self.history) if step is None else step
        if step == 0:
            self.reset()
        phase = self.config.phase_at(step)
        ops = _ops_for(self.config.backend, q)
        rebuild = phase in ("search", "cached_search") or (phase == "sparse" and (self.every_step or self.mask is None))
        with self.timer.section(q.device):
            if phase == "dense":
                out = F.scaled_dot_product_attention(q, k, v)
            else:
                if rebuild:
                    self.mask = self.builder(q, k, v, step)
                out, _ = ops.block_sparse_attention(q, k, v, self.mask)
        search_recall = None
        if phase in ("search", "cached_search"):
            _, _, mass = ops.attention_with_block_mass(q, k, v, block_size=self.mask.block_size)
            search_recall = recall(mass, self.mask)
        dense = phase == "dense"
        self.history.append(StepRecord(step=step, phase=phase, seq_len=q.shape[2],
                                       density=None if dense else self.mask.density(), recall=search_recall,
                                       head_sparsity=None))
        return out


def _expand(mask, batch: int, heads: int, device):
    """`mask` on `device` with leading dims `[batch, heads]`: a `[1, 1]` mask is broadcast,
    a `[batch, heads]` one (e.g. per-head random blocks) is only moved, never collapsed."""
    if (mask.batch, mask.heads) == (batch, heads):
        return mask if mask.device == torch.device(device) else mask.to(device)
    if (mask.batch, mask.heads) != (1, 1):
        raise ValueError(f"mask must be [1, 1] or [batch={batch}, heads={heads}], got [{mask.batch}, {mask.heads}]")
    return BlockSparseMask(mask.indices.expand(batch, heads, -1, -1).contiguous().to(device),
                           mask.counts.expand(batch, heads, -1).contiguous().to(device),
                           mask.block_size, mask.q_len, mask.kv_len)


@dataclass(frozen=True)
class Layout:
    """The token layout of the benchmarked model: text first, then a (frames, rows, cols) grid."""

    frames: int
    rows: int
    cols: int
    text_len: int
    block_size: int

    @property
    def seq_len(self) -> int:
        return self.text_len + self.frames * self.rows * self.cols

    def forced(self, device=None) -> torch.Tensor:
        from .selection import text_sink_blocks

        return text_sink_blocks(self.seq_len, self.seq_len, self.text_len, text_position="first",
                                block_size=self.block_size, device=device)

    def target_density(self, sparsity: float) -> float:
        """Density of AdaSpa's mask without tiers at `sparsity` (row-wise k plus the text sink).

        The candidates kept are the lowest-index ones (equal mass); only a partial
        tail block makes the choice matter, by a few tokens.
        """
        from .selection import select_blocks

        n = -(-self.seq_len // self.block_size)
        mask = select_blocks(torch.zeros(1, 1, n, n), sparsity, block_size=self.block_size, q_len=self.seq_len,
                             kv_len=self.seq_len, forced=self.forced())
        return float(mask.density()[0, 0])

    def static(self, kind: str, density: float):
        from . import baselines

        build = {"window": baselines.window_mask, "spatial": baselines.spatial_mask,
                 "temporal": baselines.temporal_mask}[kind]
        return build(self.frames, self.rows, self.cols, density=density, text_len=self.text_len,
                     text_position="first", block_size=self.block_size)


def static_builder(mask) -> Callable:
    """A builder that returns one fixed mask (broadcast to the call's batch and heads)."""
    def build(q, k, v, step):
        return _expand(mask, q.shape[0], q.shape[1], q.device)
    return build


def pooled_builder(layout: Layout, sparsity: float) -> Callable:
    """MInference / SpargeAttn-like: row-wise top-k on the mean-pooled Q/K estimate of the block mass."""
    from .baselines import pooled_qk_mass
    from .selection import select_blocks

    def build(q, k, v, step):
        estimate = pooled_qk_mass(q, k, block_size=layout.block_size)  # [B, H, nq, nk]
        return select_blocks(estimate, sparsity, block_size=layout.block_size, q_len=q.shape[2],
                             kv_len=k.shape[2], forced=layout.forced(q.device))
    return build


def random_builder(layout: Layout, sparsity: float, seed: int) -> Callable:
    """Random candidate blocks at AdaSpa's row-wise budget (plus the text sink), redrawn per build."""
    from .baselines import random_blocks_mask

    def build(q, k, v, step):
        mask = random_blocks_mask(q.shape[0], q.shape[1], q.shape[2], k.shape[2], 1.0 - sparsity,
                                  block_size=layout.block_size, seed=seed * 1000 + step, forced=layout.forced())
        return _expand(mask, q.shape[0], q.shape[1], q.device)
    return build


def svg_builder(layout: Layout, density: float, *, probes: int = 64, seed: int = 0) -> Callable:
    """Sparse-VideoGen-like: per (batch, head), the spatial or the temporal static mask, whichever
    reproduces the exact attention output of `probes` sampled video queries better."""
    spatial, temporal = layout.static("spatial", density), layout.static("temporal", density)
    g = torch.Generator().manual_seed(seed)
    rows = layout.text_len + torch.randperm(layout.seq_len - layout.text_len, generator=g)[:probes]  # [P]
    bs = layout.block_size

    def build(q, k, v, step):
        batch, heads, length, dim = q.shape
        r = rows.to(q.device)
        scores = (q[:, :, r].float() @ k.float().transpose(-1, -2)) / math.sqrt(dim)  # [B, H, P, L]
        exact = torch.softmax(scores, -1) @ v.float()  # [B, H, P, D]
        errors = []
        for mask in (spatial, temporal):
            block_keep = mask.to_dense()[0, 0].to(q.device)[r // bs]  # [P, nk]
            token_keep = block_keep.repeat_interleave(bs, dim=-1)[:, :length]  # [P, L]
            approx = torch.softmax(scores.masked_fill(~token_keep, float("-inf")), -1) @ v.float()
            errors.append((approx - exact).pow(2).mean((-1, -2)))  # [B, H]
        use_spatial = errors[0] <= errors[1]  # [B, H]
        dense = torch.where(use_spatial[..., None, None], spatial.to_dense().to(q.device),
                            temporal.to_dense().to(q.device))  # [B, H, nq, nk]
        return BlockSparseMask.from_dense(dense.contiguous(), bs, length, length)
    return build


METHODS = ("adaspa", "adaspa_no_tiers", "adaspa_no_lse_cache", "svg_like", "pooled_qk", "window", "random")
METHOD_LABELS = {
    "dense": "dense (reference clip)",
    "adaspa": "AdaSpa",
    "adaspa_no_tiers": "AdaSpa, no head-adaptive tiers",
    "adaspa_no_lse_cache": "AdaSpa, no LSE cache (fused re-search)",
    "svg_like": "Sparse-VideoGen-like spatial/temporal",
    "pooled_qk": "MInference/SpargeAttn-like pooled Q/K",
    "window": "local window",
    "random": "random blocks",
}


@dataclass(frozen=True)
class RunSpec:
    """One sampling run of the benchmark: a method at a sparsity on a schedule."""

    method: str
    sparsity: float = 0.8
    warmup_steps: int = 10
    search_steps: tuple = (10, 30)
    group: str = "main"


def default_runs(steps: int = 50, sparsities=(0.7, 0.8, 0.9)) -> list:
    """The paper's Table 1 grid (every method at every sparsity) plus the warm-up and search-step
    sweeps of AdaSpa at 0.8; schedule steps are scaled by `steps / 50` for shorter runs.

    Example:
        >>> [r.search_steps for r in default_runs() if r.group == "search"]
        [(10,), (10, 20, 30), (10, 20, 30, 40)]
    """
    w, ss = scale_steps((10,), steps)[0], scale_steps((10, 30), steps)
    # Keeping every block reproduces dense attention up to rounding: the PSNR ceiling of the setup.
    runs = [RunSpec("adaspa_no_tiers", 0.0, w, ss, "floor")]
    runs += [RunSpec(m, s, w, ss) for s in sparsities for m in METHODS]
    runs += [RunSpec("adaspa", 0.8, scale_steps((x,), steps)[0], scale_steps((x, 30), steps), "warmup")
             for x in (0, 2, 5)]
    runs += [RunSpec("adaspa", 0.8, w, scale_steps(x, steps), "search")
             for x in ((10,), (10, 20, 30), (10, 20, 30, 40))]
    return runs


def method_factory(spec: RunSpec, layout: Layout, *, backend: str = "auto") -> Callable:
    """`layer_index -> attention callable` for `spec` (every layer its own state and timer)."""
    from .config import AdaSpaConfig
    from .layer import AdaSpaAttention

    config = AdaSpaConfig(block_size=layout.block_size, sparsity=spec.sparsity, warmup_steps=spec.warmup_steps,
                          search_steps=tuple(spec.search_steps), text_len=layout.text_len, text_position="first",
                          backend=backend, min_seq_len=0,
                          head_adaptive=spec.method != "adaspa_no_tiers",
                          lse_cache=spec.method != "adaspa_no_lse_cache")
    if spec.method.startswith("adaspa"):
        return lambda i: TimedAttention(AdaSpaAttention(config), exact_recall=True)
    density = layout.target_density(spec.sparsity)
    if spec.method == "svg_like":
        return lambda i: MaskScheduleAttention(config, svg_builder(layout, density, seed=i), every_step=True)
    if spec.method == "pooled_qk":
        return lambda i: MaskScheduleAttention(config, pooled_builder(layout, spec.sparsity))
    if spec.method == "window":
        window = layout.static("window", density)
        return lambda i: MaskScheduleAttention(config, static_builder(window))
    if spec.method == "random":
        return lambda i: MaskScheduleAttention(config, random_builder(layout, spec.sparsity, seed=i))
    raise ValueError(f"method must be one of {METHODS}, got {spec.method!r}")


def sample_with(model, tokens, noise, factory, *, steps: int, guidance: float) -> dict:
    """Sample with every layer's attention from `factory`; return clips in [0, 1] and the measured use."""
    from .layer import AdaSpaAttention
    from .models.sample import euler_sample

    layers = model.set_attention(factory)
    start = time.perf_counter()
    video = euler_sample(model, tokens, steps=steps, guidance=guidance, noise=noise)
    attn_ms = sum(a.timer.total_ms() for a in layers)
    wall = time.perf_counter() - start
    # Per call: the density of the pairs used, None where the call ran dense. AdaSpa's fused
    # search returns the exact dense output, though its record holds the new mask's density;
    # the other methods run their new mask at their search steps.
    used = [None if r.density is None or (r.phase == "search" and isinstance(getattr(a, "inner", a),
                                                                             AdaSpaAttention))
            else float(r.density.float().mean()) for a in layers for r in a.history]
    overall = [1.0 if d is None else d for d in used]
    sparse = [d for d in used if d is not None]
    # Recall under the exact block mass of each search step's inputs, for every method.
    recalls = [float(r.float().mean()) for a in layers for r in (
        a.search_recalls if getattr(a, "exact_recall", False) else
        [x.recall for x in a.history if x.recall is not None])]
    model.set_attention("dense")
    return {
        "clips": ((video.float().cpu() + 1) / 2).clamp(0, 1),
        "density": sum(overall) / len(overall) if overall else 1.0,
        "sparse_density": sum(sparse) / len(sparse) if sparse else None,
        "recall": sum(recalls) / len(recalls) if recalls else None,
        "attention_ms": attn_ms,
        "wall_s": wall,
    }


def benchmark_captions(n: int, seed: int = 1234) -> list:
    """`n` fixed captions drawn from the training distribution with `seed`."""
    from .models.data import random_labels

    return random_labels(n, generator=torch.Generator().manual_seed(seed)).captions()


def run_benchmark(model, *, clips: int = 32, steps: int = 50, guidance: float = 3.0, block_size: int = 64,
                  runs: Optional[list] = None, backend: str = "auto", seed: int = 0, log=print,
                  max_seconds: Optional[float] = None, on_row: Optional[Callable[[list], None]] = None) -> dict:
    """Sample `clips` fixed captions dense and for every `RunSpec`; return rows of metrics.

    Every run starts from the same noise (seeded by `seed`), so differences come
    from the attention alone. Rows hold `method`, `group`, `sparsity`, schedule,
    `psnr`, `ssim` (means over clips vs the dense clip), `density` (kept fraction of
    token pairs averaged over all layers and steps, dense steps and AdaSpa's fused
    search steps, whose output is the exact dense one, counting 1), `sparse_density`
    (over the steps that ran block-sparse only), `recall` (of the masks at their
    search steps), `attention_ms` (all layers and steps) and `wall_s`. Runs not
    started within `max_seconds` are listed under `skipped`; `on_row(rows)` is
    called after every run (e.g. to save partial results).

    Example:
        >>> from adaspa.models import TinyVideoDiT, DiTConfig
        >>> model = TinyVideoDiT(DiTConfig(dim=32, depth=1, heads=2, frames=2, height=16, width=16)).eval()
        >>> out = run_benchmark(model, clips=1, steps=2, block_size=16, log=None,
        ...                     runs=[RunSpec("window", 0.5, 1, (1,))])
        >>> [r["method"] for r in out["rows"]]
        ['dense', 'window']
    """
    from .models.data import tokenize

    config = model.config
    layout = Layout(config.frames, config.height // config.patch, config.width // config.patch, config.text_len,
                    block_size)
    runs = default_runs(steps) if runs is None else runs
    captions = benchmark_captions(clips)
    tokens = torch.stack([tokenize(c, config.text_len) for c in captions])
    noise = torch.randn(clips, config.frames, config.channels, config.height, config.width,
                        generator=torch.Generator().manual_seed(seed))
    # One untimed clip through dense and AdaSpa first, so kernel compilation and library
    # start-up do not land in the first timed run.
    first = default_runs(steps)[0]
    warm = RunSpec("adaspa_no_lse_cache", 0.8, first.warmup_steps, first.search_steps)
    for factory in (lambda i: TimedAttention(_dense()), method_factory(warm, layout, backend=backend)):
        sample_with(model, tokens[:1], noise[:1], factory, steps=steps, guidance=guidance)
    dense = sample_with(model, tokens, noise, lambda i: TimedAttention(_dense()), steps=steps, guidance=guidance)
    reference = dense["clips"]
    start = time.perf_counter()
    rows = [_row(RunSpec("dense", 0.0, steps, (), "main"), dense, reference)]
    skipped = []
    if log:
        log(_format_row(rows[-1]))
    for spec in runs:
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            skipped.append(spec)
            continue
        result = sample_with(model, tokens, noise, method_factory(spec, layout, backend=backend), steps=steps,
                             guidance=guidance)
        rows.append(_row(spec, result, reference))
        rows[-1]["target_density"] = layout.target_density(spec.sparsity)
        if log:
            log(_format_row(rows[-1]))
        if on_row is not None:
            on_row(rows)
    if skipped and log:
        log(f"time box reached: skipped {len(skipped)} runs")
    return {"rows": rows, "captions": captions, "clips": clips, "steps": steps, "guidance": guidance,
            "block_size": block_size, "seq_len": layout.seq_len, "layout": [layout.frames, layout.rows, layout.cols],
            "text_len": layout.text_len, "skipped": [dataclasses.asdict(r) for r in skipped],
            "dense_clips": reference}


def _dense():
    from .models.dit import DenseAttention

    return DenseAttention()


def _row(spec: RunSpec, result: dict, reference: torch.Tensor) -> dict:
    return {
        "method": spec.method, "group": spec.group, "sparsity": spec.sparsity,
        "warmup_steps": spec.warmup_steps, "search_steps": list(spec.search_steps),
        "psnr": float(psnr(result["clips"], reference).mean()),
        "ssim": float(ssim(result["clips"], reference).mean()),
        **{k: result[k] for k in ("density", "sparse_density", "recall", "attention_ms", "wall_s")},
    }


def _fmt(value, spec: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return format(value, spec)


def _format_row(row: dict) -> str:
    return (f"{row['method']:>20s} s={row['sparsity']:.2f} warm={row['warmup_steps']:>2d} "
            f"search={tuple(row['search_steps'])!s:<16s} PSNR {_fmt(row['psnr'], '.2f'):>6s} "
            f"SSIM {_fmt(row['ssim'], '.4f')} density {_fmt(row['sparse_density'], '.3f')} "
            f"recall {_fmt(row['recall'], '.3f')} attn {row['attention_ms']:.0f} ms")


def plot_fidelity(rows: list):
    """PSNR vs sparsity per method, and AdaSpa's PSNR over the warm-up and search-step sweeps. Returns a Figure.

    Example:
        >>> fig = plot_fidelity([{"method": "adaspa", "group": "main", "sparsity": 0.8, "psnr": 20.0,
        ...                       "warmup_steps": 10, "search_steps": [10, 30]}])
        >>> len(fig.axes)
        3
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), constrained_layout=True)
    main = [r for r in rows if r["group"] == "main" and r["method"] != "dense"]
    for method in METHODS:
        pts = sorted((r["sparsity"], r["psnr"]) for r in main if r["method"] == method)
        if pts:
            axes[0].plot(*zip(*pts), marker="o", label=METHOD_LABELS[method],
                         linewidth=2.5 if method == "adaspa" else 1.2)
    axes[0].set(xlabel="sparsity", ylabel="PSNR vs dense clip (dB)", title="methods at equal block budget")
    axes[0].legend(fontsize=7)
    for ax, group, key, label in ((axes[1], "warmup", "warmup_steps", "dense warm-up steps"),
                                  (axes[2], "search", "search_steps", "search steps")):
        sweep = [r for r in rows if r["method"] == "adaspa" and r["sparsity"] == 0.8
                 and (r["group"] == group or (r["group"] == "main"))]
        if group == "warmup":
            sweep = [r for r in sweep if r["group"] == "warmup" or tuple(r["search_steps"]) == tuple(
                min((x["search_steps"] for x in sweep), key=len))]
            sweep.sort(key=lambda r: r["warmup_steps"])
            names = [str(r["warmup_steps"]) for r in sweep]
        else:
            sweep = [r for r in sweep if r["group"] == "search" or r["group"] == "main"]
            sweep.sort(key=lambda r: (len(r["search_steps"]), r["search_steps"]))
            names = ["{" + ",".join(map(str, r["search_steps"])) + "}" for r in sweep]
        ax.bar(range(len(sweep)), [r["psnr"] for r in sweep], color="tab:blue")
        ax.set_xticks(range(len(sweep)), names)
        ax.set(xlabel=label, ylabel="PSNR (dB)", title=f"AdaSpa s=0.8: {label}")
        if sweep:
            low = min(r["psnr"] for r in sweep)
            ax.set_ylim(low - 3, max(r["psnr"] for r in sweep) + 1)
    return fig


def _table(rows: list, columns: list) -> str:
    head = "| " + " | ".join(c[0] for c in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(c[1](r) for c in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


COLUMNS = [
    ("method", lambda r: "keep every block (rounding floor)" if r["group"] == "floor"
     else METHOD_LABELS.get(r["method"], r["method"])),
    ("sparsity", lambda r: "-" if r["method"] == "dense" else f"{r['sparsity']:.1f}"),
    ("warm-up", lambda r: str(r["warmup_steps"]) if r["method"] != "dense" else "all dense"),
    ("search steps", lambda r: "{" + ",".join(map(str, r["search_steps"])) + "}" if r["search_steps"] else "-"),
    ("PSNR (dB)", lambda r: _fmt(r["psnr"], ".2f")),
    ("SSIM", lambda r: _fmt(r["ssim"], ".4f")),
    ("density, sparse steps", lambda r: _fmt(r["sparse_density"], ".3f")),
    ("density, all steps", lambda r: _fmt(r["density"], ".3f")),
    ("recall", lambda r: _fmt(r["recall"], ".3f")),
    ("attention (ms, all layers and steps)", lambda r: _fmt(r["attention_ms"], ".0f")),
]


def findings(rows: list) -> list:
    """Sentences comparing AdaSpa with every other method and ablation, computed from `rows`."""
    out = []
    main = [r for r in rows if r["group"] == "main" and r["method"] != "dense"]
    for s in sorted({r["sparsity"] for r in main}):
        at = {r["method"]: r for r in main if r["sparsity"] == s}
        if "adaspa" not in at:
            continue
        ada = at["adaspa"]
        ranked = sorted(at.values(), key=lambda r: -r["psnr"])
        place = [r["method"] for r in ranked].index("adaspa") + 1
        beaten = [f"{METHOD_LABELS[r['method']]} ({r['psnr']:.2f} dB, SSIM {r['ssim']:.4f})"
                  for r in ranked if r["method"] != "adaspa" and r["psnr"] > ada["psnr"]]
        line = (f"Sparsity {s:.1f}: AdaSpa reaches {ada['psnr']:.2f} dB PSNR / SSIM {ada['ssim']:.4f}, "
                f"rank {place} of {len(ranked)} by PSNR.")
        line += (" Higher PSNR than AdaSpa: " + "; ".join(beaten) + ".") if beaten else \
            " No other method has higher PSNR."
        ssim_beaten = [METHOD_LABELS[r["method"]] for r in ranked if r["method"] != "adaspa"
                       and r["ssim"] > ada["ssim"]]
        if ssim_beaten:
            line += " Higher SSIM than AdaSpa: " + ", ".join(ssim_beaten) + "."
        denser = [f"{METHOD_LABELS[r['method']]} ({r['sparse_density']:.3f})" for r in ranked
                  if r["sparse_density"] is not None and r["sparse_density"] > 1.1 * ada["sparse_density"]]
        if denser:
            line += (f" Caveat: its structure kept more than AdaSpa's density ({ada['sparse_density']:.3f}) for "
                     + ", ".join(denser) + ", which favors it.")
        out.append(line)
    by_group = {}
    for r in rows:
        if r["method"] == "adaspa" and r["sparsity"] == 0.8:
            by_group.setdefault("warmup", []).append(r)
    warm = sorted({r["warmup_steps"]: r for r in by_group.get("warmup", []) if r["group"] in ("warmup", "main")
                   and len(r["search_steps"]) == 2}.values(), key=lambda r: r["warmup_steps"])
    if len(warm) > 1:
        best = max(warm, key=lambda r: r["psnr"])
        out.append("Warm-up sweep (AdaSpa, s=0.8): " + ", ".join(
            f"{r['warmup_steps']} steps {r['psnr']:.2f} dB" for r in warm) + f"; best: {best['warmup_steps']}.")
    search = [r for r in rows if r["method"] == "adaspa" and r["sparsity"] == 0.8
              and (r["group"] == "search" or (r["group"] == "main"))]
    if len(search) > 1:
        best = max(search, key=lambda r: r["psnr"])
        out.append("Search-step sweep (AdaSpa, s=0.8, warm-up "
                   f"{search[0]['warmup_steps']}): " + ", ".join(
                       "{" + ",".join(map(str, r["search_steps"])) + "} " + f"{r['psnr']:.2f} dB"
                       for r in sorted(search, key=lambda r: len(r["search_steps"])))
                   + ". Best: {" + ",".join(map(str, best["search_steps"])) + "}.")
    return out


KEEP_MARKER = "<!-- written by hand below this line; python -m adaspa.fidelity keeps it -->"


def write_report(result: dict, path: str, *, card: str, plot_name: Optional[str] = None, notes: str = "") -> str:
    """Write the markdown report of `run_benchmark`'s `result` to `path`; returns the text.

    Whatever an existing file at `path` holds below `KEEP_MARKER` (a hand-written
    discussion of the numbers) is carried over to the new file.
    """
    rows = result["rows"]
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    main = [r for r in rows if r["group"] in ("main", "floor")]
    main.sort(key=lambda r: (r["method"] != "dense", r["group"] != "floor", r["sparsity"], METHODS.index(r["method"])
                             if r["method"] in METHODS else -1))
    sweeps = [r for r in rows if r["group"] in ("warmup", "search")
              or (r["group"] == "main" and r["method"] == "adaspa" and r["sparsity"] == 0.8)]
    sweeps.sort(key=lambda r: (r["group"] == "search", r["warmup_steps"], len(r["search_steps"])))
    text = [
        "# Fidelity benchmark (generated by `python -m adaspa.fidelity`)",
        "",
        f"Measured on **{card}**, {today}, torch {torch.__version__}. Model: the shipped tiny DiT "
        f"(`adaspa.models`, docs/model.md), {result['seq_len']} tokens per clip "
        f"({result['text_len']} text first + {' x '.join(map(str, result['layout']))} video), block size {result['block_size']}, {result['clips']} clips "
        f"(fixed captions and seeds), {result['steps']} Euler steps, classifier-free guidance "
        f"{result['guidance']} (as a batch of 2, so every method sees 2 x {result['clips']} batch elements).",
        "",
        "PSNR and SSIM are of each method's clip against the dense clip from the same noise, averaged "
        "over clips. Density is the kept fraction of (query, key) token pairs (AdaSpa's fused search "
        "step, whose output is the exact dense one, counts as dense); recall is the share of "
        "the exact block attention mass the masks keep at their search steps (measured, for the non-AdaSpa "
        "methods, outside their timed section). Every method keeps the text rows and columns and follows "
        "AdaSpa's schedule: dense until the first search step, a new mask at each search step (the "
        "Sparse-VideoGen-like method re-profiles at every step, as SVG does). Window and "
        "Sparse-VideoGen-like masks are static and matched to AdaSpa's density as closely as their "
        "structure allows; pooled Q/K and random keep exactly AdaSpa's per-row block count.",
        "",
        notes,
        "",
        *([f"Time box reached: {len(result['skipped'])} runs not measured: "
           + ", ".join(f"{r['method']} s={r['sparsity']} search {tuple(r['search_steps'])}" for r in result["skipped"])
           + ".", ""] if result.get("skipped") else []),
        "## Methods at equal density (the paper's Table 1)",
        "",
        _table(main, COLUMNS),
        "",
        "## AdaSpa ablations: dense warm-up and search steps (s = 0.8)",
        "",
        _table(sweeps, COLUMNS),
        "",
        "## Findings",
        "",
        *[f"- {line}" for line in findings(rows)],
        "",
    ]
    if plot_name:
        text += [f"![fidelity plot]({plot_name})", ""]
    kept = ""
    if os.path.exists(path):
        with open(path) as fh:
            old = fh.read()
        if KEEP_MARKER in old:
            kept = old.split(KEEP_MARKER, 1)[1]
    text += [KEEP_MARKER]
    out = "\n".join(text) + (kept if kept else "\n")
    with open(path, "w") as fh:
        fh.write(out)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="AdaSpa fidelity benchmark on the shipped tiny DiT")
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.7, 0.8, 0.9])
    parser.add_argument("--weights", default=None, help="safetensors file (default: the shipped weights)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16" if torch.cuda.is_available() else "float32")
    parser.add_argument("--backend", default="auto", choices=("auto", "kernels", "reference"))
    parser.add_argument("--out-dir", default="docs", help="where fidelity.md, fidelity.png, fidelity.json go")
    parser.add_argument("--notes", default="", help="a paragraph added to the report (e.g. a reduced run)")
    parser.add_argument("--max-minutes", type=float, default=None, help="start no new run after this long")
    args = parser.parse_args(argv)
    from .models import default_weights_path, load_weights

    model = load_weights(args.weights or default_weights_path(), device=args.device,
                         dtype=getattr(torch, args.dtype))
    if args.device.startswith("cuda"):
        card = torch.cuda.get_device_name(args.device)
    else:
        card = f"CPU ({torch.get_num_threads()} threads)"
    card += f", model in {args.dtype}"
    os.makedirs(args.out_dir, exist_ok=True)

    def save_partial(rows):
        with open(os.path.join(args.out_dir, "fidelity.json"), "w") as fh:
            json.dump({"rows": rows, "card": card, "partial": True}, fh, indent=1)

    result = run_benchmark(model, clips=args.clips, steps=args.steps, guidance=args.guidance,
                           runs=default_runs(args.steps, tuple(args.sparsities)), backend=args.backend,
                           max_seconds=None if args.max_minutes is None else 60 * args.max_minutes,
                           on_row=save_partial)
    fig = plot_fidelity(result["rows"])
    fig.savefig(os.path.join(args.out_dir, "fidelity.png"), dpi=110)
    with open(os.path.join(args.out_dir, "fidelity.json"), "w") as fh:
        json.dump({k: v for k, v in result.items() if k != "dense_clips"} | {"card": card}, fh, indent=1)
    write_report(result, os.path.join(args.out_dir, "fidelity.md"), card=card, plot_name="fidelity.png",
                 notes=args.notes)
    print(f"wrote {args.out_dir}/fidelity.md, fidelity.png, fidelity.json")


if __name__ == "__main__":
    main()
