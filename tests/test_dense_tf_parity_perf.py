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
from tf_reference import run_tf  # tests/ is on sys.path under pytest

_STEPS = 200
_SHAPES = {
  "conv_hwio": (3, 3, 4, 8),
  "conv_oihw": (8, 4, 3, 3),
  "dense": (17, 5),
  "gamma": (13,),
}
_PATHS = {
  "plain": dict(momentum=0.0, centered=False),
  "momentum": dict(momentum=0.9, centered=False),
  "centered": dict(momentum=0.0, centered=True),
  "momentum+centered": dict(momentum=0.9, centered=True),
}
_TF_SLOT = {"ms": "rms", "mg": "mg", "mom": "momentum"}


def _problem():
  rng = np.random.default_rng(6)
  params = {
    k: rng.standard_normal(s).astype(np.float32) for k, s in _SHAPES.items()
  }
  grads = [
    {
      k: (rng.standard_normal(s) * rng.choice([1e-3, 1.0, 30.0])).astype(
        np.float32
      )
      for k, s in _SHAPES.items()
    }
    for _ in range(_STEPS)
  ]
  return params, grads


@pytest.mark.slow
@pytest.mark.parametrize("path", list(_PATHS))
def test_jitted_donated_step_matches_tf_for_200_steps(path):
  config = dict(learning_rate=0.01, rho=0.9, epsilon=1e-7, **_PATHS[path])
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

  for i, name in enumerate(names):
    assert optax_tfrmsprop.ulp_distance(p[name], tf_vars[i]).max() == 0, name
    for slot, tf_name in _TF_SLOT.items():
      ours = getattr(state, slot)
      if ours is None:
        assert tf_name not in tf_slots
        continue
      np.testing.assert_array_equal(
        optax_tfrmsprop.ulp_distance(ours[name], tf_slots[tf_name][i]),
        0,
        err_msg=f"{slot} of {name}",
      )
