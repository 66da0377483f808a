"""Triton kernels for AdaSpa's four heavy ops, with the signatures of `adaspa.reference`.

- `attention(q, k, v)` -> `(out, lse)`: dense flash attention forward with LSE.
- `attention_with_block_mass(q, k, v, block_size=64)` -> `(out, lse, mass)`: fused search.
- `block_mass(q, k, lse, block_size=64)` -> `mass`: LSE-cached search (no V, no output).
- `block_sparse_attention(q, k, v, mask)` -> `(out, lse)`: head-adaptive block-sparse attention.

Inputs are float16 / bfloat16 / float32 CUDA tensors of any strides with D <= 256 and block
sizes 16, 32, 64 or 128 (float32 with D > 128 runs half-block tiles at block 128: 128-row
float32 tiles of that D exceed shared memory). CPU tensors run under Triton's
interpreter when `TRITON_INTERPRET=1` (slow; for tests), else raise. On Hopper GPUs,
`attention`, and `block_sparse_attention` and both searches at block sizes 64 and 128,
run warp-specialized Gluon kernels for float16 / bfloat16 inputs with D of 64
or 128 (`hopper.py`, `hopper_search.py`; `ADASPA_GLUON=0` turns them off). At block size
64, once a head's K and V outgrow half of the GPU's L2, `block_sparse_attention` starts
each row's walk over its kept blocks at a staggered key block and wraps around, so the
programs running at once read the same part of K / V (`block_sparse.walks_rotate`; only
the last bits of the result change, deterministically for one GPU model).
docs/kernels.md explains the kernels.

Example:
    >>> import torch
    >>> from adaspa import kernels
    >>> q = k = v = torch.randn(1, 2, 256, 64, device="cuda", dtype=torch.bfloat16)
    >>> out, lse, mass = kernels.attention_with_block_mass(q, k, v)
    >>> mass.shape
    torch.Size([1, 2, 4, 4])
"""

from .block_sparse import block_sparse_attention
from .flash_fwd import attention, attention_with_block_mass
from .search import block_mass

__all__ = ["attention", "attention_with_block_mass", "block_mass", "block_sparse_attention"]
