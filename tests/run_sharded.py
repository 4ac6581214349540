"""Run a pytest selection in N processes at once, for a GPU host without pytest-xdist.  The GPU
tests spend most of their time in the float64 reference on the CPU: in 8 shards on a 16-core
host the 167 prefill GPU tests took ~200 s, while the shards' own times add up to ~22 min (one
H200, session 10).

    python tests/run_sharded.py -n 8 --logs OUT -- -m gpu tests/test_prefill_tc.py

Run it from pytest's rootdir (the repository root): node ids are relative to it.  Collects the
selected test ids once, deals them round-robin to the shards, runs each shard as
its own ``python -m pytest -q``, writes its output to ``OUT/shard<i>.txt`` and prints one
summary line per shard.  Exit status: 0 when every shard passed, 1 otherwise, 2 when nothing
was selected.
"""
import argparse
import os
import subprocess
import sys


def collect(pytest_args: list) -> list:
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "--collect-only", "-p", "no:cacheprovider",
                          *pytest_args], capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if "::" in line and not line.startswith(" ")]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=8, help="processes (default 8)")
    parser.add_argument("--logs", default=".", help="folder for shard<i>.txt (default .)")
    parser.add_argument("pytest_args", nargs=argparse.REMAINDER, help="after --: pytest's arguments")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error(f"-n takes a whole number of processes >= 1, got {args.n}")
    pytest_args = [a for a in args.pytest_args if a != "--"]
    ids = collect(pytest_args)
    if not ids:
        print("no tests selected", file=sys.stderr)
        return 2
    os.makedirs(args.logs, exist_ok=True)
    procs = []
    for i in range(min(args.n, len(ids))):
        log = open(os.path.join(args.logs, f"shard{i}.txt"), "w")
        # the ids carry the selection (-m, -k): a shard names its tests
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *ids[i::args.n]]
        procs.append((i, log, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)))
    failed = 0
    for i, log, proc in procs:
        rc = proc.wait()
        log.close()
        with open(log.name) as f:
            last = [line for line in f.read().splitlines() if line.strip()][-1:]
        print(f"shard{i}: rc {rc}: {last[0] if last else ''}", flush=True)
        failed += rc != 0
    print(f"{len(ids)} tests in {len(procs)} shards: {'all passed' if not failed else f'{failed} shards failed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
