"""The tensor-core chunkwise linear-attention kernels (templates/linear_chunk_tc.j2; GLA's vector
gate: templates/linear_chunk_gla_tc.j2).

Without a GPU: which specs take it, its knob checks, and nvcc + ptxas on its CUDA source (no
spills).  On a GPU (marked ``gpu``): every spec of ``SPECS`` against the float64 recurrence at
lengths around the chunk (1, 63, 64, 65), 1000 and 4096, with the family's mixed gates and with
every gate near 1 (no decay) or near 0 (the state is wiped each token: exp underflows), and for
the vector gate also half the key channels near 0 and half near 1; the final state is checked too.  Where only TVM's runtime is installed, fill the build cache first
(``prebuild``, or tests/prebuild_gpu.py).
"""
import re
import shutil
import subprocess

import numpy as np
import pytest

from attngen import tolerance
from attngen.builder import build, cuda_source, ensure_cached, lower
from attngen.check import check_length, poisoned
from attngen.gallery import GALLERY
from attngen.linear import tensorcore
from attngen.spec import LinearAttention
from attngen.targets import get

TARGET = "cuda-sm90a"
NVCC = shutil.which("nvcc")
L = LinearAttention
# the gallery's specs that take the kernel, and the other shapes and dtypes it serves
SPECS = {
    **{n: GALLERY[n].spec for n in ("linear_attn", "retnet", "mamba2")},
    "mamba2_bf16": L(num_heads=4, head_dim=128, gate="scalar", dtype="bfloat16"),
    "retnet_bf16_d64": L(num_heads=6, head_dim=64, gate="fixed", dtype="bfloat16"),
    "linear_bf16_dv256": L(num_heads=2, head_dim=64, head_dim_v=256, dtype="bfloat16"),
    "mamba2_dv48": L(num_heads=2, head_dim=128, head_dim_v=48, gate="scalar"),
    # gate "vector" (GLA, templates/linear_chunk_gla_tc.j2): 8 warps (value_block 128) and 4 (64)
    "gla": GALLERY["gla"].spec,
    "gla_bf16": L(num_heads=4, head_dim=128, gate="vector", dtype="bfloat16"),
    "gla_dv64": L(num_heads=2, head_dim=128, head_dim_v=64, gate="vector"),
    "gla_bf16_dv256": L(num_heads=2, head_dim=128, head_dim_v=256, gate="vector", dtype="bfloat16"),
}
# RWKV-6 (the bonus) on the GLA kernel; the value block of 64 (4 warps) takes CONFIGS
SPECS.update({
    "rwkv6": L(num_heads=4, head_dim=128, gate="vector", bonus=True),
    "rwkv6_bf16_vb64": L(num_heads=2, head_dim=128, gate="vector", bonus=True, dtype="bfloat16"),
    # mLSTM, the feature maps and the normaliser on the scalar-gate kernel
    "mlstm": L(num_heads=4, head_dim=128, gate="mlstm"),
    "mlstm_bf16_d64": L(num_heads=2, head_dim=64, gate="mlstm", dtype="bfloat16"),
    "elu1_normalize": L(num_heads=4, head_dim=128, feature_map="elu1", normalize=True),
    "elu1_normalize_scalar_bf16_d64": L(num_heads=2, head_dim=64, feature_map="elu1", normalize=True,
                                        gate="scalar", dtype="bfloat16"),
    "relu_fixed": L(num_heads=4, head_dim=128, feature_map="relu", gate="fixed"),
})
CONFIGS = {"rwkv6_bf16_vb64": {"value_block": 64}}  # the rest: the schedule's default
# O through shared memory (schedule knob staged_store, off by default): the scalar-gate
# kernel's specs with each gate, and two that divide by den
STAGED = {"staged_store": True}
STAGED_SPECS = {n: SPECS[n] for n in ("linear_attn", "retnet", "mamba2", "mamba2_bf16", "retnet_bf16_d64",
                                      "linear_bf16_dv256", "mamba2_dv48", "mlstm", "elu1_normalize")}
LENGTHS = (1, 63, 64, 65, 1000, 4096)
# log gates of the two regimes: gate ~ 1 - 1e-7 (nothing decays), gate ~ e^-40 (underflow)
GATE_REGIMES = {"near_one": (-1e-6, -1e-9), "near_zero": (-60.0, -20.0)}
# vector gates only: the first half of the key channels near 0, the second near 1
SPLIT = "split_channels"
MLSTM_EXTREME = "mlstm_extreme_gates"


def prebuild(target: str = TARGET) -> None:
    """Fill the build cache for a GPU host that has only TVM's runtime."""
    for name, spec in SPECS.items():
        ensure_cached(spec, target, CONFIGS.get(name))
    for spec in STAGED_SPECS.values():
        ensure_cached(spec, target, STAGED)


# ----------------------------------------------------------------------------- CPU


def test_rwkv6_takes_the_gla_kernel():
    """The bonus rides on the GLA kernel (gate "vector"); with a scalar gate it keeps SIMT."""
    t = get(TARGET)
    low = lower(SPECS["rwkv6"], t)
    assert [c.func for c in low.calls] == [tensorcore.GLA_KERNEL]
    assert low.calls[0].args == ("q", "k", "v", "g", "bonus", "initial_state", "o", "final_state")
    bonus_scalar = L(num_heads=4, head_dim=128, gate="scalar", bonus=True)
    assert "bonus" in tensorcore.unsupported_reason(bonus_scalar, t)
    assert [c.func for c in lower(bonus_scalar, t).calls] == ["linear_chunkwise"]


@pytest.mark.parametrize("name", ["elu1_normalize", "elu1_normalize_scalar_bf16_d64", "relu_fixed"])
def test_feature_maps_take_the_scalar_gate_kernel(name):
    spec = SPECS[name]
    low = lower(spec, TARGET)
    assert [c.func for c in low.calls] == [tensorcore.KERNEL]
    assert ("z0" in low.calls[0].args) == spec.normalize


def test_mlstm_takes_the_scalar_gate_kernel():
    low = lower(SPECS["mlstm"], TARGET)
    assert [c.func for c in low.calls] == [tensorcore.KERNEL]
    assert low.calls[0].args == ("q", "k", "v", "i_pre", "f_pre", "initial_state", "z0", "m0", "o",
                                 "final_state", "z_final", "m_final")


def test_supported_specs_take_the_tensor_core_kernel():
    t = get(TARGET)
    for name, spec in SPECS.items():
        assert tensorcore.supported(spec, t), (name, tensorcore.unsupported_reason(spec, t))
        assert [c.func for c in lower(spec, t).calls] == [tensorcore.kernel_name(spec)], name


def test_other_specs_keep_the_simt_kernels():
    t = get(TARGET)
    for spec in (GALLERY["performer"].spec, GALLERY["rwkv6"].spec,
                 GALLERY["retnet_recurrent"].spec, L(head_dim=128, chunk_size=32),
                 L(head_dim=128, dtype="float32")):
        assert not tensorcore.supported(spec, t)
        assert not {tensorcore.KERNEL, tensorcore.GLA_KERNEL} & {c.func for c in lower(spec, t).calls}
    assert not tensorcore.supported(GALLERY["mamba2"].spec, get("cpu"))
    # a config in the SIMT schedule's knobs asks for the SIMT kernel
    low = lower(GALLERY["mamba2"].spec, t, {"block_v": 32, "block_q": 32, "block_k": 32, "threads": 128})
    assert [c.func for c in low.calls] == ["linear_chunkwise"]


@pytest.mark.parametrize("config, message", [
    ({"value_block": 48}, "value_block must be one of"),
    ({"value_block": 128}, "registers per thread"),
    ({"value_blocks": 64}, "value_blocks"),
    ({"staged_store": 1}, "staged_store is a bool"),
])
def test_bad_knobs_raise_value_error(config, message):
    with pytest.raises(ValueError, match=message):
        lower(GALLERY["mamba2"].spec, TARGET, config)


@pytest.mark.parametrize("spec, reason", [
    (L(head_dim=64, gate="vector"), "head_dim 64"),
    (L(head_dim=128, head_dim_v=96, gate="vector"), "head_dim_v 96"),
    (L(head_dim=128, gate="vector", chunk_size=32), "chunk_size 32"),
    (L(head_dim=128, gate="vector", dtype="float32"), "dtype float32"),
    (L(head_dim=128, gate="vector", dtype="bfloat16"), "shared memory"),  # on sm_80
])
def test_gla_specs_out_of_scope_keep_the_simt_kernel(spec, reason):
    t = get("cuda-sm80" if reason == "shared memory" else TARGET)
    assert reason in tensorcore.unsupported_reason(spec, t)
    assert tensorcore.GLA_KERNEL not in [c.func for c in lower(spec, t).calls]


@pytest.mark.parametrize("config, message", [
    ({"value_block": 32}, "for gate 'vector'"),
    ({"value_block": 256}, "for gate 'vector'"),
    ({"staged_store": True}, "False for gate 'vector'"),
])
def test_gla_bad_knobs_raise_value_error(config, message):
    with pytest.raises(ValueError, match=message):
        lower(GALLERY["gla"].spec, TARGET, config)


def test_gla_value_block_must_divide_head_dim_v():
    with pytest.raises(ValueError, match="does not divide head_dim_v 192"):
        lower(L(num_heads=2, head_dim=128, head_dim_v=192, gate="vector"), TARGET, {"value_block": 128})


@pytest.mark.skipif(NVCC is None, reason="needs nvcc")
def test_cuda_source_compiles_without_spills(tmp_path):
    """One spec per gate kind, bf16: nvcc accepts the source, ptxas keeps every fragment in registers."""
    for gate in (None, "scalar", "vector", "rwkv6", "mlstm"):
        path = tmp_path / "kernel.cu"
        spec = (L(num_heads=16, head_dim=128, gate="vector", bonus=True, dtype="bfloat16") if gate == "rwkv6"
                else L(num_heads=16, head_dim=128, gate=gate, dtype="bfloat16"))
        path.write_text(cuda_source(spec, TARGET))
        done = subprocess.run([NVCC, "-cubin", "-arch=sm_90a", "-Xptxas", "-v", "-o",
                               str(tmp_path / "kernel.cubin"), str(path)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "0 bytes spill stores" in done.stderr and "0 bytes stack frame" in done.stderr, done.stderr
        regs = int(re.search(r"Used (\d+) registers", done.stderr).group(1))
        assert regs <= 255


# ----------------------------------------------------------------------------- GPU


def check_gate_regime(kernel, length: int, regime: str, rng) -> dict:
    """Errors of one run whose log gates all lie in ``GATE_REGIMES[regime]`` (or, for mLSTM,
    ``MLSTM_EXTREME``: f_pre of +-40, i_pre of +-30; the rest of the
    inputs from the family's sampler), against the float64 recurrence; outputs NaN-poisoned."""
    import torch

    spec, fam = kernel.spec, kernel.family
    sizes = {"batch": 2, "heads": spec.num_heads, "q_len": length, "kv_len": length}
    inputs = fam.sample(spec, sizes, rng)
    if regime == MLSTM_EXTREME:  # forget gates that wipe the state, input gates of +-30
        inputs["f_pre"] = rng.choice([-40.0, 40.0], inputs["f_pre"].shape).astype(np.float32)
        inputs["i_pre"] = rng.uniform(-30, 30, inputs["i_pre"].shape).astype(np.float32)
    elif regime == SPLIT:
        g = rng.uniform(*GATE_REGIMES["near_one"], inputs["g"].shape)
        half = g.shape[-1] // 2
        g[..., :half] = rng.uniform(*GATE_REGIMES["near_zero"], g[..., :half].shape)
        inputs["g"] = g.astype(np.float32)
    else:
        inputs["g"] = rng.uniform(*GATE_REGIMES[regime], inputs["g"].shape).astype(np.float32)
    ref = fam.reference(spec, inputs)
    feed = {}
    for arg in kernel.args:
        if arg.role == "in":
            feed[arg.name] = torch.from_numpy(np.ascontiguousarray(inputs[arg.name])).cuda().to(getattr(torch, arg.dtype))
    out = kernel.run(feed, poisoned(kernel, fam.sizes(spec, feed)))
    errors = {}
    for name, expected in ref.items():
        err = tolerance.errors(out[name].double().cpu().numpy(), expected)
        errors[name] = (err, tolerance.passes(err, spec.dtype))
    return errors


def check_spec(kernel, rng) -> list:
    """Every check of one kernel: (what, passed, errors) per length and gate regime."""
    results = []
    for length in LENGTHS:
        r = check_length(kernel, length, batch=2 if length <= 1000 else 1, rng=rng)
        results.append((f"length {length}", r.passed, r.errors))
    if kernel.spec.gate in ("scalar", "vector", "mlstm"):
        regimes = ([MLSTM_EXTREME] if kernel.spec.gate == "mlstm" else
                   list(GATE_REGIMES) + ([SPLIT] if kernel.spec.gate == "vector" else []))
        for regime in regimes:
            for length in (65, 1000):
                errs = check_gate_regime(kernel, length, regime, rng)
                results.append((f"{regime} length {length}", all(ok for _, ok in errs.values()),
                                {n: e for n, (e, _) in errs.items()}))
    return results


def assert_checks_pass(spec, config=None) -> None:
    """Build ``spec`` with ``config`` on the tensor-core kernel and run ``check_spec`` on it."""
    kernel = build(spec, TARGET, config)
    assert [c.func for c in kernel.calls] == [tensorcore.kernel_name(spec)]
    rng = np.random.default_rng(np.random.SeedSequence())
    failed = [(what, errors) for what, ok, errors in check_spec(kernel, rng) if not ok]
    assert not failed, (f"seed {rng.bit_generator.seed_seq.entropy}", failed)


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(STAGED_SPECS))
def test_staged_store_on_gpu(name):
    """The scalar-gate kernel with O through shared memory (staged_store)."""
    assert_checks_pass(STAGED_SPECS[name], STAGED)


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(SPECS))
def test_spec_on_gpu(name):
    assert_checks_pass(SPECS[name], CONFIGS.get(name))
