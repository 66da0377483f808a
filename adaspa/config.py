"""`AdaSpaConfig`: the validated settings of one AdaSpa schedule.

Defaults are the paper's (50 denoising steps, dense warm-up of 10 steps, searches
at steps 10 and 30, sparsity 0.8, 64-token blocks, recall threshold 0.8); see
ALGORITHM.md section 5 and docs/algorithm.md. Steps are 0-based.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Tuple

from ._validation import check_block_size

BACKENDS = ("auto", "kernels", "reference")
TEXT_POSITIONS = ("first", "last")

# The GPU crossover (docs/benchmarks.md, "Crossover"; H200, B=1, H=24, D=128, bf16,
# density 0.2): the block-sparse kernel loses to SDPA cuDNN at L <= 2048 (fixed
# per-call costs) and wins from L = 4096 (1.25-1.48x). Larger B*H lowers it.
DEFAULT_MIN_SEQ_LEN = 4096


def scale_steps(paper_steps, steps: int) -> tuple:
    """Step indices of the paper's 50-step schedule scaled to a run of `steps` steps.

    Each index becomes `min(round(x * steps / 50), steps - 1)`; indices that fall on or
    before the previous one are dropped, so the result is strictly increasing.

    Example:
        >>> scale_steps((10, 30), 50), scale_steps((10, 30), 10), scale_steps((10, 30), 1)
        ((10, 30), (2, 6), (0,))
    """
    out = []
    for x in paper_steps:
        y = min(round(x * steps / 50), steps - 1)
        if not out or y > out[-1]:
            out.append(y)
    return tuple(out)


def _check_int(value, name: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_fraction(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float in [0, 1], got {type(value).__name__}")
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
    return float(value)


@dataclass(frozen=True)
class AdaSpaConfig:
    """Settings of the AdaSpa schedule, checked at construction.

    Attributes:
        block_size: tokens per block on both axes (a power of two >= 16).
        sparsity: base fraction of candidate key blocks dropped per query block, in [0, 1].
        warmup_steps: steps `0 .. warmup_steps-1` run dense attention.
        search_steps: strictly increasing steps (each >= `warmup_steps`) that search a
            new mask. The first runs the fused search (exact output, mask, LSE cached);
            the later ones the LSE-cached search (or the fused one if `lse_cache=False`).
            Steps from `warmup_steps` up to the first search step stay dense.
        recall_threshold: a head whose recall at the base sparsity is strictly above this
            counts as "easy" for the head-adaptive tiers.
        head_adaptive: three sparsity tiers per head (ALGORITHM.md section 3); if False,
            every head uses `sparsity`.
        lse_cache: later searches reuse the LSE of the first search (half the work).
        rowwise: row-wise top-k selection (the default); False selects a global top-k.
        text_len: number of text tokens in the joint sequence (0 for none).
        text_position: where the text sits, `"first"` (CogVideoX) or `"last"` (HunyuanVideo).
        backend: `"auto"` (Triton kernels for CUDA tensors, the PyTorch reference otherwise),
            `"kernels"` or `"reference"`.
        min_seq_len: below this many query tokens the layer stays dense, because the
            sparse path would not pay; 0 turns the fallback off.

    Example:
        >>> from adaspa import AdaSpaConfig
        >>> cfg = AdaSpaConfig(sparsity=0.9, text_len=226, text_position="first")
        >>> cfg.search_steps, cfg.block_size
        ((10, 30), 64)
        >>> AdaSpaConfig(warmup_steps=12)
        Traceback (most recent call last):
        ...
        ValueError: search_steps must all be >= warmup_steps=12, got (10, 30)
    """

    block_size: int = 64
    sparsity: float = 0.8
    warmup_steps: int = 10
    search_steps: Tuple[int, ...] = (10, 30)
    recall_threshold: float = 0.8
    head_adaptive: bool = True
    lse_cache: bool = True
    rowwise: bool = True
    text_len: int = 0
    text_position: str = "last"
    backend: str = "auto"
    min_seq_len: int = DEFAULT_MIN_SEQ_LEN

    def __post_init__(self):
        check_block_size(self.block_size, "block_size")
        object.__setattr__(self, "sparsity", _check_fraction(self.sparsity, "sparsity"))
        object.__setattr__(self, "recall_threshold", _check_fraction(self.recall_threshold, "recall_threshold"))
        _check_int(self.warmup_steps, "warmup_steps")
        _check_int(self.text_len, "text_len")
        _check_int(self.min_seq_len, "min_seq_len")
        for name in ("head_adaptive", "lse_cache", "rowwise"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {type(getattr(self, name)).__name__}")
        if isinstance(self.search_steps, (str, bytes)) or not hasattr(self.search_steps, "__iter__"):
            raise TypeError(f"search_steps must be a tuple of ints, got {type(self.search_steps).__name__}")
        steps = tuple(self.search_steps)
        for s in steps:
            _check_int(s, "search_steps")
        if not steps:
            raise ValueError("search_steps must hold at least one step (the first search builds the mask)")
        if any(b <= a for a, b in zip(steps, steps[1:])):
            raise ValueError(f"search_steps must be strictly increasing, got {steps}")
        if steps[0] < self.warmup_steps:
            raise ValueError(f"search_steps must all be >= warmup_steps={self.warmup_steps}, got {steps}")
        object.__setattr__(self, "search_steps", steps)
        if self.text_position not in TEXT_POSITIONS:
            raise ValueError(f"text_position must be one of {TEXT_POSITIONS}, got {self.text_position!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")

    def replace(self, **changes) -> "AdaSpaConfig":
        """A copy with `changes` applied (and validated again).

        Example:
            >>> AdaSpaConfig().replace(sparsity=0.5).sparsity
            0.5
        """
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise TypeError(f"AdaSpaConfig has no field(s) {sorted(unknown)}")
        return replace(self, **changes)

    def phase_at(self, step: int) -> str:
        """The phase the schedule assigns to `step` for a layer that has searched as planned.

        Returns one of `"dense"`, `"search"`, `"cached_search"`, `"sparse"`; the layer
        itself may deviate (dense below `min_seq_len`, a fused search when it has no
        mask yet).

        Example:
            >>> cfg = AdaSpaConfig(warmup_steps=2, search_steps=(2, 4))
            >>> [cfg.phase_at(s) for s in range(6)]
            ['dense', 'dense', 'search', 'sparse', 'cached_search', 'sparse']
        """
        _check_int(step, "step")
        first = self.search_steps[0]
        if step < first:
            return "dense"
        if step == first:
            return "search"
        if step in self.search_steps:
            return "cached_search" if self.lse_cache else "search"
        return "sparse"
