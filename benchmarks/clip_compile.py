"""Program size, compile time and step time of norm clipping in TF's order.

``python -m benchmarks.clip_compile [--small] [--out DIR] [--label LABEL]``
jits three clippings of one float32 leaf of 1M, 16M and 64M elements and
writes ``clip_compile[_LABEL].{md,json}`` into ``DIR``:

* ``clipnorm tf_cpu``: ``clip_by_norm`` with ``rounding="tf_cpu"``, whose
  sum of squares follows Eigen's order (``numerics.eigen_sum``);
* ``global_clipnorm tf_cpu``: ``clip_gradients(global_clipnorm=...)``, the
  same sum of halved squares (``tf.nn.l2_loss``) and the global norm;
* ``clipnorm tf_xla``: ``clip_by_norm`` with ``jnp.sum`` (XLA's own order),
  the reference for what a reduction costs.

For each it records the StableHLO text size of the lowered program, the
trace-and-lower and the compile times (fresh functions, median of up to
three) and the step time (median of interleaved rounds). Run it on two
commits with different ``--label``s to compare implementations; the report
names the commit of the package it imported.
"""

import functools
import statistics
import sys

import numpy as np

from benchmarks import harness

NAME = "clip_compile"
CASES = ("clipnorm tf_cpu", "global_clipnorm tf_cpu", "clipnorm tf_xla")


def _settings(small: bool) -> dict:
  if small:
    return dict(
      sizes=(1 << 16, 1 << 18),
      compile_reps=1,
      **harness.SMOKE_ROUNDS,
    )
  return dict(
    sizes=(1 << 20, 1 << 24, 1 << 26),
    compile_reps=3,
    warmup=2,
    min_reps=5,
    max_reps=30,
    budget_s=5.0,
  )


def _clip_fn(case: str):
  """A fresh function (so a fresh jit cache) computing ``case``."""
  from optax_tfrmsprop._src import clipping

  kind, name = case.split()
  rounding = "tf_cpu" if name == "tf_cpu" else "tf_xla"

  def clip(g):
    if kind == "clipnorm":
      return clipping.clip_by_norm(g, 1.0, rounding)
    return clipping.clip_gradients(
      [g],
      clipvalue=None,
      clipnorm=None,
      global_clipnorm=1.0,
      rounding=rounding,
    )[0]

  return clip


def _call(compiled, g) -> None:
  import jax

  jax.block_until_ready(compiled(g))


def measure(small: bool) -> list:
  """Compiles and times every case at every size; one record each."""
  import jax

  settings = _settings(small)
  records = []
  rng = np.random.default_rng(0)
  for size in settings["sizes"]:
    g = jax.device_put(rng.standard_normal(size, dtype=np.float32))
    steps = {}
    for case in CASES:
      lower_s, compile_s = [], []
      for _ in range(settings["compile_reps"]):
        jitted = jax.jit(_clip_fn(case))
        lowered, took = harness.timed(functools.partial(jitted.lower, g))
        lower_s.append(took)
        compiled, took = harness.timed(lowered.compile)
        compile_s.append(took)
      text_bytes = len(lowered.as_text())
      del lowered
      steps[case] = functools.partial(_call, compiled, g)
      records.append(
        dict(
          size=size,
          case=case,
          hlo_bytes=text_bytes,
          lower_s=statistics.median(lower_s),
          compile_s=statistics.median(compile_s),
        )
      )
      print(
        f"{size}: {case}: StableHLO {text_bytes} bytes, lower "
        f"{records[-1]['lower_s']:.3f} s, compile "
        f"{records[-1]['compile_s']:.3f} s",
        flush=True,
      )
    times = harness.time_rounds(steps, settings)
    for record in records[-len(CASES) :]:
      record["step"] = harness.summary(times[record["case"]])
  return records


def _size_label(size: int) -> str:
  return f"{size >> 20}M" if size >= 1 << 20 else f"{size >> 10}K"


def _bytes(n: int) -> str:
  if n >= 1 << 20:
    return f"{n / 2**20:.1f} MiB"
  return f"{n / 2**10:.1f} KiB"


def markdown(records: list, info: dict, command: str, commit: str) -> str:
  lines = harness.report_head(
    "Norm clipping in TF's summation order: program size and compile time",
    command,
    info,
  )
  lines += [
    f"Package commit: `{commit}`.",
    "",
    "One float32 leaf; `StableHLO` is the text size of the lowered "
    "program, `lower` the trace-and-lower time and `compile` XLA's compile "
    "time (median of fresh functions), `step` the jitted call, ms: median "
    "(min–max) over interleaved rounds.",
    "",
  ]
  lines += harness.table(
    ["leaf", "case", "StableHLO", "lower s", "compile s", "step ms"],
    [
      (
        _size_label(r["size"]),
        r["case"],
        _bytes(r["hlo_bytes"]),
        f"{r['lower_s']:.3f}",
        f"{r['compile_s']:.3f}",
        harness.ms(r["step"]),
      )
      for r in records
    ],
  )
  return "\n".join(lines + [""] + harness.targets_table(targets(records)))


def targets(records: list) -> list:
  """Issue 17.4: program size and compile time flat from 1M to 64M."""
  out = []
  for case in CASES[:2]:
    rows = sorted(
      (r for r in records if r["case"] == case), key=lambda r: r["size"]
    )
    if len(rows) < 2:
      continue
    small, large = rows[0], rows[-1]
    span = f"{_size_label(small['size'])} to {_size_label(large['size'])}"
    out.append(
      (
        "17.4",
        f"{case}: StableHLO at most 1.1x from {span}",
        f"{large['hlo_bytes'] / small['hlo_bytes']:.2f}x",
        large["hlo_bytes"] <= 1.1 * small["hlo_bytes"],
      )
    )
    out.append(
      (
        "17.4",
        f"{case}: compile at most 1.5x from {span}",
        f"{large['compile_s'] / small['compile_s']:.2f}x",
        large["compile_s"] <= 1.5 * small["compile_s"],
      )
    )
  return out


def main(argv=None) -> int:
  return harness.run_suite(
    NAME, __doc__.splitlines()[0], measure, markdown, argv, labelled=True
  )


if __name__ == "__main__":
  sys.exit(main())
