"""The tensor-core chunkwise kernels: a linear-attention spec with a scalar decay (none, RetNet's
fixed one, or Mamba2/SSD's data-dependent one) lowered to ``templates/linear_chunk_tc.j2``, with
GLA's per-key-channel decay (gate "vector") to its sibling ``templates/linear_chunk_gla_tc.j2``,
and the delta rule to the two kernels of ``attngen.linear.delta_tc``.

The templates are written at warp level (mma.sync.m16n8k16 fragments, ldmatrix, cp.async), so
this module only checks the scope and fills in sizes; ``schedules/linear_cuda_tc.py`` (and
``schedules/linear_delta_cuda_tc.py``) pick the value block.  Scope (``unsupported_reason``): the
chunkwise form on sm_80 or later, float16 or bfloat16, chunk_size 64, head_dim 64 or 128 (16-row
m-tiles of the state split evenly over 4 warps) and head_dim_v a multiple of 16, with
  * the additive update and gate None / "fixed" / "scalar" / "mlstm" (the scalar-gate kernel;
    also the elu+1 / relu feature maps and the normaliser),
  * gate "vector", with or without RWKV-6's bonus (the GLA kernel: head_dim 128, one scan thread
    per key channel, and head_dim_v a multiple of 64, 64 value columns per warp),
  * the delta rule with gate None / "scalar" (``attngen.linear.delta_tc``).
Every other linear spec keeps the SIMT kernels of
``schedules/linear_cuda.py`` (or, in the recurrent form, takes ``attngen.linear.fused``).
The calling convention is the family's (``attngen.linear``).
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
GLA_KERNEL = "linear_chunk_gla_tc"  # gate "vector"
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
    extended = spec.feature_map in ("elu1", "relu") or spec.normalize  # the scalar-gate kernel's
    if spec.feature_map not in ("identity", "elu1", "relu"):
        return f"feature_map {spec.feature_map!r}"
    if extended and (spec.update == "delta" or spec.gate == "vector"):
        return f"feature_map {spec.feature_map!r} / normalize with the delta rule or gate 'vector'"
    if spec.update not in ("additive", "delta"):
        return f"the {spec.update} update"
    if spec.update == "delta" and spec.gate not in delta_tc.GATES:
        return f"gate {spec.gate!r} with the delta rule (None or 'scalar')"
    if spec.bonus and spec.gate != "vector":
        return "RWKV-6's bonus with a gate other than 'vector' (the GLA kernel takes it)"
    if spec.gate not in (None, "fixed", "scalar", "vector", "mlstm"):
        return f"gate {spec.gate!r}"
    if spec.chunk_size != CHUNK:
        return f"chunk_size {spec.chunk_size} (the kernel's chunk is {CHUNK})"
    if spec.head_dim not in (64, 128):
        return f"head_dim {spec.head_dim} (64 or 128)"
    if spec.head_dim_v % 16 or spec.head_dim_v > 256:
        return f"head_dim_v {spec.head_dim_v} (a multiple of 16 up to 256)"
    if spec.gate == "vector":
        return _gla_reason(spec, target)
    return None


# -- gate "vector" (GLA): templates/linear_chunk_gla_tc.j2
def _gla_reason(spec: LinearAttention, target) -> Optional[str]:
    if spec.head_dim != 128:
        return (f"gate 'vector' with head_dim {spec.head_dim} (the GLA kernel scans one key "
                f"channel per thread: 128)")
    if spec.head_dim_v % 64:
        return (f"gate 'vector' with head_dim_v {spec.head_dim_v} (a multiple of 64: 64 value "
                f"columns per warp)")
    sched = load_schedule(SCHEDULE)
    need = sched.gla_smem_bytes(spec, {"value_block": 64})  # the smaller of its two blocks
    limit = sched.SMEM_LIMIT.get(target.arch, 99 * 1024)
    if need > limit:
        return f"gate 'vector' needs {need} B of shared memory, {target.arch} has {limit} B"
    return None


def kernel_name(spec: LinearAttention) -> str:
    return GLA_KERNEL if spec.gate == "vector" else KERNEL


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
    name = kernel_name(spec)
    if spec.gate == "vector":
        text = render("linear_chunk_gla_tc.j2", name=name, **gla_context(spec, cfg))
    else:
        text = render("linear_chunk_tc.j2", name=name, **context(spec, cfg))
    mod = sched.schedule(tvm.IRModule({name: parse(text)}), spec, target, cfg)
    return Lowered(mod, args, (Call(name, tuple(a.name for a in args)),))


def context(spec: LinearAttention, cfg) -> dict:
    bv = cfg["value_block"]
    return dict(dtype=spec.dtype, mma_dtype=MMA_DTYPE[spec.dtype], H=spec.num_heads,
                D=spec.head_dim, DV=spec.head_dim_v, BV=bv, NV=spec.head_dim_v // bv, C=CHUNK,
                gate=spec.gate, feature_map=spec.feature_map, normalize=spec.normalize,
                staged_store=cfg.get("staged_store", False), scale=repr(float(spec.scale)),
                log2e=repr(1.0 / math.log(2.0)), pad=PAD)


def gla_context(spec: LinearAttention, cfg) -> dict:
    vb = cfg["value_block"]  # columns per CTA: VH = vb / 64 groups of 4 warps
    return dict(dtype=spec.dtype, mma_dtype=MMA_DTYPE[spec.dtype], H=spec.num_heads,
                D=spec.head_dim, DV=spec.head_dim_v, VB=vb, VH=vb // 64, NV=spec.head_dim_v // vb,
                C=CHUNK, scale=repr(float(spec.scale)), log2e=repr(1.0 / math.log(2.0)), pad=PAD,
                bonus=spec.bonus)
