"""CUDA schedule of the absorbed-MLA decode kernel (``templates/decode_mla.j2``, lowered by
``attngen/softmax/mla_decode.py``).

The kernel streams the shared latent cache (D = r_kv + d_R channels per key, V = its first
Dv) through shared memory with cp.async and runs Q K^T and P V on mma.sync m16n8k16 for one
m-tile of 16 packed query rows.  The template carries the whole structure; this module picks
its knobs and checks them.

Knobs:
    warps        warps per CTA (4 or 8); a step is 8 * warps keys (each warp's Q K^T takes 8
                 of them, its P V a Dv / warps channel slice of every row)
    stages       shared-memory buffers of one step (2..6): stages - 1 steps are in flight
                 while one is used; the bytes in flight per SM are what hides HBM latency
    l2_prefetch  0, 64, 128 or 256: the cp.async copies carry an L2 prefetch of that many bytes
                 (``.L2::256B``: L2 fetches the whole line of consecutive rows at once)
    bulk_copy    True (sm_90, the default there): each step loads with one cp.async.bulk (TMA,
                 1-D) per latent row on a per-stage mbarrier, block_n / warps lanes of every warp
                 issuing one row each, instead of D / 8 16-byte cp.async per row; takes
                 l2_prefetch 0 (the bulk copy has no prefetch qualifier)
    fused_combine  True: no combine kernel; each CTA counts itself done on its output tile's
                 counter (``split_done``, zero between calls) and the last one merges the splits'
                 partials (methods.md 1.3) and writes O and the LSE
    stream_k     True (with fused_combine): one wave of CTAs shares every output tile's keys
                 evenly, a CTA's range crossing tiles where it must (B x 2 splits leaves 4 of
                 132 SMs idle at B = 64; stream-K none); at most max_split partials per tile
    max_split    most KV splits (1..256), the size of the partial-result scratch
    ctas_per_sm  CTAs per SM the run-time split count aims at (1..8); the count is rounded
                 down, so the grid never spills a small tail into another wave
    qk_split     "keys" or "channels" (with bulk_copy): how Q K^T is shared among the warps.  keys:
                 warp w takes keys 8w..8w+7 over all D channels (Q's fragments for all of D in
                 registers), the row maxima and P cross shared memory, 2-3 barriers per step.
                 channels: warp w takes D / warps channels of every key (a quarter of Q's
                 registers, one mma chain per 8-key n-tile); the partial S meet in shared memory
                 and every warp adds them all, so it holds the whole S and builds P V's A fragments
                 from registers: one barrier per step; qk_chains and step_barriers do not apply
    lazy_rescale True: a row's reference max moves only when the step's max passes it by more
                 than 8 (log2 units; P <= 256), and a warp skips the O rescale when no row of
                 it moved (FlashAttention-4's conditional rescaling; same result)
    step_barriers  3, or 2 with bulk_copy: CTA barriers per key step; with 2 a step starts on its
                 stage's mbarrier alone and the refill waits for the row-maximum barrier
    pdl          True (sm_90, the default there): decode_combine is launched with programmatic
                 dependent launch and waits on griddepcontrol.wait; this kernel signals it after
                 its main loop, so the combine's launch overlaps this kernel's end (no effect
                 with fused_combine)
    qk_chains    2 or 4: Q K^T's k-steps accumulate into that many interleaved mma chains (a
                 warp is alone on its scheduler, so only independent chains hide mma latency;
                 4 costs 8 registers)
Validity: the buffers fit the opt-in shared memory of the arch; D a multiple of 32 (one
ldmatrix.x4 of K covers 32 channels), Dv a multiple of 16 * warps (whole 16-channel slices).
"""
from __future__ import annotations

from attngen import knobs

KNOBS = {
    "warps": "warps per CTA (4 or 8); a step is 8 * warps keys",
    "stages": "shared-memory buffers of one step (2..6): stages - 1 steps in flight",
    "l2_prefetch": "bytes of the cp.async L2 prefetch qualifier (0, 64, 128, 256)",
    "bulk_copy": "one cp.async.bulk (TMA) per latent row on per-stage mbarriers (bool, sm_90)",
    "fused_combine": "the last CTA of each output tile merges the splits: no combine kernel (bool)",
    "stream_k": "CTAs share the tiles' keys evenly, crossing tiles (bool; needs fused_combine)",
    "max_split": "most KV splits; the split count is chosen at run time (1..256)",
    "ctas_per_sm": "CTAs per SM the run-time split count aims at, rounded down (1..8)",
    "qk_chains": "interleaved mma accumulator chains of Q K^T (2 or 4)",
    "step_barriers": "CTA barriers per key step (3, or 2 with bulk_copy)",
    "lazy_rescale": "move a row's reference max only past +8 (log2), skip the O rescale otherwise (bool)",
    "qk_split": 'how warps share Q K^T: "keys" (8 keys each) or "channels" (D / warps each; bulk_copy)',
    "pdl": "launch decode_combine with programmatic dependent launch (bool, sm_90)",
}

# values the tuner tries where powers of two around the default do not apply (a default of 0)
CANDIDATES = {"l2_prefetch": (0, 128, 256), "qk_chains": (2, 4), "step_barriers": (2, 3)}
PAD = 8  # elements per shared-memory row: 16 B, so ldmatrix's 8 row addresses hit distinct banks
SMEM_LIMIT = {"sm_80": 163 * 1024, "sm_86": 99 * 1024, "sm_89": 99 * 1024, "sm_90": 227 * 1024,
              "sm_90a": 227 * 1024}
_DTYPES = ("float16", "bfloat16")


def block_n(config) -> int:
    return 8 * config["warps"]


def shape_problems(spec) -> list:
    """Why the kernel cannot serve ``spec`` at any knob setting (empty: it can)."""
    out = []
    if spec.dtype not in _DTYPES:
        out.append(f"dtype {spec.dtype} (mma operands are float16 or bfloat16)")
    if spec.head_dim % 32:
        out.append(f"head_dim={spec.head_dim} is not a multiple of 32")
    if spec.head_dim_v % 64:
        out.append(f"head_dim_v={spec.head_dim_v} is not a multiple of 64")
    return out


def smem_bytes(spec, config) -> int:
    bn = block_n(config)
    merge = 2 * 16 * config["max_split"] * 4 + 8 if config.get("fused_combine") else 0  # lse, weights, flag
    if config.get("qk_split") == "channels":  # partial S, two parities
        merge += 2 * config["warps"] * 4 * config["warps"] * 32 * 4
    return (2 * (config["stages"] * bn * (spec.head_dim + PAD) + 16 * (bn + PAD))
            + 2 * config["warps"] * 16 * 4 + merge)


def default(spec, target) -> dict:
    # measured on an H100 (benchmarks/NOTES-decode.md, B64 L8192): 4 warps x 4 stages of 32
    # keys (three steps, 112 KB, in flight) 0.84-0.86 of HBM read bandwidth; 8 warps x 3
    # stages of 64 keys 0.82-0.84; two CTAs per SM (4 warps x 2 or 3 stages, twice the splits)
    # 0.83-0.84; fewer stages where the arch has less shared memory.  Session 3 (H100, same
    # process): cp.async with .L2::128B 2628 GB/s against 2586 without (B64 L8192), 2396
    # against 2354 (B8 L32768); .L2::256B the same at B64, 1% lower at B8.  Session 5 (H200,
    # same process, two runs): on sm_90 one cp.async.bulk per row, issued by 8 lanes of every
    # warp, 0.1748-0.1752 ms against 0.1768 (B64 L8192) and 0.1884-0.1897 against 0.1950-0.1971
    # paged 16 (issued by warp 0 alone it was 30% slower)
    # Session 6 (H200, same process, two machines; benchmarks/NOTES-decode.md): on sm_90 Q K^T
    # over 4 mma chains and 2 barriers per step, 0.1702 ms against 0.1740 (B64 L8192), 0.0976
    # against 0.0997 (B8 L32768), 0.1788 against 0.1823 (paged 16); fused_combine and stream_k
    # lose there (one CTA merging 16 splits at B8 costs more than the combine launch)
    # Session 7 (H200, same process): a paged cache on sm_90 takes Q K^T split by channels (167
    # registers) at 2 CTAs per SM of 2 stages each: 0.1711 ms against 0.1760 (paged 16, B64
    # L8192; 1.03x the contiguous default's 0.1654, session 6 1.03x too, where the keys split
    # measured 1.05-1.06x): two warps per scheduler hide the page-table indirection the lone
    # warp waits on.  On a contiguous cache it is no faster at B64 and 4% slower at B8 L32768.
    # lazy_rescale measured the same as the default (0.1661 against 0.1654 ms at B64).  The
    # combine launched with PDL: 0.1645 ms against 0.1668 (B64), 0.0953 against 0.0968 (B8
    # L32768), 0.1697 against 0.1712 (paged 16), one H200, same process
    bulk = target.arch.startswith("sm_90")
    if bulk and spec.is_paged:
        cfg = {"warps": 4, "stages": 2, "l2_prefetch": 0, "bulk_copy": True, "fused_combine": False,
               "stream_k": False, "max_split": 64, "ctas_per_sm": 2, "qk_chains": 4,
               "step_barriers": 2, "qk_split": "channels", "lazy_rescale": False, "pdl": True}
        if not _problems(spec, target, cfg):
            return cfg
    for warps, stages in ((4, 4), (4, 3), (8, 3), (8, 2), (4, 2)):
        cfg = {"warps": warps, "stages": stages, "l2_prefetch": 0 if bulk else 128, "bulk_copy": bulk,
               "fused_combine": False, "stream_k": False, "max_split": 64, "ctas_per_sm": 1,
               "qk_chains": 4 if bulk else 2, "step_barriers": 2 if bulk else 3, "qk_split": "keys",
               "lazy_rescale": False, "pdl": bulk}
        if not _problems(spec, target, cfg):
            return cfg
    return {"warps": 4, "stages": 2, "l2_prefetch": 0, "bulk_copy": False, "fused_combine": False,
            "stream_k": False, "max_split": 64, "ctas_per_sm": 1, "qk_chains": 2, "step_barriers": 3,
            "qk_split": "keys", "lazy_rescale": False, "pdl": False}  # validate() says why not


def validate(spec, target, config) -> None:
    knobs.check(config, KNOBS, "decode_mla_cuda", lambda: _problems(spec, target, config))


def _problems(spec, target, config) -> list:
    out = []
    for name, allowed in (("warps", (4, 8)), ("stages", range(2, 7)), ("l2_prefetch", (0, 64, 128, 256)),
                          ("max_split", range(1, 257)),
                          ("ctas_per_sm", range(1, 9)), ("qk_chains", (2, 4)),
                          ("step_barriers", (2, 3))):
        v = config.get(name)
        if not (isinstance(v, int) and not isinstance(v, bool) and v in allowed):
            out.append(f"{name} must be one of {list(allowed)}, got {v!r}")
    for name in ("bulk_copy", "fused_combine", "stream_k", "lazy_rescale", "pdl"):
        if not isinstance(config.get(name), bool):
            out.append(f"{name} must be a bool, got {config.get(name)!r}")
    if out:
        return out
    if config["stream_k"] and not config["fused_combine"]:
        out.append("stream_k needs fused_combine (a tile's partial count varies, decode_combine.j2 "
                   "takes one count for all)")
    if config["max_split"] < 2 and config["stream_k"]:
        out.append("stream_k needs max_split >= 2 (a tile's keys may span two CTAs)")
    if config["qk_split"] not in ("keys", "channels"):
        out.append(f"qk_split must be 'keys' or 'channels', got {config['qk_split']!r}")
    elif config["qk_split"] == "channels":
        if not config["bulk_copy"]:
            out.append("qk_split='channels' needs bulk_copy (its one barrier per step comes after "
                       "the first reads of the step's rows)")
        if spec.head_dim % (16 * config["warps"]):
            out.append(f"qk_split='channels': head_dim={spec.head_dim} does not split into "
                       f"{config['warps']} slices of 16k channels")
    if config["step_barriers"] == 2 and not config["bulk_copy"]:
        out.append("step_barriers=2 needs bulk_copy (cp.async rows become visible to the other "
                   "threads only through the barrier it drops)")
    if config["pdl"] and not target.arch.startswith("sm_90"):
        out.append(f"pdl needs sm_90 (griddepcontrol), target is {target.arch}")
    if config["bulk_copy"] and not target.arch.startswith("sm_90"):
        out.append(f"bulk_copy needs sm_90 (cp.async.bulk, mbarrier tx counts), target is {target.arch}")
    if config["bulk_copy"] and config["l2_prefetch"]:
        out.append(f"bulk_copy takes l2_prefetch 0 (the bulk copy has no prefetch qualifier), "
                   f"got {config['l2_prefetch']}")
    out += shape_problems(spec)
    if spec.head_dim_v % (16 * config["warps"]):
        out.append(f"head_dim_v={spec.head_dim_v} does not split into {config['warps']} slices of 16k channels")
    limit = SMEM_LIMIT.get(target.arch, 99 * 1024)
    if smem_bytes(spec, config) > limit:
        out.append(f"{config['stages']} stages of {block_n(config)} latent rows need "
                   f"{smem_bytes(spec, config)} B of shared memory, over {limit} B: fewer stages or warps")
    return out


def schedule(mod, spec, target, config):
    """The template binds its own threads: nothing left to transform."""
    return mod
