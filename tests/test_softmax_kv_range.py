"""Key ranges read off masks (attngen/softmax/kv_range.py): sound for every gallery mask, tight
for the interval masks, absent where no linear bound exists."""
import itertools

import numpy as np
import pytest

from attngen import expr as E
from attngen import masks
from attngen.gallery import GALLERY
from attngen.softmax import kv_range
from attngen.spec import Attention


class _T:
    """Just enough of TVMScript's ``T`` to evaluate a rendered bound in Python."""

    max = staticmethod(max)
    min = staticmethod(min)


def bounds(mask, q_first, q_last, q_len, kv_len):
    """(lo, hi) of a tile of rows evaluated in Python, None where unbounded."""
    lo, hi = kv_range.render_range(kv_range.visible_keys(mask.expr), {"q_len": "q_len", "kv_len": "kv_len"},
                                   first_row="q_first", last_row="q_last")
    env = {"T": _T, "q_first": q_first, "q_last": q_last, "q_len": q_len, "kv_len": kv_len}
    return (None if lo is None else eval(lo, env)), (None if hi is None else eval(hi, env))


def visible(mask, q_len, kv_len):
    """bool [q_len, kv_len] for masks without runtime tensors (b = h = 0)."""
    env = dict(b=0, h=0, q_idx=np.arange(q_len)[:, None], kv_idx=np.arange(kv_len)[None, :],
               q_len=q_len, kv_len=kv_len)
    return np.broadcast_to(E.evaluate(mask.expr, env), (q_len, kv_len))


GALLERY_MASKS = sorted({repr(e.spec.mask): e.spec.mask for e in GALLERY.values()
                        if isinstance(e.spec, Attention) and not e.spec.mask.tensors}.items())


@pytest.mark.parametrize("mask", [m for _, m in GALLERY_MASKS], ids=[n for n, _ in GALLERY_MASKS])
def test_every_visible_key_is_inside_the_bounds(mask):
    for q_len, kv_len, rows in [(300, 300, 64), (17, 300, 8), (300, 40, 16), (5, 5, 2)]:
        vis = visible(mask, q_len, kv_len)
        for q_first in range(0, q_len, rows):
            q_last = min(q_first + rows, q_len) - 1
            lo, hi = bounds(mask, q_first, q_last, q_len, kv_len)
            keys = np.nonzero(vis[q_first:q_last + 1].any(axis=0))[0]
            if lo is not None and keys.size:
                assert keys.min() >= lo, (q_first, lo, keys.min())
            if hi is not None and keys.size:
                assert keys.max() <= hi, (q_first, hi, keys.max())


@pytest.mark.parametrize("mask, lo_edge, hi_edge", [
    (masks.causal(), False, True),
    (masks.sliding_window(37), True, True),
    (masks.sliding_window(37, causal=False), True, True),
    (masks.prefix_lm(50), False, True),
    (masks.causal() & masks.sliding_window(9, causal=False), True, True),
])
def test_interval_masks_get_tight_bounds(mask, lo_edge, hi_edge):
    """For masks that are one interval per row, the bounds are the visible range exactly."""
    q_len, kv_len = 120, 200
    vis = visible(mask, q_len, kv_len)
    for q_first, q_last in itertools.product(range(0, q_len, 17), [None]):
        q_last = min(q_first + 16, q_len - 1)
        lo, hi = bounds(mask, q_first, q_last, q_len, kv_len)
        keys = np.nonzero(vis[q_first:q_last + 1].any(axis=0))[0]
        assert (lo is not None) == lo_edge and (hi is not None) == hi_edge
        if lo_edge:
            assert lo == keys.min() or (lo < 0 and keys.min() == 0)
        if hi_edge:
            assert hi == keys.max() or (hi >= kv_len and keys.max() == kv_len - 1)


@pytest.mark.parametrize("mask", [masks.full(), masks.dilated(4, 3) | masks.full(),
                                  masks.bigbird(16, 3, 1, 100), masks.global_local(4, 16),
                                  masks.document(causal=False), masks.block_sparse(64),
                                  masks.Mask.from_fn(lambda b, h, q, k: k <= q + h)])
def test_no_bound_where_none_is_linear(mask):
    assert kv_range.render_range(kv_range.visible_keys(mask.expr), {"q_len": "L", "kv_len": "K"},
                                 "a", "b")[1] is None


def test_negation_is_pushed_to_the_comparisons():
    """~(kv_idx > q_pos) is causal; ~(kv_idx < 3) is a lower bound."""
    upper = masks.Mask(~(E.kv_idx > E.q_pos))
    assert bounds(upper, 0, 9, 10, 10) == (None, 9)
    lower = masks.Mask(~(E.kv_idx < 3))
    assert bounds(lower, 0, 9, 10, 10) == (3, None)
