"""One decode config (an MLA or a GQA case of benchmarks/decode.py) launched a few times, for
a profiler (no timing of its own):

    ncu --clock-control none --section SpeedOfLight -k regex:decode \\
        python benchmarks/mla_once.py DIR "MLA B64 H16 L8192" '{"fused_combine": true}' [REPS]
    ncu ... python benchmarks/mla_once.py DIR "paged16 B32 Hq32 Hkv8 L8192" '{}'

DIR is a ``benchmarks/decode.py build`` folder holding that case and config; the inputs are
the benchmark's (``decode.mla_inputs``, ``decode.gqa_inputs``).
"""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks import decode  # noqa: E402
from benchmarks._common import launcher  # noqa: E402


def main(build_dir: str, name: str, config: dict, reps: int = 3) -> None:
    import torch

    from attngen.runtime import ensure_cuda_runtime

    ensure_cuda_runtime()
    case = next(c for c in decode.MLA_CASES + decode.CASES if c.name == name)
    spec = decode.spec_of(case)
    bufs, _ = decode.mla_inputs(case) if isinstance(case, decode.MLACase) else decode.gqa_inputs(case)
    kernel = decode._load(build_dir, spec, config)
    decode._scratch(kernel, kernel.family.sizes(spec, bufs), bufs, "cuda")
    go = launcher(kernel, bufs)
    for _ in range(reps):
        go()
    torch.cuda.synchronize()
    print("ran", name, config, reps, "times")


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 3)
