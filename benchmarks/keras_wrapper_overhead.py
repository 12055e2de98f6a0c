"""Per-step cost of the Keras-style class vs the raw jitted step vs Keras.

``python -m benchmarks.keras_wrapper_overhead [--small] [--out DIR]`` writes
``keras_wrapper_overhead.{md,json}`` into ``DIR``. Two parts, float32,
``RMSprop(learning_rate=0.001, momentum=0.9, centered=True)``:

1. **Optimizer step** with fixed gradients, on MLPs of 16-32-10 (fixed
   overhead) and 64-64-64-10 (the benchmark MLP of issue 15: the model of
   TF's guide "Writing a training loop from scratch", Dense(64) - Dense(64)
   - Dense(10), on 64 input features, as 8x8 digits have):

   * ``raw``: ``jax.jit`` of ``rmsprop_apply``, params and state carried by
     the caller (the functional floor);
   * ``class``: ``optax_tfrmsprop.keras.RMSprop.apply_gradients``;
   * ``tf_keras eager`` / ``tf_keras tf.function``: the legacy RMSprop's own
     ``apply_gradients``;
   * ``keras3 eager``: Keras 3's ``apply_gradients`` on the JAX backend.

2. **Training step** of the guide's loop (forward, backward, update; batch
   64 of random data, 8 batches in turn) on the 64-64-64-10 MLP and (full
   run) on the guide's own 784-64-64-10 (MNIST's 784 inputs, where the
   matrix products dominate) and a 32-layer 16-wide MLP (64 Variables):

   * ``raw train``: one ``jax.jit`` of ``value_and_grad`` + ``rmsprop_apply``;
   * ``class apply + jit grad``: a jitted ``value_and_grad`` of the loss,
     then ``apply_gradients``;
   * ``class minimize``: ``minimize(lambda: loss, variables)``, the loss
     reading the Variables;
   * ``tf_keras tf.function`` / ``tf_keras eager``: the guide's
     ``GradientTape`` step.

Rounds are interleaved; ``class - raw`` is the median of the round-by-round
differences in a second run of ``raw`` and ``class`` alone (61 rounds), so
that a burst of load cancels out. Each time is reported as
wall time, the process' CPU time and the calling thread's CPU time.
"""

import statistics
import sys
import time

import numpy as np

from benchmarks import harness
from benchmarks.contenders import Unavailable

MLPS = {
  "16-32-10": [(16, 32), (32,), (32, 10), (10,)],
  "64-64-64-10": [(64, 64), (64,), (64, 64), (64,), (64, 10), (10,)],
}
TRAIN_MODELS = {
  "64-64-64-10": [64, 64, 64, 10],
  "784-64-64-10": [784, 64, 64, 10],
  "32x16 (64 Variables)": [16] * 33,
}
BENCHMARK_MLP = "64-64-64-10"
CONFIG = dict(learning_rate=0.001, momentum=0.9, centered=True)
BATCH, BATCHES = 64, 8
RAW, CLASS = "raw", "class"
MINIMIZE, APPLY_GRAD = "class minimize", "class apply + jit grad"
TF_FUNCTION = "tf_keras tf.function"


def _settings(small: bool) -> dict:
  if small:
    return dict(
      calls_per_rep=10,
      warmup=1,
      reps=3,
      pair_reps=5,
      mlps=list(MLPS)[:1],
      train=list(TRAIN_MODELS)[:1],
      train_calls=5,
    )
  return dict(
    calls_per_rep=100,
    warmup=2,
    reps=21,
    pair_reps=61,
    mlps=list(MLPS),
    train=list(TRAIN_MODELS),
    train_calls=20,
  )


# --- Part 1: the optimizer step with fixed gradients. ---


def _jax_steps(values, grads_np) -> dict:
  """The raw jitted step and the class' ``apply_gradients``."""
  import jax
  import jax.numpy as jnp

  import optax_tfrmsprop as otr

  grads = [jnp.asarray(g) for g in grads_np]

  @jax.jit
  def raw_step(params, state, grads):
    return otr.rmsprop_apply(
      params,
      grads,
      state,
      learning_rate=CONFIG["learning_rate"],
      rho=0.9,
      momentum=CONFIG["momentum"],
    )

  carry = [[jnp.asarray(v) for v in values]]
  carry.append(
    otr.rmsprop_init(carry[0], centered=CONFIG["centered"], use_momentum=True)
  )

  def raw():
    carry[:] = raw_step(carry[0], carry[1], grads)
    jax.block_until_ready(carry[0])

  variables = [otr.keras.Variable(v) for v in values]
  opt = otr.keras.RMSprop(**CONFIG)
  pairs = list(zip(grads, variables))

  def wrapped():
    opt.apply_gradients(pairs)
    jax.block_until_ready(variables[0].value)

  return {RAW: raw, CLASS: wrapped}


def _tf_keras_steps(values, grads_np) -> dict:
  """tf_keras' legacy ``apply_gradients``, eager and in ``tf.function``."""
  import tensorflow as tf
  import tf_keras

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
      zip(tf_grads, eager_vars)
    ),
    TF_FUNCTION: lambda: function_step(tf_grads),
  }


def _keras3_steps(values, grads_np) -> dict:
  """Keras 3's eager ``apply_gradients`` on the JAX backend."""
  import jax
  import keras

  if keras.backend.backend() != "jax":
    raise Unavailable("needs KERAS_BACKEND=jax set before keras is imported")
  variables = [keras.Variable(v) for v in values]
  opt = keras.optimizers.RMSprop(**CONFIG)
  grads = [jax.numpy.asarray(g) for g in grads_np]

  def step():
    opt.apply_gradients(zip(grads, variables))
    jax.block_until_ready(variables[0].value)

  return {"keras3 eager": step}


# --- Part 2: the guide's training step. ---


def _init(widths: list, rng) -> list:
  """Glorot-uniform kernels and zero biases, as Keras' Dense layers."""
  values = []
  for fan_in, fan_out in zip(widths[:-1], widths[1:]):
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    values.append(
      rng.uniform(-limit, limit, (fan_in, fan_out)).astype(np.float32)
    )
    values.append(np.zeros(fan_out, np.float32))
  return values


def _jax_train_steps(values, batches) -> dict:
  """The guide's step in JAX: raw, class + jitted grad, class minimize."""
  import jax
  import jax.numpy as jnp
  import optax

  import optax_tfrmsprop as otr

  batches = [(jnp.asarray(x), jnp.asarray(y)) for x, y in batches]

  def forward(weights, x):
    for i in range(0, len(weights) - 2, 2):
      x = jax.nn.relu(x @ weights[i] + weights[i + 1])
    return x @ weights[-2] + weights[-1]

  def loss_fn(weights, x, y):
    logits = forward(weights, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  value_and_grad = jax.jit(jax.value_and_grad(loss_fn))

  @jax.jit
  def raw_train(params, state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    params, state = otr.rmsprop_apply(
      params,
      grads,
      state,
      learning_rate=CONFIG["learning_rate"],
      momentum=CONFIG["momentum"],
    )
    return loss, params, state

  params = [jnp.asarray(v) for v in values]
  carry = [params, otr.rmsprop_init(params, centered=True, use_momentum=True)]
  step = [0]

  def batch():
    step[0] += 1
    return batches[step[0] % len(batches)]

  def raw():
    x, y = batch()
    _, carry[0], carry[1] = raw_train(carry[0], carry[1], x, y)
    jax.block_until_ready(carry[0])

  def make_class():
    return (
      [otr.keras.Variable(v) for v in values],
      otr.keras.RMSprop(**CONFIG),
    )

  apply_vars, apply_opt = make_class()

  def apply_with_grad():
    x, y = batch()
    _, grads = value_and_grad([v.value for v in apply_vars], x, y)
    apply_opt.apply_gradients(zip(grads, apply_vars))
    jax.block_until_ready(apply_vars[0].value)

  min_vars, min_opt = make_class()

  def model(x):
    # The loss reads the Variables themselves, as TF code does.
    for i in range(0, len(min_vars) - 2, 2):
      x = jax.nn.relu(x @ min_vars[i] + min_vars[i + 1])
    return x @ min_vars[-2] + min_vars[-1]

  def minimize():
    x, y = batch()
    min_opt.minimize(
      lambda: optax.softmax_cross_entropy_with_integer_labels(
        model(x), y
      ).mean(),
      min_vars,
    )
    jax.block_until_ready(min_vars[0].value)

  return {"raw train": raw, APPLY_GRAD: apply_with_grad, MINIMIZE: minimize}


def _tf_train_steps(values, batches) -> dict:
  """The guide's ``GradientTape`` step with tf_keras, eager and compiled."""
  import tensorflow as tf
  import tf_keras

  batches = [(tf.constant(x), tf.constant(y)) for x, y in batches]
  loss_fn = tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)
  step = [0]

  def make(compile_step: bool):
    weights = [tf.Variable(v) for v in values]
    opt = tf_keras.optimizers.legacy.RMSprop(**CONFIG)

    def train_step(x, y):
      with tf.GradientTape() as tape:
        h = x
        for i in range(0, len(weights) - 2, 2):
          h = tf.nn.relu(h @ weights[i] + weights[i + 1])
        loss = loss_fn(y, h @ weights[-2] + weights[-1])
      grads = tape.gradient(loss, weights)
      opt.apply_gradients(zip(grads, weights))
      return loss

    train_step = tf.function(train_step) if compile_step else train_step

    def run():
      step[0] += 1
      train_step(*batches[step[0] % len(batches)])

    return run

  return {TF_FUNCTION: make(True), "tf_keras eager": make(False)}


CLOCKS = ("wall", "process CPU", "thread CPU")


def _timed(steps, settings, calls) -> list[dict]:
  """Per call, one sample per round, of each step: the three clocks' times.

  Wall time; the process' CPU time (all its threads: the Python, XLA's
  threads and TF's), which does not count waiting for a core that another
  process holds; and the calling thread's CPU time (the Python and the
  dispatch, not the computation XLA runs on its own threads). On a loaded
  machine the CPU times are the steadier ones.
  """
  times = harness.time_interleaved(
    steps,
    warmup=settings["warmup"],
    min_reps=settings["reps"],
    max_reps=settings["reps"],
    budget_s=0.0,
    calls_per_rep=calls,
    clocks={"process CPU": time.process_time, "thread CPU": time.thread_time},
  )
  return [times[clock] for clock in CLOCKS]


def _collect(records, part, workload, steps, calls, makers, *args):
  for framework, make in makers:
    try:
      steps.update(make(*args))
    except (ImportError, Unavailable) as e:
      records.append(
        dict(part=part, mlp=workload, contender=framework, skipped=str(e))
      )


def measure(small: bool) -> list:
  """Times every contender of both parts; one record each."""
  settings = _settings(small)
  records = []
  for mlp in settings["mlps"]:
    rng = np.random.RandomState(0)
    values = [rng.randn(*s).astype(np.float32) * 0.1 for s in MLPS[mlp]]
    grads = [rng.randn(*s).astype(np.float32) for s in MLPS[mlp]]
    steps = {}
    _collect(
      records,
      "step",
      mlp,
      steps,
      settings["calls_per_rep"],
      (
        ("optax_tfrmsprop", _jax_steps),
        ("tf_keras", _tf_keras_steps),
        ("keras3", _keras3_steps),
      ),
      values,
      grads,
    )
    every = _timed(steps, settings, settings["calls_per_rep"])
    # The overhead from raw and class alone, in many short rounds, each
    # right after the other: a burst of load cancels out of the difference.
    pair = _timed(
      {RAW: steps[RAW], CLASS: steps[CLASS]},
      dict(settings, reps=settings["pair_reps"]),
      settings["calls_per_rep"],
    )
    for clock, times, paired in zip(CLOCKS, every, pair):
      times["class - raw"] = [c - r for c, r in zip(paired[CLASS], paired[RAW])]
      _record(records, "step", mlp, times, settings["calls_per_rep"], clock)
  for model in settings["train"]:
    rng = np.random.RandomState(1)
    widths = TRAIN_MODELS[model]
    values = _init(widths, rng)
    batches = [
      (
        rng.rand(BATCH, widths[0]).astype(np.float32),
        rng.randint(0, widths[-1], BATCH).astype(np.int32),
      )
      for _ in range(BATCHES)
    ]
    steps = {}
    _collect(
      records,
      "train",
      model,
      steps,
      settings["train_calls"],
      (("optax_tfrmsprop", _jax_train_steps), ("tf_keras", _tf_train_steps)),
      values,
      batches,
    )
    for clock, times in zip(
      CLOCKS, _timed(steps, settings, settings["train_calls"])
    ):
      times["minimize / (apply + jit grad)"] = [
        m / a for m, a in zip(times[MINIMIZE], times[APPLY_GRAD])
      ]
      _record(records, "train", model, times, settings["train_calls"], clock)
  return records


def _record(records, part, workload, times, calls, clock) -> None:
  for name, samples in times.items():
    records.append(
      dict(
        part=part,
        mlp=workload,
        contender=name,
        clock=clock,
        step=harness.summary(samples),
        calls_per_rep=calls,
      )
    )
  print(
    f"{part} {workload} ({clock}): "
    + ", ".join(
      f"{k} {statistics.median(v) * (1 if '/' in k else 1e6):.2f}"
      for k, v in times.items()
    ),
    flush=True,
  )


def _us(stats: dict) -> str:
  return (
    f"{1e6 * stats['median']:.1f} ({1e6 * stats['min']:.1f}–"
    f"{1e6 * stats['max']:.1f})"
  )


def _ratio(stats: dict) -> str:
  return f"{stats['median']:.2f} ({stats['min']:.2f}–{stats['max']:.2f})"


def _cell(stats: dict, contender: str) -> str:
  return _ratio(stats) if "/" in contender else _us(stats)


def markdown(records: list, info: dict, command: str) -> str:
  """The report: machine, command, both tables and the targets."""
  timed = [r for r in records if "step" in r]
  by_key = {
    (r["part"], r["mlp"], r["contender"], r["clock"]): r["step"] for r in timed
  }
  median = lambda *key: by_key[key]["median"] if key in by_key else None
  lines = harness.report_head(
    "Per-step cost of the Keras-style RMSprop class", command, info
  )
  lines += [
    f"`RMSprop({', '.join(f'{k}={v}' for k, v in CONFIG.items())})`, "
    "float32. Times are per step in µs, median (min–max) over interleaved "
    "rounds, by three clocks: wall time; the process' CPU time (all its "
    "threads); and the calling thread's CPU time (the Python and the "
    "dispatch, not what XLA computes on its own threads). CPU times do "
    "not count waiting for a core held by another process, so they are "
    "the steadier measures on a loaded machine. `x/class` and "
    "`x/minimize` divide wall-time medians (> 1: x is slower).",
    "",
  ]
  for part, title, base, header in (
    ("step", "Optimizer step (fixed gradients)", CLASS, "x/class"),
    (
      "train",
      "Training step (the guide's loop: forward, backward, update)",
      MINIMIZE,
      "x/minimize",
    ),
  ):
    rows = []
    for r in timed:
      if r["part"] != part or r["clock"] != "wall":
        continue
      name, workload = r["contender"], r["mlp"]
      cpu = [by_key.get((part, workload, name, clock)) for clock in CLOCKS[1:]]
      ratio = "–"
      if "/" not in name and " - " not in name:
        ratio = (
          f"{r['step']['median'] / median(part, workload, base, 'wall'):.2f}"
        )
      rows.append(
        [workload, name, _cell(r["step"], name)]
        + [_cell(c, name) if c else "–" for c in cpu]
        + [r["step"]["reps"], ratio]
      )
    if rows:
      lines += [f"## {title}", ""]
      if part == "train":
        lines += [
          f"Batch {BATCH}, {BATCHES} batches of random data in turn.",
          "",
        ]
      lines += harness.table(
        [
          "MLP" if part == "step" else "model",
          "contender",
          "wall µs",
          "process CPU µs",
          "thread CPU µs",
          "rounds",
          header,
        ],
        rows,
      ) + [""]
  lines += harness.skipped_lines(records)
  targets = []
  for mlp in (BENCHMARK_MLP, "16-32-10"):
    if median("step", mlp, "class - raw", "wall") is None:
      continue
    for clock in CLOCKS:
      overhead = median("step", mlp, "class - raw", clock)
      targets.append(
        (
          15,
          "the class adds <= 40 µs per step over the raw "
          f"jitted step ({mlp} MLP, {clock} time)",
          f"{1e6 * overhead:.1f} µs",
          overhead <= 40e-6,
        )
      )
    break
  for model in TRAIN_MODELS:
    ratio = median("train", model, "minimize / (apply + jit grad)", "wall")
    if ratio is not None:
      targets.append(
        (
          15,
          "`minimize` <= 1.3x `apply_gradients` + jitted "
          f"`value_and_grad` ({model})",
          f"{ratio:.2f}x",
          ratio <= 1.3,
        )
      )
  tf_function = median("train", BENCHMARK_MLP, TF_FUNCTION, "wall")
  minimize = median("train", BENCHMARK_MLP, MINIMIZE, "wall")
  if tf_function is not None and minimize is not None:
    targets.append(
      (
        15,
        f"`minimize` faster than tf_keras in `tf.function` ({BENCHMARK_MLP})",
        f"{1e6 * minimize:.0f} vs {1e6 * tf_function:.0f} µs",
        minimize < tf_function,
      )
    )
  if targets:
    lines += harness.targets_table(targets)
  return "\n".join(lines)


def main(argv=None) -> int:
  return harness.run_suite(
    "keras_wrapper_overhead", __doc__.splitlines()[0], measure, markdown, argv
  )


if __name__ == "__main__":
  sys.exit(main())
