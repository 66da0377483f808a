"""`python -m adaspa.bench`'s parts that run without a GPU: the `--video` spec and its defaults
(the timings themselves need CUDA and are recorded in docs/benchmarks.md)."""

from __future__ import annotations

import pytest

from adaspa.bench import parse_args, video_config


def test_video_spec_gives_the_synthetic_clip():
    cfg = video_config(parse_args([]).video, batch=1, heads=24, dim=128)
    # HunyuanVideo's 720p 8 s clip: 33 latent frames of 45 x 80 tokens, then 256 text tokens.
    assert (cfg.frames, cfg.height, cfg.width, cfg.text_len, cfg.text_position) == (33, 45, 80, 256, "last")
    assert (cfg.heads, cfg.head_dim, cfg.seq_len) == (24, 128, 119056)
    assert video_config("2x4x8", batch=2, heads=3, dim=16).seq_len == 64  # no text
    assert parse_args(["--video", "none"]).video == "none"


@pytest.mark.parametrize("spec", ["33x45", "33x45x80+x", "axbxc", "0x4x4+8", "2x4x4+", "2x4x4x4"])
def test_bad_video_spec_is_refused(spec):
    with pytest.raises(ValueError, match="--video must look like"):
        video_config(spec, batch=1, heads=2, dim=16)
