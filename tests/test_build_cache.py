"""The on-disk kernel cache: hits rebuild nothing, CUDA entries carry their cubin."""
import hashlib
import json
import shutil

import numpy as np
import pytest

from attngen import Attention, masks
from attngen.builder import build, cache_dir, cache_key, compile_lowered, lower
from attngen.targets import get

SPEC = Attention(num_heads=2, head_dim=32, mask=masks.causal())


def test_cpu_hit_loads_without_lowering(monkeypatch):
    first = build(SPEC, "cpu")
    rng = np.random.default_rng()
    q, k, v = (rng.standard_normal((1, 2, 33, 32)).astype(np.float16) for _ in range(3))
    o1, _ = first(q, k, v)

    def no_lowering(*args, **kwargs):
        raise AssertionError("a cache hit must not lower or compile")

    monkeypatch.setattr("attngen.builder.lower", no_lowering)
    again = build(SPEC, "cpu")
    o2, _ = again(q, k, v)
    assert np.array_equal(o1.numpy(), o2.numpy())


def test_key_changes_with_config_and_target():
    cpu, cuda = get("cpu"), get("cuda-sm90a")
    assert cache_key(SPEC, cpu, {}) != cache_key(SPEC, cuda, {})
    assert cache_key(SPEC, cpu, {}) != cache_key(SPEC, cpu, {"block_q": 32})
    assert cache_key(SPEC, cpu, {}) == cache_key(SPEC, cpu, None)


def test_the_local_target_carries_the_gpus_count_of_sms(monkeypatch):
    """A persistent grid is sized by the target's SMs: a card with fewer than its target
    file's (an H100 PCIe's 114 against sm_90a's 132) gets a target named for its count, so the
    cache keys it apart, and the name reads back (tuning manifests, exports)."""
    from attngen import targets
    from attngen.gallery import GALLERY

    monkeypatch.setattr(targets, "local_cuda_arch", lambda: "sm_90a")
    monkeypatch.setattr(targets, "local_sm_count", lambda: 132)
    assert get("cuda") is get("cuda-sm90a")
    monkeypatch.setattr(targets, "local_sm_count", lambda: 114)
    pcie = get("cuda")
    assert (pcie.name, pcie.arch, pcie.sm_count) == ("cuda-sm90a-114sm", "sm_90a", 114)
    assert get(pcie.name) == pcie and cache_key(SPEC, pcie, {}) != cache_key(SPEC, get("cuda-sm90a"), {})
    window = lower(GALLERY["sliding_window"].spec, pcie).mod.script()  # persistent: a wave of 114 CTAs
    assert "T.min(" in window and ", 114)" in window
    monkeypatch.setattr(targets, "local_cuda_arch", lambda: "sm_89")
    monkeypatch.setattr(targets, "local_sm_count", lambda: 128)
    assert (get("cuda").name, get("cuda").arch, get("cuda").sm_count) == ("cuda-sm89-128sm", "sm_89", 128)
    for bad in ("cuda-x", "cuda-sm90a-0sm", "gpu"):
        with pytest.raises(ValueError, match="unknown target"):
            get(bad)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_cuda_entry_carries_a_verified_cubin(tmp_path):
    from attngen.builder import _write_entry
    from attngen.export import cuda_source_of

    target = get("cuda-sm90a")
    lowered = lower(SPEC, target)
    ex = compile_lowered(lowered, target)
    entry = tmp_path / "entry"
    _write_entry(entry, ex, lowered, target)
    meta = json.loads((entry / "meta.json").read_text())
    cubin = (entry / "kernel.cubin").read_bytes()
    assert cubin[:4] == b"\x7fELF"
    assert meta["cubin"]["sha256"] == hashlib.sha256(cubin).hexdigest()
    assert meta["cubin"]["source"] == hashlib.sha256(cuda_source_of(ex).encode()).hexdigest()
    assert [c["func"] for c in meta["calls"]] == [c.func for c in lowered.calls]


def test_cache_dir_is_private(tmp_path, monkeypatch):
    import stat

    monkeypatch.setenv("ATTNGEN_CACHE_DIR", str(tmp_path / "fresh"))
    path = cache_dir()
    assert path.is_dir() and stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


def test_attngen_build_stays_a_function_after_the_driver_is_imported():
    import attngen
    import attngen.builder  # noqa: F401  (the module behind it)

    assert callable(attngen.build) and attngen.build.__module__ == "attngen"


def test_a_hit_in_a_fresh_process_imports_no_tvm(tmp_path):
    """A cached kernel loads through tvm_ffi with TVM's runtime library only: the ``tvm``
    package (1.5 s of Python imports on a runtime-only GPU host) stays unimported."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "ATTNGEN_CACHE_DIR": str(tmp_path / "cache")}
    code = ("import sys, torch; from attngen import Attention, masks; from attngen.builder import build\n"
            "spec = Attention(num_heads=2, head_dim=32, mask=masks.causal(), dtype='float32')\n"
            "q = torch.randn(1, 2, 33, 32); o, lse = build(spec, 'cpu')(q, q, q)\n"
            "ref = torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)\n"
            "assert (o - ref).abs().max() < 1e-5\n"
            "print('tvm' in sys.modules)")
    runs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                           timeout=300) for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], runs[-1].stderr[-2000:]
    assert [r.stdout.strip() for r in runs] == ["True", "False"]  # built (compiler), then a hit


def test_a_miss_on_a_runtime_only_host_says_what_to_do(monkeypatch, tmp_path):
    """Where TVM is runtime-only, a cache miss would import TVM's compiler and fail on a
    duplicate callback; it names the missing entry and how to build it instead."""
    monkeypatch.setenv("ATTNGEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("TVM_USE_RUNTIME_LIB", "1")
    with pytest.raises(RuntimeError, match=r"in the build cache .*runtime-only.*ensure_cached"):
        build(SPEC, "cpu", {"block_q": 64})
    assert not any((tmp_path / "kernels").iterdir())
