"""The spec DSL: frozen, hashable specs whose repr rebuilds them and whose key is stable;
every invalid field is a ValueError naming it; masks and mods trace and compose."""
import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import attngen
from attngen import expr as E
from attngen import masks, mods
from attngen.expr import ExprError, Tensor, kv_idx, q_idx, q_pos, score
from attngen.gallery import GALLERY
from attngen.spec import Attention, Decode, LinearAttention, Mask, Paged, Quant, ScoreMod

NS = attngen.namespace()
ROOT = Path(__file__).resolve().parents[1]
SPECS = {name: entry.spec for name, entry in GALLERY.items()}


def rebuild(spec):
    return eval(repr(spec), NS)


# ----------------------------------------------------------------------------- gallery


def test_gallery_is_not_empty_and_has_both_families():
    kinds = {type(s) for s in SPECS.values()}
    assert kinds == {Attention, LinearAttention}
    assert len(SPECS) >= 20


@pytest.mark.parametrize("name", sorted(SPECS))
def test_gallery_spec_round_trips(name):
    spec = SPECS[name]
    assert hash(spec) == hash(spec)
    back = rebuild(spec)
    assert type(back) is type(spec)
    assert back == spec and hash(back) == hash(spec)
    assert back.key == spec.key and repr(back) == repr(spec)
    assert {spec: 1}[back] == 1  # usable as a dict key
    for f in dataclasses.fields(spec):
        assert getattr(back, f.name) == getattr(spec, f.name), f.name
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.num_heads = 1


def test_gallery_keys_are_distinct_and_hexadecimal():
    keys = [s.key for s in SPECS.values()]
    assert len(set(keys)) == len(keys)
    assert all(len(k) == 20 and int(k, 16) >= 0 for k in keys)
    # equal specs (e.g. two entries built separately) share the key; the gallery has none
    assert len(set(SPECS.values())) == len(SPECS)


def test_keys_are_stable_across_processes():
    code = ("import json\nfrom attngen.gallery import GALLERY\n"
            "print(json.dumps({n: [e.spec.key, repr(e.spec)] for n, e in GALLERY.items()}))")
    here = {n: [s.key, repr(s)] for n, s in SPECS.items()}
    for seed in ("0", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=str(ROOT))
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             cwd=ROOT, env=env, timeout=120)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == here


def test_key_is_sha_of_the_canonical_repr():
    import hashlib

    spec = SPECS["causal"]
    assert spec.canonical() == repr(spec)
    assert spec.key == hashlib.sha256(repr(spec).encode()).hexdigest()[:20]


# ----------------------------------------------------------------------------- keys differ

ATTN_BASE = Attention(num_heads=32, num_kv_heads=8, head_dim=128, mask=masks.causal())
ATTN_CHANGES = {
    "num_heads": [{"num_heads": 64}, {"num_heads": 16}],
    "num_kv_heads": [{"num_kv_heads": 4}, {"num_kv_heads": 32}, {"num_kv_heads": 1}],
    "head_dim": [{"head_dim": 64}, {"head_dim": 136}],
    "head_dim_v": [{"head_dim_v": 64}],
    "scale": [{"scale": 0.1}, {"scale": 1.0}, {"scale": math.nextafter(128 ** -0.5, 1)}],
    "mask": [{"mask": masks.full()}, {"mask": masks.sliding_window(128)},
             {"mask": masks.sliding_window(129)}, {"mask": masks.sliding_window(128, causal=False)},
             {"mask": masks.prefix_lm(64)}, {"mask": masks.document()},
             {"mask": masks.causal() & masks.sliding_window(128)}, {"mask": ~masks.causal()},
             {"mask": Mask.from_fn(lambda b, h, q, k: k <= q)}],
    "score_mod": [{"score_mod": mods.alibi(32)}, {"score_mod": mods.softcap(30.0)},
                  {"score_mod": mods.softcap(30.5)}, {"score_mod": mods.temperature(2.0)},
                  {"score_mod": mods.softcap(30.0).then(mods.alibi(32))},
                  {"score_mod": mods.alibi(32).then(mods.softcap(30.0))}],
    "sinks": [{"sinks": True}],
    "dtype": [{"dtype": "bfloat16"}, {"dtype": "float32"}],
    "quant": [{"quant": Quant()}, {"quant": Quant(qk="fp8_e4m3")}, {"quant": Quant(pv="fp8_e4m3")},
              {"quant": Quant(block_q=64)}, {"quant": Quant(smooth_k=False)}],
    "kv_layout": [{"kv_layout": Paged(16)}, {"kv_layout": Paged(32)}],
    "phase": [{"phase": Decode()}, {"phase": Decode(2)}, {"phase": Decode(1, split_kv=4)}],
    "latent_kv": [{"latent_kv": True}],
    "layout": [{"layout": "bshd"}, {"layout": "thd"}],
}
LIN_BASE = LinearAttention(num_heads=16, head_dim=128)
LIN_CHANGES = {
    "num_heads": [{"num_heads": 8}],
    "head_dim": [{"head_dim": 64}],
    "head_dim_v": [{"head_dim_v": 64}, {"head_dim_v": 256}],
    "feature_map": [{"feature_map": "elu1"}, {"feature_map": "relu"}, {"feature_map": "performer"}],
    "num_features": [{"feature_map": "performer", "num_features": 32}],
    "gate": [{"gate": "fixed"}, {"gate": "scalar"}, {"gate": "vector"}, {"gate": "mlstm", "form": "recurrent"}],
    "update": [{"update": "delta"}, {"update": "delta", "gate": "scalar"}],
    "normalize": [{"normalize": True, "feature_map": "elu1"}],
    "form": [{"form": "recurrent"}, {"form": "parallel"}],
    "chunk_size": [{"chunk_size": 32}, {"chunk_size": 128}],
    "scale": [{"scale": 0.5}],
    "dtype": [{"dtype": "bfloat16"}],
    "bonus": [{"bonus": True, "gate": "vector", "form": "recurrent"}],
}


@pytest.mark.parametrize("base, changes", [(ATTN_BASE, ATTN_CHANGES), (LIN_BASE, LIN_CHANGES)],
                         ids=["Attention", "LinearAttention"])
def test_key_differs_when_any_field_differs(base, changes):
    fields = {f.name for f in dataclasses.fields(base)}
    assert fields == set(changes), f"fields without a key test: {fields ^ set(changes)}"
    seen = {base.key: repr(base)}
    for name, variants in changes.items():
        for change in variants:
            spec = base.replace(**change)
            assert getattr(spec, name) != getattr(base, name), change
            assert spec != base
            assert spec.key not in seen, f"{change}: key collides with {seen.get(spec.key)}"
            seen[spec.key] = repr(spec)
            back = rebuild(spec)
            assert back == spec and back.key == spec.key, change


def test_derived_defaults_are_not_fields_that_differ():
    a = Attention(num_heads=8, head_dim=64)
    assert a.num_kv_heads == 8 and a.head_dim_v == 64 and a.scale == 64 ** -0.5
    assert a == Attention(num_heads=8, num_kv_heads=8, head_dim=64, head_dim_v=64, scale=0.125)
    assert a.key == Attention(num_heads=8, num_kv_heads=8, head_dim=64, head_dim_v=64, scale=0.125).key
    assert isinstance(Attention(scale=1).scale, float)
    # non-default derived values survive the round trip
    for spec in (Attention(num_heads=8, head_dim=64, head_dim_v=128),
                 LinearAttention(head_dim=64, head_dim_v=128),
                 LinearAttention(head_dim=128, head_dim_v=64, num_heads=8),
                 LinearAttention(head_dim=64, feature_map="performer"),
                 LinearAttention(head_dim=64, scale=LinearAttention().scale)):
        back = rebuild(spec)
        assert back == spec and back.key == spec.key, repr(spec)


def test_random_specs_round_trip():
    r = np.random.default_rng()
    mask_choices = [masks.full(), masks.causal(), masks.sliding_window(64), masks.document(),
                    masks.bigbird(16, 3, 1, 100, 5), masks.block_sparse(32, causal=True),
                    masks.prefix_lm(5) | masks.dilated(4, 2), ~masks.sliding_window(8, causal=False),
                    Mask.from_fn(lambda b, h, q, k: (q % 2 == 0) & (k < q + 5))]
    mod_choices = [None, mods.alibi(8), mods.relative_bias(16), mods.softcap(20.0).then(mods.temperature(0.5)),
                   ScoreMod.from_fn(lambda s, b, h, q, k: s * 0.5 + E.where(q == k, 1.0, 0.0))]
    for _ in range(60):
        kv = int(r.choice([1, 2, 4, 8]))
        hd = int(r.choice([64, 128, 192]))
        spec = Attention(num_heads=kv * int(r.integers(1, 5)), num_kv_heads=kv, head_dim=hd,
                         mask=mask_choices[r.integers(len(mask_choices))],
                         score_mod=mod_choices[r.integers(len(mod_choices))],
                         sinks=bool(r.integers(0, 2)), dtype=str(r.choice(["float16", "bfloat16", "float32"])),
                         kv_layout=Paged(int(r.choice([1, 16, 64]))) if r.random() < 0.5 else "contiguous",
                         phase=Decode(int(r.integers(1, 9)), int(r.integers(1, 9))) if r.random() < 0.5 else "prefill",
                         scale=float(r.uniform(0.01, 1)) if r.random() < 0.5 else None)
        back = rebuild(spec)
        assert back == spec and back.key == spec.key and hash(back) == hash(spec), repr(spec)


# ----------------------------------------------------------------------------- invalid specs

A = Attention
L = LinearAttention
INVALID = [
    # Attention layouts
    (lambda: A(layout="sbhd"), r"Attention\.layout"),
    (lambda: A(layout="bshd", phase=Decode(1)), r"Attention\.layout"),
    (lambda: A(layout="thd", kv_layout=Paged(16)), r"Attention\.layout"),
    (lambda: A(layout="thd", mask=masks.document()), r"Attention\.layout"),
    # Attention sizes
    (lambda: A(num_heads=6, num_kv_heads=4), r"Attention\.num_kv_heads"),
    (lambda: A(num_heads=32, num_kv_heads=3), r"Attention\.num_kv_heads"),
    (lambda: A(num_heads=0), r"Attention\.num_heads"),
    (lambda: A(num_heads=-8), r"Attention\.num_heads"),
    (lambda: A(num_heads=32.0), r"Attention\.num_heads"),
    (lambda: A(num_heads=True), r"Attention\.num_heads"),
    (lambda: A(num_heads="32"), r"Attention\.num_heads"),
    (lambda: A(num_kv_heads=0), r"Attention\.num_kv_heads"),
    (lambda: A(head_dim=60), r"Attention\.head_dim"),
    (lambda: A(head_dim=0), r"Attention\.head_dim"),
    (lambda: A(head_dim=2048), r"Attention\.head_dim"),
    (lambda: A(head_dim=100), r"Attention\.head_dim"),
    (lambda: A(head_dim_v=100), r"Attention\.head_dim_v"),
    (lambda: A(head_dim=64, head_dim_v=128, latent_kv=True), r"Attention\.head_dim_v"),
    # scale
    (lambda: A(scale=0.0), r"Attention\.scale"),
    (lambda: A(scale=-0.1), r"Attention\.scale"),
    (lambda: A(scale=float("nan")), r"Attention\.scale"),
    (lambda: A(scale=float("inf")), r"Attention\.scale"),
    (lambda: A(scale="0.1"), r"Attention\.scale"),
    # options
    (lambda: A(dtype="fp16"), r"Attention\.dtype"),
    (lambda: A(dtype="float64"), r"Attention\.dtype"),
    (lambda: A(dtype="int8"), r"Attention\.dtype"),
    (lambda: A(kv_layout="paged"), r"Attention\.kv_layout"),
    (lambda: A(kv_layout=16), r"Attention\.kv_layout"),
    (lambda: A(phase="decode"), r"Attention\.phase"),
    (lambda: A(phase=1), r"Attention\.phase"),
    (lambda: A(quant="int8"), r"Attention\.quant"),
    (lambda: A(quant=Quant(), latent_kv=True, head_dim=192, head_dim_v=128), r"Attention\.quant"),
    (lambda: A(quant=Quant(), head_dim=192, head_dim_v=128), r"Attention\.quant"),
    (lambda: A(mask=q_idx >= kv_idx), r"Attention\.mask"),
    (lambda: A(mask="causal"), r"Attention\.mask"),
    (lambda: A(mask=None), r"Attention\.mask"),
    (lambda: A(score_mod=masks.causal()), r"Attention\.score_mod"),
    (lambda: A(score_mod=score * 2), r"Attention\.score_mod"),
    (lambda: A(mask=Mask(Tensor("q", ("batch", "kv_len"))[E.b, kv_idx] > 0)), r"Attention\.mask.*reserved"),
    (lambda: A(mask=Mask(Tensor("doc_ids", ("batch",))[E.b] > 0) & masks.document()),
     r"Attention\.mask.*share the name"),
    # Paged / Decode / Quant
    (lambda: Paged(12), r"Paged\.page_size"),
    (lambda: Paged(0), r"Paged\.page_size"),
    (lambda: Paged(-16), r"Paged\.page_size"),
    (lambda: Paged(16.0), r"Paged\.page_size"),
    (lambda: Decode(0), r"Decode\.q_len"),
    (lambda: Decode(65), r"Decode\.q_len"),
    (lambda: Decode(1.0), r"Decode\.q_len"),
    (lambda: Decode(1, split_kv=0), r"Decode\.split_kv"),
    (lambda: Decode(1, split_kv=-2), r"Decode\.split_kv"),
    (lambda: Quant(qk="int4"), r"Quant\.qk"),
    (lambda: Quant(qk=None, pv=None), r"Quant\.qk"),
    (lambda: Quant(pv="int8"), r"Quant\.pv"),
    (lambda: Quant(block_q=96), r"Quant\.block_q"),
    (lambda: Quant(block_k=0), r"Quant\.block_k"),
    # masks and mods
    (lambda: masks.sliding_window(0), r"sliding_window\.window"),
    (lambda: masks.sliding_window(-4, causal=False), r"sliding_window\.window"),
    (lambda: masks.sliding_window(2.0), r"sliding_window\.window"),
    (lambda: masks.global_local(0, 8), r"global_local\.num_global"),
    (lambda: masks.global_local(4, 0), r"window"),
    (lambda: masks.prefix_lm(-1), r"prefix_lm\.prefix"),
    (lambda: masks.block_sparse(0), r"block_sparse\.block"),
    (lambda: masks.bigbird(0), r"bigbird\.block"),
    (lambda: masks.bigbird(64, 0), r"bigbird\.window_blocks"),
    (lambda: masks.bigbird(64, 3, -1), r"bigbird\.global_blocks"),
    (lambda: masks.bigbird(64, 3, 1, 1001), r"bigbird\.random_per_mille"),
    (lambda: masks.bigbird(64, 3, 1, 100, -1), r"bigbird\.seed"),
    (lambda: masks.dilated(0, 2), r"dilated\.window"),
    (lambda: masks.dilated(4, 0), r"dilated\.dilation"),
    (lambda: mods.alibi(0), r"alibi\.num_heads"),
    (lambda: mods.softcap(0), r"softcap\.cap"),
    (lambda: mods.softcap(-30.0), r"softcap\.cap"),
    (lambda: mods.softcap(float("inf")), r"softcap\.cap"),
    (lambda: mods.relative_bias(0), r"relative_bias\.max_distance"),
    (lambda: mods.temperature(0.0), r"temperature\.t"),
    (lambda: Mask(q_idx + 1), r"Mask\.expr"),
    (lambda: Mask(score > 0), r"Mask\.expr"),
    (lambda: Mask.from_fn(lambda b, h, q, k: q - k), r"Mask\.expr"),
    (lambda: ScoreMod(q_idx < kv_idx), r"ScoreMod\.expr"),
    (lambda: ScoreMod.from_fn(lambda s, b, h, q, k: s > 0), r"ScoreMod\.expr"),
    # LinearAttention
    (lambda: L(num_heads=0), r"LinearAttention\.num_heads"),
    (lambda: L(head_dim=-64), r"LinearAttention\.head_dim"),
    (lambda: L(head_dim_v=0), r"LinearAttention\.head_dim_v"),
    (lambda: L(gate="matrix"), r"LinearAttention\.gate"),
    (lambda: L(gate="none"), r"LinearAttention\.gate"),
    (lambda: L(feature_map="softmax"), r"LinearAttention\.feature_map"),
    (lambda: L(form="fused"), r"LinearAttention\.form"),
    (lambda: L(update="hebbian"), r"LinearAttention\.update"),
    (lambda: L(update="delta", gate="vector"), r"LinearAttention\.gate"),
    (lambda: L(feature_map="relu", normalize=True), r"LinearAttention\.normalize"),
    (lambda: L(normalize=True), r"LinearAttention\.normalize"),
    (lambda: L(update="delta", feature_map="elu1"), r"LinearAttention\.feature_map"),
    (lambda: L(update="delta", normalize=True), r"LinearAttention\.normalize"),
    (lambda: L(num_features=64), r"LinearAttention\.num_features"),
    (lambda: L(feature_map="performer", num_features=0), r"LinearAttention\.num_features"),
    (lambda: L(chunk_size=48), r"LinearAttention\.chunk_size"),
    (lambda: L(chunk_size=0), r"LinearAttention\.chunk_size"),
    (lambda: L(chunk_size=512), r"LinearAttention\.chunk_size"),
    (lambda: L(scale=0.0), r"LinearAttention\.scale"),
    (lambda: L(dtype="fp8"), r"LinearAttention\.dtype"),
    (lambda: L(bonus=1, form="recurrent"), r"LinearAttention\.bonus"),
    (lambda: L(gate="mlstm", bonus=True), r"LinearAttention\.bonus"),
    (lambda: L(gate="mlstm", form="recurrent", normalize=True, feature_map="elu1"), r"LinearAttention\.feature_map"),
    (lambda: L(gate="mlstm", form="recurrent", update="delta"), r"LinearAttention\.update"),
    (lambda: L(bonus=True, update="delta", form="recurrent"), r"LinearAttention\.bonus"),
    (lambda: L(bonus=True, feature_map="elu1", normalize=True, form="recurrent"), r"LinearAttention\.bonus"),
]


@pytest.mark.parametrize("build, field", INVALID, ids=[f"{i}-{f.replace(chr(92), '')}"
                                                       for i, (_, f) in enumerate(INVALID)])
def test_invalid_spec_names_the_field(build, field):
    with pytest.raises(ValueError, match=field):
        build()


def test_replace_validates_too():
    with pytest.raises(ValueError, match=r"Attention\.num_kv_heads"):
        ATTN_BASE.replace(num_kv_heads=5)
    with pytest.raises(ValueError, match=r"LinearAttention\.gate"):
        LIN_BASE.replace(update="delta", gate="vector")


def test_valid_edge_values():
    assert Decode(64).q_len == 64 and Decode(1, 256).split_kv == 256
    assert Paged(1).page_size == 1 and Paged(256).page_size == 256
    assert masks.prefix_lm(0) is not None and masks.sliding_window(1) is not None
    assert A(head_dim=8).head_dim == 8 and A(head_dim=1024).head_dim == 1024
    assert L(chunk_size=1).chunk_size == 1 and L(chunk_size=256).chunk_size == 256
    assert A(num_heads=8, num_kv_heads=1).group_size == 8


# ----------------------------------------------------------------------------- tracing


def grid(Q=9, K=12, B=2, H=3):
    return {"b": np.arange(B)[:, None, None, None], "h": np.arange(H)[None, :, None, None],
            "q_idx": np.arange(Q)[None, None, :, None], "kv_idx": np.arange(K)[None, None, None, :],
            "q_len": Q, "kv_len": K}


def mask_values(m, env):
    return np.broadcast_to(E.evaluate(m.expr, env), (env["b"].size, env["h"].size,
                                                      env["q_idx"].size, env["kv_idx"].size))


def test_mask_from_fn_traces_a_lambda():
    m = Mask.from_fn(lambda b, h, q_idx, kv_idx: (kv_idx <= q_idx) & (h % 2 == 0))
    assert m.expr.same((kv_idx <= q_idx) & (E.h % 2 == 0))
    env = grid()
    want = (env["kv_idx"] <= env["q_idx"]) & (env["h"] % 2 == 0)
    np.testing.assert_array_equal(mask_values(m, env), np.broadcast_to(want, (2, 3, 9, 12)))
    assert rebuild(m) == m
    # positional names, not keyword names: the lambda's own parameter names do not matter
    assert Mask.from_fn(lambda w, x, y, z: z <= y) == Mask(kv_idx <= q_idx)
    assert Mask.from_fn(lambda b, h, q, k: True).is_full
    assert not masks.causal().is_full and masks.full().is_full


def test_score_mod_from_fn_traces_a_lambda():
    m = ScoreMod.from_fn(lambda score, b, h, q_idx, kv_idx: score * 2 + E.where(q_idx == kv_idx, 1.0, 0.0))
    env = {**grid(), "score": np.random.default_rng().standard_normal((2, 3, 9, 12))}
    want = env["score"] * 2 + (env["q_idx"] == env["kv_idx"])
    np.testing.assert_allclose(E.evaluate(m.expr, env), want)
    assert rebuild(m) == m


@pytest.mark.parametrize("fn", [
    lambda b, h, q, k: (k <= q) and (k > 0),
    lambda b, h, q, k: (k <= q) or (k > 0),
    lambda b, h, q, k: not (k <= q),
    lambda b, h, q, k: (k <= q) if q > 3 else (k > 0),
    lambda b, h, q, k: 0 <= k <= q,  # a chained comparison is an `and`
])
def test_python_boolean_operators_fail_clearly(fn):
    with pytest.raises(ExprError) as err:
        Mask.from_fn(fn)
    msg = str(err.value)
    assert "&" in msg and "|" in msg and "~" in msg and "and" in msg


def test_untraceable_function_names_itself():
    def uses_math(b, h, q, k):
        return math.floor(q) <= k

    with pytest.raises(ExprError, match="cannot trace uses_math"):
        Mask.from_fn(uses_math)
    with pytest.raises(ExprError, match="cannot trace"):
        Mask.from_fn(lambda b, h, q: q)  # wrong arity


# ----------------------------------------------------------------------------- composition


def test_mask_composition_matches_numpy():
    r = np.random.default_rng()
    env = grid(Q=int(r.integers(1, 30)), K=int(r.integers(1, 30)))
    a = masks.sliding_window(int(r.integers(1, 10)))
    c = masks.prefix_lm(int(r.integers(0, 10)))
    d = masks.dilated(int(r.integers(1, 5)), int(r.integers(1, 4)))
    va, vc, vd = (mask_values(m, env) for m in (a, c, d))
    cases = {a & c: va & vc, a | c: va | vc, ~a: ~va, ~(a | d) & c: ~(va | vd) & vc,
             (a & ~c) | d: (va & ~vc) | vd, ~~a: va}
    for m, want in cases.items():
        assert isinstance(m, Mask)
        np.testing.assert_array_equal(mask_values(m, env), want, err_msg=repr(m))
        back = rebuild(m)
        assert back == m and repr(back) == repr(m) and hash(back) == hash(m)
        spec = Attention(num_heads=4, head_dim=64, mask=m)
        assert rebuild(spec) == spec and rebuild(spec).key == spec.key
    assert repr(a & c) == f"({a!r} & {c!r})" and repr(~a) == f"~{a!r}"
    assert (a & c) != (c & a)  # structural, not logical, identity
    assert (a & c) == Mask(a.expr & c.expr)


def test_score_mod_then_composes_in_order():
    r = np.random.default_rng()
    env = {**grid(H=8), "score": r.standard_normal((2, 8, 9, 12)) * 40}
    cap, t = float(r.uniform(5, 50)), float(r.uniform(0.3, 3))
    sc, al, te = mods.softcap(cap), mods.alibi(8), mods.temperature(t)
    m = sc.then(al)
    capped = cap * np.tanh(env["score"] / cap)
    want = E.evaluate(al.expr, {**env, "score": capped})
    np.testing.assert_allclose(E.evaluate(m.expr, env), want, rtol=1e-12)
    three = sc.then(al).then(te)
    np.testing.assert_allclose(E.evaluate(three.expr, env), want / t, rtol=1e-12)
    assert sc.then(al.then(te)) == three  # associative
    assert sc.then(al) != al.then(sc)
    for x in (m, three, al.then(sc)):
        back = rebuild(x)
        assert back == x and repr(back) == repr(x)
    assert repr(m) == f"{sc!r}.then({al!r})"
    # a mod that ignores the score replaces it
    const_mod = ScoreMod.from_fn(lambda s, b, h, q, k: q * 1.0)
    assert sc.then(const_mod) == const_mod
    # runtime tensors of composed mods are found
    assert [t.name for t in mods.relative_bias(4).then(sc).tensors] == ["rel_bias"]


def test_attention_runtime_tensors_mask_first():
    spec = Attention(num_heads=8, head_dim=64, mask=masks.document() & masks.block_sparse(32),
                     score_mod=mods.relative_bias(8))
    assert [t.name for t in spec.runtime_tensors] == ["doc_ids", "block_layout", "rel_bias"]
    assert SPECS["causal"].runtime_tensors == ()
    assert SPECS["paged_decode"].is_decode and SPECS["paged_decode"].is_paged
    assert not SPECS["causal"].is_decode and not SPECS["causal"].is_paged
    assert SPECS["gqa"].group_size == 4
    assert SPECS["performer"].feature_dim == 2 * SPECS["performer"].num_features
