"""Keras schedules as ``Model.fit`` computes them: TF's graph, bit for bit.

``Model.fit`` runs the optimizer in a ``tf.function`` graph, and grappler
rewrites each schedule's arithmetic (reciprocals of constant divisors, folded
and regrouped constants, powers by 2, 3, 0.5, ... turned into other ops, a
``tf.cond`` on a constant resolved). ``evaluation="graph"``, the default,
reproduces that; these tests hold it against ``Model.fit`` itself through all
three entry points, and against a ``tf.function`` over many configurations.
"""

import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optax_tfrmsprop as otr
from optax_tfrmsprop.keras import schedules
from tests import model_fit_reference as ref
from tests.tf_reference import tf
from tests.tf_reference import tf_keras

# Model.fit runs of 3,000 steps; these run in the default suite, the rest are
# marked slow.
_DEFAULT_FIT_CASES = ("restarts-defaults", "poly-cube-end0", "inverse-time-f64")
_FIT_STEPS = 3000


def _fit_params():
  params = []
  for case in ref.CASES:
    marks = () if case[0] in _DEFAULT_FIT_CASES else (pytest.mark.slow,)
    params.append(pytest.param(*case[1:], id=case[0], marks=marks))
  return params


@pytest.mark.parametrize("name, config, opt_config, dtype", _fit_params())
def test_model_fit_equals_all_entry_points(
  request, name, config, opt_config, dtype
):
  if dtype == "float64":
    request.getfixturevalue("x64")
  init, grads = ref.problem(_FIT_STEPS, dtype)
  keras_schedule = getattr(tf_keras.optimizers.schedules, name)(**config)
  tf_values, tf_slots, tf_config = ref.fit(
    keras_schedule, init, grads, **opt_config
  )
  ours = ref.run_entry_points(name, config, init, grads, tf_config, opt_config)
  for entry, result in ours.items():
    ulps = ref.max_ulps(result, (tf_values, tf_slots))
    assert set(ulps) == {"vars", *tf_slots}, entry
    assert all(u == 0 for u in ulps.values()), (entry, ulps)


@pytest.mark.slow
def test_model_fit_steps_in_a_graph_loop():
  """steps_per_execution > 1 runs the steps in a while loop: same values."""
  _, name, config, opt_config, dtype = next(
    case for case in ref.CASES if case[0] == "restarts"
  )
  init, grads = ref.problem(_FIT_STEPS, dtype)
  keras_schedule = getattr(tf_keras.optimizers.schedules, name)(**config)
  tf_values, tf_slots, tf_config = ref.fit(
    keras_schedule, init, grads, steps_per_execution=50, **opt_config
  )
  ours = ref.run_entry_points(name, config, init, grads, tf_config, opt_config)
  ulps = ref.max_ulps(ours["rmsprop"], (tf_values, tf_slots))
  assert all(u == 0 for u in ulps.values()), ulps


def test_eager_evaluation_is_not_model_fit():
  """The option matters: eagerly evaluated, the port leaves Model.fit."""
  name, config = (
    "ExponentialDecay",
    dict(initial_learning_rate=0.1, decay_steps=7, decay_rate=0.93),
  )
  init, grads = ref.problem(60, "float32")
  schedule = tf_keras.optimizers.schedules.ExponentialDecay(**config)
  tf_values, _, tf_config = ref.fit(schedule, init, grads)
  eager = ref.run_entry_points(
    name, config, init, grads, tf_config, {}, evaluation="eager"
  )
  for result in eager.values():
    assert ref.max_ulps(result, (tf_values, {}))["vars"] > 0


# Schedule values in a tf.function with the step in a variable, over
# arguments that change what grappler does: constants of 0 and 1 (dropped
# products and sums), powers it rewrites, alpha == 0 (lr0 folded into the
# product), t_mul == 1 (the other branch), float16 variables.
_VALUE_CASES = [
  (
    "ExponentialDecay",
    dict(initial_learning_rate=1.0, decay_steps=1, decay_rate=0.5),
  ),
  (
    "ExponentialDecay",
    dict(initial_learning_rate=0.3, decay_steps=2.5, decay_rate=1.01),
  ),
  (
    "ExponentialDecay",
    dict(
      initial_learning_rate=0.1, decay_steps=3, decay_rate=2.0, staircase=True
    ),
  ),
  ("PiecewiseConstantDecay", dict(boundaries=[0, 10], values=[1, 2, 3])),
  (
    "InverseTimeDecay",
    dict(initial_learning_rate=1.0, decay_steps=1, decay_rate=1.0),
  ),
  (
    "InverseTimeDecay",
    dict(initial_learning_rate=0.1, decay_steps=7, decay_rate=0.0),
  ),
  ("CosineDecay", dict(initial_learning_rate=0.1, decay_steps=1, alpha=1.0)),
  ("CosineDecay", dict(initial_learning_rate=1.0, decay_steps=233)),
  (
    "CosineDecay",
    dict(
      initial_learning_rate=0.1,
      decay_steps=50,
      alpha=0.3,
      warmup_target=0.5,
      warmup_steps=0,
    ),
  ),
  (
    "CosineDecayRestarts",
    dict(initial_learning_rate=0.1, first_decay_steps=7, t_mul=0.5, m_mul=1.2),
  ),
  (
    "CosineDecayRestarts",
    dict(initial_learning_rate=1.0, first_decay_steps=1, t_mul=1.0, alpha=1.0),
  ),
  (
    "CosineDecayRestarts",
    dict(
      initial_learning_rate=0.1,
      first_decay_steps=9,
      t_mul=3.0,
      m_mul=0.5,
      alpha=0.01,
    ),
  ),
]
_VALUE_CASES += [
  (
    "PolynomialDecay",
    dict(
      initial_learning_rate=0.1,
      decay_steps=ds,
      end_learning_rate=end,
      power=power,
      cycle=cycle,
    ),
  )
  for power, ds, end, cycle in [
    (1.0, 100, 0.0001, False),
    (2.0, 100, 0.001, True),
    (3.0, 90, 0.0, False),
    (3.0, 37, 0.01, True),
    (0.5, 100, 0.0, False),
    (0.0, 50, 0.01, False),
    (-0.5, 100, 0.001, True),
    (-1.0, 12, 0.0001, True),
    (4.0, 77, 0.0, False),
    (-2.0, 31, 0.1, True),
    (0.7, 29, 0.1, False),
  ]
]


def _values(name, config, steps, dtype):
  """TF's graph values and ours for the steps, cast to ``dtype``."""
  expected = ref.graph_schedule_values(
    getattr(tf_keras.optimizers.schedules, name)(**config), steps, dtype
  )
  ours = jax.jit(getattr(schedules, name)(**config))
  actual = np.array([ours(jnp.asarray(s, dtype)).astype(dtype) for s in steps])
  return actual, expected


@pytest.mark.parametrize(
  "name, config",
  _VALUE_CASES,
  ids=[f"{n}-{i}" for i, (n, _) in enumerate(_VALUE_CASES)],
)
def test_graph_values_equal_tf_function(name, config):
  actual, expected = _values(name, config, range(200), "float32")
  assert actual.dtype == expected.dtype
  np.testing.assert_array_equal(otr.ulp_distance(actual, expected), 0)


# A float16 initial_learning_rate makes the schedule compute in float16,
# where grappler pushes no constants down; float16 variables cast the step.
_FLOAT16_CASES = [
  (
    "ExponentialDecay",
    dict(initial_learning_rate=np.float16(0.1), decay_steps=7, decay_rate=0.93),
  ),
  (
    "PolynomialDecay",
    dict(
      initial_learning_rate=np.float16(0.1),
      decay_steps=37,
      end_learning_rate=0.001,
      power=3.0,
    ),
  ),
  (
    "InverseTimeDecay",
    dict(initial_learning_rate=np.float16(0.1), decay_steps=3, decay_rate=0.37),
  ),
  (
    "CosineDecay",
    dict(initial_learning_rate=np.float16(0.1), decay_steps=97, alpha=0.13),
  ),
  ("CosineDecay", dict(initial_learning_rate=np.float16(0.1), decay_steps=97)),
  (
    "CosineDecayRestarts",
    dict(
      initial_learning_rate=np.float16(0.1),
      first_decay_steps=13,
      t_mul=1.7,
      m_mul=0.9,
      alpha=0.05,
    ),
  ),
  (
    "CosineDecayRestarts",
    dict(initial_learning_rate=np.float16(0.1), first_decay_steps=13),
  ),
  (
    "CosineDecayRestarts",
    dict(initial_learning_rate=0.1, first_decay_steps=13),
  ),
]


@pytest.mark.slow
@pytest.mark.parametrize(
  "name, config",
  _FLOAT16_CASES,
  ids=[f"{n}-{i}" for i, (n, _) in enumerate(_FLOAT16_CASES)],
)
def test_float16_graph_values_equal_tf_function(name, config):
  actual, expected = _values(name, config, range(300), "float16")
  assert actual.dtype == expected.dtype
  np.testing.assert_array_equal(otr.ulp_distance(actual, expected), 0)


_lr = st.sampled_from([0.1, 1.0, 0.01, 3e-4]) | st.floats(1e-4, 2.0)
_steps = (
  st.sampled_from([1, 2, 3, 7, 13])
  | st.integers(1, 3000)
  | st.floats(1.0, 100.0)
)


@st.composite
def _random_schedules(draw):
  name = draw(
    st.sampled_from(
      [
        "ExponentialDecay",
        "PolynomialDecay",
        "InverseTimeDecay",
        "CosineDecay",
        "CosineDecayRestarts",
      ]
    )
  )
  lr = draw(_lr)
  if name == "ExponentialDecay":
    config = dict(
      initial_learning_rate=lr,
      decay_steps=draw(_steps),
      decay_rate=draw(st.sampled_from([0.5, 0.96, 1.0]) | st.floats(0.01, 1.2)),
      staircase=draw(st.booleans()),
    )
  elif name == "PolynomialDecay":
    config = dict(
      initial_learning_rate=lr,
      decay_steps=draw(_steps),
      end_learning_rate=draw(
        st.sampled_from([0.0, 1e-4]) | st.floats(0.0, 0.05)
      ),
      power=draw(
        st.sampled_from([1.0, 2.0, 3.0, 0.5, -0.5, -1.0, 0.0, 4.0])
        | st.floats(0.1, 4.0)
      ),
      cycle=draw(st.booleans()),
    )
  elif name == "InverseTimeDecay":
    config = dict(
      initial_learning_rate=lr,
      decay_steps=draw(_steps),
      decay_rate=draw(st.sampled_from([0.5, 1.0, 0.0]) | st.floats(0.0, 3.0)),
      staircase=draw(st.booleans()),
    )
  elif name == "CosineDecay":
    config = dict(
      initial_learning_rate=lr,
      decay_steps=draw(_steps),
      alpha=draw(st.sampled_from([0.0, 0.1, 1.0]) | st.floats(0.0, 1.0)),
    )
    if draw(st.booleans()):
      config.update(
        warmup_target=draw(st.floats(0.0, 1.0)),
        warmup_steps=draw(st.integers(0, 500)),
      )
  else:
    config = dict(
      initial_learning_rate=lr,
      first_decay_steps=draw(_steps),
      t_mul=draw(st.sampled_from([1.0, 2.0, 1.5]) | st.floats(0.5, 3.0)),
      m_mul=draw(st.sampled_from([1.0, 0.9]) | st.floats(0.3, 1.2)),
      alpha=draw(st.sampled_from([0.0, 0.05]) | st.floats(0.0, 1.0)),
    )
  return name, config


@pytest.mark.slow
@hypothesis.settings(max_examples=30, deadline=None, derandomize=True)
@hypothesis.given(_random_schedules(), st.booleans())
def test_random_schedules_equal_tf_function(schedule, float64):
  name, config = schedule
  if float64:
    config = dict(
      config, initial_learning_rate=np.float64(config["initial_learning_rate"])
    )
    if config.get("cycle"):
      return  # TF's graph rejects it: test_polynomial_cycle_float64_raises.
  dtype = "float64" if float64 else "float32"
  rng = np.random.default_rng(0)
  steps = sorted(set(range(200)) | set(rng.integers(0, 6000, 100).tolist()))
  expected = ref.graph_schedule_values(
    getattr(tf_keras.optimizers.schedules, name)(**config), steps, dtype
  )
  with jax.enable_x64(float64):
    ours = jax.jit(getattr(schedules, name)(**config))
    actual = np.array([ours(jnp.asarray(s, dtype)) for s in steps])
  np.testing.assert_array_equal(otr.ulp_distance(actual, expected), 0)


def test_polynomial_cycle_float64_raises_like_tf(x64):
  del x64
  config = dict(
    initial_learning_rate=np.float64(0.1), decay_steps=10, cycle=True
  )
  with pytest.raises(TypeError, match="SelectV2"):
    ref.graph_schedule_values(
      tf_keras.optimizers.schedules.PolynomialDecay(**config), [1], "float64"
    )
  with pytest.raises(TypeError, match="SelectV2"):
    schedules.PolynomialDecay(**config)(jnp.float64(1))
  opt = otr.RMSprop(learning_rate=schedules.PolynomialDecay(**config))
  var = otr.Variable(np.ones(3))
  with pytest.raises(TypeError, match="evaluation='eager'"):
    opt.apply_gradients([(np.ones(3), var)])
  np.testing.assert_array_equal(var.numpy(), np.ones(3))
  assert int(opt.iterations.numpy()) == 0
  eager = schedules.PolynomialDecay(**config, evaluation="eager")
  keras_schedule = tf_keras.optimizers.schedules.PolynomialDecay(**config)
  assert (
    eager(jnp.float64(15))
    == keras_schedule(tf.constant(15.0, tf.float64)).numpy()
  )


def test_evaluation_option_is_kept_out_of_configs():
  keras_schedule = tf_keras.optimizers.schedules.CosineDecayRestarts(0.1, 13)
  serialized = tf_keras.optimizers.schedules.serialize(keras_schedule)
  for evaluation in ("graph", "eager"):
    ours = schedules.deserialize(serialized, evaluation=evaluation)
    assert ours.evaluation == evaluation
    assert schedules.serialize(ours) == serialized
    assert ours.get_config() == keras_schedule.get_config()
    rebuilt = type(ours).from_config(ours.get_config(), evaluation=evaluation)
    assert rebuilt.evaluation == evaluation
  assert schedules.deserialize(serialized).evaluation == "graph"
  assert schedules.CosineDecayRestarts(0.1, 13).evaluation == "graph"

  tf_opt = tf_keras.optimizers.legacy.RMSprop(learning_rate=keras_schedule)
  for evaluation in ("graph", "eager"):
    opt = otr.RMSprop.from_config(tf_opt.get_config(), evaluation=evaluation)
    # Compared first: reading ``learning_rate`` creates the float32 hyper
    # variables, in TF as here, and the config then holds their values.
    assert opt.get_config() == tf_opt.get_config()
    assert opt.learning_rate.evaluation == evaluation
  assert (
    otr.RMSprop.from_config(tf_opt.get_config()).learning_rate.evaluation
    == "graph"
  )


def test_evaluation_errors():
  with pytest.raises(ValueError, match="evaluation must be one of"):
    schedules.ExponentialDecay(0.1, 10, 0.5, evaluation="xla")
  with pytest.raises(ValueError, match="evaluation must be one of"):
    schedules.deserialize(
      {"class_name": "ExponentialDecay", "config": {}}, evaluation="Graph"
    )
  with pytest.raises(ValueError, match="evaluation must be one of"):
    otr.RMSprop.from_config({"learning_rate": 0.1}, evaluation="eagerly")
  with pytest.raises(AttributeError):
    schedules.ExponentialDecay(0.1, 10, 0.5).evaluation = "eager"


def test_custom_schedules_deserialize_without_evaluation():

  class Halving(schedules.LearningRateSchedule):
    def __init__(self, rate):
      self.rate = rate

    def __call__(self, step):
      return self.rate * 0.5 ** jnp.floor(step / 10)

    def get_config(self):
      return {"rate": self.rate}

  class Slower(schedules.ExponentialDecay):
    pass

  config = schedules.serialize(Halving(0.4))
  assert (
    schedules.deserialize(config, {"Halving": Halving}, evaluation="eager").rate
    == 0.4
  )
  slower = schedules.deserialize(
    schedules.serialize(Slower(0.1, 10, 0.5)),
    {"Slower": Slower},
    evaluation="eager",
  )
  assert type(slower) is Slower and slower.evaluation == "eager"


@pytest.mark.parametrize("evaluation", ["graph", "eager"])
def test_integer_steps_as_optax_passes_them(evaluation):
  # optax (and keras3_rmsprop) call a schedule with the integer count.
  for name, config in _VALUE_CASES[:12]:
    schedule = getattr(schedules, name)(**config, evaluation=evaluation)
    for step in (0, 5, 17):
      # NaN where TF gives NaN too (t_mul < 1 runs out of restarts).
      assert (
        otr.ulp_distance(
          jax.jit(schedule)(jnp.int32(step)), schedule(float(step))
        )
        == 0
      )
