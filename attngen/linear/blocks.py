"""What the linear-attention schedules (``schedules/linear_*.py``) rely on in the templates.

Every kernel has one task block named ``task`` whose loops are the task grid.  Inside it, each
sum over a loop starts from 0 and sits alone in an opaque ``<name>_scope`` block, so that a
schedule may keep it in registers (``cache_write`` needs a stage-pipeline scope, which the scan
over chunks or tokens is not: tvm-0.27.md pitfall 8).  The accumulate blocks of
``linear_macros.j2`` reduce over a unit axis and read their target in the init.
"""
from __future__ import annotations

TASK = "task"


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
