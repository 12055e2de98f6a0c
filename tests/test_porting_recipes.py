"""The recipes of docs/porting.md, checked against real TensorFlow."""

import jax.numpy as jnp
import numpy as np
import optax

import optax_tfrmsprop
from tf_reference import run_tf
import toolbox


def _problem(dtype, steps):
  (x0,), grads = toolbox.problem(1, dtype, steps, [(1000,)])
  return x0, grads


def _train(opt, x0, grads):
  (params,), state = toolbox.run(opt, [x0], grads)
  return np.asarray(params), state


def test_injected_static_momentum_keeps_the_momentum_free_path():
  x0, grads = _problem(np.float32, 50)
  (want,), _, _ = run_tf([x0], grads, learning_rate=0.01)
  static = optax.inject_hyperparams(
    optax_tfrmsprop.rmsprop, static_args=("momentum",)
  )(learning_rate=0.01)
  got, state = _train(static, x0, grads)
  assert state.inner_state.mom is None
  toolbox.assert_ulp(got, want)
  # Injected as an array, a zero momentum takes TF's kernel path instead
  # (epsilon inside the square root), as a zero tf.constant would.
  injected = optax.inject_hyperparams(optax_tfrmsprop.rmsprop)(
    learning_rate=0.01, momentum=0.0
  )
  got, state = _train(injected, x0, grads)
  assert state.inner_state.mom is not None
  assert np.abs(got - want).max() > 1e-3


def test_float64_needs_float32_hyperparams_and_a_static_epsilon(x64):
  del x64
  x0, grads = _problem(np.float64, 20)
  (want,), _, _ = run_tf([x0], grads, learning_rate=0.01)

  def distance(**inject_kwargs):
    opt = optax.inject_hyperparams(optax_tfrmsprop.rmsprop, **inject_kwargs)(
      learning_rate=0.01
    )
    return toolbox.max_ulp(_train(opt, x0, grads)[0], want)

  assert (
    distance(static_args=("momentum", "epsilon"), hyperparam_dtype=jnp.float32)
    == 0
  )
  # Epsilon injected as float32 is rounded before the cast to float64; TF
  # casts the Python float directly.
  assert distance(static_args=("momentum",), hyperparam_dtype=jnp.float32) > 0
