"""vmap over a hyperparameter alone equals a loop over its values, bitwise.

With only the learning rate batched, the update's divisor (``sqrt(ms) +
eps``) is unbatched, so ``vmap`` makes it a broadcast, and XLA turned the
division by a broadcast into a multiply by a rounded reciprocal: up to 404
ULP from TF on the XLA path (found by a hostile tester). Every division of
the update rules goes through ``numerics.divide`` now. Checked on every
path, both backends, the optax API and the fused step, each flavor and the
dtypes the XLA path computes with wrapped values (bfloat16, complex64), and
once against TF itself.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_tfrmsprop as ot
import toolbox

# The steps are compared, not timed: the kernel's in-place buffers need not be
# donated.
pytestmark = pytest.mark.filterwarnings(
  "ignore:optax_tfrmsprop.*not donated:RuntimeWarning"
)

LEARNING_RATES = jnp.asarray([0.1, 0.01, 0.001, 0.3], jnp.float32)


def _arrays(dtype, shape=(37, 19)):
  rng = np.random.default_rng(0)
  make = lambda: rng.normal(size=shape).astype(np.float32)
  if dtype == "complex64":
    return [(make() + 1j * make()).astype(np.complex64) for _ in range(2)]
  return [jnp.asarray(make(), dtype) for _ in range(2)]


def _step(make_opt, fused, config, backend):
  """``(lr, params, state, grads) -> (params, state)``, one step."""

  def step(lr, params, state, grads):
    if fused:
      return ot.rmsprop_apply(
        params, grads, state, learning_rate=lr, backend=backend, **config
      )
    updates, state = make_opt(lr, **config, backend=backend).update(
      grads, state, params
    )
    return optax.apply_updates(params, updates), state

  return step


def _check_vmap_equals_loop(step, params, state, grads):
  batched = jax.jit(jax.vmap(step, in_axes=(0, None, None, None)))(
    LEARNING_RATES, params, state, grads
  )
  loop = [jax.jit(step)(lr, params, state, grads) for lr in LEARNING_RATES]
  toolbox.assert_bitwise(
    batched, jax.tree.map(lambda *xs: jnp.stack(xs), *loop)
  )
  return loop


@pytest.mark.parametrize("fused", [False, True], ids=["optax", "fused"])
@pytest.mark.parametrize("path", toolbox.DENSE_PATHS)
@pytest.mark.parametrize("backend", toolbox.backend_params)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_batched_learning_rate_tf_keras(dtype, backend, path, fused):
  params, grads = _arrays(dtype)
  options = toolbox.options(path)
  state = ot.rmsprop_init(params, **options)
  config = {k: v for k, v in options.items() if k != "centered"}
  step = _step(ot.rmsprop, fused, options if not fused else config, backend)
  _check_vmap_equals_loop(step, params, state, grads)


@pytest.mark.parametrize("path", toolbox.DENSE_PATHS)
def test_batched_learning_rate_complex64(path):
  params, grads = (jnp.asarray(x) for x in _arrays("complex64"))
  options = toolbox.options(path)
  state = ot.rmsprop_init(params, **options)
  step = _step(ot.rmsprop, False, options, "xla")
  _check_vmap_equals_loop(step, params, state, grads)


@pytest.mark.parametrize("flavor_opt", [ot.keras3_rmsprop, ot.tf1_rmsprop])
@pytest.mark.parametrize("centered", [False, True])
def test_batched_learning_rate_other_flavors(flavor_opt, centered):
  params, grads = _arrays("float32")
  # These flavors run on XLA only (no backend argument).
  opt = lambda lr, backend: flavor_opt(lr, momentum=0.5, centered=centered)
  state = opt(0.1, None).init(params)
  _check_vmap_equals_loop(_step(opt, False, {}, None), params, state, grads)


@pytest.mark.parametrize("path", ["P1", "P3"])
def test_batched_learning_rate_matches_tf(path):
  import tf_reference

  params, grads = (np.asarray(x) for x in _arrays("float32"))
  options = toolbox.options(path)
  opt_state = ot.rmsprop_init(jnp.asarray(params), **options)
  loop = _check_vmap_equals_loop(
    _step(ot.rmsprop, False, options, "auto"),
    jnp.asarray(params),
    opt_state,
    jnp.asarray(grads),
  )
  for lr, (ours, _) in zip(np.asarray(LEARNING_RATES), loop):
    (theirs,), _, _ = tf_reference.run_tf(
      [params], [[grads]], learning_rate=lr, **options
    )
    toolbox.assert_bitwise(ours, jnp.asarray(theirs))
