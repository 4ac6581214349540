"""Ready specs, one per method of the taxonomy that the DSL expresses.

``attngen list`` prints them; ``attngen check NAME`` builds and validates one.  Sizes are those
of the models that made each method known (heads, head dims), so a gallery kernel is a real one.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import masks, mods
from .spec import Attention, Decode, LinearAttention, Paged, Quant


@dataclass(frozen=True)
class Entry:
    name: str
    family: str  # hardware-efficient | compact | sparse | linear
    method: str
    spec: object


def _entries():
    A, L = Attention, LinearAttention
    causal = masks.causal()
    yield from (
        Entry("full", "hardware-efficient", "softmax attention, bidirectional (FlashAttention-2 tiling)",
              A(num_heads=16, head_dim=128)),
        Entry("causal", "hardware-efficient", "causal softmax attention (FlashAttention-2)",
              A(num_heads=16, head_dim=128, mask=causal)),
        Entry("causal_bf16", "hardware-efficient", "causal softmax attention in bfloat16",
              A(num_heads=16, head_dim=128, mask=causal, dtype="bfloat16")),
        Entry("sage", "hardware-efficient", "SageAttention: INT8 Q/K per block, K smoothing (Ψ)",
              A(num_heads=16, head_dim=128, mask=causal, quant=Quant(qk="int8"))),
        Entry("paged_prefill", "hardware-efficient", "PagedAttention: prefill over a paged KV cache",
              A(num_heads=16, num_kv_heads=4, head_dim=128, mask=causal, kv_layout=Paged(16))),
        Entry("decode", "hardware-efficient", "decoding one token against a KV cache",
              A(num_heads=32, num_kv_heads=8, head_dim=128, phase=Decode(1))),
        Entry("flash_decoding", "hardware-efficient", "FlashDecoding: split-KV + log-sum-exp combine",
              A(num_heads=32, num_kv_heads=8, head_dim=128, phase=Decode(1, split_kv=8))),
        Entry("paged_decode", "hardware-efficient", "PagedAttention decode (vLLM), page size 16, split-KV",
              A(num_heads=32, num_kv_heads=8, head_dim=128, phase=Decode(1, split_kv=4),
                kv_layout=Paged(16))),
        Entry("spec_decode", "hardware-efficient", "speculative decoding: verify 4 tokens, causal among them",
              A(num_heads=32, num_kv_heads=8, head_dim=128, mask=causal, phase=Decode(4, split_kv=2))),
        Entry("mqa", "compact", "MQA: one KV head for all query heads",
              A(num_heads=16, num_kv_heads=1, head_dim=128, mask=causal)),
        Entry("gqa", "compact", "GQA: groups of query heads share a KV head (Llama 3, 32/8)",
              A(num_heads=32, num_kv_heads=8, head_dim=128, mask=causal)),
        Entry("mla_prefill", "compact", "MLA prefill, naive form: q/k dim 192 (128 + RoPE 64), v dim 128",
              A(num_heads=16, head_dim=192, head_dim_v=128, mask=causal, scale=192 ** -0.5)),
        Entry("mla_decode", "compact", "MLA decode, absorbed form: one latent head 512 + RoPE 64 (DeepSeek-V2)",
              A(num_heads=16, num_kv_heads=1, head_dim=576, head_dim_v=512, latent_kv=True,
                scale=192 ** -0.5, phase=Decode(1, split_kv=4))),
        Entry("sliding_window", "sparse", "sliding window, causal (Mistral)",
              A(num_heads=16, num_kv_heads=4, head_dim=128, mask=masks.sliding_window(256))),
        Entry("local_bidirectional", "sparse", "local window, bidirectional",
              A(num_heads=16, head_dim=64, mask=masks.sliding_window(128, causal=False))),
        Entry("longformer", "sparse", "Longformer: global tokens + local window",
              A(num_heads=16, head_dim=64, mask=masks.global_local(16, 128))),
        Entry("bigbird", "sparse", "BigBird: window + global + seeded random blocks",
              A(num_heads=16, head_dim=64, mask=masks.bigbird(32, 3, 1, 150, seed=7))),
        Entry("dilated", "sparse", "dilated causal window (LongNet-style)",
              A(num_heads=16, head_dim=64, mask=masks.dilated(64, 4))),
        Entry("prefix_lm", "sparse", "prefix-LM: bidirectional prefix, causal after",
              A(num_heads=16, head_dim=128, mask=masks.prefix_lm(64))),
        Entry("document", "sparse", "document masking of packed sequences (runtime doc ids)",
              A(num_heads=16, head_dim=128, mask=masks.document())),
        Entry("block_sparse", "sparse", "block-sparse attention with a runtime block layout",
              A(num_heads=16, head_dim=128, mask=masks.block_sparse(64))),
        Entry("alibi", "hardware-efficient", "ALiBi positional bias, causal",
              A(num_heads=16, head_dim=128, mask=causal, score_mod=mods.alibi(16))),
        Entry("softcap", "hardware-efficient", "logit soft-capping 30, causal (Gemma 2)",
              A(num_heads=16, num_kv_heads=8, head_dim=128, mask=causal, score_mod=mods.softcap(30.0))),
        Entry("relative_bias", "hardware-efficient", "T5-style relative-position bias table",
              A(num_heads=16, head_dim=64, score_mod=mods.relative_bias(128))),
        Entry("sinks", "hardware-efficient", "attention sinks + sliding window (gpt-oss)",
              A(num_heads=64, num_kv_heads=8, head_dim=64, mask=masks.sliding_window(128),
                sinks=True)),
        Entry("linear_attn", "linear", "linear attention, identity feature map",
              L(num_heads=16, head_dim=128)),
        Entry("linear_transformer", "linear", "Linear Transformer: elu+1 features with normaliser",
              L(num_heads=16, head_dim=64, feature_map="elu1", normalize=True)),
        Entry("performer", "linear", "Performer FAVOR+ positive random features",
              L(num_heads=8, head_dim=64, feature_map="performer", num_features=64, normalize=True)),
        Entry("retnet", "linear", "RetNet retention: fixed decay per head",
              L(num_heads=16, head_dim=128, gate="fixed")),
        Entry("mamba2", "linear", "Mamba2 / SSD: data-dependent scalar decay",
              L(num_heads=16, head_dim=128, gate="scalar")),
        Entry("gla", "linear", "GLA: data-dependent vector decay (also HGRN2 with k = 1 - f)",
              L(num_heads=16, head_dim=128, gate="vector")),
        Entry("deltanet", "linear", "DeltaNet: delta rule with beta (WY/UT form in a chunk)",
              L(num_heads=16, head_dim=128, update="delta")),
        Entry("gated_deltanet", "linear", "Gated DeltaNet: delta rule + scalar decay",
              L(num_heads=16, head_dim=128, update="delta", gate="scalar")),
        Entry("retnet_recurrent", "linear", "RetNet in the recurrent form (decoding)",
              L(num_heads=16, head_dim=128, gate="fixed", form="recurrent")),
        Entry("gla_recurrent", "linear", "GLA in the recurrent form",
              L(num_heads=16, head_dim=128, gate="vector", form="recurrent")),
        Entry("deltanet_recurrent", "linear", "DeltaNet in the recurrent form",
              L(num_heads=16, head_dim=128, update="delta", form="recurrent")),
        Entry("mlstm", "linear", "xLSTM mLSTM: exponential input gate, forget gate, stabiliser",
              L(num_heads=4, head_dim=128, gate="mlstm")),
        Entry("mlstm_recurrent", "linear", "xLSTM mLSTM in the recurrent form (decoding)",
              L(num_heads=4, head_dim=128, gate="mlstm", form="recurrent")),
        Entry("rwkv6", "linear", "RWKV-6 (Finch): vector decay + bonus u for the current token",
              L(num_heads=16, head_dim=64, gate="vector", bonus=True)),
        Entry("rwkv6_recurrent", "linear", "RWKV-6 in the recurrent form (decoding)",
              L(num_heads=16, head_dim=64, gate="vector", bonus=True, form="recurrent")),
        Entry("retnet_parallel", "linear", "RetNet in the parallel (quadratic, masked) form",
              L(num_heads=16, head_dim=128, gate="fixed", form="parallel")),
    )


GALLERY = {e.name: e for e in _entries()}


def get(name: str) -> Entry:
    try:
        return GALLERY[name]
    except KeyError:
        raise KeyError(f"no gallery spec named {name!r} (see `attngen list`)") from None
