"""Quantised attention simulated in float64 (methods.md 1.4 SageAttention, 1.5 SageAttention2).

Psi quantises Q and K before the QK^T product and Theta quantises P~ and V before the PV product.
Number formats are simulated by value: an int8/int4 code times its group scale, or a float rounded
to the nearest value of the narrow format (round half to even, saturating, with subnormals).
Float32 accumulators of the kernels are kept in float64; the formats and the order of the online
softmax are what the simulation reproduces.

Token groups (one scale each) follow the SageAttention kernels:
  per block   token t -> t // block                           (Sage v1: 128 Q / 64 K tokens)
  per warp    Q: per block with block = warp_q                 (Sage2 per-warp, warp_q = 32)
  per thread  Q: t // warp_q * 8 + t mod 8                     (8 groups per warp tile)
              K: t // block_k * 4 + (t mod 8) // 2             (4 groups per K block)
"""
import numpy as np

from ._util import chunk_bounds, f64, online_softmax_result, swap
from .softmax import causal_mask, repeat_kv

LOG2E = 1.0 / np.log(2.0)
S_FP8_OFFSET = 8.807  # Sage2 CUDA: P~ = exp2(S - m + 8.807) <= 448, a static FP8 scale (8.807 ~ log2 448)
FP8_E4M3_MAX = 448.0
FP8_E5M2_MAX = 57344.0
_INT_MAX = {"int8": 127, "int4": 7}
_MMA_K = 16  # keys per FP16 MMA step (m16n8k16): the FP16 accumulator is rounded after each


def round_half_away(x):
    """Round to the nearest integer, halves away from zero: sign(x) floor(|x| + 1/2)."""
    x = f64(x)
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def fp8_e4m3(x):
    """Nearest FP8 E4M3 (fn) value: 3 mantissa bits, exponent bias 7, min normal 2^-6, subnormal
    step 2^-9, ties to even, saturating at +-448 (no inf). Returns float64."""
    return _round_to_float(x, mantissa_bits=3, min_exponent=-6, max_value=FP8_E4M3_MAX)


def fp8_e5m2(x):
    """Nearest FP8 E5M2 value: 2 mantissa bits, exponent bias 15, min normal 2^-14, subnormal step
    2^-16, ties to even, saturating at +-57344. Returns float64."""
    return _round_to_float(x, mantissa_bits=2, min_exponent=-14, max_value=FP8_E5M2_MAX)


def fp16(x):
    """Nearest IEEE half-precision value (ties to even), as float64."""
    return f64(x).astype(np.float16).astype(np.float64)


def block_groups(length, block):
    """Group of each token for per-block (and per-warp) scales: t // block."""
    return np.arange(length) // block


def thread_groups_q(length, warp_q):
    """Sage2 per-thread Q groups: 8 per warp tile of warp_q tokens, token t -> t mod 8."""
    token = np.arange(length)
    return token // warp_q * 8 + token % 8


def thread_groups_k(length, block_k):
    """Sage2 per-thread K groups: 4 per block of block_k tokens, token t -> (t mod 8) // 2."""
    token = np.arange(length)
    return token // block_k * 4 + token % 8 // 2


def quantize_groups(x, groups, *, qmax=127):
    """Symmetric integer quantisation of x [..., T, d] with one scale per token group.

    groups int [T] maps token t to its group. scale_g = max |x| over the group / qmax and
    codes = round_half_away(x / scale) in [-qmax, qmax] (an all-zero group has scale 0, codes 0).
    Returns (codes int8 [..., T, d], scales float64 [..., G]); see `dequantize`.
    """
    x, groups = f64(x), np.asarray(groups)
    magnitude = np.abs(x).max(axis=-1)
    scales = np.stack([magnitude[..., groups == g].max(axis=-1, initial=0.0)
                       for g in range(groups.max(initial=-1) + 1)], axis=-1) / qmax
    token_scale = scales[..., groups, None]
    codes = round_half_away(x / np.where(token_scale > 0, token_scale, 1.0))
    return codes.astype(np.int8), scales


def dequantize(codes, scales, groups):
    """codes [..., T, d] * scales[..., groups[t]] -> float64 [..., T, d]."""
    return codes * f64(scales)[..., np.asarray(groups), None]


def quantize_int8_per_block(x, block, *, smooth=False):
    """Sage v1 Psi: INT8 with one scale per block of `block` tokens, optionally mean-smoothed.

    x [..., T, d]. With smooth=True the per-channel mean over all T tokens, mean [..., 1, d], is
    subtracted first (K smoothing). Returns (codes int8 [..., T, d], scales [..., ceil(T / block)],
    mean or None).
    """
    x = f64(x)
    mean = x.mean(axis=-2, keepdims=True) if smooth else None
    codes, scales = quantize_groups(x - mean if smooth else x, block_groups(x.shape[-2], block))
    return codes, scales, mean


def quantized_attention(q, k, v, *, qk="int8", pv="fp8_e4m3", block_q=128, block_k=64, smooth_k=True,
                        mask=None, scale=None, granularity="block", warp_q=32):
    """Softmax attention with SageAttention-style quantisation, simulated (methods.md 1.4, 1.5).

    q [B, Hq, Tq, dk], k [B, Hkv, Tk, dk], v [B, Hkv, Tk, dv]; mask as `softmax.attention`.
    Psi, per (b, h):
      K <- K - mean_t K when smooth_k (exact for softmax; lse is corrected by scale * q . k_mean).
      Q <- Q * scale * log2(e), the kernels' folding of the softmax scale for exp2.
      qk = "int8" | "int4": symmetric codes (qmax 127 | 7) per token group; the integer product
        times the two group scales is formed as the product of the dequantised operands.
        "fp8_e4m3": per-group scale max|x| / 448 and FP8 E4M3 values. None: exact.
      granularity = "block" (Q per block_q, K per block_k tokens), "warp" (Q per warp_q tokens,
        K per block_k) or "thread" (Sage2 per-thread groups; see the module docstring).
    Online softmax over K tiles of block_k keys in base 2; l sums the unrounded exp2 values.
    Theta:
      pv = "fp16": P~ = exp2(S - m) and V in FP16; each tile's P~ V accumulates in FP16, rounded
        after every 16 keys (one m16n8k16 MMA), then adds into the wide accumulator (Sage v1).
      "fp8_e4m3": P~ = fp8(exp2(S - m + 8.807)) (static scale ~448), V = fp8(V / dV) with per-channel
        dV = max_t |V| / 448; tile products exact (the MMA's ~FP22 accumulation is not modelled);
        O = A dV / l, and l carries the same offset, so it cancels (Sage2).
      None: exact.
    Masked scores are excluded (the kernels' -1e6 fill gives the same result wherever a row has a
    visible key); a row with none gives o = 0, lse = -inf.
    Returns (o [B, Hq, Tq, dv], lse [B, Hq, Tq]) with lse in natural log.
    """
    q, k, v = f64(q), f64(k), f64(v)
    heads, q_len, kv_len = q.shape[1], q.shape[2], k.shape[2]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    k_mean = k.mean(axis=-2, keepdims=True) if smooth_k else np.zeros_like(k[..., :1, :])
    q_groups, k_groups = _groups(granularity, q_len, kv_len, block_q, block_k, warp_q)
    q_hat = _quantize_operand(q * (scale * LOG2E), q_groups, qk)
    k_hat = repeat_kv(_quantize_operand(k - k_mean, k_groups, qk), heads)
    s = q_hat @ swap(k_hat)
    if mask is not None:
        s = np.where(mask, s, -np.inf)
    o, lse = _online_softmax_base2(s, repeat_kv(v, heads), block_k, pv)
    return o, lse + scale * (q @ swap(repeat_kv(k_mean, heads)))[..., 0]


def sage1_attention(q, k, v, *, causal, scale=None):
    """SageAttention v1 (Triton path): INT8 per-block Q (128) / K (64) with K smoothing, FP16 PV.

    Shapes as `quantized_attention`; returns (o, lse).
    """
    mask = causal_mask(q.shape[2], k.shape[2]) if causal else None
    return quantized_attention(q, k, v, qk="int8", pv="fp16", block_q=128, block_k=64, smooth_k=True,
                               mask=mask, scale=scale, granularity="block")


def sage2_attention(q, k, v, *, causal, scale=None, qk="int8"):
    """SageAttention2: per-thread INT8 (or the paper's INT4, qk="int4") Q/K with K smoothing,
    FP8 E4M3 P~ and V (block_q 128, warp_q 32, block_k 64). Shapes as `quantized_attention`;
    returns (o, lse)."""
    mask = causal_mask(q.shape[2], k.shape[2]) if causal else None
    return quantized_attention(q, k, v, qk=qk, pv="fp8_e4m3", block_q=128, block_k=64, smooth_k=True,
                               mask=mask, scale=scale, granularity="thread", warp_q=32)


def _round_to_float(x, *, mantissa_bits, min_exponent, max_value):
    """Round half to even onto a binary float grid with `mantissa_bits` fraction bits, normals from
    2^min_exponent (a fixed subnormal step below), saturating at +-max_value."""
    x = f64(x)
    magnitude = np.minimum(np.abs(x), max_value)
    _, exponent = np.frexp(magnitude)  # magnitude = f 2^exponent with f in [0.5, 1)
    step = np.ldexp(1.0, np.maximum(exponent - 1, min_exponent) - mantissa_bits)
    return np.sign(x) * np.minimum(np.round(magnitude / step) * step, max_value)


def _groups(granularity, q_len, kv_len, block_q, block_k, warp_q):
    """Token groups of Q and K for a quantisation granularity."""
    if granularity == "block":
        return block_groups(q_len, block_q), block_groups(kv_len, block_k)
    if granularity == "warp":
        return block_groups(q_len, warp_q), block_groups(kv_len, block_k)
    if granularity == "thread":
        return thread_groups_q(q_len, warp_q), thread_groups_k(kv_len, block_k)
    raise ValueError(f"Expected granularity 'block', 'warp' or 'thread', got {granularity!r}.")


def _quantize_operand(x, groups, fmt):
    """Psi: x [..., T, d] replaced by its dequantised value in format `fmt` (per token group)."""
    if fmt is None:
        return x
    if fmt in _INT_MAX:
        codes, scales = quantize_groups(x, groups, qmax=_INT_MAX[fmt])
        return dequantize(codes, scales, groups)
    if fmt == "fp8_e4m3":
        _, scales = quantize_groups(x, groups, qmax=FP8_E4M3_MAX)
        token_scale = scales[..., groups, None]
        return fp8_e4m3(x / np.where(token_scale > 0, token_scale, 1.0)) * token_scale
    raise ValueError(f"Expected qk 'int8', 'int4', 'fp8_e4m3' or None, got {fmt!r}.")


def _online_softmax_base2(s, v, block_k, pv):
    """Online softmax over K tiles of base-2 scores s [B, H, Tq, Tk] with the PV product in `pv`.

    Returns (o, lse) with lse = (m - offset + log2 l) ln 2 in natural log.
    """
    if pv not in (None, "fp16", "fp8_e4m3"):
        raise ValueError(f"Expected pv 'fp16', 'fp8_e4m3' or None, got {pv!r}.")
    offset = S_FP8_OFFSET if pv == "fp8_e4m3" else 0.0
    v_scale = np.abs(v).max(axis=-2, keepdims=True) / FP8_E4M3_MAX if pv == "fp8_e4m3" else 1.0
    v_hat = _theta_v(v, v_scale, pv)
    m = np.full(s.shape[:3], -np.inf)
    row_sum, acc = np.zeros(s.shape[:3]), np.zeros(s.shape[:3] + v.shape[-1:])
    for k0, k1 in chunk_bounds(s.shape[-1], block_k):
        m_new = np.maximum(m, s[..., k0:k1].max(-1))
        m_ref = np.where(np.isfinite(m_new), m_new, 0.0)
        rescale = np.exp2(m - m_ref)
        p = np.exp2(s[..., k0:k1] - m_ref[..., None] + offset)
        row_sum = rescale * row_sum + p.sum(-1)
        acc = rescale[..., None] * acc + _theta_pv(p, v_hat[..., k0:k1, :], pv)
        m = m_new
    m = np.where(np.isfinite(m), m, 0.0)
    return online_softmax_result(acc * v_scale, row_sum, (m - offset) / LOG2E)


def _theta_v(v, v_scale, pv):
    """Theta(V): FP16 values, or FP8 E4M3 codes of V / dV (per channel), or V itself."""
    if pv == "fp16":
        return fp16(v)
    if pv == "fp8_e4m3":
        return fp8_e4m3(v / np.where(v_scale > 0, v_scale, 1.0))
    return v


def _theta_pv(p, v_tile, pv):
    """One K tile's P~ V [B, H, Tq, dv] with P~ in the Theta format."""
    if pv == "fp16":
        p, acc = fp16(p), np.zeros(p.shape[:3] + v_tile.shape[-1:])
        for j0, j1 in chunk_bounds(p.shape[-1], _MMA_K):
            acc = fp16(acc + p[..., j0:j1] @ v_tile[..., j0:j1, :])
        return acc
    if pv == "fp8_e4m3":
        return fp8_e4m3(p) @ v_tile
    return p @ v_tile
