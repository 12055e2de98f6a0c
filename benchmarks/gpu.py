"""The jnp path against optax on an accelerator (issue 17, item 5).

``python -m benchmarks.gpu [--small] [--out DIR]`` times, on jax's default
device (a GPU where there is one), for every dense path and the 16M, 64M and
ResNet-50 (HWIO, OIHW) workloads of :mod:`benchmarks.workloads`, in float32
and bfloat16, interleaved in one process:

* ``optax``: ``optax.rmsprop`` with the matching options;
* ``api``: ``optax_tfrmsprop.rmsprop(...).update`` + ``optax.apply_updates``;
* ``fused``: ``optax_tfrmsprop.rmsprop_apply`` (the jnp path: the CPU kernel
  does not run on accelerators);
* ``roofline``: an in-place pass with exactly the path's traffic
  (``contenders._xla_roofline``), the device's memory-bandwidth floor.

All steps are jitted with params and state donated. It writes ``gpu.json``
and ``gpu.md`` into ``DIR``; the device is named in the report.
"""

import statistics

from benchmarks import contenders as contenders_lib
from benchmarks import harness
from benchmarks import workloads as workloads_lib

CONTENDERS = {
  "optax": contenders_lib._optax,
  "api": contenders_lib._ours_optax_api,
  "fused": contenders_lib._ours_fused("xla"),
}


def _workloads(small: bool) -> list:
  if small:
    return workloads_lib.dense_workloads(small=True)
  return [
    w for w in workloads_lib.dense_workloads(small=False) if w.name != "leaf 1M"
  ]


def measure(small: bool) -> list:
  import jax

  device = jax.devices()[0]
  records = []
  for dtype in ("float32", "bfloat16"):
    for workload in _workloads(small):
      params, grads = workload.arrays(dtype=dtype)
      for path in workloads_lib.dense_paths(small):
        steps = {
          name: make(params, grads, path) for name, make in CONTENDERS.items()
        }
        if dtype == "float32":
          steps["roofline"] = contenders_lib._xla_roofline(params, grads, path)
        times = harness.time_interleaved(
          steps,
          warmup=2,
          min_reps=5 if small else 30,
          max_reps=5 if small else 200,
          budget_s=0.0 if small else 2.0,
          calls_per_rep=1 if small else 10,
        )
        for name, samples in times.items():
          records.append(
            dict(
              device=f"{device.platform}: {device.device_kind}",
              dtype=dtype,
              workload=workload.name,
              size=workload.size,
              path=path.name,
              contender=name,
              **harness.summary(samples),
            )
          )
        del steps
  return records


def markdown(records: list, info: dict, command: str) -> str:
  devices = sorted({r["device"] for r in records})
  lines = harness.report_head(
    "The jnp path against optax on " + ", ".join(devices), command, info
  )
  lines += [
    "Median ms per step (min–max over interleaved rounds of 10 calls), "
    "params and state donated; `x/optax` divides medians (< 1: faster "
    "than optax). `roofline` is an in-place pass with the path's traffic.",
    "",
  ]
  rows = []
  key = lambda r: (r["dtype"], r["workload"], r["path"])
  by_case = {}
  for r in records:
    by_case.setdefault(key(r), {})[r["contender"]] = r
  ratios = {"api": [], "fused": []}
  for (dtype, workload, path), case in by_case.items():
    optax_ms = case["optax"]["median"]
    row = [dtype, workload, path]
    for name in ("optax", "api", "fused", "roofline"):
      row.append(harness.ms(case[name]) if name in case else "–")
    for name in ("api", "fused"):
      ratio = case[name]["median"] / optax_ms
      ratios[name].append(ratio)
      row.append(f"{ratio:.2f}")
    if "roofline" in case:
      row.append(f"{case['roofline']['median'] / case['fused']['median']:.0%}")
    else:
      row.append("–")
    rows.append(row)
  lines += harness.table(
    [
      "dtype",
      "workload",
      "path",
      "optax ms",
      "api ms",
      "fused ms",
      "roofline ms",
      "api/optax",
      "fused/optax",
      "fused % roofline",
    ],
    rows,
  )
  lines += [""]
  for name, values in ratios.items():
    lines.append(
      f"- `{name}`/optax: median {statistics.median(values):.2f}, "
      f"range {min(values):.2f}–{max(values):.2f} over {len(values)} cases."
    )
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  return harness.run_suite(
    "gpu",
    "The jnp path against optax on jax's device.",
    measure,
    markdown,
    argv,
  )


if __name__ == "__main__":
  raise SystemExit(main())
