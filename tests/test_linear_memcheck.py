"""compute-sanitizer memcheck over the tensor-core linear-attention kernels (tests/memcheck_linear.py:
the scalar-gate, GLA and delta-rule kernels and their knobs; three shapes each).  GPU only;
skipped where compute-sanitizer is missing.  Some H200 hosts refuse the sanitizer: run it on
an H100."""
import os
import re
import shutil
import subprocess
import sys

import pytest

SANITIZER = shutil.which("compute-sanitizer")
SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "memcheck_linear.py")


@pytest.mark.gpu
@pytest.mark.skipif(SANITIZER is None, reason="compute-sanitizer not found")
def test_linear_kernels_are_memcheck_clean():
    sys.path.insert(0, os.path.dirname(SCRIPT))
    import memcheck_linear

    runs = len(memcheck_linear.cases()) * len(memcheck_linear.SHAPES)
    out = subprocess.run([SANITIZER, "--tool", "memcheck", "--error-exitcode", "3", sys.executable, SCRIPT],
                         capture_output=True, text=True, timeout=1200)
    report = out.stdout + out.stderr
    assert out.returncode == 0, report[-6000:]
    assert re.search(r"ERROR SUMMARY: 0 errors", report), report[-6000:]
    assert "WRONG" not in report and report.count(": ok") == runs, report[-6000:]
