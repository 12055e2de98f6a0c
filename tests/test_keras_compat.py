"""The Keras-style RMSprop class against real tf_keras legacy RMSprop."""

import itertools
import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optax_tfrmsprop as otr
from optax_tfrmsprop._src.keras import rmsprop as keras_compat
from tests.tf_reference import run_tf
from tests.tf_reference import tf
from tests.tf_reference import tf_keras

SHAPES = [(3, 4), (4,), (2, 2, 3)]


def _problem(seed, steps, dtype=np.float32, shapes=SHAPES):
  rng = np.random.RandomState(seed)
  values = [rng.randn(*s).astype(dtype) for s in shapes]
  grads = [
    [
      (rng.randn(*s) * rng.choice([1e-3, 1.0, 30.0])).astype(dtype)
      for s in shapes
    ]
    for _ in range(steps)
  ]
  return values, grads


def _run_ours(values, grad_steps, **config):
  variables = [otr.Variable(v) for v in values]
  opt = otr.RMSprop(**config)
  for grads in grad_steps:
    opt.apply_gradients(zip(grads, variables))
  return opt, variables


def _assert_bits_equal(actual, expected):
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.dtype == expected.dtype
  np.testing.assert_array_equal(otr.ulp_distance(actual, expected), 0)


def _tf_optimizer_weights(opt):
  return [np.asarray(w) for w in opt.get_weights()]


CONFIGS = [
  dict(learning_rate=0.01),
  dict(learning_rate=0.01, centered=True),
  dict(learning_rate=0.01, momentum=0.9),
  dict(learning_rate=0.01, momentum=0.5, centered=True, rho=0.8),
  dict(learning_rate=0.02, momentum=0.3, decay=0.01),
  dict(learning_rate=0.02, clipvalue=0.5, decay=0.05),
  dict(learning_rate=0.02, clipnorm=1.0, momentum=0.9),
  dict(learning_rate=0.02, global_clipnorm=2.0, centered=True),
]


@pytest.mark.parametrize("config", CONFIGS)
def test_matches_tf_bit_for_bit_f32(config):
  values, grads = _problem(0, 30)
  tf_vars, tf_slots, tf_iter = run_tf(values, grads, **config)
  opt, variables = _run_ours(values, grads, **config)
  assert int(opt.iterations) == tf_iter == 30
  for ours, theirs in zip(variables, tf_vars):
    _assert_bits_equal(ours.numpy(), theirs)
  assert opt.get_slot_names() == list(tf_slots)
  for slot, tf_values in tf_slots.items():
    for var, theirs in zip(variables, tf_values):
      _assert_bits_equal(opt.get_slot(var, slot).numpy(), theirs)


@pytest.mark.parametrize("config", [CONFIGS[0], CONFIGS[2]])
def test_sparse_gradients_match_tf_bit_for_bit(config):
  """IndexedSlices with duplicate rows take TF's sparse paths (P5/P7)."""
  rng = np.random.RandomState(3)
  table = rng.randn(10, 4).astype(np.float32)
  dense = rng.randn(3).astype(np.float32)
  steps = []
  for _ in range(15):
    rows = rng.randint(0, 10, size=6).astype(np.int32)
    steps.append(
      [
        (rng.randn(6, 4).astype(np.float32), rows, (10, 4)),
        rng.randn(3).astype(np.float32),
      ]
    )
  tf_vars, _, _ = run_tf([table, dense], steps, **config)
  variables = [otr.Variable(table), otr.Variable(dense)]
  opt = otr.RMSprop(**config)
  for (values, rows, shape), g in steps:
    opt.apply_gradients(
      [
        (otr.IndexedSlices(values, rows, shape), variables[0]),
        (g, variables[1]),
      ]
    )
  for ours, theirs in zip(variables, tf_vars):
    _assert_bits_equal(ours.numpy(), theirs)


@pytest.mark.parametrize("config", [CONFIGS[0], CONFIGS[3]])
def test_matches_tf_bit_for_bit_f64(x64, config):
  del x64
  values, grads = _problem(1, 20, np.float64)
  tf_vars, tf_slots, _ = run_tf(values, grads, **config)
  opt, variables = _run_ours(values, grads, **config)
  for ours, theirs in zip(variables, tf_vars):
    _assert_bits_equal(ours.numpy(), theirs)
  for slot, tf_values in tf_slots.items():
    for var, theirs in zip(variables, tf_values):
      _assert_bits_equal(opt.get_slot(var, slot).numpy(), theirs)


def test_docstring_example_of_tf():
  opt = otr.RMSprop(learning_rate=0.1)
  var = otr.Variable(10.0)
  step = opt.minimize(lambda: (var.value**2) / 2.0, [var])
  assert step.numpy() == 1
  assert var.numpy() == np.float32(9.683772)


def test_steps_never_retrace_when_hyperparameters_change(monkeypatch):
  traces = []
  core_update = keras_compat.transform.rmsprop_apply

  def counting_update(*args, **kwargs):
    traces.append(1)  # Runs only while jax traces the compiled step.
    return core_update(*args, **kwargs)

  monkeypatch.setattr(keras_compat.transform, "rmsprop_apply", counting_update)
  # Shapes no other test uses, so the first step must trace once.
  values, grads = _problem(2, 6, shapes=[(5, 7), (7,)])
  variables = [otr.Variable(v) for v in values]
  lr = itertools.cycle([0.1, 0.05, 0.02, 0.01, 0.005, 0.001])
  opt = otr.RMSprop(learning_rate=lambda: next(lr), momentum=0.5)
  opt.apply_gradients(zip(grads[0], variables))
  assert len(traces) == 1
  for step_grads in grads[1:3]:
    opt.apply_gradients(zip(step_grads, variables))
  opt.rho = 0.8
  opt.momentum = lambda: 0.7
  opt.epsilon = 1e-6
  for step_grads in grads[3:]:
    opt.apply_gradients(zip([jnp.asarray(g) for g in step_grads], variables))
  loss = lambda: sum(jnp.sum(v.value**2) for v in variables)
  opt.minimize(loss, variables)
  opt.minimize(loss, lambda: variables)
  assert len(traces) == 1 and int(opt.iterations) == 8


def test_callable_hyperparameters_are_read_every_step_like_tf():
  values, grads = _problem(3, 8)
  calls = {"lr": 0}

  def make_lr():
    def lr():
      calls["lr"] += 1
      return 0.01 * calls["lr"]

    return lr

  config = dict(momentum=lambda: 0.5, decay=0.1)
  # TF eager calls the callables at every apply (tf.function would freeze
  # them at trace time).
  tf_variables = [tf.Variable(v) for v in values]
  tf_opt = tf_keras.optimizers.legacy.RMSprop(learning_rate=make_lr(), **config)
  for step_grads in grads:
    tf_opt.apply_gradients(zip(step_grads, tf_variables))
  assert calls["lr"] == len(grads)
  calls["lr"] = 0
  _, variables = _run_ours(values, grads, learning_rate=make_lr(), **config)
  assert calls["lr"] == len(grads)
  for ours, theirs in zip(variables, tf_variables):
    _assert_bits_equal(ours.numpy(), theirs.numpy())


def test_momentum_path_rule_follows_tf():
  var = otr.Variable(np.ones(3, np.float32))
  for momentum, expected in [
    (0.0, ["rms"]),
    (0.1, ["rms", "momentum"]),
    (jnp.asarray(0.0), ["rms", "momentum"]),
    (lambda: 0.0, ["rms", "momentum"]),
  ]:
    opt = otr.RMSprop(momentum=momentum)
    opt.apply_gradients([(np.ones(3, np.float32), var)])
    assert opt.get_slot_names() == expected


def test_get_weights_order_shapes_dtypes_and_late_variables_match_tf():
  values, grads = _problem(4, 3)
  config = dict(learning_rate=0.01, momentum=0.2, centered=True)
  tf_variables = [tf.Variable(v) for v in values]
  tf_opt = tf_keras.optimizers.legacy.RMSprop(**config)
  variables = [otr.Variable(v) for v in values]
  opt = otr.RMSprop(**config)
  # First step without the last variable; it joins later, slots appended.
  tf_opt.apply_gradients(zip(grads[0][:2], tf_variables[:2]))
  opt.apply_gradients(zip(grads[0][:2], variables[:2]))
  for step_grads in grads[1:]:
    tf_opt.apply_gradients(zip(step_grads, tf_variables))
    opt.apply_gradients(zip(step_grads, variables))
  ours, theirs = opt.get_weights(), _tf_optimizer_weights(tf_opt)
  assert len(ours) == len(theirs) == 1 + 3 * 3
  assert type(ours[0]) is np.int64 and int(ours[0]) == 3
  for a, b in zip(ours[1:], theirs[1:]):
    _assert_bits_equal(a, b)
  names = [w.name.replace("Variable", "v") for w in opt.weights]
  tf_names = [w.name.replace("Variable", "v") for w in tf_opt.weights]
  assert names == tf_names
  assert opt.variables() == opt.weights


def _tf_train(values, grad_steps, config, weights=None):
  variables = [tf.Variable(v) for v in values]
  opt = tf_keras.optimizers.legacy.RMSprop(**config)
  if weights is not None:
    opt._create_all_weights(variables)
    opt.set_weights(weights)

  @tf.function
  def step(grads):
    opt.apply_gradients(zip(grads, variables))

  for grads in grad_steps:
    step([tf.constant(g) for g in grads])
  return [v.numpy() for v in variables], opt


@pytest.mark.parametrize("config", [CONFIGS[1], CONFIGS[3], CONFIGS[4]])
def test_tf_to_jax_and_back_stays_bit_identical(config):
  values, grads = _problem(5, 30)
  first, second, third = grads[:10], grads[10:20], grads[20:]
  # TF trains, then hands over to this class; TF continues in parallel.
  tf_values, tf_opt = _tf_train(values, first, config)
  variables = [otr.Variable(v) for v in tf_values]
  opt = otr.RMSprop(**config)
  opt.build(variables)
  opt.set_weights(tf_opt.get_weights())
  tf_values2, tf_opt2 = _tf_train(
    tf_values, second, config, tf_opt.get_weights()
  )
  for step_grads in second:
    opt.apply_gradients(zip(step_grads, variables))
  for ours, theirs in zip(variables, tf_values2):
    _assert_bits_equal(ours.numpy(), theirs)
  for ours, theirs in zip(opt.get_weights(), tf_opt2.get_weights()):
    _assert_bits_equal(ours, theirs)
  # And back: a fresh TF optimizer takes our weights and continues.
  tf_values3, _ = _tf_train(
    [v.numpy() for v in variables], third, config, opt.get_weights()
  )
  for step_grads in third:
    opt.apply_gradients(zip(step_grads, variables))
  for ours, theirs in zip(variables, tf_values3):
    _assert_bits_equal(ours.numpy(), theirs)


def test_functional_converters_round_trip_with_tf():
  values, grads = _problem(6, 12)
  config = dict(learning_rate=0.01, momentum=0.4, centered=True)
  tf_values, tf_opt = _tf_train(values, grads[:6], config)
  params = [jnp.asarray(v) for v in tf_values]
  state = otr.state_from_keras_weights(
    tf_opt.get_weights(), params, centered=True, use_momentum=True
  )
  assert int(state.count) == 6
  transformation = otr.rmsprop(**config)
  step = jax.jit(transformation.update)
  for step_grads in grads[6:]:
    updates, state = step([jnp.asarray(g) for g in step_grads], state)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
  tf_values2, tf_opt2 = _tf_train(
    tf_values, grads[6:], config, tf_opt.get_weights()
  )
  for ours, theirs in zip(params, tf_values2):
    _assert_bits_equal(ours, theirs)
  for ours, theirs in zip(
    otr.state_to_keras_weights(state), tf_opt2.get_weights()
  ):
    _assert_bits_equal(ours, theirs)


def test_set_weights_accepts_the_keras1_form_without_iterations():
  values, grads = _problem(7, 2)
  opt, _ = _run_ours(values, grads)
  weights = opt.get_weights()
  opt.set_weights(weights[1:])
  assert int(opt.iterations) == 0
  for a, b in zip(opt.get_weights()[1:], weights[1:]):
    _assert_bits_equal(a, b)


@pytest.mark.parametrize(
  "mutate, message",
  [
    (
      lambda w: w[:2],
      "weight list of length 2, but the optimizer was expecting 4 weights",
    ),
    (
      lambda w: w[:2] + [np.zeros(9, np.float32)] + w[3:],
      r"Weight 2: optimizer weight shape \(4,\) not compatible",
    ),
    (
      lambda w: w[:3] + [w[3].astype(np.float64)],
      r"Weight 3: optimizer weight dtype float32 differs",
    ),
    (lambda w: [np.float32(1.0)] + w[1:], "Weight 0"),
  ],
)
def test_set_weights_errors_name_the_position_and_change_nothing(
  mutate, message
):
  values, grads = _problem(8, 2)
  opt, _ = _run_ours(values, grads)
  before = opt.get_weights()
  with pytest.raises(ValueError, match=message):
    opt.set_weights(mutate(list(before)))
  for a, b in zip(opt.get_weights(), before):
    _assert_bits_equal(a, b)


def test_fresh_optimizer_expects_no_weights():
  with pytest.raises(
    ValueError,
    match="a  weight list of length 1, but the "
    "optimizer was expecting 0 weights",
  ):
    otr.RMSprop().set_weights([np.zeros(2)])


def test_gradient_errors_follow_tf_and_leave_state_untouched():
  v, w = (
    otr.Variable(np.ones(2, np.float32), name="v"),
    otr.Variable(np.ones(3, np.float32), name="w"),
  )
  opt = otr.RMSprop()
  with pytest.raises(
    ValueError,
    match=r"No gradients provided for any "
    r"variable: \(\['v:0', 'w:0'\],\)",
  ):
    opt.apply_gradients([(None, v), (None, w)])
  with pytest.raises(TypeError, match="item 0"):
    opt.apply_gradients([np.ones(2, np.float32)])
  with pytest.raises(TypeError, match="second element"):
    opt.apply_gradients([(v, np.ones(2, np.float32))])
  with pytest.raises(TypeError, match="item 0"):
    opt.apply_gradients([(np.ones(2, np.float32), v, 1)])
  with pytest.raises(ValueError, match="has shape"):
    opt.apply_gradients([(np.ones(3, np.float32), v)])
  with pytest.raises(ValueError, match="dtype float64"):
    opt.apply_gradients([(np.ones(2, np.float64), v)])
  assert opt.weights == [] and v.numpy().tolist() == [1.0, 1.0]
  with pytest.warns(
    UserWarning,
    match=r"Gradients do not exist for "
    r"variables \['w:0'\]",
  ):
    opt.apply_gradients([(np.ones(2, np.float32), v), (None, w)])
  assert [x.name for x in opt.weights] == ["RMSprop/iter:0", "RMSprop/v/rms:0"]
  with pytest.raises(KeyError):
    opt.get_slot(w, "rms")
  assert opt.apply_gradients([]) is None
  assert int(opt.iterations) == 1


@pytest.mark.parametrize(
  "kwargs, error, message",
  [
    (
      dict(foo=1),
      TypeError,
      "Unexpected keyword argument passed to optimizer: foo",
    ),
    (dict(clipnorm=-1.0), ValueError, "Expected clipnorm >= 0, received: -1.0"),
    (dict(decay=-0.5), ValueError, "Expected decay >= 0"),
    (
      dict(clipnorm=1.0, global_clipnorm=1.0),
      ValueError,
      "Cannot accept both `clipnorm` and `global_clipnorm`",
    ),
    (
      dict(momentum=1.5),
      ValueError,
      r"`momentum` must be between \[0, 1\]. "
      "Received: momentum=1.5",
    ),
  ],
)
def test_constructor_errors_like_tf(kwargs, error, message):
  with pytest.raises(error, match=message):
    otr.RMSprop(**kwargs)
  with pytest.raises(error, match=message):
    tf_keras.optimizers.legacy.RMSprop(**kwargs)


def test_lr_alias_warns_and_attributes_alias():
  with pytest.warns(UserWarning, match="The `lr` argument is deprecated"):
    opt = otr.RMSprop(lr=0.5)
  assert opt.learning_rate == opt.lr == 0.5
  opt.lr = 0.25
  assert opt.learning_rate == 0.25
  assert otr.RMSprop(epsilon=0).epsilon == 1e-7
  assert otr.RMSprop(epsilon=None).epsilon == 1e-7


CONFIG_CASES = [
  dict(),
  dict(
    learning_rate=0.01,
    rho=0.8,
    momentum=0.5,
    epsilon=1e-6,
    centered=True,
    name="opt",
    clipnorm=1.0,
    clipvalue=0.3,
    decay=0.1,
  ),
  dict(global_clipnorm=2.0, lr=0.2),
]


@pytest.mark.parametrize("kwargs", CONFIG_CASES)
def test_get_config_matches_tf_and_is_json(kwargs):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    ours = otr.RMSprop(**kwargs)
    theirs = tf_keras.optimizers.legacy.RMSprop(**kwargs)
  assert ours.get_config() == theirs.get_config()
  var, tf_var = (
    otr.Variable(np.ones(2, np.float32)),
    tf.Variable(np.ones(2, np.float32)),
  )
  ours.apply_gradients([(np.ones(2, np.float32), var)])
  theirs.apply_gradients([(np.ones(2, np.float32), tf_var)])
  ours_config, tf_config = ours.get_config(), theirs.get_config()
  assert list(ours_config) == list(tf_config)
  for key, value in tf_config.items():
    # TF's turn into np.float32 after the first step; ours stay Python.
    assert ours_config[key] == (
      float(np.float64(value)) if isinstance(value, np.floating) else value
    )
  json.dumps(ours_config)
  rebuilt = otr.RMSprop.from_config(tf_config)
  assert rebuilt.get_config() == ours_config


def test_from_config_with_schedules_and_custom_objects():
  schedule = tf_keras.optimizers.schedules.PolynomialDecay(0.1, 10, 0.01)
  tf_opt = tf_keras.optimizers.legacy.RMSprop(learning_rate=schedule)
  opt = otr.RMSprop.from_config(tf_opt.get_config())
  assert opt.get_config() == tf_opt.get_config()
  # Reading a hyperparameter creates the float32 hyper variables, in both.
  assert isinstance(opt.learning_rate, otr.schedules.PolynomialDecay)
  assert isinstance(
    tf_opt.learning_rate, tf_keras.optimizers.schedules.PolynomialDecay
  )
  assert opt.get_config() == {
    k: float(v) if isinstance(v, np.floating) else v
    for k, v in tf_opt.get_config().items()
  }
  json.dumps(opt.get_config())

  class MySched(otr.schedules.LearningRateSchedule):
    def __init__(self, rate):
      self.rate = rate

    def __call__(self, step):
      return self.rate / (step + 1)

    def get_config(self):
      return {"rate": self.rate}

  config = otr.RMSprop(learning_rate=MySched(0.5)).get_config()
  assert config["learning_rate"]["registered_name"] == "MySched"
  with pytest.raises(
    TypeError, match="Cannot deserialize object of type `MySched`"
  ):
    otr.RMSprop.from_config(config)
  rebuilt = otr.RMSprop.from_config(config, {"MySched": MySched})
  assert rebuilt.learning_rate.rate == 0.5
  with pytest.raises(TypeError, match="foo"):
    otr.RMSprop.from_config(dict(config, foo=1), {"MySched": MySched})
  bad = dict(
    config,
    learning_rate={"class_name": "ExponentialDecay", "config": {"nope": 1}},
  )
  with pytest.raises(ValueError, match="Invalid config"):
    otr.RMSprop.from_config(bad)


def test_slot_and_weight_helpers():
  opt = otr.RMSprop(name="opt")
  var = otr.Variable(np.ones((2, 3), np.float32), name="kernel")
  opt.build([var])
  assert [w.name for w in opt.weights] == ["opt/iter:0", "opt/kernel/rms:0"]
  extra = opt.add_slot(var, "extra", initializer="ones")
  assert opt.get_slot(var, "extra") is extra
  assert extra.numpy().tolist() == [[1.0] * 3] * 2
  assert opt.get_slot_names() == ["rms", "extra"]
  weight = opt.add_weight("w", shape=[2], dtype=jnp.float32)
  assert weight.name == "opt/w:0"
  assert all(w is not weight for w in opt.weights)
  fresh = otr.RMSprop()
  fresh.iterations = 5
  assert int(fresh.iterations) == 5 and fresh.weights == [fresh.iterations]
  with pytest.raises(RuntimeError, match="Cannot set `iterations`"):
    fresh.iterations = 3
  fresh.iterations.assign(7)
  assert fresh.get_weights()[0] == 7


def test_get_gradients_and_get_updates():
  var = otr.Variable(np.array([1.0, -2.0], np.float32))
  unused = otr.Variable(np.zeros(2, np.float32))
  opt = otr.RMSprop(learning_rate=0.1, clipvalue=0.5)
  loss = lambda: jnp.sum(var.value**2)
  grads = opt.get_gradients(loss, [var])
  np.testing.assert_array_equal(grads[0], [2.0, -4.0])
  with pytest.raises(ValueError, match="has `None` for gradient"):
    opt.get_gradients(loss, [var, unused])
  (step,) = opt.get_updates(loss, [var])
  assert int(step) == 1
  with pytest.warns(UserWarning, match="Gradients do not exist"):
    opt.minimize(loss, [var, unused])
  tf_var = tf.Variable(np.array([1.0, -2.0], np.float32))
  tf_opt = tf_keras.optimizers.legacy.RMSprop(learning_rate=0.1, clipvalue=0.5)
  for _ in range(2):
    tf_opt.minimize(lambda: tf.reduce_sum(tf_var**2), [tf_var])
  _assert_bits_equal(var.numpy(), tf_var.numpy())


def test_variable_behaves_like_a_tf_variable():
  v = otr.Variable([1.0, 2.0], name="v")
  assert v.dtype == jnp.float32 and v.shape == (2,) and v.name == "v:0"
  assert (v * 2).tolist() == [2.0, 4.0] and (1 - v).tolist() == [0.0, -1.0]
  assert np.asarray(v).tolist() == [1.0, 2.0]
  assert jnp.sum(jnp.asarray(v)) == 3.0
  v.assign([3.0, 4.0]).assign_add(1.0)
  assert v.numpy().tolist() == [4.0, 5.0]
  with pytest.raises(ValueError, match="shape"):
    v.assign([1.0])
  assert otr.Variable(3).dtype == jnp.int32
