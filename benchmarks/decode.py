"""Decode speed: attngen's bandwidth-bound decode kernel against SDPA (flash and cuDNN
backends) and FlexAttention (torch.compile, one compile per shape), in one process on one GPU,
next to the card's measured HBM bandwidth.

Two steps, because the GPU hosts have only TVM's runtime:

    python benchmarks/decode.py build DIR [CASE...]  # here: lower + compile every variant to DIR
    python benchmarks/decode.py run DIR [RESULTS [CASE...]]  # on the GPU (source .gpu/env.sh
                                                              # first); CASE: cases named exactly
    options of run: --tag T (results in <card>-decode-T.*), --no-flex (FlexAttention left out:
    its compile costs ~20 s of device time per shape, and no floor is stated against it)
    DECODE_SWEEP=0 (both steps): the default config alone, no knob sweep

``run`` writes ``RESULTS/<card>-decode.json`` ({"card", "hbm", "rows": [{"case", "impl",
"ms", "gbps", ...}], "checks"}) and a markdown table beside it.  ``gbps`` is the bytes of K
and V read once (``2 * B * Hkv * L * d * 2`` for fp16, whatever a peer actually reads) over
the time; ``hbm`` holds the card's copy bandwidth (bytes read + written by a 4 GiB
device-to-device copy, over its time) and read bandwidth (a 4 GiB fp16 sum), the ceiling the
kernels are measured against.  attngen runs as its two raw launches (decode, combine) on
preallocated buffers, so the timing leaves out the driver's input checks; its knobs are swept
over a few settings (rows ``attngen[knob=value]``), ``attngen`` being the default config.
Each case is checked against SDPA's output so that a fast wrong kernel cannot pass unnoticed.

MLA cases (absorbed form, one latent head of 512 + 64 channels, 16 query heads): ``gbps`` is
the latent cache read once (``B * L * 576 * 2``); there is no SDPA MLA, so the peer is the same
absorbed math in torch (bmm, fp32 softmax, bmm) and the check is against it in fp32.  The H2O
case times one decode step with its accumulated weights (``attngen.h2o``) against the decode
alone.  Kernels travel with their cubin (compiled here), so the GPU host compiles nothing.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, replace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks._common import card_name, export_kernel, launcher, load_kernel, median_ms, paired_ms  # noqa: E402


@dataclass(frozen=True)
class Case:
    name: str
    batch: int
    kv_len: int
    heads: int = 32
    kv_heads: int = 8
    dim: int = 128
    page_size: int = 0  # 0: contiguous cache

    @property
    def kv_bytes(self) -> int:
        return 2 * self.batch * self.kv_heads * self.kv_len * self.dim * 2


CASES = [
    Case("B32 Hq32 Hkv8 L8192", 32, 8192),
    Case("B8 Hq32 Hkv8 L32768", 8, 32768),
    Case("B64 Hq32 Hkv32 L4096", 64, 4096, kv_heads=32),
    Case("paged16 B32 Hq32 Hkv8 L8192", 32, 8192, page_size=16),
    Case("paged16 B8 Hq32 Hkv8 L32768", 8, 32768, page_size=16),
    Case("paged16 B64 Hq32 Hkv32 L4096", 64, 4096, kv_heads=32, page_size=16),
]
# knob settings tried besides the default (the 4-stage cp.async ring): the register path (v4),
# deeper rings (stages x keys per thread: the bytes in flight per CTA) and the L2 prefetch
SWEEP = [{"ring_stages": 0}, {"ring_stages": 2, "keys_per_thread": 4}, {"ring_stages": 3, "keys_per_thread": 2},
         {"ring_stages": 4, "keys_per_thread": 2, "l2_prefetch": 256}, {"pdl": False}]


@dataclass(frozen=True)
class MLACase:
    """Absorbed MLA (DeepSeek-V2/V3): 16 query heads over one latent head of 512 + 64 channels,
    V = its first 512; the bytes are the latent cache read once."""
    name: str
    batch: int
    kv_len: int
    heads: int = 16
    latent: int = 512
    rope: int = 64
    page_size: int = 0

    @property
    def kv_bytes(self) -> int:
        return self.batch * self.kv_len * (self.latent + self.rope) * 2


MLA_CASES = [
    MLACase("MLA B64 H16 L8192", 64, 8192),
    MLACase("MLA B8 H16 L32768", 8, 32768),
    MLACase("paged64 MLA B64 H16 L8192", 64, 8192, page_size=64),
    MLACase("paged16 MLA B64 H16 L8192", 64, 8192, page_size=16),
]
# the default on sm_90: one cp.async.bulk per latent row, Q K^T over 4 mma chains, 2 barriers per
# step (a paged cache: Q K^T by channels, 2 CTAs per SM); beside it the 16-byte cp.async path
# (sm_80's), session 5's default (2 chains, 3 barriers), the conditional rescale, either split of
# Q K^T, the split merge in the decode kernel, and the combine launched without PDL (stream_k,
# slower in every session-6 run, is left out)
CHANNELS_2CTAS = {"qk_split": "channels", "stages": 2, "ctas_per_sm": 2}
KEYS = {"qk_split": "keys", "stages": 4, "ctas_per_sm": 1}
MLA_SWEEP = [{**KEYS, "bulk_copy": False, "l2_prefetch": 128, "step_barriers": 3, "qk_chains": 2},
             {**KEYS, "qk_chains": 2, "step_barriers": 3}, KEYS, {"lazy_rescale": True}, CHANNELS_2CTAS,
             {**CHANNELS_2CTAS, "lazy_rescale": True}, {"fused_combine": True}, {"pdl": False},
             {**CHANNELS_2CTAS, "pdl": False}]
# H2O: the decode step plus its accumulated weights (one more read of K), against decode alone
H2O_CASES = [Case("H2O B32 Hq32 Hkv8 L8192", 32, 8192)]


def spec_of(case):
    from attngen import Attention, Decode, Paged

    layout = {"kv_layout": Paged(case.page_size)} if case.page_size else {}
    if isinstance(case, MLACase):
        return Attention(num_heads=case.heads, num_kv_heads=1, head_dim=case.latent + case.rope,
                         head_dim_v=case.latent, latent_kv=True, phase=Decode(1), **layout)
    return Attention(num_heads=case.heads, num_kv_heads=case.kv_heads, head_dim=case.dim,
                     phase=Decode(1), **layout)


def variants(case) -> list:
    """(label, config) pairs built for a case: the default config, then the sweep (left out
    with ``DECODE_SWEEP=0``, for both build and run)."""
    if case in H2O_CASES or os.environ.get("DECODE_SWEEP") == "0":
        return [("attngen", {})]
    sweep = MLA_SWEEP if isinstance(case, MLACase) else SWEEP
    return [("attngen", {})] + [("attngen[" + ",".join(f"{k}={v}" for k, v in cfg.items()) + "]", cfg)
                                 for cfg in sweep]


def _file(spec, config) -> str:
    """The build's file name: the spec's key and the config (not the cache key, which changes
    with every template edit between the build and the run)."""
    knobs = "_".join(f"{k}{v}" for k, v in sorted(config.items()))
    return spec.key + (f"_{knobs}" if knobs else "")


# ----------------------------------------------------------------------------- build (no GPU)


def build(out_dir: str, names=()) -> None:
    """Every case's kernels, or only the cases named in ``names``."""
    from attngen.builder import lower
    from attngen.targets import get

    target = get("cuda-sm90a")
    os.makedirs(out_dir, exist_ok=True)
    done = set()
    picked = [c for c in CASES + MLA_CASES + H2O_CASES if not names or c.name in names]
    for case in picked:
        # a paged case is also timed against its contiguous default, in alternation
        paired = [("attngen contiguous", {}, spec_of(replace(case, page_size=0)))] if case.page_size else []
        for label, cfg, spec in [(label, cfg, spec_of(case)) for label, cfg in variants(case)] + paired:
            name = _file(spec, cfg)
            if name in done:
                continue
            low = lower(spec, target, cfg)
            want = (["decode_mla" if spec.latent_kv else "decode"]
                    + ([] if cfg.get("fused_combine") else ["decode_combine"]))
            if [c.func for c in low.calls] != want:
                raise RuntimeError(f"{case.name}: expected the decode kernels, got {low.calls}")
            export_kernel(low, target, out_dir, name)
            done.add(name)
            print("built", case.name, label, flush=True)
    for case in (c for c in H2O_CASES if c in picked):
        from attngen import h2o

        spec = spec_of(case)
        export_kernel(h2o.weights_lowered(spec, target), target, out_dir, _file(spec, {}) + "_h2o_weights")
        print("built", case.name, "h2o_weights", flush=True)


# ----------------------------------------------------------------------------- run (GPU)


WARMUP = 5  # untimed calls before each timing


def hbm_bandwidth() -> dict:
    """GB/s of a 4 GiB device copy (bytes read + written) and of a 4 GiB fp16 sum (read)."""
    import torch

    n = 1 << 31  # fp16 elements: 4 GiB
    x = torch.ones(n, device="cuda", dtype=torch.float16)
    y = torch.empty_like(x)
    copy_ms = median_ms(lambda: y.copy_(x), 20, WARMUP)
    read_ms = median_ms(lambda: x.sum(dtype=torch.float32), 20, WARMUP)
    del x, y
    torch.cuda.empty_cache()
    return {"copy_gbps": round(2 * 2 * n / copy_ms / 1e6, 1), "read_gbps": round(2 * n / read_ms / 1e6, 1)}


def _load(build_dir, spec, cfg):
    from attngen.targets import get

    return load_kernel(spec, get("cuda-sm90a"), build_dir, _file(spec, cfg))


def run(build_dir: str, results_dir: str, only=(), tag: str = "", with_flex: bool = True) -> None:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.flex_attention import flex_attention

    from attngen.runtime import ensure_cuda_runtime

    ensure_cuda_runtime()
    torch._dynamo.config.recompile_limit = 1000
    torch._dynamo.config.cache_size_limit = 1000
    flex = torch.compile(flex_attention, dynamic=False)
    dev = "cuda"
    card = card_name()
    hbm = hbm_bandwidth()
    print(f"{card}: HBM copy {hbm['copy_gbps']} GB/s, read {hbm['read_gbps']} GB/s", flush=True)
    rows, checks, pairs = [], [], []
    for case in [c for c in MLA_CASES if not only or c.name in only]:
        run_mla(build_dir, case, hbm, rows, checks, pairs)
    for case in [c for c in H2O_CASES if not only or c.name in only]:
        run_h2o(build_dir, case, hbm, rows, checks)
    for case in [c for c in CASES if not only or c.name in only]:
        spec = spec_of(case)
        H, Hk = case.heads, case.kv_heads
        inputs, (k, v) = gqa_inputs(case, dev)
        q, kv_lens = inputs["q"], inputs["kv_lens"]
        with sdpa_kernel(SDPBackend.MATH):
            ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), enable_gqa=Hk != H)

        impls = {}
        for label, cfg in variants(case):
            kernel = _load(build_dir, spec, cfg)
            bufs = dict(inputs)
            _scratch(kernel, kernel.family.sizes(spec, bufs), bufs, dev)
            attngen = launcher(kernel, bufs)
            attngen()
            torch.cuda.synchronize()
            err = float((bufs["o"].float() - ref).norm() / ref.norm())
            checks.append({"case": case.name, "impl": label, "rel_err_vs_sdpa_fp32": err,
                           "finite": bool(torch.isfinite(bufs["o"]).all() and torch.isfinite(bufs["lse"]).all())})
            print(f"{case.name} {label}: rel err vs fp32 SDPA {err:.2e}", flush=True)
            impls[label] = (attngen, {"config": cfg})

        if not case.page_size:
            for name, backend in (("sdpa_flash", SDPBackend.FLASH_ATTENTION),
                                  ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION)):
                def native(backend=backend):
                    with sdpa_kernel(backend):
                        return F.scaled_dot_product_attention(q, k, v, enable_gqa=Hk != H)
                # a backend without GQA gets K/V expanded to every query head beforehand (it
                # then reads group-size times the bytes; gbps still counts K and V once)
                k_x, v_x = (k.repeat_interleave(H // Hk, dim=1), v.repeat_interleave(H // Hk, dim=1)) \
                    if Hk != H else (k, v)

                def expanded(backend=backend, k_x=k_x, v_x=v_x):
                    with sdpa_kernel(backend):
                        return F.scaled_dot_product_attention(q, k_x, v_x)
                for fn, note in ((native, "enable_gqa" if Hk != H else ""), (expanded, "kv expanded")):
                    try:
                        fn()
                        impls[name] = (fn, {"note": note})
                        break
                    except RuntimeError as exc:
                        print(f"  {name} ({note}): {str(exc)[:100]}", flush=True)
            if with_flex:
                impls["flex"] = (lambda: flex(q, k, v, enable_gqa=Hk != H), {"note": "torch.compile"})

        _time(rows, case, impls, hbm)
        if case.page_size:
            _pair(build_dir, case, impls["attngen"][0], {"q": q, "k": k, "v": v, "kv_lens": kv_lens}, pairs)
        del q, k, v, inputs, impls
        torch.cuda.empty_cache()

    os.makedirs(results_dir, exist_ok=True)
    base = os.path.join(results_dir, f"{card}-decode" + (f"-{tag}" if tag else "-subset" if only else ""))
    with open(base + ".json", "w") as f:
        json.dump({"card": card, "hbm": hbm, "rows": rows, "checks": checks, "pairs": pairs}, f, indent=1)
    with open(base + ".md", "w") as f:
        f.write(markdown(card, hbm, rows, checks, pairs))
    print(markdown(card, hbm, rows, checks, pairs))


def _row(case, impl, ms, hbm, info) -> dict:
    gbps = case.kv_bytes / ms / 1e6
    return {"case": case.name, "impl": impl, "ms": round(ms, 4), "gbps": round(gbps, 1),
            "of_hbm_copy": round(gbps / hbm["copy_gbps"], 3), "of_hbm_read": round(gbps / hbm["read_gbps"], 3),
            **info}


def _scratch(kernel, sizes, bufs, dev):
    """NaN-poisoned outputs and scratch (zeros where the program expects them)."""
    from attngen.kernel import allocate

    for a in kernel.args:
        if a.role != "in":
            bufs[a.name] = allocate(a, sizes, dev, float("nan"))


def _time(rows, case, impls, hbm):
    for impl, (fn, info) in impls.items():
        try:
            ms = median_ms(fn, 50, WARMUP)
        except Exception as exc:  # a peer that refuses the shape is reported, not fatal
            print(f"  {impl}: unavailable ({type(exc).__name__}: {str(exc)[:120]})", flush=True)
            continue
        rows.append(_row(case, impl, ms, hbm, info))
        print(f"  {impl:34s} {ms:8.4f} ms {rows[-1]['gbps']:7.0f} GB/s", flush=True)


def _pages(caches, page_size: int, gen):
    """Caches [B, Hk, L, D] cut into pages of page_size rows and scattered over pools
    [B * L / P, Hk, P, D] in one seeded random order: (pools, page table [B, L / P] int32)."""
    import torch

    B, Hk, L, D = caches[0].shape
    mp = L // page_size
    perm = torch.randperm(B * mp, device=caches[0].device, generator=gen)
    pools = [torch.empty_like(x).view(B * mp, Hk, page_size, D).index_copy_(
        0, perm, x.view(B, Hk, mp, page_size, D).transpose(1, 2).reshape(B * mp, Hk, page_size, D))
        for x in caches]
    return pools, perm.to(torch.int32).reshape(B, mp)


def gqa_inputs(case: Case, dev: str = "cuda"):
    """The case's kernel inputs (by name: q, k, v, kv_lens, and page_table when paged) and its
    contiguous K and V [B, Hk, L, D]: paged, the same rows cut into pages scattered over the
    pool in a random order (seeded, so every run reads the same layout)."""
    import torch

    B, H, Hk, L, D = case.batch, case.heads, case.kv_heads, case.kv_len, case.dim
    gen = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(B, H, 1, D, device=dev, dtype=torch.float16, generator=gen)
    k = torch.randn(B, Hk, L, D, device=dev, dtype=torch.float16, generator=gen)
    v = torch.randn(B, Hk, L, D, device=dev, dtype=torch.float16, generator=gen)
    bufs = {"q": q, "k": k, "v": v, "kv_lens": torch.full((B,), L, device=dev, dtype=torch.int32)}
    if case.page_size:
        (bufs["k"], bufs["v"]), bufs["page_table"] = _pages((k, v), case.page_size, gen)
    return bufs, (k, v)


def mla_inputs(case: MLACase, dev: str = "cuda"):
    """The case's kernel inputs (by name) and its contiguous latent cache [B, 1, L, D]: paged,
    the same rows cut into pages scattered over the pool in a random order."""
    import torch

    B, H, L, D = case.batch, case.heads, case.kv_len, case.latent + case.rope
    gen = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(B, H, 1, D, device=dev, dtype=torch.float16, generator=gen)
    kv = torch.randn(B, 1, L, D, device=dev, dtype=torch.float16, generator=gen)
    bufs = {"q": q, "k": kv, "kv_lens": torch.full((B,), L, device=dev, dtype=torch.int32)}
    if case.page_size:
        (bufs["k"],), bufs["page_table"] = _pages((kv,), case.page_size, gen)
    return bufs, kv


def _pair(build_dir, case, paged, contiguous_bufs, pairs) -> None:
    """The paged default and the contiguous default on the same cache's rows, timed in
    alternation (``paired_ms``): the paged floor is a ratio, so both sides share the moment."""
    cspec = spec_of(replace(case, page_size=0))
    kernel = _load(build_dir, cspec, {})
    _scratch(kernel, kernel.family.sizes(cspec, contiguous_bufs), contiguous_bufs, "cuda")
    ms = paired_ms({"paged": paged, "contiguous": launcher(kernel, contiguous_bufs)}, 50, WARMUP)
    pairs.append({"case": case.name, "paged_ms": round(ms["paged"], 4),
                  "contiguous_ms": round(ms["contiguous"], 4), "ratio": round(ms["paged"] / ms["contiguous"], 3)})
    print(f"  paired: paged {ms['paged']:.4f} ms, contiguous {ms['contiguous']:.4f} ms, "
          f"{ms['paged'] / ms['contiguous']:.3f}x", flush=True)


def run_mla(build_dir, case: MLACase, hbm, rows, checks, pairs) -> None:
    """attngen's MLA decode (default and sweep) against the same absorbed math in torch: S = q
    [c; k_rope]^T (one bmm over the latent cache, every head at once), fp32 softmax, O = P c."""
    import torch

    dev, spec = "cuda", spec_of(case)
    B, H, L, D, Dv = case.batch, case.heads, case.kv_len, case.latent + case.rope, case.latent
    bufs, kv = mla_inputs(case)
    q = bufs["q"]
    scale = spec.scale

    def torch_absorbed():
        s = torch.bmm(q.view(B, H, D), kv.view(B, L, D).transpose(1, 2)).float() * scale
        return torch.bmm(torch.softmax(s, -1).half(), kv.view(B, L, D)[..., :Dv])

    ref = torch.softmax(torch.bmm(q.view(B, H, D).float(), kv.view(B, L, D).float().transpose(1, 2)) * scale, -1) \
        @ kv.view(B, L, D)[..., :Dv].float()
    impls = {}
    for label, cfg in variants(case):
        kernel = _load(build_dir, spec, cfg)
        sizes = kernel.family.sizes(spec, bufs)
        _scratch(kernel, sizes, bufs, dev)
        go = launcher(kernel, bufs)
        go()
        torch.cuda.synchronize()
        o = bufs["o"].view(B, H, Dv).float()
        err = float((o - ref).norm() / ref.norm())
        checks.append({"case": case.name, "impl": label, "rel_err_vs_fp32_torch": err,
                       "finite": bool(torch.isfinite(bufs["o"]).all() and torch.isfinite(bufs["lse"]).all())})
        print(f"{case.name} {label}: rel err vs fp32 torch {err:.2e}", flush=True)
        impls[label] = (go, {"config": cfg})
    if not case.page_size:
        impls["torch_absorbed"] = (torch_absorbed, {"note": "bmm + fp32 softmax + bmm, same process"})
    _time(rows, case, impls, hbm)
    if case.page_size:
        _pair(build_dir, case, impls["attngen"][0], {"q": q, "k": kv, "kv_lens": bufs["kv_lens"]}, pairs)
    del q, kv, bufs, impls
    torch.cuda.empty_cache()


def run_h2o(build_dir, case: Case, hbm, rows, checks) -> None:
    """One H2O decode step (decode + accumulated weights) against the decode alone; gbps counts
    K and V once for both, so the ratio is the cost of the weights."""
    import torch

    from attngen.targets import get

    dev, spec = "cuda", spec_of(case)
    B, H, Hk, L, D = case.batch, case.heads, case.kv_heads, case.kv_len, case.dim
    gen = torch.Generator(device=dev).manual_seed(0)
    bufs = {"q": torch.randn(B, H, 1, D, device=dev, dtype=torch.float16, generator=gen),
            "k": torch.randn(B, Hk, L, D, device=dev, dtype=torch.float16, generator=gen),
            "v": torch.randn(B, Hk, L, D, device=dev, dtype=torch.float16, generator=gen),
            "kv_lens": torch.full((B,), L, device=dev, dtype=torch.int32)}
    kernel = _load(build_dir, spec, {})
    weights = load_kernel(spec, get("cuda-sm90a"), build_dir, _file(spec, {}) + "_h2o_weights")
    sizes = kernel.family.sizes(spec, bufs)
    _scratch(kernel, sizes, bufs, dev)
    _scratch(weights, sizes, bufs, dev)
    decode, weigh = launcher(kernel, bufs), launcher(weights, bufs)

    def step():
        decode()
        weigh()

    step()
    torch.cuda.synchronize()
    # the weights of each KV head sum to its 4 query heads' probabilities: 4 per (b, kv head)
    total = bufs["weights"].double().sum(-1)
    err = float((total - H // Hk).abs().max())
    checks.append({"case": case.name, "impl": "attngen+h2o_weights", "max_abs_err_weight_sums": err,
                   "finite": bool(torch.isfinite(bufs["weights"]).all())})
    print(f"{case.name}: weight sums off by at most {err:.2e}", flush=True)
    _time(rows, case, {"attngen": (decode, {}), "attngen+h2o_weights": (step, {"note": "decode + weights"}),
                       "h2o_weights": (weigh, {"note": "weights kernel alone (reads K)"})}, hbm)
    del bufs
    torch.cuda.empty_cache()


def markdown(card: str, hbm, rows, checks, pairs=()) -> str:
    err = {(c["case"], c["impl"]): c.get("rel_err_vs_sdpa_fp32", c.get("rel_err_vs_fp32_torch")) for c in checks}
    by = {(r["case"], r["impl"]): r for r in rows}
    lines = [f"# Decode on {card}: GB/s of K+V read once (ms in parentheses)", "",
             f"HBM copy {hbm['copy_gbps']} GB/s (read + written), fp16 sum {hbm['read_gbps']} GB/s (read).",
             "", "| case | impl | GB/s | ms | of HBM read | vs cuDNN | rel err vs fp32 | note |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cudnn = by.get((r["case"].replace("paged16 ", ""), "sdpa_cudnn"))
        vs = "" if cudnn is None else f"{r['gbps'] / cudnn['gbps']:.2f}x"
        e = err.get((r["case"], r["impl"]))
        note = r.get("note") or ""
        lines.append(f"| {r['case']} | {r['impl']} | {r['gbps']} | {r['ms']:.4f} | {r['of_hbm_read']:.2f} | "
                     f"{vs} | {'' if e is None else f'{e:.1e}'} | {note} |")
    if pairs:
        lines += ["", "Paged against contiguous (the defaults, timed in alternation in one loop):", "",
                  "| case | paged ms | contiguous ms | paged / contiguous |", "|---|---|---|---|"]
        lines += [f"| {p['case']} | {p['paged_ms']:.4f} | {p['contiguous_ms']:.4f} | {p['ratio']:.3f}x |"
                  for p in pairs]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in ("build", "run"):
        sys.exit(__doc__)
    if sys.argv[1] == "build":
        build(sys.argv[2], sys.argv[3:])
    else:
        argv, tag, flex_on = list(sys.argv[2:]), "", True
        if "--tag" in argv:
            i = argv.index("--tag")
            tag = argv[i + 1]
            del argv[i:i + 2]
        if "--no-flex" in argv:
            argv.remove("--no-flex")
            flex_on = False
        run(argv[0], argv[1] if len(argv) > 1 else os.path.join(ROOT, "benchmarks", "results"),
            argv[2:], tag, flex_on)
