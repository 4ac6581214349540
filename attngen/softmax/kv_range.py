"""Which keys a tile of query rows can see: bounds on ``kv_idx`` read off the mask.

A kernel loops over K/V tiles; tiles that no row of the query tile can see need not be loaded.
For the masks whose visible keys form an interval per row (causal, sliding windows, prefix-LM,
and their conjunctions with anything else) the interval's ends are linear in ``q_idx``:
``kv_idx <= q_idx + kv_len - q_len`` (causal), ``kv_idx >= q_idx + kv_len - q_len - w + 1``
(window).  This module finds such atoms and returns the bounds for a whole tile of rows as
TVMScript text, so the kernel computes ``[kv_begin, kv_end)`` at run time from the tile's first
and last rows and the (symbolic) lengths.

The bounds are *sound*, not tight: every visible key lies inside them, and the kernel still
applies the mask to every element.  Atoms that are not linear in ``kv_idx`` with coefficient
+-1 (modular patterns, runtime tensors, head-dependent terms) give no bound, which under ``&``
just drops out and under ``|`` makes that side unbounded.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

from .. import expr as E

# A linear form over the integer variables: {name: coefficient}, the constant under key 1.
Linear = dict

_ROW_VARS = ("q_idx",)             # vary over the rows of a tile
_FIXED_VARS = ("q_len", "kv_len")  # the same for every row of a tile
_ORDER = ("q_idx", "kv_len", "q_len", "")  # how a bound's terms are printed


@dataclass(frozen=True)
class Bound:
    """The linear function ``sum(coeff * var) + const`` of ``q_idx``, ``q_len``, ``kv_len`` that
    bounds ``kv_idx`` (from below or above: the side of the :class:`Interval` it sits on)."""

    form: tuple  # ((var, coeff), ...), the constant under var ""

    def render(self, names: Mapping[str, str], row: Mapping[str, str]) -> str:
        """TVMScript text; ``row`` gives the text of ``q_idx`` (a tile's first or last row),
        ``names`` that of the lengths.  ``q_idx + kv_len - q_len - 255`` reads as written."""
        text = ""
        for var, coeff in sorted(self.form, key=lambda vc: _ORDER.index(vc[0])):
            sign = "-" if coeff < 0 else "+"
            if var == "":
                term = str(abs(coeff))
            else:
                value = row[var] if var in _ROW_VARS else names[var]
                term = value if abs(coeff) == 1 else f"{abs(coeff)} * {value}"
            text = (f"-{term}" if sign == "-" else term) if not text else f"{text} {sign} {term}"
        return f"({text or '0'})"

    def q_coeff(self) -> int:
        return dict(self.form).get("q_idx", 0)


@dataclass(frozen=True)
class Interval:
    """Bounds on the keys one row sees, ``lower <= kv_idx <= upper``.  Each side is None
    (unbounded), a :class:`Bound`, or ``(op, a, b)`` with op ``"max"`` or ``"min"`` combining
    two sides (``&`` takes the tighter of two bounds, ``|`` the looser)."""

    lower: object = None
    upper: object = None


def visible_keys(mask: E.Expr) -> Interval:
    """The interval of keys a row can see, as bound trees (see :class:`Interval`)."""
    return _interval(_push_not(mask, False))


def render_range(interval: Interval, names: Mapping[str, str], first_row: str, last_row: str):
    """``(kv_lo, kv_hi)`` TVMScript texts for a tile of rows ``first_row..last_row`` (or None
    per side): every key a row in the tile sees satisfies ``kv_lo <= kv_idx <= kv_hi``."""

    def go(tree, upper: bool) -> str:
        if isinstance(tree, Bound):
            # an upper bound is loosest at the row maximising it, a lower bound at the one
            # minimising it; with a q_idx coefficient c that is the last row iff c >= 0 (upper)
            increasing = tree.q_coeff() >= 0
            row = last_row if increasing == upper else first_row
            return tree.render(names, {"q_idx": row})
        op, a, b = tree
        return f"T.{op}({go(a, upper)}, {go(b, upper)})"

    lo = None if interval.lower is None else go(interval.lower, False)
    hi = None if interval.upper is None else go(interval.upper, True)
    return lo, hi


# ----------------------------------------------------------------------------- analysis


def _push_not(e: E.Expr, negate: bool) -> E.Expr:
    """Negation normal form: ``~`` pushed down to comparisons (De Morgan)."""
    if e.op == "not":
        return _push_not(e.args[0], not negate)
    if e.op in ("and", "or"):
        op = {"and": "or", "or": "and"}[e.op] if negate else e.op
        return E.Expr(op, tuple(_push_not(a, negate) for a in e.args))
    if negate and e.op in _NEGATED:
        return E.Expr(_NEGATED[e.op], e.args)
    if negate:  # a constant or a where(): keep the negation opaque
        return E.Expr("not", (e,))
    return e


_NEGATED = {"<": ">=", "<=": ">", ">": "<=", ">=": "<", "==": "!=", "!=": "=="}


def _interval(e: E.Expr) -> Interval:
    if e.op == "and":
        a, b = _interval(e.args[0]), _interval(e.args[1])
        return Interval(_join("max", a.lower, b.lower), _join("min", a.upper, b.upper))
    if e.op == "or":
        a, b = _interval(e.args[0]), _interval(e.args[1])
        lower = None if a.lower is None or b.lower is None else ("min", a.lower, b.lower)
        upper = None if a.upper is None or b.upper is None else ("max", a.upper, b.upper)
        return Interval(lower, upper)
    if e.op in ("<", "<=", ">", ">=", "=="):
        return _atom(e)
    return Interval()


def _join(op: str, a, b):
    """Combine two bounds of a conjunction: either alone bounds already."""
    if a is None:
        return b
    if b is None:
        return a
    return (op, a, b)


def _atom(e: E.Expr) -> Interval:
    """``lhs OP rhs`` -> bounds on kv_idx when ``lhs - rhs`` is linear with kv_idx at +-1."""
    diff = _linear(E.Expr("-", e.args))
    if diff is None or diff.get("kv_idx", 0) not in (1, -1):
        return Interval()
    sign = diff.pop("kv_idx")
    if set(diff) - {1, *_ROW_VARS, *_FIXED_VARS}:
        return Interval()
    # sign * kv + rest OP 0  ->  kv OP' -rest/sign, with OP flipped when sign < 0
    rest = {k: -v * sign for k, v in diff.items()}  # kv OP' rest
    op = e.op if sign > 0 else {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "=="}[e.op]
    if op == "<":
        return Interval(upper=_bound(rest, -1))
    if op == "<=":
        return Interval(upper=_bound(rest, 0))
    if op == ">":
        return Interval(lower=_bound(rest, 1))
    if op == ">=":
        return Interval(lower=_bound(rest, 0))
    return Interval(lower=_bound(rest, 0), upper=_bound(rest, 0))


def _bound(form: Linear, shift: int) -> Bound:
    form = dict(form)
    const = form.pop(1, 0) + shift
    items = sorted((k, v) for k, v in form.items() if v)
    if const:
        items.append(("", const))
    return Bound(tuple(items))


def _linear(e: E.Expr) -> Optional[Linear]:
    """``e`` as a linear form with integer coefficients, or None."""
    if e.op == "const":
        v = e.args[0]
        return {1: v} if isinstance(v, int) and not isinstance(v, bool) else None
    if e.op == "var":
        return {e.args[0]: 1} if e.args[0] != E.SCORE_VAR else None
    if e.op in ("+", "-"):
        a, b = _linear(e.args[0]), _linear(e.args[1])
        if a is None or b is None:
            return None
        sign = 1 if e.op == "+" else -1
        out = dict(a)
        for k, v in b.items():
            out[k] = out.get(k, 0) + sign * v
        return {k: v for k, v in out.items() if v}
    if e.op == "*":
        a, b = _linear(e.args[0]), _linear(e.args[1])
        if a is None or b is None:
            return None
        for x, y in ((a, b), (b, a)):
            if set(x) <= {1}:  # a constant factor
                c = x.get(1, 0)
                return {k: c * v for k, v in y.items() if c * v}
        return None
    return None
