"""CPU (LLVM) schedule of the linear-attention kernels: the tasks of a kernel (one per
(batch * head, value block), and query tile in the parallel form's ``outputs``) are spread over
the cores.  Inside a task, every block whose output is contiguous along one of its spatial
axes, and whose inputs are contiguous along it too or do not depend on it, gets that axis as
its innermost loop (after the reduction loops: an outer-product update, row by row) and
vectorized; the other blocks run as written.

Knobs (``KNOBS``): the template reads ``block_v``, ``block_q`` and ``block_k``; ``schedule``
reads ``lanes``.
"""
from __future__ import annotations

KNOBS = {
    "block_v": "value columns per task; divides head_dim_v (more tasks when batch*heads is small)",
    "block_q": "parallel form: query rows per output task (a power of two)",
    "block_k": "parallel form: keys per tile (a power of two)",
    "lanes": "float32 lanes per vector instruction (a power of two; 1 = no vectorization)",
}


def default(spec, target) -> dict:
    return {"block_v": spec.head_dim_v, "block_q": 64, "block_k": 64, "lanes": 8}


def validate(spec, target, config) -> None:
    unknown = set(config) - set(KNOBS)
    if unknown:
        raise ValueError(f"unknown linear_cpu knob(s) {sorted(unknown)}; known: {sorted(KNOBS)}")
    bv = config["block_v"]
    if not (isinstance(bv, int) and bv >= 1 and spec.head_dim_v % bv == 0):
        raise ValueError(f"block_v must be a positive divisor of head_dim_v ({spec.head_dim_v}), got {bv!r}")
    for name, top in (("block_q", 1024), ("block_k", 1024), ("lanes", 64)):
        x = config[name]
        if not (isinstance(x, int) and 1 <= x <= top and x & (x - 1) == 0):
            raise ValueError(f"{name} must be a power of two in [1, {top}], got {x!r}")


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
        task = sch.get_sblock(_TASK_BLOCK[spec.form])
        sch.parallel(sch.fuse(*sch.get_loops(task)))
        if config["lanes"] > 1:
            for block in sch.get_child_blocks(task):
                if sch.get(block).name_hint.endswith("_scope"):  # a reduction in its own scope
                    (block,) = sch.get_child_blocks(block)
                _vectorize(sch, block, config["lanes"])
    return sch.mod


_TASK_BLOCK = {"chunkwise": "chunk_scan", "recurrent": "scan", "parallel": "task"}


def _vectorize(sch, block, lanes) -> None:
    """Make the block's contiguous spatial axis its innermost loop and vectorize it."""
    from tvm.tirx import IterVar

    stmt = sch.get(block)
    loops = sch.get_loops(block)
    own = loops[len(loops) - len(stmt.iter_vars):]
    axis = _contiguous_axis(stmt)
    if axis is None:
        return
    kinds = {iv.var.name: iv.iter_type for iv in stmt.iter_vars}
    if kinds[axis] != IterVar.DataPar:
        return
    position = [iv.var.name for iv in stmt.iter_vars].index(axis)
    inner = own[position]
    extent = int(sch.get(inner).extent)
    if extent < 2:
        return
    reductions = [loop for loop, iv in zip(own, stmt.iter_vars) if iv.iter_type == IterVar.CommReduce]
    if reductions and not _starts_from_constant(stmt):
        return  # an accumulate block (its init reads the target): elementwise and cheap
    if own[-1] != inner:  # after the reduction loops: out[.., j:j+lanes] += a * b[.., j:j+lanes]
        sch.reorder(*[loop for loop in own if loop != inner], inner)
    _split_and_vectorize(sch, inner, lanes)
    if reductions:  # the init (a fill with 0) in its own loop nest, vectorized too
        init = sch.decompose_reduction(block, reductions[0])
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


def _starts_from_constant(block) -> bool:
    from tvm.tirx import BufferStore, FloatImm, IntImm

    init = block.init
    return isinstance(init, BufferStore) and isinstance(init.value, (FloatImm, IntImm))
