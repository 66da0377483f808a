"""The tiny text-to-video DiT: shipped weights load offline and sample, AdaSpa at sparsity 0
reproduces the dense clip, training lowers the loss, and the data/tokenizer/model plumbing is exact."""

from __future__ import annotations

import os

import pytest
import torch

from adaspa import AdaSpaConfig
from adaspa.models import (DenseAttention, DiTConfig, TinyVideoDiT, default_weights_path, generate, load_default,
                           save_video, tokenize)
from adaspa.models.data import VOCAB, labels_to_tokens, random_labels, render, sample_batch
from adaspa.models.train import TINY, train
from adaspa.testing import assert_close

pytestmark = pytest.mark.usefixtures("one_thread")


CAPTION = "a red circle moving right and a yellow square moving down on stripes"


@pytest.fixture(scope="module")
def model():
    return load_default()


def test_shipped_weights_are_small_and_load_offline(model):
    assert os.path.getsize(default_weights_path()) <= 10 * 1024 * 1024
    assert model.config == DiTConfig()
    assert model.train_info["final"] is True
    assert not model.training


def test_generate_few_steps_offline(model):
    clip = generate(model, CAPTION, steps=2, frames=2)
    assert clip.shape == (2, 3, 32, 32)
    assert clip.dtype == torch.float32
    assert bool(torch.isfinite(clip).all())
    assert 0.0 <= float(clip.min()) and float(clip.max()) <= 1.0
    again = generate(model, CAPTION, steps=2, frames=2)
    assert torch.equal(clip, again), "same seed must give the same clip"
    other = generate(model, CAPTION, steps=2, frames=2, seed=1)
    assert not torch.equal(clip, other)


def test_adaspa_sparsity_zero_reproduces_dense(model):
    # frames=2 gives 8 + 2*16*16 = 520 tokens = 9 blocks of 64, so the sparse path really runs.
    dense = generate(model, CAPTION, steps=4, frames=2)
    config = AdaSpaConfig(sparsity=0.0, head_adaptive=False, warmup_steps=1, search_steps=(1, 3),
                          backend="reference", min_seq_len=0)
    sparse = generate(model, CAPTION, steps=4, frames=2, attention=config)
    phases = [record.phase for record in model.attention[0].history]
    assert phases == ["dense", "search", "sparse", "cached_search"], phases
    assert all(layer.config.text_len == 8 and layer.config.text_position == "first" for layer in model.attention)
    assert float(model.attention[0].history[2].density.min()) == 1.0
    assert_close(sparse, dense, name="AdaSpa(s=0) clip vs dense clip", floor=1e-4)


def test_adaspa_at_high_sparsity_changes_the_clip(model):
    dense = generate(model, CAPTION, steps=4, frames=2)
    config = AdaSpaConfig(sparsity=0.9, warmup_steps=1, search_steps=(1,), backend="reference", min_seq_len=0)
    sparse = generate(model, CAPTION, steps=4, frames=2, attention=config)
    assert float(model.attention[0].history[-1].density.mean()) < 0.5
    assert float((sparse - dense).abs().max()) > 1e-3


def test_training_lowers_the_loss():
    _, losses = train(TINY, max_steps=40, batch=8, lr=3e-3, warmup=1, seed=0)
    assert len(losses) == 40
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < 0.8 * first, (first, last)


def test_tokenize_and_labels_agree():
    g = torch.Generator().manual_seed(3)
    labels = random_labels(5, generator=g)
    tokens = labels_to_tokens(labels)
    for caption, row in zip(labels.captions(), tokens):
        assert torch.equal(tokenize(caption), row)
    assert bool((labels.color[:, 0] != labels.color[:, 1]).all())


def test_tokenize_rejects_unknown_words_and_long_captions():
    with pytest.raises(ValueError, match="vocabulary"):
        tokenize("a purple circle moving left")
    with pytest.raises(ValueError, match="text_len"):
        tokenize("red circle left blue square up stripes red", text_len=8)
    with pytest.raises(TypeError, match="caption"):
        tokenize(3)
    assert tokenize("red circle").tolist() == [1, VOCAB.index("red"), VOCAB.index("circle")] + [0] * 5


def test_render_is_seeded_and_bounded():
    def clip(seed):
        g = torch.Generator().manual_seed(seed)
        return sample_batch(3, generator=g)[0]

    a, b, c = clip(0), clip(0), clip(1)
    assert a.shape == (3, 8, 3, 32, 32)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= -1 and float(a.max()) <= 1
    assert float((a[:, 1:] - a[:, :-1]).abs().amax(dim=(1, 2, 3, 4)).min()) > 0.1, "objects must move"


def test_patchify_roundtrip_and_token_order():
    model = TinyVideoDiT(DiTConfig(dim=32, depth=1, heads=2))
    video = torch.randn(2, 3, 3, 8, 6)
    tokens = model.patchify(video)
    assert tokens.shape == (2, 3 * 4 * 3, 12)
    assert torch.equal(model.unpatchify(tokens, 3, 8, 6), video)
    # token 1 * (4 * 3) + 2 * 3 + 1 is frame 1, patch row 2, patch column 1
    assert torch.equal(tokens[0, 1 * 12 + 2 * 3 + 1].view(3, 2, 2), video[0, 1, :, 4:6, 2:4])


def test_text_tokens_condition_the_output():
    torch.manual_seed(0)
    model = TinyVideoDiT(DiTConfig(dim=32, depth=2, heads=2, frames=2, height=8, width=8))
    torch.nn.init.normal_(model.out.weight, std=0.1)
    video, t = torch.randn(1, 2, 3, 8, 8), torch.full((1,), 0.5)
    with torch.no_grad():
        a = model(video, t, tokenize("red circle")[None])
        b = model(video, t, tokenize("blue circle")[None])
    assert float((a - b).abs().max()) > 1e-4


def test_set_attention_factories_and_errors():
    model = TinyVideoDiT(DiTConfig(dim=32, depth=3, heads=2))
    calls = []

    def factory(i):
        def attn(q, k, v, *, step=None):
            calls.append((i, step, tuple(q.shape)))
            return DenseAttention()(q, k, v)
        return attn

    model.set_attention(factory)
    model(torch.randn(1, 2, 3, 8, 8), torch.rand(1), torch.zeros(1, 8, dtype=torch.long), step=7)
    assert calls == [(i, 7, (1, 2, 8 + 2 * 16, 16)) for i in range(3)]
    with pytest.raises(ValueError, match="attention"):
        model.set_attention("sparse")
    with pytest.raises(TypeError, match="attention"):
        model.set_attention(3)
    with pytest.raises(ValueError, match="tokens"):
        model(torch.randn(1, 2, 3, 8, 8), torch.rand(1), torch.zeros(1, 5, dtype=torch.long))


def test_save_video_writes_a_readable_gif(tmp_path):
    import imageio.v3 as iio

    clip = torch.rand(3, 3, 8, 8)
    path = save_video(clip, str(tmp_path / "clip.gif"), upscale=2)
    frames = iio.imread(path)
    assert frames.shape[:3] == (3, 16, 16)
    with pytest.raises(ValueError, match="video"):
        save_video(torch.rand(3, 8, 8), str(tmp_path / "bad.gif"))


def test_capture_block_mass_rows_sum_to_query_counts(model):
    from adaspa.models import capture_block_mass

    mass = capture_block_mass(model, CAPTION, step=1, steps=3, frames=2)  # 8 + 512 = 520 tokens, 9 blocks
    assert mass.shape == (8, 8, 9, 9)
    expected = torch.tensor([64.0] * 8 + [8.0])
    assert torch.allclose(mass.sum(-1), expected.expand(8, 8, 9), rtol=1e-4)
    assert all(isinstance(a, DenseAttention) for a in model.attention)
    with pytest.raises(ValueError, match="step"):
        capture_block_mass(model, CAPTION, step=3, steps=3)
