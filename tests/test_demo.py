"""`python -m adaspa demo` end to end at a tiny size: table, summary, PNGs, sane numbers."""

import csv
import json
import math
import subprocess
import sys

import pytest
import torch

from adaspa.__main__ import main as cli
from adaspa.demo import SIZES, DriftingInputs, build_parser
from adaspa.synthetic import SyntheticVideoConfig, synthetic_qkv
from adaspa.testing import assert_close

TINY = ["demo", "--workload", "synthetic", "--size", "tiny", "--steps", "7", "--warmup-steps", "2", "--search-steps", "2,5", "--layers", "2",
        "--block-size", "16", "--sparsity", "0.6", "--no-progress"]
PHASES = ["dense", "dense", "search", "sparse", "sparse", "cached_search", "sparse"]


def test_demo_end_to_end(tmp_path, capsys):
    assert cli(TINY + ["--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].split()[:2] == ["step", "phase"]
    table_lines = printed.splitlines()[1:8]
    assert [line.split()[1] for line in table_lines] == PHASES

    for name in ("steps.csv", "summary.json", "block_mass.png", "masks.png", "recall.png", "schedule.png"):
        path = tmp_path / name
        assert path.is_file() and path.stat().st_size > 0, name
        if name.endswith(".png"):
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    with (tmp_path / "steps.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["phase"] for r in rows] == PHASES
    for r in rows:
        density, recall, error = float(r["density"]), float(r["recall"]), float(r["error"])
        assert 0.0 <= recall <= 1.0 and 0.0 < density <= 1.0 and error >= 0.0
        assert float(r["adaspa_ms"]) > 0 and float(r["dense_ms"]) > 0
        if r["phase"] == "dense":
            assert (density, recall, error) == (1.0, 1.0, 0.0)
        else:
            assert density < 1.0
    search = rows[2]
    assert float(search["error"]) < 1e-5  # the fused search's output is the exact dense one
    assert max(float(r["error"]) for r in rows[3:]) > 1e-4  # sparse steps drop mass, so they differ

    summary = json.loads((tmp_path / "summary.json").read_text())
    frames, height, width, text_len, heads, head_dim = SIZES["tiny"]
    assert summary["tokens"] == text_len + frames * height * width and summary["heads"] == heads
    assert summary["layers"] == 2 and summary["steps"] == 7 and summary["backend"] == "reference"
    assert 0.0 < summary["mean_recall"] <= 1.0 and 0.0 < summary["mean_density"] < 1.0
    assert math.isclose(summary["adaspa_ms"], sum(summary["ms_by_phase"].values()), rel_tol=1e-9)
    assert summary["max_error"] == max(float(r["error"]) for r in rows)
    assert "speedup_vs_sdpa" in summary and "AdaSpa" in printed and str(tmp_path) in printed


@pytest.mark.parametrize("num_steps, drift", [(7, 0.3), (2, 0.3), (5, 0.0)])
def test_drifting_inputs_equal_synthetic_qkv_at_every_step(num_steps, drift):
    cfg = SyntheticVideoConfig(heads=2, head_dim=16, frames=2, height=4, width=4, text_len=8, drift=drift,
                               num_steps=num_steps)
    inputs = DriftingInputs(cfg, seed=5, dtype=torch.float32, device="cpu")
    for step in range(num_steps):
        for name, got, want in zip("qkv", inputs.at(step), synthetic_qkv(cfg, step=step, seed=5)):
            assert_close(got, want.double(), name=f"{name} at step {step}")
    assert torch.equal(inputs.at(0)[0], inputs.at(num_steps - 1)[0]) == (drift == 0)


def test_no_head_adaptive_and_text_first(tmp_path):
    assert cli(TINY + ["--no-head-adaptive", "--text-position", "first", "--out", str(tmp_path)]) == 0
    with (tmp_path / "steps.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["phase"] for r in rows] == PHASES


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as done:
        cli(["demo", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for action in build_parser()._actions:
        for flag in action.option_strings:
            assert flag in text
        assert action.help, action.dest


def test_top_level_help_lists_demo():
    result = subprocess.run([sys.executable, "-m", "adaspa", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "demo" in result.stdout


@pytest.mark.parametrize("argv, message", [
    (["--sparsity", "1.5"], "sparsity"),
    (["--search-steps", "1,5"], "search_steps"),
    (["--tokens", "3"], "tokens"),
])
def test_bad_options_exit_with_a_message(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as done:
        cli(TINY + argv + ["--out", str(tmp_path)])
    assert done.value.code == 2
    assert message in capsys.readouterr().err


MODEL_TINY = ["demo", "--steps", "3", "--frames", "2", "--guidance", "1", "--warmup-steps", "1",
              "--search-steps", "1,2", "--no-progress"]


def test_model_workload_is_the_default_and_compares_clips(tmp_path, capsys):
    assert cli(MODEL_TINY + ["--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert [line.split()[1] for line in printed.splitlines()[1:4]] == ["dense", "search", "cached_search"]
    for name in ("dense.gif", "adaspa.gif", "dense_vs_adaspa.gif", "masks_layer0.png", "masks_layer7.png",
                 "schedule.png", "summary.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["frames"] == 2 and summary["tokens"] == 8 + 2 * 16 * 16
    assert [r["phase"] for r in summary["rows"]] == ["dense", "search", "cached_search"]
    assert summary["rows"][0]["density"] == 1.0 and 0.0 < summary["adaspa"]["density"] < 1.0
    # The fused search (step 1) computes the exact dense output, so it kept every pair.
    assert summary["rows"][1]["density"] == 1.0 and summary["rows"][2]["density"] < 1.0
    assert summary["adaspa"]["density"] == pytest.approx((2.0 + summary["rows"][2]["density"]) / 3)
    assert 0.0 < summary["adaspa"]["recall"] <= 1.0
    # Step 0 is dense and step 1 is the exact fused search, so only step 2 (sparse) can differ from dense.
    assert 5.0 < summary["psnr"] < float("inf") and 0.0 < summary["ssim"] <= 1.0
    assert f"PSNR {summary['psnr']:.2f} dB" in printed


def test_model_workload_with_sparsity_zero_reproduces_the_dense_clip(tmp_path):
    assert cli(MODEL_TINY + ["--sparsity", "0", "--no-head-adaptive", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["psnr"] > 60 and summary["ssim"] > 0.9999


def test_bad_model_option_exits_with_a_message(capsys, tmp_path):
    with pytest.raises(SystemExit) as done:
        cli(MODEL_TINY + ["--sparsity", "1.5", "--out", str(tmp_path)])
    assert done.value.code == 2
    assert "sparsity" in capsys.readouterr().err


def test_unknown_command_fails():
    with pytest.raises(SystemExit) as done:
        cli(["nonsense"])
    assert done.value.code == 2
