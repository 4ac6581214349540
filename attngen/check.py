"""Validate a kernel against its float64 reference on fresh random inputs.

For each length: draw inputs (rounded to the kernel's dtype; the reference sees exactly those
values), poison the outputs with NaN, run, and compare every output with the tolerance of
``attngen.tolerance``.  Used by ``attngen check``, the tests and the tuner.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from . import tolerance
from .family import family_of

DEFAULT_LENGTHS = (1, 17, 65, 257)


@dataclass
class Result:
    length: int
    sizes: dict
    errors: dict = field(default_factory=dict)  # output name -> errors()
    passed: bool = False


def poisoned(kernel, sizes) -> dict:
    """NaN-filled outputs (integers: a sentinel), so an unwritten element cannot pass."""
    import torch

    from .kernel import _torch_dtype

    out = {}
    for arg in kernel.args:
        if arg.role == "out":
            dtype = _torch_dtype(arg.dtype)
            fill = float("nan") if dtype.is_floating_point else -7
            out[arg.name] = torch.full(arg.concrete_shape(sizes), fill, dtype=dtype,
                                       device="cuda" if kernel.target.is_cuda else "cpu")
    return out


def feed(kernel, inputs: dict) -> dict:
    """Numpy ``inputs`` as torch tensors on the kernel's device, each input in its dtype."""
    import torch

    device = "cuda" if kernel.target.is_cuda else "cpu"
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device=device) for k, v in inputs.items()}
    for arg in kernel.args:
        if arg.role == "in":
            tensors[arg.name] = tensors[arg.name].to(getattr(torch, arg.dtype))
    return tensors


def check_length(kernel, length: int, batch: int, rng: np.random.Generator) -> Result:
    spec = kernel.spec
    sizes = {"batch": batch, "heads": spec.num_heads, "q_len": length, "kv_len": length}
    return check_inputs(kernel, kernel.family.sample(spec, sizes, rng), length)


def check_inputs(kernel, inputs: dict, length: int = 0, plan=None) -> Result:
    """Run ``kernel`` on ``inputs`` (numpy arrays on the kernel's dtype grid, as the family's
    ``sample`` draws them or a test shapes them) with poisoned outputs, against the float64
    reference of exactly those values; ``plan`` as ``Kernel.run`` takes it."""
    import torch

    spec, fam = kernel.spec, kernel.family
    ref = fam.reference(spec, inputs)
    tensors = feed(kernel, inputs)
    sizes = fam.sizes(spec, tensors)
    out = kernel.run(tensors, poisoned(kernel, sizes), plan=plan)
    result = Result(length, sizes)
    ok = True
    for name, expected in ref.items():
        got = out[name].detach().to("cpu", torch.float64).numpy()
        err = tolerance.errors(got, expected)
        result.errors[name] = err
        ok &= tolerance.passes(err, spec.dtype)
    result.passed = bool(ok)
    return result


def check(spec, target="cpu", lengths: Sequence[int] = DEFAULT_LENGTHS, batch: int = 2,
          seed: Optional[int] = None, config=None):
    """Build ``spec`` for ``target`` and check it at every length; returns the results."""
    from .builder import build

    family_of(spec)  # a clear TypeError for a non-spec before anything is built
    kernel = build(spec, target, config)
    rng = np.random.default_rng(seed)
    return [check_length(kernel, n, batch, rng) for n in lengths]
