"""The fused recurrent linear-attention kernel (templates/linear_recurrent_fused.j2) and the
in-place decode step (``AttentionOp.step``).

Without a GPU: which specs take the kernel, its knob checks, nvcc + ptxas on its source (no
spills, no stack), and ``step`` on the CPU kernels (in place, token by token, against the
float64 recurrence).  On a GPU (marked ``gpu``): every spec of ``SPECS`` against the float64
recurrence at lengths 1, 63, 64, 65, 1000, with gates near 1 and near 0 for the gated ones;
decode steps in place; and a chunkwise (tensor-core) prefill continued by decode steps, which
must match the recurrence over the whole sequence.  Where only TVM's runtime is installed, fill
the build cache first (``prebuild``, or tests/prebuild_gpu.py).
"""
import re
import shutil
import subprocess

import numpy as np
import pytest

from attngen import tolerance
from attngen.builder import build, cuda_source, ensure_cached, lower
from attngen.check import check_length
from attngen.gallery import GALLERY
from attngen.linear import data, fused
from attngen.spec import LinearAttention
from attngen.targets import get
from test_linear_tc import GATE_REGIMES, check_gate_regime  # the same regimes, the same check

TARGET = "cuda-sm90a"
NVCC = shutil.which("nvcc")
L = LinearAttention
SPECS = {
    "retnet_recurrent": GALLERY["retnet_recurrent"].spec,
    "linear_bf16": L(num_heads=4, head_dim=128, form="recurrent", dtype="bfloat16"),
    "mamba2": L(num_heads=4, head_dim=128, gate="scalar", form="recurrent"),
    "gla": L(num_heads=4, head_dim=128, gate="vector", form="recurrent", dtype="bfloat16"),
    "deltanet": L(num_heads=4, head_dim=128, update="delta", form="recurrent"),
    "gated_deltanet": L(num_heads=4, head_dim=128, gate="scalar", update="delta", form="recurrent",
                        dtype="bfloat16"),
    "elu1_normalized": L(num_heads=3, head_dim=64, feature_map="elu1", normalize=True, gate="fixed",
                         form="recurrent"),
    "relu_d64_dv48": L(num_heads=2, head_dim=64, head_dim_v=48, feature_map="relu", form="recurrent"),
    "gla_d256": L(num_heads=2, head_dim=256, gate="vector", form="recurrent"),
    "rwkv6": GALLERY["rwkv6_recurrent"].spec,
    "mlstm": GALLERY["mlstm_recurrent"].spec,
    "mlstm_bf16_d64": L(num_heads=2, head_dim=64, gate="mlstm", form="recurrent", dtype="bfloat16"),
    "rwkv6_bf16_d128": L(num_heads=2, head_dim=128, gate="vector", bonus=True, form="recurrent",
                         dtype="bfloat16"),
}
LENGTHS = (1, 63, 64, 65, 1000)


def prebuild(target: str = TARGET) -> None:
    """Fill the build cache for a GPU host that has only TVM's runtime."""
    for spec in SPECS.values():
        ensure_cached(spec, target)
    for spec in CONTINUITY.values():
        ensure_cached(spec, target)
        ensure_cached(spec.replace(form="recurrent"), target)


# ----------------------------------------------------------------------------- CPU


def test_recurrent_specs_take_the_fused_kernel():
    t = get(TARGET)
    for name, spec in SPECS.items():
        assert fused.supported(spec, t), (name, fused.unsupported_reason(spec, t))
        assert [c.func for c in lower(spec, t).calls] == [fused.KERNEL], name


def test_other_specs_do_not():
    t = get(TARGET)
    performer = L(num_heads=2, head_dim=64, feature_map="performer", num_features=32, form="recurrent")
    assert "performer" in fused.unsupported_reason(performer, t)
    assert fused.KERNEL not in [c.func for c in lower(performer, t).calls]
    assert fused.unsupported_reason(GALLERY["mamba2"].spec, t) == "the chunkwise form"
    assert fused.unsupported_reason(SPECS["mamba2"], get("cpu")) == "not a CUDA target"
    assert "multiple of 8" in fused.unsupported_reason(L(head_dim=36, form="recurrent"), t)
    # a config of the block-level SIMT schedule's knobs asks for that kernel
    low = lower(SPECS["mamba2"], t, {"block_v": 32, "block_q": 32, "block_k": 32, "threads": 128})
    assert [c.func for c in low.calls] == ["linear_recurrent"]


@pytest.mark.parametrize("config, message", [
    ({"lanes_per_column": 3, "columns_per_lane": 1, "warps": 4}, "lanes_per_column must be one of"),
    ({"lanes_per_column": 2, "columns_per_lane": 1, "warps": 4}, "registers"),
    ({"lanes_per_column": 8, "columns_per_lane": 4, "warps": 4}, "registers"),
    ({"lanes_per_column": 8, "columns_per_lane": 3, "warps": 4}, "columns_per_lane must be one of"),
    ({"lanes_per_column": 8, "columns_per_lane": 1, "warps": 16}, "warps must be one of"),
    ({"lanes_per_column": 8, "columns_per_lane": 1, "warps": 8, "unroll": 2}, "unknown knob"),
])
def test_bad_knobs_raise_value_error(config, message):
    with pytest.raises(ValueError, match=message):
        lower(SPECS["gla"], TARGET, config)


def test_columns_must_divide_head_dim_v():
    with pytest.raises(ValueError, match="do not divide head_dim_v"):
        lower(SPECS["relu_d64_dv48"], TARGET, {"lanes_per_column": 4, "columns_per_lane": 1, "warps": 8})


@pytest.mark.skipif(NVCC is None, reason="needs nvcc")
@pytest.mark.parametrize("name", ["gla", "gated_deltanet", "elu1_normalized", "rwkv6_bf16_d128", "mlstm"])
def test_cuda_source_keeps_the_state_in_registers(name, tmp_path):
    """No spills and no stack frame: a register array indexed at run time would live in local
    memory, which is what the template's two statically named token buffers avoid."""
    path = tmp_path / "kernel.cu"
    path.write_text(cuda_source(SPECS[name], TARGET))
    done = subprocess.run([NVCC, "-cubin", "-arch=sm_90a", "-Xptxas", "-v", "-o",
                           str(tmp_path / "kernel.cubin"), str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "0 bytes spill stores" in done.stderr and "0 bytes stack frame" in done.stderr, done.stderr
    assert int(re.search(r"Used (\d+) registers", done.stderr).group(1)) <= 128


def _torch_inputs(spec, inputs, device):
    import torch

    from attngen.kernel import _torch_dtype
    from attngen.linear import signature

    dtypes = {a.name: _torch_dtype(a.dtype) for a in signature.inputs(spec)}
    return {n: torch.from_numpy(np.ascontiguousarray(x)).to(device=device, dtype=dtypes[n])
            for n, x in inputs.items() if n in dtypes}


def _token(inputs, t):
    """The per-token inputs of token ``t`` (a length-1 sequence), shared ones as they are."""
    per_token = ("q", "k", "v", "g", "beta", "i_pre", "f_pre")
    return {n: (x[:, :, t:t + 1] if n in per_token else x) for n, x in inputs.items()}


def check_steps(op, n_tokens: int, rng, device) -> dict:
    """``n_tokens`` decode steps in place against the float64 recurrence over those tokens:
    errors of o (all tokens) and of the state (and z) left in the input tensors."""
    import torch

    spec = op.spec
    inputs = data.sample(spec, {"batch": 2, "heads": spec.num_heads, "q_len": n_tokens}, rng)
    ref = data.reference(spec, inputs)
    state = _torch_inputs(spec, {n: inputs[n] for n in ("initial_state", "z0", "m0") if n in inputs}, device)
    outs = []
    for t in range(n_tokens):
        feed = _torch_inputs(spec, _token(inputs, t), device)
        feed.update(state)  # the same tensors every step: updated in place
        outs.append(op.step(**feed))
    errors = {"o": tolerance.errors(torch.cat(outs, dim=2).double().cpu().numpy(), ref["o"]),
              "final_state": tolerance.errors(state["initial_state"].double().cpu().numpy(),
                                              ref["final_state"])}
    for final, initial in (("z_final", "z0"), ("m_final", "m0")):
        if final in ref:
            errors[final] = tolerance.errors(state[initial].double().cpu().numpy(), ref[final])
    return errors


def test_step_updates_the_state_in_place_on_the_cpu():
    import attngen

    spec = L(num_heads=2, head_dim=16, gate="scalar", update="delta", form="recurrent", dtype="float32")
    errors = check_steps(attngen.compile(spec, "cpu"), 5, np.random.default_rng(), "cpu")
    assert all(tolerance.passes(e, spec.dtype) for e in errors.values()), errors


def test_step_with_the_rwkv6_bonus_on_the_cpu():
    import attngen

    spec = L(num_heads=2, head_dim=16, gate="vector", bonus=True, form="recurrent", dtype="float32")
    errors = check_steps(attngen.compile(spec, "cpu"), 4, np.random.default_rng(), "cpu")
    assert all(tolerance.passes(e, spec.dtype) for e in errors.values()), errors


def test_step_carries_the_mlstm_stabiliser_on_the_cpu():
    import attngen

    spec = L(num_heads=2, head_dim=16, gate="mlstm", form="recurrent", dtype="float32")
    errors = check_steps(attngen.compile(spec, "cpu"), 6, np.random.default_rng(), "cpu")
    assert set(errors) == {"o", "final_state", "z_final", "m_final"}
    assert all(tolerance.passes(e, spec.dtype) for e in errors.values()), errors


def test_step_is_for_the_recurrent_form():
    import attngen

    op = attngen.compile(L(num_heads=2, head_dim=16, chunk_size=16, dtype="float32"), "cpu")
    with pytest.raises(TypeError, match="recurrent"):
        op.step()


# ----------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(SPECS))
def test_spec_on_gpu(name):
    kernel = build(SPECS[name], TARGET)
    assert [c.func for c in kernel.calls] == [fused.KERNEL]
    rng = np.random.default_rng(np.random.SeedSequence())
    seed = rng.bit_generator.seed_seq.entropy
    for length in LENGTHS:
        r = check_length(kernel, length, batch=2, rng=rng)
        assert r.passed, (f"length {length}, seed {seed}", r.errors)
    if SPECS[name].gate in ("scalar", "vector"):
        for regime in GATE_REGIMES:
            errors = check_gate_regime(kernel, 65, regime, rng)  # (error, passed) per output
            assert all(ok for _, ok in errors.values()), (regime, seed, errors)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["gla", "gated_deltanet", "elu1_normalized", "rwkv6", "mlstm"])
def test_decode_steps_in_place_on_gpu(name):
    import attngen

    op = attngen.compile(SPECS[name], TARGET)
    errors = check_steps(op, 9, np.random.default_rng(), "cuda")
    assert all(tolerance.passes(e, SPECS[name].dtype) for e in errors.values()), errors


# chunkwise prefill on the tensor-core kernel, then decode steps on the fused one
CONTINUITY = {
    "mamba2": L(num_heads=4, head_dim=128, gate="scalar", dtype="bfloat16"),
    "retnet": L(num_heads=4, head_dim=64, gate="fixed"),
}


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(CONTINUITY))
def test_prefill_then_decode_on_gpu(name):
    import torch

    import attngen

    spec = CONTINUITY[name]
    prefill, decode = attngen.compile(spec, TARGET), attngen.compile(spec.replace(form="recurrent"), TARGET)
    rng = np.random.default_rng()
    n_prefill, n_decode = 130, 5
    inputs = data.sample(spec, {"batch": 2, "heads": spec.num_heads, "q_len": n_prefill + n_decode}, rng)
    ref = data.reference(spec, inputs)
    head = {n: (x[:, :, :n_prefill] if n in ("q", "k", "v", "g") else x) for n, x in inputs.items()}
    o_prefill, state = prefill(**_torch_inputs(spec, head, "cuda"))
    outs = [o_prefill]
    for t in range(n_prefill, n_prefill + n_decode):
        feed = _torch_inputs(spec, _token(inputs, t), "cuda")
        feed["initial_state"] = state
        outs.append(decode.step(**feed))
    o = torch.cat(outs, dim=2).double().cpu().numpy()
    errors = {"o": tolerance.errors(o, ref["o"]),
              "final_state": tolerance.errors(state.double().cpu().numpy(), ref["final_state"])}
    assert all(tolerance.passes(e, spec.dtype) for e in errors.values()), errors


def test_the_linear_decode_example_runs_on_the_cpu():
    """examples/linear_decode.py (chunkwise prefill, then steps in place) stays runnable."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "examples" / "linear_decode.py"
    module_spec = importlib.util.spec_from_file_location("linear_decode_example", path)
    example = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(example)
    errors = example.main(device="cpu", heads=2, head_dim=16, prefill=37, steps=3)
    assert all(tolerance.passes(e, "float32") for e in errors.values()), errors
