"""The calling convention of a linear-attention kernel, as data: its arguments in order.

Head-major, one name per tensor of the math (methods.md section 4):

    q, k           [batch, heads, q_len, head_dim]       spec.dtype
    v              [batch, heads, q_len, head_dim_v]     spec.dtype
    g              gate "scalar": [batch, heads, q_len]            float32 log gate (<= 0)
                   gate "vector": [batch, heads, q_len, feature_dim] float32 log gate (<= 0)
                   gate "fixed" (RetNet) has no tensor: log gamma_h = log(1 - 2^(-5-h)) is built in
    beta           update "delta": [batch, heads, q_len]  float32 in (0, 1)
    omega          feature_map "performer": [head_dim, num_features] float32 projection
    initial_state  [batch, heads, feature_dim, head_dim_v] float32
    z0             normalize: [batch, heads, feature_dim] float32 (the running key sum)
  outputs
    o              [batch, heads, q_len, head_dim_v]     spec.dtype
    final_state    [batch, heads, feature_dim, head_dim_v] float32
    z_final        normalize: [batch, heads, feature_dim] float32
  scratch (parallel form only; allocated by the driver)
    cum_gate       gated, not "fixed": the log gates summed over the sequence, like g
    u              update "delta": the pseudo-values [batch, heads, q_len, head_dim_v] float32

The sequence length is the size name ``q_len`` (``kv_len`` is the same length).
"""
from __future__ import annotations

from ..family import Arg
from ..spec import LinearAttention

_TOKENS = ("batch", "heads", "q_len")


def gate_shape(spec: LinearAttention) -> tuple:
    return _TOKENS + ((spec.feature_dim,) if spec.gate == "vector" else ())


def inputs(spec: LinearAttention) -> tuple:
    out = [Arg("q", _TOKENS + (spec.head_dim,), spec.dtype),
           Arg("k", _TOKENS + (spec.head_dim,), spec.dtype),
           Arg("v", _TOKENS + (spec.head_dim_v,), spec.dtype)]
    if spec.gate in ("scalar", "vector"):
        out.append(Arg("g", gate_shape(spec), "float32"))
    if spec.update == "delta":
        out.append(Arg("beta", _TOKENS, "float32"))
    if spec.feature_map == "performer":
        out.append(Arg("omega", (spec.head_dim, spec.num_features), "float32"))
    out.append(Arg("initial_state", ("batch", "heads", spec.feature_dim, spec.head_dim_v), "float32"))
    if spec.normalize:
        out.append(Arg("z0", ("batch", "heads", spec.feature_dim), "float32"))
    return tuple(out)


def outputs(spec: LinearAttention) -> tuple:
    out = [Arg("o", _TOKENS + (spec.head_dim_v,), spec.dtype, "out"),
           Arg("final_state", ("batch", "heads", spec.feature_dim, spec.head_dim_v), "float32", "out")]
    if spec.normalize:
        out.append(Arg("z_final", ("batch", "heads", spec.feature_dim), "float32", "out"))
    return tuple(out)


def scratch(spec: LinearAttention) -> tuple:
    """Buffers that pass data between the calls of the parallel form."""
    if spec.form != "parallel":
        return ()
    out = []
    if spec.gate in ("scalar", "vector"):
        out.append(Arg("cum_gate", gate_shape(spec), "float32", "scratch"))
    if spec.update == "delta":
        out.append(Arg("u", _TOKENS + (spec.head_dim_v,), "float32", "scratch"))
    return tuple(out)


def args(spec: LinearAttention) -> tuple:
    return inputs(spec) + outputs(spec) + scratch(spec)


def sizes(spec: LinearAttention, tensors) -> dict:
    """batch, heads and the length from q (numpy arrays or torch tensors alike)."""
    if "q" not in tensors:
        raise ValueError("the sizes of a linear-attention call are read from q, which is missing")
    shape = tuple(tensors["q"].shape)
    if len(shape) != 4:
        raise ValueError(f"q must be [batch, heads, q_len, head_dim], got shape {shape}")
    batch, heads, length, _ = shape
    return {"batch": batch, "heads": heads, "q_len": length, "kv_len": length}
