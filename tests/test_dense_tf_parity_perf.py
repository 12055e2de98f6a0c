"""The benchmarked step (jit, donated params and state) is TF-exact.

Guards the performance work on the dense core: whatever the step fuses,
flattens or reorders for speed, 200 steps of each dense path stay bit-identical
to tf_keras' legacy RMSprop on CPU, on leaves of the layouts the benchmark
uses (OIHW and HWIO conv kernels, vectors, a matrix).
"""

import jax
import numpy as np
import optax
import pytest

import optax_tfrmsprop
from tf_reference import run_tf
import toolbox

_STEPS = 200
_SHAPES = {
  "conv_hwio": (3, 3, 4, 8),
  "conv_oihw": (8, 4, 3, 3),
  "dense": (17, 5),
  "gamma": (13,),
}


def _problem():
  variables, grad_steps = toolbox.problem(
    6, np.float32, _STEPS, list(_SHAPES.values())
  )
  return (
    dict(zip(_SHAPES, variables)),
    [dict(zip(_SHAPES, grads)) for grads in grad_steps],
  )


@pytest.mark.slow
@pytest.mark.parametrize("path", toolbox.DENSE_PATHS)
def test_jitted_donated_step_matches_tf_for_200_steps(path):
  config = toolbox.options(path, learning_rate=0.01, rho=0.9, epsilon=1e-7)
  params, grads = _problem()
  names = sorted(params)  # jax's leaf order of a dict
  tf_vars, tf_slots, _ = run_tf(
    [params[k] for k in names], [[g[k] for k in names] for g in grads], **config
  )

  opt = optax_tfrmsprop.rmsprop(**config)

  def step(params, state, grads):
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  step = jax.jit(step, donate_argnums=(0, 1))
  p = jax.device_put(params)
  state = opt.init(p)
  for g in grads:
    p, state = step(p, state, g)

  # The dicts' leaves are in sorted key order: TF's variable order.
  toolbox.assert_same_as_tf(p, state, tf_vars, tf_slots)
