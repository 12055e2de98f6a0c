"""Entry point of the benchmarks: ``python -m benchmarks.run [--small]``.

Runs every suite of :data:`SUITES` in turn, each as ``python -m
benchmarks.<suite> [--small] --out DIR --command ...`` in its own process; a
suite writes its ``<suite>.md`` (tables and targets), ``.json`` (raw records)
and, where it has one, ``.png`` (plot) into ``DIR``. Results of a full run go
to ``benchmarks/results/`` by default.
"""

import argparse
import functools
import sys

from benchmarks import harness

# A suite is a module of this package whose main() takes --small, --out and
# --command (see harness.suite_arguments). Add one by naming it here.
SUITES = (
  "dense",
  "optax_api",
  "sparse_embedding",
  "keras_wrapper_overhead",
  "under_load",
  "clip_compile",
  "xla_layouts",
)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--small",
    action="store_true",
    help="tiny sizes and few repetitions (CI smoke test)",
  )
  parser.add_argument(
    "--out",
    default="benchmarks/results",
    help="directory for the tables, plots and raw results",
  )
  parser.add_argument(
    "--suites",
    default=",".join(SUITES),
    help=f"comma-separated subset of {SUITES}",
  )
  args = parser.parse_args(argv)
  command = " ".join(
    ["python -m benchmarks.run"]
    + (sys.argv[1:] if argv is None else list(argv))
  )
  failed = []
  for suite in args.suites.split(","):
    if suite not in SUITES:
      parser.error(f"unknown suite {suite!r}; choose from {SUITES}")
    suite_args = ["--out", args.out, "--command", command]
    suite_args += ["--small"] if args.small else []
    print(f"=== suite {suite}", flush=True)
    status, took = harness.timed(
      functools.partial(
        harness.run_worker, f"benchmarks.{suite}", suite_args, sys.stdout
      )
    )
    print(f"=== suite {suite}: {took:.0f} s", flush=True)
    if status:
      failed.append(suite)
  if failed:
    print(f"Failed suites: {', '.join(failed)}", file=sys.stderr)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
