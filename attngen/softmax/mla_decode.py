"""Absorbed-MLA decode on CUDA (``templates/decode_mla.j2`` + ``templates/decode_combine.j2``):
the latent cache read once for all query heads of its KV head, on tensor cores.

MLA in the weight-absorbed form (DeepSeek-V2/V3, methods.md 2.3) is MQA over a latent cache:
key row = [c_kv ; k_rope] (r_kv + d_R channels), value = c_kv (its first head_dim_v channels),
``Attention(latent_kv=True)``.  Per cache byte it does ~15x the arithmetic of a GQA-4 decode
(every latent row meets 16 query heads in both products), more than SIMT lanes issue in the
time HBM takes to deliver the byte, so unlike ``decode.py`` this kernel runs both products
on mma.sync.  Same calling convention and scratch as ``decode.py``: inputs and outputs as the
family's, ``o_parts [batch, H, q_len, max_split, Dv]`` and ``lse_parts``; kernels, in call
order: ``decode_mla``, ``decode_combine`` (the run-time split count is shared text); with the
knob ``fused_combine``, ``decode_mla`` alone (its last CTA per output tile merges the splits,
counting arrivals in the zero-filled scratch ``split_done``).
"""
from __future__ import annotations

from typing import Mapping, Optional

from .. import expr as E
from ..family import Lowered
from ..resources import load_schedule
from ..spec import Attention
from . import kv_range, predicate, signature as sig

MMA_DTYPE = {"float16": "fp16", "bfloat16": "bf16"}


def schedule_module():
    return load_schedule("decode_mla_cuda")


def supports(spec: Attention, target, config: Optional[Mapping] = None) -> bool:
    """CUDA decode of a latent (MLA) cache, no quantization, shapes the mma tiles cover, and a
    config that names only this schedule's knobs."""
    sched = schedule_module()
    return (target.is_cuda and spec.is_decode and spec.latent_kv and spec.quant is None
            and not sched.shape_problems(spec) and set(config or {}) <= set(sched.KNOBS))


def lower(spec: Attention, target, config: Optional[Mapping] = None) -> Lowered:
    from .decode import lower_split_kv

    return lower_split_kv(spec, target, config, schedule_module(), ("decode_mla", "decode_mla.j2", context),
                          split_count)


def row_tiles(spec: Attention) -> int:
    return -(-spec.group_size * spec.phase.q_len // 16)


def split_count(spec: Attention, target, cfg) -> str:
    """TVMScript text (in the batch ``B``) of the run-time split count: the most splits that
    keep the grid within ``ctas_per_sm`` CTAs per SM (rounded down: one CTA fills an SM's
    shared memory, so a tail of a few CTAs would cost a whole extra wave), in [1, max_split]."""
    per_split = spec.num_kv_heads * row_tiles(spec)  # CTAs of one split
    want = max(1, target.sm_count) * cfg["ctas_per_sm"]
    return f"T.max(T.min({want} // (B * {per_split}), {cfg['max_split']}), 1)"


def stream_k_ctas(spec: Attention, target, cfg) -> str:
    """TVMScript text (in ``B``) of the stream-K grid: one wave of ``ctas_per_sm`` CTAs per SM,
    fewer where a tile would take more than ``max_split`` partials (a tile's keys touch at most
    ceil(CTAs / tiles) + 1 CTAs)."""
    tiles = spec.num_kv_heads * row_tiles(spec)
    want = max(1, target.sm_count) * cfg["ctas_per_sm"]
    return f"T.max(T.min({want}, B * {tiles} * {cfg['max_split'] - 1}), 1)"


def context(spec: Attention, target, cfg, args, n_split: str) -> dict:
    from .decode import LN2, LOG2E, NEG

    sched = schedule_module()
    G, QL = spec.group_size, spec.phase.q_len
    row_q, row_head = f"(p // {G})", f"(vhk * {G} + p % {G})"
    if spec.is_paged:
        P = spec.kv_layout.page_size
        kv_len_of_b = f"T.max(T.min(KV_LENS[vb], MP * {P}), 0)"
        page_of = f"PAGE_TABLE[vb, kc // {P}]"
        k_at, k_at_pg = f"{page_of}, vhk, kc % {P}", f"pg[0], vhk, kc % {P}"
    else:
        kv_len_of_b = "T.max(T.min(KV_LENS[vb], LK), 0)"
        k_at, k_at_pg, page_of = "vb, vhk, kc", "", ""
    names = {"b": "vb", "h": row_head, "q_idx": row_q, "kv_idx": "key", "q_len": str(QL), "kv_len": "kvl"}
    mask = predicate.mask_expr(spec)
    visible = "T.bool(True)" if mask.same(E.true()) else predicate.tir(mask, names, spec)
    mod = predicate.score_expr(spec)
    if mod is None:
        logit = f"s[i] * T.float32({spec.scale * LOG2E!r})"
    else:  # the score mod sees the natural score
        natural = f"(s[i] * T.float32({spec.scale!r}))"
        logit = f"({predicate.tir(mod, {**names, 'score': natural}, spec)}) * T.float32({LOG2E!r})"
    lo, hi = kv_range.render_range(kv_range.visible_keys(mask), {"q_len": str(QL), "kv_len": "kvl"},
                                   first_row="q_first", last_row="q_last")
    return dict(
        params=sig.tir_params(args, spec), size_vars=sig.size_vars(args), dtype=spec.dtype,
        mma_dtype=MMA_DTYPE[spec.dtype], head_dim=spec.head_dim, head_dim_v=spec.head_dim_v,
        num_kv_heads=spec.num_kv_heads, group=G, packed=G * QL, row_tiles=row_tiles(spec),
        warps=cfg["warps"], block_n=sched.block_n(cfg), stages=cfg["stages"], pad=sched.PAD,
        **{k: cfg[k] for k in ("l2_prefetch", "bulk_copy", "fused_combine", "max_split", "stream_k",
                               "qk_chains", "step_barriers", "qk_split", "lazy_rescale", "pdl")},
        sinks=spec.sinks, kv_tiles=spec.num_kv_heads * row_tiles(spec),
        n_cta=stream_k_ctas(spec, target, cfg), n_split=n_split, kv_len_of_b=kv_len_of_b, k_at=k_at,
        k_at_pg=k_at_pg, page_of=page_of, row_q=row_q, row_head=row_head,
        visible=visible, logit=logit, kv_lo=lo, kv_hi=hi, neg=repr(NEG), ln2=repr(LN2))
