"""Linear-attention speed: attngen's kernels against flash-linear-attention 0.6.0 (its ``chunk_*``
ops, Triton) in one process on one GPU, B=8, H=16, D=128, bf16, T=4096 and T=16384.

Three steps, because the GPU hosts have only TVM's runtime:

    python benchmarks/linear.py build DIR          # here: lower + compile every kernel to DIR
    python benchmarks/linear.py check DIR          # on the GPU (source .gpu/env.sh first)
    python benchmarks/linear.py run DIR [RESULTS]  # on the GPU

``check`` runs tests/test_linear_tc.py's and tests/test_linear_delta_tc.py's checks (``$LINEAR_CHECKS``, a
regular expression, picks specs by name) (float64 recurrence, NaN-poisoned outputs,
lengths 1..4096, gates near 0 and 1, final state) on every spec of that file, from the modules
``build`` exported (``$LINEAR_CHECKS``, a regular expression, picks a subset by name).

``run`` writes ``RESULTS/<card>-linear.json`` (``$LINEAR_RESULTS_NAME`` replaces ``linear``) ({"card", "rows": [{"case", "impl", "ms", "gflop",
"gbytes"}], "checks", "variants"}) and a markdown table beside it; ``$LINEAR_CASES`` (a regular
expression) picks a subset, ``$LINEAR_VARIANTS=0`` times the default configs only.  The
variants: retention (RetNet's fixed decay), simple_gla (Mamba2/SSD scalar decay), linear_attn
(no decay, no normaliser), gla (vector decay), delta_rule, gated_delta_rule, rwkv6 (vector decay
+ bonus u).  attngen runs its default kernel for each spec: the tensor-core chunkwise kernels
(templates/linear_chunk_tc.j2; gla and rwkv6: templates/linear_chunk_gla_tc.j2) and, for the
delta rule, templates/linear_delta_wy_tc.j2 + linear_delta_tc.j2.  Both sides take
an initial state and write the final state; each side gets its own layout ([B, H, T, D] for
attngen, [B, T, H, D] for fla, copied once outside the timing).  Work and bytes per case
(``gflop``: the chunkwise algorithm's multiply-adds x 2 with the intra-chunk products counted
causally, C = 64; ``gbytes``: q, k, v, o, gates, beta, both states, each once) give the roofline
in benchmarks/NOTES-linear.md.  Every case is also compared with fla's output, so that a fast
wrong kernel cannot pass unnoticed.  Times: CUDA events around each call after warm-up, median.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks._common import card_name, export_kernel, load_kernel, median_ms, save_results  # noqa: E402

B, H, D = 8, 16, 128
CHUNK = 64
DTYPE = "bfloat16"
# fla op and attngen spec fields per variant
VARIANTS = {
    "retention": dict(gate="fixed"),
    "simple_gla": dict(gate="scalar"),
    "linear_attn": dict(),
    "gla": dict(gate="vector"),
    "delta_rule": dict(update="delta"),
    "gated_delta_rule": dict(update="delta", gate="scalar"),
    "rwkv6": dict(gate="vector", bonus=True),
}
LENGTHS = (4096, 16384)
# attngen tile variants timed beside the default (schedules/linear_cuda_tc.py knobs; the delta
# rule's: schedules/linear_delta_cuda_tc.py)
TC_VARIANTS = ({"value_block": 32}, {"staged_store": True})
GLA_TC_VARIANTS = ({"value_block": 64},)  # gate "vector": 4 warps per CTA instead of 8
DELTA_VARIANTS = ({"passes": 2}, {"passes": 2, "stages": 2}, {"value_block": 32},
                  {"stages": 2})
# results file stem: RESULTS/<card>-<name>.{json,md}
RESULTS_NAME = os.environ.get("LINEAR_RESULTS_NAME", "linear")


@dataclass(frozen=True)
class Case:
    variant: str
    n: int

    @property
    def name(self) -> str:
        return f"{self.variant} T{self.n}"


CASES = [Case(v, n) for n in LENGTHS for v in VARIANTS]


def selected() -> list:
    import re

    pattern = re.compile(os.environ.get("LINEAR_CASES", ""))
    return [c for c in CASES if pattern.search(c.name)]


def spec_of(variant: str):
    from attngen import LinearAttention

    return LinearAttention(num_heads=H, head_dim=D, dtype=DTYPE, **VARIANTS[variant])


def _file(variant: str, cfg=None) -> str:
    return variant + "".join(f"__{k}{v}" for k, v in sorted((cfg or {}).items()))


def tc_variants(spec) -> tuple:
    if spec.update == "delta":
        return DELTA_VARIANTS
    return GLA_TC_VARIANTS if spec.gate == "vector" else TC_VARIANTS


def work(case: Case) -> tuple:
    """(GFLOP, GB) of one call: see the module docstring."""
    spec = spec_of(case.variant)
    tokens = B * H * case.n
    per_token = CHUNK * D + CHUNK * D + 4 * D * D  # Q K^T and P V (causal half), Q S, K^T V
    if spec.update == "delta":
        per_token += CHUNK * D + 2 * D * D + CHUNK * D  # K K^T, K S, the triangular solve
    gbytes = (4 * tokens * D * 2 + 2 * B * H * D * D * 4
              + tokens * 4 * (D if spec.gate == "vector" else 1 if spec.gate == "scalar" else 0)
              + (tokens * 4 if spec.update == "delta" else 0)) / 1e9
    return tokens * per_token / 1e9, gbytes


# ----------------------------------------------------------------------------- build (no GPU)


def check_specs() -> dict:
    """{name: (spec, check_spec)} of tests/test_linear_tc.py and tests/test_linear_delta_tc.py,
    the names picked by the regular expression $LINEAR_CHECKS (default: all)."""
    import re

    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import test_linear_delta_tc as d
    import test_linear_tc as t

    pattern = re.compile(os.environ.get("LINEAR_CHECKS", ""))
    return {name: (spec, m.check_spec) for m in (t, d) for name, spec in m.SPECS.items()
            if pattern.search(name)}


def build(out_dir: str) -> None:
    from attngen.builder import lower
    from attngen.linear import tensorcore
    from attngen.targets import get

    target = get("cuda-sm90a")
    os.makedirs(out_dir, exist_ok=True)
    for name, (spec, _) in check_specs().items():
        export_kernel(lower(spec, target), target, out_dir, "check_" + name)
        print("built check", name, flush=True)
    for variant in dict.fromkeys(c.variant for c in selected()):
        spec = spec_of(variant)
        configs = [None] + (list(tc_variants(spec)) if tensorcore.supported(spec, target) else [])
        for cfg in configs:
            export_kernel(lower(spec, target, cfg), target, out_dir, _file(variant, cfg))
            print("built", _file(variant, cfg), flush=True)


def check(build_dir: str) -> bool:
    import numpy as np

    from attngen.runtime import ensure_cuda_runtime
    from attngen.targets import get

    ensure_cuda_runtime()
    target, ok = get("cuda-sm90a"), True
    for name, (spec, check_spec) in check_specs().items():
        kernel = load_kernel(spec, target, build_dir, "check_" + name)
        worst = {}
        for what, passed, errors in check_spec(kernel, np.random.default_rng(0)):
            ok &= passed
            for out, e in errors.items():
                worst[out] = max(worst.get(out, 0.0), e["rel_rmse"])
            if not passed:
                print(f"  {name} {what}: FAIL {errors}", flush=True)
        print(f"{name:20s} worst rel_rmse " + ", ".join(f"{o} {v:.1e}" for o, v in worst.items()), flush=True)
    print("ALL PASS" if ok else "SOME FAILED", flush=True)
    return ok


# ----------------------------------------------------------------------------- run (GPU)


# fla's gate keyword per op kind, where it is not ``g`` (fused_recurrent_gla takes ``gk``)
_FLA_GATE_KW = {("fused_recurrent", "gla"): "gk", ("chunk", "rwkv6"): "w",
                ("fused_recurrent", "rwkv6"): "w"}


def fla_call(variant: str, t: dict, scale: float, kind: str = "chunk"):
    """fla's ``<kind>_<variant>`` op (kind "chunk" or "fused_recurrent"; the variants are named
    as fla's modules) on the [B, T, H, D] tensors of ``t``, initial state in, final state out."""
    import importlib

    op = getattr(importlib.import_module(f"fla.ops.{variant}"), f"{kind}_{variant}")
    spec = spec_of(variant)
    kwargs = dict(scale=scale, initial_state=t["initial_state"], output_final_state=True)
    if spec.gate in ("scalar", "vector"):
        kwargs[_FLA_GATE_KW.get((kind, variant), "g")] = t["g"]
    if spec.update == "delta":
        kwargs["beta"] = t["beta"]
    if spec.bonus:
        kwargs["u"] = t["bonus"]
    if variant == "linear_attn":
        kwargs["normalize"] = False  # fla's default divides by q . z; the spec has no normaliser
    return lambda: op(t["q"], t["k"], t["v"], **kwargs)


def make_inputs(spec, batch: int, n: int, dev) -> dict:
    """attngen's [B, H, T, ...] inputs of ``spec``: unit keys for the delta rule, log gates of
    logsigmoid(N(3, 1)) (mostly gates in (0.9, 1)), beta = sigmoid(N(0, 1)), a 0.1 N(0, 1)
    initial state; seeded, so every run times the same data."""
    import torch

    gen = torch.Generator(device=dev).manual_seed(0)
    H, D = spec.num_heads, spec.head_dim
    x = {n_: torch.randn(batch, H, n, D, device=dev, generator=gen) for n_ in ("q", "k", "v")}
    if spec.update == "delta":
        x["k"] = torch.nn.functional.normalize(x["k"], dim=-1)
    x = {n_: t.to(getattr(torch, spec.dtype)) for n_, t in x.items()}
    if spec.gate in ("scalar", "vector"):
        shape = (batch, H, n) + ((D,) if spec.gate == "vector" else ())
        x["g"] = torch.nn.functional.logsigmoid(3 + torch.randn(shape, device=dev, generator=gen))
    if spec.update == "delta":
        x["beta"] = torch.sigmoid(torch.randn(batch, H, n, device=dev, generator=gen))
    if spec.bonus:  # RWKV-6's u [H, D], float32 on both sides
        x["bonus"] = torch.randn(H, D, device=dev, generator=gen)
    x["initial_state"] = 0.1 * torch.randn(batch, H, D, D, device=dev, generator=gen)
    return x


def rel_error(a, b) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm())


def run(build_dir: str, results_dir: str) -> None:
    import torch

    from attngen.linear import tensorcore
    from attngen.runtime import ensure_cuda_runtime
    from attngen.targets import get

    ensure_cuda_runtime()
    target, dev = get("cuda-sm90a"), "cuda"
    card = card_name()
    rows, checks, variants = [], [], []
    for case in selected():
        spec = spec_of(case.variant)
        tc = tensorcore.supported(spec, target)
        x = make_inputs(spec, B, case.n, dev)
        # fla's layout: [B, T, H, ...]; the state is [B, H, K, V] on both sides
        f = {n: (t if n in ("initial_state", "bonus") else t.transpose(1, 2).contiguous()) for n, t in x.items()}
        gflop, gbytes = work(case)

        def launcher(file, x=x):  # x bound now: the loop deletes it after the case
            kernel = load_kernel(spec, target, build_dir, file)
            out = {a.name: torch.full(a.concrete_shape({"batch": B, "q_len": case.n}), float("nan"),
                                      device=dev, dtype=getattr(torch, a.dtype))
                   for a in kernel.args if a.role != "in"}
            tensors = {**x, **out}
            calls = [(kernel._funcs[c.func], [tensors[n] for n in c.args]) for c in kernel.calls]

            def call():  # the raw launches: the timing leaves out the driver's input checks
                for fn, args in calls:
                    fn(*args)
            call.parts = {c.func: (lambda fn=fn, args=args: fn(*args))
                          for c, (fn, args) in zip(kernel.calls, calls)}
            return call, out

        with torch.inference_mode():
            fla = fla_call(case.variant, f, spec.scale)
            ours, out = launcher(_file(case.variant))
            ours()
            torch.cuda.synchronize()
            o_ref, s_ref = fla()
            err_o = rel_error(out["o"].transpose(1, 2), o_ref)
            err_s = rel_error(out["final_state"], s_ref)
            finite = bool(torch.isfinite(out["o"]).all() and torch.isfinite(out["final_state"]).all())
            checks.append({"case": case.name, "rel_err_o_vs_fla": err_o, "rel_err_state_vs_fla": err_s,
                           "finite": finite, "attngen_kernel": "tensor-core" if tc else "simt"})
            print(f"{case.name}: {'tc' if tc else 'simt'}, rel err vs fla: o {err_o:.1e}, state {err_s:.1e}, "
                  f"finite {finite}", flush=True)
            slow = not tc  # the SIMT kernels take tens of ms: fewer repetitions
            for impl, fn in (("attngen", ours), ("fla", fla)):
                reps, warm = (3, 1) if slow and impl == "attngen" else (20, 3)
                ms = median_ms(fn, reps, warm)
                rows.append({"case": case.name, "impl": impl, "ms": round(ms, 4),
                             "gflop": round(gflop, 2), "gbytes": round(gbytes, 3)})
                print(f"  {impl:8s} {ms:9.3f} ms  {gflop / ms:7.1f} TFLOP/s  {gbytes / ms:6.2f} TB/s", flush=True)
            if len(ours.parts) > 1:  # where the time goes: each kernel of the program alone
                checks[-1]["calls_ms"] = {f: round(median_ms(p, 20, 3), 4) for f, p in ours.parts.items()}
                print(f"  attngen kernels (ms): {checks[-1]['calls_ms']}", flush=True)
            for cfg in (tc_variants(spec) if tc and os.environ.get("LINEAR_VARIANTS") != "0" else ()):
                vfn, vout = launcher(_file(case.variant, cfg))
                vfn()
                torch.cuda.synchronize()
                verr = rel_error(vout["o"].transpose(1, 2), o_ref)
                ms = median_ms(vfn, 20, 3)
                variants.append({"case": case.name, "config": cfg, "ms": round(ms, 4), "rel_err_o_vs_fla": verr})
                print(f"  attngen {cfg}: {ms:9.3f} ms (err vs fla {verr:.1e})", flush=True)
        del x, f
        torch.cuda.empty_cache()
        save(results_dir, card, rows, checks, variants)  # after every case: a cut-off run keeps its rows
    with open(_base(results_dir, card) + ".md") as f:
        print(f.read())


def _base(results_dir, card):
    return os.path.join(results_dir, f"{card}-{RESULTS_NAME}")


def save(results_dir, card, rows, checks, variants) -> None:
    save_results(_base(results_dir, card), [c.name for c in CASES], card, rows, checks, variants, markdown)


def markdown(card: str, rows, checks, variants) -> str:
    by = {(r["case"], r["impl"]): r for r in rows}
    info = {c["case"]: c for c in checks}
    best = {}
    for v in variants:
        if v["case"] not in best or v["ms"] < best[v["case"]]["ms"]:
            best[v["case"]] = v
    lines = [f"# Linear attention on {card}: B={B}, H={H}, D={D}, {DTYPE} (ms, median of CUDA-event times)", "",
             "| case | attngen kernel | attngen | fla 0.6.0 | fla / attngen | best variant | GFLOP | GB | rel err o vs fla |",
             "|---|---|---|---|---|---|---|---|---|"]
    for case in dict.fromkeys(r["case"] for r in rows):
        a, f = by.get((case, "attngen")), by.get((case, "fla"))
        ratio = "" if a is None or f is None else f"{f['ms'] / a['ms']:.2f}x"
        v = best.get(case)
        vtxt = "" if v is None else f"{v['ms']:.3f} ({v['config']})"
        ref = a or f
        c = info.get(case, {})
        ms = ["" if r is None else f"{r['ms']:.3f}" for r in (a, f)]
        lines.append(f"| {case} | {c.get('attngen_kernel', '')} | {ms[0]} | {ms[1]} | {ratio} | {vtxt} | "
                     f"{ref['gflop']} | {ref['gbytes']} | {c.get('rel_err_o_vs_fla', float('nan')):.1e} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in ("build", "check", "run"):
        sys.exit(__doc__)
    if sys.argv[1] == "build":
        build(sys.argv[2])
    elif sys.argv[1] == "check":
        sys.exit(0 if check(sys.argv[2]) else 1)
    else:
        run(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else os.path.join(ROOT, "benchmarks", "results"))
