"""spec -> kernel: lower, compile, cache on disk, load.

The cache key covers everything that can change the binary: the spec's key, the target, the
schedule config, the text of ``templates/``, ``schedules/`` and attngen's modules, and the
versions of attngen and TVM.  An entry is a directory holding the exported module and ``meta.json`` (arguments and calls),
written to a temporary name and renamed into place, so a crash never leaves half an entry and
two processes building the same kernel both end with a complete one.  A cache hit imports no
TVM compiler code.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Mapping, Optional

from . import __version__
from .family import Arg, Call, Lowered, family_of
from .resources import resource_dir
from .targets import Target, get as get_target

ENV_CACHE = "ATTNGEN_CACHE_DIR"
_LIB = "kernel.so"
_META = "meta.json"
_CUBIN = "kernel.cubin"


def cache_dir() -> Path:
    """``$ATTNGEN_CACHE_DIR`` or ``$XDG_CACHE_HOME/attngen`` (``~/.cache/attngen``), mode 0700."""
    base = os.environ.get(ENV_CACHE) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "attngen")
    path = Path(base) / "kernels"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


@functools.lru_cache(maxsize=1)
def _sources_digest() -> str:
    """Hash of every template and schedule file and of attngen's own modules (which render the
    templates' context): editing any of them invalidates the cache."""
    h = hashlib.sha256()
    package = Path(__file__).resolve().parent
    roots = [resource_dir("templates"), resource_dir("schedules"), package]
    for root in roots:
        for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                           and (root != package or p.suffix == ".py")):
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def _tvm_version() -> str:
    """TVM's release, the same on the build host (the wheel says ``0.27.0.post1``) and on a GPU
    host with the runtime-only bundle (whose ``tvm.__version__`` says ``0.27.0``): a post
    release repackages the same code, so keys built here must match there."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        text = version("apache-tvm")
    except PackageNotFoundError:  # runtime-only bundle on a GPU host: its _version.py, unimported
        from .runtime import tvm_dir

        try:
            found = re.search(r"__version__ = version = '([^']+)'",
                              Path(tvm_dir(), "_version.py").read_text())
        except (ImportError, OSError):
            found = None
        text = found.group(1) if found else "unknown"
    return re.sub(r"\.post\d+$", "", text)


def _host_cpu_id() -> str:
    """The host CPU's model name, read without importing TVM (cache hits must stay cheap)."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_key(spec, target: Target, config: Optional[Mapping]) -> str:
    # a CPU kernel is built for this host's CPU model: a cache shared across machines must not
    # hand a znver4 binary to another CPU
    # (LLVM is told to generate for this host's CPU: ``targets.Target.to_tvm``)
    machine = target.arch if target.is_cuda else f"mcpu=host {_host_cpu_id()}"
    text = json.dumps({"spec": spec.key, "target": [target.name, machine],
                       "config": dict(sorted((config or {}).items())),
                       "sources": _sources_digest(), "attngen": __version__,
                       "tvm": _tvm_version()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def lower(spec, target="cpu", config: Optional[Mapping] = None) -> Lowered:
    target = get_target(target) if isinstance(target, str) else target
    return family_of(spec).lower(spec, target, dict(config or {}))


def compile_lowered(lowered: Lowered, target: Target):
    """tvm.compile with the lowering's pass config; checks that CUDA code was generated."""
    import tvm

    from .pipeline import ensure_registered

    ensure_registered()
    with tvm.transform.PassContext(opt_level=3, config=lowered.pass_config):
        ex = tvm.compile(lowered.mod, target=target.to_tvm(), tir_pipeline=lowered.pipeline)
    if target.is_cuda and not any(m.kind == "cuda" for m in ex.mod.imports):
        # an unbound schedule "compiles" with the loops on the host (tvm-0.27 pitfall 17)
        raise RuntimeError("CUDA build produced no device module: the schedule binds no threads")
    return ex


def cuda_source(spec, target="cuda-sm90a", config: Optional[Mapping] = None) -> str:
    target = get_target(target) if isinstance(target, str) else target
    if not target.is_cuda:
        raise ValueError(f"target {target.name} is not a CUDA target")
    ex = compile_lowered(lower(spec, target, config), target)
    return next(m for m in ex.mod.imports if m.kind == "cuda").inspect_source()


def build(spec, target="cpu", config: Optional[Mapping] = None, *, use_cache: bool = True):
    """Build (or load from the cache) the kernel of ``spec`` for ``target``."""
    from .kernel import Kernel

    target = get_target(target) if isinstance(target, str) else target
    config = dict(config or {})
    entry = cache_dir() / cache_key(spec, target, config)
    if use_cache and (entry / _META).is_file():
        args, calls, cubin = _read_meta(entry / _META)
        return Kernel(spec, target, _load_module(entry, target, cubin), args, calls)
    if os.environ.get("TVM_USE_RUNTIME_LIB") == "1":  # importing TVM's compiler would fail obscurely
        raise RuntimeError(f"no kernel {entry.name} (config {config}) in the build cache {cache_dir()}, "
                           "and this TVM is runtime-only (TVM_USE_RUNTIME_LIB=1): "
                           "build it first with attngen.builder.ensure_cached where TVM is installed")
    lowered = lower(spec, target, config)
    ex = compile_lowered(lowered, target)
    if use_cache:
        _write_entry(entry, ex, lowered, target)
    return Kernel(spec, target, ex, lowered.args, lowered.calls)


def ensure_cached(spec, target="cpu", config: Optional[Mapping] = None) -> Path:
    """Build ``spec`` into the cache unless it is there, without loading it: this is how a
    machine without a GPU prepares CUDA kernels for a GPU host that has only TVM's runtime."""
    target = get_target(target) if isinstance(target, str) else target
    config = dict(config or {})
    entry = cache_dir() / cache_key(spec, target, config)
    if not (entry / _META).is_file():
        lowered = lower(spec, target, config)
        _write_entry(entry, compile_lowered(lowered, target), lowered, target)
    return entry


def _load_module(entry: Path, target: Target, cubin: Optional[dict]):
    """Load a cached module; a CUDA one with the cubin compiled when it was cached, so a cache
    hit runs no nvcc (the exported library itself carries CUDA source)."""
    from .runtime import load_library

    if not target.is_cuda:
        return load_library(entry / _LIB)
    from .export import load_module

    if cubin is None:  # cached where nvcc was missing: the runtime compiles at load
        from .runtime import ensure_cuda_runtime

        ensure_cuda_runtime()
        return load_library(entry / _LIB)
    data = (entry / _CUBIN).read_bytes()
    if hashlib.sha256(data).hexdigest() != cubin["sha256"]:
        raise RuntimeError(f"cached cubin {entry / _CUBIN} does not match its hash; delete {entry}")
    return load_module(entry / _LIB, {cubin["source"]: data})


def _read_meta(path: Path):
    meta = json.loads(path.read_text())
    args = tuple(Arg.from_json(a) for a in meta["args"])
    calls = tuple(Call.from_json(c) for c in meta["calls"])
    return args, calls, meta.get("cubin")


def _write_entry(entry: Path, ex, lowered: Lowered, target: Target):
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=entry.parent))
    try:
        ex.export_library(str(tmp / _LIB))
        meta = {"args": [a.__dict__ for a in lowered.args],
                "calls": [c.to_json() for c in lowered.calls]}
        if target.is_cuda and shutil.which("nvcc"):
            from .export import compile_cubin, cuda_source_of

            source = cuda_source_of(ex)
            data = compile_cubin(source, target.arch)
            (tmp / _CUBIN).write_bytes(data)
            meta["cubin"] = {"source": hashlib.sha256(source.encode()).hexdigest(),
                             "sha256": hashlib.sha256(data).hexdigest()}
        (tmp / _META).write_text(json.dumps(meta, indent=1))
        try:
            os.rename(tmp, entry)  # atomic; fails if another process got there first
        except OSError:
            if not (entry / _META).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
