"""Linear attention for CUDA, without a GPU: every gallery spec (and the parallel form, which
the gallery lacks) builds for sm_90a with a device module, and nvcc compiles the generated
source to a cubin.  TVM does not run nvcc on a GPU-less host, so an invalid source would
otherwise pass (tvm-0.27.md pitfall 14).
"""
import shutil
import subprocess

import pytest

from attngen.builder import cuda_source, lower
from attngen.gallery import GALLERY
from attngen.spec import LinearAttention

NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="needs nvcc")

SPECS = {name: e.spec for name, e in GALLERY.items() if isinstance(e.spec, LinearAttention)}
# the gallery has no parallel form; its kernels (gates summed over the sequence, the delta
# rule's T x T forward substitution, the quadratic outputs) are built here too
SPECS.update({
    "parallel_gated_delta": LinearAttention(num_heads=8, head_dim=64, gate="scalar", update="delta",
                                            form="parallel"),
    "parallel_gla": LinearAttention(num_heads=8, head_dim=64, gate="vector", form="parallel"),
    "parallel_rwkv6": LinearAttention(num_heads=8, head_dim=64, gate="vector", bonus=True, form="parallel"),
    "parallel_mlstm": LinearAttention(num_heads=4, head_dim=64, gate="mlstm", form="parallel"),
    "parallel_performer": LinearAttention(num_heads=8, head_dim=64, feature_map="performer", num_features=64,
                                          normalize=True, gate="fixed", form="parallel"),
    "recurrent_performer": LinearAttention(num_heads=8, head_dim=64, feature_map="performer", num_features=64,
                                           normalize=True, form="recurrent"),
    # float32 keeps the gallery's mLSTM on the SIMT chunkwise kernel (16-bit specs take tensor cores)
    "chunkwise_mlstm_f32": LinearAttention(num_heads=4, head_dim=64, gate="mlstm", dtype="float32"),
})


def nvcc_cubin(source: str, arch: str, tmp_path) -> None:
    path = tmp_path / "kernel.cu"
    path.write_text(source)
    done = subprocess.run([NVCC, "-cubin", f"-arch={arch}", "-o", str(tmp_path / "kernel.cubin"), str(path)],
                          capture_output=True, text=True)
    assert done.returncode == 0, f"nvcc -arch={arch} rejected the generated source:\n{done.stderr[-3000:]}"


@needs_nvcc
@pytest.mark.parametrize("name", sorted(SPECS))
def test_builds_and_nvcc_compiles_sm90a(name, tmp_path):
    source = cuda_source(SPECS[name], "cuda-sm90a")  # raises if no device module was generated
    assert "__global__" in source and "threadIdx.x" in source
    nvcc_cubin(source, "sm_90a", tmp_path)


@needs_nvcc
@pytest.mark.parametrize("name", ["gated_deltanet", "gla"])
def test_builds_and_nvcc_compiles_sm80(name, tmp_path):
    nvcc_cubin(cuda_source(SPECS[name], "cuda-sm80"), "sm_80", tmp_path)


def test_shared_memory_limit_is_checked():
    """A task whose scratch cannot fit the target's shared memory is refused when lowering,
    with the remedy in the message, not at launch."""
    spec = LinearAttention(num_heads=2, head_dim=256, gate="vector", update="additive", chunk_size=256)
    with pytest.raises(ValueError, match="shared memory"):
        lower(spec, "cuda-sm90a", {"block_v": 256})


@pytest.mark.parametrize("config,message", [({"threads": 100}, "threads"), ({"block_v": 48}, "block_v"),
                                            ({"block_k": 3}, "block_k")])
def test_invalid_knobs(config, message):
    with pytest.raises(ValueError, match=message):
        lower(SPECS["gla"], "cuda-sm90a", config)
