"""Per-step cost of the Keras-style class vs the raw jitted step vs Keras.

``python -m benchmarks.keras_wrapper_overhead [--small] [--out DIR]`` times
one optimizer step on two small MLPs (16-32-10 and 784-256-128-10, float32,
4 and 6 variables) with fixed gradients, and writes
``keras_wrapper_overhead.{md,json}`` into ``DIR``. The tiny MLP shows the
fixed per-step overhead, the larger one how it compares with a step's
arithmetic:

* ``raw``: ``jax.jit`` of ``rmsprop_update`` + ``optax.apply_updates``, with
  params and state carried by the caller (the functional floor);
* ``class``: ``optax_tfrmsprop.RMSprop.apply_gradients`` on Variables;
* ``tf_keras eager`` / ``tf_keras tf.function``:
  ``tf_keras.optimizers.legacy.RMSprop``'s own ``apply_gradients``;
* ``keras3 eager``: Keras 3's ``RMSprop.apply_gradients`` on the JAX backend.
"""

import statistics
import sys

import numpy as np

from benchmarks import harness
from benchmarks.contenders import Unavailable

MLPS = {
    "16-32-10": [(16, 32), (32,), (32, 10), (10,)],
    "784-256-128-10": [(784, 256), (256,), (256, 128), (128,), (128, 10),
                       (10,)],
}
CONFIG = dict(learning_rate=0.001, momentum=0.9, centered=True)
RAW, CLASS = "raw", "class"


def _settings(small: bool) -> dict:
  if small:
    return dict(calls_per_rep=10, warmup=1, reps=3, mlps=list(MLPS)[:1])
  return dict(calls_per_rep=100, warmup=1, reps=21, mlps=list(MLPS))


def _jax_steps(values, grads_np) -> dict:
  """The raw jitted step and the class' ``apply_gradients``."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  import optax_tfrmsprop as otr  # pylint: disable=g-import-not-at-top

  grads = [jnp.asarray(g) for g in grads_np]

  @jax.jit
  def raw_step(params, state, grads):
    updates, state = otr.rmsprop_update(
        grads, state, learning_rate=CONFIG["learning_rate"], rho=0.9,
        momentum=CONFIG["momentum"])
    return optax.apply_updates(params, updates), state

  carry = [[jnp.asarray(v) for v in values]]
  carry.append(otr.rmsprop_init(carry[0], centered=CONFIG["centered"],
                                use_momentum=True))

  def raw():
    carry[:] = raw_step(carry[0], carry[1], grads)
    jax.block_until_ready(carry[0])

  variables = [otr.Variable(v) for v in values]
  opt = otr.RMSprop(**CONFIG)
  pairs = list(zip(grads, variables))

  def wrapped():
    opt.apply_gradients(pairs)
    jax.block_until_ready(variables[0].value)

  return {RAW: raw, CLASS: wrapped}


def _tf_keras_steps(values, grads_np) -> dict:
  """tf_keras' legacy ``apply_gradients``, eager and in ``tf.function``."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tf_keras  # pylint: disable=g-import-not-at-top

  tf_grads = [tf.constant(g) for g in grads_np]
  eager_vars = [tf.Variable(v) for v in values]
  eager_opt = tf_keras.optimizers.legacy.RMSprop(**CONFIG)
  function_vars = [tf.Variable(v) for v in values]
  function_opt = tf_keras.optimizers.legacy.RMSprop(**CONFIG)

  @tf.function
  def function_step(grads):
    function_opt.apply_gradients(zip(grads, function_vars))

  return {
      "tf_keras eager": lambda: eager_opt.apply_gradients(
          zip(tf_grads, eager_vars)),
      "tf_keras tf.function": lambda: function_step(tf_grads),
  }


def _keras3_steps(values, grads_np) -> dict:
  """Keras 3's eager ``apply_gradients`` on the JAX backend."""
  import jax  # pylint: disable=g-import-not-at-top
  import keras  # pylint: disable=g-import-not-at-top

  if keras.backend.backend() != "jax":
    raise Unavailable("needs KERAS_BACKEND=jax set before keras is imported")
  variables = [keras.Variable(v) for v in values]
  opt = keras.optimizers.RMSprop(**CONFIG)
  grads = [jax.numpy.asarray(g) for g in grads_np]

  def step():
    opt.apply_gradients(zip(grads, variables))
    jax.block_until_ready(variables[0].value)

  return {"keras3 eager": step}


def measure(small: bool) -> list:
  """Times every contender on each MLP; one record each."""
  settings = _settings(small)
  records = []
  for mlp in settings["mlps"]:
    shapes = MLPS[mlp]
    rng = np.random.RandomState(0)
    values = [rng.randn(*s).astype(np.float32) * 0.1 for s in shapes]
    grads = [rng.randn(*s).astype(np.float32) for s in shapes]
    steps = {}
    for framework, make in (("optax_tfrmsprop", _jax_steps),
                            ("tf_keras", _tf_keras_steps),
                            ("keras3", _keras3_steps)):
      try:
        steps.update(make(values, grads))
      except (ImportError, Unavailable) as e:
        records.append(dict(mlp=mlp, contender=framework, skipped=str(e)))
    times = harness.time_interleaved(
        steps, warmup=settings["warmup"], min_reps=settings["reps"],
        max_reps=settings["reps"], budget_s=0.0,
        calls_per_rep=settings["calls_per_rep"])
    # Round by round, so that a burst of load cancels out of the difference.
    times["class - raw"] = [c - r for c, r in zip(times[CLASS], times[RAW])]
    for name, samples in times.items():
      records.append(dict(mlp=mlp, contender=name,
                          step=harness.summary(samples),
                          calls_per_rep=settings["calls_per_rep"]))
    print(f"MLP {mlp}: " + ", ".join(
        f"{k} {1e6 * statistics.median(v):.1f} us" for k, v in times.items()),
          flush=True)
  return records


def _us(stats: dict) -> str:
  return (f"{1e6 * stats['median']:.1f} ({1e6 * stats['min']:.1f}–"
          f"{1e6 * stats['max']:.1f})")


def markdown(records: list, info: dict, command: str) -> str:
  """The report: machine, command, table and targets."""
  timed = [r for r in records if "step" in r]
  medians = {(r["mlp"], r["contender"]): r["step"]["median"] for r in timed}
  lines = harness.report_head(
      "Per-step overhead of the Keras-style RMSprop class", command, info) + [
          f"`RMSprop({', '.join(f'{k}={v}' for k, v in CONFIG.items())})` on"
          " float32 MLPs with fixed gradients. Times are per step in µs: "
          "median (min–max) over interleaved rounds of "
          f"{timed[0]['calls_per_rep']} steps each; `class - raw` is the "
          "round-by-round difference; `x/class` is x's median over the "
          "class' (> 1: the class is faster).", ""]
  rows = [[r["mlp"], r["contender"], _us(r["step"]), r["step"]["reps"],
           f"{r['step']['median'] / medians[(r['mlp'], CLASS)]:.2f}"
           if r["contender"] != "class - raw" else "–"] for r in timed]
  lines += harness.table(["MLP", "contender", "µs per step", "rounds",
                          "x/class"], rows) + [""]
  lines += harness.skipped_lines(records)
  overhead = medians.get(("16-32-10", "class - raw"))
  if overhead is not None:
    lines += harness.targets_table([(
        6, "the class adds <= 40 µs per step over the raw jitted step "
        "(16-32-10 MLP)", f"{1e6 * overhead:.1f} µs", overhead <= 40e-6)])
  return "\n".join(lines)


def main(argv=None) -> int:
  return harness.run_suite("keras_wrapper_overhead",
                           __doc__.splitlines()[0], measure, markdown, argv)


if __name__ == "__main__":
  sys.exit(main())
