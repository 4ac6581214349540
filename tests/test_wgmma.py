"""Hopper wgmma kernels (attngen/hopper.py).  CPU side: bad knobs and shapes are ValueErrors,
the templates build for sm_90a and nvcc compiles them with wgmma kept asynchronous (no C7514
serialization), without stack or spills.  GPU side (skipped without a GPU): small GEMMs and
attentions against float64 numpy, outputs poisoned with NaN; kernels come from
``$WGMMA_BUILD`` (``python benchmarks/wgmma.py build DIR`` on the build host) when set, else
they are built in-process (needs TVM's compiler)."""
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from attngen.hopper import attention_source, gemm_source
from attngen.runtime import NVCC_FLAGS
from attngen.tolerance import errors, passes

NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found")


@pytest.mark.parametrize("kwargs, words", [
    (dict(m=100, n=256, k=64), "m = 100"),
    (dict(m=128, n=256, k=96), "k = 96"),
    (dict(m=128, n=256, k=64, dtype="float32"), "dtype"),
    (dict(m=128, n=256, k=64, block_n=12), "block_n"),
    (dict(m=128, n=256, k=64, stages=6), "shared memory"),
])
def test_gemm_rejects(kwargs, words):
    with pytest.raises(ValueError, match=words):
        gemm_source(**kwargs)


@pytest.mark.parametrize("kwargs, words", [
    (dict(heads=32, head_dim=96), "head_dim"),
    (dict(heads=32, group=5), "group"),
    (dict(heads=32, block_n=24), "block_n"),
    (dict(heads=32, head_dim=256), "head_dim"),
    (dict(heads=32, block_n=256), "shared memory"),
])
def test_attention_rejects(kwargs, words):
    with pytest.raises(ValueError, match=words):
        attention_source(**kwargs)


def _ptxas_report(source: str, tmp_path) -> str:
    src = tmp_path / "k.cu"
    src.write_text(source)
    cmd = [NVCC, "-cubin", *NVCC_FLAGS, "-arch=sm_90a", "--resource-usage",
           "-o", str(tmp_path / "k.cubin"), str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout + proc.stderr


@needs_nvcc
@pytest.mark.parametrize("kind", ["gemm", "attention", "attention overlap"])
def test_builds_async_without_stack(kind, tmp_path):
    from attngen.export import cuda_source_of
    from attngen.hopper import build

    source = (gemm_source(128, 256, 128) if kind == "gemm"
              else attention_source(8, 64, causal=True, warpgroups=1, block_n=64,
                                    overlap=kind.endswith("overlap")))
    cuda = cuda_source_of(build(source))
    assert "wgmma.mma_async.sync.aligned" in cuda and "wgmma.wait_group" in cuda
    report = _ptxas_report(cuda, tmp_path)
    assert "C7514" not in report and "serialized" not in report, report
    no_stack = r"\b0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads"
    assert re.search(no_stack, report), report


# ---------------------------------------------------------------------------- GPU


def _kernel(file: str, source: str):
    build_dir = os.environ.get("WGMMA_BUILD")
    if build_dir:
        from benchmarks.wgmma import _load

        return _load(build_dir, file)
    from attngen.hopper import build

    return build(source)[file]


@pytest.mark.gpu
@pytest.mark.parametrize("case", range(3))
def test_gemm_on_gpu(case):
    import torch

    from benchmarks.wgmma import GEMMS

    g = GEMMS[case]
    fn = _kernel(g.file, g.source())
    dt = getattr(torch, g.dtype)
    a = torch.randn(g.m, g.k, device="cuda").to(dt)
    b = torch.randn(g.n, g.k, device="cuda").to(dt)
    c = torch.full((g.m, g.n), float("nan"), device="cuda", dtype=dt)
    fn(a, b, c)
    ref = a.cpu().double().numpy() @ b.cpu().double().numpy().T
    assert passes(errors(c.float().cpu().numpy(), ref), g.dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("case", ["dense", "causal", "dense overlap", "causal bf16 gqa4 overlap",
                                  "causal bn64", "dense d64 1wg overlap"])
@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 127, 127), (2, 200, 333), (1, 255, 256)])
def test_attention_on_gpu(case, shape):
    import torch

    from benchmarks.wgmma import ATTNS, attention_reference

    a = next(x for x in ATTNS if x.name == case)
    fn = _kernel(a.file, a.source())
    b, lq, lk = shape
    dt = getattr(torch, a.dtype)
    q = torch.randn(b, a.heads, lq, a.head_dim, device="cuda").to(dt)
    k, v = (torch.randn(b, a.heads // a.group, lk, a.head_dim, device="cuda").to(dt) for _ in "kv")
    o = torch.full_like(q, float("nan"))
    fn(q, k, v, o)
    ref = attention_reference(q, k, v, a.causal)
    assert passes(errors(o.float().cpu().numpy(), np.asarray(ref)), a.dtype)


# ------------------------------------------------- attngen's prefill path (attention_wgmma.j2)
# The wgmma kernel behind attngen.compile / builder.lower: the `mma` knob of
# schedules/attention_cuda_tc.py.  Its GPU checks are in tests/test_prefill_tc.py.


def _prefill():
    from attngen import Attention, masks
    from attngen.resources import load_schedule
    from attngen.targets import get as get_target

    return load_schedule("attention_cuda_tc"), get_target("cuda-sm90a"), Attention, masks


def test_prefill_dispatch_follows_the_mma_knob():
    from attngen.builder import lower
    from attngen.gallery import GALLERY
    from attngen.targets import get as get_target

    sched, sm90, _, _ = _prefill()
    spec = GALLERY["causal"].spec
    wg = lower(spec, sm90, {"mma": "wgmma"}).mod.script()
    assert "T.ptx.wgmma(" in wg and "ptx_legacy.mma" not in wg
    assert "ptx_legacy.mma" in lower(spec, sm90, {"mma": "mma_sync"}).mod.script()
    # the default: wgmma on sm_90a only where it serves the spec and is switched on
    want = "wgmma" if sched.WGMMA_DEFAULT else "mma_sync"
    assert sched.default(spec, sm90)["mma"] == want
    assert sched.default(GALLERY["mla_prefill"].spec, sm90)["mma"] == "mma_sync"  # d 192/128
    assert sched.default(spec, get_target("cuda-sm80"))["mma"] == "mma_sync"
    # a map mask keeps its map under wgmma
    doc = lower(GALLERY["document"].spec, sm90, {"mma": "wgmma"})
    assert [c.func for c in doc.calls] == ["tile_state", "tile_list", "attention"]


@pytest.mark.parametrize("spec_kw, cfg, words", [
    (dict(head_dim=192, head_dim_v=128), {}, "head_dim = head_dim_v in"),
    (dict(head_dim=256), {}, "head_dim = head_dim_v in"),
    (dict(head_dim=128, layout="thd"), {"tile_map": True}, "packed"),
    (dict(head_dim=128, layout="thd"), {}, None),  # packed sequences: valid
    (dict(head_dim=128), {"m_tiles": 2}, "m_tiles must be 1"),
    (dict(head_dim=128), {"warps": 2}, "warps must be 4 or 8"),
    (dict(head_dim=128), {"q_in_registers": True}, "q_in_registers must be False"),
    (dict(head_dim=128), {"mma": "mma_sync", "overlap": True}, "overlap needs"),
    (dict(head_dim=128), {"mma": "tcgen05"}, "mma must be"),
    (dict(head_dim=128), {"block_n": 128, "warps": 4, "overlap": True}, None),  # valid
])
def test_prefill_wgmma_refusals_say_why(spec_kw, cfg, words):
    sched, sm90, Attention, masks = _prefill()
    spec = Attention(num_heads=4, mask=masks.causal(), **spec_kw)
    config = {**sched.wgmma_default(spec, sm90), **cfg}
    if words is None:
        sched.validate(spec, sm90, config)
        return
    with pytest.raises(ValueError, match=words):
        sched.validate(spec, sm90, config)


def test_prefill_wgmma_needs_sm90a():
    from attngen.targets import get as get_target

    sched, _, Attention, masks = _prefill()
    spec = Attention(num_heads=4, head_dim=128, mask=masks.causal())
    with pytest.raises(ValueError, match="sm_90a"):
        sched.validate(spec, get_target("cuda-sm80"), sched.wgmma_default(spec, get_target("cuda-sm80")))


@needs_nvcc
@pytest.mark.parametrize("name, cfg", [
    ("causal", {"overlap": False}),   # band + full tiles, the plain schedule
    ("softcap", {}),                  # score mod (tanh.approx), GQA
    ("thd causal sinks d64", {}),     # packed sequences, sinks, d64
    ("bshd document d64", {}),        # tile map, token-major layout
    ("causal", {"lazy_rescale": True}),                    # conditional rescale, overlap
    ("thd causal sinks d64", {"lazy_rescale": True, "overlap": False}),
    ("paged_prefill", {}),            # K/V rows through the page table
])
def test_prefill_wgmma_builds_async_without_stack(name, cfg, tmp_path):
    from attngen.builder import compile_lowered, lower
    from attngen.gallery import GALLERY

    sched, sm90, Attention, masks = _prefill()
    extra = {"bshd document d64": Attention(num_heads=4, head_dim=64, mask=masks.document(), layout="bshd"),
             "thd causal sinks d64": Attention(num_heads=4, num_kv_heads=2, head_dim=64,
                                               mask=masks.causal(), sinks=True, layout="thd")}
    spec = GALLERY[name].spec if name in GALLERY else extra[name]
    ex = compile_lowered(lower(spec, sm90, {"mma": "wgmma", **cfg}), sm90)
    cuda = next(m for m in ex.mod.imports if m.kind == "cuda").inspect_source()
    assert "wgmma.mma_async.sync.aligned" in cuda and "mma.sync.aligned.m16n8k16" not in cuda
    report = _ptxas_report(cuda, tmp_path)
    assert "C7514" not in report and "serialized" not in report, report
    no_stack = r"\b0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads"
    assert len(re.findall(no_stack, report)) == report.count("Function properties"), report


def test_prefill_wgmma_default_when_switched_on(monkeypatch):
    """What flipping WGMMA_DEFAULT does: wgmma for the specs it serves on sm_90a, mma_sync for
    the rest (wider or unequal heads, packed layouts, other archs)."""
    from attngen.gallery import GALLERY
    from attngen.targets import get as get_target

    sched, sm90, Attention, masks = _prefill()
    monkeypatch.setattr(sched, "WGMMA_DEFAULT", True)
    pick = lambda spec, target=sm90: sched.default(spec, target)["mma"]  # noqa: E731
    assert pick(GALLERY["causal"].spec) == "wgmma" and pick(GALLERY["document"].spec) == "wgmma"
    assert sched.default(GALLERY["document"].spec, sm90)["tile_map"] is True
    assert pick(GALLERY["mla_prefill"].spec) == "mma_sync"
    assert pick(Attention(num_heads=4, head_dim=128, head_dim_v=64)) == "mma_sync"
    assert pick(Attention(num_heads=4, head_dim=64, layout="thd", mask=masks.causal())) == "wgmma"
    assert pick(GALLERY["causal"].spec, get_target("cuda-sm80")) == "mma_sync"
    for name in ("causal", "softcap", "sinks", "document"):
        spec = GALLERY[name].spec
        sched.validate(spec, sm90, sched.default(spec, sm90))
    # through lower(): no config takes the default; a config without `mma` (a tuned record
    # written before the knob) stays mma.sync's
    from attngen.builder import lower

    spec = GALLERY["causal"].spec
    assert "T.ptx.wgmma(" in lower(spec, sm90).mod.script()
    assert "ptx_legacy.mma" in lower(spec, sm90, {"block_n": 32, "m_tiles": 2}).mod.script()


def test_prefill_wgmma_full_tiles_per_warpgroup():
    """A causal or windowed tile skips the mask per warpgroup: the bounds of its own 64 rows."""
    from attngen.gallery import GALLERY
    from attngen.softmax import signature as sig, tensorcore

    sched, sm90, _, _ = _prefill()
    spec = GALLERY["sliding_window"].spec  # window 256, causal
    cfg = {**sched.wgmma_default(spec, sm90), "warps": 8, "block_n": 128}  # two warpgroups
    ctx = tensorcore.wgmma_context(spec, sm90, cfg, tensorcore.context(spec, cfg, sig.program_args(spec)))
    assert (ctx["wg_full_lo"], ctx["wg_full_hi"]) == ("(wq_last + kvl - lq - 255)", "(wq0 + kvl - lq)")
    assert ctx["warpgroups"] == 2 and ctx["mma_dtype"] == "f16" and ctx["block_m"] == 128
    doc = GALLERY["document"].spec
    dcfg = sched.wgmma_default(doc, sm90)
    dctx = tensorcore.wgmma_context(doc, sm90, dcfg, tensorcore.context(doc, dcfg, sig.program_args(doc)))
    assert dctx["wg_full_lo"] is None and dctx["tile_map"]


def test_prefill_wgmma_default_tiles_follow_the_row_length():
    """Two warpgroups and 128-key tiles where rows see long runs of keys (full, causal, score
    mods); for a window (short rows, no map) the same, persistent and taking turns; one
    warpgroup and 64-key tiles where a tile map or packed sequences keep rows short (two CTAs
    per SM), unless the map's mask has a static part (document: two warpgroups, persistent).
    O leaves by a TMA store wherever K/V arrive by TMA."""
    from attngen.gallery import GALLERY

    sched, sm90, Attention, masks = _prefill()
    shape = lambda c: (c["warps"], c["block_n"], c["persistent"], c["pingpong"])  # noqa: E731
    for name in ("full", "causal", "gqa", "softcap", "alibi"):
        cfg = sched.wgmma_default(GALLERY[name].spec, sm90)
        assert shape(cfg) == (8, 128, False, False) and cfg["tma_store"], name
    cfg = sched.wgmma_default(GALLERY["sliding_window"].spec, sm90)
    assert shape(cfg) == (8, 128, True, True) and cfg["tma_store"]
    for name in ("block_sparse", "prefix_lm", "bigbird"):
        cfg = sched.wgmma_default(GALLERY[name].spec, sm90)
        assert shape(cfg) == (4, 64, False, False) and cfg["tma_store"], name
    # document ids within causal: a map with a static part, rows see whole documents
    cfg = sched.wgmma_default(GALLERY["document"].spec, sm90)
    assert shape(cfg) == (8, 128, True, False) and cfg["tma_store"] and cfg["tile_map"]
    packed = sched.wgmma_default(Attention(num_heads=4, head_dim=64, layout="thd",
                                           mask=masks.sliding_window(256)), sm90)
    assert shape(packed) == (4, 64, False, False) and not packed["tma"] and not packed["tma_store"]
    for name in ("full", "sliding_window", "document"):  # every default validates
        sched.validate(GALLERY[name].spec, sm90, sched.wgmma_default(GALLERY[name].spec, sm90))