"""Run every tensor-core prefill kernel variant on three shapes, for ``compute-sanitizer``:

    compute-sanitizer --tool memcheck --error-exitcode 1 python tests/memcheck_prefill.py
    MEMCHECK_CASES="tma|persistent" compute-sanitizer ...   # the labels that match, only

Variants (tests/test_prefill_tc.py's specs): the band loop with full and partial tiles
(causal, sliding window, GQA, d256), the per-tile map's three kernels (document ids, a mask
per head, prefix-LM), token-major q/k/v, packed sequences with their tile pre-pass (one
sequence empty), sinks and a softcap; and the wgmma kernel (``mma = "wgmma"``, both schedules)
on a band, a map, a score mod, sinks, token-major inputs and packed sequences.  Shapes: lengths 1, 65 and 1000 (tile - 63, one tile +
1, several tiles with a tail), batches of 3 (4 packed sequences).  Each run is also checked
against its float64 reference (exit 1 on a wrong result: an out-of-bounds read that lands on
valid memory cannot pass for clean).  The kernels must be in the build cache
(``ATTNGEN_CACHE_DIR``; ``python tests/prebuild_gpu.py`` fills it).
"""
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SHAPES = (1, 65, 1000)


def cases():
    """(label, spec, batch, config) of every kernel variant checked."""
    import test_prefill_tc as t
    from attngen.gallery import GALLERY

    gallery = ("causal", "sliding_window", "gqa", "document", "prefix_lm", "sinks", "softcap")
    # mma.sync by name: on sm_90a the default is wgmma wherever it serves the spec
    out = [(n, GALLERY[n].spec, 3, t.MMA_SYNC) for n in gallery]
    out += [(n, t.EXTRA[n], 3, t.MMA_SYNC) for n in ("d256", "d64_head_map", "d64_bshd_document")]
    out += [(n, t.PACKED[n], 4, t.MMA_SYNC) for n in ("d64_thd_causal_sinks",)]
    out += [(n + " wgmma", GALLERY[n].spec, 3, t.WGMMA)
            for n in ("causal", "sliding_window", "document", "sinks", "softcap")]
    out += [("d64_bshd_document wgmma", t.EXTRA["d64_bshd_document"], 3, t.WGMMA),
            ("d128_global_local_causal wgmma", t.EXTRA["d128_global_local_causal"], 3, t.WGMMA),
            ("causal wgmma plain", GALLERY["causal"].spec, 3, t.WGMMA_PLAIN),
            ("d64_thd_causal_sinks wgmma", t.PACKED["d64_thd_causal_sinks"], 4, t.WGMMA)]
    # a paged cache on tensor cores, the conditional rescale (clean on an H200, session 7)
    out += [(n, spec, 3, config) for n, (spec, config) in sorted(t.PAGED_TC.items())]
    out += [("causal wgmma lazy", GALLERY["causal"].spec, 3, t.LAZY)]
    # TMA loads from a producer warpgroup on mbarriers, by name, with ping-pong and persistent
    out += [(f"{n} wgmma tma", *t.TMA_WGMMA[n][:1], 3, t.TMA_WGMMA[n][1])
            for n in ("causal", "causal_plain", "document", "d64_bshd_document", "causal_pingpong",
                      "causal_store", "document_store", "window_cluster", "document_cluster",
                      "causal_pingpong_cluster")]
    out += [(f"{n} wgmma persistent", *t.PERSISTENT_WGMMA[n][:1], 3, t.PERSISTENT_WGMMA[n][1])
            for n in ("causal", "sliding_window", "causal_pingpong", "causal_store", "document_store",
                      "document_wg2_store",
                      "window_pingpong_store", "window_head_major", "document_pingpong_head_major_store")]
    return out


def prebuild(target: str = "cuda-sm90a") -> None:
    from attngen.builder import ensure_cached

    for _, spec, _, config in cases():
        ensure_cached(spec, target, config)


def run(checked) -> int:
    """Check every (label, spec, batch, config) of ``checked`` at each of ``SHAPES`` against
    float64 (memcheck_linear.py runs its cases through this too): 1 if any was wrong."""
    import torch

    from attngen.builder import build
    from attngen.check import check_length

    rng = np.random.default_rng(0)
    bad = 0
    for label, spec, batch, config in checked:
        kernel = build(spec, "cuda", config)
        for length in SHAPES:
            ok = check_length(kernel, length, batch=batch, rng=rng).passed
            torch.cuda.synchronize()
            print(f"{label} length {length} batch {batch}: {'ok' if ok else 'WRONG'}", flush=True)
            bad += not ok
    return 1 if bad else 0


def main() -> int:
    pattern = re.compile(os.environ.get("MEMCHECK_CASES", ""))
    return run([c for c in cases() if pattern.search(c[0])])


if __name__ == "__main__":
    sys.exit(main())
