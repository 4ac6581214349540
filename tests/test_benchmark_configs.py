"""The benchmarks' knob sweeps stay valid as defaults move (a sweep entry that merges into an
invalid config fails the build step, far from the change that broke it), and the decode
table reports the paired paged / contiguous timing."""
import pytest

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
