"""The CUDA decode path (attngen/softmax/decode.py, templates/decode*.j2): which specs take
it, its knobs, the generated code (nvcc, registers, no spills), and on a GPU the float64
references at lengths 1..32768 with mixed lengths and shuffled pages (skipped without one).

Where only TVM's runtime is installed, the kernels must already be in the build cache
(``ATTNGEN_CACHE_DIR``): ``python -c "import tests.test_decode_cuda as t; t.prebuild()"``.
"""
import re
import shutil
import subprocess

import numpy as np
import pytest

from attngen import Attention, Decode, Paged, masks
from attngen.builder import build, ensure_cached, compile_lowered, lower
from attngen.check import check_length
from attngen.gallery import GALLERY
from attngen.resources import load_schedule
from attngen.softmax import decode
from attngen.targets import get as get_target

NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found")
SM90 = get_target("cuda-sm90a")
PDL_TAG = "tirx.use_programtic_dependent_launch"  # sic: TVM's spelling

SPECS = {
    "decode": GALLERY["decode"].spec,                   # GQA 4, contiguous
    "flash_decoding": GALLERY["flash_decoding"].spec,
    "paged_decode": GALLERY["paged_decode"].spec,       # page size 16
    "spec_decode": GALLERY["spec_decode"].spec,         # 4 queries, causal, 16 packed rows
    "mha_bf16": Attention(num_heads=8, head_dim=128, dtype="bfloat16", phase=Decode(1)),
    "gqa8_q8_paged64": Attention(num_heads=16, num_kv_heads=2, head_dim=128, mask=masks.causal(),
                                 phase=Decode(8), kv_layout=Paged(64)),
    "window_paged32_bf16": Attention(num_heads=32, num_kv_heads=8, head_dim=128, dtype="bfloat16",
                                     mask=masks.sliding_window(100), phase=Decode(2),
                                     kv_layout=Paged(32)),
    "sinks_window_d64": Attention(num_heads=16, num_kv_heads=2, head_dim=64, sinks=True,
                                  mask=masks.sliding_window(128), phase=Decode(1)),
    "softcap_d256": Attention(num_heads=8, num_kv_heads=4, head_dim=256,
                              score_mod=GALLERY["softcap"].spec.score_mod, phase=Decode(1)),
}
# knob settings that change the kernel's structure: (spec name, config)
VARIANTS = {
    "decode+stages2+warps8": ("decode", {"stages": 2, "warps": 8}),
    "gqa8_q8_paged64+stages2": ("gqa8_q8_paged64", {"stages": 2}),
    "sinks_window_d64+stages2+1key": ("sinks_window_d64", {"stages": 2, "keys_per_thread": 1}),
    # the butterfly is on by default wherever the row count allows: keep the plain reduction
    "decode+plain": ("decode", {"butterfly": 0}),
    "spec_decode+plain": ("spec_decode", {"butterfly": 0}),                     # 8 rows of 16 lanes
    "window_paged32_bf16+plain": ("window_paged32_bf16", {"butterfly": 0}),
    # the register path (v4), the default before the ring
    "decode+registers": ("decode", {"ring_stages": 0}),
    "spec_decode+registers": ("spec_decode", {"ring_stages": 0}),
    # the cp.async ring in shared memory (the default at <= 4 rows): stage indices wrap (3
    # stages), 2 stages of 4 keys, a split shorter than the ring, paged K/V addresses, bf16,
    # with and without the L2 prefetch
    "decode+ring3": ("decode", {"ring_stages": 3, "keys_per_thread": 2}),
    "decode+ring2": ("decode", {"ring_stages": 2, "keys_per_thread": 4}),
    "paged_decode+ring4+prefetch": ("paged_decode", {"ring_stages": 4, "keys_per_thread": 2,
                                                     "l2_prefetch": 256}),
    "mha_bf16+ring3+prefetch": ("mha_bf16", {"ring_stages": 3, "l2_prefetch": 128}),
    # the combine launched plainly, after the split kernel has completed (the default below sm_90)
    "decode+no_pdl": ("decode", {"pdl": False}),
}
CASES = {**{name: (name, {}) for name in SPECS}, **VARIANTS}
LENGTHS = (1, 63, 64, 65, 4097, 32768)


def prebuild(target: str = "cuda") -> None:
    """Fill the build cache for a GPU host that has only TVM's runtime."""
    for spec_name, config in CASES.values():
        ensure_cached(SPECS[spec_name], target, config)


# ----------------------------------------------------------------------------- routing


@pytest.mark.parametrize("name", sorted(SPECS))
def test_supported_decode_specs_take_the_decode_kernels(name):
    low = lower(SPECS[name], SM90)
    assert [c.func for c in low.calls] == ["decode", "decode_combine"]
    scratch = {a.name: a.shape for a in low.args if a.role == "scratch"}
    max_split = load_schedule("decode_cuda").default(SPECS[name], SM90)["max_split"]
    assert scratch["o_parts"][3] == max_split and scratch["lse_parts"][3] == max_split


@pytest.mark.parametrize("spec, why", [
    (Attention(num_heads=4, head_dim=96, phase=Decode(1)), "96 channels: 12 lanes"),
    (Attention(num_heads=4, head_dim=128, head_dim_v=64, phase=Decode(1)), "Dv != D"),
    (GALLERY["gqa"].spec, "prefill"),
])
def test_other_specs_keep_their_path(spec, why):
    # (latent caches take the MLA kernel: tests/test_mla_decode_cuda.py)
    assert not decode.supports(spec, SM90), why
    assert "decode" not in [c.func for c in lower(spec, SM90).calls]


def test_generic_simt_knobs_select_the_generic_kernel():
    low = lower(GALLERY["decode"].spec, SM90, {"block_q": 32, "block_k": 32})
    assert [c.func for c in low.calls] == ["attention"]
    assert not decode.supports(GALLERY["decode"].spec, get_target("cpu"))


@pytest.mark.parametrize("config, message", [
    ({"warps": 0}, "warps"),
    ({"keys_per_thread": 9}, "keys_per_thread"),
    ({"rows": 16, "warps": 8}, "shared memory"),
    ({"max_split": True}, "max_split"),
    ({"stages": 3}, "stages"),
    ({"butterfly": 2}, "butterfly"),
    ({"ring_stages": 1}, "ring_stages"),
    ({"l2_prefetch": 32}, "l2_prefetch"),
    ({"pdl": 1}, "pdl must be a bool"),
])
def test_invalid_decode_configs_are_rejected(config, message):
    with pytest.raises(ValueError, match=message):
        lower(SPECS["spec_decode"], SM90, config)


@pytest.mark.parametrize("name", ["decode", "mla"])
def test_the_combine_is_a_programmatic_dependent_launch_on_sm90(name, tmp_path):
    """On sm_90 the split kernel signals its dependents after the main loop and the combine,
    launched with PDL, waits for it before its first read; the tag reaches the built module
    (TVM appends it to the launch parameters it derives).  Below sm_90 neither is there."""
    from attngen.builder import compile_lowered

    spec = GALLERY["mla_decode" if name == "mla" else "decode"].spec
    low = lower(spec, SM90)
    combine = low.mod["decode_combine"]
    assert list(combine.attrs["tirx.kernel_launch_params"]) == [PDL_TAG]
    assert "kernel_launch_params" not in low.mod[low.calls[0].func].attrs
    script = low.mod.script()
    assert script.count('griddepcontrol("launch_dependents"') == 1 and script.count('griddepcontrol("wait"') == 1
    if NVCC is not None:
        compile_lowered(low, SM90).mod.export_library(str(tmp_path / "k.so"))
        assert PDL_TAG.encode() in (tmp_path / "k.so").read_bytes()
    plain = lower(spec, get_target("cuda-sm80"))
    assert "griddepcontrol" not in plain.mod.script()
    assert "kernel_launch_params" not in plain.mod["decode_combine"].attrs
    with pytest.raises(ValueError, match="pdl needs sm_90"):
        lower(spec, get_target("cuda-sm80"), {"pdl": True})


def test_a_small_ring_next_to_a_large_merge_is_rejected():
    # 8 rows: 4 warps, a 33 KiB static merge; 2 stages x 2 keys = 16 KiB of ring failed to
    # launch on the GPU (static + dynamic over 48 KiB, dynamic under it)
    with pytest.raises(ValueError, match="fails to launch"):
        lower(SPECS["spec_decode"], SM90, {"ring_stages": 2})
    assert load_schedule("decode_cuda").default(SPECS["spec_decode"], SM90)["ring_stages"] == 0
    assert load_schedule("decode_cuda").default(SPECS["decode"], SM90)["ring_stages"] == 4


def test_a_ring_over_the_arch_shared_memory_is_rejected():
    # 6 stages x 8 keys x K and V x 256 threads x 16 B = 384 KiB, over the 227 KiB of sm_90a
    with pytest.raises(ValueError, match="shared memory"):
        lower(SPECS["decode"], SM90, {"ring_stages": 6, "keys_per_thread": 8})
    lower(SPECS["decode"], SM90, {"ring_stages": 6, "keys_per_thread": 2})  # 96 KiB fits


def test_split_count_follows_the_batch():
    """The run-time split text: ceil(sm_count * ctas_per_sm / CTAs per split), in [1, max]."""
    spec = SPECS["decode"]
    cfg = {**load_schedule("decode_cuda").default(spec, SM90), "ctas_per_sm": 4, "max_split": 16}
    text = decode.split_count(spec, SM90, cfg)
    for batch, want in ((1, 16), (8, 9), (64, 2), (1000, 1)):
        value = eval(text.replace("T.max", "max").replace("T.min", "min"), {"B": batch})
        assert value == want, (batch, value)


# ----------------------------------------------------------------------------- generated code


@needs_nvcc
@pytest.mark.parametrize("name, config", [("decode", {}), ("paged_decode", {}), ("spec_decode", {}),
                                          ("sinks_window_d64", {}), ("paged_decode", {"stages": 2}),
                                          ("spec_decode", {"butterfly": 0}), ("decode", {"ring_stages": 0}),
                                          ("paged_decode", {"ring_stages": 4, "keys_per_thread": 2,
                                                            "l2_prefetch": 256})])
def test_decode_kernels_compile_without_spills(name, config, tmp_path):
    low = lower(SPECS[name], SM90, config)
    source = next(m for m in compile_lowered(low, SM90).mod.imports if m.kind == "cuda").inspect_source()
    sched = load_schedule("decode_cuda")
    cfg = {**sched.default(SPECS[name], SM90), **config}
    if sched.ring_stages(cfg):
        # 16-byte cp.async into the ring (with the L2 prefetch asked for), read back as one
        # 16-byte vector per key; ring_stages - 2 groups left pending at each step
        prefetch = f".L2::{cfg['l2_prefetch']}B" if cfg["l2_prefetch"] else ""
        assert f"cp.async.cg.shared.global{prefetch} [%0], [%1], 16;" in source
        assert f"cp.async.wait_group {sched.ring_stages(cfg) - 2};" in source
        assert re.search(r"\*\(uint4\*\)\(kr_ptr \+ \d+\) = \*\(uint4\*\)\(RING_ptr", source)
    else:
        # 16-byte K/V loads straight into registers
        assert re.search(r"\*\(uint4\*\)\(kr_ptr \+ \d+\) = \*\(uint4\*\)\(K_ptr", source)
    assert "__shfl_xor_sync" in source  # dot products reduced by warp shuffles
    path = tmp_path / "kernel.cu"
    path.write_text(source)
    out = subprocess.run([NVCC, "-cubin", "-O3", "-arch=sm_90a", "--resource-usage", "-o",
                          str(tmp_path / "kernel.cubin"), str(path)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    report = out.stdout + out.stderr
    assert re.findall(r"(\d+) bytes spill stores", report) and \
        all(n == "0" for n in re.findall(r"(\d+) bytes spill stores", report)), report


# ----------------------------------------------------------------------------- on the GPU


@pytest.mark.gpu
@pytest.mark.parametrize("case", sorted(CASES))
def test_decode_on_gpu(case):
    spec_name, config = CASES[case]
    kernel = build(SPECS[spec_name], "cuda", config)
    rng = np.random.default_rng(np.random.SeedSequence())
    for length in LENGTHS:
        # several sequences: lengths in [1, length], one of them full; pages shuffled
        result = check_length(kernel, length, batch=4 if length <= 4097 else 2, rng=rng)
        assert result.passed, (f"length {length}, seed {rng.bit_generator.seed_seq.entropy}",
                               result.errors)
