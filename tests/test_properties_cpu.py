"""Property tests (Hypothesis) of the softmax kernels on the CPU: for a few kernels, each built
once, Hypothesis draws what a caller changes at run time -- the batch, the query and key lengths
independently (bottom-right aligned: more queries than keys gives causal rows with no key),
the logits' magnitude, the runtime mask tensor and the values themselves -- and every draw must
match the float64 reference within the dtype's tolerance (attngen.tolerance), with outputs
NaN-poisoned before the run.

Lengths mix the edges of the CPU tiles (64 keys, 64 packed rows: 32 queries of a GQA pair)
with uniform draws.  The examples are derandomized, so CI sees the same ones on every run; a failure prints
the falsifying draw (sizes and seed), reproducible with ``@example``.
"""
import functools

import numpy as np
import pytest

from attngen import Attention, masks, mods
from attngen.builder import build
from attngen.check import check_inputs

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402

# float32 kernels test the arithmetic at its tightest bound; one float16 kernel the rounding
SPECS = {
    "causal_gqa": Attention(num_heads=4, num_kv_heads=2, head_dim=16, mask=masks.causal(), dtype="float32"),
    "window_softcap": Attention(num_heads=2, head_dim=16, head_dim_v=8, mask=masks.sliding_window(9),
                                score_mod=mods.softcap(5.0), dtype="float32"),
    "document": Attention(num_heads=2, head_dim=16, mask=masks.document(), dtype="float32"),
    "alibi_global_local": Attention(num_heads=3, head_dim=16, mask=masks.global_local(3, 11),
                                    score_mod=mods.alibi(3), dtype="float32"),
    "sinks_f16": Attention(num_heads=2, head_dim=32, mask=masks.causal(), sinks=True),
}

EDGES = [1, 2, 31, 32, 33, 63, 64, 65, 127, 128, 129]
lengths = st.one_of(st.sampled_from(EDGES), st.integers(1, 200))


@functools.lru_cache(maxsize=None)
def kernel(name):
    return build(SPECS[name], "cpu")


@pytest.mark.parametrize("name", sorted(SPECS))
@settings(max_examples=30, deadline=None, derandomize=True)
@given(batch=st.integers(1, 3), q_len=lengths, kv_len=lengths,
       q_scale=st.sampled_from([1.0, 8.0, 64.0]), seed=st.integers(0, 2 ** 32 - 1))
def test_matches_reference_for_any_sizes(name, batch, q_len, kv_len, q_scale, seed):
    """q_scale multiplies q (a power of two: exact in every dtype), so logits reach ~1e2: the
    online softmax's running max must move and rescale without losing the small terms."""
    k = kernel(name)
    rng = np.random.default_rng(seed)
    inputs = k.family.sample(k.spec, {"batch": batch, "q_len": q_len, "kv_len": kv_len}, rng)
    inputs["q"] = inputs["q"] * q_scale
    result = check_inputs(k, inputs, q_len)
    assert result.passed, {out: {m: f"{v:.2e}" for m, v in err.items()} for out, err in result.errors.items()}
