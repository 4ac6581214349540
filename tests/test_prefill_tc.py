"""The tensor-core prefill kernel (templates/attention_tc.j2, attngen/softmax/tensorcore.py).

CPU side: which specs take it, the tile bounds it is given, its knobs, and that nvcc compiles
its CUDA without stack or spills.  GPU side (skipped without a GPU): every supported gallery
spec and a few extra shapes against the float64 references with attngen.check (fresh inputs,
NaN-poisoned outputs).  Where only TVM's runtime is installed, fill the build cache first on a
machine with the compiler: ``python -c "import tests.test_prefill_tc as t; t.prebuild()"`` with
the same ``ATTNGEN_CACHE_DIR``.
"""
import re
import shutil
import subprocess

import numpy as np
import pytest

from attngen import Attention, Decode, Paged, expr as E, masks
from attngen.builder import build, ensure_cached, compile_lowered, lower
from attngen.check import check_length
from attngen.gallery import GALLERY
from attngen.resources import load_schedule
from attngen.runtime import NVCC_FLAGS
from attngen.softmax import signature as sig, tensorcore, tile_map
from attngen.spec import Mask
from attngen.targets import get as get_target

SM90 = get_target("cuda-sm90a")
NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found")

GALLERY_TC = [n for n, e in GALLERY.items()
              if isinstance(e.spec, Attention) and tensorcore.supported(e.spec, SM90)]
# rows 0..8 see no key at all: o = 0, lse = -inf
LATE_START = Mask(E.kv_idx < E.q_pos - 8, "late_start")
HEAD_BLOCKS = Mask((E.kv_idx <= E.q_pos) & ((E.h % 2 == 0) | (E.kv_idx // 64 % 2 == 0)), "head_blocks")
EXTRA = {
    "d64_gqa_causal": Attention(num_heads=8, num_kv_heads=2, head_dim=64, mask=masks.causal()),
    "d64_bf16_dense": Attention(num_heads=4, head_dim=64, dtype="bfloat16"),
    "d128_bf16_window": Attention(num_heads=4, num_kv_heads=1, head_dim=128, dtype="bfloat16",
                                  mask=masks.sliding_window(100)),
    "d256": Attention(num_heads=2, head_dim=256, mask=masks.causal()),
    "d96_empty_rows": Attention(num_heads=2, head_dim=96, mask=LATE_START),
    # a mask that reads h: one tile map per head (even heads causal, odd heads every other
    # 64-key block of the causal triangle)
    "d64_head_map": Attention(num_heads=4, num_kv_heads=2, head_dim=64, mask=HEAD_BLOCKS),
    # token-major q/k/v/o, with a band and with a tile map
    "d128_bshd_gqa_causal": Attention(num_heads=8, num_kv_heads=2, head_dim=128, mask=masks.causal(),
                                      layout="bshd"),
    "d64_bshd_document": Attention(num_heads=4, head_dim=64, mask=masks.document(), layout="bshd"),
    # a mask whose disjuncts share a conjunct (causal): the kernels evaluate it factored
    "d128_global_local_causal": Attention(num_heads=4, head_dim=128, mask=masks.global_local(16, 100, causal=True)),
}
# packed variable-length batches (cu_seqlens): checked with 4 sequences, one of them empty
PACKED = {
    "d64_thd_causal_sinks": Attention(num_heads=4, num_kv_heads=2, head_dim=64, mask=masks.causal(),
                                      sinks=True, layout="thd"),
    "d128_thd_window_bf16": Attention(num_heads=4, head_dim=128, dtype="bfloat16",
                                      mask=masks.sliding_window(100), layout="thd"),
    "d128_thd_full_mqa": Attention(num_heads=4, num_kv_heads=1, head_dim=128, layout="thd"),
}


def _is_tc(low) -> bool:
    script = low.mod.script()
    return "ptx_legacy.mma" in script or "T.ptx.wgmma(" in script


# ----------------------------------------------------------------------------- dispatch


def test_supported_gallery_prefill_takes_tensor_cores():
    assert {"full", "causal", "causal_bf16", "gqa", "mqa", "mla_prefill", "softcap",
            "document", "sinks"} <= set(GALLERY_TC)
    assert _is_tc(lower(GALLERY["gqa"].spec, SM90))


# (mla_decode is not the prefill kernel's either, but it has tensor cores of its own:
# tests/test_mla_decode_cuda.py)
@pytest.mark.parametrize("name", ["sage", "decode"])
def test_unsupported_specs_keep_simt(name):
    spec = GALLERY[name].spec
    assert tensorcore.unsupported_reason(spec, SM90) is not None
    assert not _is_tc(lower(spec, SM90))


PAGED_TC = {"paged_prefill+wgmma": (GALLERY["paged_prefill"].spec, {"mma": "wgmma"}),
            "paged_prefill+mma_sync": (GALLERY["paged_prefill"].spec, {"mma": "mma_sync"}),
            # a sliding window over 32-key pages, bf16, GQA 8
            "paged32_window_bf16+wgmma": (Attention(num_heads=16, num_kv_heads=2, head_dim=128, dtype="bfloat16",
                                                    mask=masks.sliding_window(100), kv_layout=Paged(32)),
                                          {"mma": "wgmma"})}


def test_paged_prefill_takes_tensor_cores():
    """A paged cache takes the tensor-core kernel by default, the page table read per 16-byte
    row chunk; a SIMT knob in the config still selects the SIMT kernel."""
    spec = GALLERY["paged_prefill"].spec
    assert tensorcore.unsupported_reason(spec, SM90) is None
    assert _is_tc(lower(spec, SM90)) and _is_tc(lower(spec, "cuda-sm80"))
    assert not _is_tc(lower(spec, SM90, {"block_q": 32}))
    for spec, config in PAGED_TC.values():
        low = lower(spec, SM90, config)
        assert _is_tc(low) and "PAGE_TABLE[b, " in low.mod.script()
    reason = tensorcore.unsupported_reason
    assert "tile map" in reason(Attention(num_heads=2, head_dim=64, mask=masks.document(), kv_layout=Paged(16)), SM90)
    with pytest.raises(ValueError, match="tile_map needs a contiguous cache"):
        lower(GALLERY["paged_prefill"].spec, SM90, {"mma": "wgmma", "tile_map": True})


def test_reasons_name_the_field():
    reason = tensorcore.unsupported_reason
    assert "float32" in reason(Attention(num_heads=2, head_dim=64, dtype="float32"), SM90)
    assert "head_dim=72" in reason(Attention(num_heads=2, head_dim=72), SM90)
    assert "cache" in reason(Attention(num_heads=2, head_dim=64, phase=Decode(1)), SM90)
    assert "CUDA" in reason(Attention(num_heads=2, head_dim=64), get_target("cpu"))


def test_simt_knobs_select_the_simt_kernel():
    spec = GALLERY["causal"].spec
    assert not _is_tc(lower(spec, SM90, {"block_q": 64, "block_k": 32}))
    assert _is_tc(lower(spec, SM90, {"mma": "mma_sync", "warps": 4, "block_n": 32, "q_in_registers": True, "m_tiles": 1}))


# ----------------------------------------------------------------------------- tile bounds


def test_exact_interval_only_for_conjunctions_of_key_bounds():
    exact = lambda m: tensorcore.exact_interval(m.expr)
    assert exact(masks.full()) and exact(masks.causal()) and exact(masks.sliding_window(64))
    assert not exact(masks.prefix_lm(64))         # an `|`: the interval is a hull
    assert not exact(masks.document())            # a runtime tensor
    assert not exact(masks.dilated(256, 4))       # a modular pattern


def test_causal_tiles_have_band_and_full_bounds():
    args = sig.program_args(GALLERY["causal"].spec)
    ctx = tensorcore.context(GALLERY["causal"].spec, {"warps": 4, "block_n": 64, "q_in_registers": True, "m_tiles": 1, "tile_map": False}, args)
    # keys up to the last row's position are visited, and a tile is full below the first row's
    assert ctx["kv_hi"] == "(q_last + kvl - lq)" and ctx["kv_lo"] is None
    assert ctx["full_hi"] == "(q0 + kvl - lq)" and ctx["full_lo"] == "0"
    doc = tensorcore.context(GALLERY["document"].spec, {"warps": 4, "block_n": 64, "q_in_registers": True, "m_tiles": 1, "tile_map": True},
                             sig.program_args(GALLERY["document"].spec))
    assert doc["full_lo"] is None and doc["kv_hi"] == "(q_last + kvl - lq)"


def test_window_tiles_are_a_band_and_full_in_its_core():
    spec = GALLERY["sliding_window"].spec  # window 256, causal
    ctx = tensorcore.context(spec, {"warps": 4, "block_n": 64, "q_in_registers": False, "m_tiles": 2, "tile_map": False},
                             sig.program_args(spec))
    # visited: from the first row's oldest key to the last row's newest
    assert (ctx["kv_lo"], ctx["kv_hi"]) == ("(q0 + kvl - lq - 255)", "(q_last + kvl - lq)")
    # no mask: keys every row of the tile sees (the last row's oldest .. the first row's newest)
    assert (ctx["full_lo"], ctx["full_hi"]) == ("(q_last + kvl - lq - 255)", "(q0 + kvl - lq)")


# ----------------------------------------------------------------------------- tile map


def test_tile_map_for_masks_that_are_not_one_interval():
    on = lambda name: load_schedule("attention_cuda_tc").default(GALLERY[name].spec, SM90)["tile_map"]
    assert not any(on(n) for n in ("full", "causal", "sliding_window", "softcap", "gqa"))
    assert all(on(n) for n in ("document", "longformer", "block_sparse", "prefix_lm", "dilated", "bigbird"))
    assert tile_map.map_heads(GALLERY["document"].spec) == 1
    assert tile_map.map_heads(EXTRA["d64_head_map"]) == 4


def test_tile_map_program():
    spec = GALLERY["document"].spec
    low = lower(spec, SM90)
    assert [c.func for c in low.calls] == ["tile_state", "tile_list", "attention"]
    scratch = {a.name: a for a in low.args if a.role == "scratch"}
    cfg = load_schedule("attention_cuda_tc").default(spec, SM90)
    bm, bn = 16 * cfg["m_tiles"] * cfg["warps"], cfg["block_n"]
    sizes = {"batch": 3, "q_len": 1000, "kv_len": 1001}
    assert scratch["tile_list"].concrete_shape(sizes) == (3, 1, -(-1000 // bm), -(-1001 // bn))
    assert scratch["tile_count"].concrete_shape(sizes) == (3, 1, -(-1000 // bm))
    # the band-only kernel is still one knob away
    assert [c.func for c in lower(spec, SM90, {"tile_map": False}).calls] == ["attention"]


def test_static_conjuncts_mask_tiles_where_the_tensor_conjuncts_hold():
    """Document ids within a causal mask: the map gives a partial tile where every element the
    causal conjunct sees is in one document a kind of its own (entry % 4 == 2), masked by the
    causal conjunct alone, with no tensor read; masks that read only tensors, or none, have no
    such kind."""
    doc = GALLERY["document"].spec
    assert tile_map.static_part(doc).same(E.kv_idx <= E.q_pos)
    parts = E.chain((E.kv_idx < 3) & (E.q_idx > 1) & (E.kv_idx > 0), "and")
    assert [p.same(c) for p, c in zip(parts, (E.kv_idx < 3, E.q_idx > 1, E.kv_idx > 0))] == [True] * 3
    for name in ("block_sparse", "prefix_lm", "longformer"):
        assert tile_map.static_part(GALLERY[name].spec) is None, name
    for mma in ("wgmma", "mma_sync"):
        text = lower(doc, SM90, {"mma": mma}).mod.script()
        assert "count_s" in text and "% 4 == 2" in text, mma
    text = lower(GALLERY["prefix_lm"].spec, SM90).mod.script()
    assert "count_s" not in text and "% 4 == 2" not in text and "% 4 == 1" in text


# ----------------------------------------------------------------------------- knobs


def test_knobs_are_validated():
    sched = load_schedule("attention_cuda_tc")
    spec = Attention(num_heads=2, head_dim=256)
    assert sched.default(spec, SM90)["q_in_registers"] is False  # the 256-wide O takes them
    assert sched.default(Attention(num_heads=2, head_dim=128), SM90, "mma_sync") == {
        "mma": "mma_sync", "warps": 4, "m_tiles": 2, "block_n": 64, "q_in_registers": False,
        "tile_map": False, "overlap": False}
    doc = GALLERY["document"].spec
    with pytest.raises(ValueError, match="block_n >= 32"):  # caught by the tuner's check on an H100
        sched.validate(doc, SM90, {**sched.default(doc, SM90), "block_n": 16})
    with pytest.raises(ValueError, match="tile_map must be a bool"):
        sched.validate(spec, SM90, {**sched.default(spec, SM90), "tile_map": 1})
    with pytest.raises(ValueError, match="lazy_rescale needs mma='wgmma'"):
        sched.validate(spec, SM90, {**sched.default(spec, SM90), "lazy_rescale": True})
    with pytest.raises(ValueError, match="lazy_rescale must be a bool"):
        sched.validate(doc, SM90, {**sched.default(doc, SM90), "lazy_rescale": "yes"})
    with pytest.raises(ValueError, match="registers"):
        sched.validate(spec, SM90, {"warps": 4, "block_n": 128, "q_in_registers": True, "m_tiles": 1, "tile_map": False})
    with pytest.raises(ValueError, match="warps"):
        sched.validate(spec, SM90, {"warps": 3, "block_n": 16, "q_in_registers": False, "m_tiles": 1, "tile_map": False})
    with pytest.raises(ValueError, match="unknown"):
        sched.validate(spec, SM90, {"warps": 4, "block_n": 16, "q_in_registers": False, "m_tiles": 1, "tile_map": False, "block_q": 64})


def test_tma_loads_by_a_producer_warpgroup_on_mbarriers():
    """tma: the host encodes one tensor map per Q/K/V, a producer warpgroup (setmaxnreg down,
    the consumers up) issues bulk tensor copies; the loop has no cp.async and no CTA barrier."""
    spec = GALLERY["causal"].spec
    script = lower(spec, SM90, TMA).mod.script()
    assert script.count("runtime.cuTensorMapEncodeTiled") == 3
    # the only copies: 2 boxes (64 channels each) of Q, of K and of V, from the tensor maps
    assert script.count("T.ptx.cp(") == 6
    assert all(script.count(f"T.address_of({x}_map)") == 2 for x in "QKV")
    assert script.count("tvm_storage_sync") == 1  # after the mbarrier init only
    assert 'setmaxnreg(24, "dec"' in script and 'setmaxnreg(240, "inc"' in script
    assert "tirx.launch_bounds_min_blocks_per_sm" in script
    sched = load_schedule("attention_cuda_tc")
    # the default wherever one tensor map serves each tensor (bhsd, bshd), not otherwise
    assert sched.default(spec, SM90)["tma"] and sched.default(EXTRA["d64_bshd_document"], SM90)["tma"]
    assert not sched.default(PACKED["d64_thd_causal_sinks"], SM90)["tma"]
    assert not sched.default(GALLERY["paged_prefill"].spec, SM90)["tma"]
    for bad, why in ((PACKED["d64_thd_causal_sinks"], "packed sequences"),
                     (GALLERY["paged_prefill"].spec, "a paged cache")):
        with pytest.raises(ValueError, match=f"tma needs a contiguous bhsd or bshd layout.*{why}"):
            lower(bad, SM90, TMA)
    with pytest.raises(ValueError, match="tma needs mma='wgmma'"):
        lower(spec, SM90, {"mma": "mma_sync", "tma": True})
    with pytest.raises(ValueError, match="tma must be a bool"):
        sched.validate(spec, SM90, {**sched.default(spec, SM90), "tma": 1})
    for bad in ({"mma": "wgmma", "tma": False, "pingpong": True}, {**PINGPONG, "overlap": False},
                {**PINGPONG, "warps": 4}):
        with pytest.raises(ValueError, match="pingpong needs tma, overlap and warps=8"):
            lower(spec, SM90, bad)
    # tma_store: O staged in Q's region, one bulk tensor store per 64 channels and warpgroup
    staged = lower(spec, SM90, TMA_STORE).mod.script()
    assert staged.count("runtime.cuTensorMapEncodeTiled") == 4 and staged.count("T.address_of(O_map)") == 2
    assert "O[" not in staged.replace("O_map", "")  # no thread writes O itself
    with pytest.raises(ValueError, match="tma_store needs tma"):
        lower(spec, SM90, {"mma": "wgmma", "tma": False, "tma_store": True})
    # ... persistent: staged in a region of its own after V, the copy waited for (its read) only
    # before the region's next use and once after the tile loop
    kept = lower(spec, SM90, {**PERSISTENT, "tma_store": True}).mod.script()
    assert kept.count('"wait_group", "read"') == 2 and kept.count("T.address_of(O_map)") == 2
    with pytest.raises(ValueError, match="tma_store needs mma='wgmma'"):
        lower(spec, SM90, {"mma": "mma_sync", "tma_store": True})
    turns = lower(spec, SM90, PINGPONG).mod.script()
    assert turns.count('"sync", "")') == 1 and turns.count('"arrive", "")') == 2  # named barriers
    with pytest.raises(ValueError, match="persistent needs tma"):
        lower(spec, SM90, {"mma": "wgmma", "tma": False, "persistent": True})
    # head_major: the row tiles of one (batch, head) in a row (causal's default: 128-row tiles)
    ordered = lower(spec, SM90, {**PERSISTENT, "head_major": True}).mod.script()
    assert ordered.count("bx: T.let[T.int32] = t % ((LQ + 127) // 128)") == 2  # producer, consumers
    with pytest.raises(ValueError, match="head_major needs persistent"):
        lower(spec, SM90, {**TMA, "head_major": True})
    # cluster: clusters of two CTAs along x, each loading half of every K/V tile per 64-channel
    # atom by multicast (2 atoms x K, V); each release also arrives on the peer's empty barrier
    paired = lower(spec, SM90, {**TMA, "cluster": True}).mod.script()
    assert 'cr = T.launch_thread("clusterCtaIdx.x", 2)' in paired
    assert paired.count('"multicast::cluster"') == 4 and paired.count("T.ptx.mapa(") == 2
    assert paired.count('T.ptx.barrier("cluster", "arrive"') == 2  # after the init, before exit
    with pytest.raises(ValueError, match="cluster needs tma and not persistent"):
        lower(spec, SM90, {**PERSISTENT, "cluster": True})
    loop = lower(spec, SM90, PERSISTENT).mod.script()
    # one wave (132 SMs of sm_90a), the tiles in a loop in both roles, Q released per tile
    assert "T.min((LQ + 127) // 128 * 16 * B, 132)" in loop and loop.count("for ti in range(n_mine)") == 2
    assert loop.count("T.address_of(bars[9])") == 2  # Q empty: the producer's wait, the release


# ----------------------------------------------------------------------------- nvcc


@needs_nvcc
@pytest.mark.parametrize("name,arch", [("causal", "sm_90a"), ("mla_prefill", "sm_90a"),
                                       ("document", "sm_90a"), ("d256", "sm_90a"),
                                       ("prefix_lm", "sm_90a"),
                                       ("causal_bf16", "sm_80"), ("paged_prefill", "sm_80")])
def test_registers_without_stack_or_spills(name, arch, tmp_path):
    target = get_target("cuda-sm80" if arch == "sm_80" else "cuda-sm90a")
    spec = GALLERY[name].spec if name in GALLERY else EXTRA[name]
    ex = compile_lowered(lower(spec, target, {"mma": "mma_sync"}), target)
    source = next(m for m in ex.mod.imports if m.kind == "cuda").inspect_source()
    assert source.count("mma.sync.aligned.m16n8k16") > 0 and "cp.async.cg.shared.global" in source
    path = tmp_path / "kernel.cu"
    path.write_text(source)
    out = subprocess.run([NVCC, "-cubin", *NVCC_FLAGS, f"-arch={arch}", "--resource-usage", "-o",
                          str(tmp_path / "kernel.cubin"), str(path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    usage = out.stdout + out.stderr
    assert re.search(r"\b0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads", usage), usage


@needs_nvcc
@pytest.mark.parametrize("name", ["causal", "causal_plain", "document", "softcap", "d64_bshd_document",
                                  "causal_pingpong", "document_pingpong", "persistent causal",
                                  "persistent document", "persistent causal_pingpong",
                                  "causal_store", "d64_bshd_document_store", "causal_pingpong_store",
                                  "persistent causal_store", "persistent window_pingpong_store",
                                  "persistent document_pingpong_head_major_store",
                                  "window_cluster", "document_cluster", "causal_pingpong_cluster"])
def test_tma_kernel_compiles_without_spills_or_serialized_wgmma(name, tmp_path):
    spec, config = PERSISTENT_WGMMA[name.split()[1]] if name.startswith("persistent") else TMA_WGMMA[name]
    lowered = lower(spec, SM90, config)
    ex = compile_lowered(lowered, SM90)
    source = next(m for m in ex.mod.imports if m.kind == "cuda").inspect_source()
    assert "const __grid_constant__ CUtensorMap" in source and "__launch_bounds__(" in source
    # the launch reserves the whole tile buffer: the copy engine writes past what the threads
    # touch, and buffer compaction once cut it to 90% (an out-of-range TMA store on the GPU)
    elements = int(re.search(r'Sm = T.alloc_buffer\(\((\d+),\)', lowered.mod.script()).group(1))
    assert re.search(rf"store i64 {2 * elements}, ", ex.mod.inspect_source("ll")), "dynamic shared memory"
    path = tmp_path / "kernel.cu"
    path.write_text(source)
    out = subprocess.run([NVCC, "-cubin", *NVCC_FLAGS, "-arch=sm_90a", "--resource-usage", "-o",
                          str(tmp_path / "kernel.cubin"), str(path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    usage = out.stdout + out.stderr
    assert all(n == "0" for n in re.findall(r"(\d+) bytes spill stores", usage)), usage
    # C7512 / C7520: wgmma serialized (registers, or a divergent path); C7508: setmaxnreg ignored
    assert not re.search(r"C75(08|12|20)", usage), usage


# ----------------------------------------------------------------------------- GPU


def prebuild(target: str = "cuda-sm90a") -> None:
    """Fill the build cache for a GPU host that has only TVM's runtime."""
    for spec in [GALLERY[n].spec for n in GALLERY_TC] + list(EXTRA.values()):
        ensure_cached(spec, target)
    for name, config in MAP_SWAPPED.items():
        ensure_cached(GALLERY[name].spec, target, config)
    for spec in PACKED.values():
        ensure_cached(spec, target)
    for spec, config in PAGED_TC.values():
        ensure_cached(spec, target, config)
    for spec, config in _wgmma_builds():
        ensure_cached(spec, target, config)
    for name in CROSS_LENGTH:
        for config in CROSS_CONFIGS.values():
            ensure_cached(GALLERY[name].spec, target, config)


def _check(spec, lengths, config=None, batch=None):
    kernel = build(spec, "cuda", config)
    rng = np.random.default_rng(np.random.SeedSequence())
    for length in lengths:
        result = check_length(kernel, length, batch=batch or (2 if length <= 257 else 1), rng=rng)
        assert result.passed, (f"length {length}, seed {rng.bit_generator.seed_seq.entropy}", result.errors)


# the wgmma kernel loading by cp.async: no producer warpgroup, so no persistent loop, turns or
# TMA store either
CP_ASYNC = {"mma": "wgmma", "tma": False, "tma_store": False, "persistent": False, "pingpong": False}


# queries and keys of different lengths, bottom-right aligned: chunked prefill (a few queries
# against a longer cache) and more queries than keys (causal: the first rows see no key)
CROSS_LENGTH = ["full", "causal", "sliding_window", "gqa", "softcap"]
CROSS_CONFIGS = {"tma": {"mma": "wgmma"}, "cp_async": CP_ASYNC,
                 "mma_sync": {"mma": "mma_sync"}}


@pytest.mark.gpu
@pytest.mark.parametrize("kind", sorted(CROSS_CONFIGS))
@pytest.mark.parametrize("name", CROSS_LENGTH)
def test_q_len_differs_from_kv_len_on_gpu(name, kind):
    from attngen.check import check_inputs

    spec = GALLERY[name].spec
    kernel = build(spec, "cuda", CROSS_CONFIGS[kind])
    rng = np.random.default_rng(np.random.SeedSequence())
    for q_len, kv_len in ((1, 1000), (65, 1000), (1000, 65), (130, 4097)):
        sizes = {"batch": 2, "heads": spec.num_heads, "q_len": q_len, "kv_len": kv_len}
        result = check_inputs(kernel, kernel.family.sample(spec, sizes, rng), q_len)
        assert result.passed, (f"q {q_len} kv {kv_len}, seed {rng.bit_generator.seed_seq.entropy}",
                               result.errors)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["longformer", "document"])
def test_kept_and_planned_tile_maps_on_gpu(name):
    """Calls after the first with the same sizes: longformer's mask reads no tensor, so the driver
    reuses the map it kept; document's reads the ids, so a plan built once from them serves
    calls with fresh q, k, v and the same ids.  Float64 references, NaN-poisoned outputs."""
    from attngen.check import check_inputs, feed

    spec = GALLERY[name].spec
    kernel = build(spec, "cuda")
    fam = kernel.family
    rng = np.random.default_rng(np.random.SeedSequence())
    for length in (65, 1000):
        sizes = {"batch": 2, "heads": spec.num_heads, "q_len": length, "kv_len": length}
        first = fam.sample(spec, sizes, rng)
        plan = None if tile_map.static(spec) else kernel.plan(feed(kernel, first))
        for _ in range(3):
            x = {**fam.sample(spec, sizes, rng), **{t.name: first[t.name] for t in spec.runtime_tensors}}
            result = check_inputs(kernel, x, length, plan=plan)
            assert result.passed, (name, length, result.errors)
    assert bool(kernel._kept) == tile_map.static(spec)


def _expected_tile_list(spec, config, tensors, b, h, length):
    """The map's list for row tiles of (batch b, map head h), from the mask in numpy: the band's
    non-empty tiles in increasing kt, as kt * 4 + kind (1 full, 2 partial where the static
    conjuncts see the same elements, 0 partial).  A tile is full only if all block_n keys of
    every real row are visible: keys past the length are not."""
    from attngen.visual import evaluate_grid, tile_counts, tile_shape, visited_tiles

    def seen(mask):
        return tile_counts(evaluate_grid(mask, length, length, tensors, b, h), bm, bn)[0]

    bm, bn = tile_shape(spec, None, config)
    count = seen(spec.mask.expr)
    static = tile_map.static_part(spec)
    count_s = seen(static) if static is not None else None
    band = visited_tiles(spec, length, bm, bn)
    rows = np.minimum(bm, length - bm * np.arange(count.shape[0]))
    out = []
    for qt in range(count.shape[0]):
        entries = []
        for kt in np.flatnonzero(band[qt] & (count[qt] > 0)):
            full = count[qt, kt] == rows[qt] * bn
            kind = 1 if full else 2 if count_s is not None and count_s[qt, kt] == count[qt, kt] else 0
            entries.append(int(kt) * 4 + kind)
        out.append(entries)
    return out


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["document", "prefix_lm", "block_sparse", "d64_head_map", "document_mma_sync"])
def test_tile_map_matches_the_mask_on_gpu(name):
    """The map the GPU computes from fresh runtime tensors lists exactly the tiles, and the
    kinds, that the mask gives in numpy (a wrong kind 2 would be caught by the outputs, a
    missed one only here: it costs speed)."""
    from attngen.check import feed

    spec = EXTRA[name] if name in EXTRA else GALLERY[name.removesuffix("_mma_sync")].spec
    given = MMA_SYNC if name.endswith("_mma_sync") else {}
    kernel = build(spec, "cuda", given)
    # merged over the named kernel's default, as lower() does
    config = {**load_schedule(tensorcore.SCHEDULE).default(spec, kernel.target, given.get("mma")), **given}
    rng = np.random.default_rng(np.random.SeedSequence())
    for length in (65, 1000):
        x = kernel.family.sample(spec, {"batch": 2, "heads": spec.num_heads, "q_len": length,
                                        "kv_len": length}, rng)
        plan = kernel.plan(feed(kernel, x))
        tiles, counts = (plan.buffers[n].cpu().numpy() for n in ("tile_list", "tile_count"))
        tensors = {t.name: x[t.name] for t in spec.runtime_tensors}
        for b in range(2):
            for h in range(counts.shape[1]):
                want = _expected_tile_list(spec, config, tensors, b, h, length)
                got = [list(tiles[b, h, qt, :counts[b, h, qt]]) for qt in range(counts.shape[2])]
                assert got == want, (name, length, b, h)


@pytest.mark.gpu
@pytest.mark.parametrize("name", GALLERY_TC)
def test_gallery_spec_on_gpu(name):
    _check(GALLERY[name].spec, (1, 63, 64, 65, 1000))


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(EXTRA))
def test_extra_shapes_on_gpu(name):
    _check(EXTRA[name], (1, 17, 64, 65, 130, 1000))


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["causal", "gqa", "document", "longformer", "block_sparse"])
def test_long_on_gpu(name):
    _check(GALLERY[name].spec, (4096,))


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(PACKED))
def test_packed_on_gpu(name):
    _check(PACKED[name], (1, 63, 64, 65, 1000, 4096), batch=4)


# the same masks through the other loop: the map on an interval mask, the band on a map mask
MAP_SWAPPED = {"causal": {"tile_map": True}, "sliding_window": {"tile_map": True},
               "document": {"tile_map": False}, "prefix_lm": {"tile_map": False}}


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(MAP_SWAPPED))
def test_tile_map_swapped_on_gpu(name):
    _check(GALLERY[name].spec, (1, 65, 1000), MAP_SWAPPED[name])


# ----------------------------------------------------------------------------- GPU, wgmma
# the same checks through attention_wgmma.j2 (the `mma` knob), for every spec it serves


WGMMA = {"mma": "wgmma"}
WGMMA_PLAIN = {"mma": "wgmma", "overlap": False, "pingpong": False}  # no S/PV overlap (nor turns)
MMA_SYNC = {"mma": "mma_sync"}
GALLERY_WGMMA = [n for n in GALLERY_TC
                 if load_schedule("attention_cuda_tc").wgmma_unsupported_reason(GALLERY[n].spec, SM90) is None]
EXTRA_WGMMA = {**{n: s for n, s in EXTRA.items()
                  if load_schedule("attention_cuda_tc").wgmma_unsupported_reason(s, SM90) is None},
               "d128_empty_rows": Attention(num_heads=2, head_dim=128, mask=LATE_START)}
LONG_WGMMA = ["causal", "gqa", "sliding_window", "document", "softcap"]
PLAIN_WGMMA = ["causal", "document"]
LAZY = {"mma": "wgmma", "lazy_rescale": True}  # FlashAttention-4's conditional rescaling
LAZY_WGMMA = ["causal", "sliding_window", "document", "softcap", "sinks"]
# a TMA producer warpgroup on mbarriers (the sm_90a default for bhsd / bshd), by name: both
# schedules, the band, full tiles, the tile map, a score mod, sinks, GQA, bshd at d64; O by
# plain stores, one CTA per row tile (the defaults store O by TMA, and a window's loop is
# persistent: those are the WGMMA runs)
TMA = {"mma": "wgmma", "tma": True, "tma_store": False, "persistent": False, "pingpong": False}
TMA_WGMMA = {"causal": (GALLERY["causal"].spec, TMA), "causal_plain": (GALLERY["causal"].spec, {**TMA, "overlap": False}),
             "full": (GALLERY["full"].spec, TMA), "gqa": (GALLERY["gqa"].spec, TMA),
             "sliding_window": (GALLERY["sliding_window"].spec, TMA), "document": (GALLERY["document"].spec, TMA),
             "document_plain": (GALLERY["document"].spec, {**TMA, "overlap": False}),
             "softcap": (GALLERY["softcap"].spec, TMA), "sinks": (GALLERY["sinks"].spec, TMA),
             "d64_bshd_document": (EXTRA["d64_bshd_document"], TMA),
             "causal_bf16": (GALLERY["causal_bf16"].spec, TMA)}
# ... and the warpgroups taking turns on named barriers (two warpgroups, overlap)
PINGPONG = {**TMA, "pingpong": True, "warps": 8, "block_n": 128, "overlap": True}
TMA_WGMMA.update({f"{n}_pingpong": (GALLERY[n].spec, PINGPONG)
                  for n in ("causal", "full", "gqa", "document", "softcap", "sinks")})
# ... and O stored through shared memory by the bulk tensor copy
TMA_STORE = {**TMA, "tma_store": True}
TMA_WGMMA.update({"causal_store": (GALLERY["causal"].spec, TMA_STORE),
                  "document_store": (GALLERY["document"].spec, TMA_STORE),
                  "d64_bshd_document_store": (EXTRA["d64_bshd_document"], TMA_STORE),
                  "causal_pingpong_store": (GALLERY["causal"].spec, {**PINGPONG, "tma_store": True})})
# ... and clusters of two CTAs sharing each K/V tile by multicast (a band, a tile map of
# 2 x block_m rows, two warpgroups with turns)
CLUSTER = {**TMA, "cluster": True}
TMA_WGMMA.update({"window_cluster": (GALLERY["sliding_window"].spec, CLUSTER),
                  "document_cluster": (GALLERY["document"].spec, CLUSTER),
                  "causal_pingpong_cluster": (GALLERY["causal"].spec, {**PINGPONG, "cluster": True}),
                  "d64_bshd_document_cluster": (EXTRA["d64_bshd_document"], CLUSTER)})
# ... and one wave of CTAs looping over the row tiles (each spec's default tile shape)
PERSISTENT = {**TMA, "persistent": True}
PERSISTENT_WGMMA = {"causal": (GALLERY["causal"].spec, PERSISTENT),
                    "causal_plain": (GALLERY["causal"].spec, {**PERSISTENT, "overlap": False}),
                    "sliding_window": (GALLERY["sliding_window"].spec, PERSISTENT),
                    "document": (GALLERY["document"].spec, PERSISTENT),
                    "softcap": (GALLERY["softcap"].spec, PERSISTENT),
                    "causal_pingpong": (GALLERY["causal"].spec, {**PINGPONG, "persistent": True}),
                    # O stored by TMA from a region of its own, the copy running under the next tile
                    "causal_store": (GALLERY["causal"].spec, {**PERSISTENT, "tma_store": True}),
                    "document_store": (GALLERY["document"].spec, {**PERSISTENT, "tma_store": True}),
                    # two warpgroups (128-row tiles), no turns: the fastest on the document
                    # after the map's static kind (session 10), a candidate default
                    "document_wg2_store": (GALLERY["document"].spec,
                                           {**PERSISTENT, "warps": 8, "block_n": 128, "tma_store": True}),
                    "window_pingpong_store": (GALLERY["sliding_window"].spec,
                                              {**PINGPONG, "persistent": True, "tma_store": True}),
                    # a (batch, head)'s row tiles in a row
                    "window_head_major": (GALLERY["sliding_window"].spec, {**PERSISTENT, "head_major": True}),
                    "document_pingpong_head_major_store": (
                        GALLERY["document"].spec,
                        {**PINGPONG, "persistent": True, "head_major": True, "tma_store": True}),
                    "d64_bshd_document": (EXTRA["d64_bshd_document"], PERSISTENT)}


def _wgmma_builds():
    out = [(GALLERY[n].spec, WGMMA) for n in GALLERY_WGMMA]
    out += [(s, WGMMA) for s in EXTRA_WGMMA.values()] + [(s, WGMMA) for s in PACKED.values()]
    out += [(GALLERY[n].spec, WGMMA_PLAIN) for n in PLAIN_WGMMA]
    out += [(GALLERY[n].spec, LAZY) for n in LAZY_WGMMA]
    out += [(GALLERY[n].spec, {**LAZY, "overlap": False}) for n in PLAIN_WGMMA]
    out += list(TMA_WGMMA.values()) + list(PERSISTENT_WGMMA.values())
    # where wgmma is the default on sm_90a, mma.sync (sm_80's kernel) is checked by name
    return out + [(GALLERY[n].spec, MMA_SYNC) for n in GALLERY_WGMMA] + \
        [(s, MMA_SYNC) for s in {**EXTRA_WGMMA, **PACKED}.values()]


def test_wgmma_serves_the_interval_map_and_mod_specs():
    assert {"full", "causal", "causal_bf16", "gqa", "mqa", "sliding_window", "document",
            "softcap", "alibi", "sinks", "prefix_lm"} <= set(GALLERY_WGMMA)
    assert "mla_prefill" not in GALLERY_WGMMA  # head_dim 192 / 128


@pytest.mark.gpu
@pytest.mark.parametrize("name", GALLERY_WGMMA)
def test_wgmma_gallery_spec_on_gpu(name):
    _check(GALLERY[name].spec, (1, 63, 64, 65, 1000), WGMMA)


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(EXTRA_WGMMA))
def test_wgmma_extra_shapes_on_gpu(name):
    _check(EXTRA_WGMMA[name], (1, 17, 64, 65, 130, 1000), WGMMA)


@pytest.mark.gpu
@pytest.mark.parametrize("name", LONG_WGMMA)
def test_wgmma_long_on_gpu(name):
    _check(GALLERY[name].spec, (4096,), WGMMA)


@pytest.mark.gpu
@pytest.mark.parametrize("name", PLAIN_WGMMA)
def test_wgmma_plain_schedule_on_gpu(name):
    _check(GALLERY[name].spec, (1, 65, 1000), WGMMA_PLAIN)


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(PAGED_TC))
def test_paged_prefill_tensor_cores_on_gpu(name):
    """Shuffled pages, mixed cache lengths (the family's sample), query lengths 1 .. 1000."""
    spec, config = PAGED_TC[name]
    _check(spec, (1, 63, 64, 65, 1000), config, batch=3)


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(TMA_WGMMA))
def test_wgmma_tma_on_gpu(name):
    spec, config = TMA_WGMMA[name]
    _check(spec, (1, 63, 64, 65, 1000, 4096), config)


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(PERSISTENT_WGMMA))
def test_wgmma_persistent_on_gpu(name):
    """Three batches of 16 heads: at length 1000, 384-768 row tiles over 132-264 CTAs, so most
    CTAs run two or three tiles and the phases carry across them."""
    spec, config = PERSISTENT_WGMMA[name]
    _check(spec, (1, 63, 65, 1000), config, batch=3)


@pytest.mark.gpu
@pytest.mark.parametrize("name", LAZY_WGMMA)
def test_wgmma_lazy_rescale_on_gpu(name):
    _check(GALLERY[name].spec, (1, 65, 1000, 4096), LAZY)


@pytest.mark.gpu
@pytest.mark.parametrize("config", [LAZY, {**LAZY, "overlap": False}, WGMMA])
def test_wgmma_growing_max_on_gpu(config):
    """Random keys keep a row's max within 8 (log2 units) of its first tile's, so the lazy
    reference would rarely move; here the keys grow along the sequence (logits' spread from
    ~1 to ~13 standard deviations), so it moves on many tiles and every rescale path runs."""
    from attngen.check import check_inputs

    spec = GALLERY["causal"].spec
    kernel = build(spec, "cuda", config)
    rng = np.random.default_rng(np.random.SeedSequence())
    length = 2000
    inputs = kernel.family.sample(spec, {"batch": 1, "heads": spec.num_heads, "q_len": length,
                                         "kv_len": length}, rng)
    grown = inputs["k"] * (1 + 12 * np.arange(length) / length)[:, None]
    inputs["k"] = grown.astype(spec.dtype).astype(inputs["k"].dtype)  # on the kernel's grid again
    result = check_inputs(kernel, inputs, length)
    assert result.passed, (f"seed {rng.bit_generator.seed_seq.entropy}", result.errors)


@pytest.mark.gpu
@pytest.mark.parametrize("name", GALLERY_WGMMA)
def test_mma_sync_gallery_spec_on_gpu(name):
    """On sm_90a these specs take wgmma by default: the mma.sync kernel (sm_80's) by name."""
    _check(GALLERY[name].spec, (1, 63, 64, 65, 1000), MMA_SYNC)


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted({**EXTRA_WGMMA, **PACKED}))
def test_mma_sync_extra_and_packed_on_gpu(name):
    spec = {**EXTRA_WGMMA, **PACKED}[name]
    _check(spec, (1, 17, 64, 65, 130, 1000), MMA_SYNC, batch=4 if name in PACKED else None)


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(PACKED))
def test_wgmma_packed_on_gpu(name):
    _check(PACKED[name], (1, 63, 64, 65, 1000, 4096), WGMMA, batch=4)
