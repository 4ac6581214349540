"""Targets: static descriptions of what a kernel is built for, read from ``targets/*.toml``.

``cpu`` is LLVM on this host; ``cuda-sm80`` and ``cuda-sm90a`` name an architecture; ``cuda``
means the local GPU's architecture, or sm_90a where there is no GPU (the build machine).
Nothing here touches a device at import or construction: limits are data.
"""
from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass
from typing import Optional

from .resources import resource_dir


@dataclass(frozen=True)
class Target:
    name: str
    kind: str  # "llvm" | "cuda"
    description: str = ""
    arch: Optional[str] = None
    max_threads_per_block: int = 1024
    max_shared_memory_per_block: int = 0
    registers_per_block: int = 0
    warp_size: int = 32
    sm_count: int = 0

    @property
    def is_cuda(self) -> bool:
        return self.kind == "cuda"

    def to_tvm(self):
        import tvm  # the compiler is imported only when something is built

        if self.kind == "llvm":
            # the host CPU by name (AVX2/AVX-512 where it has them): generic x86-64 code runs
            # the softmax kernels ~3.5x slower.  The binary is then for this CPU model only
            # (builder.cache_key carries it).  Wider vectors make LLVM's aligned loads wider too:
            # Kernel.run passes only 64-byte-aligned tensors (attngen.kernel.ALIGNMENT)
            return tvm.target.Target({"kind": "llvm", "mcpu": host_cpu(), "num-cores": _cores()})
        return tvm.target.Target({"kind": "cuda", "arch": self.arch,
                                  "max_num_threads": self.max_threads_per_block,
                                  "thread_warp_size": self.warp_size})


@functools.lru_cache(maxsize=1)
def host_cpu() -> str:
    """LLVM's name for this machine's CPU (e.g. ``znver4``)."""
    from tvm.target import codegen

    return str(codegen.llvm_get_system_cpu())


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@functools.lru_cache(maxsize=None)
def available() -> dict:
    out = {}
    for path in sorted(resource_dir("targets").glob("*.toml")):
        with open(path, "rb") as f:
            data = tomllib.load(f)
        out[data["name"]] = Target(**data)
    return out


def local_cuda_arch() -> Optional[str]:
    """The arch of GPU 0 as ``sm_XY`` (``sm_90a`` for Hopper), or None without a GPU."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        major, minor = torch.cuda.get_device_capability(0)
    except Exception:  # no torch, or a broken driver: treat as no GPU
        return None
    return f"sm_{major}{minor}" + ("a" if major == 9 else "")


def get(name: str) -> Target:
    """``cpu``, ``cuda-sm80``, ``cuda-sm90a`` or ``cuda`` (the local arch, else sm_90a)."""
    targets = available()
    if name == "cuda":
        arch = local_cuda_arch() or "sm_90a"
        known = {t.arch: t for t in targets.values() if t.is_cuda}
        if arch in known:
            return known[arch]
        base = known["sm_80"] if arch.startswith("sm_8") else known["sm_90a"]
        return Target(**{**base.__dict__, "name": f"cuda-{arch.replace('_', '')}", "arch": arch})
    if name not in targets:
        raise ValueError(f"unknown target {name!r}; known: {', '.join(['cuda', *targets])}")
    return targets[name]
