"""Absorbed-MLA decode on CUDA (attngen/softmax/mla_decode.py, templates/decode_mla.j2):
which specs take it, its knobs, the generated code (nvcc: tensor-core instructions, no
spills), and on a GPU the float64 reference at lengths 1..32768 with mixed lengths, shuffled
pages and NaN past every sequence (skipped without a GPU).

Where only TVM's runtime is installed, the kernels must already be in the build cache
(``ATTNGEN_CACHE_DIR``): ``python tests/prebuild_gpu.py``.
"""
import re
import shutil
import subprocess

import numpy as np
import pytest

from attngen import Attention, Decode, Paged, masks
from attngen.builder import build, compile_lowered, ensure_cached, lower
from attngen.check import check_inputs, check_length
from attngen.gallery import GALLERY
from attngen.resources import load_schedule
from attngen.softmax import decode, mla_decode
from attngen.targets import get as get_target

NVCC = shutil.which("nvcc")
SM90 = get_target("cuda-sm90a")


def mla(**kw) -> Attention:
    """DeepSeek-V2/V3's absorbed MLA: one latent head of 512 + 64 channels, V = its first 512."""
    base = dict(num_heads=16, num_kv_heads=1, head_dim=576, head_dim_v=512, latent_kv=True,
                scale=192 ** -0.5, phase=Decode(1))
    return Attention(**{**base, **kw})


SPECS = {
    "mla_decode": GALLERY["mla_decode"].spec,                                   # fp16, contiguous
    "mla_paged16": mla(kv_layout=Paged(16)),
    "mla_paged64_bf16": mla(dtype="bfloat16", kv_layout=Paged(64)),
    # 2 queries x 16 heads = 2 row tiles, causal (the earlier query sees one key less)
    "mla_q2_causal_paged32": mla(phase=Decode(2), mask=masks.causal(), kv_layout=Paged(32)),
    # 8 heads of 2 KV heads: 4 packed rows, padded to the 16-row m-tile
    "mla_h8_kv2_window": mla(num_heads=8, num_kv_heads=2, mask=masks.sliding_window(100)),
    "mla_sinks_softcap": mla(sinks=True, score_mod=GALLERY["softcap"].spec.score_mod),
}
BULK = {"bulk_copy": True, "l2_prefetch": 0}  # the default on sm_90
KEYS = {"qk_split": "keys", "stages": 4, "ctas_per_sm": 1}  # a contiguous cache's split (paged: channels)
B3 = {**KEYS, "step_barriers": 3, "qk_chains": 2}  # session 5's default on sm_90: 3 barriers per step, 2 chains
CP_ASYNC = {**KEYS, "bulk_copy": False, "l2_prefetch": 128, "step_barriers": 3, "qk_chains": 2}  # below sm_90
FUSED = {"fused_combine": True}
STREAM_K = {"fused_combine": True, "stream_k": True}
CHANNELS = {"qk_split": "channels"}
LAZY = {"lazy_rescale": True}
VARIANTS = {
    "mla_decode+warps4+stages4": ("mla_decode", {"warps": 4, "stages": 4}),
    "mla_paged16+stages2": ("mla_paged16", {"stages": 2}),
    # session 6's paged default: Q K^T split by keys, one CTA per SM
    **{f"{name}+keys": (name, KEYS) for name in ("mla_paged16", "mla_paged64_bf16", "mla_q2_causal_paged32")},
    # two CTAs per SM (2 x 114 KB of shared memory): twice the splits
    "mla_paged64_bf16+warps4+stages3+2ctas": ("mla_paged64_bf16", {"warps": 4, "stages": 3, "ctas_per_sm": 2}),
    # cp.async with an L2 prefetch of whole 256-byte lines
    "mla_decode+prefetch256": ("mla_decode", {**CP_ASYNC, "l2_prefetch": 256}),
    "mla_paged16+stages5+prefetch256": ("mla_paged16", {**CP_ASYNC, "stages": 5, "l2_prefetch": 256}),
    # one cp.async.bulk per latent row on per-stage mbarriers (TMA, 1-D), 3 barriers per step
    **{f"{name}+b3": (name, {**BULK, **B3}) for name in SPECS},
    "mla_decode+bulk+warps8+stages3": ("mla_decode", {**BULK, "warps": 8, "stages": 3}),
    # the last CTA of each output tile merges the splits (no combine kernel): many empty splits
    # at length 1, two row tiles, 4 packed rows, the sink in the merge
    **{f"{name}+fused": (name, FUSED) for name in ("mla_decode", "mla_paged16", "mla_q2_causal_paged32",
                                                    "mla_h8_kv2_window", "mla_sinks_softcap")},
    # stream-K: CTAs cross tile boundaries (two row tiles, GQA tiles, mixed lengths)
    **{f"{name}+streamk": (name, STREAM_K) for name in ("mla_decode", "mla_paged16", "mla_q2_causal_paged32",
                                                      "mla_h8_kv2_window", "mla_sinks_softcap")},
    "mla_paged16+streamk+cp_async": ("mla_paged16", {**STREAM_K, **CP_ASYNC}),
    # the default's two knobs apart: Q K^T over 2 mma chains; 3 barriers per step
    "mla_decode+qk2": ("mla_decode", {"qk_chains": 2}),
    "mla_q2_causal_paged32+fused+qk2": ("mla_q2_causal_paged32", {**KEYS, **FUSED, "qk_chains": 2}),
    "mla_h8_kv2_window+b3": ("mla_h8_kv2_window", {"step_barriers": 3}),
    "mla_q2_causal_paged32+streamk+b3": ("mla_q2_causal_paged32", {**STREAM_K, **B3}),
    # Q K^T shared by channels: one barrier per step, P from registers (two row tiles, 4 packed
    # rows, the window, sinks + softcap, stream-K, two CTAs per SM of 2 stages)
    **{f"{name}+channels": (name, CHANNELS) for name in ("mla_decode", "mla_paged16", "mla_h8_kv2_window")},
    "mla_q2_causal_paged32+channels+fused": ("mla_q2_causal_paged32", {**CHANNELS, **FUSED}),
    "mla_sinks_softcap+channels+streamk": ("mla_sinks_softcap", {**CHANNELS, **STREAM_K}),
    "mla_paged64_bf16+channels+2ctas": ("mla_paged64_bf16", {**CHANNELS, "stages": 2, "ctas_per_sm": 2}),
    # the reference max moves only past +8 (log2); the O rescale skipped by a warp vote
    "mla_decode+lazy": ("mla_decode", LAZY),
    "mla_q2_causal_paged32+lazy+fused": ("mla_q2_causal_paged32", {**LAZY, **FUSED}),
    "mla_paged16+lazy+channels": ("mla_paged16", {**LAZY, **CHANNELS}),
    # the combine launched plainly, after the split kernel has completed
    "mla_decode+no_pdl": ("mla_decode", {"pdl": False}),
    # the 16-byte cp.async path (the default below sm_90)
    "mla_paged16+cp_async": ("mla_paged16", CP_ASYNC),
    "mla_q2_causal_paged32+cp_async": ("mla_q2_causal_paged32", CP_ASYNC),
}
CASES = {**{name: (name, {}) for name in SPECS}, **VARIANTS}
GROWING = [LAZY, {**LAZY, **CHANNELS}, {}]  # configs of the growing-max test
LENGTHS = (1, 63, 64, 65, 4097, 32768)


def prebuild(target: str = "cuda") -> None:
    """Fill the build cache for a GPU host that has only TVM's runtime."""
    for spec_name, config in CASES.values():
        ensure_cached(SPECS[spec_name], target, config)
    for config in GROWING:
        ensure_cached(SPECS["mla_decode"], target, config)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_latent_specs_take_the_mla_kernel(name):
    low = lower(SPECS[name], SM90)
    assert [c.func for c in low.calls] == ["decode_mla", "decode_combine"]
    assert decode.supports(SPECS[name], SM90)
    max_split = load_schedule("decode_mla_cuda").default(SPECS[name], SM90)["max_split"]
    scratch = {a.name: a.shape for a in low.args if a.role == "scratch"}
    assert scratch["o_parts"][3] == max_split and scratch["o_parts"][4] == SPECS[name].head_dim_v


@pytest.mark.parametrize("spec, why", [
    (mla(head_dim=560), "560 channels: not whole 32-channel ldmatrix steps"),
    (mla(head_dim_v=480), "480 value channels: not whole 64-channel slices"),
    (mla(dtype="float32"), "float32: no fp32 mma operands"),
])
def test_other_latent_specs_keep_the_generic_kernel(spec, why):
    assert not mla_decode.supports(spec, SM90), why
    assert [c.func for c in lower(spec, SM90).calls][0] == "attention"


@pytest.mark.parametrize("config, message", [
    ({"warps": 2}, "warps"), ({"stages": 7}, "stages"), ({"max_split": 0}, "max_split"),
    ({"ctas_per_sm": True}, "ctas_per_sm"), ({"warps": 8, "stages": 4}, "shared memory"),
    ({"block_q": 32}, "unknown knob"), ({"l2_prefetch": 512}, "l2_prefetch"),
    ({"bulk_copy": 1}, "bulk_copy must be a bool"), ({"l2_prefetch": 128}, "takes l2_prefetch 0"),
    ({"fused_combine": "yes"}, "fused_combine must be a bool"),
    ({"qk_chains": 3}, "qk_chains must be one of"),
    ({"step_barriers": 2, "bulk_copy": False, "l2_prefetch": 128}, "step_barriers=2 needs bulk_copy"),
    ({"qk_split": "heads"}, "qk_split must be 'keys' or 'channels'"),
    ({"qk_split": "channels", "bulk_copy": False, "l2_prefetch": 128, "step_barriers": 3},
     "qk_split='channels' needs bulk_copy"),
    ({"qk_split": "channels", "warps": 8, "stages": 3}, "does not split into 8 slices"),
    ({"lazy_rescale": 1}, "lazy_rescale must be a bool"),
])
def test_invalid_mla_configs_are_rejected(config, message):
    if "block_q" in config:  # a generic-SIMT knob selects that kernel instead
        assert not mla_decode.supports(SPECS["mla_decode"], SM90, config)
        with pytest.raises(ValueError, match=message):
            mla_decode.lower(SPECS["mla_decode"], SM90, config)
        return
    with pytest.raises(ValueError, match=message):
        lower(SPECS["mla_decode"], SM90, config)


def test_fused_combine_is_one_kernel_with_a_zeroed_counter():
    """fused_combine: decode_mla writes o and lse itself; its arrival counters (one per output
    tile) are scratch the driver zero-fills and the kernel leaves zero."""
    spec = SPECS["mla_q2_causal_paged32"]
    low = lower(spec, SM90, FUSED)
    assert [c.func for c in low.calls] == ["decode_mla"]
    args = {a.name: a for a in low.args}
    assert {"o", "lse", "split_done"} <= set(low.calls[0].args)
    done = args["split_done"]
    assert done.role == "scratch" and done.zeroed and done.dtype == "int32"
    assert done.concrete_shape({"batch": 3}) == (3, spec.num_kv_heads * mla_decode.row_tiles(spec))
    assert not any(a.zeroed for a in lower(spec, SM90).args)  # the two-kernel program has none
    import torch

    from attngen.family import Arg
    from attngen.kernel import allocate

    buf = allocate(done, {"batch": 3}, "cpu", float("nan"))  # zeros even where outputs get NaN
    assert buf.dtype == torch.int32 and buf.shape == (3, 2) and not buf.any()
    assert Arg.from_json(done.__dict__) == done  # the build cache and exports keep the flag
    assert "sinks" in lower(SPECS["mla_sinks_softcap"], SM90, FUSED).calls[0].args


def stream_k_model(n_tiles, n_cta, n_keys):
    """The stream-K schedule of templates/decode_mla.j2 in Python: {tile: [(cta, slot, nparts,
    first key, end key)]} (tile t has n_keys[t] keys)."""
    out = {}
    for c in range(n_cta):
        n_seg = ((c + 1) * n_tiles - 1) // n_cta - c * n_tiles // n_cta + 1
        for seg in range(n_seg):
            t = c * n_tiles // n_cta + seg
            lo = max(c * n_tiles, t * n_cta) - t * n_cta
            hi = min((c + 1) * n_tiles, (t + 1) * n_cta) - t * n_cta
            slot = c - t * n_cta // n_tiles
            nparts = ((t + 1) * n_cta - 1) // n_tiles - t * n_cta // n_tiles + 1
            out.setdefault(t, []).append((c, slot, nparts, lo * n_keys[t] // n_cta, hi * n_keys[t] // n_cta))
    return out


@pytest.mark.parametrize("n_tiles, max_split", [(1, 64), (2, 64), (16, 4), (64, 64), (131, 2), (132, 2),
                                                (133, 64), (1000, 64)])
def test_stream_k_covers_every_key_once_in_balanced_ranges(n_tiles, max_split):
    """Every key of every tile in exactly one CTA's range, each tile's partials in distinct slots
    0..nparts - 1 (nparts <= max_split), and the CTAs' key counts within one item of even."""
    rng = np.random.default_rng(n_tiles)
    n_cta = max(min(132, n_tiles * (max_split - 1)), 1)
    text = mla_decode.stream_k_ctas(SPECS["mla_decode"], SM90, {"ctas_per_sm": 1, "max_split": max_split})
    assert eval(text.replace("T.max", "max").replace("T.min", "min"), {"B": n_tiles}) == n_cta
    for n_keys in ([8192] * n_tiles, rng.integers(0, 5000, n_tiles).tolist()):
        plan = stream_k_model(n_tiles, n_cta, n_keys)
        assert sorted(plan) == list(range(n_tiles))
        work = [0] * n_cta
        for t, parts in plan.items():
            nparts = parts[0][2]
            assert all(p[2] == nparts for p in parts) and nparts <= max_split
            assert sorted(p[1] for p in parts) == list(range(nparts)) == [p[1] for p in parts]
            ranges = sorted((p[3], p[4]) for p in parts)
            assert ranges[0][0] == 0 and ranges[-1][1] == n_keys[t]
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
            for c, _, _, lo, hi in parts:
                work[c] += hi - lo
        if len(set(n_keys)) == 1:  # equal lengths: every CTA within one item of the mean
            assert max(work) - min(work) <= 2 * -(-n_keys[0] // n_cta)


def test_stream_k_needs_fused_combine():
    with pytest.raises(ValueError, match="stream_k needs fused_combine"):
        lower(SPECS["mla_decode"], SM90, {"stream_k": True})


def test_bulk_copy_needs_sm90():
    with pytest.raises(ValueError, match="bulk_copy needs sm_90"):
        lower(SPECS["mla_decode"], get_target("cuda-sm80"), {**BULK, "stages": 2})


def test_split_count_fills_one_wave_without_a_tail():
    """floor(sm_count * ctas_per_sm / CTAs per split), in [1, max_split]."""
    spec = SPECS["mla_decode"]
    cfg = {**load_schedule("decode_mla_cuda").default(spec, SM90), "max_split": 16}
    text = mla_decode.split_count(spec, SM90, cfg)
    for batch, want in ((1, 16), (64, 2), (100, 1), (1000, 1)):
        assert eval(text.replace("T.max", "max").replace("T.min", "min"), {"B": batch}) == want, batch


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
@pytest.mark.parametrize("name, config", [("mla_decode", {}), ("mla_paged16", {}),
                                          ("mla_q2_causal_paged32", {}),
                                          ("mla_decode", {"warps": 4, "stages": 4}),
                                          ("mla_paged16", {**CP_ASYNC, "stages": 5, "l2_prefetch": 256}),
                                          ("mla_decode", BULK), ("mla_paged16", BULK),
                                          ("mla_decode", {**BULK, "warps": 8, "stages": 3}),
                                          ("mla_sinks_softcap", FUSED), ("mla_decode", STREAM_K),
                                          ("mla_paged16", {**STREAM_K, **CP_ASYNC}),
                                          ("mla_decode", {**FUSED, "qk_chains": 4}),
                                          ("mla_paged16", {**B3, **BULK}),
                                          ("mla_paged16", {**KEYS, **FUSED, "qk_chains": 2}),
                                          ("mla_q2_causal_paged32", {**CHANNELS, **STREAM_K}),
                                          ("mla_paged16", {**CHANNELS, "stages": 2, "ctas_per_sm": 2}),
                                          ("mla_decode", LAZY), ("mla_paged16", {**LAZY, **CHANNELS})])
def test_mla_kernel_compiles_to_tensor_cores_without_spills(name, config, tmp_path):
    low = lower(SPECS[name], SM90, config)
    source = next(m for m in compile_lowered(low, SM90).mod.imports if m.kind == "cuda").inspect_source()
    assert "mma.sync.aligned.m16n8k16" in source and "ldmatrix" in source and "cp.async" in source
    cfg = {**load_schedule("decode_mla_cuda").default(SPECS[name], SM90), **config}
    assert ("cp.async.cg.shared.global.L2::256B" in source) == (cfg["l2_prefetch"] == 256)
    bulk = "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes"
    assert (bulk in source) == cfg["bulk_copy"]
    assert ("cp.async.cg.shared.global" in source) != cfg["bulk_copy"]
    path = tmp_path / "kernel.cu"
    path.write_text(source)
    out = subprocess.run([NVCC, "-cubin", "-O3", "-arch=sm_90a", "--resource-usage", "-o",
                          str(tmp_path / "kernel.cubin"), str(path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    spills = re.findall(r"(\d+) bytes spill stores", out.stdout + out.stderr)
    assert spills and all(n == "0" for n in spills), out.stdout + out.stderr


@pytest.mark.gpu
@pytest.mark.parametrize("case", sorted(CASES))
def test_mla_decode_on_gpu(case):
    spec_name, config = CASES[case]
    kernel = build(SPECS[spec_name], "cuda", config)
    rng = np.random.default_rng(np.random.SeedSequence())
    for length in LENGTHS:
        result = check_length(kernel, length, batch=4 if length <= 4097 else 2, rng=rng)
        assert result.passed, (f"length {length}, seed {rng.bit_generator.seed_seq.entropy}", result.errors)


@pytest.mark.gpu
@pytest.mark.parametrize("config", GROWING)
def test_a_growing_max_moves_the_reference_on_gpu(config):
    """Random keys keep a row's max within 8 (log2 units) of its first step's, so the lazy
    reference would never move after it; here the latent rows grow along the sequence (the
    logits' spread from ~1 to ~40), so the reference moves many times and P, l and O go
    through every rescale path."""
    spec = SPECS["mla_decode"]
    kernel = build(spec, "cuda", config)
    rng = np.random.default_rng(np.random.SeedSequence())
    fam, length = kernel.family, 4097
    sizes = {"batch": 3, "heads": spec.num_heads, "q_len": 1, "kv_len": length}
    inputs = fam.sample(spec, sizes, rng)
    grown = inputs["k"] * (1 + 12 * np.arange(inputs["k"].shape[2]) / length)[:, None]
    inputs["k"] = grown.astype(spec.dtype).astype(inputs["k"].dtype)  # on the kernel's grid again
    result = check_inputs(kernel, inputs, length)
    assert result.passed, (f"seed {rng.bit_generator.seed_seq.entropy}", result.errors)


def test_the_tuner_searches_the_mla_knobs():
    from attngen.tune.space import candidates

    configs = candidates(SPECS["mla_decode"], SM90)
    assert configs[0] == load_schedule("decode_mla_cuda").default(SPECS["mla_decode"], SM90)
    assert {c["warps"] for c in configs} == {4, 8} and {c["stages"] for c in configs} <= set(range(2, 7))
