"""Targets: static descriptions of what a kernel is built for, read from ``targets/*.toml``.

``cpu`` is LLVM on this host; ``cuda-sm80`` and ``cuda-sm90a`` name an architecture; ``cuda``
means the local GPU's architecture, or sm_90a where there is no GPU (the build machine).
Nothing here touches a device at import or construction: limits are data.
"""
from __future__ import annotations

import functools
import re
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


def local_sm_count() -> Optional[int]:
    """Streaming multiprocessors of GPU 0, or None without a GPU."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        return int(torch.cuda.get_device_properties(0).multi_processor_count)
    except Exception:  # no torch, or a broken driver: treat as no GPU
        return None


def get(name: str) -> Target:
    """``cpu``, ``cuda-sm80``, ``cuda-sm90a``, ``cuda`` (the local GPU: its arch, else sm_90a,
    and its count of SMs), or ``cuda-smXY[-Nsm]``: an arch and a count of SMs.  The count sizes
    persistent grids and split-KV; a target file's is one card's (132 for sm_90a, where an H100
    PCIe has 114 and an H20 78), and a target with another count is named for it, so that
    the build cache keys it apart and a manifest that names it reads back."""
    targets = available()
    if name in targets:
        return targets[name]
    if name == "cuda":
        return _cuda_target(local_cuda_arch() or "sm_90a", local_sm_count())
    m = re.fullmatch(r"cuda-sm(\d+a?)(?:-(\d+)sm)?", name)
    if not m or (m.group(2) is not None and int(m.group(2)) < 1):
        raise ValueError(f"unknown target {name!r}; known: {', '.join(['cuda', *targets])}, "
                         "or cuda-smXY[-Nsm] (an arch and its count of SMs)")
    return _cuda_target(f"sm_{m.group(1)}", m.group(2) and int(m.group(2)))


def _cuda_target(arch: str, sms: Optional[int]) -> Target:
    known = {t.arch: t for t in available().values() if t.is_cuda}
    if arch in known:
        base = known[arch]
    else:  # another arch: the nearest target file's limits
        base = known["sm_80"] if arch.startswith("sm_8") else known["sm_90a"]
        base = Target(**{**base.__dict__, "name": f"cuda-{arch.replace('_', '')}", "arch": arch})
    if sms and sms != base.sm_count:
        base = Target(**{**base.__dict__, "name": f"{base.name}-{sms}sm", "sm_count": sms})
    return base
