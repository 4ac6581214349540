"""Form equivalence of the linear-attention references (attngen/reference/linear.py), float64 at 1e-10."""
import numpy as np
import pytest
import torch

from attngen.reference import linear

TOL = 1e-10
B, H, DK, DV = 2, 3, 8, 6


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def assert_close(actual, expected, tol=TOL):
    """Max-abs error relative to max(1, max|expected|) <= tol, all values finite."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert np.all(np.isfinite(actual)) and np.all(np.isfinite(expected))
    error = np.max(np.abs(actual - expected), initial=0.0)
    assert error <= tol * max(1.0, np.max(np.abs(expected), initial=0.0)), error


def l2_normalize(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def make_gate(rng, kind, length):
    """None, a Mamba2-style scalar log gate [B, H, T] or a GLA-style per-channel one [B, H, T, dk]."""
    if kind == "none":
        return None
    if kind == "scalar":
        dt = np.logaddexp(0.0, rng.standard_normal((B, H, length)) - 2.0)
        return -np.exp(rng.uniform(0.0, 1.5, (1, H, 1))) * dt
    g = log_sigmoid(2.0 * rng.standard_normal((B, H, length, DK))) / 4.0
    g[..., ::5, 0] = -8.0  # a few near-total decays
    return g


def make_inputs(rng, length, update):
    q, k = rng.standard_normal((B, H, length, DK)), rng.standard_normal((B, H, length, DK))
    v = rng.standard_normal((B, H, length, DV))
    if update == "delta":
        k = l2_normalize(k)
        return q, k, v, dict(update="delta", beta=1.0 / (1.0 + np.exp(-rng.standard_normal((B, H, length)))))
    return q, k, v, dict(update="additive")


def state_parts(state):
    """(S,) or (S, z): the arrays of a linear-attention state."""
    return state if isinstance(state, tuple) else (state,)


def assert_forms_agree(q, k, v, options, chunk_sizes=(16, 64)):
    o_ref, state_ref = linear.recurrent(q, k, v, **options)
    results = [linear.parallel(q, k, v, **options)]
    results += [linear.chunkwise(q, k, v, chunk_size=c, **options) for c in chunk_sizes]
    for o, state in results:
        assert_close(o, o_ref)
        for part, part_ref in zip(state_parts(state), state_parts(state_ref), strict=True):
            assert_close(part, part_ref)
    return o_ref, state_ref


@pytest.mark.parametrize("length", [1, 17, 63, 64, 65])
@pytest.mark.parametrize("update", ["additive", "delta"])
@pytest.mark.parametrize("gate", ["none", "scalar", "vector"])
def test_recurrent_chunkwise_parallel_agree(rng, gate, update, length):
    q, k, v, options = make_inputs(rng, length, update)
    options.update(g=make_gate(rng, gate, length), scale=DK ** -0.5,
                   initial_state=rng.standard_normal((B, H, DK, DV)))
    assert_forms_agree(q, k, v, options, chunk_sizes=(1, 16, 64))


@pytest.mark.parametrize("gate", ["none", "scalar", "vector"])
def test_normalised_forms_agree(rng, gate):
    q, k = (linear.feature_map(rng.standard_normal((B, H, 45, DK)), "elu1") for _ in range(2))
    v = rng.standard_normal((B, H, 45, DV))
    initial = (np.abs(rng.standard_normal((B, H, DK, DV))), np.abs(rng.standard_normal((B, H, DK))))
    options = dict(g=make_gate(rng, gate, 45), normalize=True, eps=1e-6, initial_state=initial)
    assert_forms_agree(q, k, v, options)


def test_normalised_matches_katharopoulos_quadratic_form(rng):
    q, k = (linear.feature_map(rng.standard_normal((B, H, 30, DK)), "elu1") for _ in range(2))
    v = rng.standard_normal((B, H, 30, DV))
    scores = np.tril(q @ np.swapaxes(k, -1, -2))
    o, (S, z) = linear.chunkwise(q, k, v, chunk_size=8, normalize=True)
    assert_close(o, (scores @ v) / scores.sum(-1, keepdims=True))
    assert_close(S, np.swapaxes(k, -1, -2) @ v)
    assert_close(z, k.sum(-2))


@pytest.mark.parametrize("gate", ["none", "scalar", "vector"])
def test_rwkv6_bonus_forms_agree(rng, gate):
    q, k, v, options = make_inputs(rng, 50, "additive")
    options.update(g=make_gate(rng, gate, 50), bonus=rng.standard_normal((H, DK)),
                   initial_state=rng.standard_normal((B, H, DK, DV)))
    assert_forms_agree(q, k, v, options)


def test_rwkv6_bonus_matches_definition(rng):
    """o_t = r_t (S_{t-1} + diag(u) k_t^T v_t), S_t = diag(w_t) S_{t-1} + k_t^T v_t, one head by hand."""
    q, k, v, _ = make_inputs(rng, 12, "additive")
    g, u = make_gate(rng, "vector", 12), rng.standard_normal((H, DK))
    o, _ = linear.chunkwise(q, k, v, chunk_size=5, g=g, bonus=u)
    S = np.zeros((DK, DV))
    for t in range(12):
        kv = np.outer(k[1, 2, t], v[1, 2, t])
        assert_close(o[1, 2, t], q[1, 2, t] @ (S + u[2][:, None] * kv))
        S = np.exp(g[1, 2, t])[:, None] * S + kv


def test_retnet_matches_gamma_power_matrix(rng):
    """RetNet parallel form O = ((scale Q K^T) * D) V, D_nm = gamma^(n - m) 1[n >= m] (methods.md 4.4)."""
    q, k, v, _ = make_inputs(rng, 33, "additive")
    gammas = linear.retnet_gammas(H)
    np.testing.assert_allclose(gammas, [1 - 1 / 32, 1 - 1 / 64, 1 - 1 / 128])
    steps = np.arange(33)[:, None] - np.arange(33)[None, :]
    decay = np.where(steps >= 0, gammas[:, None, None] ** np.maximum(steps, 0), 0.0)
    g = np.broadcast_to(np.log(gammas)[None, :, None], (B, H, 33))
    o, _ = linear.parallel(q, k, v, g=g, scale=DK ** -0.5)
    assert_close(o, (DK ** -0.5 * q @ np.swapaxes(k, -1, -2) * decay) @ v)


def test_delta_rule_matches_householder_product_form(rng):
    """S_t = exp(g_t) (I - beta_t k_t^T k_t) S_{t-1} + beta_t k_t^T v_t, written as matrices (4.12)."""
    q, k, v, options = make_inputs(rng, 20, "delta")
    g, S = make_gate(rng, "scalar", 20), rng.standard_normal((B, H, DK, DV))
    o, S_final = linear.chunkwise(q, k, v, chunk_size=6, g=g, initial_state=S, **options)
    beta, eye = options["beta"], np.eye(DK)
    for t in range(20):
        k_t, b_t = k[..., t, :], beta[..., t, None, None]
        S = np.exp(g[..., t, None, None]) * (eye - b_t * k_t[..., :, None] * k_t[..., None, :]) @ S \
            + b_t * k_t[..., :, None] * v[..., t, None, :]
        assert_close(o[..., t, :], np.einsum("bhk,bhkv->bhv", q[..., t, :], S))
    assert_close(S_final, S)


@pytest.mark.parametrize("update", ["additive", "delta"])
@pytest.mark.parametrize("log_gate", [-1e4, -1e-9], ids=["decay_to_zero", "decay_near_one"])
@pytest.mark.parametrize("gate", ["scalar", "vector"])
def test_extreme_gates_stay_finite_and_agree(rng, gate, log_gate, update):
    q, k, v, options = make_inputs(rng, 65, update)
    shape = (B, H, 65) if gate == "scalar" else (B, H, 65, DK)
    options.update(g=np.full(shape, log_gate), initial_state=rng.standard_normal((B, H, DK, DV)))
    o, state = assert_forms_agree(q, k, v, options)
    if log_gate == -1e4 and update == "additive":  # nothing survives a step: o_t = q_t k_t^T v_t
        assert_close(o, np.sum(q * k, -1, keepdims=True) * v)
        assert_close(state, k[..., -1, :, None] * v[..., -1, None, :])


@pytest.mark.parametrize("update", ["additive", "delta"])
@pytest.mark.parametrize("gate", ["none", "scalar", "vector"])
def test_chunkwise_prefill_then_recurrent_decode(rng, gate, update):
    q, k, v, options = make_inputs(rng, 45, update)
    options.update(g=make_gate(rng, gate, 45), scale=DK ** -0.5)
    o_ref, state_ref = linear.recurrent(q, k, v, **options)

    def window(t0, t1):
        return {name: value[:, :, t0:t1] if isinstance(value, np.ndarray) else value
                for name, value in options.items()}

    _, state = linear.chunkwise(q[:, :, :40], k[:, :, :40], v[:, :, :40], chunk_size=16, **window(0, 40))
    for t in range(40, 45):
        o_t, state = linear.recurrent(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1],
                                      initial_state=state, **window(t, t + 1))
        assert_close(o_t, o_ref[:, :, t:t + 1])
    assert_close(state, state_ref)


def test_normalised_prefill_then_decode_carries_key_sum(rng):
    q, k = (linear.feature_map(rng.standard_normal((B, H, 30, DK)), "relu") + 0.1 for _ in range(2))
    v = rng.standard_normal((B, H, 30, DV))
    o_ref, (S_ref, z_ref) = linear.recurrent(q, k, v, normalize=True)
    _, state = linear.chunkwise(q[:, :, :29], k[:, :, :29], v[:, :, :29], chunk_size=8, normalize=True)
    o_last, (S, z) = linear.recurrent(q[:, :, 29:], k[:, :, 29:], v[:, :, 29:], normalize=True,
                                      initial_state=state)
    assert_close(o_last, o_ref[:, :, 29:])
    assert_close(S, S_ref)
    assert_close(z, z_ref)


def test_feature_maps(rng):
    x = rng.standard_normal((2, 3, 5, 4))
    assert_close(linear.feature_map(x, "elu1"), torch.nn.functional.elu(torch.from_numpy(x)).numpy() + 1.0)
    assert_close(linear.feature_map(x, "relu"), np.maximum(x, 0.0))
    assert_close(linear.feature_map(x, "identity"), x)
    with pytest.raises(ValueError, match="elu1"):
        linear.feature_map(x, "softmax")


def test_performer_stabilisers_cancel_and_forms_agree(rng):
    q, k = 0.5 * rng.standard_normal((B, H, 40, DK)), 0.5 * rng.standard_normal((B, H, 40, DK))
    v = rng.standard_normal((B, H, 40, DV))
    omega = linear.performer_omega(24, DK, seed=3)
    blocks = omega[:DK] / np.linalg.norm(omega[:DK], axis=1, keepdims=True)
    assert_close(blocks @ blocks.T, np.eye(DK))
    np.testing.assert_array_equal(omega, linear.performer_omega(24, DK, seed=3))
    phi_q = linear.performer_features(q, omega, is_query=True)
    phi_k = linear.performer_features(k, omega, is_query=False)
    assert (phi_q > 0).all() and (phi_k > 0).all()
    o, _ = assert_forms_agree(phi_q, phi_k, v, dict(normalize=True))

    def unstabilised(x):
        x = x * DK ** -0.25
        return 24 ** -0.5 * np.exp(x @ omega.T - 0.5 * np.sum(x * x, -1, keepdims=True))

    o_raw, _ = linear.parallel(unstabilised(q), unstabilised(k), v, normalize=True)
    assert_close(o, o_raw)


def test_option_errors_explain_the_fix(rng):
    q, k, v, _ = make_inputs(rng, 4, "additive")
    with pytest.raises(ValueError, match="beta"):
        linear.recurrent(q, k, v, update="delta")
    with pytest.raises(ValueError, match="neither normalize nor bonus"):
        linear.recurrent(q, k, v, update="delta", beta=np.ones((B, H, 4)), normalize=True)
    with pytest.raises(ValueError, match="g of shape"):
        linear.recurrent(q, k, v, g=np.zeros((B, H, 4, 1, 1)))


def mlstm_inputs(rng, length):
    q, k = rng.standard_normal((B, H, length, DK)), rng.standard_normal((B, H, length, DK))
    v = rng.standard_normal((B, H, length, DV))
    i_pre = 3.0 * rng.standard_normal((B, H, length))
    f_pre = 3.0 + 2.0 * rng.standard_normal((B, H, length))
    return q, k, v, i_pre, f_pre


@pytest.mark.parametrize("eps", [0.0, 1e-6])
@pytest.mark.parametrize("length", [1, 17, 53, 64])
def test_mlstm_forms_agree(rng, length, eps):
    q, k, v, i_pre, f_pre = mlstm_inputs(rng, length)
    _, initial = linear.mlstm_recurrent(*mlstm_inputs(rng, 9))
    h_ref, state_ref = linear.mlstm_recurrent(q, k, v, i_pre, f_pre, initial_state=initial, eps=eps)
    results = [linear.mlstm_parallel(q, k, v, i_pre, f_pre, initial_state=initial, eps=eps)]
    results += [linear.mlstm_chunkwise(q, k, v, i_pre, f_pre, chunk_size=c, initial_state=initial, eps=eps)
                for c in (1, 16)]
    for h, state in results:
        assert_close(h, h_ref)
        for part, part_ref in zip(state, state_ref):
            assert_close(part, part_ref)


def test_mlstm_matches_unstabilised_exact_math(rng):
    """h_t = q_t C_t / max(|q_t . n_t|, 1) with C_t = f_t C_{t-1} + i_t k'_t^T v_t (eps = 0)."""
    q, k, v, i_pre, f_pre = mlstm_inputs(rng, 25)
    i_pre = np.clip(i_pre, -3.0, 3.0)
    h, (C_stab, _, m) = linear.mlstm_chunkwise(q, k, v, i_pre, f_pre, chunk_size=8)
    C, n = np.zeros((B, H, DK, DV)), np.zeros((B, H, DK))
    k_scaled = k / np.sqrt(DK)
    for t in range(25):
        f_t, i_t = 1.0 / (1.0 + np.exp(-f_pre[..., t])), np.exp(i_pre[..., t])
        C = f_t[..., None, None] * C + i_t[..., None, None] * k_scaled[..., t, :, None] * v[..., t, None, :]
        n = f_t[..., None] * n + i_t[..., None] * k_scaled[..., t, :]
        denominator = np.maximum(np.abs(np.sum(q[..., t, :] * n, -1)), 1.0)
        assert_close(h[..., t, :], np.einsum("bhk,bhkv->bhv", q[..., t, :], C) / denominator[..., None])
    assert_close(C_stab * np.exp(m)[..., None, None], C)
