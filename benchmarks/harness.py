"""Timing, statistics, machine description and reports of the benchmarks."""

import argparse
from collections.abc import Callable
import functools
from importlib import metadata
import json
import os
import pathlib
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time

# Environment of every suite and worker process: Keras 3 on the JAX backend
# (it reads this once, at import), TensorFlow without its start-up chatter.
WORKER_ENV = {"KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "2"}


def time_interleaved(
  steps: dict,
  *,
  warmup: int,
  min_reps: int,
  max_reps: int,
  budget_s: float,
  calls_per_rep: int = 1,
  clocks: dict | None = None,
) -> dict:
  """Times ``steps`` round-robin; returns ``{name: [seconds per call]}``.

  Each round runs every step ``calls_per_rep`` times in a row, in an order
  shuffled afresh each round (seeded), so that a burst of load from
  elsewhere hits every contender alike, and no contender always runs after
  the same one (a step can leave work behind that slows the next: threads
  still spinning, memory being returned). Rounds stop after ``max_reps``, or
  once ``min_reps`` are done and ``budget_s`` has passed.

  Args:
    steps: name to a callable that runs one step and returns when it is done.
    warmup: untimed rounds first.
    min_reps: timed rounds at least.
    max_reps: timed rounds at most.
    budget_s: wall time after which no new round starts past ``min_reps``.
    calls_per_rep: calls timed together in a round (for steps of
      microseconds, where one call is too short to time alone).
    clocks: optional ``{clock name: clock function}`` (e.g.
      ``time.process_time``) to read, besides the wall clock, around each
      step's calls of a round.

  Returns:
    The wall time per call of each step, one sample per round; with
    ``clocks``, ``{clock name: that dict}`` with ``"wall"`` among them.
  """
  names = list(steps)
  clocks = {"wall": time.perf_counter, **(clocks or {})}
  for _ in range(warmup):
    for name in names:
      steps[name]()
  times = {clock: {name: [] for name in names} for clock in clocks}
  start = time.perf_counter()
  order = random.Random(0)
  for rep in range(max_reps):
    for name in order.sample(names, len(names)):
      t0 = [clock() for clock in clocks.values()]
      for _ in range(calls_per_rep):
        steps[name]()
      for clock, read, begin in zip(clocks, clocks.values(), t0):
        times[clock][name].append((read() - begin) / calls_per_rep)
    if rep + 1 >= min_reps and time.perf_counter() - start > budget_s:
      break
  return times if len(clocks) > 1 else times["wall"]


# The round settings of time_interleaved, and those of a --small smoke run.
ROUND_SETTINGS = ("warmup", "min_reps", "max_reps", "budget_s")
SMOKE_ROUNDS = dict(warmup=1, min_reps=3, max_reps=3, budget_s=0.0)


def time_rounds(steps: dict, settings: dict) -> dict:
  """:func:`time_interleaved` with the round settings in ``settings``."""
  return time_interleaved(steps, **{k: settings[k] for k in ROUND_SETTINGS})


def timed(fn: Callable[[], object]) -> tuple:
  """Returns ``(fn(), seconds it took)``."""
  t0 = time.perf_counter()
  result = fn()
  return result, time.perf_counter() - t0


def summary(samples: list) -> dict:
  """Median, min, max and count of a list of seconds."""
  return dict(
    median=statistics.median(samples),
    min=min(samples),
    max=max(samples),
    reps=len(samples),
  )


def _version(package: str) -> str:
  try:
    return metadata.version(package)
  except metadata.PackageNotFoundError:
    return "not installed"


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _memory_gib() -> float:
  try:
    with open("/proc/meminfo") as f:
      return int(f.readline().split()[1]) / 2**20
  except (OSError, ValueError, IndexError):
    return float("nan")


def machine_info() -> dict:
  """The machine and software a result came from."""
  return dict(
    cpu=_cpu_model(),
    cores=os.cpu_count(),
    memory_gib=round(_memory_gib(), 1),
    load_average=[round(x, 2) for x in os.getloadavg()],
    platform=platform.platform(),
    python=platform.python_version(),
    packages={
      p: _version(p)
      for p in (
        "jax",
        "jaxlib",
        "optax",
        "keras",
        "tensorflow-cpu",
        "tf-keras",
        "torch",
        "numpy",
      )
    },
    # Settings that change how the kernels and XLA use the cores, and how
    # memory is paged (glibc.malloc.hugetlb=1: huge pages for large arrays).
    environment={
      k: os.environ[k]
      for k in (
        "XLA_FLAGS",
        "OMP_NUM_THREADS",
        "OMP_WAIT_POLICY",
        "OPTAX_TFRMSPROP_BACKEND",
        "GLIBC_TUNABLES",
      )
      if k in os.environ
    },
  )


def run_worker(module: str, args: list, log) -> int:
  """Runs ``python -m module *args`` with :data:`WORKER_ENV`; returns status.

  Its output goes to ``log`` (a writable text file) as it comes.
  """
  full_env = dict(os.environ, **WORKER_ENV)
  proc = subprocess.run(
    [sys.executable, "-m", module, *args],
    env=full_env,
    stdout=log,
    stderr=subprocess.STDOUT,
    check=False,
  )
  return proc.returncode


# --- Suites -----------------------------------------------------------------


def suite_arguments(
  name: str, description: str, argv=None, *, workers: bool = False
):
  """Parses the options every suite takes: ``--small``, ``--out``, ...

  Args:
    name: the suite's module name in :mod:`benchmarks`.
    description: its one-line description.
    argv: the arguments (``sys.argv[1:]`` when ``None``).
    workers: also parse the internal ``--worker GROUP --json FILE`` of a
      suite that runs its groups in worker processes of its own module.

  Returns:
    The parsed arguments; ``command`` is the command line to print in the
    report (the entry point's when it passed ``--command``).
  """
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument(
    "--small",
    action="store_true",
    help="tiny sizes and few repetitions (CI smoke test)",
  )
  parser.add_argument(
    "--out",
    default="benchmarks/results",
    help=f"directory for {name}.{{md,json,png}}",
  )
  parser.add_argument("--command", help=argparse.SUPPRESS)
  if workers:
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if not args.command:
    args.command = " ".join(
      [f"python -m benchmarks.{name}"]
      + list(sys.argv[1:] if argv is None else argv)
    )
  return args


def ms(stats: dict) -> str:
  """``median (min–max)`` of a :func:`summary`, in milliseconds."""
  return (
    f"{1e3 * stats['median']:.2f} "
    f"({1e3 * stats['min']:.2f}–{1e3 * stats['max']:.2f})"
  )


def table(header: list, rows: list) -> list:
  """The lines of a markdown table."""
  return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
    "| " + " | ".join(str(c) for c in row) + " |" for row in rows
  ]


def report_head(title: str, command: str, info: dict) -> list:
  """The first lines of a report: title, command, machine and packages."""
  return [
    f"# {title}",
    "",
    f"Command: `{command}`",
    "",
    f"Machine: {info['cpu']}, {info['cores']} cores, "
    f"{info['memory_gib']} GiB; {info['platform']}; Python "
    f"{info['python']}; load average at start {info['load_average']}, at "
    f"end {info['load_average_end']}; {info['wall_s']} s.",
    "",
    "Packages: "
    + ", ".join(f"{k} {v}" for k, v in info["packages"].items())
    + "; environment: "
    + (
      ", ".join(f"{k}={v}" for k, v in info["environment"].items())
      or "no XLA, OpenMP or backend settings"
    )
    + ".",
    "",
  ]


def skipped_lines(records: list) -> list:
  """A ``Skipped`` section: each skipped contender once, with the reason."""
  skipped = sorted(
    {(r["contender"], r["skipped"]) for r in records if "skipped" in r}
  )
  if not skipped:
    return []
  return (
    ["## Skipped", ""] + [f"- {name}: {why}" for name, why in skipped] + [""]
  )


def targets_table(targets: list) -> list:
  """Lines of the ``(issue, target, measured, met)`` tuples as a table."""
  return (
    ["## Targets, as measured", ""]
    + table(
      ["issue", "target", "measured", "met"],
      [
        (issue, target, measured, "yes" if met else "NO")
        for issue, target, measured, met in targets
      ],
    )
    + [""]
  )


class Run:
  """One suite run: the machine it ran on, its wall time, then its files."""

  def __init__(self):
    self.info = machine_info()
    self._start = time.perf_counter()

  def finish(self) -> dict:
    """Adds the end load and the wall time to :attr:`info`; returns it."""
    self.info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    self.info["wall_s"] = round(time.perf_counter() - self._start, 1)
    return self.info

  def write(
    self, name: str, out: str, command: str, records: list, report: str
  ) -> pathlib.Path:
    """Writes ``<name>.{md,json}`` into ``out``, prints the report.

    Returns:
      The output directory.
    """
    folder = pathlib.Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(
      json.dumps(
        dict(command=command, machine=self.info, records=records), indent=1
      )
    )
    (folder / f"{name}.md").write_text(report)
    print(report, flush=True)
    return folder


def package_commit() -> str:
  """The commit of the imported package's checkout (+ if it has changes)."""
  import optax_tfrmsprop

  where = os.path.dirname(os.path.dirname(optax_tfrmsprop.__file__))

  def git(*args) -> str:
    return subprocess.run(
      ["git", "-C", where, *args], capture_output=True, text=True, check=True
    ).stdout.strip()

  try:
    head = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "optax_tfrmsprop")
  except (OSError, subprocess.CalledProcessError):
    return "unknown"
  return head + ("+" if dirty else "")


def run_suite(
  name: str,
  description: str,
  measure,
  markdown,
  argv=None,
  *,
  labelled: bool = False,
) -> int:
  """``main()`` of a suite that measures in its own process.

  Args:
    name: the suite's module name in :mod:`benchmarks`.
    description: its one-line description.
    measure: ``measure(small) -> records``.
    markdown: ``markdown(records, info, command) -> report``; with
      ``labelled``, ``markdown(records, info, command, note)``, the note
      naming the package's commit (:func:`package_commit`) and ``--note``.
    argv: the arguments (``sys.argv[1:]`` when ``None``).
    labelled: also take ``--label LABEL`` (the files are then
      ``<name>_<LABEL>.*``, to compare builds) and ``--note TEXT``.

  Returns:
    The exit status.
  """
  pre = argparse.ArgumentParser(add_help=False)
  if labelled:
    pre.add_argument("--label", default="")
    pre.add_argument("--note", default="", help="a line for the report")
  known, rest = pre.parse_known_args(argv)
  args = suite_arguments(name, description, rest)
  run = Run()
  commit = package_commit() if labelled else None
  records = measure(args.small)
  info = run.finish()
  if labelled:
    report = markdown(records, info, args.command, f"{commit}{known.note}")
    name = f"{name}_{known.label}" if known.label else name
  else:
    report = markdown(records, info, args.command)
  run.write(name, args.out, args.command, records, report)
  return 0


def run_workers(module: str, groups, worker_args: list) -> tuple:
  """Runs ``python -m module --worker GROUP --json FILE`` per group.

  Args:
    module: the suite's module (``benchmarks.dense``).
    groups: the worker groups, run one after the other.
    worker_args: further arguments of every worker (``["--small"]``).

  Returns:
    ``(records, failures)``: the workers' records, and a line per worker
    that failed.
  """
  records, failures = [], []
  with tempfile.TemporaryDirectory() as tmp:
    for group in groups:
      result = pathlib.Path(tmp, f"{group}.json")
      args = ["--worker", group, "--json", str(result), *worker_args]
      print(f"== {group}", flush=True)
      status, took = timed(
        functools.partial(run_worker, module, args, sys.stdout)
      )
      print(f"== {group}: {took:.0f} s", flush=True)
      if status or not result.exists():
        failures.append(f"{group} worker exited with status {status}")
        continue
      records += json.loads(result.read_text())
  return records, failures


def failures_section(failures: list) -> str:
  """The report's closing section on failed workers ("" when none)."""
  if not failures:
    return ""
  return "\n## Failures\n\n" + "\n".join(f"- {f}" for f in failures)
