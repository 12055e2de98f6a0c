"""The benchmark entry point runs end to end at its smoke-test size."""

import os
import pathlib
import subprocess
import sys

import pytest

_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_small_benchmark_writes_its_table_and_plot(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(_ROOT))
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.run", "--small", "--out",
       str(tmp_path)], cwd=_ROOT, env=env, capture_output=True, text=True,
      timeout=900, check=False)
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
  table = (tmp_path / "dense.md").read_text()
  for contender in ("optax_tfrmsprop", "roofline", "optax", "keras3",
                    "tf_keras"):
    assert f"| {contender} |" in table or f" {contender} " in table
  assert "| plain |" in table and "| momentum+centered |" in table
  assert "## Targets (issue 6), as measured" in table
  assert (tmp_path / "dense.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
