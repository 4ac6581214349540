"""Hopper wgmma kernels (attngen/hopper.py).  CPU side: bad knobs and shapes are ValueErrors,
the templates build for sm_90a and nvcc compiles them with wgmma kept asynchronous (no C7514
serialization), without stack or spills.  GPU side (skipped without a GPU): small GEMMs and
attentions against float64 numpy, outputs poisoned with NaN; kernels come from
``$WGMMA_BUILD`` (``python benchmarks/wgmma.py build DIR`` on the build host) when set, else
they are built in-process (needs TVM's compiler)."""
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from attngen.hopper import attention_source, gemm_source
from attngen.runtime import NVCC_FLAGS
from attngen.tolerance import errors, passes

NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found")


@pytest.mark.parametrize("kwargs, words", [
    (dict(m=100, n=256, k=64), "m = 100"),
    (dict(m=128, n=256, k=96), "k = 96"),
    (dict(m=128, n=256, k=64, dtype="float32"), "dtype"),
    (dict(m=128, n=256, k=64, block_n=12), "block_n"),
    (dict(m=128, n=256, k=64, stages=6), "shared memory"),
])
def test_gemm_rejects(kwargs, words):
    with pytest.raises(ValueError, match=words):
        gemm_source(**kwargs)


@pytest.mark.parametrize("kwargs, words", [
    (dict(heads=32, head_dim=96), "head_dim"),
    (dict(heads=32, group=5), "group"),
    (dict(heads=32, block_n=24), "block_n"),
    (dict(heads=32, head_dim=256), "head_dim"),
    (dict(heads=32, block_n=256), "shared memory"),
])
def test_attention_rejects(kwargs, words):
    with pytest.raises(ValueError, match=words):
        attention_source(**kwargs)


def _ptxas_report(source: str, tmp_path) -> str:
    src = tmp_path / "k.cu"
    src.write_text(source)
    cmd = [NVCC, "-cubin", *NVCC_FLAGS, "-arch=sm_90a", "--resource-usage",
           "-o", str(tmp_path / "k.cubin"), str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout + proc.stderr


@needs_nvcc
@pytest.mark.parametrize("kind", ["gemm", "attention", "attention overlap"])
def test_builds_async_without_stack(kind, tmp_path):
    from attngen.export import cuda_source_of
    from attngen.hopper import build

    source = (gemm_source(128, 256, 128) if kind == "gemm"
              else attention_source(8, 64, causal=True, warpgroups=1, block_n=64,
                                    overlap=kind.endswith("overlap")))
    cuda = cuda_source_of(build(source))
    assert "wgmma.mma_async.sync.aligned" in cuda and "wgmma.wait_group" in cuda
    report = _ptxas_report(cuda, tmp_path)
    assert "C7514" not in report and "serialized" not in report, report
    no_stack = r"\b0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads"
    assert re.search(no_stack, report), report


# ---------------------------------------------------------------------------- GPU


def _kernel(file: str, source: str):
    build_dir = os.environ.get("WGMMA_BUILD")
    if build_dir:
        from benchmarks.wgmma import _load

        return _load(build_dir, file)
    from attngen.hopper import build

    return build(source)[file]


@pytest.mark.gpu
@pytest.mark.parametrize("case", range(3))
def test_gemm_on_gpu(case):
    import torch

    from benchmarks.wgmma import GEMMS

    g = GEMMS[case]
    fn = _kernel(g.file, g.source())
    dt = getattr(torch, g.dtype)
    a = torch.randn(g.m, g.k, device="cuda").to(dt)
    b = torch.randn(g.n, g.k, device="cuda").to(dt)
    c = torch.full((g.m, g.n), float("nan"), device="cuda", dtype=dt)
    fn(a, b, c)
    ref = a.cpu().double().numpy() @ b.cpu().double().numpy().T
    assert passes(errors(c.float().cpu().numpy(), ref), g.dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("case", ["dense", "causal", "dense overlap", "causal bf16 gqa4 overlap",
                                  "causal bn64", "dense d64 1wg overlap"])
@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 127, 127), (2, 200, 333), (1, 255, 256)])
def test_attention_on_gpu(case, shape):
    import torch

    from benchmarks.wgmma import ATTNS, attention_reference

    a = next(x for x in ATTNS if x.name == case)
    fn = _kernel(a.file, a.source())
    b, lq, lk = shape
    dt = getattr(torch, a.dtype)
    q = torch.randn(b, a.heads, lq, a.head_dim, device="cuda").to(dt)
    k, v = (torch.randn(b, a.heads // a.group, lk, a.head_dim, device="cuda").to(dt) for _ in "kv")
    o = torch.full_like(q, float("nan"))
    fn(q, k, v, o)
    ref = attention_reference(q, k, v, a.causal)
    assert passes(errors(o.float().cpu().numpy(), np.asarray(ref)), a.dtype)
