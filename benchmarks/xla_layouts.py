"""XLA:CPU's elementwise loops on the same elements in different layouts.

``python -m benchmarks.xla_layouts [--small] [--out DIR] [--label LABEL]``
times donated, jitted float32 loops of the kind an optimizer step is made
of, on one leaf laid out as an OIHW convolution kernel ``(O, I, 3, 3)``, as
the HWIO kernel ``(3, 3, I, O)`` and in 1-D, interleaved, and
``optax.apply_updates`` on the ResNet-50 trees in both layouts; it writes
``xla_layouts[_LABEL].{md,json}`` into ``DIR``. It explains the OIHW rows of
``optax_api``: the loop that adds an update to the params belongs to
``optax.apply_updates``, whatever computes the update. Run it again with
``XLA_FLAGS=--xla_cpu_use_fusion_emitters=false`` (and a ``--label``) to see
how much of the gap is XLA's choice of loop emitter (the report records the
flags).
"""

import sys

import numpy as np

from benchmarks import harness
from benchmarks import workloads as workloads_lib

NAME = "xla_layouts"
LR, EPS = 1e-3, 1e-7

# Each loop: (params, a, b) -> new params, with params donated.
LOOPS = {
  "p + a": lambda p, a, b: p + a,
  "p + lr * a": lambda p, a, b: p + LR * a,
  "p - lr * a / (sqrt(b) + eps)": lambda p, a, b: p - LR * a / (b**0.5 + EPS),
}


def _settings(small: bool) -> dict:
  if small:
    return dict(width=32, trees=False, **harness.SMOKE_ROUNDS)
  return dict(
    width=512, trees=True, warmup=2, min_reps=10, max_reps=40, budget_s=3.0
  )


def _layouts(width: int) -> dict:
  return {
    "OIHW (O, I, 3, 3)": (width, width, 3, 3),
    "HWIO (3, 3, I, O)": (3, 3, width, width),
    "1-D": (width * width * 9,),
  }


def _step(fn, params, *operands):
  """A donated jitted ``params = fn(params, *operands)``, as a callable."""
  import jax

  jitted = jax.jit(fn, donate_argnums=0)
  carry = [jax.device_put(params)]
  operands = [jax.device_put(x) for x in operands]

  def step():
    carry[0] = jitted(carry[0], *operands)
    jax.block_until_ready(carry[0])

  return step


def measure(small: bool) -> list:
  """Times every loop in every layout, then the trees; one record each."""
  import optax

  settings = _settings(small)
  rng = np.random.default_rng(0)
  records = []
  for loop, fn in LOOPS.items():
    steps = {}
    for layout, shape in _layouts(settings["width"]).items():
      p, a = (rng.standard_normal(shape, dtype=np.float32) for _ in range(2))
      b = np.abs(rng.standard_normal(shape, dtype=np.float32))
      steps[layout] = _step(fn, p, a, b)
    times = harness.time_rounds(steps, settings)
    for layout, shape in _layouts(settings["width"]).items():
      records.append(
        dict(
          what=loop,
          layout=layout,
          elements=int(np.prod(shape)),
          step=harness.summary(times[layout]),
        )
      )
  if settings["trees"]:
    steps, sizes = {}, {}
    for layout in ("OIHW", "HWIO"):
      tree = workloads_lib.Workload(
        layout, workloads_lib.resnet50_shapes(layout)
      )
      steps[layout] = _step(optax.apply_updates, *tree.arrays())
      sizes[layout] = tree.size
    times = harness.time_rounds(steps, settings)
    for layout in steps:
      records.append(
        dict(
          what="optax.apply_updates, ResNet-50 tree",
          layout=layout,
          elements=sizes[layout],
          step=harness.summary(times[layout]),
        )
      )
  return records


def markdown(records: list, info: dict, command: str, commit: str) -> str:
  lines = harness.report_head(
    "XLA:CPU elementwise loops by layout", command, info
  )
  lines += [
    f"Package commit: `{commit}`.",
    "",
    "Donated jitted float32 steps `params = loop(params, a, b)`, the "
    "layouts of one loop interleaved; ms: median (min–max). `x HWIO` is "
    "the time over the HWIO layout's in the same loop.",
    "",
  ]
  hwio = {
    r["what"]: r["step"]["median"]
    for r in records
    if r["layout"].startswith("HWIO")
  }
  lines += harness.table(
    ["loop", "layout", "elements", "ms", "x HWIO"],
    [
      (
        r["what"],
        r["layout"],
        r["elements"],
        harness.ms(r["step"]),
        f"{r['step']['median'] / hwio[r['what']]:.2f}",
      )
      for r in records
    ],
  )
  slowest = max(
    (r for r in records if r["layout"].startswith("OIHW")),
    key=lambda r: r["step"]["median"] / hwio[r["what"]],
  )
  lines += [
    "",
    f"Widest gap: `{slowest['what']}`, OIHW at "
    f"{slowest['step']['median'] / hwio[slowest['what']]:.2f}x "
    "the HWIO time. No target: this suite explains the OIHW rows of "
    "`optax_api`.",
    "",
  ]
  return "\n".join(lines)


def main(argv=None) -> int:
  return harness.run_suite(
    NAME, __doc__.splitlines()[0], measure, markdown, argv, labelled=True
  )


if __name__ == "__main__":
  sys.exit(main())
