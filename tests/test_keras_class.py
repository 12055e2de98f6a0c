"""The Keras-style class as a TF 2.0 user meets it, side by side with tf_keras.

Hyperparameters (float32 Variables, assignable between steps), ``Variable``
(arithmetic, constraints, the errors jax gives), ``gradient_aggregator`` and
``gradient_transformers``, slot keys, threads, sparse index errors, and the
compiled gradient of ``minimize``.
"""

import functools
import gc
import itertools
import threading
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optax_tfrmsprop as otr
from optax_tfrmsprop._src.keras import rmsprop as keras_rmsprop
from optax_tfrmsprop.keras import RMSprop
from optax_tfrmsprop.keras import Variable


def _tf():
  from tests import tf_reference

  return tf_reference.tf, tf_reference.tf_keras


def _assert_bits_equal(actual, expected):
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.dtype == expected.dtype and actual.shape == expected.shape
  np.testing.assert_array_equal(otr.ulp_distance(actual, expected), 0)


def _problem(seed, steps, shapes=((3, 4), (4,)), dtype=np.float32):
  rng = np.random.RandomState(seed)
  values = [rng.randn(*s).astype(dtype) for s in shapes]
  grads = [[rng.randn(*s).astype(dtype) for s in shapes] for _ in range(steps)]
  return values, grads


@pytest.fixture
def count_traces(monkeypatch):
  """Counts traces of the compiled step (the core runs only when tracing)."""
  traces = []
  core = keras_rmsprop.transform.rmsprop_apply

  def counting(*args, **kwargs):
    traces.append(1)
    return core(*args, **kwargs)

  monkeypatch.setattr(keras_rmsprop.transform, "rmsprop_apply", counting)
  return traces


# --- Hyperparameters, as TF's. ---


def _assignments(schedule):
  """Between-step changes a TF user makes, by step index."""
  return {
    2: lambda o: setattr(o, "lr", 0.05),
    4: lambda o: o.lr.assign(0.02),
    5: lambda o: setattr(o, "rho", 0.8),
    6: lambda o: o.momentum.assign(0.3),
    7: lambda o: setattr(o, "learning_rate", schedule),
    9: lambda o: setattr(o, "learning_rate", 0.01),
    10: lambda o: setattr(o, "epsilon", 1e-4),
    11: lambda o: setattr(o, "decay", 0.5),  # TF: changes nothing.
  }


def _run_with_assignments(opt, variables, grads, schedule):
  changes = _assignments(schedule)
  for i, step_grads in enumerate(grads):
    if i in changes:
      changes[i](opt)
    opt.apply_gradients(zip(step_grads, variables))


@pytest.mark.parametrize(
  "config",
  [
    dict(momentum=0.9, centered=True, decay=0.01),
    dict(momentum=0.5),
  ],
)
def test_hyperparameter_assignments_between_steps_match_tf(
  config, count_traces
):
  tf, tf_keras = _tf()
  values, grads = _problem(0, 13, shapes=((5, 9), (9,)))  # Only used here.
  # PiecewiseConstantDecay: the same values in TF eager and in graphs.
  tf_vars = [tf.Variable(v) for v in values]
  tf_opt = tf_keras.optimizers.legacy.RMSprop(0.1, **config)
  _run_with_assignments(
    tf_opt,
    tf_vars,
    grads,
    tf_keras.optimizers.schedules.PiecewiseConstantDecay([8], [0.03, 0.015]),
  )
  variables = [Variable(v) for v in values]
  opt = RMSprop(0.1, **config)
  _run_with_assignments(
    opt,
    variables,
    grads,
    otr.schedules.PiecewiseConstantDecay([8], [0.03, 0.015]),
  )
  for ours, theirs in zip(variables, tf_vars):
    _assert_bits_equal(ours.numpy(), theirs.numpy())
  # New values reach the compiled step as arguments: one trace for the
  # numbers, one more for the schedule (compiled into the step); the number
  # that replaces it again finds the first compilation.
  assert len(count_traces) == 2
  assert type(opt.lr) is float and opt.lr == tf_opt.lr == 0.01
  assert float(opt.decay) == float(tf_opt.decay) == 0.5


def test_hyperparameters_are_float32_variables_like_tf():
  tf, tf_keras = _tf()
  del tf
  ours = RMSprop(learning_rate=0.1, rho=0.85, momentum=0.5, decay=0.01)
  theirs = tf_keras.optimizers.legacy.RMSprop(
    learning_rate=0.1, rho=0.85, momentum=0.5, decay=0.01
  )
  for name in ("learning_rate", "lr", "rho", "momentum", "decay"):
    assert name in dir(ours) and name in dir(theirs)
    a, b = getattr(ours, name), getattr(theirs, name)
    assert isinstance(a, Variable) and a.dtype == np.float32
    assert b.dtype.name == "float32"
    assert a.name == f"RMSprop/{'learning_rate' if name == 'lr' else name}:0"
    _assert_bits_equal(a.numpy(), b.numpy())
  assert ours.lr is ours.learning_rate
  assert "epsilon" in dir(ours)
  assert type(ours.epsilon) is float and ours.epsilon == theirs.epsilon
  # Reading them created TF's hyper variables: the config now holds their
  # float32 values (TF's np.float32; JSON-safe Python floats here).
  assert ours.get_config() == {
    k: float(v) if isinstance(v, np.floating) else v
    for k, v in theirs.get_config().items()
  }
  assert ours.weights == [] and theirs.weights == []
  # TF's config holds np.float32 values now; they make Variables too.
  rebuilt = RMSprop(**theirs.get_config())
  assert isinstance(rebuilt.lr, Variable) and isinstance(rebuilt.rho, Variable)
  _assert_bits_equal(rebuilt.rho.numpy(), theirs.rho.numpy())
  # A callable is called; a schedule is returned, as TF's attributes do.
  assert RMSprop(learning_rate=lambda: 0.25).lr == 0.25
  schedule = otr.schedules.ExponentialDecay(0.1, 10, 0.5)
  assert RMSprop(learning_rate=schedule).learning_rate is schedule


def test_float64_variables_see_the_float32_hyperparameters_like_tf(x64):
  del x64
  tf, tf_keras = _tf()
  values, grads = _problem(1, 6, dtype=np.float64)
  tf_vars = [tf.Variable(v) for v in values]
  tf_opt = tf_keras.optimizers.legacy.RMSprop(0.1, momentum=0.5)
  _run_with_assignments(tf_opt, tf_vars, grads[:5], None)
  variables = [Variable(v) for v in values]
  opt = RMSprop(0.1, momentum=0.5)
  _run_with_assignments(opt, variables, grads[:5], None)
  for ours, theirs in zip(variables, tf_vars):
    _assert_bits_equal(ours.numpy(), theirs.numpy())


@pytest.mark.parametrize("hyper", ["learning_rate", "momentum", "rho"])
def test_a_variable_hyperparameter_is_read_at_every_step_like_tf(hyper):
  """Issue 12 item 6: ``lr.assign(0.0)`` stops the parameters, as in TF."""
  tf, tf_keras = _tf()
  values, grads = _problem(2, 6)
  start = {"learning_rate": 0.1, "momentum": 0.5, "rho": 0.9}[hyper]
  later = {"learning_rate": 0.0, "momentum": 0.0, "rho": 0.5}[hyper]
  # Without momentum for the learning rate: then lr = 0 stops the variables
  # (with momentum they coast on the momentum slot, in TF too).
  config = dict(
    learning_rate=0.1, momentum=0.0 if hyper == "learning_rate" else 0.5
  )
  tf_hyper = tf.Variable(start)
  tf_vars = [tf.Variable(v) for v in values]
  tf_opt = tf_keras.optimizers.legacy.RMSprop(**{**config, hyper: tf_hyper})
  hyper_var = Variable(start)
  variables = [Variable(v) for v in values]
  opt = RMSprop(**{**config, hyper: hyper_var})
  assert getattr(opt, hyper) is hyper_var  # Not copied into a new Variable.
  for i, step_grads in enumerate(grads):
    if i == 3:
      tf_hyper.assign(later)
      hyper_var.assign(later)
    tf_opt.apply_gradients(zip(step_grads, tf_vars))
    opt.apply_gradients(zip(step_grads, variables))
    for ours, theirs in zip(variables, tf_vars):
      _assert_bits_equal(ours.numpy(), theirs.numpy())
  if hyper == "learning_rate":
    frozen = [v.numpy() for v in variables]
    opt.apply_gradients(zip(grads[0], variables))
    for before, var in zip(frozen, variables):
      np.testing.assert_array_equal(before, var.numpy())
  # TF assigns into the user's Variable.
  setattr(opt, hyper, 0.25)
  assert float(hyper_var) == 0.25


def test_hyperparameter_values_are_validated_when_set():
  opt = RMSprop()
  with pytest.raises(ValueError, match="rho"):
    opt.rho = 1.5
  with pytest.raises(ValueError, match="clipnorm"):
    opt.clipnorm = -1.0
  with pytest.raises(ValueError, match="epsilon=0 after construction"):
    opt.epsilon = 0.0
  with pytest.raises(ValueError, match="learning_rate"):
    RMSprop(learning_rate=-0.1)
  assert float(opt.rho) == np.float32(0.9) and opt.clipnorm is None


# --- Variable, as a TF 2.0 user writes it. ---


def test_variable_arithmetic_returns_jax_arrays_on_both_sides():
  x = np.arange(6, dtype=np.float32).reshape(2, 3)
  v = Variable(np.ones((3, 2), np.float32), name="w")
  results = {
    "numpy @ v": x @ v,
    "v.T @ numpy.T": v.T @ x.T,
    "jax @ v": jnp.asarray(x) @ v,
    "v + numpy": v + np.ones(2, np.float32),
    "numpy scalar * v": np.float32(2.0) * v,
    "2 - v": 2 - v,
    "v / v": v / v,
    "-v": -v,
    "v ** 2": v**2,
    "np.tanh(v)": np.tanh(v),
    "v[0]": v[0],
    "v.value": v.value,
    "v == 1": v == 1,
  }
  for what, result in results.items():
    assert isinstance(result, jax.Array), what
  np.testing.assert_array_equal(x @ v, x @ np.ones((3, 2), np.float32))
  assert v.T.shape == (2, 3) and v.size == 6
  assert [r.shape for r in v] == [(2,), (2,), (2,)]
  v.assign(np.zeros((3, 2))).assign_add(2.0).assign_sub(0.5)
  np.testing.assert_array_equal(v.numpy(), np.full((3, 2), 1.5, np.float32))
  assert v.assign(np.ones((3, 2)), read_value=False) is None
  with pytest.raises(TypeError, match="unhashable"):
    hash(v)
  assert {v.ref(): 1}[v.ref()] == 1 and v.ref().deref() is v


@pytest.mark.parametrize(
  "call",
  [
    jnp.sum,
    jnp.tanh,
    jax.nn.relu,
    jax.grad(lambda w: jnp.sum(w**2)),
    lambda v: jax.grad(lambda ws: jnp.sum(ws[0]))([v]),
    jax.jit(lambda w: w),
    np.add.reduce,
  ],
  ids=[
    "jnp.sum",
    "jnp.tanh",
    "jax.nn.relu",
    "jax.grad",
    "jax.grad of a list",
    "jax.jit",
    "np.add.reduce",
  ],
)
def test_jax_refuses_a_variable_with_an_error_that_says_value(call):
  v = Variable(np.ones(3, np.float32), name="v")
  with pytest.raises(TypeError, match=r"v\.value"):
    call(v)
  # The pattern the error gives works.
  np.testing.assert_array_equal(
    jax.grad(lambda w: jnp.sum(w**2))(v.value), np.full(3, 2.0, np.float32)
  )


def test_numpy_matmul_inside_minimize_is_differentiated():
  """``numpy_array @ variable`` in a loss: no tracer leaks into NumPy."""
  tf, tf_keras = _tf()
  x = np.random.RandomState(3).randn(5, 3).astype(np.float32)
  w0 = np.random.RandomState(4).randn(3, 2).astype(np.float32)
  w = Variable(w0)
  opt = RMSprop(0.1)
  for _ in range(3):
    opt.minimize(lambda: jnp.sum((x @ w) ** 2), [w])
  tf_w = tf.Variable(w0)
  tf_opt = tf_keras.optimizers.legacy.RMSprop(0.1)
  for _ in range(3):
    tf_opt.minimize(lambda: tf.reduce_sum((x @ tf_w) ** 2), [tf_w])
  # Same optimizer, gradients from two frameworks: equal up to their drift.
  np.testing.assert_allclose(w.numpy(), tf_w.numpy(), rtol=1e-5)


def test_constraints_run_after_each_dense_step_like_tf():
  tf, tf_keras = _tf()
  values, grads = _problem(5, 8)
  constraint = lambda w: jnp.clip(w, -0.5, 0.5)
  tf_vars = [
    tf.Variable(values[0], constraint=lambda w: tf.clip_by_value(w, -0.5, 0.5)),
    tf.Variable(values[1]),
  ]
  tf_opt = tf_keras.optimizers.legacy.RMSprop(0.05, momentum=0.9)
  variables = [Variable(values[0], constraint=constraint), Variable(values[1])]
  opt = RMSprop(0.05, momentum=0.9)
  for step_grads in grads:
    tf_opt.apply_gradients(zip(step_grads, tf_vars))
    opt.apply_gradients(zip(step_grads, variables))
  for ours, theirs in zip(variables, tf_vars):
    _assert_bits_equal(ours.numpy(), theirs.numpy())
  assert np.abs(variables[0].numpy()).max() <= 0.5
  with pytest.raises(ValueError, match="must be a callable"):
    Variable(1.0, constraint=3)


def test_a_sparse_gradient_of_a_constrained_variable_raises_like_tf():
  tf, tf_keras = _tf()
  rows = np.ones((1, 2), np.float32)
  tf_table = tf.Variable(np.ones((4, 2), np.float32), constraint=lambda w: w)
  with pytest.raises(
    RuntimeError, match="Cannot use a constraint function on a sparse variable"
  ):
    tf_keras.optimizers.legacy.RMSprop().apply_gradients(
      [(tf.IndexedSlices(tf.constant(rows), tf.constant([1])), tf_table)]
    )
  table = Variable(np.ones((4, 2), np.float32), constraint=lambda w: w)
  opt = RMSprop()
  with pytest.raises(
    RuntimeError, match="Cannot use a constraint function on a sparse variable"
  ):
    opt.apply_gradients(
      [(otr.IndexedSlices(rows, np.array([1]), (4, 2)), table)]
    )
  assert opt.weights == []


# --- gradient_aggregator and gradient_transformers (TF 2.2+). ---


def test_gradient_aggregator_and_transformers_match_tf():
  tf, tf_keras = _tf()
  values, grads = _problem(6, 5)
  calls = {"tf": 0, "ours": 0}

  def aggregator(who):
    def aggregate(grads_and_vars):
      calls[who] += 1
      return list(grads_and_vars)

    return aggregate

  double = lambda gv: [(2.0 * g, v) for g, v in gv]
  halve_first = lambda gv: [
    (g * 0.5 if i == 0 else g, v) for i, (g, v) in enumerate(gv)
  ]
  tf_vars = [tf.Variable(v) for v in values]
  tf_opt = tf_keras.optimizers.legacy.RMSprop(
    0.01,
    momentum=0.5,
    gradient_aggregator=aggregator("tf"),
    gradient_transformers=[double, halve_first],
  )
  variables = [Variable(v) for v in values]
  opt = RMSprop(
    0.01,
    momentum=0.5,
    gradient_aggregator=aggregator("ours"),
    gradient_transformers=[double, halve_first],
  )
  for step_grads in grads:
    tf_opt.apply_gradients(zip(step_grads, tf_vars))
    opt.apply_gradients(zip(step_grads, variables))
  for ours, theirs in zip(variables, tf_vars):
    _assert_bits_equal(ours.numpy(), theirs.numpy())
  assert calls == {"tf": 5, "ours": 5}
  opt.apply_gradients(
    zip(grads[0], variables), experimental_aggregate_gradients=False
  )
  assert calls["ours"] == 5
  assert opt.get_config() == {
    k: float(v) if isinstance(v, np.floating) else v
    for k, v in tf_opt.get_config().items()
  }
  for clip in ("clipnorm", "clipvalue", "global_clipnorm"):
    message = f"`{clip}` cannot be set when `gradient_transformers` is set"
    with pytest.raises(ValueError, match=message):
      tf_keras.optimizers.legacy.RMSprop(
        gradient_transformers=[double], **{clip: 1.0}
      )
    with pytest.raises(ValueError, match=message):
      RMSprop(gradient_transformers=[double], **{clip: 1.0})
    with pytest.raises(ValueError, match=message):
      setattr(opt, clip, 1.0)


# --- Issue 12, items 5, 7 and 8. ---


def test_a_new_variable_never_inherits_a_dead_ones_slots():
  """Issue 12 item 5: a Variable reusing a dead one's ``id`` starts fresh."""
  tf, tf_keras = _tf()
  ones = np.ones(2, np.float32)
  opt = RMSprop(0.1)
  var = Variable(ones)
  for _ in range(3):
    opt.apply_gradients([(ones, var)])
  dead_id = id(var)
  del var
  gc.collect()
  alive = []  # Keep the misses alive, so that the allocator reaches the id.
  for _ in range(1000):
    new = Variable(ones)
    if id(new) == dead_id:
      break
    alive.append(new)
  with pytest.raises(KeyError):
    opt.get_slot(new, "rms")
  opt.apply_gradients([(ones, new)])
  tf_var = tf.Variable(ones)
  tf_keras.optimizers.legacy.RMSprop(0.1).apply_gradients([(ones, tf_var)])
  _assert_bits_equal(new.numpy(), tf_var.numpy())  # 0.6838, not 0.8295.


def test_threads_serialise_their_steps():
  """Issue 12 item 7: 1 + 2 x 300 steps from two threads are 601 steps."""
  values, grads = _problem(7, 1, shapes=((8, 4), (4,)))
  config = dict(learning_rate=0.01, momentum=0.9, centered=True)
  variables = [Variable(v) for v in values]
  opt = RMSprop(**config)
  opt.apply_gradients(zip(grads[0], variables))
  errors = []

  def steps():
    try:
      for _ in range(300):
        opt.apply_gradients(zip(grads[0], variables))
    except Exception as e:  # noqa: BLE001 (reported by the main thread)
      errors.append(e)

  threads = [threading.Thread(target=steps) for _ in range(2)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors
  assert int(opt.iterations) == 601
  sequential = [Variable(v) for v in values]
  reference = RMSprop(**config)
  for _ in range(601):
    reference.apply_gradients(zip(grads[0], sequential))
  for ours, expected in zip(variables, sequential):
    _assert_bits_equal(ours.numpy(), expected.numpy())
  for ours, expected in zip(opt.get_weights(), reference.get_weights()):
    _assert_bits_equal(ours, expected)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_an_out_of_range_sparse_index_raises_like_tf(momentum):
  """Issue 12 item 8: TF's index error, before anything changes."""
  tf, tf_keras = _tf()
  rows = np.ones((2, 2), np.float32)
  indices = np.array([7, 1], np.int32)
  tf_table = tf.Variable(np.ones((4, 2), np.float32))
  tf_opt = tf_keras.optimizers.legacy.RMSprop(0.1, momentum=momentum)
  with pytest.raises(
    tf.errors.InvalidArgumentError,
    match=r"7 .*(is not in \[0, 4\)|out of range)",
  ):
    tf_opt.apply_gradients(
      [(tf.IndexedSlices(tf.constant(rows), tf.constant(indices)), tf_table)]
    )
  table = Variable(np.ones((4, 2), np.float32))
  other = Variable(np.ones(3, np.float32))
  opt = RMSprop(0.1, momentum=momentum)
  opt.apply_gradients([(np.ones(3, np.float32), other)])
  before, other_before = opt.get_weights(), other.numpy()
  with pytest.raises(ValueError, match=r"indices\[0\] = 7 is not in \[0, 4\)"):
    opt.apply_gradients(
      [
        (np.ones(3, np.float32), other),
        (otr.IndexedSlices(rows, indices, (4, 2)), table),
      ]
    )
  assert int(opt.iterations) == 1 and len(opt.weights) == len(before)
  np.testing.assert_array_equal(table.numpy(), np.ones((4, 2), np.float32))
  _assert_bits_equal(other.numpy(), other_before)
  for a, b in zip(opt.get_weights(), before):
    _assert_bits_equal(a, b)


# --- minimize: the gradient is compiled once per loss and variable set. ---


def _mlp(seed=8, widths=(5, 4, 3)):
  rng = np.random.RandomState(seed)
  values = []
  for fan_in, fan_out in zip(widths[:-1], widths[1:]):
    values += [
      rng.randn(fan_in, fan_out).astype(np.float32) * 0.5,
      rng.randn(fan_out).astype(np.float32) * 0.1,
    ]
  batches = [
    (
      rng.randn(6, widths[0]).astype(np.float32),
      rng.randn(6, widths[-1]).astype(np.float32),
    )
    for _ in range(4)
  ]
  return values, batches


def _forward(weights, x):
  h = jnp.tanh(x @ weights[0] + weights[1])
  return h @ weights[2] + weights[3]


def _reference(values, batches, config):
  """``apply_gradients`` with ``jax.grad`` of the same loss."""
  variables = [Variable(v) for v in values]
  opt = RMSprop(**config)
  grad = jax.jit(jax.grad(lambda w, x, y: jnp.mean((_forward(w, x) - y) ** 2)))
  for x, y in batches:
    opt.apply_gradients(
      zip(grad([v.value for v in variables], x, y), variables)
    )
  return variables


_X_BATCH = _Y_BATCH = None  # Module-level data, set by the test below.


def test_minimize_traces_once_and_sees_new_data_every_step():
  values, batches = _mlp()
  config = dict(learning_rate=0.01, momentum=0.9)
  expected = _reference(values, batches * 3, config)
  runs = {}

  # 1. A new lambda per step closing over the batch (closure cells).
  variables, opt = [Variable(v) for v in values], RMSprop(**config)
  for x, y in batches * 3:
    # The point: the loop's current x and y, read at every call.
    opt.minimize(
      lambda: jnp.mean((_forward(variables, x) - y) ** 2),  # noqa: B023
      variables,
    )
  runs["closure"] = (variables, opt)

  # 2. One loss reading module-level names that change.
  global _X_BATCH, _Y_BATCH
  variables2, opt2 = [Variable(v) for v in values], RMSprop(**config)
  loss = lambda: jnp.mean((_forward(variables2, _X_BATCH) - _Y_BATCH) ** 2)
  for _X_BATCH, _Y_BATCH in batches * 3:
    opt2.minimize(loss, variables2)
  runs["globals"] = (variables2, opt2)

  # 3. Data held in Variables outside var_list (TF's way into tf.function).
  variables3, opt3 = [Variable(v) for v in values], RMSprop(**config)
  x_var = Variable(batches[0][0])
  y_var = Variable(batches[0][1])
  loss3 = lambda: jnp.mean((_forward(variables3, x_var) - y_var) ** 2)
  for x, y in batches * 3:
    x_var.assign(x)
    y_var.assign(y)
    opt3.minimize(loss3, lambda: variables3)
  runs["variables"] = (variables3, opt3)

  for name, (variables, opt) in runs.items():
    assert opt._gradient_cache.traces == 1, name
    assert int(opt.iterations) == 12
    for ours, reference in zip(variables, expected):
      # One compiled program vs another: equal up to XLA's fusion choices.
      np.testing.assert_allclose(
        ours.numpy(), reference.numpy(), rtol=2e-6, atol=1e-7, err_msg=name
      )


def test_minimize_traces_again_only_when_the_loss_or_variables_change():
  values, batches = _mlp()
  variables = [Variable(v) for v in values]
  opt = RMSprop(0.01)
  cache = opt._gradient_cache
  x, y = batches[0]

  def loss(scale):
    return lambda: scale * jnp.mean((_forward(variables, x) - y) ** 2)

  opt.minimize(loss(1.0), variables)
  opt.minimize(loss(1.0), variables)
  assert cache.traces == 1
  opt.minimize(loss(2.0), variables)  # A Python number is part of the key.
  assert cache.traces == 2
  opt.minimize(loss(2.0), variables[:2] + variables[2:])  # Same Variables.
  assert cache.traces == 2
  opt.minimize(loss(2.0), list(reversed(variables)))  # Another order.
  assert cache.traces == 3
  with pytest.warns(UserWarning, match="traced the loss .* 5 times"):
    for scale in (3.0, 4.0):
      opt.minimize(loss(scale), variables)


def test_minimize_gradients_are_none_where_tf_gives_none():
  values, batches = _mlp()
  variables = [Variable(v) for v in values]
  unused = Variable(np.ones(2, np.float32), name="unused")
  counter = Variable(3, name="counter")  # int32: no gradient, as in TF.
  opt = RMSprop(0.01)
  x, y = batches[0]
  loss = lambda: jnp.mean((_forward(variables, x) - y) ** 2) + 0.0 * counter
  with pytest.warns(UserWarning, match=r"\['unused:0', 'counter:0'\]"):
    opt.minimize(loss, variables + [unused, counter])
  with pytest.raises(KeyError):
    opt.get_slot(unused, "rms")
  with pytest.raises(ValueError, match="No gradients provided"):
    opt.minimize(lambda: jnp.sum(variables[0].value), [unused])
  with pytest.raises(ValueError, match="has `None` for gradient"):
    opt.get_gradients(loss, [unused])
  with pytest.raises(ValueError, match="zero-argument callable"):
    opt.minimize(jnp.float32(1.0), variables)
  steps = int(opt.iterations)

  def assigning_loss():
    counter.assign_add(1)  # TF's eager tape would run this at every call.
    return jnp.sum(variables[0].value)

  with pytest.raises(RuntimeError, match="may only read Variables"):
    opt.minimize(assigning_loss, variables[:1])
  assert int(counter) == 3 and int(opt.iterations) == steps


def test_minimize_with_python_control_flow_on_values_differentiates_eagerly():
  var = Variable(np.float32(2.0))
  opt = RMSprop(0.1)

  def loss():
    if var > 0:  # Needs a concrete value: not traceable.
      return var**2
    return -var

  for _ in range(3):
    opt.minimize(loss, [var])
  expected = Variable(np.float32(2.0))
  reference = RMSprop(0.1)
  for _ in range(3):
    reference.apply_gradients([(2.0 * expected.value, expected)])
  _assert_bits_equal(var.numpy(), expected.numpy())


def test_minimize_grad_loss_and_partial_losses():
  values, batches = _mlp()
  x, y = batches[0]

  def loss_of(weights, x, y):
    return jnp.mean((_forward(weights, x) - y) ** 2, axis=0)  # A vector.

  variables = [Variable(v) for v in values]
  opt = RMSprop(0.01)

  for xb, yb in batches:
    opt.minimize(
      functools.partial(loss_of, variables, xb, yb),
      variables,
      grad_loss=np.array([1.0, 2.0, 0.5], np.float32),
    )
  assert opt._gradient_cache.traces == 1
  expected = [Variable(v) for v in values]
  reference = RMSprop(0.01)
  for xb, yb in batches:
    _, vjp = jax.vjp(
      functools.partial(loss_of, x=xb, y=yb), [v.value for v in expected]
    )
    (grads,) = vjp(jnp.array([1.0, 2.0, 0.5], jnp.float32))
    reference.apply_gradients(zip(grads, expected))
  for ours, theirs in zip(variables, expected):
    np.testing.assert_allclose(
      ours.numpy(), theirs.numpy(), rtol=2e-6, atol=1e-7
    )


def test_steps_do_not_ask_the_user_to_donate():
  """The class's own jitted step cannot donate (the user may hold a value).

  The kernel's donation warning names a fix for the user's jit; here there
  is none to apply, so none is given.
  """
  a = Variable(np.ones((64, 64), np.float32))
  opt = RMSprop(0.1, momentum=0.9, centered=True)
  with warnings.catch_warnings():
    warnings.filterwarnings("error", ".*not donated", RuntimeWarning)
    opt.apply_gradients([(np.ones((64, 64), np.float32), a)])
    opt.minimize(lambda: jnp.sum(a.value**2), [a])
  assert int(opt.iterations) == 2


def test_minimize_edge_cases_change_nothing_or_raise_first():
  """As tf_keras: an empty var_list steps nothing (None, iterations 0).

  A Variable listed twice (TF updates it twice) and a grad_loss that does
  not fit the loss raise, before any slot or count changes.
  """
  a = Variable(np.array([1.0, 2.0], np.float32), name="a")
  opt = RMSprop(0.1)
  assert opt.minimize(lambda: jnp.float32(1.0), []) is None
  assert int(opt.iterations) == 0
  with pytest.raises(ValueError, match="appears twice in var_list"):
    opt.minimize(lambda: a[0] * 2, [a, a])
  with pytest.raises(ValueError, match=r"grad_loss has shape \(3,\).*\(2,\)"):
    opt.minimize(lambda: a * a, [a], grad_loss=np.ones(3, np.float32))
  assert int(opt.iterations) == 0
  assert len(opt.weights) == 1  # iterations only: no slot was made.
  np.testing.assert_array_equal(a.numpy(), [1.0, 2.0])
  opt.minimize(lambda: a * a, [a], grad_loss=np.ones(2, np.float32))
  assert int(opt.iterations) == 1


def test_tf_docstring_example_and_steps_through_minimize_never_retrace(
  count_traces,
):
  lr = itertools.cycle([0.1, 0.05, 0.02])
  opt = RMSprop(learning_rate=lambda: next(lr), momentum=0.5)
  var = Variable(np.full((1, 3), 10.0, np.float32))  # Only used here.
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    for _ in range(6):
      opt.minimize(lambda: jnp.sum(var**2) / 2.0, [var])
  assert len(count_traces) == 1 and int(opt.iterations) == 6


def test_float16_variables_with_a_new_epsilon_match_tf():
  """A Python epsilon reaches float16 directly, as TF converts it."""
  tf, tf_keras = _tf()
  values, grads = _problem(9, 6, dtype=np.float16)
  tf_vars = [tf.Variable(v) for v in values]
  tf_opt = tf_keras.optimizers.legacy.RMSprop(0.01, centered=True)
  variables = [Variable(v) for v in values]
  opt = RMSprop(0.01, centered=True)
  for i, step_grads in enumerate(grads):
    if i == 3:
      tf_opt.epsilon = opt.epsilon = 3.3e-5
    tf_opt.apply_gradients(zip(step_grads, tf_vars))
    opt.apply_gradients(zip(step_grads, variables))
  for ours, theirs in zip(variables, tf_vars):
    _assert_bits_equal(ours.numpy(), theirs.numpy())


@pytest.mark.parametrize(
  "rounding, backend", [("tf_xla", "auto"), ("tf_cpu", "xla")]
)
def test_rounding_and_backend_reach_the_core(rounding, backend):
  values, grads = _problem(10, 5)
  config = dict(learning_rate=0.01, momentum=0.9, centered=True)
  variables = [Variable(v) for v in values]
  opt = RMSprop(**config, rounding=rounding, backend=backend)
  transformation = otr.rmsprop(**config, rounding=rounding, backend=backend)
  params = [jnp.asarray(v) for v in values]
  state = transformation.init(params)
  update = jax.jit(transformation.update)
  for step_grads in grads:
    opt.apply_gradients(zip(step_grads, variables))
    updates, state = update([jnp.asarray(g) for g in step_grads], state)
    params = otr.apply_updates(params, updates)
  for ours, theirs in zip(variables, params):
    _assert_bits_equal(ours.numpy(), theirs)
  assert "rounding" not in opt.get_config()
  with pytest.raises(ValueError, match="rounding"):
    RMSprop(rounding="tf_gpu")
  with pytest.raises(TypeError, match="positional"):
    RMSprop(0.1, 0.9, 0.0, 1e-7, False, "name", "tf_xla")


def test_a_deep_copy_is_an_independent_optimizer():
  import copy

  values, grads = _problem(11, 3)
  variables = [Variable(v) for v in values]
  opt = RMSprop(0.01, momentum=0.5)
  opt.apply_gradients(zip(grads[0], variables))
  twin = copy.deepcopy(opt)
  other = copy.deepcopy(variables)
  assert all(a._unique_id != b._unique_id for a, b in zip(variables, other))
  twin.apply_gradients(zip(grads[1], variables))
  assert int(opt.iterations) == 1 and int(twin.iterations) == 2
  opt.apply_gradients(zip(grads[1], variables))
  assert int(opt.iterations) == 2


def test_minimize_with_gradient_transformers_transforms_its_gradients():
  """Transformers run between the gradients and the step, as in TF."""
  values, batches = _mlp()
  x, y = batches[0]
  loss_of = lambda w: jnp.mean((_forward(w, x) - y) ** 2)
  double = lambda gv: [(2.0 * g, v) for g, v in gv]
  variables = [Variable(v) for v in values]
  opt = RMSprop(0.01, gradient_transformers=[double])
  for _ in range(3):
    opt.minimize(lambda: loss_of(variables), variables)
  expected = [Variable(v) for v in values]
  reference = RMSprop(0.01)
  for _ in range(3):
    grads = jax.grad(loss_of)([v.value for v in expected])
    reference.apply_gradients(zip([2.0 * g for g in grads], expected))
  for ours, theirs in zip(variables, expected):
    np.testing.assert_allclose(
      ours.numpy(), theirs.numpy(), rtol=2e-6, atol=1e-7
    )
