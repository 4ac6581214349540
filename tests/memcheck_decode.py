"""Run every decode-path kernel on three shapes, for ``compute-sanitizer --tool memcheck``:

    compute-sanitizer --tool memcheck --error-exitcode 1 python tests/memcheck_decode.py

Kernels: the split-KV decode and its combine (plain and butterfly reductions, contiguous and
paged, several queries), absorbed-MLA decode (contiguous, paged, two row tiles), and H2O's
accumulated weights.  Shapes: lengths 1, 65 and 1000 in batches of 3 sequences of mixed
lengths, pages shuffled, NaN past every sequence; each run is also checked against its
float64 reference (exit 1 on a wrong result, so a silent out-of-bounds read that happens to
land on valid memory cannot pass for clean).  The kernels must be in the build cache
(``ATTNGEN_CACHE_DIR``; ``python tests/prebuild_gpu.py`` fills it).
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SHAPES = ((1, 3), (65, 3), (1000, 3))  # (length, batch)


def cases():
    """(label, spec, config) of every kernel variant checked."""
    import test_decode_cuda as plain
    import test_h2o as h2o_tests
    import test_mla_decode_cuda as mla

    out = [(f"decode:{n}", plain.SPECS[s], c) for n, (s, c) in sorted(plain.CASES.items())
           if n in ("decode", "paged_decode", "spec_decode", "sinks_window_d64", "decode+plain",
                    "gqa8_q8_paged64+stages2", "paged_decode+ring4+prefetch", "decode+ring2", "decode+registers")]
    out += [(f"mla:{n}", mla.SPECS[s], c) for n, (s, c) in sorted(mla.CASES.items())
            if n in ("mla_decode", "mla_paged16", "mla_q2_causal_paged32", "mla_decode+warps4+stages4",
                     "mla_paged64_bf16+warps4+stages3+2ctas", "mla_paged16+stages5+prefetch256",
                     "mla_paged16+cp_async", "mla_q2_causal_paged32+fused", "mla_sinks_softcap+fused",
                     "mla_q2_causal_paged32+streamk", "mla_paged16+streamk+cp_async",
                     "mla_paged16+fused", "mla_paged16+b3", "mla_q2_causal_paged32+streamk+b3",
                     "mla_paged16+channels", "mla_q2_causal_paged32+channels+fused",
                     "mla_paged64_bf16+channels+2ctas", "mla_q2_causal_paged32+lazy+fused",
                     "mla_paged16+lazy+channels")]
    out += [(f"h2o_weights:{n}", h2o_tests.SPECS[n], None) for n in ("gqa4", "spec4_causal_paged16_sinks")]
    return out


def prebuild(target: str = "cuda") -> None:
    from attngen import h2o
    from attngen.builder import ensure_cached

    for _, spec, config in cases():
        ensure_cached(spec, target, config or {})
        if config is None:
            h2o.ensure_weights_cached(spec, target)


def main() -> int:
    import torch

    from attngen import h2o
    from attngen.builder import build
    from attngen.check import check_length
    from attngen.softmax import data

    rng = np.random.default_rng(0)
    bad = 0
    for label, spec, config in cases():
        for length, batch in SHAPES:
            if config is not None:
                ok = check_length(build(spec, "cuda", config), length, batch=batch, rng=rng).passed
            else:  # H2O: decode, then the weights kernel against float64
                op = h2o.H2ODecode(spec, "cuda")
                inputs = data.sample(spec, {"batch": batch, "q_len": 1, "kv_len": length}, rng)
                feed = {n: torch.from_numpy(np.ascontiguousarray(x)).cuda() for n, x in inputs.items()}
                for n in ("q", "k", "v"):
                    feed[n] = feed[n].to(getattr(torch, spec.dtype))
                o, lse, w = op(**{n: feed[n] for n in op.attention.input_names})
                want = h2o.reference_weights(spec, inputs, lse.double().cpu().numpy())
                got = w.double().cpu().numpy()
                ok = bool(np.isfinite(got).all() and np.allclose(got, want, rtol=2e-2, atol=2e-3 * spec.group_size
                                                                 * spec.phase.q_len))
            torch.cuda.synchronize()
            print(f"{label} length {length} batch {batch}: {'ok' if ok else 'WRONG'}", flush=True)
            bad += not ok
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
