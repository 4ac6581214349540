"""Linear-attention kernels on a CUDA GPU against the float64 recurrence (skipped without a
GPU).  The same checks as ``attngen check``: fresh inputs, NaN-poisoned outputs, one build for
every length.  Where only TVM's runtime is installed, the kernels must already be in the build
cache (``ATTNGEN_CACHE_DIR``): build them on a machine with the compiler first, e.g.
``python -c "import tests.test_linear_gpu as t; t.prebuild()"``.
"""
import numpy as np
import pytest

from attngen.build import build
from attngen.check import check_length
from attngen.gallery import GALLERY
from attngen.spec import LinearAttention

SPECS = {name: e.spec for name, e in GALLERY.items() if isinstance(e.spec, LinearAttention)}
# the gallery has no parallel form; its kernels (gates summed over the sequence, the delta
# rule's T x T forward substitution, the quadratic outputs) run here too
SPECS.update({
    "parallel_gated_delta": LinearAttention(num_heads=8, head_dim=64, gate="scalar", update="delta",
                                            form="parallel"),
    "parallel_gla": LinearAttention(num_heads=8, head_dim=64, gate="vector", form="parallel"),
    "parallel_performer": LinearAttention(num_heads=8, head_dim=64, feature_map="performer", num_features=64,
                                          normalize=True, gate="fixed", form="parallel"),
})
LENGTHS = (1, 17, 63, 64, 65, 257, 1000)


def prebuild(target: str = "cuda-sm90a") -> None:
    """Fill the build cache for a GPU host that has only TVM's runtime."""
    for spec in SPECS.values():
        build(spec, target)


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(SPECS))
def test_spec_on_gpu(name):
    kernel = build(SPECS[name], "cuda")
    rng = np.random.default_rng(np.random.SeedSequence())
    for length in LENGTHS:
        result = check_length(kernel, length, batch=2 if length <= 257 else 1, rng=rng)
        assert result.passed, (f"length {length}, seed {rng.bit_generator.seed_seq.entropy}", result.errors)
