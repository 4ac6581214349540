"""One prefill config (a case of benchmarks/prefill.py) launched a few times, for a profiler
(no timing of its own):

    ncu --clock-control none --section SpeedOfLight --section WarpStateStats \\
        -k regex:attention_kernel -c 1 \\
        python benchmarks/prefill_once.py DIR "window 1024 causal N16384" '{}' [REPS]

DIR is a ``benchmarks/prefill.py build`` folder holding that case and config ('{}': the
default, else the variant's knobs as the benchmark names them); the inputs are the
benchmark's (``prefill.inputs``).
"""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks import prefill  # noqa: E402
from benchmarks._common import launcher, load_kernel  # noqa: E402


def main(build_dir: str, name: str, config: dict, reps: int = 3) -> None:
    import torch

    from attngen.runtime import ensure_cuda_runtime
    from attngen.targets import get

    ensure_cuda_runtime()
    case = next(c for c in prefill.CASES if c.name == name)
    file = prefill._variant_file(case, config) if config else prefill._file(case)
    kernel = load_kernel(prefill.spec_of(case), get("cuda-sm90a"), build_dir, file)
    go = launcher(kernel, prefill.inputs(case)[0], keep_fills=True)
    for _ in range(reps):
        go()
    torch.cuda.synchronize()
    print("ran", name, config or "default", reps, "times")


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 3)
