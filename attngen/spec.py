"""The attention-spec DSL: what a kernel computes, never how.

``Attention`` describes softmax attention (masks, score mods, GQA/MQA/MLA, Ψ/Θ quantization,
KV layout, phase); ``LinearAttention`` describes the linear family (feature map, gates, update
rule, form).  Specs are frozen dataclasses: immutable, hashable, ``repr`` rebuilds them
(``eval(repr(spec), attngen.namespace())``), and ``spec.key`` is a stable hash of that text for
caches and tuning databases.  Invalid fields raise ``ValueError`` at construction, naming the
field and the rule.  Tensor layout is head-major: q ``[batch, heads, q_len, head_dim]``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

from . import expr as E

DTYPES = ("float16", "bfloat16", "float32")
# how q, k, v and o are laid out in memory (see Attention)
LAYOUTS = ("bhsd", "bshd", "thd")


def _fail(cls: str, name: str, rule: str):
    raise ValueError(f"{cls}.{name}: {rule}")


# ----------------------------------------------------------------------------- masks and mods


@dataclass(frozen=True, eq=False)
class Mask:
    """A boolean predicate of ``b, h, q_idx, kv_idx`` (True = the key is visible).

    Build one from the library in ``attngen.masks``, combine with ``&``, ``|``, ``~``, or
    trace a function: ``Mask.from_fn(lambda b, h, q_idx, kv_idx: kv_idx <= q_idx)``.
    """

    expr: E.Expr
    label: Optional[str] = None  # how repr prints it: a library call such as "causal()"

    def __post_init__(self):
        e = E.const(self.expr)
        if e.kind != "bool":
            raise ValueError(f"Mask.expr: must be a boolean expression, got {e!r}")
        if E.SCORE_VAR in E.free_vars(e):
            raise ValueError("Mask.expr: a mask may not read the score (use a score mod)")
        object.__setattr__(self, "expr", e)

    @classmethod
    def from_fn(cls, fn: Callable) -> "Mask":
        return cls(E.trace(fn, ("b", "h", "q_idx", "kv_idx")))

    def __and__(self, other: "Mask") -> "Mask":
        return Mask(self.expr & other.expr, f"({self!r} & {other!r})")

    def __or__(self, other: "Mask") -> "Mask":
        return Mask(self.expr | other.expr, f"({self!r} | {other!r})")

    def __invert__(self) -> "Mask":
        return Mask(~self.expr, f"~{self!r}")

    def __eq__(self, other):
        return isinstance(other, Mask) and self.expr.same(other.expr)

    def __hash__(self):
        return hash(self.expr)

    def __repr__(self):
        return self.label or f"Mask({self.expr!r})"

    @property
    def tensors(self):
        return E.tensors(self.expr)

    @property
    def is_full(self) -> bool:
        return self.expr.same(E.true())


@dataclass(frozen=True, eq=False)
class ScoreMod:
    """A float expression of ``score, b, h, q_idx, kv_idx``: the new (scaled) logit.

    ``ScoreMod.from_fn(lambda score, b, h, q_idx, kv_idx: score + bias)``; mods compose with
    ``then``: ``softcap(30).then(alibi(32))`` applies softcap first.
    """

    expr: E.Expr
    label: Optional[str] = None

    def __post_init__(self):
        e = E.const(self.expr)
        if e.kind == "bool":
            raise ValueError(f"ScoreMod.expr: must be numeric, got the predicate {e!r} (a Mask?)")
        object.__setattr__(self, "expr", e)

    @classmethod
    def from_fn(cls, fn: Callable) -> "ScoreMod":
        return cls(E.trace(fn, ("score", "b", "h", "q_idx", "kv_idx")))

    def then(self, other: "ScoreMod") -> "ScoreMod":
        return ScoreMod(substitute_score(other.expr, self.expr), f"{self!r}.then({other!r})")

    def __eq__(self, other):
        return isinstance(other, ScoreMod) and self.expr.same(other.expr)

    def __hash__(self):
        return hash(self.expr)

    def __repr__(self):
        return self.label or f"ScoreMod({self.expr!r})"

    @property
    def tensors(self):
        return E.tensors(self.expr)


def substitute_score(e: E.Expr, value: E.Expr) -> E.Expr:
    if e.op == "var" and e.args[0] == E.SCORE_VAR:
        return value
    if e.op in ("const", "var"):
        return e
    args = tuple(substitute_score(a, value) if isinstance(a, E.Expr) else a for a in e.args)
    return E.Expr(e.op, args)


# ----------------------------------------------------------------------------- options


@dataclass(frozen=True)
class Quant:
    """Ψ/Θ: quantize Q and K before QKᵀ (``qk``), P and V before PV (``pv``).

    ``qk="int8"``: SageAttention's per-block INT8 (``block_q`` query rows and ``block_k`` keys
    share a scale; ``smooth_k`` subtracts the per-channel key mean first, which softmax cannot
    see).  ``pv="fp8_e4m3"``: SageAttention2's FP8 P (static scale 448) and per-channel V.
    """

    qk: Optional[str] = "int8"
    pv: Optional[str] = None
    block_q: int = 128
    block_k: int = 64
    smooth_k: bool = True

    def __post_init__(self):
        if self.qk not in (None, "int8", "fp8_e4m3"):
            _fail("Quant", "qk", f"must be None, 'int8' or 'fp8_e4m3', got {self.qk!r}")
        if self.pv not in (None, "fp8_e4m3"):
            _fail("Quant", "pv", f"must be None or 'fp8_e4m3', got {self.pv!r}")
        if self.qk is None and self.pv is None:
            _fail("Quant", "qk", "at least one of qk and pv must quantize (else pass quant=None)")
        for name in ("block_q", "block_k"):
            v = getattr(self, name)
            if not (_posint(v) and v & (v - 1) == 0):
                _fail("Quant", name, f"must be a power of two >= 1, got {v!r}")


@dataclass(frozen=True)
class Paged:
    """KV cache in pages of ``page_size`` tokens anywhere in a pool, found through a page
    table ``int32 [batch, max_pages]`` (vLLM / FlashInfer); K pool ``[num_pages, kv_heads,
    page_size, head_dim]``."""

    page_size: int = 16

    def __post_init__(self):
        if not (_posint(self.page_size) and self.page_size & (self.page_size - 1) == 0):
            _fail("Paged", "page_size", f"must be a power of two, got {self.page_size!r}")


@dataclass(frozen=True)
class Decode:
    """Decoding: ``q_len`` new tokens per sequence (1, or up to 8 for speculative decoding)
    against a KV cache with per-sequence lengths; ``split_kv`` splits the keys across that many
    partial results merged by a log-sum-exp combine (FlashDecoding)."""

    q_len: int = 1
    split_kv: int = 1

    def __post_init__(self):
        if not (_posint(self.q_len) and self.q_len <= 64):
            _fail("Decode", "q_len", f"must be an int in [1, 64], got {self.q_len!r}")
        if not (_posint(self.split_kv) and self.split_kv <= 256):
            _fail("Decode", "split_kv", f"must be an int in [1, 256], got {self.split_kv!r}")


# ----------------------------------------------------------------------------- Attention


class _Spec:
    """Shared behaviour: stable key, replace()."""

    @property
    def key(self) -> str:
        """Stable across processes and versions of Python: sha256 of the canonical repr."""
        return hashlib.sha256(self.canonical().encode()).hexdigest()[:20]

    def canonical(self) -> str:
        return repr(self)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, repr=False)
class Attention(_Spec):
    """Softmax attention ``softmax(mod(scale · q kᵀ) + mask) v``.

    Sizes: ``num_heads`` query heads read ``num_kv_heads`` KV heads (GQA; MQA is 1);
    ``head_dim`` for q/k and ``head_dim_v`` for v (they differ for MLA).  ``latent_kv=True``
    is MLA's absorbed form: K and V are one tensor, V being its first ``head_dim_v`` columns.
    ``sinks=True`` adds a learned logit per head to every row's softmax (gpt-oss).

    ``layout`` of q, k, v and o: ``"bhsd"`` ``[batch, heads, seq, dim]``; ``"bshd"``
    ``[batch, seq, heads, dim]`` (FlashAttention's and most model code's); ``"thd"``: variable
    lengths packed along the tokens, ``[total, heads, dim]``, with int32 ``cu_seqlens_q`` and
    ``cu_seqlens_k`` ``[batch + 1]`` (cumulative offsets, as FlashAttention's varlen API).  lse
    is ``[batch, heads, seq]``, or ``[heads, total_q]`` for ``"thd"``.  In ``"thd"`` the mask's
    ``b`` is the sequence, ``q_idx``/``kv_idx`` positions inside it and ``q_len``/``kv_len`` its
    lengths.
    """

    num_heads: int = 32
    num_kv_heads: Optional[int] = None
    head_dim: int = 128
    head_dim_v: Optional[int] = None
    scale: Optional[float] = None
    mask: Mask = field(default_factory=lambda: Mask(E.true(), "full()"))
    score_mod: Optional[ScoreMod] = None
    sinks: bool = False
    dtype: str = "float16"
    quant: Optional[Quant] = None
    kv_layout: Union[str, Paged] = "contiguous"
    phase: Union[str, Decode] = "prefill"
    latent_kv: bool = False
    layout: str = "bhsd"

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        if self.num_kv_heads is None:
            set_("num_kv_heads", self.num_heads)
        if self.head_dim_v is None:
            set_("head_dim_v", self.head_dim)
        if self.scale is None:
            set_("scale", 1.0 / math.sqrt(self.head_dim) if _posint(self.head_dim) else None)
        self._validate()

    def _validate(self):
        A = "Attention"
        for name in ("num_heads", "num_kv_heads", "head_dim", "head_dim_v"):
            if not _posint(getattr(self, name)):
                _fail(A, name, f"must be a positive int, got {getattr(self, name)!r}")
        if self.num_heads % self.num_kv_heads:
            _fail(A, "num_kv_heads", f"must divide num_heads ({self.num_heads}), "
                                     f"got {self.num_kv_heads}")
        for name in ("head_dim", "head_dim_v"):
            if getattr(self, name) % 8 or getattr(self, name) > 1024:
                _fail(A, name, f"must be a multiple of 8 in [8, 1024], got {getattr(self, name)}")
        if self.latent_kv and self.head_dim_v > self.head_dim:
            _fail(A, "head_dim_v", "with latent_kv, V is the first head_dim_v columns of K, so "
                                   f"head_dim_v <= head_dim ({self.head_dim}), got {self.head_dim_v}")
        if not (_real(self.scale) and self.scale > 0):
            _fail(A, "scale", f"must be a positive finite number, got {self.scale!r}")
        object.__setattr__(self, "scale", float(self.scale))
        if not isinstance(self.mask, Mask):
            _fail(A, "mask", f"must be an attngen Mask (see attngen.masks), got {type(self.mask).__name__}")
        if self.score_mod is not None and not isinstance(self.score_mod, ScoreMod):
            _fail(A, "score_mod", f"must be an attngen ScoreMod or None, got {type(self.score_mod).__name__}")
        if self.dtype not in DTYPES:
            _fail(A, "dtype", f"must be one of {DTYPES}, got {self.dtype!r}")
        if self.quant is not None and not isinstance(self.quant, Quant):
            _fail(A, "quant", f"must be a Quant or None, got {self.quant!r}")
        if self.kv_layout != "contiguous" and not isinstance(self.kv_layout, Paged):
            _fail(A, "kv_layout", f"must be 'contiguous' or Paged(page_size), got {self.kv_layout!r}")
        if self.phase != "prefill" and not isinstance(self.phase, Decode):
            _fail(A, "phase", f"must be 'prefill' or Decode(q_len, split_kv), got {self.phase!r}")
        if self.quant is not None and self.latent_kv:
            _fail(A, "quant", "quantization of a latent (MLA) KV is not supported")
        if self.quant is not None and self.quant.qk and self.head_dim != self.head_dim_v:
            _fail(A, "quant", "qk quantization needs head_dim == head_dim_v")
        if self.layout not in LAYOUTS:
            _fail(A, "layout", f"must be one of {LAYOUTS}, got {self.layout!r}")
        if self.layout != "bhsd" and (self.is_decode or self.is_paged or self.quant is not None
                                      or self.latent_kv):
            _fail(A, "layout", f"{self.layout!r} is for contiguous, unquantized prefill (decode, "
                               "paged, quantized and latent-KV specs take 'bhsd')")
        if self.layout == "thd" and self.runtime_tensors:
            _fail(A, "layout", "'thd' packs sequences of their own lengths; runtime mask tensors "
                               f"({[t.name for t in self.runtime_tensors]}) index [batch, seq] "
                               "and need 'bhsd' or 'bshd'")
        for t in self.runtime_tensors:
            if t.name in RESERVED_NAMES:
                _fail(A, "mask", f"runtime tensor name {t.name!r} is reserved ({RESERVED_NAMES})")

    # -- derived facts --
    @property
    def group_size(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def is_decode(self) -> bool:
        return isinstance(self.phase, Decode)

    @property
    def is_paged(self) -> bool:
        return isinstance(self.kv_layout, Paged)

    @property
    def runtime_tensors(self) -> tuple:
        """Runtime tensors that the mask and score mod read, each once, mask first."""
        out = list(self.mask.tensors)
        for t in (self.score_mod.tensors if self.score_mod else ()):
            if t not in out:
                out.append(t)
        names = [t.name for t in out]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            _fail("Attention", "mask", f"two different runtime tensors share the name(s) {sorted(dup)}")
        return tuple(out)

    def __repr__(self):
        return _repr_fields(self, Attention(num_heads=self.num_heads, head_dim=self.head_dim))


RESERVED_NAMES = ("q", "k", "v", "o", "lse", "kv_lens", "page_table", "sinks", "q_scale",
                  "k_scale", "q_int8", "k_int8", "k_mean", "lse_shift", "o_parts", "lse_parts",
                  "tile_state", "tile_list", "tile_count", "tile_seq", "cu_seqlens_q",
                  "cu_seqlens_k", "split_done")


# ----------------------------------------------------------------------------- LinearAttention

FEATURE_MAPS = ("identity", "elu1", "relu", "performer")
GATES = (None, "fixed", "scalar", "vector", "mlstm")
UPDATES = ("additive", "delta")
FORMS = ("recurrent", "chunkwise", "parallel")


@dataclass(frozen=True, repr=False)
class LinearAttention(_Spec):
    """Linear attention ``S_t = G_t ⊙ S_{t-1} + k_tᵀ v_t``, ``o_t = q_t S_t`` (methods.md §4).

    ``feature_map`` φ is applied to q and k (``performer`` needs ``num_features`` random
    features, passed at run time as ``omega [head_dim, num_features]``).  ``gate``: None;
    ``"fixed"`` one decay per head (RetNet, γ_h = 1 − 2^(−5−h)); ``"scalar"`` a data-dependent
    log gate per token (Mamba2/SSD); ``"vector"`` a log gate per token and key channel (GLA).
    ``update="delta"`` is the delta rule with β per token (DeltaNet; with a gate, Gated
    DeltaNet).  ``bonus`` is RWKV-6's ``u`` (``time_first``): a per-head, per-channel weight
    of the current token, which the query reads beside the state before this token's decay and
    update, ``o_t = q_t S_{t-1} + (q_t ⊙ u ⊙ k_t)·1 v_t`` (passed at run time as ``bonus [heads,
    feature_dim]``).  ``gate="mlstm"`` is xLSTM's mLSTM cell (methods.md 4.10): per head and
    token an exponential input gate ``exp(i_pre)`` and a forget gate ``sigmoid(f_pre)``
    (``i_pre``, ``f_pre [batch, heads, q_len]`` at run time), the stabiliser ``m`` and the
    normaliser ``n`` carried with the state (``z0``/``z_final`` hold n, ``m0``/``m_final`` m),
    ``o_t = q_t C_t / max(|q_t . n_t|, exp(-m_t))`` (no epsilon); its ``scale`` multiplies k
    (xLSTM's ``k / sqrt(d)``).  ``normalize`` divides by ``q_t z_t`` with ``z_t`` the running key sum (Katharopoulos
    et al.).  ``form`` picks the algorithm; every form takes an initial state and returns the
    final one.
    """

    num_heads: int = 16
    head_dim: int = 128
    head_dim_v: Optional[int] = None
    feature_map: str = "identity"
    num_features: Optional[int] = None
    gate: Optional[str] = None
    update: str = "additive"
    normalize: bool = False
    bonus: bool = False
    form: str = "chunkwise"
    chunk_size: int = 64
    scale: Optional[float] = None
    dtype: str = "float16"

    def __post_init__(self):
        if self.head_dim_v is None:
            object.__setattr__(self, "head_dim_v", self.head_dim)
        if self.scale is None:
            object.__setattr__(self, "scale", 1.0 / math.sqrt(self.head_dim) if _posint(self.head_dim) else 1.0)
        if self.feature_map == "performer" and self.num_features is None:
            object.__setattr__(self, "num_features", self.head_dim)
        self._validate()

    def _validate(self):
        L = "LinearAttention"
        for name in ("num_heads", "head_dim", "head_dim_v"):
            if not _posint(getattr(self, name)):
                _fail(L, name, f"must be a positive int, got {getattr(self, name)!r}")
        if self.feature_map not in FEATURE_MAPS:
            _fail(L, "feature_map", f"must be one of {FEATURE_MAPS}, got {self.feature_map!r}")
        if self.feature_map != "performer" and self.num_features is not None:
            _fail(L, "num_features", "is only for feature_map='performer'")
        if self.num_features is not None and not _posint(self.num_features):
            _fail(L, "num_features", f"must be a positive int, got {self.num_features!r}")
        if self.gate not in GATES:
            _fail(L, "gate", f"must be one of {GATES}, got {self.gate!r}")
        if self.update not in UPDATES:
            _fail(L, "update", f"must be one of {UPDATES}, got {self.update!r}")
        if self.update == "delta" and self.gate == "vector":
            _fail(L, "gate", "the delta rule takes a scalar gate (Gated DeltaNet), not 'vector'")
        if self.update == "delta" and self.feature_map != "identity":
            _fail(L, "feature_map", "the delta rule expects L2-normalised keys: use 'identity' "
                                    "and normalise k before the call")
        if self.normalize and self.update == "delta":
            _fail(L, "normalize", "has no meaning for the delta rule")
        if self.normalize and self.feature_map in ("identity", "relu"):
            # q·z must stay away from 0: only strictly positive features guarantee that
            _fail(L, "normalize", f"needs strictly positive features ('elu1' or 'performer'), "
                                  f"got feature_map={self.feature_map!r}")
        if self.form not in FORMS:
            _fail(L, "form", f"must be one of {FORMS}, got {self.form!r}")
        if not isinstance(self.bonus, bool):
            _fail(L, "bonus", f"must be True or False, got {self.bonus!r}")
        if self.gate == "mlstm":
            for name, ok, why in (("feature_map", self.feature_map == "identity", "identity"),
                                  ("update", self.update == "additive", "'additive'"),
                                  ("normalize", not self.normalize, "False (the cell has its own)")):
                if not ok:
                    _fail(L, name, f"must be {why} with gate='mlstm', got {getattr(self, name)!r}")
        if self.bonus and (self.update == "delta" or self.normalize or self.gate == "mlstm"):
            _fail(L, "bonus", "RWKV-6's bonus goes with the additive update, no normaliser and not "
                              "the mLSTM cell")

        if not (_posint(self.chunk_size) and self.chunk_size & (self.chunk_size - 1) == 0
                and self.chunk_size <= 256):
            _fail(L, "chunk_size", f"must be a power of two in [1, 256], got {self.chunk_size!r}")
        if not (_real(self.scale) and self.scale > 0):
            _fail(L, "scale", f"must be a positive finite number, got {self.scale!r}")
        object.__setattr__(self, "scale", float(self.scale))
        if self.dtype not in DTYPES:
            _fail(L, "dtype", f"must be one of {DTYPES}, got {self.dtype!r}")

    @property
    def feature_dim(self) -> int:
        """Width of φ(k): the state is ``[feature_dim, head_dim_v]``."""
        return 2 * self.num_features if self.feature_map == "performer" else self.head_dim

    def __repr__(self):
        return _repr_fields(self, LinearAttention(num_heads=self.num_heads, head_dim=self.head_dim))


# ----------------------------------------------------------------------------- helpers


def _posint(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _repr_fields(spec, defaults) -> str:
    """``Name(field=value, ...)`` listing only fields that differ from their defaults.

    ``defaults`` is the spec built from the same sizes, so derived defaults (scale from
    head_dim, kv heads from heads) are left out when they were not set by hand.
    """
    parts = []
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        if f.name in ("num_heads", "head_dim") or value != getattr(defaults, f.name):
            parts.append(f"{f.name}={value!r}")
    return f"{type(spec).__name__}({', '.join(parts)})"
