"""Knobs of the tensor-core softmax-attention kernel (``templates/attention_tc.j2``, or
``templates/attention_wgmma.j2`` on Hopper).

The template already is the schedule: explicit thread bindings, register fragments and PTX
builtins.  What remains to choose is the instruction and the tile shape:

    mma              "mma_sync" (attention_tc.j2: warp-level mma.sync.m16n8k16, sm_80+) or
                     "wgmma" (attention_wgmma.j2: warpgroup MMA, sm_90a only; head_dim =
                     head_dim_v in {64, 128}).  With wgmma a warpgroup is 4 warps
                     of one m-tile each: warps 4 or 8 (one or two warpgroups), m_tiles 1,
                     q_in_registers False (wgmma reads Q from shared memory).
                     The default on sm_90a is "wgmma" for the specs it serves, else
                     "mma_sync" (see WGMMA_DEFAULT).  A config without `mma` is an
                     mma_sync config (it predates the knob)
    overlap          wgmma only: S(j) and PV(j - 1) in flight together, the softmax of S(j)
                     under PV(j - 1) (FlashAttention-3's intra-warpgroup pipelining)

    warps            warps per CTA
    m_tiles          16-row m-tiles per warp (1 or 2): a CTA covers 16 * m_tiles * warps rows,
                     and the m-tiles of a warp share each K/V fragment it reads from shared memory
    block_n          keys per K/V tile (a multiple of 16)
    q_in_registers   hold Q's A fragments for the whole KV loop (else re-read them from shared
                     memory for every 16 channels; wide heads need the registers for O)
    tile_map         visit only the key tiles a per-tile map (attngen/softmax/tile_map.py) lists;
                     on by default for masks that are not one interval of keys per row
    lazy_rescale     (wgmma; off unless asked) FlashAttention-4's conditional rescaling: a row's
                     reference max moves only when a tile's max passes it by more than 8 in log2
                     units (P <= 256), and a warp skips the O rescale when none of its rows moved
    tma              (wgmma, contiguous bhsd / bshd; the default there) a producer
                     warpgroup loads Q, K and V by the bulk tensor copy on mbarriers; the
                     consumer warpgroups wait on those and release each buffer on its own
                     mbarrier: no CTA barrier and no consumer-issued copy in the loop
                     (FlashAttention-3's producer / consumer split)
    pingpong         (wgmma with tma, overlap and two warpgroups; on for windows)
                     FlashAttention-3's ping-pong: the warpgroups take turns issuing their GEMMs
                     on named barriers, so one's softmax runs under the other's GEMMs
    persistent       (wgmma with tma; on for windows) one wave of CTAs loops over
                     the row tiles, the longest first; the next tile's Q and K/V load under the
                     current tile's last P V and epilogue (short rows: windows, maps)
    head_major       (with persistent; off) the wave takes the row tiles of one (batch,
                     head) in a row instead of one rank across heads: fewer heads' K/V live
                     in L2 at once.  Measured slower on an H200 (0.89-0.99x on the window,
                     global + local and document cases, session 10)
    cluster          (wgmma with tma, not persistent; off) the CTAs of
                     two adjacent row tiles form a cluster and walk their pair's key tiles;
                     each loads half of every K/V tile and multicasts it to both, so L2 serves
                     a K/V tile once per pair of row tiles (64-row tiles read it twice as often
                     as 128-row ones).  Correct on an H200 but slower there: 0.56-0.82x on the
                     window, global + local and document cases (session 10)
    tma_store        (wgmma with tma; on wherever tma is) each warpgroup writes its
                     O rows into shared memory, 128-byte swizzled, and one thread stores them
                     by the bulk tensor copy (which clips rows past the sequence): one copy per
                     64 channels instead of 64 two-byte global stores per thread.  The rows
                     go to Q's region, or (persistent) to a region of their own, the copy
                     running on under the next tile

Limits checked by ``validate``: the Q, K and V tiles (rows padded by 8 elements) fit the
target's dynamic shared memory; the K and V tiles split into whole 16-byte copies per thread;
the per-thread fragments (O accumulator, S, P, Q) stay well inside 255 registers.
"""
from __future__ import annotations

from attngen import knobs

KNOBS = {
    "mma": 'tensor-core instruction: "mma_sync" or "wgmma" (sm_90a)',
    "overlap": "wgmma: issue S(j) and PV(j - 1) together, softmax under PV (bool)",
    "lazy_rescale": "wgmma: move a row's reference max only past +8 (log2), skip the O rescale otherwise (bool)",
    "tma": "wgmma: a producer warpgroup loads Q/K/V by TMA on mbarriers, no CTA barrier in the loop (bool)",
    "pingpong": "wgmma with tma, overlap, 2 warpgroups: the warpgroups take turns issuing GEMMs (bool)",
    "persistent": "wgmma with tma: one wave of CTAs loops over the row tiles (bool)",
    "head_major": "wgmma persistent: a (batch, head)'s row tiles in a row, not one rank across heads (bool)",
    "tma_store": "wgmma with tma: O leaves through shared memory by a TMA store (bool)",
    "cluster": "wgmma with tma, not persistent: two CTAs share each K/V tile by TMA multicast (bool)",
    "warps": "warps per CTA (1, 2, 4 or 8)",
    "m_tiles": "16-row m-tiles per warp (1 or 2)",
    "block_n": "keys per shared-memory K/V tile (16, 32, 64 or 128)",
    "q_in_registers": "keep Q's fragments in registers through the KV loop (bool)",
    "tile_map": "loop over a per-tile map of the mask computed at run time (bool)",
}

# the knobs only the wgmma kernel has (on with mma_sync: an error)
WGMMA_ONLY = ("overlap", "lazy_rescale", "tma", "pingpong", "persistent", "head_major", "tma_store", "cluster")

PAD = 8  # elements of padding per shared-memory row: 16 B, one bank group
# dynamic shared memory a CTA may opt into
SMEM_LIMIT = {"sm_80": 163 * 1024, "sm_86": 99 * 1024, "sm_89": 99 * 1024, "sm_90": 227 * 1024,
              "sm_90a": 227 * 1024}
# 32-bit registers the fragments may take: ptxas then lands at 230-254 of 255 without spills
# for a plain logit; a mask that is not an interval (a predicate on every tile, runtime tensors),
# a score mod or a second head dim keep more values live across the S GEMM (calibrated with
# ptxas on the gallery and tests/test_prefill_tc.py's shapes)
FRAGMENT_REGS = 240
FRAGMENT_REGS_BUSY = 224


def fragment_budget(spec, target) -> int:
    from attngen.softmax import predicate
    from attngen.softmax.tensorcore import exact_interval

    plain = (spec.score_mod is None and spec.head_dim == spec.head_dim_v
             and exact_interval(predicate.mask_expr(spec)))  # no runtime tensor, no predicate on full tiles
    # sm_80's ptxas needs more registers around the same fragments (causal bf16 at 240 spilled
    # 60 bytes there, none on sm_90a)
    hopper = target.arch is not None and target.arch.startswith("sm_9")
    return FRAGMENT_REGS if plain and hopper else FRAGMENT_REGS_BUSY


# wgmma is attngen's default on sm_90a for the specs it serves: its GPU tests (34, every gallery
# spec it serves, float64 references) passed on an H200, where it measured 1.07-1.41x SDPA flash
# on every dense case in the same process (benchmarks/NOTES-hopper.md); False makes it opt-in again
WGMMA_DEFAULT = True
# wgmma's fragments (S, P twice with overlap, O) per thread: the 2-warpgroup n128 d128 overlap
# kernel (192) builds without stack on sm_90a; more would spill
WGMMA_REGS = 192


def default(spec, target, mma=None) -> dict:
    """The config a spec gets: ``mma`` picks the kernel (None: wgmma where it is the default
    and serves the spec, else mma_sync)."""
    if mma is None:
        mma = "wgmma" if WGMMA_DEFAULT and wgmma_unsupported_reason(spec, target) is None else "mma_sync"
    return wgmma_default(spec, target) if mma == "wgmma" else mma_sync_default(spec, target)


def wgmma_default(spec, target) -> dict:
    # measured on an H100 and an H200 (benchmarks/NOTES-hopper.md, NOTES-prefill.md): two
    # warpgroups, 128-key tiles, overlap, K/V by TMA from a producer warpgroup wherever one
    # tensor map serves each of Q, K and V (bhsd, bshd; session 8: 1.01-1.19x cp.async), and O
    # out by a TMA store (session 10, H200, same process: 1.03-1.24x on every causal, GQA, bf16,
    # d64 and masked case, 1.13x dense N1024; 0.96-0.97x dense N4096 / N16384 timed after the
    # default, while in two later runs, the store the default, plain stores took 0.84-0.97x).
    # Rows that see a short run of keys pay a prologue and epilogue per few key tiles:
    # - a window (a lower bound, no map): two warpgroups persistent, taking turns, O stored
    #   under the next tile (FlashAttention-3's schedule): 427 TFLOP/s on window 1024 N16384,
    #   against 380 for one warpgroup and 408 for two, both with the store;
    # - a per-tile map or packed sequences: one warpgroup and 64-key tiles, so two CTAs share
    #   an SM and one's prologue and epilogue run under the other's loop (global + local 390
    #   against 328 for the persistent turns; since its mask is factored, session 11, two
    #   warpgroups persistent run even with this, 1.00x paired);
    # - a map whose mask has static conjuncts (document ids within causal: the map's partial
    #   tiles are mostly the static diagonal, the rows' runs of keys are whole documents): two
    #   warpgroups persistent, not taking turns: 464-476 TFLOP/s in session 11's six runs, one
    #   warpgroup 0.87-0.90x paired (session 10: 0.88x on global + local, no static part)
    from attngen.softmax import tile_map

    tma, short, uses_map = spec.layout != "thd" and not spec.is_paged, short_rows(spec), tile_map.needed(spec)
    turns = tma and short and not uses_map
    long_map_rows = tma and uses_map and tile_map.static_part(spec) is not None
    warps, block_n = (4, 64) if short and not (turns or long_map_rows) else (8, 128)
    return {"mma": "wgmma", "warps": warps, "m_tiles": 1, "block_n": block_n,
            "q_in_registers": False, "tile_map": uses_map, "overlap": True, "tma": tma,
            "pingpong": turns, "persistent": turns or long_map_rows, "tma_store": tma}


def short_rows(spec) -> bool:
    """Whether a row's keys are a short run at any length: the mask bounds them from below
    (a window), needs a per-tile map, or the layout packs short sequences."""
    from attngen.softmax import kv_range, predicate, tile_map

    lower = kv_range.visible_keys(predicate.mask_expr(spec)).lower
    return tile_map.needed(spec) or spec.layout == "thd" or lower is not None


def mma_sync_default(spec, target) -> dict:
    # measured on an H100 (benchmarks/NOTES-prefill.md): two m-tiles per warp and 64-key tiles
    # first, then Q re-read from shared memory before smaller tiles
    from attngen.softmax import tile_map

    use_map = tile_map.needed(spec)
    for m_tiles, block_n in ((2, 64), (2, 32), (1, 64), (1, 32), (1, 16)):
        for q_regs in (True, False):
            cfg = {"mma": "mma_sync", "warps": 4, "m_tiles": m_tiles, "block_n": block_n,
                   "q_in_registers": q_regs, "tile_map": use_map, "overlap": False}
            if not _problems(spec, target, cfg):
                return cfg
    # validate() says why not
    return {"mma": "mma_sync", "warps": 4, "m_tiles": 1, "block_n": 16, "q_in_registers": False,
            "tile_map": use_map, "overlap": False}


def wgmma_unsupported_reason(spec, target):
    """Why the wgmma kernel cannot serve ``spec`` on ``target`` at all (None: it can)."""
    if target.arch != "sm_90a":
        return f"wgmma needs sm_90a, target is {target.arch}"
    if spec.head_dim != spec.head_dim_v or spec.head_dim not in (64, 128):
        return (f"wgmma needs head_dim = head_dim_v in (64, 128), got {spec.head_dim}/"
                f"{spec.head_dim_v} (wider heads spill the accumulators)")
    return None


def validate(spec, target, config) -> None:
    knobs.check(config, KNOBS, "attention_cuda_tc", lambda: _problems(spec, target, config))


def smem_bytes(spec, config) -> int:
    rows = 16 * config["m_tiles"] * config["warps"]
    return 2 * (rows * (spec.head_dim + PAD) + config["block_n"] * (spec.head_dim + spec.head_dim_v + 2 * PAD))


def fragment_regs(spec, config) -> int:
    """32-bit registers of one thread's fragments: O and S in fp32 (4 per 16 x 8 tile), Q and P
    as 16-bit pairs (4 per 16 x 16 tile), two ldmatrix results."""
    bn = config["block_n"]
    q = spec.head_dim // 4 if config["q_in_registers"] else 4
    return config["m_tiles"] * (spec.head_dim_v // 2 + bn // 2 + q + bn // 4) + 8


def wgmma_smem_bytes(spec, config) -> int:
    """Q, two K and two V tiles; with a persistent TMA store, O's staging rows too."""
    rows = 16 * config["warps"]
    staged = rows if config.get("tma_store") and config.get("persistent") else 0
    return 2 * spec.head_dim * (rows + 4 * config["block_n"] + staged)


def wgmma_regs(spec, config) -> int:
    """32-bit registers of one thread's wgmma fragments: S and O in fp32 (half a row of each per
    thread), P as 16-bit pairs (twice with overlap)."""
    bn = config["block_n"]
    return spec.head_dim // 2 + bn // 2 + bn // 4 * (2 if config.get("overlap") else 1)


def _problems(spec, target, config) -> list:
    out = []
    w, bn = config["warps"], config["block_n"]
    mma = config.get("mma", "mma_sync")
    for flag in ("q_in_registers", "tile_map", *WGMMA_ONLY):
        if not isinstance(config.get(flag, False), bool):
            out.append(f"{flag} must be a bool, got {config.get(flag)!r}")
    if mma not in ("mma_sync", "wgmma"):
        out.append(f"mma must be 'mma_sync' or 'wgmma', got {mma!r}")
    if w not in (1, 2, 4, 8):
        out.append(f"warps must be 1, 2, 4 or 8, got {w!r}")
    if config.get("m_tiles") not in (1, 2):
        out.append(f"m_tiles must be 1 or 2, got {config.get('m_tiles')!r}")
    if bn not in (16, 32, 64, 128):
        out.append(f"block_n must be 16, 32, 64 or 128, got {bn!r}")
    if config.get("tile_map") and bn == 16:
        # the map's classification gives each lane of a warp one key column of the tile
        out.append(f"tile_map needs block_n >= 32 (a key per lane), got {bn}")
    if config.get("tile_map") and spec.layout == "thd":
        out.append("tile_map needs one tile grid per batch: not with packed sequences (layout 'thd')")
    if config.get("tile_map") and spec.is_paged:
        out.append("tile_map needs a contiguous cache (its grid is sized by the cache length LK): "
                   "not with a paged one")
    if out:
        return out
    if mma == "wgmma":
        return _wgmma_problems(spec, target, config)
    out += [f"{knob} needs mma='wgmma'" for knob in WGMMA_ONLY if config.get(knob)]
    threads = 32 * w
    for what, width in (("K", spec.head_dim), ("V", spec.head_dim_v)):
        if (bn * width // 8) % threads:
            out.append(f"a {what} tile of {bn} x {width} is {bn * width // 8} 16-byte copies, "
                       f"not a multiple of {threads} threads")
    limit = SMEM_LIMIT.get(target.arch, 99 * 1024)
    if smem_bytes(spec, config) > limit:
        out.append(f"Q/K/V tiles need {smem_bytes(spec, config)} B of shared memory, over {limit} B")
    budget = fragment_budget(spec, target)
    if fragment_regs(spec, config) > budget:
        out.append(f"fragments need {fragment_regs(spec, config)} registers per thread, over "
                   f"{budget}: lower block_n or m_tiles")
    return out


def _wgmma_problems(spec, target, config) -> list:
    reason = wgmma_unsupported_reason(spec, target)
    if reason:
        return [reason]
    out = []
    if config["warps"] not in (4, 8):
        out.append(f"wgmma: warps must be 4 or 8 (one or two warpgroups), got {config['warps']}")
    if config["m_tiles"] != 1:
        out.append(f"wgmma: m_tiles must be 1 (a warp holds 16 rows of the m64 tile), got {config['m_tiles']}")
    if config["q_in_registers"]:
        out.append("wgmma: q_in_registers must be False (wgmma reads Q from shared memory)")
    if config.get("pingpong") and not (config.get("tma") and config.get("overlap") and config["warps"] == 8):
        out.append("wgmma: pingpong needs tma, overlap and warps=8 (two consumer warpgroups taking turns)")
    if config.get("persistent") and not config.get("tma"):
        out.append("wgmma: persistent needs tma (the producer runs ahead into the next tile)")
    if config.get("head_major") and not config.get("persistent"):
        out.append("wgmma: head_major needs persistent (it orders the persistent loop's tiles)")
    if config.get("cluster") and (not config.get("tma") or config.get("persistent")):
        out.append("wgmma: cluster needs tma and not persistent (the pair of CTAs walks one row "
                   "tile pair's keys, multicast by the bulk tensor copy)")
    if config.get("tma_store") and not config.get("tma"):
        out.append("wgmma: tma_store needs tma (the bulk tensor copy reads O's tensor map)")
    if config.get("tma") and (spec.layout == "thd" or spec.is_paged):
        out.append("wgmma: tma needs a contiguous bhsd or bshd layout (one tensor map per Q/K/V "
                   f"tensor), not {'a paged cache' if spec.is_paged else 'packed sequences'}")
    if out:
        return out
    threads = 32 * config["warps"]
    if (config["block_n"] * spec.head_dim // 8) % threads:
        out.append(f"wgmma: a K/V tile of {config['block_n']} x {spec.head_dim} is not a whole "
                   f"number of 16-byte copies per thread ({threads} threads)")
    smem = wgmma_smem_bytes(spec, config)
    if smem > SMEM_LIMIT["sm_90a"]:
        out.append(f"wgmma: Q/K/V tiles (and O's staging) need {smem} B of shared memory, over "
                   f"{SMEM_LIMIT['sm_90a']} B")
    if wgmma_regs(spec, config) > WGMMA_REGS:
        out.append(f"wgmma: fragments need {wgmma_regs(spec, config)} registers per thread, over "
                   f"{WGMMA_REGS}: lower block_n or turn overlap off")
    return out


def schedule(mod, spec, target, config):
    return mod  # the template binds threads and places every fragment itself
