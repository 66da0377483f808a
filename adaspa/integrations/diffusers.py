"""AdaSpa for diffusers video transformers: `enable_adaspa(transformer, config)`.

Supported: `WanTransformer3DModel`, `HunyuanVideoTransformer3DModel`,
`CogVideoXTransformer3DModel` (diffusers >= 0.32, tested with 0.42).

One mechanism serves all three. Each self-attention module of the transformer
blocks gets an `AdaSpaProcessor` that wraps the module's stock processor: the
stock code still runs the projections, norms and RoPE, and only its core
attention call (`F.scaled_dot_product_attention`, which diffusers'
`dispatch_attention_fn` reaches through its default "native" backend) is routed
to the layer's `AdaSpaAttention`, by a `TorchFunctionMode` active for the
duration of the stock call. What differs per model is data (`MODELS`): which
modules are self-attention and where the text sits in the joint sequence.

- CogVideoX: text first; CFG arrives as a batch of 2 (state is per batch element).
- HunyuanVideo: text last, prompt padding masked by the key-padding attention mask.
  Keys past each element's valid length are cut off, so padded text gets no
  attention; the padded text queries (whose outputs the model discards) attend
  densely to the valid keys, as in the stock code.
- Wan: self-attention (`attn1`) is video only; cross-attention (`attn2`) stays dense.

The denoising step comes from the `timestep` the transformer receives (a
forward pre-hook): a new, lower timestep is the next step; the n-th call with
the same timestep within a step is CFG branch n, and each branch has its own
`AdaSpaAttention` state; a timestep going up starts a new generation. Reading
the timestep costs one tiny device-to-host copy per transformer call (not per
layer).
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ..config import AdaSpaConfig
from ..layer import AdaSpaAttention


@dataclass(frozen=True)
class ModelSpec:
    """Where AdaSpa goes in one diffusers transformer class.

    Attributes:
        class_name: the diffusers class name.
        blocks: attribute names of the `ModuleList`s of transformer blocks.
        attention: attribute name of the self-attention module inside a block.
        text_position: `"first"` / `"last"` when the stock processor joins the text
            (its `encoder_hidden_states [B, T, C]`) to the video tokens, None when the
            self-attention sees video only.

    Example:
        >>> MODELS["CogVideoXTransformer3DModel"].text_position
        'first'
    """

    class_name: str
    blocks: Tuple[str, ...]
    attention: str
    text_position: Optional[str]


MODELS = {
    spec.class_name: spec
    for spec in (
        ModelSpec("WanTransformer3DModel", ("blocks",), "attn1", None),
        ModelSpec("HunyuanVideoTransformer3DModel", ("transformer_blocks", "single_transformer_blocks"),
                  "attn", "last"),
        ModelSpec("CogVideoXTransformer3DModel", ("transformer_blocks",), "attn1", "first"),
    )
}

_HANDLE_ATTR = "_adaspa_handle"

__all__ = ["enable_adaspa", "disable_adaspa", "AdaSpaHandle", "AdaSpaProcessor", "ModelSpec"]


def _sdpa_arguments(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                    enable_gqa=False):
    return query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa


def _spec_for(transformer) -> ModelSpec:
    for cls in type(transformer).__mro__:
        if cls.__name__ in MODELS and cls.__module__.startswith("diffusers."):
            return MODELS[cls.__name__]
    raise TypeError(
        f"enable_adaspa supports {', '.join(sorted(MODELS))}; got {type(transformer).__name__}. "
        "For another model, put adaspa.AdaSpaAttention into its attention (see docs/integration.md)."
    )


class _RouteCoreAttention(TorchFunctionMode):
    """While active, sends `F.scaled_dot_product_attention` to `processor.attend`."""

    def __init__(self, processor: "AdaSpaProcessor", text_len: int):
        super().__init__()
        self.processor = processor
        self.text_len = text_len
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        self.calls += 1
        if self.calls > 1:
            raise RuntimeError(
                f"AdaSpa: the processor of {self.processor.name} made more than one attention call; "
                "only one core attention per module is supported"
            )
        q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa = _sdpa_arguments(*args, **kwargs)
        if dropout_p or is_causal or (enable_gqa and k.shape[1] != q.shape[1]):
            raise NotImplementedError(
                f"AdaSpa ({self.processor.name}): dropout, causal masks and grouped-query attention are not "
                f"supported (dropout_p={dropout_p}, is_causal={is_causal}, enable_gqa={enable_gqa})"
            )
        return self.processor.attend(q, k, v, attn_mask, scale, self.text_len)


class AdaSpaProcessor:
    """Wraps a stock diffusers attention processor; its core attention runs AdaSpa.

    The stock processor runs unchanged except for its one
    `F.scaled_dot_product_attention(q, k, v)` call (`[B, H, L, D]`), which goes to
    `attend`. Holds `layers`: one `AdaSpaAttention` per CFG branch (keyed by the
    branch), or per `(branch, batch index)` when the batch elements' valid key
    lengths differ; created on first use.

    Example:
        >>> from diffusers import WanTransformer3DModel
        >>> model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16,
        ...     in_channels=4, out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=1,
        ...     rope_max_seq_len=32)
        >>> handle = enable_adaspa(model)
        >>> processor = model.blocks[0].attn1.processor
        >>> type(processor).__name__, type(processor.stock).__name__
        ('AdaSpaProcessor', 'WanAttnProcessor')
    """

    def __init__(self, handle: "AdaSpaHandle", name: str, stock, text_position: Optional[str]):
        self.handle = handle
        self.name = name
        self.stock = stock
        self.text_position = text_position
        self.layers: Dict[object, AdaSpaAttention] = {}
        self._stock_signature = inspect.signature(stock.__call__)

        def call(*args, **kwargs):
            return self(*args, **kwargs)

        # diffusers' Attention.forward drops keyword arguments (e.g. image_rotary_emb)
        # that the processor's __call__ signature does not name; inspect.signature
        # follows __wrapped__, so this instance reports the stock signature.
        self.__call__ = functools.update_wrapper(call, stock.__call__)

    def __call__(self, attn, *args, **kwargs):
        text_len = 0
        if self.text_position is not None:
            bound = self._stock_signature.bind(attn, *args, **kwargs)
            text = bound.arguments.get("encoder_hidden_states")
            text_len = 0 if text is None else text.shape[1]
        route = _RouteCoreAttention(self, text_len)
        with route:
            out = self.stock(attn, *args, **kwargs)
        if route.calls != 1:
            raise RuntimeError(
                f"AdaSpa: the stock processor of {self.name} ({type(self.stock).__name__}) made no "
                "F.scaled_dot_product_attention call; set the diffusers attention backend to 'native'"
            )
        return out

    def layer(self, key) -> AdaSpaAttention:
        if key not in self.layers:
            self.layers[key] = AdaSpaAttention(self.handle.config)
        return self.layers[key]

    def attend(self, q, k, v, attn_mask, scale, text_len: int) -> torch.Tensor:
        """Core attention of one module call: `q, k, v [B, H, L, D]` -> `[B, H, L, D]`."""
        step, branch = self.handle.step, self.handle.branch
        if attn_mask is None:
            return self.layer(branch)(q, k, v, step=step, text_len=text_len, scale=scale)
        lengths = self.handle.key_lengths(attn_mask, q.shape[0], k.shape[2], self.name)
        if self.text_position != "last" or q.shape[2] != k.shape[2]:
            raise NotImplementedError(
                f"AdaSpa ({self.name}): a key-padding mask is supported only for self-attention "
                "with the text last (HunyuanVideo)"
            )
        kv_len = k.shape[2]
        if len(set(lengths)) == 1:
            return self._attend_valid(self.layer(branch), q, k, v, lengths[0], step, text_len - (kv_len - lengths[0]),
                                      scale)
        outs = []
        for b, n in enumerate(lengths):
            pick = slice(b, b + 1)
            outs.append(self._attend_valid(self.layer((branch, b)), q[pick], k[pick], v[pick], n, step,
                                           text_len - (kv_len - n), scale))
        return torch.cat(outs, dim=0)

    @staticmethod
    def _attend_valid(layer, q, k, v, n: int, step: int, text_len: int, scale) -> torch.Tensor:
        """AdaSpa over the first `n` tokens; the padded queries after them attend densely to those `n` keys."""
        k_valid, v_valid = k[:, :, :n], v[:, :, :n]
        out = layer(q[:, :, :n], k_valid, v_valid, step=step, text_len=max(text_len, 0), scale=scale)
        if n == q.shape[2]:
            return out
        padded = F.scaled_dot_product_attention(q[:, :, n:], k_valid, v_valid, scale=scale)
        return torch.cat([out, padded], dim=2)


class AdaSpaHandle:
    """What `enable_adaspa` installed on one transformer, and the step/branch it is at.

    Attributes:
        transformer: the patched model.
        config: the `AdaSpaConfig` every layer uses.
        processors: `{module name: AdaSpaProcessor}` for the self-attention modules.
        step: the current 0-based denoising step (-1 before the first call).
        branch: the CFG branch of the current call (0, 1, ...).

    `layers(branch)` gives each module's `AdaSpaAttention` (mask `[B, H, nq, ...]`,
    `head_sparsity [B, H]`, `history`); `phases(branch)` its phase per step.

    Example:
        >>> import torch
        >>> from diffusers import WanTransformer3DModel
        >>> from adaspa import AdaSpaConfig
        >>> model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16,
        ...     in_channels=4, out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=1,
        ...     rope_max_seq_len=32)
        >>> handle = enable_adaspa(model, AdaSpaConfig(warmup_steps=1, search_steps=(1,), block_size=16,
        ...                                            min_seq_len=0))
        >>> with torch.no_grad():
        ...     for t in (900.0, 800.0, 700.0):
        ...         _ = model(torch.randn(1, 4, 2, 8, 8), torch.tensor([t]), torch.randn(1, 4, 16))
        >>> handle.step, handle.phases()
        (2, {'blocks.0.attn1': ['dense', 'search', 'sparse']})
    """

    def __init__(self, transformer, config: AdaSpaConfig, spec: ModelSpec):
        self.transformer = transformer
        self.config = config
        self.spec = spec
        self.processors: Dict[str, AdaSpaProcessor] = {}
        self._stock: Dict[str, object] = {}
        self._modules: Dict[str, torch.nn.Module] = {}
        self._forward_signature = inspect.signature(type(transformer).forward)
        self.step = -1
        self.branch = 0
        self._timestep: Optional[float] = None
        self._mask_cache: Dict[int, Tuple[torch.Tensor, List[int]]] = {}
        self._hook = None

    def _install(self) -> None:
        for blocks_name in self.spec.blocks:
            for i, block in enumerate(getattr(self.transformer, blocks_name)):
                name = f"{blocks_name}.{i}.{self.spec.attention}"
                module = getattr(block, self.spec.attention)
                self._modules[name] = module
                self._stock[name] = module.processor
                self.processors[name] = AdaSpaProcessor(self, name, module.processor, self.spec.text_position)
                module.processor = self.processors[name]
        self._hook = self.transformer.register_forward_pre_hook(self._before_forward, with_kwargs=True)

    def _uninstall(self) -> None:
        for name, module in self._modules.items():
            module.processor = self._stock[name]
        self._hook.remove()

    def _before_forward(self, module, args, kwargs):
        bound = self._forward_signature.bind_partial(module, *args, **kwargs)
        timestep = bound.arguments.get("timestep")
        if timestep is None:
            raise ValueError(f"AdaSpa reads the denoising step from the timestep; {type(module).__name__} "
                             "was called without one")
        # The largest entry, not the first: Wan 2.2 TI2V passes a per-token timestep [B, L]
        # whose conditioning first-frame tokens are always 0.
        t = float(timestep.max()) if isinstance(timestep, torch.Tensor) else float(timestep)
        if self._timestep is None or t > self._timestep:
            if self._timestep is not None:
                self.reset()
            self.step, self.branch = 0, 0
        elif t == self._timestep:
            self.branch += 1
        else:
            self.step, self.branch = self.step + 1, 0
        self._timestep = t
        self._mask_cache.clear()

    def key_lengths(self, attn_mask: torch.Tensor, batch: int, kv_len: int, name: str) -> List[int]:
        """Valid key count per batch element of a key-padding mask (True = attend), read once per forward."""
        cached = self._mask_cache.get(id(attn_mask))
        if cached is not None and cached[0] is attn_mask:
            return cached[1]
        if attn_mask.dtype != torch.bool or attn_mask.numel() != batch * kv_len or attn_mask.shape[-1] != kv_len:
            raise NotImplementedError(
                f"AdaSpa ({name}): only boolean key-padding masks [B, 1, 1, Lk] are supported, got "
                f"{attn_mask.dtype} {tuple(attn_mask.shape)}"
            )
        keep = attn_mask.reshape(batch, kv_len)  # [B, Lk]
        counts = keep.sum(-1)  # [B]
        prefix = torch.arange(kv_len, device=keep.device) < counts[:, None]
        if not torch.equal(keep, prefix):
            raise NotImplementedError(f"AdaSpa ({name}): the key mask must keep a prefix of the keys "
                                      "(padding at the end)")
        lengths = counts.tolist()
        if min(lengths) < 1:
            raise ValueError(f"AdaSpa ({name}): a batch element has no valid key")
        self._mask_cache[id(attn_mask)] = (attn_mask, lengths)
        return lengths

    def reset(self) -> None:
        """Drop every layer's state: the next call starts a new generation at step 0."""
        for processor in self.processors.values():
            processor.layers.clear()
        self.step, self.branch, self._timestep = -1, 0, None

    def layers(self, branch=0) -> Dict[str, AdaSpaAttention]:
        """`{module name: AdaSpaAttention}` of one CFG branch (or `(branch, batch index)` key)."""
        return {name: p.layers[branch] for name, p in self.processors.items() if branch in p.layers}

    def phases(self, branch=0) -> Dict[str, List[str]]:
        """`{module name: [phase of each step]}` of one branch, e.g. for `adaspa.viz.plot_schedule`."""
        return {name: [r.phase for r in layer.history] for name, layer in self.layers(branch).items()}


def enable_adaspa(transformer, config: Optional[AdaSpaConfig] = None) -> AdaSpaHandle:
    """Route the self-attention of a diffusers video transformer through AdaSpa.

    Each self-attention layer's core attention (`q, k, v: [B, H, L, D]`) runs an
    `AdaSpaAttention` per CFG branch; the step comes from the `timestep` argument.

    Args:
        transformer: a `WanTransformer3DModel`, `HunyuanVideoTransformer3DModel` or
            `CogVideoXTransformer3DModel` (e.g. `pipe.transformer`).
        config: the `AdaSpaConfig` of every layer (paper defaults if None). Its
            `text_len` / `text_position` are set per model and call.

    Returns:
        An `AdaSpaHandle`: `.step`, `.branch`, `.layers(branch)`, `.phases(branch)`, `.reset()`.

    Raises:
        TypeError: for any other model (the message names the supported ones).
        ValueError: if AdaSpa is already enabled on `transformer`.

    Example:
        >>> from diffusers import WanTransformer3DModel
        >>> from adaspa import AdaSpaConfig
        >>> from adaspa.integrations.diffusers import enable_adaspa, disable_adaspa
        >>> model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16,
        ...     in_channels=4, out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=1,
        ...     rope_max_seq_len=32)
        >>> handle = enable_adaspa(model, AdaSpaConfig(block_size=16, min_seq_len=0))
        >>> sorted(handle.processors)
        ['blocks.0.attn1']
        >>> disable_adaspa(model)
    """
    if config is None:
        config = AdaSpaConfig()
    if not isinstance(config, AdaSpaConfig):
        raise TypeError(f"config must be an adaspa.AdaSpaConfig, got {type(config).__name__}")
    spec = _spec_for(transformer)
    if getattr(transformer, _HANDLE_ATTR, None) is not None:
        raise ValueError("AdaSpa is already enabled on this transformer; call disable_adaspa first")
    handle = AdaSpaHandle(transformer, config.replace(text_len=0, text_position=spec.text_position or "last"), spec)
    handle._install()
    setattr(transformer, _HANDLE_ATTR, handle)
    return handle


def disable_adaspa(transformer) -> None:
    """Put the stock processors back (the very objects that were there) and remove the step hook.

    Afterwards the model computes exactly what it did before `enable_adaspa`, on
    `[B, H, L, D]` attention inputs of any size, and may be enabled again.

    Raises:
        ValueError: if AdaSpa is not enabled on `transformer`.

    Example:
        >>> from diffusers import CogVideoXTransformer3DModel
        >>> from adaspa.integrations.diffusers import enable_adaspa, disable_adaspa
        >>> model = CogVideoXTransformer3DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4,
        ...     num_layers=1, sample_width=8, sample_height=8, sample_frames=5, text_embed_dim=16,
        ...     time_embed_dim=16)
        >>> stock = model.transformer_blocks[0].attn1.processor
        >>> _ = enable_adaspa(model); disable_adaspa(model)
        >>> model.transformer_blocks[0].attn1.processor is stock
        True
    """
    handle = getattr(transformer, _HANDLE_ATTR, None)
    if handle is None:
        raise ValueError("AdaSpa is not enabled on this transformer")
    handle._uninstall()
    setattr(transformer, _HANDLE_ATTR, None)
