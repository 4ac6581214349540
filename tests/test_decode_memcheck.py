"""compute-sanitizer memcheck over every decode-path kernel (tests/memcheck_decode.py: decode,
combine, MLA decode, H2O weights; three shapes each).  GPU only; skipped where
compute-sanitizer is missing.  Some H200 hosts refuse the sanitizer: run it on an H100."""
import os
import re
import shutil
import subprocess
import sys

import pytest

SANITIZER = shutil.which("compute-sanitizer")
SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "memcheck_decode.py")


@pytest.mark.gpu
@pytest.mark.skipif(SANITIZER is None, reason="compute-sanitizer not found")
def test_decode_kernels_are_memcheck_clean():
    out = subprocess.run([SANITIZER, "--tool", "memcheck", "--error-exitcode", "3", sys.executable, SCRIPT],
                         capture_output=True, text=True, timeout=1200)
    report = out.stdout + out.stderr
    assert out.returncode == 0, report[-6000:]
    assert re.search(r"ERROR SUMMARY: 0 errors", report), report[-6000:]
    assert "WRONG" not in report and report.count(": ok") == 3 * 17, report[-6000:]
