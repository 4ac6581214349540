"""``attngen show SPEC --tiles out.svg``: the mask and what it costs, as a picture.

Left: the mask itself (query rows down, keys across; each pixel the visible fraction of the
entries it covers).  Right: the tile map at the kernel's tile size, each tile coloured by what
the kernel does with it: never visited (empty), run without mask arithmetic (full), or run with
the predicate (partial).  Tiles are classified exactly, from the mask evaluated over the tile;
runtime tensors (document ids, block layouts, bias tables) are drawn at random as the checker
draws them, which the caption says.
"""
from __future__ import annotations

from xml.sax.saxutils import escape

import numpy as np

from . import expr as E
from .spec import Attention

COLORS = {"empty": "#f2f2f2", "full": "#2b6cb0", "partial": "#f6ad55"}
PIXELS = 512  # drawing size of each panel


def tile_shape(spec: Attention, target) -> tuple:
    """(query positions, keys) per tile of the default schedule for ``target``."""
    from .resources import load_schedule

    cfg = load_schedule("attention_cuda" if target.is_cuda else "attention_cpu").default(spec, target)
    return max(1, cfg["block_q"] // spec.group_size), cfg["block_k"]


def visible(spec: Attention, q_len: int, kv_len: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean ``[q_len, kv_len]`` mask of batch 0, head 0 (runtime tensors drawn at random)."""
    from .softmax import data

    sizes = {"batch": 1, "heads": spec.num_heads, "q_len": q_len, "kv_len": kv_len}
    env = {t.name: data.sample_tensor(t, t.shape(sizes), rng) for t in spec.runtime_tensors}
    env.update(b=0, h=0, q_idx=np.arange(q_len)[:, None], kv_idx=np.arange(kv_len)[None, :],
               q_len=q_len, kv_len=kv_len)
    return np.broadcast_to(np.asarray(E.evaluate(spec.mask.expr, env), bool), (q_len, kv_len))


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


def classify(counts: np.ndarray) -> np.ndarray:
    seen, total = counts
    return np.where(seen == 0, "empty", np.where(seen == total, "full", "partial"))


def svg(spec: Attention, target, length: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    block_m, block_n = tile_shape(spec, target)
    mask = visible(spec, length, length, rng)
    kinds = classify(tile_counts(mask, block_m, block_n))
    frac = {k: float((kinds == k).mean()) for k in COLORS}
    caption = (f"{spec.mask!r}  |  length {length}, tiles {block_m}x{block_n} ({target.name}): "
               f"{frac['empty']:.0%} empty (skipped), {frac['full']:.0%} full, "
               f"{frac['partial']:.0%} partial; visible {mask.mean():.1%} of the matrix")
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
