"""``attngen``: list the gallery, show what a spec lowers to, check a kernel against its reference.

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
    from .build import cuda_source, lower

    if args.tiles:
        return _write_tiles(spec, target, args)
    if args.cuda_source:
        if not target.is_cuda:
            raise UsageError(f"--cuda-source needs a CUDA target, got {target.name}")
        print(cuda_source(spec, target), end="")
        return 0
    print(f"# spec: {spec!r}\n# key: {spec.key}\n# target: {target.name}")
    print(lower(spec, target).mod.script())
    return 0


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
