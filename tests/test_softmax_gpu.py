"""Softmax-attention kernels on a CUDA GPU against the float64 references (skipped without a
GPU).  The same checks as attngen check: fresh inputs, NaN-poisoned outputs, one build for all
lengths.  A GPU host with only TVM's runtime takes the kernels from the build cache
(``ATTNGEN_CACHE_DIR``): fill it where the compiler is with ``python tests/prebuild_gpu.py``."""
import numpy as np
import pytest

from attngen import Attention
from attngen.builder import build, ensure_cached
from attngen.check import check_length
from attngen.gallery import GALLERY

ATTENTION = [name for name, e in GALLERY.items() if isinstance(e.spec, Attention)]


def prebuild(target: str = "cuda-sm90a") -> None:
    """Fill the build cache for a GPU host that has only TVM's runtime."""
    for name in ATTENTION:
        ensure_cached(GALLERY[name].spec, target)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ATTENTION)
def test_gallery_spec_on_gpu(name):
    kernel = build(GALLERY[name].spec, "cuda")
    rng = np.random.default_rng(0)
    for length in (1, 17, 63, 64, 65, 257, 1000):
        result = check_length(kernel, length, batch=2 if length <= 257 else 1, rng=rng)
        assert result.passed, (length, result.errors)
