"""Plot helpers for AdaSpa: block mass, selected masks, recall, LSE, schedule, benchmarks.

Every helper returns a matplotlib `Figure` and never calls `plt.show()` or
`savefig`; the caller decides (a notebook displays the returned figure, the demo
saves it). Figures are built with `matplotlib.figure.Figure` directly, not with
pyplot, so nothing is registered globally and the helpers run headless.

matplotlib is an optional dependency: install it with `pip install adaspa[viz]`.

A *layout* describes where text and frames sit in the token sequence, so heat
maps can draw the modality and frame boundaries. It is an
`adaspa.synthetic.SyntheticVideoConfig` or any object or mapping with
`text_len`, `text_position` ("first" | "last"), `frames`, and either
`tokens_per_frame` or `height` and `width`; `block_size` is read from it when
present (64 otherwise).

Example:
    >>> import torch
    >>> from adaspa.viz import plot_block_mass
    >>> mass = torch.rand(1, 2, 5, 5)                                 # [B, H, nq, nk]: 320 tokens in blocks of 64
    >>> layout = dict(text_len=64, text_position="last", frames=2, tokens_per_frame=128)
    >>> fig = plot_block_mass(mass, head=1, layout=layout)
    >>> len(fig.axes[0].lines)                                        # 1 text + 1 frame boundary, each as a row and a column line
    4
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from typing import NamedTuple, Optional

import torch

__all__ = [
    "PHASE_COLORS",
    "plot_benchmark",
    "plot_block_mass",
    "plot_head_masks",
    "plot_lse_distribution",
    "plot_recall_curves",
    "plot_recall_over_steps",
    "plot_schedule",
]

PHASE_COLORS = {
    "dense": "#bdbdbd",
    "search": "#d62728",
    "cached_search": "#ff7f0e",
    "sparse": "#1f77b4",
}
"""Color of each schedule phase (`AdaSpaAttention.phase` values), shared by the schedule plots."""

# Tier codes drawn by plot_head_masks: 0 = dropped block, then kept blocks by head tier.
_TIER_NAMES = ("dropped", "dense tier (lower sparsity)", "base tier", "sparse tier (higher sparsity)")
_TIER_COLORS = ("#ffffff", "#2ca02c", "#1f77b4", "#9467bd")


def _mpl():
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(
            "adaspa.viz needs matplotlib; install it with `pip install adaspa[viz]`"
        ) from err
    return matplotlib, Figure


def _new_figure(nrows=1, ncols=1, *, figsize=None, **kwargs):
    _, Figure = _mpl()
    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
    return fig, axes


def _as_cpu(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"{name} must be a tensor or a sequence of numbers, got {type(x).__name__}") from err
    return x.detach().to("cpu")


class _Layout(NamedTuple):
    text_len: int
    text_position: str
    frames: int
    tokens_per_frame: int
    block_size: int

    @property
    def length(self) -> int:
        return self.text_len + self.frames * self.tokens_per_frame

    def boundaries(self):
        """Token offsets of the text/video boundary and of the frame boundaries."""
        video_start = self.text_len if self.text_position == "first" else 0
        text = []
        if self.text_len > 0:
            text = [self.text_len] if self.text_position == "first" else [self.frames * self.tokens_per_frame]
        frames = [video_start + f * self.tokens_per_frame for f in range(1, self.frames)]
        return text, frames


def _read_layout(layout, block_size: Optional[int] = None) -> Optional[_Layout]:
    if layout is None:
        return None
    if isinstance(layout, Mapping):
        def get(key, default=None):
            return layout.get(key, default)
    else:
        def get(key, default=None):
            return getattr(layout, key, default)
    frames = get("frames")
    tokens_per_frame = get("tokens_per_frame")
    if tokens_per_frame is None and get("height") is not None and get("width") is not None:
        tokens_per_frame = int(get("height")) * int(get("width"))
    if frames is None or tokens_per_frame is None:
        raise ValueError("layout must give `frames` and `tokens_per_frame` (or `height` and `width`), "
                         f"got {layout!r}")
    text_position = get("text_position", "last")
    if text_position not in ("first", "last"):
        raise ValueError(f"layout.text_position must be 'first' or 'last', got {text_position!r}")
    if block_size is None:
        block_size = get("block_size", 64)
    return _Layout(int(get("text_len", 0) or 0), text_position, int(frames), int(tokens_per_frame),
                   int(block_size))


def _draw_boundaries(ax, layout: _Layout, nq: int, nk: int, *, linewidth=1.0) -> None:
    need_q, need_k = math.ceil(layout.length / layout.block_size), math.ceil(layout.length / layout.block_size)
    if (nq, nk) != (need_q, need_k):
        raise ValueError(
            f"layout describes {layout.length} tokens = {need_q} blocks of {layout.block_size}, "
            f"but the map has nq={nq}, nk={nk} blocks"
        )
    text, frames = layout.boundaries()
    # Pixel p of imshow spans [p - 0.5, p + 0.5], so token t sits at t / bs - 0.5.
    for offsets, style in ((text, dict(color="red", linestyle="-")), (frames, dict(color="black", linestyle=":"))):
        for t in offsets:
            x = t / layout.block_size - 0.5
            ax.axvline(x, linewidth=linewidth, **style)
            ax.axhline(x, linewidth=linewidth, **style)


def plot_block_mass(mass, *, batch: int = 0, head: int = 0, layout=None, ax=None,
                    block_size: Optional[int] = None):
    """Heat map of one head's block attention mass on a log10 color scale.

    Args:
        mass: float `[B, H, nq, nk]`, e.g. from `attention_with_block_mass`.
        batch, head: which map to draw.
        layout: optional token layout (see the module docstring); draws the
            text/video boundary (red, solid) and frame boundaries (black, dotted)
            as one row line and one column line each.
        ax: draw into this `Axes` instead of a new figure.
        block_size: overrides the layout's block size.

    Returns:
        The `Figure`. The image holds `log10(mass[batch, head])`, with zero mass
        clamped to the smallest positive mass of the map.

    Example:
        >>> mass = torch.rand(2, 3, 4, 5)
        >>> fig = plot_block_mass(mass, batch=1, head=2)
        >>> fig.axes[0].images[0].get_array().shape
        (4, 5)
    """
    mass = _as_cpu(mass, "mass")
    if mass.dim() != 4:
        raise ValueError(f"mass must be 4-D [B, H, nq, nk], got shape {tuple(mass.shape)}")
    if not 0 <= batch < mass.shape[0]:
        raise ValueError(f"batch must be in [0, {mass.shape[0]}), got {batch}")
    if not 0 <= head < mass.shape[1]:
        raise ValueError(f"head must be in [0, {mass.shape[1]}), got {head}")
    grid = mass[batch, head].to(torch.float64)  # [nq, nk]
    if not bool(torch.isfinite(grid).all()) or bool((grid < 0).any()):
        raise ValueError("mass must be finite and non-negative")
    positive = grid[grid > 0]
    if positive.numel() == 0:
        raise ValueError(f"mass[{batch}, {head}] is all zero; nothing to draw on a log scale")
    image = torch.log10(grid.clamp_min(float(positive.min())))
    lay = _read_layout(layout, block_size)

    if ax is None:
        fig, axes = _new_figure(figsize=(5.2, 4.4))
        ax = axes[0, 0]
    else:
        fig = ax.figure
    im = ax.imshow(image.numpy(), cmap="magma", interpolation="nearest", aspect="auto")
    fig.colorbar(im, ax=ax, label="log10 block mass")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if lay is not None:
        _draw_boundaries(ax, lay, *grid.shape)
    ax.set_xlabel("key block")
    ax.set_ylabel("query block")
    ax.set_title(f"block mass, batch {batch}, head {head}")
    return fig


def _tier_codes(sparsity: torch.Tensor) -> torch.Tensor:
    """Tier code (1 dense, 2 base, 3 sparse) per head from per-head sparsities `[H]`."""
    values = torch.unique(sparsity)
    codes = torch.full(sparsity.shape, 2, dtype=torch.long)
    if values.numel() == 2:
        codes = torch.where(sparsity == values[0], 1, 3)
    elif values.numel() == 3:
        codes = torch.where(sparsity == values[0], 1, torch.where(sparsity == values[2], 3, 2))
    elif values.numel() > 3:
        # Arbitrary per-head budgets: thirds of the observed range.
        lo, hi = float(values[0]), float(values[-1])
        third = (sparsity - lo) / (hi - lo)
        codes = 1 + (third > 1 / 3).long() + (third > 2 / 3).long()
    return codes


def plot_head_masks(mask, *, head_sparsity=None, batch: int = 0, layout=None, max_heads: Optional[int] = None):
    """Grid of the selected block masks of every head, kept blocks colored by head tier.

    Args:
        mask: a `BlockSparseMask` or a bool tensor `[B, H, nq, nk]` (True = kept).
        head_sparsity: optional float `[B, H]` (e.g. `head_adaptive_sparsity`);
            its distinct values per batch element give the tiers: with three
            values the lowest is the dense tier, the middle the base tier, the
            highest the sparse tier; with two, dense and sparse; with one, base;
            with more, thirds of their range. Without it every head is base tier.
        batch: which batch element to draw.
        layout: optional token layout (module docstring); draws boundaries.
        max_heads: draw only the first `max_heads` heads.

    Returns:
        A `Figure` with one `Axes` per drawn head. Each image holds 0 for a
        dropped block and the head's tier code (1 dense, 2 base, 3 sparse) for a
        kept one; titles give the head, its sparsity and its kept fraction of blocks.

    Example:
        >>> from adaspa import BlockSparseMask
        >>> dense = torch.rand(1, 4, 3, 3) > 0.5                        # [B, H, nq, nk]
        >>> mask = BlockSparseMask.from_dense(dense, 64, 192, 192)
        >>> fig = plot_head_masks(mask, head_sparsity=torch.tensor([[0.9, 0.8, 0.8, 0.7]]))
        >>> len(fig.axes)
        4
    """
    from .mask import BlockSparseMask

    block_size = None
    if isinstance(mask, BlockSparseMask):
        block_size = mask.block_size
        dense = mask.to_dense().cpu()
    elif isinstance(mask, torch.Tensor) and mask.dtype == torch.bool and mask.dim() == 4:
        dense = mask.detach().cpu()
    else:
        raise TypeError("mask must be a BlockSparseMask or a bool tensor [B, H, nq, nk], "
                        f"got {type(mask).__name__}")
    batches, heads, nq, nk = dense.shape
    if not 0 <= batch < batches:
        raise ValueError(f"batch must be in [0, {batches}), got {batch}")
    if head_sparsity is not None:
        head_sparsity = _as_cpu(head_sparsity, "head_sparsity").to(torch.float32)
        if head_sparsity.dim() == 1:
            head_sparsity = head_sparsity.unsqueeze(0)
        if tuple(head_sparsity.shape) != (batches, heads) and tuple(head_sparsity.shape) != (1, heads):
            raise ValueError(f"head_sparsity must have shape [B={batches}, H={heads}], "
                             f"got {tuple(head_sparsity.shape)}")
        row = head_sparsity[batch if head_sparsity.shape[0] > 1 else 0]
        codes = _tier_codes(row)
    else:
        row = None
        codes = torch.full((heads,), 2, dtype=torch.long)
    if max_heads is not None and max_heads < 1:
        raise ValueError(f"max_heads must be >= 1 or None, got {max_heads}")
    shown = heads if max_heads is None else min(heads, max_heads)
    lay = _read_layout(layout, block_size)

    matplotlib, _ = _mpl()
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.patches import Patch

    ncols = math.ceil(math.sqrt(shown))
    nrows = math.ceil(shown / ncols)
    fig, axes = _new_figure(nrows, ncols, figsize=(2.6 * ncols + 0.4, 2.6 * nrows + 0.6))
    cmap = ListedColormap(_TIER_COLORS)
    norm = BoundaryNorm([-0.5, 0.5, 1.5, 2.5, 3.5], cmap.N)
    flat = axes.ravel()
    for h in range(shown):
        ax = flat[h]
        image = dense[batch, h].long() * codes[h]  # [nq, nk]
        ax.imshow(image.numpy(), cmap=cmap, norm=norm, interpolation="nearest", aspect="auto")
        if lay is not None:
            _draw_boundaries(ax, lay, nq, nk, linewidth=0.6)
        kept = float(dense[batch, h].float().mean())
        label = f"head {h}" + (f": s={float(row[h]):.2f}" if row is not None else "")
        ax.set_title(f"{label}\nkept {kept:.2f} of blocks", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in flat[shown:]:
        fig.delaxes(ax)
    used = sorted(set(codes[:shown].tolist()))
    fig.legend(handles=[Patch(facecolor=_TIER_COLORS[c], edgecolor="gray", label=_TIER_NAMES[c]) for c in used],
               loc="outside lower center", ncols=len(used), fontsize=8)
    fig.suptitle(f"selected blocks per head (batch {batch})")
    return fig


def _series(values, name: str) -> torch.Tensor:
    t = _as_cpu(values, name).to(torch.float64)
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    return t


def plot_recall_curves(curves, *, ax=None, title: str = "recall vs sparsity"):
    """Recall against sparsity, one line per selection method.

    Args:
        curves: `{method name: (sparsities [S], recalls [S])}`; each a 1-D
            sequence or tensor of floats in [0, 1].
        ax: draw into this `Axes` instead of a new figure.
        title: the axes title.

    Returns:
        A `Figure` with one line per method, labeled with the method name.

    Example:
        >>> fig = plot_recall_curves({"block top-k": ([0.5, 0.9], [0.95, 0.7]),
        ...                           "window": ([0.5, 0.9], [0.6, 0.3])})
        >>> [line.get_label() for line in fig.axes[0].lines]
        ['block top-k', 'window']
    """
    if not isinstance(curves, Mapping) or not curves:
        raise TypeError("curves must be a non-empty dict {name: (sparsities, recalls)}")
    if ax is None:
        fig, axes = _new_figure(figsize=(5.5, 4))
        ax = axes[0, 0]
    else:
        fig = ax.figure
    for name, pair in curves.items():
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(f"curves[{name!r}] must be a (sparsities, recalls) pair")
        x, y = _series(pair[0], f"curves[{name!r}][0]"), _series(pair[1], f"curves[{name!r}][1]")
        if x.shape != y.shape:
            raise ValueError(f"curves[{name!r}]: sparsities {tuple(x.shape)} and recalls {tuple(y.shape)} differ")
        ax.plot(x.numpy(), y.numpy(), marker="o", markersize=3, label=str(name))
    ax.set_xlabel("sparsity")
    ax.set_ylabel("recall (fraction of attention mass kept)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    return fig


def _steps_and_values(by_step, name: str):
    if isinstance(by_step, Mapping):
        items = list(by_step.items())
    elif isinstance(by_step, (list, tuple)):
        items = list(enumerate(by_step))
    else:
        raise TypeError(f"{name} must be a dict {{step: value}} or a list indexed by step, got {type(by_step).__name__}")
    if not items:
        raise ValueError(f"{name} is empty")
    return [int(s) for s, _ in items], [v for _, v in items]


def plot_lse_distribution(lse_by_step, *, batch=None, head=None, bins: int = 60):
    """LSE histograms per denoising step and their drift from the first step.

    Args:
        lse_by_step: `{step: lse [B, H, Lq]}` (or a list indexed by step), the
            natural-log LSE each step's attention produced; all the same shape.
        batch, head: restrict to one batch element / head (all by default).
        bins: histogram bins.

    Returns:
        A `Figure` with two `Axes`: left, one step-filled histogram of the finite
        LSE values per step; right, the drift `|lse_t - lse_first|` over steps
        (one line of the mean, one of the max), i.e. the error an LSE cached at
        the first step would carry into step `t`.

    Example:
        >>> lse0 = torch.randn(1, 2, 128)                               # [B, H, Lq]
        >>> fig = plot_lse_distribution({10: lse0, 30: lse0 + 0.1})
        >>> [round(float(v), 3) for v in fig.axes[1].lines[0].get_ydata()]
        [0.0, 0.1]
    """
    steps, values = _steps_and_values(lse_by_step, "lse_by_step")
    picked = []
    for s, v in zip(steps, values):
        t = _as_cpu(v, f"lse_by_step[{s}]").to(torch.float64)
        if t.dim() != 3:
            raise ValueError(f"lse_by_step[{s}] must be [B, H, Lq], got shape {tuple(t.shape)}")
        if batch is not None:
            t = t[batch:batch + 1]
        if head is not None:
            t = t[:, head:head + 1]
        picked.append(t)
    first = picked[0]
    for s, t in zip(steps, picked):
        if t.shape != first.shape:
            raise ValueError(f"lse_by_step[{s}] has shape {tuple(t.shape)}, the first step {tuple(first.shape)}")

    fig, axes = _new_figure(1, 2, figsize=(10, 3.8))
    hist_ax, drift_ax = axes[0]
    finite_all = torch.cat([t[torch.isfinite(t)] for t in picked])
    if finite_all.numel() == 0:
        raise ValueError("lse_by_step holds no finite values")
    edges = torch.linspace(float(finite_all.min()), float(finite_all.max()) + 1e-9, bins + 1).numpy()
    for s, t in zip(steps, picked):
        hist_ax.hist(t[torch.isfinite(t)].numpy(), bins=edges, histtype="step", label=f"step {s}")
    hist_ax.set_xlabel("lse (natural log)")
    hist_ax.set_ylabel("query tokens")
    hist_ax.set_title("LSE distribution per step")
    hist_ax.legend(fontsize=8)

    both = torch.isfinite(first)
    means, maxes = [], []
    for t in picked:
        ok = both & torch.isfinite(t)
        diff = (t - first).abs()[ok]
        means.append(float(diff.mean()) if diff.numel() else float("nan"))
        maxes.append(float(diff.max()) if diff.numel() else float("nan"))
    drift_ax.plot(steps, means, marker="o", label="mean |lse_t - lse_first|")
    drift_ax.plot(steps, maxes, marker="s", linestyle="--", label="max |lse_t - lse_first|")
    drift_ax.set_xlabel("denoising step")
    drift_ax.set_ylabel("drift (nats)")
    drift_ax.set_title(f"LSE drift from step {steps[0]}")
    drift_ax.grid(alpha=0.3)
    drift_ax.legend(fontsize=8)
    return fig


def _phase_table(phases_per_layer):
    if isinstance(phases_per_layer, Mapping):
        names = [str(k) for k in phases_per_layer]
        rows = [list(v) for v in phases_per_layer.values()]
    elif isinstance(phases_per_layer, (list, tuple)) and phases_per_layer and not isinstance(phases_per_layer[0], str):
        names = [f"layer {i}" for i in range(len(phases_per_layer))]
        rows = [list(v) for v in phases_per_layer]
    else:
        raise TypeError("phases_per_layer must be a dict {layer: [phase per step]} or a list of such lists")
    if not rows or not all(rows):
        raise ValueError("phases_per_layer needs at least one layer with at least one step")
    order = list(PHASE_COLORS)
    for row in rows:
        for p in row:
            if not isinstance(p, str):
                raise TypeError(f"phases must be strings, got {p!r}")
            if p not in order:
                order.append(p)
    return names, rows, order


def plot_schedule(phases_per_layer, *, ax=None):
    """Timeline of which phase each layer ran at each denoising step.

    Args:
        phases_per_layer: `{layer name: [phase of step 0, phase of step 1, ...]}`
            or a list of such lists; phases are `AdaSpaAttention.phase` strings
            ("dense", "search", "cached_search", "sparse"; others get extra colors).
            Layers may have run different numbers of steps.
        ax: draw into this `Axes` instead of a new figure.

    Returns:
        A `Figure` whose image is `[layers, steps]`, each cell the index of its
        phase in `PHASE_COLORS` order (-1 where a layer ran fewer steps), with a
        legend of the phases that occur.

    Example:
        >>> phases = ["dense"] * 10 + ["search"] + ["sparse"] * 19 + ["cached_search"] + ["sparse"] * 19
        >>> fig = plot_schedule({"layer 0": phases, "layer 1": phases})
        >>> fig.axes[0].images[0].get_array().shape                     # [layers, steps]
        (2, 50)
    """
    names, rows, order = _phase_table(phases_per_layer)
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.patches import Patch

    steps = max(len(r) for r in rows)
    codes = torch.full((len(rows), steps), -1, dtype=torch.long)  # [layers, steps]
    for i, row in enumerate(rows):
        codes[i, :len(row)] = torch.tensor([order.index(p) for p in row])
    extra = ["#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
    colors = [PHASE_COLORS.get(p, extra[(i - len(PHASE_COLORS)) % len(extra)]) for i, p in enumerate(order)]
    cmap = ListedColormap(["#ffffff"] + colors)
    norm = BoundaryNorm([b - 0.5 for b in range(-1, len(order) + 1)], cmap.N)

    if ax is None:
        fig, axes = _new_figure(figsize=(min(14, 3 + 0.18 * steps), 1.2 + 0.35 * len(rows)))
        ax = axes[0, 0]
    else:
        fig = ax.figure
    ax.imshow(codes.numpy(), cmap=cmap, norm=norm, interpolation="nearest", aspect="auto")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("denoising step")
    ax.set_title("AdaSpa schedule: phase per step and layer")
    used = sorted(set(codes[codes >= 0].tolist()))
    ax.legend(handles=[Patch(facecolor=colors[c], label=order[c]) for c in used],
              loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    return fig


def plot_recall_over_steps(recalls, *, steps=None, phases=None, ax=None, title: str = "recall of the mask in use"):
    """Recall of the mask in use at every denoising step, with the phases shaded.

    Args:
        recalls: per-step recall as a 1-D sequence or tensor `[S]` (one line),
            a tensor `[S, H]` (one line per head), or `{label: [S]}` (one line per
            label). NaN marks steps without a recall (e.g. dense steps); the line
            breaks there.
        steps: the step number of each entry (`0..S-1` by default).
        phases: optional phase string per step (`[S]`); each step's background
            is shaded with its `PHASE_COLORS` color.
        ax: draw into this `Axes` instead of a new figure.
        title: the axes title.

    Returns:
        A `Figure` with one line per series, y in [0, 1].

    Example:
        >>> r = [float("nan")] * 10 + [0.95] * 20 + [0.93] * 20
        >>> phases = ["dense"] * 10 + ["search"] + ["sparse"] * 19 + ["cached_search"] + ["sparse"] * 19
        >>> fig = plot_recall_over_steps(r, phases=phases)
        >>> len(fig.axes[0].lines)
        1
    """
    if isinstance(recalls, Mapping):
        series = {str(k): _series(v, f"recalls[{k!r}]") for k, v in recalls.items()}
    else:
        t = _as_cpu(recalls, "recalls").to(torch.float64)
        if t.dim() == 1:
            series = {"recall": t}
        elif t.dim() == 2:
            series = {f"head {h}": t[:, h] for h in range(t.shape[1])}
        else:
            raise ValueError(f"recalls must be [S], [S, H] or a dict of [S], got shape {tuple(t.shape)}")
    if not series:
        raise ValueError("recalls is empty")
    length = len(next(iter(series.values())))
    for name, s in series.items():
        if len(s) != length:
            raise ValueError(f"recalls[{name!r}] has {len(s)} steps, expected {length}")
    x = torch.arange(length) if steps is None else _series(steps, "steps")
    if len(x) != length:
        raise ValueError(f"steps has {len(x)} entries, recalls {length}")
    if phases is not None and len(phases) != length:
        raise ValueError(f"phases has {len(phases)} entries, recalls {length}")

    if ax is None:
        fig, axes = _new_figure(figsize=(8, 3.5))
        ax = axes[0, 0]
    else:
        fig = ax.figure
    if phases is not None:
        from matplotlib.patches import Patch

        for xi, p in zip(x.tolist(), phases):
            ax.axvspan(xi - 0.5, xi + 0.5, color=PHASE_COLORS.get(p, "#eeeeee"), alpha=0.25, linewidth=0)
        seen = list(dict.fromkeys(phases))
        phase_handles = [Patch(facecolor=PHASE_COLORS.get(p, "#eeeeee"), alpha=0.4, label=p) for p in seen]
    else:
        phase_handles = []
    for name, s in series.items():
        ax.plot(x.numpy(), s.numpy(), marker=".", label=name)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("denoising step")
    ax.set_ylabel("recall")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=handles + phase_handles, fontsize=8, loc="lower left")
    return fig


_BENCH_REQUIRED = ("provider", "L", "block_size", "density", "ms", "tflops")


def _read_benchmark(csv_path):
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{csv_path} has no rows")
    missing = [c for c in _BENCH_REQUIRED if c not in rows[0]]
    if missing:
        raise ValueError(f"{csv_path} lacks columns {missing}; expected at least {list(_BENCH_REQUIRED)}")
    for r in rows:
        for c in ("L", "block_size"):
            r[c] = int(float(r[c]))
        for c in ("density", "ms", "tflops"):
            r[c] = float(r[c])
        # The density the mask really has (block rounding, forced blocks) when the CSV records it.
        r["x"] = float(r["actual_density"]) if r.get("actual_density") not in (None, "") else r["density"]
        r["budget"] = r.get("budget") or ""
    return rows


def _run_title(row) -> str:
    """Card, versions and date of a run, from the CSV columns the benchmark writes."""
    parts = [row.get("card") or ""]
    parts += [f"{lib} {row[lib]}" for lib in ("torch", "triton") if row.get(lib)]
    parts.append(row.get("date") or "")
    return ", ".join(p for p in parts if p)


def plot_benchmark(csv_path, *, L: Optional[int] = None, block_size: Optional[int] = None,
                   baseline: Optional[str] = None, title: Optional[str] = None):
    """Speedup vs density and effective TFLOP/s by provider, from the benchmark CSV.

    Args:
        csv_path: the `bench.csv` written by `python -m adaspa.bench` (columns in
            `docs/benchmarks.md`); needs `provider, L, block_size, density, ms,
            tflops`, and uses `budget` (dense / uniform / tiered),
            `actual_density` (x-axis when present) and `card, torch, triton, date`
            (default title) when present.
        L: the sequence length to plot (the largest in the file by default).
        block_size: plot only this block size (all by default).
        baseline: the dense provider speedups are measured against (default:
            the first provider whose name contains "cudnn", else the fastest
            provider at density 1).
        title: figure title; by default the card, versions and date of the run.

    Returns:
        A `Figure` with two `Axes`: left, speedup `baseline_ms / ms` against
        density, right, effective TFLOP/s (`4 B H Lq Lk D density / time`)
        against density. One line per (provider, block size, budget) in each; a
        provider measured only at density 1 (dense attention) is one horizontal
        dashed line. The left axes also shows the ideal `1 / density`.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "bench.csv")
        >>> with open(path, "w") as f:
        ...     _ = f.write("provider,L,block_size,density,budget,ms,tflops\\n"
        ...                 "sdpa_cudnn,16384,64,1.0,dense,10.0,600\\n"
        ...                 "adaspa,16384,64,1.0,uniform,11.0,550\\n"
        ...                 "adaspa,16384,64,0.2,uniform,2.5,480\\n")
        >>> fig = plot_benchmark(path)
        >>> sorted(line.get_label() for line in fig.axes[1].lines)
        ['adaspa bs=64 uniform', 'sdpa_cudnn']
    """
    matplotlib, _ = _mpl()
    rows = _read_benchmark(csv_path)
    lengths = sorted({r["L"] for r in rows})
    if L is None:
        L = lengths[-1]
    rows = [r for r in rows if r["L"] == L and (block_size is None or r["block_size"] == block_size)]
    if not rows:
        raise ValueError(f"L={L}, block_size={block_size} is not in {csv_path}; it has L in {lengths}")
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    if baseline is None:
        cudnn = [p for p in providers if "cudnn" in p.lower()]
        if cudnn:
            baseline = cudnn[0]
        else:
            dense_rows = [r for r in rows if r["density"] == 1.0]
            if not dense_rows:
                raise ValueError(f"{csv_path} has no density-1 row at L={L} to measure speedup against")
            baseline = min(dense_rows, key=lambda r: r["ms"])["provider"]
    base_rows = [r for r in rows if r["provider"] == baseline and r["density"] == 1.0]
    if not base_rows:
        raise ValueError(f"baseline {baseline!r} has no density-1 row at L={L}; providers: {providers}")
    base_ms = min(r["ms"] for r in base_rows)

    dense_only = {p for p in providers if all(r["density"] == 1.0 for r in rows if r["provider"] == p)}
    groups = {}
    for r in rows:
        # A dense provider does not depend on the block size: one line, not one per block size.
        key = (r["provider"],) if r["provider"] in dense_only else (r["provider"], r["block_size"], r["budget"])
        groups.setdefault(key, []).append(r)
    fig, axes = _new_figure(1, 2, figsize=(12, 4.5))
    speed_ax, flops_ax = axes[0]
    densities = sorted({r["x"] for r in rows})
    ideal, = speed_ax.plot(densities, [1 / d for d in densities], color="gray", linestyle=":",
                           label="ideal 1/density")
    # One color per provider (and budget), one line style and marker per block size, so a
    # dozen lines stay apart; dense providers are dashed horizontal lines.
    color_keys = list(dict.fromkeys(key[:1] + key[2:] for key in groups))
    palette = matplotlib.colormaps["tab10" if len(color_keys) <= 10 else "tab20"]
    colors = {key: palette(i % palette.N) for i, key in enumerate(color_keys)}
    block_sizes = sorted({key[1] for key in groups if len(key) == 3})
    styles = {bs: ("-o", "-.s", ":^", "--v")[i % 4] for i, bs in enumerate(block_sizes)}
    for key, group in groups.items():
        group.sort(key=lambda r: r["x"])
        color = colors[key[:1] + key[2:]]
        if len(key) == 1:
            label = key[0]
            speed_ax.axhline(base_ms / min(r["ms"] for r in group), linestyle="--", color=color, label=label)
            flops_ax.axhline(max(r["tflops"] for r in group), linestyle="--", color=color, label=label)
            continue
        provider, bs, budget = key
        label = f"{provider} bs={bs}" + (f" {budget}" if budget else "")
        d = [r["x"] for r in group]
        speed_ax.plot(d, [base_ms / r["ms"] for r in group], styles[bs], color=color, markersize=4, label=label)
        flops_ax.plot(d, [r["tflops"] for r in group], styles[bs], color=color, markersize=4, label=label)
    for ax in (speed_ax, flops_ax):
        ax.set_xscale("log")
        ax.set_xlabel("density (fraction of query-key pairs kept)")
        ax.grid(alpha=0.3, which="both")
    speed_ax.set_yscale("log")
    speed_ax.set_ylabel(f"speedup vs {baseline} dense")
    speed_ax.set_title(f"speedup, L={L}")
    flops_ax.set_ylabel("effective TFLOP/s")
    flops_ax.set_title(f"throughput, L={L}")
    speed_ax.legend(handles=[ideal], fontsize=7, loc="upper right")
    flops_ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    run = _run_title(rows[0])
    if title is None and run:
        title = run
    if title:
        fig.suptitle(title)
    return fig
