"""Euler sampling of the rectified flow, with classifier-free guidance as a batch of 2.

Time runs from t = 0 (pure noise) to t = 1 (clean clip): `x_t = t * x_1 + (1 - t) * noise`,
and the model predicts the velocity `x_1 - noise`. Step `i` of `steps` evaluates
the model at `t = i / steps` and passes `step=i` to the attention callables, the
index AdaSpa's warm-up and search schedule counts.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch



@torch.no_grad()
def euler_sample(
    model,
    tokens: torch.Tensor,
    *,
    steps: int = 50,
    guidance: float = 3.0,
    noise: Optional[torch.Tensor] = None,
    seed: int = 0,
    frames: Optional[int] = None,
    height: Optional[int] = None,
    width: Optional[int] = None,
    callback: Optional[Callable[[int, torch.Tensor], None]] = None,
    stop_at: Optional[int] = None,
) -> torch.Tensor:
    """Sample clips `[B, F, C, H, W]` in about [-1, 1] for token ids `tokens [B, text_len]`.

    With `guidance != 1` the conditional and unconditional (all-`<pad>` caption)
    halves run as one batch of `2B`, so per-batch-element attention state (AdaSpa's
    masks) is kept apart for the two. `noise` (same shape as the output) overrides
    the seeded starting noise. `callback(step, x)` is called after every step.
    `stop_at` ends the loop before that step (the schedule is still that of
    `steps`), returning the partly denoised state. Resets the model's attention state first.

    Example:
        >>> from adaspa.models.dit import TinyVideoDiT, DiTConfig
        >>> model = TinyVideoDiT(DiTConfig(dim=32, depth=1, heads=2, frames=2, height=8, width=8))
        >>> euler_sample(model, torch.zeros(1, 8, dtype=torch.long), steps=2).shape
        torch.Size([1, 2, 3, 8, 8])
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    config = model.config
    batch = tokens.shape[0]
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    shape = (batch, frames or config.frames, config.channels, height or config.height, width or config.width)
    if noise is None:
        generator = torch.Generator(device="cpu").manual_seed(seed)
        noise = torch.randn(shape, generator=generator)
    elif tuple(noise.shape) != shape:
        raise ValueError(f"noise must have shape {shape}, got {tuple(noise.shape)}")
    # The state is integrated in float32 even for a bf16 model, so 50 small steps do not round away.
    x = noise.to(device=device, dtype=torch.float32)
    tokens = tokens.to(device)
    guided = guidance != 1.0
    if guided:
        tokens = torch.cat([tokens, torch.zeros_like(tokens)])
    model.reset_attention()
    for i in range(steps if stop_at is None else min(stop_at, steps)):
        t = torch.full((x.shape[0] * (2 if guided else 1),), i / steps, device=device)
        inp = (torch.cat([x, x]) if guided else x).to(dtype)
        velocity = model(inp, t, tokens, step=i).float()
        if guided:
            cond, uncond = velocity.chunk(2)
            velocity = uncond + guidance * (cond - uncond)
        x = x + velocity / steps
        if callback is not None:
            callback(i, x)
    return x
