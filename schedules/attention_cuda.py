"""CUDA SIMT schedule of the softmax-attention kernels (no tensor cores: a later schedule).

attention: one CTA per (batch x kv head, row tile, split), one thread per packed query row
(``block_q`` threads).  The K/V tiles live in static shared memory, loaded cooperatively by all
threads with vector loads; every per-row block of the template (the S row, P row, running max,
sum and the accumulator row) binds its row loop to ``threadIdx.x``, so those buffers compact
to per-thread arrays.  ThreadSync places the two barriers around the shared tiles.  Batch and
KV head fuse into one grid axis (the divisor that splits them again is the constant head
count); the row tiles keep their own: fusing with their symbolic count would turn every index
into a division by a run-time value.

combine / quantize_*: one CTA per row (or per quantization block), one thread per channel;
the block reductions over channels are cross-thread reductions (``threadIdx.x`` bound to a
reduction loop), and single stores are made by thread 0.

Knobs:
    block_q   packed query rows per CTA = threads per CTA (power of two, 32..1024)
    block_k   keys per shared K/V tile (power of two, 4..256)
Validity: the tiles fit the static shared-memory limit (48 KiB), and each tile's elements
divide evenly among the threads (an uneven split puts a predicate around the shared-memory
stores, and ThreadSync cannot place a barrier inside a condition).
"""
from __future__ import annotations

from attngen import knobs

KNOBS = {
    "block_q": "packed query rows per CTA, one thread each (power of two, 32..1024)",
    "block_k": "keys per shared-memory K/V tile (power of two, 4..256)",
}

STATIC_SMEM_BYTES = 48 * 1024  # without an opt-in, a CTA's static shared memory stops here
_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "int8": 1}


def default(spec, target) -> dict:
    rows = spec.group_size * (spec.phase.q_len if spec.is_decode else 64)
    block_q = min(64, max(32, knobs.pow2_at_least(rows)))
    for block_k in (32, 16, 8, 4):
        cfg = {"block_q": block_q, "block_k": block_k}
        if not _problems(spec, target, cfg):
            return cfg
    return {"block_q": block_q, "block_k": 4}  # validate() explains why it does not fit


def validate(spec, target, config) -> None:
    knobs.check(config, KNOBS, "attention_cuda", lambda: _problems(spec, target, config))


def _problems(spec, target, config) -> list:
    out = []
    bq, bk = config["block_q"], config["block_k"]
    max_threads = min(1024, target.max_threads_per_block)
    for name, v, lo, hi in (("block_q", bq, 32, max_threads), ("block_k", bk, 4, 256)):
        problem = knobs.pow2_problem(name, v, lo, hi)
        if problem:
            out.append(problem)
    if out:
        return out
    smem = tile_smem_bytes(spec, bk)
    if smem > STATIC_SMEM_BYTES:
        out.append(f"K/V tiles need {smem} B of shared memory, over the static limit "
                   f"{STATIC_SMEM_BYTES} B: lower block_k")
    tiles = (("K", spec.head_dim),) + (() if spec.latent_kv else (("V", spec.head_dim_v),))
    for what, width in tiles:
        if (bk * width) % bq:
            out.append(f"a {what} tile of block_k * {width} = {bk * width} elements does not split "
                       f"evenly over block_q = {bq} threads")
    return out


def tile_smem_bytes(spec, block_k: int) -> int:
    """Shared memory of one K tile (INT8 codes when quantized) and one V tile (none for a
    latent KV: V is a view of the K tile)."""
    k_elem = 1 if spec.quant is not None else _BYTES[spec.dtype]
    v_bytes = 0 if spec.latent_kv else spec.head_dim_v * _BYTES[spec.dtype]
    return block_k * (spec.head_dim * k_elem + v_bytes)


def scopes(spec, target, config) -> dict:
    # kv_dtype: the V tile's element type, and the K tile's unless quantized (then INT8 codes)
    return {"q": "local", "kv": "shared", "work": "local", "kv_dtype": spec.dtype}


def schedule(mod, spec, target, config):
    import tvm

    sch = tvm.s_tir.Schedule(mod)
    for gv in mod.get_global_vars():
        sch.work_on(gv.name_hint)
        {"attention": _attention, "combine": _combine, "quantize_k": _quantize_k,
         "quantize_q": _quantize_q}[gv.name_hint](sch, spec, config)
    return sch.mod


# ----------------------------------------------------------------------------- attention

# blocks of attention.j2 with a leading row loop; inside the KV loop get_loops() starts with kt
_ROW_BLOCKS = ("q_load", "q_scale_load", "acc_init", "ml_init", "o_store", "lse_store")
_KV_LOOP_ROW_BLOCKS = ("s_gemm", "score", "row_max", "p", "row_sum", "o_gemm", "m_commit")


def _attention(sch, spec, config):
    bq = config["block_q"]
    grid = sch.get_loops(sch.get_sblock("tile"))
    b, hk, qt = grid[:3]
    # batch x kv heads on x (up to 2^31 - 1: large decode batches), row tiles on y (65535)
    sch.bind(sch.fuse(b, hk), "blockIdx.x")
    sch.bind(qt, "blockIdx.y")
    if len(grid) == 4:
        sch.bind(grid[3], "blockIdx.z")  # the KV split (<= 256)
    quant = spec.quant is not None
    for name in _ROW_BLOCKS + _KV_LOOP_ROW_BLOCKS:
        if name == "q_scale_load" and not quant:
            continue
        loops = sch.get_loops(sch.get_sblock(name))
        sch.bind(loops[1] if name in _KV_LOOP_ROW_BLOCKS else loops[0], "threadIdx.x")
    # the short loops over the keys of a tile go innermost and unrolled, so a thread's S/P
    # row is indexed by constants and can live in registers
    _, _, j, c = sch.get_loops(sch.get_sblock("s_gemm"))
    sch.reorder(c, j)
    for name in ("s_gemm", "o_gemm", "row_max", "row_sum"):
        sch.unroll(sch.get_loops(sch.get_sblock(name))[-1])
    # K/V tiles: all threads copy, `vec` consecutive channels each (latent KV has no V tile)
    for name in ("k_load",) if spec.latent_kv else ("k_load", "v_load"):
        j, c = sch.get_loops(sch.get_sblock(name))[-2:]
        width = sch.get(c).extent.value
        total = sch.get(j).extent.value * width
        vec = next(v for v in (4, 2, 1) if width % v == 0 and total % (bq * v) == 0)
        _, tx, lanes = sch.split(sch.fuse(j, c), [None, bq, vec])
        sch.bind(tx, "threadIdx.x")
        if vec > 1:
            sch.vectorize(lanes)


# ----------------------------------------------------------------------------- combine


def _combine(sch, spec, config):
    row = sch.get_sblock("row")
    sch.bind(sch.fuse(*sch.get_loops(row)), "blockIdx.x")
    # every thread reduces the few split statistics itself; channels go one per thread
    sch.bind(sch.get_loops(sch.get_sblock("o_sum"))[0], "threadIdx.x")
    sch.bind(sch.get_loops(sch.get_sblock("store"))[0], "threadIdx.x")


# ----------------------------------------------------------------------------- quantization


def _quantize_k(sch, spec, config):
    mean = sch.get_sblock("mean")
    sch.bind(sch.fuse(*sch.get_loops(mean)), "blockIdx.x")
    sch.bind(sch.get_loops(sch.get_sblock("k_sum"))[0], "threadIdx.x")
    sch.bind(sch.get_loops(sch.get_sblock("k_mean_store"))[0], "threadIdx.x")
    _quant_block(sch)


def _quantize_q(sch, spec, config):
    _quant_block(sch)
    shift = sch.get_sblock("shift")
    sch.bind(sch.fuse(*sch.get_loops(shift)), "blockIdx.x")
    sch.bind(sch.get_loops(sch.get_sblock("dot"))[0], "threadIdx.x")  # cross-thread sum
    _thread0(sch, "shift_store")


def _quant_block(sch):
    """One CTA per quantization block, one thread per channel: amax is a per-thread max over
    the block's tokens, then a cross-thread max over channels."""
    blk = sch.get_sblock("block")
    sch.bind(sch.fuse(*sch.get_loops(blk)), "blockIdx.x")
    amax = sch.get_sblock("amax")
    t, c = sch.get_loops(amax)
    sch.reorder(c, t)
    sch.bind(c, "threadIdx.x")
    _thread0(sch, "scale_store")
    sch.bind(sch.get_loops(sch.get_sblock("codes"))[-1], "threadIdx.x")


def _thread0(sch, name):
    """A loop-less store: give it a unit loop bound to threadIdx.x, so thread 0 alone makes it."""
    sch.bind(sch.add_unit_loop(sch.get_sblock(name)), "threadIdx.x")
