"""Export a spec's tuned kernels as one self-contained module; load it back with no compiler.

``export(spec, "attn.so")`` builds every config the tuning database chose for the spec (and
the heuristic default) into ONE TVM module -- each variant's functions renamed ``<f>__v<i>``
-- and writes three files side by side:

    attn.so         the exported TVM library (host code; for CUDA the device source too)
    attn.so.cubin   CUDA only: that device source compiled here with nvcc for the target arch
    attn.so.json    metadata: the spec, the variants (config, arguments, calls), which variant
                    serves which length bucket, the sha256 of both files and of the CUDA source,
                    and for a CPU export the CPU model it was generated for (loading it on
                    another model is refused)

``load("attn.so")`` returns the same torch-callable as ``attngen.compile``.  It imports only
TVM's runtime: the library is verified against the recorded hash and copied into the private
cache (0700, named by that hash) before it is loaded from there, so the file loaded is the
file checked; CUDA device code comes from the cubin, matched to the module's source by hash
through a load-time callback that refuses to compile anything.  Only the path the user gave
(and its two sidecars) is read; nothing in the metadata names a file.

Loading a module runs native code from it: load exports you trust, as with any ``.so``.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Mapping, Optional, Sequence

from .runtime import NVCC_FLAGS

FORMAT = "attngen-export"
VERSION = 1


# ----------------------------------------------------------------------------- CUDA binaries


def cuda_source_of(executable) -> str:
    """The CUDA C source of a built executable's device module."""
    return next(m for m in executable.mod.imports if m.kind == "cuda").inspect_source()


def compile_cubin(source: str, arch: str) -> bytes:
    """nvcc ``source`` to a cubin for ``arch`` (``sm_90a``); argument lists, no shell."""
    with tempfile.TemporaryDirectory(prefix="attngen-nvcc-") as d:
        src, out = os.path.join(d, "k.cu"), os.path.join(d, "k.cubin")
        with open(src, "w") as f:
            f.write(source)
        proc = subprocess.run(["nvcc", "-cubin", *NVCC_FLAGS, f"-arch={arch}", "-o", out, src],
                              capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"nvcc failed for {arch}: {proc.stderr.strip()[-2000:]}")
        with open(out, "rb") as f:
            return f.read()


def load_module(lib: Path, cubins: Optional[Mapping[str, bytes]] = None):
    """``tvm.runtime.load_module`` with the CUDA device code taken from ``cubins`` (sha256 of
    a CUDA source -> its cubin); while ``cubins`` are given, compiling at load is refused.
    Imports no part of the ``tvm`` package (``attngen.runtime.load_library``)."""
    from .runtime import load_library

    if cubins is None:
        return load_library(lib)
    import tvm_ffi

    from .runtime import ensure_cuda_runtime

    ensure_cuda_runtime()
    name = "tvm_callback_cuda_compile"
    previous = tvm_ffi.get_global_func(name, allow_missing=True)

    def from_cubin(code: str) -> bytearray:
        digest = _sha256(code.encode())
        if digest not in cubins:
            raise RuntimeError(f"no shipped cubin for CUDA source {digest[:12]}; attngen does "
                               "not compile CUDA when loading built kernels")
        return bytearray(cubins[digest])

    tvm_ffi.register_global_func(name, from_cubin, override=True)
    try:
        return load_library(lib)
    finally:
        if previous is not None:
            tvm_ffi.register_global_func(name, previous, override=True)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------- export


def export(spec, path, target="cuda", *, lengths: Optional[Sequence[int]] = None,
           device: Optional[str] = None, batch: int = 1) -> dict:
    """Write ``path``, ``path.cubin`` (CUDA) and ``path.json``; returns the metadata.

    The variants are the heuristic default plus the tuned config of each length bucket of
    ``lengths`` (all tuned buckets if None) for ``device`` (the local GPU or CPU, or the one
    device the database knows for this spec if there is no GPU here)."""
    import tvm

    from . import __version__
    from .builder import _host_cpu_id, _tvm_version, compile_lowered, lower
    from .family import Lowered
    from .targets import get
    from .tune import sizes_for, tuned
    from .tune.database import bucket, nearest
    from .tune.space import default_config

    target = get(target) if isinstance(target, str) else target
    path = Path(path)
    if path.suffix != ".so":
        raise ValueError(f"export path must end in .so, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    device, best = tuned(spec, target, device)
    if lengths is not None:  # the asked buckets, each served by its nearest tuned one
        asked = {bucket(sizes_for(spec, n, batch)) for n in lengths}
        best = {b: nearest(best, b) for b in asked if best}
    configs = [None]  # the default first: it serves every bucket nobody tuned
    table = {}
    default = default_config(spec, target)
    for b, record in sorted(best.items()):
        cfg = None if record["config"] == default else record["config"]
        if cfg not in configs:
            configs.append(cfg)
        table[b] = configs.index(cfg)
    funcs, variants, pass_config, pipeline = {}, [], None, None
    for i, cfg in enumerate(configs):
        lowered = lower(spec, target, cfg)
        if pass_config is None:
            pass_config, pipeline = lowered.pass_config, lowered.pipeline
        elif (lowered.pass_config, lowered.pipeline) != (pass_config, pipeline):
            raise ValueError("variants need different pass configs; export them separately")
        rename = {gv.name_hint: f"{gv.name_hint}__v{i}" for gv in lowered.mod.get_global_vars()}
        for gv, func in lowered.mod.functions.items():
            funcs[rename[gv.name_hint]] = func.with_attr("global_symbol", rename[gv.name_hint])
        variants.append({"config": cfg, "args": [a.__dict__ for a in lowered.args],
                         "calls": [c.to_json(rename[c.func]) for c in lowered.calls]})
    # one module, one compile, one cubin: the driver calls each variant's functions by name
    ex = compile_lowered(Lowered(tvm.IRModule(funcs), (), (), pass_config, pipeline), target)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    ex.export_library(str(tmp))
    files = {"so": _sha256(tmp.read_bytes())}
    meta = {"format": FORMAT, "version": VERSION, "spec": spec.canonical(), "spec_key": spec.key,
            "target": target.name, "arch": target.arch, "device": device, "tvm": _tvm_version(),
            "attngen": __version__, "variants": variants, "table": table, "files": files}
    if not target.is_cuda:
        # LLVM generated code for this host's CPU model (``-mcpu`` of the host, as the build
        # cache keys it): another model may lack its instructions
        meta["cpu"] = _host_cpu_id()
    if target.is_cuda:
        source = cuda_source_of(ex)
        cubin = compile_cubin(source, target.arch)
        meta["cuda_source_sha256"] = _sha256(source.encode())
        files["cubin"] = _sha256(cubin)
        _write(Path(f"{path}.cubin"), cubin)
    os.replace(tmp, path)
    _write(Path(f"{path}.json"), json.dumps(meta, indent=1).encode())
    return meta


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- load


class ExportError(ValueError):
    """An export that is incomplete, altered or built for something else."""


def _read_nofollow(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        return f.read()


def _read_verified(path: Path, digest: str) -> bytes:
    data = _read_nofollow(path)
    if _sha256(data) != digest:
        raise ExportError(f"{path}: sha256 does not match its metadata (altered or truncated)")
    return data


def _private_copy(data: bytes, digest: str) -> Path:
    """The verified library in the user's private cache, named by its hash."""
    from .builder import cache_dir

    root = cache_dir().parent / "exports"
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = root.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise ExportError(f"{root} must be owned by you and private (chmod 700 {root})")
    dest = root / f"{digest}.so"
    if dest.exists():
        try:
            _read_verified(dest, digest)
            return dest
        except (ExportError, OSError):
            dest.unlink()
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".so", dir=root)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, dest)
    return dest


def load(path):
    """The torch-callable of an export (see the module docstring); no TVM compiler import."""
    import attngen

    from .family import Arg, Call
    from .kernel import Kernel
    from .targets import get, local_cuda_arch
    from .torch_op import AttentionOp

    started = time.perf_counter()
    path = Path(path)
    try:
        meta = json.loads(_read_nofollow(Path(f"{path}.json")))
    except (OSError, ValueError) as err:
        raise ExportError(f"{path}.json: not an attngen export ({err})") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ExportError(f"{path}.json: not an attngen export of version {VERSION}")
    target = get(meta["target"])
    if target.is_cuda:
        local = local_cuda_arch()
        if local != meta["arch"]:
            raise ExportError(f"{path} holds {meta['arch']} code; this GPU is {local or 'absent'}")
    else:
        from .builder import _host_cpu_id

        if meta.get("cpu") != _host_cpu_id():
            raise ExportError(f"{path} holds code for the CPU {meta.get('cpu') or 'unknown'!r}; "
                              f"this CPU is {_host_cpu_id()!r}: export it again on this machine")
    # the spec is data from the user's own file: evaluated with attngen's constructors only
    spec = eval(meta["spec"], {"__builtins__": {}}, attngen.namespace())  # noqa: S307
    if spec.key != meta["spec_key"]:
        raise ExportError(f"{path}.json: the spec does not match its key")
    lib = _private_copy(_read_verified(path, meta["files"]["so"]), meta["files"]["so"])
    cubins = None
    if target.is_cuda:
        cubins = {meta["cuda_source_sha256"]:
                  _read_verified(Path(f"{path}.cubin"), meta["files"]["cubin"])}
    module = load_module(lib, cubins)
    kernels = []
    for v in meta["variants"]:
        args = tuple(Arg.from_json(a) for a in v["args"])
        calls = tuple(Call.from_json(c) for c in v["calls"])
        kernels.append(Kernel(spec, target, module, args, calls))
    op = AttentionOp(spec, target, kernels, dict(meta["table"]))
    op.load_seconds = time.perf_counter() - started
    return op

