"""``python -m optax_tfrmsprop.doctor RECORD``: diagnose a recorded run."""

import argparse
import sys

from optax_tfrmsprop._src.doctor import replay
from optax_tfrmsprop._src.doctor import report


def main(argv=None) -> int:
  """Prints the diagnosis of a record; returns 0 if a semantics reproduces it.

  Args:
    argv: the command line (default ``sys.argv[1:]``).

  Returns:
    The exit status: 0 when some semantics reproduces the record exactly, 1
    when none does, 2 when the record cannot be read (missing, not a record,
    malformed) or on a usage error.
  """
  parser = argparse.ArgumentParser(
    prog="python -m optax_tfrmsprop.doctor",
    description=(
      "Replays a record (made with optax_tfrmsprop.doctor.record) through "
      "every known RMSprop semantics and reports, per step, the largest "
      "ULP distance per variable and slot, the first divergence, and "
      "which semantics reproduce the record exactly, or why the closest "
      "one departs."
    ),
  )
  parser.add_argument("record", help="the record file (.npz)")
  parser.add_argument(
    "--json", action="store_true", help="print the diagnosis as JSON"
  )
  parser.add_argument(
    "--steps",
    type=int,
    default=None,
    help="diagnose only the first STEPS steps",
  )
  parser.add_argument(
    "--family",
    action="append",
    choices=replay.FAMILIES,
    help="only these semantics families (repeatable)",
  )
  parser.add_argument(
    "--exhaustive",
    action="store_true",
    help="replay every semantics, even those the record's algebra rules out",
  )
  parser.add_argument(
    "--all-steps",
    action="store_true",
    help="list every step in the per-step table",
  )
  parser.add_argument(
    "--device", default="cpu", help="jax platform to replay on (default: cpu)"
  )
  args = parser.parse_args(argv)
  try:
    diagnosis = report.diagnose(
      args.record,
      families=args.family,
      exhaustive=args.exhaustive,
      steps=args.steps,
      device=args.device,
    )
  except (OSError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if args.json:
    print(report.dumps(diagnosis))
  else:
    print(diagnosis.report(all_steps=args.all_steps))
  return 0 if diagnosis.exact else 1


if __name__ == "__main__":
  sys.exit(main())
