"""The delta rule (DeltaNet, and Gated DeltaNet with a scalar gate) on tensor cores, as two
kernels in the structure of flash-linear-attention's chunk_delta_rule:

1. ``linear_delta_wy_tc`` (``templates/linear_delta_wy_tc.j2``), parallel over every (batch,
   head, chunk): the chunk's UT transform T = (I + L)^-1 in fp32 and W = T diag(beta exp(b)) K,
   U = T diag(beta) V, written to the scratch buffers ``w`` and ``u`` in the spec's dtype.
2. the chunk scan of the additive kernel with V replaced by the pseudo-values V' = U - W S,
   in one of two forms (knob ``passes``):

   * ``passes = 1`` (the default): ``linear_delta_tc`` (``templates/linear_delta_tc.j2``) does
     all of it in the sequential loop, without a scratch round trip.
   * ``passes = 2`` (fla's chunk_gated_delta_rule_fwd_h + chunk_fwd_o):
     ``linear_delta_state_tc`` (``templates/linear_delta_state_tc.j2``) runs only the chain
     that is sequential over chunks (V' = U - W S, then the state update) and writes each
     chunk's entering state and V' to scratch; ``linear_delta_out_tc``
     (``templates/linear_delta_out_tc.j2``) then computes every chunk's output in parallel.
     Slower on an H200 at 4096 and 16384 tokens (``schedules/linear_delta_cuda_tc.py``).

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
STATE_KERNEL = "linear_delta_state_tc"
OUT_KERNEL = "linear_delta_out_tc"
GATES = (None, "scalar")


def scratch(spec: LinearAttention, passes: int) -> tuple:
    """W and U of every chunk, passed from the WY kernel to the scan; with two passes also V'
    and every chunk's entering state, passed from the state pass to the output pass (all
    16-bit, like fla's)."""
    from .tensorcore import CHUNK

    tokens = signature.tokens(spec)
    out = (Arg("w", tokens + (spec.head_dim,), spec.dtype, "scratch"),
           Arg("u", tokens + (spec.head_dim_v,), spec.dtype, "scratch"))
    if passes == 2:
        chunks = ("batch", spec.num_heads, f"q_len/{CHUNK}", spec.head_dim, spec.head_dim_v)
        out += (Arg("v_new", tokens + (spec.head_dim_v,), spec.dtype, "scratch"),
                Arg("h_chunk", chunks, spec.dtype, "scratch"))
    return out


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
    bv, dv, scale = cfg["value_block"], spec.head_dim_v, repr(float(spec.scale))
    g = ("g",) if gated else ()
    funcs = {WY_KERNEL: parse(render("linear_delta_wy_tc.j2", name=WY_KERNEL, **common))}
    calls = [Call(WY_KERNEL, ("k", "v") + g + ("beta", "w", "u"))]
    if cfg["passes"] == 1:
        funcs[SCAN_KERNEL] = parse(render("linear_delta_tc.j2", name=SCAN_KERNEL, BV=bv, NV=dv // bv,
                                          scale=scale, stages=cfg["stages"], **common))
        calls.append(Call(SCAN_KERNEL, ("q", "k") + g + ("w", "u", "initial_state", "o", "final_state")))
    else:
        obv = cfg["out_value_block"]
        funcs[STATE_KERNEL] = parse(render("linear_delta_state_tc.j2", name=STATE_KERNEL, BV=bv,
                                           NV=dv // bv, stages=cfg["stages"], **common))
        funcs[OUT_KERNEL] = parse(render("linear_delta_out_tc.j2", name=OUT_KERNEL, BV=obv,
                                         NV=dv // obv, scale=scale, **common))
        calls += [Call(STATE_KERNEL, ("k",) + g + ("w", "u", "initial_state", "v_new", "h_chunk",
                                                   "final_state")),
                  Call(OUT_KERNEL, ("q", "k") + g + ("v_new", "h_chunk", "o"))]
    mod = sched.schedule(tvm.IRModule(funcs), spec, target, cfg)
    return Lowered(mod, signature.args(spec) + scratch(spec, cfg["passes"]), tuple(calls))
