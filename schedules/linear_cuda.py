"""CUDA SIMT schedule of the linear-attention kernels (no tensor cores yet).

One thread block per task of the template ((batch * head, value block), plus the query tile in
the parallel form's ``outputs``).  Every TensorIR block inside a task is spread over the
block's threads: its spatial loops are fused and split by ``threads``, its reduction loops run
serially in each thread.  The per-task scratch and the carried state live in dynamic shared
memory; ``ThreadSync`` inserts the barriers between blocks.  Blocks whose spatial axes carry a
dependency keep those axes serial (the forward substitution's rows); the parallel form's gate
cumsum is one sequential scan per thread.

Knobs (``KNOBS``): the template reads ``block_v``, ``block_q`` and ``block_k``; ``schedule``
reads ``threads``.
"""
from __future__ import annotations

KNOBS = {
    "block_v": "value columns per thread block; divides head_dim_v",
    "block_q": "parallel form: query rows per thread block (a power of two)",
    "block_k": "parallel form: keys per tile (a power of two)",
    "threads": "threads per block (a multiple of 32, at most the target's limit)",
}

def default(spec, target) -> dict:
    return {"block_v": min(spec.head_dim_v, 32), "block_q": 32, "block_k": 32, "threads": 128}


def validate(spec, target, config) -> None:
    unknown = set(config) - set(KNOBS)
    if unknown:
        raise ValueError(f"unknown linear_cuda knob(s) {sorted(unknown)}; known: {sorted(KNOBS)}")
    bv = config["block_v"]
    if not (isinstance(bv, int) and bv >= 1 and spec.head_dim_v % bv == 0):
        raise ValueError(f"block_v must be a positive divisor of head_dim_v ({spec.head_dim_v}), got {bv!r}")
    for name in ("block_q", "block_k"):
        x = config[name]
        if not (isinstance(x, int) and 1 <= x <= 256 and x & (x - 1) == 0):
            raise ValueError(f"{name} must be a power of two in [1, 256], got {x!r}")
    threads = config["threads"]
    if not (isinstance(threads, int) and threads % target.warp_size == 0
            and 0 < threads <= target.max_threads_per_block):
        raise ValueError(f"threads must be a multiple of {target.warp_size} in "
                         f"[{target.warp_size}, {target.max_threads_per_block}], got {threads!r}")


def template_params(spec, target, config) -> dict:
    bv = config["block_v"]
    return {"BV": bv, "NV": spec.head_dim_v // bv, "BQ": config["block_q"], "BK": config["block_k"],
            "tile_scope": "shared.dyn", "state_scope": "shared.dyn"}


def pass_config(spec, target, config) -> dict:
    return {}


# the task block of each kernel and the grid axis of each of its loops
_TASKS = {"chunk_scan": ("blockIdx.x", "blockIdx.y"), "scan": ("blockIdx.x", "blockIdx.y")}
_PARALLEL_TASKS = {
    "linear_parallel_cumulate_gates": None,  # one thread per (batch * head, channel): see below
    "linear_parallel_solve_delta": ("blockIdx.x", "blockIdx.y"),
    "linear_parallel_outputs": ("blockIdx.y", "blockIdx.x", "blockIdx.z"),
    "linear_parallel_final_state": ("blockIdx.x", "blockIdx.y"),
}


def schedule(mod, spec, target, config):
    import tvm

    sch = tvm.s_tir.Schedule(mod)
    threads = config["threads"]
    for gv in mod.get_global_vars():
        name = gv.name_hint
        sch.work_on(name)
        if spec.form != "parallel":
            task = sch.get_sblock("chunk_scan" if spec.form == "chunkwise" else "scan")
            axes = _TASKS[sch.get(task).name_hint]
        else:
            task = sch.get_sblock("task")
            axes = _PARALLEL_TASKS[name]
        if axes is None:  # a sequential scan per (batch * head, channel): one thread each
            fused = sch.fuse(*sch.get_loops(task))
            bx, tx = sch.split(fused, [None, min(threads, 64)])
            sch.bind(bx, "blockIdx.x")
            sch.bind(tx, "threadIdx.x")
            continue
        # keep blockIdx axes unfused: fusing with a symbolic extent turns every index into a
        # division by a runtime value (tvm-0.27.md 3.1)
        for loop, axis in zip(sch.get_loops(task), axes):
            sch.bind(loop, axis)
        for block in sch.get_child_blocks(task):
            if sch.get(block).name_hint.endswith("_scope"):  # a reduction in its own scope
                (block,) = sch.get_child_blocks(block)
            _spread(sch, block, threads)
    limit = target.max_shared_memory_per_block
    need = shared_memory_bytes(sch.mod, target)
    if limit and need > limit:
        raise ValueError(f"the {spec.form} kernel needs {need} bytes of shared memory with {config}, "
                         f"more than {target.name} has ({limit}); lower block_v (or the spec's chunk_size)")
    return sch.mod


def shared_memory_bytes(mod, target) -> int:
    """The largest dynamic shared memory allocation of the scheduled ``mod``, after TVM has merged
    the per-task buffers (liveness-based reuse; run through the same TIR pipeline as the build)."""
    import re

    import tvm

    tvm_target = tvm.target.Target(target.to_tvm(), host={"kind": "llvm"})  # as tvm.compile binds it
    passes, _, _ = tvm.tirx.get_tir_pipeline("default")
    with tvm_target, tvm.transform.PassContext(opt_level=3, config=pass_config(None, target, None)):
        lowered = passes(tvm.tirx.transform.BindTarget(tvm_target)(mod))
    sizes = re.findall(r'alloc_buffer\(\((\d+),\), "uint8", scope="shared\.dyn"\)', lowered.script())
    return max(map(int, sizes), default=0)


def _spread(sch, block, threads) -> None:
    """Fuse the block's spatial loops and split them over threadIdx.x.  A reduction runs
    serially in each thread, accumulating in a register (its init, 0 in every template, moves
    out of the loop) and storing once.  A block without spatial loops runs in every thread."""
    from tvm.tirx import IterVar

    stmt = sch.get(block)
    own = sch.get_loops(block)[len(sch.get_loops(block)) - len(stmt.iter_vars):]
    kinds = [iv.iter_type for iv in stmt.iter_vars]
    spatial = [loop for loop, kind in zip(own, kinds) if kind == IterVar.DataPar]
    reduction = [loop for loop, kind in zip(own, kinds) if kind == IterVar.CommReduce]
    if not spatial:
        return
    assert own[:len(spatial)] == spatial, f"block {stmt.name_hint}: reduction loops must be innermost"
    fused = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
    # a sum from 0 accumulates in a register; the accumulate blocks (linear_macros.j2), whose
    # init decays the target in place, stay as they are: a register copy would lose that value
    in_registers = bool(reduction) and _starts_from_constant(stmt)
    if in_registers:  # before the split, so that its predicate covers the store too
        store = sch.cache_write(block, 0, "local")
        sch.reverse_compute_at(store, fused)
    # always exactly `threads` iterations: a shorter loop bound to threadIdx.x would run in
    # every thread of the block unguarded; the split predicates the excess threads off
    _, thread_loop = sch.split(fused, [None, threads])
    sch.bind(thread_loop, "threadIdx.x")
    if in_registers:
        sch.decompose_reduction(block, reduction[0])


def _starts_from_constant(block) -> bool:
    from tvm.tirx import BufferStore, FloatImm, IntImm

    init = block.init
    return isinstance(init, BufferStore) and isinstance(init.value, (FloatImm, IntImm))
