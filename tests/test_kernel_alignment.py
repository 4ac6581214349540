"""Tensors whose data is not 64-byte aligned (a view with a storage offset; torch.from_numpy
shares numpy's 16-byte-aligned memory): the compiled code assumes TVM's 64-byte alignment
(LLVM emits aligned vector loads, which fault elsewhere), so Kernel.run passes such tensors as
aligned copies and copies misaligned outputs back.  Without that, these calls crash the process.
"""
import numpy as np
import torch

from attngen.builder import build
from attngen.kernel import ALIGNMENT, Kernel
from attngen.spec import LinearAttention

# vector gate: its float32 log gates are read 8 lanes at a time, as are the state's columns
SPEC = LinearAttention(num_heads=2, head_dim=16, head_dim_v=16, chunk_size=16, dtype="float32",
                       gate="vector")


def off_by_one_element(x: torch.Tensor) -> torch.Tensor:
    """A copy of x whose data starts one element past a 64-byte boundary."""
    raw = torch.empty(x.numel() + 2 * ALIGNMENT // x.element_size(), dtype=x.dtype)
    skip = (-raw.data_ptr() % ALIGNMENT) // x.element_size() + 1
    out = raw[skip:skip + x.numel()].view(x.shape)
    out.copy_(x)
    assert out.data_ptr() % ALIGNMENT != 0
    return out


def test_misaligned_inputs_and_outputs_give_the_aligned_results():
    kernel: Kernel = build(SPEC, "cpu")
    rng = np.random.default_rng(0)
    sizes = {"batch": 2, "heads": SPEC.num_heads, "q_len": 37, "kv_len": 37}
    inputs = {k: torch.from_numpy(v) for k, v in kernel.family.sample(SPEC, sizes, rng).items()}
    want = kernel.run({k: v.clone() for k, v in inputs.items()})

    shifted = {k: off_by_one_element(v) for k, v in inputs.items()}
    outputs = {k: off_by_one_element(torch.full_like(v, float("nan"))) for k, v in want.items()}
    got = kernel.run(shifted, outputs)

    for name, expected in want.items():
        assert got[name] is outputs[name]  # written into the caller's tensor
        torch.testing.assert_close(got[name], expected, rtol=0, atol=0)
    for name, x in shifted.items():  # the inputs are left as they were
        torch.testing.assert_close(x, inputs[name], rtol=0, atol=0)
