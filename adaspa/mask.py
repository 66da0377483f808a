"""`BlockSparseMask`: which key blocks each (batch, head, query block) keeps.

The compressed layout is what the block-sparse kernel walks: for every query
block a sorted list of kept key-block indices and its length. Heads may keep
different numbers of blocks (head-adaptive tiers), so `counts` varies per
(batch, head, query block) and `indices` is padded to a common width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._validation import check_block_size, num_blocks


@dataclass(frozen=True, eq=False)
class BlockSparseMask:
    """Per (batch, head, query block) kept key blocks, in compressed form.

    Attributes:
        indices: int32 `[B, H, nq, max_kept]`; the first `counts[b, h, p]` entries
            of row `p` are the kept key-block indices, sorted ascending. Entries
            past the count are padding (0) and must be ignored.
        counts: int32 `[B, H, nq]`, the number of kept key blocks per row.
        block_size: tokens per block along both axes.
        q_len, kv_len: token lengths; `nq = ceil(q_len / block_size)`,
            `nk = ceil(kv_len / block_size)`; the last block of each axis may be partial.

    The contents are trusted, not checked (checking device data would cost a host
    sync): kept indices must be unique, sorted ascending, in `[0, nk)`, and
    `counts <= max_kept`. `from_dense`, `full` and `select_blocks` guarantee this; a
    hand-built mask that breaks it gives the reference and the kernels different (wrong)
    answers (the block-sparse kernel's rotated walks find their first block by counting
    the indices below a bound, which needs the order).

    Example:
        >>> dense = torch.tensor([[[[True, False], [True, True]]]])   # [1, 1, 2, 2]
        >>> m = BlockSparseMask.from_dense(dense, block_size=64, q_len=100, kv_len=128)
        >>> m.counts.tolist()
        [[[1, 2]]]
        >>> bool((m.to_dense() == dense).all())
        True
    """

    indices: torch.Tensor
    counts: torch.Tensor
    block_size: int
    q_len: int
    kv_len: int

    def __post_init__(self):
        check_block_size(self.block_size)
        if self.indices.dim() != 4 or self.indices.dtype != torch.int32:
            raise ValueError(f"indices must be int32 [B, H, nq, max_kept], got {self.indices.dtype} "
                             f"{tuple(self.indices.shape)}")
        if self.counts.dtype != torch.int32 or tuple(self.counts.shape) != tuple(self.indices.shape[:3]):
            raise ValueError(f"counts must be int32 [B, H, nq] = {tuple(self.indices.shape[:3])}, got "
                             f"{self.counts.dtype} {tuple(self.counts.shape)}")
        if self.q_len < 1 or self.kv_len < 1:
            raise ValueError(f"q_len and kv_len must be >= 1, got {self.q_len}, {self.kv_len}")
        if self.indices.shape[2] != self.num_q_blocks:
            raise ValueError(f"indices has {self.indices.shape[2]} query blocks, expected "
                             f"ceil(q_len / block_size) = {self.num_q_blocks}")
        if self.counts.device != self.indices.device:
            raise ValueError("indices and counts must be on the same device")

    @property
    def batch(self) -> int:
        return self.indices.shape[0]

    @property
    def heads(self) -> int:
        return self.indices.shape[1]

    @property
    def num_q_blocks(self) -> int:
        return num_blocks(self.q_len, self.block_size)

    @property
    def num_kv_blocks(self) -> int:
        return num_blocks(self.kv_len, self.block_size)

    @property
    def device(self) -> torch.device:
        return self.indices.device

    @classmethod
    def from_dense(cls, dense: torch.Tensor, block_size: int, q_len: int, kv_len: int) -> "BlockSparseMask":
        """Compress a bool block mask `dense [B, H, nq, nk]` (True = keep).

        The result has `max_kept = nk`, which keeps this constructor free of
        host syncs; `select_blocks` produces narrower masks where it can.

        Example:
            >>> m = BlockSparseMask.from_dense(torch.ones(1, 2, 3, 3, dtype=torch.bool), 64, 130, 130)
            >>> m.counts.tolist()
            [[[3, 3, 3], [3, 3, 3]]]
        """
        check_block_size(block_size)
        if not isinstance(dense, torch.Tensor) or dense.dtype != torch.bool or dense.dim() != 4:
            raise ValueError("dense must be a bool tensor [B, H, nq, nk]")
        nq, nk = num_blocks(q_len, block_size), num_blocks(kv_len, block_size)
        if tuple(dense.shape[2:]) != (nq, nk):
            raise ValueError(f"dense must have shape [B, H, nq={nq}, nk={nk}] for q_len={q_len}, "
                             f"kv_len={kv_len}, block_size={block_size}; got {tuple(dense.shape)}")
        # Stable sort on "not kept" puts the kept columns first, in ascending order.
        order = torch.sort((~dense).to(torch.uint8), dim=-1, stable=True).indices  # [B, H, nq, nk]
        counts = dense.sum(-1, dtype=torch.int32)  # [B, H, nq]
        slot = torch.arange(nk, device=dense.device)
        indices = torch.where(slot < counts.unsqueeze(-1), order, 0).to(torch.int32)
        return cls(indices.contiguous(), counts.contiguous(), block_size, q_len, kv_len)

    @classmethod
    def full(cls, batch: int, heads: int, q_len: int, kv_len: int, block_size: int = 64,
             device=None) -> "BlockSparseMask":
        """The keep-everything mask; block-sparse attention with it equals dense attention.

        Example:
            >>> BlockSparseMask.full(1, 1, 100, 100, 64).density().tolist()
            [[1.0]]
        """
        check_block_size(block_size)
        nq, nk = num_blocks(q_len, block_size), num_blocks(kv_len, block_size)
        dense = torch.ones(batch, heads, nq, nk, dtype=torch.bool, device=device)
        return cls.from_dense(dense, block_size, q_len, kv_len)

    def to_dense(self) -> torch.Tensor:
        """The bool block mask `[B, H, nq, nk]` (True = keep)."""
        nk = self.num_kv_blocks
        slot = torch.arange(self.indices.shape[-1], device=self.device)
        valid = slot < self.counts.unsqueeze(-1)  # [B, H, nq, max_kept]
        target = torch.where(valid, self.indices.long(), nk)  # padding goes to a spill column
        dense = torch.zeros(*self.indices.shape[:3], nk + 1, dtype=torch.bool, device=self.device)
        dense.scatter_(-1, target, True)
        return dense[..., :nk]

    def block_token_counts(self):
        """Valid tokens per query block `[nq]` and per key block `[nk]` (int64)."""
        def sizes(length: int) -> torch.Tensor:
            start = torch.arange(0, length, self.block_size, device=self.device)
            return (length - start).clamp(max=self.block_size)

        return sizes(self.q_len), sizes(self.kv_len)

    def density(self) -> torch.Tensor:
        """Fraction of valid (query, key) token pairs kept, float32 `[B, H]`.

        Partial tail blocks count with their true token counts.
        """
        q_sizes, k_sizes = self.block_token_counts()
        pair_tokens = (q_sizes[:, None] * k_sizes[None, :]).to(torch.float64)  # [nq, nk]
        kept = (self.to_dense().to(torch.float64) * pair_tokens).sum((-1, -2))
        return (kept / (self.q_len * self.kv_len)).to(torch.float32)

    def to_flex_block_mask(self):
        """The same pattern as a FlexAttention `BlockMask` (every kept block a partial block).

        Example:
            >>> bm = BlockSparseMask.full(1, 1, 128, 128, 64).to_flex_block_mask()
            >>> tuple(bm.kv_num_blocks.shape)
            (1, 1, 2)
        """
        from torch.nn.attention.flex_attention import BlockMask

        nk = self.num_kv_blocks
        width = self.indices.shape[-1]
        # FlexAttention infers nk from the width of kv_indices, so pad to the full width.
        kv_indices = torch.nn.functional.pad(self.indices, (0, nk - width)) if width < nk else self.indices
        return BlockMask.from_kv_blocks(
            self.counts,
            kv_indices,
            BLOCK_SIZE=self.block_size,
            seq_lengths=(self.q_len, self.kv_len),
        )

    def to(self, device) -> "BlockSparseMask":
        """A copy on `device`."""
        return BlockSparseMask(self.indices.to(device), self.counts.to(device), self.block_size,
                               self.q_len, self.kv_len)

    def __eq__(self, other) -> bool:
        if not isinstance(other, BlockSparseMask):
            return NotImplemented
        return (
            (self.block_size, self.q_len, self.kv_len) == (other.block_size, other.q_len, other.kv_len)
            and self.counts.shape == other.counts.shape
            and torch.equal(self.counts, other.counts)
            and torch.equal(self.to_dense(), other.to_dense())
        )

    __hash__ = None

    def __repr__(self) -> str:
        return (f"BlockSparseMask(B={self.batch}, H={self.heads}, nq={self.num_q_blocks}, "
                f"nk={self.num_kv_blocks}, max_kept={self.indices.shape[-1]}, "
                f"block_size={self.block_size}, q_len={self.q_len}, kv_len={self.kv_len})")
