"""Run every tensor-core linear-attention kernel on three shapes, for ``compute-sanitizer``:

    compute-sanitizer --tool memcheck --error-exitcode 3 python tests/memcheck_linear.py

Kernels: the scalar-gate kernel (no gate, RetNet's fixed decay, Mamba2's scalar gate, mLSTM,
elu+1 with the normaliser, O staged through shared memory), the GLA kernel (vector gate, and
RWKV-6's bonus at both value blocks) and the delta rule (WY + one-pass scan, and the two-pass
state/output split, with and without the gate).  Shapes: lengths 1, 65 and 1000 (one padded
chunk, one chunk + 1, several chunks with a tail), batch 2.  Each run is also checked against
its float64 reference by memcheck_prefill's loop (exit 1 on a wrong result: an out-of-bounds read
that lands on valid memory cannot pass for clean).  The kernels must be in the build cache
(``ATTNGEN_CACHE_DIR``; ``prebuild()`` fills it).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from memcheck_prefill import SHAPES, run  # noqa: E402, F401  (SHAPES: tests/test_memcheck.py counts runs)


def cases():
    """(label, spec, batch, config) of every kernel variant checked."""
    import test_linear_delta_tc as d
    import test_linear_tc as t

    out = [(n, t.SPECS[n], 2, t.CONFIGS.get(n)) for n in
           ("linear_attn", "retnet_bf16_d64", "mamba2_dv48", "mlstm", "elu1_normalize", "gla_bf16",
            "rwkv6", "rwkv6_bf16_vb64")]
    out += [("mamba2 staged", t.SPECS["mamba2"], 2, t.STAGED)]
    out += [(n, d.SPECS[n], 2, None) for n in ("deltanet", "gated_deltanet_d64_dv48")]
    out += [(n + " two passes", d.SPECS[n], 2, d.TWO_PASSES) for n in ("deltanet", "gated_deltanet_bf16")]
    return out


def prebuild(target: str = "cuda-sm90a") -> None:
    from attngen.builder import ensure_cached

    for _, spec, _, config in cases():
        ensure_cached(spec, target, config)


def main() -> int:
    return run(cases())


if __name__ == "__main__":
    sys.exit(main())
