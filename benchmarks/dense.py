"""Dense RMSprop steps, side by side: this package, its peers, the rooflines.

``python -m benchmarks.dense [--small] [--out DIR]`` runs every contender of
:mod:`benchmarks.contenders` on every workload of
:mod:`benchmarks.workloads` and path, one worker process per group, and
writes ``dense.json``, ``dense.md`` and ``dense.png`` into ``DIR``.
"""

import json
import pathlib
import statistics
import sys

from benchmarks import contenders as contenders_lib
from benchmarks import harness
from benchmarks import workloads as workloads_lib
from benchmarks.contenders import C_ROOFLINE
from benchmarks.contenders import OURS
from benchmarks.contenders import OURS_XLA
from benchmarks.contenders import ROOFLINE


def _settings(small: bool) -> dict:
  if small:
    return dict(**harness.SMOKE_ROUNDS, compile_reps=1)
  return dict(warmup=2, min_reps=5, max_reps=30, budget_s=3.0, compile_reps=3)


def _group_contenders(group: str, workload) -> list:
  """The contenders a group times on ``workload``; none if it has no own."""
  chosen = [
    c
    for c in contenders_lib.CONTENDERS
    if c.group == group or c.name in contenders_lib.REFERENCES
  ]
  if workload.headline_only:
    chosen = [c for c in chosen if c.name in contenders_lib.HEADLINE]
  return chosen if any(c.group == group for c in chosen) else []


def run_group(group: str, small: bool) -> list:
  """Times one group's contenders (and the references) everywhere.

  Returns:
    One record (a dict) per workload, path and contender.
  """
  settings = _settings(small)
  records = []
  for workload in workloads_lib.dense_workloads(small):
    chosen = _group_contenders(group, workload)
    if not chosen:
      continue
    params, grads = workload.arrays()
    for path in workloads_lib.dense_paths(small):
      steps, first_calls, timed = {}, {}, []
      for contender in chosen:
        record = dict(
          group=group,
          workload=workload.name,
          path=path.name,
          contender=contender.name,
          size=workload.size,
          bytes=4 * workload.size * (path.reads + path.writes),
        )
        records.append(record)
        # Repeated (fresh functions each time) only for the contenders of
        # the compile-time targets; one first call is timed for the rest.
        reps = (
          settings["compile_reps"]
          if workload.time_first_call
          and contender.name in contenders_lib.COMPILE_TIMED
          else 1
        )
        try:
          for _ in range(reps):
            step = contender.make(params, grads, path)
            _, first = harness.timed(step)
            first_calls.setdefault(contender.name, []).append(first)
        except contenders_lib.Unavailable as e:
          record["skipped"] = str(e)
          print(f"[{group}] {contender.name}: skipped: {e}", flush=True)
          continue
        steps[contender.name] = step
        timed.append((record, contender))
      times = harness.time_rounds(steps, settings)
      for record, contender in timed:
        record["step"] = harness.summary(times[contender.name])
        if workload.time_first_call and contender.compiled:
          record["first_call"] = harness.summary(first_calls[contender.name])
      del steps
      print(
        f"[{group}] {workload.name} {path.name}: "
        + ", ".join(
          f"{k} {1e3 * harness.summary(v)['median']:.2f} ms"
          for k, v in times.items()
        ),
        flush=True,
      )
  return records


# --- Report -----------------------------------------------------------------


def _home_group(name: str) -> str:
  return next(c.group for c in contenders_lib.CONTENDERS if c.name == name)


def ratios(records: list) -> list:
  """Per workload, path and contender: its times and the ratios.

  Every ratio is between medians measured in the same process:
  ``over_ours`` is its time over optax_tfrmsprop's (> 1: ours is faster);
  ``of_roofline`` and ``of_c_roofline`` are a roofline's time over its own
  (1 = at the roofline).
  """
  index = {
    (r["group"], r["workload"], r["path"], r["contender"]): r["step"]["median"]
    for r in records
    if "step" in r
  }
  rows = []
  for r in records:
    if "step" not in r or r["group"] != _home_group(r["contender"]):
      continue
    median = r["step"]["median"]
    ours, roof, c_roof = (
      index.get((r["group"], r["workload"], r["path"], name))
      for name in (OURS, ROOFLINE, C_ROOFLINE)
    )
    rows.append(
      dict(
        workload=r["workload"],
        path=r["path"],
        contender=r["contender"],
        step=r["step"],
        first_call=r.get("first_call"),
        over_ours=ours and median / ours,
        of_roofline=roof and roof / median,
        of_c_roofline=c_roof and c_roof / median,
      )
    )
  return rows


def _row(rows, workload, path, name):
  return next(
    (
      r
      for r in rows
      if (r["workload"], r["path"], r["contender"]) == (workload, path, name)
    ),
    None,
  )


def _names(rows) -> list:
  present = {r["contender"] for r in rows}
  return [c.name for c in contenders_lib.CONTENDERS if c.name in present]


def _paths(rows) -> list:
  present = {r["path"] for r in rows}
  return [p.name for p in workloads_lib.PATHS if p.name in present]


def _percent(fraction) -> str:
  return f"{100 * fraction:.0f}%" if fraction else "–"


def _times(ratio) -> str:
  return f"{ratio:.2f}" if ratio else "–"


def targets(rows: list, workloads: list) -> list:
  """Issues 6 and 9's targets, as measured.

  Returns ``(issue, target, measured, met)`` tuples.
  """
  out = []
  paths = _paths(rows)
  big = [w.name for w in workloads if len(w.shapes) == 1 and w.size >= 1 << 24]
  trees = [w.name for w in workloads if len(w.shapes) > 1]
  hwio = next((w for w in trees if "HWIO" in w), None)
  oihw = next((w for w in trees if "OIHW" in w), None)

  def each(workload_names, path, key, peer=OURS):
    """``[(workload, value)]`` of ``key`` of ``peer``'s rows, where measured."""
    found = [(w, _row(rows, w, path, peer)) for w in workload_names]
    return [(w, r[key]) for w, r in found if r and r[key]]

  def listed(pairs, fmt):
    return ", ".join(f"{w}: {fmt(v)}" for w, v in pairs)

  for path in paths:
    fracs = each(big, path, "of_roofline")
    if fracs:
      out.append(
        (
          6,
          f"{path}: >= 90% of the XLA roofline at >= 16M params",
          listed(fracs, _percent),
          min(f for _, f in fracs) >= 0.9,
        )
      )
  optax = [r for r in rows if r["contender"] == "optax" and r["over_ours"]]
  if optax:
    worst = min(optax, key=lambda r: r["over_ours"])
    out.append(
      (
        6,
        "never slower than optax (optax/ours >= 1.0 everywhere)",
        f"worst {worst['over_ours']:.2f} ({worst['workload']}, "
        f"{worst['path']}); median over all "
        f"{statistics.median(r['over_ours'] for r in optax):.2f}",
        worst["over_ours"] >= 1.0,
      )
    )
  for path in paths:
    ours_h, ours_o = (_row(rows, w, path, OURS) for w in (hwio, oihw))
    optax_o = _row(rows, oihw, path, "optax")
    if ours_h and ours_o:
      layout = ours_o["step"]["median"] / ours_h["step"]["median"]
      out.append(
        (
          6,
          f"{path}: OIHW tree as fast as HWIO (OIHW/HWIO <= 1.05)",
          f"{layout:.2f}",
          layout <= 1.05,
        )
      )
    if optax_o and optax_o["over_ours"]:
      out.append(
        (
          6,
          f"{path}: OIHW tree >= 30% faster than optax (optax/ours >= 1.43)",
          f"{optax_o['over_ours']:.2f}",
          optax_o["over_ours"] >= 1 / 0.7,
        )
      )
  for path in paths:
    speedups = each(big, path, "over_ours", "optax")
    if speedups:
      out.append(
        (
          9,
          f"{path}: >= 1.5x optax at >= 16M params (optax/ours)",
          listed(speedups, _times),
          min(v for _, v in speedups) >= 1.5,
        )
      )
    fracs = each(big, path, "of_c_roofline")
    if fracs:
      out.append(
        (
          9,
          f"{path}: within 10% of the C roofline at >= 16M params"
          " (ours <= 1.10x its time)",
          listed([(w, 1 / f) for w, f in fracs], _times),
          max(1 / f for _, f in fracs) <= 1.10,
        )
      )
  for path in paths:
    over_tf = each((hwio, oihw), path, "over_ours", "tf_keras")
    if over_tf:
      out.append(
        (
          9,
          f"{path}: ResNet-50 trees faster than TF's kernels "
          "(tf_keras/ours > 1)",
          listed(over_tf, _times),
          min(v for _, v in over_tf) > 1.0,
        )
      )
    over_optax = each((hwio, oihw), path, "over_ours", "optax")
    if over_optax:
      out.append(
        (
          9,
          f"{path}: ResNet-50 trees >= 1.4x optax (optax/ours)",
          listed(over_optax, _times),
          min(v for _, v in over_optax) >= 1.4,
        )
      )
  for issue, peer in ((6, "optax"), (9, OURS_XLA)):
    for path in paths:
      ours, other = (_row(rows, hwio, path, n) for n in (OURS, peer))
      if ours and other and ours["first_call"] and other["first_call"]:
        a, b = ours["first_call"]["median"], other["first_call"]["median"]
        out.append(
          (
            issue,
            f"{path}: first call of the {hwio} tree <= {peer}'s",
            f"{a:.2f} s vs {b:.2f} s",
            a <= b,
          )
        )
  return out


def markdown(records: list, info: dict, command: str, small: bool) -> str:
  """The report: machine, command, tables and targets."""
  rows = ratios(records)
  workloads = workloads_lib.dense_workloads(small)
  names = _names(rows)
  peers = [n for n in names if n != OURS and n not in contenders_lib.REFERENCES]
  lines = harness.report_head(
    "Dense RMSprop step: optax_tfrmsprop vs its peers and the rooflines",
    command,
    info,
  ) + [
    "Times are per step in ms: median (min–max) over interleaved "
    "repetitions after warm-up. Every ratio is between medians taken "
    "in the same process: `x/ours` is x's time over optax_tfrmsprop's "
    "(> 1: optax_tfrmsprop is faster); `% XLA roof` and `% C roof` are "
    "a roofline's time over the contender's (100% = at the roofline). "
    "Float32, learning rate 1e-3, rho 0.9, epsilon 1e-7, momentum 0.9 "
    "on the momentum paths.",
    "",
    f"## Summary: `{OURS}` (fused `rmsprop_apply`)",
    "",
  ]
  summary = []
  for workload in workloads:
    for path in _paths(rows):
      ours = _row(rows, workload.name, path, OURS)
      if not ours:
        continue
      cells = [
        workload.name,
        path,
        harness.ms(ours["step"]),
        _percent(ours["of_roofline"]),
        _percent(ours["of_c_roofline"]),
      ]
      for peer in peers:
        row = _row(rows, workload.name, path, peer)
        cells.append(_times(row and row["over_ours"]))
      summary.append(cells)
  lines += harness.table(
    ["workload", "path", "ms", "% XLA roof", "% C roof"]
    + [f"{p}/ours" for p in peers],
    summary,
  ) + [""]
  for workload in workloads:
    lines += [
      f"## {workload.name} ({workload.size / 1e6:.2f}M params, "
      f"{len(workload.shapes)} leaves)",
      "",
    ]
    detail = []
    for path in _paths(rows):
      for name in names:
        row = _row(rows, workload.name, path, name)
        if row:
          detail.append(
            [
              path,
              name,
              harness.ms(row["step"]),
              row["step"]["reps"],
              _times(row["over_ours"]),
              _percent(row["of_roofline"]),
              _percent(row["of_c_roofline"]),
            ]
          )
    lines += harness.table(
      ["path", "contender", "ms", "reps", "x/ours", "% XLA roof", "% C roof"],
      detail,
    ) + [""]
  for workload in (w for w in workloads if w.time_first_call):
    compiled = [
      n
      for n in names
      if any(
        _row(rows, workload.name, p, n)
        and _row(rows, workload.name, p, n)["first_call"]
        for p in _paths(rows)
      )
    ]
    first = []
    for path in _paths(rows):
      cells = [path]
      for name in compiled:
        row = _row(rows, workload.name, path, name)
        fc = row and row["first_call"]
        cells.append(
          f"{fc['median']:.2f} ({fc['min']:.2f}–{fc['max']:.2f})" if fc else "–"
        )
      first.append(cells)
    lines += [
      f"## First call (trace + compile + one step), {workload.name}, seconds",
      "",
    ]
    lines += harness.table(["path"] + compiled, first) + [""]
  lines += harness.skipped_lines(records)
  lines += harness.targets_table(targets(rows, workloads))
  lines += ["## Contenders", ""]
  lines += [
    f"- `{c.name}` ({c.group} process): {c.description}"
    for c in contenders_lib.CONTENDERS
  ]
  return "\n".join(lines) + "\n"


def plot(records: list, small: bool, path: pathlib.Path) -> None:
  """Bar chart of each contender's share of the XLA roofline, per workload."""
  import matplotlib as mpl

  mpl.use("Agg")
  import matplotlib.pyplot as plt

  rows = ratios(records)
  workloads = workloads_lib.dense_workloads(small)
  names = [n for n in _names(rows) if n != ROOFLINE]
  paths = _paths(rows)
  fig, axes = plt.subplots(
    1,
    len(workloads),
    figsize=(4 * len(workloads), 4),
    sharey=True,
    squeeze=False,
  )
  width = 0.8 / max(len(names), 1)
  for ax, workload in zip(axes[0], workloads):
    for i, name in enumerate(names):
      heights = []
      for p in paths:
        row = _row(rows, workload.name, p, name)
        heights.append(
          100 * row["of_roofline"] if row and row["of_roofline"] else 0
        )
      ax.bar(
        [j + i * width for j in range(len(paths))], heights, width, label=name
      )
    ax.axhline(90, color="k", lw=0.8, ls="--")
    ax.set_title(workload.name, fontsize=10)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(paths))])
    ax.set_xticklabels([p.replace("+", "+\n") for p in paths], fontsize=8)
  axes[0][0].set_ylabel("% of the XLA roofline (higher is faster)")
  axes[0][-1].legend(fontsize=7, loc="upper right")
  fig.suptitle(
    "Dense RMSprop step, float32: share of the in-place XLA "
    "roofline (dashed: 90%)",
    fontsize=11,
  )
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
  args = harness.suite_arguments(
    "dense", __doc__.splitlines()[0], argv, workers=True
  )
  if args.worker:
    records = run_group(args.worker, args.small)
    pathlib.Path(args.json).write_text(json.dumps(records))
    return 0
  run = harness.Run()
  records, failures = harness.run_workers(
    "benchmarks.dense", _groups(), ["--small"] if args.small else []
  )
  report = markdown(records, run.finish(), args.command, args.small)
  report += harness.failures_section(failures)
  out = run.write("dense", args.out, args.command, records, report)
  plot(records, args.small, out / "dense.png")
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main())
