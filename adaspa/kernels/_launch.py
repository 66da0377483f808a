"""Launch-side helpers shared by the Triton kernels: device guard, limits, tile sizes.

Everything here runs on the host before a launch and never reads device memory,
so the kernels stay free of host-device synchronization and CUDA-graph capturable.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

#: Block sizes the kernels accept. 64 and 128 are the tuned ones; 16 and 32 exist so
#: tests can draw many blocks from short sequences.
SUPPORTED_BLOCK_SIZES = (16, 32, 64, 128)

#: Largest head dimension: D is padded to the next power of two inside the kernel and
#: a [BLOCK_M, 256] fp32 accumulator already fills the register file at BLOCK_M = 64.
MAX_HEAD_DIM = 256

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

LOG2E = 1.4426950408889634


#: Shared-memory bytes a config may plan for (H100/H200 allow 227 KiB per block; Triton
#: adds buffers for layout conversions, so the estimate below leaves room).
SMEM_BUDGET = 200 * 1024


def smem_estimate(num_stages: int, block_m: int, block_n: int, block_d: int, with_v: bool = True,
                  elem_bytes: int = 2) -> int:
    """Bytes of shared memory for a config's pipelined K (and V) tiles plus its Q / P tiles."""
    kv = max(num_stages, 1) * block_n * block_d * elem_bytes * (2 if with_v else 1)
    return kv + 2 * block_m * block_d * elem_bytes


def fixed_config(block_m: int, block_n: int, block_d: int, elem_bytes: int, with_v: bool = True) -> dict:
    """`num_warps` / `num_stages` for the untuned path (fp32, odd D, test block sizes, interpreter).

    One warpgroup per 64 rows; two pipeline stages when they fit the shared-memory budget
    (fp32 or D = 256 tiles often do not), else one.
    """
    stages = 2 if smem_estimate(2, block_m, block_n, block_d, with_v, elem_bytes) <= SMEM_BUDGET else 1
    return {"num_warps": 4 if block_m <= 64 else 8, "num_stages": stages}


def key_tile_fits(block_n: int, block_size: int) -> bool:
    """True when key tiles of `block_n` rows hold whole blocks or are a whole fraction of one
    (what the block kernels need to attribute every tile to its key blocks)."""
    return block_n % block_size == 0 or block_size % block_n == 0


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (`TRITON_INTERPRET=1`)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_autotune(dtype: torch.dtype, block_d: int, block_size: int) -> bool:
    """Autotune the fast path only: half dtypes, D in (64, 128], block size 64 or 128, on a GPU.

    Other cases (fp32, odd D, test block sizes, the interpreter) use one fixed config, so a
    test run does not compile every config for every combination. `ADASPA_AUTOTUNE=0`
    turns autotuning off everywhere (e.g. for long hypothesis runs on a GPU; the configs
    themselves are checked one by one in tests/test_kernels_gpu.py).
    """
    return (not interpreting() and os.environ.get("ADASPA_AUTOTUNE", "1") != "0"
            and dtype in (torch.float16, torch.bfloat16) and block_d in (64, 128) and block_size in (64, 128))


def check_kernel_inputs(q: torch.Tensor, head_dim: int) -> None:
    """Reject what the kernels cannot run: devices, dtypes and head dims past the limits.

    Shapes, dtype agreement and devices of the other tensors are checked before this by
    `adaspa._validation.check_attention_inputs`, so only `q` needs looking at here.
    """
    if q.device.type == "cpu":
        if not interpreting():
            raise ValueError(
                "q is a CPU tensor: adaspa.kernels runs on CUDA; for CPU use adaspa.reference, "
                "or set TRITON_INTERPRET=1 before importing triton to run the kernels in the interpreter"
            )
    elif q.device.type != "cuda":
        raise ValueError(f"q must be a CUDA tensor for adaspa.kernels, got device {q.device}")
    if q.dtype not in _DTYPES:
        raise TypeError(f"q must be float16, bfloat16 or float32 for adaspa.kernels, got {q.dtype} "
                        "(adaspa.reference accepts float64)")
    if head_dim > MAX_HEAD_DIM:
        raise ValueError(f"head dim D must be <= {MAX_HEAD_DIM} for adaspa.kernels, got D={head_dim}")


#: Rows of a float32 tile with D > 128 on the untuned path (`wide_float32_rows`).
WIDE_FLOAT32_ROWS = 64


def wide_float32_rows(dtype: torch.dtype, head_dim: int) -> int | None:
    """Most rows a query or key tile of the block kernels may have at float32 with D > 128
    (`WIDE_FLOAT32_ROWS`), else None (no cap).

    128 x 256 float32 tiles of Q, K (and V) asked for 256-384 KiB of shared memory on the
    H200, which allows 227 KiB per block (measured 2026-11-26), and a 128 x 256 float32
    accumulator spills. So at block 128 these tiles cover half a block: two programs share
    each query block (their mass adds up, `search.put_mass`) and two key tiles make each
    key block.

    Example:
        >>> wide_float32_rows(torch.float32, 160), wide_float32_rows(torch.bfloat16, 256)
        (64, None)
    """
    return WIDE_FLOAT32_ROWS if dtype == torch.float32 and head_dim > 128 else None


def check_kernel_block_size(block_size: int, name: str = "block_size") -> int:
    """Return `block_size` if the kernels support it, else raise naming the supported set."""
    if block_size not in SUPPORTED_BLOCK_SIZES:
        raise ValueError(f"{name} must be one of {SUPPORTED_BLOCK_SIZES} for adaspa.kernels, got {block_size}")
    return block_size


def padded_head_dim(head_dim: int) -> int:
    """D rounded up to a power of two >= 16: the kernels' BLOCK_D; loads past D are masked."""
    return max(16, triton.next_power_of_2(head_dim))


def dot_precision(dtype: torch.dtype) -> str:
    """The `PRECISION` constexpr of the kernels' `dot`.

    `"ieee"` for float32 inputs, so fp32 runs exact fp32 dots and passes the 2x-own-error
    rule; `"upcast"` for bfloat16 under the interpreter, whose `tl.dot` misreads bfloat16
    (it stores them as uint16); `"tf32"` otherwise, which half types ignore.
    """
    if dtype == torch.float32:
        return "ieee"
    if dtype == torch.bfloat16 and interpreting():
        return "upcast"
    return "tf32"


@triton.jit
def dot(a, b, PRECISION: tl.constexpr):
    """`tl.dot` with fp32 accumulation; "upcast" widens exact bf16 values to fp32 first.

    Products of two bf16 values are exact in fp32, so the upcast path computes what the
    tensor cores do (bf16 products, fp32 sums) up to summation order.
    """
    if PRECISION == "upcast":
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def to_dtype(x, DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """Cast fp32 `x` to `DTYPE` rounding to nearest even, as the GPU's conversion does.

    Triton 3.6's interpreter truncates fp32 -> bf16 casts, an error of up to one bf16 ulp
    that the 2x-own-error tests would (rightly) reject; under the interpreter ("upcast")
    the rounding is done on the bits first, so the truncating cast is then exact.
    """
    if PRECISION == "upcast":
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        x = bits.to(tl.float32, bitcast=True)
    return x.to(DTYPE)


def tma_eligible(*tensors: torch.Tensor, block_d: int) -> bool:
    """True when K / V tiles of every `[B, H, L, D]` tensor can come through Hopper's tensor copy engine (TMA).

    The copy engine needs a Hopper-or-newer GPU (or the interpreter), a 16-byte aligned base,
    16-byte aligned strides and a contiguous last dimension; the kernels also limit it to
    half dtypes and D <= 128 (one 128 x 128 bf16 box per tile). Anything else, e.g. a slice
    starting mid-row or float32 inputs, reads through pointers: same results, measured
    slower (docs/kernel-tuning.md, run 3).
    """
    if block_d > 128 or os.environ.get("ADASPA_TMA", "1") == "0":
        return False
    for x in tensors:
        if x.dtype not in (torch.float16, torch.bfloat16) or x.stride(-1) != 1 or x.data_ptr() % 16:
            return False
        if any(stride * x.element_size() % 16 for stride in x.stride()[:-1]):
            return False
    device = tensors[0].device
    return interpreting() or (device.type == "cuda" and _compute_capability(device)[0] >= 9)


def _triton_at_least(major: int, minor: int) -> bool:
    return tuple(int(x) for x in triton.__version__.split(".")[:2]) >= (major, minor)


def hopper_eligible(q: torch.Tensor, *others: torch.Tensor) -> bool:
    """True when the Gluon kernels (`hopper.py`, `hopper_search.py`) can run these `[B, H, L, D]` inputs.

    That is: a CUDA tensor on a compute-capability 9.x GPU (Hopper), Triton >= 3.6 (the Gluon
    API they are written against), float16 / bfloat16, D of 64 or 128, and strides the copy
    engine accepts. `ADASPA_GLUON=0` turns the Gluon path off (A/B runs, and tests of the
    Triton kernels on a Hopper GPU).
    """
    return (os.environ.get("ADASPA_GLUON", "1") != "0" and not interpreting() and q.device.type == "cuda"
            and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] in (64, 128)
            and _triton_at_least(3, 6) and _compute_capability(q.device)[0] == 9
            and tma_eligible(q, *others, block_d=q.shape[-1]))


def use_hopper_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_size: int = 128) -> bool:
    """True when the warp-specialized attention kernel (`adaspa/kernels/hopper.py`) runs these inputs:
    `hopper_eligible`, and a block size of 64 or 128 (dense attention passes 128, its tile
    height). Anything else runs the Triton kernels, which handle every supported input."""
    return block_size in (64, 128) and hopper_eligible(q, k, v)


def use_hopper_search(q: torch.Tensor, *others: torch.Tensor, block_size: int) -> bool:
    """True when a search runs in Gluon on these inputs: the fused search (`q, k, v`, in
    `hopper.hopper_attention_with_block_mass`) or the LSE-cached search (`q, k`, in
    `hopper_search.py`). That is `hopper_eligible`, and a block size of 64 or 128."""
    return block_size in (64, 128) and hopper_eligible(q, *others)


@functools.lru_cache(maxsize=None)
def _compute_capability(device: torch.device):
    return torch.cuda.get_device_capability(device)


def row_tiles(x: torch.Tensor, rows: int, block_d: int) -> TensorDescriptor:
    """TMA descriptor over `x [B, H, L, D]` giving `[1, 1, rows, block_d]` tiles (zeros past L and D)."""
    return TensorDescriptor(x, list(x.shape), list(x.stride()), [1, 1, rows, block_d])


def set_tile_rows(name_rows: dict):
    """Autotune pre-hook factory: resize the descriptors' tiles to the config's tile heights.

    `name_rows` maps a kernel argument (a descriptor) to the meta-parameter holding its tile
    height, e.g. `{"K": "BLOCK_N"}`; pointer arguments (the non-TMA path) are left alone.
    """
    def hook(nargs):
        for name, rows in name_rows.items():
            if isinstance(nargs[name], TensorDescriptor):
                nargs[name].block_shape = [1, 1, nargs[rows], nargs["BLOCK_D"]]

    return hook


@triton.jit
def load_rows(X, p_x, i_b, i_h, start, LK, m_d, ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
              MASK_N: tl.constexpr, TMA: tl.constexpr):
    """Key / value rows `start .. start + ROWS` of one (batch, head) as a `[ROWS, BLOCK_D]` tile.

    TMA: `X` is a `row_tiles` descriptor; the copy engine writes zeros past Lk and D.
    Otherwise `p_x` holds the tile's `[ROWS, BLOCK_D]` pointers and the loads are masked
    (`MASK_N` only on the tile that crosses Lk).
    """
    if TMA:
        return X.load([i_b, i_h, start, 0]).reshape(ROWS, BLOCK_D)
    else:
        if MASK_N:
            m_n = start + tl.arange(0, ROWS) < LK
            return tl.load(p_x, mask=m_n[:, None] & m_d[None, :], other=0.0)
        else:
            return tl.load(p_x, mask=m_d[None, :], other=0.0)


@triton.jit
def load_q_tile(Q, i_b, i_h, i_m, stride_qb, stride_qh, stride_qm, stride_qd, LQ,
                HEAD_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """Query rows `i_m * BLOCK_M ..` of one (batch, head) as a `[BLOCK_M, BLOCK_D]` tile, zeros
    past Lq and D; also returns the row offsets `o_m`, the row mask `m_m` and the D mask `m_d`."""
    o_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    o_d = tl.arange(0, BLOCK_D)
    m_m = o_m < LQ
    if BLOCK_D == HEAD_D:
        m_d = tl.full([BLOCK_D], 1, tl.int1)
    else:
        m_d = o_d < HEAD_D
    p_q = (Q + i_b.to(tl.int64) * stride_qb + i_h.to(tl.int64) * stride_qh + o_m[:, None].to(tl.int64) * stride_qm
           + o_d[None, :] * stride_qd)
    return tl.load(p_q, mask=m_m[:, None] & m_d[None, :], other=0.0), o_m, m_m, m_d


@triton.jit
def store_out_tile(O, b_out, i_b, i_h, o_m, m_m, m_d, stride_ob, stride_oh, stride_om, stride_od,
                   BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
    """Write the fp32 `[rows, BLOCK_D]` tile `b_out` to rows `o_m` of one (batch, head) of O, in O's dtype."""
    o_d = tl.arange(0, BLOCK_D)
    p_o = (O + i_b.to(tl.int64) * stride_ob + i_h.to(tl.int64) * stride_oh + o_m[:, None].to(tl.int64) * stride_om
           + o_d[None, :] * stride_od)
    tl.store(p_o, to_dtype(b_out, O.dtype.element_ty, PRECISION), mask=m_m[:, None] & m_d[None, :])


#: Scratch rows per SM of the fused search: a program of `BLOCK_M` query rows uses a `[nk, BLOCK_M]`
#: float32 slot, and there are `256 // BLOCK_M` slots per SM (more than fit there at once), so
#: the scratch is `num_sms * 256 * nk` floats: O(L), never O(L^2) (251 MB at L = 118784,
#: block 64, 132 SMs, whatever B and H; a bf16 Q of 24 heads at that length is 730 MB).
SCRATCH_ROWS_PER_SM = 256


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of `device`; 2 under the interpreter (CPU tensors), so that
    CPU tests have fewer slots than programs and slots get reused."""
    if device.type != "cuda":
        return 2
    return torch.cuda.get_device_properties(device).multi_processor_count


def scratch_slots(device: torch.device, nk: int):
    """`(scratch, locks, rows)` of the fused search: `rows = num_sms * 256` scratch rows of `nk`
    floats, and the slot locks (int32 zeros, enough for slots of >= 16 rows; every launch
    leaves them zero again)."""
    rows = sm_count(device) * SCRATCH_ROWS_PER_SM
    scratch = torch.empty(rows * nk, device=device, dtype=torch.float32)
    return scratch, torch.zeros(rows // 16, device=device, dtype=torch.int32), rows


def strides4(x: torch.Tensor):
    """The four strides of a 4-D tensor, in elements (any layout, no copy)."""
    return x.stride(0), x.stride(1), x.stride(2), x.stride(3)


def _patch_interpreter_index() -> None:
    """Make Triton 3.6's interpreter loop over runtime bounds with NumPy >= 2.4.

    The interpreter keeps scalars as 1-element arrays and `int()` of those raises since
    NumPy 2.4 (triton-lang/triton#9171), so every `range(0, n)` with a runtime `n` fails.
    This applies the upstream fix (triton-lang/triton#9172); delete it once the minimum
    Triton version includes that PR. Only runs under TRITON_INTERPRET=1.
    """
    import numpy as np
    from triton.runtime import interpreter

    if tuple(int(x) for x in np.__version__.split(".")[:2]) < (2, 4):
        return
    original = interpreter._patch_lang_tensor
    if getattr(original, "adaspa_index_fix", False):
        return

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched.adaspa_index_fix = True
    interpreter._patch_lang_tensor = patched


if interpreting():
    _patch_interpreter_index()
