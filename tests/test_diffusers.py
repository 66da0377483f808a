"""enable_adaspa / disable_adaspa on tiny random-config diffusers video transformers (CPU, no downloads)."""

import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import CogVideoXTransformer3DModel, HunyuanVideoTransformer3DModel, WanTransformer3DModel

from adaspa import AdaSpaConfig
from adaspa.integrations.diffusers import MODELS, disable_adaspa, enable_adaspa
from adaspa.testing import assert_close

# Crosses the warm-up, the fused search (step 2), a sparse step, the cached search (step 4).
SCHEDULE = dict(warmup_steps=2, search_steps=(2, 4), block_size=16, min_seq_len=0)
PHASES = ["dense", "dense", "search", "sparse", "cached_search", "sparse"]
TIMESTEPS = [900.0, 800.0, 700.0, 600.0, 500.0, 400.0]
EXACT = AdaSpaConfig(**SCHEDULE, sparsity=0.0, head_adaptive=False)
SPARSE = AdaSpaConfig(**SCHEDULE, sparsity=0.6)


def _wan():
    torch.manual_seed(0)
    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4,
                                 out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2,
                                 rope_max_seq_len=32).eval()


def _hunyuan():
    torch.manual_seed(0)
    return HunyuanVideoTransformer3DModel(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16,
                                          num_layers=1, num_single_layers=1, num_refiner_layers=1, text_embed_dim=16,
                                          pooled_projection_dim=8, rope_axes_dim=(4, 6, 6),
                                          guidance_embeds=False).eval()


def _cogvideox():
    torch.manual_seed(0)
    return CogVideoXTransformer3DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
                                       num_layers=2, sample_width=16, sample_height=16, sample_frames=9,
                                       text_embed_dim=16, time_embed_dim=16, max_text_seq_length=8).eval()


def _text_lengths(branch):
    # Branch 0 pads its prompts to different lengths (one AdaSpa state per batch
    # element), branch 1 to the same length (one batched state).
    return [5, 8] if branch == 0 else [3, 3]


def _inputs(model_name, step, branch, batch=2, seed=0):
    """Transformer kwargs for one call: latents drift with the step, the prompt differs per CFG branch."""
    g = torch.Generator().manual_seed(1000 * seed + 10 * step + branch)
    t = torch.full((batch,), TIMESTEPS[step])
    text = torch.randn(batch, 8, 16, generator=g)
    if model_name == "cogvideox":
        return dict(hidden_states=torch.randn(batch, 3, 4, 16, 16, generator=g), encoder_hidden_states=text,
                    timestep=t)
    kwargs = dict(hidden_states=torch.randn(batch, 4, 3, 16, 16, generator=g), encoder_hidden_states=text, timestep=t)
    if model_name == "hunyuan":
        lengths = torch.tensor(_text_lengths(branch))
        kwargs["encoder_attention_mask"] = (torch.arange(8) < lengths[:, None]).long()
        kwargs["pooled_projections"] = torch.randn(batch, 8, generator=g)
    return kwargs


BUILDERS = {"wan": _wan, "hunyuan": _hunyuan, "cogvideox": _cogvideox}
# Wan and HunyuanVideo pipelines run CFG as two calls per step; CogVideoX as a batch of 2.
BRANCHES = {"wan": 2, "hunyuan": 2, "cogvideox": 1}


def _run(model, name, steps=6, branches=None, seed=0):
    outs = []
    with torch.no_grad():
        for step in range(steps):
            for branch in range(branches or BRANCHES[name]):
                outs.append(model(**_inputs(name, step, branch, seed=seed)).sample)
    return outs


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_zero_sparsity_equals_stock_over_the_schedule_and_disable_restores_it(name):
    model = BUILDERS[name]()
    stock_processors = {n: p for n, p in model.attn_processors.items()}
    stock = _run(model, name)
    handle = enable_adaspa(model, EXACT)
    adaspa = _run(model, name)
    for i, (a, s) in enumerate(zip(adaspa, stock)):
        assert_close(a, s.double(), name=f"{name} call {i}")
    # HunyuanVideo's branch 0 pads its two prompts differently: one state per batch element.
    keys = [(0, 0), (0, 1), 1] if name == "hunyuan" else list(range(BRANCHES[name]))
    for name_, processor in handle.processors.items():
        assert sorted(processor.layers, key=str) == sorted(keys, key=str), name_
    for key in keys:
        phases = handle.phases(key)
        assert len(phases) == len(handle.processors) and all(p == PHASES for p in phases.values()), phases
    disable_adaspa(model)
    assert model.attn_processors == stock_processors
    assert all(model.attn_processors[n] is p for n, p in stock_processors.items())
    for a, s in zip(_run(model, name), stock):
        assert torch.equal(a, s)


def test_sparse_schedule_changes_the_output_but_stays_close():
    model = _wan()
    stock = _run(model, "wan")
    enable_adaspa(model, AdaSpaConfig(**SCHEDULE, sparsity=0.9))
    sparse = _run(model, "wan")
    errors = [float((a - s).abs().max() / s.abs().max()) for a, s in zip(sparse, stock)]
    assert errors[:4] == [0.0] * 4  # dense steps run the stock SDPA (2 calls per step: CFG branches)
    assert max(errors[4:6]) < 1e-5  # the fused search's output is the exact dense one
    assert max(errors[6:]) > 0.0
    assert max(errors) < 0.5


def test_attention_modules_taken_over_per_model():
    wan, hv, cog = (enable_adaspa(build(), SPARSE) for build in (_wan, _hunyuan, _cogvideox))
    assert sorted(wan.processors) == ["blocks.0.attn1", "blocks.1.attn1"]  # attn2 (cross) stays stock
    assert sorted(hv.processors) == ["single_transformer_blocks.0.attn", "transformer_blocks.0.attn"]
    assert sorted(cog.processors) == ["transformer_blocks.0.attn1", "transformer_blocks.1.attn1"]
    assert (hv.config.text_position, cog.config.text_position) == ("last", "first")
    assert type(wan.transformer.blocks[0].attn2.processor).__name__ == "WanAttnProcessor"


def test_text_position_per_model_reaches_the_layers():
    cog = _cogvideox()
    handle = enable_adaspa(cog, SPARSE)
    _run(cog, "cogvideox", steps=3)
    layer = handle.layers(0)["transformer_blocks.0.attn1"]
    dense = layer.mask.to_dense()  # [B, H, nq, nk]; CogVideoX puts 8 text tokens in block 0
    assert bool(dense[..., 0].all()) and bool(dense[:, :, 0].all())
    assert layer.history[-1].seq_len == 8 + 3 * 8 * 8


def test_hunyuan_text_last_reaches_the_layers_with_its_valid_length():
    hv = _hunyuan()
    handle = enable_adaspa(hv, SPARSE)
    _run(hv, "hunyuan", steps=3)
    # 3 x 8 x 8 = 192 video tokens, then the valid text: 5 / 8 tokens (branch 0), 3 (branch 1).
    for key, text in (((0, 0), 5), ((0, 1), 8), (1, 3)):
        for name, layer in handle.layers(key).items():
            dense = layer.mask.to_dense()  # [B, H, nq, nk]; the text sits in the last block (192 = 12 x 16)
            assert layer.history[-1].seq_len == 192 + text, (key, name)
            assert bool(dense[..., -1].all()) and bool(dense[:, :, -1].all()), (key, name)
            assert not bool(dense[..., 0].all()), (key, name)  # block 0 is video: not forced


def test_cfg_as_two_calls_keeps_one_state_per_branch():
    both = _wan()
    handle = enable_adaspa(both, SPARSE)
    outs = _run(both, "wan", steps=5)
    alone = {}
    for branch in range(2):
        model = _wan()
        h = enable_adaspa(model, SPARSE)
        with torch.no_grad():
            alone[branch] = [model(**_inputs("wan", step, branch)).sample for step in range(5)]
        for name, layer in h.layers(0).items():
            assert handle.layers(branch)[name].mask == layer.mask
    for step in range(5):
        for branch in range(2):
            assert torch.equal(outs[2 * step + branch], alone[branch][step])
    m0, m1 = (handle.layers(b)["blocks.0.attn1"].mask for b in range(2))
    assert m0 != m1


def test_cfg_as_batch_of_two_keeps_one_state_per_batch_element():
    pair = _cogvideox()
    handle = enable_adaspa(pair, SPARSE)
    _run(pair, "cogvideox", steps=4)
    for b in range(2):
        single = _cogvideox()
        h = enable_adaspa(single, SPARSE)
        with torch.no_grad():
            for step in range(4):
                kwargs = {k: v[b:b + 1] for k, v in _inputs("cogvideox", step, 0).items()}
                single(**kwargs)
        for name, layer in h.layers(0).items():
            assert torch.equal(handle.layers(0)[name].mask.to_dense()[b], layer.mask.to_dense()[0])
            assert torch.equal(handle.layers(0)[name].head_sparsity[b], layer.head_sparsity[0])


def _hunyuan_sample(model, text, mask, step, seed=3):
    g = torch.Generator().manual_seed(seed + step)
    return model(hidden_states=torch.randn(2, 4, 3, 16, 16, generator=g), timestep=torch.full((2,), TIMESTEPS[step]),
                 encoder_hidden_states=text, encoder_attention_mask=mask,
                 pooled_projections=torch.randn(2, 8, generator=g)).sample


@pytest.mark.parametrize("masked", [True, False])
def test_padded_hunyuan_text_gets_no_attention(masked):
    """Changing padded prompt tokens leaves the video untouched; without the mask it would not."""
    text = torch.randn(2, 8, 16, generator=torch.Generator().manual_seed(7))
    lengths = torch.tensor([5, 8]) if masked else torch.tensor([8, 8])
    mask = (torch.arange(8) < lengths[:, None]).long()
    changed = text.clone()
    changed[0, 5:] += 10.0
    runs = []
    for prompt in (text, changed):
        model = _hunyuan()
        enable_adaspa(model, SPARSE)
        with torch.no_grad():
            runs.append([_hunyuan_sample(model, prompt, mask, step) for step in range(6)])
    for step, (a, b) in enumerate(zip(*runs)):
        assert torch.equal(a[1], b[1])  # element 1's prompt is the same in both runs
        assert torch.equal(a[0], b[0]) == masked, f"step {step}"


def test_a_timestep_going_up_starts_a_new_generation_and_repeats_are_branches():
    model = _wan()
    handle = enable_adaspa(model, SPARSE)
    seen = []
    with torch.no_grad():
        for step in (0, 0, 1, 1, 2, 2, 3, 0):
            model(**_inputs("wan", step, 0, batch=1))
            seen.append((handle.step, handle.branch))
    assert seen == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1), (3, 0), (0, 0)]
    assert [r.phase for r in handle.layers(0)["blocks.0.attn1"].history] == ["dense"]
    assert handle.layers(1) == {}


def test_per_token_timesteps_with_a_zero_first_frame_still_advance_the_step():
    """Wan 2.2 TI2V image-to-video passes timestep [B, L] that is 0 on the conditioning frame's tokens."""
    model = _wan()
    handle = enable_adaspa(model, SPARSE)
    seen = []
    with torch.no_grad():
        for step in range(3):
            kwargs = _inputs("wan", step, 0, batch=1)
            timestep = torch.full((1, 3 * 8 * 8), TIMESTEPS[step])  # [B, frames * h * w] after patching
            timestep[:, :8 * 8] = 0.0
            model(**dict(kwargs, timestep=timestep))
            seen.append((handle.step, handle.branch))
    assert seen == [(0, 0), (1, 0), (2, 0)]


def test_unsupported_model_names_the_supported_ones():
    with pytest.raises(TypeError) as err:
        enable_adaspa(torch.nn.Linear(2, 2))
    for name in MODELS:
        assert name in str(err.value)


def test_enable_twice_and_disable_when_off_raise():
    model = _wan()
    with pytest.raises(ValueError, match="not enabled"):
        disable_adaspa(model)
    enable_adaspa(model)
    with pytest.raises(ValueError, match="already enabled"):
        enable_adaspa(model)
    with pytest.raises(TypeError, match="config"):
        enable_adaspa(_wan(), {"sparsity": 0.5})


def test_non_native_attention_backend_fails_loudly(monkeypatch):
    model = _wan()
    enable_adaspa(model, SPARSE)
    processor = model.blocks[0].attn1.processor
    monkeypatch.setattr(processor, "stock", lambda attn, hidden_states, *a, **k: hidden_states)
    with pytest.raises(RuntimeError, match="native"), torch.no_grad():
        model(**_inputs("wan", 0, 0, batch=1))
