"""`AdaSpaAttention`: the AdaSpa schedule as a drop-in attention for one layer.

One instance per attention layer (and per classifier-free-guidance branch when
the branches arrive as separate calls). Each call is one denoising step:

    step < first search step      dense       F.scaled_dot_product_attention
    step == first search step     search      fused: exact out + mass; mask, tiers; LSE cached
    later search step             cached_search   mass from the cached LSE; new mask; sparse out
    any other step                sparse      block-sparse attention with the current mask

All state (mask, LSE, tiers) carries a leading batch dimension, so every batch
element (e.g. the two halves of a CFG batch) keeps its own pattern. Sparse steps
and cached searches issue no host synchronization: records in `history` hold
device tensors and convert to Python numbers only when read.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from importlib import import_module
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ._validation import check_attention_inputs, resolve_scale
from .config import AdaSpaConfig
from .mask import BlockSparseMask


@dataclass(frozen=True)
class StepRecord:
    """What one call of `AdaSpaAttention` did. Tensor fields stay on the device.

    Attributes:
        step: the 0-based denoising step.
        phase: `"dense"`, `"search"`, `"cached_search"` or `"sparse"`.
        seq_len: query length of the call.
        density: float32 `[B, H]`, kept fraction of (query, key) pairs; None for dense.
        recall: float32 `[B, H]`, recall of the new mask under the searched mass; set
            only at search steps.
        head_sparsity: float64 `[B, H]`, the sparsity of each head's mask; None for dense.

    Example:
        >>> import torch
        >>> r = StepRecord(3, "sparse", 256, torch.full((1, 2), 0.25), None, torch.full((1, 2), 0.75))
        >>> r.as_dict()["density"]
        0.25
    """

    step: int
    phase: str
    seq_len: int
    density: Optional[torch.Tensor]
    recall: Optional[torch.Tensor]
    head_sparsity: Optional[torch.Tensor]

    def as_dict(self) -> dict:
        """Plain Python values (means over batch and heads); reading syncs with the device.

        Dense steps read as density 1.0; `recall` is None except at search steps.
        """
        def mean(x):
            return None if x is None else float(x.float().mean())

        return {
            "step": self.step,
            "phase": self.phase,
            "seq_len": self.seq_len,
            "density": 1.0 if self.density is None else mean(self.density),
            "recall": mean(self.recall),
            "sparsity": mean(self.head_sparsity),
        }


def _ops_for(backend: str, q: torch.Tensor):
    """The module holding the four heavy ops for `backend` and `q`'s device."""
    if backend == "auto":
        backend = "kernels" if q.is_cuda else "reference"
    return import_module(f"adaspa.{backend}")


class AdaSpaAttention(nn.Module):
    """AdaSpa attention for one layer: dense warm-up, exact searches, block-sparse steps.

    Args:
        config: an `AdaSpaConfig` (the paper's defaults if None).
        **overrides: fields replacing those of `config`, e.g. `sparsity=0.9`.

    Attributes:
        phase: the phase of the last call (None before the first).
        mask: the current `BlockSparseMask` `[B, H, nq, ...]`, or None before the first search.
        head_sparsity: float64 `[B, H]`, the sparsity of each head's mask, or None.
        lse: float32 `[B, H, L]`, the LSE cached at the first search, or None.
        history: one `StepRecord` per call since the last `reset()`.

    `forward(q, k, v, *, step=None, text_len=None, scale=None) -> out`:
        q: `[B, H, Lq, D]`, k, v: `[B, H, Lk, D]`, any strides; out `[B, H, Lq, D]` in q's dtype.
        step: the 0-based denoising step; None counts calls (one call = one step).
            A step below the previous one starts a new generation (as `reset()`).
        text_len: text tokens in this call's sequence; None uses `config.text_len`.
        scale: softmax scale, `1/sqrt(D)` if None.
    A call whose sizes (B, H, Lq, Lk, D, device, text_len) differ from the previous
    call's drops the mask and LSE with a warning; the next step that needs a mask then
    runs a fused search instead of applying a stale one.

    Example:
        >>> import torch
        >>> from adaspa import AdaSpaAttention
        >>> layer = AdaSpaAttention(warmup_steps=1, search_steps=(1, 3), sparsity=0.5,
        ...                         block_size=16, min_seq_len=0)
        >>> q = k = v = torch.randn(1, 2, 64, 16)
        >>> [(layer(q, k, v), layer.phase)[1] for _ in range(4)]
        ['dense', 'search', 'sparse', 'cached_search']
        >>> layer.mask.counts.shape, tuple(layer.head_sparsity.shape)
        (torch.Size([1, 2, 4]), (1, 2))
    """

    def __init__(self, config: Optional[AdaSpaConfig] = None, **overrides):
        super().__init__()
        if config is None:
            config = AdaSpaConfig()
        if not isinstance(config, AdaSpaConfig):
            raise TypeError(f"config must be an adaspa.AdaSpaConfig, got {type(config).__name__}")
        self.config = config.replace(**overrides) if overrides else config
        self.history: List[StepRecord] = []
        self.phase: Optional[str] = None
        self._calls = 0
        self._last_step: Optional[int] = None
        self._clear_state()

    def _clear_state(self) -> None:
        self.mask: Optional[BlockSparseMask] = None
        self.head_sparsity: Optional[torch.Tensor] = None
        self.lse: Optional[torch.Tensor] = None
        self._density: Optional[torch.Tensor] = None
        self._signature = None

    def reset(self) -> None:
        """Forget mask, LSE, tiers, history and the step counter: a new generation starts.

        Example:
            >>> layer = AdaSpaAttention(); layer.reset(); layer.history
            []
        """
        self._clear_state()
        self.history = []
        self.phase = None
        self._calls = 0
        self._last_step = None

    def extra_repr(self) -> str:
        c = self.config
        return (f"sparsity={c.sparsity}, block_size={c.block_size}, warmup_steps={c.warmup_steps}, "
                f"search_steps={c.search_steps}, backend={c.backend!r}")

    def _resolve_step(self, step) -> int:
        if step is None:
            return self._calls
        if isinstance(step, bool) or not isinstance(step, int):
            raise TypeError(f"step must be an int or None, got {type(step).__name__}")
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if self._last_step is not None and step < self._last_step:
            self.reset()
        return step

    def _resolve_text_len(self, text_len, q_len: int, kv_len: int) -> int:
        if text_len is None:
            text_len = self.config.text_len
        if isinstance(text_len, bool) or not isinstance(text_len, int):
            raise TypeError(f"text_len must be an int or None, got {type(text_len).__name__}")
        if not 0 <= text_len <= min(q_len, kv_len):
            raise ValueError(f"text_len must lie in [0, min(Lq, Lk)] = [0, {min(q_len, kv_len)}], got {text_len}")
        return text_len

    def _choose_phase(self, step: int, q_len: int) -> str:
        if q_len < self.config.min_seq_len:
            return "dense"
        planned = self.config.phase_at(step)
        if planned == "sparse" and self.mask is None:
            return "search"
        if planned == "cached_search" and self.lse is None:
            return "search"
        return planned

    def _select(self, mass: torch.Tensor, text_len: int, q_len: int, kv_len: int) -> torch.Tensor:
        """New mask and head tiers from `mass [B, H, nq, nk]`; returns the mask's recall `[B, H]`."""
        from .selection import head_adaptive_sparsity, recall, select_blocks, text_sink_blocks

        c = self.config
        forced = None
        if text_len:
            forced = text_sink_blocks(q_len, kv_len, text_len, text_position=c.text_position,
                                      block_size=c.block_size, device=mass.device)  # [nq, nk]
        batch, heads = mass.shape[:2]
        if c.head_adaptive:
            sparsity = head_adaptive_sparsity(mass, c.sparsity, recall_threshold=c.recall_threshold,
                                              forced=forced)  # [B, H]
        else:
            # float64, as the tiers: a float32 0.9 would change k (see select_blocks).
            sparsity = torch.full((batch, heads), c.sparsity, dtype=torch.float64, device=mass.device)
        self.mask = select_blocks(mass, sparsity, block_size=c.block_size, q_len=q_len, kv_len=kv_len,
                                  forced=forced, rowwise=c.rowwise)
        self.head_sparsity = sparsity
        self._density = self.mask.density()
        return recall(mass, self.mask)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, step: Optional[int] = None,
                text_len: Optional[int] = None, scale: Optional[float] = None) -> torch.Tensor:
        shape = check_attention_inputs(q, k, v)
        scale = resolve_scale(scale, shape.head_dim)
        step = self._resolve_step(step)
        text_len = self._resolve_text_len(text_len, shape.q_len, shape.kv_len)
        signature = (tuple(shape), q.device, text_len)
        if self._signature is not None and signature != self._signature:
            warnings.warn(
                f"AdaSpaAttention: input sizes changed from {self._signature} to {signature} at step {step}; "
                "dropping the mask and cached LSE (the next step that needs a mask runs a fused search)",
                stacklevel=2,
            )
            self._clear_state()
        self._signature = signature

        phase = self._choose_phase(step, shape.q_len)
        c = self.config
        search_recall = None
        if phase == "dense":
            # [B, H, Lq, D]; SDPA picks the fastest dense kernel (flash / cuDNN on a GPU).
            out = F.scaled_dot_product_attention(q, k, v, scale=scale)
        else:
            ops = _ops_for(c.backend, q)
            if phase == "search":
                out, lse, mass = ops.attention_with_block_mass(q, k, v, block_size=c.block_size, scale=scale)
                self.lse = lse  # [B, H, Lq]
                search_recall = self._select(mass, text_len, shape.q_len, shape.kv_len)
            else:
                if phase == "cached_search":
                    mass = ops.block_mass(q, k, self.lse, block_size=c.block_size, scale=scale)  # [B, H, nq, nk]
                    search_recall = self._select(mass, text_len, shape.q_len, shape.kv_len)
                out, _ = ops.block_sparse_attention(q, k, v, self.mask, scale=scale)

        self.phase = phase
        self._calls = step + 1
        self._last_step = step
        dense = phase == "dense"
        self.history.append(StepRecord(
            step=step,
            phase=phase,
            seq_len=shape.q_len,
            density=None if dense else self._density,
            recall=search_recall,
            head_sparsity=None if dense else self.head_sparsity,
        ))
        return out
