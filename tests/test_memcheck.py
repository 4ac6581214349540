"""compute-sanitizer memcheck over the CUDA kernels, one script per path, three shapes each:

* tests/memcheck_prefill.py: the tensor-core prefill kernels (band and tile-map loops,
  token-major and packed layouts, mma.sync and wgmma);
* tests/memcheck_decode.py: decode, combine, MLA decode (bulk copies and cp.async), H2O weights;
* tests/memcheck_linear.py: the tensor-core linear-attention kernels (scalar gate, GLA / RWKV-6,
  the delta rule in one and two passes).

Each script also checks every run against its float64 reference.  GPU only; skipped where
compute-sanitizer is missing.  Some H200 hosts refuse the sanitizer: run it on an H100.
"""
import importlib
import os
import re
import shutil
import subprocess
import sys

import pytest

SANITIZER = shutil.which("compute-sanitizer")
HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.gpu
@pytest.mark.skipif(SANITIZER is None, reason="compute-sanitizer not found")
@pytest.mark.parametrize("script", ["memcheck_prefill", "memcheck_decode", "memcheck_linear"])
def test_kernels_are_memcheck_clean(script):
    sys.path.insert(0, HERE)
    module = importlib.import_module(script)
    runs = len(module.cases()) * len(module.SHAPES)
    out = subprocess.run([SANITIZER, "--tool", "memcheck", "--error-exitcode", "3", sys.executable,
                          os.path.join(HERE, script + ".py")], capture_output=True, text=True, timeout=1200)
    report = out.stdout + out.stderr
    assert out.returncode == 0, report[-6000:]
    assert re.search(r"ERROR SUMMARY: 0 errors", report), report[-6000:]
    assert "WRONG" not in report and report.count(": ok") == runs, report[-6000:]
