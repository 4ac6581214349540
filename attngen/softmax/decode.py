"""Decode-phase specs on CUDA: the bandwidth-bound split-KV kernel (``templates/decode.j2``)
and its run-time-split combine (``templates/decode_combine.j2``).

Decoding reads the whole KV cache for a handful of query rows, so its floor is the time to
read K and V once.  This path differs from the generic SIMT template in what that needs:
one CTA per (batch, kv head, row tile, split) serves every query head of the KV group
(GQA packing), K/V rows go straight from HBM into registers as 16-byte vectors with several
in flight per thread, dot products reduce across a warp with shuffles, and the number of
splits is chosen at run time from the batch (``schedules/decode_cuda.py``), so one build
fills the GPU at every batch size.

Same calling convention as the rest of the family (``attngen/softmax/__init__.py``): inputs
and outputs are unchanged; the scratch is ``o_parts [batch, H, q_len, max_split, Dv]`` and
``lse_parts [batch, H, q_len, max_split]`` whatever ``Decode.split_kv`` says (that field
fixes the generic template's split; here the split is a run-time choice bounded by the
``max_split`` knob).  Kernels, in call order: ``decode``, ``decode_combine``.

:func:`supports` says which specs take this path; the others keep ``lower.lower``'s.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional

from .. import expr as E
from ..family import Arg, Call, Lowered
from ..render import parse, render
from ..resources import load_schedule
from ..spec import Attention
from . import kv_range, predicate, signature as sig

LOG2E = 1.0 / math.log(2.0)
LN2 = math.log(2.0)
NEG = -1e30  # the masked logit: finite, so m - m_new never evaluates inf - inf


def schedule_module(spec: Optional[Attention] = None):
    """The decode schedule; for a latent (MLA) spec, the MLA kernel's."""
    return load_schedule("decode_mla_cuda" if spec is not None and spec.latent_kv else "decode_cuda")


def supports(spec: Attention, target, config: Optional[Mapping] = None) -> bool:
    """Decode on CUDA, no quantization, K/V rows that split into 16-byte
    vectors over a power-of-two share of a warp (d = 64/128/256 in fp16/bf16), and a config
    that names only this schedule's knobs (the generic template's knobs select that one).
    A latent (MLA) cache takes ``mla_decode``'s tensor-core kernel where that supports it."""
    if spec.latent_kv:  # MLA: the latent cache's own kernel
        from . import mla_decode
        return mla_decode.supports(spec, target, config)
    sched = schedule_module()
    return (target.is_cuda and spec.is_decode and spec.quant is None
            and sched.fits(spec) and set(config or {}) <= set(sched.KNOBS))


def lower(spec: Attention, target, config: Optional[Mapping] = None) -> Lowered:
    if spec.latent_kv:
        from . import mla_decode
        return mla_decode.lower(spec, target, config)
    return lower_split_kv(spec, target, config, schedule_module(), ("decode", "decode.j2", decode_context),
                          split_count)


def lower_split_kv(spec: Attention, target, config, sched, split_kernel, count) -> Lowered:
    """A split-KV kernel and the run-time-split combine after it.  ``split_kernel`` is
    ``(func name, template, context(spec, target, cfg, args, n_split))``, ``count(spec, target,
    cfg)`` the TVMScript text of the split count (MLA decode has its own kernel and count)."""
    import tvm

    name, template, split_context = split_kernel
    cfg = {**sched.default(spec, target), **dict(config or {})}
    sched.validate(spec, target, cfg)
    args = program_args(spec, cfg)
    by_name = {a.name: a for a in args}
    n_split = count(spec, target, cfg)

    att = [a.name for a in sig.inputs(spec) if a.name != "sinks"] + ["o_parts", "lse_parts"]
    comb = ["o_parts", "lse_parts"] + (["sinks"] if spec.sinks else []) + ["o", "lse"]
    fused = cfg.get("fused_combine")  # the last CTA of each output tile merges the splits itself
    if fused:
        att = att + [n for n in comb if n not in att] + ["split_done"]
    kernels = [(name, template, split_context(spec, target, cfg, [by_name[n] for n in att], n_split), att)]
    if not fused:
        kernels.append(("decode_combine", "decode_combine.j2",
                        combine_context(spec, [by_name[n] for n in comb], n_split, cfg["max_split"],
                                        cfg["pdl"]), comb))
    funcs = {fname: parse(render(tpl, name=fname, **ctx)) for fname, tpl, ctx, _ in kernels}
    mod = sched.schedule(tvm.IRModule(funcs), spec, target, cfg)
    calls = tuple(Call(fname, tuple(names)) for fname, _, _, names in kernels)
    return Lowered(mod, args, calls)


def program_args(spec: Attention, cfg) -> tuple:
    H, Dv, L, S = spec.num_heads, spec.head_dim_v, spec.phase.q_len, cfg["max_split"]
    scratch = (Arg("o_parts", ("batch", H, L, S, Dv), "float32", "scratch"),
               Arg("lse_parts", ("batch", H, L, S), "float32", "scratch"))
    if cfg.get("fused_combine"):  # splits of each output tile that have finished (MLA: CTAs of a split)
        from .mla_decode import row_tiles

        scratch += (Arg("split_done", ("batch", spec.num_kv_heads * row_tiles(spec)), "int32", "scratch",
                        zeroed=True),)
    return sig.inputs(spec) + sig.outputs(spec) + scratch


def split_count(spec: Attention, target, cfg) -> str:
    """TVMScript text (in the batch ``B``) of the run-time split count: enough CTAs for
    ``ctas_per_sm`` per SM, at most ``max_split``."""
    row_tiles = -(-schedule_module().packed_rows(spec) // cfg["rows"])
    per_split = spec.num_kv_heads * row_tiles  # CTAs of one split
    want = max(1, target.sm_count) * cfg["ctas_per_sm"]
    return f"T.max(T.min(({want} + B * {per_split} - 1) // (B * {per_split}), {cfg['max_split']}), 1)"


def decode_context(spec: Attention, target, cfg, args, n_split: str) -> dict:
    sched = schedule_module()
    G, QL = spec.group_size, spec.phase.q_len
    packed = sched.packed_rows(spec)
    rows = min(cfg["rows"], packed)
    vec, lanes = sched.vector_lanes(spec)
    # packed row p (clamped into the tile) is query p // G of head vhk * G + p % G
    row_q, row_head = f"(p // {G})", f"(vhk * {G} + p % {G})"

    if spec.is_paged:
        P = spec.kv_layout.page_size
        kv_len_of_b = f"T.max(T.min(KV_LENS[vb], MP * {P}), 0)"
        at = f"PAGE_TABLE[vb, kc // {P}], vhk, kc % {P}"
    else:
        kv_len_of_b = "T.max(T.min(KV_LENS[vb], LK), 0)"
        at = "vb, vhk, kc"

    names = {"b": "vb", "h": row_head, "q_idx": row_q, "kv_idx": "key",
             "q_len": str(QL), "kv_len": "kvl"}
    mask = predicate.mask_expr(spec)
    visible = "T.bool(True)" if mask.same(E.true()) else predicate.tir(mask, names, spec)
    mod = predicate.score_expr(spec)
    if mod is None:  # scale*log2(e) folded into Q
        logit, q_prescale = "s[u, r]", spec.scale * LOG2E
    else:  # the score mod sees the natural score
        logit = f"({predicate.tir(mod, {**names, 'score': 's[u, r]'}, spec)}) * T.float32({LOG2E!r})"
        q_prescale = spec.scale
    lo, hi = kv_range.render_range(kv_range.visible_keys(mask), {"q_len": str(QL), "kv_len": "kvl"},
                                   first_row="q_first", last_row="q_last")
    kpw = 32 // lanes
    groups = cfg["warps"] * kpw
    offsets = [lanes >> i for i in range(1, lanes.bit_length())]
    # transposing butterfly over the first log2(rows) xor steps: at step k a lane keeps the
    # half of its rows picked by its bit `offsets[k]`, so its row is sum_k bit_k * rows / 2^(k+1)
    butterfly = bool(cfg["butterfly"]) and sched.butterfly_fits(spec, cfg)
    steps = [(offsets[k], rows >> (k + 1)) for k in range(rows.bit_length() - 1)] if butterfly else []
    own_row = " + ".join(f"cl // {off} % 2 * {half}" for off, half in steps) or "0"
    row_lane = " + ".join(f"r // {half} % 2 * {off}" for off, half in steps) or "0"
    return dict(
        params=sig.tir_params(args, spec), size_vars=sig.size_vars(args), dtype=spec.dtype,
        head_dim=spec.head_dim, num_kv_heads=spec.num_kv_heads, group=G, q_len=QL,
        packed=packed, rows=rows, row_tiles=-(-packed // rows), warps=cfg["warps"],
        lanes=lanes, vec=vec, kpw=kpw, groups=groups, keys_per_thread=cfg["keys_per_thread"],
        chunk=groups * cfg["keys_per_thread"], stages=cfg["stages"], ring_stages=sched.ring_stages(cfg),
        l2_prefetch=cfg["l2_prefetch"], pdl=cfg["pdl"],
        shuffle_offsets=offsets, butterfly=butterfly, butterfly_steps=steps, own_row=own_row,
        row_lane=row_lane,
        n_split=n_split, kv_len_of_b=kv_len_of_b, k_at=at, v_at=at, row_q=row_q,
        row_head=row_head, visible=visible, logit=logit, kv_lo=lo, kv_hi=hi,
        q_prescale=repr(q_prescale), neg=repr(NEG), ln2=repr(LN2))


def combine_context(spec: Attention, args, n_split: str, max_split: int, pdl: bool) -> dict:
    return dict(params=sig.tir_params(args, spec), size_vars=sig.size_vars(args), dtype=spec.dtype,
                num_heads=spec.num_heads, head_dim_v=spec.head_dim_v, q_len=spec.phase.q_len,
                n_split=n_split, max_split=max_split, sinks=spec.sinks, pdl=pdl)
