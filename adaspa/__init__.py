"""adaspa: training-free adaptive sparse attention (AdaSpa) for video diffusion transformers.

Public names are imported lazily (PEP 562), so `import adaspa` stays cheap and
does not import Triton; `adaspa.reference` and `adaspa.kernels` hold the four
heavy ops with identical signatures.

Example:
    >>> import torch, adaspa
    >>> mass = torch.rand(1, 2, 4, 4)
    >>> mask = adaspa.select_blocks(mass, 0.5, block_size=64, q_len=256, kv_len=256)
    >>> mask.counts.tolist()
    [[[2, 2, 2, 2], [2, 2, 2, 2]]]
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "BlockSparseMask": ".mask",
    "text_sink_blocks": ".selection",
    "select_blocks": ".selection",
    "recall": ".selection",
    "head_adaptive_sparsity": ".selection",
    "AdaSpaConfig": ".config",
    "AdaSpaAttention": ".layer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'adaspa' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
