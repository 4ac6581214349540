"""The buffers of a softmax-attention program: names, symbolic shapes, dtypes, roles.

One table serves three readers: the driver (``Arg``s it allocates and checks), the templates
(``T.match_buffer`` declarations, through :func:`tir_params`) and ``sizes`` (which size each
input dimension reveals).  Shapes are head-major and use the size names of
``attngen.family.SIZE_NAMES`` plus the extras below; head counts and head dims are ints, fixed
by the spec.

Extra sizes: ``num_pages`` / ``max_pages`` (paged KV pool and page-table width),
``q_blocks`` / ``k_blocks`` (quantisation groups along the sequence, ``ceil(len / block)``),
and a runtime tensor's derived dims under their own spelling (``kv_len/64``: ``ceil(kv_len /
64)``), all filled in by :func:`complete`.
"""
from __future__ import annotations

from ..family import Arg
from ..spec import Attention

# size name -> the TIR variable (or expression of them) that stands for it in the kernels
_TIR_SIZE = {"batch": "B", "q_len": "LQ", "kv_len": "LK", "num_pages": "NP", "max_pages": "MP",
             "total_q": "TQ", "total_k": "TK", "batch+1": "NB"}


def q_len_of(spec: Attention):
    """``q_len`` is a compile-time int for decoding (``Decode.q_len``), else symbolic."""
    return spec.phase.q_len if spec.is_decode else "q_len"


def has_kv_lens(spec: Attention) -> bool:
    """Per-sequence KV lengths are an input for every cache: decode and paged layouts."""
    return spec.is_decode or spec.is_paged


def inputs(spec: Attention) -> tuple:
    """The program's inputs, in call order."""
    H, Hkv, D, Dv = spec.num_heads, spec.num_kv_heads, spec.head_dim, spec.head_dim_v
    L = q_len_of(spec)
    if spec.is_paged:
        P = spec.kv_layout.page_size
        k_shape, v_shape = ("num_pages", Hkv, P, D), ("num_pages", Hkv, P, Dv)
    else:
        k_shape, v_shape = _seq(spec, "kv_len", Hkv, D, "total_k"), _seq(spec, "kv_len", Hkv, Dv, "total_k")
    args = [Arg("q", _seq(spec, L, H, D, "total_q"), spec.dtype), Arg("k", k_shape, spec.dtype)]
    if not spec.latent_kv:
        args.append(Arg("v", v_shape, spec.dtype))
    if spec.layout == "thd":
        args += [Arg("cu_seqlens_q", ("batch+1",), "int32"), Arg("cu_seqlens_k", ("batch+1",), "int32")]
    if has_kv_lens(spec):
        args.append(Arg("kv_lens", ("batch",), "int32"))
    if spec.is_paged:
        args.append(Arg("page_table", ("batch", "max_pages"), "int32"))
    for t in spec.runtime_tensors:
        args.append(Arg(t.name, tuple(_tensor_dim(d, spec) for d in t.dims), t.dtype))
    if spec.sinks:
        args.append(Arg("sinks", (H,), "float32"))
    return tuple(args)


def outputs(spec: Attention) -> tuple:
    H, Dv, L = spec.num_heads, spec.head_dim_v, q_len_of(spec)
    lse = (H, "total_q") if spec.layout == "thd" else ("batch", H, L)
    return (Arg("o", _seq(spec, L, H, Dv, "total_q"), spec.dtype, "out"),
            Arg("lse", lse, "float32", "out"))


def _seq(spec: Attention, length, heads: int, dim: int, total: str) -> tuple:
    """The shape of q, k, v or o in the spec's layout."""
    if spec.layout == "bshd":
        return ("batch", length, heads, dim)
    if spec.layout == "thd":
        return (total, heads, dim)
    return ("batch", heads, length, dim)


def split_scratch(spec: Attention) -> tuple:
    """FlashDecoding partials, laid out as ``attngen.reference.softmax.split_kv`` returns them."""
    H, Dv, L, S = spec.num_heads, spec.head_dim_v, q_len_of(spec), spec.phase.split_kv
    return (Arg("o_parts", ("batch", H, L, S, Dv), "float32", "scratch"),
            Arg("lse_parts", ("batch", H, L, S), "float32", "scratch"))


def quant_scratch(spec: Attention) -> tuple:
    """Sage's INT8 operands and their per-block scales, the key mean and the lse correction."""
    H, Hkv, D, L = spec.num_heads, spec.num_kv_heads, spec.head_dim, q_len_of(spec)
    return (Arg("k_int8", ("batch", Hkv, "kv_len", D), "int8", "scratch"),
            Arg("k_scale", ("batch", Hkv, "k_blocks"), "float32", "scratch"),
            Arg("k_mean", ("batch", Hkv, D), "float32", "scratch"),
            Arg("q_int8", ("batch", H, L, D), "int8", "scratch"),
            Arg("q_scale", ("batch", H, "q_blocks"), "float32", "scratch"),
            Arg("lse_shift", ("batch", H, L), "float32", "scratch"))


def program_args(spec: Attention) -> tuple:
    args = inputs(spec) + outputs(spec)
    if spec.is_decode and spec.phase.split_kv > 1:
        args += split_scratch(spec)
    if spec.quant is not None:
        args += quant_scratch(spec)
    return args


def sizes(spec: Attention, arrays) -> dict:
    """Concrete sizes from input arrays (numpy or torch: only ``.shape`` is read)."""
    q, k = arrays["q"], arrays["k"]
    if spec.layout == "thd":
        return {"batch": int(arrays["cu_seqlens_q"].shape[0]) - 1, "heads": int(q.shape[1]),
                "total_q": int(q.shape[0]), "total_k": int(k.shape[0])}
    if spec.layout == "bshd":
        return complete(spec, {"batch": int(q.shape[0]), "heads": int(q.shape[2]),
                               "q_len": int(q.shape[1]), "kv_len": int(k.shape[1])})
    out = {"batch": int(q.shape[0]), "heads": int(q.shape[1]), "q_len": int(q.shape[2])}
    if spec.is_paged:
        table = arrays["page_table"]
        out["num_pages"] = int(k.shape[0])
        out["max_pages"] = int(table.shape[1])
        out["kv_len"] = out["max_pages"] * spec.kv_layout.page_size  # the longest a sequence can be
    else:
        out["kv_len"] = int(k.shape[2])
    return complete(spec, out)


def complete(spec: Attention, sizes) -> dict:
    """``sizes`` plus the derived ones the arguments mention (``q_blocks``, ``kv_len/64``...)."""
    out = dict(sizes)
    for a in program_args(spec):
        for d in a.shape:
            if isinstance(d, str) and "/" in d:
                name, _, div = d.partition("/")
                out[d] = -(-out[name] // int(div))
    if spec.quant is not None:
        out["q_blocks"] = -(-out["q_len"] // spec.quant.block_q)
        out["k_blocks"] = -(-out["kv_len"] // spec.quant.block_k)
    return out


def tir_params(args, spec: Attention) -> list:
    """``[(handle, buffer, dims, dtype)]`` for a kernel's ``T.match_buffer`` lines; ``dims``
    are TVMScript texts."""
    return [(f"{a.name}_handle", buffer_name(a.name), [_tir_dim(d, spec) for d in a.shape], a.dtype)
            for a in args]


def buffer_name(arg_name: str) -> str:
    """The TIR buffer of an argument: upper case for ours, ``rt_`` + name for runtime tensors
    (so a user's tensor name can never shadow a kernel variable)."""
    ours = {"q", "k", "v", "o", "lse", "kv_lens", "page_table", "sinks", "o_parts", "lse_parts",
            "k_int8", "k_scale", "k_mean", "q_int8", "q_scale", "lse_shift", "tile_state",
            "tile_list", "tile_count", "tile_seq", "cu_seqlens_q", "cu_seqlens_k", "split_done"}
    return arg_name.upper() if arg_name in ours else f"rt_{arg_name}"


def size_vars(args) -> list:
    """The symbolic TIR sizes the arguments mention, in first-use order."""
    seen = []
    for a in args:
        for d in a.shape:
            if isinstance(d, str) and d in _TIR_SIZE and _TIR_SIZE[d] not in seen:
                seen.append(_TIR_SIZE[d])
    return seen


def _tensor_dim(d, spec: Attention):
    """A runtime tensor's dim as an Arg dim: the spec's ints for ``heads`` (and for ``q_len``
    when decoding); ``kv_len/64`` stays a size name of its own, which :func:`sizes` fills."""
    if d == "heads":
        return spec.num_heads
    if d == "q_len" and spec.is_decode:
        return spec.phase.q_len
    if isinstance(d, str) and "/" in d:
        name, _, div = d.partition("/")
        if name == "heads" or (name == "q_len" and spec.is_decode):
            n = spec.num_heads if name == "heads" else spec.phase.q_len
            return -(-n // int(div))
    return d


def _tir_dim(d, spec: Attention) -> str:
    if isinstance(d, int):
        return str(d)
    if d == "batch" and spec.layout == "thd":  # packed: the offsets say how many sequences
        return "(NB - 1)"
    if d not in _TIR_SIZE and "+" in d:
        return " + ".join(f"({_tir_dim(t, spec)})" for t in d.split("+"))
    if d.isdigit():
        return d
    if d == "heads":
        return str(spec.num_heads)
    if d == "q_len" and spec.is_decode:
        return str(spec.phase.q_len)
    if d in _TIR_SIZE:
        return _TIR_SIZE[d]
    if d == "q_blocks":
        return f"({_tir_dim(q_len_of(spec), spec)} + {spec.quant.block_q - 1}) // {spec.quant.block_q}"
    if d == "k_blocks":
        return f"(LK + {spec.quant.block_k - 1}) // {spec.quant.block_k}"
    name, _, div = d.partition("/")
    if div:  # ceil(size / div), as attngen.expr.Tensor.shape computes it
        return f"({_tir_dim(name, spec)} + {int(div) - 1}) // {div}"
    raise ValueError(f"unknown size {d!r}")
