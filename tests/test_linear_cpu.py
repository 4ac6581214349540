"""Linear attention on the CPU: every gallery spec, every form x gate x update, feature maps,
odd and long lengths, extreme gates, and state hand-over between calls, each against the
float64 recurrence of attngen.reference.linear.

Inputs are fresh on every run (the seed is in every failure message); outputs and scratch are
NaN before each call, so an element a kernel forgets to write cannot pass.
"""
import numpy as np
import pytest

from attngen.builder import build
from attngen.gallery import GALLERY
from attngen.linear import FAMILY, signature
from attngen.spec import LinearAttention
from attngen.tolerance import errors, passes

GALLERY_LINEAR = sorted(n for n, e in GALLERY.items() if isinstance(e.spec, LinearAttention))
FORMS = ("recurrent", "chunkwise", "parallel")
GATES_UPDATES = [(gate, "additive") for gate in (None, "fixed", "scalar", "vector")] + \
                [(gate, "delta") for gate in (None, "fixed", "scalar")]
LENGTHS = (1, 17, 63, 64, 65)  # around the chunk of 16 and its multiples


def small(**fields) -> LinearAttention:
    """Few heads, head_dim != head_dim_v (a transposed index cannot hide), chunk 16."""
    base = dict(num_heads=2, head_dim=16, head_dim_v=8, chunk_size=16, dtype="float32")
    return LinearAttention(**{**base, **fields})


def fresh_rng() -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence())


def seed_of(rng) -> int:
    return rng.bit_generator.seed_seq.entropy


def run(kernel, inputs) -> dict:
    """Outputs of one call (float64 numpy), with outputs and scratch poisoned with NaN."""
    import torch

    sizes = FAMILY.sizes(kernel.spec, inputs)
    poisoned = {a.name: torch.full(a.concrete_shape(sizes), float("nan"), dtype=getattr(torch, a.dtype))
                for a in kernel.args if a.role != "in"}
    out = kernel.run(inputs, poisoned)
    return {name: t.to(torch.float64).numpy() for name, t in out.items()}


def assert_close(spec, got: dict, want: dict, context: str) -> None:
    for name, expected in want.items():
        err = errors(got[name], expected)
        assert passes(err, spec.dtype), (f"{name} of {spec!r} ({context}): rel_rmse {err['rel_rmse']:.2e}, "
                                         f"max_rel {err['max_rel']:.2e}")


def check(spec, lengths, batch=2, edit=None) -> None:
    """Build once, then for each length: fresh inputs (optionally edited), run, compare."""
    kernel = build(spec, "cpu")
    rng = fresh_rng()
    for length in lengths:
        inputs = FAMILY.sample(spec, {"batch": batch, "q_len": length}, rng)
        if edit:
            edit(inputs)
        assert_close(spec, run(kernel, inputs), FAMILY.reference(spec, inputs),
                     f"length {length}, seed {seed_of(rng)}")


@pytest.mark.parametrize("name", GALLERY_LINEAR)
def test_gallery_spec(name):
    check(GALLERY[name].spec, lengths=(1, 17, 65))


@pytest.mark.parametrize("gate,update", GATES_UPDATES, ids=lambda x: str(x))
@pytest.mark.parametrize("form", FORMS)
def test_forms_match_reference(form, gate, update):
    check(small(form=form, gate=gate, update=update), LENGTHS)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("fields", [dict(gate="vector", bonus=True), dict(gate="scalar", bonus=True),
                                    dict(bonus=True), dict(gate="fixed", bonus=True)],
                         ids=["rwkv6", "bonus-scalar", "bonus-no-gate", "bonus-fixed"])
def test_rwkv6_bonus(form, fields):
    """RWKV-6's bonus: the query side's exclusive decay, keys strictly before the query, the
    bonus on the diagonal; around the chunk of 16 (chunkwise) and the tiles (parallel)."""
    check(small(form=form, **fields), LENGTHS)


@pytest.mark.parametrize("form", FORMS)
def test_mlstm(form):
    """The mLSTM cell: the stabiliser per token (recurrent), per row of a chunk (chunkwise) or
    per row over the whole sequence (parallel: a first pass over the key tiles)."""
    check(small(form=form, gate="mlstm"), LENGTHS)


def test_mlstm_extreme_gates():
    """Forget gates that wipe the state and input gates of +-30: the stabiliser keeps every
    exponent <= 0, so nothing overflows."""
    def edit(inputs):
        rng = np.random.default_rng(7)
        inputs["f_pre"] = rng.choice([-40.0, 40.0], inputs["f_pre"].shape).astype(np.float32)
        inputs["i_pre"] = rng.uniform(-30, 30, inputs["i_pre"].shape).astype(np.float32)
    for form in FORMS:
        check(small(form=form, gate="mlstm"), (17, 65), edit=edit)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("fields", [dict(feature_map="elu1", normalize=True, gate="scalar"),
                                    dict(feature_map="relu", gate="vector"),
                                    dict(feature_map="performer", num_features=4, normalize=True),
                                    dict(feature_map="performer", num_features=8, gate="fixed")],
                         ids=["elu1-normalize", "relu", "performer-normalize", "performer"])
def test_feature_maps(form, fields):
    check(small(form=form, **fields), (1, 17, 65))


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("gate,update", [("scalar", "delta"), ("vector", "additive"), ("fixed", "additive")])
def test_long_sequence(form, gate, update):
    """1000 tokens, float16 inputs: fp32 cumulative gates and state over 63 chunks."""
    spec = small(form=form, gate=gate, update=update, head_dim_v=16, dtype="float16")
    check(spec, (1000,), batch=1)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("gate", ["scalar", "vector", "fixed"])
def test_long_sequence_float32(form, gate):
    """2000 tokens at the float32 bound (rel-RMSE 1e-5): the log gates summed over the whole
    sequence (parallel form) reach |B| ~ 2e3, where one float32 would be off by 1e-4."""
    check(small(form=form, gate=gate), (2000,), batch=1)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("gate,update", [("scalar", "additive"), ("vector", "additive"), ("scalar", "delta")])
@pytest.mark.parametrize("log_gate", [-1e-9, -200.0], ids=["no-decay", "underflow"])
def test_extreme_gates(form, gate, update, log_gate):
    """Every gate at one extreme: exp(g) = 1 - 1e-9 (the state never fades) or exp(-200) = 0
    in float32 (each token sees only itself); neither may produce inf or NaN."""
    def saturate(inputs):
        inputs["g"] = np.full_like(inputs["g"], log_gate)

    check(small(form=form, gate=gate, update=update), (1, 40), edit=saturate)


@pytest.mark.parametrize("prefill", ["chunkwise", "parallel"])
@pytest.mark.parametrize("fields", [dict(), dict(gate="scalar", update="delta"), dict(gate="vector"),
                                    dict(gate="fixed"), dict(feature_map="elu1", normalize=True)],
                         ids=["plain", "gated-delta", "vector", "fixed", "normalize"])
def test_prefill_then_decode(prefill, fields):
    """A prefill of 37 tokens, then 3 recurrent steps from its final state, equal the
    recurrence over all 40 tokens (outputs and the final state)."""
    first = small(form=prefill, **fields)
    step = first.replace(form="recurrent")
    rng = fresh_rng()
    whole = FAMILY.sample(first, {"batch": 2, "q_len": 40}, rng)
    want = FAMILY.reference(first, whole)
    per_token = [a.name for a in signature.inputs(first) if a.shape[:3] == signature.tokens(first)]

    def tokens(t0, t1):
        part = dict(whole)
        part.update({n: whole[n][:, :, t0:t1] for n in per_token})
        return part

    part = tokens(0, 37)
    got = run(build(first, "cpu"), part)
    outputs = [got["o"]]
    decode = build(step, "cpu")
    for t in range(37, 40):
        part = tokens(t, t + 1)
        part["initial_state"] = got["final_state"].astype(np.float32)
        if first.normalize:
            part["z0"] = got["z_final"].astype(np.float32)
        got = run(decode, part)
        outputs.append(got["o"])
    got["o"] = np.concatenate(outputs, axis=2)
    assert_close(first, got, want, f"{prefill} prefill + recurrent steps, seed {seed_of(rng)}")


def test_zero_initial_state_is_no_state():
    """With initial_state = 0 the kernel computes plain causal linear attention."""
    spec = small(gate="scalar")
    rng = fresh_rng()
    inputs = FAMILY.sample(spec, {"batch": 1, "q_len": 33}, rng)
    inputs["initial_state"] = np.zeros_like(inputs["initial_state"])
    got = run(build(spec, "cpu"), inputs)
    q, k, v, g = (inputs[n].astype(np.float64) for n in ("q", "k", "v", "g"))
    b = np.cumsum(g, axis=-1)
    decay = np.exp(np.where(np.tri(33, dtype=bool), b[..., :, None] - b[..., None, :], -np.inf))
    o = ((spec.scale * q @ np.swapaxes(k, -1, -2)) * decay) @ v
    assert_close(spec, got, {"o": o}, f"seed {seed_of(rng)}")


@pytest.mark.parametrize("form", ["chunkwise", "parallel"])
def test_non_default_knobs(form):
    """Value blocks, query/key tiles and vector width change the loops, not the results."""
    spec = small(form=form, gate="vector", head_dim_v=16)
    config = {"block_v": 4, "block_q": 16, "block_k": 8, "lanes": 4}
    kernel = build(spec, "cpu", config)
    rng = fresh_rng()
    for length in (5, 40):
        inputs = FAMILY.sample(spec, {"batch": 2, "q_len": length}, rng)
        assert_close(spec, run(kernel, inputs), FAMILY.reference(spec, inputs), f"seed {seed_of(rng)}")


@pytest.mark.parametrize("config,message", [({"block_v": 3}, "block_v"), ({"lanes": 6}, "lanes"),
                                            ({"block_q": 0}, "block_q"), ({"unroll": 2}, "unknown")])
def test_invalid_knobs(config, message):
    from attngen.builder import lower

    with pytest.raises(ValueError, match=message):
        lower(small(), "cpu", config)


def test_calling_convention():
    def names(spec):
        return [(a.name, a.shape, a.dtype, a.role) for a in signature.args(spec)]

    H, D = 2, 16
    assert names(small(gate="fixed")) == [
        ("q", ("batch", H, "q_len", D), "float32", "in"), ("k", ("batch", H, "q_len", D), "float32", "in"),
        ("v", ("batch", H, "q_len", 8), "float32", "in"),
        ("initial_state", ("batch", H, D, 8), "float32", "in"),
        ("o", ("batch", H, "q_len", 8), "float32", "out"), ("final_state", ("batch", H, D, 8), "float32", "out")]
    gla = dict((n, s) for n, s, *_ in names(small(gate="vector")))
    assert gla["g"] == ("batch", H, "q_len", D)
    delta = dict((n, (s, r)) for n, s, _, r in names(small(gate="scalar", update="delta", form="parallel")))
    assert delta["g"][0] == delta["beta"][0] == ("batch", H, "q_len")
    assert delta["cum_gate"] == (("batch", H, "q_len", 2), "scratch")  # (hi, lo) pairs
    assert delta["u"] == (("batch", H, "q_len", 8), "scratch")
    performer = dict((n, s) for n, s, *_ in names(small(feature_map="performer", num_features=4, normalize=True)))
    assert performer["omega"] == (D, 4)
    assert performer["initial_state"] == ("batch", H, 8, 8)  # feature_dim = 2 * num_features
    assert performer["z0"] == performer["z_final"] == ("batch", H, 8)
