"""Prefill speed: attngen's tensor-core kernel against SDPA (flash and cuDNN backends) and
FlexAttention (torch.compile, one compile per shape), in one process on one GPU.

Three steps, because the GPU hosts have only TVM's runtime:

    python benchmarks/prefill.py build DIR          # here: lower + compile every case to DIR
    python benchmarks/prefill.py check DIR          # on the GPU (source .gpu/env.sh first)
    python benchmarks/prefill.py run DIR [RESULTS]  # on the GPU

``check`` runs attngen.check.check_length (float64 references, NaN-poisoned outputs) on every
gallery spec that takes the tensor-core kernel and on tests/test_prefill_tc.py's extra shapes,
from the modules ``build`` exported (the same checks as that test file's GPU tests, which need
the compiler or a filled build cache where they run).

``run`` writes ``RESULTS/<card>-prefill.json`` ({"card", "rows": [{"case", "impl", "ms",
"tflops"}], "checks", "variants"}) and a markdown table beside it; ``$PREFILL_CASES`` (a regular
expression) picks a subset of the cases.  TFLOP/s count only unmasked work:
4 * B * H * Nq * Nk * d times the visible fraction of the mask (counted exactly, on the GPU,
from the same mask FlexAttention gets).  Times: CUDA events around each call after warm-up,
median of the repetitions; each variant is timed in turn with the default, one call of each
per round, and rated against that paired time.  The tile map is built once, outside the
timing, as FlexAttention's BlockMask is: a mask that reads no tensor (global + local) has it
kept by the driver per size (``Call.fills``), one that reads tensors (document ids) takes a plan built once
(``Kernel.plan``, reused across calls with the same ids); what building it costs per call is
in the checks (``map_ms``).  Every case is also checked against FlexAttention's output (or
SDPA's where Flex is absent) so that a fast wrong kernel cannot pass unnoticed.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks._common import (card_name, export_kernel, launcher, load_kernel, median_ms,  # noqa: E402
                                paired_ms, save_results)


@dataclass(frozen=True)
class Case:
    name: str
    batch: int
    n: int
    heads: int = 32
    kv_heads: int = 32
    dim: int = 128
    dtype: str = "float16"
    mask: str = "full"     # full | causal | window | global_local | document
    softcap: Optional[float] = None
    layout: str = "bhsd"   # "thd": the documents packed with cu_seqlens, causal inside each

    @property
    def sdpa(self) -> bool:
        """SDPA has these masks natively (is_causal); the others would need a dense N x N mask."""
        return self.mask in ("full", "causal") and self.softcap is None


WINDOW, GLOBAL, DOC_LEN = 1024, 64, 2048
CASES = [
    *(Case(f"dense d128 N{n}", 16384 // n, n) for n in (1024, 4096, 16384)),
    *(Case(f"causal d128 N{n}", 16384 // n, n, mask="causal") for n in (1024, 4096, 16384)),
    Case("dense d64 N4096", 4, 4096, dim=64),
    Case("causal d64 N4096", 4, 4096, dim=64, mask="causal"),
    Case("gqa 32/8 causal N4096", 4, 4096, kv_heads=8, mask="causal"),
    Case("bf16 causal N4096", 4, 4096, dtype="bfloat16", mask="causal"),
    Case("window 1024 causal N16384", 1, 16384, mask="window"),
    Case("global 64 + local 1024 causal N16384", 1, 16384, mask="global_local"),
    Case("document 8x2048 N16384", 1, 16384, mask="document"),
    Case("packed varlen 8x2048 causal N16384", 1, 16384, mask="document", layout="thd"),
    Case("softcap 30 causal N16384", 1, 16384, mask="causal", softcap=30.0),
]


# variants timed beside the default: knobs of schedules/attention_cuda_tc.py over its defaults
# (each names its mma: a config merges over that kernel's defaults)
TC = {"mma": "mma_sync"}
# one warpgroup, 64-key tiles (two CTAs per SM); two warpgroups, 128-key tiles; both non-persistent
# and with O stored by TMA, as the defaults are (variants name every knob the defaults vary)
WG1 = dict(mma="wgmma", warps=4, block_n=64, persistent=False, pingpong=False, tma_store=True)
WG2 = dict(WG1, warps=8, block_n=128)
# two warpgroups, persistent, taking turns on the tensor cores, O stored under the next tile
# (FlashAttention-3's schedule; the window's default)
TURNS = dict(WG2, persistent=True, pingpong=True, overlap=True)
# short rows: 128-row tiles read K/V from L2 half as often as WG1's 64 but run one CTA per SM,
# so the next tile's prologue must hide under this one's tail (persistent, turns); 128-row tiles
# of 64 keys keep global + local's 64 global keys one full tile
SHORT_ROW_VARIANTS = [WG1, WG2, dict(WG2, persistent=True), TURNS, dict(WG1, persistent=True),
                      dict(WG2, block_n=64), dict(TURNS, block_n=64)]
VARIANTS = {
    "dense d128 N1024": [TURNS],
    "causal d128 N1024": [TURNS],
    "causal d128 N4096": [WG1, TURNS],
    "causal d128 N16384": [WG1],
    "dense d64 N4096": [WG1, dict(TC, warps=4, m_tiles=1, block_n=64, q_in_registers=True)],
    "window 1024 causal N16384": SHORT_ROW_VARIANTS,
    "global 64 + local 1024 causal N16384": SHORT_ROW_VARIANTS,
    "document 8x2048 N16384": SHORT_ROW_VARIANTS,
    "packed varlen 8x2048 causal N16384": [dict(mma="wgmma", warps=8, block_n=128)],
}


def variant_configs(case: "Case") -> list:
    """The configs timed beside the default: VARIANTS; where the default loads by TMA (wgmma,
    a contiguous layout), the same kernel loading by cp.async, and with O written by plain
    stores instead of the TMA store; then the other tensor-core instruction (wgmma or
    mma.sync, whichever the default is not) where both serve the spec.  A variant that merges
    into the default is left out."""
    from attngen.resources import load_schedule
    from attngen.targets import get

    sched, target, spec = load_schedule("attention_cuda_tc"), get("cuda-sm90a"), spec_of(case)
    default = sched.default(spec, target)
    other = "mma_sync" if default["mma"] == "wgmma" else "wgmma"
    extra = []
    if default.get("tma"):  # cp.async (which has no persistent loop, turns or TMA store); plain stores
        extra = [{"mma": "wgmma", "tma": False, "persistent": False, "pingpong": False, "tma_store": False},
                 {"mma": "wgmma", "tma_store": False}]
    if other == "mma_sync" or sched.wgmma_unsupported_reason(spec, target) is None:
        extra.append({"mma": other})
    out = []
    for cfg in VARIANTS.get(case.name, []) + extra:  # merged over its kernel's default, as lower() does
        if {**sched.default(spec, target, cfg.get("mma", "mma_sync")), **cfg} != default and cfg not in out:
            out.append(cfg)
    return out


def selected() -> list:
    """The cases whose names match ``$PREFILL_CASES`` (a regular expression; all by default)."""
    import re

    pattern = re.compile(os.environ.get("PREFILL_CASES", ""))
    return [c for c in CASES if pattern.search(c.name)]


def _variant_file(case: "Case", cfg) -> str:
    return _file(case) + "__" + "_".join(f"{k}{v if isinstance(v, str) else int(v)}"
                                         for k, v in sorted(cfg.items()))


def spec_of(case: Case):
    from attngen import Attention, masks, mods

    mask = {"full": masks.full(), "causal": masks.causal(), "window": masks.sliding_window(WINDOW),
            "global_local": masks.global_local(GLOBAL, WINDOW, causal=True),
            "document": masks.document()}[case.mask]
    if case.layout == "thd":  # the sequences are the documents
        mask = masks.causal()
    return Attention(num_heads=case.heads, num_kv_heads=case.kv_heads, head_dim=case.dim,
                     dtype=case.dtype, mask=mask, layout=case.layout,
                     score_mod=None if case.softcap is None else mods.softcap(case.softcap))


def _file(case: Case) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in case.name)


# ----------------------------------------------------------------------------- build (no GPU)


CHECK_LENGTHS = (1, 63, 64, 65, 1000)
LONG_CHECKS = {"causal": (4096,), "gqa": (4096,)}


def check_specs() -> dict:
    """name -> spec: the supported gallery specs and the extra shapes of the tests (those whose
    names match ``$PREFILL_CHECKS``, a regular expression; all by default)."""
    import re

    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import test_prefill_tc as t
    from attngen.gallery import GALLERY

    specs = {**{n: GALLERY[n].spec for n in t.GALLERY_TC}, **{"x_" + n: s for n, s in t.EXTRA.items()}}
    pattern = re.compile(os.environ.get("PREFILL_CHECKS", ""))
    return {n: s for n, s in specs.items() if pattern.search(n)}


def check(build_dir: str) -> bool:
    import numpy as np
    from attngen.check import check_length
    from attngen.runtime import ensure_cuda_runtime
    from attngen.targets import get

    ensure_cuda_runtime()
    target, ok = get("cuda-sm90a"), True
    for name, spec in check_specs().items():
        kernel = load_kernel(spec, target, build_dir, "check_" + name)
        rng = np.random.default_rng(0)
        worst = {}
        for length in CHECK_LENGTHS + LONG_CHECKS.get(name, ()):
            r = check_length(kernel, length, batch=2 if length <= 257 else 1, rng=rng)
            ok &= r.passed
            for out, e in r.errors.items():
                worst[out] = max(worst.get(out, 0.0), e["rel_rmse"])
            if not r.passed:
                print(f"  {name} length {length}: FAIL {r.errors}", flush=True)
        print(f"{name:24s} worst rel_rmse "
              + ", ".join(f"{o} {v:.1e}" for o, v in worst.items()), flush=True)
    print("ALL PASS" if ok else "SOME FAILED", flush=True)
    return ok


def build(out_dir: str) -> None:
    from attngen.builder import lower
    from attngen.targets import get

    target = get("cuda-sm90a")
    os.makedirs(out_dir, exist_ok=True)
    if not os.environ.get("PREFILL_CASES") or os.environ.get("PREFILL_CHECKS"):
        for name, spec in check_specs().items():
            export_kernel(lower(spec, target), target, out_dir, "check_" + name)
            print("built check", name, flush=True)
    for case in selected():
        for file, cfg in [(_file(case), None)] + [(_variant_file(case, c), c) for c in variant_configs(case)]:
            low = lower(spec_of(case), target, cfg)
            script = low.mod.script()
            if "ptx_legacy.mma" not in script and "T.ptx.wgmma(" not in script:
                raise RuntimeError(f"{case.name}: expected the tensor-core kernel")
            export_kernel(low, target, out_dir, file)
            print("built", file, flush=True)


# ----------------------------------------------------------------------------- run (GPU)


WARMUP = 3  # untimed calls before each timing


def _mask_mod(case: Case, doc_ids):
    def full(b, h, q, kv):
        return q >= 0

    def causal(b, h, q, kv):
        return kv <= q

    def window(b, h, q, kv):
        return (kv <= q) & (q - kv < WINDOW)

    def global_local(b, h, q, kv):
        return (kv <= q) & ((q - kv < WINDOW) | (kv < GLOBAL) | (q < GLOBAL))

    def document(b, h, q, kv):
        return (doc_ids[b, q] == doc_ids[b, kv]) & (kv <= q)

    return {"full": full, "causal": causal, "window": window, "global_local": global_local,
            "document": document}[case.mask]


def _visible_fraction(case: Case, mask_mod, device) -> float:
    import torch

    n, rows = case.n, 1024
    kv = torch.arange(n, device=device)[None, :]
    b = torch.zeros((), dtype=torch.long, device=device)
    count = 0
    for r0 in range(0, n, rows):
        q = torch.arange(r0, min(r0 + rows, n), device=device)[:, None]
        count += int(mask_mod(b, 0, q, kv).expand(q.shape[0], n).sum())
    return count / (n * n)


def inputs(case: Case, dev: str = "cuda"):
    """(the kernel's feed, (q, k, v, o, lse, doc_ids) as [B, H, N, D] / [B, H, N] tensors): seeded
    normal q/k/v, NaN-poisoned outputs; packed cases feed [N, H, D] copies and views of o/lse."""
    import torch

    dt = getattr(torch, case.dtype)
    B, H, Hk, N, D = case.batch, case.heads, case.kv_heads, case.n, case.dim
    gen = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(B, H, N, D, device=dev, dtype=dt, generator=gen)
    k = torch.randn(B, Hk, N, D, device=dev, dtype=dt, generator=gen)
    v = torch.randn(B, Hk, N, D, device=dev, dtype=dt, generator=gen)
    o = torch.full((B, H, N, D), float("nan"), device=dev, dtype=dt)
    lse = torch.full((B, H, N), float("nan"), device=dev)
    doc_ids = (torch.arange(N, device=dev, dtype=torch.int32) // DOC_LEN).expand(B, N).contiguous()
    feed = {"q": q, "k": k, "v": v, "o": o, "lse": lse,
            **({"doc_ids": doc_ids} if case.mask == "document" else {})}
    if case.layout == "thd":  # one batch of N tokens: [N, H, D] views of the same values
        cu = torch.arange(0, N + 1, DOC_LEN, device=dev, dtype=torch.int32)
        tok = lambda x: x[0].transpose(0, 1).contiguous()
        o_packed = torch.full((N, H, D), float("nan"), device=dev, dtype=dt)
        feed = {"q": tok(q), "k": tok(k), "v": tok(v), "cu_seqlens_q": cu, "cu_seqlens_k": cu,
                "o": o_packed, "lse": torch.full((H, N), float("nan"), device=dev)}
        o = o_packed.transpose(0, 1)[None]  # compared as [1, H, N, D]
        lse = feed["lse"]
    return feed, (q, k, v, o, lse, doc_ids)


def run(build_dir: str, results_dir: str) -> None:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    from attngen.runtime import ensure_cuda_runtime
    from attngen.targets import get

    ensure_cuda_runtime()
    torch._dynamo.config.recompile_limit = 1000
    torch._dynamo.config.cache_size_limit = 1000
    flex = torch.compile(flex_attention, dynamic=False)
    target, dev = get("cuda-sm90a"), "cuda"
    card = card_name()
    rows, checks, variants = [], [], []

    def load(spec, file, feed):
        # the raw launches: the timing leaves out the driver's input checks
        return launcher(load_kernel(spec, target, build_dir, file), feed, keep_fills=True)

    for case in selected():
        spec = spec_of(case)

        B, H, Hk, N, D = case.batch, case.heads, case.kv_heads, case.n, case.dim
        feed, (q, k, v, o, lse, doc_ids) = inputs(case, dev)
        kernel = load_kernel(spec, target, build_dir, _file(case))
        fn = launcher(kernel, feed, keep_fills=True)  # the map: the first call only (kept / planned)
        map_calls = [c.func for c in kernel.calls if c.func.startswith("tile_")]

        mask_mod = _mask_mod(case, doc_ids)
        frac = _visible_fraction(case, mask_mod, dev)
        flops = 4 * B * H * N * N * D * frac
        cap = case.softcap
        score_mod = None if cap is None else (lambda s, b, h, qi, kvi: cap * torch.tanh(s / cap))
        block_mask = create_block_mask(mask_mod, B if case.mask == "document" else None, None, N, N,
                                       device=dev)

        def attngen():
            fn()

        def run_flex(q=q, k=k, v=v, block_mask=block_mask):  # bound now: the loop deletes them
            return flex(q, k, v, score_mod=score_mod, block_mask=block_mask, enable_gqa=Hk != H)

        impls = {"attngen": attngen, "flex": run_flex}
        if case.sdpa:
            causal = case.mask == "causal"
            for name, backend in (("sdpa_flash", SDPBackend.FLASH_ATTENTION),
                                  ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION)):
                def call(backend=backend, q=q, k=k, v=v):
                    with sdpa_kernel(backend):
                        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=Hk != H)
                impls[name] = call

        # correctness first: attngen against Flex (fp32 math of the same inputs is too big at 16K)
        attngen()
        torch.cuda.synchronize()
        ref = run_flex().float()
        err = float((o.float() - ref).norm() / ref.norm())
        finite = bool(torch.isfinite(o).all() and torch.isfinite(lse).all())
        reps = 30 if N <= 4096 else 15
        check = {"case": case.name, "rel_err_vs_flex": err, "finite": finite}
        if map_calls:  # the per-tile map's share of attngen's time
            check["map_ms"] = round(median_ms(launcher(kernel, feed, map_calls), reps, WARMUP), 4)
        checks.append(check)
        print(f"{case.name}: visible {frac:.3f}, rel err vs flex {err:.2e}, finite {finite}"
              + (f", tile map {check['map_ms']:.3f} ms" if map_calls else ""), flush=True)
        for impl, f in impls.items():
            try:
                ms = median_ms(f, reps, WARMUP)
            except Exception as exc:  # a backend that refuses the shape is reported, not fatal
                print(f"  {impl}: unavailable ({type(exc).__name__}: {str(exc)[:120]})", flush=True)
                continue
            rows.append({"case": case.name, "impl": impl, "ms": round(ms, 4),
                         "tflops": round(flops / ms / 1e9, 1)})
            print(f"  {impl:11s} {ms:8.3f} ms {flops / ms / 1e9:7.1f} TFLOP/s", flush=True)
        for cfg in variant_configs(case):
            vfn = load(spec, _variant_file(case, cfg), feed)
            o.fill_(float("nan"))
            vfn()
            torch.cuda.synchronize()
            verr = float((o.float() - ref).norm() / ref.norm())
            # timed in turn with the default, one call of each per round: a variant timed after
            # the default measured a few percent off (session 10: the TMA store on dense cases)
            pair = paired_ms({"default": attngen, "variant": vfn}, reps, WARMUP)
            ms = pair["variant"]
            variants.append({"case": case.name, "config": cfg, "ms": round(ms, 4),
                             "default_ms": round(pair["default"], 4),
                             "tflops": round(flops / ms / 1e9, 1), "rel_err_vs_flex": verr})
            print(f"  attngen {cfg}: {ms:8.3f} ms {flops / ms / 1e9:7.1f} TFLOP/s (err {verr:.1e})", flush=True)
        del q, k, v, o, lse, block_mask
        torch.cuda.empty_cache()

        save(results_dir, card, rows, checks, variants)  # after every case: a cut-off run keeps its rows
    with open(_base(results_dir, card) + ".md") as f:
        print(f.read())


def _base(results_dir, card):
    # $PREFILL_TAG names a separate results file (e.g. "-wgmma": <card>-prefill-wgmma.json)
    return os.path.join(results_dir, f"{card}-prefill{os.environ.get('PREFILL_TAG', '')}")


def save(results_dir, card, rows, checks, variants) -> None:
    save_results(_base(results_dir, card), [c.name for c in CASES], card, rows, checks, variants, markdown)


def markdown(card: str, rows, checks, variants=()) -> str:
    impls = ["attngen", "sdpa_flash", "sdpa_cudnn", "flex"]
    by = {(r["case"], r["impl"]): r for r in rows}
    err = {c["case"]: c["rel_err_vs_flex"] for c in checks}
    lines = [f"# Prefill on {card} (TFLOP/s of unmasked work; ms in parentheses)", "",
             "| case | " + " | ".join(impls) + " | attngen / flash | attngen / flex | rel err vs flex |",
             "|" + "---|" * (len(impls) + 4)]
    for case in dict.fromkeys(r["case"] for r in rows):
        cells = []
        for impl in impls:
            r = by.get((case, impl))
            cells.append("" if r is None else f"{r['tflops']} ({r['ms']:.3f})")
        a, fl, fx = (by.get((case, i)) for i in ("attngen", "sdpa_flash", "flex"))
        ratio = lambda x: "" if x is None or a is None else f"{x['ms'] / a['ms']:.2f}x"
        lines.append(f"| {case} | " + " | ".join(cells) + f" | {ratio(fl)} | {ratio(fx)} | {err.get(case, float('nan')):.1e} |")
    if variants:
        lines += ["", "Variants (knobs over the default's, same process):", "",
                  "| case | config | TFLOP/s (ms) | speed / default's (paired) | flex / variant | rel err vs flex |",
                  "|---|---|---|---|---|---|"]
        for v in variants:
            a, fx = by.get((v["case"], "attngen")), by.get((v["case"], "flex"))
            ratio = lambda ms: "" if ms is None else f"{ms / v['ms']:.2f}x"  # noqa: E731
            default_ms = v.get("default_ms", a and a["ms"])  # runs before session 10: unpaired
            lines.append(f"| {v['case']} | {v['config']} | {v['tflops']} ({v['ms']:.3f}) | "
                         f"{ratio(default_ms)} | {ratio(fx and fx['ms'])} | {v['rel_err_vs_flex']:.1e} |")
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
