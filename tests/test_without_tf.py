"""Tests that need no TensorFlow run without it; the others skip, not fail.

A child pytest runs with ``tensorflow``, ``tf_keras`` and ``keras`` made
unimportable (``sys.modules[name] = None``), over the golden replays (the
parity core, float32 and on the XLA path: the suite runs them all), the core
and a file that mixes TF and non-TF tests. Nothing may fail; the tests that
need TF skip one by one.
"""

import os
import subprocess
import sys

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
CHILD = """
import sys
for name in ("tensorflow", "tf_keras", "keras"):
  sys.modules[name] = None
import pytest
sys.exit(pytest.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_non_tf_tests_run_without_tensorflow():
  args = [
    "-q",
    "-p",
    "no:cacheprovider",
    "-k",
    "not ffi and not float16 and not float64",  # a sample, on the XLA path
    os.path.join(TESTS, "test_core.py"),
    os.path.join(TESTS, "test_sparse.py"),
    os.path.join(TESTS, "test_goldens.py"),
  ]
  result = subprocess.run(
    [sys.executable, "-c", CHILD, *args],
    cwd=os.path.dirname(TESTS),
    capture_output=True,
    text=True,
    timeout=600,
    check=False,  # The assertion shows the output.
  )
  summary = result.stdout.strip().splitlines()[-1]
  assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
  assert " passed" in summary and " skipped" in summary, summary
  assert "failed" not in summary and "error" not in summary, summary
