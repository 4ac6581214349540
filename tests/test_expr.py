"""The expression language: numpy meaning, repr round trip, kinds, TVMScript text, sympy form.

Every mask factory of ``masks.LIBRARY`` and every mod of ``mods.LIBRARY`` is checked against a
hand-written numpy formula (bottom-right aligned positions, ``q_len != kv_len`` included) with
parameters and sizes drawn fresh each run.
"""
import ast
import math

import numpy as np
import pytest
import sympy as sp

import attngen
from attngen import expr as E
from attngen import masks, mods
from attngen.expr import ExprError, Tensor, const, kv_idx, q_idx, score, where
from attngen.spec import Mask, ScoreMod

NS = attngen.namespace()
ENS = E.namespace()


def rng():
    return np.random.default_rng()


# ----------------------------------------------------------------------------- helpers


def draw_mask_params(name, r):
    """Random valid arguments of the mask factory ``name``."""
    flip = lambda: bool(r.integers(0, 2))  # noqa: E731
    return {
        "full": lambda: {},
        "causal": lambda: {},
        "sliding_window": lambda: {"window": int(r.integers(1, 20)), "causal": flip()},
        "global_local": lambda: {"num_global": int(r.integers(1, 6)), "window": int(r.integers(1, 20)),
                                 "causal": flip()},
        "prefix_lm": lambda: {"prefix": int(r.integers(0, 16))},
        "document": lambda: {"causal": flip()},
        "block_sparse": lambda: {"block": int(r.choice([1, 2, 3, 4, 8])), "causal": flip()},
        "bigbird": lambda: {"block": int(r.integers(1, 7)), "window_blocks": int(r.integers(1, 6)),
                            "global_blocks": int(r.integers(0, 3)),
                            "random_per_mille": int(r.choice([0, int(r.integers(1, 1000)), 1000])),
                            "seed": int(r.integers(0, 5000))},
        "dilated": lambda: {"window": int(r.integers(1, 9)), "dilation": int(r.integers(1, 5))},
    }[name]()


def draw_mod_params(name, r):
    return {
        "alibi": lambda: {"num_heads": int(r.choice([1, 2, 4, 8, 12, 16]))},
        "softcap": lambda: {"cap": float(r.uniform(0.5, 50.0))},
        "relative_bias": lambda: {"max_distance": int(r.integers(1, 12))},
        "temperature": lambda: {"t": float(r.uniform(0.1, 4.0))},
    }[name]()


def ref_mask(name, p, env):
    """Hand-written numpy of each library mask (True = visible)."""
    bb, hh, q, k = env["b"], env["h"], env["q_idx"], env["kv_idx"]
    Q, K = env["q_len"], env["kv_len"]
    qp = q + (K - Q)  # bottom-right alignment
    causal = k <= qp
    if name == "full":
        return np.ones(np.broadcast_shapes(bb.shape, hh.shape, q.shape, k.shape), bool)
    if name == "causal":
        return causal
    if name == "sliding_window":
        w = p["window"]
        if p["causal"]:
            return (qp - k >= 0) & (qp - k < w)
        return np.abs(k - qp) <= w // 2
    if name == "global_local":
        g, w = p["num_global"], p["window"]
        local = ((qp - k >= 0) & (qp - k < w)) if p["causal"] else (np.abs(k - qp) <= w // 2)
        glob = (k < g) | (qp < g)
        if p["causal"]:
            glob = glob & causal
        return local | glob
    if name == "prefix_lm":
        return causal | (k < p["prefix"])
    if name == "document":
        doc = env["doc_ids"]
        out = doc[bb, qp] == doc[bb, k]
        return out & causal if p["causal"] else out
    if name == "block_sparse":
        lay = env["block_layout"]
        blk = p["block"]
        out = lay[hh, q // blk, k // blk] != 0
        return out & causal if p["causal"] else out
    if name == "bigbird":
        blk = p["block"]
        qb, kb = np.floor_divide(qp, blk), np.floor_divide(k, blk)
        out = (np.abs(kb - qb) <= p["window_blocks"] // 2) | (qb < p["global_blocks"]) | (
            kb < p["global_blocks"])
        if p["random_per_mille"]:
            hashed = np.mod(qb * 1009 + kb * 9176 + (p["seed"] % 997) * 7919, 1000)
            out = out | (hashed < p["random_per_mille"])
        return out
    if name == "dilated":
        d = qp - k
        return (d >= 0) & (d < p["window"] * p["dilation"]) & (d % p["dilation"] == 0)
    raise AssertionError(f"no hand-written reference for mask factory {name!r}: add one")


def ref_mod(name, p, env):
    s, hh, q, k = env["score"], env["h"], env["q_idx"], env["kv_idx"]
    qp = q + (env["kv_len"] - env["q_len"])
    if name == "alibi":
        return s + 2.0 ** (-8.0 * (hh + 1) / p["num_heads"]) * (k - qp)
    if name == "softcap":
        return p["cap"] * np.tanh(s / p["cap"])
    if name == "relative_bias":
        D = p["max_distance"]
        return s + env["rel_bias"][hh, np.clip(k - qp, -D, D) + D]
    if name == "temperature":
        return s / p["t"]
    raise AssertionError(f"no hand-written reference for score mod {name!r}: add one")


def sample_tensor(t: Tensor, sizes, r):
    shape = t.shape(sizes)
    if t.sample == "segments":  # sorted document ids per row
        out = np.sort(r.integers(0, 4, size=shape), axis=-1)
    elif t.sample == "bits":
        out = r.integers(0, 2, size=shape)
    else:
        out = r.standard_normal(shape)
    return out.astype(np.int32 if t.dtype == "int32" else np.float32)


def make_env(r, B, H, Q, K, exprs=()):
    env = {"b": np.arange(B)[:, None, None, None], "h": np.arange(H)[None, :, None, None],
           "q_idx": np.arange(Q)[None, None, :, None], "kv_idx": np.arange(K)[None, None, None, :],
           "q_len": Q, "kv_len": K, "score": r.standard_normal((B, H, Q, K)) * 10}
    sizes = {"batch": B, "heads": H, "q_len": Q, "kv_len": K}
    for e in exprs:
        for t in E.tensors(e):
            env[t.name] = sample_tensor(t, sizes, r)
    return env


def draw_sizes(r, name=None):
    B, H = int(r.integers(1, 4)), int(r.integers(1, 5))
    Q, K = int(r.integers(1, 25)), int(r.integers(1, 25))
    if name == "document" and Q > K:  # doc ids are read at q_pos, a key position
        Q, K = K, Q
    if r.random() < 0.25:
        K = Q  # prefill
    return B, H, Q, K


def full_shape(x, shape):
    return np.broadcast_to(np.asarray(x), shape)


# ----------------------------------------------------------------------------- evaluate


@pytest.mark.parametrize("name", sorted(masks.LIBRARY))
def test_mask_factory_matches_handwritten_numpy(name):
    r = rng()
    for _ in range(12):
        p = draw_mask_params(name, r)
        m = masks.LIBRARY[name](**p)
        assert isinstance(m, Mask)
        B, H, Q, K = draw_sizes(r, name)
        env = make_env(r, B, H, Q, K, [m.expr])
        got = full_shape(E.evaluate(m.expr, env), (B, H, Q, K))
        want = full_shape(ref_mask(name, p, env), (B, H, Q, K))
        assert got.dtype == bool
        np.testing.assert_array_equal(got, want, err_msg=f"{m!r} B,H,Q,K={B, H, Q, K}")


def test_masks_at_known_points():
    """A few hand-checked entries, independent of the numpy references above."""
    def at(m, q, k, Q, K, **t):
        env = {"b": 0, "h": 0, "q_idx": q, "kv_idx": k, "q_len": Q, "kv_len": K, **t}
        return bool(E.evaluate(m.expr, env))

    # decoding: one query at the end sees every key under causal
    assert all(at(masks.causal(), 0, k, 1, 10) for k in range(10))
    # prefill: strictly upper triangle hidden
    assert at(masks.causal(), 3, 3, 8, 8) and not at(masks.causal(), 3, 4, 8, 8)
    # q_len > kv_len: the first rows sit before every key
    assert not at(masks.causal(), 0, 0, 5, 3) and at(masks.causal(), 2, 0, 5, 3)
    sw = masks.sliding_window(3)
    assert [at(sw, 5, k, 8, 8) for k in range(8)] == [False, False, False, True, True, True, False, False]
    sw2 = masks.sliding_window(4, causal=False)
    assert [at(sw2, 5, k, 8, 8) for k in range(8)] == [False, False, False, True, True, True, True, True]
    dl = masks.dilated(3, 2)
    assert [at(dl, 7, k, 8, 8) for k in range(8)] == [False, False, False, True, False, True, False, True]
    assert at(masks.prefix_lm(4), 0, 3, 8, 8) and not at(masks.prefix_lm(4), 0, 4, 8, 8)


@pytest.mark.parametrize("name", sorted(mods.LIBRARY))
def test_mod_matches_handwritten_numpy(name):
    r = rng()
    for _ in range(12):
        p = draw_mod_params(name, r)
        m = mods.LIBRARY[name](**p)
        assert isinstance(m, ScoreMod)
        B, H, Q, K = draw_sizes(r)
        if name == "alibi":
            H = p["num_heads"]
        env = make_env(r, B, H, Q, K, [m.expr])
        got = full_shape(E.evaluate(m.expr, env), (B, H, Q, K))
        want = full_shape(ref_mod(name, p, env), (B, H, Q, K))
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=repr(m))


def test_alibi_slopes_are_the_paper_sequence():
    env = {"score": 0.0, "h": np.arange(8), "q_idx": 0, "kv_idx": -1, "q_len": 1, "kv_len": 1}
    slopes = -E.evaluate(mods.alibi(8).expr, env)
    np.testing.assert_allclose(slopes, [2.0 ** -(i + 1) for i in range(8)], rtol=1e-15)


def test_evaluate_integer_arithmetic_is_floor_and_int64():
    r = rng()
    x = r.integers(-1000, 1000, size=200)
    d = int(r.integers(1, 9))
    env = {"q_idx": x}
    np.testing.assert_array_equal(E.evaluate(q_idx // d, env), np.floor_divide(x, d))
    np.testing.assert_array_equal(E.evaluate(q_idx % d, env), np.mod(x, d))
    # int32 inputs are widened: no wrap-around
    big = np.full(3, 2 ** 30, np.int32)
    assert (E.evaluate(q_idx * 4, {"q_idx": big}) == 2 ** 32).all()
    # true division is float even for integer operands
    assert E.evaluate(q_idx / 2, {"q_idx": 3}) == 1.5


def test_evaluate_missing_names():
    with pytest.raises(ExprError, match="no value for variable 'kv_idx'"):
        E.evaluate(q_idx < kv_idx, {"q_idx": 1})
    with pytest.raises(ExprError, match="no value for runtime tensor 'doc_ids'"):
        E.evaluate(masks.document().expr, {"b": 0, "q_idx": 0, "kv_idx": 0, "q_len": 1, "kv_len": 1})


# ----------------------------------------------------------------------------- repr


def check_expr_round_trip(e):
    back = const(eval(repr(e), ENS))
    assert back.same(e), f"{e!r} rebuilt as {back!r}"
    assert hash(back) == hash(e)
    assert repr(back) == repr(e)


@pytest.mark.parametrize("name", sorted(masks.LIBRARY))
def test_mask_repr_round_trip(name):
    r = rng()
    for _ in range(6):
        m = masks.LIBRARY[name](**draw_mask_params(name, r))
        back = eval(repr(m), NS)
        assert isinstance(back, Mask) and back == m and hash(back) == hash(m)
        assert back.expr.same(m.expr) and repr(back) == repr(m)
        check_expr_round_trip(m.expr)
        unlabeled = Mask(m.expr)  # without the library label, repr prints the expression
        assert repr(unlabeled).startswith("Mask(")
        assert eval(repr(unlabeled), NS) == m


@pytest.mark.parametrize("name", sorted(mods.LIBRARY))
def test_mod_repr_round_trip(name):
    r = rng()
    for _ in range(6):
        m = mods.LIBRARY[name](**draw_mod_params(name, r))
        back = eval(repr(m), NS)
        assert isinstance(back, ScoreMod) and back == m and hash(back) == hash(m)
        check_expr_round_trip(m.expr)
        assert eval(repr(ScoreMod(m.expr)), NS) == m


def random_expr(r, kind, depth):
    """A random well-kinded expression (every node type, constants on either side)."""
    leaf = depth <= 0 or r.random() < 0.2
    if kind == "int":
        if leaf:
            return (E.var(str(r.choice(E.INDEX_VARS))) if r.random() < 0.7
                    else const(int(r.integers(-9, 20))))
        c = r.integers(0, 6)
        x, y = random_expr(r, "int", depth - 1), random_expr(r, "int", depth - 1)
        if c == 0:
            return E._bin(str(r.choice(["+", "-", "*"])), x, y)
        if c == 1:
            return E._bin(str(r.choice(["//", "%"])), x, const(int(r.integers(1, 8))))
        if c == 2:
            return (E.minimum if r.random() < 0.5 else E.maximum)(x, y)
        if c == 3:
            return where(random_expr(r, "bool", depth - 1), x, y)
        if c == 4:
            return -x
        return E.abs_(x)
    if kind == "float":
        if leaf:
            return score if r.random() < 0.6 else const(float(r.integers(-64, 64)) / 8)
        c = r.integers(0, 6)
        x = random_expr(r, "float", depth - 1)
        y = random_expr(r, str(r.choice(["int", "float"])), depth - 1)
        if r.random() < 0.5:
            x, y = y, x
        if c == 0:
            return E._bin(str(r.choice(["+", "-", "*"])), x, y)
        if c == 1:
            return x / (y * y + 1.0)
        if c == 2:
            return (E.minimum if r.random() < 0.5 else E.maximum)(x, y)
        if c == 3:
            return where(random_expr(r, "bool", depth - 1), x, y)
        if c == 4:  # tanh of a bounded argument: a saturated tanh(40) == 1.0 is a float tie
            f = str(r.choice(["exp", "exp2", "tanh"]))
            return getattr(E, f)(E.tanh(x / (x * x + 1.0)))
        return getattr(E, str(r.choice(["log", "sqrt"])))(x * x + 1.0)
    # bool
    if leaf:
        if r.random() < 0.15:
            return const(bool(r.integers(0, 2)))
        return E._cmp(str(r.choice(list(E._COMPARE))), random_expr(r, "int", 0), random_expr(r, "int", 0))
    c = r.integers(0, 5)
    if c == 0:
        k1 = str(r.choice(["int", "float"]))
        return E._cmp(str(r.choice(list(E._COMPARE))), random_expr(r, k1, depth - 1),
                      random_expr(r, "int", depth - 1))
    if c == 1:
        return random_expr(r, "bool", depth - 1) & random_expr(r, "bool", depth - 1)
    if c == 2:
        return random_expr(r, "bool", depth - 1) | random_expr(r, "bool", depth - 1)
    if c == 3:
        return ~random_expr(r, "bool", depth - 1)
    return where(random_expr(r, "bool", depth - 1), random_expr(r, "bool", depth - 1),
                 random_expr(r, "bool", depth - 1))


def scalar_env(r):
    Q, K = int(r.integers(1, 300)), int(r.integers(1, 300))
    return {"b": int(r.integers(0, 4)), "h": int(r.integers(0, 16)), "q_idx": int(r.integers(0, Q)),
            "kv_idx": int(r.integers(0, K)), "q_len": Q, "kv_len": K,
            "score": float(r.integers(-400, 400)) / 16}


def test_random_expressions_round_trip_through_repr():
    r = rng()
    for _ in range(300):
        kind = str(r.choice(["int", "float", "bool"]))
        e = random_expr(r, kind, int(r.integers(1, 5)))
        assert e.kind == kind
        check_expr_round_trip(e)
        env = scalar_env(r)
        with np.errstate(all="ignore"):
            a, b_ = E.evaluate(e, env), E.evaluate(const(eval(repr(e), ENS)), env)
        np.testing.assert_array_equal(a, b_)


def test_structural_identity_tells_constants_apart():
    assert not const(1).same(const(True))
    assert not const(1).same(const(1.0))
    assert not (q_idx + 1).same(q_idx + 1.0)
    assert const(2).same(const(2)) and (q_idx + 1).same(q_idx + 1)
    assert ScoreMod(score + 1) != ScoreMod(score + 1.0)
    assert hash(q_idx < kv_idx) == hash(q_idx < kv_idx)
    assert not (q_idx < kv_idx).same(kv_idx > q_idx)


# ----------------------------------------------------------------------------- kinds


@pytest.mark.parametrize("build, message", [
    (lambda: q_idx & kv_idx, "& needs boolean operands"),
    (lambda: q_idx | (kv_idx < 1), r"\| needs boolean operands"),
    (lambda: where(q_idx, 1, 2), "where.. needs a boolean condition"),
    (lambda: where(q_idx < 1, q_idx < 2, 3), "mixes boolean and numeric"),
    (lambda: ~q_idx, "~ needs a boolean"),
    (lambda: (q_idx < 1) + 1, r"operator \+ on a boolean"),
    (lambda: (q_idx < 1) < (kv_idx < 1), "comparison < on a boolean"),
    (lambda: score // 2, "// needs integer operands"),
    (lambda: q_idx % 1.5, "% needs integer operands"),
    (lambda: E.exp(q_idx < 1), "exp.. of a boolean"),
    (lambda: q_idx + "1", "cannot use '1'"),
    (lambda: q_idx + None, "cannot use None"),
    (lambda: q_idx + float("nan"), "finite"),
    (lambda: score * float("inf"), "finite"),
    (lambda: E.var("seq"), "unknown variable 'seq'"),
    (lambda: masks.DOC_IDS[E.b], "has 2 dims, indexed with 1"),
    (lambda: masks.DOC_IDS[E.b, score], "not an integer expression"),
])
def test_kind_errors(build, message):
    with pytest.raises(ExprError, match=message):
        build()


@pytest.mark.parametrize("use", [
    lambda: bool(q_idx < 1),
    lambda: (q_idx < 1) and (kv_idx < 1),
    lambda: (q_idx < 1) or (kv_idx < 1),
    lambda: not (q_idx < 1),
    lambda: 1 if q_idx < kv_idx else 0,
    lambda: max(q_idx, kv_idx),
])
def test_python_truth_value_is_refused(use):
    with pytest.raises(ExprError) as err:
        use()
    msg = str(err.value)
    assert all(op in msg for op in ("&", "|", "~", "where")), msg


def test_expr_error_is_a_value_error():
    assert issubclass(ExprError, ValueError)


def test_free_vars_and_tensors():
    m = masks.document() & masks.block_sparse(16)
    assert E.free_vars(m.expr) == {"b", "h", "q_idx", "kv_idx", "q_len", "kv_len"}
    assert [t.name for t in m.tensors] == ["doc_ids", "block_layout"]  # first use, once each
    assert E.free_vars(mods.softcap(5.0).expr) == {"score"}
    assert E.tensors(masks.causal().expr) == ()


# ----------------------------------------------------------------------------- to_tir

TIR_NAMES = {"b": "vb", "h": "vh", "q_idx": "vq", "kv_idx": "vk", "q_len": "nq", "kv_len": "nk",
             "score": "s_val"}
TIR_BUFFERS = {"doc_ids": "buf_doc", "block_layout": "buf_layout", "rel_bias": "buf_rel"}


def library_exprs(r):
    out = [masks.LIBRARY[n](**draw_mask_params(n, r)).expr for n in sorted(masks.LIBRARY)]
    out += [mods.LIBRARY[n](**draw_mod_params(n, r)).expr for n in sorted(mods.LIBRARY)]
    return out


def test_to_tir_text_substitutes_names():
    r = rng()
    exprs = library_exprs(r) + [random_expr(r, str(r.choice(["int", "float", "bool"])), 4)
                                for _ in range(40)]
    for e in exprs:
        text = E.to_tir(e, TIR_NAMES, TIR_BUFFERS)
        tree = ast.parse(text, mode="eval")  # Python-ish: TVMScript is Python syntax
        idents = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        assert idents <= {"T"} | set(TIR_NAMES.values()) | set(TIR_BUFFERS.values()), (text, idents)
        for v in E.free_vars(e):
            assert f"({TIR_NAMES[v]})" in text
        for t in E.tensors(e):
            assert f"{TIR_BUFFERS[t.name]}[" in text


def test_to_tir_keeps_integer_subexpressions_int32():
    text = E.to_tir(score + q_idx // 2 + q_idx % 3, TIR_NAMES)
    assert 'T.Cast("float32", T.floordiv((vq), T.int32(2)))' in text
    assert 'T.Cast("float32", T.floormod((vq), T.int32(3)))' in text
    assert "T.floordiv(T.Cast" not in text and "T.floormod(T.Cast" not in text
    # a where of integers meeting a float: the integer branches stay integers
    text = E.to_tir(score * where(q_idx < kv_idx, 1, 2), TIR_NAMES)
    assert "T.if_then_else(((vq) < (vk)), T.int32(1), T.int32(2))" in text


def test_to_tir_unbound_names():
    with pytest.raises(ExprError, match="'kv_idx' is not available"):
        E.to_tir(masks.causal().expr, {"q_idx": "i", "q_len": "Q", "kv_len": "K"})
    with pytest.raises(ExprError, match="'doc_ids' is not bound"):
        E.to_tir(masks.document().expr, TIR_NAMES, {})


def test_to_tir_compiles_and_matches_evaluate_on_llvm():
    """One prim func computing every library mask and mod, parsed from text, built for llvm."""
    tvm = pytest.importorskip("tvm")
    r = rng()
    B, H, Q, K = 2, 4, 9, 13
    blk, D = 4, 3
    ms = [masks.full(), masks.causal(), masks.sliding_window(int(r.integers(1, 8))),
          masks.sliding_window(int(r.integers(1, 8)), causal=False),
          masks.global_local(int(r.integers(1, 4)), int(r.integers(1, 8)), causal=bool(r.integers(0, 2))),
          masks.prefix_lm(int(r.integers(0, 8))), masks.document(causal=bool(r.integers(0, 2))),
          masks.block_sparse(blk, causal=bool(r.integers(0, 2))),
          masks.bigbird(2, 3, 1, int(r.integers(0, 1001)), int(r.integers(0, 3000))),
          masks.dilated(int(r.integers(1, 5)), int(r.integers(1, 4))),
          ~masks.causal() | masks.prefix_lm(2)]
    fs = [mods.alibi(H), mods.softcap(float(r.uniform(1, 20))), mods.relative_bias(D),
          mods.temperature(float(r.uniform(0.2, 3))), mods.softcap(10.0).then(mods.alibi(H)),
          ScoreMod(score + q_idx // 3 - (kv_idx % 4) * 0.5 + E.minimum(q_idx, kv_idx))]
    exprs = [m.expr for m in ms] + [f.expr for f in fs]
    names = {"b": "bb", "h": "hh", "q_idx": "i", "kv_idx": "j", "q_len": f"T.int32({Q})",
             "kv_len": f"T.int32({K})", "score": "S[bb, hh, i, j]"}
    bufs = {"doc_ids": "DOC", "block_layout": "LAY", "rel_bias": "REL"}
    lay_shape = (H, -(-Q // blk), -(-K // blk))
    params = [f'S: T.Buffer(({B}, {H}, {Q}, {K}), "float32")',
              f'DOC: T.Buffer(({B}, {K}), "int32")',
              f'LAY: T.Buffer({lay_shape}, "int32")',
              f'REL: T.Buffer(({H}, {2 * D + 1}), "float32")']
    body = []
    for n, e in enumerate(exprs):
        dt = "int32" if e.kind == "bool" else "float32"
        params.append(f'O{n}: T.Buffer(({B}, {H}, {Q}, {K}), "{dt}")')
        text = E.to_tir(e, names, bufs)
        rhs = f"T.if_then_else({text}, 1, 0)" if e.kind == "bool" else text
        body.append(f"        O{n}[bb, hh, i, j] = {rhs}")
    src = ("@T.prim_func\ndef masks_and_mods(" + ", ".join(params) + "):\n"
           f"    for bb, hh, i, j in T.grid({B}, {H}, {Q}, {K}):\n" + "\n".join(body) + "\n")
    try:
        func = tvm.script.from_source(src)
    except tvm.error.DiagnosticError as err:
        pytest.fail(f"TVMScript rejected:\n{err}\n{src}")
    lib = tvm.compile(tvm.IRModule({"main": func}), target=tvm.target.Target({"kind": "llvm"}))

    env = make_env(r, B, H, Q, K, exprs)
    env["score"] = env["score"].astype(np.float32)
    inputs = [env["score"], env["doc_ids"], env["block_layout"], env["rel_bias"]]
    assert env["block_layout"].shape == lay_shape
    outs = [np.zeros((B, H, Q, K), np.int32 if e.kind == "bool" else np.float32) for e in exprs]
    dev = [tvm.runtime.tensor(x) for x in inputs + outs]
    lib["main"](*dev)
    for e, d in zip(exprs, dev[len(inputs):]):
        want = full_shape(E.evaluate(e, env), (B, H, Q, K))
        if e.kind == "bool":
            np.testing.assert_array_equal(d.numpy().astype(bool), want, err_msg=repr(e))
        else:
            np.testing.assert_allclose(d.numpy(), want, rtol=2e-5, atol=2e-5, err_msg=repr(e))


# ----------------------------------------------------------------------------- to_sympy


def sympy_at(e, env, arrays):
    s = E.to_sympy(e)
    s = s.subs({sym: (sp.Rational(env[sym.name]).limit_denominator(10 ** 6) if sym.name == "score"
                      else sp.Integer(env[sym.name])) for sym in s.free_symbols})
    for t in E.tensors(e):
        arr = arrays[t.name]
        s = s.replace(sp.Function(t.name), lambda *idx, arr=arr: sp.sympify(arr[tuple(int(i) for i in idx)].item()))
    return s


def check_sympy_point(e, got, want, env):
    if e.kind == "bool":
        assert bool(got) == bool(want), (e, env, got, want)
    else:
        assert math.isclose(float(got), float(want), rel_tol=1e-9, abs_tol=1e-9), (e, env, got, want)


def test_to_sympy_agrees_with_evaluate_on_library_exprs():
    """Exact sympy arithmetic (rationals, symbolic functions) at random points."""
    r = rng()
    for e in library_exprs(r):
        for _ in range(8):
            env = scalar_env(r)
            env["q_len"] = min(env["q_len"], env["kv_len"])  # doc ids read at q_pos
            env["q_idx"] = min(env["q_idx"], env["q_len"] - 1)
            sizes = {"batch": 4, "heads": 16, "q_len": env["q_len"], "kv_len": env["kv_len"]}
            arrays = {t.name: sample_tensor(t, sizes, r) for t in E.tensors(e)}
            want = E.evaluate(e, {**env, **arrays})
            got = sympy_at(e, env, arrays)
            assert got in (sp.true, sp.false) if e.kind == "bool" else got.is_number, (e, got)
            check_sympy_point(e, got, want, env)


def test_to_sympy_agrees_with_evaluate_on_random_exprs():
    r = rng()
    for _ in range(60):
        e = random_expr(r, str(r.choice(["int", "float", "bool"])), int(r.integers(1, 5)))
        for _ in range(4):
            env = scalar_env(r)
            with np.errstate(all="ignore"):
                want = E.evaluate(e, env)
            got = sympy_at(e, env, {})
            assert got in (sp.true, sp.false) if e.kind == "bool" else got.is_number, (e, got)
            check_sympy_point(e, got, want, env)


def test_to_sympy_mod_of_a_multiple_of_a_mod():
    """Regression (found by the random test): sympy 1.14 turns Mod(-2 Mod(q, 6), 3) into
    Mod(Mod(q, 6)**2, 3); a Mod inside a Mod's argument goes in as its floor form."""
    exprs = [((0 - 2) * (q_idx % 6)) % 3, (2 * (q_idx % 6)) % 3, ((q_idx % 7) * (kv_idx % 5) - 3) % 4,
             (kv_idx - (q_idx % 6) * 5) % 6, E.abs_(q_idx % 6 - kv_idx % 4) * 3 % 5]
    for e in exprs:
        s = E.to_sympy(e)
        for q in range(-13, 40, 3):
            for k in range(-6, 9):
                env = {"q_idx": q, "kv_idx": k}
                got = s.subs({sym: sp.Integer(env[sym.name]) for sym in s.free_symbols})
                assert int(got) == int(E.evaluate(e, env)), (e, env, got)


def test_to_sympy_floor_and_mod_of_where_min_max():
    """Regression: sympy takes where(c, 8, 4) for even and then even/6 for an integer, which
    dropped the floor of ``//`` and turned ``%`` into 0."""
    c = q_idx <= kv_idx
    exprs = [where(c, E.h, 4) // 6, where(c, 8, 4) // 6, where(c, 8, 4) % 6,
             E.maximum(q_idx * 2, 4) // 6, E.minimum(q_idx * 2, 4096) % 10,
             (q_idx + where(c, 8, 4)) // 6, where(c, where(E.h < 3, 8, 10), 4) // 6,
             (where(c, 2, 4) * kv_idx) % 6, E.abs_(kv_idx * 2 - q_idx * 2) // 6]
    for e in exprs:
        s = E.to_sympy(e)
        for q in range(0, 24, 3):
            for k in (0, 5, 13, 30):
                for hh in (1, 8):
                    env = {"q_idx": q, "kv_idx": k, "h": hh}
                    got = s.subs({x: env[x.name] for x in s.free_symbols})
                    assert got == E.evaluate(e, env), (e, env, got)


def test_to_sympy_index_variables_are_integers():
    s = E.to_sympy(masks.causal().expr)
    assert all(sym.is_integer for sym in s.free_symbols)
    assert not E.to_sympy(score).is_integer


# ----------------------------------------------------------------------------- runtime tensors


def test_tensor_shape_with_ceil_division():
    r = rng()
    t = Tensor("lay", ("batch", "heads", "q_len/64", "kv_len/64", 3, "kv_len"), "int32", "bits")
    for _ in range(50):
        sizes = {"batch": int(r.integers(1, 9)), "heads": int(r.integers(1, 65)),
                 "q_len": int(r.integers(1, 5000)), "kv_len": int(r.integers(1, 5000))}
        assert t.shape(sizes) == (sizes["batch"], sizes["heads"], math.ceil(sizes["q_len"] / 64),
                                  math.ceil(sizes["kv_len"] / 64), 3, sizes["kv_len"])
    for n, blocks in ((1, 1), (63, 1), (64, 1), (65, 2), (128, 2), (129, 3)):
        assert Tensor("x", ("kv_len/64",)).shape({"kv_len": n}) == (blocks,)
    assert Tensor("x", ("q_len/1",)).shape({"q_len": 7}) == (7,)


@pytest.mark.parametrize("kwargs, message", [
    ({"dims": (0,)}, "dim 0"),
    ({"dims": (-3,)}, "dim -3"),
    ({"dims": (2.5,)}, "dim 2.5"),
    ({"dims": ("seq",)}, "dim 'seq'"),
    ({"dims": ("kv_len/0",)}, "kv_len/0"),
    ({"dims": ("kv_len/",)}, "kv_len/"),
    ({"dims": ("kv_len/-2",)}, "kv_len/-2"),
    ({"dims": ("kv_len/1.5",)}, "kv_len/1.5"),
    ({"dims": ("kv_len*2",)}, r"kv_len\*2"),
    ({"dims": ("batch", " heads")}, "' heads'"),
    ({"name": "1abc"}, "not an identifier"),
    ({"name": "a-b"}, "not an identifier"),
    ({"dtype": "int64"}, "dtype must be int32 or float32"),
    ({"dtype": "float16"}, "dtype must be int32 or float32"),
    ({"sample": "uniform"}, "sample must be one of"),
])
def test_tensor_invalid(kwargs, message):
    args = {"name": "t", "dims": ("batch", "kv_len"), "dtype": "int32", "sample": "normal", **kwargs}
    with pytest.raises(ExprError, match=message):
        Tensor(**args)


def test_tensor_load_kind_and_repr():
    ti = Tensor("ids", ("batch", "kv_len"), "int32", "segments")
    tf = Tensor("bias", ("heads", 5), "float32")
    assert ti[E.b, kv_idx].kind == "int" and tf[E.h, 2].kind == "float"
    e = (ti[E.b, kv_idx] == ti[E.b, q_idx]) & (tf[E.h, kv_idx % 5] > 0.0)
    check_expr_round_trip(e)
    assert E.tensors(e) == (ti, tf)


# ----------------------------------------------------------------------------- factoring


def _size(e) -> int:
    return 1 + sum(_size(a) for a in e.args if isinstance(a, E.Expr))


def test_factor_conjuncts_takes_the_shared_conjunct_out_once():
    causal = kv_idx <= E.q_pos
    mask = masks.global_local(64, 1024, causal=True).expr   # (causal & window) | (global & causal)
    out = E.factor_conjuncts(mask)
    assert E.chain(out, "and")[0].same(causal) and len(E.chain(out, "and")) == 2
    assert _size(out) < _size(mask)
    # a disjunct that is the shared part alone absorbs the rest
    assert E.factor_conjuncts((causal & (q_idx < 5)) | causal).same(causal)
    # nothing shared: the expression as written
    assert E.factor_conjuncts(masks.prefix_lm(64).expr).same(masks.prefix_lm(64).expr)


def test_factor_conjuncts_keeps_every_gallery_mask():
    from attngen.gallery import GALLERY

    for name, entry in GALLERY.items():
        mask = getattr(entry.spec, "mask", None)
        if mask is not None:
            assert E.factor_conjuncts(mask.expr).same(mask.expr), name


def test_factor_conjuncts_agrees_with_evaluate_on_random_and_or_trees():
    """Trees of ANDs, ORs and NOTs over a few shared comparisons, so that disjuncts share
    conjuncts often; the factored tree is never larger and equal on a grid of positions."""
    r = rng()
    atoms = [kv_idx <= E.q_pos, E.q_pos - kv_idx < 7, kv_idx < 3, q_idx % 2 == 0, E.h < 1]

    def tree(depth):
        if depth == 0 or r.random() < 0.25:
            return atoms[int(r.integers(0, len(atoms)))]
        c = r.integers(0, 5)
        if c == 4:
            return ~tree(depth - 1)
        return (tree(depth - 1) & tree(depth - 1)) if c < 2 else (tree(depth - 1) | tree(depth - 1))

    env = {"b": 0, "h": np.arange(2)[:, None, None], "q_idx": np.arange(20)[None, :, None],
           "kv_idx": np.arange(24)[None, None, :], "q_len": 20, "kv_len": 24}
    changed = 0
    for _ in range(400):
        e = tree(int(r.integers(1, 5)))
        out = E.factor_conjuncts(e)
        assert _size(out) <= _size(e), (e, out)
        shape = (2, 20, 24)
        want = np.broadcast_to(E.evaluate(e, env), shape)
        np.testing.assert_array_equal(np.broadcast_to(E.evaluate(out, env), shape), want, err_msg=repr(e))
        changed += not out.same(e)
    assert changed > 20  # the trees do share conjuncts
