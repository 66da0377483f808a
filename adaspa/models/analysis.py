"""The trained model's attention as AdaSpa sees it: exact block mass of every layer at one step."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .data import tokenize
from .sample import euler_sample


class _MassAtStep:
    """Dense attention that also records the exact block mass `[B, H, nq, nk]` at one step."""

    def __init__(self, step: int, block_size: int):
        self.step = step
        self.block_size = block_size
        self.mass = None

    def __call__(self, q, k, v, *, step=None):
        if step != self.step:
            return F.scaled_dot_product_attention(q, k, v)
        from adaspa import reference

        out, _, self.mass = reference.attention_with_block_mass(q, k, v, block_size=self.block_size)
        return out


def capture_block_mass(model, caption: str, *, step: int = 10, steps: int = 50, block_size: int = 64,
                       seed: int = 0, guidance: float = 1.0, frames: Optional[int] = None) -> torch.Tensor:
    """Exact block attention mass of every layer of `model` at denoising step `step` for `caption`.

    Samples steps `0 .. step` with dense attention (the schedule of `steps`), and at
    `step` computes each layer's mass with `adaspa.reference.attention_with_block_mass`.
    With `guidance != 1` the conditional half of the batch is returned.

    Returns:
        float32 `[depth, H, nq, nk]`; row `p` of every map sums to the number of tokens
        of query block `p`. The joint sequence is text first (`model.config.text_len`
        tokens), then video frame-major.

    Example:
        >>> from adaspa.models import load_default
        >>> mass = capture_block_mass(load_default(), "a red circle moving left and a blue square moving up on "
        ...                           "stripes", step=1, steps=4, frames=2)
        >>> tuple(mass.shape), round(float(mass[0, 0, 1].sum()))
        ((8, 8, 9, 9), 64)
    """
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < steps:
        raise ValueError(f"step must be an int in [0, steps={steps}), got {step!r}")
    layers = model.set_attention(lambda i: _MassAtStep(step, block_size))
    tokens = tokenize(caption, model.config.text_len)[None]
    euler_sample(model, tokens, steps=steps, seed=seed, guidance=guidance, frames=frames, stop_at=step + 1)
    model.set_attention("dense")
    return torch.stack([layer.mass[0] for layer in layers]).float().cpu()
