"""What a mask's form costs on the tensor cores: global 64 + local 1024 causal (the prefill
benchmark's case, N16384) as ``masks.global_local`` writes it, with ``kv <= q`` in both halves,
against the same mask with that conjunct factored out (what the kernels evaluate since session
11, ``E.factor_conjuncts``), beside the plain window with and without a tile map; each with
one warpgroup and 64 x 64 tiles (the map's default) and two warpgroups, 128 x 128, persistent.

    python benchmarks/mask_forms.py build DIR            # here (compiler, nvcc, no GPU)
    python benchmarks/mask_forms.py run DIR RESULTS      # on the GPU, with .gpu/env.sh sourced
    ncu --clock-control none --section InstructionStats -k regex:attention_kernel -s 1 -c 1 \\
        python benchmarks/mask_forms.py once DIR FILE    # one kernel, for a profiler

All kernels are timed in turn, one call of each per round (``paired_ms``), in two rounds of
medians; each row's TFLOP/s counts its own mask's unmasked work.  Results:
``RESULTS/<card>-mask-forms.json`` and ``.md``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks import prefill  # noqa: E402
from benchmarks._common import card_name, export_kernel, launcher, load_kernel, paired_ms  # noqa: E402

CASE = next(c for c in prefill.CASES if c.mask == "global_local")
ONE_WG = {"mma": "wgmma", "warps": 4, "block_n": 64, "persistent": False, "pingpong": False, "tma_store": True}
TWO_WG = {"mma": "wgmma", "warps": 8, "block_n": 128, "persistent": True, "pingpong": False, "tma_store": True}
ROUNDS, REPS, WARMUP = 2, 20, 3


def forms() -> list:
    """(file, mask label, spec, factored, config) of every kernel timed."""
    from attngen import masks

    global_local = prefill.spec_of(CASE)
    window = dataclasses.replace(global_local, mask=masks.sliding_window(prefill.WINDOW, causal=True))
    out = []
    for tiles, cfg in (("64x64", ONE_WG), ("128x128", TWO_WG)):
        out += [(f"global_local_written_{tiles}", "global + local, as written", global_local, False, cfg),
                (f"global_local_factored_{tiles}", "global + local, factored", global_local, True, cfg),
                (f"window_map_{tiles}", "window, tile map", window, True, {**cfg, "tile_map": True}),
                (f"window_band_{tiles}", "window, band", window, True, cfg)]
    return out


@contextlib.contextmanager
def as_written():
    """Lower masks as their specs write them: ``predicate.mask_expr`` without the factoring
    (the kernels as they were before session 11)."""
    from attngen.softmax import predicate

    factored = predicate.mask_expr
    predicate.mask_expr = predicate.reference_mask
    try:
        yield
    finally:
        predicate.mask_expr = factored


def build(out_dir: str) -> None:
    from attngen.builder import lower
    from attngen.targets import get

    target = get("cuda-sm90a")
    os.makedirs(out_dir, exist_ok=True)
    scripts = {}
    for file, _, spec, factored, cfg in forms():
        with contextlib.nullcontext() if factored else as_written():
            low = lower(spec, target, cfg)
        scripts[file] = low.mod.script()
        written = file.replace("_factored_", "_written_")
        if written != file and scripts[written] == scripts[file]:
            raise RuntimeError(f"{file}: the two forms lowered to the same kernel")
        export_kernel(low, target, out_dir, file)
        print("built", file, flush=True)


def _mask_mod(label: str):
    window, glob = prefill.WINDOW, prefill.GLOBAL
    if label.startswith("window"):
        return lambda b, h, q, kv: (kv <= q) & (q - kv < window)
    return lambda b, h, q, kv: (kv <= q) & ((q - kv < window) | (kv < glob) | (q < glob))


def run(build_dir: str, results_dir: str) -> None:
    import torch

    from attngen.runtime import ensure_cuda_runtime
    from attngen.targets import get

    ensure_cuda_runtime()
    target = get("cuda-sm90a")
    feed, (q, k, v, o, lse, _) = prefill.inputs(CASE)
    fns, flops, errs, ref = {}, {}, {}, None
    for file, label, spec, _, cfg in forms():
        fn = launcher(load_kernel(spec, target, build_dir, file), feed, keep_fills=True)
        o.fill_(float("nan"))
        fn()
        torch.cuda.synchronize()
        if label.startswith("global"):  # both forms of one mask: the same output
            ref = o.float().clone() if ref is None else ref
            errs[file] = float((o.float() - ref).norm() / ref.norm())
        frac = prefill._visible_fraction(CASE, _mask_mod(label), "cuda")
        flops[file] = 4 * CASE.batch * CASE.heads * CASE.n * CASE.n * CASE.dim * frac
        fns[file] = fn
    rounds = [paired_ms(fns, REPS, WARMUP) for _ in range(ROUNDS)]
    rows = []
    for file, label, _, _, cfg in forms():
        ms = [r[file] for r in rounds]
        rows.append({"file": file, "mask": label, "config": cfg, "ms": [round(m, 4) for m in ms],
                     "tflops": [round(flops[file] / m / 1e9, 1) for m in ms],
                     **({"rel_err_vs_first": errs[file]} if file in errs else {})})
        print(f"{file:30s} " + "  ".join(f"{m:.4f} ms {flops[file] / m / 1e9:6.1f} TFLOP/s" for m in ms),
              flush=True)
    card = card_name()
    base = os.path.join(results_dir, f"{card}-mask-forms")
    os.makedirs(results_dir, exist_ok=True)
    with open(base + ".json", "w") as f:
        json.dump({"card": card, "case": CASE.name, "rows": rows}, f, indent=1)
    with open(base + ".md", "w") as f:
        f.write(markdown(card, rows))
    print(markdown(card, rows))


def markdown(card: str, rows) -> str:
    lines = [f"# Mask forms on {card}: {CASE.name} (TFLOP/s of each mask's unmasked work; "
             f"{ROUNDS} rounds of paired medians)", "",
             "| mask | tiles | TFLOP/s per round | ms per round |", "|---|---|---|---|"]
    for r in rows:
        tiles = "128 x 128, persistent" if r["config"]["warps"] == 8 else "64 x 64"
        lines.append(f"| {r['mask']} | {tiles} | {' / '.join(map(str, r['tflops']))} | "
                     f"{' / '.join(f'{m:.3f}' for m in r['ms'])} |")
    return "\n".join(lines) + "\n"


def once(build_dir: str, file: str, reps: int = 3) -> None:
    import torch

    from attngen.runtime import ensure_cuda_runtime
    from attngen.targets import get

    ensure_cuda_runtime()
    _, _, spec, _, _ = next(f for f in forms() if f[0] == file)
    fn = launcher(load_kernel(spec, get("cuda-sm90a"), build_dir, file), prefill.inputs(CASE)[0],
                  keep_fills=True)
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    print("ran", file, reps, "times")


if __name__ == "__main__":
    usage = "usage: mask_forms.py build DIR | run DIR RESULTS | once DIR FILE"
    if len(sys.argv) < 2 or len(sys.argv) != {"build": 3, "run": 4, "once": 4}.get(sys.argv[1]):
        sys.exit(usage)
    {"build": lambda: build(sys.argv[2]), "run": lambda: run(sys.argv[2], sys.argv[3]),
     "once": lambda: once(sys.argv[2], sys.argv[3])}[sys.argv[1]]()
