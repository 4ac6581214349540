"""The benchmarks' knob sweeps stay valid as defaults move (a sweep entry that merges into an
invalid config fails the build step, far from the change that broke it), and the decode
table reports the paired paged / contiguous timing."""
import pytest
import torch

from attngen.builder import lower
from attngen.targets import get as get_target
from benchmarks import decode, prefill

SM90 = get_target("cuda-sm90a")


@pytest.mark.parametrize("case", decode.CASES + decode.MLA_CASES, ids=lambda c: c.name)
def test_every_decode_variant_lowers(case):
    for label, cfg in decode.variants(case):
        calls = [c.func for c in lower(decode.spec_of(case), SM90, cfg).calls]
        assert calls[0] in ("decode", "decode_mla"), (label, calls)


@pytest.mark.parametrize("case", prefill.CASES, ids=lambda c: c.name)
def test_every_prefill_variant_lowers(case):
    for cfg in prefill.variant_configs(case):
        assert [c.func for c in lower(prefill.spec_of(case), SM90, cfg).calls][-1] == "attention", cfg


def test_the_decode_table_gives_paged_over_contiguous():
    pairs = [{"case": "paged16 B32", "paged_ms": 0.2700, "contiguous_ms": 0.2600, "ratio": 1.038}]
    text = decode.markdown("H200", {"copy_gbps": 4200.0, "read_gbps": 4200.0}, [], [], pairs)
    assert "| paged16 B32 | 0.2700 | 0.2600 | 1.038x |" in text


def test_the_prefill_table_rates_a_variant_by_its_paired_default():
    rows = [{"case": "c", "impl": "attngen", "ms": 1.0, "tflops": 400.0},
            {"case": "c", "impl": "flex", "ms": 1.5, "tflops": 266.7}]
    checks = [{"case": "c", "rel_err_vs_flex": 1e-4}]
    variants = [{"case": "c", "config": {"warps": 8}, "ms": 0.9, "default_ms": 1.08, "tflops": 444.4,
                 "rel_err_vs_flex": 2e-4},
                {"case": "c", "config": {"warps": 4}, "ms": 0.8, "tflops": 500.0, "rel_err_vs_flex": 2e-4}]
    text = prefill.markdown("H200", rows, checks, variants)
    assert "| c | {'warps': 8} | 444.4 (0.900) | 1.20x | 1.67x | 2.0e-04 |" in text  # 1.08 / 0.9
    assert "| c | {'warps': 4} | 500.0 (0.800) | 1.25x | 1.88x | 2.0e-04 |" in text  # unpaired: 1.0 / 0.8


def test_paged_inputs_hold_the_contiguous_rows():
    """The paged runs read the same keys as the contiguous ones: page table[b, p] of the pool
    holds rows p P .. p P + P - 1 of sequence b (GQA: every KV head; MLA: the latent rows)."""
    P = 16
    bufs, (k, v) = decode.gqa_inputs(decode.Case("tiny", 2, 64, heads=4, kv_heads=2, dim=16, page_size=P), "cpu")
    latent, kv = decode.mla_inputs(decode.MLACase("tiny", 2, 64, heads=4, latent=32, rope=16, page_size=P), "cpu")
    for b in range(2):
        for p in range(64 // P):
            rows = slice(p * P, (p + 1) * P)
            assert torch.equal(bufs["k"][bufs["page_table"][b, p]], k[b, :, rows])
            assert torch.equal(bufs["v"][bufs["page_table"][b, p]], v[b, :, rows])
            assert torch.equal(latent["k"][latent["page_table"][b, p]], kv[b, :, rows])
    assert sorted(bufs["page_table"].flatten().tolist()) == list(range(2 * 64 // P))  # a permutation


def test_mask_forms_lower_one_mask_two_ways():
    """benchmarks/mask_forms.py: global + local as written repeats ``kv <= q``, factored it does
    not; the patch that lowers the written form is undone after it."""
    from attngen.softmax import predicate
    from benchmarks import mask_forms

    spec, cfg = mask_forms.prefill.spec_of(mask_forms.CASE), mask_forms.ONE_WG
    with mask_forms.as_written():
        written = predicate.mask_expr(spec)
        written_tir = lower(spec, SM90, cfg).mod.script()
    factored = predicate.mask_expr(spec)
    assert not written.same(factored) and written.same(predicate.reference_mask(spec))
    assert lower(spec, SM90, cfg).mod.script() != written_tir
    assert len(mask_forms.forms()) == 8
