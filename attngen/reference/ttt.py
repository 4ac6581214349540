"""TTT-Linear (methods.md 5.1): test-time training of a linear inner model, primal and dual forms.

Per head the state is W [d, d], b [d]; the inner model is f(x) = x + LN(x W + b) with a per-head
LayerNorm (ln_weight, ln_bias [H, d], eps 1e-6) and the inner loss on token j is
l_j = 1/2 || LN(k_j W + b) - (v_j - k_j) ||^2. Within a mini-batch every gradient is taken at the
state the mini-batch started from, and token i of the mini-batch sees the state
    W_i = W_0 - theta_i sum_{j<=i} eta_j k_j^T dz_j,   b_i = b_0 - theta_i sum_{j<=i} eta_j dz_j,
    out_i = q_i + LN(q_i W_i + b_i)
(the official ttt-lm-pytorch learning rates E_ij = theta_i eta_j). The last state of a mini-batch
starts the next one.

Shapes: q, k, v [B, H, T, d]; w0 [B, H, d, d] and b0 [B, H, d] (or broadcastable, e.g. [H, d, d]);
eta [B, H, T] per-token learning rates (base_lr * sigmoid(x w_lr + b_lr) / d);
theta [b] per-position scales (max(0, 1 / (i + 1) + learned_i)), whose length b is the
mini-batch size; a shorter last mini-batch uses its first entries. Both forms return
(out [B, H, T, d], w [B, H, d, d], b [B, H, d]).
"""
import numpy as np

from ._util import chunk_bounds, f64, swap

LN_EPS = 1e-6


def layer_norm(z, weight, bias, eps=LN_EPS):
    """LayerNorm over the last axis: weight * (z - mean) / sqrt(var + eps) + bias."""
    centred = z - z.mean(-1, keepdims=True)
    return weight * centred / np.sqrt(np.mean(centred * centred, -1, keepdims=True) + eps) + bias


def layer_norm_l2_grad(z, target, weight, bias, eps=LN_EPS):
    """Gradient wrt z of 1/2 || LN(z) - target ||^2 (fused LayerNorm + L2 backward, closed form).

    With x_hat = (z - mean) / sigma and g = (LN(z) - target) * weight:
    dz = (d g - sum(g) - x_hat sum(g x_hat)) / (d sigma), sums over the last axis of size d.
    """
    dim = z.shape[-1]
    centred = z - z.mean(-1, keepdims=True)
    sigma = np.sqrt(np.mean(centred * centred, -1, keepdims=True) + eps)
    x_hat = centred / sigma
    g = (weight * x_hat + bias - target) * weight
    return (dim * g - g.sum(-1, keepdims=True) - x_hat * np.sum(g * x_hat, -1, keepdims=True)) / (dim * sigma)


def ttt_linear_primal(q, k, v, *, w0, b0, eta, theta, ln_weight, ln_bias):
    """Primal (token-by-token) TTT-Linear, also the decode form. See the module docstring."""
    q, k, v, W, b, eta, theta, ln_weight, ln_bias = _inputs(q, k, v, w0, b0, eta, theta, ln_weight, ln_bias)
    out = np.empty_like(q)
    for t0, t1 in chunk_bounds(q.shape[2], theta.size):
        grad_W, grad_b = np.zeros_like(W), np.zeros_like(b)
        for i in range(t0, t1):
            k_i, q_i = k[..., i:i + 1, :], q[..., i:i + 1, :]
            dz = layer_norm_l2_grad(k_i @ W + b, v[..., i:i + 1, :] - k_i, ln_weight, ln_bias)
            grad_W = grad_W + eta[..., i, None, None] * swap(k_i) @ dz
            grad_b = grad_b + eta[..., i, None, None] * dz
            W_i, b_i = W - theta[i - t0] * grad_W, b - theta[i - t0] * grad_b
            out[..., i:i + 1, :] = q_i + layer_norm(q_i @ W_i + b_i, ln_weight, ln_bias)
        W, b = W_i, b_i
    return out, W, b[..., 0, :]


def ttt_linear_dual(q, k, v, *, w0, b0, eta, theta, ln_weight, ln_bias):
    """Dual (mini-batch, matmul-only) TTT-Linear (methods.md 5.1). Per mini-batch of n tokens:

    G = dz at (W, b) for all keys [n, d]; E_ij = theta_i eta_j 1[j <= i];
    Z = Q W - (E * tril(Q K^T)) G + b - E G;  out = Q + LN(Z);
    W <- W - (E_last^T * K)^T G;  b <- b - E_last G  (E_last: the last row of E).
    """
    q, k, v, W, b, eta, theta, ln_weight, ln_bias = _inputs(q, k, v, w0, b0, eta, theta, ln_weight, ln_bias)
    out = np.empty_like(q)
    for t0, t1 in chunk_bounds(q.shape[2], theta.size):
        Q, K = q[..., t0:t1, :], k[..., t0:t1, :]
        G = layer_norm_l2_grad(K @ W + b, v[..., t0:t1, :] - K, ln_weight, ln_bias)
        E = np.tril(theta[:t1 - t0, None] * eta[..., None, t0:t1])
        Z = Q @ W - (E * np.tril(Q @ swap(K))) @ G + b - E @ G
        out[..., t0:t1, :] = Q + layer_norm(Z, ln_weight, ln_bias)
        E_last = E[..., -1:, :]
        W = W - swap(swap(E_last) * K) @ G
        b = b - E_last @ G
    return out, W, b[..., 0, :]


def _inputs(q, k, v, w0, b0, eta, theta, ln_weight, ln_bias):
    """Float64 operands; b and the LayerNorm parameters get a token axis: [B, H, 1, d], [1, H, 1, d]."""
    q, k, v, eta, theta = f64(q), f64(k), f64(v), f64(eta), f64(theta)
    batch, heads, _, dim = q.shape
    W = np.broadcast_to(f64(w0), (batch, heads, dim, dim))
    b = np.broadcast_to(f64(b0), (batch, heads, dim))[..., None, :]
    return q, k, v, W, b, eta, theta, f64(ln_weight)[:, None, :], f64(ln_bias)[:, None, :]
