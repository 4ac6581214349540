"""``attngen tune``: candidates -> parallel builds -> validated timings -> database -> table.

One host (the target's device is here):   tune(spec, target, ...)
Two hosts (build here, measure there):    build_only(...) -> measure.measure(dir) -> import_dir(dir)

A build directory holds ``manifest.json`` (the spec, target, lengths, the batch of each length
and every candidate with its build status), one sub-directory per built candidate (see ``runner``) and,
once measured, ``results.json``.  Importing turns results into database records: a valid
candidate gives one record per length bucket with its median time; an invalid one gives
records marked invalid with the reason, so it is never chosen.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

from . import database, measure as _measure, runner, space

DEFAULT_LENGTHS = (512, 2048, 8192)

# dense peak fp16/bf16 tensor-core FLOP/s and HBM bandwidth of the cards we tune for (the
# roofline column of the table); other devices show no percentage
ROOFLINE = {"H100": (989e12, 3.35e12), "H200": (989e12, 4.8e12)}


class Progress:
    """One status line on a terminal (redrawn in place); silent when stderr is not a TTY."""

    def __init__(self, total: int, what: str):
        self.total, self.what, self.done = total, what, 0
        self.live = sys.stderr.isatty()

    def step(self, note: str = "") -> None:
        self.done += 1
        if self.live:
            bar = "#" * (20 * self.done // max(1, self.total))
            sys.stderr.write(f"\r{self.what} [{bar:<20}] {self.done}/{self.total} {note[:40]:<40}")
            if self.done == self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()


def batches_for(lengths: Sequence[int], batch: int = 1, tokens: Optional[int] = None) -> list:
    """The batch of each length: ``batch``, or with ``tokens`` as many sequences as make that
    many tokens (at least one), so that every bucket fills the GPU alike and a short length is
    not tuned for a grid smaller than the card."""
    if tokens is not None and tokens < 1:
        raise ValueError(f"tokens must be positive, got {tokens}")
    if batch < 1:
        raise ValueError(f"batch must be positive, got {batch}")
    return [max(1, tokens // n) if tokens else batch for n in lengths]


def manifest_batches(manifest: dict) -> list:
    """The batch of each of a manifest's lengths (older manifests have one ``batch``)."""
    return manifest.get("batches") or [manifest["batch"]] * len(manifest["lengths"])


def build_only(spec, target, out, *, lengths: Sequence[int] = DEFAULT_LENGTHS, batch: int = 1,
               tokens: Optional[int] = None, trials: Optional[int] = None, fixed=(),
               jobs: int = 2, timeout: float = 300, deadline: Optional[float] = None,
               progress: bool = True) -> dict:
    """Build up to ``trials`` candidates (the default first; knobs in ``fixed`` held at their
    default) into ``out``; returns the manifest."""
    from .. import __version__
    from ..builder import _sources_digest, _tvm_version

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    batches = batches_for(lengths, batch, tokens)
    configs = {space.config_id(c): c for c in space.candidates(spec, target, trials, fixed)}
    bar = Progress(len(configs), "build") if progress else None
    results = runner.build_all(spec, target, configs, out, jobs=jobs, timeout=timeout,
                               deadline=deadline,
                               on_result=lambda r: bar and bar.step(f"{r.id} {r.status}"))
    order = list(configs)
    results.sort(key=lambda r: order.index(r.id))
    manifest = {"format": "attngen-candidates", "version": 1, "spec": spec.canonical(),
                "spec_key": spec.key, "target": target.name, "arch": target.arch,
                "tvm": _tvm_version(), "attngen": __version__, "sources": _sources_digest(),
                "lengths": list(lengths), "batch": batch, "batches": batches,
                "default": order[0],
                "candidates": [{"id": r.id, "config": r.config, "status": r.status,
                                "error": r.error, "build_s": round(r.seconds, 2)}
                               for r in results]}
    tmp = out / ".manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, out / "manifest.json")
    return manifest


def records_of(dirpath) -> list:
    """Database records of a measured build directory."""
    dirpath = Path(dirpath)
    manifest = json.loads((dirpath / "manifest.json").read_text())
    results = json.loads((dirpath / "results.json").read_text())
    if results["spec_key"] != manifest["spec_key"] or not results["device"]:
        raise ValueError(f"{dirpath}: results do not belong to this manifest or name no device")
    base = {"spec": manifest["spec_key"], "spec_repr": manifest["spec"],
            "target": manifest["target"], "device": results["device"], "tvm": manifest["tvm"],
            "attngen": manifest["attngen"], "sources": manifest.get("sources", ""),
            "time": results["measured_at"]}
    default = next((r for r in results["rows"] if r["id"] == manifest["default"]), None)
    import attngen

    from . import sizes_for

    spec = eval(manifest["spec"], {"__builtins__": {}}, attngen.namespace())  # noqa: S307
    buckets = [database.bucket(sizes_for(spec, n, b))
               for n, b in zip(manifest["lengths"], manifest_batches(manifest))]
    out = []
    for row in results["rows"]:
        if row["status"] == "ok":
            for b, t in row["timings"].items():
                default_ms = default["timings"].get(b, {}).get("ms") if default else None
                out.append({**base, "bucket": b, "config": row["config"], "valid": True,
                            "ms": t["ms"], "length": t["length"], "batch": t["batch"],
                            "default_ms": default_ms,
                            "default_config": default["config"] if default else None})
        elif row["status"] in ("invalid", "error", "compile_error"):
            # a failure holds for every bucket of the manifest: this config never wins
            for b in buckets:
                out.append({**base, "bucket": b, "config": row["config"], "valid": False,
                            "reason": row.get("reason", "")})
    return out


def import_dir(dirpath, db: Optional[Path] = None) -> int:
    """Record a measured build directory in the database; returns the records added."""
    records = records_of(dirpath)
    database.add(records, db)
    return len(records)


def tune(spec, target, *, lengths: Sequence[int] = DEFAULT_LENGTHS, batch: int = 1,
         tokens: Optional[int] = None, fixed=(), trials: Optional[int] = None,
         minutes: Optional[float] = None, jobs: int = 2,
         timeout: float = 300, repeats: int = 10, db: Optional[Path] = None,
         workdir: Optional[Path] = None, progress: bool = True) -> dict:
    """Tune on this host (its device is the target's); returns the measured results."""
    deadline = time.monotonic() + 60 * minutes if minutes else None
    with tempfile.TemporaryDirectory(prefix="attngen-tune-") as tmp:
        out = Path(workdir) if workdir else Path(tmp)
        manifest = build_only(spec, target, out, lengths=lengths, batch=batch, tokens=tokens,
                              fixed=fixed, trials=trials,
                              jobs=jobs, timeout=timeout, deadline=deadline, progress=progress)
        built = sum(c["status"] == "built" for c in manifest["candidates"])
        bar = Progress(len(manifest["candidates"]), "measure") if progress else None
        results = _measure.measure(out, repeats=repeats, deadline=deadline,
                                   on_result=lambda r: bar and bar.step(f"{r['id']} {r['status']}"))
        if built:
            import_dir(out, db)
        return {"manifest": manifest, "results": results}


# ----------------------------------------------------------------------------- report


def table(manifest: dict, results: dict) -> str:
    """One line per (candidate, bucket): time, throughput, % of roofline, speed-up."""
    import attngen

    spec = eval(manifest["spec"], {"__builtins__": {}}, attngen.namespace())  # noqa: S307
    peak = next((v for k, v in ROOFLINE.items() if k in results["device"]), None)
    default = next((r for r in results["rows"] if r["id"] == manifest["default"]), None)
    lines = [f"{manifest['target']} on {results['device']}: {manifest['spec']}",
             "dTFLOP/s: dense-equivalent (masked-out work counted); roofline: of the card's "
             "dense fp16 peak or HBM bandwidth; speed-up over the schedule's default config",
             f"{'config':<44} {'bucket':<14} {'ms':>9} {'throughput':>14} {'roofline':>8} "
             f"{'vs default':>10}"]
    for row in sorted(results["rows"], key=lambda r: (r["status"] != "ok", r["id"])):
        cfg = json.dumps(row["config"], separators=(",", ":"))[1:-1].replace('"', "")
        if row["status"] != "ok":
            lines.append(f"{cfg:<44} {row['status']}: {row.get('reason', '')[:60]}")
            continue
        for b, t in sorted(row["timings"].items(), key=lambda kv: kv[1]["length"]):
            rate, frac = _throughput(spec, t, peak)
            base = default and default["status"] == "ok" and default["timings"].get(b)
            speedup = f"{base['ms'] / t['ms']:.2f}x" if base else "-"
            lines.append(f"{cfg:<44} {b:<14} {t['ms']:>9.3f} {rate:>14} {frac:>8} {speedup:>10}")
    best = _best_lines(results, default)
    return "\n".join(lines + best)


def _throughput(spec, t: dict, peak):
    """Dense-equivalent TFLOP/s for softmax prefill (4·B·H·Lq·Lkv·D as if no key were masked:
    a causal kernel does half that work, so compare masks with their own kind), else GB/s of
    the inputs and outputs; and its fraction of the card's roofline if known."""
    from . import sizes_for

    s = sizes_for(spec, t["length"], t["batch"])
    seconds = t["ms"] * 1e-3
    if hasattr(spec, "mask") and not spec.is_decode:
        flops = 2 * s["batch"] * s["heads"] * s["q_len"] * s["kv_len"] * (spec.head_dim + spec.head_dim_v)
        rate, i = flops / seconds, 0
        text = f"{rate / 1e12:.1f} dTFLOP/s"
    else:
        rate, i = t["bytes"] / seconds, 1
        text = f"{rate / 1e9:.1f} GB/s"
    frac = f"{100 * rate / peak[i]:.1f}%" if peak else "-"
    return text, frac


def _best_lines(results: dict, default) -> list:
    best: dict = {}
    for row in results["rows"]:
        if row["status"] == "ok":
            for b, t in row["timings"].items():
                if b not in best or t["ms"] < best[b][1]["ms"]:
                    best[b] = (row, t)
    out = []
    for b, (row, t) in sorted(best.items(), key=lambda kv: kv[1][1]["length"]):
        base = default and default["status"] == "ok" and default["timings"].get(b)
        gain = f", {base['ms'] / t['ms']:.2f}x over the default" if base else ""
        out.append(f"best {b}: {row['id']} {t['ms']:.3f} ms{gain}")
    return out
