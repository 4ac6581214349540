"""The tensor-core prefill kernel: a softmax spec lowered to ``templates/attention_tc.j2``.

The template is written at warp level (register fragments of mma.sync.m16n8k16, ldmatrix,
cp.async, quad shuffles), so this module decides only *what* each element computes: the
log2-domain logit of a fragment element from its query and key position, the mask, the band
of key tiles a query tile can see (``kv_range``), and which of those tiles are full (inside
every row's visible interval, so no mask arithmetic).  ``schedules/attention_cuda_tc.py``
chooses the tile sizes.

Scope (``supported``): prefill on sm_80 and later, fp16 or bf16, QK and V head dims multiples
of 16 up to 256 (they may differ), any mask and score mod the expression language writes,
GQA/MQA, sinks; contiguous K/V, or a paged cache (bhsd queries, masks without a tile map;
K/V rows read through the page table).
Decode, latent caches and quantized specs keep the SIMT kernel.
"""
from __future__ import annotations

from typing import Mapping, Optional

from .. import expr as E
from ..family import Arg, Call, Lowered
from ..render import parse, render
from ..resources import load_schedule
from ..spec import Attention
from . import kv_range, predicate, signature as sig, tile_map

MMA_DTYPE = {"float16": "fp16", "bfloat16": "bf16"}
SCHEDULE = "attention_cuda_tc"


def unsupported_reason(spec: Attention, target) -> Optional[str]:
    """Why ``spec`` cannot take the tensor-core kernel on ``target`` (None: it can)."""
    if not target.is_cuda:
        return "not a CUDA target"
    if not _arch_at_least(target.arch, 80):
        return f"mma.sync.m16n8k16 with bf16 needs sm_80 or later, target is {target.arch}"
    if spec.dtype not in MMA_DTYPE:
        return f"dtype {spec.dtype} (tensor cores take float16 or bfloat16)"
    if spec.is_decode:
        return "a KV cache being decoded (the decode kernels serve it)"
    if spec.is_paged and spec.layout != "bhsd":
        return f"a paged cache with layout {spec.layout!r} (paged prefill takes bhsd queries)"
    if spec.is_paged and tile_map.needed(spec):
        return "a paged cache with a mask that needs a tile map (the map's grid is per contiguous cache)"
    if spec.latent_kv:
        return "latent_kv"
    if spec.quant is not None:
        return "quantized QK"
    for what, d in (("head_dim", spec.head_dim), ("head_dim_v", spec.head_dim_v)):
        if d % 16 or not 16 <= d <= 256:
            return f"{what}={d} (a multiple of 16 up to 256)"
    return None


def supported(spec: Attention, target) -> bool:
    return unsupported_reason(spec, target) is None


def _arch_at_least(arch: Optional[str], major: int) -> bool:
    digits = "".join(ch for ch in (arch or "")[3:] if ch.isdigit())
    return bool(digits) and int(digits) >= major


def lower(spec: Attention, target, config: Optional[Mapping] = None) -> Lowered:
    import tvm

    reason = unsupported_reason(spec, target)
    if reason is not None:
        raise NotImplementedError(f"tensor-core attention: {reason}")
    sched = load_schedule(SCHEDULE)
    config = dict(config or {})
    # a config merges over the defaults of the kernel it names; one that names knobs but no
    # `mma` predates that knob (tuned records, scripts): mma.sync's, as validate() reads it
    mma = config.get("mma", "mma_sync" if config else None)
    cfg = {**sched.default(spec, target, mma), **config}
    sched.validate(spec, target, cfg)
    block_m = 16 * cfg["m_tiles"] * cfg["warps"]
    # cluster: the two CTAs of a cluster walk one list of key tiles, their pair of row tiles'
    map_rows = block_m * (2 if cfg.get("cluster") else 1)
    args = sig.program_args(spec)
    if cfg["tile_map"]:
        args += tile_map.scratch(spec, map_rows, cfg["block_n"])
    if spec.layout == "thd":  # each CTA's sequence and tile (templates/packed_tiles.j2)
        args += (Arg("tile_seq", (2, f"total_q/{block_m}+batch"), "int32", "scratch"),)
    names = tuple(a.name for a in args)
    ctx = context(spec, cfg, args)
    funcs = {}
    if spec.layout == "thd":
        funcs["packed_tiles"] = parse(render("packed_tiles.j2", name="packed_tiles", block_m=block_m,
                                             params=ctx["params"], size_vars=ctx["size_vars"]))
    static = tile_map.static_part(spec) if cfg["tile_map"] else None  # the map's fourth kind
    if cfg["tile_map"]:
        for kernel in tile_map.KERNELS:
            text = render("tile_map.j2", name=kernel, kernel=kernel.split("_")[1],
                          visible=tile_map.visible_fn(spec), warps=4,
                          visible_static=None if static is None else tile_map.visible_fn(spec, static),
                          block_m=map_rows,
                          **{k: ctx[k] for k in ("params", "size_vars", "block_n",
                                                 "map_heads", "kv_lo", "kv_hi")})
            funcs[kernel] = parse(text)
    if cfg["mma"] == "wgmma":
        funcs["attention"] = parse(render("attention_wgmma.j2", name="attention",
                                          **wgmma_context(spec, target, cfg, ctx)))
    else:
        funcs["attention"] = parse(render("attention_tc.j2", name="attention", **ctx))
    mod = sched.schedule(tvm.IRModule(funcs), spec, target, cfg)
    # the map's calls fill its buffers: kept per size where the mask reads no tensor, else by plan
    fills = tuple(a.name for a in tile_map.scratch(spec, map_rows, cfg["block_n"])) if cfg["tile_map"] else ()
    static = bool(fills) and tile_map.static(spec)
    return Lowered(mod, args, tuple(Call(f, names, fills, static) if f in tile_map.KERNELS else Call(f, names)
                                    for f in funcs))


def context(spec: Attention, cfg, args) -> dict:
    from .lower import LN2, LOG2E, NEG

    warps, block_n, m_tiles = cfg["warps"], cfg["block_n"], cfg["m_tiles"]
    # C-fragment element i of S in this thread: m-tile i // (block_n / 2), within it the row
    # 8 (i % 4 // 2) and the key 8 (i // 4) + 2 t + i % 2 (t = lane % 4)
    sw = block_n // 2
    q_idx = f"(q_row + i // {sw} * 16 + i % 4 // 2 * 8)"
    kv_idx = f"(kv0 + i % {sw} // 4 * 8 + lane % 4 * 2 + i % 2)"
    names = {"b": "b", "h": "h", "q_idx": q_idx, "kv_idx": kv_idx, "q_len": "lq", "kv_len": "kvl"}

    mod = predicate.score_expr(spec)
    tanh_args = []  # the score mod's tanh operands: tanh.approx.f32 into th[k] before the logit

    def tanh_approx(arg: str) -> str:
        tanh_args.append(arg)
        return f"th[{len(tanh_args) - 1}]"

    if mod is None:
        # raw scores; the kernel applies scale * log2(e) inside the exponent (one FFMA)
        logit, fold = "s[i]", spec.scale * LOG2E
    else:
        natural = f"(s[i] * T.float32({spec.scale!r}))"
        text = predicate.tir(mod, {**names, "score": natural}, spec, unary={"tanh": tanh_approx})
        logit, fold = f"({text}) * T.float32({LOG2E!r})", None
    mask = predicate.mask_expr(spec)
    visible = f"{kv_idx} < kvl"
    if not mask.same(E.true()):
        visible = f"T.And({visible}, {predicate.tir(mask, names, spec)})"

    # a map's tile where the mask's tensor conjuncts hold wherever its static ones do (tile_map.py)
    static = tile_map.static_part(spec) if cfg["tile_map"] else None
    visible_static = None if static is None else f"T.And({kv_idx} < kvl, {predicate.tir(static, names, spec)})"

    interval = kv_range.visible_keys(mask)
    lengths = {"q_len": "lq", "kv_len": "kvl"}
    kv_lo, kv_hi = kv_range.render_range(interval, lengths, first_row="q0", last_row="q_last")
    full_lo = full_hi = None
    if exact_interval(mask):
        # bounds every row of the tile sees: each side evaluated at the row that tightens it
        lo, hi = kv_range.render_range(interval, lengths, first_row="q_last", last_row="q0")
        full_lo, full_hi = lo or "0", hi or "kvl"

    params = sig.tir_params(args, spec)
    return dict(
        params=params, size_vars=sig.size_vars(args), dtype=spec.dtype,
        mma_dtype=MMA_DTYPE[spec.dtype], head_dim=spec.head_dim, head_dim_v=spec.head_dim_v,
        num_heads=spec.num_heads, group=spec.group_size, warps=warps, m_tiles=m_tiles,
        block_m=16 * m_tiles * warps,
        block_n=block_n, pad=8, q_in_registers=cfg["q_in_registers"], logit_full=logit,
        logit_partial=f"T.Select({visible}, {logit}, T.float32({NEG!r}))",
        logit_static=visible_static and f"T.Select({visible_static}, {logit}, T.float32({NEG!r}))",
        kv_lo=kv_lo, kv_hi=kv_hi, full_lo=full_lo, full_hi=full_hi, sinks=spec.sinks,
        tile_map=cfg["tile_map"], map_heads=tile_map.map_heads(spec),
        fold=None if fold is None else repr(fold), tanh_args=tanh_args, **layout_access(spec),
        sink_to_m=repr(LOG2E / fold if fold else LOG2E),
        neg=repr(NEG), ln2=repr(LN2), log2e=repr(LOG2E))


def wgmma_context(spec: Attention, target, cfg, ctx) -> dict:
    """attention_wgmma.j2's context: attention_tc.j2's with one m-tile per warp (the same
    fragment element -> row/key texts), wgmma's dtype names, and full-tile bounds per
    warpgroup (its 64 rows wq0 .. wq_last: on a causal diagonal one warpgroup's tile may be
    full while the other's is not)."""
    from ..hopper import MMA_DTYPE as WGMMA_DTYPE

    interval = kv_range.visible_keys(predicate.mask_expr(spec))

    def keys(first_row, last_row):  # the key range of rows first_row .. last_row, as text
        return kv_range.render_range(interval, {"q_len": "lq", "kv_len": "kvl"},
                                     first_row=first_row, last_row=last_row)

    wg_lo = wg_hi = None
    if ctx["full_lo"] is not None:
        lo, hi = keys("wq_last", "wq0")
        wg_lo, wg_hi = lo or "0", hi or "kvl"
    tma, tma_store, cluster = cfg.get("tma", False), cfg.get("tma_store", False), cfg.get("cluster", False)
    # cluster: each CTA loads half of every K/V tile, multicast to both
    kv_rows = cfg["block_n"] // (2 if cluster else 1)
    maps, coords = tma_maps(spec, 64 * (cfg["warps"] // 4), kv_rows, tma_store) if tma else ([], {})
    if cluster:  # the key band of the cluster's pair of row tiles p0 .. p_last
        ctx = {**ctx, **dict(zip(("kv_lo", "kv_hi"), keys("p0", "p_last")))}
    return {**ctx, "mma_dtype": WGMMA_DTYPE[spec.dtype], "warpgroups": cfg["warps"] // 4,
            "overlap": cfg["overlap"], "lazy_rescale": cfg.get("lazy_rescale", False),
            "wg_full_lo": wg_lo, "wg_full_hi": wg_hi, "tma": tma, "tma_maps": maps,
            "tma_coords": coords, "pingpong": cfg.get("pingpong", False),
            "persistent": cfg.get("persistent", False), "head_major": cfg.get("head_major", False),
            "tma_store": tma_store, "cluster": cluster,
            "sm_count": target.sm_count}


def tma_maps(spec: Attention, block_m: int, kv_rows: int, store_o: bool = False):
    """The wgmma kernel's TMA tensor maps of Q, K and V (contiguous bhsd or bshd), and of O
    with ``store_o`` (a box of one warpgroup's 64 rows): a list of ``(map, buffer, encode
    arguments)`` for ``runtime.cuTensorMapEncodeTiled`` after the rank (dims and byte strides
    innermost first, a box of 64 channels x the tile's rows, element strides 1, no interleave,
    128-byte swizzle, 128-byte L2 promotion, zero fill), and ``{map: coords(channel, row)}``,
    the text of a box's 4 coordinates.  K and V boxes have ``kv_rows`` rows: block_n, or half
    of it with ``cluster`` (each CTA of the pair loads one half)."""
    D, esize = spec.head_dim, 2
    maps, coords = [], {}
    tensors = [("Q", spec.num_heads, "h", "LQ", block_m), ("K", spec.num_kv_heads, "hk", "LK", kv_rows),
               ("V", spec.num_kv_heads, "hk", "LK", kv_rows)]
    for buf, heads, head, seq, rows in tensors + ([("O", spec.num_heads, "h", "LQ", 64)] if store_o else []):
        row_bytes = f"T.int64({D * esize})"
        if spec.layout == "bshd":  # [B, L, H, D]: channel, head, row, batch
            dims = [str(D), str(heads), seq, "B"]
            strides = [row_bytes, f"T.int64({heads * D * esize})", f"T.Cast('int64', {seq}) * {heads * D * esize}"]
            box = [64, 1, rows, 1]
            order = lambda c, r, head=head: f"{c}, {head}, {r}, b"
        else:  # bhsd [B, H, L, D]: channel, row, head, batch
            dims = [str(D), seq, str(heads), "B"]
            strides = [row_bytes, f"T.Cast('int64', {seq}) * {D * esize}", f"T.Cast('int64', {seq}) * {heads * D * esize}"]
            box = [64, rows, 1, 1]
            order = lambda c, r, head=head: f"{c}, {r}, {head}, b"
        encode = ", ".join(dims + strides + [str(x) for x in box] + ["1"] * 4 + ["0", "3", "2", "0"])
        maps.append((f"{buf}_map", buf, encode))
        coords[f"{buf}_map"] = order
    return maps, coords


def layout_access(spec: Attention) -> dict:
    """The template's element accessors for the spec's layout: ``q_at(row, channel)`` etc.,
    rows counted inside the sequence (``b`` the batch or sequence, ``h``/``hk`` the heads)."""
    if spec.layout == "thd":
        return dict(
            packed=True,
            # a tile past the last sequence has lq = 0: its (unused) Q rows stay inside the tensor
            q_at=lambda r, c: f"Q[T.min(q_off + T.max({r}, 0), TQ - 1), h, {c}]",
            k_at=lambda r, c: f"K[k_off + {r}, hk, {c}]",
            v_at=lambda r, c: f"V[k_off + {r}, hk, {c}]",
            o_at=lambda r, c: f"O[q_off + {r}, h, {c}]",
            lse_at=lambda r: f"LSE[h, q_off + {r}]")

    def at(buf: str, head: str):
        if spec.layout == "bshd":
            return lambda r, c: f"{buf}[b, {r}, {head}, {c}]"
        return lambda r, c: f"{buf}[b, {head}, {r}, {c}]"

    if spec.is_paged:
        # key row r of sequence b: slot r % P of page PAGE_TABLE[b, r // P] of the pool (rows
        # are clamped to [0, kvl) by the templates, so only the sequence's pages are read)
        P = spec.kv_layout.page_size

        def pool(buf: str):
            return lambda r, c: f"{buf}[PAGE_TABLE[b, ({r}) // {P}], hk, T.floormod({r}, {P}), {c}]"
        return dict(packed=False, q_at=at("Q", "h"), k_at=pool("K"), v_at=pool("V"),
                    o_at=at("O", "h"), lse_at=lambda r: f"LSE[b, h, {r}]",
                    kv_len=f"T.max(T.min(KV_LENS[b], MP * {P}), 0)")
    return dict(packed=False, q_at=at("Q", "h"), k_at=at("K", "hk"), v_at=at("V", "hk"),
                o_at=at("O", "h"), lse_at=lambda r: f"LSE[b, h, {r}]", kv_len="LK")


def exact_interval(mask: E.Expr) -> bool:
    """Whether the visible keys of a row are exactly ``kv_range``'s interval: the mask is
    ``true`` or a conjunction of comparisons that each bound ``kv_idx``.  Only then does a tile
    inside every row's interval need no mask (an ``|`` or a runtime tensor makes the interval
    a hull with holes)."""
    if mask.same(E.true()):
        return True
    if mask.op == "and":
        return all(exact_interval(a) for a in mask.args)
    if mask.op in ("<", "<=", ">", ">=", "=="):
        iv = kv_range._atom(mask)
        return iv.lower is not None or iv.upper is not None
    return False
