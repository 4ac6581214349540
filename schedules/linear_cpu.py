"""CPU (LLVM) schedule of the linear-attention kernels: the tasks of a kernel (one per
(batch * head, value block), and query tile in the parallel form's ``outputs``) are spread over
the cores.  Inside a task, every block whose output is contiguous along one of its spatial
axes, and whose inputs are contiguous along it too or do not depend on it, gets that axis as
its innermost loop (after the reduction loops: an outer-product update, row by row) and
vectorized; the other blocks run as written.

Knobs (``KNOBS``): the templates read ``block_v``, ``block_q`` and ``block_k``; ``schedule``
reads ``lanes``.
"""
from __future__ import annotations

from attngen import knobs
from attngen.linear import blocks

KNOBS = {
    "block_v": "value columns per task; divides head_dim_v (more tasks when batch*heads is small)",
    "block_q": "parallel form: query rows per output task (a power of two)",
    "block_k": "parallel form: keys per tile (a power of two)",
    "lanes": "float32 lanes per vector instruction (a power of two; 1 = no vectorization)",
}


def default(spec, target) -> dict:
    return {"block_v": spec.head_dim_v, "block_q": 64, "block_k": 64, "lanes": 8}


def validate(spec, target, config) -> None:
    blocks.check_knobs("linear_cpu", spec, config, KNOBS, largest_tile=1024)
    knobs.require_pow2("lanes", config["lanes"], 1, 64)


def template_params(spec, target, config) -> dict:
    return blocks.template_params(spec, config, "global")


def schedule(mod, spec, target, config):
    import tvm

    sch = tvm.s_tir.Schedule(mod)
    for gv in mod.get_global_vars():
        sch.work_on(gv.name_hint)
        task = sch.get_sblock(blocks.TASK)
        sch.parallel(sch.fuse(*sch.get_loops(task)))
        if config["lanes"] > 1:
            for block in blocks.inner_blocks(sch, task):
                _vectorize(sch, block, config["lanes"])
    return sch.mod


def _vectorize(sch, block, lanes) -> None:
    """Make the block's contiguous spatial axis its innermost loop and vectorize it."""
    from tvm.tirx import IterVar

    stmt = sch.get(block)
    axis = _contiguous_axis(stmt)
    names = [iv.var.name for iv in stmt.iter_vars]
    if axis not in names:  # none, or a let-bound index (a scan step)
        return
    own = blocks.own_loops(sch, block)
    inner = own[names.index(axis)]
    if int(sch.get(inner).extent) < 2:
        return
    sums = [loop for loop, iv in zip(own, stmt.iter_vars) if iv.iter_type == IterVar.CommReduce]
    if sums and not blocks.starts_from_constant(stmt):
        return  # an accumulate block (its init decays the target): elementwise and cheap
    if own[-1] != inner:  # after the reduction loops: out[.., j:j+lanes] += a * b[.., j:j+lanes]
        sch.reorder(*[loop for loop in own if loop != inner], inner)
    _split_and_vectorize(sch, inner, lanes)
    if sums:  # the init (a fill with 0) in its own loop nest, vectorized too
        init = sch.decompose_reduction(block, sums[0])
        _split_and_vectorize(sch, sch.get_loops(init)[-1], lanes)


def _split_and_vectorize(sch, loop, lanes) -> None:
    extent = int(sch.get(loop).extent)
    if extent <= lanes:
        sch.vectorize(loop)
    elif extent % lanes == 0:
        sch.vectorize(sch.split(loop, [None, lanes])[1])


def _contiguous_axis(block):
    """The block var that indexes the last dimension of the block's output, provided every
    region the block reads is either indexed by it in its last dimension alone or not at all."""
    from tvm.tirx import Var
    from tvm.tirx.analysis import undefined_vars

    if len(block.writes) != 1:
        return None
    last = block.writes[0].region[-1].min
    if not isinstance(last, Var):
        return None
    uses = lambda expr: any(v.same_as(last) for v in undefined_vars(expr))  # noqa: E731
    for read in block.reads:
        *outer, inner = read.region
        if any(uses(r.min) or uses(r.extent) for r in outer):
            return None
        if uses(inner.min) and not (inner.min.same_as(last) and int(inner.extent) == 1):
            return None
    return last.name
