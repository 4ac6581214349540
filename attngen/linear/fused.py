"""The fused recurrent kernel: a linear-attention spec in the recurrent form lowered to
``templates/linear_recurrent_fused.j2``, the state held in registers for the whole sequence.

This is the decode path (one token per call, the state updated in place: ``step``) and the
short-sequence path.  The template is written at warp level, so this module checks the scope
and fills in sizes; ``schedules/linear_cuda_fused.py`` picks the lanes per value column and the
warps per CTA.  Scope (``unsupported_reason``): CUDA, the recurrent form, features identity /
elu1 / relu (performer's projection keeps the SIMT kernel), any gate, additive or delta
update, with or without the normaliser, head_dim a multiple of 8.
"""
from __future__ import annotations

from typing import Mapping, Optional

from . import signature
from ..family import Call, Lowered
from ..render import parse, render
from ..resources import load_schedule
from ..spec import LinearAttention

SCHEDULE = "linear_cuda_fused"
KERNEL = "linear_recurrent_fused"
FEATURES = ("identity", "elu1", "relu")


def unsupported_reason(spec: LinearAttention, target) -> Optional[str]:
    """Why ``spec`` cannot take the fused recurrent kernel on ``target`` (None: it can)."""
    if not target.is_cuda:
        return "not a CUDA target"
    if spec.form != "recurrent":
        return f"the {spec.form} form"
    if spec.feature_map not in FEATURES:
        return f"feature_map {spec.feature_map!r} (a projection per token)"
    if spec.head_dim % 8:
        return f"head_dim {spec.head_dim} (16-byte loads of q and k need a multiple of 8)"
    if not load_schedule(SCHEDULE).candidates(spec, target):
        return (f"no lanes-per-column split of head_dim {spec.head_dim} and head_dim_v "
                f"{spec.head_dim_v} fits the register budget")
    return None


def schedule_name(spec: LinearAttention) -> str:
    """The schedule module whose knobs the fused kernel takes."""
    return SCHEDULE


def supported(spec: LinearAttention, target) -> bool:
    return unsupported_reason(spec, target) is None


def lower(spec: LinearAttention, target, config: Optional[Mapping] = None) -> Lowered:
    import tvm

    reason = unsupported_reason(spec, target)
    if reason is not None:
        raise NotImplementedError(f"fused recurrent linear attention: {reason}")
    sched = load_schedule(SCHEDULE)
    cfg = {**sched.default(spec, target), **dict(config or {})}
    sched.validate(spec, target, cfg)
    args = signature.args(spec)
    text = render("linear_recurrent_fused.j2", name=KERNEL, **context(spec, cfg))
    mod = sched.schedule(tvm.IRModule({KERNEL: parse(text)}), spec, target, cfg)
    return Lowered(mod, args, (Call(KERNEL, tuple(a.name for a in args)),))


def context(spec: LinearAttention, cfg) -> dict:
    lpc, warps, cpl = cfg["lanes_per_column"], cfg["warps"], cfg["columns_per_lane"]
    cols = 32 // lpc * cpl
    rows = spec.feature_dim // lpc
    shuffle_offsets = [1 << i for i in range(lpc.bit_length() - 1)]
    return dict(dtype=spec.dtype, H=spec.num_heads, D=spec.head_dim, F=spec.feature_dim,
                DV=spec.head_dim_v, lpc=lpc, R=rows, cpl=cpl, cols=cols, warps=warps,
                NV=spec.head_dim_v // (cols * warps), feature_map=spec.feature_map,
                gate=spec.gate, delta=spec.update == "delta",
                normalize=signature.has_normaliser(spec), mlstm=spec.gate == "mlstm", bonus=spec.bonus,
                scale=repr(float(spec.scale)), shuffle_offsets=shuffle_offsets,
                vec=next(n for n in (8, 4, 2, 1) if rows % n == 0))
