"""``attngen show SPEC --tiles out.svg``: the mask and what it costs, as a picture.

Left: the mask itself (query rows down, keys across; each pixel the visible fraction of the
entries it covers).  Right: the tile map at the kernel's tile size: tiles the kernel never
visits (skipped: outside the key range that ``softmax.kv_range`` reads off the mask), tiles it
visits although nothing in them is visible (empty: wasted work, which a per-tile map of the
mask would save), and tiles whose entries are all visible (full) or some (partial).  Where the
kernel loops over a per-tile map (the tensor-core kernels, for masks that are not one key
interval per row) it visits no empty tile, and a partial tile where the mask's static
conjuncts alone decide (``tile_map.static_part``: the causal diagonal inside one document) is
drawn as such: it is masked without reading a tensor.  The tile shape and the map are those of
the kernel the target runs: its tuned config, else its default.  Tiles are classified exactly,
from the mask evaluated over the tile; runtime tensors (document ids, block layouts, bias
tables) are drawn at random as the checker draws them, which the caption says.
"""
from __future__ import annotations

from xml.sax.saxutils import escape

import numpy as np

from . import expr as E
from .spec import Attention

COLORS = {"skipped": "#f2f2f2", "empty": "#fc8181", "full": "#2b6cb0", "partial": "#f6ad55",
          "static": "#faf089"}  # static: partial, masked by the static conjuncts alone
PIXELS = 512  # drawing size of each panel


def kernel_config(spec: Attention, target, length: int) -> dict:
    """The config the target's kernel runs for ``spec`` at ``length``: its tuned one (this
    machine's database), else the schedule's default."""
    from .tune import best_config, sizes_for
    from .tune.space import schedule_module

    tuned = best_config(spec, target, sizes_for(spec, length)) or {}
    return {**schedule_module(spec, target).default(spec, target), **tuned}


def tile_shape(spec: Attention, target, config: dict | None = None) -> tuple:
    """(query positions, keys) per tile of ``config`` (default: the target's default kernel)."""
    if config is None:
        from .tune.space import default_config

        config = default_config(spec, target)
    if "m_tiles" in config:  # the tensor-core kernels: a CTA's rows of one query head
        return 16 * config["m_tiles"] * config["warps"], config["block_n"]
    return max(1, config["block_q"] // spec.group_size), config["block_k"]


def visible(spec: Attention, q_len: int, kv_len: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean ``[q_len, kv_len]`` mask of batch 0, head 0 (runtime tensors drawn at random)."""
    from .softmax import data

    sizes = {"batch": 1, "heads": spec.num_heads, "q_len": q_len, "kv_len": kv_len}
    env = {t.name: data.sample_tensor(t, t.shape(sizes), rng) for t in spec.runtime_tensors}
    return evaluate_grid(spec.mask.expr, q_len, kv_len, env)


def evaluate_grid(mask: E.Expr, q_len: int, kv_len: int, tensors: dict, b: int = 0,
                  h: int = 0) -> np.ndarray:
    """``mask`` over every (query, key) of batch ``b``, head ``h``, as a boolean ``[q_len, kv_len]``."""
    env = dict(tensors, b=b, h=h, q_idx=np.arange(q_len)[:, None], kv_idx=np.arange(kv_len)[None, :],
               q_len=q_len, kv_len=kv_len)
    return np.broadcast_to(np.asarray(E.evaluate(mask, env), bool), (q_len, kv_len))


def tile_counts(mask: np.ndarray, block_m: int, block_n: int) -> np.ndarray:
    """Visible entries per tile and entries per tile, ``[2, tiles_m, tiles_n]``."""
    q_len, kv_len = mask.shape
    tm, tn = -(-q_len // block_m), -(-kv_len // block_n)
    padded = np.zeros((tm * block_m, tn * block_n), np.int64)
    padded[:q_len, :kv_len] = mask
    inside = np.zeros_like(padded)
    inside[:q_len, :kv_len] = 1
    fold = lambda x: x.reshape(tm, block_m, tn, block_n).sum(axis=(1, 3))  # noqa: E731
    return np.stack([fold(padded), fold(inside)])


def classify(counts: np.ndarray, visited: np.ndarray, static_seen: np.ndarray | None = None) -> np.ndarray:
    """Each tile's kind; with ``static_seen`` (entries the mask's static conjuncts see, which
    the mask implies), a partial tile where the two counts agree is "static"."""
    seen, total = counts
    partial = "partial" if static_seen is None else np.where(seen == static_seen, "static", "partial")
    kind = np.where(seen == 0, "empty", np.where(seen == total, "full", partial))
    return np.where(visited, kind, "skipped")


def visited_tiles(spec: Attention, length: int, block_m: int, block_n: int) -> np.ndarray:
    """``[tiles_m, tiles_n]``: which tiles the kernel loads, from the bounds of ``kv_range``."""
    from .softmax.kv_range import Bound, visible_keys
    from .softmax.predicate import mask_expr

    interval = visible_keys(mask_expr(spec))
    rows = np.arange(length)
    env = {"q_idx": rows, "q_len": length, "kv_len": length, "": 1}

    def value(tree):
        if isinstance(tree, Bound):
            return sum(c * env[v] for v, c in tree.form) + np.zeros(length, np.int64)
        op, a, b = tree
        return (np.maximum if op == "max" else np.minimum)(value(a), value(b))

    lo = np.zeros(length, np.int64) if interval.lower is None else value(interval.lower)
    hi = np.full(length, length - 1) if interval.upper is None else value(interval.upper)
    tm, tn = -(-length // block_m), -(-length // block_n)
    out = np.zeros((tm, tn), bool)
    for i in range(tm):
        first = max(lo[i * block_m:(i + 1) * block_m].min(), 0)
        last = min(hi[i * block_m:(i + 1) * block_m].max(), length - 1)
        if first <= last:
            out[i, first // block_n:last // block_n + 1] = True
    return out


def tile_kinds(spec: Attention, config: dict, length: int, rng: np.random.Generator):
    """(mask, kinds): the visible entries of batch 0, head 0 and each tile's kind under
    ``config``'s kernel (the band of kv_range; with a tile map, only its non-empty tiles)."""
    from .softmax.tile_map import static_part

    block_m, block_n = tile_shape(spec, None, config)
    mask = visible(spec, length, length, rng)
    counts = tile_counts(mask, block_m, block_n)
    visited = visited_tiles(spec, length, block_m, block_n)
    static_seen = None
    if config.get("tile_map"):
        visited &= counts[0] > 0
        static = static_part(spec)
        if static is not None:  # it reads no tensor
            static_seen = tile_counts(evaluate_grid(static, length, length, {}), block_m, block_n)[0]
    return mask, classify(counts, visited, static_seen)


def svg(spec: Attention, target, length: int, seed: int = 0) -> str:
    config = kernel_config(spec, target, length)
    block_m, block_n = tile_shape(spec, target, config)
    mask, kinds = tile_kinds(spec, config, length, np.random.default_rng(seed))
    frac = {k: float((kinds == k).mean()) for k in COLORS}
    kernel = "".join(f", {w}" for w in (config.get("mma"), config.get("tile_map") and "tile map") if w)
    caption = (f"{spec.mask!r}  |  length {length}, tiles {block_m}x{block_n} ({target.name}{kernel}): "
               f"{frac['skipped']:.0%} skipped, {frac['empty']:.0%} empty but visited, "
               f"{frac['full']:.0%} full, {frac['partial']:.0%} partial"
               + (f", {frac['static']:.0%} partial by static conjuncts" if frac["static"] else "")
               + f"; visible {mask.mean():.1%} of the matrix")
    if spec.runtime_tensors:
        caption += "  (runtime tensors drawn at random)"
    pad, gap = 20, 30
    width, height = 2 * PIXELS + gap + 2 * pad, PIXELS + 2 * pad + 40
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="12">',
             f'<rect width="{width}" height="{height}" fill="white"/>']
    parts += _mask_panel(mask, pad, pad)
    parts += _tile_panel(kinds, pad + PIXELS + gap, pad)
    parts.append(f'<text x="{pad}" y="{PIXELS + pad + 25}">{escape(caption)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _mask_panel(mask: np.ndarray, x0: int, y0: int) -> list:
    q_len, kv_len = mask.shape
    rows, cols = min(q_len, 128), min(kv_len, 128)  # at most 128 x 128 cells
    edges_r = np.linspace(0, q_len, rows + 1).astype(int)
    edges_c = np.linspace(0, kv_len, cols + 1).astype(int)
    ch, cw = PIXELS / rows, PIXELS / cols
    out = [f'<rect x="{x0}" y="{y0}" width="{PIXELS}" height="{PIXELS}" fill="white" stroke="#999"/>']
    for i in range(rows):
        band = mask[edges_r[i]:edges_r[i + 1]]
        for j in range(cols):
            f = band[:, edges_c[j]:edges_c[j + 1]].mean()
            if f > 0:
                out.append(f'<rect x="{x0 + j * cw:.2f}" y="{y0 + i * ch:.2f}" width="{cw:.2f}" '
                           f'height="{ch:.2f}" fill="black" fill-opacity="{f:.2f}"/>')
    return out


def _tile_panel(kinds: np.ndarray, x0: int, y0: int) -> list:
    tm, tn = kinds.shape
    ch, cw = PIXELS / tm, PIXELS / tn
    stroke = ' stroke="white" stroke-width="0.5"' if max(tm, tn) <= 64 else ""
    out = []
    for i in range(tm):
        for j in range(tn):
            out.append(f'<rect x="{x0 + j * cw:.2f}" y="{y0 + i * ch:.2f}" width="{cw:.2f}" '
                       f'height="{ch:.2f}" fill="{COLORS[kinds[i, j]]}"{stroke}/>')
    return out
