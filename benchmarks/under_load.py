"""The fused step with other processes busy on the same cores.

``python -m benchmarks.under_load [--small] [--out DIR] [--label LABEL]``
times ``rmsprop_apply`` through the C++ kernel (``backend="ffi"``) and
through XLA (``backend="xla"``), interleaved in one process, on 256K, 1M and
16M float32 leaves and on the ResNet-50 HWIO tree, first with no competing
process of its own, then with one and with two processes spinning
(``while True: pass``, not pinned, at the default priority: what an input
pipeline or a second job does to a training step), and writes
``under_load[_LABEL].{md,json}`` into ``DIR``.

A contender's slowdown is its median step time under load over its own
median with no busy process of this suite, measured in the same run; the
target (issue 17.3) is that the kernel slows down no more than XLA's path.
The machine's own load (other users) is recorded with every measurement.
Run it on two builds with different ``--label``s to compare kernels; the
report names the commit of the package it imported.
"""

import contextlib
import os
import statistics
import subprocess
import sys
import time

from benchmarks import contenders as contenders_lib
from benchmarks import harness
from benchmarks import workloads as workloads_lib

NAME = "under_load"
KERNEL, XLA = "kernel", "xla"
BUSY = (0, 1, 2)


def _settings(small: bool) -> dict:
  if small:
    return dict(
      workloads=[workloads_lib.Workload("leaf 256K", {"w": (1 << 18,)})],
      paths=workloads_lib.PATHS[:1],
      **harness.SMOKE_ROUNDS,
      settle_s=0.1,
      passes=1,
    )
  return dict(
    workloads=[
      workloads_lib.Workload("leaf 256K", {"w": (1 << 18,)}),
      workloads_lib.Workload("leaf 1M", {"w": (1 << 20,)}),
      workloads_lib.Workload("leaf 16M", {"w": (1 << 24,)}),
      workloads_lib.Workload(
        "ResNet-50 HWIO", workloads_lib.resnet50_shapes("HWIO")
      ),
    ],
    paths=(workloads_lib.PATHS[0], workloads_lib.PATHS[-1]),
    warmup=3,
    min_reps=10,
    max_reps=200,
    budget_s=2.0,
    settle_s=0.5,
    passes=4,
  )


@contextlib.contextmanager
def busy_processes(count: int, settle_s: float):
  """Runs ``count`` Python processes that spin until the block ends."""
  procs = [
    subprocess.Popen([sys.executable, "-c", "while True: pass"])
    for _ in range(count)
  ]
  try:
    time.sleep(settle_s if count else 0.0)
    yield
  finally:
    for proc in procs:
      proc.kill()
    for proc in procs:
      proc.wait()


def measure(small: bool) -> list:
  """Times both contenders at every load; one record each."""
  settings = _settings(small)
  makers = {
    KERNEL: contenders_lib._ours_fused("ffi"),
    XLA: contenders_lib._ours_fused("xla"),
  }
  records = []
  for workload in settings["workloads"]:
    params, grads = workload.arrays()
    for path in settings["paths"]:
      steps = {name: make(params, grads, path) for name, make in makers.items()}
      samples = {(busy, name): [] for busy in BUSY for name in makers}
      loads = {busy: [] for busy in BUSY}
      # Passes in alternating order (0, 1, 2, then 2, 1, 0, ...), so that a
      # drift in the machine's own load hits every busy count alike.
      for rep in range(settings["passes"]):
        for busy in BUSY if rep % 2 == 0 else BUSY[::-1]:
          with busy_processes(busy, settings["settle_s"]):
            loads[busy].append(os.getloadavg()[0])
            times = harness.time_rounds(steps, settings)
          for name in makers:
            samples[(busy, name)] += times[name]
      for busy in BUSY:
        for name in makers:
          records.append(
            dict(
              workload=workload.name,
              path=path.name,
              busy=busy,
              contender=name,
              load_average=round(statistics.mean(loads[busy]), 2),
              step=harness.summary(samples[(busy, name)]),
            )
          )
        print(
          f"{workload.name} {path.name} busy={busy}: "
          + ", ".join(
            f"{name} {1e3 * statistics.median(samples[(busy, name)]):.3f} ms"
            for name in makers
          ),
          flush=True,
        )
      del steps
  return records


def slowdowns(records: list) -> list:
  """Per workload, path, busy count and contender: median and slowdown."""
  base = {
    (r["workload"], r["path"], r["contender"]): r["step"]["median"]
    for r in records
    if r["busy"] == 0
  }
  return [
    dict(
      r,
      slowdown=r["step"]["median"]
      / base[(r["workload"], r["path"], r["contender"])],
    )
    for r in records
  ]


def targets(rows: list) -> list:
  """Issue 17.3: the kernel slows no more than XLA, at every busy count."""
  index = {
    (r["workload"], r["path"], r["busy"], r["contender"]): r["slowdown"]
    for r in rows
  }
  out = []
  for (workload, path, busy, name), kernel in index.items():
    if name != KERNEL or busy == 0:
      continue
    xla = index[(workload, path, busy, XLA)]
    out.append(
      (
        "17.3",
        f"{workload}, {path}, {busy} busy: kernel slowdown <= XLA's",
        f"{kernel:.2f}x vs {xla:.2f}x",
        kernel <= xla,
      )
    )
  return out


def markdown(records: list, info: dict, command: str, commit: str) -> str:
  rows = slowdowns(records)
  lines = harness.report_head(
    "The fused step with busy processes on the same cores", command, info
  )
  lines += [
    f"Package commit: `{commit}`.",
    "",
    "`rmsprop_apply` (jit, donated) through the kernel (`backend=\"ffi\"`) "
    "and through XLA (`backend=\"xla\"`), interleaved; `busy` processes of "
    "this suite spin on the cores meanwhile. Times in ms: median (min–max); "
    "`slowdown` is the median over the same contender's with 0 busy. Each "
    "busy count is timed in several passes, in alternating order, and the "
    "rounds of all passes pooled; `load` is the mean 1-minute load average "
    "when its passes started (it includes other users of the machine).",
    "",
  ]
  lines += harness.table(
    ["workload", "path", "busy", "load", "contender", "ms", "slowdown"],
    [
      (
        r["workload"],
        r["path"],
        r["busy"],
        r["load_average"],
        r["contender"],
        harness.ms(r["step"]),
        f"{r['slowdown']:.2f}x",
      )
      for r in rows
    ],
  )
  lines += [""] + harness.targets_table(targets(rows))
  return "\n".join(lines)


def main(argv=None) -> int:
  return harness.run_suite(
    NAME, __doc__.splitlines()[0], measure, markdown, argv, labelled=True
  )


if __name__ == "__main__":
  sys.exit(main())
