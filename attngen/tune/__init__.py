"""Autotuning: the search space of a schedule, parallel builds, validated timing, a database.

    space      candidate configs from each schedule's KNOBS / default / validate
    runner     builds candidates in worker processes (failures and timeouts are results)
    measure    validates each candidate against the reference, then times it (runtime only)
    tuner      ``attngen tune``: build, measure, record, report (also split across two hosts)
    database   the JSON tuning database (user + shipped), atomic and lock-serialized

This module answers the question every build asks: which config for this spec, target,
device and shape?  The tuned one of the shape's length bucket (or of the nearest tuned
bucket), else None -- the schedule's heuristic default.
"""
from __future__ import annotations

import functools
from typing import Optional


def sizes_for(spec, length: int, batch: int = 1) -> dict:
    """The problem sizes of a sequence length: prefill has q_len = kv_len = length; decoding
    has its compile-time q_len and a cache of ``length`` keys."""
    q_len = spec.phase.q_len if getattr(spec, "is_decode", False) else length
    return {"batch": batch, "heads": spec.num_heads, "q_len": q_len, "kv_len": length}


def device_name(target) -> str:
    """What a measurement ran on: the GPU's name, or the host CPU's model for the CPU target."""
    if target.is_cuda:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""
    from ..builder import _host_cpu_id

    return _host_cpu_id()


@functools.lru_cache(maxsize=1)
def _tvm() -> str:
    from ..builder import _tvm_version

    return _tvm_version()


# a tuned config must beat the default's median by more than this to serve its bucket: closer
# than that is timing noise, and a second config costs a second build and load
NOISE = 0.01


def tuned(spec, target, device: Optional[str] = None):
    """(device, {bucket: best valid record}) for ``spec`` on ``target``.

    ``device`` defaults to the local one; on a host without the target's device (building
    CUDA kernels on a CPU machine) it is the one device the databases know for this spec.
    A best record within ``NOISE`` of the default's time (measured in the same run) is
    replaced by the default config: the bucket stays tuned, to the default.  A record measured
    against another kernel than today's default picks (the prefill default moved from mma.sync
    to wgmma on sm_90a, then to TMA loads) is not a candidate: it never raced the kernel it
    would displace."""
    from . import database
    from .space import default_config, is_valid

    records = database.all_records()
    if device is None:
        device = device_name(target)
    if not device:
        known = {r["device"] for r in records if r["spec"] == spec.key and r["target"] == target.name}
        device = known.pop() if len(known) == 1 else ""
    default = default_config(spec, target)
    records = [r for r in records if _kernel(r.get("default_config") or {}) == _kernel(default)]
    best = database.best_per_bucket(records, spec=spec.key, target=target.name, device=device,
                                    tvm=_tvm(), accept=lambda c: is_valid(spec, target, c))
    for b, r in best.items():
        if r.get("default_ms") and r["ms"] * (1 + NOISE) > r["default_ms"]:
            best[b] = {**r, "config": default, "ms": r["default_ms"]}
    return device, best


def _kernel(config: dict) -> tuple:
    """The kernel a config picks: its ``mma`` and whether it loads by ``tma`` (a record without
    the run's default config predates the field: it raced mma.sync; schedules without the knobs
    count as mma.sync without TMA)."""
    return config.get("mma", "mma_sync"), bool(config.get("tma", False))


def best_config(spec, target, sizes, device: Optional[str] = None) -> Optional[dict]:
    """The tuned config for ``sizes`` (its bucket, else the nearest tuned bucket), else None."""
    from .database import bucket, nearest

    record = nearest(tuned(spec, target, device)[1], bucket(sizes))
    return None if record is None else dict(record["config"])
