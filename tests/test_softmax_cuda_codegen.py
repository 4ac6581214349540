"""Softmax-attention kernels built for CUDA without a GPU: every gallery spec must produce a
device module whose source nvcc compiles (TVM does not catch every nvcc error, tvm-0.27.md
pitfall 14), with __global__ kernels for exactly the program's calls.  The numerics of the
same template run on the CPU in test_softmax_cpu.py (including with the CUDA storage)."""
import re
import shutil
import subprocess

import pytest

from attngen import Attention, Decode, masks
from attngen.builder import compile_lowered, lower
from attngen.gallery import GALLERY
from attngen.resources import load_schedule
from attngen.targets import get as get_target

ATTENTION = [name for name, e in GALLERY.items() if isinstance(e.spec, Attention)]
NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found")


def cuda_build(spec, target_name, config=None):
    target = get_target(target_name)
    low = lower(spec, target, config)
    ex = compile_lowered(low, target)  # raises if no device module was generated
    source = next(m for m in ex.mod.imports if m.kind == "cuda").inspect_source()
    return low, source


def nvcc_cubin(source, arch, tmp_path):
    path = tmp_path / "kernel.cu"
    path.write_text(source)
    out = subprocess.run([NVCC, "-cubin", f"-arch={arch}", "-o", str(tmp_path / "kernel.cubin"), str(path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]


@needs_nvcc
@pytest.mark.parametrize("name", ATTENTION)
def test_gallery_spec_compiles_for_sm90a(name, tmp_path):
    low, source = cuda_build(GALLERY[name].spec, "cuda-sm90a")
    # __launch_bounds__(threads) or (threads, CTAs per SM): the TMA kernel's register cap
    kernels = re.findall(r'extern "C" __global__ void (?:__launch_bounds__\(\d+(?:, \d+)?\) )?(\w+)_kernel(?:_\d+)?\(',
                         source)
    assert set(kernels) == {c.func for c in low.calls}  # a call with two loop nests launches twice
    nvcc_cubin(source, "sm_90a", tmp_path)


@needs_nvcc
@pytest.mark.parametrize("name", ["causal_bf16", "sage", "mla_decode", "paged_decode"])
def test_compiles_for_sm80(name, tmp_path):
    _, source = cuda_build(GALLERY[name].spec, "cuda-sm80")
    nvcc_cubin(source, "sm_80", tmp_path)


def test_k_v_tiles_are_shared_and_rows_are_threads():
    # the SIMT schedule's knobs select it over the tensor-core kernel (test_prefill_tc.py)
    cfg = load_schedule("attention_cuda").default(GALLERY["gqa"].spec, get_target("cuda-sm90a"))
    _, source = cuda_build(GALLERY["gqa"].spec, "cuda-sm90a", cfg)
    assert f"__launch_bounds__({cfg['block_q']})" in source
    assert re.search(r"__shared__ .*half Ks_ptr\[\d+\]", source)
    assert re.search(r"__shared__ .*half Vs_ptr\[\d+\]", source)
    assert source.count("__syncthreads()") >= 2


def test_default_tiles_fit_static_shared_memory_for_the_largest_head_dims():
    cuda = load_schedule("attention_cuda")
    target = get_target("cuda-sm90a")
    for spec in [GALLERY["mla_decode"].spec,
                 Attention(num_heads=8, head_dim=1024, dtype="float32", phase=Decode(1)),
                 Attention(num_heads=8, head_dim=512, head_dim_v=512, dtype="float32")]:
        cfg = cuda.default(spec, target)
        cuda.validate(spec, target, cfg)
        assert cuda.tile_smem_bytes(spec, cfg["block_k"]) <= cuda.STATIC_SMEM_BYTES


@pytest.mark.parametrize("config, message", [
    ({"block_q": 64, "block_k": 256}, "shared memory"),
    ({"block_q": 16, "block_k": 32}, "block_q"),
    ({"block_q": 1024, "block_k": 4}, "split evenly"),
    ({"block_q": 64, "block_k": 32, "stages": 2}, "unknown knob"),
])
def test_invalid_cuda_configs_are_rejected(config, message):
    spec = Attention(num_heads=4, head_dim=128, mask=masks.causal())
    with pytest.raises(ValueError, match=message):
        lower(spec, "cuda-sm90a", config)
