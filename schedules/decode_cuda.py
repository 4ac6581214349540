"""CUDA schedule of the memory-bound decode kernels (``templates/decode.j2``,
``templates/decode_combine.j2``; lowered by ``attngen/softmax/decode.py``).

Decoding reads every K/V byte once and does little arithmetic per byte, so the kernel's time
is the cache's size over the HBM bandwidth if enough loads are in flight.  The template
already carries the whole SPMD structure (explicit thread bindings, warp shuffles, 16-byte
vector loads): this module only picks its knobs and checks them.  How the threads map:

* a CTA serves one (batch, kv head, row tile) and one KV split; its ``warps`` warps and their
  lanes cut each K/V row into 16-byte vectors (``vec`` elements; ``lanes = head_dim / vec``
  lanes per row), so one warp-wide load reads ``32 / lanes`` whole rows and a CTA-wide one
  ``groups = warps * 32 / lanes`` consecutive rows; every lane-group keeps its own online
  softmax state for all packed rows of the tile (GQA packing: a K/V row is read once for the
  ``group`` query heads and ``q_len`` queries that share it);
* each thread loads ``keys_per_thread`` K and V vectors before using any of them: those are
  the loads in flight that hide the memory latency;
* the number of KV splits is chosen at run time from the batch:
  ``clamp(ceil(sm_count * ctas_per_sm / (batch * kv_heads * row_tiles)), 1, max_split)``,
  and every sequence divides its own keys among them (short ones leave trailing splits empty).

Knobs:
    warps            warps per CTA (1..8)
    keys_per_thread  K/V rows each thread loads per step (1..8): memory-level parallelism
    rows             packed query rows per CTA (1..16); more rows mean more row tiles, each
                     re-reading its K/V (from L2 when neighbours in the grid run together)
    stages           K/V register buffers: 1, or 2 (step t + 1's loads issued before step t
                     is used: loads stay in flight through the arithmetic, at twice the
                     registers for K/V)
    butterfly        1: after the per-lane partial dots, the rows' sums meet in a transposing
                     butterfly (each xor step halves the rows a lane keeps: log2(lanes)
                     + rows - 1 shuffles instead of rows * log2(lanes)), so the max, exp2 and
                     mask run once per row instead of once per lane of the row; P and the
                     rescale return by one shuffle per row and key.  Ignored where the row
                     count is not a power of two in [2, lanes].
    ring_stages      0: K/V loads go straight into registers (``stages`` buffers); 2..6: they
                     go by cp.async into a shared-memory ring of that many steps, ring_stages - 1
                     in flight through the arithmetic at no register cost (each thread reads back
                     only its own copies, so no barrier); ignored (registers) where stages = 2
    l2_prefetch      0, 64, 128 or 256: the ring's cp.async copies carry an L2 prefetch of that
                     many bytes (ignored without the ring)
    max_split        most KV splits (1..256), the size of the partial-result scratch
    ctas_per_sm      CTAs per SM the split heuristic aims at (1..64)
    pdl              True (sm_90, the default there): the combine is launched with programmatic
                     dependent launch and waits on griddepcontrol.wait; this kernel signals it
                     after its main loop, so the combine's launch overlaps this kernel's end
Validity: the cross-group merge fits the static shared-memory limit (48 KiB), and with the
ring both fit the arch's shared memory per CTA.
"""
from __future__ import annotations

from attngen import knobs

KNOBS = {
    "warps": "warps per CTA (1..8)",
    "keys_per_thread": "K/V rows each thread loads before using them (1..8)",
    "rows": "packed query rows (query heads x queries of one KV head) per CTA (1..16)",
    "stages": "K/V register buffers: 1, or 2 to load step t + 1 while step t is used",
    "butterfly": "1: reduce the rows' dot products by a transposing butterfly (rows a power of two)",
    "ring_stages": "0: loads into registers; 2..6: cp.async ring in shared memory, that many steps",
    "l2_prefetch": "bytes of the ring's cp.async L2 prefetch qualifier (0, 64, 128, 256)",
    "max_split": "most KV splits; the split count is chosen at run time (1..256)",
    "ctas_per_sm": "CTAs per SM the run-time split count aims at (1..64)",
    "pdl": "launch the combine with programmatic dependent launch (bool, sm_90)",
}

# values the tuner tries where powers of two around the default do not apply (a default of 0)
CANDIDATES = {"ring_stages": (0, 2, 3, 4), "l2_prefetch": (0, 128, 256)}
STATIC_SMEM_BYTES = 48 * 1024
SMEM_LIMIT = {"sm_80": 163 * 1024, "sm_86": 99 * 1024, "sm_89": 99 * 1024, "sm_90": 227 * 1024,
              "sm_90a": 227 * 1024}
VECTOR_BYTES = 16  # one 128-bit load per lane
_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}


def vector_lanes(spec) -> tuple:
    """``(vec, lanes)``: elements per 16-byte vector, lanes per K/V row."""
    vec = VECTOR_BYTES // _BYTES[spec.dtype]
    return vec, spec.head_dim // vec


def fits(spec) -> bool:
    """Whether a K/V row splits into 16-byte vectors over a power-of-two share of a warp."""
    if spec.dtype not in _BYTES or spec.head_dim != spec.head_dim_v:
        return False
    vec, lanes = vector_lanes(spec)
    return spec.head_dim % vec == 0 and 1 <= lanes <= 32 and lanes & (lanes - 1) == 0


def packed_rows(spec) -> int:
    return spec.group_size * spec.phase.q_len


def default(spec, target) -> dict:
    rows_total = packed_rows(spec)
    tiles = -(-rows_total // 8)
    rows = -(-rows_total // tiles)  # balanced tiles of at most 8 rows
    # registers: q and the accumulator take 2 * rows * vec floats; fewer rows leave room for
    # more loads in flight.  Measured on an H100 (benchmarks/NOTES-decode.md): 8 warps beat 4
    # by 2-10% on the three shapes (fewer warps where the merge would overflow shared
    # memory); a register double buffer (stages=2) costs occupancy and loses up to 30% at
    # GQA 4; 4 keys per thread beat 2 and 8.  On an H200 the GQA-4 shapes were issue-bound
    # (3.1-3.2 TB/s on both cards); the transposing butterfly took them to 3.7-3.8 TB/s.
    # v5 (session 3, same process as cuDNN on an H100 and an H200): K/V by cp.async through a
    # shared-memory ring of 4 steps of 2 keys per thread (three steps, 48 KB per CTA, in flight
    # through the arithmetic at no register cost): 0.94-1.04 of read bandwidth on the three
    # shapes, paged 16 within 3%; the register path measured 0.61-1.05 in the same runs, and
    # a 2 x 4-key ring put paged 16 11% under contiguous on the H200.  Where the ring cannot
    # launch or fit (4-warp CTAs of many rows, arches without cp.async) the register path.
    # Session 7 (H200, same process): the combine launched with PDL on sm_90, 0.2602-0.2610 ms
    # against 0.2623-0.2641 (B32 L8192), 0.2701 against 0.2754 (B8 L32768), 0.9535 against
    # 0.9565 (B64 MHA L4096); paged 16 the same or better in three of four runs, and 8.6% slower
    # once (B32: 0.2917 against 0.2687 ms; 0.2660 against 0.2666 when re-run on that machine)
    cfg = {"warps": 8, "keys_per_thread": 4 if rows <= 4 else 2, "rows": rows, "stages": 1,
           "butterfly": 1, "ring_stages": 0, "l2_prefetch": 0, "max_split": 32, "ctas_per_sm": 8,
           "pdl": target.arch.startswith("sm_90")}
    while cfg["warps"] > 1 and merge_smem_bytes(spec, cfg) > STATIC_SMEM_BYTES:
        cfg["warps"] //= 2  # many rows: fewer groups to merge
    ring = {**cfg, "ring_stages": 4, "keys_per_thread": 2}
    try:
        validate(spec, target, ring)
        return ring
    except ValueError:
        return cfg


def validate(spec, target, config) -> None:
    knobs.check_known(config, KNOBS, "decode_cuda")
    out = []
    for name, lo, hi in (("warps", 1, 8), ("keys_per_thread", 1, 8), ("rows", 1, 16), ("stages", 1, 2),
                         ("butterfly", 0, 1), ("ring_stages", 0, 6),
                         ("max_split", 1, 256), ("ctas_per_sm", 1, 64)):
        v = config.get(name)
        if not (isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi):
            out.append(f"{name} must be an int in [{lo}, {hi}], got {v!r}")
    if config.get("l2_prefetch") not in (0, 64, 128, 256):
        out.append(f"l2_prefetch must be one of [0, 64, 128, 256], got {config.get('l2_prefetch')!r}")
    if not isinstance(config.get("pdl"), bool):
        out.append(f"pdl must be a bool, got {config.get('pdl')!r}")
    elif config["pdl"] and not target.arch.startswith("sm_90"):
        out.append(f"pdl needs sm_90 (griddepcontrol), target is {target.arch}")
    if not out:
        smem = merge_smem_bytes(spec, config)
        if smem > STATIC_SMEM_BYTES:
            out.append(f"the cross-group merge needs {smem} B of shared memory, over the static "
                       f"limit {STATIC_SMEM_BYTES} B: lower rows or warps")
        ring = ring_smem_bytes(spec, config)
        limit = SMEM_LIMIT.get(target.arch, 99 * 1024)
        if config["ring_stages"] == 1:
            out.append("ring_stages must be 0 (off) or 2..6 (one stage would leave nothing in flight)")
        elif ring and not has_cp_async(target):
            out.append(f"ring_stages needs cp.async (sm_80 or newer), not {target.arch}")
        elif ring < STATIC_SMEM_BYTES < ring + smem:
            # measured (H100, H200): a 16-24 KiB ring next to a 33 KiB static merge fails to
            # launch (CUDA_ERROR_INVALID_VALUE; the runtime raises a kernel's dynamic limit only
            # for a large dynamic part), and so did such a ring padded to 48 KiB + 16 B
            out.append(f"a {ring} B ring next to the {smem} B static merge passes 48 KiB with "
                       f"a dynamic part under 48 KiB, which fails to launch: more ring_stages or "
                       f"keys_per_thread, or ring_stages = 0")
        elif ring + smem > limit:
            out.append(f"the ring ({ring} B) and the merge ({smem} B) need more shared memory than "
                       f"the {limit} B of {target.arch}: fewer ring_stages, keys_per_thread or warps")
    if out:
        raise ValueError(f"decode_cuda config {config}: " + "; ".join(out))


def butterfly_fits(spec, config) -> bool:
    """The transposing butterfly needs a power-of-two row count, at least 2 and at most the
    lanes of a K/V row (one row per lane at the end)."""
    rows = min(config["rows"], packed_rows(spec))
    return 2 <= rows <= vector_lanes(spec)[1] and rows & (rows - 1) == 0


def groups(spec, config) -> int:
    """Lane groups per CTA: each reads whole K/V rows and keeps its own softmax state."""
    _, lanes = vector_lanes(spec)
    return config["warps"] * (32 // lanes)


def merge_smem_bytes(spec, config) -> int:
    """Each group's running max, sum and accumulator rows, merged through shared memory."""
    return groups(spec, config) * config["rows"] * (spec.head_dim_v + 2) * 4


def ring_stages(config) -> int:
    """The ring's stage count in effect: 0 where the register double buffer (stages = 2) is on."""
    return config["ring_stages"] if config["stages"] == 1 else 0


def has_cp_async(target) -> bool:
    arch = getattr(target, "arch", "") or ""
    return arch.startswith("sm_") and int("".join(ch for ch in arch[3:] if ch.isdigit()) or 0) >= 80


def ring_smem_bytes(spec, config) -> int:
    """The cp.async ring: per stage, every thread's keys_per_thread K and V vectors."""
    return ring_stages(config) * config["keys_per_thread"] * 2 * config["warps"] * 32 * VECTOR_BYTES


def schedule(mod, spec, target, config):
    """The templates bind their own threads: nothing left to transform."""
    return mod
