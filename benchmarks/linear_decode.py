"""Linear-attention decoding: attngen's fused recurrent kernel against flash-linear-attention
0.6.0's ``fused_recurrent_*`` ops, in one process on one GPU.

    python benchmarks/linear_decode.py build DIR          # here (TVM + nvcc): export the kernels
    python benchmarks/linear_decode.py run DIR [RESULTS]  # GPU host (TVM runtime, torch, fla)

Cases: one decode step (T = 1) at batch 8 and 64, and a short sequence (T = 256, batch 8); H = 16,
D = Dv = 128, bf16, the six variants of benchmarks/linear.py.  attngen updates the state in
place (final_state is initial_state), timed twice: the raw launch (``attngen``) and through
``Kernel.run`` with its input checks, which is what ``AttentionOp.step`` runs
(``attngen_step``); fla reads the initial state and writes a new final state
(``output_final_state=True``), timed through its Python API (that is how it is called).  A step is bound
by the state's bytes (B x H x D x Dv fp32, read and written once), so rows carry ``gbps``:
state bytes x 2 + q, k, v, o, gates, beta, over the time.  Every case is compared with fla's
output (o and the final state) before timing.  Writes
``benchmarks/results/<card>-linear-decode.{json,md}``; ``$LINEAR_CASES`` (a regular
expression) picks a subset.
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks._common import (card_name, export_kernel, launcher, load_kernel,  # noqa: E402
                                median_ms, save_results)
from benchmarks.linear import VARIANTS, fla_call, make_inputs, rel_error  # noqa: E402  (same variants and data)

H, D = 16, 128
DTYPE = "bfloat16"
SHAPES = ((8, 1), (64, 1), (8, 256))  # (batch, tokens)


@dataclass(frozen=True)
class Case:
    variant: str
    batch: int
    n: int

    @property
    def name(self) -> str:
        return f"{self.variant} B{self.batch} T{self.n}"


CASES = [Case(v, b, n) for b, n in SHAPES for v in VARIANTS]


def selected() -> list:
    pattern = re.compile(os.environ.get("LINEAR_CASES", ""))
    return [c for c in CASES if pattern.search(c.name)]


def spec_of(variant: str):
    from attngen import LinearAttention

    return LinearAttention(num_heads=H, head_dim=D, dtype=DTYPE, form="recurrent", **VARIANTS[variant])


def gbytes(case: Case) -> float:
    spec = spec_of(case.variant)
    tokens = case.batch * H * case.n
    per_token = 4 * D * 2 + 4 * (D if spec.gate == "vector" else 1 if spec.gate == "scalar" else 0) \
        + (4 if spec.update == "delta" else 0)
    return (2 * case.batch * H * D * D * 4 + tokens * per_token) / 1e9


def build(out_dir: str) -> None:
    from attngen.builder import lower
    from attngen.targets import get

    target = get("cuda-sm90a")
    os.makedirs(out_dir, exist_ok=True)
    for variant in dict.fromkeys(c.variant for c in selected()):
        export_kernel(lower(spec_of(variant), target), target, out_dir, variant)
        print("built", variant, flush=True)


def run(build_dir: str, results_dir: str) -> None:
    import torch

    from attngen.runtime import ensure_cuda_runtime
    from attngen.targets import get

    ensure_cuda_runtime()
    target, dev, card = get("cuda-sm90a"), "cuda", card_name()
    rows, checks = [], []
    with torch.inference_mode():
        for case in selected():
            spec = spec_of(case.variant)
            x = make_inputs(spec, case.batch, case.n, dev)
            f = {n: (t if n == "initial_state" else t.transpose(1, 2).contiguous()) for n, t in x.items()}
            f["initial_state"] = x["initial_state"].clone()
            kernel = load_kernel(spec, target, build_dir, case.variant)
            o = torch.full(x["v"].shape, float("nan"), device=dev, dtype=x["v"].dtype)
            state = x["initial_state"].clone()
            buffers = {**x, "initial_state": state, "final_state": state, "o": o}  # in place
            ours, fla = launcher(kernel, buffers), fla_call(case.variant, f, spec.scale, "fused_recurrent")
            ours()
            o_ref, s_ref = fla()
            torch.cuda.synchronize()
            err_o, err_s = rel_error(o.transpose(1, 2), o_ref), rel_error(state, s_ref)
            checks.append({"case": case.name, "rel_err_o_vs_fla": err_o, "rel_err_state_vs_fla": err_s,
                           "finite": bool(torch.isfinite(o).all() and torch.isfinite(state).all())})
            print(f"{case.name}: rel err vs fla: o {err_o:.1e}, state {err_s:.1e}", flush=True)
            gb = gbytes(case)
            named = {a.name: buffers[a.name] for a in kernel.args if a.role == "in"}
            api = lambda: kernel.run(named, {"final_state": state})  # noqa: E731  (what op.step runs)
            for impl, fn in (("attngen", ours), ("attngen_step", api), ("fla", fla)):
                ms = median_ms(fn, 50, 5)
                rows.append({"case": case.name, "impl": impl, "ms": round(ms, 5), "gbytes": round(gb, 4),
                             "gbps": round(gb / ms * 1e3, 1)})
                print(f"  {impl:8s} {ms * 1e3:8.1f} us  {gb / ms * 1e3:7.1f} GB/s", flush=True)
            save(results_dir, card, rows, checks)
    with open(_base(results_dir, card) + ".md") as f:
        print(f.read())


def _base(results_dir, card):
    return os.path.join(results_dir, f"{card}-linear-decode")


def save(results_dir, card, rows, checks) -> None:
    save_results(_base(results_dir, card), [c.name for c in CASES], card, rows, checks, [], markdown)


def markdown(card: str, rows, checks, variants=()) -> str:
    by = {(r["case"], r["impl"]): r for r in rows}
    info = {c["case"]: c for c in checks}
    lines = [f"# Linear-attention decoding on {card}: H={H}, D=Dv={D}, {DTYPE}, state fp32 "
             "(us, median of CUDA-event times; GB/s of state read + written and token data)", "",
             "| case | attngen us | attngen step() us | fla us | fla / attngen | fla / step() | attngen GB/s "
             "| fla GB/s | rel err o vs fla | state |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for case in dict.fromkeys(r["case"] for r in rows):
        a, st, f = (by.get((case, i)) for i in ("attngen", "attngen_step", "fla"))
        if a is None or f is None or st is None:
            continue
        c = info.get(case, {})
        lines.append(f"| {case} | {a['ms'] * 1e3:.1f} | {st['ms'] * 1e3:.1f} | {f['ms'] * 1e3:.1f} | "
                     f"{f['ms'] / a['ms']:.2f}x | {f['ms'] / st['ms']:.2f}x | "
                     f"{a['gbps']:.0f} | {f['gbps']:.0f} | {c.get('rel_err_o_vs_fla', float('nan')):.1e} | "
                     f"{c.get('rel_err_state_vs_fla', float('nan')):.1e} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in ("build", "run"):
        sys.exit(__doc__)
    if sys.argv[1] == "build":
        build(sys.argv[2])
    else:
        run(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else os.path.join(ROOT, "benchmarks", "results"))
