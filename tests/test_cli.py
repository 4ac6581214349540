"""The command line: every bad input is one line on stderr and exit code 2, never a traceback."""
import subprocess
import sys

import pytest

from attngen.gallery import GALLERY


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "attngen", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=600)


def test_list_names_is_the_gallery():
    out = run("list", "--names")
    assert out.returncode == 0
    assert out.stdout.split() == list(GALLERY)


def test_list_puts_the_name_first():
    out = run("list")
    assert out.returncode == 0
    assert [line.split()[0] for line in out.stdout.splitlines()] == list(GALLERY)


@pytest.mark.parametrize("args, message", [
    (("check", "no_such_spec"), "neither a gallery name"),
    (("check", "missing.py"), "no such file"),
    (("check", "causal", "--target", "tpu"), "unknown target 'tpu'"),
    (("show", "causal", "--cuda-source"), "needs a CUDA target"),
    (("check", "causal", "--lengths", "0"), "lengths must be positive"),
    (("frobnicate",), "invalid choice"),
    ((), "required"),
])
def test_bad_input_is_one_line_exit_2(args, message):
    out = run(*args)
    assert out.returncode == 2, out
    assert out.stdout == ""
    assert out.stderr.count("\n") == 1 and message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("source, message", [
    ("x = 1\n", "defines no variable named `spec`"),
    ("spec = 3\n", "must be an attngen.Attention or LinearAttention"),
    ("import attngen\nspec = attngen.Attention(num_heads=6, num_kv_heads=4)\n",
     "Attention.num_kv_heads: must divide num_heads"),
    ("import attngen\nspec = attngen.LinearAttention(gate='sideways')\n", "LinearAttention.gate"),
    ("raise RuntimeError('boom')\n", "RuntimeError: boom"),
    ("def broken(:\n", "SyntaxError"),
])
def test_bad_spec_file(tmp_path, source, message):
    path = tmp_path / "spec.py"
    path.write_text(source)
    out = run("show", str(path))
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and message in out.stderr, out.stderr


def test_show_prints_the_mask_the_kernels_evaluate(tmp_path):
    """Where the kernels factor the mask, `show` says so; a gallery mask, unchanged, says nothing."""
    path = tmp_path / "spec.py"
    path.write_text("from attngen import Attention, masks\n"
                    "spec = Attention(num_heads=2, head_dim=32, mask=masks.global_local(4, 16, causal=True))\n")
    out = run("show", str(path))
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith("# mask as the kernels evaluate it: "))
    assert line.count("kv_idx <= (q_idx + (kv_len - q_len))") == 1
    assert "evaluate it" not in run("show", "causal").stdout


def test_check_without_gpu_says_how_to_build_only():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    out = run("check", "causal", "--target", "cuda")
    assert out.returncode == 2
    assert "no CUDA GPU" in out.stderr and "--cuda-source" in out.stderr


def test_spec_file_from_another_directory(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text("import attngen\nfrom attngen import masks\n"
                    "spec = attngen.Attention(num_heads=2, head_dim=32, mask=masks.sliding_window(5))\n")
    out = run("check", str(path), "--lengths", "1,9", "--batch", "1", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.rstrip().splitlines()[-1].startswith("PASS")


@pytest.mark.skipif(__import__("shutil").which("nvcc") is None, reason="needs nvcc")
@pytest.mark.parametrize("name", ["causal", "gla"])
def test_cuda_source_from_the_cli_compiles_with_nvcc(tmp_path, name):
    out = run("show", name, "--target", "cuda-sm90a", "--cuda-source")
    assert out.returncode == 0, out.stderr
    assert "__global__" in out.stdout
    source = tmp_path / f"{name}.cu"
    source.write_text(out.stdout)
    nvcc = subprocess.run(["nvcc", "-cubin", "-arch=sm_90a", "-o", str(tmp_path / "k.cubin"),
                           str(source)], capture_output=True, text=True, timeout=600)
    assert nvcc.returncode == 0, nvcc.stderr[-3000:]
