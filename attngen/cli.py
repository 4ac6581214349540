"""attngen: describe an attention variant, get a validated, tuned kernel.

Commands: list the gallery, show what a spec lowers to, check a kernel against its reference,
tune it, measure candidates built elsewhere, export the tuned kernels.

SPEC is a gallery name (``attngen list``) or a Python file that defines ``spec``.  Bad input
prints one line to stderr and exits 2; a failed check exits 1.
"""
from __future__ import annotations

import argparse
import os
import runpy
import sys
import time
from pathlib import Path


class UsageError(Exception):
    """Bad input from the command line: reported in one line, exit code 2."""


def load_spec(text: str):
    from .gallery import GALLERY
    from .spec import Attention, LinearAttention

    if text in GALLERY:
        return GALLERY[text].spec
    path = Path(text)
    if not path.suffix == ".py":
        raise UsageError(f"{text!r} is neither a gallery name (see `attngen list`) nor a .py file")
    if not path.is_file():
        raise UsageError(f"no such file: {text}")
    try:
        namespace = runpy.run_path(str(path))
    except (ValueError, TypeError) as err:  # an invalid spec raises at construction
        raise UsageError(f"{text}: {err}") from None
    except Exception as err:
        raise UsageError(f"{text}: {type(err).__name__}: {err}") from None
    if "spec" not in namespace:
        raise UsageError(f"{text} defines no variable named `spec`")
    spec = namespace["spec"]
    if not isinstance(spec, (Attention, LinearAttention)):
        raise UsageError(f"{text}: `spec` must be an attngen.Attention or LinearAttention, "
                         f"got {type(spec).__name__}")
    return spec


def resolve_target(name: str):
    from .targets import get

    try:
        return get(name)
    except ValueError as err:
        raise UsageError(str(err)) from None


# ----------------------------------------------------------------------------- commands


def cmd_list(args) -> int:
    from .gallery import GALLERY

    width = max(map(len, GALLERY))
    for name, entry in GALLERY.items():
        print(name if args.names else f"{name:<{width}}  {entry.family:<18}  {entry.method}")
    return 0


def cmd_show(args) -> int:
    spec = load_spec(args.spec)
    target = resolve_target(args.target)
    from .builder import cuda_source, lower

    if args.tiles:
        return _write_tiles(spec, target, args)
    if args.cuda_source:
        if not target.is_cuda:
            raise UsageError(f"--cuda-source needs a CUDA target, got {target.name}")
        print(cuda_source(spec, target), end="")
        return 0
    print(f"# spec: {spec!r}\n# key: {spec.key}\n# target: {target.name}")
    evaluated = _evaluated_mask(spec)
    if evaluated is not None:
        print(f"# mask as the kernels evaluate it: {evaluated!r}")
    print(lower(spec, target).mod.script())
    return 0


def _evaluated_mask(spec):
    """The mask the kernels evaluate where it differs from the mask as written (shared
    conjuncts factored out: ``predicate.mask_expr``), else None."""
    from .softmax import predicate
    from .spec import Attention

    if not isinstance(spec, Attention):
        return None
    evaluated = predicate.mask_expr(spec)
    return None if evaluated.same(predicate.reference_mask(spec)) else evaluated


def _write_tiles(spec, target, args) -> int:
    from .spec import Attention
    from .visual import svg

    if not isinstance(spec, Attention):
        raise UsageError("--tiles draws the mask of a softmax Attention spec")
    if spec.is_decode:
        raise UsageError("--tiles draws prefill masks; this spec decodes")
    text = svg(spec, target, args.length)
    try:
        Path(args.tiles).write_text(text)
    except OSError as err:
        raise UsageError(f"cannot write {args.tiles}: {err.strerror}") from None
    print(text.rsplit("<text", 1)[1].split(">", 1)[1].split("</text")[0])  # the caption
    return 0


def cmd_check(args) -> int:
    spec = load_spec(args.spec)
    target = resolve_target(args.target)
    if target.is_cuda:
        from .targets import local_cuda_arch

        if local_cuda_arch() is None:
            raise UsageError("no CUDA GPU visible: `check --target cuda` runs kernels; use "
                             "`attngen show SPEC --target cuda-sm90a --cuda-source` to build only")
    from .check import check

    lengths = args.lengths or None
    start = time.perf_counter()
    results = check(spec, target, **({"lengths": lengths} if lengths else {}),
                    batch=args.batch, seed=args.seed)
    print(f"{args.spec} on {target.name}: {spec!r}")
    for r in results:
        errs = "  ".join(f"{name}: rel_rmse={e['rel_rmse']:.2e} max_rel={e['max_rel']:.2e}"
                         for name, e in r.errors.items())
        print(f"  len={r.length:<6} {'ok  ' if r.passed else 'FAIL'}  {errs}")
    passed = all(r.passed for r in results)
    print(f"{'PASS' if passed else 'FAIL'} ({time.perf_counter() - start:.1f} s)")
    return 0 if passed else 1


def cmd_tune(args) -> int:
    """Tune here, build candidates for another host (--build-only), or import its results."""
    from .tune import tuner

    if args.import_dir:
        if args.spec:
            raise UsageError("--import DIR takes no SPEC: the directory names its spec")
        n = tuner.import_dir(_measured_dir(args.import_dir), args.db)
        print(f"recorded {n} measurements from {args.import_dir}")
        return 0
    if not args.spec:
        raise UsageError("tune needs a SPEC (or --import DIR)")
    spec = load_spec(args.spec)
    target = resolve_target(args.target)
    options = dict(lengths=args.lengths, batch=args.batch, tokens=args.tokens, trials=args.trials,
                   fixed=tuple(args.fix or ()), jobs=args.jobs, timeout=args.timeout)
    if args.build_only:
        if not args.output:
            raise UsageError("--build-only needs -o DIR")
        deadline = time.monotonic() + 60 * args.minutes if args.minutes else None
        manifest = tuner.build_only(spec, target, args.output, deadline=deadline, **options)
        built = sum(c["status"] == "built" for c in manifest["candidates"])
        print(f"built {built}/{len(manifest['candidates'])} candidates into {args.output}; "
              f"next: `attngen measure {args.output}` where the GPU is, then "
              f"`attngen tune --import {args.output}` here")
        return 0 if built else 1
    if target.is_cuda:
        from .targets import local_cuda_arch

        if local_cuda_arch() is None:
            raise UsageError("no CUDA GPU visible: use `attngen tune SPEC --target cuda-sm90a "
                             "--build-only -o DIR` and measure DIR on the GPU host")
    out = tuner.tune(spec, target, minutes=args.minutes, repeats=args.repeats, db=args.db,
                     workdir=args.output, **options)
    print(tuner.table(out["manifest"], out["results"]))
    return 0 if any(r["status"] == "ok" for r in out["results"]["rows"]) else 1


def _measured_dir(text: str) -> Path:
    path = Path(text)
    for name in ("manifest.json", "results.json"):
        if not (path / name).is_file():
            raise UsageError(f"{text}: no {name} (build with --build-only, then `attngen measure`)")
    return path


def cmd_measure(args) -> int:
    """Validate and time the candidates of a --build-only directory (TVM runtime only)."""
    path = Path(args.dir)
    if not (path / "manifest.json").is_file():
        raise UsageError(f"{args.dir}: no manifest.json (build it with `attngen tune --build-only`)")
    from .tune import measure, tuner

    deadline = time.monotonic() + 60 * args.minutes if args.minutes else None
    results = measure.measure(path, repeats=args.repeats, deadline=deadline)
    import json

    print(tuner.table(json.loads((path / "manifest.json").read_text()), results))
    return 0 if any(r["status"] == "ok" for r in results["rows"]) else 1


def cmd_export(args) -> int:
    """Write SPEC's tuned kernels as NAME.so (+ .json metadata, + .cubin for CUDA)."""
    spec = load_spec(args.spec)
    target = resolve_target(args.target)
    if not args.output.endswith(".so"):
        raise UsageError(f"-o must name a .so file, got {args.output!r}")
    from .export import export

    start = time.perf_counter()
    meta = export(spec, args.output, target, lengths=args.lengths, device=args.device)
    tuned = ", ".join(f"{b}->v{i}" for b, i in sorted(meta["table"].items())) or "none"
    print(f"wrote {args.output} ({len(meta['variants'])} variant(s); tuned buckets: {tuned}; "
          f"{time.perf_counter() - start:.1f} s)")
    return 0


def _positive_ints(text: str):
    try:
        values = [int(x) for x in text.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated lengths, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"lengths must be positive, got {text!r}")
    return values


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints usage too)
        raise UsageError(message)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="attngen", description=__doc__.split("\n")[0])
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    s = sub.add_parser("list", help="the gallery of ready specs, name first")
    s.add_argument("--names", action="store_true", help="bare names, one per line")
    s.set_defaults(run=cmd_list)
    s = sub.add_parser("show", help="the spec and the TVMScript it lowers to")
    s.add_argument("spec", help="gallery name or .py file defining `spec`")
    s.add_argument("--target", default="cpu", help="cpu, cuda, cuda-sm80, cuda-sm90a (default cpu)")
    s.add_argument("--cuda-source", action="store_true", help="print only the generated CUDA source")
    s.add_argument("--tiles", metavar="OUT.svg", help="draw the mask and its tile map (empty/full/partial)")
    s.add_argument("--length", type=int, default=1024, help="sequence length drawn by --tiles")
    s.set_defaults(run=cmd_show)
    s = sub.add_parser("check", help="build, run on random inputs, compare with the float64 reference")
    s.add_argument("spec", help="gallery name or .py file defining `spec`")
    s.add_argument("--target", default="cpu", help="cpu or cuda (default cpu)")
    s.add_argument("--lengths", type=_positive_ints, help="comma-separated sequence lengths")
    s.add_argument("--batch", type=int, default=2)
    s.add_argument("--seed", type=int, default=None, help="fixed seed (default: fresh inputs)")
    s.set_defaults(run=cmd_check)
    s = sub.add_parser("tune", help="search the schedule's knobs; record the fastest valid "
                       "config per length bucket in the tuning database")
    s.add_argument("spec", nargs="?", help="gallery name or .py file defining `spec` (executed)")
    s.add_argument("--target", default="cpu", help="cpu, cuda, cuda-sm80, cuda-sm90a (default cpu)")
    s.add_argument("--lengths", type=_positive_ints, default=[512, 2048, 8192],
                   help="sequence lengths to tune for, one bucket each (default 512,2048,8192)")
    s.add_argument("--batch", type=int, default=1)
    s.add_argument("--tokens", type=int, default=None,
                   help="batch of each length = max(1, TOKENS // length) (overrides --batch)")
    s.add_argument("--fix", type=lambda t: [k for k in t.split(",") if k], default=None,
                   metavar="KNOB,...", help="knobs held at their default (e.g. tile_map)")
    s.add_argument("--trials", type=int, default=None, help="at most this many candidates")
    s.add_argument("--minutes", type=float, default=None, help="time budget")
    s.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel build workers")
    s.add_argument("--timeout", type=float, default=300, help="seconds before a build is abandoned")
    s.add_argument("--repeats", type=int, default=10, help="timed groups per length (median)")
    s.add_argument("--build-only", action="store_true", help="build candidates into -o DIR only")
    s.add_argument("-o", "--output", help="directory for the candidates (kept)")
    s.add_argument("--import", dest="import_dir", metavar="DIR",
                   help="record the results of `attngen measure DIR` in the database")
    s.add_argument("--db", type=Path, default=None, help="database file (default: the user's)")
    s.set_defaults(run=cmd_tune)
    s = sub.add_parser("measure", help="validate and time the candidates of a --build-only "
                       "directory (needs only the TVM runtime)")
    s.add_argument("dir")
    s.add_argument("--repeats", type=int, default=10)
    s.add_argument("--minutes", type=float, default=None, help="time budget (the rest is skipped)")
    s.set_defaults(run=cmd_measure)
    s = sub.add_parser("export", help="write the tuned kernels as a module for attngen.load")
    s.add_argument("spec", help="gallery name or .py file defining `spec`")
    s.add_argument("-o", "--output", required=True, metavar="NAME.so")
    s.add_argument("--target", default="cuda", help="cuda (default), cuda-sm90a, cuda-sm80, cpu")
    s.add_argument("--lengths", type=_positive_ints, default=None,
                   help="lengths whose tuned configs to include (default: every tuned bucket)")
    s.add_argument("--device", default=None, help="whose tuned configs (default: this GPU, or "
                   "the one device the database knows for the spec)")
    s.set_defaults(run=cmd_export)
    return p


def _version() -> str:
    from . import __version__

    return f"attngen {__version__}"


def main(argv=None) -> int:
    try:
        args = parser().parse_args(argv)
        return args.run(args)
    except UsageError as err:
        print(f"attngen: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("attngen: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # never a traceback; ATTNGEN_DEBUG=1 shows it
        if os.environ.get("ATTNGEN_DEBUG"):
            raise
        first = (str(err).strip().splitlines() or [""])[0]
        print(f"attngen: error: {type(err).__name__}: {first} (ATTNGEN_DEBUG=1 for details)",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
