"""Build candidates in parallel worker processes; a failure or a hang is a result, not a crash.

Each worker is ``python -m attngen.tune.runner``: it imports TVM once and then builds one
candidate per request (a JSON line on stdin) into its own directory, answering with a JSON
line on a private copy of stdout (TVM and nvcc may print to the real one, which goes to the
build log).  The parent keeps ``jobs`` workers busy; a worker that exceeds the timeout is
killed and replaced, and one that dies (a segfault in the compiler) is replaced too.  A
candidate directory is published by renaming a finished temporary directory, so a directory
named after a candidate always holds a complete build:

    <id>/kernel.so     the exported module (host code + CUDA source for CUDA targets)
    <id>/meta.json     config, arguments and calls (the calling convention of ``Kernel``)
    <id>/kernel.cubin  CUDA only: the device code compiled here with nvcc, so that the
                       measuring host loads it without compiling (``attngen.export.load_module``)
"""
from __future__ import annotations

import json
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

LIB, META, CUBIN = "kernel.so", "meta.json", "kernel.cubin"


@dataclass
class BuildResult:
    id: str
    config: dict
    status: str  # "built" | "compile_error" | "timeout" | "crashed" | "skipped"
    error: str = ""
    seconds: float = 0.0


# ----------------------------------------------------------------------------- parent side


class _Worker:
    def __init__(self, log):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "attngen.tune.runner"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                     text=True, bufsize=1, env=env)
        self.task: Optional[dict] = None
        self.started = 0.0

    def send(self, task: dict) -> None:
        self.task, self.started = task, time.monotonic()
        self.proc.stdin.write(json.dumps(task) + "\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.kill()


def build_all(spec, target, configs: dict, out: Path, *, jobs: int = 2, timeout: float = 300,
              deadline: Optional[float] = None,
              on_result: Callable[[BuildResult], None] = lambda r: None) -> list:
    """Build ``configs`` (id -> config) into ``out/<id>``; returns a BuildResult per config.

    ``deadline`` (time.monotonic) stops handing out new builds; those left are "skipped"."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pending = deque({"id": cid, "config": cfg, "spec": repr(spec), "target": target.name,
                     "dir": str(out / cid)} for cid, cfg in configs.items())
    results, idle, busy = [], [], []
    sel = selectors.DefaultSelector()
    with open(out / "build.log", "ab") as log:
        def finish(w, status, error=""):
            t = w.task
            r = BuildResult(t["id"], t["config"], status, error, time.monotonic() - w.started)
            results.append(r)
            on_result(r)
            w.task = None
            busy.remove(w)
            sel.unregister(w.proc.stdout)

        try:
            while pending or busy:
                while pending and len(busy) < jobs and (deadline is None or time.monotonic() < deadline):
                    w = idle.pop() if idle else _Worker(log)
                    w.send(pending.popleft())
                    busy.append(w)
                    sel.register(w.proc.stdout, selectors.EVENT_READ, w)
                if not busy:
                    break
                wait = max(0.05, min(w.started + timeout for w in busy) - time.monotonic())
                for key, _ in sel.select(timeout=wait):
                    w = key.data
                    line = w.proc.stdout.readline()
                    if not line:  # the compiler took the worker down
                        code = w.proc.wait()
                        finish(w, "crashed", f"build worker died (exit code {code})")
                        continue
                    answer = json.loads(line)
                    finish(w, answer["status"], answer.get("error", ""))
                    idle.append(w)
                for w in [w for w in busy if time.monotonic() - w.started > timeout]:
                    w.kill()
                    finish(w, "timeout", f"build took over {timeout:.0f} s")
        finally:
            for w in busy:
                w.kill()
            for w in idle:
                w.close()
    for task in pending:  # the budget ran out before these were started
        r = BuildResult(task["id"], task["config"], "skipped", "tuning budget spent")
        results.append(r)
        on_result(r)
    return results


# ----------------------------------------------------------------------------- worker side


def build_candidate(spec, target, config: dict, dest: Path) -> None:
    """Build one candidate into ``dest`` (published by rename)."""
    from ..builder import compile_lowered, lower

    dest = Path(dest)
    lowered = lower(spec, target, config)
    ex = compile_lowered(lowered, target)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=dest.parent))
    try:
        ex.export_library(str(tmp / LIB))
        meta = {"config": config, "args": [a.__dict__ for a in lowered.args],
                "calls": [{"func": c.func, "args": list(c.args)} for c in lowered.calls]}
        if target.is_cuda:
            from ..export import compile_cubin, cuda_source_of

            source = cuda_source_of(ex)
            cubin = compile_cubin(source, target.arch)
            (tmp / CUBIN).write_bytes(cubin)
            meta["cuda_source_sha256"] = _sha256(source.encode())
            meta["cubin_sha256"] = _sha256(cubin)
        (tmp / META).write_text(json.dumps(meta, indent=1))
        if dest.exists():
            shutil.rmtree(dest)
        os.rename(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _worker_main() -> int:
    # answers go to a private copy of stdout; whatever TVM prints lands in the build log
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    import attngen

    from ..targets import get as get_target

    for line in sys.stdin:
        task = json.loads(line)
        try:
            # the spec comes from our own manifest, written by the parent from repr(spec)
            spec = eval(task["spec"], {"__builtins__": {}}, attngen.namespace())  # noqa: S307
            build_candidate(spec, get_target(task["target"]), task["config"], Path(task["dir"]))
            answer = {"status": "built"}
        except Exception as err:  # a compile error is this candidate's result
            first = (str(err).strip().splitlines() or [""])[-1][:500]
            answer = {"status": "compile_error", "error": f"{type(err).__name__}: {first}"}
        answers.write(json.dumps(answer) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main())
