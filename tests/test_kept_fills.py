"""The tile map's buffers (``Call.fills``): a mask that reads no tensor (``static``) has them
computed once per size, device and stream and kept by the driver (``Kernel.run``); a mask that
reads tensors recomputes them at every call, unless the caller passes a plan built once
(``Kernel.plan``, like a FlexAttention BlockMask); the benchmarks' raw launcher keeps them after
its first call.  The driver logic runs here on the CPU with Python stand-ins for the kernels."""
import pytest
import torch

from attngen import Attention, Paged, masks
from attngen.builder import lower
from attngen.family import Arg, Call
from attngen.gallery import GALLERY
from attngen.kernel import Kernel, KernelInputError
from attngen.softmax import signature as sig, tile_map
from attngen.targets import get

SM90 = get("cuda-sm90a")
SPEC = Attention(num_heads=2, head_dim=16, dtype="float32")
MAP = Arg("tile_map_x", ("batch", "q_len"), "int32", "scratch")


def stand_in(static: bool = True):
    """A kernel whose first call fills MAP from the sizes (counting its runs) and whose second
    writes o = q + MAP (broadcast), so a stale or missing map shows in o."""
    ran = []

    def fill(q, k, v, m, o, lse):
        ran.append(tuple(q.shape))
        m.copy_(torch.arange(m.numel(), dtype=torch.int32).view(m.shape))

    def attend(q, k, v, m, o, lse):
        o.copy_(q + m[:, None, :, None].to(q.dtype))
        lse.zero_()

    args = sig.program_args(SPEC) + (MAP,)
    names = ("q", "k", "v", MAP.name, "o", "lse")
    calls = (Call("fill", names, fills=(MAP.name,), static=static), Call("attend", names))
    return Kernel(SPEC, get("cpu"), {"fill": fill, "attend": attend}, args, calls), ran


def inputs(n: int):
    return {x: torch.randn(2, 2, n, 16) for x in ("q", "k", "v")}


def test_fills_run_once_per_size_and_the_kept_buffers_are_the_ones_used():
    kernel, ran = stand_in()
    for n in (5, 5, 7, 5, 7):
        x = inputs(n)
        o = kernel.run(x)["o"]
        want = x["q"] + torch.arange(2 * n, dtype=torch.float32).view(2, 1, n, 1)
        assert torch.equal(o, want), n
    assert ran == [(2, 2, 5, 16), (2, 2, 7, 16)]


def test_the_kept_sizes_are_bounded_and_a_given_buffer_is_not_replaced():
    kernel, ran = stand_in()
    for n in range(1, Kernel.KEEP_FILLS + 3):
        kernel.run(inputs(n))
    assert len(kernel._kept) == Kernel.KEEP_FILLS
    kernel.run(inputs(1))  # dropped as the oldest: filled again
    assert ran.count((2, 2, 1, 16)) == 2
    given = torch.full((2, 4), -1, dtype=torch.int32)
    kernel.run(inputs(4), {MAP.name: given})  # the caller's own buffer: filled, not swapped
    assert given.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]


def want_o(x):
    n = x["q"].shape[2]
    return x["q"] + torch.arange(2 * n, dtype=torch.float32).view(2, 1, n, 1)


def test_a_map_that_reads_tensors_runs_every_call_unless_planned():
    kernel, ran = stand_in(static=False)
    x = inputs(5)
    for _ in range(2):
        assert torch.equal(kernel.run(x)["o"], want_o(x))
    assert len(ran) == 2 and not kernel._kept
    plan = kernel.plan(x)  # the fill calls only
    assert len(ran) == 3
    for _ in range(2):
        assert torch.equal(kernel.run(inputs(5) | {"q": x["q"]}, plan=plan)["o"], want_o(x))
    assert len(ran) == 3
    with pytest.raises(KernelInputError, match="built for sizes"):
        kernel.run(inputs(6), plan=plan)
    with pytest.raises(KernelInputError, match="not a plan of this kernel"):
        kernel.run(x, plan={MAP.name: plan.buffers[MAP.name]})


def test_a_program_without_a_map_has_nothing_to_plan():
    low = lower(GALLERY["causal"].spec, SM90)
    assert not any(c.fills for c in low.calls)
    kernel = Kernel(SPEC, get("cpu"), {}, sig.program_args(SPEC), ())
    with pytest.raises(ValueError, match="no tile map to plan"):
        kernel.plan(inputs(3))


def test_calls_keep_their_fills_through_json():
    call = Call("tile_state", ("q", "tile_state"), ("tile_state",), True)
    assert Call.from_json(call.to_json()) == call
    assert Call.from_json({"func": "f", "args": ["q"]}) == Call("f", ("q",))  # older files
    assert Call.from_json(Call("f", ("q",), ("m",)).to_json()).static is False
    assert Call.from_json(call.to_json("renamed")).func == "renamed"


def test_only_maps_of_masks_that_read_no_tensor_are_kept():
    for name, static in (("longformer", True), ("prefix_lm", True), ("bigbird", True), ("document", False),
                         ("block_sparse", False)):
        spec = GALLERY[name].spec
        assert tile_map.static(spec) == static, name
        low = lower(spec, SM90)
        assert [c.fills for c in low.calls][-1] == ()  # the attention kernel itself always runs
        maps = [c for c in low.calls if c.func in tile_map.KERNELS]
        assert [c.func for c in maps] == ["tile_state", "tile_list"], name
        for c in maps:
            assert c.fills == ("tile_state", "tile_list", "tile_count") and c.static == static, name
    # a paged cache has per-sequence lengths: its map follows the kv_lens tensor
    assert tile_map.static(Attention(num_heads=2, head_dim=64, mask=masks.global_local(16, 128)))
    assert not tile_map.static(Attention(num_heads=2, head_dim=64, mask=masks.global_local(16, 128),
                                         kv_layout=Paged(16)))


def test_the_benchmark_launcher_keeps_fills_like_the_driver():
    from benchmarks._common import launcher

    kernel, ran = stand_in()
    x = inputs(6)
    o, lse = torch.empty(2, 2, 6, 16), torch.empty(2, 2, 6)
    fn = launcher(kernel, {**x, "o": o, "lse": lse}, keep_fills=True)
    for _ in range(3):
        fn()
    assert len(ran) == 1 and torch.equal(o, x["q"] + torch.arange(12.).view(2, 1, 6, 1))
    every = launcher(kernel, {**x, "o": o, "lse": lse})
    every()
    every()
    assert len(ran) == 3
