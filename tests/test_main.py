"""The main job runs end to end and tells a newcomer what it shows.

It reports the exact optimizer first (TF's optimizer fed JAX's gradients, 0
ULP), then explains the end-to-end difference, times without compilation, and
keeps TensorFlow's start-up log noise off the terminal.
"""

import subprocess
import sys

import pytest

# What TensorFlow's C++ runtime prints at start-up when left alone.
_TF_NOISE = (
  "oneDNN",
  "cuInit",
  "cuda",
  "absl::InitializeLog",
  "E0000",
  "I0000",
)


def _run(*args, timeout=600):
  return subprocess.run(
    [sys.executable, "-m", "optax_tfrmsprop", *args],
    capture_output=True,
    text=True,
    timeout=timeout,
    check=True,
  )


@pytest.mark.slow
def test_main_job_reports_the_exact_optimizer_first_and_is_quiet():
  pytest.importorskip("tf_keras")
  result = _run("--steps", "60")
  out = result.stdout
  alone = out.index("1. The optimizer alone")
  end_to_end = out.index("2. End to end")
  assert alone < end_to_end, out
  assert "(0 ULP), bit-identical." in out[alone:end_to_end], out
  explanation = out[end_to_end:].splitlines()[0]
  assert "gradients drifting apart" in explanation, out
  assert "not the optimizer" in explanation, out
  assert "compilation excluded" in out, out
  noise = [
    line
    for line in result.stderr.splitlines()
    if any(marker in line for marker in _TF_NOISE)
  ]
  assert not noise, result.stderr


def test_main_job_without_tf():
  result = _run("--steps", "20", "--no-tf", timeout=300)
  assert "step     0  loss" in result.stdout
  assert "train accuracy" in result.stdout
  assert "compilation excluded" in result.stdout


def test_main_job_says_how_to_get_tf_when_it_is_missing():
  # TensorFlow made unimportable in the child process, as if not installed.
  code = (
    "import sys; sys.modules['tensorflow'] = None; "
    "from optax_tfrmsprop.__main__ import main; main(['--steps', '5'])"
  )
  result = subprocess.run(
    [sys.executable, "-c", code],
    capture_output=True,
    text=True,
    timeout=300,
    check=True,
  )
  assert "skipping the Keras comparison" in result.stdout, result.stdout
  assert "pip install -e '.[tf]'" in result.stdout, result.stdout


def test_help_shows_every_default():
  result = _run("--help", timeout=120)
  for default in (
    "(default: 1000)",  # --steps
    "(default: 128)",  # --batch-size
    "(default: 32)",  # --hidden
    "(default: 0.01)",  # --learning-rate
    "(default: 0.9)",  # --momentum
    "(default: 0)",  # --seed
  ):
    assert default in result.stdout, result.stdout
