"""Timing, statistics and machine description shared by the benchmarks."""

import os
import platform
import statistics
import subprocess
import sys
import time
from importlib import metadata
from typing import Callable


def time_interleaved(steps: dict, *, warmup: int, min_reps: int,
                     max_reps: int, budget_s: float) -> dict:
  """Times ``steps`` round-robin; returns ``{name: [seconds per call]}``.

  Each round calls every step once, starting one further along each round,
  so that a burst of load from elsewhere hits every contender alike. Rounds
  stop after ``max_reps``, or once ``min_reps`` are done and ``budget_s`` has
  passed.

  Args:
    steps: name to a callable that runs one step and returns when it is done.
    warmup: untimed rounds first.
    min_reps: timed rounds at least.
    max_reps: timed rounds at most.
    budget_s: wall time after which no new round starts past ``min_reps``.

  Returns:
    The per-call wall times of each step.
  """
  names = list(steps)
  for _ in range(warmup):
    for name in names:
      steps[name]()
  times = {name: [] for name in names}
  start = time.perf_counter()
  for rep in range(max_reps):
    for i in range(len(names)):
      name = names[(rep + i) % len(names)]
      t0 = time.perf_counter()
      steps[name]()
      times[name].append(time.perf_counter() - t0)
    if rep + 1 >= min_reps and time.perf_counter() - start > budget_s:
      break
  return times


def timed(fn: Callable[[], object]) -> tuple:
  """Returns ``(fn(), seconds it took)``."""
  t0 = time.perf_counter()
  result = fn()
  return result, time.perf_counter() - t0


def summary(samples: list) -> dict:
  """Median, min, max and count of a list of seconds."""
  return dict(median=statistics.median(samples), min=min(samples),
              max=max(samples), reps=len(samples))


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
      packages={p: _version(p) for p in (
          "jax", "jaxlib", "optax", "keras", "tensorflow-cpu", "tf-keras",
          "torch", "numpy")},
      xla_flags=os.environ.get("XLA_FLAGS", ""),
  )


def run_worker(module: str, args: list, env: dict, log) -> int:
  """Runs ``python -m module *args`` with extra ``env``; returns its status.

  Its output goes to ``log`` (a writable text file) as it comes.
  """
  full_env = dict(os.environ, **env)
  proc = subprocess.run(
      [sys.executable, "-m", module, *args], env=full_env, stdout=log,
      stderr=subprocess.STDOUT, check=False)
  return proc.returncode
