"""CPU (LLVM) schedule of the softmax-attention kernels.

The "tile" block of ``templates/attention.j2`` (one row tile of one (batch, kv head)) is the
unit of parallelism: its grid loops are fused and run on the thread pool.  Inside a tile the
two products are ordered for unit-stride inner loops that LLVM vectorizes:

* S = Q Kᵀ: the K tile is stored transposed (``Ks[c, j]``) and the loop order is (r, c, j),
  so the innermost loop runs along keys;
* O += P V: loop order (r, j, c), the innermost along V's channels.

Both reductions are decomposed (their init, which carries the online-softmax rescale for O,
becomes its own loop) so the inner loops are plain multiply-adds.

Knobs:
    block_q   packed rows (query x head-in-group) per tile: more rows reuse each K/V tile more
    block_k   keys per K/V tile: the width of the vectorized score loop
    kv_tile   element type of the K/V tiles: "float32" (default: each element converted once,
              at the load; without F16C, LLVM converts a half with a library call) or "input"
              (the input dtype, as the CUDA schedule stores them: tests run that variant here)
"""
from __future__ import annotations

from attngen import knobs

KNOBS = {
    "block_q": "packed query rows per tile (power of two, 1..256)",
    "block_k": "keys per K/V tile (power of two, 4..256)",
    "kv_tile": 'element type of the K/V tiles: "float32" or "input"',
}


def default(spec, target) -> dict:
    rows = spec.group_size * (spec.phase.q_len if spec.is_decode else 64)
    return {"block_q": min(64, knobs.pow2_at_least(rows)), "block_k": 64 if spec.head_dim <= 256 else 32,
            "kv_tile": "float32"}


def validate(spec, target, config) -> None:
    knobs.check_known(config, KNOBS, "attention_cpu")
    for name, lo, hi in (("block_q", 1, 256), ("block_k", 4, 256)):
        knobs.require_pow2(f"attention_cpu.{name}", config[name], lo, hi)
    if config["kv_tile"] not in ("float32", "input"):
        raise ValueError(f'attention_cpu.kv_tile: must be "float32" or "input", got {config["kv_tile"]!r}')


def scopes(spec, target, config) -> dict:
    kv_dtype = spec.dtype if config["kv_tile"] == "input" else "float32"
    return {"q": "global", "kv": "global", "work": "global", "kv_dtype": kv_dtype}


def schedule(mod, spec, target, config):
    import tvm

    sch = tvm.s_tir.Schedule(mod)
    for gv in mod.get_global_vars():
        sch.work_on(gv.name_hint)
        if gv.name_hint == "attention":
            _attention(sch, spec, config)
        else:  # small row-parallel kernels: their top-level blocks on the thread pool
            for name in _PARALLEL_BLOCKS[gv.name_hint]:
                blk = sch.get_sblock(name)
                sch.parallel(sch.fuse(*sch.get_loops(blk)))
    return sch.mod


_PARALLEL_BLOCKS = {"combine": ("row",), "quantize_k": ("mean", "block"),
                    "quantize_q": ("block", "shift")}


def _attention(sch, spec, config):
    tile = sch.get_sblock("tile")
    sch.parallel(sch.fuse(*sch.get_loops(tile)))
    # S = Q K^T along keys: K tile transposed to [c, j], loops (r, c, j)
    sch.transform_layout(sch.get_sblock("k_load"), ("write", 0), lambda j, c: (c, j))
    s_gemm, reduction = _vectorize_spatial_inner(sch, "s_gemm")
    sch.decompose_reduction(s_gemm, reduction)
    # O = P V along channels: loops (r, j, c).  Its init (the online-softmax rescale of acc)
    # stays a branch on j == 0: acc also has the writer acc_init, so o_gemm is not the
    # "dominant" writer that decompose_reduction requires
    _vectorize_spatial_inner(sch, "o_gemm")


def _vectorize_spatial_inner(sch, name):
    """Move the block's last spatial loop below its reduction loop and vectorize it (before
    any decompose_reduction: an update block without its init is no longer a "reduction
    block", and vectorize refuses loops over it)."""
    blk = sch.get_sblock(name)
    _, _, spatial, reduction = sch.get_loops(blk)  # (kt, r, spatial, reduction) as written
    sch.reorder(reduction, spatial)
    extent = sch.get(spatial).extent.value
    lanes = next(n for n in (16, 8, 4, 2, 1) if extent % n == 0)
    # vectors of at most 16 floats: a 512-wide LLVM vector (MLA's head_dim_v) compiles slowly
    _, vec = sch.split(spatial, [None, lanes])
    sch.vectorize(vec)
    return blk, reduction
