"""Compile-time classification of mask tiles: empty, full or partial.

A tile is ``block_m`` query rows ``[q0, q0 + block_m)`` times ``block_n`` key columns
``[k0, k0 + block_n)``.  The mask is turned into sympy, ``q_idx``/``kv_idx`` become
``q0 + i``/``k0 + j`` with ``i``, ``j`` ranging over the tile, and every atom (a comparison) is
bounded over that box: exactly where it is linear in ``i`` and ``j`` (its extremes sit at the
corners), by interval arithmetic through ``floor``, ``Mod``, ``Min`` and ``Max`` otherwise.
Atoms combine in three-valued logic.  The answer is sound: EMPTY means no visible entry,
FULL means every in-range entry is visible; PARTIAL is the safe answer when the bounds cannot
decide (always for masks that read runtime tensors: those get a per-tile map at run time).
"""
from __future__ import annotations

import enum
from typing import Mapping, Optional

import sympy as sp

from . import expr as E


class Tile(enum.Enum):
    EMPTY = "empty"
    FULL = "full"
    PARTIAL = "partial"


_I, _J = sp.symbols("_tile_i _tile_j", integer=True)


_SYMPY_CACHE: dict = {}


def _sympy_mask(mask: E.Expr):
    # keyed on the structural key: Expr.__eq__ builds a comparison, so an Expr cannot be a
    # dict/lru_cache key (a second, equal mask object would raise in the lookup)
    key = mask._key()
    if key not in _SYMPY_CACHE:
        if len(_SYMPY_CACHE) >= 256:
            _SYMPY_CACHE.clear()
        _SYMPY_CACHE[key] = E.to_sympy(mask)
    return _SYMPY_CACHE[key]


def classify(mask: E.Expr, *, q0: int, k0: int, block_m: int, block_n: int, q_len: int,
             kv_len: int, fixed: Optional[Mapping[str, int]] = None) -> Tile:
    """Classify one tile; ``fixed`` may pin ``b`` and ``h`` (else they range freely)."""
    rows = min(block_m, q_len - q0)
    cols = min(block_n, kv_len - k0)
    if rows <= 0 or cols <= 0:
        return Tile.EMPTY
    subs = {sp.Symbol("q_idx", integer=True, real=True): q0 + _I,
            sp.Symbol("kv_idx", integer=True, real=True): k0 + _J,
            sp.Symbol("q_len", integer=True, real=True): q_len,
            sp.Symbol("kv_len", integer=True, real=True): kv_len}
    for name, value in (fixed or {}).items():
        subs[sp.Symbol(name, integer=True, real=True)] = value
    box = {_I: (0, rows - 1), _J: (0, cols - 1)}
    truth = _truth(_sympy_mask(mask).subs(subs), box)
    return {True: Tile.FULL, False: Tile.EMPTY, None: Tile.PARTIAL}[truth]


def tile_map(mask: E.Expr, *, block_m: int, block_n: int, q_len: int, kv_len: int,
             fixed: Optional[Mapping[str, int]] = None):
    """``[ceil(q_len/block_m), ceil(kv_len/block_n)]`` list of lists of :class:`Tile`."""
    return [[classify(mask, q0=qm, k0=kn, block_m=block_m, block_n=block_n, q_len=q_len,
                      kv_len=kv_len, fixed=fixed)
             for kn in range(0, kv_len, block_n)]
            for qm in range(0, q_len, block_m)]


# ----------------------------------------------------------------------------- three-valued logic


def _truth(e, box) -> Optional[bool]:
    """True / False if ``e`` holds on the whole box / nowhere on it, None if undecided."""
    if e is sp.true or e is True:
        return True
    if e is sp.false or e is False:
        return False
    if isinstance(e, sp.And):
        parts = [_truth(a, box) for a in e.args]
        return False if False in parts else True if all(p is True for p in parts) else None
    if isinstance(e, sp.Or):
        parts = [_truth(a, box) for a in e.args]
        return True if True in parts else False if all(p is False for p in parts) else None
    if isinstance(e, sp.Not):
        t = _truth(e.args[0], box)
        return None if t is None else not t
    if isinstance(e, sp.Rel):
        return _relation(e, box)
    return None


def _relation(rel, box) -> Optional[bool]:
    lo, hi = _bounds(rel.lhs - rel.rhs, box)
    if lo is None:
        return None
    op = rel.rel_op
    if op in ("<", "<="):
        strict = op == "<"
        holds = hi < 0 if strict else hi <= 0
        fails = lo >= 0 if strict else lo > 0
    elif op in (">", ">="):
        strict = op == ">"
        holds = lo > 0 if strict else lo >= 0
        fails = hi <= 0 if strict else hi < 0
    elif op == "==":
        holds, fails = lo == hi == 0, lo > 0 or hi < 0
    else:  # !=
        holds, fails = lo > 0 or hi < 0, lo == hi == 0
    return True if holds else False if fails else None


def _bounds(e, box):
    """(min, max) of integer-valued ``e`` over ``box`` (rationals allowed), or (None, None)."""
    e = sp.expand(e)
    if e.free_symbols - set(box):
        return None, None
    if e.is_number:
        return e, e
    poly = _linear(e, box)
    if poly is not None:
        const, coeffs = poly
        lo = const + sum(c * (box[s][0] if c > 0 else box[s][1]) for s, c in coeffs.items())
        hi = const + sum(c * (box[s][1] if c > 0 else box[s][0]) for s, c in coeffs.items())
        return lo, hi
    return _interval(e, box)


def _linear(e, box):
    try:
        poly = sp.Poly(e, *box.keys())
    except sp.PolynomialError:
        return None
    if poly.total_degree() > 1:
        return None
    coeffs = {}
    const = 0
    for monom, c in poly.terms():
        if not c.is_number:
            return None
        if sum(monom) == 0:
            const = c
        else:
            coeffs[list(box)[monom.index(1)]] = c
    return const, coeffs


def _interval(e, box):
    if e.is_number:
        return e, e
    if e in box:
        return box[e]
    if isinstance(e, sp.Add):
        parts = [_bounds(a, box) for a in e.args]
        if any(p[0] is None for p in parts):
            return None, None
        return sum(p[0] for p in parts), sum(p[1] for p in parts)
    if isinstance(e, sp.Mul):
        consts = [a for a in e.args if a.is_number]
        rest = [a for a in e.args if not a.is_number]
        if len(rest) != 1:
            return None, None
        c = sp.Mul(*consts)
        lo, hi = _bounds(rest[0], box)
        if lo is None:
            return None, None
        return (c * lo, c * hi) if c >= 0 else (c * hi, c * lo)
    if isinstance(e, sp.floor):
        lo, hi = _bounds(e.args[0], box)
        return (None, None) if lo is None else (sp.floor(lo), sp.floor(hi))
    if isinstance(e, sp.Mod) and e.args[1].is_number and e.args[1] > 0:
        n = e.args[1]
        lo, hi = _bounds(e.args[0], box)
        if lo is None:
            return 0, n - 1
        if sp.floor(lo / n) == sp.floor(hi / n):  # the range stays inside one period
            return lo - n * sp.floor(lo / n), hi - n * sp.floor(lo / n)
        return 0, n - 1
    if isinstance(e, (sp.Min, sp.Max)):
        parts = [_bounds(a, box) for a in e.args]
        if any(p[0] is None for p in parts):
            return None, None
        pick = min if isinstance(e, sp.Min) else max
        return pick(p[0] for p in parts), pick(p[1] for p in parts)
    if isinstance(e, sp.Piecewise):
        parts = [_bounds(branch, box) for branch, _ in e.args]
        if any(p[0] is None for p in parts):
            return None, None
        return min(p[0] for p in parts), max(p[1] for p in parts)
    return None, None
