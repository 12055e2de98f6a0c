"""The optax API and the fused step against optax, with and without donation.

``python -m benchmarks.optax_api [--small] [--out DIR]`` times, for every
path, dtype (float32, float64, bfloat16) and workload of
:func:`benchmarks.workloads.dense_workloads`, interleaved in one worker
process per dtype:

* ``api``: ``optax_tfrmsprop.rmsprop(...).update`` + ``optax.apply_updates``,
  jitted as the ``optax`` contender is (issue 17, item 1);
* ``optax``: ``optax.rmsprop`` with the matching options;
* ``optax, again``: a second, independent instance of the same optax step.
  Two instances of one program can differ by 10-20% on this machine, from
  where their arrays land in memory (4 KiB or huge pages); its ratio to
  ``optax`` is the noise floor of every ratio in its row;
* ``fused``: ``optax_tfrmsprop.rmsprop_apply`` (item 2);

each with params and state donated (``donate_argnums=(0, 1)``) and without,
and, in float32, the C roofline (``benchmarks/roofline.c``), the fused step
on the same elements laid out as one leaf (``fused, one leaf``: what the
kernel reaches without the tree), and the ``dispatch`` floor: a donated
jitted step that returns its params and state unchanged, i.e. what calling a
jitted function on that many buffers costs.
It writes ``optax_api.json`` and ``optax_api.md`` into ``DIR``.
"""

import json
import pathlib
import statistics
import sys
import warnings

import numpy as np

from benchmarks import contenders as contenders_lib
from benchmarks import harness
from benchmarks import workloads as workloads_lib

DTYPES = ("float32", "float64", "bfloat16")
# Above this many elements, only float32 and only the donated steps are timed:
# float64 arrays of 64M elements (512 MiB each, five per contender and six
# contenders) do not fit beside the other work of a shared machine, and a
# step that is not donated writes fresh buffers (a page fault per 4 KiB),
# seconds per step on the 2-core machine.
MAX_FULL_SIZE = 1 << 25

# Issue 17's targets: the optax API's time over optax's, at 16M and on both
# ResNet-50 trees.
API_TARGETS = {"centered": 0.85, "momentum": 0.80, "momentum+centered": 0.75}
FUSED_ROOF_TARGET = 0.90


def _settings(small: bool, dtype: str) -> dict:
  if small:
    return dict(harness.SMOKE_ROUNDS)
  if dtype != "float32":  # Checks of "never slower": fewer rounds.
    return dict(warmup=1, min_reps=5, max_reps=5, budget_s=0.0)
  return dict(warmup=1, min_reps=5, max_reps=15, budget_s=1.5)


_api = contenders_lib._ours_optax_api
_optax = contenders_lib._optax
_fused = contenders_lib._ours_fused("auto")


def _dispatch(params, grads, path, donate):
  """The jitted call alone: params and slots returned as they came."""
  import jax.numpy as jnp

  slots = 1 + path.centered + (path.momentum > 0)
  state = [
    {k: jnp.zeros_like(v) for k, v in params.items()} for _ in range(slots)
  ]
  return contenders_lib._jax_step(
    lambda p, s, g: (p, s), params, state, grads, donate
  )


def _c_roofline(params, grads, path, donate):
  del donate
  return contenders_lib._c_roofline(params, grads, path)


def _fused_one_leaf(params, grads, path, donate):
  one_leaf = lambda tree: {"all": contenders_lib._flat(tree)}
  return _fused(one_leaf(params), one_leaf(grads), path, donate)


# name: (make, donated, float32 only)
CONTENDERS = {
  "api": (_api, True, False),
  "optax": (_optax, True, False),
  "optax, again": (_optax, True, False),
  "fused": (_fused, True, False),
  "api, not donated": (_api, False, False),
  "optax, not donated": (_optax, False, False),
  "fused, not donated": (_fused, False, False),
  "C roofline": (_c_roofline, True, True),
  "fused, one leaf": (_fused_one_leaf, True, True),
  "dispatch": (_dispatch, True, True),
}


def run_dtype(dtype: str, small: bool) -> list:
  """Times every contender on every workload and path in ``dtype``."""
  import jax

  if dtype == "float64":
    jax.config.update("jax_enable_x64", True)
  warnings.simplefilter("ignore")  # The not-donated steps warn by design.
  settings = _settings(small, dtype)
  records = []
  for workload in workloads_lib.dense_workloads(small):
    big = workload.size > MAX_FULL_SIZE
    if big and dtype != "float32":
      continue
    params, grads = workload.arrays(dtype=dtype)
    itemsize = np.dtype(params[next(iter(params))].dtype).itemsize
    for path in workloads_lib.dense_paths(small):
      steps = {}
      for name, (make, donate, f32_only) in CONTENDERS.items():
        if (f32_only and dtype != "float32") or (big and not donate):
          continue
        step = make(params, grads, path, donate)
        step()  # Compiles.
        steps[name] = step
      times = harness.time_interleaved(steps, **settings)
      for name, samples in times.items():
        records.append(
          dict(
            dtype=dtype,
            workload=workload.name,
            leaves=len(workload.shapes),
            size=workload.size,
            path=path.name,
            contender=name,
            bytes=itemsize * workload.size * (path.reads + path.writes),
            step=harness.summary(samples),
          )
        )
      del steps
      print(
        f"[{dtype}] {workload.name} {path.name}: "
        + ", ".join(
          f"{k} {1e3 * statistics.median(v):.2f} ms" for k, v in times.items()
        ),
        flush=True,
      )
  return records


# --- Report -----------------------------------------------------------------


def _median(records, dtype, workload, path, name):
  for r in records:
    if (r["dtype"], r["workload"], r["path"], r["contender"]) == (
      dtype,
      workload,
      path,
      name,
    ):
      return r["step"]["median"]
  return None


def _fmt(ratio) -> str:
  return f"{ratio:.2f}" if ratio else "–"


def ratio_rows(records: list) -> list:
  """Per dtype, workload and path: the medians and the ratios of the report."""
  keys = []
  for r in records:
    key = (r["dtype"], r["workload"], r["path"])
    if key not in keys:
      keys.append(key)
  rows = []
  for key in keys:
    m = {name: _median(records, *key, name) for name in CONTENDERS}
    roof, floor = m["C roofline"], m["dispatch"]
    over = lambda a, b: a / b if a and b else None
    rows.append(
      dict(
        dtype=key[0],
        workload=key[1],
        path=key[2],
        medians=m,
        api=over(m["api"], m["optax"]),
        api_nd=over(m["api, not donated"], m["optax, not donated"]),
        fused=over(m["fused"], m["optax"]),
        fused_nd=over(m["fused, not donated"], m["optax, not donated"]),
        again=over(m["optax, again"], m["optax"]),
        fused_roof=roof / m["fused"] if roof else None,
        one_leaf_roof=over(roof, m["fused, one leaf"]),
        # The roofline plus what calling a jitted step on the tree costs.
        fused_roof_dispatch=(roof + floor) / m["fused"] if roof else None,
      )
    )
  return rows


def targets(rows: list) -> list:
  """Issue 17's targets, as measured: ``(issue, target, measured, met)``."""
  out = []
  gated = [
    r
    for r in rows
    if r["dtype"] == "float32"
    and (r["workload"] == "leaf 16M" or "ResNet-50" in r["workload"])
  ]
  for path, bound in API_TARGETS.items():
    found = [r for r in gated if r["path"] == path]
    if found:
      out.append(
        (
          "17.1",
          f"{path}: optax API <= {bound:.2f}x optax's time "
          "(float32, 16M and both trees)",
          ", ".join(f"{r['workload']}: {r['api']:.2f}" for r in found),
          max(r["api"] for r in found) <= bound,
        )
      )
  for key, label in (
    ("api", "optax API, donated"),
    ("api_nd", "optax API, not donated"),
    ("fused_nd", "fused, not donated"),
  ):
    measured = [r for r in rows if r[key]]
    if measured:
      worst = max(measured, key=lambda r: r[key])
      out.append(
        (
          "17.1" if key.startswith("api") else "17.2",
          f"{label}: never slower than optax (time / optax's <= 1.0 on "
          "every path, dtype and workload)",
          f"worst {worst[key]:.2f} ({worst['dtype']}, {worst['workload']}, "
          f"{worst['path']}); median "
          f"{statistics.median(r[key] for r in measured):.2f}",
          worst[key] <= 1.0,
        )
      )
  trees = [r for r in rows if "ResNet-50" in r["workload"] and r["fused_roof"]]
  if trees:
    out.append(
      (
        "17.2",
        "fused: >= 90% of the C roofline on the ResNet-50 trees (float32)",
        ", ".join(
          f"{r['workload'][10:]} {r['path']}: {100 * r['fused_roof']:.0f}%"
          for r in trees
        ),
        min(r["fused_roof"] for r in trees) >= FUSED_ROOF_TARGET,
      )
    )
    one_leaf = [r for r in trees if r["one_leaf_roof"]]
    if one_leaf:
      out.append(
        (
          "17.2",
          "the same, the trees' elements laid out as one leaf (what is left "
          "of the target without the call on 161 leaves' buffers)",
          ", ".join(
            f"{r['workload'][10:]} {r['path']}: {100 * r['one_leaf_roof']:.0f}%"
            for r in one_leaf
          ),
          min(r["one_leaf_roof"] for r in one_leaf) >= FUSED_ROOF_TARGET,
        )
      )
  return out


def markdown(records: list, info: dict, command: str) -> str:
  """The report: machine, command, ratio tables, medians and targets."""
  rows = ratio_rows(records)
  lines = harness.report_head(
    "The optax API and the fused step against optax, with and without donation",
    command,
    info,
  ) + [
    "Ratios are medians of interleaved rounds in one process, each "
    "contender's time over optax's with the same donation (below 1: "
    "optax_tfrmsprop is faster). `api`: `rmsprop(...).update` + "
    "`optax.apply_updates`; `fused`: `rmsprop_apply`; both jitted like "
    "optax, params and state donated (`donate_argnums=(0, 1)`) or not. "
    "`% C roof` is the C roofline's time over the fused step's (float32); "
    "`% C roof + dispatch` adds to the roofline the time of a donated "
    "jitted step that returns its inputs (the cost of calling a jitted "
    "function on that many buffers, which the C roofline does not pay). "
    "`% C roof, one leaf`: the same for the fused step on the workload's "
    "elements laid out as one leaf. "
    "`optax again`: a second instance of the optax step over optax's, the "
    "noise floor of the row (two instances of one program differ by where "
    "their arrays land in memory). "
    "Learning rate 1e-3, rho 0.9, epsilon 1e-7, momentum 0.9 on the "
    "momentum paths.",
    "",
    "## Time over optax's",
    "",
  ]
  lines += harness.table(
    [
      "dtype",
      "workload",
      "path",
      "api",
      "api, not donated",
      "fused",
      "fused, not donated",
      "optax again",
      "% C roof (fused)",
      "% C roof + dispatch",
      "% C roof, one leaf",
    ],
    [
      [
        r["dtype"],
        r["workload"],
        r["path"],
        _fmt(r["api"]),
        _fmt(r["api_nd"]),
        _fmt(r["fused"]),
        _fmt(r["fused_nd"]),
        _fmt(r["again"]),
        f"{100 * r['fused_roof']:.0f}%" if r["fused_roof"] else "–",
        f"{100 * r['fused_roof_dispatch']:.0f}%"
        if r["fused_roof_dispatch"]
        else "–",
        f"{100 * r['one_leaf_roof']:.0f}%" if r["one_leaf_roof"] else "–",
      ]
      for r in rows
    ],
  )
  floor = [r["again"] for r in rows if r["again"]]
  if floor:
    lines += [
      "",
      "The noise floor, `optax again` over `optax` over all rows: median "
      f"{statistics.median(floor):.2f}, from {min(floor):.2f} to "
      f"{max(floor):.2f}.",
    ]
  lines += ["", "## Medians, ms", ""]
  names = list(CONTENDERS)
  lines += harness.table(
    ["dtype", "workload", "path"] + names,
    [
      [r["dtype"], r["workload"], r["path"]]
      + [
        f"{1e3 * r['medians'][n]:.2f}" if r["medians"][n] else "–"
        for n in names
      ]
      for r in rows
    ],
  ) + [""]
  lines += harness.targets_table(targets(rows))
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  args = harness.suite_arguments(
    "optax_api", __doc__.splitlines()[0], argv, workers=True
  )
  if args.worker:
    records = run_dtype(args.worker, args.small)
    pathlib.Path(args.json).write_text(json.dumps(records))
    return 0
  run = harness.Run()
  records, failures = harness.run_workers(
    "benchmarks.optax_api", DTYPES, ["--small"] if args.small else []
  )
  report = markdown(records, run.finish(), args.command)
  report += harness.failures_section(failures)
  run.write("optax_api", args.out, args.command, records, report)
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main())
