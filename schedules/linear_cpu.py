"""CPU (LLVM) schedule of the linear-attention kernels: one task per (batch * head, value
block), tasks spread over the cores; inside a task the loops run as written, with the innermost
value-column loops vectorized.

Knobs (``KNOBS``): the template reads ``block_v``; ``schedule`` reads the others.
"""
from __future__ import annotations

KNOBS = {
    "block_v": "value columns per task; divides head_dim_v (more tasks when batch*heads is small)",
    "block_q": "parallel form: query rows per output task (a power of two)",
    "block_k": "parallel form: keys per tile (a power of two)",
}


def default(spec, target) -> dict:
    return {"block_v": spec.head_dim_v, "block_q": 64, "block_k": 64}


def validate(spec, target, config) -> None:
    unknown = set(config) - set(KNOBS)
    if unknown:
        raise ValueError(f"unknown linear_cpu knob(s) {sorted(unknown)}; known: {sorted(KNOBS)}")
    bv = config["block_v"]
    if not (isinstance(bv, int) and bv >= 1 and spec.head_dim_v % bv == 0):
        raise ValueError(f"block_v must be a positive divisor of head_dim_v ({spec.head_dim_v}), got {bv!r}")
    for name in ("block_q", "block_k"):
        x = config[name]
        if not (isinstance(x, int) and 1 <= x <= 1024 and x & (x - 1) == 0):
            raise ValueError(f"{name} must be a power of two in [1, 1024], got {x!r}")


def template_params(spec, target, config) -> dict:
    bv = config["block_v"]
    return {"BV": bv, "NV": spec.head_dim_v // bv, "BQ": config["block_q"], "BK": config["block_k"],
            "tile_scope": "global", "state_scope": "global"}


def pass_config(spec, target, config) -> dict:
    return {}


def schedule(mod, spec, target, config):
    import tvm

    sch = tvm.s_tir.Schedule(mod)
    for gv in mod.get_global_vars():
        sch.work_on(gv.name_hint)
        outer = sch.get_sblock(_TASK_BLOCK[spec.form])
        sch.parallel(sch.fuse(*sch.get_loops(outer)))
    return sch.mod


_TASK_BLOCK = {"chunkwise": "chunk_scan", "recurrent": "scan", "parallel": "task"}
