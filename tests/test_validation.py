"""Bad inputs: every reference op and every shared check raises a ValueError or
TypeError whose message starts with the offending argument's name and, for shape
errors, states the expected layout."""

from __future__ import annotations

import pytest
import torch

from adaspa import _validation as val
from adaspa import reference
from adaspa.mask import BlockSparseMask

B, H, LQ, LK, D = 2, 3, 100, 70, 16


def qkv(dtype=torch.float32):
    return (torch.randn(B, H, LQ, D, dtype=dtype), torch.randn(B, H, LK, D, dtype=dtype),
            torch.randn(B, H, LK, D, dtype=dtype))


def every_op(q, k, v, *, lse=None, mask=None, block_size=64, scale=None):
    """Call the four reference ops on the given arguments (each must raise)."""
    lse = torch.zeros(B, H, LQ) if lse is None else lse
    mask = BlockSparseMask.full(B, H, LQ, LK, 64) if mask is None else mask
    return [
        lambda: reference.attention(q, k, v, scale=scale),
        lambda: reference.attention_with_block_mass(q, k, v, block_size=block_size, scale=scale),
        lambda: reference.block_mass(q, k, lse, block_size=block_size, scale=scale),
        lambda: reference.block_sparse_attention(q, k, v, mask, scale=scale),
    ]


def raises_everywhere(error, match, calls):
    for call in calls:
        with pytest.raises(error, match=match):
            call()


def test_valid_inputs_pass():
    q, k, v = qkv()
    for call in every_op(q, k, v):
        call()


@pytest.mark.parametrize("name", ["q", "k", "v"])
def test_wrong_rank(name):
    q, k, v = qkv()
    args = {"q": q, "k": k, "v": v}
    args[name] = args[name][0]
    ops = every_op(**args)
    if name == "v":
        ops = [ops[0], ops[1], ops[3]]  # block_mass takes no v
    raises_everywhere(ValueError, rf"^{name} must be 4-D \[B, H, L[qk], D\]", ops)


def test_k_must_match_q_batch_heads_dim():
    q, k, v = qkv()
    for bad in (k[:1], k[:, :2], torch.randn(B, H, LK, D + 1)):
        raises_everywhere(ValueError, r"^k must have shape \[B=2, H=3, Lk, D=16\]", every_op(q, bad, v))


def test_v_must_match_k():
    q, k, v = qkv()
    for bad in (v[:, :, :-1], v[:1], torch.randn(B, H, LK, D + 1)):
        ops = every_op(q, k, bad)
        raises_everywhere(ValueError, r"^v must have shape \[B=2, H=3, Lk=70, D=16\]", [ops[0], ops[1], ops[3]])


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.bool])
def test_non_floating_dtypes(dtype):
    q, k, v = qkv()
    for name in ("q", "k", "v"):
        args = {"q": q, "k": k, "v": v}
        args[name] = args[name].to(dtype)
        ops = every_op(**args)
        if name == "v":
            ops = [ops[0], ops[1], ops[3]]
        raises_everywhere(TypeError, rf"^{name} must be floating point", ops)


def test_dtype_mismatch():
    q, k, v = qkv()
    raises_everywhere(ValueError, r"^k must have q's dtype", every_op(q, k.double(), v))
    raises_everywhere(ValueError, r"^v must have q's dtype", every_op(q, k, v.half())[:2])


def test_non_tensor_inputs():
    q, k, v = qkv()
    raises_everywhere(TypeError, r"^q must be a torch.Tensor of shape \[B, H, Lq, D\]", every_op(q.tolist(), k, v))


def test_empty_lengths():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"Lq, Lk, D >= 1"):
        reference.attention(q[:, :, :0], k, v)


@pytest.mark.parametrize("name", ["k", "v"])
def test_mixed_devices(name):
    q, k, v = qkv()
    args = {"q": q, "k": k, "v": v}
    args[name] = args[name].to("meta")
    with pytest.raises(ValueError, match=rf"^{name} must be on q's device cpu, got meta"):
        reference.attention(**args)


def test_lse_checks():
    q, k, _ = qkv()
    with pytest.raises(ValueError, match=r"^lse must have shape \[B=2, H=3, Lq=100\]"):
        reference.block_mass(q, k, torch.zeros(B, H, LQ - 1))
    with pytest.raises(TypeError, match=r"^lse must be floating point"):
        reference.block_mass(q, k, torch.zeros(B, H, LQ, dtype=torch.int32))
    with pytest.raises(TypeError, match=r"^lse must be a torch.Tensor of shape \[B, H, Lq\]"):
        reference.block_mass(q, k, None)
    with pytest.raises(ValueError, match=r"^lse must be on q's device"):
        reference.block_mass(q, k, torch.zeros(B, H, LQ, device="meta"))


@pytest.mark.parametrize("block_size", [0, 8, 15, 48, 100, -64])
def test_block_size_not_power_of_two_at_least_16(block_size):
    q, k, v = qkv()
    raises_everywhere(ValueError, rf"^block_size must be a power of two >= 16, got {block_size}",
                      every_op(q, k, v, block_size=block_size)[1:3])
    with pytest.raises(ValueError, match=r"^block_size must be a power of two"):
        BlockSparseMask.full(B, H, LQ, LK, block_size)


@pytest.mark.parametrize("block_size", [64.0, True, "64", None])
def test_block_size_type(block_size):
    q, k, v = qkv()
    raises_everywhere(TypeError, r"^block_size must be an int", every_op(q, k, v, block_size=block_size)[1:3])


@pytest.mark.parametrize("scale,error", [(0.0, ValueError), (-1.0, ValueError), (float("nan"), ValueError),
                                         (float("inf"), ValueError), (True, TypeError), ("0.1", TypeError)])
def test_bad_scale(scale, error):
    q, k, v = qkv()
    raises_everywhere(error, r"^scale must be", every_op(q, k, v, scale=scale))


def test_mask_for_wrong_shape():
    q, k, v = qkv()
    for wrong in (BlockSparseMask.full(B, H, LQ + 64, LK, 64), BlockSparseMask.full(B, H, LQ, LK + 1, 64),
                  BlockSparseMask.full(1, H, LQ, LK, 64), BlockSparseMask.full(B, 1, LQ, LK, 64)):
        with pytest.raises(ValueError, match=r"^mask must be for \(B, H, Lq, Lk\) = \(2, 3, 100, 70\)"):
            reference.block_sparse_attention(q, k, v, wrong)
    with pytest.raises(TypeError, match=r"^mask must be an adaspa.BlockSparseMask"):
        reference.block_sparse_attention(q, k, v, torch.ones(B, H, 2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"^mask must be on q's device cpu"):
        reference.block_sparse_attention(q, k, v, BlockSparseMask.full(B, H, LQ, LK, 64).to("meta"))


@pytest.mark.parametrize("sparsity", [-0.1, 1.5, float("nan"), torch.tensor([0.5, 1.2]), torch.tensor([-1e-3])])
def test_sparsity_outside_unit_interval(sparsity):
    with pytest.raises(ValueError, match=r"^sparsity must lie in \[0, 1\]"):
        val.check_sparsity(sparsity)


@pytest.mark.parametrize("sparsity", ["0.5", None, True, torch.tensor([1])])
def test_sparsity_type(sparsity):
    with pytest.raises(TypeError, match=r"^sparsity must be"):
        val.check_sparsity(sparsity)


def test_check_sparsity_accepts_the_closed_interval():
    assert val.check_sparsity(0) == 0.0 and val.check_sparsity(1.0) == 1.0
    t = torch.tensor([0.0, 0.5, 1.0])
    assert val.check_sparsity(t) is t


def test_check_attention_inputs_reads_the_shape():
    q, k, v = qkv()
    assert val.check_attention_inputs(q, k, v) == val.AttentionShape(B, H, LQ, LK, D)
    assert val.resolve_scale(None, 16) == 0.25
    assert [val.num_blocks(n, 64) for n in (1, 63, 64, 65, 128)] == [1, 1, 1, 2, 2]
