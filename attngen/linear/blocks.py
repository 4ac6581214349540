"""What the linear-attention schedules (``schedules/linear_*.py``) rely on in the templates:
the knobs that shape the templates' loops, and the blocks those loops hold.

Every kernel has one task block named ``task`` whose loops are the task grid.  Inside it, each
sum over a loop starts from 0 and sits alone in an opaque ``<name>_scope`` block, so that a
schedule may keep it in registers (``cache_write`` needs a stage-pipeline scope, which the scan
over chunks or tokens is not: tvm-0.27.md pitfall 8).  The accumulate blocks of
``linear_macros.j2`` reduce over a unit axis and read their target in the init.
"""
from __future__ import annotations

from .. import knobs

TASK = "task"


def check_knobs(schedule: str, spec, config, known, largest_tile: int) -> None:
    """The rules of the knobs every template reads (raises ValueError): no unknown knob,
    ``block_v`` divides head_dim_v, ``block_q`` and ``block_k`` are powers of two up to
    ``largest_tile``."""
    knobs.check_known(config, known, schedule)
    bv = config["block_v"]
    if not (isinstance(bv, int) and bv >= 1 and spec.head_dim_v % bv == 0):
        raise ValueError(f"block_v must be a positive divisor of head_dim_v ({spec.head_dim_v}), got {bv!r}")
    for name in ("block_q", "block_k"):
        knobs.require_pow2(name, config[name], 1, largest_tile)


def template_params(spec, config, scope: str) -> dict:
    """The templates' knobs from a schedule config, all scratch in ``scope``."""
    bv = config["block_v"]
    return {"BV": bv, "NV": spec.head_dim_v // bv, "BQ": config["block_q"], "BK": config["block_k"],
            "tile_scope": scope, "state_scope": scope}


def inner_blocks(sch, task):
    """The blocks inside the task, looking through the ``_scope`` wrappers."""
    for block in sch.get_child_blocks(task):
        if sch.get(block).name_hint.endswith("_scope"):
            (block,) = sch.get_child_blocks(block)
        yield block


def own_loops(sch, block) -> list:
    """The loops a block's iteration variables are bound to (the innermost ones: every
    template writes ``for a, b in T.grid(..): with T.sblock(..)``)."""
    loops = sch.get_loops(block)
    return list(loops[len(loops) - len(sch.get(block).iter_vars):])


def starts_from_constant(block) -> bool:
    """A sum whose init stores a constant (every pure sum), not an accumulate block."""
    from tvm.tirx import BufferStore, FloatImm, IntImm

    init = block.init
    return isinstance(init, BufferStore) and isinstance(init.value, (FloatImm, IntImm))
