"""What the benchmarks share: moving built kernels from the build host (compiler, no GPU) to
the GPU host (TVM's runtime only), timing on the GPU, and keeping a results file.

A kernel travels as ``<file>.so`` (the exported library), ``<file>.json`` (its arguments and
calls, which the runtime-only host cannot recompute without lowering) and, for CUDA where nvcc
is on the build host, ``<file>.cubin`` (its device code, so the GPU host compiles nothing:
nvcc there costs seconds of device time per kernel).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil


def export_kernel(low, target, out_dir: str, file: str) -> None:
    """Compile a Lowered kernel and write ``out_dir/file.so``, ``.json`` and ``.cubin``."""
    from attngen.builder import compile_lowered
    from attngen.export import compile_cubin, cuda_source_of

    ex = compile_lowered(low, target)
    ex.export_library(os.path.join(out_dir, file + ".so"))
    meta = {"args": [a.__dict__ for a in low.args],
            "calls": [c.to_json() for c in low.calls]}
    if target.is_cuda and shutil.which("nvcc"):
        source = cuda_source_of(ex)
        with open(os.path.join(out_dir, file + ".cubin"), "wb") as f:
            f.write(compile_cubin(source, target.arch))
        meta["source_sha256"] = hashlib.sha256(source.encode()).hexdigest()
    with open(os.path.join(out_dir, file + ".json"), "w") as f:
        json.dump(meta, f)


def load_kernel(spec, target, build_dir: str, file: str):
    """The ``attngen.kernel.Kernel`` that ``export_kernel`` wrote as ``build_dir/file`` (its
    cubin when there is one; else the runtime compiles the source through the callback of
    ``attngen.runtime.ensure_cuda_runtime``)."""
    from pathlib import Path

    from attngen.export import load_module
    from attngen.family import Arg, Call
    from attngen.kernel import Kernel

    with open(os.path.join(build_dir, file + ".json")) as f:
        meta = json.load(f)
    cubin = os.path.join(build_dir, file + ".cubin")
    cubins = None
    if "source_sha256" in meta and os.path.exists(cubin):
        with open(cubin, "rb") as f:
            cubins = {meta["source_sha256"]: f.read()}
    module = load_module(Path(build_dir) / (file + ".so"), cubins)
    args = tuple(Arg.from_json(a) for a in meta["args"])
    calls = tuple(Call.from_json(c) for c in meta["calls"])
    return Kernel(spec, target, module, args, calls)


def merge_results(base: str, cases, rows, checks, variants) -> tuple:
    """``rows``, ``checks``, ``variants`` of this run plus those of ``base.json`` for the cases
    not run this time (a subset run, or a run cut off), ordered as ``cases`` (names)."""
    done = {x["case"] for x in checks}
    if os.path.exists(base + ".json"):
        with open(base + ".json") as f:
            old = json.load(f)
        keep = lambda xs: [x for x in xs if x["case"] not in done]  # noqa: E731
        rows, checks = keep(old["rows"]) + rows, keep(old["checks"]) + checks
        variants = keep(old.get("variants", [])) + variants
    order = {name: i for i, name in enumerate(cases)}
    for xs in (rows, checks, variants):
        xs.sort(key=lambda x: order.get(x["case"], len(order)))
    return rows, checks, variants


def save_results(base: str, case_names, card: str, rows, checks, variants, markdown) -> None:
    """Write ``base.json`` ({"card", "rows", "checks", "variants"}) and ``base.md``
    (``markdown(card, rows, checks, variants)``), keeping the rows of cases not run this time
    (``merge_results``); called after every case, so a cut-off run keeps what it measured."""
    os.makedirs(os.path.dirname(base) or ".", exist_ok=True)
    rows, checks, variants = merge_results(base, case_names, rows, checks, variants)
    with open(base + ".json", "w") as f:
        json.dump({"card": card, "rows": rows, "checks": checks, "variants": variants}, f, indent=1)
    with open(base + ".md", "w") as f:
        f.write(markdown(card, rows, checks, variants))


def launcher(kernel, buffers: dict, funcs=None, keep_fills: bool = False):
    """``fn()`` making ``kernel``'s calls (all, or those named in ``funcs``) on ``buffers`` (by
    name) with no input checks: the raw launches a timing wants.  Scratch buffers not given
    are allocated here, from the sizes the inputs imply.  ``keep_fills``: the calls that fill the
    tile map (``Call.fills``) run the first time only, as the driver runs a repeated call with
    the same sizes (a mask that reads no tensor) or with a plan (``Kernel.plan``)."""
    from attngen.kernel import allocate

    sizes = kernel.family.sizes(kernel.spec, buffers)
    device = next(iter(buffers.values())).device
    buffers = dict(buffers)
    for a in kernel.args:
        if a.name not in buffers:
            buffers[a.name] = allocate(a, sizes, device)
    calls = [c for c in kernel.calls if funcs is None or c.func in funcs]
    program = [(kernel._funcs[c.func], tuple(buffers[n] for n in c.args)) for c in calls]
    repeat = [p for c, p in zip(calls, program) if not (keep_fills and c.fills)]
    runs = [program]

    def run():
        for f, args in runs.pop() if runs else repeat:
            f(*args)

    return run


def card_name() -> str:
    """The GPU's name as results files are named: ``H100-80GB-HBM3``."""
    import torch

    return torch.cuda.get_device_name().replace("NVIDIA ", "").replace(" ", "-")


WARM_S = 0.025  # at least this long of untimed calls first, as triton's do_bench (25 ms)


def _warm(fns, warmup: int) -> None:
    """``warmup`` calls of each, then more until WARM_S has passed: a decode call of 0.2 ms
    times its 50 reps in 10 ms, short next to clocks that may have idled while the host
    prepared the case (one suspect for session 7's paged rows, 9-13% slow when timed first
    in their case late in a long run, and fine when re-run)."""
    import time

    import torch

    for _ in range(warmup):
        for fn in fns:
            fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    while time.perf_counter() - start < WARM_S:
        for fn in fns:
            fn()
        torch.cuda.synchronize()


def paired_ms(fns: dict, reps: int, warmup: int) -> dict:
    """Medians like ``median_ms`` for several callables timed in turn, one call of each per
    round: a ratio between them is then taken under the same conditions (clocks, memory
    state, neighbours on the GPU), not minutes apart in a long process."""
    import torch

    _warm(list(fns.values()), warmup)
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times[name].append(start.elapsed_time(end))
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def median_ms(fn, reps: int, warmup: int) -> float:
    """Median over ``reps`` calls of ``fn`` of the CUDA-event time around one call, after
    ``warmup`` untimed calls (compilation, autotuning, caches) and at least WARM_S of them."""
    return paired_ms({"fn": fn}, reps, warmup)["fn"]
