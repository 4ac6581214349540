"""Softmax attention in float64: naive, FlashAttention-tiled, split-KV, paged and decode forms.

Conventions (methods.md sections 0 and 1):
  q [B, Hq, Tq, dk], k [B, Hkv, Tk, dk], v [B, Hkv, Tk, dv]; query head h reads kv head
  h // (Hq // Hkv). Outputs o [B, Hq, Tq, dv] and lse [B, Hq, Tq] (natural log).
  Causal alignment is bottom-right: query row i sits at absolute position i + Tk - Tq.
  A row with no visible key gives o = 0 and lse = -inf.

Options shared by every form (keyword-only):
  scale      softmax scale; default dk ** -0.5.
  mask       None or bool array broadcastable to [B, Hq, Tq, Tk]; True = visible.
  score_mod  None or f(s, b, h, q_idx, kv_idx) -> s, applied to the scaled scores s before
             masking; b [B,1,1,1], h [1,Hq,1,1], q_idx [1,1,Tq,1], kv_idx [1,1,1,Tk] hold
             absolute indices (so a tile of a tiled form sees its own offsets).
  sinks      None or [Hq] logits (gpt-oss attention sinks): a virtual key per head with logit
             sinks[h] and value 0. It joins every row's denominator, so lse includes it; a fully
             masked row then gives o = 0 and lse = sinks[h].
"""
import numpy as np

from ._util import chunk_bounds, f64, online_softmax_result


def causal_mask(q_len, kv_len):
    """Bottom-right causal mask [q_len, kv_len]: key j is visible to row i iff j <= i + kv_len - q_len."""
    return np.arange(kv_len)[None, :] <= np.arange(q_len)[:, None] + (kv_len - q_len)


def length_mask(kv_lens, q_len, kv_len, *, causal=False):
    """Per-sequence visibility [B, 1, q_len, kv_len] for caches padded to kv_len.

    Key j of sequence b is visible iff j < kv_lens[b]; with causal=True also iff
    j <= i + kv_lens[b] - q_len (bottom-right alignment against the sequence's own length).
    """
    lens = np.asarray(kv_lens)[:, None, None, None]
    key = np.arange(kv_len)
    visible = key < lens
    if causal:
        visible = visible & (key <= np.arange(q_len)[:, None] + lens - q_len)
    return visible


def repeat_kv(x, num_q_heads):
    """[B, Hkv, T, d] -> [B, Hq, T, d]; query head h reads kv head h // (Hq // Hkv)."""
    num_kv_heads = x.shape[1]
    if num_q_heads % num_kv_heads:
        raise ValueError(f"Expected Hq to be a multiple of Hkv, got Hq={num_q_heads} and Hkv={num_kv_heads}.")
    return np.repeat(x, num_q_heads // num_kv_heads, axis=1)


def attention(q, k, v, *, scale=None, mask=None, score_mod=None, sinks=None):
    """Naive softmax attention (methods.md 1.1): o = softmax(scale q k^T + M) v.

    Shapes as in the module docstring; returns (o [B, Hq, Tq, dv], lse [B, Hq, Tq]).
    """
    q, k, v, scale, sinks = _prepare(q, k, v, scale, sinks)
    s = _scores(q, k, scale, score_mod, q_start=0, kv_start=0)
    if mask is not None:
        s = np.where(mask, s, -np.inf)
    return _softmax_rows(s, v, sinks)


def attention_tiled(q, k, v, *, block_m, block_n, scale=None, mask=None, score_mod=None, sinks=None):
    """FlashAttention-2 forward (methods.md 1.2): online softmax over K/V tiles.

    Query tiles of block_m rows keep a running max m, sum l and accumulator A; K/V tiles of block_n
    keys whose mask tile is entirely False are skipped. Sinks enter as the initial statistics
    (m = sink, l = 1: a virtual key of value 0). Returns (o [B, Hq, Tq, dv], lse [B, Hq, Tq]).
    """
    q, k, v, scale, sinks = _prepare(q, k, v, scale, sinks)
    batch, heads, q_len, _ = q.shape
    visible = None if mask is None else np.broadcast_to(mask, (batch, heads, q_len, k.shape[2]))
    o = np.empty((batch, heads, q_len, v.shape[-1]))
    lse = np.empty((batch, heads, q_len))
    for q0, q1 in chunk_bounds(q_len, block_m):
        rows_visible = None if visible is None else visible[..., q0:q1, :]
        o[..., q0:q1, :], lse[..., q0:q1] = _flash_rows(
            q[..., q0:q1, :], k, v, q0, block_n, scale, rows_visible, score_mod, sinks)
    return o, lse


def split_kv(q, k, v, *, num_splits, scale=None, mask=None, score_mod=None, sinks=None):
    """FlashDecoding partials (methods.md 1.3): exact attention over each contiguous KV split.

    Split s covers keys [s c, min((s + 1) c, Tk)) with c = ceil(Tk / num_splits), so trailing splits
    may be empty (o = 0, lse = -inf). The sink, if any, joins split 0 only, so that `combine`
    counts it once. Returns (o_parts [B, Hq, Tq, S, dv], lse_parts [B, Hq, Tq, S]).
    """
    if num_splits < 1:
        raise ValueError(f"Expected num_splits >= 1, got num_splits={num_splits}.")
    q, k, v, scale, sinks = _prepare(q, k, v, scale, sinks)
    kv_len = k.shape[2]
    visible = None if mask is None else np.broadcast_to(mask, q.shape[:3] + (kv_len,))
    split_len = -(-kv_len // num_splits)
    parts = []
    for split in range(num_splits):
        k0, k1 = min(split * split_len, kv_len), min((split + 1) * split_len, kv_len)
        s = _scores(q, k[..., k0:k1, :], scale, score_mod, q_start=0, kv_start=k0)
        if visible is not None:
            s = np.where(visible[..., k0:k1], s, -np.inf)
        parts.append(_softmax_rows(s, v[..., k0:k1, :], sinks if split == 0 else None))
    return np.stack([o for o, _ in parts], axis=3), np.stack([lse for _, lse in parts], axis=3)


def combine(o_parts, lse_parts):
    """Log-sum-exp merge of split-normalised partials (methods.md 1.3).

    o_parts [..., S, dv], lse_parts [..., S] -> (o [..., dv], lse [...]):
    w_s = exp(lse_s - max_s lse_s), o = sum_s w_s o_s / sum_s w_s, lse = max + log sum_s w_s.
    Empty splits (lse = -inf) weigh 0; if all are empty, o = 0 and lse = -inf.
    """
    o_parts, lse_parts = f64(o_parts), f64(lse_parts)
    lse_max = np.max(lse_parts, axis=-1)
    lse_ref = np.where(np.isfinite(lse_max), lse_max, 0.0)
    weights = np.exp(lse_parts - lse_ref[..., None])
    return online_softmax_result(np.einsum("...s,...sd->...d", weights, o_parts), weights.sum(-1), lse_ref)


def gather_paged(pages, page_table, kv_lens):
    """Gather a paged KV cache into a contiguous, zero-padded one (methods.md 1.6).

    pages [num_pages, Hkv, page_size, d] (physical layout), page_table int [B, max_pages],
    kv_lens int [B]. Token t of sequence b lives at pages[page_table[b, t // page_size], :,
    t % page_size]; table entries past a sequence's length are never read.
    Returns (cache [B, Hkv, max(kv_lens), d], kv_lens).
    """
    pages, page_table, kv_lens = f64(pages), np.asarray(page_table), np.asarray(kv_lens)
    page_size = pages.shape[2]
    max_len = int(kv_lens.max(initial=0))
    if max_len > page_table.shape[1] * page_size:
        raise ValueError(f"Expected kv_lens <= max_pages * page_size = {page_table.shape[1] * page_size}, "
                         f"got max(kv_lens)={max_len}.")
    token = np.arange(max_len)
    valid = token[None, :] < kv_lens[:, None]
    physical = np.where(valid, page_table[:, token // page_size], 0)
    gathered = pages[physical, :, token % page_size]  # [B, max_len, Hkv, d]
    return np.moveaxis(np.where(valid[..., None, None], gathered, 0.0), 1, 2), kv_lens


def decode(q, k_cache, v_cache, kv_lens, *, scale=None, causal=False, num_splits=1, score_mod=None, sinks=None):
    """Attention of a few queries against a padded cache with per-sequence lengths.

    q [B, Hq, Tq, dk], k_cache [B, Hkv, max_len, dk], v_cache [B, Hkv, max_len, dv], kv_lens int [B].
    Keys at or past kv_lens[b] are invisible; causal=True aligns each sequence bottom-right to its
    own length (see `length_mask`). Evaluated as `split_kv` with num_splits splits, then `combine`.
    Returns (o [B, Hq, Tq, dv], lse [B, Hq, Tq]).
    """
    mask = length_mask(kv_lens, q.shape[2], k_cache.shape[2], causal=causal)
    return combine(*split_kv(q, k_cache, v_cache, num_splits=num_splits, scale=scale, mask=mask,
                             score_mod=score_mod, sinks=sinks))


def paged_attention(q, k_pages, v_pages, page_table, kv_lens, *, scale=None, causal=False, num_splits=1,
                    score_mod=None, sinks=None):
    """PagedAttention (methods.md 1.6): `decode` against the sequences gathered from a paged cache.

    q [B, Hq, Tq, dk] (Tq = 1 for decode, Tq > 1 for chunked prefill), k_pages / v_pages
    [num_pages, Hkv, page_size, d], page_table int [B, max_pages], kv_lens int [B].
    Returns (o [B, Hq, Tq, dv], lse [B, Hq, Tq]).
    """
    k_cache, kv_lens = gather_paged(k_pages, page_table, kv_lens)
    v_cache, _ = gather_paged(v_pages, page_table, kv_lens)
    return decode(q, k_cache, v_cache, kv_lens, scale=scale, causal=causal, num_splits=num_splits,
                  score_mod=score_mod, sinks=sinks)


def _prepare(q, k, v, scale, sinks):
    """Float64 operands with KV heads repeated to Hq, the default scale and the sinks as [Hq, 1]."""
    q, k, v = f64(q), f64(k), f64(v)
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"Expected 4-d q, k, v [B, H, T, d], got shapes {q.shape}, {k.shape}, {v.shape}.")
    if k.shape[:3] != v.shape[:3] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"Expected k [B, Hkv, Tk, dk] and v [B, Hkv, Tk, dv] matching q [B, Hq, Tq, dk], "
                         f"got q {q.shape}, k {k.shape}, v {v.shape}.")
    heads = q.shape[1]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    sinks = None if sinks is None else f64(sinks).reshape(heads, 1)
    return q, repeat_kv(k, heads), repeat_kv(v, heads), scale, sinks


def _scores(q, k, scale, score_mod, q_start, kv_start):
    """Scaled scores [B, Hq, tq, tk] of rows q_start.. against keys kv_start.., after score_mod."""
    s = scale * np.einsum("bhid,bhjd->bhij", q, k)
    if score_mod is None:
        return s
    batch, heads, q_len, kv_len = s.shape
    b = np.arange(batch).reshape(-1, 1, 1, 1)
    h = np.arange(heads).reshape(1, -1, 1, 1)
    q_idx = (q_start + np.arange(q_len)).reshape(1, 1, -1, 1)
    kv_idx = (kv_start + np.arange(kv_len)).reshape(1, 1, 1, -1)
    return np.broadcast_to(f64(score_mod(s, b, h, q_idx, kv_idx)), s.shape)


def _softmax_rows(s, v, sinks):
    """(o, lse) of masked logits s [B, Hq, tq, tk] (-inf = masked) with values v [B, Hq, tk, dv].

    Works for tk = 0 (an empty split). sinks [Hq, 1] or None.
    """
    m = np.max(s, axis=-1, initial=-np.inf)
    if sinks is not None:
        m = np.maximum(m, sinks)
    m = np.where(np.isfinite(m), m, 0.0)
    p = np.exp(s - m[..., None])
    row_sum = p.sum(-1) if sinks is None else p.sum(-1) + np.exp(sinks - m)
    return online_softmax_result(p @ v, row_sum, m)


def _flash_rows(q_tile, k, v, q_start, block_n, scale, visible, score_mod, sinks):
    """One query tile of `attention_tiled`: the online-softmax loop over K/V tiles."""
    shape = q_tile.shape[:3]
    m = np.full(shape, -np.inf) if sinks is None else np.broadcast_to(sinks, shape).copy()
    row_sum = np.zeros(shape) if sinks is None else np.ones(shape)
    acc = np.zeros(shape + (v.shape[-1],))
    for k0, k1 in chunk_bounds(k.shape[2], block_n):
        tile_visible = None if visible is None else visible[..., k0:k1]
        if tile_visible is not None and not tile_visible.any():
            continue
        s = _scores(q_tile, k[..., k0:k1, :], scale, score_mod, q_start, k0)
        if tile_visible is not None:
            s = np.where(tile_visible, s, -np.inf)
        m_new = np.maximum(m, s.max(-1))
        m_ref = np.where(np.isfinite(m_new), m_new, 0.0)  # guard: avoids (-inf) - (-inf)
        rescale = np.exp(m - m_ref)
        p = np.exp(s - m_ref[..., None])
        row_sum = rescale * row_sum + p.sum(-1)
        acc = rescale[..., None] * acc + p @ v[..., k0:k1, :]
        m = m_new
    return online_softmax_result(acc, row_sum, np.where(np.isfinite(m), m, 0.0))
