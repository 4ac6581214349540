"""What the benchmarks share: moving built kernels from the build host (compiler, no GPU) to
the GPU host (TVM's runtime only), and timing on the GPU.

A kernel travels as ``<file>.so`` (the exported library) and ``<file>.json`` (its arguments and
calls, which the runtime-only host cannot recompute without lowering).
"""
from __future__ import annotations

import json
import os


def export_kernel(low, target, out_dir: str, file: str) -> None:
    """Compile a Lowered kernel and write ``out_dir/file.so`` and ``out_dir/file.json``."""
    from attngen.builder import compile_lowered

    compile_lowered(low, target).export_library(os.path.join(out_dir, file + ".so"))
    meta = {"args": [a.__dict__ for a in low.args],
            "calls": [{"func": c.func, "args": list(c.args)} for c in low.calls]}
    with open(os.path.join(out_dir, file + ".json"), "w") as f:
        json.dump(meta, f)


def load_kernel(spec, target, build_dir: str, file: str):
    """The ``attngen.kernel.Kernel`` that ``export_kernel`` wrote as ``build_dir/file``."""
    import tvm
    from attngen.family import Arg, Call
    from attngen.kernel import Kernel

    with open(os.path.join(build_dir, file + ".json")) as f:
        meta = json.load(f)
    args = tuple(Arg(a["name"], tuple(a["shape"]), a["dtype"], a["role"]) for a in meta["args"])
    calls = tuple(Call(c["func"], tuple(c["args"])) for c in meta["calls"])
    return Kernel(spec, target, tvm.runtime.load_module(os.path.join(build_dir, file + ".so")), args, calls)


def launcher(kernel, buffers: dict, funcs=None):
    """``fn()`` making ``kernel``'s calls (all, or those named in ``funcs``) on ``buffers`` (by
    name) with no input checks: the raw launches a timing wants.  Scratch buffers not given
    are allocated here, from the sizes the inputs imply."""
    import torch

    from attngen.kernel import _torch_dtype

    sizes = kernel.family.sizes(kernel.spec, buffers)
    device = next(iter(buffers.values())).device
    buffers = dict(buffers)
    for a in kernel.args:
        if a.name not in buffers:
            buffers[a.name] = torch.empty(a.concrete_shape(sizes), dtype=_torch_dtype(a.dtype), device=device)
    program = [(kernel._funcs[c.func], tuple(buffers[n] for n in c.args))
               for c in kernel.calls if funcs is None or c.func in funcs]

    def run():
        for f, args in program:
            f(*args)

    return run


def card_name() -> str:
    """The GPU's name as results files are named: ``H100-80GB-HBM3``."""
    import torch

    return torch.cuda.get_device_name().replace("NVIDIA ", "").replace(" ", "-")


def median_ms(fn, reps: int, warmup: int) -> float:
    """Median over ``reps`` calls of ``fn`` of the CUDA-event time around one call, after
    ``warmup`` untimed calls (compilation, autotuning, caches)."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]
