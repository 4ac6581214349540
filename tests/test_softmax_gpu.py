"""Softmax-attention kernels on a CUDA GPU against the float64 references (skipped without a
GPU; needs the TVM compiler where it runs).  The same checks as attngen check: fresh inputs,
NaN-poisoned outputs, one build for all lengths."""
import numpy as np
import pytest

from attngen import Attention
from attngen.build import build
from attngen.check import check_length
from attngen.gallery import GALLERY

ATTENTION = [name for name, e in GALLERY.items() if isinstance(e.spec, Attention)]


@pytest.mark.gpu
@pytest.mark.parametrize("name", ATTENTION)
def test_gallery_spec_on_gpu(name):
    kernel = build(GALLERY[name].spec, "cuda", use_cache=False)
    rng = np.random.default_rng(0)
    for length in (1, 17, 63, 64, 65, 257, 1000):
        result = check_length(kernel, length, batch=2 if length <= 257 else 1, rng=rng)
        assert result.passed, (length, result.errors)
