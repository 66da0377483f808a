"""Pure-PyTorch reference ops: the readable oracle that `adaspa.kernels` is tested against.

Each op computes in float64 for float64 inputs and in float32 otherwise, returns
`out` in q's dtype and `lse`/`mass` in float32, and walks the queries a block (or
chunk) at a time so no `Lq x Lk` matrix of the whole sequence is ever allocated.
See `README.md` beside this file for the math of each op.

Example:
    >>> import torch
    >>> from adaspa import reference
    >>> q = k = v = torch.randn(1, 2, 130, 32)
    >>> out, lse, mass = reference.attention_with_block_mass(q, k, v, block_size=64)
    >>> tuple(mass.shape)
    (1, 2, 3, 3)
"""

from .block_sparse import block_sparse_attention
from .dense import attention
from .search import attention_with_block_mass, block_mass

__all__ = ["attention", "attention_with_block_mass", "block_mass", "block_sparse_attention"]
