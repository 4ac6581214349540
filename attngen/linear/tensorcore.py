"""The tensor-core chunkwise kernel: a linear-attention spec with a scalar decay (none, RetNet's
fixed one, or Mamba2/SSD's data-dependent one) lowered to ``templates/linear_chunk_tc.j2``.

The template is written at warp level (mma.sync.m16n8k16 fragments, ldmatrix, cp.async), so
this module only checks the scope and fills in sizes; ``schedules/linear_cuda_tc.py`` picks the
value block.  Scope (``unsupported_reason``): the chunkwise form on sm_80 or later, float16 or
bfloat16, identity features, additive update (the delta rule: ``delta_tc``), no normaliser, gate None / "fixed" / "scalar",
chunk_size 64, head_dim 64 or 128 (16-row m-tiles of the state split evenly over 4 warps) and
head_dim_v a multiple of 16.  Every other linear spec keeps the SIMT kernels of
``schedules/linear_cuda.py``.  The calling convention is the family's (``attngen.linear``).
"""
from __future__ import annotations

import math
from typing import Mapping, Optional

from . import delta_tc, signature
from ..family import Call, Lowered
from ..render import parse, render
from ..resources import load_schedule
from ..spec import LinearAttention

SCHEDULE = "linear_cuda_tc"
KERNEL = "linear_chunk_tc"
MMA_DTYPE = {"float16": "fp16", "bfloat16": "bf16"}
CHUNK = 64  # 4 warps of 16 query rows
PAD = 8  # elements of padding per shared-memory row: 16 B, one bank group


def unsupported_reason(spec: LinearAttention, target) -> Optional[str]:
    """Why ``spec`` cannot take the tensor-core kernel on ``target`` (None: it can)."""
    if not target.is_cuda:
        return "not a CUDA target"
    digits = "".join(ch for ch in (target.arch or "")[3:] if ch.isdigit())
    if not digits or int(digits) < 80:
        return f"mma.sync.m16n8k16 with bf16 needs sm_80 or later, target is {target.arch}"
    if spec.form != "chunkwise":
        return f"the {spec.form} form"
    if spec.dtype not in MMA_DTYPE:
        return f"dtype {spec.dtype} (tensor cores take float16 or bfloat16)"
    if spec.feature_map != "identity":
        return f"feature_map {spec.feature_map!r}"
    if spec.update not in ("additive", "delta"):
        return f"the {spec.update} update"
    if spec.update == "delta" and spec.gate not in delta_tc.GATES:
        return f"gate {spec.gate!r} with the delta rule (None or 'scalar')"
    if spec.normalize:
        return "normalize"
    if spec.gate not in (None, "fixed", "scalar"):
        return f"gate {spec.gate!r} (a per-channel decay)"
    if spec.chunk_size != CHUNK:
        return f"chunk_size {spec.chunk_size} (the kernel's chunk is {CHUNK})"
    if spec.head_dim not in (64, 128):
        return f"head_dim {spec.head_dim} (64 or 128)"
    if spec.head_dim_v % 16 or spec.head_dim_v > 256:
        return f"head_dim_v {spec.head_dim_v} (a multiple of 16 up to 256)"
    return None


def supported(spec: LinearAttention, target) -> bool:
    return unsupported_reason(spec, target) is None


def schedule_name(spec: LinearAttention) -> str:
    """The schedule module whose knobs the spec's tensor-core kernel(s) take."""
    return delta_tc.SCHEDULE if spec.update == "delta" else SCHEDULE


def lower(spec: LinearAttention, target, config: Optional[Mapping] = None) -> Lowered:
    import tvm

    reason = unsupported_reason(spec, target)
    if reason is not None:
        raise NotImplementedError(f"tensor-core linear attention: {reason}")
    if spec.update == "delta":
        return delta_tc.lower(spec, target, config)
    sched = load_schedule(SCHEDULE)
    cfg = {**sched.default(spec, target), **dict(config or {})}
    sched.validate(spec, target, cfg)
    args = signature.args(spec)
    text = render("linear_chunk_tc.j2", name=KERNEL, **context(spec, cfg))
    mod = sched.schedule(tvm.IRModule({KERNEL: parse(text)}), spec, target, cfg)
    return Lowered(mod, args, (Call(KERNEL, tuple(a.name for a in args)),))


def context(spec: LinearAttention, cfg) -> dict:
    bv = cfg["value_block"]
    return dict(dtype=spec.dtype, mma_dtype=MMA_DTYPE[spec.dtype], H=spec.num_heads,
                D=spec.head_dim, DV=spec.head_dim_v, BV=bv, NV=spec.head_dim_v // bv, C=CHUNK,
                gate=spec.gate, scale=repr(float(spec.scale)), log2e=repr(1.0 / math.log(2.0)),
                pad=PAD)
