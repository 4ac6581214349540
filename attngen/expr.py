"""The expression language of masks and score mods.

A mask is a boolean expression over the index variables ``b, h, q_idx, kv_idx`` (plus the
lengths ``q_len, kv_len`` and runtime tensors such as document ids); a score mod is a float
expression that may also read ``score``.  One expression has three meanings:

* ``evaluate(expr, env)``   numpy, with broadcasting: the float64 references use it;
* ``to_tir(expr, names)``   TVMScript text, pasted into the Jinja templates;
* ``to_sympy(expr)``        a sympy expression: ``attngen.tiles`` classifies a tile of query rows
  times key columns as empty / full / partial from it at compile time.

Nodes are immutable and hashable, and ``repr`` prints Python that rebuilds them (with the
names of this module in scope), so a spec's ``repr`` rebuilds the spec and its stable key is
a hash of that text.  Python's ``and``/``or``/``not``/``if`` cannot be traced: use ``&``,
``|``, ``~`` and ``where`` (the same rule as FlexAttention's mask_mod).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

INDEX_VARS = ("b", "h", "q_idx", "kv_idx", "q_len", "kv_len")
SCORE_VAR = "score"

# op -> (numpy function, TVMScript format, result kind); kinds: "int", "float", "bool".
_BINARY = {
    "+": (np.add, "({0} + {1})"),
    "-": (np.subtract, "({0} - {1})"),
    "*": (np.multiply, "({0} * {1})"),
    "/": (np.true_divide, "({0} / {1})"),
    "//": (np.floor_divide, "T.floordiv({0}, {1})"),
    "%": (np.mod, "T.floormod({0}, {1})"),
    "min": (np.minimum, "T.min({0}, {1})"),
    "max": (np.maximum, "T.max({0}, {1})"),
}
_COMPARE = {
    "<": (np.less, "({0} < {1})"),
    "<=": (np.less_equal, "({0} <= {1})"),
    ">": (np.greater, "({0} > {1})"),
    ">=": (np.greater_equal, "({0} >= {1})"),
    "==": (np.equal, "({0} == {1})"),
    "!=": (np.not_equal, "({0} != {1})"),
}
_LOGIC = {
    "and": (np.logical_and, "T.And({0}, {1})"),
    "or": (np.logical_or, "T.Or({0}, {1})"),
}
_UNARY = {  # float -> float
    "exp": (np.exp, "T.exp({0})"),
    "exp2": (np.exp2, "T.exp2({0})"),
    "log": (np.log, "T.log({0})"),
    "tanh": (np.tanh, "T.tanh({0})"),
    "sqrt": (np.sqrt, "T.sqrt({0})"),
}


class ExprError(ValueError):
    """An expression that cannot be built or lowered."""


@dataclass(frozen=True, eq=False)
class Expr:
    """One node: ``op`` names it, ``args`` holds child nodes or leaf payloads."""

    op: str
    args: tuple

    # -- structural identity (``==`` builds comparisons, so equality lives in ``same``) --
    def _key(self):
        if self.op == "const":  # 1, 1.0 and True are equal in Python but not as constants
            return (self.op, (type(self.args[0]).__name__, self.args[0]))
        return (self.op, tuple(a._key() if isinstance(a, Expr) else a for a in self.args))

    def __hash__(self):
        return hash(self._key())

    def same(self, other) -> bool:
        return isinstance(other, Expr) and self._key() == other._key()

    def __bool__(self):
        raise ExprError("an attngen expression has no truth value: use &, |, ~ and where() "
                        "instead of and, or, not and if")

    # -- kinds --
    @property
    def kind(self) -> str:
        return _kind(self)

    # -- operators --
    def __add__(self, o): return _bin("+", self, o)
    def __radd__(self, o): return _bin("+", o, self)
    def __sub__(self, o): return _bin("-", self, o)
    def __rsub__(self, o): return _bin("-", o, self)
    def __mul__(self, o): return _bin("*", self, o)
    def __rmul__(self, o): return _bin("*", o, self)
    def __truediv__(self, o): return _bin("/", self, o)
    def __rtruediv__(self, o): return _bin("/", o, self)
    def __floordiv__(self, o): return _bin("//", self, o)
    def __rfloordiv__(self, o): return _bin("//", o, self)
    def __mod__(self, o): return _bin("%", self, o)
    def __rmod__(self, o): return _bin("%", o, self)
    def __neg__(self): return _bin("-", 0, self)
    def __lt__(self, o): return _cmp("<", self, o)
    def __le__(self, o): return _cmp("<=", self, o)
    def __gt__(self, o): return _cmp(">", self, o)
    def __ge__(self, o): return _cmp(">=", self, o)
    def __eq__(self, o): return _cmp("==", self, o)  # noqa: builds an expression
    def __ne__(self, o): return _cmp("!=", self, o)
    def __and__(self, o): return _logic("and", self, o)
    def __rand__(self, o): return _logic("and", o, self)
    def __or__(self, o): return _logic("or", self, o)
    def __ror__(self, o): return _logic("or", o, self)

    def __invert__(self):
        if _kind(self) != "bool":
            raise ExprError(f"~ needs a boolean expression, got {self!r}")
        return Expr("not", (self,))

    def __repr__(self):
        return _repr(self)


def const(value) -> Expr:
    if isinstance(value, Expr):
        return value
    if isinstance(value, (bool, np.bool_)):
        return Expr("const", (bool(value),))
    if isinstance(value, (int, np.integer)):
        return Expr("const", (int(value),))
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            raise ExprError(f"constants must be finite, got {value}")
        return Expr("const", (float(value),))
    raise ExprError(f"cannot use {value!r} ({type(value).__name__}) in an attngen expression")


def var(name: str) -> Expr:
    if name not in INDEX_VARS + (SCORE_VAR,):
        raise ExprError(f"unknown variable {name!r}; known: {INDEX_VARS + (SCORE_VAR,)}")
    return Expr("var", (name,))




SIZES = ("batch", "heads", "q_len", "kv_len")
# how the checker draws a runtime tensor: sorted segment ids per batch row (document ids),
# 0/1 entries (block layouts), or standard normal values (bias tables, sink logits)
SAMPLES = ("normal", "bits", "segments")
_DIM = re.compile(r"(batch|heads|q_len|kv_len)(/[1-9][0-9]*)?")


@dataclass(frozen=True)
class Tensor:
    """A runtime tensor that expressions may index, e.g. document ids ``[batch, kv_len]``.

    ``dims`` name its axes with the symbolic sizes ``batch``, ``heads``, ``q_len``,
    ``kv_len`` or with integers; ``dtype`` is int32 or float32.
    """

    name: str
    dims: tuple
    dtype: str = "int32"
    sample: str = "normal"

    def __post_init__(self):
        if not self.name.isidentifier():
            raise ExprError(f"tensor name {self.name!r} is not an identifier")
        if self.dtype not in ("int32", "float32"):
            raise ExprError(f"tensor {self.name}: dtype must be int32 or float32, got {self.dtype}")
        if self.sample not in SAMPLES:
            raise ExprError(f"tensor {self.name}: sample must be one of {SAMPLES}, got {self.sample!r}")
        for d in self.dims:
            if not (isinstance(d, int) and d > 0) and not _DIM.fullmatch(str(d)):
                raise ExprError(f"tensor {self.name}: dim {d!r} must be a positive int, one of "
                                f"{SIZES}, or 'SIZE/n' (ceil division, e.g. 'kv_len/64')")

    def shape(self, sizes: Mapping[str, int]) -> tuple:
        """Concrete shape for the sizes ``{"batch": .., "heads": .., "q_len": .., "kv_len": ..}``."""
        out = []
        for d in self.dims:
            if isinstance(d, int):
                out.append(d)
                continue
            name, _, div = str(d).partition("/")
            out.append(-(-sizes[name] // int(div)) if div else sizes[name])
        return tuple(out)

    def __getitem__(self, idx) -> Expr:
        idx = idx if isinstance(idx, tuple) else (idx,)
        if len(idx) != len(self.dims):
            raise ExprError(f"tensor {self.name} has {len(self.dims)} dims, indexed with {len(idx)}")
        idx = tuple(const(i) for i in idx)
        for i in idx:
            if _kind(i) != "int":
                raise ExprError(f"tensor {self.name}: index {i!r} is not an integer expression")
        return Expr("load", (self, *idx))


def where(cond, then, otherwise) -> Expr:
    cond, then, otherwise = const(cond), const(then), const(otherwise)
    if _kind(cond) != "bool":
        raise ExprError(f"where() needs a boolean condition, got {cond!r}")
    e = Expr("where", (cond, then, otherwise))
    _kind(e)  # mixing boolean and numeric branches fails here, not at first use
    return e


def minimum(x, y) -> Expr: return _bin("min", x, y)
def maximum(x, y) -> Expr: return _bin("max", x, y)
def clamp(x, lo, hi) -> Expr: return minimum(maximum(x, lo), hi)
def abs_(x) -> Expr: return where(const(x) < 0, -const(x), x)
def exp(x) -> Expr: return _unary("exp", x)
def exp2(x) -> Expr: return _unary("exp2", x)
def log(x) -> Expr: return _unary("log", x)
def tanh(x) -> Expr: return _unary("tanh", x)
def sqrt(x) -> Expr: return _unary("sqrt", x)


def true() -> Expr:
    return const(True)


def trace(fn: Callable, names: Sequence[str]) -> Expr:
    """Build an expression by calling ``fn`` on the variables ``names`` (a user's lambda)."""
    try:
        out = fn(*(var(n) for n in names))
    except ExprError:
        raise
    except Exception as err:  # a user function doing something untraceable
        raise ExprError(f"cannot trace {getattr(fn, '__name__', fn)}: {err}") from err
    return const(out)


# ----------------------------------------------------------------------------- builders


def _bin(op, x, y) -> Expr:
    x, y = const(x), const(y)
    for a in (x, y):
        if _kind(a) == "bool":
            raise ExprError(f"operator {op} on a boolean expression {a!r}")
    if op in ("//", "%") and "float" in (_kind(x), _kind(y)):
        raise ExprError(f"operator {op} needs integer operands, got {x!r}, {y!r}")
    return Expr(op, (x, y))


def _cmp(op, x, y) -> Expr:
    x, y = const(x), const(y)
    for a in (x, y):
        if _kind(a) == "bool":
            raise ExprError(f"comparison {op} on a boolean expression {a!r}")
    return Expr(op, (x, y))


def _logic(op, x, y) -> Expr:
    x, y = const(x), const(y)
    for a in (x, y):
        if _kind(a) != "bool":
            raise ExprError(f"{'&' if op == 'and' else '|'} needs boolean operands, got {a!r} "
                            "(did you mean a comparison?)")
    return Expr(op, (x, y))


def _unary(op, x) -> Expr:
    x = const(x)
    if _kind(x) == "bool":
        raise ExprError(f"{op}() of a boolean expression {x!r}")
    return Expr(op, (x,))


def _kind(e: Expr) -> str:
    op = e.op
    if op == "const":
        v = e.args[0]
        return "bool" if isinstance(v, bool) else "int" if isinstance(v, int) else "float"
    if op == "var":
        return "float" if e.args[0] == SCORE_VAR else "int"
    if op == "load":
        return "int" if e.args[0].dtype == "int32" else "float"
    if op in _COMPARE or op in _LOGIC or op == "not":
        return "bool"
    if op in _UNARY or op == "/":
        return "float"
    if op == "where":
        kinds = {_kind(e.args[1]), _kind(e.args[2])}
        if "bool" in kinds:
            if kinds != {"bool"}:
                raise ExprError(f"where() mixes boolean and numeric branches: {e.args[1:]!r}")
            return "bool"
        return "float" if "float" in kinds else "int"
    kinds = {_kind(a) for a in e.args}
    return "float" if "float" in kinds else "int"


b, h, q_idx, kv_idx, q_len, kv_len = (var(n) for n in INDEX_VARS)
score = var(SCORE_VAR)
# absolute position of query row q_idx when the queries are the last q_len of kv_len tokens
# (bottom-right alignment, as in FlashAttention >= 2.1 and decoding)
q_pos = q_idx + (kv_len - q_len)


# ----------------------------------------------------------------------------- walking


def free_vars(e: Expr) -> frozenset:
    if e.op == "var":
        return frozenset(e.args)
    return frozenset().union(*(free_vars(a) for a in e.args if isinstance(a, Expr)))


def tensors(e: Expr) -> tuple:
    """The runtime tensors an expression reads, in first-use order, without repeats."""
    found = []

    def walk(x):
        if x.op == "load" and x.args[0] not in found:
            found.append(x.args[0])
        for a in x.args:
            if isinstance(a, Expr):
                walk(a)

    walk(e)
    return tuple(found)


def chain(e: Expr, op: str) -> list:
    """The operands of ``e``'s top-level chain of ``op`` ("and" / "or"; ``[e]`` if it is not one)."""
    return chain(e.args[0], op) + chain(e.args[1], op) if e.op == op else [e]


def factor_conjuncts(e: Expr) -> Expr:
    """``e`` with the conjuncts every disjunct shares taken out of the disjunction, at every
    level: ``(a & c) | (b & c)`` is ``c & (a | b)``, and ``(a & c) | c`` is ``c``.  A kernel
    evaluates a mask per element of a partial tile, so a conjunct written once is that much
    less work (global + local, causal: ``kv <= q`` once instead of in both halves; 1.13x with
    64 x 64 tiles and 1.29x with 128 x 128 on an H200, benchmarks/mask_forms.py)."""
    if e.op not in ("and", "or", "not"):
        return e
    if e.op != "or":
        return Expr(e.op, tuple(factor_conjuncts(a) for a in e.args))
    terms = [chain(factor_conjuncts(d), "and") for d in chain(e, "or")]
    common = [c for c in terms[0] if all(any(c.same(x) for x in t) for t in terms[1:])]
    if not common:  # as written, each side factored on its own
        return Expr("or", tuple(factor_conjuncts(a) for a in e.args))
    rest = [[x for x in t if not any(x.same(c) for c in common)] for t in terms]
    if any(not r for r in rest):  # a disjunct that is the common part alone: the rest adds nothing
        return _join(common, "and")
    return _join(common + [factor_conjuncts(_join([_join(r, "and") for r in rest], "or"))], "and")


def _join(parts: list, op: str) -> Expr:
    out = parts[0]
    for p in parts[1:]:
        out = Expr(op, (out, p))
    return out


def evaluate(e: Expr, env: Mapping[str, object]):
    """numpy value of ``e``; ``env`` maps variable names and tensor names to arrays/scalars.

    Integers are evaluated in int64 and floats in float64, with numpy broadcasting.
    Tensor loads clamp nothing: the caller passes indices inside the tensor.
    """
    op = e.op
    if op == "const":
        return e.args[0]
    if op == "var":
        try:
            return env[e.args[0]]
        except KeyError:
            raise ExprError(f"no value for variable {e.args[0]!r}") from None
    if op == "load":
        t = e.args[0]
        try:
            arr = np.asarray(env[t.name])
        except KeyError:
            raise ExprError(f"no value for runtime tensor {t.name!r}") from None
        idx = np.broadcast_arrays(*(np.asarray(evaluate(i, env), np.int64) for i in e.args[1:]))
        return arr[tuple(idx)]
    vals = [evaluate(a, env) for a in e.args]
    if op in ("+", "-", "*", "//", "%", "min", "max"):
        vals = [np.asarray(v, np.float64 if _kind(a) == "float" else np.int64)
                for v, a in zip(vals, e.args)]
    if op == "/":
        vals = [np.asarray(v, np.float64) for v in vals]
    for table in (_BINARY, _COMPARE, _LOGIC, _UNARY):
        if op in table:
            return table[op][0](*vals)
    if op == "not":
        return np.logical_not(vals[0])
    if op == "where":
        return np.where(*vals)
    raise ExprError(f"unknown op {op}")  # pragma: no cover - every op is handled above


def to_tir(e: Expr, names: Mapping[str, str], buffers: Mapping[str, str] | None = None,
           unary: Mapping[str, Callable[[str], str]] | None = None) -> str:
    """TVMScript text of ``e``; ``names`` maps variables to TIR expressions (text),
    ``buffers`` maps runtime tensor names to the buffer names in the template, ``unary``
    renders some unary ops (name -> function of the operand's text) in place of the default
    (a kernel that computes ``tanh`` with one PTX instruction, say).

    Integer subexpressions are int32 and floats float32; integers meeting floats are cast.
    """
    buffers = buffers or {}
    unary = unary or {}

    def go(x: Expr, want_float=False) -> str:
        op, kind = x.op, _kind(x)
        if want_float and kind == "int" and op not in ("const", "var", "load"):
            # an integer subexpression stays int32 (T.floordiv/floormod reject floats): cast it
            return f'T.Cast("float32", {go(x)})'
        if op == "const":
            v = x.args[0]
            if isinstance(v, bool):
                return "T.bool(True)" if v else "T.bool(False)"
            if isinstance(v, float) or want_float:
                return f"T.float32({float(v)!r})"
            return f"T.int32({v})"
        if op == "var":
            try:
                text = f"({names[x.args[0]]})"
            except KeyError:
                raise ExprError(f"variable {x.args[0]!r} is not available here") from None
            return f'T.Cast("float32", {text})' if want_float and kind == "int" else text
        if op == "load":
            t = x.args[0]
            buf = buffers.get(t.name)
            if buf is None:
                raise ExprError(f"runtime tensor {t.name!r} is not bound in this kernel")
            text = f"{buf}[{', '.join(go(i) for i in x.args[1:])}]"
            return f'T.Cast("float32", {text})' if want_float and kind == "int" else text
        if op == "not":
            return f"T.Not({go(x.args[0])})"
        if op == "where":
            c = go(x.args[0])
            flt = want_float or kind == "float"
            return f"T.if_then_else({c}, {go(x.args[1], flt)}, {go(x.args[2], flt)})"
        if op in _LOGIC:
            return _LOGIC[op][1].format(go(x.args[0]), go(x.args[1]))
        if op in unary:
            return unary[op](go(x.args[0], True))
        if op in _UNARY:
            return _UNARY[op][1].format(go(x.args[0], True))
        # arithmetic / comparisons: promote both sides to float if either is float
        flt = want_float or any(_kind(a) == "float" for a in x.args) or op == "/"
        den = x.args[1] if op == "/" else None
        if den is not None and den.op == "const" and float(den.args[0]) != 0.0:
            # by a constant: multiply by its reciprocal (a division is a dozen instructions on
            # a GPU; the product is within an ulp of the quotient)
            return f"({go(x.args[0], True)} * T.float32({1.0 / float(den.args[0])!r}))"
        table = _COMPARE if op in _COMPARE else _BINARY
        return table[op][1].format(go(x.args[0], flt), go(x.args[1], flt))

    return go(e)


def _sympy_mod(p, q):
    """``Mod(p, q)`` with every Mod inside ``p`` written ``x - m floor(x / m)``: sympy 1.14
    simplifies ``Mod(c * Mod(x, m), n)`` wrongly (``Mod(-2 Mod(q, 6), 3)`` becomes
    ``Mod(Mod(q, 6)**2, 3)``: 1 at q = 35, where it is 2); the floor form it reduces right."""
    import sympy as sp

    p = p.replace(lambda y: isinstance(y, sp.Mod),
                  lambda y: y.args[0] - y.args[1] * sp.floor(y.args[0] / y.args[1]))
    return sp.Mod(p, q)


def to_sympy(e: Expr):
    """sympy form; integer variables are integer symbols, tensor loads uninterpreted functions."""
    import sympy as sp

    def go(x):
        op = x.op
        if op == "const":
            v = x.args[0]
            return sp.true if v is True else sp.false if v is False else sp.sympify(v)
        if op == "var":
            return sp.Symbol(x.args[0], integer=(x.args[0] != SCORE_VAR), real=True)
        if op == "load":
            return sp.Function(x.args[0].name)(*(go(i) for i in x.args[1:]))
        a = [go(y) for y in x.args]
        simple = {"+": lambda p, q: p + q, "-": lambda p, q: p - q, "*": lambda p, q: p * q,
                  "/": lambda p, q: p / q, "//": lambda p, q: sp.floor(p / q),
                  "%": _sympy_mod, "min": sp.Min, "max": sp.Max,
                  "<": sp.Lt, "<=": sp.Le, ">": sp.Gt, ">=": sp.Ge, "==": sp.Eq, "!=": sp.Ne,
                  "and": sp.And, "or": sp.Or, "not": sp.Not,
                  "exp": sp.exp, "exp2": lambda p: 2 ** p, "log": sp.log, "tanh": sp.tanh,
                  "sqrt": sp.sqrt}
        if op in ("//", "%") and a[0].has(sp.Piecewise, sp.Min, sp.Max):
            # sympy (1.14) takes the parity of a Piecewise/Min/Max from its branches and then
            # wrongly calls even/6 an integer (floor(where(c, 8, 4) / 6) loses its floor, the
            # Mod becomes 0): fold the where/min/max out and floor each branch separately
            folded = sp.piecewise_fold(a[0].rewrite(sp.Piecewise))
            if isinstance(folded, sp.Piecewise):
                return sp.Piecewise(*((simple[op](v, a[1]), c) for v, c in folded.args))
            return simple[op](folded, a[1])
        if op == "where":
            if _kind(x) == "bool":  # a Piecewise is no Boolean: And/Or/Not would refuse it
                return sp.Or(sp.And(a[0], a[1]), sp.And(sp.Not(a[0]), a[2]))
            return sp.Piecewise((a[1], a[0]), (a[2], True))
        return simple[op](*a)

    return go(e)


# ----------------------------------------------------------------------------- printing

_PREC = {"or": 1, "and": 2, "not": 3, "<": 4, "<=": 4, ">": 4, ">=": 4, "==": 4, "!=": 4,
         "+": 5, "-": 5, "*": 6, "/": 6, "//": 6, "%": 6}
_SYMBOL = {"and": "&", "or": "|"}


def _repr(e: Expr, parent_prec: int = 0) -> str:
    op = e.op
    if op == "const":
        return repr(e.args[0]) if not isinstance(e.args[0], bool) else f"const({e.args[0]})"
    if op == "var":
        return e.args[0]
    if op == "load":
        t = e.args[0]
        return (f"Tensor({t.name!r}, {t.dims!r}, {t.dtype!r}, {t.sample!r})"
                f"[{', '.join(_repr(i) for i in e.args[1:])}]")
    if op == "where":
        return f"where({', '.join(_repr(a) for a in e.args)})"
    if op in ("min", "max"):
        return f"{op}imum({_repr(e.args[0])}, {_repr(e.args[1])})"
    if op in _UNARY:
        return f"{op}({_repr(e.args[0])})"
    prec = _PREC[op]
    if op == "not":
        text = f"~{_repr(e.args[0], prec + 1)}"
    else:
        sym = _SYMBOL.get(op, op)
        # comparisons and logic bind looser than & and | in Python: always parenthesise them
        lhs = _repr(e.args[0], prec if op not in _COMPARE else 99)
        rhs = _repr(e.args[1], prec + 1 if op not in _COMPARE else 99)
        if e.args[0].op == "const" and (op in _COMPARE or e.args[1].op == "const"):
            # a plain number on the left would make Python fold two constants (3 - 4) or
            # reflect a comparison (3 < q_idx becomes q_idx > 3): keep it an expression
            lhs = f"const({e.args[0].args[0]!r})"
        text = f"{lhs} {sym} {rhs}"
    needs = prec < parent_prec or op in _COMPARE or op in _LOGIC
    return f"({text})" if needs and parent_prec else text


def namespace() -> dict:
    """Names that ``repr`` of an expression uses; ``eval(repr(e), namespace())`` rebuilds it."""
    return {"b": b, "h": h, "q_idx": q_idx, "kv_idx": kv_idx, "q_len": q_len, "kv_len": kv_len,
            "score": score, "Tensor": Tensor, "where": where, "minimum": minimum,
            "maximum": maximum, "exp": exp, "exp2": exp2, "log": log, "tanh": tanh, "sqrt": sqrt,
            "const": const}
