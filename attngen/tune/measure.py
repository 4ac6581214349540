"""Validate, then time, the built candidates of a directory (the runtime-only side).

``measure(dir)`` reads ``dir/manifest.json`` (written by ``attngen tune --build-only``),
loads each built candidate, and

1. checks it against the float64 reference on fresh inputs with NaN-poisoned outputs at
   lengths that leave partial tiles (``VALIDATION_LENGTHS``): a candidate that fails is
   marked invalid with its error and is never timed, so a fast wrong kernel cannot win;
2. times it at every requested length: warm-up, then ``repeats`` groups of calls, each group
   timed with CUDA events (``perf_counter`` on the CPU) and long enough to hide launch gaps;
   the result is the median over groups.  Successive calls rotate over copies of the inputs
   whose total size exceeds twice the last-level cache, so no call finds its inputs cached;
   one set is drawn per shape of the inputs (and shared by every candidate, and by every
   spec measured with the same ``Workloads``), the other copies are clones of it on the
   device: the rotation is about addresses, and drawing 16K-token inputs costs seconds.

Results go to ``dir/results.json``.  Only TVM's runtime, torch and numpy are imported: this
runs on a GPU host with no TVM compiler (tested with the compiler modules blocked).
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .runner import CUBIN, LIB, META

VALIDATION_LENGTHS = (37, 130)
CACHE_BYTES = {"cpu": 64 << 20, "cuda": 60 << 20}  # generous last-level cache sizes
MAX_COPIES = 16
GROUP_SECONDS = 2e-3  # a timed group lasts at least this long


def load_candidate(dirpath: Path, spec, target):
    """The Kernel of a built candidate directory (cubin-backed for CUDA: nothing compiles)."""
    from ..export import load_module
    from ..family import Arg, Call
    from ..kernel import Kernel

    meta = json.loads((dirpath / META).read_text())
    cubins = None
    if target.is_cuda:
        import hashlib

        cubin = (dirpath / CUBIN).read_bytes()
        if hashlib.sha256(cubin).hexdigest() != meta["cubin_sha256"]:
            raise RuntimeError(f"{dirpath / CUBIN}: sha256 does not match meta.json")
        cubins = {meta["cuda_source_sha256"]: cubin}
    module = load_module(dirpath / LIB, cubins)
    args = tuple(Arg.from_json(a) for a in meta["args"])
    calls = tuple(Call.from_json(c) for c in meta["calls"])
    return Kernel(spec, target, module, args, calls)


def validate(kernel, rng: np.random.Generator, lengths=VALIDATION_LENGTHS) -> str:
    """'' if the kernel matches the reference at every length, else what went wrong."""
    from ..check import check_length

    for n in lengths:
        r = check_length(kernel, n, 1, rng)
        if not r.passed:
            worst = ", ".join(f"{o}: rel_rmse={e['rel_rmse']:.1e} max_rel={e['max_rel']:.1e}"
                              for o, e in r.errors.items())
            return f"wrong at length {n} ({worst})"
    return ""


def workload(kernel, sizes: dict, rng: np.random.Generator, copies: int) -> list:
    """``copies`` independent sets of every buffer of the program (inputs drawn by the family,
    outputs and scratch allocated), as torch tensors on the kernel's device."""
    import torch

    from ..kernel import _torch_dtype, allocate

    fam, spec = kernel.family, kernel.spec
    device = "cuda" if kernel.target.is_cuda else "cpu"
    sets = []
    for _ in range(copies):
        inputs = fam.sample(spec, sizes, rng)
        buffers = {a.name: torch.from_numpy(np.ascontiguousarray(inputs[a.name])).to(
            device=device, dtype=_torch_dtype(a.dtype)) for a in kernel.args if a.role == "in"}
        actual = fam.sizes(spec, buffers)
        for a in kernel.args:
            if a.role != "in":
                buffers[a.name] = allocate(a, actual, device)
        sets.append(buffers)
    return sets


def _bytes(buffers: dict, kernel) -> int:
    """Bytes of the inputs and outputs (what a memory-bound kernel must move at least)."""
    roles = {a.name: a.role for a in kernel.args}
    return sum(t.numel() * t.element_size() for n, t in buffers.items() if roles[n] != "scratch")


class Workloads:
    """Input sets per problem, drawn once and shared by every candidate that takes the same
    inputs: a problem is its sizes and the kernel's input signature (names, shapes, dtypes,
    and how the spec's runtime tensors are drawn), so specs that differ only in a mask or
    score mod computed from indices share one draw, and candidates whose scratch buffers
    differ (a tile map's size follows the tile) share the inputs and get their own scratch."""

    def __init__(self, rng: np.random.Generator):
        self.rng, self.inputs, self.sets = rng, {}, {}
        self.seconds = 0.0  # spent drawing (reported: it is most of a short tuning run)

    def get(self, kernel, sizes: dict) -> list:
        problem = (tuple(sorted(sizes.items())), _signature(kernel, roles=("in",)))
        key = (problem, _signature(kernel))
        if key in self.sets:
            return self.sets[key]
        if problem not in self.inputs:
            start = time.perf_counter()
            first = workload(kernel, sizes, self.rng, 1)[0]
            budget = 2 * CACHE_BYTES["cuda" if kernel.target.is_cuda else "cpu"]
            copies = int(min(MAX_COPIES, max(2, -(-budget // max(1, _bytes(first, kernel))))))
            inputs = {a.name: first[a.name] for a in kernel.args if a.role == "in"}
            self.inputs[problem] = [inputs] + [{n: t.clone() for n, t in inputs.items()}
                                               for _ in range(copies - 1)]
            self.seconds += time.perf_counter() - start
        self.sets[key] = [{**inputs, **_allocate(kernel, inputs)} for inputs in self.inputs[problem]]
        return self.sets[key]


def _allocate(kernel, inputs: dict) -> dict:
    """Fresh output and scratch buffers of ``kernel`` for these inputs."""
    from ..kernel import allocate

    actual = kernel.family.sizes(kernel.spec, inputs)
    device = next(iter(inputs.values())).device
    return {a.name: allocate(a, actual, device) for a in kernel.args if a.role != "in"}


def _signature(kernel, roles=("in", "out", "scratch")) -> tuple:
    """What decides the distribution of a kernel's buffers of these roles (see ``Workloads``)."""
    args = tuple((a.name, str(a.shape), a.dtype, a.role) for a in kernel.args if a.role in roles)
    tensors = repr(getattr(kernel.spec, "runtime_tensors", ()))
    return kernel.family.name, type(kernel.spec).__name__, args, tensors


def time_kernel(kernel, sets: list, *, repeats: int = 10, warmup_seconds: float = 0.05) -> dict:
    """Median milliseconds of one run of the kernel's calls (see the module docstring).

    The calls go straight to the module's functions with prepared argument lists: the input
    checks of ``Kernel.run`` cost more than a short kernel and would flatten every difference
    (they ran once, in validation)."""
    import contextlib

    import torch

    cuda = kernel.target.is_cuda
    funcs = {c.func: kernel.module[c.func] for c in kernel.calls}
    programs = [[(funcs[c.func], tuple(b[n] for n in c.args)) for c in kernel.calls]
                for b in sets]
    calls = [0]

    def run():
        for f, args in programs[calls[0] % len(programs)]:
            f(*args)
        calls[0] += 1

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    with contextlib.ExitStack() as stack:
        if cuda:
            import tvm_ffi

            stack.enter_context(tvm_ffi.use_torch_stream())
        # warm-up (first launches load code, fill TLBs) and a first estimate of one call;
        # synchronized per call: unsynchronized launches would queue up to the driver's
        # limit (~1000 calls) within the warm-up time, and a 4 ms kernel would then spend
        # seconds draining them
        run()
        sync()
        start, n = time.perf_counter(), 0
        while n < 3 or time.perf_counter() - start < warmup_seconds:
            run()
            sync()
            n += 1
        estimate = (time.perf_counter() - start) / n
        group = max(1, int(GROUP_SECONDS / max(estimate, 1e-7)))
        samples = []
        for _ in range(repeats):
            if cuda:
                begin = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                begin.record()
                for _ in range(group):
                    run()
                end.record()
                end.synchronize()
                samples.append(begin.elapsed_time(end) / group)
            else:
                t0 = time.perf_counter()
                for _ in range(group):
                    run()
                samples.append((time.perf_counter() - t0) * 1e3 / group)
    return {"ms": statistics.median(samples), "min_ms": min(samples), "group": group,
            "repeats": repeats, "copies": len(sets), "bytes": _bytes(sets[0], kernel)}


def measure(dirpath, *, repeats: int = 10, seed: int = 0, deadline: Optional[float] = None,
            on_result: Callable[[dict], None] = lambda r: None,
            workloads: Optional[Workloads] = None) -> dict:
    """Validate and time every built candidate of ``dirpath``; writes ``results.json``.
    ``workloads`` shares timing inputs across several directories (a fresh one by default)."""
    import attngen

    from ..targets import get
    from . import device_name, sizes_for
    from .database import bucket
    from .tuner import manifest_batches

    dirpath = Path(dirpath)
    manifest = json.loads((dirpath / "manifest.json").read_text())
    # the spec comes from our own manifest: evaluated with attngen's constructors only
    spec = eval(manifest["spec"], {"__builtins__": {}}, attngen.namespace())  # noqa: S307
    target = get(manifest["target"])
    rows = []
    workloads = workloads or Workloads(np.random.default_rng(seed + 1))
    for cand in manifest["candidates"]:
        row = {"id": cand["id"], "config": cand["config"], "timings": {}}
        started = time.perf_counter()
        if cand["status"] != "built":
            row.update(status=cand["status"], reason=cand.get("error", ""))
        elif deadline is not None and time.monotonic() > deadline:
            row.update(status="skipped", reason="tuning budget spent")
        else:
            try:
                rng = np.random.default_rng(seed)
                kernel = load_candidate(dirpath / cand["id"], spec, target)
                reason = validate(kernel, rng)
                if reason:
                    row.update(status="invalid", reason=reason)
                else:
                    for n, b in zip(manifest["lengths"], manifest_batches(manifest)):
                        sizes = sizes_for(spec, n, b)
                        t = time_kernel(kernel, workloads.get(kernel, sizes), repeats=repeats)
                        row["timings"][bucket(sizes)] = {"length": n, "batch": b, **t}
                    row["status"] = "ok"
            except Exception as err:  # a crash at load or launch is this candidate's result
                row.update(status="error", reason=f"{type(err).__name__}: {str(err)[:300]}")
        row["seconds"] = time.perf_counter() - started
        rows.append(row)
        on_result(row)
    results = {"format": "attngen-measurements", "version": 1, "device": device_name(target),
               "spec_key": manifest["spec_key"], "target": target.name, "rows": rows,
               "measured_at": time.time(), "draw_seconds": workloads.seconds}
    tmp = dirpath / ".results.json.tmp"
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(dirpath / "results.json")
    return results
