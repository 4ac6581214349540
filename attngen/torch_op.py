"""A spec's kernels as one PyTorch operator: ``attngen.compile(spec)`` and ``attngen.load``.

The operator holds one kernel per distinct config (the heuristic default plus each config the
tuning database chose for some length bucket) and a table bucket -> kernel.  Each call picks
the kernel of its length bucket (an untuned bucket takes the nearest tuned one, else the
default), so all kernels are built or loaded up front and no sequence length ever triggers a
build.  Inputs are checked before launch (``Kernel.run``), outputs are fresh tensors, and CUDA
kernels run on the current torch stream.

Layouts: a head-major (``"bhsd"``) operator given q, k, v that are transposed views of
token-major tensors (``x.transpose(1, 2)`` of a contiguous ``[batch, seq, heads, dim]``), or the
reverse, runs the kernel built for that other layout on the underlying memory (no copy) and
returns ``o`` as the same kind of view; the sibling operator is compiled on first use.

Each operator is registered as ``torch.ops.attngen.<name>`` (a torch.library custom op with a
fake implementation that derives output shapes from input shapes), so ``torch.compile`` treats
it as one opaque node: no graph break, no tracing into TVM.
"""
from __future__ import annotations

import re
from typing import Optional

from .kernel import bind_inputs

_OPS: dict = {}  # op name -> the AttentionOp its registered implementation calls
_LIBRARY = None
_OTHER_LAYOUT = {"bhsd": "bshd", "bshd": "bhsd"}  # the dense layouts, each a transpose(1, 2) of the other


class AttentionOp:
    def __init__(self, spec, target, kernels, table: dict, default: int = 0):
        self.spec, self.target = spec, target
        self.kernels, self.table, self.default = list(kernels), dict(table), default
        first = self.kernels[default]
        self.family = first.family
        self.input_names, self.output_names = first.input_names, first.output_names
        self.op_name = _register(self)
        self.op = getattr(_torch_ops(), self.op_name)
        self.load_seconds: Optional[float] = None
        self._sibling = None  # the operator of the other dense layout, compiled on first use

    def __repr__(self):
        return (f"AttentionOp({self.spec!r}, target={self.target.name!r}, "
                f"kernels={len(self.kernels)}, tuned_buckets={sorted(self.table)})")

    def kernel_for(self, sizes):
        """The kernel that serves problems of these sizes."""
        from .tune.database import bucket, bucket_distance

        if not self.table:
            return self.kernels[self.default]
        b = bucket(sizes)
        if b not in self.table:
            b = min(self.table, key=lambda t: (bucket_distance(t, b), t))
        return self.kernels[self.table[b]]

    def __call__(self, *args, **kwargs):
        """``op(q, k, v, ...)`` or by name; returns the outputs (a tuple if several)."""
        named = bind_inputs(self.input_names, args, kwargs, "operator")
        if self._transposed_views(named):
            sibling = self._sibling_op()
            if sibling is not None:
                return self._through(sibling, named)
        return self.op(*(named[n] for n in self.input_names))

    def step(self, *args, **kwargs):
        """Linear attention in the recurrent form, the state updated in place: ``op.step(q, k,
        v, ..., initial_state[, z0, m0])`` runs the tokens given (one per sequence for a decode
        step) from ``initial_state`` and leaves the final state in that same tensor (and the
        normaliser's running key sum in ``z0``, mLSTM's stabiliser in ``m0``).  Returns ``o``.  Eager only (not a registered
        op: it mutates its input)."""
        if getattr(self.family, "name", None) != "linear" or self.spec.form != "recurrent":
            raise TypeError(f"step() is for LinearAttention(form='recurrent') specs, this op's spec "
                            f"is {self.spec!r}")
        named = bind_inputs(self.input_names, args, kwargs, "step")
        kernel = self.kernel_for(self.family.sizes(self.spec, named))
        # each thread reads the state elements it owns before it writes them (the fused CUDA
        # kernel; the block-level kernels copy the state into scratch first): alias-safe
        out = kernel.run(named, {"final_state": named["initial_state"]})
        # z (mLSTM: n) and m are shared by a head's CTAs, one of which stores them: not
        # alias-safe, so they are copied back
        for final, initial in (("z_final", "z0"), ("m_final", "m0")):
            if final in out:
                named[initial].copy_(out[final])
        return out["o"]

    def _transposed_views(self, named) -> bool:
        """Whether q, k, v are (non-contiguous) transposes of tensors in the other layout."""
        import torch

        if getattr(self.spec, "layout", None) not in _OTHER_LAYOUT:
            return False
        qkv = [named[n] for n in ("q", "k", "v") if n in named]
        return all(isinstance(x, torch.Tensor) and x.dim() == 4 and not x.is_contiguous()
                   and x.transpose(1, 2).is_contiguous() for x in qkv)

    def _sibling_op(self):
        """The operator of the other dense layout (None where it cannot be built here, e.g. a
        loaded export on a host without the compiler: the inputs are then copied)."""
        if self._sibling is None:
            try:
                self._sibling = compile(self.spec.replace(layout=_OTHER_LAYOUT[self.spec.layout]), self.target)
            except ImportError:
                return None
        return self._sibling

    def _through(self, sibling, named):
        swapped = {n: x.transpose(1, 2) if n in ("q", "k", "v") else x for n, x in named.items()}
        out = sibling(**swapped)
        values = out if isinstance(out, tuple) else (out,)
        values = tuple(v.transpose(1, 2) if n == "o" else v for n, v in zip(self.output_names, values))
        return values if len(values) > 1 else values[0]

    # the registered implementation and its fake (shape-only) twin
    def _run(self, *tensors):
        named = dict(zip(self.input_names, tensors))
        try:
            sizes = self.family.sizes(self.spec, named)
        except Exception:  # malformed inputs: the default kernel's checks say what is wrong
            sizes = None
        kernel = self.kernels[self.default] if sizes is None else self.kernel_for(sizes)
        out = kernel.run(named)
        values = tuple(out[n] for n in self.output_names)
        return values if len(values) > 1 else values[0]

    def _fake(self, *tensors):
        import torch

        from .kernel import _torch_dtype

        named = dict(zip(self.input_names, tensors))
        sizes = self.family.sizes(self.spec, named)
        device = tensors[0].device
        values = tuple(torch.empty(a.concrete_shape(sizes), dtype=_torch_dtype(a.dtype),
                                   device=device)
                       for a in self.kernels[self.default].args if a.role == "out")
        return values if len(values) > 1 else values[0]


def _torch_ops():
    import torch

    return torch.ops.attngen


def _register(op: AttentionOp) -> str:
    """Define ``attngen::<name>`` once per spec and target; later ops of the same spec and
    target take over its implementation (the newest ``compile``/``load`` wins)."""
    global _LIBRARY
    import torch

    name = f"k{op.spec.key}_{re.sub(r'[^A-Za-z0-9]', '_', op.target.name)}"
    if name not in _OPS:
        if _LIBRARY is None:
            _LIBRARY = torch.library.Library("attngen", "FRAGMENT")
        params = ", ".join(f"Tensor x{i}" for i in range(len(op.input_names)))
        n_out = len(op.output_names)
        returns = "Tensor" if n_out == 1 else "(" + ", ".join(["Tensor"] * n_out) + ")"
        _LIBRARY.define(f"{name}({params}) -> {returns}")

        def impl(*tensors):
            return _OPS[name]._run(*tensors)

        def fake(*tensors):
            return _OPS[name]._fake(*tensors)

        for key in ("CPU", "CUDA"):
            _LIBRARY.impl(name, impl, key)
        torch.library.register_fake(f"attngen::{name}", fake, lib=_LIBRARY)
    _OPS[name] = op
    return name


def compile(spec, target: str = "cuda", *, device: Optional[str] = None) -> AttentionOp:
    """The operator of ``spec`` on ``target`` with the tuned configs of this device.

    Kernels come from the on-disk cache when built before (no TVM compiler work); a first
    build compiles each distinct config once."""
    from .builder import build
    from .targets import get
    from .tune import tuned
    from .tune.space import default_config

    target = get(target) if isinstance(target, str) else target
    _, best = tuned(spec, target, device)
    configs, table = [None], {}  # None: the default config (the cache entry of plain build())
    default = default_config(spec, target)
    for b, record in sorted(best.items()):
        cfg = record["config"]
        key = None if cfg == default else cfg
        if key not in configs:
            configs.append(key)
        table[b] = configs.index(key)
    kernels = [build(spec, target, cfg) for cfg in configs]
    return AttentionOp(spec, target, kernels, table)
