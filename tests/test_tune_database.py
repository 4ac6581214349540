"""The tuning database: atomic, lock-serialized writes; damaged files are warned about once
and ignored; invalid measurements never win; a stored config the schedule no longer accepts
is not offered."""
import json
import random
import subprocess
import sys
import time
import warnings

import pytest

from attngen.tune import database as db


def record(i=0, *, spec="s0", bucket="q512-kv512", ms=1.0, valid=True, **extra):
    r = {"spec": spec, "bucket": bucket, "target": "cpu", "device": "dev", "tvm": "0.27",
         "config": {"block_q": 2 ** (i % 8), "i": i}, "valid": valid, **extra}
    if valid:
        r["ms"] = ms
    return r


def test_add_and_read_back(tmp_path):
    path = tmp_path / "t.json"
    assert db.add([record(1), record(2)], path) == 2
    assert db.add([record(1, ms=0.5)], path) == 2  # same identity: replaced, not duplicated
    got = {r["config"]["i"]: r["ms"] for r in db.read(path)}
    assert got == {1: 0.5, 2: 1.0}
    assert not list(tmp_path.glob(".tuning-tmp-*"))


def test_malformed_record_is_refused(tmp_path):
    with pytest.raises(ValueError, match="malformed"):
        db.add([{"spec": "s"}], tmp_path / "t.json")
    with pytest.raises(ValueError, match="malformed"):
        db.add([record(ms=-1.0)], tmp_path / "t.json")


@pytest.mark.parametrize("content", [
    b"", b"{\"format\": \"attngen-tuning-db\", \"vers", b"\xff\xfe not utf-8",
    b"[1, 2, 3]", json.dumps({"format": "something-else", "records": []}).encode(),
    json.dumps({"format": db.FORMAT, "version": 99, "records": []}).encode(),
])
def test_damaged_or_foreign_file_warns_once_and_is_ignored(tmp_path, content):
    path = tmp_path / "t.json"
    path.write_bytes(content)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert db.read(path) == []
        assert db.read(path) == []
        assert db.all_records([path]) == []
    assert len([w for w in caught if issubclass(w.category, db.DatabaseWarning)]) == 1
    # a writer keeps the damaged file aside and starts a readable database
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert db.add([record(3)], path) == 1
    assert (tmp_path / "t.json.corrupt").read_bytes() == content
    assert [r["config"]["i"] for r in db.read(path)] == [3]


def test_records_with_missing_fields_are_skipped(tmp_path):
    path = tmp_path / "t.json"
    doc = {"format": db.FORMAT, "version": db.VERSION,
           "records": [record(1), {"spec": 1}, "junk", record(2, ms="fast")]}
    path.write_text(json.dumps(doc))
    assert [r["config"]["i"] for r in db.read(path)] == [1]


_WRITER = r"""
import sys
from attngen.tune import database as db
path, who, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(n):
    db.add([{"spec": who, "bucket": "q1-kv1", "target": "cpu", "device": "d", "tvm": "t",
             "config": {"i": i}, "valid": True, "ms": 1.0 + i}], path)
    print(i, flush=True)  # acknowledged: this record must survive anything that follows
"""


def test_killed_writer_leaves_a_readable_database_with_every_acknowledged_record(tmp_path):
    path = tmp_path / "t.json"
    rng = random.Random(0)
    for round_ in range(6):
        who = f"w{round_}"
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), who, "100000"],
                                stdout=subprocess.PIPE, text=True)
        acked = int(proc.stdout.readline())  # started writing
        time.sleep(rng.uniform(0.0, 0.3))
        proc.kill()  # SIGKILL: no cleanup, possibly mid-write
        rest = proc.stdout.read().split()
        proc.wait()
        acked = int(rest[-1]) if rest else acked
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a torn file would warn: make that fail the test
            mine = {r["config"]["i"] for r in db.read(path) if r["spec"] == who}
        assert set(range(acked + 1)) <= mine, (round_, acked)
    # the next writer cleans up the temporary files of killed ones
    db.add([record(0)], path)
    assert not list(tmp_path.glob(".tuning-tmp-*"))


def test_concurrent_writers_lose_no_record(tmp_path):
    path = tmp_path / "t.json"
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), f"w{k}", "40"],
                              stdout=subprocess.DEVNULL) for k in range(4)]
    assert all(p.wait(timeout=300) == 0 for p in procs)
    got = {(r["spec"], r["config"]["i"]) for r in db.read(path)}
    assert got == {(f"w{k}", i) for k in range(4) for i in range(40)}


def test_invalid_never_wins_and_drifted_configs_are_skipped():
    recs = [record(1, ms=2.0), record(2, valid=False, reason="wrong at length 37"),
            record(3, ms=1.0), record(4, ms=3.0, bucket="q64-kv64")]
    best = db.best_per_bucket(recs, spec="s0", target="cpu", device="dev", tvm="0.27")
    assert best["q512-kv512"]["config"]["i"] == 3 and best["q64-kv64"]["config"]["i"] == 4
    # the schedule no longer accepts config 3: the next best valid one
    best = db.best_per_bucket(recs, spec="s0", target="cpu", device="dev", tvm="0.27",
                              accept=lambda c: c["i"] != 3)
    assert best["q512-kv512"]["config"]["i"] == 1
    # other device, TVM version or spec: nothing
    for key in ({"device": "other"}, {"tvm": "0.28"}, {"spec": "s1"}):
        args = {**dict(spec="s0", target="cpu", device="dev", tvm="0.27"), **key}
        assert db.best_per_bucket(recs, **args) == {}


def test_buckets_and_nearest():
    assert db.bucket({"q_len": 1000, "kv_len": 1000}) == "q1024-kv1024"
    assert db.bucket({"q_len": 1, "kv_len": 4097}) == "q1-kv8192"
    assert db.bucket({"q_len": 1024, "kv_len": 1024}) == "q1024-kv1024"
    best = {"q512-kv512": "a", "q8192-kv8192": "b"}
    assert db.nearest(best, "q1024-kv1024") == "a"
    assert db.nearest(best, "q4096-kv4096") == "b"
    assert db.nearest(best, "q8192-kv8192") == "b"
    assert db.nearest({}, "q8-kv8") is None


def test_shipped_databases_are_readable():
    for path in db.shipped_paths():
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert db.read(path), f"{path} holds no records"


def test_shipped_file_of_a_card():
    assert db.shipped_file("NVIDIA H200").name == "nvidia-h200.json"
    assert db.shipped_file("NVIDIA H100 80GB HBM3").name == "nvidia-h100-80gb-hbm3.json"
    assert db.shipped_file("NVIDIA H200").parent in {p.parent for p in db.shipped_paths()}
    with pytest.raises(ValueError):
        db.shipped_file(" ")
