"""The tuning database: measured configs, keyed by what makes a measurement transferable.

A record says: for the spec with key ``spec``, at shapes in ``bucket``, built for ``target``
with TVM ``tvm`` and run on ``device`` (the GPU's name, or the CPU model), config ``config``
took ``ms`` (median) -- or failed validation (``valid: false`` with a ``reason``), in which
case it can never be chosen.  Two places hold records:

* the user database, ``<cache root>/tuning.json`` (``$ATTNGEN_TUNING_DB`` overrides), written
  by ``attngen tune``;
* the shipped databases ``targets/tuned/<card>.json``, read only.

A file is one JSON document ``{"format": FORMAT, "version": VERSION, "records": [...]}``.
Writers take an exclusive ``flock`` on ``<file>.lock``, re-read the file, merge, write a
temporary file in the same directory, fsync it and ``os.replace`` it over the old one: readers
never lock and always see either the old or the new whole file, a killed writer leaves the old
file (and a stale temporary, removed by the next writer), and concurrent writers lose nothing.
A file that is not a readable database of this format gives one warning per process and is
treated as empty; a writer moves it aside (``<file>.corrupt``) before writing a fresh one.

Records are data: nothing in them is ever evaluated.
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Optional

FORMAT = "attngen-tuning-db"
VERSION = 1
ENV_DB = "ATTNGEN_TUNING_DB"
_TMP_PREFIX = ".tuning-tmp-"

# a record's identity; two records with the same identity are one measurement, the newer wins
KEY_FIELDS = ("spec", "bucket", "target", "device", "tvm")
IDENTITY = KEY_FIELDS + ("config",)
_REQUIRED = {"spec": str, "bucket": str, "target": str, "device": str, "tvm": str,
             "config": dict, "valid": bool}

_warned: set = set()


class DatabaseWarning(UserWarning):
    """A database file was unreadable or foreign and is being ignored."""


def _warn_once(path: Path, why: str) -> None:
    key = (str(path), why)
    if key not in _warned:
        _warned.add(key)
        warnings.warn(f"attngen tuning database {path}: {why}; ignoring it", DatabaseWarning,
                      stacklevel=3)


# ----------------------------------------------------------------------------- shapes


def bucket(sizes) -> str:
    """The length bucket of a problem: q_len and kv_len each rounded up to a power of two.

    Configs are chosen per bucket, so every length in a bucket runs the same kernel (no
    rebuild, no reload) and a tuned length speaks for its neighbours."""
    return f"q{_pow2_at_least(int(sizes['q_len']))}-kv{_pow2_at_least(int(sizes['kv_len']))}"


def bucket_distance(a: str, b: str) -> float:
    """log2 distance between two buckets (how far a tuned bucket is from the asked one)."""
    (qa, ka), (qb, kb) = _bucket_lengths(a), _bucket_lengths(b)
    return abs(math.log2(qa) - math.log2(qb)) + abs(math.log2(ka) - math.log2(kb))


def _bucket_lengths(name: str):
    q, kv = name.split("-")
    return int(q[1:]), int(kv[2:])


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


# ----------------------------------------------------------------------------- files


def user_path() -> Path:
    env = os.environ.get(ENV_DB)
    if env:
        return Path(env)
    from ..builder import cache_dir

    return cache_dir().parent / "tuning.json"


def shipped_file(device: str) -> Path:
    """The shipped database of a card: ``targets/tuned/<device, lower case, dashes>.json``
    (``NVIDIA H200`` -> ``nvidia-h200.json``)."""
    import re

    from ..resources import resource_dir

    slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")
    if not slug:
        raise ValueError("a shipped database needs a device name")
    return resource_dir("targets") / "tuned" / f"{slug}.json"


def shipped_paths() -> list:
    from ..resources import resource_dir

    return sorted((resource_dir("targets") / "tuned").glob("*.json"))


def read(path: Path) -> list:
    """The valid-looking records of ``path``; [] (and one warning) if it is not a database."""
    path = Path(path)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as err:
        _warn_once(path, f"unreadable ({err.strerror})")
        return []
    records = _parse(text)
    if isinstance(records, str):
        _warn_once(path, records)
        return []
    return records


def _parse(text: bytes):
    """The records of a database file, or a string saying why it is not one."""
    try:
        doc = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"not JSON ({type(err).__name__})"
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        return f"not an attngen tuning database (format != {FORMAT!r})"
    if doc.get("version") != VERSION:
        return f"database version {doc.get('version')!r}, this attngen reads {VERSION}"
    if not isinstance(doc.get("records"), list):
        return "no record list"
    return [r for r in doc["records"] if _well_formed(r)]


def _well_formed(r) -> bool:
    if not isinstance(r, dict) or any(not isinstance(r.get(k), t) for k, t in _REQUIRED.items()):
        return False
    return not r["valid"] or (isinstance(r.get("ms"), (int, float)) and r["ms"] > 0)


@contextmanager
def _locked(path: Path):
    """Exclusive lock on ``<path>.lock`` for the read-merge-replace of one writer."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def add(records: Iterable[dict], path: Optional[Path] = None) -> int:
    """Merge ``records`` into the database at ``path`` (the user's by default); returns how
    many records the file holds afterwards.  A record replaces one of equal identity."""
    path = Path(path) if path is not None else user_path()
    new = [dict(r) for r in records]
    for r in new:
        r.setdefault("time", time.time())
        if not _well_formed(r):
            raise ValueError(f"malformed tuning record {r}")
    with _locked(path):
        for stale in path.parent.glob(_TMP_PREFIX + "*"):  # left by a killed writer
            stale.unlink(missing_ok=True)
        current = []
        if path.exists():
            parsed = _parse(path.read_bytes())
            if isinstance(parsed, str):
                _warn_once(path, parsed)
                os.replace(path, f"{path}.corrupt")  # keep it for a human; start afresh
            else:
                current = parsed
        merged = {_identity(r): r for r in current}
        merged.update((_identity(r), r) for r in new)
        doc = {"format": FORMAT, "version": VERSION, "records": list(merged.values())}
        _write_atomic(path, json.dumps(doc, indent=1, sort_keys=True).encode())
        return len(merged)


def _identity(r: dict) -> str:
    return json.dumps([r[k] for k in IDENTITY], sort_keys=True)


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)


# ----------------------------------------------------------------------------- queries


def all_records(paths: Optional[Iterable[Path]] = None) -> list:
    """Records of the user database and every shipped one (or of ``paths``)."""
    paths = [user_path(), *shipped_paths()] if paths is None else list(paths)
    return [r for p in paths for r in read(p)]


def best_per_bucket(records: Iterable[dict], *, spec: str, target: str, device: str,
                    tvm: str, accept=lambda config: True) -> dict:
    """bucket -> the fastest valid record for this spec/target/device/TVM whose config
    ``accept`` (the current schedule's validity rules: a config the schedule no longer
    accepts is not a candidate any more)."""
    best: dict = {}
    for r in records:
        if (r["spec"], r["target"], r["device"], r["tvm"]) != (spec, target, device, tvm):
            continue
        if not r["valid"] or not accept(r["config"]):
            continue
        b = r["bucket"]
        if b not in best or r["ms"] < best[b]["ms"]:
            best[b] = r
    return best


def nearest(best: dict, wanted: str) -> Optional[dict]:
    """The record of the bucket nearest to ``wanted`` (itself if tuned), or None."""
    if not best:
        return None
    return best[min(best, key=lambda b: (bucket_distance(b, wanted), b))]
