"""Fill the build cache with every kernel the GPU tests use, for a GPU host with only TVM's
runtime (no compiler): run here, then carry the cache to the GPU host.

    ATTNGEN_CACHE_DIR=.gpucache python tests/prebuild_gpu.py [MODULE ...]
    # on the GPU host, with .gpu and .gpucache carried:
    source .gpu/env.sh && ATTNGEN_CACHE_DIR=.gpucache python -m pytest -m gpu tests
"""
import importlib
import os
import sys
import time

MODULES = ("test_softmax_gpu", "test_linear_gpu", "test_linear_tc", "test_linear_delta_tc",
           "test_linear_fused", "test_prefill_tc",
           "test_decode_cuda", "test_mla_decode_cuda", "test_h2o", "memcheck_decode",
           "memcheck_prefill", "memcheck_linear", "test_export")


def main(names=()) -> int:
    """Every module's kernels, or only those of ``names`` (a device call carries at most 64
    MiB, so a big cache goes in parts)."""
    if not os.environ.get("ATTNGEN_CACHE_DIR"):
        print("set ATTNGEN_CACHE_DIR to the cache folder you will carry", file=sys.stderr)
        return 2
    unknown = sorted(set(names) - set(MODULES))
    if unknown:
        print(f"unknown modules {unknown}; choose from {', '.join(MODULES)}", file=sys.stderr)
        return 2
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    for name in names or MODULES:
        start = time.perf_counter()
        importlib.import_module(name).prebuild()
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
