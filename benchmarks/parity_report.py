"""Prints the measured ULP distance to real TF per dense path, dtype and target.

Usage: ``python benchmarks/parity_report.py [--steps 200]``. Needs the test
extra (TensorFlow and tf_keras). Each cell is the largest distance over the
variables and every slot after ``--steps`` jitted steps on random data with
gradient scales 1e-3, 1 and 30.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import jax
import numpy as np

import test_tf_parity as parity


def measure(config, dtype, steps, jit_compile):
  variables, grads = parity.random_problem(0, dtype, steps)
  tf_vars, tf_slots, _ = parity.run_tf(
    variables, grads, jit_compile=jit_compile, **config
  )
  params, state = parity.run_jax(
    variables, grads, rounding="tf_xla" if jit_compile else "tf_cpu", **config
  )
  worst = parity.max_ulp(params, tf_vars)
  for slot, tf_name in (("ms", "rms"), ("mg", "mg"), ("mom", "momentum")):
    if getattr(state, slot) is not None:
      worst = max(
        worst, parity.max_ulp(getattr(state, slot), tf_slots[tf_name])
      )
  return worst


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=200)
  args = parser.parse_args()
  print("| path | dtype | tf_cpu vs tf.function | tf_xla vs jit_compile |")
  print("|---|---|---|---|")
  for path, config in parity.PATHS.items():
    for name, dtype in parity.DTYPES.items():
      with jax.enable_x64(name == "float64"):
        cells = []
        for jit_compile in (False, True):
          try:
            cells.append(
              f"{measure(config, dtype, args.steps, jit_compile)} ULP"
            )
          except Exception as e:  # noqa: BLE001 - TF's error is the result
            cells.append(f"TF error: {type(e).__name__}")
      print(f"| {path} | {name} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
  np.seterr(all="ignore")
  main()
