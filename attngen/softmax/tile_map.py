"""The per-tile map of a mask that is not one interval of keys per row (``templates/tile_map.j2``).

The tensor-core kernel skips key tiles outside the band ``kv_range`` reads off the mask, and
runs tiles inside every row's interval without mask arithmetic.  That is all a causal or
windowed mask needs; for global + local, document ids, block-sparse layouts, prefix-LM,
dilated and BigBird masks the band is a hull (often the whole causal triangle) with most of
its tiles empty.  For those, two small kernels run before the attention kernel: ``tile_state``
classifies every tile of the band (empty / partial / full) by counting its visible elements,
``tile_list`` compacts each row tile's non-empty tiles into a list with their kind; the
attention kernel then loops over that list.  A mask that ANDs conjuncts reading runtime
tensors with conjuncts that read none (document ids within a causal mask) has a fourth kind:
a partial tile where the tensor conjuncts hold on every element the static ones see (the
causal diagonal inside one document), which the kernel masks with the static conjuncts alone,
reading no tensor.  The map is computed on the GPU (like
FlexAttention's ``create_block_mask``, without an N x N tensor): its cost is one predicate
evaluation per element of the band, against the ~4 d multiply-adds the attention spends on
each visible element.  A mask that reads runtime tensors (document ids, a block layout) gets
its map at every call; one that does not (global + local, prefix-LM, dilated) gets it once per
size and device (``static``: the driver keeps it, ``attngen.kernel``).
"""
from __future__ import annotations

import functools
import operator

from .. import expr as E
from ..family import Arg
from ..spec import Attention
from . import predicate

KERNELS = ("tile_state", "tile_list")


def needed(spec: Attention) -> bool:
    """Whether the mask needs a map: it is not ``true`` and not exactly one interval per row
    (packed sequences have no map: each sequence's tiles would need their own)."""
    from .tensorcore import exact_interval

    return spec.layout != "thd" and not exact_interval(predicate.mask_expr(spec))


def static(spec: Attention) -> bool:
    """Whether the map follows from the sizes alone: the mask reads no runtime tensor and the
    lengths are the tensors' (no per-sequence ``kv_lens``).  Such a map is computed once per
    size and device (``Call.fills``), like a BlockMask built once and reused."""
    from .signature import has_kv_lens

    return not has_kv_lens(spec) and not E.tensors(predicate.mask_expr(spec))


def map_heads(spec: Attention) -> int:
    """One map per head when the mask reads ``h``, else one map shared by every head."""
    return spec.num_heads if "h" in E.free_vars(predicate.mask_expr(spec)) else 1


def scratch(spec: Attention, block_m: int, block_n: int) -> tuple:
    hm = map_heads(spec)
    tiles = ("batch", hm, f"q_len/{block_m}", f"kv_len/{block_n}")
    return (Arg("tile_state", tiles, "int32", "scratch"),
            Arg("tile_list", tiles, "int32", "scratch"),
            Arg("tile_count", ("batch", hm, f"q_len/{block_m}"), "int32", "scratch"))


def static_part(spec: Attention):
    """The mask's conjuncts that read no runtime tensor, ANDed, when others do read one (else
    None).  The mask implies them, so on a tile where both count the same visible elements
    they alone decide it."""
    parts = E.chain(predicate.mask_expr(spec), "and")
    static = [p for p in parts if not E.tensors(p)]
    if not static or len(static) == len(parts):
        return None
    return functools.reduce(operator.and_, static)


def visible_fn(spec: Attention, mask: E.Expr | None = None):
    """``visible(q, k)``: TVMScript text of "key k is visible to real row q" (k < kv_len and
    the mask, or ``mask`` instead), for the template to call with its own row and key
    expressions."""
    mask = predicate.mask_expr(spec) if mask is None else mask

    def visible(q: str, k: str) -> str:
        names = {"b": "b", "h": "h", "q_idx": q, "kv_idx": k, "q_len": "lq", "kv_len": "kvl"}
        text = f"{k} < kvl"
        if not mask.same(E.true()):
            text = f"T.And({text}, {predicate.tir(mask, names, spec)})"
        return text

    return visible
