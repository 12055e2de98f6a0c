"""Measures the package against ``Model.fit`` with each Keras schedule.

For every case of ``tests/model_fit_reference.py`` (``CASES`` and
``MORE_CASES``: all six schedules, every argument, float32 and float64, with
and without ``decay``): trains a tf_keras model with ``Model.fit`` and
``tf_keras.optimizers.legacy.RMSprop(learning_rate=<schedule>)`` for
``--steps`` steps, feeds the same gradients
to the package's three entry points (``rmsprop(learning_rate=<port>)``,
``RMSprop.from_config(<TF config>)``, ``RMSprop(learning_rate=<port>)``) and
prints the largest ULP distance over the variables and slots.

Without ``--evaluation`` the package's default is measured, so the script
also runs against older versions of the package (put them first on
``PYTHONPATH``). Run from the repository root::

  PYTHONPATH=$PWD python scripts/measure_schedule_ulps.py
  PYTHONPATH=$PWD python scripts/measure_schedule_ulps.py --evaluation eager
"""

import argparse
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The helpers live with the tests; ``tests`` is a namespace package, so an
# older package first on PYTHONPATH can still be measured with them.
sys.path.append(str(pathlib.Path(__file__).resolve().parents[1]))

import jax
import tf_keras

from tests import model_fit_reference as ref


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=3000)
  parser.add_argument("--evaluation", choices=("graph", "eager"))
  parser.add_argument("--cases", nargs="*", help="case ids (default: all)")
  args = parser.parse_args()
  evaluation = {"evaluation": args.evaluation} if args.evaluation else {}
  print(
    f"| case | dtype | {' | '.join(('rmsprop', 'from_config', 'RMSprop'))} |"
  )
  print("|---|---|---|---|---|")
  for case_id, name, config, opt_config, dtype in ref.CASES + ref.MORE_CASES:
    if args.cases and case_id not in args.cases:
      continue
    init, grads = ref.problem(args.steps, dtype)
    schedule = getattr(tf_keras.optimizers.schedules, name)(**config)
    tf_values, tf_slots, tf_config = ref.fit(
      schedule, init, grads, **opt_config
    )
    with jax.enable_x64(dtype == "float64"):
      ours = ref.run_entry_points(
        name, config, init, grads, tf_config, opt_config, **evaluation
      )
    cells = []
    for entry in ("rmsprop", "from_config", "RMSprop"):
      ulps = ref.max_ulps(ours[entry], (tf_values, tf_slots))
      cells.append(str(max(ulps.values())))
    print(f"| {case_id} | {dtype} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
  main()
