"""Tune every gallery prefill spec that takes the tensor-core kernel, build here, measure there.

    python benchmarks/tune_gallery.py build DIR [--specs a,b] [--trials 6] [--jobs 1]
    python benchmarks/tune_gallery.py measure DIR [--minutes M]     # GPU host, TVM runtime only
    python benchmarks/tune_gallery.py import DIR                    # here: database + tables

Each spec gets a ``--build-only`` directory ``DIR/<name>`` (``attngen.tune.tuner.build_only``:
the default config first, then its nearest neighbours in the schedule's space, with
``tile_map`` held at the heuristic's choice: it is structural -- a per-tile map for masks that
are not one key interval per row, none otherwise -- and its alternative costs a build per spec
to confirm a known loss).  ``measure`` runs ``attngen.tune.measure.measure`` on each directory
in one process (inputs of equal shapes are drawn once for all specs) and records its wall time
per spec.  ``import`` records the results in the shipped database of the card
(``targets/tuned/<card>.json``) and writes ``benchmarks/results/<card>-tuning.{json,md}``:
per spec and length bucket the default's and the best valid candidate's median time.

Shapes: lengths 1024, 4096, 16384 (three buckets, a decade and a half of prefill lengths) at
16384 tokens each (batch 16, 4, 1): every bucket launches the same number of query tiles, so
a short length is tuned for a full GPU, as a serving batch would run it, not for a grid
smaller than the card.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

LENGTHS = (1024, 4096, 16384)
TOKENS = 16384
FIXED = ("tile_map",)
TARGET = "cuda-sm90a"


def gallery_tc() -> list:
    """Names of the gallery prefill specs the tensor-core kernel serves (as tests/test_prefill_tc)."""
    from attngen.gallery import GALLERY
    from attngen.softmax import tensorcore
    from attngen.spec import Attention
    from attngen.targets import get

    target = get(TARGET)
    return [n for n, e in GALLERY.items()
            if isinstance(e.spec, Attention) and tensorcore.supported(e.spec, target)]


def cmd_build(args) -> int:
    from attngen.gallery import GALLERY
    from attngen.targets import get
    from attngen.tune import tuner

    out = Path(args.dir)
    for name in args.specs or gallery_tc():
        d = out / name
        if (d / "manifest.json").is_file():
            print(f"{name}: built before, kept", flush=True)
            continue
        start = time.perf_counter()
        manifest = tuner.build_only(GALLERY[name].spec, get(TARGET), d, lengths=args.lengths,
                                    tokens=args.tokens, trials=args.trials, fixed=FIXED,
                                    jobs=args.jobs, progress=False)
        wall = time.perf_counter() - start
        (d / "build_wall.json").write_text(json.dumps({"seconds": wall, "jobs": args.jobs}))
        built = sum(c["status"] == "built" for c in manifest["candidates"])
        print(f"{name}: built {built}/{len(manifest['candidates'])} in {wall:.0f} s", flush=True)
    return 0


def cmd_measure(args) -> int:
    from attngen.tune import measure

    root = Path(args.dir)
    deadline = time.monotonic() + 60 * args.minutes if args.minutes else None
    wall_file = root / "measure_wall.json"
    walls = json.loads(wall_file.read_text()) if wall_file.is_file() else {}
    shared = measure.Workloads(measure.np.random.default_rng(1))  # one draw per shape
    for d in sorted(p for p in root.iterdir() if (p / "manifest.json").is_file()
                    and (not args.specs or p.name in args.specs)):
        start, drawn = time.perf_counter(), shared.seconds
        results = measure.measure(d, deadline=deadline, workloads=shared)
        walls[d.name] = time.perf_counter() - start
        ok = sum(r["status"] == "ok" for r in results["rows"])
        print(f"{d.name}: {ok}/{len(results['rows'])} valid and timed in {walls[d.name]:.1f} s "
              f"({shared.seconds - drawn:.1f} s drawing inputs) on {results['device']}", flush=True)
    wall_file.write_text(json.dumps(walls, indent=1))
    return 0


def shipped_db(device: str) -> Path:
    from attngen.tune.database import shipped_file

    return shipped_file(device)


def cmd_import(args) -> int:
    from attngen.tune import tuner

    root = Path(args.dir)
    walls = json.loads((root / "measure_wall.json").read_text())
    rows, device = [], None
    for d in sorted(p for p in root.iterdir() if (p / "results.json").is_file()):
        manifest = json.loads((d / "manifest.json").read_text())
        results = json.loads((d / "results.json").read_text())
        device = results["device"]
        if any(r["status"] == "ok" for r in results["rows"]):
            n = tuner.import_dir(d, shipped_db(device))
            print(f"{d.name}: recorded {n} measurements in {shipped_db(device)}")
        else:  # nothing to choose from: the table says why, the database stays as it was
            print(f"{d.name}: no valid candidate, nothing recorded")
        build = json.loads((d / "build_wall.json").read_text()) if (d / "build_wall.json").is_file() else {}
        rows += summary_rows(d.name, manifest, results, walls.get(d.name), build.get("seconds"))
    if device is None:
        print("no measured directory under", root, file=sys.stderr)
        return 1
    card = device.replace("NVIDIA ", "").replace(" ", "-")
    out = Path(args.results) / f"{card}-tuning"
    doc = {"device": device, "target": TARGET, "lengths": list(LENGTHS), "tokens": TOKENS,
           "fixed": list(FIXED), "note": args.note or "", "rows": rows}
    out.with_suffix(".json").write_text(json.dumps(doc, indent=1))
    out.with_suffix(".md").write_text(markdown(doc))
    print(f"wrote {out}.json and {out}.md")
    return 0


def summary_rows(name: str, manifest: dict, results: dict, measure_s, build_s) -> list:
    """Per length bucket: the default's time, the best valid candidate's, and its config."""
    by_id = {r["id"]: r for r in results["rows"]}
    default = by_id.get(manifest["default"])
    common = {"spec": name, "spec_repr": manifest["spec"],
              "default_config": manifest["candidates"][0]["config"],
              "candidates": len(manifest["candidates"]),
              "valid": sum(r["status"] == "ok" for r in results["rows"]),
              "failures": {r["id"]: f"{r['status']}: {r.get('reason', '')[:120]}"
                           for r in results["rows"] if r["status"] != "ok"},
              "measure_s": measure_s, "build_s": build_s}
    if not common["valid"]:
        return [{**common, "length": None, "batch": None, "default_ms": None, "tuned_ms": None,
                 "speedup": None, "config": None}]
    out = []
    for length, batch in zip(manifest["lengths"], tuner_batches(manifest)):
        timed = [(r["timings"][b]["ms"], r) for r in results["rows"] if r["status"] == "ok"
                 for b in r["timings"] if r["timings"][b]["length"] == length]
        if not timed:
            continue
        best_ms, best = min(timed, key=lambda t: t[0])
        default_ms = next((t["ms"] for t in (default or {}).get("timings", {}).values()
                           if t["length"] == length), None)
        out.append({**common, "length": length, "batch": batch, "default_ms": default_ms,
                    "tuned_ms": best_ms, "speedup": default_ms / best_ms if default_ms else None,
                    "config": best["config"]})
    return out


def tuner_batches(manifest: dict) -> list:
    from attngen.tune.tuner import manifest_batches

    return manifest_batches(manifest)


def _config_text(config: dict, default: dict) -> str:
    changed = {k: v for k, v in config.items() if default.get(k) != v}
    return "default" if not changed else ", ".join(f"{k}={v}" for k, v in sorted(changed.items()))


def markdown(doc: dict) -> str:
    from attngen.tune import NOISE

    lines = [f"# Tuned vs default: tensor-core prefill, {doc['device']} ({doc['target']})", "",
             f"Reproduce: `python benchmarks/tune_gallery.py build DIR` here, "
             f"`python benchmarks/tune_gallery.py measure DIR` on the GPU host, "
             f"`python benchmarks/tune_gallery.py import DIR` here.  Lengths {doc['lengths']} "
             f"at {doc['tokens']} tokens per launch (batch = tokens / length); candidates: the "
             f"default and its nearest neighbours (knobs held: {', '.join(doc['fixed'])}), each "
             "validated against the float64 reference before timing; times are medians of 10 "
             "CUDA-event groups over rotated input copies (attngen.tune.measure).", "",
             *([doc["note"], ""] if doc.get("note") else []),
             "| spec | length | batch | default ms | tuned ms | speed-up | tuned config (vs default) |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in doc["rows"]:
        if r["tuned_ms"] is None:
            lines.append(f"| {r['spec']} | - | - | - | - | - | no valid candidate "
                         f"(0/{r['candidates']}, see below) |")
            continue
        d = f"{r['default_ms']:.4f}" if r["default_ms"] else "-"
        s = f"{r['speedup']:.2f}x" if r["speedup"] else "-"
        cfg = _config_text(r["config"], r["default_config"])
        if cfg != "default" and r["speedup"] and r["speedup"] < 1 + NOISE:
            cfg = f"default: {cfg} is within the {NOISE:.0%} noise margin (attngen.tune.NOISE)"
        lines.append(f"| {r['spec']} | {r['length']} | {r['batch']} | {d} | {r['tuned_ms']:.4f} "
                     f"| {s} | {cfg} |")
    lines += ["", "Default configs and tuning cost per spec (build: this 2-core host, shared; "
              "measure: wall time of validating and timing every candidate at the three "
              "lengths on the GPU):", "",
              "| spec | default config | candidates | valid | build s | measure s | not valid |",
              "|---|---|---:|---:|---:|---:|---|"]
    seen = set()
    for r in doc["rows"]:
        if r["spec"] in seen:
            continue
        seen.add(r["spec"])
        cfg = ", ".join(f"{k}={v}" for k, v in sorted(r["default_config"].items()))
        b = f"{r['build_s']:.0f}" if r["build_s"] else "-"
        m = f"{r['measure_s']:.1f}" if r["measure_s"] else "-"
        bad = "; ".join(f"{k}: {v}" for k, v in list(r["failures"].items())[:2]) or "-"
        if len(r["failures"]) > 2:
            bad += f"; and {len(r['failures']) - 2} more"
        lines.append(f"| {r['spec']} | {cfg} | {r['candidates']} | {r['valid']} | {b} | {m} | {bad} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("build")
    s.add_argument("dir")
    s.add_argument("--specs", type=lambda t: t.split(","), default=None)
    s.add_argument("--trials", type=int, default=6)
    s.add_argument("--jobs", type=int, default=1)
    s.add_argument("--lengths", type=lambda t: [int(x) for x in t.split(",")], default=list(LENGTHS))
    s.add_argument("--tokens", type=int, default=TOKENS)
    s.set_defaults(run=cmd_build)
    s = sub.add_parser("measure")
    s.add_argument("dir")
    s.add_argument("--minutes", type=float, default=None, help="budget; later candidates are skipped")
    s.add_argument("--specs", type=lambda t: t.split(","), default=None, help="only these")
    s.set_defaults(run=cmd_measure)
    s = sub.add_parser("import")
    s.add_argument("dir")
    s.add_argument("--results", default=str(Path(__file__).parent / "results"))
    s.add_argument("--note", default=None, help="a paragraph for the table's header")
    s.set_defaults(run=cmd_import)
    args = p.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
