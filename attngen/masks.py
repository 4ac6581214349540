"""The mask library.  Each factory returns a :class:`Mask` whose ``repr`` is the call itself.

Positions are bottom-right aligned: query row ``q_idx`` sits at ``q_pos = q_idx + kv_len -
q_len`` (prefill with ``q_len == kv_len`` makes it ``q_idx``; one decode query sits at the end).
"""
from __future__ import annotations

from . import expr as E
from .expr import b, h, kv_idx, q_pos
from .spec import Mask


def _check(name: str, value, low: int = 1):
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
        raise ValueError(f"{name}: must be an int >= {low}, got {value!r}")


def full() -> Mask:
    """Every key visible."""
    return Mask(E.true(), "full()")


def causal() -> Mask:
    """Key visible iff it is not after the query (bottom-right aligned)."""
    return Mask(kv_idx <= q_pos, "causal()")


def sliding_window(window: int, causal: bool = True) -> Mask:
    """The ``window`` most recent keys (including the query's own position); with
    ``causal=False``, keys within ``window // 2`` on either side (Mistral / Longformer local)."""
    _check("sliding_window.window", window)
    if causal:
        e = (kv_idx <= q_pos) & (q_pos - kv_idx < window)
    else:
        e = (kv_idx - q_pos <= window // 2) & (q_pos - kv_idx <= window // 2)
    return Mask(e, f"sliding_window({window}, causal={causal})")


def global_local(num_global: int, window: int, causal: bool = False) -> Mask:
    """Longformer: the first ``num_global`` tokens see and are seen by everything; the rest
    see a local window (bidirectional ``window // 2`` either side, or the causal window)."""
    _check("global_local.num_global", num_global)
    local = sliding_window(window, causal).expr
    glob = (kv_idx < num_global) | (q_pos < num_global)
    if causal:
        glob = glob & (kv_idx <= q_pos)
    return Mask(local | glob, f"global_local({num_global}, {window}, causal={causal})")


def prefix_lm(prefix: int) -> Mask:
    """Bidirectional over the first ``prefix`` tokens, causal after (T5 / PaLI prefix-LM)."""
    _check("prefix_lm.prefix", prefix, 0)
    return Mask((kv_idx <= q_pos) | (kv_idx < prefix), f"prefix_lm({prefix})")


DOC_IDS = E.Tensor("doc_ids", ("batch", "kv_len"), "int32", "segments")


def document(causal: bool = True) -> Mask:
    """Packed documents: a key is visible iff it is in the query's document (runtime tensor
    ``doc_ids int32 [batch, kv_len]``, one id per token), and causal within it if asked."""
    e = DOC_IDS[b, q_pos] == DOC_IDS[b, kv_idx]
    if causal:
        e = e & (kv_idx <= q_pos)
    return Mask(e, f"document(causal={causal})")


def block_sparse(block: int = 64, causal: bool = False) -> Mask:
    """A runtime block layout ``block_layout int32 [heads, ceil(q_len/block),
    ceil(kv_len/block)]``: nonzero blocks are visible (in query-row / key-column blocks)."""
    _check("block_sparse.block", block)
    layout = E.Tensor("block_layout", ("heads", f"q_len/{block}", f"kv_len/{block}"), "int32", "bits")
    from .expr import q_idx  # the layout is indexed by row blocks, not positions
    e = layout[h, q_idx // block, kv_idx // block] != 0
    if causal:
        e = e & (kv_idx <= q_pos)
    return Mask(e, f"block_sparse({block}, causal={causal})")


def bigbird(block: int = 64, window_blocks: int = 3, global_blocks: int = 1,
            random_per_mille: int = 100, seed: int = 0) -> Mask:
    """BigBird in blocks of ``block`` tokens: a window of ``window_blocks`` blocks centred on
    the query's block, ``global_blocks`` global blocks (rows and columns), and random blocks:
    block pair (i, j) is drawn with probability ``random_per_mille``/1000 by a seeded integer
    hash, so the pattern is fixed at compile time and needs no runtime tensor."""
    for n, v, lo in (("block", block, 1), ("window_blocks", window_blocks, 1),
                     ("global_blocks", global_blocks, 0), ("random_per_mille", random_per_mille, 0),
                     ("seed", seed, 0)):
        _check(f"bigbird.{n}", v, lo)
    if random_per_mille > 1000:
        raise ValueError(f"bigbird.random_per_mille: must be <= 1000, got {random_per_mille}")
    qb, kb = q_pos // block, kv_idx // block
    half = window_blocks // 2
    e = ((kb - qb <= half) & (qb - kb <= half)) | (qb < global_blocks) | (kb < global_blocks)
    if random_per_mille:
        # a multiplicative hash kept below 2^31 for the block counts of sequences < 2^21 tokens
        hashed = (qb * 1009 + kb * 9176 + (seed % 997) * 7919) % 1000
        e = e | (hashed < random_per_mille)
    return Mask(e, f"bigbird({block}, {window_blocks}, {global_blocks}, {random_per_mille}, {seed})")


def dilated(window: int, dilation: int) -> Mask:
    """Causal dilated window (LongNet / Sparse Transformer strided): every ``dilation``-th key
    among the last ``window * dilation`` positions."""
    _check("dilated.window", window)
    _check("dilated.dilation", dilation)
    d = q_pos - kv_idx
    e = (d >= 0) & (d < window * dilation) & (d % dilation == 0)
    return Mask(e, f"dilated({window}, {dilation})")


LIBRARY = {f.__name__: f for f in (full, causal, sliding_window, global_local, prefix_lm,
                                   document, block_sparse, bigbird, dilated)}
