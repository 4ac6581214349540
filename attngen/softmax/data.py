"""Random inputs and float64 references for softmax-attention programs.

``sample`` draws what a real caller would pass, plus the traps a kernel must survive: shuffled
pages, per-sequence lengths that include the full cache, rows that see no key, and NaN in
every cache slot past a sequence's end (a kernel that multiplies a masked probability 0 by
such a value gets NaN).  ``reference`` computes the outputs in float64 with
``attngen.reference`` from exactly the values the kernel sees.
"""
from __future__ import annotations

import numpy as np

from ..reference import quant as ref_quant
from ..reference import softmax as ref
from ..spec import Attention
from . import predicate, signature as sig


def sample(spec: Attention, sizes, rng: np.random.Generator) -> dict:
    """Inputs for ``sizes`` (``batch``, ``q_len``, ``kv_len``; decoding takes ``q_len`` from the
    phase).  For a paged cache ``kv_len`` is the longest sequence: each sequence gets
    ``ceil(kv_len / page_size)`` table entries, filled with a random permutation of the pool.
    Packed (``"thd"``) batches draw each sequence's length, the longest being ``q_len``, one of
    them empty from three sequences on."""
    if spec.layout == "thd":
        return _sample_packed(spec, sizes, rng)
    out = _sample_bhsd(spec, sizes, rng)
    if spec.layout == "bshd":
        for name in ("q", "k", "v"):
            out[name] = np.ascontiguousarray(out[name].transpose(0, 2, 1, 3))
    return out


def _sample_bhsd(spec: Attention, sizes, rng: np.random.Generator) -> dict:
    B, L, Lk = sizes["batch"], sizes["q_len"], sizes["kv_len"]
    if spec.is_decode:
        L = spec.phase.q_len
    H, Hkv, D, Dv = spec.num_heads, spec.num_kv_heads, spec.head_dim, spec.head_dim_v
    out = {"q": _normal(rng, (B, H, L, D), spec.dtype)}
    kv_lens = _kv_lens(rng, B, Lk) if sig.has_kv_lens(spec) else np.full(B, Lk, np.int32)
    if spec.is_paged:
        P = spec.kv_layout.page_size
        max_pages = -(-Lk // P)
        num_pages = B * max_pages
        table = rng.permutation(num_pages).astype(np.int32).reshape(B, max_pages)
        out["k"] = _paged(rng, (num_pages, Hkv, P, D), spec.dtype, table, kv_lens)
        if not spec.latent_kv:
            out["v"] = _paged(rng, (num_pages, Hkv, P, Dv), spec.dtype, table, kv_lens)
        out["kv_lens"], out["page_table"] = kv_lens, table
    else:
        out["k"] = _cache(rng, (B, Hkv, Lk, D), spec.dtype, kv_lens)
        if not spec.latent_kv:
            out["v"] = _cache(rng, (B, Hkv, Lk, Dv), spec.dtype, kv_lens)
        if spec.is_decode:
            out["kv_lens"] = kv_lens
    full = sig.complete(spec, {"batch": B, "heads": H, "q_len": L, "kv_len": sizes_kv_len(spec, Lk)})
    for t in spec.runtime_tensors:
        out[t.name] = _runtime_tensor(rng, t, sig.inputs(spec), full)
    if spec.sinks:
        out["sinks"] = rng.standard_normal(H).astype(np.float32)
    return out


def sizes_kv_len(spec: Attention, kv_len: int) -> int:
    """The ``kv_len`` size the program sees: a page table row's capacity when paged."""
    if spec.is_paged:
        P = spec.kv_layout.page_size
        return -(-kv_len // P) * P
    return kv_len


def reference(spec: Attention, inputs) -> dict:
    """float64 ``{"o", "lse"}`` for ``inputs`` (as :func:`sample` returns them)."""
    if spec.layout == "thd":
        return _reference_packed(spec, inputs)
    if spec.layout == "bshd":
        heads_first = {n: np.asarray(inputs[n]).transpose(0, 2, 1, 3) for n in ("q", "k", "v")}
        out = _reference_bhsd(spec, {**inputs, **heads_first})
        return {"o": out["o"].transpose(0, 2, 1, 3), "lse": out["lse"]}
    return _reference_bhsd(spec, inputs)


def _reference_bhsd(spec: Attention, inputs) -> dict:
    q = inputs["q"]
    L = q.shape[2]
    if spec.is_paged:
        kv_lens = np.asarray(inputs["kv_lens"])
        k, _ = ref.gather_paged(inputs["k"], inputs["page_table"], kv_lens)
        v = None if spec.latent_kv else ref.gather_paged(inputs["v"], inputs["page_table"], kv_lens)[0]
    else:
        kv_lens = np.asarray(inputs["kv_lens"]) if spec.is_decode else None
        k, v = _valid(inputs["k"], kv_lens), None if spec.latent_kv else _valid(inputs["v"], kv_lens)
    if spec.latent_kv:
        v = k[..., :spec.head_dim_v]
    Lk = k.shape[2]
    mask = predicate.mask_array(spec, inputs, L, Lk, kv_lens)
    if spec.quant is not None:
        qz = spec.quant
        o, lse = ref_quant.quantized_attention(q, k, v, qk=qz.qk, pv=qz.pv, block_q=qz.block_q,
                                               block_k=qz.block_k, smooth_k=qz.smooth_k, mask=mask,
                                               scale=spec.scale, granularity="block")
    else:
        o, lse = ref.attention(q, k, v, scale=spec.scale, mask=mask,
                               score_mod=predicate.score_fn(spec, inputs, L, Lk, kv_lens),
                               sinks=inputs.get("sinks"))
    return {"o": o, "lse": lse}


# ----------------------------------------------------------------------------- packed


def _sample_packed(spec: Attention, sizes, rng: np.random.Generator) -> dict:
    B, L, Lk = sizes["batch"], sizes["q_len"], sizes["kv_len"]
    H, Hkv, D, Dv = spec.num_heads, spec.num_kv_heads, spec.head_dim, spec.head_dim_v
    q_lens = rng.integers(1, L + 1, B)
    longest, empty = rng.permutation(max(B, 2))[:2]
    q_lens[longest % B] = L
    if B >= 3:
        q_lens[empty] = 0
    kv_lens = np.maximum(q_lens + (Lk - L), 0)  # each sequence aligned as a padded batch would be
    cu_q = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    cu_k = np.concatenate([[0], np.cumsum(kv_lens)]).astype(np.int32)
    out = {"q": _normal(rng, (int(cu_q[-1]), H, D), spec.dtype),
           "k": _normal(rng, (int(cu_k[-1]), Hkv, D), spec.dtype),
           "v": _normal(rng, (int(cu_k[-1]), Hkv, Dv), spec.dtype),
           "cu_seqlens_q": cu_q, "cu_seqlens_k": cu_k}
    if spec.sinks:
        out["sinks"] = rng.standard_normal(H).astype(np.float32)
    return out


def _reference_packed(spec: Attention, inputs) -> dict:
    """Each sequence on its own, its mask and score mod seeing its own index and lengths."""
    from .. import expr as E

    cu_q, cu_k = np.asarray(inputs["cu_seqlens_q"]), np.asarray(inputs["cu_seqlens_k"])
    H, Dv = spec.num_heads, spec.head_dim_v
    total = int(cu_q[-1])
    o, lse = np.zeros((total, H, Dv)), np.full((H, total), -np.inf)
    mask, mod = predicate.reference_mask(spec), predicate.score_expr(spec)
    for b in range(len(cu_q) - 1):
        rows, keys = slice(cu_q[b], cu_q[b + 1]), slice(cu_k[b], cu_k[b + 1])
        q, k, v = (np.asarray(inputs[n])[s].transpose(1, 0, 2)[None] for n, s in
                   (("q", rows), ("k", keys), ("v", keys)))
        L, Lk = q.shape[2], k.shape[2]
        if L == 0:
            continue
        env = dict(b=b, h=np.arange(H).reshape(1, -1, 1, 1), q_idx=np.arange(L).reshape(1, 1, -1, 1),
                   kv_idx=np.arange(Lk).reshape(1, 1, 1, -1), q_len=L, kv_len=Lk)
        visible = np.broadcast_to(np.asarray(E.evaluate(mask, env), bool), (1, H, L, Lk))

        def score_mod(s, _b, h, q_idx, kv_idx, b=b, L=L, Lk=Lk):
            return E.evaluate(mod, dict(score=s, b=b, h=h, q_idx=q_idx, kv_idx=kv_idx, q_len=L, kv_len=Lk))

        o_b, lse_b = ref.attention(q, k, v, scale=spec.scale, mask=visible, sinks=inputs.get("sinks"),
                                   score_mod=None if mod is None else score_mod)
        o[rows], lse[:, rows] = o_b[0].transpose(1, 0, 2), lse_b[0]
    return {"o": o, "lse": lse}


# ----------------------------------------------------------------------------- helpers


def _normal(rng, shape, dtype) -> np.ndarray:
    """Standard normal values rounded to ``dtype`` (bfloat16 values are held in float32)."""
    x = rng.standard_normal(shape).astype(np.float32)
    if dtype == "float16":
        return x.astype(np.float16)
    if dtype == "bfloat16":
        import torch

        return torch.from_numpy(x).to(torch.bfloat16).to(torch.float32).numpy()
    return x


def _kv_lens(rng, batch: int, kv_len: int) -> np.ndarray:
    """Lengths in [1, kv_len]; with more than one sequence, one of them is exactly kv_len."""
    lens = rng.integers(1, kv_len + 1, batch)
    if batch > 1:
        lens[rng.integers(batch)] = kv_len
    return lens.astype(np.int32)


def _cache(rng, shape, dtype, kv_lens) -> np.ndarray:
    """A contiguous cache [B, Hkv, Lk, d]; slots at or past kv_lens[b] hold NaN."""
    x = _normal(rng, shape, dtype)
    slot = np.arange(shape[2])
    x[np.broadcast_to((slot[None, :] >= kv_lens[:, None])[:, None, :, None], shape)] = np.nan
    return x


def _paged(rng, shape, dtype, table, kv_lens) -> np.ndarray:
    """A page pool [num_pages, Hkv, P, d]; every slot no sequence owns holds NaN."""
    x = _normal(rng, shape, dtype)
    P = shape[2]
    owned = np.zeros((shape[0], P), bool)
    for b, n in enumerate(kv_lens):
        for t in range(int(n)):
            owned[table[b, t // P], t % P] = True
    x[np.broadcast_to(~owned[:, None, :, None], shape)] = np.nan
    return x


def _valid(cache, kv_lens):
    """float64 cache with the slots past each sequence zeroed (the reference multiplies them by 0)."""
    x = np.asarray(cache, np.float64)
    if kv_lens is None:
        return x
    slot = np.arange(x.shape[2])
    return np.where((slot[None, :] < kv_lens[:, None])[:, None, :, None], x, 0.0)


def _runtime_tensor(rng, t, args, sizes) -> np.ndarray:
    return sample_tensor(t, next(a for a in args if a.name == t.name).concrete_shape(sizes), rng)


def sample_tensor(t, shape: tuple, rng: np.random.Generator) -> np.ndarray:
    """Random values for the runtime tensor ``t`` of a mask or score mod, by ``t.sample``."""
    if t.sample == "segments":
        # sorted document ids along the last axis, 1-4 documents per row
        docs = rng.integers(1, 5, shape[:-1] + (1,))
        ids = np.sort(rng.integers(0, np.iinfo(np.int32).max, shape) % docs, axis=-1)
        return ids.astype(np.int32)
    if t.sample == "bits":
        bits = rng.integers(0, 2, shape)
        if len(shape) >= 2:  # some rows (all but the last axis) entirely 0: rows that see no key
            bits[rng.random(shape[:-1]) < 0.25] = 0
        return bits.astype(np.int32 if t.dtype == "int32" else np.float32)
    values = rng.standard_normal(shape)
    return values.astype(np.float32) if t.dtype == "float32" else np.round(values).astype(np.int32)
