"""The mask and score mod as the kernels and the references both evaluate them.

Two rules make the generated code safe and keep the reference in step with it:

* ``kv_len`` is the length of the row's own sequence (``kv_lens[b]`` for a cache), so masks
  align bottom-right per sequence; keys at or past it are never visible.
* Every runtime-tensor index is clamped into the tensor (``doc_ids[b, q_pos]`` with
  ``q_pos < 0``, which bottom-right alignment produces when a sequence is shorter than the
  queries, reads entry 0).  Kernel and reference read the same clamped entry, so a mask
  that indexes out of range is well defined instead of reading out of bounds (numpy would
  wrap around, the kernel would read foreign memory).  Batch dims are not clamped: the
  expression language has no variable for the batch size, and ``b`` indexes them anyway.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .. import expr as E
from ..spec import Attention


def mask_expr(spec: Attention) -> E.Expr:
    """The mask the kernels evaluate: clamped loads, shared conjuncts factored out of
    disjunctions (fewer operations per element, and a static part the tile map can see)."""
    return clamp_loads(E.factor_conjuncts(spec.mask.expr), spec)


def reference_mask(spec: Attention) -> E.Expr:
    """The mask as written (clamped loads): the float64 references evaluate it, so a rewrite
    of the kernels' expression is checked against the user's own."""
    return clamp_loads(spec.mask.expr, spec)


def score_expr(spec: Attention) -> Optional[E.Expr]:
    return None if spec.score_mod is None else clamp_loads(spec.score_mod.expr, spec)


def clamp_loads(e: E.Expr, spec: Attention) -> E.Expr:
    """``e`` with each runtime-tensor index ``i`` of a dim of size ``n`` made ``clamp(i, 0, n-1)``."""
    if e.op == "load":
        t, idx = e.args[0], e.args[1:]
        clamped = []
        for i, d in zip(idx, t.dims):
            i = clamp_loads(i, spec)
            size = _dim_expr(d, spec)
            clamped.append(i if size is None else E.clamp(i, 0, size - 1))
        return E.Expr("load", (t, *clamped))
    if e.op in ("const", "var"):
        return e
    return E.Expr(e.op, tuple(clamp_loads(a, spec) if isinstance(a, E.Expr) else a for a in e.args))


def _dim_expr(d, spec: Attention) -> Optional[E.Expr]:
    """A tensor dim as an expression of the index variables (None: not expressible)."""
    if isinstance(d, int):
        return E.const(d)
    name, _, div = str(d).partition("/")
    base = {"heads": E.const(spec.num_heads), "q_len": E.q_len, "kv_len": E.kv_len}.get(name)
    if base is None:  # batch
        return None
    return base if not div else (base + (int(div) - 1)) // int(div)


def tir(e: E.Expr, names, spec: Attention, unary=None) -> str:
    """TVMScript text of a (clamped) mask or score expression (``unary``: see ``E.to_tir``)."""
    from .signature import buffer_name

    buffers = {t.name: buffer_name(t.name) for t in spec.runtime_tensors}
    return E.to_tir(e, names, buffers, unary)


def mask_array(spec: Attention, inputs, q_len: int, kv_len: int, kv_lens=None) -> np.ndarray:
    """The visibility ``bool [B, H, q_len, kv_len]`` of ``inputs``: the mask, keys beyond each
    sequence's length removed.  ``kv_lens`` (per sequence) or ``kv_len`` for all."""
    batch = inputs["q"].shape[0]
    b = np.arange(batch).reshape(-1, 1, 1, 1)
    h = np.arange(spec.num_heads).reshape(1, -1, 1, 1)
    q_idx = np.arange(q_len).reshape(1, 1, -1, 1)
    kv_idx = np.arange(kv_len).reshape(1, 1, 1, -1)
    seq_len = (np.full(batch, kv_len) if kv_lens is None else np.asarray(kv_lens)).reshape(-1, 1, 1, 1)
    env = dict(b=b, h=h, q_idx=q_idx, kv_idx=kv_idx, q_len=q_len, kv_len=seq_len)
    env.update({t.name: inputs[t.name] for t in spec.runtime_tensors})
    visible = np.asarray(E.evaluate(reference_mask(spec), env), bool)
    shape = (batch, spec.num_heads, q_len, kv_len)
    return np.broadcast_to(visible, shape) & np.broadcast_to(kv_idx < seq_len, shape)


def score_fn(spec: Attention, inputs, q_len: int, kv_len: int, kv_lens=None):
    """The score mod as ``attngen.reference.softmax`` takes it: ``f(s, b, h, q_idx, kv_idx)``
    (``b`` and ``h`` absolute, indices absolute even inside a tile or split)."""
    e = score_expr(spec)
    if e is None:
        return None
    batch = inputs["q"].shape[0]
    seq_len = (np.full(batch, kv_len) if kv_lens is None else np.asarray(kv_lens)).reshape(-1, 1, 1, 1)
    tensors = {t.name: inputs[t.name] for t in spec.runtime_tensors}

    def mod(s, b, h, q_idx, kv_idx):
        env = dict(score=s, b=b, h=h, q_idx=q_idx, kv_idx=kv_idx, q_len=q_len, kv_len=seq_len)
        return E.evaluate(e, {**env, **tensors})

    return mod
