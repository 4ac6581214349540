"""The wheel carries templates/, schedules/ and targets/, and works when installed elsewhere."""
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ("templates", "schedules", "targets")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    # sdist first, then the wheel from the sdist: a folder missing from the sdist fails here
    subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], check=True,
                   capture_output=True, timeout=600)
    (path,) = out.glob("attngen-*.whl")
    return path


def _data_files() -> set:
    """The files of templates/, schedules/, targets/ that the project ships: git's list (a
    tuning database's lock file, say, is ignored), or every file outside a checkout."""
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files", *DATA], capture_output=True, text=True)
    if out.returncode == 0 and out.stdout.strip():
        return set(out.stdout.split())
    return {p.relative_to(ROOT).as_posix() for kind in DATA for p in (ROOT / kind).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


def test_wheel_holds_every_data_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"attngen/_data/{path}" for path in _data_files()}
    assert expected, "no data files found"
    assert expected <= names, sorted(expected - names)


@pytest.mark.slow
def test_installed_wheel_checks_from_another_directory(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(site), str(wheel)], check=True, timeout=600)
    env = {**os.environ, "PYTHONPATH": str(site), "ATTNGEN_CACHE_DIR": str(tmp_path / "cache")}
    where = subprocess.run(
        [sys.executable, "-c", "import attngen, attngen.resources as r; "
         "print(attngen.__file__); print(r.resource_dir('templates'))"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    module, templates = where.stdout.split()
    assert module.startswith(str(site)) and templates.startswith(str(site)), where.stdout
    out = subprocess.run([sys.executable, "-m", "attngen", "check", "causal", "--lengths", "1,17",
                          "--batch", "1"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stderr
    assert out.stdout.rstrip().endswith(")") and "PASS" in out.stdout.splitlines()[-1]
