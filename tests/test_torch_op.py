"""``attngen.compile``: a torch custom op (with a fake implementation) that checks its inputs
before launch and sits inside ``torch.compile`` without a graph break (CPU target here)."""
import numpy as np
import pytest
import torch

import attngen
from attngen import Attention, LinearAttention, masks
from attngen.kernel import KernelInputError
from attngen.torch_op import compile as compile_op

SPEC = Attention(num_heads=4, num_kv_heads=2, head_dim=32, mask=masks.causal(), dtype="float32")


@pytest.fixture(scope="module")
def op():
    return compile_op(SPEC, "cpu")


def qkv(n, seed=0, batch=1):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, 4, n, 32, generator=g)
    k = torch.randn(batch, 2, n, 32, generator=g)
    return q, k, torch.randn(batch, 2, n, 32, generator=g)


def reference(q, k, v):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)


def test_op_matches_the_reference_and_the_plain_kernel(op):
    from attngen.builder import build

    q, k, v = qkv(45)
    o, lse = op(q, k, v)
    assert o.shape == q.shape and lse.shape == q.shape[:3]
    torch.testing.assert_close(o, reference(q, k, v), atol=2e-5, rtol=2e-5)
    o2, lse2 = build(SPEC, "cpu")(q, k, v)
    assert torch.equal(o, o2) and torch.equal(lse, lse2)
    assert torch.equal(op(q=q, k=k, v=v)[0], o)


def test_it_is_a_registered_torch_op_with_a_fake(op):
    from torch._subclasses.fake_tensor import FakeTensorMode

    packet = getattr(torch.ops.attngen, op.op_name)
    q, k, v = qkv(9)
    torch.testing.assert_close(packet(q, k, v)[0], reference(q, k, v), atol=2e-5, rtol=2e-5)
    with FakeTensorMode() as mode:
        fq, fk, fv = (mode.from_tensor(t) for t in qkv(300, batch=3))
        o, lse = packet(fq, fk, fv)
        assert tuple(o.shape) == (3, 4, 300, 32) and tuple(lse.shape) == (3, 4, 300)
        assert lse.dtype == torch.float32


def test_inside_torch_compile_without_graph_break(op):
    torch._dynamo.reset()

    def block(q, k, v):
        o, _ = op(q * 1.0, k, v)
        return o.sum(dim=-1) + 1  # work before and after the op, one graph

    compiled = torch.compile(block, fullgraph=True, backend="aot_eager", dynamic=True)
    for n in (17, 64, 130):  # new lengths: no recompilation of the op, no graph break
        q, k, v = qkv(n, seed=n)
        torch.testing.assert_close(compiled(q, k, v), reference(q, k, v).sum(dim=-1) + 1,
                                   atol=1e-4, rtol=1e-4)


def test_inputs_are_checked_before_launch(op):
    q, k, v = qkv(8)
    with pytest.raises(KernelInputError, match="dtype"):
        op(q.half(), k, v)
    with pytest.raises(KernelInputError, match="shape"):
        op(q, k[:, :, :5].contiguous(), v)
    with pytest.raises(KernelInputError, match="contiguous"):
        op(q.transpose(2, 3).contiguous().transpose(2, 3), k, v)
    with pytest.raises(KernelInputError, match="missing"):
        op(q, k)
    with pytest.raises(KernelInputError, match="unknown"):
        op(q, k, v, w=v)


def test_buffers_past_int32_offsets_are_refused_before_launch():
    """The kernels index in int32: inputs implying a buffer of more than 2**31 elements are
    refused before anything is allocated (zero-stride views: no memory behind the shapes)."""
    from attngen.builder import build
    from attngen.kernel import INT32_MAX, check_int32_extents

    kernel = build(SPEC, "cpu")
    n = (INT32_MAX + 1) // (4 * 32) + 1  # q, o: 4 heads x 32 channels per token
    q = torch.zeros(1, 1, 1, 32).expand(1, 4, n, 32)
    kv = torch.zeros(1, 1, 1, 32).expand(1, 2, n, 32)
    with pytest.raises(KernelInputError, match=r"q: shape \(1, 4, 16777217, 32\).*int32"):
        kernel.run({"q": q, "k": kv, "v": kv})
    sizes = kernel.family.sizes(SPEC, {"q": q[:, :, :n - 1], "k": kv, "v": kv})
    check_int32_extents(kernel.args, sizes)  # exactly 2**31 elements: the last offset fits


def test_a_second_compile_of_the_spec_takes_over_the_op(op):
    again = compile_op(SPEC, "cpu")
    assert again.op_name == op.op_name
    q, k, v = qkv(20)
    assert torch.equal(again(q, k, v)[0], op(q, k, v)[0])


def test_linear_attention_op():
    spec = LinearAttention(num_heads=2, head_dim=16, gate="fixed", dtype="float32")
    lop = attngen.compile(spec, "cpu")
    fam = lop.family
    inputs = fam.sample(spec, {"batch": 1, "heads": 2, "q_len": 33, "kv_len": 33},
                        np.random.default_rng(0))
    feed = {n: torch.from_numpy(np.ascontiguousarray(inputs[n])).float() for n in lop.input_names}
    out = lop(**feed)
    out = out if isinstance(out, tuple) else (out,)
    ref = fam.reference(spec, inputs)
    for name, got in zip(lop.output_names, out):
        np.testing.assert_allclose(got.double().numpy(), ref[name], atol=1e-4, rtol=1e-3)


def test_transposed_views_run_the_other_layouts_kernel(op):
    """Token-major tensors seen through a head-major view (x.transpose(1, 2)) go to the bshd
    kernel on the same memory; o comes back as the same kind of view; the values match the
    contiguous call exactly up to the kernels' own rounding."""
    q, k, v = qkv(37, seed=3, batch=2)
    tq, tk, tv = (x.transpose(1, 2).contiguous() for x in (q, k, v))  # [B, S, H, D] in memory
    o, lse = op(tq.transpose(1, 2), tk.transpose(1, 2), tv.transpose(1, 2))
    assert op._sibling is not None and op._sibling.spec.layout == "bshd"
    assert not o.is_contiguous() and o.transpose(1, 2).is_contiguous() and o.shape == q.shape
    o_ref, lse_ref = op(q, k, v)
    torch.testing.assert_close(o, o_ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(lse, lse_ref, atol=1e-6, rtol=1e-6)
    # and the other way round: a token-major operator given head-major memory
    bshd = compile_op(SPEC.replace(layout="bshd"), "cpu")
    o2, _ = bshd(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    torch.testing.assert_close(o2.transpose(1, 2), o_ref, atol=1e-6, rtol=1e-6)
