"""CUDA SIMT schedule of the linear-attention kernels that the tensor-core chunkwise kernel
(``schedules/linear_cuda_tc.py``, scalar decay or none, identity features, additive update)
does not serve: vector gates, the delta rule, normalisers, feature maps, the recurrent and
parallel forms; and any spec whose config names these knobs.

One thread block per task of a template: (batch * head, value block), and the query tile in
the parallel form's ``outputs``.  Inside a task, every block is spread over the threads: its
spatial loops are fused and split by ``threads`` (exactly: excess threads are predicated off),
its sums run serially in each thread with a register accumulator and one store.  The scans
that the templates write as loops around blocks (over chunks, tokens, the forward
substitution's rows, key tiles) stay serial; the parallel form's gate cumsum is one scan per
thread.  Per-task scratch lives in dynamic shared memory, which TVM merges by liveness;
``ThreadSync`` places the barriers.  ``schedule`` checks the merged size against the target.

Knobs (``KNOBS``): the templates read ``block_v``, ``block_q``, ``block_k``; ``schedule``
reads ``threads``.
"""
from __future__ import annotations

from attngen.linear import blocks

KNOBS = {
    "block_v": "value columns per thread block; divides head_dim_v",
    "block_q": "parallel form: query rows per thread block (a power of two)",
    "block_k": "parallel form: keys per tile (a power of two)",
    "threads": "threads per block (a multiple of the warp size, at most the target's limit)",
}

# grid axes of the task loops of each kernel; blockIdx axes stay unfused: fusing with a
# symbolic extent turns every index into a division by a runtime value (tvm-0.27.md 3.1)
_GRID = {
    "linear_recurrent": ("blockIdx.x", "blockIdx.y"),
    "linear_chunkwise": ("blockIdx.x", "blockIdx.y"),
    "linear_parallel_solve_delta": ("blockIdx.x", "blockIdx.y"),
    "linear_parallel_outputs": ("blockIdx.y", "blockIdx.x", "blockIdx.z"),
    "linear_parallel_final_state": ("blockIdx.x", "blockIdx.y"),
}
_SCANS_PER_BLOCK = 64  # linear_parallel_cumulate_gates: threads (= scans) per thread block


def default(spec, target) -> dict:
    return {"block_v": min(spec.head_dim_v, 32), "block_q": 32, "block_k": 32, "threads": 128}


def validate(spec, target, config) -> None:
    blocks.check_knobs("linear_cuda", spec, config, KNOBS, largest_tile=256)
    threads = config["threads"]
    if not (isinstance(threads, int) and threads % target.warp_size == 0
            and 0 < threads <= target.max_threads_per_block):
        raise ValueError(f"threads must be a multiple of {target.warp_size} in "
                         f"[{target.warp_size}, {target.max_threads_per_block}], got {threads!r}")


def template_params(spec, target, config) -> dict:
    return blocks.template_params(spec, config, "shared.dyn")


def schedule(mod, spec, target, config):
    import tvm

    sch = tvm.s_tir.Schedule(mod)
    for gv in mod.get_global_vars():
        sch.work_on(gv.name_hint)
        task = sch.get_sblock(blocks.TASK)
        if gv.name_hint == "linear_parallel_cumulate_gates":  # one sequential scan per thread
            _, thread = sch.split(sch.fuse(*sch.get_loops(task)), [None, _SCANS_PER_BLOCK])
            sch.bind(sch.get_loops(task)[0], "blockIdx.x")
            sch.bind(thread, "threadIdx.x")
            continue
        for loop, axis in zip(sch.get_loops(task), _GRID[gv.name_hint]):
            sch.bind(loop, axis)
        for block in blocks.inner_blocks(sch, task):
            _spread(sch, block, config["threads"])
    limit = target.max_shared_memory_per_block
    need = shared_memory_bytes(sch.mod, target)
    if limit and need > limit:
        raise ValueError(f"the {spec.form} kernel needs {need} bytes of shared memory with {config}, "
                         f"more than {target.name} has ({limit}); lower block_v (or the spec's chunk_size)")
    return sch.mod


def shared_memory_bytes(mod, target) -> int:
    """The largest dynamic shared memory allocation of the scheduled ``mod`` once TVM has merged
    the task's buffers, from the same TIR pipeline the build runs."""
    import re

    import tvm

    tvm_target = tvm.target.Target(target.to_tvm(), host={"kind": "llvm"})  # as tvm.compile binds it
    passes, _, _ = tvm.tirx.get_tir_pipeline("default")
    with tvm_target, tvm.transform.PassContext(opt_level=3):
        lowered = passes(tvm.tirx.transform.BindTarget(tvm_target)(mod))
    sizes = re.findall(r'alloc_buffer\(\((\d+),\), "uint8", scope="shared\.dyn"\)', lowered.script())
    return max(map(int, sizes), default=0)


def _spread(sch, block, threads) -> None:
    """Fuse the block's spatial loops and split them over threadIdx.x; a sum accumulates in a
    register and is stored once.  A block without spatial loops runs in every thread."""
    from tvm.tirx import IterVar

    stmt = sch.get(block)
    own = blocks.own_loops(sch, block)
    kinds = [iv.iter_type for iv in stmt.iter_vars]
    spatial = [loop for loop, kind in zip(own, kinds) if kind == IterVar.DataPar]
    sums = [loop for loop, kind in zip(own, kinds) if kind == IterVar.CommReduce]
    if not spatial:
        return
    assert own[:len(spatial)] == spatial, f"block {stmt.name_hint}: reduction loops must be innermost"
    fused = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
    # an accumulate block decays its target in its init: a register copy would lose that value
    in_registers = bool(sums) and blocks.starts_from_constant(stmt)
    if in_registers:  # before the split, so that its predicate covers the store too
        store = sch.cache_write(block, 0, "local")
        sch.reverse_compute_at(store, fused)
    # always exactly `threads` iterations: a shorter loop bound to threadIdx.x would run in
    # every thread of the block, unguarded
    _, thread = sch.split(fused, [None, threads])
    sch.bind(thread, "threadIdx.x")
    if in_registers:
        sch.decompose_reduction(block, sums[0])
