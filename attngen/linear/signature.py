"""The calling convention of ``attngen.linear`` (see its docstring), as data: the arguments of
a program in order (inputs, outputs, scratch), with ``q_len`` naming the sequence length."""
from __future__ import annotations

from ..family import Arg
from ..spec import LinearAttention


def tokens(spec: LinearAttention) -> tuple:
    """The leading dims of every per-token tensor: [batch, num_heads, q_len]."""
    return ("batch", spec.num_heads, "q_len")


def gate_shape(spec: LinearAttention) -> tuple:
    return tokens(spec) + ((spec.feature_dim,) if spec.gate == "vector" else ())


def state_shape(spec: LinearAttention) -> tuple:
    return ("batch", spec.num_heads, spec.feature_dim, spec.head_dim_v)


def has_normaliser(spec: LinearAttention) -> bool:
    """Whether a running key sum z (mLSTM's n) travels with the state."""
    return spec.normalize or spec.gate == "mlstm"


def inputs(spec: LinearAttention) -> tuple:
    out = [Arg("q", tokens(spec) + (spec.head_dim,), spec.dtype),
           Arg("k", tokens(spec) + (spec.head_dim,), spec.dtype),
           Arg("v", tokens(spec) + (spec.head_dim_v,), spec.dtype)]
    if spec.gate in ("scalar", "vector"):
        out.append(Arg("g", gate_shape(spec), "float32"))
    if spec.gate == "mlstm":
        out += [Arg("i_pre", tokens(spec), "float32"), Arg("f_pre", tokens(spec), "float32")]
    if spec.update == "delta":
        out.append(Arg("beta", tokens(spec), "float32"))
    if spec.bonus:
        out.append(Arg("bonus", (spec.num_heads, spec.feature_dim), "float32"))
    if spec.feature_map == "performer":
        out.append(Arg("omega", (spec.head_dim, spec.num_features), "float32"))
    out.append(Arg("initial_state", state_shape(spec), "float32"))
    if has_normaliser(spec):
        out.append(Arg("z0", ("batch", spec.num_heads, spec.feature_dim), "float32"))
    if spec.gate == "mlstm":
        out.append(Arg("m0", ("batch", spec.num_heads), "float32"))
    return tuple(out)


def outputs(spec: LinearAttention) -> tuple:
    out = [Arg("o", tokens(spec) + (spec.head_dim_v,), spec.dtype, "out"),
           Arg("final_state", state_shape(spec), "float32", "out")]
    if has_normaliser(spec):
        out.append(Arg("z_final", ("batch", spec.num_heads, spec.feature_dim), "float32", "out"))
    if spec.gate == "mlstm":
        out.append(Arg("m_final", ("batch", spec.num_heads), "float32", "out"))
    return tuple(out)


def scratch(spec: LinearAttention) -> tuple:
    """Buffers that pass data between the calls of the parallel form."""
    if spec.form != "parallel":
        return ()
    out = []
    if spec.gate in ("scalar", "vector", "mlstm"):  # mlstm: of log f = logsigmoid(f_pre)
        out.append(Arg("cum_gate", gate_shape(spec) + (2,), "float32", "scratch"))  # (hi, lo)
    if spec.update == "delta":
        out.append(Arg("u", tokens(spec) + (spec.head_dim_v,), "float32", "scratch"))
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
    batch, heads, length, _ = (int(n) for n in shape)
    return {"batch": batch, "heads": heads, "q_len": length, "kv_len": length}
