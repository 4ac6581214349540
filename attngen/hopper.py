"""Kernels on Hopper's warpgroup MMA (wgmma, sm_90a): render their templates and build them.

``templates/wgmma_gemm.j2`` is the proving ground (C = A B^T from shared memory, swizzled
operands, matrix descriptors); ``templates/wgmma_attention.j2`` the attention forward built on
the same facts (standalone: dense/causal, no LSE).  attngen's own prefill kernel on wgmma is
``templates/attention_wgmma.j2``, rendered from a spec by ``attngen/softmax/tensorcore.py``
(the ``mma`` knob of ``schedules/attention_cuda_tc.py``).  benchmarks/NOTES-hopper.md records
what was verified on which card.
"""
from __future__ import annotations

from .render import parse, render

SM90_SMEM_BYTES = 227 * 1024  # the most dynamic shared memory one CTA may opt into on H100/H200
MMA_DTYPE = {"float16": "f16", "bfloat16": "bf16"}
GEMM_BLOCK_K = 64  # one 128-byte swizzle atom of fp16/bf16 per row


def gemm_smem_bytes(block_n: int, warpgroups: int, stages: int) -> int:
    return stages * (64 * warpgroups + block_n) * GEMM_BLOCK_K * 2


def gemm_source(m: int, n: int, k: int, dtype: str = "float16", *, block_n: int = 256,
                warpgroups: int = 2, stages: int = 4, name: str = "wgmma_gemm") -> str:
    """TVMScript of C[m, n] = A[m, k] B[n, k]^T; ValueError for shapes the tiles do not divide."""
    if dtype not in MMA_DTYPE:
        raise ValueError(f"wgmma_gemm: dtype must be one of {sorted(MMA_DTYPE)}, got {dtype!r}")
    if block_n % 8 or not 8 <= block_n <= 256:
        raise ValueError(f"wgmma_gemm: block_n must be a multiple of 8 in [8, 256], got {block_n}")
    if warpgroups not in (1, 2, 3):
        raise ValueError(f"wgmma_gemm: warpgroups must be 1, 2 or 3, got {warpgroups}")
    if stages < 2:
        raise ValueError(f"wgmma_gemm: stages must be >= 2, got {stages}")
    if (64 * warpgroups + block_n) * 8 % (128 * warpgroups):
        raise ValueError("wgmma_gemm: a stage's 16-byte chunks must split evenly over the threads")
    block_m = 64 * warpgroups
    for dim, size, tile in (("m", m, block_m), ("n", n, block_n), ("k", k, GEMM_BLOCK_K)):
        if size <= 0 or size % tile:
            raise ValueError(f"wgmma_gemm: {dim} = {size} must be a positive multiple of {tile}")
    if gemm_smem_bytes(block_n, warpgroups, stages) > SM90_SMEM_BYTES:
        raise ValueError(f"wgmma_gemm: {stages} stages need "
                         f"{gemm_smem_bytes(block_n, warpgroups, stages)} B of shared memory, "
                         f"more than {SM90_SMEM_BYTES}")
    return render("wgmma_gemm.j2", name=name, dtype=dtype, mma_dtype=MMA_DTYPE[dtype], M=m, N=n,
                  K=k, block_n=block_n, warpgroups=warpgroups, stages=stages)


def build(source: str):
    """tvm.compile of one TVMScript kernel for sm_90a (the default TIR pipeline: launch_thread
    kernels with raw T.ptx calls need nothing else); checks that device code came out."""
    import tvm

    func = parse(source)
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_90a"})
    with tvm.transform.PassContext(opt_level=3):
        ex = tvm.compile(tvm.IRModule({"main": func}), target=target)
    if not any(m.kind == "cuda" for m in ex.mod.imports):
        raise RuntimeError("wgmma build produced no device module")
    return ex


LOG2E = 1.4426950408889634
# the masked logit: exact in fp32 and finite, so a fully masked tile gives exp2(NEG) = 0, not NaN
NEG = -2.0 ** 100


def attention_smem_bytes(head_dim: int, block_n: int, warpgroups: int) -> int:
    return (64 * warpgroups + 4 * block_n) * head_dim * 2  # Q, two K and two V tiles


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(f"wgmma_attention: {message}")


def attention_source(heads: int, head_dim: int = 128, dtype: str = "float16", *,
                     causal: bool = False, group: int = 1, scale: float | None = None,
                     block_n: int = 128, warpgroups: int = 2, pv_split: bool = False,
                     overlap: bool = False, name: str = "wgmma_attention") -> str:
    """TVMScript of O = softmax(Q K^T * scale [+ causal mask]) V for q [B, heads, LQ, d], k and
    v [B, heads / group, LK, d] (B, LQ, LK symbolic); ValueError for what it cannot run.
    head_dim 64 and 128 only: wider heads need more accumulator registers than a thread has."""
    _require(dtype in MMA_DTYPE, f"dtype must be one of {sorted(MMA_DTYPE)}, got {dtype!r}")
    _require(head_dim in (64, 128), f"head_dim must be 64 or 128, got {head_dim}")
    _require(block_n % 16 == 0 and 16 <= block_n <= 256,
             f"block_n must be a multiple of 16 in [16, 256], got {block_n}")
    _require(warpgroups in (1, 2, 3), f"warpgroups must be 1, 2 or 3, got {warpgroups}")
    _require(heads > 0 and group > 0 and heads % group == 0,
             f"heads ({heads}) must be a positive multiple of group ({group})")
    smem = attention_smem_bytes(head_dim, block_n, warpgroups)
    _require(smem <= SM90_SMEM_BYTES, f"{smem} B of shared memory exceed {SM90_SMEM_BYTES}")
    nt = 128 * warpgroups
    _require((64 * warpgroups * head_dim // 8) % nt == 0 and (block_n * head_dim // 8) % nt == 0,
             "a tile's 16-byte chunks must split evenly over the threads")
    scale = head_dim ** -0.5 if scale is None else float(scale)
    return render("wgmma_attention.j2", name=name, dtype=dtype, mma_dtype=MMA_DTYPE[dtype],
                  heads=heads, group=group, head_dim=head_dim, block_n=block_n,
                  warpgroups=warpgroups, causal=causal, pv_split=pv_split, overlap=overlap,
                  fold=_f32(scale * LOG2E), neg=_f32(NEG))


def _f32(x: float) -> str:
    """A float literal that fp32 holds exactly (nvcc warns about the others)."""
    import numpy as np

    return repr(float(np.float32(x)))
