"""The softmax-attention family: ``Attention`` specs lowered to TensorIR kernels.

Calling convention (head-major; ``H`` = num_heads, ``Hkv`` = num_kv_heads, ``D`` = head_dim,
``Dv`` = head_dim_v; batch, q_len and kv_len are symbolic: one build serves every length):

inputs
    q           [batch, H, q_len, D]          spec.dtype
    k           [batch, Hkv, kv_len, D]       spec.dtype
    v           [batch, Hkv, kv_len, Dv]      spec.dtype   (absent with latent_kv: V = k[..., :Dv])
    kv_lens     [batch] int32                 decode and paged only: keys >= kv_lens[b] are
                                              invisible, and in the mask ``kv_len`` is kv_lens[b]
                                              (bottom-right alignment per sequence)
    page_table  [batch, max_pages] int32      paged only; then k and v are page pools
                                              k [num_pages, Hkv, page_size, D], v [.., Dv], and
                                              token t of sequence b is slot t % page_size of page
                                              page_table[b, t // page_size]
    <tensor>    Tensor.shape(sizes)           each runtime tensor of the mask / score mod, by name
                                              (``heads`` dims are H; decode's q_len is an int)
    sinks       [H] float32                   sinks=True: a per-head logit in every denominator
outputs
    o           [batch, H, q_len, Dv]         spec.dtype
    lse         [batch, H, q_len] float32     natural log; a row with no visible key has o = 0
                                              and lse = -inf (with sinks: lse = sinks[h])
scratch (allocated by the driver, shared by the calls)
    o_parts [batch, H, q_len, split, Dv], lse_parts [batch, H, q_len, split]   split-KV decode
    k_int8, k_scale, k_mean, q_int8, q_scale, lse_shift                      int8 quantization

Decoding (``phase=Decode(q_len, split_kv)``): q_len is the compile-time ``Decode.q_len`` and
kv_len the cache's capacity.  The size ``kv_len`` of a paged program is ``max_pages *
page_size``.  Runtime-tensor indices are clamped into their tensor (see ``predicate``).

Kernels, in call order: ``quantize_k``, ``quantize_q`` (Quant(qk="int8")), ``attention``,
``combine`` (split_kv > 1).  Schedules: ``schedules/attention_cpu.py`` (llvm) and
``schedules/attention_cuda.py`` (SIMT), each declaring its knobs in ``KNOBS`` with
``default(spec, target)`` and ``validate(spec, target, config)``.
"""
from __future__ import annotations

from ..family import ModuleFamily
from ..spec import Attention
from . import data, lower, signature

FAMILY = ModuleFamily("softmax", Attention, lower, signature, data)
