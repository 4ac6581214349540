"""``attngen tune`` on the CPU target, end to end: candidates, parallel builds (failures and
timeouts recorded), validation before timing, the database, and the builds that use it; the
build-here / measure-there split with the measuring side on TVM's runtime alone."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

import attngen
import attngen.torch_op
from attngen import Attention, masks
from attngen.cli import load_spec
from attngen.gallery import GALLERY
from attngen.targets import get, local_cuda_arch
from attngen.tune import database, space, tuner
from attngen.tune.runner import build_all

CPU = get("cpu")
SPEC_TEXT = """
from attngen import Attention, masks
spec = Attention(num_heads=2, head_dim=32, mask=masks.causal(), dtype="float32"{extra})
"""


def spec_file(tmp_path, name, extra=""):
    path = tmp_path / f"{name}.py"
    path.write_text(SPEC_TEXT.format(extra=extra))
    return path


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "attngen", *map(str, args)], capture_output=True,
                          text=True, timeout=600, env={**os.environ, **(env or {})})


def test_space_default_first_and_every_candidate_valid():
    for spec in (Attention(num_heads=4, head_dim=64, mask=masks.causal()),
                 GALLERY["gla"].spec):
        for target in (CPU, get("cuda-sm90a")):
            cands = space.candidates(spec, target)
            assert cands[0] == space.default_config(spec, target)
            assert len({json.dumps(c, sort_keys=True) for c in cands}) == len(cands)
            assert all(space.is_valid(spec, target, c) for c in cands)
            # a limit truncates (GLA's tensor-core kernel on CUDA has only 2 candidates)
            assert len(space.candidates(spec, target, 3)) == min(3, len(cands))


def test_fixed_knobs_keep_their_default_and_unknown_ones_are_refused():
    spec = GALLERY["causal"].spec
    sm90 = get("cuda-sm90a")
    default = space.default_config(spec, sm90)
    cands = space.candidates(spec, sm90, fixed=("tile_map",))
    assert cands[0] == default and len(cands) < len(space.candidates(spec, sm90))
    assert all(c["tile_map"] == default["tile_map"] for c in cands)
    with pytest.raises(ValueError, match="no_such_knob"):
        space.candidates(spec, sm90, fixed=("no_such_knob",))


def test_batches_per_length():
    assert tuner.batches_for([1024, 4096, 16384], tokens=16384) == [16, 4, 1]
    assert tuner.batches_for([100, 50000], tokens=16384) == [163, 1]
    assert tuner.batches_for([64, 256], batch=3) == [3, 3]
    with pytest.raises(ValueError):
        tuner.batches_for([64], tokens=0)
    # a manifest written before per-length batches existed
    assert tuner.manifest_batches({"lengths": [8, 16], "batch": 2}) == [2, 2]


def test_space_rejects_what_the_target_cannot_run():
    # a SIMT tile over the 48 KiB static shared memory is never offered
    spec = Attention(num_heads=4, head_dim=256, mask=masks.causal(), phase=attngen.Decode(1))
    sched = space.schedule_module(spec, CPU)
    assert space.is_valid(spec, CPU, space.default_config(spec, CPU))
    assert not space.is_valid(spec, CPU, {**space.default_config(spec, CPU), "block_q": 3})
    assert "kv_tile" in sched.KNOBS and set(space.knob_values(sched, "kv_tile", "float32")) == {
        "float32", "input"}


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """One spec tuned through the two-host path: build-only, measure with the TVM runtime only
    (compiler library never loaded, compiler modules blocked), import."""
    tmp = tmp_path_factory.mktemp("tune")
    spec_path = spec_file(tmp, "spec")
    out = tmp / "cands"
    db = tmp / "db.json"
    r = cli("tune", spec_path, "--build-only", "-o", out, "--lengths", "64,256", "--trials", "3",
            "--jobs", "2", "--tokens", "256", "--fix", "block_k")
    assert r.returncode == 0, r.stderr
    blocker = textwrap.dedent("""
        import importlib.abc, runpy, sys
        BLOCKED = ("tvm.s_tir", "tvm.relax", "tvm.meta_schedule", "tvm.dlight",
                   "attngen.pipeline")
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.startswith(BLOCKED):
                    raise ImportError("compiler module imported on the measuring side: " + name)
        sys.meta_path.insert(0, Block())
        sys.argv = ["attngen", "measure", sys.argv[1], "--repeats", "3"]
        try:
            runpy.run_module("attngen", run_name="__main__")
        finally:
            import tvm
            assert tvm.base._RUNTIME_ONLY
            assert "libtvm_compiler" not in open("/proc/self/maps").read()
    """)
    m = subprocess.run([sys.executable, "-c", blocker, str(out)], capture_output=True, text=True,
                       timeout=600, env={**os.environ, "TVM_USE_RUNTIME_LIB": "1",
                                         "ATTNGEN_DEBUG": "1"})
    assert m.returncode == 0, m.stdout + m.stderr
    r = cli("tune", "--import", out, "--db", db)
    assert r.returncode == 0, r.stderr
    spec = load_spec(str(spec_path))
    return spec, out, db, m.stdout, spec_path


def test_measure_validates_and_times_every_candidate(measured):
    spec, out, db, table, _ = measured
    results = json.loads((out / "results.json").read_text())
    assert [r["status"] for r in results["rows"]] == ["ok"] * 3
    for row in results["rows"]:
        assert row["config"]["block_k"] == 64  # held at its default by --fix
        assert set(row["timings"]) == {"q64-kv64", "q256-kv256"}
        # --tokens 256: as many sequences as make 256 tokens at each length
        assert {t["length"]: t["batch"] for t in row["timings"].values()} == {64: 4, 256: 1}
        assert all(t["ms"] > 0 and t["copies"] >= 2 for t in row["timings"].values())
    assert "best q64-kv64" in table and "vs default" in table


def test_import_records_every_measurement(measured):
    spec, out, db, *_ = measured
    recs = database.read(db)
    assert len(recs) == 3 * 2 and all(r["valid"] and r["spec"] == spec.key for r in recs)
    assert {r["bucket"] for r in recs} == {"q64-kv64", "q256-kv256"}


def test_build_and_compile_pick_the_fastest_config_of_the_bucket(measured, monkeypatch):
    spec, out, db, *_ = measured
    monkeypatch.setenv(database.ENV_DB, str(db))
    recs = database.read(db)
    from attngen.tune import NOISE, best_config

    def expected(b):
        """The fastest config of the bucket, unless it beats the default only by noise."""
        fastest = min((r for r in recs if r["bucket"] == b), key=lambda r: r["ms"])
        if fastest["ms"] * (1 + NOISE) > fastest["default_ms"]:
            return space.default_config(spec, CPU)
        return fastest["config"]

    for b, length in (("q64-kv64", 50), ("q256-kv256", 256)):
        shape = {"batch": 1, "q_len": length, "kv_len": length}
        assert best_config(spec, CPU, shape) == expected(b)
    # a bucket nobody tuned takes the nearest tuned one
    assert best_config(spec, CPU, {"batch": 1, "q_len": 5000, "kv_len": 5000}) == expected("q256-kv256")
    # attngen.build(shape=...) takes the config of the shape's bucket (in a fresh process, as a
    # user calls it)
    code = textwrap.dedent(f"""
        import attngen, json
        from attngen.cli import load_spec
        from attngen.tune import best_config
        from attngen.targets import get
        spec = load_spec({str(measured[4])!r})
        shape = {{"batch": 1, "q_len": 200, "kv_len": 200}}
        kernel = attngen.build(spec, "cpu", shape=shape)
        print(json.dumps(best_config(spec, get("cpu"), shape)))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                       env={**os.environ, database.ENV_DB: str(db)})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == expected("q256-kv256")
    op = attngen.torch_op.compile(spec, "cpu")
    assert sorted(op.table) == ["q256-kv256", "q64-kv64"]
    for length, b in ((7, "q64-kv64"), (200, "q256-kv256"), (3000, "q256-kv256")):
        chosen = op.kernel_for({"batch": 1, "q_len": length, "kv_len": length})
        assert chosen is op.kernels[op.table[b]]


def test_a_wrong_candidate_is_recorded_invalid_and_never_chosen(measured, tmp_path):
    spec, out, db, *_ = measured
    # swap one candidate's kernel for a kernel of another spec (different scale): it runs
    # as fast as the right one but computes something else
    import shutil

    work = tmp_path / "cands"
    shutil.copytree(out, work)
    manifest = json.loads((work / "manifest.json").read_text())
    victim = manifest["candidates"][1]
    wrong = spec.replace(scale=0.5)
    configs = {victim["id"]: victim["config"]}
    shutil.rmtree(work / victim["id"])
    assert build_all(wrong, CPU, configs, work, jobs=1)[0].status == "built"
    from attngen.tune.measure import measure

    results = measure(work, repeats=2)
    row = next(r for r in results["rows"] if r["id"] == victim["id"])
    assert row["status"] == "invalid" and "wrong at length" in row["reason"]
    fake_db = tmp_path / "db.json"
    tuner.import_dir(work, fake_db)
    recs = database.read(fake_db)
    bad = [r for r in recs if r["config"] == victim["config"]]
    assert bad and not any(r["valid"] for r in bad)
    # even with the fastest time on record, an invalid config is not chosen
    best = database.best_per_bucket(recs, spec=spec.key, target="cpu", device=bad[0]["device"],
                                    tvm=bad[0]["tvm"])
    assert all(r["config"] != victim["config"] for r in best.values())


def test_compile_failures_and_timeouts_are_results(tmp_path):
    spec = Attention(num_heads=2, head_dim=32, mask=masks.causal(), dtype="float32")
    default = space.default_config(spec, CPU)
    results = build_all(spec, CPU, {"bad": {**default, "block_q": 3}, "ok": default}, tmp_path,
                        jobs=2)
    by_id = {r.id: r for r in results}
    assert by_id["bad"].status == "compile_error" and "block_q" in by_id["bad"].error
    assert by_id["ok"].status == "built" and (tmp_path / "ok" / "kernel.so").is_file()
    assert not (tmp_path / "bad").exists()
    slow = build_all(spec.replace(head_dim=64), CPU, {"t": default}, tmp_path / "t", timeout=0.5)
    assert slow[0].status == "timeout"


def test_two_tuners_at_once_lose_no_record(tmp_path):
    db = tmp_path / "db.json"
    procs = []
    for name, extra in (("a", ""), ("b", ", scale=0.25")):
        path = spec_file(tmp_path, name, extra)
        procs.append((path, tmp_path / f"out_{name}", subprocess.Popen(
            [sys.executable, "-m", "attngen", "tune", str(path), "--lengths", "32,128",
             "--trials", "2", "--jobs", "1", "--repeats", "2", "--db", str(db), "-o",
             str(tmp_path / f"out_{name}")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)))
    for _, _, p in procs:
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stderr
    recs = database.read(db)
    want = set()
    for path, out, _ in procs:
        for r in tuner.records_of(out):
            want.add((r["spec"], r["bucket"], json.dumps(r["config"], sort_keys=True)))
    got = {(r["spec"], r["bucket"], json.dumps(r["config"], sort_keys=True)) for r in recs}
    assert len(want) == 2 * 2 * 2 and got == want


@pytest.mark.skipif(local_cuda_arch() is not None, reason="a GPU is here: it would tune")
def test_tune_without_a_gpu_points_to_build_only():
    r = cli("tune", "causal", "--target", "cuda-sm90a")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--build-only" in r.stderr


def test_a_win_within_timing_noise_keeps_the_default(tmp_path, monkeypatch):
    from attngen.builder import _host_cpu_id, _tvm_version
    from attngen.tune import NOISE, best_config, tuned

    spec = Attention(num_heads=2, head_dim=32, mask=masks.causal(), dtype="float32")
    default = space.default_config(spec, CPU)
    other = next(c for c in space.candidates(spec, CPU) if c != default)
    db = tmp_path / "db.json"
    base = {"spec": spec.key, "target": "cpu", "device": _host_cpu_id(), "tvm": _tvm_version(),
            "valid": True, "default_ms": 1.0}
    near, far = 1.0 / (1 + NOISE / 2), 1.0 / (1 + 2 * NOISE)
    database.add([{**base, "bucket": "q64-kv64", "config": other, "ms": near},
                  {**base, "bucket": "q64-kv64", "config": default, "ms": 1.0},
                  {**base, "bucket": "q1024-kv1024", "config": other, "ms": far},
                  {**base, "bucket": "q1024-kv1024", "config": default, "ms": 1.0}], db)
    monkeypatch.setenv(database.ENV_DB, str(db))
    _, best = tuned(spec, CPU)
    assert best["q64-kv64"]["config"] == default  # the bucket stays tuned, to the default
    assert best["q1024-kv1024"]["config"] == other
    assert best_config(spec, CPU, {"batch": 1, "q_len": 50, "kv_len": 50}) == default


def test_records_that_never_raced_the_default_kernel_are_ignored(tmp_path, monkeypatch):
    """On sm_90a the prefill default is wgmma with TMA loads: an mma.sync record measured
    against the mma.sync default (like the shipped H100 records, which predate the field) does
    not displace it, nor one measured against wgmma's cp.async kernel; a record whose run's
    default was today's does, whatever its own kernel."""
    from attngen.builder import _tvm_version
    from attngen.tune import tuned

    sm90 = get("cuda-sm90a")
    spec = GALLERY["causal"].spec
    default = space.default_config(spec, sm90)
    assert default["mma"] == "wgmma" and default["tma"]
    mma_sync = space.schedule_module(spec, sm90).default(spec, sm90, mma="mma_sync")
    base = {"spec": spec.key, "target": sm90.name, "device": "NVIDIA H100 80GB HBM3",
            "tvm": _tvm_version(), "valid": True, "default_ms": 1.0, "config": mma_sync, "ms": 0.5}
    db = tmp_path / "db.json"
    database.add([{**base, "bucket": "q1024-kv1024"},  # no default_config: raced mma.sync
                  {**base, "bucket": "q4096-kv4096", "default_config": mma_sync},
                  {**base, "bucket": "q8192-kv8192", "default_config": {**default, "tma": False}},
                  {**base, "bucket": "q16384-kv16384", "default_config": default}], db)
    monkeypatch.setenv(database.ENV_DB, str(db))
    monkeypatch.setattr(database, "shipped_paths", lambda: [])
    _, best = tuned(spec, sm90, "NVIDIA H100 80GB HBM3")
    assert set(best) == {"q16384-kv16384"} and best["q16384-kv16384"]["config"] == mma_sync
