"""A built kernel: checks its inputs, allocates outputs and scratch, makes the calls.

Inputs are torch tensors (on the target's device) or, for convenience on the CPU, numpy
arrays, which are converted to the argument's dtype.  Everything is checked before anything
is launched: names, dtypes, devices, contiguity, and that all shapes agree with the sizes
implied by the inputs.  Outputs are returned as torch tensors in argument order.

Every buffer of a TVM kernel is declared ``ALIGNMENT``-byte aligned (the default
``data_alignment`` of ``T.match_buffer``), and the code generator relies on it: for the host
CPU (AVX2/AVX-512) LLVM turns an 8-lane float32 load of such a buffer into ``vmovaps``, which
faults on an address that is not 32-byte aligned.  A torch tensor promises only the alignment
of its element type (``torch.from_numpy`` shares numpy's 16-byte-aligned memory; a view has a
storage offset), so a tensor whose data is not aligned is passed as an aligned copy (an output:
computed in the copy, then copied back).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Mapping, Optional

import numpy as np

from .family import family_of


ALIGNMENT = 64  # bytes; TVM's runtime::kAllocAlignment


class KernelInputError(ValueError):
    """An input that does not match the kernel's signature (raised before launch)."""


def bind_inputs(names: tuple, args, kwargs, callee: str) -> dict:
    """The inputs of ``callee(*args, **kwargs)`` by name, positional ones in ``names`` order."""
    if len(args) > len(names):
        raise KernelInputError(f"expected at most {len(names)} positional inputs {names}, got {len(args)}")
    named = dict(zip(names, args))
    for k, v in kwargs.items():
        if k in named:
            raise KernelInputError(f"input {k!r} given twice")
        named[k] = v
    check_input_names(named, names, callee)
    return named


def check_input_names(given, names: tuple, callee: str) -> None:
    """Every one of ``names`` given, and nothing else."""
    unknown = set(given) - set(names)
    if unknown:
        raise KernelInputError(f"unknown input(s) {sorted(unknown)}; this {callee} takes {names}")
    missing = [n for n in names if n not in given]
    if missing:
        raise KernelInputError(f"missing input(s) {missing}; this {callee} takes {names}")


_TORCH_DTYPES = {"float16": "float16", "bfloat16": "bfloat16", "float32": "float32",
                 "int32": "int32", "int8": "int8"}


def _torch_dtype(name: str):
    import torch

    return getattr(torch, _TORCH_DTYPES[name])


@dataclass(frozen=True)
class Plan:
    """The tile map of one set of sizes and mask tensors (``Kernel.plan``)."""

    sizes: tuple
    device: str
    buffers: dict = field(compare=False)


class Kernel:
    # sizes whose static ``Call.fills`` buffers are kept, per kernel (a few KB each: tile maps)
    KEEP_FILLS = 8

    def __init__(self, spec, target, module, args, calls):
        self.spec, self.target, self.module = spec, target, module
        self.args, self.calls = tuple(args), tuple(calls)
        self.family = family_of(spec)
        self._funcs = {c.func: module[c.func] for c in calls}
        self._fills = tuple(dict.fromkeys(n for c in self.calls for n in c.fills))
        self._static = bool(self._fills) and all(c.static for c in self.calls if c.fills)
        self._kept = OrderedDict()  # (device, stream, sizes) -> the static fills of an earlier run

    @property
    def input_names(self) -> tuple:
        return tuple(a.name for a in self.args if a.role == "in")

    @property
    def output_names(self) -> tuple:
        return tuple(a.name for a in self.args if a.role == "out")

    def __repr__(self):
        return (f"Kernel({self.spec!r}, target={self.target.name!r}, "
                f"inputs={self.input_names}, outputs={self.output_names})")

    def __call__(self, *args, **kwargs):
        """``kernel(q, k, v, ...)`` or by name; returns the outputs (a tuple if several)."""
        out = self.run(bind_inputs(self.input_names, args, kwargs, "kernel"))
        values = tuple(out[n] for n in self.output_names)
        return values[0] if len(values) == 1 else values

    def run(self, inputs: Mapping, outputs: Optional[Mapping] = None, plan: Optional["Plan"] = None) -> dict:
        """Run on ``inputs`` (by name); ``outputs`` may pre-allocate (e.g. poisoned) outputs;
        ``plan`` (``plan()`` of inputs with the same sizes and mask tensors) stands for the
        calls that fill the tile map."""
        tensors, sizes, device, given = self._prepare(inputs, outputs)
        if all(tensors[a.name].numel() == 0 for a in self.args if a.role == "out"):
            return {a.name: tensors[a.name] for a in self.args if a.role == "out"}  # nothing to do
        launched = {name: _aligned(t) for name, t in tensors.items()}
        key = self._fills_key(sizes, device) if self._static and not set(self._fills) & set(given) else None
        fills = self._planned(plan, sizes, device) if plan is not None else self._kept.get(key)
        if fills is not None:  # the map of an earlier run with these sizes, or the caller's plan
            launched.update(fills)
            if key in self._kept:
                self._kept.move_to_end(key)
        self._launch(launched, device, skip_fills=fills is not None)
        if key is not None and fills is None:
            self._kept[key] = {n: launched[n] for n in self._fills}
            if len(self._kept) > self.KEEP_FILLS:
                self._kept.popitem(last=False)
        for arg in self.args:
            if arg.role != "in" and launched[arg.name] is not tensors[arg.name]:
                tensors[arg.name].copy_(launched[arg.name])
        return {a.name: tensors[a.name] for a in self.args if a.role == "out"}

    def plan(self, inputs: Mapping) -> "Plan":
        """Run only the calls that fill the tile map (``Call.fills``) on ``inputs``: the plan
        stands for them in ``run(..., plan=...)`` on inputs of the same sizes and the same mask
        tensors (e.g. every layer of a forward pass with one set of document ids), as a
        FlexAttention BlockMask is built once and reused.  The map is written on the current
        stream: a run on another stream must wait for it (``torch.cuda.synchronize``)."""
        if not self._fills:
            raise ValueError(f"{self.spec!r}: this program has no tile map to plan")
        tensors, sizes, device, _ = self._prepare(inputs, None)
        launched = {name: _aligned(t) for name, t in tensors.items()}
        self._launch(launched, device, only_fills=True)
        return Plan(tuple(sorted(sizes.items())), str(device), {n: launched[n] for n in self._fills})

    # -- helpers --
    def _prepare(self, inputs: Mapping, outputs: Optional[Mapping]):
        """Checked inputs and allocated outputs and scratch: (tensors, sizes, device, given)."""
        tensors = self._convert_inputs(inputs)
        sizes = self.family.sizes(self.spec, tensors)
        check_int32_extents(self.args, sizes)
        device = next(iter(tensors.values())).device
        for arg in self.args:
            if arg.role == "in":
                _check_tensor(arg, tensors[arg.name], sizes, device)
        given = dict(outputs or {})
        for arg in self.args:
            if arg.role == "in":
                continue
            if arg.name in given:
                _check_tensor(arg, given[arg.name], sizes, device)
                tensors[arg.name] = given[arg.name]
            else:
                tensors[arg.name] = allocate(arg, sizes, device)
        return tensors, sizes, device, given

    def _planned(self, plan: "Plan", sizes, device) -> dict:
        if not isinstance(plan, Plan) or set(plan.buffers) != set(self._fills):
            raise KernelInputError("plan: not a plan of this kernel (build it with kernel.plan(inputs))")
        if plan.sizes != tuple(sorted(sizes.items())) or plan.device != str(device):
            raise KernelInputError(f"plan: built for sizes {dict(plan.sizes)} on {plan.device}, the inputs "
                                   f"have {sizes} on {device}")
        return plan.buffers

    def _convert_inputs(self, inputs: Mapping) -> dict:
        import torch

        check_input_names(inputs, self.input_names, "kernel")
        out = {}
        for arg in self.args:
            if arg.role != "in":
                continue
            x = inputs[arg.name]
            if isinstance(x, np.ndarray):
                if self.target.is_cuda:
                    raise KernelInputError(f"input {arg.name}: a numpy array cannot go to a CUDA "
                                           "kernel; pass a torch CUDA tensor")
                x = torch.from_numpy(np.ascontiguousarray(x)).to(_torch_dtype(arg.dtype))
            elif not isinstance(x, torch.Tensor):
                raise KernelInputError(f"input {arg.name}: expected a torch tensor or numpy array, "
                                       f"got {type(x).__name__}")
            out[arg.name] = x
        devices = {t.device for t in out.values()}
        if len(devices) > 1:
            raise KernelInputError(f"inputs are on different devices: {sorted(map(str, devices))}")
        want = "cuda" if self.target.is_cuda else "cpu"
        if next(iter(devices)).type != want:
            raise KernelInputError(f"this kernel was built for {self.target.name} and needs {want} "
                                   f"tensors, got {next(iter(devices))}")
        return out

    def _fills_key(self, sizes, device):
        """Where ``Call.fills`` buffers may be reused: same sizes, device and stream (a stream
        orders the run that filled them before every later run on it), or None: no fills."""
        if not self._fills:
            return None
        stream = None
        if self.target.is_cuda:
            import torch

            stream = torch.cuda.current_stream(device).cuda_stream
        return (str(device), stream, tuple(sorted(sizes.items())))

    def _launch(self, tensors: dict, device, skip_fills: bool = False, only_fills: bool = False) -> None:
        calls = [c for c in self.calls if not (skip_fills and c.fills) and not (only_fills and not c.fills)]
        if self.target.is_cuda:
            import torch
            import tvm_ffi

            with torch.cuda.device(device), tvm_ffi.use_torch_stream():
                for call in calls:
                    self._funcs[call.func](*(tensors[n] for n in call.args))
        else:
            for call in calls:
                self._funcs[call.func](*(tensors[n] for n in call.args))


def _aligned(t):
    """``t`` itself if its data is ``ALIGNMENT``-byte aligned, else an aligned copy of it (cut
    from a slightly larger allocation, so the allocator's own alignment does not matter)."""
    import torch

    if t.data_ptr() % ALIGNMENT == 0:
        return t
    size = t.element_size()  # a power of two that divides ALIGNMENT, as does any data_ptr's offset
    raw = torch.empty(t.numel() + ALIGNMENT // size, dtype=t.dtype, device=t.device)
    skip = (-raw.data_ptr() % ALIGNMENT) // size
    out = raw[skip:skip + t.numel()].view(t.shape)
    out.copy_(t)
    return out


# the generated kernels index every buffer with int32 arithmetic (TVM's T.int32 shape variables):
# an element offset past 2**31 - 1 would wrap silently (reliability.md B9)
INT32_MAX = 2 ** 31 - 1


def allocate(arg, sizes, device, fill=None):
    """A new buffer for the output or scratch ``arg``: zeros where the program expects them
    (``Arg.zeroed``), else filled with ``fill`` (e.g. NaN, to poison) or left uninitialised."""
    import torch

    shape, dtype = arg.concrete_shape(sizes), _torch_dtype(arg.dtype)
    if arg.zeroed:
        return torch.zeros(shape, dtype=dtype, device=device)
    if fill is not None:
        return torch.full(shape, fill, dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def check_int32_extents(args, sizes) -> None:
    """Refuse, before anything is allocated or launched, a call whose inputs imply a buffer
    (input, output or scratch) with an element offset past ``INT32_MAX``."""
    import math

    for arg in args:
        shape = arg.concrete_shape(sizes)
        if math.prod(shape) - 1 > INT32_MAX:
            raise KernelInputError(
                f"{arg.name}: shape {shape} has {math.prod(shape)} elements; the kernels index "
                f"buffers in int32, so each holds at most 2**31: split the batch (or the sequence)")


def _check_tensor(arg, t, sizes, device) -> None:
    import torch

    if not isinstance(t, torch.Tensor):
        raise KernelInputError(f"{arg.name}: expected a torch tensor, got {type(t).__name__}")
    if t.dtype != _torch_dtype(arg.dtype):
        raise KernelInputError(f"{arg.name}: dtype must be {arg.dtype}, got {str(t.dtype)[6:]}")
    want = arg.concrete_shape(sizes)
    if tuple(t.shape) != want:
        raise KernelInputError(f"{arg.name}: shape must be {want} "
                               f"({', '.join(map(str, arg.shape))}), got {tuple(t.shape)}")
    if t.device != device:
        raise KernelInputError(f"{arg.name}: on {t.device}, the other tensors are on {device}")
    if not t.is_contiguous():
        raise KernelInputError(f"{arg.name}: must be contiguous (call .contiguous())")
