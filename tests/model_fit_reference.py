"""Runs ``Model.fit`` with tf_keras' legacy RMSprop on chosen gradients.

``Model.fit`` runs the optimizer in a ``tf.function`` graph, which grappler
rewrites: this is the reference for the schedules' graph evaluation. The
model's loss is ``sum_i reduce_sum(w_i * x_i)``, whose gradient with respect
to ``w_i`` is exactly the input slice ``x_i``; each batch holds one example,
so the data are the gradients, one optimizer step per batch.
"""

import numpy as np

from tests.tf_reference import tf
from tests.tf_reference import tf_keras


class _Dot(tf_keras.layers.Layer):
  """``sum_i reduce_sum(w_i * x[:, slice_i])``: its gradients are the inputs."""

  def __init__(self, initial_values, **kwargs):
    super().__init__(**kwargs)
    self._initial_values = initial_values
    self.ws = []

  def build(self, input_shape):
    for i, value in enumerate(self._initial_values):
      self.ws.append(
        self.add_weight(
          f"w{i}",
          shape=value.shape,
          dtype=self.dtype,
          initializer=tf_keras.initializers.Constant(value),
        )
      )

  def call(self, x):
    total, start = 0, 0
    for w in self.ws:
      size = w.shape[0]
      total += tf.reduce_sum(w * x[:, start : start + size], -1, keepdims=True)
      start += size
    return total


def fit(
  learning_rate,
  initial_values,
  gradients,
  *,
  steps_per_execution=1,
  **optimizer_config,
):
  """Trains with ``Model.fit`` a model whose gradients are ``gradients``.

  Args:
    learning_rate: a float or a ``tf_keras.optimizers.schedules`` schedule.
    initial_values: the variables' initial values: 1-D numpy arrays of one
      float dtype, which is the model's dtype.
    gradients: per variable, an array ``[steps, size]`` of its gradients.
    steps_per_execution: ``Model.compile``'s argument (1, the default: one
      graph call per step; more: the steps run in a loop inside the graph).
    **optimizer_config: other arguments of
      ``tf_keras.optimizers.legacy.RMSprop``.

  Returns:
    ``(values, slots, config)``: the final variable values, a dict from slot
    name (``rms``, ``momentum``, ``mg``) to the per-variable slot values, and
    the optimizer's ``get_config()``.
  """
  dtype = initial_values[0].dtype.name
  tf_keras.backend.clear_session()
  size = sum(v.shape[0] for v in initial_values)
  layer = _Dot(initial_values, dtype=dtype)
  model = tf_keras.Sequential([tf_keras.Input((size,), dtype=dtype), layer])
  optimizer = tf_keras.optimizers.legacy.RMSprop(
    learning_rate=learning_rate, **optimizer_config
  )
  model.compile(
    optimizer=optimizer,
    loss=lambda y_true, y_pred: y_pred,
    steps_per_execution=steps_per_execution,
  )
  x = np.concatenate(gradients, axis=1)
  # A dataset keeps float64 data float64 (Keras converts numpy arrays to
  # floatx, float32).
  data = tf.data.Dataset.from_tensor_slices(
    (x, np.zeros((len(x), 1), x.dtype))
  ).batch(1)
  model.fit(data, epochs=1, shuffle=False, verbose=0)
  steps = int(optimizer.iterations.numpy())
  if steps != len(x):
    raise AssertionError(f"Model.fit ran {steps} steps, expected {len(x)}.")
  slots = {
    name: [optimizer.get_slot(w, name).numpy() for w in layer.ws]
    for name in optimizer.get_slot_names()
  }
  return [w.numpy() for w in layer.ws], slots, optimizer.get_config()


def problem(steps, dtype, sizes=(5, 3), seed=0):
  """Initial values and per-variable gradients at mixed scales.

  Args:
    steps: the number of steps.
    dtype: the float dtype.
    sizes: the variables' sizes.
    seed: the random seed.

  Returns:
    ``(initial_values, gradients)`` for :func:`fit`.
  """
  rng = np.random.default_rng(seed)
  initial_values = [rng.standard_normal(n).astype(dtype) for n in sizes]
  scales = rng.choice([1e-3, 1.0, 30.0], size=(steps, 1))
  gradients = [
    (scales * rng.standard_normal((steps, n))).astype(dtype) for n in sizes
  ]
  return initial_values, gradients


_F64 = np.float64

# (id, schedule class, schedule config, optimizer config, model dtype).
# Every schedule argument is covered; the periods are chosen so that the
# schedules change behaviour within 3,000 steps (restarts, the end of a
# decay, a cycle, the end of a warmup).
CASES = [
  (
    "exp",
    "ExponentialDecay",
    dict(initial_learning_rate=0.1, decay_steps=7, decay_rate=0.93),
    dict(momentum=0.5, decay=0.01),
    "float32",
  ),
  (
    "poly",
    "PolynomialDecay",
    dict(
      initial_learning_rate=0.1,
      decay_steps=2000,
      end_learning_rate=0.001,
      power=0.7,
    ),
    dict(centered=True),
    "float32",
  ),
  (
    "poly-cycle",
    "PolynomialDecay",
    dict(
      initial_learning_rate=0.1,
      decay_steps=370,
      end_learning_rate=0.001,
      power=2.3,
      cycle=True,
    ),
    dict(momentum=0.9, centered=True),
    "float32",
  ),
  (
    "poly-cube-end0",
    "PolynomialDecay",
    dict(
      initial_learning_rate=0.1,
      decay_steps=1000,
      end_learning_rate=0.0,
      power=3.0,
    ),
    dict(momentum=0.9),
    "float32",
  ),
  (
    "inverse-time",
    "InverseTimeDecay",
    dict(initial_learning_rate=0.1, decay_steps=3, decay_rate=0.37),
    dict(decay=0.01),
    "float32",
  ),
  (
    "inverse-time-staircase",
    "InverseTimeDecay",
    dict(
      initial_learning_rate=0.1, decay_steps=30, decay_rate=0.37, staircase=True
    ),
    dict(momentum=0.5),
    "float32",
  ),
  (
    "cosine",
    "CosineDecay",
    dict(initial_learning_rate=0.1, decay_steps=2500, alpha=0.13),
    dict(momentum=0.9),
    "float32",
  ),
  (
    "cosine-warmup",
    "CosineDecay",
    dict(
      initial_learning_rate=0.01,
      decay_steps=2000,
      alpha=0.13,
      warmup_target=0.1,
      warmup_steps=230,
    ),
    dict(decay=0.01),
    "float32",
  ),
  (
    "restarts",
    "CosineDecayRestarts",
    dict(
      initial_learning_rate=0.1,
      first_decay_steps=130,
      t_mul=1.7,
      m_mul=0.9,
      alpha=0.05,
    ),
    dict(momentum=0.9, centered=True),
    "float32",
  ),
  (
    "restarts-defaults",
    "CosineDecayRestarts",
    dict(initial_learning_rate=0.1, first_decay_steps=130),
    dict(decay=0.01, momentum=0.5),
    "float32",
  ),
  (
    "restarts-equal",
    "CosineDecayRestarts",
    dict(
      initial_learning_rate=0.1,
      first_decay_steps=130,
      t_mul=1.0,
      m_mul=0.9,
      alpha=0.05,
    ),
    dict(),
    "float32",
  ),
  # float64: an initial_learning_rate of float64 makes the schedule compute
  # in float64 (a Python number keeps it in float32).
  (
    "exp-staircase-f64",
    "ExponentialDecay",
    dict(
      initial_learning_rate=_F64(0.1),
      decay_steps=70,
      decay_rate=0.93,
      staircase=True,
    ),
    dict(decay=0.01),
    "float64",
  ),
  (
    "inverse-time-f64",
    "InverseTimeDecay",
    dict(initial_learning_rate=_F64(0.1), decay_steps=3, decay_rate=0.37),
    dict(decay=0.01),
    "float64",
  ),
  (
    "restarts-defaults-f64",
    "CosineDecayRestarts",
    dict(initial_learning_rate=_F64(0.1), first_decay_steps=130),
    dict(decay=0.01, momentum=0.9, centered=True),
    "float64",
  ),
  # float64 variables, float32 schedule (a Python initial_learning_rate).
  (
    "restarts-f32-schedule-f64-vars",
    "CosineDecayRestarts",
    dict(
      initial_learning_rate=0.1,
      first_decay_steps=130,
      t_mul=1.7,
      m_mul=0.9,
      alpha=0.05,
    ),
    dict(decay=0.01),
    "float64",
  ),
]


# More cases, measured by scripts/measure_schedule_ulps.py; their arguments
# are covered by CASES and by the tf.function tests.
MORE_CASES = [
  (
    "exp-staircase",
    "ExponentialDecay",
    dict(
      initial_learning_rate=0.1, decay_steps=70, decay_rate=0.93, staircase=True
    ),
    dict(),
    "float32",
  ),
  (
    "exp-f64",
    "ExponentialDecay",
    dict(initial_learning_rate=_F64(0.1), decay_steps=7, decay_rate=0.93),
    dict(momentum=0.5, decay=0.01),
    "float64",
  ),
  (
    "piecewise",
    "PiecewiseConstantDecay",
    dict(boundaries=[10, 500, 2000], values=[0.1, 0.05, 0.01, 0.003]),
    dict(decay=0.001),
    "float32",
  ),
  (
    "poly-cube-f64",
    "PolynomialDecay",
    dict(initial_learning_rate=_F64(0.1), decay_steps=1000, power=3.0),
    dict(momentum=0.9, decay=0.01),
    "float64",
  ),
  (
    "cosine-f64",
    "CosineDecay",
    dict(initial_learning_rate=_F64(0.1), decay_steps=2500, alpha=0.13),
    dict(momentum=0.9),
    "float64",
  ),
  (
    "poly-sqrt",
    "PolynomialDecay",
    dict(initial_learning_rate=0.1, decay_steps=1300, power=0.5),
    dict(decay=0.003),
    "float32",
  ),
  (
    "cosine-alpha0",
    "CosineDecay",
    dict(initial_learning_rate=0.1, decay_steps=2500),
    dict(),
    "float32",
  ),
  (
    "piecewise-f64",
    "PiecewiseConstantDecay",
    dict(
      boundaries=[10, 500, 2000],
      values=[_F64(0.1), _F64(0.05), _F64(0.01), _F64(0.003)],
    ),
    dict(),
    "float64",
  ),
  (
    "poly-f64",
    "PolynomialDecay",
    dict(
      initial_learning_rate=_F64(0.1),
      decay_steps=2000,
      end_learning_rate=0.001,
      power=0.7,
    ),
    dict(centered=True),
    "float64",
  ),
  (
    "cosine-warmup-f64",
    "CosineDecay",
    dict(
      initial_learning_rate=_F64(0.01),
      decay_steps=2000,
      alpha=0.13,
      warmup_target=0.1,
      warmup_steps=230,
    ),
    dict(),
    "float64",
  ),
  (
    "restarts-f64",
    "CosineDecayRestarts",
    dict(
      initial_learning_rate=_F64(0.1),
      first_decay_steps=130,
      t_mul=1.7,
      m_mul=0.9,
      alpha=0.05,
    ),
    dict(momentum=0.9, centered=True),
    "float64",
  ),
]


def run_entry_points(
  name,
  config,
  initial_values,
  gradients,
  tf_config,
  optimizer_config,
  **evaluation,
):
  """Runs the package's three entry points over the same gradients.

  Args:
    name: the schedule class name.
    config: the schedule config.
    initial_values: as for :func:`fit`.
    gradients: as for :func:`fit`.
    tf_config: the TF optimizer's ``get_config()`` (for ``from_config``).
    optimizer_config: the optimizer's other constructor arguments.
    **evaluation: ``evaluation=`` for the schedules, if given.

  Returns:
    A dict from entry point (``rmsprop``, ``from_config``, ``RMSprop``) to
    ``(values, slots)`` as :func:`fit` returns them.
  """
  import jax
  import jax.numpy as jnp
  import optax

  import optax_tfrmsprop as otr
  from optax_tfrmsprop.keras import schedules

  def port():
    return getattr(schedules, name)(**config, **evaluation)

  # Per-step gradients as jax arrays, converted once for all entry points.
  per_step = list(zip(*(jax.device_put(list(g)) for g in gradients)))
  results = {}

  opt = otr.rmsprop(learning_rate=port(), **optimizer_config)

  @jax.jit
  def step(params, state, grads):
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  params = [jnp.asarray(v) for v in initial_values]
  state = opt.init(params)
  for grads in per_step:
    params, state = step(params, state, list(grads))
  slots = {"rms": state.ms, "momentum": state.mom, "mg": state.mg}
  results["rmsprop"] = (
    [np.asarray(p) for p in params],
    {k: [np.asarray(x) for x in v] for k, v in slots.items() if v is not None},
  )

  for entry, make in (
    ("from_config", lambda: otr.RMSprop.from_config(tf_config, **evaluation)),
    ("RMSprop", lambda: otr.RMSprop(learning_rate=port(), **optimizer_config)),
  ):
    opt = make()
    variables = [otr.Variable(v) for v in initial_values]
    for grads in per_step:
      opt.apply_gradients(list(zip(grads, variables)))
    results[entry] = (
      [v.numpy() for v in variables],
      {
        slot: [opt.get_slot(v, slot).numpy() for v in variables]
        for slot in opt.get_slot_names()
      },
    )
  return results


def max_ulps(ours, reference):
  """The largest ULP distance per variable and per slot.

  Args:
    ours: ``(values, slots)``.
    reference: ``(values, slots)`` of TF.

  Returns:
    A dict from ``"vars"`` and each slot name to the largest distance; a slot
    missing on one side is reported as -1.
  """
  import optax_tfrmsprop as otr

  def worst(a_list, b_list):
    return max(
      int(otr.ulp_distance(np.asarray(a), np.asarray(b)).max())
      for a, b in zip(a_list, b_list)
    )

  out = {"vars": worst(ours[0], reference[0])}
  for name in sorted(set(ours[1]) | set(reference[1])):
    if name in ours[1] and name in reference[1]:
      out[name] = worst(ours[1][name], reference[1][name])
    else:
      out[name] = -1
  return out


def graph_schedule_values(schedule, steps, dtype):
  """A schedule's values in a ``tf.function``, the step read from a variable.

  This is how the optimizer calls it under ``Model.fit``: the step is
  ``tf.cast(iterations, dtype)`` of an int64 variable, so grappler folds and
  rewrites everything but the step.

  Args:
    schedule: a ``tf_keras.optimizers.schedules`` schedule.
    steps: the steps, in order.
    dtype: the dtype the step is cast to (the variables' dtype).

  Returns:
    A numpy array of the values, cast to ``dtype``.
  """
  iterations = tf.Variable(0, dtype=tf.int64)
  dtype = tf.as_dtype(dtype)

  @tf.function
  def value():
    return tf.cast(schedule(tf.cast(iterations, dtype)), dtype)

  out = []
  for step in steps:
    iterations.assign(step)
    out.append(value().numpy())
  return np.array(out)
