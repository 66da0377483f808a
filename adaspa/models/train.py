"""Train the tiny text-to-video DiT with rectified flow: `python -m adaspa.models.train`.

The run is time-boxed by wall clock (not a step count), so the same command
fits a fixed GPU budget; it saves an fp16 EMA checkpoint every `--save-every`
seconds and at the end, so an interrupted run still leaves weights. Data are
rendered on the fly on the training device (`adaspa.models.data`), seeded.

Example (the shipped weights; see docs/model.md for the card and time):
    python -m adaspa.models.train --minutes 5 --batch 64 --out runs/tiny_dit
A CPU smoke run:
    python -m adaspa.models.train --tiny --minutes 0.2 --out /tmp/tiny
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time
from dataclasses import asdict
from typing import Optional

import torch
import torch.nn.functional as F

from .data import sample_batch
from .dit import DiTConfig, TinyVideoDiT

TINY = DiTConfig(dim=32, depth=2, heads=2, frames=2, height=8, width=8)


def flow_loss(model, video: torch.Tensor, tokens: torch.Tensor, *, generator: torch.Generator,
              drop_caption: float = 0.1) -> torch.Tensor:
    """Rectified-flow loss on one batch: MSE between predicted and true velocity `video - noise`.

    `t` is logit-normal (denser in the middle, as in SD3); a fraction `drop_caption`
    of captions is replaced by all-`<pad>` so the model also learns the
    unconditional velocity that classifier-free guidance needs.

    Example:
        >>> model = TinyVideoDiT(TINY)
        >>> g = torch.Generator().manual_seed(0)
        >>> video, tokens, _ = sample_batch(2, generator=g, frames=2, size=8)
        >>> float(flow_loss(model, video, tokens, generator=g)) > 0
        True
    """
    batch = video.shape[0]
    device = video.device
    noise = torch.randn(video.shape, generator=generator, device=device)
    t = torch.sigmoid(torch.randn(batch, generator=generator, device=device))
    keep = torch.rand(batch, generator=generator, device=device) >= drop_caption
    tokens = tokens * keep[:, None]
    x_t = t[:, None, None, None, None] * video + (1 - t[:, None, None, None, None]) * noise
    velocity = model(x_t, t, tokens)
    return F.mse_loss(velocity.float(), (video - noise).float())


def save_weights(model, path: str, metadata: dict) -> None:
    """Write the model's weights as fp16 safetensors with its `DiTConfig` and `metadata` as JSON."""
    from safetensors.torch import save_file

    tensors = {name: p.detach().to("cpu", torch.float16).contiguous() for name, p in model.state_dict().items()}
    meta = {"config": json.dumps(asdict(model.config)), "train": json.dumps(metadata)}
    tmp = path + ".tmp"
    save_file(tensors, tmp, metadata=meta)
    os.replace(tmp, path)


def train(
    config: DiTConfig = DiTConfig(),
    *,
    minutes: float = 5.0,
    max_steps: Optional[int] = None,
    batch: int = 64,
    lr: float = 4e-4,
    warmup: int = 200,
    ema_decay: float = 0.998,
    seed: int = 0,
    device: str = "cpu",
    out: Optional[str] = None,
    save_every: float = 60.0,
    log_every: int = 50,
) -> tuple:
    """Train from scratch; return `(ema_model, losses)` (losses: one float per step).

    Stops at `minutes` of wall clock or `max_steps`, whichever comes first. The
    learning rate warms up for `warmup` steps and then decays on a cosine of the
    elapsed fraction of the time box. bf16 autocast on CUDA, float32 on CPU.
    With `out`, `out/tiny_dit.safetensors` (EMA weights) and `out/train_log.json`
    are rewritten every `save_every` seconds and at the end.

    Example:
        >>> _, losses = train(TINY, max_steps=3, batch=2)
        >>> len(losses)
        3
    """
    torch.manual_seed(seed)
    model = TinyVideoDiT(config).to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    generator = torch.Generator(device=device).manual_seed(seed)
    use_bf16 = torch.device(device).type == "cuda"
    card = torch.cuda.get_device_name(device) if use_bf16 else "cpu"
    params = sum(p.numel() for p in model.parameters())
    losses: list = []
    budget = minutes * 60.0
    start = last_save = time.perf_counter()
    if out:
        os.makedirs(out, exist_ok=True)

    def checkpoint(final: bool):
        elapsed = time.perf_counter() - start
        info = {"steps": len(losses), "seconds": round(elapsed, 1), "batch": batch, "lr": lr, "seed": seed,
                "card": card, "params": params, "final": final, "bf16": use_bf16,
                "final_loss_mean_100": float(sum(losses[-100:]) / max(1, len(losses[-100:]))),
                "torch": torch.__version__}
        save_weights(ema, os.path.join(out, "tiny_dit.safetensors"), info)
        with open(os.path.join(out, "train_log.json"), "w") as fh:
            json.dump({**info, "losses": [round(v, 5) for v in losses]}, fh)

    step = 0
    while True:
        elapsed = time.perf_counter() - start
        if elapsed >= budget or (max_steps is not None and step >= max_steps):
            break
        scale = min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * elapsed / budget)))
        for group in opt.param_groups:
            group["lr"] = lr * scale
        video, tokens, _ = sample_batch(batch, generator=generator, frames=config.frames, size=config.height)
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=use_bf16):
            loss = flow_loss(model, video, tokens, generator=generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), model.parameters()):
                p_ema.lerp_(p, 1 - decay)
        losses.append(float(loss.detach()))
        step += 1
        if log_every and step % log_every == 0:
            recent = losses[-log_every:]
            print(f"step {step:5d}  {elapsed:6.1f}s  loss {sum(recent) / len(recent):.4f}  lr {lr * scale:.2e}",
                  flush=True)
        if out and time.perf_counter() - last_save >= save_every:
            checkpoint(False)
            last_save = time.perf_counter()
    if out:
        checkpoint(True)
    return ema, losses


PREVIEW_CAPTIONS = (
    "a red circle moving right and a yellow square moving down on stripes",
    "a blue triangle moving up and a white circle moving left on checks",
    "a green square moving left and a magenta triangle moving right on plain",
    "a cyan circle moving down and a red triangle moving up on stripes",
)


def preview(model, out: str, *, steps: int = 50, seed: int = 0, sparsity: float = 0.8) -> dict:
    """Sample `PREVIEW_CAPTIONS` dense and with AdaSpa (reference ops, no tiers); write a strip and numbers.

    Writes `out/preview.png` (per caption: dense frames over AdaSpa frames) and
    `out/preview.json`: PSNR of the AdaSpa clips vs dense, and each layer's
    recall of the row-wise top-k mask at base `sparsity` at the first search step.
    """
    import imageio.v3 as iio

    from adaspa import AdaSpaConfig
    from adaspa.fidelity import psnr

    from .data import tokenize
    from .sample import euler_sample

    tokens = torch.stack([tokenize(c, model.config.text_len) for c in PREVIEW_CAPTIONS])
    model.set_attention("dense")
    dense = euler_sample(model, tokens, steps=steps, seed=seed)
    config = AdaSpaConfig(sparsity=sparsity, head_adaptive=False, backend="reference", min_seq_len=0)
    layers = model.set_attention(config)
    sparse = euler_sample(model, tokens, steps=steps, seed=seed)
    model.set_attention("dense")
    recalls = [float(r.recall.mean()) for layer in layers for r in layer.history
               if r.recall is not None and r.step == config.search_steps[0]]
    dense01, sparse01 = ((dense.float() + 1) / 2).clamp(0, 1), ((sparse.float() + 1) / 2).clamp(0, 1)
    info = {"captions": list(PREVIEW_CAPTIONS), "steps": steps, "sparsity": sparsity,
            "psnr_adaspa_vs_dense": psnr(sparse01, dense01).tolist(),
            "recall_per_layer": recalls, "recall_mean": sum(recalls) / max(1, len(recalls))}
    rows = torch.stack([dense01, sparse01], dim=1).flatten(0, 1)  # [2N, F, C, H, W]
    n, f, c, h, w = rows.shape
    strip = rows.permute(0, 3, 1, 4, 2).reshape(n * h, f * w, c)
    strip = (strip.repeat_interleave(3, 0).repeat_interleave(3, 1) * 255).round().to(torch.uint8).cpu().numpy()
    iio.imwrite(os.path.join(out, "preview.png"), strip)
    with open(os.path.join(out, "preview.json"), "w") as fh:
        json.dump(info, fh, indent=1)
    print(json.dumps({k: v for k, v in info.items() if k != "captions"}), flush=True)
    return info


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="wall-clock training budget")
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="runs/tiny_dit")
    parser.add_argument("--save-every", type=float, default=60.0, help="seconds between checkpoints")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer toy config for CPU smoke runs")
    parser.add_argument("--preview-steps", type=int, default=0,
                        help="after training, sample the preview captions with this many steps (0: skip)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    ema, _ = train(TINY if args.tiny else DiTConfig(), minutes=args.minutes, max_steps=args.max_steps,
                   batch=args.batch, lr=args.lr, seed=args.seed, device=args.device, out=args.out,
                   save_every=args.save_every)
    print(f"saved {os.path.join(args.out, 'tiny_dit.safetensors')}", flush=True)
    if args.preview_steps:
        preview(ema.eval(), args.out, steps=args.preview_steps, seed=args.seed)


if __name__ == "__main__":
    main()
