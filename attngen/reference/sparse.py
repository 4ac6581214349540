"""Sparse attention references (methods.md section 3): masks, block layouts and selection policies.

Everything here produces boolean visibility (True = visible) for `softmax.attention(mask=...)`.
Block layouts [..., nq, nk] become token masks through `block_layout_to_mask`; block-sparse
FlashAttention is then `softmax.attention_tiled` with that mask (empty tiles are skipped).
Positions are bottom-right aligned as in softmax.py; top-k ties go to the smaller index.
"""
import numpy as np

from ._util import chunk_bounds, f64, swap
from .softmax import attention, causal_mask, combine, repeat_kv

SELF_LOGIT = -5e4  # Reformer: a token's logit for itself (reformer-pytorch's fp16-safe constant)


def sliding_window_mask(q_len, kv_len, *, left, right=0):
    """[q_len, kv_len]: key j visible to row i iff p_i - left <= j <= p_i + right, p_i = i + kv_len - q_len
    (FlashAttention's window_size=(left, right); right=0 with causal_mask gives the causal window)."""
    offset = np.arange(kv_len)[None, :] - (np.arange(q_len)[:, None] + kv_len - q_len)
    return (offset >= -left) & (offset <= right)


def longformer_mask(length, *, window, global_tokens):
    """[T, T] Longformer encoder mask (3.2): |i - j| <= window, or i or j among global_tokens.

    Longformer computes the global rows with separate projections Q_g, K_g, V_g; that is a second
    `softmax.attention` over those rows, so this mask is the shared-projection case.
    """
    is_global = np.zeros(length, bool)
    is_global[np.asarray(global_tokens, int)] = True
    local = sliding_window_mask(length, length, left=window, right=window)
    return local | is_global[:, None] | is_global[None, :]


def block_layout_to_mask(layout, *, block_q, block_k, q_len, kv_len):
    """Token mask [..., q_len, kv_len] of a block layout [..., nq, nk] (kron with ones, cropped)."""
    row_block, col_block = np.arange(q_len)[:, None] // block_q, np.arange(kv_len)[None, :] // block_k
    return np.asarray(layout, bool)[..., row_block, col_block]


def bigbird_block_layout(num_blocks, *, num_random, seed, num_global=1):
    """BigBird ITC block layout [n, n] (3.3), random blocks drawn from default_rng(seed).

    The first and last num_global blocks are global (their rows see every block, every row sees
    them); row block I sees I-1, I, I+1; each non-global row block also sees num_random blocks drawn
    without replacement from the non-global blocks outside its window. Encoder (non-causal).
    """
    rng = np.random.default_rng(seed)
    block = np.arange(num_blocks)
    is_global = (block < num_global) | (block >= num_blocks - num_global)
    layout = is_global[:, None] | is_global[None, :] | (np.abs(block[:, None] - block[None, :]) <= 1)
    for row in block[~is_global]:
        candidates = block[~is_global & (np.abs(block - row) > 1)]
        layout[row, rng.choice(candidates, size=min(num_random, candidates.size), replace=False)] = True
    return layout


def block_topk_layout(q, k, *, block_q, block_k, topk):
    """Generic causal block top-k (3.6) -> layout [B, Hq, nq, nk].

    q [B, Hq, Tq, d], k [B, Hkv, Tk, d]. Block means qbar_I, kbar_J (a ragged last block averages
    its own tokens) score s_IJ = qbar_I . kbar_J. Row block I keeps its diagonal block (the one
    holding its last query position p) and the topk best other blocks that start at or before p.
    Token mask: block_layout_to_mask(...) & causal_mask(Tq, Tk).
    """
    q, k = f64(q), f64(k)
    k = repeat_kv(k, q.shape[1])
    q_len, kv_len = q.shape[2], k.shape[2]
    scores = _block_means(q, block_q) @ swap(_block_means(k, block_k))
    last_position = np.minimum(np.arange(1, scores.shape[-2] + 1) * block_q, q_len) - 1 + kv_len - q_len
    key_block = np.arange(scores.shape[-1])
    diagonal = key_block == (last_position // block_k)[:, None]
    started = key_block * block_k <= last_position[:, None]
    return _top_k(scores, started & ~diagonal, topk) | diagonal


def moba_mask(q, k, *, block, topk):
    """MoBA (3.6) -> token mask [B, Hq, Tq, Tk], causal.

    Per query token i at position p_i: gate_iJ = q_i . mean(K_J) over key blocks J strictly before
    block(p_i); keep block(p_i) plus the topk - 1 best gated past blocks, then apply causality.
    """
    q, k = f64(q), f64(k)
    k = repeat_kv(k, q.shape[1])
    q_len, kv_len = q.shape[2], k.shape[2]
    gate = q @ swap(_block_means(k, block))
    own = ((np.arange(q_len) + kv_len - q_len) // block)[:, None]
    key_block = np.arange(gate.shape[-1])
    selected = _top_k(gate, key_block < own, topk - 1) | (key_block == own)
    return selected[..., np.arange(kv_len) // block] & causal_mask(q_len, kv_len)


def lsh_rotations(dim, num_buckets, *, num_hashes=1, seed):
    """Random projections R [num_hashes, dim, num_buckets // 2] ~ N(0, 1) from default_rng(seed)."""
    return np.random.default_rng(seed).standard_normal((num_hashes, dim, num_buckets // 2))


def lsh_buckets(x, rotations):
    """Angular LSH (3.4): h_r(x) = argmax([x R_r ; -x R_r]) -> int [num_hashes, *x.shape[:-1]]."""
    rotated = np.einsum("...d,rdn->r...n", f64(x), f64(rotations))
    return np.argmax(np.concatenate([rotated, -rotated], axis=-1), axis=-1)


def lsh_attention(qk, v, *, rotations, chunk_size, causal=True):
    """Reformer shared-QK LSH attention (3.4): one softmax per hash round, rounds merged by `combine`.

    qk [B, H, T, d] are the queries and, L2-normalised, the keys; v [B, H, T, dv]; rotations from
    `lsh_rotations`; T a multiple of chunk_size. Per round, positions are sorted by (bucket,
    position); each chunk of chunk_size sorted tokens attends to itself and the previous chunk
    (chunk 0 wraps to the last, as reformer-pytorch; no look-back with a single chunk). A key is
    visible iff it shares the query's bucket (the paper's rule) and, when causal, is not in its future.
    The self logit is replaced by SELF_LOGIT, so a token attends to itself only when nothing else is
    visible. Scale d^{-1/2}. Returns (o [B, H, T, dv], lse [B, H, T]).
    """
    qk, v = f64(qk), f64(v)
    if qk.shape[2] % chunk_size:
        raise ValueError(f"Expected T to be a multiple of chunk_size, got T={qk.shape[2]} and "
                         f"chunk_size={chunk_size}; pad the sequence.")
    rounds = [_lsh_round(qk, v, buckets, chunk_size, causal) for buckets in lsh_buckets(qk, rotations)]
    return combine(np.stack([o for o, _ in rounds], axis=3), np.stack([lse for _, lse in rounds], axis=3))


def h2o_keep_mask(q, k, *, heavy, recent, scale=None):
    """H2O heavy-hitter eviction (3.5) run token by token -> keep [B, Hq, T, T].

    Row t is the cache that query t attends to. Per (b, h), step t appends token t with accumulated
    score F_t = 0, attends over the cache with exact softmax, adds the probabilities to F, then keeps
    the `recent` newest tokens plus the `heavy` older cached tokens with the largest F and evicts the
    rest. q [B, Hq, T, dk], k [B, Hkv, T, dk]; each query head runs its own policy. Every token is a
    decode step (no separate prefill phase).
    """
    q, k = f64(q), f64(k)
    k = repeat_kv(k, q.shape[1])
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"Expected self-attention decoding with Tq == Tk, "
                         f"got Tq={q.shape[2]} and Tk={k.shape[2]}.")
    logits = (q.shape[-1] ** -0.5 if scale is None else scale) * q @ swap(k)
    token = np.arange(q.shape[2])
    cached, accumulated = np.zeros(q.shape[:3], bool), np.zeros(q.shape[:3])
    keep = np.zeros(logits.shape, bool)
    for t in token:
        cached[..., t] = True
        keep[..., t, :] = cached
        row = np.where(cached, logits[..., t, :], -np.inf)
        p = np.exp(row - row.max(-1, keepdims=True))
        accumulated += p / p.sum(-1, keepdims=True)
        old = cached & (token <= t - recent)
        cached = (cached & ~old) | _top_k(accumulated, old, heavy)
    return keep


def h2o_attention(q, k, v, *, heavy, recent, scale=None):
    """Decoding with H2O eviction: softmax attention over the kept cache of each step.

    Shapes as `h2o_keep_mask` plus v [B, Hkv, T, dv]; returns (o [B, Hq, T, dv], lse [B, Hq, T]).
    """
    keep = h2o_keep_mask(q, k, heavy=heavy, recent=recent, scale=scale)
    return attention(q, k, v, scale=scale, mask=keep)


def _top_k(scores, allowed, k):
    """bool [..., n]: the k largest scores among the allowed entries; ties go to the smaller index."""
    order = np.argsort(np.where(allowed, -scores, np.inf), axis=-1, kind="stable")
    return allowed & (np.argsort(order, axis=-1) < k)


def _block_means(x, block):
    """[..., ceil(T / block), d]: the mean of each block of tokens of x [..., T, d]."""
    return np.stack([x[..., t0:t1, :].mean(-2) for t0, t1 in chunk_bounds(x.shape[-2], block)], axis=-2)


def _lsh_round(qk, v, buckets, chunk_size, causal):
    """One hash round of `lsh_attention`: (o, lse) [B, H, T, dv], [B, H, T] in token order."""
    batch, heads, length, _ = qk.shape
    num_chunks = length // chunk_size
    order = np.argsort(buckets * length + np.arange(length), axis=-1)
    keys = qk / np.linalg.norm(qk, axis=-1, keepdims=True)

    def chunks(x):  # sorted token order, cut into [B, H, num_chunks, chunk_size, ...]
        x = np.take_along_axis(x, order.reshape(order.shape + (1,) * (x.ndim - 3)), axis=2)
        return x.reshape(batch, heads, num_chunks, chunk_size, *x.shape[3:])

    def with_previous(x):  # keys of chunk c: chunk c - 1 (wrapping) followed by chunk c
        return x if num_chunks == 1 else np.concatenate([np.roll(x, 1, axis=2), x], axis=3)

    position, bucket = chunks(np.broadcast_to(np.arange(length), buckets.shape)), chunks(buckets)
    key_position, key_bucket = with_previous(position), with_previous(bucket)
    visible = bucket[..., :, None] == key_bucket[..., None, :]
    if causal:
        visible &= key_position[..., None, :] <= position[..., :, None]
    is_self = key_position[..., None, :] == position[..., :, None]

    def flat(x):  # [B, H, C, ...] -> [B, H * C, ...], each chunk a head of `attention`
        return x.reshape(batch, heads * num_chunks, *x.shape[3:])

    o, lse = attention(flat(chunks(qk)), flat(with_previous(chunks(keys))), flat(with_previous(chunks(v))),
                       mask=flat(visible), score_mod=lambda s, *_: np.where(flat(is_self), SELF_LOGIT, s))
    inverse = np.argsort(order, axis=-1)
    o = np.take_along_axis(o.reshape(batch, heads, length, -1), inverse[..., None], axis=2)
    return o, np.take_along_axis(lse.reshape(batch, heads, length), inverse, axis=2)
