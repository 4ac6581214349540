"""The delta rule (DeltaNet, and Gated DeltaNet with a scalar gate) on tensor cores, as two
kernels in the structure of flash-linear-attention's chunk_delta_rule:

1. ``linear_delta_wy_tc`` (``templates/linear_delta_wy_tc.j2``), parallel over every (batch,
   head, chunk): the chunk's UT transform T = (I + L)^-1 in fp32 and W = T diag(beta exp(b)) K,
   U = T diag(beta) V, written to the scratch buffers ``w`` and ``u`` in the spec's dtype.
2. ``linear_delta_tc`` (``templates/linear_delta_tc.j2``): the chunk scan of the additive
   kernel with V replaced by the pseudo-values V' = U - W S.

Scope: what ``tensorcore.unsupported_reason`` admits for the additive update, with gate None or
"scalar" (methods.md 4.11, 4.12).  Keys are expected unit-norm (the delta rule's own
requirement); beta may be anywhere in (0, 2).  Knobs: ``schedules/linear_delta_cuda_tc.py``.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional

from . import signature
from ..family import Arg, Call, Lowered
from ..render import parse, render
from ..resources import load_schedule
from ..spec import LinearAttention

SCHEDULE = "linear_delta_cuda_tc"
WY_KERNEL = "linear_delta_wy_tc"
SCAN_KERNEL = "linear_delta_tc"
GATES = (None, "scalar")


def scratch(spec: LinearAttention) -> tuple:
    """W and U of every chunk, passed from the WY kernel to the scan (16-bit, like fla's)."""
    tokens = signature.tokens(spec)
    return (Arg("w", tokens + (spec.head_dim,), spec.dtype, "scratch"),
            Arg("u", tokens + (spec.head_dim_v,), spec.dtype, "scratch"))


def lower(spec: LinearAttention, target, config: Optional[Mapping] = None) -> Lowered:
    import tvm

    from .tensorcore import CHUNK, MMA_DTYPE, PAD

    sched = load_schedule(SCHEDULE)
    cfg = {**sched.default(spec, target), **dict(config or {})}
    sched.validate(spec, target, cfg)
    gated = spec.gate == "scalar"
    common = dict(dtype=spec.dtype, mma_dtype=MMA_DTYPE[spec.dtype], H=spec.num_heads,
                  D=spec.head_dim, DV=spec.head_dim_v, C=CHUNK, gate=spec.gate,
                  log2e=repr(1.0 / math.log(2.0)), pad=PAD)
    bv = cfg["value_block"]
    funcs = {
        WY_KERNEL: parse(render("linear_delta_wy_tc.j2", name=WY_KERNEL, **common)),
        SCAN_KERNEL: parse(render("linear_delta_tc.j2", name=SCAN_KERNEL, BV=bv,
                                  NV=spec.head_dim_v // bv, scale=repr(float(spec.scale)),
                                  stages=cfg["stages"], **common)),
    }
    mod = sched.schedule(tvm.IRModule(funcs), spec, target, cfg)
    g = ("g",) if gated else ()
    calls = (Call(WY_KERNEL, ("k", "v") + g + ("beta", "w", "u")),
             Call(SCAN_KERNEL, ("q", "k") + g + ("w", "u", "initial_state", "o", "final_state")))
    return Lowered(mod, signature.args(spec) + scratch(spec), calls)
