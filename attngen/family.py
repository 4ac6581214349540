"""What every kernel family (softmax attention, linear attention) provides to the driver.

A family turns a spec into a :class:`Lowered` program for a target: a scheduled IRModule, the
arguments of the whole program (inputs, outputs, scratch), and the calls to make in order.
It also draws random inputs and computes float64 references, so that ``check``, the tests
and the tuner treat every family alike.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Protocol

import numpy as np

SIZE_NAMES = ("batch", "heads", "q_len", "kv_len")


@dataclass(frozen=True)
class Arg:
    """One buffer of the program.  ``shape`` holds ints and size names (``SIZE_NAMES`` or any
    extra size the family's ``sizes`` returns, e.g. ``num_pages``; ``q_len/128`` is the number
    of 128-row tiles, ``batch+1`` the length of cumulative offsets, see ``_size``); ``role`` is ``"in"``,
    ``"out"`` or ``"scratch"`` (allocated by the driver, shared between calls).  A ``zeroed``
    scratch must be all zero when the program starts, and the program leaves it all zero
    (counters such as the split-KV kernels' arrival count per output tile)."""

    name: str
    shape: tuple
    dtype: str
    role: str = "in"
    zeroed: bool = False

    def concrete_shape(self, sizes: Mapping[str, int]) -> tuple:
        return tuple(_size(d, sizes) for d in self.shape)

    @classmethod
    def from_json(cls, d: Mapping) -> "Arg":
        """The inverse of ``arg.__dict__`` as the build cache, exports and benchmark builds store
        it (``zeroed`` absent in files written before it existed: False)."""
        return cls(d["name"], tuple(d["shape"]), d["dtype"], d["role"], bool(d.get("zeroed", False)))


def _size(d, sizes: Mapping[str, int]) -> int:
    """An int, a size name, ``name/n`` (``ceil(size / n)``: tiles of n along a length), or a
    sum of those written with ``+`` (``batch+1``, ``total_q/128+batch``)."""
    if isinstance(d, int):
        return d
    if d in sizes:
        return sizes[d]
    if "+" in d:
        return sum(_size(t, sizes) for t in d.split("+"))
    if d.isdigit():
        return int(d)
    name, _, div = d.partition("/")
    if div and name in sizes:
        return -(-sizes[name] // int(div))
    raise KeyError(f"size {d!r} unknown (known: {sorted(sizes)})")


@dataclass(frozen=True)
class Call:
    """Call ``func`` of the built module with the program's buffers ``args`` (by name).
    ``fills`` names the scratch buffers the call computes for the later calls, from the sizes
    and the mask's tensors (the tile map); ``static``: from the sizes alone (a mask that reads
    no tensor).  A driver may skip such calls: static ones with buffers kept from an earlier
    call of the same sizes, the others with a plan built from the same mask tensors."""

    func: str
    args: tuple
    fills: tuple = ()
    static: bool = False

    def to_json(self, func: str = "") -> dict:
        return {"func": func or self.func, "args": list(self.args), "fills": list(self.fills),
                "static": self.static}

    @classmethod
    def from_json(cls, d: Mapping) -> "Call":
        """The inverse of ``to_json`` (``fills`` absent in files written before it: none)."""
        return cls(d["func"], tuple(d["args"]), tuple(d.get("fills", ())), bool(d.get("static", False)))


@dataclass
class Lowered:
    mod: object  # tvm.IRModule, scheduled for the target
    args: tuple  # of Arg, in a fixed order
    calls: tuple  # of Call
    pass_config: dict = field(default_factory=dict)
    pipeline: str = "default"  # "default" or "attngen" (see attngen.pipeline)


class Family(Protocol):
    name: str

    def matches(self, spec) -> bool: ...

    def lower(self, spec, target, config: Mapping | None = None) -> Lowered: ...

    def sizes(self, spec, inputs: Mapping[str, np.ndarray]) -> dict:
        """The concrete sizes (``SIZE_NAMES`` and extras) implied by the inputs (numpy arrays or
        torch tensors; only ``.shape`` is read)."""

    def sample(self, spec, sizes: Mapping[str, int], rng: np.random.Generator) -> dict:
        """Fresh random inputs (every ``role == "in"`` arg) as numpy arrays."""

    def reference(self, spec, inputs: Mapping[str, np.ndarray]) -> dict:
        """float64 outputs by name (every ``role == "out"`` arg), computed from exactly the
        values the kernel sees; for quantized specs, the exact simulation of the quantizer, so
        that the per-dtype bounds of ``attngen.tolerance`` apply to every family alike."""


@dataclass(frozen=True)
class ModuleFamily:
    """A family made of three modules: ``lowering.lower``, ``signature.sizes`` and
    ``data.sample`` / ``data.reference`` (how ``attngen.softmax`` and ``attngen.linear`` are
    laid out)."""

    name: str
    spec_type: type
    lowering: object
    signature: object
    data: object

    def matches(self, spec) -> bool:
        return isinstance(spec, self.spec_type)

    def lower(self, spec, target, config=None) -> Lowered:
        return self.lowering.lower(spec, target, config)

    def sizes(self, spec, inputs) -> dict:
        return self.signature.sizes(spec, inputs)

    def sample(self, spec, sizes, rng) -> dict:
        return self.data.sample(spec, sizes, rng)

    def reference(self, spec, inputs) -> dict:
        return self.data.reference(spec, inputs)


def family_of(spec) -> "Family":
    from .linear import FAMILY as linear
    from .softmax import FAMILY as softmax

    for fam in (softmax, linear):
        if fam.matches(spec):
            return fam
    raise TypeError(f"not an attngen spec: {type(spec).__name__}")
