"""The fidelity benchmark's metrics and machinery (the benchmark itself is run by `python -m adaspa.fidelity`)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from adaspa import AdaSpaConfig, BlockSparseMask
from adaspa.fidelity import (KEEP_MARKER, Layout, MaskScheduleAttention, RunSpec, default_runs, findings, method_factory,
                             plot_fidelity, psnr, run_benchmark, ssim, write_report)
from adaspa.models import DiTConfig, TinyVideoDiT


pytestmark = pytest.mark.usefixtures("one_thread")


def test_psnr_known_values():
    x = torch.zeros(2, 1, 3, 4, 4)
    y = x.clone()
    y[0] += 0.1
    y[1] += 0.01
    assert psnr(y, x).tolist() == pytest.approx([20.0, 40.0])
    assert math.isinf(float(psnr(x, x)[0]))
    with pytest.raises(ValueError, match="same shape"):
        psnr(x, x[:1])


def test_ssim_of_constant_frames_matches_the_closed_form():
    # Constant frames have zero variance, so SSIM = (2ab + C1) / (a^2 + b^2 + C1).
    a, b, c1 = 0.3, 0.6, 0.01 ** 2
    x = torch.full((1, 2, 3, 16, 16), a)
    y = torch.full((1, 2, 3, 16, 16), b)
    assert float(ssim(x, y)[0]) == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-9)


def test_ssim_is_one_for_identical_symmetric_and_falls_with_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 2, 3, 16, 16, generator=g)
    noise = torch.randn(x.shape, generator=g)
    assert ssim(x, x).tolist() == pytest.approx([1.0, 1.0])
    y = (x + 0.05 * noise).clamp(0, 1)
    z = (x + 0.2 * noise).clamp(0, 1)
    assert torch.allclose(ssim(x, y), ssim(y, x))
    assert bool((ssim(x, z) < ssim(x, y)).all()) and bool((ssim(x, y) < 1).all())
    with pytest.raises(ValueError, match="window"):
        ssim(x[..., :8, :8], x[..., :8, :8])


def test_default_runs_cover_the_table_and_the_sweeps():
    runs = default_runs()
    main = [r for r in runs if r.group == "main"]
    assert {(r.method, r.sparsity) for r in main} == {
        (m, s) for m in ("adaspa", "adaspa_no_tiers", "adaspa_no_lse_cache", "svg_like", "pooled_qk", "window",
                         "random") for s in (0.7, 0.8, 0.9)}
    assert all(r.warmup_steps == 10 and r.search_steps == (10, 30) for r in main)
    assert [(r.method, r.sparsity) for r in runs if r.group == "floor"] == [("adaspa_no_tiers", 0.0)]
    assert [(r.warmup_steps, r.search_steps) for r in runs if r.group == "warmup"] == [(0, (0, 30)), (2, (2, 30)),
                                                                                        (5, (5, 30))]
    assert [r.search_steps for r in default_runs(20) if r.group == "search"] == [(4,), (4, 8, 12), (4, 8, 12, 16)]
    # Short runs: steps past the end are clamped before duplicates are dropped, so every
    # schedule stays strictly increasing (AdaSpaConfig rejects (0, 1, 1)).
    for steps in (1, 2, 3):
        for r in default_runs(steps):
            assert list(r.search_steps) == sorted(set(r.search_steps)) and r.search_steps[-1] < steps, (steps, r)
            method_factory(r, Layout(frames=2, rows=4, cols=4, text_len=8, block_size=16), backend="reference")


def test_mask_schedule_attention_full_mask_equals_dense_and_records_recall():
    cfg = AdaSpaConfig(warmup_steps=1, search_steps=(1, 3), block_size=16, backend="reference", min_seq_len=0)
    built = []

    def full(q, k, v, step):
        built.append(step)
        return BlockSparseMask.full(q.shape[0], q.shape[1], q.shape[2], k.shape[2], 16)

    attn = MaskScheduleAttention(cfg, full)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 40, 16, generator=g) for _ in range(3))
    for step in range(5):
        out = attn(q, k, v, step=step)
        assert torch.allclose(out, F.scaled_dot_product_attention(q, k, v), atol=1e-5)
    assert built == [1, 3]
    assert [r.phase for r in attn.history] == ["dense", "search", "sparse", "cached_search", "sparse"]
    assert [None if r.recall is None else round(float(r.recall.min()), 6) for r in attn.history] == \
        [None, 1.0, None, 1.0, None]
    assert attn.timer.total_ms() > 0


def test_adaspa_recall_is_measured_under_the_exact_mass_at_cached_searches():
    # The LSE-cached search selects under the mass of a stale LSE; the benchmark's recall must be
    # the exact one, as for the other methods (MaskScheduleAttention), so the columns compare.
    from adaspa import AdaSpaAttention, reference
    from adaspa.fidelity import TimedAttention
    from adaspa.selection import recall

    cfg = AdaSpaConfig(warmup_steps=1, search_steps=(1, 3), block_size=16, backend="reference", min_seq_len=0,
                       head_adaptive=False, sparsity=0.5)
    attn = TimedAttention(AdaSpaAttention(cfg), exact_recall=True)
    g = torch.Generator().manual_seed(0)
    q0, k0, v0 = (2 * torch.randn(1, 2, 64, 16, generator=g) for _ in range(3))
    q3, k3 = (x + 1.5 * torch.randn(x.shape, generator=g) for x in (q0, k0))
    for step in range(4):
        q, k = (q0, k0) if step < 3 else (q3, k3)
        attn(q, k, v0, step=step)
    assert [r.phase for r in attn.history] == ["dense", "search", "sparse", "cached_search"]
    assert len(attn.search_recalls) == 2
    assert torch.equal(attn.search_recalls[0], attn.history[1].recall)
    _, _, mass3 = reference.attention_with_block_mass(q3, k3, v0, block_size=16)
    exact = recall(mass3, attn.inner.mask)
    assert torch.allclose(attn.search_recalls[1], exact, atol=1e-6)
    assert float((attn.history[3].recall - exact).abs().max()) > 1e-3, "the stale-LSE recall must differ here"
    attn.reset()
    assert attn.search_recalls == []
    layout = Layout(frames=2, rows=4, cols=4, text_len=8, block_size=16)
    for method in ("adaspa", "adaspa_no_tiers", "adaspa_no_lse_cache"):
        assert method_factory(RunSpec(method), layout, backend="reference")(0).exact_recall is True


def test_random_builder_keeps_per_head_masks_when_moving_device():
    # A mask built on the CPU for a GPU call must keep its own random blocks per (batch, head);
    # torch.device("cpu", 0) differs from the CPU mask's device, so this takes the moving path.
    from adaspa.baselines import random_blocks_mask
    from adaspa.fidelity import _expand

    mask = random_blocks_mask(2, 3, 100, 100, 0.3, block_size=16, seed=1)
    assert not bool((mask.to_dense() == mask.to_dense()[:1, :1]).all()), "seed 1 must give distinct heads"
    moved = _expand(mask, 2, 3, torch.device("cpu", 0))
    assert torch.equal(moved.to_dense(), mask.to_dense())
    single = BlockSparseMask.from_dense(mask.to_dense()[:1, :1].contiguous(), 16, 100, 100)
    assert torch.equal(_expand(single, 2, 3, "cpu").to_dense(), mask.to_dense()[:1, :1].expand(2, 3, -1, -1))
    with pytest.raises(ValueError, match="heads"):
        _expand(mask, 2, 4, "cpu")


def test_layout_target_density_is_adaspa_row_budget():
    lay = Layout(frames=2, rows=4, cols=4, text_len=8, block_size=16)  # 40 tokens, 3 blocks, text in block 0
    # row 0 (text) keeps all 3 blocks; rows 1, 2 keep the text column plus ceil(0.5 * 2) = 1 candidate
    q_sizes = torch.tensor([16, 16, 8.0])
    kept = q_sizes[0] * 40 + q_sizes[1] * (16 + 16) + q_sizes[2] * (16 + 16)
    assert lay.target_density(0.5) == pytest.approx(float(kept / 40 ** 2), rel=1e-6)


@pytest.fixture(scope="module")
def tiny_result(one_thread):
    torch.manual_seed(0)
    model = TinyVideoDiT(DiTConfig(dim=32, depth=2, heads=2, frames=2, height=16, width=16)).eval()
    torch.nn.init.normal_(model.out.weight, std=0.2)
    runs = [RunSpec("adaspa_no_tiers", 0.0, 1, (1,)), RunSpec("adaspa", 0.8, 1, (1, 3)), RunSpec("window", 0.8, 1, (1,)),
            RunSpec("random", 0.8, 1, (1,)), RunSpec("adaspa", 0.8, 0, (0, 3), "warmup")]
    return run_benchmark(model, clips=2, steps=4, block_size=16, runs=runs, backend="reference", log=None)


def test_benchmark_rows_measure_what_they_claim(tiny_result):
    rows = tiny_result["rows"]
    assert [r["method"] for r in rows] == ["dense", "adaspa_no_tiers", "adaspa", "window", "random", "adaspa"]
    dense, exact, sparse = rows[0], rows[1], rows[2]
    assert math.isinf(dense["psnr"]) and dense["ssim"] == pytest.approx(1.0)
    assert exact["sparse_density"] == pytest.approx(1.0) and exact["psnr"] > 60, exact
    assert sparse["sparse_density"] < 0.8 and sparse["psnr"] < exact["psnr"]
    # 4 steps: step 0 dense, step 1 the fused search (exact dense output), steps 2-3 block-sparse:
    # overall density = (2 + 2 * sparse) / 4
    assert sparse["density"] == pytest.approx((2 + 2 * sparse["sparse_density"]) / 4, rel=1e-5)
    # window runs its new mask at the search step too: step 0 dense, steps 1-3 block-sparse
    window = rows[3]
    assert window["density"] == pytest.approx((1 + 3 * window["sparse_density"]) / 4, rel=1e-5)
    assert all(0 < r["recall"] <= 1 for r in rows[1:])
    assert all(r["attention_ms"] > 0 for r in rows)
    # random keeps AdaSpa's block count per row; only which blocks differ, and a full block
    # instead of the 8-token tail block (or back) moves the density by at most 8 / 136 per row
    assert abs(rows[4]["sparse_density"] - rows[4]["target_density"]) <= 8 / 136 + 1e-6


def test_report_and_plot(tiny_result, tmp_path):
    text = write_report(tiny_result, str(tmp_path / "fidelity.md"), card="test card", plot_name="fidelity.png")
    assert "test card" in text and "| AdaSpa | 0.8 |" in text
    assert (tmp_path / "fidelity.md").read_text() == text
    path = tmp_path / "fidelity.md"
    path.write_text(text + "\nA hand-written discussion.\n")
    again = write_report(tiny_result, str(path), card="another card")
    assert "another card" in again and again.endswith("A hand-written discussion.\n")
    assert again.count(KEEP_MARKER) == 1
    lines = findings(tiny_result["rows"])
    assert lines and lines[0].startswith("Sparsity 0.0") is False
    fig = plot_fidelity(tiny_result["rows"])
    assert len(fig.axes) == 3
