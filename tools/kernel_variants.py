"""Run 3 of docs/kernel-tuning.md: kernel variants timed side by side on one GPU.

Not part of the package. Each variant is the package's loop stripped to the benchmark
case (contiguous bf16 [B, H, L, D], D = 128, L a multiple of 128, no masking) and changed
in one way, so that the timings say which change pays before it goes into
`adaspa.kernels`:

- `tma`: K / V (and Q) tiles through host tensor descriptors (Hopper's bulk tensor copy)
  instead of pointer loads;
- `ws`: `tl.range(..., warp_specialize=True)` on the key loop;
- `poly`: half of each key tile's exp2 on the FMA pipe (Cody-Waite range reduction and a
  degree-5 polynomial, relative error 2.3e-7 in fp32, the MUFU's own accuracy) instead
  of the multi-function unit;
- for the block mass, two timing-only probes that drop a stage: `rows` (row sums only,
  no per-tile reduction over rows and no per-tile store) and `noexp` (no exp2).

Every variant's output is compared with the package's before it is timed. Usage on the
device: `PYTHONPATH=. python tools/kernel_variants.py --out $OUT`.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

LOG2E = 1.4426950408889634


@triton.jit
def exp2_fma(x):
    """2**x for x <= 0 on the FMA pipe: x = n + f with |f| <= 1/2, 2**f by a degree-5 polynomial."""
    x = tl.maximum(x, -127.0)
    t = x + 12582912.0  # 1.5 * 2**23: rounds x to an integer in the low mantissa bits
    f = x - (t - 12582912.0)
    p = 0.0013276471290737391 * f + 0.009675540961325169
    p = p * f + 0.05550713092088699
    p = p * f + 0.24022120237350464
    p = p * f + 0.6931469440460205
    p = p * f + 1.0000001192092896
    bits = p.to(tl.int32, bitcast=True) + (t.to(tl.int32, bitcast=True) << 23)
    return bits.to(tl.float32, bitcast=True)


# ----------------------------------------------------------------------------- dense


@triton.jit
def _attend(q, desc_k, desc_v, row, m, l, acc, qk_scale, HALF: tl.constexpr, POLY: tl.constexpr):
    """One online-softmax step over the key rows at `row` (one tile, or two halves when POLY,
    the second half's exp2 on the FMA pipe); returns the updated (m, l, acc)."""
    if POLY:
        k1 = desc_k.load([row, 0])
        k2 = desc_k.load([row + HALF, 0])
        s1 = tl.dot(q, k1.T)
        s2 = tl.dot(q, k2.T)
        m_new = tl.maximum(m, tl.maximum(tl.max(s1, 1), tl.max(s2, 1)) * qk_scale)
        p1 = tl.math.exp2(s1 * qk_scale - m_new[:, None])
        p2 = exp2_fma(s2 * qk_scale - m_new[:, None])
        alpha = tl.math.exp2(m - m_new)
        acc = acc * alpha[:, None]
        v1 = desc_v.load([row, 0])
        v2 = desc_v.load([row + HALF, 0])
        acc = tl.dot(p1.to(v1.dtype), v1, acc)
        acc = tl.dot(p2.to(v2.dtype), v2, acc)
        l = l * alpha + tl.sum(p1, 1) + tl.sum(p2, 1)
    else:
        k = desc_k.load([row, 0])
        s = tl.dot(q, k.T)
        m_new = tl.maximum(m, tl.max(s, 1) * qk_scale)
        p = tl.math.exp2(s * qk_scale - m_new[:, None])
        alpha = tl.math.exp2(m - m_new)
        acc = acc * alpha[:, None]
        v = desc_v.load([row, 0])
        acc = tl.dot(p.to(v.dtype), v, acc)
        l = l * alpha + tl.sum(p, 1)
    return m_new, l, acc


@triton.jit
def dense_kernel(desc_q, desc_k, desc_v, O, LSE, L, qk_scale,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr,
                 WS: tl.constexpr, POLY: tl.constexpr):
    i_m = tl.program_id(0)
    i_bh = tl.program_id(1)
    q_row = i_bh * L + i_m * BLOCK_M
    kv_row = i_bh * L
    q = desc_q.load([q_row, 0])
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    HALF: tl.constexpr = BLOCK_N // 2
    for start in tl.range(0, L, BLOCK_N, warp_specialize=WS):
        m, l, acc = _attend(q, desc_k, desc_v, kv_row + start, m, l, acc, qk_scale, HALF, POLY)
    o_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    o_d = tl.arange(0, D)
    out = acc / l[:, None]
    tl.store(O + (i_bh * L + o_m[:, None]).to(tl.int64) * D + o_d[None, :], out.to(O.dtype.element_ty))
    tl.store(LSE + i_bh * L + o_m, (m + tl.math.log2(l)) * 0.6931471805599453)


def attention_setup(q, k, v, q_rows, kv_rows):
    """Descriptors over the flattened [B * H * L, D] q, k, v, the outputs, and the log2-domain scale."""
    B, H, L, D = q.shape
    descs = [TensorDescriptor.from_tensor(x.view(-1, D), [rows, D])
             for x, rows in ((q, q_rows), (k, kv_rows), (v, kv_rows))]
    return (*descs, torch.empty_like(q), torch.empty(B, H, L, device=q.device), D ** -0.5 * LOG2E)


def run_dense(q, k, v, bm, bn, warps, stages, ws=False, poly=False):
    B, H, L, D = q.shape
    dq, dk, dv, out, lse, scale = attention_setup(q, k, v, bm, bn // 2 if poly else bn)

    def call():
        return dense_kernel[(L // bm, B * H)](dq, dk, dv, out, lse, L, scale, BLOCK_M=bm, BLOCK_N=bn, D=D,
                                               WS=ws, POLY=poly, num_warps=warps, num_stages=stages)

    return call, out, lse


# ----------------------------------------------------------------------------- block mass


@triton.jit
def _store_blocks(p, MASS, row_off, col0, NKB, BLOCK_M: tl.constexpr, W: tl.constexpr, BS: tl.constexpr):
    """Block sums of a [BLOCK_M, W] tile of probabilities into MASS[rows, col0 : col0 + W / BS]."""
    o_kb = col0 + tl.arange(0, W // BS)
    if BLOCK_M == BS and W == BS:
        blk = tl.zeros([1], tl.float32) + tl.sum(tl.sum(p, axis=1), axis=0)
        tl.store(MASS + row_off + o_kb, blk)
    else:
        cols = tl.sum(tl.reshape(p, (BLOCK_M, W // BS, BS)), axis=2)
        blk = tl.sum(tl.reshape(cols, (BLOCK_M // BS, BS, W // BS)), axis=1)
        tl.store(MASS + row_off[:, None] + o_kb[None, :], blk)


@triton.jit
def mass_kernel(desc_q, desc_k, LSE, MASS, L, NQB, NKB, qk_scale,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BS: tl.constexpr, D: tl.constexpr,
                MODE: tl.constexpr, WS: tl.constexpr):
    """MODE 0 exact, 1 rows-only probe, 2 no-exp probe, 3 half the exp2 on the FMA pipe."""
    i_m = tl.program_id(0)
    i_bh = tl.program_id(1)
    o_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    q = desc_q.load([i_bh * L + i_m * BLOCK_M, 0])
    lse2 = tl.load(LSE + i_bh * L + o_m) * 1.4426950408889634
    o_qb = i_m * (BLOCK_M // BS) + tl.arange(0, BLOCK_M // BS)
    if BLOCK_M == BS:
        row_off = (i_bh * NQB + i_m).to(tl.int64) * NKB
    else:
        row_off = (i_bh * NQB + o_qb).to(tl.int64) * NKB
    kv_row = i_bh * L
    rows = tl.zeros([BLOCK_M], tl.float32)
    HALF: tl.constexpr = BLOCK_N // 2
    for start in tl.range(0, L, BLOCK_N, warp_specialize=WS):
        if MODE == 3:
            k1 = desc_k.load([kv_row + start, 0])
            k2 = desc_k.load([kv_row + start + HALF, 0])
            p1 = tl.math.exp2(tl.dot(q, k1.T) * qk_scale - lse2[:, None])
            p2 = exp2_fma(tl.dot(q, k2.T) * qk_scale - lse2[:, None])
            _store_blocks(p1, MASS, row_off, start // BS, NKB, BLOCK_M, HALF, BS)
            _store_blocks(p2, MASS, row_off, (start + HALF) // BS, NKB, BLOCK_M, HALF, BS)
        else:
            k = desc_k.load([kv_row + start, 0])
            s = tl.dot(q, k.T) * qk_scale - lse2[:, None]
            if MODE == 2:
                p = s
            else:
                p = tl.math.exp2(s)
            if MODE == 1:
                rows += tl.sum(p, 1)
            else:
                _store_blocks(p, MASS, row_off, start // BS, NKB, BLOCK_M, BLOCK_N, BS)
    if MODE == 1:
        tl.store(MASS + i_bh * L + o_m, rows)


def run_mass(q, k, lse, bs, bm, bn, warps, stages, mode=0, ws=False):
    B, H, L, D = q.shape
    nb = L // bs
    dq = TensorDescriptor.from_tensor(q.view(-1, D), [bm, D])
    dk = TensorDescriptor.from_tensor(k.view(-1, D), [bn // 2 if mode == 3 else bn, D])
    mass = torch.empty(B, H, nb, nb, device=q.device)
    scale = D ** -0.5 * LOG2E

    def call():
        return mass_kernel[(L // bm, B * H)](dq, dk, lse, mass, L, nb, nb, scale, BLOCK_M=bm, BLOCK_N=bn, BS=bs,
                                              D=D, MODE=mode, WS=ws, num_warps=warps, num_stages=stages)

    return call, mass


# ----------------------------------------------------------------------------- block-sparse


@triton.jit
def sparse_kernel(desc_q, desc_k, desc_v, O, LSE, INDICES, COUNTS, L, NQB, MAX_KEPT, qk_scale,
                  BS: tl.constexpr, D: tl.constexpr, WS: tl.constexpr, POLY: tl.constexpr):
    pid = tl.program_id(0)
    i_bh = pid // NQB
    i_p = pid % NQB
    n_kept = tl.load(COUNTS + pid)
    p_idx = INDICES + pid.to(tl.int64) * MAX_KEPT
    kv_row = i_bh * L
    q = desc_q.load([i_bh * L + i_p * BS, 0])
    m = tl.full([BS], float("-inf"), tl.float32)
    l = tl.zeros([BS], tl.float32)
    acc = tl.zeros([BS, D], tl.float32)
    HALF: tl.constexpr = BS // 2
    for it in tl.range(0, n_kept, warp_specialize=WS):
        row = kv_row + tl.load(p_idx + it) * BS
        m, l, acc = _attend(q, desc_k, desc_v, row, m, l, acc, qk_scale, HALF, POLY)
    o_m = i_p * BS + tl.arange(0, BS)
    o_d = tl.arange(0, D)
    out = acc / l[:, None]
    tl.store(O + (i_bh * L + o_m[:, None]).to(tl.int64) * D + o_d[None, :], out.to(O.dtype.element_ty))
    tl.store(LSE + i_bh * L + o_m, (m + tl.math.log2(l)) * 0.6931471805599453)


def run_sparse(q, k, v, mask, warps, stages, ws=False, poly=False):
    B, H, L, D = q.shape
    bs = mask.block_size
    dq, dk, dv, out, lse, scale = attention_setup(q, k, v, bs, bs // 2 if poly else bs)
    idx, cnt = mask.indices.contiguous(), mask.counts.contiguous()
    nq = L // bs

    def call():
        return sparse_kernel[(B * H * nq,)](dq, dk, dv, out, lse, idx, cnt, L, nq, idx.shape[-1], scale, BS=bs, D=D,
                                            WS=ws, POLY=poly, num_warps=warps, num_stages=stages)

    return call, out, lse


# ----------------------------------------------------------------------------- driver


def variant_specs(groups):
    """(group, name, runner, kwargs) of every variant of this run; kwargs exclude the tensors."""
    specs = []
    if "dense" in groups:
        for bm, bn, w, s in [(64, 64, 4, 3), (128, 64, 8, 3), (64, 128, 4, 3)]:
            specs.append(("dense", f"tma bm{bm} bn{bn} w{w} s{s}", "dense", dict(bm=bm, bn=bn, warps=w, stages=s)))
    if "mass" in groups:
        for bs, bm, bn, w, s, modes in [(64, 64, 64, 4, 3, (0, 1, 2)), (64, 64, 128, 4, 3, (0, 2, 3)),
                                        (64, 128, 128, 8, 2, (0, 1, 2, 3)), (64, 128, 64, 8, 3, (0,)),
                                        (128, 128, 128, 8, 2, (0, 2, 3)), (128, 128, 128, 8, 3, (0,))]:
            for mode in modes:
                label = ("exact", "rows-probe", "noexp-probe", "poly")[mode]
                specs.append(("mass", f"tma bs{bs} bm{bm} bn{bn} w{w} s{s} {label}", "mass",
                              dict(bs=bs, bm=bm, bn=bn, warps=w, stages=s, mode=mode)))
    if "sparse" in groups:
        for bs, w, s in [(64, 4, 2), (64, 4, 3), (64, 4, 4), (64, 8, 3), (128, 8, 2), (128, 8, 3), (128, 4, 2)]:
            for poly in (False, True):
                specs.append(("sparse", f"tma bs{bs} w{w} s{s}{' poly' if poly else ''}", "sparse",
                              dict(bs=bs, warps=w, stages=s, poly=poly)))
    return specs


def build(runner, kwargs, q, k, v, lse, masks):
    if runner == "dense":
        return run_dense(q, k, v, **kwargs)
    if runner == "mass":
        return run_mass(q, k, lse, **kwargs)
    kwargs = dict(kwargs)
    return run_sparse(q, k, v, masks[kwargs.pop("bs")], **kwargs)


def inputs(heads, length, density, seed=0):
    from adaspa.bench import random_mask

    g = torch.Generator(device="cuda").manual_seed(seed)
    q, k, v = (torch.randn(1, heads, length, 128, generator=g, device="cuda", dtype=torch.bfloat16)
               for _ in range(3))
    masks = {bs: random_mask(1, heads, length, bs, density, "uniform", "cuda") for bs in (64, 128)}
    return q, k, v, masks


def package_call(op, bs, q, k, v, lse, masks):
    """The package's own (autotuned) kernel for a group: the baseline each variant is checked against."""
    from adaspa import kernels

    if op == "dense":
        return lambda: kernels.attention(q, k, v)
    if op == "mass":
        return lambda: kernels.block_mass(q, k, lse, block_size=bs)
    return lambda: kernels.block_sparse_attention(q, k, v, masks[bs])


PACKAGE_SPECS = [("package", op, "package", dict(op=op, bs=bs))
                 for op, bs in (("dense", None), ("mass", 64), ("mass", 128), ("sparse", 64), ("sparse", 128))]


def precompile(spec_and_shape):
    """Compile one variant (or autotune one package kernel) in a worker process, filling Triton's
    on-disk cache so the timing process only loads binaries; returns its failure, if any."""
    (group, name, runner, kwargs), length, density = spec_and_shape
    try:
        q, k, v, masks = inputs(1, length, density)
        lse = torch.zeros(1, 1, length, device="cuda")
        if runner == "package":
            package_call(kwargs["op"], kwargs["bs"], q, k, v, lse, masks)()
        else:
            call, *_ = build(runner, kwargs, q, k, v, lse, masks)
            call()
        torch.cuda.synchronize()
        return None
    except Exception as exc:
        return f"{group} {name}: {type(exc).__name__}: {str(exc)[:300]}"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="variants_out")
    parser.add_argument("--length", type=int, default=32768)
    parser.add_argument("--heads", type=int, default=24)
    parser.add_argument("--density", type=float, default=0.2)
    parser.add_argument("--groups", nargs="+", default=["dense", "mass", "sparse"])
    parser.add_argument("--workers", type=int, default=12)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)

    import concurrent.futures
    import multiprocessing

    from torch.nn.attention import SDPBackend, sdpa_kernel

    from adaspa import kernels
    from adaspa.bench import attention_flops, bench_ms, environment
    from adaspa.kernels import block_sparse, flash_fwd, search

    specs = variant_specs(args.groups)
    todo = [spec for spec in PACKAGE_SPECS if spec[3]["op"] in args.groups] + specs
    with concurrent.futures.ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for failure in pool.map(precompile, [(spec, args.length, args.density) for spec in todo]):
            if failure:
                print("precompile failed:", failure, flush=True)

    env = environment()
    B, H, L, D = 1, args.heads, args.length, 128
    q, k, v, masks = inputs(H, L, args.density)
    flops = attention_flops(B, H, L, L, D)
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        cudnn_ms = bench_ms(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))
    _, lse = kernels.attention(q, k, v)
    results = [{"group": "dense", "variant": "sdpa_cudnn", "ms": cudnn_ms, "tflops": flops / cudnn_ms * 1e-9}]
    package = {(kw["op"], kw["bs"]): package_call(kw["op"], kw["bs"], q, k, v, lse, masks)
               for *_, kw in PACKAGE_SPECS if kw["op"] in args.groups}
    refs = {key: fn() for key, fn in package.items()}

    def rel(a, b):
        return float((a.float() - b.float()).norm() / b.float().norm())

    def density_of(group, bs):
        return {"dense": 1.0, "mass": 0.5}.get(group) or float(masks[bs].density().mean())

    tuned = {"dense": flash_fwd._attention_tuned, "mass": search._block_mass_tuned,
             "sparse": block_sparse._block_sparse_tuned}
    for (group, bs), fn in package.items():
        if group in args.groups:
            fn()
            print(f"package {group} bs{bs} config: {tuned[group].best_config}", flush=True)
            ms = bench_ms(fn)
            results.append({"group": group, "variant": f"package{'' if bs is None else f' bs{bs}'}", "ms": ms,
                            "tflops": flops * density_of(group, bs) / ms * 1e-9})
            print(json.dumps(results[-1]), flush=True)
    for group, name, runner, kwargs in specs:
        bs = kwargs.get("bs")
        try:
            call, *outs = build(runner, kwargs, q, k, v, lse, masks)
            kernel = call()
            torch.cuda.synchronize()
            ref = refs[(group, bs if group != "dense" else None)]
            ref = ref if isinstance(ref, tuple) else (ref,)
            err = None if "probe" in name else max(rel(a, b) for a, b in zip(outs, ref))
            ms = bench_ms(call)
            results.append({"group": group, "variant": name, "ms": ms,
                            "tflops": flops * density_of(group, bs) / ms * 1e-9, "err": err,
                            "regs": kernel.n_regs, "spills": kernel.n_spills})
        except Exception as exc:  # a variant that fails is a result, recorded with its reason
            results.append({"group": group, "variant": name, "failed": f"{type(exc).__name__}: {exc}"[:400]})
        print(json.dumps(results[-1]), flush=True)

    with open(os.path.join(args.out, "variants.json"), "w") as f:
        json.dump({"env": env, "B": B, "H": H, "L": L, "D": D, "density": args.density, "results": results}, f,
                  indent=1)
    print(f"\n== {env['card']} torch {env['torch']} triton {env['triton']} L={L} H={H}: cuDNN {cudnn_ms:.3f} ms ==")
    for group in ("dense", "mass", "sparse"):
        for r in sorted((r for r in results if r["group"] == group and "ms" in r), key=lambda r: r["ms"]):
            print(f"{group:7}{r['variant']:<40}{r['ms']:>9.3f} ms {r['tflops']:>6.1f} TF/s "
                  f"{r['ms'] / cudnn_ms:>6.3f}x cuDNN time  err={r.get('err')} regs={r.get('regs')} "
                  f"spills={r.get('spills')}")
        for r in results:
            if r["group"] == group and "failed" in r:
                print(f"{group:7}{r['variant']:<40} FAILED {r['failed'][:150]}")


if __name__ == "__main__":
    main()
