"""``attngen export`` / ``attngen.load``: one module with every tuned variant, loaded in a fresh
process on TVM's runtime alone, verified by hash, output identical to ``attngen.compile``."""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import attngen
from attngen import Attention, masks, mods
from attngen.builder import _host_cpu_id, _tvm_version
from attngen.export import ExportError, export, load
from attngen.tune import database, space
from attngen.targets import get

SPEC = Attention(num_heads=2, head_dim=32, mask=masks.causal(), dtype="float32")
CPU = get("cpu")


@pytest.fixture(scope="module")
def tuned_db(tmp_path_factory):
    """A database that tunes two buckets of SPEC to two different non-default configs."""
    path = tmp_path_factory.mktemp("db") / "db.json"
    default = space.default_config(SPEC, CPU)
    cands = [c for c in space.candidates(SPEC, CPU) if c != default][:2]
    base = {"spec": SPEC.key, "target": "cpu", "device": _host_cpu_id(), "tvm": _tvm_version(),
            "valid": True}
    database.add([{**base, "bucket": "q64-kv64", "config": cands[0], "ms": 1.0},
                  {**base, "bucket": "q1024-kv1024", "config": cands[1], "ms": 2.0}], path)
    return path, cands


@pytest.fixture(scope="module")
def exported(tuned_db, tmp_path_factory):
    """``attngen export`` of SPEC with the tuned database, and ``attngen.compile`` of SPEC."""
    db, _ = tuned_db
    folder = tmp_path_factory.mktemp("export")
    out, spec_file = folder / "attn.so", folder / "spec.py"
    spec_file.write_text(f"import attngen\nspec = eval({repr(SPEC)!r}, attngen.namespace())\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(database.ENV_DB, str(db))
        r = subprocess.run([sys.executable, "-m", "attngen", "export", "--target", "cpu",
                            str(spec_file), "-o", str(out)], capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, r.stderr
        op = attngen.compile(SPEC, "cpu")
    return out, op


def test_export_holds_the_default_and_every_tuned_variant(exported, tuned_db):
    out, op = exported
    meta = json.loads(open(f"{out}.json").read())
    _, cands = tuned_db
    assert [v["config"] for v in meta["variants"]] == [None, cands[1], cands[0]]
    assert meta["table"] == {"q1024-kv1024": 1, "q64-kv64": 2}
    assert sorted(op.table) == sorted(meta["table"])


_LOADER = textwrap.dedent("""
    import importlib.abc, sys, time
    BLOCKED = ("tvm.s_tir", "tvm.relax", "tvm.meta_schedule", "tvm.dlight", "attngen.pipeline")
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.startswith(BLOCKED):
                raise ImportError("compiler module imported at load: " + name)
    sys.meta_path.insert(0, Block())
    import numpy as np, torch, attngen, tvm
    so, data = sys.argv[1], sys.argv[2]
    device = sys.argv[3] if len(sys.argv) > 3 else "cpu"
    op = attngen.load(so)
    arrays = dict(np.load(data))
    outs = {}
    for n in (20, 700):
        q, k, v = (torch.from_numpy(arrays[f"{x}{n}"]).to(device) for x in "qkv")
        o, lse = op(q, k, v)
        outs[f"o{n}"], outs[f"lse{n}"] = o.cpu().numpy(), lse.cpu().numpy()
    np.savez(data.replace(".npz", "_out.npz"), **outs)
    assert tvm.base._RUNTIME_ONLY and "libtvm_compiler" not in open("/proc/self/maps").read()
    print(f"load {op.load_seconds:.3f} s")
""")


def test_load_in_a_fresh_runtime_only_process_matches_compile(exported, tmp_path):
    out, op = exported
    rng = np.random.default_rng(0)
    arrays, want = {}, {}
    for n in (20, 700):  # two buckets, served by two different tuned variants
        q, k, v = (rng.standard_normal((1, 2, n, 32)).astype(np.float32) for _ in range(3))
        arrays.update({f"q{n}": q, f"k{n}": k, f"v{n}": v})
        want[n] = op(*(torch.from_numpy(x) for x in (q, k, v)))
    data = tmp_path / "in.npz"
    np.savez(data, **arrays)
    r = subprocess.run([sys.executable, "-c", _LOADER, str(out), str(data)], capture_output=True,
                       text=True, timeout=600, env={**os.environ, "TVM_USE_RUNTIME_LIB": "1"})
    assert r.returncode == 0, r.stdout + r.stderr
    got = np.load(tmp_path / "in_out.npz")
    for n in (20, 700):
        assert np.array_equal(got[f"o{n}"], want[n][0].numpy())
        assert np.array_equal(got[f"lse{n}"], want[n][1].numpy())


def test_a_cpu_export_is_refused_on_another_cpu_model(exported, tmp_path):
    out, _ = exported
    meta = json.loads(open(f"{out}.json").read())
    assert meta["cpu"] == _host_cpu_id()
    other = tmp_path / "other.so"
    shutil.copy(out, other)
    meta["cpu"] = "Some Other CPU @ 1.00GHz"
    other.with_name("other.so.json").write_text(json.dumps(meta))
    with pytest.raises(ExportError, match="Some Other CPU"):
        load(other)
    # an export written before the CPU model was recorded is refused too, not guessed at
    del meta["cpu"]
    other.with_name("other.so.json").write_text(json.dumps(meta))
    with pytest.raises(ExportError, match="unknown"):
        load(other)


def test_altered_or_incomplete_exports_are_refused(exported, tmp_path):
    out, _ = exported
    bad = tmp_path / "bad.so"
    shutil.copy(out, bad)
    shutil.copy(f"{out}.json", f"{bad}.json")
    with open(bad, "r+b") as f:  # one flipped byte
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(ExportError, match="sha256"):
        load(bad)
    with pytest.raises(ExportError, match="not an attngen export"):
        load(tmp_path / "missing.so")
    link = tmp_path / "link.so"
    os.symlink(out, link)
    os.symlink(f"{out}.json", f"{link}.json")
    with pytest.raises((ExportError, OSError)):
        load(link)  # only the path given, never through a link


def test_the_loaded_copy_is_private_and_named_by_its_hash(exported):
    out, _ = exported
    op = load(out)
    meta = json.loads(open(f"{out}.json").read())
    from attngen.builder import cache_dir

    root = cache_dir().parent / "exports"
    assert (root / f"{meta['files']['so']}.so").is_file()
    assert root.stat().st_mode & 0o777 == 0o700
    assert op.load_seconds is not None


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_cuda_export_ships_a_cubin_of_its_source(tmp_path):
    spec = Attention(num_heads=2, head_dim=64, mask=masks.causal())
    meta = export(spec, tmp_path / "k.so", "cuda-sm90a", device="none")
    cubin = (tmp_path / "k.so.cubin").read_bytes()
    import hashlib

    assert hashlib.sha256(cubin).hexdigest() == meta["files"]["cubin"]
    assert cubin[:4] == b"\x7fELF" and meta["arch"] == "sm_90a" and meta["cuda_source_sha256"]


# ----------------------------------------------------------------------------- on the GPU

# two specs of the tensor-core kernel: without a score mod (the scale folded into the exp2)
# and with one (logits computed apart)
GPU_SPECS = {"causal": Attention(num_heads=2, head_dim=64, mask=masks.causal()),
             "softcap": Attention(num_heads=2, head_dim=64, mask=masks.causal(),
                                  score_mod=mods.softcap(20.0))}
GPU_CARD = "attngen-test-card"  # a device name no real card has: only this test's records
GPU_BUCKETS = {20: "q32-kv32", 700: "q1024-kv1024"}


def _gpu_files(name):
    root = Path(os.environ["ATTNGEN_CACHE_DIR"]) / "gpu-export"
    return root / f"{name}.so", root / "db.json"


def _gpu_configs(spec):
    sm90 = get("cuda-sm90a")
    default = space.default_config(spec, sm90)
    return [c for c in space.candidates(spec, sm90) if c != default][:2]


def prebuild(target: str = "cuda-sm90a") -> None:
    """Here (compiler, nvcc): a database tuning two buckets of each GPU spec to two non-default
    configs for GPU_CARD, the export of those kernels, and ``attngen.compile``'s cache entries,
    so that the GPU host (TVM runtime only) exports nothing and builds nothing."""
    from attngen.builder import ensure_cached

    for name, spec in GPU_SPECS.items():
        out, db = _gpu_files(name)
        out.parent.mkdir(parents=True, exist_ok=True)
        # measured against today's default kernel, or tune.tuned would not let them displace it
        base = {"spec": spec.key, "target": target, "device": GPU_CARD, "tvm": _tvm_version(),
                "valid": True, "ms": 1.0, "default_config": space.default_config(spec, get(target))}
        configs = _gpu_configs(spec)
        database.add([{**base, "bucket": b, "config": c}
                      for b, c in zip(GPU_BUCKETS.values(), configs)], db)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(database.ENV_DB, str(db))
            export(spec, out, target, device=GPU_CARD)
        for config in [None, *configs]:
            ensure_cached(spec, target, config)


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(GPU_SPECS))
def test_gpu_export_loads_in_a_fresh_process_and_matches_compile(name, tmp_path, monkeypatch):
    spec = GPU_SPECS[name]
    out, db = _gpu_files(name)
    if not out.is_file():  # needs the compiler: on a runtime-only host run prebuild_gpu first
        prebuild()
    monkeypatch.setenv(database.ENV_DB, str(db))
    op = attngen.compile(spec, "cuda", device=GPU_CARD)
    meta = json.loads(open(f"{out}.json").read())
    assert len(meta["variants"]) == 3 and sorted(meta["table"]) == sorted(op.table)
    rng = np.random.default_rng()
    arrays, want = {}, {}
    for n in GPU_BUCKETS:  # two buckets, served by two different tuned variants
        q, k, v = (rng.standard_normal((2, 2, n, 64)).astype(np.float16) for _ in range(3))
        arrays.update({f"q{n}": q, f"k{n}": k, f"v{n}": v})
        want[n] = [t.cpu().numpy() for t in op(*(torch.from_numpy(x).cuda() for x in (q, k, v)))]
    data = tmp_path / "in.npz"
    np.savez(data, **arrays)
    r = subprocess.run([sys.executable, "-c", _LOADER, str(out), str(data), "cuda"],
                       capture_output=True, text=True, timeout=600,
                       env={**os.environ, "TVM_USE_RUNTIME_LIB": "1"})
    assert r.returncode == 0, r.stdout + r.stderr
    print(name, r.stdout.strip())  # the load time, for the record (pytest -s)
    got = np.load(tmp_path / "in_out.npz")
    for n in GPU_BUCKETS:
        assert np.array_equal(got[f"o{n}"], want[n][0], equal_nan=True)
        assert np.array_equal(got[f"lse{n}"], want[n][1], equal_nan=True)
        # identical and right: the export is not two copies of one wrong kernel
        assert not np.isnan(want[n][0]).any(), f"compile's output at length {n} holds NaN"
