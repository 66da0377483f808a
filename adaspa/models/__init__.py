"""A tiny trained text-to-video DiT shipped with adaspa, so AdaSpa can be seen on a real network.

`load_default()` loads the shipped weights (offline), `generate(model, caption)`
samples a clip with dense attention or AdaSpa, `save_video` writes it as GIF/MP4.
See docs/model.md for what the model was trained on and its limits.

Example:
    >>> from adaspa.models import load_default, generate
    >>> model = load_default()
    >>> clip = generate(model, "a red circle moving left and a blue square moving up on stripes", steps=2)
    >>> tuple(clip.shape)
    (8, 3, 32, 32)
"""

from __future__ import annotations

import json
import os
from importlib import resources
from typing import Callable, Optional, Union

import torch

from .analysis import capture_block_mass
from .data import TEXT_LEN, VOCAB, sample_batch, tokenize
from .dit import DenseAttention, DiTConfig, TinyVideoDiT
from .sample import euler_sample

__all__ = ["DenseAttention", "DiTConfig", "TinyVideoDiT", "VOCAB", "TEXT_LEN", "capture_block_mass",
           "default_weights_path",
           "euler_sample", "generate", "load_default", "load_weights", "sample_batch", "save_video", "tokenize"]

DEFAULT_CAPTION = "a red circle moving right and a yellow square moving down on stripes"


def default_weights_path() -> str:
    """Path of the shipped safetensors file (it may be missing in a source checkout without weights).

    The file holds the `TinyVideoDiT` parameters (e.g. `patch_embed.weight: [dim, 3 * patch**2]`)
    and its `DiTConfig` as metadata.

    Example:
        >>> default_weights_path().endswith("tiny_dit.safetensors")
        True
    """
    return str(resources.files(__name__).joinpath("weights", "tiny_dit.safetensors"))


def load_weights(path: str, *, device="cpu", dtype: torch.dtype = torch.float32) -> TinyVideoDiT:
    """Build a `TinyVideoDiT` from a safetensors file written by `adaspa.models.train`.

    The file's metadata holds the `DiTConfig` (key "config") and the training
    record (key "train", exposed as `model.train_info`). Returns the model in eval
    mode; it maps clips `[B, F, 3, H, W]` and token ids `[B, text_len]` to velocities.

    Example:
        >>> model = load_weights(default_weights_path())
        >>> model.config.depth, model.train_info["card"]
        (8, 'NVIDIA H200')
    """
    try:
        from safetensors import safe_open
        from safetensors.torch import load_file
    except ImportError as exc:
        raise ImportError("loading the model needs safetensors: pip install 'adaspa[demo]'") from exc
    if not os.path.exists(path):
        raise FileNotFoundError(f"no model weights at {path}; retrain them with `python -m adaspa.models.train "
                                f"--out DIR` on a GPU and copy DIR/tiny_dit.safetensors there")
    with safe_open(path, framework="pt") as fh:
        meta = fh.metadata() or {}
    if "config" not in meta:
        raise ValueError(f"{path} has no 'config' metadata; was it written by adaspa.models.train?")
    model = TinyVideoDiT(DiTConfig(**json.loads(meta["config"])))
    model.load_state_dict(load_file(path))
    model.train_info = json.loads(meta.get("train", "{}"))
    return model.to(device=device, dtype=dtype).eval()


def load_default(*, device="cpu", dtype: torch.dtype = torch.float32) -> TinyVideoDiT:
    """Load the shipped tiny DiT (no network); raises `FileNotFoundError` if the weights are missing.

    The model maps a clip `[B, F, 3, H, W]`, a timestep `[B]` and caption tokens
    `[B, text_len]` to a velocity `[B, F, 3, H, W]`.

    Example:
        >>> load_default().config.text_len
        8
    """
    return load_weights(default_weights_path(), device=device, dtype=dtype)


def generate(
    model: TinyVideoDiT,
    caption: str = DEFAULT_CAPTION,
    *,
    steps: int = 50,
    seed: int = 0,
    attention: Union[str, object, Callable] = "dense",
    guidance: float = 3.0,
    frames: Optional[int] = None,
    device=None,
    callback: Optional[Callable[[int, torch.Tensor], None]] = None,
) -> torch.Tensor:
    """Generate one clip `[F, 3, H, W]` in [0, 1] (float32, CPU) for `caption`.

    `attention` is `"dense"`, an `adaspa.AdaSpaConfig` (one `AdaSpaAttention` per
    layer; the text layout is filled in from the model) or a factory
    `layer_index -> attn(q, k, v, *, step)`; the callables stay in
    `model.attention` after the call, so their state (e.g. AdaSpa's masks) can be
    inspected. `frames` below the training 8 makes a cheaper, shorter clip (RoPE
    positions are absolute; quality is best at 8). Same `seed` -> same noise, so
    dense and AdaSpa clips are directly comparable. `callback(step, x)` reports progress.

    Example:
        >>> model = load_default()
        >>> clip = generate(model, "a green triangle moving up and a white circle moving left on checks",
        ...                 steps=2, frames=2)
        >>> tuple(clip.shape), bool(clip.min() >= 0 and clip.max() <= 1)
        ((2, 3, 32, 32), True)
    """
    if device is not None:
        model = model.to(device)
    model.set_attention(attention)
    tokens = tokenize(caption, model.config.text_len)[None]
    video = euler_sample(model, tokens, steps=steps, seed=seed, guidance=guidance, frames=frames,
                         callback=callback)
    return ((video[0].float().cpu() + 1) / 2).clamp(0, 1)


def save_video(video: torch.Tensor, path: str, *, fps: int = 4, upscale: int = 4) -> str:
    """Write a clip `[F, 3, H, W]` in [0, 1] as GIF or MP4 (by `path`'s extension) with imageio.

    Pixels are repeated `upscale` times per axis so the 32x32 clip is visible. Returns `path`.

    Example:
        >>> save_video(torch.rand(4, 3, 8, 8), "/tmp/clip.gif")
        '/tmp/clip.gif'
    """
    try:
        import imageio.v3 as iio
    except ImportError as exc:
        raise ImportError("writing clips needs imageio: pip install 'adaspa[demo]'") from exc
    if video.dim() != 4 or video.shape[1] != 3:
        raise ValueError(f"video must be [F, 3, H, W], got shape {tuple(video.shape)}")
    frames = (video.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)  # [F, H, W, 3]
    frames = frames.repeat_interleave(upscale, 1).repeat_interleave(upscale, 2).numpy()
    if path.lower().endswith(".gif"):
        iio.imwrite(path, frames, duration=1000 / fps, loop=0)
    else:
        iio.imwrite(path, frames, fps=fps)
    return path
