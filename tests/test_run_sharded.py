"""tests/run_sharded.py: the GPU host's parallel pytest (no pytest-xdist there)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run_sharded  # noqa: E402


def _suite(tmp_path, body, monkeypatch):
    """A test file in tmp_path, run from there: node ids are relative to pytest's rootdir,
    which the shards share with the collection by running in the same directory."""
    (tmp_path / "test_tiny.py").write_text(body)
    monkeypatch.chdir(tmp_path)
    return "test_tiny.py"


def test_every_selected_test_runs_once_across_the_shards(tmp_path, capsys, monkeypatch):
    suite = _suite(tmp_path, "import pytest\n\n@pytest.mark.parametrize('i', range(5))\n"
                             "def test_a(i):\n    assert i < 5\n\ndef test_skipped_by_k():\n    assert False\n", monkeypatch)
    rc = run_sharded.main(["-n", "2", "--logs", str(tmp_path / "logs"), "--", suite, "-k", "test_a"])
    out = capsys.readouterr().out
    assert rc == 0 and "5 tests in 2 shards: all passed" in out, out
    logs = [(tmp_path / "logs" / f"shard{i}.txt").read_text() for i in range(2)]
    assert "3 passed" in logs[0] and "2 passed" in logs[1], logs


def test_a_failing_shard_fails_the_run(tmp_path, capsys, monkeypatch):
    suite = _suite(tmp_path, "def test_ok():\n    pass\n\ndef test_bad():\n    assert False\n", monkeypatch)
    assert run_sharded.main(["-n", "2", "--logs", str(tmp_path), "--", suite]) == 1
    assert "1 shards failed" in capsys.readouterr().out


def test_nothing_selected_is_an_error(tmp_path, monkeypatch):
    suite = _suite(tmp_path, "def test_ok():\n    pass\n", monkeypatch)
    assert run_sharded.main(["--logs", str(tmp_path), "--", suite, "-k", "no_such_test"]) == 2
