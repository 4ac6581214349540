"""Cold start: a cold compile here, the first call from the on-disk cache on the GPU host.

    python benchmarks/cold_start.py build DIR     # here: cold compile into DIR/cache (fresh process)
    python benchmarks/cold_start.py run DIR       # GPU host: fresh process, cache hit, new lengths

``build`` compiles one gallery prefill spec (``causal``: 16 heads, d128, fp16, the tensor-core
kernel) in a fresh Python process into an empty cache, timing each step: importing attngen and
TVM's compiler, rendering + scheduling (``lower``), ``tvm.compile``, and writing the entry
(exporting the library and nvcc to a cubin).  It also fills the cache with every config
``attngen.compile`` may pick on a GPU (the default and each valid tuned one).

``run`` starts a fresh process on the GPU host that creates its inputs on the GPU first (CUDA
context and torch start-up are the user's, not ours), then times ``import attngen``,
``attngen.compile(spec)`` (a cache hit: the library and its cubin, no compiler, no nvcc), and
the first call; then it calls the op at lengths it never saw, with the compiler entry point
replaced by one that fails, and reports each first call: a new length never builds.
Both print one JSON document (also written to DIR/<step>.json).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

SPEC = "causal"
NEW_LENGTHS = (1, 37, 129, 1000, 3000, 5000, 12345)

_BUILD = textwrap.dedent("""
    import json, sys, time
    t0 = time.perf_counter()
    import attngen, tvm
    from attngen import builder
    from attngen.gallery import GALLERY
    from attngen.targets import get
    t1 = time.perf_counter()
    spec, target = GALLERY[sys.argv[1]].spec, get("cuda-sm90a")
    entry = builder.cache_dir() / builder.cache_key(spec, target, {})
    lowered = builder.lower(spec, target, None)
    t2 = time.perf_counter()
    ex = builder.compile_lowered(lowered, target)
    t3 = time.perf_counter()
    builder._write_entry(entry, ex, lowered, target)
    t4 = time.perf_counter()
    assert json.loads((entry / "meta.json").read_text())["cubin"], "no cubin in the entry"
    print(json.dumps({"import_s": t1 - t0, "lower_s": t2 - t1, "tvm_compile_s": t3 - t2,
                      "export_and_nvcc_s": t4 - t3, "compile_s": t4 - t1, "cold_s": t4 - t0}))
""")

_RUN = textwrap.dedent("""
    import json, os, sys, time
    import torch
    name, lengths = sys.argv[1], [int(x) for x in sys.argv[2].split(",")]
    def inputs(n, b=1, h=16, d=128):
        return [torch.randn(b, h, n, d, device="cuda", dtype=torch.float16) for _ in range(3)]
    q, k, v = inputs(4096, 4)
    torch.cuda.synchronize()
    cache = os.environ["ATTNGEN_CACHE_DIR"]
    entries = sorted(os.listdir(os.path.join(cache, "kernels")))
    t0 = time.perf_counter()
    import attngen
    from attngen.gallery import GALLERY
    t1 = time.perf_counter()
    op = attngen.compile(GALLERY[name].spec, "cuda")  # a hit loads through tvm_ffi: no `import tvm`
    t2 = time.perf_counter()
    o, lse = op(q, k, v)
    torch.cuda.synchronize()
    t3 = time.perf_counter()
    import attngen.builder as builder
    def no_build(*a, **k):
        raise AssertionError("a new sequence length triggered a build")
    builder.compile_lowered = builder.lower = no_build
    firsts, errors = {}, {}
    for n in lengths:
        q, k, v = inputs(n)
        torch.cuda.synchronize()
        s = time.perf_counter()
        o, lse = op(q, k, v)
        torch.cuda.synchronize()
        firsts[n] = time.perf_counter() - s
        want = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        errors[n] = (o.float() - want.float()).abs().max().item()
    print(json.dumps({
        "device": torch.cuda.get_device_name(), "spec": repr(op.spec), "kernels": len(op.kernels),
        "import_attngen_s": t1 - t0, "tvm_package_imported": "tvm" in sys.modules,
        "compile_from_cache_s": t2 - t1, "first_call_s": t3 - t2,
        "import_to_first_output_s": t3 - t0, "new_length_first_call_s": firsts,
        "new_length_max_abs_err_vs_sdpa": errors,
        "cache_entries_before": len(entries),
        "cache_entries_after": len(os.listdir(os.path.join(cache, "kernels")))}))
""")


def _fresh(code: str, args, cache: Path) -> dict:
    env = {**os.environ, "ATTNGEN_CACHE_DIR": str(cache)}
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                       text=True, env=env, timeout=600)
    if r.returncode:
        raise SystemExit(r.stdout + r.stderr)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["process_wall_s"] = time.perf_counter() - start  # incl. Python start-up
    return out


def cmd_build(d: Path) -> dict:
    import shutil

    cache = d / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    out = _fresh(_BUILD, [SPEC], cache)
    os.environ["ATTNGEN_CACHE_DIR"] = str(cache)
    from attngen.builder import ensure_cached
    from attngen.gallery import GALLERY
    from attngen.targets import get
    from attngen.tune import database
    from attngen.tune.space import is_valid

    spec, target = GALLERY[SPEC].spec, get("cuda-sm90a")
    configs = {json.dumps(r["config"], sort_keys=True) for r in database.all_records()
               if r["spec"] == spec.key and r["target"] == target.name and r["valid"]
               and is_valid(spec, target, r["config"])}
    for c in configs:  # whatever compile may pick on the GPU host is a cache hit there
        ensure_cached(spec, target, json.loads(c))
    out.update(spec=SPEC, tuned_configs_cached=len(configs), host_cpus=os.cpu_count())
    return out


def cmd_run(d: Path) -> dict:
    return _fresh(_RUN, [SPEC, ",".join(map(str, NEW_LENGTHS))], d / "cache")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in ("build", "run"):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    d = Path(argv[1])
    d.mkdir(parents=True, exist_ok=True)
    out = (cmd_build if argv[0] == "build" else cmd_run)(d)
    text = json.dumps(out, indent=1)
    (d / f"{argv[0]}.json").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
