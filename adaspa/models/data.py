"""Synthetic captioned video clips: two moving shapes over a textured background.

Every clip is rendered on the fly, vectorized over the batch, on whatever device
the generator lives on, so training never waits for a data loader. A caption
names each object's color, shape and direction of motion, and the background
texture; the tokenizer maps it to a fixed-length token sequence.

The clip content is chosen to give attention something to find: objects move
across frames (temporal links), shapes have edges (spatial neighbours), and the
static textured background repeats across frames (frame-to-frame structure).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

COLORS = {
    "red": (0.90, 0.15, 0.10),
    "green": (0.10, 0.80, 0.20),
    "blue": (0.15, 0.30, 0.95),
    "yellow": (0.95, 0.90, 0.10),
    "cyan": (0.10, 0.85, 0.90),
    "magenta": (0.90, 0.20, 0.85),
    "white": (0.95, 0.95, 0.95),
}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
TEXTURES = ("stripes", "checks", "plain")

SPECIAL = ("<pad>", "<bos>")
VOCAB = SPECIAL + tuple(COLORS) + SHAPES + tuple(DIRECTIONS) + TEXTURES
FILLER = frozenset({"a", "an", "the", "moving", "and", "on", "with", "background", "going", "is", "one"})
TEXT_LEN = 8


@dataclass(frozen=True)
class ClipLabels:
    """What a batch of clips shows, as integer class ids.

    Attributes:
        color, shape, direction: int64 `[B, 2]`, one entry per object.
        texture: int64 `[B]`.
    """

    color: torch.Tensor
    shape: torch.Tensor
    direction: torch.Tensor
    texture: torch.Tensor

    def captions(self) -> list[str]:
        """Readable captions, e.g. "a red circle moving left and a blue square moving up on stripes"."""
        colors, directions = list(COLORS), list(DIRECTIONS)
        out = []
        for b in range(self.texture.shape[0]):
            objects = [
                f"a {colors[int(self.color[b, i])]} {SHAPES[int(self.shape[b, i])]} moving "
                f"{directions[int(self.direction[b, i])]}"
                for i in range(2)
            ]
            out.append(f"{objects[0]} and {objects[1]} on {TEXTURES[int(self.texture[b])]}")
        return out


def tokenize(caption: str, text_len: int = TEXT_LEN) -> torch.Tensor:
    """Map a caption to int64 token ids `[text_len]`: `<bos>`, the known words, then `<pad>`.

    Filler words ("a", "moving", "and", "on", ...) are dropped; any other word
    must be in `VOCAB`.

    Example:
        >>> tokenize("a red circle moving left and a blue square moving up on stripes").tolist()
        [1, 2, 9, 12, 4, 10, 14, 16]
    """
    if not isinstance(caption, str):
        raise TypeError(f"caption must be a str, got {type(caption).__name__}")
    words = [w for w in re.findall(r"[a-z]+", caption.lower()) if w not in FILLER]
    unknown = sorted({w for w in words if w not in VOCAB})
    if unknown:
        raise ValueError(f"caption has words outside the vocabulary: {unknown}; known words: "
                         f"{', '.join(VOCAB[len(SPECIAL):])}")
    if len(words) > text_len - 1:
        raise ValueError(f"caption has {len(words)} content words, at most {text_len - 1} fit in text_len={text_len}")
    ids = [VOCAB.index("<bos>")] + [VOCAB.index(w) for w in words]
    return torch.tensor(ids + [0] * (text_len - len(ids)), dtype=torch.long)


def labels_to_tokens(labels: ClipLabels) -> torch.Tensor:
    """Token ids `[B, TEXT_LEN]` of the captions of `labels`, built without a Python loop."""
    batch = labels.texture.shape[0]
    offset_color = len(SPECIAL)
    offset_shape = offset_color + len(COLORS)
    offset_dir = offset_shape + len(SHAPES)
    offset_tex = offset_dir + len(DIRECTIONS)
    per_object = torch.stack(
        [labels.color + offset_color, labels.shape + offset_shape, labels.direction + offset_dir], dim=-1
    ).reshape(batch, 6)  # [B, 6]
    bos = torch.full((batch, 1), VOCAB.index("<bos>"), dtype=torch.long, device=labels.texture.device)
    return torch.cat([bos, per_object, (labels.texture + offset_tex)[:, None]], dim=1)  # [B, 8]


def random_labels(batch: int, *, generator: torch.Generator) -> ClipLabels:
    """Uniformly drawn labels; the two objects always differ in color so captions are unambiguous."""
    device = generator.device

    def randint(high, *shape):
        return torch.randint(high, shape, generator=generator, device=device)

    first = randint(len(COLORS), batch)
    second = (first + 1 + randint(len(COLORS) - 1, batch)) % len(COLORS)
    return ClipLabels(
        color=torch.stack([first, second], dim=1),
        shape=randint(len(SHAPES), batch, 2),
        direction=randint(len(DIRECTIONS), batch, 2),
        texture=randint(len(TEXTURES), batch),
    )


def _shape_sdf(shape: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Approximate signed distance (pixels, negative inside) of circle / square / triangle."""
    circle = torch.sqrt(dx * dx + dy * dy) - radius
    square = torch.maximum(dx.abs(), dy.abs()) - 0.85 * radius
    # Upward triangle: apex at (0, -r), base at y = 0.8 r, half-width r at the base.
    side = (dx.abs() * 1.8 * radius - (dy + radius) * radius) / torch.sqrt((1.8 * radius) ** 2 + radius ** 2)
    triangle = torch.maximum(dy - 0.8 * radius, side)
    return torch.where(shape == 0, circle, torch.where(shape == 1, square, triangle))


def render(labels: ClipLabels, *, frames: int = 8, size: int = 32, generator: torch.Generator) -> torch.Tensor:
    """Render clips `[B, frames, 3, size, size]` in [-1, 1] for `labels`.

    Positions, speeds, radii, background colors and texture parameters are drawn
    from `generator`; the background is static, the objects move in a straight
    line centered on a random point so they stay mostly inside the frame.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> clip = render(random_labels(2, generator=g), generator=g)
        >>> tuple(clip.shape), bool(clip.abs().max() <= 1)
        ((2, 8, 3, 32, 32), True)
    """
    device = generator.device
    batch = labels.texture.shape[0]

    def uniform(low, high, *shape):
        return low + (high - low) * torch.rand(shape, generator=generator, device=device)

    coords = torch.arange(size, device=device, dtype=torch.float32) + 0.5
    y, x = torch.meshgrid(coords, coords, indexing="ij")  # [S, S] each

    base = uniform(0.05, 0.40, batch, 3)
    accent = (base + uniform(0.12, 0.25, batch, 3)).clamp(max=1.0)
    angle = uniform(0.0, math.pi, batch)
    freq = uniform(0.35, 0.8, batch)
    phase = uniform(0.0, 2 * math.pi, batch)
    proj = x * torch.cos(angle)[:, None, None] + y * torch.sin(angle)[:, None, None]  # [B, S, S]
    stripes = (torch.sin(freq[:, None, None] * proj + phase[:, None, None]) > 0).float()
    checks = ((torch.sin(freq[:, None, None] * x + phase[:, None, None])
               * torch.sin(freq[:, None, None] * y)) > 0).float()
    plain = proj / (size * 1.5) + 0.25
    pick = labels.texture[:, None, None]
    pattern = torch.where(pick == 0, stripes, torch.where(pick == 1, checks, plain.clamp(0, 1)))  # [B, S, S]
    background = base[:, :, None, None] + (accent - base)[:, :, None, None] * pattern[:, None]  # [B, 3, S, S]
    video = background[:, None].expand(batch, frames, 3, size, size).clone()  # [B, F, 3, S, S]

    palette = torch.tensor(list(COLORS.values()), device=device)  # [C, 3]
    heading = torch.tensor(list(DIRECTIONS.values()), device=device)  # [4, 2]
    t = torch.arange(frames, device=device, dtype=torch.float32) - (frames - 1) / 2  # [F]
    for obj in range(2):
        radius = uniform(3.5, 6.0, batch)
        speed = uniform(1.2, 2.2, batch)
        center = uniform(0.3 * size, 0.7 * size, batch, 2)
        path = center[:, None, :] + heading[labels.direction[:, obj]][:, None, :] * speed[:, None, None] * t[None, :, None]
        dx = x[None, None] - path[..., 0, None, None]  # [B, F, S, S]
        dy = y[None, None] - path[..., 1, None, None]
        sdf = _shape_sdf(labels.shape[:, obj, None, None, None], dx, dy, radius[:, None, None, None])
        alpha = (0.5 - sdf).clamp(0.0, 1.0)[:, :, None]  # [B, F, 1, S, S] anti-aliased edge
        color = palette[labels.color[:, obj]][:, None, :, None, None]  # [B, 1, 3, 1, 1]
        video = video * (1 - alpha) + color * alpha
    return video * 2 - 1


def sample_batch(batch: int, *, generator: torch.Generator, frames: int = 8, size: int = 32):
    """A training batch: clips `[B, F, 3, S, S]` in [-1, 1], token ids `[B, TEXT_LEN]`, and the labels.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> video, tokens, labels = sample_batch(4, generator=g)
        >>> tuple(video.shape), tuple(tokens.shape)
        ((4, 8, 3, 32, 32), (4, 8))
    """
    labels = random_labels(batch, generator=generator)
    video = render(labels, frames=frames, size=size, generator=generator)
    return video, labels_to_tokens(labels), labels
