"""Random inputs and float64 references for linear-attention programs.

``sample`` draws what a real caller passes, plus the traps a kernel must survive: log gates
that are almost 0 (no decay) next to ones so negative that exp underflows, L2-normalised keys
and beta in (0, 1) for the delta rule, and a random initial state.  ``reference`` runs the
recurrence of ``attngen.reference.linear`` (the definition, whatever form the kernel uses) in
float64 on exactly the values the kernel sees.
"""
from __future__ import annotations

import numpy as np

from ..reference import linear as ref
from ..spec import LinearAttention
from . import signature as sig

# fractions of tokens whose log gate is drawn from the extremes
_UNDERFLOW, _NO_DECAY = 0.05, 0.05


def sample(spec: LinearAttention, sizes, rng: np.random.Generator) -> dict:
    B, H, L = sizes["batch"], spec.num_heads, sizes["q_len"]
    D, Dv, F = spec.head_dim, spec.head_dim_v, spec.feature_dim
    # mLSTM divides by q . n, n a gate-weighted sum of keys (after a wiping forget gate, about
    # one key): zero-mean q and k make it a cancellation that float32 cannot resolve to 1e-5
    # (the float64 reference can). A common mean direction, as trained q/k projections have,
    # keeps it well conditioned if it is large enough: with a shift of 1, q . k is 16 +- 7 at
    # d=16 and about one row in 150 draws came within ~1% of zero (row error 1.7e-5, its output
    # 200x the median); with 2 it is 64 +- 12, five standard deviations from zero.
    shift = 2.0 if spec.gate == "mlstm" else 0.0
    out = {"q": _round(shift + rng.standard_normal((B, H, L, D)), spec.dtype)}
    k = shift + rng.standard_normal((B, H, L, D))
    if spec.update == "delta":  # the delta rule is stable only for unit keys (methods.md 4.11)
        k /= np.linalg.norm(k, axis=-1, keepdims=True)
    out["k"] = _round(k, spec.dtype)
    out["v"] = _round(rng.standard_normal((B, H, L, Dv)), spec.dtype)
    if spec.gate in ("scalar", "vector"):
        out["g"] = log_gates(rng, _concrete(sig.gate_shape(spec), B, L))
    if spec.gate == "mlstm":  # input gates of either sign; forget gates mostly near 1, a few near 0
        out["i_pre"] = rng.normal(0.0, 2.0, (B, H, L)).astype(np.float32)
        out["f_pre"] = np.where(rng.random((B, H, L)) < 0.05, -rng.uniform(5, 30, (B, H, L)),
                                rng.normal(3.0, 1.5, (B, H, L))).astype(np.float32)
    if spec.update == "delta":
        out["beta"] = (1.0 / (1.0 + np.exp(-rng.standard_normal((B, H, L))))).astype(np.float32)
    if spec.bonus:  # RWKV-6's u: learned, of order one, either sign
        out["bonus"] = rng.standard_normal((H, spec.feature_dim)).astype(np.float32)
    if spec.feature_map == "performer":
        omega = ref.performer_omega(spec.num_features, D, seed=int(rng.integers(2 ** 31)))
        out["omega"] = np.ascontiguousarray(omega.T, dtype=np.float32)
    out["initial_state"] = rng.standard_normal((B, H, F, Dv)).astype(np.float32)
    if spec.normalize:
        # z is a running sum of positive features: keep the denominators away from 0
        out["z0"] = np.abs(rng.standard_normal((B, H, F))).astype(np.float32)
    if spec.gate == "mlstm":  # any (C, n, m) is a valid stabilised state; n along the keys' mean
        out["z0"] = np.abs(rng.standard_normal((B, H, F))).astype(np.float32)
        out["m0"] = rng.normal(0.0, 2.0, (B, H)).astype(np.float32)
    return out


def log_gates(rng: np.random.Generator, shape) -> np.ndarray:
    """logsigmoid of normal logits (mostly gates in (0.5, 1)), with a few tokens at the extremes:
    log gates in [-3e-7, -1e-13] (no decay to speak of) and in [-120, -20] (a token that wipes
    the state; exp of one, or of a few summed, underflows in float32)."""
    logits = rng.normal(1.0, 2.0, shape)
    pick = rng.random(shape)
    logits = np.where(pick < _UNDERFLOW, -rng.uniform(20.0, 120.0, shape), logits)
    logits = np.where(pick > 1.0 - _NO_DECAY, rng.uniform(15.0, 30.0, shape), logits)
    return (-np.logaddexp(0.0, -logits)).astype(np.float32)


def reference(spec: LinearAttention, inputs) -> dict:
    """float64 outputs (``o``, ``final_state``, with normalize ``z_final``) of the recurrence."""
    if spec.gate == "mlstm":
        return _mlstm_reference(spec, inputs)
    q, k = features(spec, inputs["q"], inputs), features(spec, inputs["k"], inputs)
    B, H, L = q.shape[:3]
    g = inputs.get("g")
    if spec.gate == "fixed":
        g = np.broadcast_to(np.log(ref.retnet_gammas(H))[None, :, None], (B, H, L))
    state = inputs["initial_state"]
    if spec.normalize:
        state = (state, inputs["z0"])
    o, final = ref.recurrent(q, k, inputs["v"], g=g, update=spec.update, beta=inputs.get("beta"),
                             normalize=spec.normalize, bonus=inputs.get("bonus"), scale=spec.scale,
                             initial_state=state)
    if spec.normalize:
        return {"o": o, "final_state": final[0], "z_final": final[1]}
    return {"o": o, "final_state": final}


def _mlstm_reference(spec: LinearAttention, inputs) -> dict:
    """The stabilised mLSTM recurrence with no epsilon; the reference scales k by d^(-1/2)
    itself, so k comes in rescaled to make that spec.scale."""
    k = np.asarray(inputs["k"], np.float64) * (spec.scale * spec.head_dim ** 0.5)
    state = (inputs["initial_state"], inputs["z0"], inputs["m0"])
    o, (C, n, m) = ref.mlstm_recurrent(inputs["q"], k, inputs["v"], inputs["i_pre"], inputs["f_pre"],
                                       initial_state=state, eps=0.0)
    return {"o": o, "final_state": C, "z_final": n, "m_final": m}


def features(spec: LinearAttention, x, inputs) -> np.ndarray:
    """phi(x) in float64, as the kernels compute it (see templates/linear_macros.j2).

    performer: hyperbolic positive random features (FAVOR+, Choromanski et al. Lemma 1), the
    reason ``feature_dim`` is 2 * num_features:
        x' = x d^(-1/4),  p = x' omega,  phi(x) = (2M)^(-1/2) exp(-|x'|^2 / 2) [exp(p), exp(-p)]
    so that E[phi(q) . phi(k)] = exp(q . k / sqrt(d)).  No stabiliser: the exponent is at most
    |omega_f|^2 / 2 for any x, and a key stabiliser would make the causal state depend on
    future tokens (``reference.linear.performer_features`` applies one).
    """
    if spec.feature_map != "performer":
        return ref.feature_map(x, spec.feature_map)
    x = np.asarray(x, np.float64)
    omega = np.asarray(inputs["omega"], np.float64)  # [d, M]
    x_scaled = x * x.shape[-1] ** -0.25
    p = x_scaled @ omega
    half_norm = 0.5 * np.sum(x_scaled * x_scaled, axis=-1, keepdims=True)
    return (2 * omega.shape[1]) ** -0.5 * np.concatenate([np.exp(p - half_norm), np.exp(-p - half_norm)], -1)


def _concrete(shape, batch, length) -> tuple:
    named = {"batch": batch, "q_len": length}
    return tuple(named.get(d, d) for d in shape)


def _round(x, dtype) -> np.ndarray:
    """x rounded to ``dtype`` (float16 as float16; bfloat16 values are held in float32)."""
    x = np.asarray(x, np.float32)
    if dtype == "float16":
        return x.astype(np.float16)
    if dtype == "bfloat16":
        import torch

        return torch.from_numpy(x).to(torch.bfloat16).to(torch.float32).numpy()
    return x
