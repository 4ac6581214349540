"""Multi-head latent attention, DeepSeek-V2 (methods.md 2.3): naive and weight-absorbed forms.

Shapes (per layer):
  q_nope [B, H, Tq, d_n]   no-RoPE query part, c^Q W^UQ_h
  q_rope [B, H, Tq, d_R]   decoupled RoPE query part (already rotated)
  c_kv   [B, Tk, r_kv]     latent KV cache c^KV (after its RMSNorm)
  k_rope [B, Tk, d_R]      decoupled RoPE key (already rotated), shared by all heads
  w_uk   [H, r_kv, d_n]    up-projection of keys:   k^C_{t,h} = c_kv_t W^UK_h
  w_uv   [H, r_kv, d_v]    up-projection of values: v_{t,h}   = c_kv_t W^UV_h
Default scale (d_n + d_R)^{-1/2}; mask as `softmax.attention` ([B, H, Tq, Tk], bottom-right causal
via `softmax.causal_mask`). Both forms return o [B, H, Tq, d_v].
"""
import numpy as np

from ._util import f64
from .softmax import attention


def rope(x, positions, *, base=10000.0):
    """Rotary embedding on consecutive pairs (x0, x1), (x2, x3), ... (DeepSeek's convention).

    x [..., T, d] with d even, positions [T]; pair i turns by the angle positions * base^(-2i/d).
    """
    x = f64(x)
    angle = np.asarray(positions, np.float64)[:, None] * base ** (-np.arange(0, x.shape[-1], 2) / x.shape[-1])
    cos, sin = np.cos(angle), np.sin(angle)
    even, odd = x[..., 0::2], x[..., 1::2]
    return np.stack([even * cos - odd * sin, even * sin + odd * cos], axis=-1).reshape(x.shape)


def mla_naive(q_nope, q_rope, c_kv, k_rope, w_uk, w_uv, *, scale=None, mask=None):
    """MLA as written: up-project the latent into per-head keys and values, then MHA.

    k_{j,h} = [c_kv_j W^UK_h, k_rope_j], v_{j,h} = c_kv_j W^UV_h, q_{t,h} = [q_nope, q_rope];
    o = softmax(scale q k^T + M) v. Returns o [B, H, Tq, d_v].
    """
    q_nope, q_rope, c_kv, k_rope, w_uk, w_uv = map(f64, (q_nope, q_rope, c_kv, k_rope, w_uk, w_uv))
    heads, tokens = q_nope.shape[1], c_kv.shape[1]
    k_nope = np.einsum("btr,hrn->bhtn", c_kv, w_uk)
    k_rope_heads = np.broadcast_to(k_rope[:, None], (k_rope.shape[0], heads, tokens, k_rope.shape[-1]))
    q = np.concatenate([q_nope, q_rope], axis=-1)
    k = np.concatenate([k_nope, k_rope_heads], axis=-1)
    v = np.einsum("btr,hrv->bhtv", c_kv, w_uv)
    o, _ = attention(q, k, v, scale=_scale(scale, q_nope, q_rope), mask=mask)
    return o


def mla_absorbed(q_nope, q_rope, c_kv, k_rope, w_uk, w_uv, *, scale=None, mask=None):
    """MLA with W^UK absorbed into the query and W^UV applied after attention (decode form).

    q~_{t,h} = q_nope W^UK_h^T [r_kv]; latent attention (`mla_latent_attention`, one shared KV head
    of width r_kv + d_R, value = c_kv) gives o~ [B, H, Tq, r_kv]; o = o~ W^UV_h.
    Same arguments and result as `mla_naive`.
    """
    q_nope, q_rope, w_uk, w_uv = map(f64, (q_nope, q_rope, w_uk, w_uv))
    q_latent = np.einsum("bhtn,hrn->bhtr", q_nope, w_uk)
    o_latent, _ = mla_latent_attention(q_latent, q_rope, c_kv, k_rope, scale=_scale(scale, q_nope, q_rope),
                                       mask=mask)
    return np.einsum("bhtr,hrv->bhtv", o_latent, w_uv)


def mla_latent_attention(q_latent, q_rope, c_kv, k_rope, *, scale, mask=None):
    """The kernel-facing core of absorbed MLA: MQA with key [c_kv ; k_rope] and value c_kv.

    q_latent [B, H, Tq, r_kv], q_rope [B, H, Tq, d_R], c_kv [B, Tk, r_kv], k_rope [B, Tk, d_R];
    scale is required (it comes from d_n + d_R, which these shapes do not show).
    Returns (o_latent [B, H, Tq, r_kv], lse [B, H, Tq]).
    """
    q = np.concatenate([f64(q_latent), f64(q_rope)], axis=-1)
    k = np.concatenate([f64(c_kv), f64(k_rope)], axis=-1)[:, None]
    return attention(q, k, f64(c_kv)[:, None], scale=scale, mask=mask)


def absorb_weights(w_uq, w_uk, w_uv, w_o):
    """Fold the up-projections into their neighbours for the absorbed form.

    w_uq [H, r_q, d_n] (q_nope = c^Q w_uq[h]), w_uk [H, r_kv, d_n], w_uv [H, r_kv, d_v],
    w_o [H, d_v, D] (the head-h rows of W^O). Returns
      w_q_latent [H, r_q, r_kv] = w_uq[h] w_uk[h]^T   (q~ = c^Q w_q_latent[h])
      w_o_latent [H, r_kv, D]   = w_uv[h] w_o[h]      (u = sum_h o~_h w_o_latent[h]).
    """
    w_uq, w_uk, w_uv, w_o = map(f64, (w_uq, w_uk, w_uv, w_o))
    return np.einsum("hqn,hrn->hqr", w_uq, w_uk), np.einsum("hrv,hvd->hrd", w_uv, w_o)


def _scale(scale, q_nope, q_rope):
    return (q_nope.shape[-1] + q_rope.shape[-1]) ** -0.5 if scale is None else scale
