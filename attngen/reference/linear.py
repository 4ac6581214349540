"""The linear attention family (methods.md section 4) in recurrent, chunkwise and parallel forms.

Row-vector convention: per head, q_t, k_t are [dk] rows, v_t a [dv] row, the state S is [dk, dv]
and o_t = scale * q_t S_t. Shapes: q, k [B, H, T, dk], v [B, H, T, dv], state [B, H, dk, dv].

One recurrence covers the family (F_t = decay by exp(g_t) along the key axis):
    additive:  S_t = F_t(S_{t-1}) + k_t^T v_t
    delta:     S_t = F_t(S_{t-1}) + k_t^T u_t,   u_t = beta_t (v_t - k_t F_t(S_{t-1}))
Options, keyword-only and identical for `recurrent`, `chunkwise` and `parallel`:
  g        log forget gate (<= 0): None (no decay; linear transformer, DeltaNet), [B, H, T] one
           scalar per head and token (RetNet: log gamma_h broadcast over t, see `retnet_gammas`;
           Mamba2/SSD: dt * A), or [B, H, T, dk] one per key channel (GLA, RWKV-6, HGRN2).
  update   "additive" or "delta" (DeltaNet; with g, Gated DeltaNet). "delta" needs beta [B, H, T].
  normalize  linear transformer normaliser (4.1): o_t = q'_t S_t / (q'_t . z_t + eps) with
           q' = scale q and the key-sum state z_t = F_t(z_{t-1}) + k_t [B, H, dk]. The state is
           then the pair (S, z), both as initial_state and as the returned final state. Additive only.
  bonus    u [H, dk], RWKV-6 (4.9): o_t = scale (q_t S_{t-1} + (q_t . (u * k_t)) v_t); the current
           token reaches the output only through u. Additive only.
  scale    multiplies q. Default 1.0: linear attention has no softmax scale to imply; GLA, RetNet
           and (Gated) DeltaNet use dk ** -0.5, RWKV, HGRN2 and Mamba2 use 1.
  initial_state  [B, H, dk, dv] (or (S, z) with normalize); zero by default.
  eps      normaliser epsilon (normalize only).
Each form returns (o [B, H, T, dv], final_state).

Feature maps are applied by the caller: `feature_map(x, kind)` or `performer_features`.
mLSTM (4.10) has its own stabilised normaliser and lives in `mlstm_*`.
"""
from functools import partial

import numpy as np

from ._util import chunk_bounds, f64, swap, unit_lower_inverse


def feature_map(x, kind):
    """Elementwise feature map phi for q and k: "identity", "elu1" (elu(x) + 1) or "relu"."""
    x = f64(x)
    if kind == "identity":
        return x
    if kind == "elu1":
        return np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0.0)))
    if kind == "relu":
        return np.maximum(x, 0.0)
    raise ValueError(f"Expected kind 'identity', 'elu1' or 'relu', got {kind!r}.")


def performer_omega(num_features, dim, *, seed):
    """FAVOR+ projection W [num_features, dim] (methods.md 4.2), drawn from default_rng(seed).

    Stacked d x d orthogonal blocks (QR of Gaussian matrices), row i rescaled to the norm of a
    fresh N(0, I_d) vector.
    """
    rng = np.random.default_rng(seed)
    blocks = [np.linalg.qr(rng.standard_normal((dim, dim)))[0].T for _ in range(-(-num_features // dim))]
    norms = np.linalg.norm(rng.standard_normal((num_features, dim)), axis=1)
    return np.concatenate(blocks)[:num_features] * norms[:, None]


def performer_features(x, omega, *, is_query, eps=0.0):
    """FAVOR+ positive random features phi(x) [B, H, T, m] of x [B, H, T, d] (methods.md 4.2).

    x' = x d^{-1/4}; phi(x) = m^{-1/2} (exp(omega x' - |x'|^2 / 2 - c) + eps) with stabiliser c the
    row max for queries and the max over all tokens and features of a head for keys. With eps = 0
    the stabilisers cancel in the normalised ratio.
    """
    x, omega = f64(x), f64(omega)
    x_scaled = x * x.shape[-1] ** -0.25
    projection = x_scaled @ omega.T
    stabiliser = projection.max(axis=(-1,) if is_query else (-2, -1), keepdims=True)
    half_norm = 0.5 * np.sum(x_scaled * x_scaled, axis=-1, keepdims=True)
    return omega.shape[0] ** -0.5 * (np.exp(projection - half_norm - stabiliser) + eps)


def retnet_gammas(num_heads):
    """RetNet per-head decay gamma_h = 1 - 2^(-5 - h), h = 0..H-1 (log gate g = log gamma_h)."""
    return 1.0 - 2.0 ** (-5.0 - np.arange(num_heads))


def recurrent(q, k, v, *, g=None, update="additive", beta=None, normalize=False, bonus=None, scale=1.0,
              initial_state=None, eps=0.0):
    """Token-by-token recurrence (also the decode step). Returns (o, final_state)."""
    return _evaluate(_recurrent_core, q, k, v, g, update, beta, normalize, bonus, scale, initial_state, eps)


def chunkwise(q, k, v, *, chunk_size, g=None, update="additive", beta=None, normalize=False, bonus=None,
              scale=1.0, initial_state=None, eps=0.0):
    """Chunkwise form (methods.md 4.0, 4.9, 4.11, 4.12): intra-chunk masked matrix + carried state.

    Per chunk with b the in-chunk inclusive cumsum of g (per key channel) and S the entering state:
        A_ij = sum_c q_ic k_jc exp(b_ic - b_jc) 1[j <= i]       (exponent masked before exp)
        U    = V (additive), or the delta rule's pseudo-values
               U = (I + L)^{-1} diag(beta) (V - (K * exp(b)) S),
               L_ij = beta_i sum_c k_ic k_jc exp(b_ic - b_jc) 1[j < i]  (forward substitution)
        O    = (Q * exp(b)) S + A U
        S   <- exp(b_last) * S + (K * exp(b_last - b))^T U
    With a bonus, the query side uses the exclusive cumsum b - g, A is strictly lower and
    O gains rowsum(Q * u * K) * V. Returns (o, final_state).
    """
    core = partial(_chunkwise_core, chunk_size=chunk_size, solve=_forward_substitution)
    return _evaluate(core, q, k, v, g, update, beta, normalize, bonus, scale, initial_state, eps)


def parallel(q, k, v, *, g=None, update="additive", beta=None, normalize=False, bonus=None, scale=1.0,
             initial_state=None, eps=0.0):
    """Parallel (masked quadratic) form: the chunk equations with one chunk spanning all T tokens.

    O = (Q * exp(B)) S_0 + A U with B the cumsum over the whole sequence; for the delta rule the
    T x T unit lower-triangular system is solved with a dense solver (no cheaper masked form exists).
    Returns (o, final_state).
    """
    return _evaluate(_parallel_core, q, k, v, g, update, beta, normalize, bonus, scale, initial_state, eps)


def mlstm_recurrent(q, k, v, i_pre, f_pre, *, initial_state=None, eps=0.0):
    """Stabilised mLSTM recurrence (methods.md 4.10), xLSTM's `recurrent_step_stabilized_simple`.

    q, k [B, H, T, d], v [B, H, T, dv]; input / forget gate pre-activations i_pre, f_pre [B, H, T]
    (i_t = exp(i_pre), log f_t = logsigmoid(f_pre)); keys are scaled by d^{-1/2}. State (C, n, m):
    C [B, H, d, dv], n [B, H, d], m [B, H], zero by default (m_0 = 0):
        m_t = max(log f_t + m_{t-1}, i_pre_t)
        C_t = exp(log f_t + m_{t-1} - m_t) C_{t-1} + exp(i_pre_t - m_t) k_t^T v_t   (n_t likewise)
        h_t = q_t C_t / (max(|q_t . n_t|, exp(-m_t)) + eps)
    Returns (h [B, H, T, dv], (C, n, m)).
    """
    q, k, v, i_pre, log_f, (C, n, m) = _mlstm_inputs(q, k, v, i_pre, f_pre, initial_state)
    h = np.empty(q.shape[:3] + (v.shape[-1],))
    for t in range(q.shape[2]):
        m_new = np.maximum(log_f[..., t] + m, i_pre[..., t])
        forget = np.exp(log_f[..., t] + m - m_new)
        write = np.exp(i_pre[..., t] - m_new)
        C = forget[..., None, None] * C + write[..., None, None] * (k[..., t, :, None] * v[..., t, None, :])
        n = forget[..., None] * n + write[..., None] * k[..., t, :]
        numerator = np.einsum("bhk,bhkv->bhv", q[..., t, :], C)
        denominator = np.maximum(np.abs(np.sum(q[..., t, :] * n, -1)), np.exp(-m_new)) + eps
        h[..., t, :] = numerator / denominator[..., None]
        m = m_new
    return h, (C, n, m)


def mlstm_chunkwise(q, k, v, i_pre, f_pre, *, chunk_size, initial_state=None, eps=0.0):
    """Chunkwise mLSTM (methods.md 4.10) carrying the stabilised (C, n, m) between chunks.

    Per chunk with b the in-chunk cumsum of log f: row i weighs the carried state by
    exp(b_i + m_prev) and key j <= i by exp(b_i - b_j + i_pre_j); m_i is the max of these log
    weights (equal to the recurrent m_i), so every exponent is <= 0. Shapes as `mlstm_recurrent`.
    """
    q, k, v, i_pre, log_f, state = _mlstm_inputs(q, k, v, i_pre, f_pre, initial_state)
    h = np.empty(q.shape[:3] + (v.shape[-1],))
    for t0, t1 in chunk_bounds(q.shape[2], chunk_size):
        h[..., t0:t1, :], state = _mlstm_chunk(
            q[..., t0:t1, :], k[..., t0:t1, :], v[..., t0:t1, :], i_pre[..., t0:t1], log_f[..., t0:t1],
            state, eps)
    return h, state


def mlstm_parallel(q, k, v, i_pre, f_pre, *, initial_state=None, eps=0.0):
    """Parallel mLSTM: the row-max stabilised T x T form, i.e. one chunk spanning the sequence.

    The initial state enters as one more column of log weight F_i + m_0, so the row max equals the
    recurrent stabiliser m_i (xLSTM's `parallel_stabilized_simple` omits that column; the two differ
    only when eps != 0). Shapes as `mlstm_recurrent`.
    """
    q, k, v, i_pre, log_f, state = _mlstm_inputs(q, k, v, i_pre, f_pre, initial_state)
    return _mlstm_chunk(q, k, v, i_pre, log_f, state, eps)


def _evaluate(core, q, k, v, g, update, beta, normalize, bonus, scale, initial_state, eps):
    """Validate the options, fold the normaliser into an extra value column, run `core`."""
    q, k, v = f64(q), f64(k), f64(v)
    _check_options(q, k, v, update, beta, normalize, bonus)
    gate = _channel_gate(g, k.shape)
    beta = None if update == "additive" else f64(beta)
    bonus = None if bonus is None else f64(bonus)[None, :, None, :]
    state = _initial_state(initial_state, normalize, k, v)
    if normalize:
        v = np.concatenate([v, np.ones(v.shape[:-1] + (1,))], axis=-1)
    o, state = core(scale * q, k, v, gate, beta, bonus, state)
    if normalize:
        return o[..., :-1] / (o[..., -1:] + eps), (state[..., :-1], state[..., -1])
    return o, state


def _check_options(q, k, v, update, beta, normalize, bonus):
    if q.shape != k.shape or q.shape[:3] != v.shape[:3]:
        raise ValueError(f"Expected q, k [B, H, T, dk] and v [B, H, T, dv], "
                         f"got {q.shape}, {k.shape}, {v.shape}.")
    if update not in ("additive", "delta"):
        raise ValueError(f"Expected update 'additive' or 'delta', got {update!r}.")
    if (update == "delta") != (beta is not None):
        raise ValueError(f"Expected beta [B, H, T] exactly when update='delta', got update={update!r} and "
                         f"beta={'None' if beta is None else 'an array'}.")
    if update == "delta" and (normalize or bonus is not None):
        raise ValueError("The delta rule takes neither normalize nor bonus; use update='additive' for those.")
    if normalize and bonus is not None:
        raise ValueError("Expected at most one of normalize and bonus, got both.")


def _initial_state(initial_state, normalize, k, v):
    """The state as one array [B, H, dk, dv]; with normalize, z rides along as an extra last column."""
    if initial_state is None:
        return np.zeros(k.shape[:2] + (k.shape[-1], v.shape[-1] + int(normalize)))
    if normalize:
        S, z = initial_state
        return np.concatenate([f64(S), f64(z)[..., None]], axis=-1)
    return f64(initial_state)


def _channel_gate(g, key_shape):
    """The log gate per key channel [B, H, T, dk]: zeros for None, broadcast for a scalar gate."""
    if g is None:
        return np.zeros(key_shape)
    g = f64(g)
    if g.shape == key_shape[:3]:
        g = g[..., None]
    elif g.shape != key_shape:
        raise ValueError(f"Expected g of shape {key_shape[:3]} (scalar) or {key_shape} (per channel), "
                         f"got {g.shape}.")
    return np.broadcast_to(g, key_shape)


def _recurrent_core(q, k, v, g, beta, bonus, S):
    o = np.empty(q.shape[:3] + (v.shape[-1],))
    for t in range(q.shape[2]):
        q_t, k_t, v_t = q[..., t, :], k[..., t, :], v[..., t, :]
        if bonus is not None:
            bonus_weight = np.sum(q_t * bonus[..., 0, :] * k_t, -1, keepdims=True)
            o[..., t, :] = np.einsum("bhk,bhkv->bhv", q_t, S) + bonus_weight * v_t
        S = np.exp(g[..., t, :, None]) * S
        u_t = v_t if beta is None else beta[..., t, None] * (v_t - np.einsum("bhk,bhkv->bhv", k_t, S))
        S = S + k_t[..., :, None] * u_t[..., None, :]
        if bonus is None:
            o[..., t, :] = np.einsum("bhk,bhkv->bhv", q_t, S)
    return o, S


def _parallel_core(q, k, v, g, beta, bonus, S):
    return _chunkwise_core(q, k, v, g, beta, bonus, S, chunk_size=max(q.shape[2], 1), solve=np.linalg.solve)


def _chunkwise_core(q, k, v, g, beta, bonus, S, *, chunk_size, solve):
    o = np.empty(q.shape[:3] + (v.shape[-1],))
    for t0, t1 in chunk_bounds(q.shape[2], chunk_size):
        chunk_beta = None if beta is None else beta[..., t0:t1]
        o[..., t0:t1, :], S = _chunk(q[..., t0:t1, :], k[..., t0:t1, :], v[..., t0:t1, :], g[..., t0:t1, :],
                                     chunk_beta, bonus, S, solve)
    return o, S


def _chunk(Q, K, V, G, beta, bonus, S, solve):
    """One chunk of `chunkwise` (see its docstring): returns (O, S_new)."""
    b = np.cumsum(G, axis=-2)
    b_query = b if bonus is None else b - G
    A = _decayed_products(Q, K, b_query, b, diagonal=0 if bonus is None else -1)
    if beta is None:
        U = V
    else:
        L = beta[..., :, None] * _decayed_products(K, K, b, b, diagonal=-1)
        U = solve(np.eye(K.shape[-2]) + L, beta[..., None] * (V - (K * np.exp(b)) @ S))
    O = (Q * np.exp(b_query)) @ S + A @ U
    if bonus is not None:
        O = O + np.sum(Q * bonus * K, -1, keepdims=True) * V
    b_last = b[..., -1:, :]
    return O, np.exp(swap(b_last)) * S + swap(K * np.exp(b_last - b)) @ U


def _decayed_products(x, y, b_x, b_y, diagonal):
    """[..., n, n]: sum_c x_ic y_jc exp(b_x,ic - b_y,jc) for j <= i + diagonal, else 0.

    The exponent is set to -inf outside the band before exp, so only differences <= 0 are
    exponentiated (no overflow for any gate strength).
    """
    n = x.shape[-2]
    band = np.tri(n, k=diagonal, dtype=bool)[:, :, None]
    exponent = np.where(band, b_x[..., :, None, :] - b_y[..., None, :, :], -np.inf)
    return np.einsum("...ic,...jc,...ijc->...ij", x, y, np.exp(exponent))


def _forward_substitution(unit_lower, rhs):
    """Solve (I + L) U = rhs for strictly lower L by forward substitution (fla's solve_tril)."""
    return unit_lower_inverse(unit_lower - np.eye(unit_lower.shape[-1])) @ rhs


def _mlstm_inputs(q, k, v, i_pre, f_pre, initial_state):
    """Float64 operands, keys scaled by d^{-1/2}, log f = logsigmoid(f_pre) and the (C, n, m) state."""
    q, k, v, i_pre = f64(q), f64(k), f64(v), f64(i_pre)
    log_f = -np.logaddexp(0.0, -f64(f_pre))
    if initial_state is None:
        state = (np.zeros(k.shape[:2] + (k.shape[-1], v.shape[-1])), np.zeros(k.shape[:2] + k.shape[-1:]),
                 np.zeros(k.shape[:2]))
    else:
        state = tuple(map(f64, initial_state))
    return q, k * k.shape[-1] ** -0.5, v, i_pre, log_f, state


def _mlstm_chunk(Q, K, V, i_pre, log_f, state, eps):
    """One chunk of `mlstm_chunkwise`: returns (h, (C, n, m)) at the chunk end."""
    C, n, m = state
    b = np.cumsum(log_f, axis=-1)
    n_tokens = b.shape[-1]
    log_intra = b[..., :, None] - b[..., None, :] + i_pre[..., None, :]
    log_intra = np.where(np.tri(n_tokens, dtype=bool), log_intra, -np.inf)
    log_inter = b + m[..., None]
    m_row = np.maximum(log_inter, log_intra.max(-1))
    inter = np.exp(log_inter - m_row)
    weights = (Q @ swap(K)) * np.exp(log_intra - m_row[..., None])
    numerator = inter[..., None] * (Q @ C) + weights @ V
    denominator = inter * np.einsum("bhik,bhk->bhi", Q, n) + weights.sum(-1)
    h = numerator / (np.maximum(np.abs(denominator), np.exp(-m_row)) + eps)[..., None]
    log_key = b[..., -1:] - b + i_pre
    m_new = np.maximum(b[..., -1] + m, log_key.max(-1))
    carried = np.exp(b[..., -1] + m - m_new)
    key_weight = np.exp(log_key - m_new[..., None])[..., None]
    C = carried[..., None, None] * C + swap(K * key_weight) @ V
    n = carried[..., None] * n + np.sum(K * key_weight, axis=-2)
    return h, (C, n, m_new)
