"""Linear-attention kernels on a CUDA GPU against the float64 recurrence (skipped without a
GPU).  The same checks as ``attngen check``: fresh inputs, NaN-poisoned outputs, one build for
every length.  Where only TVM's runtime is installed, the kernels must already be in the build
cache (``ATTNGEN_CACHE_DIR``): build them on a machine with the compiler first, e.g.
``PYTHONPATH=tests python -c "import test_linear_gpu; test_linear_gpu.prebuild()"``.
"""
import numpy as np
import pytest

from attngen.builder import build, ensure_cached
from attngen.check import check_length
from test_linear_cuda_codegen import SPECS  # the gallery's linear specs and the parallel form

LENGTHS = (1, 17, 63, 64, 65, 257, 1000)


def prebuild(target: str = "cuda-sm90a") -> None:
    """Fill the build cache for a GPU host that has only TVM's runtime."""
    for spec in SPECS.values():
        ensure_cached(spec, target)


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(SPECS))
def test_spec_on_gpu(name):
    kernel = build(SPECS[name], "cuda")
    rng = np.random.default_rng(np.random.SeedSequence())
    for length in LENGTHS:
        result = check_length(kernel, length, batch=2 if length <= 257 else 1, rng=rng)
        assert result.passed, (f"length {length}, seed {rng.bit_generator.seed_seq.entropy}", result.errors)
