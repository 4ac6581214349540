"""Hopper wgmma kernels (attngen/hopper.py): checked against float64 numpy and timed against
torch in one process on one GPU.

    python benchmarks/wgmma.py build DIR            # here: render + compile every case to DIR
    python benchmarks/wgmma.py run DIR [RESULTS]    # on the GPU (source .gpu/env.sh first)

``run`` checks every case (fresh random inputs, the output poisoned with NaN before the
launch; small shapes against float64 numpy, the timed shapes against torch in fp32), times
the timed ones with CUDA events (median after warm-up) next to torch.matmul / SDPA flash and
writes RESULTS/<card>-wgmma.json + .md.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks._common import card_name, median_ms  # noqa: E402


@dataclass(frozen=True)
class Gemm:
    name: str
    m: int
    n: int
    k: int
    dtype: str = "float16"
    block_n: int = 256
    warpgroups: int = 2
    stages: int = 4
    timed: bool = False

    def source(self) -> str:
        from attngen.hopper import gemm_source

        return gemm_source(self.m, self.n, self.k, self.dtype, block_n=self.block_n,
                           warpgroups=self.warpgroups, stages=self.stages, name=self.file)

    @property
    def file(self) -> str:
        return "g_%d_%d_%d_%s_n%d_w%d_s%d" % (self.m, self.n, self.k, self.dtype, self.block_n,
                                               self.warpgroups, self.stages)


GEMMS = [
    Gemm("gemm 256x512x640 fp16", 256, 512, 640),
    Gemm("gemm 192x384x320 bf16 1wg n128", 192, 384, 320, "bfloat16", 128, 1, 3),
    Gemm("gemm 128x64x64 fp16 n64 (one k tile)", 128, 64, 64, block_n=64),
    Gemm("gemm 4096^3 fp16", 4096, 4096, 4096, timed=True),
    Gemm("gemm 8192^3 fp16", 8192, 8192, 8192, timed=True),
    Gemm("gemm 8192^3 fp16 n128", 8192, 8192, 8192, block_n=128, stages=5, timed=True),
]


@dataclass(frozen=True)
class Attn:
    name: str
    causal: bool = False
    dtype: str = "float16"
    group: int = 1
    pv_split: bool = False
    overlap: bool = False
    block_n: int = 128
    warpgroups: int = 2
    heads: int = 32
    head_dim: int = 128
    timed: bool = True

    def source(self) -> str:
        from attngen.hopper import attention_source

        return attention_source(self.heads, self.head_dim, self.dtype, causal=self.causal,
                                group=self.group, block_n=self.block_n,
                                warpgroups=self.warpgroups, pv_split=self.pv_split,
                                overlap=self.overlap, name=self.file)

    @property
    def file(self) -> str:
        return "a_%s_%s_h%d_g%d_d%d_n%d_w%d%s" % (
            "causal" if self.causal else "dense", self.dtype, self.heads, self.group,
            self.head_dim, self.block_n, self.warpgroups,
            "_split" if self.pv_split else "") + ("_overlap" if self.overlap else "")


ATTNS = [
    Attn("dense"),
    Attn("causal", causal=True),
    Attn("dense pv_split", pv_split=True, timed=False),
    Attn("causal pv_split", causal=True, pv_split=True, timed=False),
    Attn("dense overlap", overlap=True),
    Attn("causal overlap", causal=True, overlap=True),
    Attn("causal bf16 gqa4 overlap", causal=True, dtype="bfloat16", group=4, overlap=True,
         timed=False),
    Attn("causal bn64", causal=True, block_n=64, timed=False),
    Attn("dense d64 1wg overlap", head_dim=64, warpgroups=1, overlap=True, timed=False),
    # one warpgroup, 80 KB of shared memory: two CTAs per SM, whose softmax and GEMMs overlap
    Attn("dense 1wg n64 overlap", block_n=64, warpgroups=1, overlap=True),
    Attn("causal 1wg n64 overlap", causal=True, block_n=64, warpgroups=1, overlap=True),
]
# (batch, LQ, LK) checked against float64: odd lengths, one row, one key, LQ < LK (causal
# bottom-right); and the timed (batch, N) shapes
ATTN_CHECKS = [(1, 1, 1), (1, 127, 127), (1, 129, 129), (2, 200, 333), (1, 64, 300), (1, 255, 256)]
ATTN_TIMED = [(4, 4096), (1, 16384)]


def build(out_dir: str) -> None:
    from attngen.export import compile_cubin, cuda_source_of
    from attngen.hopper import build as build_kernel

    os.makedirs(out_dir, exist_ok=True)
    for case in GEMMS + ATTNS:
        ex = build_kernel(case.source())
        ex.export_library(os.path.join(out_dir, case.file + ".so"))
        with open(os.path.join(out_dir, case.file + ".cubin"), "wb") as f:
            f.write(compile_cubin(cuda_source_of(ex), "sm_90a"))
        print("built", case.name, flush=True)


def _load(build_dir: str, file: str):
    """The kernel function ``file`` of ``build_dir`` (device code from its cubin)."""
    from pathlib import Path

    import tvm_ffi

    from attngen.runtime import ensure_cuda_runtime, load_library

    ensure_cuda_runtime()
    with open(os.path.join(build_dir, file + ".cubin"), "rb") as f:
        cubin = bytearray(f.read())
    tvm_ffi.register_global_func("tvm_callback_cuda_compile", lambda code: cubin, override=True)
    return load_library(Path(build_dir) / (file + ".so"))[file]


def _errors(x, ref) -> dict:
    from attngen.tolerance import errors

    return {k: v for k, v in errors(x, ref).items() if k in ("rel_rmse", "max_rel")}


def _report(case: str, impl: str, ms: float, flop: float) -> None:
    print(f"{case:40s} {impl:16s} {ms:8.3f} ms {flop / ms / 1e9:7.1f} TFLOP/s", flush=True)


def run_gemms(build_dir: str, rows: list, checks: list) -> None:
    import torch

    from attngen.tolerance import passes

    torch.manual_seed(0)
    for case in GEMMS:
        fn = _load(build_dir, case.file)
        dt = getattr(torch, case.dtype)
        a = torch.randn(case.m, case.k, device="cuda").to(dt)
        b = torch.randn(case.n, case.k, device="cuda").to(dt)
        c = torch.full((case.m, case.n), float("nan"), device="cuda", dtype=dt)
        fn(a, b, c)
        torch.cuda.synchronize()
        if case.timed:  # float64 on the host would take minutes at 8192^3: fp32 on the GPU
            ref = (a.float() @ b.float().T).cpu().numpy()
        else:
            ref = a.cpu().double().numpy() @ b.cpu().double().numpy().T
        err = _errors(c.float().cpu().numpy(), ref)
        ok = passes(err, case.dtype)
        checks.append({"case": case.name, "ok": ok, **err})
        print(f"{case.name:40s} {'OK ' if ok else 'BAD'} rel_rmse={err['rel_rmse']:.2e} "
              f"max_rel={err['max_rel']:.2e}", flush=True)
        if not case.timed:
            continue
        flop = 2.0 * case.m * case.n * case.k
        bt = b.T  # torch.matmul(A, B^T): cuBLAS's TN GEMM, the same problem
        for impl, call in (("attngen wgmma", lambda: fn(a, b, c)),
                           ("torch.matmul", lambda: torch.matmul(a, bt))):
            ms = median_ms(call, reps=20, warmup=5)
            rows.append({"case": case.name, "impl": impl, "ms": ms, "tflops": flop / ms / 1e9})
            _report(case.name, impl, ms, flop)


def attention_reference(q, k, v, causal: bool):
    """float64 softmax(q k^T / sqrt(d) [causal, bottom-right]) v, heads of k/v repeated."""
    import numpy as np

    q, k, v = (np.asarray(x.cpu().double().numpy()) for x in (q, k, v))
    group = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1])
    lq, lk = q.shape[2], k.shape[2]
    if causal:
        visible = np.arange(lk)[None, :] <= np.arange(lq)[:, None] + lk - lq
        s = np.where(visible, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v


def run_attention(build_dir: str, rows: list, checks: list) -> None:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from attngen.tolerance import passes

    torch.manual_seed(0)
    for case in ATTNS:
        fn = _load(build_dir, case.file)
        dt = getattr(torch, case.dtype)
        hk = case.heads // case.group

        def inputs(b, lq, lk):
            q = torch.randn(b, case.heads, lq, case.head_dim, device="cuda").to(dt)
            k = torch.randn(b, hk, lk, case.head_dim, device="cuda").to(dt)
            v = torch.randn(b, hk, lk, case.head_dim, device="cuda").to(dt)
            return q, k, v, torch.full_like(q, float("nan"))

        for b, lq, lk in ATTN_CHECKS:
            q, k, v, o = inputs(b, lq, lk)
            fn(q, k, v, o)
            torch.cuda.synchronize()
            err = _errors(o.float().cpu().numpy(), attention_reference(q, k, v, case.causal))
            ok = passes(err, case.dtype)
            label = f"attn {case.name} B{b} LQ{lq} LK{lk}"
            checks.append({"case": label, "ok": ok, **err})
            print(f"{label:40s} {'OK ' if ok else 'BAD'} rel_rmse={err['rel_rmse']:.2e} "
                  f"max_rel={err['max_rel']:.2e}", flush=True)
        if not case.timed:
            continue
        for b, n in ATTN_TIMED:
            q, k, v, o = inputs(b, n, n)
            label = f"attn {case.name} d{case.head_dim} B{b} N{n}"
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                ref = F.scaled_dot_product_attention(q, k, v, is_causal=case.causal)
            fn(q, k, v, o)
            torch.cuda.synchronize()
            err = _errors(o.float().cpu().numpy(), ref.float().cpu().numpy())
            ok = passes(err, case.dtype)
            checks.append({"case": label + " vs SDPA flash", "ok": ok, **err})
            print(f"{label:40s} {'OK ' if ok else 'BAD'} vs SDPA rel_rmse={err['rel_rmse']:.2e}",
                  flush=True)
            visible = (n * (n + 1) / 2) if case.causal else n * n
            flop = 4.0 * b * case.heads * visible * case.head_dim
            peers = [("attngen wgmma", lambda: fn(q, k, v, o))]
            for peer, backend in (("SDPA flash", SDPBackend.FLASH_ATTENTION),
                                  ("SDPA cuDNN", SDPBackend.CUDNN_ATTENTION)):
                def call(backend=backend):
                    with sdpa_kernel(backend):
                        F.scaled_dot_product_attention(q, k, v, is_causal=case.causal)
                peers.append((peer, call))
            for impl, call in peers:
                try:
                    ms = median_ms(call, reps=20, warmup=5)
                except RuntimeError as err:  # a backend this torch/GPU lacks
                    print(f"{label:40s} {impl:16s} unavailable: {str(err)[:80]}")
                    continue
                rows.append({"case": label, "impl": impl, "ms": ms, "tflops": flop / ms / 1e9})
                _report(label, impl, ms, flop)


def run(build_dir: str, results: str) -> int:
    rows, checks = [], []
    parts = os.environ.get("WGMMA_PARTS", "gemm,attention").split(",")  # a subset: faster
    if "gemm" in parts:
        run_gemms(build_dir, rows, checks)
    if "attention" in parts:
        run_attention(build_dir, rows, checks)
    card = card_name()
    os.makedirs(results, exist_ok=True)
    base = os.path.join(results, f"{card}-wgmma")
    with open(base + ".json", "w") as f:
        json.dump({"card": card, "rows": rows, "checks": checks,
                   "cases": [asdict(c) for c in GEMMS + ATTNS]}, f, indent=1)
    with open(base + ".md", "w") as f:
        f.write(f"# wgmma kernels on {card}\n\n| case | impl | ms | TFLOP/s |\n|---|---|---|---|\n")
        for r in rows:
            f.write(f"| {r['case']} | {r['impl']} | {r['ms']:.3f} | {r['tflops']:.1f} |\n")
        f.write("\n| check | ok | rel_rmse | max_rel |\n|---|---|---|---|\n")
        for c in checks:
            f.write(f"| {c['case']} | {c['ok']} | {c['rel_rmse']:.2e} | {c['max_rel']:.2e} |\n")
    return 0 if all(c["ok"] for c in checks) else 1


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in ("build", "run"):
        print("usage: wgmma.py build DIR | run DIR [RESULTS]", file=sys.stderr)
        sys.exit(2)
    if sys.argv[1] == "build":
        build(sys.argv[2])
    else:
        sys.exit(run(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "benchmarks/results"))
