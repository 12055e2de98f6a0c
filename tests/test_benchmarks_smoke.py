"""The benchmark entry point runs every suite end to end at smoke-test size."""

import os
import pathlib
import subprocess
import sys

import pytest

_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_small_benchmark_writes_every_table(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(_ROOT))
  proc = subprocess.run(
    [sys.executable, "-m", "benchmarks.run", "--small", "--out", str(tmp_path)],
    cwd=_ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
    check=False,
  )
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

  dense = (tmp_path / "dense.md").read_text()
  for contender in (
    "optax_tfrmsprop",
    "optax_tfrmsprop optax-API",
    "optax_tfrmsprop xla",
    "optax",
    "keras3",
    "tf_keras",
    "XLA roofline",
    "C roofline",
  ):
    assert f"| plain | {contender} | " in dense, contender
  assert "| leaf 256K | momentum+centered | " in dense  # The summary.
  assert "## First call (trace + compile + one step)" in dense
  assert "## Targets, as measured" in dense
  assert (tmp_path / "dense.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

  sparse = (tmp_path / "sparse_embedding.md").read_text()
  for contender in (
    "optax_tfrmsprop sparse",
    "optax_tfrmsprop",
    "optax",
    "tf_keras sparse",
  ):
    assert f"| P8 momentum+centered | {contender} | " in sparse, contender
  assert "## Targets, as measured" in sparse

  keras = (tmp_path / "keras_wrapper_overhead.md").read_text()
  for contender in (
    "raw",
    "class",
    "tf_keras eager",
    "tf_keras tf.function",
    "class - raw",
  ):
    assert f"| 16-32-10 | {contender} | " in keras, contender
  assert "## Targets, as measured" in keras
  optax_api = (tmp_path / "optax_api.md").read_text()
  for dtype in ("float32", "float64", "bfloat16"):
    assert f"| {dtype} | conv-mini OIHW | momentum+centered | " in optax_api
  assert "## Targets, as measured" in optax_api
  layouts = (tmp_path / "xla_layouts.md").read_text()
  for layout in ("OIHW (O, I, 3, 3)", "HWIO (3, 3, I, O)", "1-D"):
    assert f"| p + a | {layout} | " in layouts, layout
  for suite in (
    "dense",
    "optax_api",
    "sparse_embedding",
    "keras_wrapper_overhead",
  ):
    assert (tmp_path / f"{suite}.json").stat().st_size > 0
