"""Softmax-attention kernels on the CPU against the float64 references.

Every run draws fresh inputs (attngen.softmax.data.sample: NaN in every cache slot past a
sequence's end, shuffled pages) and NaN-poisoned outputs, so an element the kernel does not
write, or a padded key it lets through, fails.  One build per spec serves all lengths.
"""
import functools
import zlib

import numpy as np
import pytest
import torch

from attngen import Attention, Decode, Paged, Quant, masks, mods
from attngen.builder import build as build_kernel
from attngen.builder import lower
from attngen.check import check_length, poisoned
from attngen.gallery import GALLERY
from attngen.reference import quant as ref_quant
from attngen.resources import load_schedule
from attngen.softmax import FAMILY
from attngen.targets import get as get_target
from attngen.tolerance import errors, passes

ATTENTION = [name for name, e in GALLERY.items() if isinstance(e.spec, Attention)]


@functools.lru_cache(maxsize=None)
def _build(spec, config_items):
    return build_kernel(spec, "cpu", dict(config_items), use_cache=False)


def build(spec, **config):
    return _build(spec, tuple(sorted(config.items())))


@pytest.fixture
def rng(request):
    # a different stream per test, the same on every run (hash() of a str is salted per process)
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def run(kernel, inputs):
    """Outputs (float64 numpy) of ``kernel`` on ``inputs``, written into NaN-poisoned buffers."""
    feed = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()}
    for arg in kernel.args:
        if arg.role == "in":
            feed[arg.name] = feed[arg.name].to(getattr(torch, arg.dtype))
    sizes = FAMILY.sizes(kernel.spec, feed)
    out = kernel.run(feed, poisoned(kernel, sizes))
    return {name: t.to(torch.float64).numpy() for name, t in out.items()}


def assert_matches(spec, got, ref):
    for name, expected in ref.items():
        err = errors(got[name], expected)
        assert passes(err, spec.dtype), (name, err)


def check(kernel, rng, **sizes):
    """Sample at ``sizes`` (batch, q_len, kv_len), run, compare; returns (inputs, outputs, ref)."""
    sizes = {"batch": 2, "heads": kernel.spec.num_heads, **sizes}
    inputs = FAMILY.sample(kernel.spec, sizes, rng)
    ref = FAMILY.reference(kernel.spec, inputs)
    got = run(kernel, inputs)
    assert_matches(kernel.spec, got, ref)
    return inputs, got, ref


# ----------------------------------------------------------------------------- the gallery


@pytest.mark.parametrize("name", ATTENTION)
def test_gallery_spec(name, rng):
    kernel = build(GALLERY[name].spec)
    for length in (1, 17, 65, 257):
        result = check_length(kernel, length, batch=2, rng=rng)
        assert result.passed, (length, result.errors)


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("mask", [masks.full(), masks.causal()], ids=["full", "causal"])
@pytest.mark.parametrize("q_len, kv_len", [(1, 1), (17, 17), (63, 63), (64, 64), (65, 65),
                                           (1000, 1000), (1, 1000), (17, 65), (65, 17), (64, 63)])
def test_lengths(mask, q_len, kv_len, rng):
    """Tails of every kind, and bottom-right alignment when q_len != kv_len (with q_len >
    kv_len, causal rows before the first key see nothing)."""
    spec = Attention(num_heads=4, num_kv_heads=2, head_dim=64, mask=mask)
    check(build(spec), rng, batch=1 if q_len * kv_len > 10**5 else 2, q_len=q_len, kv_len=kv_len)


@pytest.mark.parametrize("head_dim", [32, 64, 128])
@pytest.mark.parametrize("group", [1, 4, 8])
def test_head_dims_and_gqa_groups(head_dim, group, rng):
    dtype = ("float16", "bfloat16", "float32")[(head_dim // 32 + group) % 3]
    spec = Attention(num_heads=8, num_kv_heads=8 // group, head_dim=head_dim, mask=masks.causal(),
                     dtype=dtype)
    kernel = build(spec)
    for length in (17, 65):
        check(kernel, rng, q_len=length, kv_len=length)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_dtypes(dtype, rng):
    spec = Attention(num_heads=4, head_dim=64, head_dim_v=32, mask=masks.sliding_window(24),
                     dtype=dtype)
    check(build(spec), rng, q_len=70, kv_len=70)


@pytest.mark.parametrize("config", [
    {"block_q": 16, "block_k": 8}, {"block_q": 8, "block_k": 16}, {"block_q": 64, "block_k": 4},
    {"block_q": 32, "block_k": 32, "kv_tile": "input"}])
@pytest.mark.parametrize("mask", [masks.causal(), masks.sliding_window(20, causal=False)],
                         ids=["causal", "window"])
def test_tile_sizes_do_not_change_results(config, mask, rng):
    spec = Attention(num_heads=4, num_kv_heads=2, head_dim=32, mask=mask)
    kernel = build(spec, **config)
    for length in (9, 50):
        check(kernel, rng, q_len=length, kv_len=length)


# ----------------------------------------------------------------------------- empty rows


def test_fully_masked_rows_are_exactly_zero_and_minus_inf(rng):
    spec = Attention(num_heads=2, head_dim=32, mask=masks.block_sparse(16), dtype="float32")
    inputs = FAMILY.sample(spec, {"batch": 2, "heads": 2, "q_len": 40, "kv_len": 40}, rng)
    inputs["block_layout"][:] = 1
    inputs["block_layout"][0, 1, :] = 0  # head 0, rows 16..31 see nothing
    got = run(build(spec), inputs)
    assert_matches(spec, got, FAMILY.reference(spec, inputs))
    assert np.all(got["o"][:, 0, 16:32] == 0)
    assert np.all(got["lse"][:, 0, 16:32] == -np.inf)
    assert np.all(np.isfinite(got["lse"][:, 1]))


def test_rows_before_the_first_key_are_empty(rng):
    """Causal with q_len > kv_len: bottom-right alignment leaves the first rows no key."""
    spec = Attention(num_heads=2, head_dim=32, mask=masks.causal())
    _, got, _ = check(build(spec), rng, q_len=30, kv_len=20)
    assert np.all(got["o"][:, :, :10] == 0) and np.all(got["lse"][:, :, :10] == -np.inf)
    assert np.all(np.isfinite(got["lse"][:, :, 10:]))


def test_sinks_on_empty_rows_give_the_sink_logit(rng):
    spec = Attention(num_heads=4, num_kv_heads=2, head_dim=32, mask=masks.causal(), sinks=True)
    inputs, got, _ = check(build(spec), rng, q_len=12, kv_len=8)
    assert np.all(got["o"][:, :, :4] == 0)
    np.testing.assert_allclose(got["lse"][:, :, :4], np.broadcast_to(inputs["sinks"][None, :, None], (2, 4, 4)),
                               rtol=1e-6)


# ----------------------------------------------------------------------------- caches


def _set_kv_lens(inputs, lens, rng):
    """Give the sequences of a contiguous cache the lengths ``lens``: fresh values before each
    end (sample() put NaN past the ends it drew), NaN after it."""
    inputs["kv_lens"] = np.asarray(lens, np.int32)
    for name in ("k", "v"):
        x = inputs[name]
        x[...] = rng.standard_normal(x.shape).astype(x.dtype)
        for b, n in enumerate(lens):
            x[b, :, n:] = np.nan


@pytest.mark.parametrize("phase, mask", [(Decode(1), masks.full()), (Decode(4), masks.causal()),
                                         (Decode(3, split_kv=3), masks.sliding_window(50))])
def test_decode_mixed_lengths(phase, mask, rng):
    spec = Attention(num_heads=8, num_kv_heads=2, head_dim=64, mask=mask, phase=phase)
    kernel = build(spec)
    inputs = FAMILY.sample(spec, {"batch": 6, "heads": 8, "q_len": 1, "kv_len": 200}, rng)
    _set_kv_lens(inputs, [1, 2, 63, 64, 65, 200], rng)
    assert_matches(spec, run(kernel, inputs), FAMILY.reference(spec, inputs))
    for length in (1, 17, 300):
        check(kernel, rng, batch=3, q_len=1, kv_len=length)


@pytest.mark.parametrize("spec", [
    Attention(num_heads=4, num_kv_heads=2, head_dim=64, mask=masks.causal(), kv_layout=Paged(16)),
    Attention(num_heads=8, num_kv_heads=1, head_dim=64, phase=Decode(1, split_kv=3), kv_layout=Paged(8),
              dtype="bfloat16"),
], ids=["prefill", "decode_split"])
def test_paged_with_shuffled_pages(spec, rng):
    kernel = build(spec)
    for length in (5, 33, 130):
        inputs, _, _ = check(kernel, rng, batch=3, q_len=length, kv_len=length)
        table = inputs["page_table"]
        assert sorted(table.ravel()) == list(range(table.size))  # the whole pool, once each
        if table.size >= 8:  # in order by chance once in 40320 draws
            assert not np.array_equal(table.ravel(), np.arange(table.size))


@pytest.mark.parametrize("sinks", [False, True])
def test_split_kv_with_empty_splits(sinks, rng):
    """16 splits over a few tiles: most splits see no key and must weigh nothing."""
    spec = Attention(num_heads=4, num_kv_heads=4, head_dim=32, phase=Decode(2, split_kv=16),
                     mask=masks.causal(), sinks=sinks)
    kernel = build(spec, block_q=2, block_k=16)
    for length in (1, 17, 40, 300):
        check(kernel, rng, batch=3, q_len=2, kv_len=length)


def test_latent_kv_reads_v_from_k(rng):
    spec = Attention(num_heads=4, num_kv_heads=1, head_dim=72, head_dim_v=64, latent_kv=True,
                     mask=masks.causal(), scale=0.1)
    check(build(spec), rng, q_len=20, kv_len=33)


def test_score_mods_compose_with_masks(rng):
    spec = Attention(num_heads=4, head_dim=32, mask=masks.document(),
                     score_mod=mods.softcap(5.0).then(mods.relative_bias(8)))
    check(build(spec), rng, q_len=50, kv_len=50)


def test_a_factored_mask_matches_the_mask_as_written(rng):
    """The kernels evaluate global + local causal as ``causal & (window | global)``; the
    reference evaluates the mask as the user wrote it (two halves, each causal)."""
    from attngen import expr as E
    from attngen.softmax import predicate

    mask = masks.global_local(3, 11, causal=True)
    spec = Attention(num_heads=2, head_dim=32, mask=mask)
    assert not predicate.mask_expr(spec).same(predicate.reference_mask(spec))
    assert E.chain(predicate.mask_expr(spec), "and")[0].same(E.kv_idx <= E.q_pos)
    for q_len, kv_len in ((1, 1), (40, 40), (17, 65)):
        check(build(spec), rng, q_len=q_len, kv_len=kv_len)


# ----------------------------------------------------------------------------- tile skipping


@pytest.mark.parametrize("mask, poisoned_keys, clean_rows", [
    (masks.causal(), slice(64, 128), slice(0, 64)),            # above the diagonal
    (masks.sliding_window(16), slice(0, 32), slice(64, 128)),  # behind the window
])
def test_invisible_tiles_are_not_loaded(mask, poisoned_keys, clean_rows, rng):
    """NaN in V tiles that no row of a tile can see stays out of that tile's rows; rows that do
    load those tiles (all masked or not) turn NaN, which shows the poison would have spread."""
    spec = Attention(num_heads=2, head_dim=32, mask=mask, dtype="float32")
    inputs = FAMILY.sample(spec, {"batch": 1, "heads": 2, "q_len": 128, "kv_len": 128}, rng)
    clean = {k: v.copy() for k, v in inputs.items()}
    clean["v"][:, :, poisoned_keys] = 0.0
    inputs["v"][:, :, poisoned_keys] = np.nan
    got = run(build(spec, block_q=32, block_k=32), inputs)
    ref = FAMILY.reference(spec, clean)
    err = errors(got["o"][:, :, clean_rows], ref["o"][:, :, clean_rows])
    assert passes(err, spec.dtype), err
    assert np.isnan(got["o"]).any()


# ----------------------------------------------------------------------------- the CUDA variant


@pytest.mark.parametrize("name", ["sage", "mla_decode", "paged_decode", "causal_bf16", "sinks"])
def test_template_as_the_cuda_schedule_renders_it(name, monkeypatch, rng):
    """The CUDA kernels cannot run here; their template can.  Render it with the CUDA
    schedule's storage (shared/local scopes, input-dtype K/V tiles) and tile sizes, then
    schedule that for the CPU."""
    spec = GALLERY[name].spec
    cuda, cpu = load_schedule("attention_cuda"), load_schedule("attention_cpu")
    config = cuda.default(spec, get_target("cuda-sm90a"))
    monkeypatch.setattr(cpu, "scopes", lambda s, t, c: cuda.scopes(s, get_target("cuda-sm90a"), config))
    kernel = build_kernel(spec, "cpu", {**config, "kv_tile": "input"}, use_cache=False)
    for length in (17, 65):
        result = check_length(kernel, length, batch=2, rng=rng)
        assert result.passed, (length, result.errors)


# ----------------------------------------------------------------------------- quantization


def test_int8_codes_and_scales_match_the_simulation(rng):
    """Sage's Ψ, stage (a) of methods.md 1.4: codes equal except rare 1-LSB ties, scales to
    float32 precision, the key mean to float32 precision."""
    import tvm

    from attngen.builder import compile_lowered

    spec = Attention(num_heads=4, num_kv_heads=2, head_dim=64, quant=Quant(block_q=32, block_k=16))
    low = lower(spec, "cpu")
    ex = compile_lowered(low, get_target("cpu"))
    inputs = FAMILY.sample(spec, {"batch": 2, "heads": 4, "q_len": 70, "kv_len": 90}, rng)
    sizes = FAMILY.sizes(spec, inputs)
    buf = {a.name: tvm.runtime.tensor(np.zeros(a.concrete_shape(sizes), a.dtype)) for a in low.args
           if a.role == "scratch"}
    buf.update({n: tvm.runtime.tensor(inputs[n]) for n in ("q", "k")})
    for call in low.calls[:2]:  # quantize_k, quantize_q
        ex[call.func](*(buf[n] for n in call.args))
    k_codes, k_scales, k_mean = ref_quant.quantize_int8_per_block(inputs["k"], 16, smooth=True)
    log2e = 1 / np.log(2)
    q_codes, q_scales, _ = ref_quant.quantize_int8_per_block(
        np.asarray(inputs["q"], np.float64) * spec.scale * log2e, 32)
    for got, want in ((buf["k_int8"], k_codes), (buf["q_int8"], q_codes)):
        diff = np.abs(got.numpy().astype(int) - want.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() <= 1e-3
    np.testing.assert_allclose(buf["k_scale"].numpy(), k_scales, rtol=1e-6)
    np.testing.assert_allclose(buf["q_scale"].numpy(), q_scales, rtol=1e-6)
    np.testing.assert_allclose(buf["k_mean"].numpy(), k_mean[..., 0, :], rtol=1e-5, atol=1e-6)


def test_quantized_attention_against_exact_attention(rng):
    """Stage (b): the kernel against exact softmax attention, with Sage's bounds."""
    from attngen.reference import softmax as ref

    spec = GALLERY["sage"].spec
    kernel = build(spec)
    inputs = FAMILY.sample(spec, {"batch": 1, "heads": 16, "q_len": 200, "kv_len": 200}, rng)
    inputs["k"] = (inputs["k"] + 3.0 * rng.standard_normal(128)).astype(np.float16)  # channel bias
    got = run(kernel, inputs)
    o, _ = ref.attention(inputs["q"], inputs["k"], inputs["v"], scale=spec.scale,
                         mask=ref.causal_mask(200, 200))
    err = errors(got["o"], o)
    assert err["cos"] >= 0.999 and err["rel_l1"] <= 0.03, err


@pytest.mark.parametrize("quant, field", [(Quant(pv="fp8_e4m3"), "quant.pv"),
                                          (Quant(qk="fp8_e4m3"), "quant.qk")])
def test_unimplemented_quantization_raises(quant, field):
    with pytest.raises(NotImplementedError, match=field):
        lower(Attention(num_heads=2, head_dim=64, quant=quant), "cpu")


@pytest.mark.parametrize("changes", [{"phase": Decode(1)}, {"kv_layout": Paged(16)}, {"sinks": True},
                                     {"score_mod": mods.softcap(20.0)}])
def test_quantization_outside_contiguous_prefill_raises(changes):
    with pytest.raises(NotImplementedError, match="Attention.quant"):
        lower(Attention(num_heads=2, head_dim=64, quant=Quant(), **changes), "cpu")


# ----------------------------------------------------------------------------- knobs


@pytest.mark.parametrize("config, message", [
    ({"block_q": 3}, "block_q"), ({"block_k": 512}, "block_k"), ({"kv_tile": "int8"}, "kv_tile"),
    ({"warps": 4}, "unknown knob"),
])
def test_invalid_knobs_are_rejected(config, message):
    with pytest.raises(ValueError, match=message):
        lower(GALLERY["causal"].spec, "cpu", config)


# ----------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("layout", ["bshd", "thd"])
@pytest.mark.parametrize("spec", [
    Attention(num_heads=4, num_kv_heads=2, head_dim=32, mask=masks.causal(), sinks=True),
    Attention(num_heads=2, head_dim=32, mask=masks.sliding_window(5), score_mod=mods.softcap(20.0),
              dtype="float32"),
    Attention(num_heads=2, head_dim=32, mask=masks.prefix_lm(4), dtype="bfloat16"),
], ids=["gqa_causal_sinks", "window_softcap", "prefix_lm"])
def test_layouts(layout, spec, rng):
    """Token-major and packed variable-length batches (one sequence empty, its lse -inf), the
    mask aligned per sequence; lengths across the tile."""
    kernel = build(spec.replace(layout=layout))
    for length in (1, 33, 65):
        result = check_length(kernel, length, batch=4 if layout == "thd" else 2, rng=rng)
        assert result.passed, (length, result.errors)


def test_packed_sequences_are_independent(rng):
    """A packed batch equals each sequence run alone (the reference is per sequence too, so
    this pins the packing itself: offsets, per-sequence lengths, the sequence index b)."""
    spec = Attention(num_heads=2, head_dim=32, mask=masks.causal(), dtype="float32", layout="thd")
    kernel = build(spec)
    inputs = FAMILY.sample(spec, {"batch": 3, "heads": 2, "q_len": 40, "kv_len": 40}, rng)
    packed = run(kernel, inputs)
    cu = inputs["cu_seqlens_q"]
    for b in range(3):
        rows = slice(cu[b], cu[b + 1])
        alone = {"q": inputs["q"][rows], "k": inputs["k"][rows], "v": inputs["v"][rows],
                 "cu_seqlens_q": np.array([0, cu[b + 1] - cu[b]], np.int32),
                 "cu_seqlens_k": np.array([0, cu[b + 1] - cu[b]], np.int32)}
        if cu[b + 1] == cu[b]:
            continue
        single = run(kernel, alone)
        np.testing.assert_array_equal(single["o"], packed["o"][rows])
        np.testing.assert_array_equal(single["lse"], packed["lse"][:, rows])
