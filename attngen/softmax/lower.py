"""Spec -> template context -> TensorIR -> scheduled IRModule (a :class:`Lowered` program).

The program is one to four kernels, called in this order:

* ``quantize_k``, ``quantize_q`` (``quant.qk == "int8"``): Sage's Ψ into INT8 scratch buffers;
* ``attention``: the online-softmax kernel of ``templates/attention.j2`` (SIMT), or for the CUDA
  prefill specs it supports the tensor-core kernel of ``templates/attention_tc.j2``
  (``softmax/tensorcore.py``, which lowers it on its own);
* ``combine`` (``Decode(split_kv > 1)``): the log-sum-exp merge of the split partials.

This module decides *what* each kernel computes (the mask and score-mod text, the loads of a
paged or latent cache, where results go); the schedule module of the target decides how
(tile sizes, buffer scopes, thread bindings) and declares its knobs.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional

from .. import expr as E
from ..family import Call, Lowered
from ..render import parse, render
from ..resources import load_schedule
from ..spec import Attention
from . import kv_range, predicate, signature as sig

LOG2E = 1.0 / math.log(2.0)
LN2 = math.log(2.0)
NEG = -1e30  # the masked logit: finite, so m - m_new never evaluates inf - inf


def schedule_module(target):
    return load_schedule("attention_cpu" if target.kind == "llvm" else "attention_cuda")


def check_supported(spec: Attention) -> None:
    """Raise NotImplementedError, naming the field, for what these kernels do not do yet."""
    q = spec.quant
    if q is None:
        return
    if q.pv is not None:
        raise NotImplementedError(f"Attention.quant.pv={q.pv!r}: FP8 P/V (SageAttention2) is not "
                                  "implemented for the SIMT kernels")
    if q.qk != "int8":
        raise NotImplementedError(f"Attention.quant.qk={q.qk!r}: only 'int8' is implemented")
    if spec.is_decode or spec.is_paged:
        raise NotImplementedError("Attention.quant with a KV cache (phase=Decode or kv_layout=Paged):"
                                  " quantization is implemented for contiguous prefill only")
    if spec.score_mod is not None or spec.sinks:
        # the kernel would compose them, but the quantized reference has neither to check it
        raise NotImplementedError("Attention.quant with a score_mod or sinks: "
                                  "attngen.reference.quant.quantized_attention models neither")


def lower(spec: Attention, target, config: Optional[Mapping] = None) -> Lowered:
    import tvm

    check_supported(spec)
    # -- bandwidth-bound decode (issue 5): CUDA Decode specs it supports take decode.j2, unless
    # the config names a knob of the generic SIMT schedule; everything else stays below
    from . import decode
    if decode.supports(spec, target, config):
        return decode.lower(spec, target, config)
    # -- tensor-core prefill (issue 3): CUDA prefill specs it supports take attention_tc.j2,
    # unless the config names a SIMT knob; everything else keeps the SIMT kernel below
    from . import tensorcore
    if tensorcore.supported(spec, target) and not set(config or {}) & {"block_q", "block_k"}:
        return tensorcore.lower(spec, target, config)
    sched = schedule_module(target)
    cfg = {**sched.default(spec, target), **dict(config or {})}
    sched.validate(spec, target, cfg)
    scope = sched.scopes(spec, target, cfg)
    args = sig.program_args(spec)
    by_name = {a.name: a for a in args}

    kernels = []  # (func name, template, context, arg names)
    if spec.quant is not None:
        kernels += quant_kernels(spec)
    att_args = attention_arg_names(spec)
    kernels.append(("attention", "attention.j2",
                    attention_context(spec, cfg, scope, [by_name[n] for n in att_args]), att_args))
    if split_kv(spec) > 1:
        comb_args = ["o_parts", "lse_parts"] + (["sinks"] if spec.sinks else []) + ["o", "lse"]
        kernels.append(("combine", "attention_combine.j2",
                        combine_context(spec, [by_name[n] for n in comb_args]), comb_args))

    funcs = {}
    for fname, template, ctx, names in kernels:
        text = render(template, name=fname, **ctx)
        funcs[fname] = parse(text)
    mod = sched.schedule(tvm.IRModule(funcs), spec, target, cfg)
    calls = tuple(Call(fname, tuple(names)) for fname, _, _, names in kernels)
    return Lowered(mod, args, calls)


def split_kv(spec: Attention) -> int:
    return spec.phase.split_kv if spec.is_decode else 1


# ----------------------------------------------------------------------------- attention


def attention_arg_names(spec: Attention) -> list:
    names = [a.name for a in sig.inputs(spec)]
    if spec.quant is not None:  # Ψ replaced q and k by codes and scales
        names = ["q_int8", "q_scale", "k_int8", "k_scale"] + [n for n in names if n not in ("q", "k")]
        names.append("lse_shift")
    if split_kv(spec) > 1:  # the sink joins in `combine`, once per row
        names = [n for n in names if n != "sinks"] + ["o_parts", "lse_parts"]
    else:
        names += ["o", "lse"]
    return names


def attention_context(spec: Attention, cfg, scope, args) -> dict:
    G, D, Dv = spec.group_size, spec.head_dim, spec.head_dim_v
    BQ, BK = cfg["block_q"], cfg["block_k"]
    packed = spec.layout == "thd"
    q_len = str(spec.phase.q_len) if spec.is_decode else "LQ"
    if packed:  # each sequence's own lengths, from the cumulative offsets
        q_len = "(CU_SEQLENS_Q[vb + 1] - CU_SEQLENS_Q[vb])"
    quant = spec.quant is not None
    # packed row vr of the tile is query p // G of head hk * G + p % G, with p = p0 + vr
    if G == 1:
        row_q, row_head = f"T.min(p0 + vr, {q_len} - 1)", "vhk"
    else:
        row_q, row_head = f"T.min((p0 + vr) // {G}, {q_len} - 1)", f"vhk * {G} + T.floormod(p0 + vr, {G})"

    if packed:
        kv_len_of_b = "(CU_SEQLENS_K[vb + 1] - CU_SEQLENS_K[vb])"
    elif spec.is_paged:
        kv_len_of_b = f"T.min(KV_LENS[vb], MP * {spec.kv_layout.page_size})"
    elif spec.is_decode:
        kv_len_of_b = "T.min(KV_LENS[vb], LK)"
    else:
        kv_len_of_b = "LK"
    kpos = "T.min(kv0 + vj, kvl - 1)"
    if spec.is_paged:
        P = spec.kv_layout.page_size
        at = f"PAGE_TABLE[vb, {kpos} // {P}], vhk, T.floormod({kpos}, {P})"
    elif packed:
        at = f"CU_SEQLENS_K[vb] + {kpos}, vhk"
    elif spec.layout == "bshd":
        at = f"vb, {kpos}, vhk"
    else:
        at = f"vb, vhk, {kpos}"
    k_elem = f"{'K_INT8' if quant else 'K'}[{at}, vc]"
    v_elem = f"V[{at}, vc]"

    names = {"b": "vb", "h": row_head, "q_idx": row_q, "kv_idx": "(kv0 + vj)",
             "q_len": q_len, "kv_len": "kvl"}
    mask = predicate.mask_expr(spec)
    visible = "kv0 + vj < kvl"
    if not mask.same(E.true()):
        visible = f"T.And({visible}, {predicate.tir(mask, names, spec)})"

    # Sdot holds q.k times q_prescale: scale*log2(e) folds the softmax scale and exp -> exp2
    # into Q; a score mod needs the natural score, so then Q carries the scale only
    mod = predicate.score_expr(spec)
    if quant:  # Sage folds scale*log2(e) into Q before quantizing
        # the key's block scale straight from memory: one load per logit, no tile of scales
        k_scale = f"K_SCALE[vb, vhk, {kpos} // {spec.quant.block_k}]"
        raw = f"T.Cast(\"float32\", Sdot[vr, vj]) * q_scale[vr] * {k_scale}"
        natural = f"({raw}) * T.float32({LN2!r})"
        q_prescale = None
    elif mod is None:
        raw = "Sdot[vr, vj]"
        q_prescale = spec.scale * LOG2E
    else:
        raw = natural = "Sdot[vr, vj]"
        q_prescale = spec.scale
    if mod is None:
        logit = raw
    else:
        logit = f"({predicate.tir(mod, {**names, 'score': natural}, spec)}) * T.float32({LOG2E!r})"

    lo, hi = kv_range.render_range(kv_range.visible_keys(mask), {"q_len": q_len, "kv_len": "kvl"},
                                   first_row="q_first", last_row="q_last")

    n_split = split_kv(spec)
    if n_split > 1:
        out_o, out_lse = f"O_PARTS[vb, {row_head}, {row_q}, vsp, vc]", f"LSE_PARTS[vb, {row_head}, {row_q}, vsp]"
        out_o_dtype = "float32"
    else:
        out_o, out_lse = f"O[vb, {row_head}, {row_q}, vc]", f"LSE[vb, {row_head}, {row_q}]"
        if packed:
            row = f"CU_SEQLENS_Q[vb] + {row_q}"
            out_o, out_lse = f"O[{row}, {row_head}, vc]", f"LSE[{row_head}, {row}]"
        elif spec.layout == "bshd":
            out_o = f"O[vb, {row_q}, {row_head}, vc]"
        out_o_dtype = spec.dtype
    lse_shift = f" + LSE_SHIFT[vb, {row_head}, {row_q}]" if quant else ""

    params = sig.tir_params(args, spec)
    return dict(
        params=params, size_vars=sig.size_vars(args), dtype=spec.dtype, head_dim=D, head_dim_v=Dv,
        num_kv_heads=spec.num_kv_heads, group=G, q_len=q_len, block_q=BQ, block_k=BK, scope=scope,
        batch="(NB - 1)" if packed else "B", q_rows="TQ" if packed else q_len,
        q_elem=_q_elem(spec, row_q, row_head),
        kv_len_of_b=kv_len_of_b, k_elem=k_elem, v_elem=v_elem,
        row_q=row_q, row_head=row_head, visible=visible, logit=logit, kv_lo=lo, kv_hi=hi,
        q_prescale=repr(q_prescale), quant=quant,
        block_q_quant=spec.quant.block_q if quant else None, latent=spec.latent_kv,
        sinks=spec.sinks and n_split == 1, n_split=n_split,
        tile_reads=_regions([p for p, a in zip(params, args) if a.role == "in" or a.name in _INTERNAL_IN]),
        tile_writes=_regions([p for p, a in zip(params, args) if a.name in _OUTPUTS]),
        out_o=out_o, out_lse=out_lse, out_o_dtype=out_o_dtype, lse_shift=lse_shift,
        neg=repr(NEG), log2e=repr(LOG2E), ln2=repr(LN2))


def _q_elem(spec: Attention, row_q: str, row_head: str) -> str:
    """Q's element (row_q, vc) of head row_head in the spec's layout.  A packed tile past its
    sequence's end (q_len 0) clamps its row into the tensor: it reads, but stores nothing."""
    if spec.layout == "thd":
        return f"Q[T.min(CU_SEQLENS_Q[vb] + T.max({row_q}, 0), TQ - 1), {row_head}, vc]"
    if spec.layout == "bshd":
        return f"Q[vb, {row_q}, {row_head}, vc]"
    return f"Q[vb, {row_head}, {row_q}, vc]"


_INTERNAL_IN = ("q_int8", "q_scale", "k_int8", "k_scale", "lse_shift")
_OUTPUTS = ("o", "lse", "o_parts", "lse_parts")


def _regions(params) -> str:
    """Whole-buffer regions ``X[0:n0, 0:n1, ...]`` for a block's T.reads / T.writes."""
    return ", ".join(f"{buf}[{', '.join(f'0:{d}' for d in dims)}]" for _, buf, dims, _ in params)


# ----------------------------------------------------------------------------- combine


def combine_context(spec: Attention, args) -> dict:
    return dict(params=sig.tir_params(args, spec), size_vars=sig.size_vars(args), dtype=spec.dtype,
                num_heads=spec.num_heads, head_dim_v=spec.head_dim_v, q_len=spec.phase.q_len,
                n_split=spec.phase.split_kv, sinks=spec.sinks)


# ----------------------------------------------------------------------------- quantization


def quant_kernels(spec: Attention) -> list:
    """Sage Ψ (methods.md 1.4): K smoothed by its per-channel mean, then INT8 per block of
    ``block_k`` keys; Q times scale*log2(e), INT8 per block of ``block_q`` rows; plus the lse
    correction scale * q.k_mean that smoothing removed."""
    q = spec.quant
    k_args = ["k", "k_int8", "k_scale", "k_mean"]
    q_args = ["q", "k_mean", "q_int8", "q_scale", "lse_shift"]
    by_name = {a.name: a for a in sig.program_args(spec)}
    common = dict(dtype=spec.dtype, head_dim=spec.head_dim, num_heads=spec.num_heads,
                  num_kv_heads=spec.num_kv_heads, group=spec.group_size, smooth=q.smooth_k)
    k_ctx = dict(common, params=sig.tir_params([by_name[n] for n in k_args], spec),
                 size_vars=sig.size_vars([by_name[n] for n in k_args]), block=q.block_k)
    q_ctx = dict(common, params=sig.tir_params([by_name[n] for n in q_args], spec),
                 size_vars=sig.size_vars([by_name[n] for n in q_args]), block=q.block_q,
                 q_prescale=repr(spec.scale * LOG2E), scale=repr(spec.scale))
    return [("quantize_k", "attention_quantize_k.j2", k_ctx, k_args),
            ("quantize_q", "attention_quantize_q.j2", q_ctx, q_args)]
