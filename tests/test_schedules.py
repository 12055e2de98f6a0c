"""Keras learning-rate schedules, evaluated eagerly: bit-identical to tf_keras.

These tests compare ``evaluation="eager"`` with tf_keras' schedules called
eagerly. The default, ``evaluation="graph"`` (what ``Model.fit`` computes), is
tested in ``test_schedules_graph.py``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optax_tfrmsprop as otr
from optax_tfrmsprop import schedules
from tests.tf_reference import tf
from tests.tf_reference import tf_keras
import toolbox

CASES = [
  (
    "ExponentialDecay",
    dict(initial_learning_rate=0.1, decay_steps=7, decay_rate=0.93),
  ),
  (
    "ExponentialDecay",
    dict(
      initial_learning_rate=0.1, decay_steps=7, decay_rate=0.93, staircase=True
    ),
  ),
  (
    "PiecewiseConstantDecay",
    dict(boundaries=[10, 50, 51], values=[0.1, 0.05, 0.01, 0.003]),
  ),
  (
    "PolynomialDecay",
    dict(
      initial_learning_rate=0.1,
      decay_steps=37,
      end_learning_rate=0.001,
      power=0.7,
    ),
  ),
  (
    "PolynomialDecay",
    dict(
      initial_learning_rate=0.1,
      decay_steps=37,
      end_learning_rate=0.001,
      power=2.3,
      cycle=True,
    ),
  ),
  (
    "InverseTimeDecay",
    dict(initial_learning_rate=0.1, decay_steps=3, decay_rate=0.37),
  ),
  (
    "InverseTimeDecay",
    dict(
      initial_learning_rate=0.1, decay_steps=3, decay_rate=0.37, staircase=True
    ),
  ),
  ("CosineDecay", dict(initial_learning_rate=0.1, decay_steps=97, alpha=0.13)),
  (
    "CosineDecay",
    dict(
      initial_learning_rate=0.01,
      decay_steps=97,
      alpha=0.13,
      warmup_target=0.1,
      warmup_steps=23,
    ),
  ),
  (
    "CosineDecayRestarts",
    dict(
      initial_learning_rate=0.1,
      first_decay_steps=13,
      t_mul=1.7,
      m_mul=0.9,
      alpha=0.05,
    ),
  ),
  (
    "CosineDecayRestarts",
    dict(
      initial_learning_rate=0.1,
      first_decay_steps=13,
      t_mul=1.0,
      m_mul=0.9,
      alpha=0.05,
    ),
  ),
  # Exponents that XLA or LLVM would specialise if they could see them
  # (pow(x, -1) is not 1 / x in the C library, e.g. at step 366 here).
  (
    "PolynomialDecay",
    dict(
      initial_learning_rate=0.1,
      decay_steps=12,
      end_learning_rate=0.0001,
      power=-1.0,
      cycle=True,
    ),
  ),
  (
    "PolynomialDecay",
    dict(
      initial_learning_rate=0.01,
      decay_steps=23,
      end_learning_rate=0.0,
      power=3.0,
      cycle=True,
    ),
  ),
  (
    "CosineDecayRestarts",
    dict(initial_learning_rate=0.1, first_decay_steps=13),
  ),
]
IDS = [f"{name}-{i}" for i, (name, _) in enumerate(CASES)]


def _keras_values(name, config, steps, step_dtype):
  schedule = getattr(tf_keras.optimizers.schedules, name)(**config)
  # The optimizer calls the schedule with one scalar step at a time.
  return np.array([schedule(tf.constant(s, step_dtype)).numpy() for s in steps])


def _ours(name, config, steps, step_dtype):
  schedule = jax.jit(getattr(schedules, name)(**config, evaluation="eager"))
  return np.array([schedule(jnp.asarray(s, step_dtype)) for s in steps])


@pytest.mark.parametrize("name, config", CASES, ids=IDS)
def test_jitted_schedule_equals_keras_at_every_step(name, config):
  steps = range(400)
  expected = _keras_values(name, config, steps, tf.float32)
  actual = _ours(name, config, steps, jnp.float32)
  assert actual.dtype == expected.dtype
  np.testing.assert_array_equal(otr.ulp_distance(actual, expected), 0)


@pytest.mark.parametrize("evaluation", ["eager", "graph"])
@pytest.mark.parametrize("name, config", CASES, ids=IDS)
def test_vmap_over_steps_equals_one_step_at_a_time(name, config, evaluation):
  """A batched step must not turn a division into a reciprocal multiply."""
  schedule = getattr(schedules, name)(**config, evaluation=evaluation)
  steps = jnp.arange(0, 400, 7, dtype=jnp.float32)
  one_at_a_time = np.array([jax.jit(schedule)(s) for s in steps])
  toolbox.assert_bitwise(jax.jit(jax.vmap(schedule))(steps), one_at_a_time)


@pytest.mark.slow
@pytest.mark.parametrize("name, config", CASES, ids=IDS)
def test_float64_schedules_equal_keras(x64, name, config):
  del x64
  config = dict(config)
  if "initial_learning_rate" in config:
    config["initial_learning_rate"] = np.float64(
      config["initial_learning_rate"]
    )
  else:
    config["values"] = [np.float64(v) for v in config["values"]]
  steps = range(0, 3000, 7)
  expected = _keras_values(name, config, steps, tf.float64)
  actual = _ours(name, config, steps, jnp.float64)
  assert actual.dtype == expected.dtype == np.float64
  np.testing.assert_array_equal(otr.ulp_distance(actual, expected), 0)


def test_spec_values():
  exp = schedules.ExponentialDecay(0.1, 10, 0.5)
  np.testing.assert_allclose(
    [exp(float(s)) for s in (0, 1, 5, 10, 50)],
    [0.1, 0.0933033, 0.0707107, 0.05, 0.003125],
    rtol=1e-6,
  )
  assert schedules.PolynomialDecay(0.1, 10, 0.01, cycle=True)(15.0) == (
    np.float32(0.0325)
  )
  ints = schedules.PiecewiseConstantDecay([1], [3, 4])(2.0)
  assert ints.dtype == jnp.int32 and ints == 4


@pytest.mark.parametrize(
  "name, config",
  [CASES[0], CASES[5], CASES[8], CASES[9]],
  ids=["exp", "inverse-time", "cosine-warmup", "restarts"],
)
def test_optimizer_with_schedule_and_decay_matches_tf(name, config):
  rng = np.random.RandomState(0)
  values = [rng.randn(4, 3).astype(np.float32)]
  grads = [[rng.randn(4, 3).astype(np.float32)] for _ in range(40)]
  keras_schedule = getattr(tf_keras.optimizers.schedules, name)(**config)
  # TF eager: inside tf.function grappler rewrites the schedule's arithmetic
  # (see test_schedules_graph.py for the graph evaluation).
  tf_opt = tf_keras.optimizers.legacy.RMSprop(
    learning_rate=keras_schedule, momentum=0.5, decay=0.01
  )
  tf_var = tf.Variable(values[0])
  for g in grads:
    tf_opt.apply_gradients([(g[0], tf_var)])
  # Built from the config TF serialises, like a restored Keras run.
  opt = otr.RMSprop.from_config(tf_opt.get_config(), evaluation="eager")
  var = otr.Variable(values[0])
  for g in grads:
    opt.apply_gradients([(g[0], var)])
  np.testing.assert_array_equal(
    otr.ulp_distance(var.numpy(), tf_var.numpy()), 0
  )


@pytest.mark.parametrize("name, config", CASES, ids=IDS)
def test_keras_serialization_round_trips(name, config):
  keras_schedule = getattr(tf_keras.optimizers.schedules, name)(**config)
  serialized = tf_keras.optimizers.schedules.serialize(keras_schedule)
  ours = schedules.deserialize(serialized)
  assert type(ours).__name__ == name
  assert schedules.serialize(ours) == serialized
  legacy = {"class_name": name, "config": keras_schedule.get_config()}
  assert schedules.deserialize(legacy).get_config() == (
    keras_schedule.get_config()
  )


def test_deserialize_errors():
  with pytest.raises(
    TypeError, match="Cannot deserialize object of type `Nope`"
  ):
    schedules.deserialize({"class_name": "Nope", "config": {}})
  with pytest.raises(ValueError, match="Unknown keys"):
    schedules.deserialize(
      {"class_name": "CosineDecay", "config": {}, "code": "print(1)"}
    )
  with pytest.raises(ValueError, match="Invalid config"):
    schedules.deserialize(
      {"class_name": "CosineDecay", "config": {"initial_learning_rate": 0.1}}
    )
  with pytest.raises(ValueError, match="class_name"):
    schedules.deserialize("ExponentialDecay")
