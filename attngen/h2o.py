"""H2O heavy-hitter KV eviction (methods.md 3.5) around attngen's decode kernels.

Policy, per sequence and KV head: every cached token j carries an accumulated attention weight
F_j (the probabilities it received, summed over the query rows that read this KV head: the
query heads of its group and, with speculative decoding, the step's queries; with one query
head per KV head this is exactly ``attngen.reference.sparse.h2o_keep_mask``'s per-head F).  A
step appends the new token (F = 0), attends over the cache, adds the step's probabilities to
F, then, if the cache holds more than ``heavy + recent`` tokens, keeps the ``recent`` newest
plus the ``heavy`` older ones with the largest F (ties: the older token) and evicts the rest.

Pieces, all taking and returning torch tensors:

* :class:`H2ODecode` -- the decode kernel of a spec plus ``decode_h2o_weights.j2``: returns
  ``(o, lse, weights)``, ``weights [batch, Hkv, kv_len]`` float32 (0 past a sequence);
* :func:`prefill_scores` -- F after a causal prefill (column sums of the probabilities);
* :func:`keep_mask` -- the slots the policy keeps;
* :func:`compact` -- gathers the kept slots of cache tensors to the front, in token order,
  and returns the new lengths;
* :class:`H2OCache` -- a contiguous cache driven step by step with the three above;
* :func:`compact_paged`, :class:`H2OPagedCache` -- the same for a paged cache (pools
  ``[num_pages, Hkv, page_size, d]`` and a page table, as the ``Paged`` decode kernels read).

Caches are ``[batch, Hkv, capacity, ...]`` (or paged) with one length per sequence: each KV
head keeps its own tokens, but all heads of a sequence keep the same number (the recent window
is never evicted and the heavy count is the same), so one length still describes them.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional

from . import expr as E
from .family import Arg, Call, Lowered
from .spec import Attention

LOG2E = 1.0 / math.log(2.0)
WARPS = 4
KEYS_PER_THREAD = 4  # K vectors a thread has in flight
STEPS_PER_CTA = 16  # keys per lane group and CTA: block = 16 * groups slots


# ----------------------------------------------------------------------------- the kernel


def check_spec(spec: Attention) -> None:
    """Raise ValueError naming the field for what the weights kernel does not do."""
    from .resources import load_schedule

    if not spec.is_decode:
        raise ValueError(f"H2O needs a decode spec (phase=Decode(...)), got phase={spec.phase!r}")
    if spec.latent_kv or spec.quant is not None:
        raise ValueError("H2O: latent (MLA) and quantized caches are not supported")
    if not load_schedule("decode_cuda").fits(spec):
        raise ValueError(f"H2O: head_dim={spec.head_dim}, head_dim_v={spec.head_dim_v}, "
                         f"dtype={spec.dtype}: K rows must split into 16-byte vectors over a "
                         "power-of-two share of a warp (d = 64/128/256 in float16/bfloat16)")
    packed = spec.group_size * spec.phase.q_len
    if packed > 16:
        raise ValueError(f"H2O: num_heads / num_kv_heads * q_len = {packed} rows per KV head, "
                         "over 16 (each thread holds every row's query slice)")


def weights_args(spec: Attention) -> tuple:
    from .softmax import signature as sig

    ins = tuple(a for a in sig.inputs(spec) if a.name not in ("v", "sinks"))
    return ins + (Arg("lse", ("batch", spec.num_heads, spec.phase.q_len), "float32"),
                  Arg("weights", ("batch", spec.num_kv_heads, "kv_len"), "float32", "out"))


def weights_lowered(spec: Attention, target) -> Lowered:
    """The one-kernel program ``h2o_weights``: (q, k, kv_lens, [page_table], tensors, lse) ->
    weights."""
    import tvm

    from .render import parse, render

    check_spec(spec)
    if not target.is_cuda:
        raise ValueError(f"H2O weights run on CUDA only, got target {target.name}")
    args = weights_args(spec)
    text = render("decode_h2o_weights.j2", name="h2o_weights", **weights_context(spec, args))
    mod = tvm.IRModule({"h2o_weights": parse(text)})
    return Lowered(mod, args, (Call("h2o_weights", tuple(a.name for a in args)),))


def weights_context(spec: Attention, args) -> dict:
    from .resources import load_schedule
    from .softmax import predicate, signature as sig

    vec, lanes = load_schedule("decode_cuda").vector_lanes(spec)
    G, QL = spec.group_size, spec.phase.q_len
    row_q, row_head = f"(p // {G})", f"(vhk * {G} + p % {G})"
    if spec.is_paged:
        P = spec.kv_layout.page_size
        capacity, kv_len_of_b = f"MP * {P}", f"T.max(T.min(KV_LENS[vb], MP * {P}), 0)"
        k_at = f"PAGE_TABLE[vb, kc // {P}], vhk, kc % {P}"
    else:
        capacity, kv_len_of_b, k_at = "LK", "T.max(T.min(KV_LENS[vb], LK), 0)", "vb, vhk, kc"
    names = {"b": "vb", "h": row_head, "q_idx": row_q, "kv_idx": "key", "q_len": str(QL), "kv_len": "kvl"}
    mask = predicate.mask_expr(spec)
    visible = "T.bool(True)" if mask.same(E.true()) else predicate.tir(mask, names, spec)
    mod = predicate.score_expr(spec)
    if mod is None:
        logit, q_prescale = "d[0]", spec.scale * LOG2E
    else:
        logit = f"({predicate.tir(mod, {**names, 'score': 'd[0]'}, spec)}) * T.float32({LOG2E!r})"
        q_prescale = spec.scale
    kpw = 32 // lanes
    groups = WARPS * kpw
    return dict(
        params=sig.tir_params(args, spec), size_vars=sig.size_vars(args), dtype=spec.dtype,
        num_kv_heads=spec.num_kv_heads, group=G, packed=G * QL, warps=WARPS, lanes=lanes,
        vec=vec, kpw=kpw, groups=groups, keys_per_thread=KEYS_PER_THREAD, block=STEPS_PER_CTA * groups,
        shuffle_offsets=[lanes >> i for i in range(1, lanes.bit_length())], capacity=capacity,
        kv_len_of_b=kv_len_of_b, k_at=k_at, row_q=row_q, row_head=row_head, visible=visible,
        logit=logit, q_prescale=repr(q_prescale), log2e=repr(LOG2E),
        weights_buf=sig.buffer_name("weights"))


def _weights_cache_config() -> dict:
    # a config no schedule knows: it only keeps this program's cache entry apart from the
    # spec's decode program
    return {"program": "h2o_weights"}


def build_weights(spec: Attention, target="cuda", *, use_cache: bool = True):
    """The ``h2o_weights`` kernel as an ``attngen.kernel.Kernel`` (cached like ``build``)."""
    from .builder import _META, _load_module, _read_meta, _write_entry, cache_dir, cache_key, compile_lowered
    from .kernel import Kernel
    from .targets import get as get_target

    target = get_target(target) if isinstance(target, str) else target
    entry = cache_dir() / cache_key(spec, target, _weights_cache_config())
    if use_cache and (entry / _META).is_file():
        args, calls, cubin = _read_meta(entry / _META)
        return Kernel(spec, target, _load_module(entry, target, cubin), args, calls)
    lowered = weights_lowered(spec, target)
    ex = compile_lowered(lowered, target)
    if use_cache:
        _write_entry(entry, ex, lowered, target)
    return Kernel(spec, target, ex, lowered.args, lowered.calls)


def ensure_weights_cached(spec: Attention, target="cuda"):
    """Build the ``h2o_weights`` kernel into the cache unless it is there, without loading it
    (a build host without a GPU prepares kernels this way for a runtime-only GPU host)."""
    from .builder import _META, _write_entry, cache_dir, cache_key, compile_lowered
    from .targets import get as get_target

    target = get_target(target) if isinstance(target, str) else target
    entry = cache_dir() / cache_key(spec, target, _weights_cache_config())
    if not (entry / _META).is_file():
        lowered = weights_lowered(spec, target)
        _write_entry(entry, compile_lowered(lowered, target), lowered, target)
    return entry


class H2ODecode:
    """``decode(q, k, v, kv_lens, ...) -> (o, lse, weights)``: the spec's decode kernels, then
    the step's accumulated weight of every cache slot (see the module docstring)."""

    def __init__(self, spec: Attention, target="cuda", config: Optional[Mapping] = None):
        from .builder import build

        check_spec(spec)
        self.spec = spec
        self.attention = build(spec, target, config)
        self.weights = build_weights(spec, target)

    def __call__(self, **inputs):
        o, lse = self.attention(**inputs)
        feed = {n: inputs[n] for n in self.weights.input_names if n != "lse"}
        return o, lse, self.weights(**feed, lse=lse)


def reference_weights(spec: Attention, inputs: Mapping, lse=None):
    """float64 ``weights [batch, Hkv, kv_len]`` for ``inputs`` as ``attngen.softmax.data.sample``
    draws them: the softmax probabilities of the reference, summed over each KV head's rows."""
    import numpy as np

    from .reference import softmax as ref
    from .softmax import data, predicate

    q = np.asarray(inputs["q"], np.float64)
    kv_lens = np.asarray(inputs["kv_lens"])
    if spec.is_paged:
        k, _ = ref.gather_paged(inputs["k"], inputs["page_table"], kv_lens)
        capacity = inputs["page_table"].shape[1] * spec.kv_layout.page_size
    else:
        k = data._valid(inputs["k"], kv_lens)
        capacity = k.shape[2]
    B, H, L, _ = q.shape
    Lk = k.shape[2]
    mask = predicate.mask_array(spec, inputs, L, Lk, kv_lens)
    logits = ref._scores(q, ref.repeat_kv(k, H), spec.scale, predicate.score_fn(spec, inputs, L, Lk, kv_lens),
                         q_start=0, kv_start=0)
    if lse is None:
        lse = data.reference(spec, inputs)["lse"]
    lse = np.asarray(lse, np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        p = np.where(mask, np.exp(logits - lse[..., None]), 0.0)
    G = spec.group_size
    w = p.reshape(B, spec.num_kv_heads, G, L, Lk).sum(axis=(2, 3))
    out = np.zeros((B, spec.num_kv_heads, capacity))
    out[..., :Lk] = w
    return out


# ----------------------------------------------------------------------------- the policy


def prefill_scores(q, k, *, scale: Optional[float] = None, capacity: Optional[int] = None):
    """F after a causal prefill of ``q [B, H, T, d]`` over ``k [B, Hkv, T, d]``: the causal
    softmax probabilities summed over query rows and over each KV head's query heads, as
    ``[B, Hkv, capacity]`` float32 (float64 for float64 inputs; 0 past T).  Materialises the
    T x T probabilities."""
    import torch

    B, H, T, D = q.shape
    Hkv = k.shape[1]
    if H % Hkv:
        raise ValueError(f"num_heads {H} is not a multiple of num_kv_heads {Hkv}")
    capacity = T if capacity is None else capacity
    if capacity < T:
        raise ValueError(f"capacity {capacity} is below the prefill length {T}")
    scale = D ** -0.5 if scale is None else scale
    dt = torch.float64 if q.dtype == torch.float64 else torch.float32
    kk = k.repeat_interleave(H // Hkv, dim=1).to(dt)
    logits = scale * q.to(dt) @ kk.transpose(-1, -2)
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    p = torch.softmax(logits.masked_fill(~causal, float("-inf")), dim=-1)
    out = torch.zeros(B, Hkv, capacity, dtype=dt, device=q.device)
    out[..., :T] = p.reshape(B, Hkv, H // Hkv, T, T).sum(dim=(2, 3))
    return out


def keep_mask(scores, positions, kv_lens, *, heavy: int, recent: int, newest):
    """bool ``[B, Hkv, capacity]``: the slots the policy keeps after the step of token
    ``newest[b]`` (a tensor or int).  ``scores`` are F, ``positions`` the token index in each
    slot; slots at or past ``kv_lens[b]`` are never kept.  Kept: the slots of the ``recent``
    newest tokens (position > newest - recent) and the ``heavy`` other slots with the largest
    F, ties to the smaller position."""
    import torch

    if heavy < 0 or recent < 0:
        raise ValueError(f"heavy and recent must be >= 0, got heavy={heavy}, recent={recent}")
    cap = scores.shape[-1]
    slot = torch.arange(cap, device=scores.device)
    valid = slot[None, None, :] < kv_lens.view(-1, 1, 1)
    newest = torch.as_tensor(newest, device=scores.device).view(-1, 1, 1)
    old = valid & (positions <= newest - recent)
    # rank the old slots by (-F, position): a stable sort by position, then by -F
    by_pos = torch.argsort(torch.where(old, positions, torch.iinfo(positions.dtype).max), dim=-1, stable=True)
    f_sorted = torch.gather(torch.where(old, scores.to(torch.float64), float("-inf")), -1, by_pos)
    order = torch.gather(by_pos, -1, torch.argsort(-f_sorted, dim=-1, stable=True))
    rank = torch.empty_like(order).scatter_(-1, order, slot.expand_as(order))
    return (valid & ~old) | (old & (rank < heavy))


def _kept_first(keep):
    """Per (b, h): how many slots are kept (the same for every head of a sequence, else
    ValueError) and the slot order with the kept slots first, each part in slot order."""
    import torch

    counts = keep.sum(-1)
    if (counts != counts[:, :1]).any():
        raise ValueError(f"the KV heads of a sequence keep different counts: {counts.tolist()}")
    slot = torch.arange(keep.shape[-1], device=keep.device)
    return counts, torch.argsort((~keep).to(torch.int8) * keep.shape[-1] + slot, dim=-1)


def compact(keep, kv_lens, *tensors):
    """Gather the kept slots of each ``[B, Hkv, capacity, ...]`` tensor to the front, in slot
    order (which is token order), and return ``(new tensors..., new kv_lens)``; slots past the
    new length keep whatever was gathered there (they are past the sequence).  Every head of a
    sequence must keep the same count."""
    import torch

    counts, order = _kept_first(keep)
    out = []
    for t in tensors:
        idx = order.view(*order.shape, *([1] * (t.dim() - 3))).expand(*order.shape, *t.shape[3:])
        out.append(torch.gather(t, 2, idx))
    return (*out, counts[:, 0].to(kv_lens.dtype))


class H2OCache:
    """A contiguous KV cache under H2O: ``k, v [B, Hkv, capacity, d]``, ``scores`` (F, float32)
    and ``positions`` (int32) per slot, ``kv_lens [B]``.  ``step(q, k_new, v_new, decode)``
    appends one token per sequence, attends with ``decode`` (an :class:`H2ODecode`, or any
    callable returning ``(o, lse, weights)`` for the same inputs), accumulates F and evicts;
    it returns ``o``."""

    def __init__(self, k, v, scores, positions, kv_lens, *, heavy: int, recent: int):
        if k.shape[2] < heavy + recent + 1:
            raise ValueError(f"capacity {k.shape[2]} must hold heavy + recent + 1 = "
                             f"{heavy + recent + 1} tokens (the budget plus the new one)")
        self.k, self.v, self.scores, self.positions = k, v, scores, positions
        self.kv_lens, self.heavy, self.recent = kv_lens, heavy, recent

    @classmethod
    def from_prefill(cls, q, k, v, *, capacity: int, heavy: int, recent: int, scale=None):
        """The cache after a causal prefill of T tokens (F from :func:`prefill_scores`), then
        evicted to the budget as the step of token T - 1 would."""
        import torch

        B, Hkv, T, _ = k.shape
        pad = lambda x: torch.cat([x, x.new_zeros(B, Hkv, capacity - T, x.shape[-1])], dim=2)
        positions = torch.arange(capacity, dtype=torch.int32, device=k.device).expand(B, Hkv, capacity).contiguous()
        lens = torch.full((B,), T, dtype=torch.int32, device=k.device)
        cache = cls(pad(k), pad(v), prefill_scores(q, k, scale=scale, capacity=capacity), positions, lens,
                    heavy=heavy, recent=recent)
        cache.evict(newest=T - 1)
        return cache

    def evict(self, newest) -> None:
        keep = keep_mask(self.scores, self.positions, self.kv_lens, heavy=self.heavy, recent=self.recent,
                         newest=newest)
        self.k, self.v, self.scores, self.positions, self.kv_lens = compact(
            keep, self.kv_lens, self.k, self.v, self.scores.unsqueeze(-1), self.positions.unsqueeze(-1))
        self.scores, self.positions = self.scores.squeeze(-1), self.positions.squeeze(-1)

    def step(self, q, k_new, v_new, token, decode):
        """Token ``token`` (int): append k_new/v_new ``[B, Hkv, 1, d]``, attend, update F, evict."""
        import torch

        self._append(k_new, v_new, token)
        self.kv_lens = self.kv_lens + 1
        o, _, weights = self._decode(q, decode)
        self.scores += weights
        # the tokens this step attended to (-1 past a sequence), for callers that check the policy
        n = int(self.kv_lens.max())
        slot = torch.arange(n, device=self.k.device)
        self.attended = torch.where(slot < self.kv_lens.view(-1, 1, 1), self.positions[..., :n], -1)
        self.evict(newest=token)
        return o

    def _append(self, k_new, v_new, token) -> None:
        """Write the new token at each sequence's first free slot (F = 0)."""
        import torch

        b = torch.arange(self.k.shape[0], device=self.k.device)
        at = self.kv_lens.long()
        self.k[b, :, at] = k_new[:, :, 0]
        self.v[b, :, at] = v_new[:, :, 0]
        self.scores[b, :, at] = 0.0
        self.positions[b, :, at] = token

    def _decode(self, q, decode):
        return decode(q=q.contiguous(), k=self.k, v=self.v, kv_lens=self.kv_lens)


# ----------------------------------------------------------------------------- paged caches


def compact_paged(keep, kv_lens, page_table, *pools):
    """``compact`` for paged pools ``[num_pages, Hkv, page_size, ...]`` (the layout of
    ``Paged`` decode specs): each sequence's kept logical slots move to its first logical
    slots, in order, through its own ``page_table [B, max_pages]`` row, in place.  ``keep``
    covers ``max_pages * page_size`` logical slots.  Returns ``(new kv_lens, pages in use)``:
    the table entries past ``pages in use`` hold nothing of the sequence any more and can go
    back to the allocator.  Only the kept slots are read and only the new prefix is written,
    so page-table entries past a sequence's pages are never dereferenced."""
    import torch

    B, Hkv, cap = keep.shape
    page = pools[0].shape[2]
    if cap != page_table.shape[1] * page:
        raise ValueError(f"keep covers {cap} slots, the page table {page_table.shape[1]} pages of {page}")
    counts, order = _kept_first(keep)
    slot = torch.arange(cap, device=keep.device)
    b = torch.arange(B, device=keep.device).view(B, 1, 1).expand(B, Hkv, cap)
    h = torch.arange(Hkv, device=keep.device).view(1, Hkv, 1).expand(B, Hkv, cap)
    moved = slot.view(1, 1, cap) < counts[..., None]  # the new prefix of every (b, h)
    table = page_table.long()
    src_page, src_off = table[b[moved], order[moved] // page], order[moved] % page
    dst_slot = slot.view(1, 1, cap).expand(B, Hkv, cap)[moved]
    dst_page, dst_off = table[b[moved], dst_slot // page], dst_slot % page
    for pool in pools:
        values = pool[src_page, h[moved], src_off]  # a copy: the writes below cannot clobber it
        pool[dst_page, h[moved], dst_off] = values
    new_lens = counts[:, 0].to(kv_lens.dtype)
    return new_lens, (new_lens + page - 1) // page


class H2OPagedCache(H2OCache):
    """:class:`H2OCache` over a paged KV cache: ``k_pool, v_pool [num_pages, Hkv, page_size,
    d]`` shared with other sequences, ``page_table [B, max_pages]`` int32 (every page a
    sequence may use already allocated: capacity = max_pages * page_size), and F and the token
    positions per logical slot ``[B, Hkv, capacity]``.  ``decode`` is called with the pool and
    the page table (an :class:`H2ODecode` of a ``Paged`` spec).  After each eviction
    ``pages_in_use [B]`` says how many of a sequence's table entries still hold tokens."""

    def __init__(self, k_pool, v_pool, page_table, scores, positions, kv_lens, *, heavy: int, recent: int):
        capacity = page_table.shape[1] * k_pool.shape[2]
        if scores.shape[-1] != capacity or positions.shape[-1] != capacity:
            raise ValueError(f"scores and positions must cover max_pages * page_size = {capacity} slots, "
                             f"got {scores.shape[-1]} and {positions.shape[-1]}")
        if capacity < heavy + recent + 1:
            raise ValueError(f"the page table's {capacity} slots must hold heavy + recent + 1 = "
                             f"{heavy + recent + 1} tokens (the budget plus the new one)")
        self.k, self.v, self.page_table = k_pool, v_pool, page_table
        self.scores, self.positions, self.kv_lens = scores, positions, kv_lens
        self.heavy, self.recent = heavy, recent
        self.pages_in_use = (kv_lens + k_pool.shape[2] - 1) // k_pool.shape[2]

    @classmethod
    def from_prefill(cls, q, k, v, *, k_pool, v_pool, page_table, heavy: int, recent: int, scale=None):
        """Write a causal prefill's ``k, v [B, Hkv, T, d]`` into the sequences' pages, F from
        :func:`prefill_scores`, then evict to the budget as the step of token T - 1 would."""
        import torch

        B, Hkv, T, _ = k.shape
        page = k_pool.shape[2]
        capacity = page_table.shape[1] * page
        if T > capacity:
            raise ValueError(f"a prefill of {T} tokens does not fit {capacity} slots")
        slot = torch.arange(T, device=k.device)
        pages = page_table.long()[:, slot // page]  # [B, T]
        for pool, x in ((k_pool, k), (v_pool, v)):
            pool[pages, :, (slot % page).expand(B, T)] = x.transpose(1, 2).to(pool.dtype)
        positions = torch.arange(capacity, dtype=torch.int32, device=k.device).expand(B, Hkv, capacity).contiguous()
        lens = torch.full((B,), T, dtype=torch.int32, device=k.device)
        cache = cls(k_pool, v_pool, page_table, prefill_scores(q, k, scale=scale, capacity=capacity), positions,
                    lens, heavy=heavy, recent=recent)
        cache.evict(newest=T - 1)
        return cache

    def evict(self, newest) -> None:
        keep = keep_mask(self.scores, self.positions, self.kv_lens, heavy=self.heavy, recent=self.recent,
                         newest=newest)
        self.kv_lens, self.pages_in_use = compact_paged(keep, self.kv_lens, self.page_table, self.k, self.v)
        scores, positions, _ = compact(keep, self.kv_lens, self.scores.unsqueeze(-1), self.positions.unsqueeze(-1))
        self.scores, self.positions = scores.squeeze(-1), positions.squeeze(-1)

    def _append(self, k_new, v_new, token) -> None:
        import torch

        b = torch.arange(self.page_table.shape[0], device=self.k.device)
        at = self.kv_lens.long()
        page = self.k.shape[2]
        pages = self.page_table.long()[b, at // page]
        self.k[pages, :, at % page] = k_new[:, :, 0].to(self.k.dtype)
        self.v[pages, :, at % page] = v_new[:, :, 0].to(self.v.dtype)
        self.scores[b, :, at] = 0.0
        self.positions[b, :, at] = token

    def _decode(self, q, decode):
        return decode(q=q.contiguous(), k=self.k, v=self.v, kv_lens=self.kv_lens, page_table=self.page_table)
