"""TF1 and Keras 3 presets against the real TF1 and Keras 3 optimizers."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_tfrmsprop
from optax_tfrmsprop._src import transform
import tf_reference

STEPS = 200
SHAPES = ((37,), (5, 9))
PATHS = [(0.0, False), (0.0, True), (0.9, False), (0.9, True)]
PATH_IDS = ["mom0", "mom0-centered", "mom", "mom-centered"]
ROUNDINGS = ("tf_cpu", "tf_xla")


def _problem(dtype, steps=STEPS, seed=0):
  """Initial values and per-step gradients with mixed scales and zeros."""
  rng = np.random.default_rng(seed)
  values = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
  scales = np.array([1e-3, 1.0, 30.0])
  grad_steps = []
  for _ in range(steps):
    grads = []
    for s in SHAPES:
      g = rng.standard_normal(s) * rng.choice(scales, size=s)
      g[rng.random(s) < 0.05] = 0.0
      grads.append(g.astype(dtype))
    grad_steps.append(grads)
  return values, grad_steps


def _run_jax(opt, values, grad_steps):
  params = [jnp.asarray(v) for v in values]
  state = opt.init(params)

  @jax.jit
  def step(params, state, grads):
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for grads in grad_steps:
    params, state = step(params, state, [jnp.asarray(g) for g in grads])
  return params, state


def _max_ulp(actual, expected):
  return max(
      int(optax_tfrmsprop.ulp_distance(np.asarray(a), e).max())
      for a, e in zip(actual, expected)
  )


def tf1_ulps(momentum, centered, rounding, dtype=np.float32, steps=STEPS,
             **config):
  """Largest ULP distances (vars and each slot) of tf1_rmsprop vs TF1."""
  values, grad_steps = _problem(dtype, steps)
  config = dict(learning_rate=0.01, momentum=momentum, centered=centered,
                **config)
  tf_vars, tf_slots = tf_reference.run_tf1(
      values, grad_steps, jit_compile=rounding == "tf_xla", **config)
  params, state = _run_jax(
      optax_tfrmsprop.tf1_rmsprop(**config, rounding=rounding), values,
      grad_steps)
  ulps = dict(var=_max_ulp(params, tf_vars), ms=_max_ulp(state.ms,
                                                         tf_slots["rms"]),
              mom=_max_ulp(state.mom, tf_slots["momentum"]))
  if centered:
    ulps["mg"] = _max_ulp(state.mg, tf_slots["mg"])
  return ulps


def keras3_ulps(momentum, centered, rounding, dtype=np.float32, steps=STEPS,
                eager=None, **config):
  """Largest ULP distances (vars and each slot) of keras3_rmsprop vs Keras 3.

  By default Keras 3 runs eagerly for ``"tf_cpu"`` (its ops as written) and in
  ``tf.function(jit_compile=True)`` for ``"tf_xla"``.
  """
  values, grad_steps = _problem(dtype, steps)
  config = dict(learning_rate=0.01, momentum=momentum, centered=centered,
                **config)
  xla = rounding == "tf_xla"
  tf_vars, opt = tf_reference.run_keras3(
      values, grad_steps, jit_compile=xla,
      eager=not xla if eager is None else eager, **config)
  params, state = _run_jax(
      optax_tfrmsprop.keras3_rmsprop(**config, rounding=rounding), values,
      grad_steps)
  ulps = dict(var=_max_ulp(params, tf_vars),
              ms=_max_ulp(state.ms, [v.numpy() for v in opt._velocities]))
  if momentum:
    ulps["mom"] = _max_ulp(state.mom, [v.numpy() for v in opt._momentums])
  if centered:
    ulps["mg"] = _max_ulp(
        state.mg, [v.numpy() for v in opt._average_gradients])
  assert int(opt.iterations.numpy()) == int(state.count) == steps
  return ulps


@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize(("momentum", "centered"), PATHS, ids=PATH_IDS)
def test_tf1_matches_tf1_optimizer_f32(momentum, centered, rounding):
  ulps = tf1_ulps(momentum, centered, rounding)
  assert ulps == dict.fromkeys(ulps, 0)


@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize(("momentum", "centered"), PATHS, ids=PATH_IDS)
def test_keras3_matches_keras3_optimizer_f32(momentum, centered, rounding):
  ulps = keras3_ulps(momentum, centered, rounding)
  assert ulps == dict.fromkeys(ulps, 0)
