"""spec + target + schedule config -> Lowered: render the form's template(s), parse, schedule.

The recurrent and chunkwise forms are one kernel each.  The parallel form is a short program:
the gates are summed over the sequence once (``cumulate_gates``), the delta rule's pseudo-values
are solved for (``solve_delta``), and then every query row and the final state are computed
independently (``outputs``, ``final_state``); the scratch buffers of ``signature`` carry the
data between the calls.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

from . import signature
from ..family import Call, Lowered
from ..render import parse, render
from ..resources import load_schedule
from ..spec import LinearAttention


@dataclass(frozen=True)
class Kernel:
    """One PrimFunc of the program: which template renders it and which buffers it takes."""

    name: str
    template: str
    part: Optional[str]  # the parallel form's step, None for a one-kernel form
    args: tuple


def _warp_level(spec: LinearAttention, target):
    """The warp-level kernel module serving ``spec`` on ``target`` (the tensor-core chunkwise
    kernel or the fused recurrent one), or None: the block-level SIMT/CPU templates."""
    from . import fused, tensorcore

    for module in (tensorcore, fused):
        if module.supported(spec, target):
            return module
    return None


def schedule_module(target, spec: Optional[LinearAttention] = None):
    """The schedule whose knobs ``lower`` takes: the warp-level kernel's for a spec it supports
    (``attngen.linear.tensorcore``, ``attngen.linear.fused``), else the SIMT (CUDA) or CPU one."""
    module = _warp_level(spec, target) if spec is not None else None
    if module is not None:
        return load_schedule(module.schedule_name(spec))
    return load_schedule("linear_cpu" if target.kind == "llvm" else "linear_cuda")


def kernels(spec: LinearAttention) -> tuple:
    io = tuple(a.name for a in signature.inputs(spec) + signature.outputs(spec))
    if spec.form != "parallel":
        return (Kernel(f"linear_{spec.form}", f"linear_{spec.form}.j2", None, io),)
    present = {a.name for a in signature.args(spec)}
    pick = lambda *names: tuple(n for n in names if n in present)  # noqa: E731
    values = "u" if spec.update == "delta" else "v"  # what the keys carry into o and the state
    steps = []
    if "cum_gate" in present:
        steps.append(("cumulate_gates", pick("g", "f_pre", "cum_gate")))
    if spec.update == "delta":
        steps.append(("solve_delta", pick("k", "v", "cum_gate", "beta", "initial_state", "u")))
    steps.append(("outputs", pick("q", "k", values, "cum_gate", "i_pre", "bonus", "omega", "initial_state",
                                  "z0", "m0", "o")))
    steps.append(("final_state", pick("k", values, "cum_gate", "i_pre", "omega", "initial_state", "z0", "m0",
                                      "final_state", "z_final", "m_final")))
    return tuple(Kernel(f"linear_parallel_{part}", "linear_parallel.j2", part, args) for part, args in steps)


def spec_context(spec: LinearAttention) -> dict:
    """What the templates read from the spec (the knobs come from the schedule module)."""
    M = spec.num_features or 0
    return dict(
        dtype=spec.dtype, H=spec.num_heads, D=spec.head_dim, F=spec.feature_dim, V=spec.head_dim_v,
        M=M, feature_map=spec.feature_map, gate=spec.gate, delta=spec.update == "delta",
        normalize=signature.has_normaliser(spec), mlstm=spec.gate == "mlstm", bonus=spec.bonus, scale=float(spec.scale), C=spec.chunk_size,
        x_scale=spec.head_dim ** -0.25, feature_norm=(2 * M) ** -0.5 if M else 1.0)


def lower(spec: LinearAttention, target, config: Optional[Mapping] = None) -> Lowered:
    import tvm

    # a supported spec takes the warp-level kernel unless the config names SIMT knobs
    module = _warp_level(spec, target)
    if module is not None and set(config or {}) <= set(load_schedule(module.schedule_name(spec)).KNOBS):
        return module.lower(spec, target, config)
    sched = schedule_module(target)
    config = {**sched.default(spec, target), **dict(config or {})}
    sched.validate(spec, target, config)
    context = {**spec_context(spec), **sched.template_params(spec, target, config)}
    funcs = {}
    for kernel in kernels(spec):
        text = render(kernel.template, name=kernel.name, part=kernel.part, args=kernel.args, **context)
        funcs[kernel.name] = parse(text)
    mod = sched.schedule(tvm.IRModule(funcs), spec, target, config)
    calls = tuple(Call(k.name, k.args) for k in kernels(spec))
    return Lowered(mod, signature.args(spec), calls)
