"""Dense RMSprop steps, side by side: this package, its peers, the roofline.

``python -m benchmarks.dense [--small] [--out DIR]`` runs every contender of
:mod:`benchmarks.contenders` on every workload of
:mod:`benchmarks.workloads` and path, one worker process per group, and
writes ``dense.json``, ``dense.md`` and ``dense.png`` into ``DIR``.
"""

import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

from benchmarks import contenders as contenders_lib
from benchmarks import harness
from benchmarks import workloads as workloads_lib
from benchmarks.contenders import OURS
from benchmarks.contenders import ROOFLINE

_GROUP_ENV = {"KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "2"}


def _settings(small: bool) -> dict:
  if small:
    return dict(warmup=1, min_reps=3, max_reps=5, budget_s=0.5,
                compile_reps=1)
  return dict(warmup=2, min_reps=5, max_reps=40, budget_s=4.0,
              compile_reps=3)


def _group_contenders(group: str) -> list:
  return [c for c in contenders_lib.CONTENDERS
          if c.group == group or c.name in contenders_lib.REFERENCES]


def run_group(group: str, small: bool) -> list:
  """Times one group's contenders (and the references) everywhere.

  Returns:
    One record (a dict) per workload, path and contender.
  """
  settings = _settings(small)
  records = []
  for workload in workloads_lib.dense_workloads(small):
    params, grads = workload.arrays()
    for path in workloads_lib.dense_paths(small):
      steps, first_calls = {}, {}
      for contender in _group_contenders(group):
        base = dict(group=group, workload=workload.name, path=path.name,
                    contender=contender.name, size=workload.size,
                    bytes=4 * workload.size * (path.reads + path.writes))
        # Repeated (fresh functions each time) only for the two contenders
        # of the compile-time target; one first call is timed for the rest.
        reps = (settings["compile_reps"] if workload.time_first_call
                and contender.name in (OURS, "optax") else 1)
        try:
          for _ in range(reps):
            step = contender.make(params, grads, path)
            _, first = harness.timed(step)
            first_calls.setdefault(contender.name, []).append(first)
        except contenders_lib.Unavailable as e:
          records.append(dict(base, skipped=str(e)))
          print(f"[{group}] {contender.name}: skipped: {e}", flush=True)
          continue
        steps[contender.name] = step
        records.append(base)
      times = harness.time_interleaved(
          steps, warmup=settings["warmup"], min_reps=settings["min_reps"],
          max_reps=settings["max_reps"], budget_s=settings["budget_s"])
      for record in records:
        if (record["workload"], record["path"]) != (workload.name, path.name):
          continue
        name = record["contender"]
        if name in times:
          record["step"] = harness.summary(times[name])
          if workload.time_first_call:
            record["first_call"] = harness.summary(first_calls[name])
      del steps
      print(f"[{group}] {workload.name} {path.name}: " + ", ".join(
          f"{k} {1e3 * harness.summary(v)['median']:.2f} ms"
          for k, v in times.items()), flush=True)
  return records


# --- Report -----------------------------------------------------------------


def _index(records: list) -> dict:
  """``{(group, workload, path, contender): record}`` of timed records."""
  return {(r["group"], r["workload"], r["path"], r["contender"]): r
          for r in records if "step" in r}


def _home_group(name: str) -> str:
  return next(c.group for c in contenders_lib.CONTENDERS if c.name == name)


def _median(index, group, workload, path, name):
  record = index.get((group, workload, path, name))
  return record["step"]["median"] if record else None


def ratios(records: list) -> list:
  """Per workload, path and contender: median time and the ratios.

  ``vs_ours`` is ours / theirs measured in the same process (< 1: ours is
  faster); ``of_roofline`` is roofline / theirs in the same process.
  """
  index = _index(records)
  rows = []
  for (group, workload, path, name), record in index.items():
    if group != _home_group(name):
      continue
    median = record["step"]["median"]
    ours = _median(index, group, workload, path, OURS)
    roof = _median(index, group, workload, path, ROOFLINE)
    rows.append(dict(
        workload=workload, path=path, contender=name, step=record["step"],
        first_call=record.get("first_call"), bytes=record["bytes"],
        vs_ours=ours / median if ours else None,
        of_roofline=roof / median if roof else None))
  return rows


def _row(rows, workload, path, name):
  return next((r for r in rows if (r["workload"], r["path"], r["contender"])
               == (workload, path, name)), None)


def _ms(summary) -> str:
  return (f"{1e3 * summary['median']:.2f} "
          f"({1e3 * summary['min']:.2f}–{1e3 * summary['max']:.2f})")


def _names(rows) -> list:
  present = {r["contender"] for r in rows}
  return [c.name for c in contenders_lib.CONTENDERS if c.name in present]


def _paths(rows) -> list:
  present = {r["path"] for r in rows}
  return [p.name for p in workloads_lib.PATHS if p.name in present]


def targets(rows: list, workloads: list) -> list:
  """The issue's targets, as measured: ``(target, measured, met)``."""
  out = []
  big = [w.name for w in workloads if len(w.shapes) == 1 and w.size >= 1 << 24]
  paths = _paths(rows)
  for path in paths:
    fracs = [(w, _row(rows, w, path, OURS)["of_roofline"]) for w in big]
    if fracs:
      worst = min(f for _, f in fracs)
      out.append((f"{path}: >= 90% of roofline at >= 16M params",
                  ", ".join(f"{w}: {100 * f:.0f}%" for w, f in fracs),
                  worst >= 0.9))
  optax_ratios = [r for r in rows if r["contender"] == "optax"]
  if optax_ratios:
    worst = max(optax_ratios, key=lambda r: r["vs_ours"])
    overall = statistics.median(r["vs_ours"] for r in optax_ratios)
    out.append(("never slower than optax (ours/optax <= 1.0)",
                f"worst {worst['vs_ours']:.2f} ({worst['workload']}, "
                f"{worst['path']}); median over all {overall:.2f}",
                worst["vs_ours"] <= 1.0))
  trees = [w for w in workloads if len(w.shapes) > 1]
  hwio = next((w.name for w in trees if "HWIO" in w.name), None)
  oihw = next((w.name for w in trees if "OIHW" in w.name), None)
  if hwio and oihw:
    for path in paths:
      ours_h = _row(rows, hwio, path, OURS)
      ours_o = _row(rows, oihw, path, OURS)
      optax_o = _row(rows, oihw, path, "optax")
      if not (ours_h and ours_o and optax_o):
        continue
      layout = ours_o["step"]["median"] / ours_h["step"]["median"]
      out.append((f"{path}: OIHW tree as fast as HWIO (OIHW/HWIO <= 1.05)",
                  f"{layout:.2f}", layout <= 1.05))
      out.append((f"{path}: OIHW tree >= 30% faster than optax "
                  "(ours/optax <= 0.70)", f"{optax_o['vs_ours']:.2f}",
                  optax_o["vs_ours"] <= 0.70))
  if hwio:
    for path in paths:
      ours = _row(rows, hwio, path, OURS)
      peer = _row(rows, hwio, path, "optax")
      if ours and peer and ours["first_call"] and peer["first_call"]:
        a, b = ours["first_call"]["median"], peer["first_call"]["median"]
        out.append((f"{path}: first call of the 161-leaf tree <= optax's",
                    f"{a:.2f} s vs {b:.2f} s", a <= b))
  return out


def markdown(records: list, info: dict, command: str, small: bool) -> str:
  """The report: machine, command, tables and targets."""
  rows = ratios(records)
  workloads = workloads_lib.dense_workloads(small)
  names = _names(rows)
  peers = [n for n in names if n not in (OURS, ROOFLINE)]
  lines = [
      "# Dense RMSprop step: optax_tfrmsprop vs its peers",
      "",
      f"Command: `{command}`",
      "",
      f"Machine: {info['cpu']}, {info['cores']} cores, "
      f"{info['memory_gib']} GiB; {info['platform']}; Python "
      f"{info['python']}; load average at start "
      f"{info['load_average']}, at end {info['load_average_end']}.",
      "",
      "Packages: " + ", ".join(f"{k} {v}" for k, v in
                               info["packages"].items()) + ".",
      "",
      "Times are per step in ms: median (min–max) over interleaved "
      "repetitions after warm-up. `ours/x` is the ratio of medians taken in "
      "the same process (< 1: optax_tfrmsprop is faster); `roof%` is the "
      "roofline's time over the contender's. Float32, learning rate 1e-3, "
      "rho 0.9, epsilon 1e-7, momentum 0.9 on the momentum paths.",
      "",
  ]
  for workload in workloads:
    lines += [f"## {workload.name} ({workload.size / 1e6:.2f}M params, "
              f"{len(workload.shapes)} leaves)", ""]
    header = ["path", "roofline", OURS, "roof%"]
    for peer in peers:
      header += [peer, f"ours/{peer}"]
    lines += ["| " + " | ".join(header) + " |",
              "|" + "---|" * len(header)]
    for path in workloads_lib.dense_paths(small):
      roof = _row(rows, workload.name, path.name, ROOFLINE)
      ours = _row(rows, workload.name, path.name, OURS)
      cells = [path.name, _ms(roof["step"]) if roof else "–",
               _ms(ours["step"]) if ours else "–",
               f"{100 * ours['of_roofline']:.0f}%" if ours and
               ours["of_roofline"] else "–"]
      for peer in peers:
        row = _row(rows, workload.name, path.name, peer)
        cells += ([_ms(row["step"]), f"{row['vs_ours']:.2f}"] if row
                  else ["–", "–"])
      lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
  timed_first = [w for w in workloads if w.time_first_call]
  for workload in timed_first:
    compiled = [n for n in names
                if _row(rows, workload.name, "plain", n)
                and _row(rows, workload.name, "plain", n)["first_call"]
                and n != ROOFLINE]
    lines += [f"## First call (trace + compile + one step), "
              f"{workload.name}, seconds", "",
              "| path | " + " | ".join(compiled) + " |",
              "|---|" + "---|" * len(compiled)]
    for path in workloads_lib.dense_paths(small):
      cells = [path.name]
      for name in compiled:
        row = _row(rows, workload.name, path.name, name)
        fc = row and row["first_call"]
        cells.append(f"{fc['median']:.2f} ({fc['min']:.2f}–{fc['max']:.2f})"
                     if fc else "–")
      lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
  skipped = {(r["contender"], r["skipped"]) for r in records
             if "skipped" in r}
  if skipped:
    lines += ["## Skipped", ""]
    lines += [f"- {name}: {why}" for name, why in sorted(skipped)]
    lines.append("")
  lines += ["## Targets (issue 6), as measured", "",
            "| target | measured | met |", "|---|---|---|"]
  for target, measured, met in targets(rows, workloads):
    lines.append(f"| {target} | {measured} | {'yes' if met else 'NO'} |")
  lines += ["", "## Contenders", ""]
  lines += [f"- `{c.name}` ({c.group}): {c.description}"
            for c in contenders_lib.CONTENDERS]
  return "\n".join(lines) + "\n"


def plot(records: list, small: bool, path: pathlib.Path) -> None:
  """Bar chart of each contender's share of the roofline, per workload."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  rows = ratios(records)
  workloads = workloads_lib.dense_workloads(small)
  names = [n for n in _names(rows) if n != ROOFLINE]
  paths = _paths(rows)
  fig, axes = plt.subplots(1, len(workloads), figsize=(4 * len(workloads), 4),
                           sharey=True, squeeze=False)
  width = 0.8 / max(len(names), 1)
  for ax, workload in zip(axes[0], workloads):
    for i, name in enumerate(names):
      heights = []
      for p in paths:
        row = _row(rows, workload.name, p, name)
        heights.append(100 * row["of_roofline"] if row and
                       row["of_roofline"] else 0)
      ax.bar([j + i * width for j in range(len(paths))], heights, width,
             label=name)
    ax.axhline(90, color="k", lw=0.8, ls="--")
    ax.set_title(workload.name, fontsize=10)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(paths))])
    ax.set_xticklabels([p.replace("+", "+\n") for p in paths], fontsize=8)
  axes[0][0].set_ylabel("% of roofline (higher is faster)")
  axes[0][-1].legend(fontsize=7, loc="upper right")
  fig.suptitle("Dense RMSprop step, float32: share of the memory-bandwidth "
               "roofline", fontsize=11)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _groups() -> list:
  groups = []
  for contender in contenders_lib.CONTENDERS:
    if contender.group not in groups:
      groups.append(contender.group)
  return groups


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--small", action="store_true",
                      help="tiny sizes and few repetitions (CI smoke test)")
  parser.add_argument("--out", default="benchmarks/results",
                      help="directory for dense.{json,md,png}")
  parser.add_argument("--worker", help=argparse.SUPPRESS)
  parser.add_argument("--json", help=argparse.SUPPRESS)
  parser.add_argument("--command", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.worker:
    records = run_group(args.worker, args.small)
    pathlib.Path(args.json).write_text(json.dumps(records))
    return 0

  command = args.command or " ".join(["python -m benchmarks.dense"] +
                                     (argv if argv is not None
                                      else sys.argv[1:]))
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  info = harness.machine_info()
  records, failures = [], []
  start = time.perf_counter()
  with tempfile.TemporaryDirectory() as tmp:
    for group in _groups():
      result = pathlib.Path(tmp, f"{group}.json")
      worker_args = ["--worker", group, "--json", str(result)]
      worker_args += ["--small"] if args.small else []
      print(f"== group {group}", flush=True)
      status = harness.run_worker("benchmarks.dense", worker_args,
                                  _GROUP_ENV, sys.stdout)
      if status or not result.exists():
        failures.append(f"group {group} exited with status {status}")
        continue
      records += json.loads(result.read_text())
  info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
  info["wall_s"] = round(time.perf_counter() - start, 1)
  report = markdown(records, info, command, args.small)
  if failures:
    report += "\n## Failures\n\n" + "\n".join(f"- {f}" for f in failures)
  (out / "dense.json").write_text(json.dumps(
      dict(command=command, machine=info, records=records), indent=1))
  (out / "dense.md").write_text(report)
  plot(records, args.small, out / "dense.png")
  print(report)
  print(f"Wrote {out}/dense.{{json,md,png}} in {info['wall_s']} s.")
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main())
