"""adaspa.viz draws what it claims: axes, image data, boundary lines, one line per series."""

import math

import numpy as np
import pytest
import torch

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

from matplotlib.figure import Figure  # noqa: E402

from adaspa import BlockSparseMask  # noqa: E402
from adaspa import viz  # noqa: E402


def _image(ax):
    assert len(ax.images) == 1
    return np.asarray(ax.images[0].get_array())


def _drawn(fig):
    """Render headless; a helper that built a broken artist fails here."""
    fig.canvas.draw()
    return fig


def test_block_mass_image_is_log10_of_the_mass():
    mass = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(0)) * 10 + 1e-3
    mass[1, 2, 0, 0] = 0.0
    fig = _drawn(viz.plot_block_mass(mass, batch=1, head=2))
    assert isinstance(fig, Figure)
    grid = mass[1, 2].double()
    positive_min = float(grid[grid > 0].min())
    image = _image(fig.axes[0])
    assert image.shape == (5, 7)
    np.testing.assert_allclose(image.min(), math.log10(positive_min), rtol=1e-6)
    np.testing.assert_allclose(image.max(), math.log10(float(grid.max())), rtol=1e-6)
    np.testing.assert_allclose(image[1:, 1:], np.log10(grid[1:, 1:].numpy()), rtol=1e-6)
    assert len(fig.axes[0].lines) == 0


@pytest.mark.parametrize("text_position", ["first", "last"])
def test_block_mass_draws_text_and_frame_boundaries(text_position):
    layout = dict(text_len=32, text_position=text_position, frames=3, height=8, width=8, block_size=32)
    tokens = 32 + 3 * 64  # 7 blocks of 32
    mass = torch.rand(1, 1, 7, 7) + 0.1
    fig = _drawn(viz.plot_block_mass(mass, layout=layout))
    lines = fig.axes[0].lines
    assert len(lines) == 2 * (1 + 2)  # one text and two frame boundaries, as a row and a column each
    red = sorted({float(np.asarray(l.get_xdata())[0]) for l in lines
                  if l.get_color() == "red" and l.get_xdata()[0] == l.get_xdata()[1]})
    text_token = 32 if text_position == "first" else tokens - 32
    assert red == [text_token / 32 - 0.5]
    frame_x = sorted({float(np.asarray(l.get_xdata())[0]) for l in lines
                      if l.get_color() == "black" and l.get_xdata()[0] == l.get_xdata()[1]})
    start = 32 if text_position == "first" else 0
    assert frame_x == [(start + 64) / 32 - 0.5, (start + 128) / 32 - 0.5]


def test_block_mass_reads_a_layout_object_and_rejects_a_mismatch():
    class Layout:
        text_len, text_position, frames, tokens_per_frame = 0, "last", 4, 64

    fig = viz.plot_block_mass(torch.rand(1, 1, 4, 4) + 0.1, layout=Layout())
    assert len(fig.axes[0].lines) == 2 * 3
    with pytest.raises(ValueError, match="layout"):
        viz.plot_block_mass(torch.rand(1, 1, 5, 5) + 0.1, layout=Layout())


def test_block_mass_bad_input():
    with pytest.raises(ValueError, match="mass"):
        viz.plot_block_mass(torch.rand(3, 3))
    with pytest.raises(ValueError, match="head"):
        viz.plot_block_mass(torch.rand(1, 2, 3, 3), head=2)
    with pytest.raises(ValueError, match="all zero"):
        viz.plot_block_mass(torch.zeros(1, 1, 3, 3))


def test_block_mass_draws_into_a_given_axes():
    fig = Figure()
    ax = fig.subplots()
    assert viz.plot_block_mass(torch.rand(1, 1, 3, 3) + 0.1, ax=ax) is fig
    assert len(ax.images) == 1


def test_head_masks_one_axes_per_head_with_tier_codes():
    gen = torch.Generator().manual_seed(1)
    dense = torch.rand(2, 5, 4, 4, generator=gen) > 0.5
    mask = BlockSparseMask.from_dense(dense, 64, 250, 256)
    sparsity = torch.tensor([[0.9, 0.8, 0.8, 0.7, 0.8], [0.8] * 5])
    fig = _drawn(viz.plot_head_masks(mask, head_sparsity=sparsity))
    assert len(fig.axes) == 5
    tiers = [3, 2, 2, 1, 2]  # highest sparsity -> sparse tier (3), lowest -> dense tier (1)
    for h, ax in enumerate(fig.axes):
        np.testing.assert_array_equal(_image(ax), dense[0, h].long().numpy() * tiers[h])
        assert f"s={sparsity[0, h]:.2f}" in ax.get_title()
    fig = viz.plot_head_masks(dense, head_sparsity=sparsity, batch=1, max_heads=3)
    assert len(fig.axes) == 3
    for h, ax in enumerate(fig.axes):
        np.testing.assert_array_equal(_image(ax), dense[1, h].long().numpy() * 2)


def test_head_masks_two_tiers_and_layout_lines():
    dense = torch.ones(1, 2, 3, 3, dtype=torch.bool)
    layout = dict(text_len=64, text_position="first", frames=2, tokens_per_frame=64)
    fig = viz.plot_head_masks(dense, head_sparsity=torch.tensor([0.9, 0.7]), layout=layout)
    assert _image(fig.axes[0]).max() == 3 and _image(fig.axes[1]).max() == 1
    assert all(len(ax.lines) == 4 for ax in fig.axes)
    with pytest.raises(TypeError, match="mask"):
        viz.plot_head_masks(torch.ones(1, 2, 3, 3))
    with pytest.raises(ValueError, match="head_sparsity"):
        viz.plot_head_masks(dense, head_sparsity=torch.ones(1, 3))


def test_recall_curves_one_line_per_method():
    curves = {
        "token top-k": ([0.5, 0.8, 0.9], [0.99, 0.95, 0.9]),
        "block top-k": (torch.tensor([0.5, 0.8, 0.9]), torch.tensor([0.97, 0.9, 0.82])),
        "column": ([0.5, 0.8, 0.9], [0.6, 0.4, 0.3]),
    }
    fig = _drawn(viz.plot_recall_curves(curves))
    lines = fig.axes[0].lines
    assert [l.get_label() for l in lines] == list(curves)
    np.testing.assert_allclose(lines[1].get_ydata(), [0.97, 0.9, 0.82], rtol=1e-6)
    with pytest.raises(ValueError, match="differ"):
        viz.plot_recall_curves({"x": ([0.1, 0.2], [0.5])})
    with pytest.raises(TypeError, match="curves"):
        viz.plot_recall_curves({})


def test_lse_distribution_histograms_and_drift():
    gen = torch.Generator().manual_seed(2)
    base = torch.randn(1, 2, 64, generator=gen) + 5
    lse = {0: base, 10: base + 0.05, 20: base + 0.2}
    lse[20][0, 0, 3] = float("-inf")  # an empty row is left out, not a NaN
    fig = _drawn(viz.plot_lse_distribution(lse))
    hist_ax, drift_ax = fig.axes
    assert len(hist_ax.patches) == 3  # one step-histogram per step
    mean_line, max_line = drift_ax.lines
    np.testing.assert_array_equal(mean_line.get_xdata(), [0, 10, 20])
    np.testing.assert_allclose(mean_line.get_ydata(), [0.0, 0.05, 0.2], atol=1e-5)
    np.testing.assert_allclose(max_line.get_ydata(), [0.0, 0.05, 0.2], atol=1e-5)
    fig = viz.plot_lse_distribution([base, base * 1.1], head=1)
    expected = float((base[:, 1] * 0.1).abs().mean())
    np.testing.assert_allclose(fig.axes[1].lines[0].get_ydata()[1], expected, rtol=1e-5)
    with pytest.raises(ValueError, match="shape"):
        viz.plot_lse_distribution({0: base, 1: base[:, :1]})


def test_schedule_image_holds_the_phase_codes():
    phases = ["dense"] * 10 + ["search"] + ["sparse"] * 19 + ["cached_search"] + ["sparse"] * 19
    fig = _drawn(viz.plot_schedule({"block 0": phases, "block 1": phases[:30]}))
    image = _image(fig.axes[0])
    order = list(viz.PHASE_COLORS)
    assert image.shape == (2, 50)
    np.testing.assert_array_equal(image[0], [order.index(p) for p in phases])
    np.testing.assert_array_equal(image[1, 30:], -1)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == order
    fig = viz.plot_schedule([["dense", "warmup_custom"]])
    assert _image(fig.axes[0]).tolist() == [[0, len(order)]]
    with pytest.raises(TypeError, match="phases_per_layer"):
        viz.plot_schedule("dense")


def test_recall_over_steps_lines_and_phase_shading():
    phases = ["dense"] * 3 + ["search"] + ["sparse"] * 4
    recalls = torch.tensor([[float("nan")] * 2] * 3 + [[0.9, 0.8]] * 5)  # [S, H]
    fig = _drawn(viz.plot_recall_over_steps(recalls, phases=phases))
    ax = fig.axes[0]
    assert [l.get_label() for l in ax.lines] == ["head 0", "head 1"]
    np.testing.assert_allclose(ax.lines[1].get_ydata()[3:], 0.8, rtol=1e-6)
    assert len(ax.patches) == len(phases)  # one shaded span per step
    fig = viz.plot_recall_over_steps({"adaspa": [0.9, 0.8], "window": [0.5, 0.4]}, steps=[10, 30])
    np.testing.assert_array_equal(fig.axes[0].lines[0].get_xdata(), [10, 30])
    with pytest.raises(ValueError, match="phases"):
        viz.plot_recall_over_steps([0.9, 0.8], phases=["sparse"])


def _write_csv(path, rows, header="provider,L,block_size,density,budget,ms,tflops"):
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


def test_benchmark_lines_per_provider_and_speedups(tmp_path):
    rows = [
        ("sdpa_cudnn", 16384, 64, 1.0, "dense", 10.0, 600),
        ("sdpa_cudnn", 16384, 128, 1.0, "dense", 10.0, 600),
        ("sdpa_flash", 16384, 64, 1.0, "dense", 17.0, 350),
        ("adaspa", 16384, 64, 1.0, "uniform", 11.0, 550),
        ("adaspa", 16384, 64, 0.5, "uniform", 6.0, 500),
        ("adaspa", 16384, 64, 0.1, "uniform", 1.25, 480),
        ("adaspa", 16384, 128, 0.1, "tiered", 1.0, 600),
        ("flex", 16384, 64, 0.5, "uniform", 9.0, 330),
        ("flex", 16384, 64, 0.1, "uniform", 2.0, 300),
        ("adaspa", 1024, 64, 0.1, "uniform", 0.1, 10),
        ("adaspa", 1024, 64, 1.0, "uniform", 0.5, 20),
    ]
    fig = _drawn(viz.plot_benchmark(_write_csv(tmp_path / "b.csv", rows), title="H100, 2026-11-26"))
    speed_ax, flops_ax = fig.axes
    labels = [l.get_label() for l in speed_ax.lines]
    assert labels[0] == "ideal 1/density"
    # Dense providers get one line whatever the block size; sparse ones one per (provider, block size, budget).
    assert sorted(labels[1:]) == sorted(["sdpa_cudnn", "sdpa_flash", "adaspa bs=64 uniform", "adaspa bs=128 tiered",
                                         "flex bs=64 uniform"])
    assert [l.get_label() for l in flops_ax.lines] == labels[1:]
    adaspa = next(l for l in speed_ax.lines if l.get_label() == "adaspa bs=64 uniform")
    np.testing.assert_allclose(adaspa.get_xdata(), [0.1, 0.5, 1.0])
    np.testing.assert_allclose(adaspa.get_ydata(), [8.0, 10 / 6, 10 / 11])
    flash = next(l for l in speed_ax.lines if l.get_label() == "sdpa_flash")
    np.testing.assert_allclose(flash.get_ydata(), [10 / 17, 10 / 17])
    flex = next(l for l in flops_ax.lines if l.get_label().startswith("flex"))
    np.testing.assert_allclose(flex.get_ydata(), [300, 330])
    assert fig.get_suptitle() == "H100, 2026-11-26"
    colors = {l.get_label(): matplotlib.colors.to_hex(l.get_color()) for l in speed_ax.lines[1:]}
    assert len({colors["sdpa_cudnn"], colors["sdpa_flash"], colors["adaspa bs=64 uniform"],
                colors["flex bs=64 uniform"], colors["adaspa bs=128 tiered"]}) == 5
    styles = {l.get_label(): (l.get_linestyle(), l.get_marker()) for l in speed_ax.lines[1:]}
    assert styles["adaspa bs=64 uniform"] != styles["adaspa bs=128 tiered"]

    only_128 = viz.plot_benchmark(tmp_path / "b.csv", block_size=128)
    assert sorted(l.get_label() for l in only_128.axes[1].lines) == ["adaspa bs=128 tiered", "sdpa_cudnn"]
    small = viz.plot_benchmark(tmp_path / "b.csv", L=1024, baseline="adaspa")
    assert [l.get_label() for l in small.axes[1].lines] == ["adaspa bs=64 uniform"]
    np.testing.assert_allclose(small.axes[0].lines[1].get_ydata(), [5.0, 1.0])


def test_benchmark_reads_actual_density_and_run_columns(tmp_path):
    header = "provider,L,block_size,density,budget,actual_density,ms,tflops,card,torch,triton,date"
    rows = [
        ("sdpa_cudnn", 4096, 64, 1.0, "dense", 1.0, 1.0, 600, "NVIDIA H100 80GB HBM3", "2.11.0", "3.6.0", "2026-11-26"),
        ("adaspa", 4096, 64, 0.2, "uniform", 0.25, 0.3, 500, "NVIDIA H100 80GB HBM3", "2.11.0", "3.6.0", "2026-11-26"),
        ("adaspa", 4096, 64, 0.1, "uniform", 0.125, 0.2, 400, "NVIDIA H100 80GB HBM3", "2.11.0", "3.6.0",
         "2026-11-26"),
    ]
    fig = viz.plot_benchmark(_write_csv(tmp_path / "r.csv", rows, header))
    line = next(l for l in fig.axes[0].lines if l.get_label().startswith("adaspa"))
    np.testing.assert_allclose(line.get_xdata(), [0.125, 0.25])
    assert fig.get_suptitle() == "NVIDIA H100 80GB HBM3, torch 2.11.0, triton 3.6.0, 2026-11-26"


def test_benchmark_bad_csv(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("provider,L,ms\nadaspa,1024,1.0\n")
    with pytest.raises(ValueError, match="lacks columns"):
        viz.plot_benchmark(bad)
    rows = [("adaspa", 1024, 64, 0.5, "uniform", 1.0, 10)]
    with pytest.raises(ValueError, match="density-1"):
        viz.plot_benchmark(_write_csv(tmp_path / "d.csv", rows))
