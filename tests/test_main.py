"""The main job runs end to end and reports an exact optimizer."""

import subprocess
import sys

import pytest


@pytest.mark.slow
def test_main_job_trains_and_matches_keras():
  pytest.importorskip("tf_keras")
  result = subprocess.run(
      [sys.executable, "-m", "optax_tfrmsprop", "--steps", "60"],
      capture_output=True, text=True, timeout=600, check=True)
  assert "train accuracy" in result.stdout
  assert "(the optimizer alone): 0 (0 ULP)" in result.stdout, result.stdout


def test_main_job_without_tf():
  result = subprocess.run(
      [sys.executable, "-m", "optax_tfrmsprop", "--steps", "20", "--no-tf"],
      capture_output=True, text=True, timeout=300, check=True)
  assert "step     0  loss" in result.stdout
