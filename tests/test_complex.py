"""Complex64/complex128 variables against TF's RMSprop, bit for bit.

TF trains complex variables on every path (P1-P8) of tf_keras' legacy
RMSprop and of TF1's RMSPropOptimizer, and Keras 3's on its dense paths; its
CPU kernels compute complex products, quotients and square roots with Eigen's
AVX packet code and scalar code for the last ``size % packet`` elements
(``numerics.EigenComplex``). These tests run real TF (imported inside each
test) and assert 0 ULP on the real and imaginary parts of every variable and
slot; where TF raises, the package raises the same kind of exception first.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optax_tfrmsprop as ot
from optax_tfrmsprop._src import base
from optax_tfrmsprop._src import numerics
import toolbox
from toolbox import PATHS

DTYPES = [np.complex64, np.complex128]
# 35 elements: a scalar tail of 3 complex64 (1 complex128) elements in every
# dense op; 6 sparse rows of width 5 with a duplicate index, so the
# de-duplicated tensors have 20 or 25 elements.
SHAPE = (7, 5)


def _x64_if(dtype):
  return jax.enable_x64(np.dtype(dtype) == np.complex128)


def _complex(rng, shape, dtype):
  """Complex values with parts of mixed scale (1e-3 to 10) and signs."""
  scale = 10.0 ** rng.uniform(-3, 1, size=(2,) + shape)
  parts = rng.normal(size=(2,) + shape) * scale
  return (parts[0] + 1j * parts[1]).astype(dtype)


def _problem(seed, dtype, sparse, steps, shape=SHAPE):
  """Initial variable and per-step gradients (``(values, indices, shape)``)."""
  rng = np.random.default_rng(seed)
  var = _complex(rng, shape, dtype)
  grads = []
  for _ in range(steps):
    if sparse:
      indices = rng.integers(0, shape[0], size=6)
      indices[4] = indices[1]  # A duplicate, summed first.
      values = _complex(rng, (6,) + shape[1:], dtype)
      grads.append([(values, indices.astype(np.int64), shape)])
    else:
      grads.append([_complex(rng, shape, dtype)])
  return var, grads


def _options(path):
  """The options of ``path``, with momentum 0.5 where it is on."""
  return toolbox.options(path, momentum=0.5 * PATHS[path].momentum)


def _run(opt, var, grads):
  """Our steps under jit; returns ``(params, state)``."""
  (params,), state = toolbox.run(opt, [var], grads)
  return params, state


def assert_bitwise(ours, theirs, what):
  """0 ULP: the real and imaginary parts are the same bits (NaN == NaN)."""
  assert np.asarray(ours).dtype == np.asarray(theirs).dtype, what
  toolbox.assert_ulp(ours, theirs, context=what)


def _legacy_case(path, dtype, steps=20, **extra):
  import tf_reference

  var, grads = _problem(int(path[1]), dtype, PATHS[path].sparse, steps)
  kwargs = dict(learning_rate=0.01, **_options(path), **extra)
  tf_vars, tf_slots, _ = tf_reference.run_tf([var], grads, **kwargs)
  with _x64_if(dtype):
    params, state = _run(ot.rmsprop(**kwargs), var, grads)
  toolbox.assert_same_as_tf(params, state, tf_vars, tf_slots, "keras_legacy")


@pytest.mark.parametrize("path", PATHS)
def test_keras_legacy_complex64(path):
  _legacy_case(path, np.complex64)


@pytest.mark.slow
@pytest.mark.parametrize("path", PATHS)
def test_keras_legacy_complex128(path):
  _legacy_case(path, np.complex128)


@pytest.mark.parametrize("path", ["P1", "P7"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_keras_legacy_decay(path, dtype):
  """Keras' inverse-time decay in complex arithmetic, dense and sparse."""
  _legacy_case(path, dtype, steps=10, decay=0.3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_keras_legacy_schedule_gets_the_step(dtype):
  """A schedule sees the step (TF casts it to the complex dtype and back)."""
  import tf_reference
  from tf_reference import tf
  from tf_reference import tf_keras

  class Steps(tf_keras.optimizers.schedules.LearningRateSchedule):
    def __call__(self, step):
      step = tf.cast(tf.math.real(step), tf.float32)
      return tf.where(step < 4, 0.05, 0.02)

  var, grads = _problem(3, dtype, False, 8)
  tf_vars, tf_slots, _ = tf_reference.run_tf(
    [var], grads, learning_rate=Steps(), momentum=0.5
  )
  with _x64_if(dtype):
    opt = ot.rmsprop(
      learning_rate=lambda step: jnp.where(
        step < 4, jnp.float32(0.05), jnp.float32(0.02)
      ),
      momentum=0.5,
    )
    params, state = _run(opt, var, grads)
  toolbox.assert_same_as_tf(params, state, tf_vars, tf_slots, "keras_legacy")


@pytest.mark.parametrize("dtype", DTYPES)
def test_keras_legacy_keras_schedule_port(dtype):
  """The package's port of a Keras schedule, as TF evaluates it in a graph."""
  from optax_tfrmsprop.keras import schedules
  import tf_reference
  from tf_reference import tf_keras

  var, grads = _problem(4, dtype, True, 12)
  args = (0.05, 3, 0.5)
  tf_vars, tf_slots, _ = tf_reference.run_tf(
    [var],
    grads,
    learning_rate=tf_keras.optimizers.schedules.ExponentialDecay(*args),
    momentum=0.5,
  )
  with _x64_if(dtype):
    opt = ot.rmsprop(schedules.ExponentialDecay(*args), momentum=0.5)
    params, state = _run(opt, var, grads)
  toolbox.assert_same_as_tf(params, state, tf_vars, tf_slots, "keras_legacy")


@pytest.mark.parametrize("path", ["P3", "P4", "P7", "P8"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_tf1(path, dtype):
  """TF1 always takes the kernels; momentum=0 is P3/P4/P7/P8 too."""
  import tf_reference

  var, grads = _problem(10 + int(path[1]), dtype, PATHS[path].sparse, 20)
  momentum = 0.0 if path in ("P3", "P8") else 0.5
  kwargs = dict(
    learning_rate=0.01, momentum=momentum, centered=PATHS[path].centered
  )
  tf_vars, tf_slots = tf_reference.run_tf1([var], grads, **kwargs)
  with _x64_if(dtype):
    params, state = _run(ot.tf1_rmsprop(**kwargs), var, grads)
  toolbox.assert_same_as_tf(params, state, tf_vars, tf_slots, "tf1")


@pytest.mark.parametrize("path", ["P1", "P2", "P3", "P4"])
def test_keras3_complex64_eager(path):
  """Keras 3's dense formula, op by op (as ``apply_gradients`` eagerly)."""
  import tf_reference

  var, grads = _problem(20 + int(path[1]), np.complex64, False, 20)
  kwargs = dict(learning_rate=0.01, **_options(path))
  tf_vars, tf_opt = tf_reference.run_keras3([var], grads, eager=True, **kwargs)
  params, state = _run(ot.keras3_rmsprop(**kwargs), var, grads)
  assert_bitwise(params, tf_vars[0], "var")
  by_name = {v.name: v.numpy() for v in tf_opt.variables}
  for field, tf_name in base.SEMANTICS["keras3"].slots:
    if getattr(state, field) is not None:
      assert_bitwise(getattr(state, field), by_name[f"v0_{tf_name}"], field)


@pytest.mark.parametrize("path", ["P3", "P4"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_tf_xla_momentum_paths(path, dtype):
  """``rounding="tf_xla"`` against ``jit_compile=True`` where both agree.

  The momentum kernels lower to complex products, quotients and ``rsqrt``,
  which TF's and jax's XLA compile alike. (The paths through ``sqrt``,
  P1/P2/P5/P6 and Keras 3, do not: the two XLA versions compute complex
  square roots differently; see docs/differences.md.)
  """
  import tf_reference

  var, grads = _problem(30 + int(path[1]), dtype, False, 20)
  kwargs = dict(learning_rate=0.01, **_options(path))
  tf_vars, tf_slots, _ = tf_reference.run_tf(
    [var], grads, jit_compile=True, **kwargs
  )
  with _x64_if(dtype):
    params, state = _run(ot.rmsprop(rounding="tf_xla", **kwargs), var, grads)
  toolbox.assert_same_as_tf(params, state, tf_vars, tf_slots, "keras_legacy")


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
def test_keras_class_matches_tf(dtype):
  """``optax_tfrmsprop.keras.RMSprop`` on a dense and a sparse variable."""
  from optax_tfrmsprop import keras as ot_keras
  import tf_reference

  dense_var, dense_grads = _problem(40, dtype, False, 12, shape=(9,))
  sparse_var, sparse_grads = _problem(41, dtype, True, 12)
  grads = [d + s for d, s in zip(dense_grads, sparse_grads)]
  kwargs = dict(learning_rate=0.01, momentum=0.5, centered=True)
  tf_vars, tf_slots, _ = tf_reference.run_tf(
    [dense_var, sparse_var], grads, **kwargs
  )
  with _x64_if(dtype):
    variables = [
      ot_keras.Variable(dense_var, name="d"),
      ot_keras.Variable(sparse_var, name="s"),
    ]
    opt = ot_keras.RMSprop(**kwargs)
    for step in grads:
      opt.apply_gradients(zip([toolbox.to_jax(g) for g in step], variables))
    for ours, theirs in zip(variables, tf_vars):
      assert_bitwise(ours.numpy(), theirs, "var")
    for name in ("rms", "mg", "momentum"):
      for v, theirs in zip(variables, tf_slots[name]):
        assert_bitwise(opt.get_slot(v, name).numpy(), theirs, name)


@pytest.mark.parametrize("dtype", DTYPES)
def test_eigen_complex_ops_match_tf(dtype):
  """Products, quotients, sqrt and rsqrt of TF's CPU kernels, every lane.

  Tensors of 1 to 67 elements put elements in packets and in the scalar
  tail; zero real or imaginary parts at both ends and magnitudes from 1e-23
  to 1e21 reach every branch.
  """
  from tf_reference import tf

  rng = np.random.default_rng(7)
  ops = {
    "mul": (tf.multiply, lambda a, b: a * b),
    "div": (tf.divide, lambda a, b: a / b),
    "sqrt": (lambda a, b: tf.sqrt(a), lambda a, b: a.sqrt()),
    "rsqrt": (lambda a, b: tf.math.rsqrt(a), lambda a, b: a.rsqrt()),
  }
  with _x64_if(dtype):
    for size in (1, 2, 3, 5, 7, 66, 67):
      x = _complex(rng, (size,), dtype)
      x = (x * 10.0 ** rng.integers(-20, 20, size)).astype(dtype)
      y = _complex(rng, (size,), dtype)
      x[:: max(size - 2, 1)] = x[:: max(size - 2, 1)].real  # Zero imag.
      x[1 :: max(size - 2, 1)] = 1j * x[1 :: max(size - 2, 1)].imag  # Zero re.
      tail = numerics.eigen_tail((size,), dtype)
      for name, (tf_op, ours_op) in ops.items():
        theirs = tf.function(tf_op)(tf.constant(x), tf.constant(y)).numpy()
        ours = jax.jit(
          lambda a, b, op=ours_op, tail=tail: op(
            numerics.EigenComplex.wrap(a, tail),
            numerics.EigenComplex.wrap(b, tail),
          ).value()
        )(x, y)
        assert_bitwise(ours, theirs, (name, size))


# Where TF raises.


@pytest.mark.parametrize(
  "option", [dict(clipvalue=1.0), dict(clipnorm=1.0), dict(global_clipnorm=1.0)]
)
def test_clipping_complex_raises_type_error_like_tf(option):
  import tf_reference

  var, grads = _problem(50, np.complex64, False, 1)
  with pytest.raises(TypeError):  # TF's clip ops have no complex kernels.
    tf_reference.run_tf([var], grads, learning_rate=0.01, **option)
  opt = ot.rmsprop(0.01, **option)
  params = jnp.asarray(var)
  state = opt.init(params)
  (name,) = option
  with pytest.raises(TypeError, match=name):
    opt.update(jnp.asarray(grads[0][0]), state)
  # Real leaves next to the complex one still clip.
  tree = {"c": params, "r": jnp.ones(3)}
  with pytest.raises(TypeError, match=r"\['c'\]"):
    opt.update(tree, opt.init(tree))
  real = {"r": jnp.ones(3)}
  opt.update(real, opt.init(real))


def test_keras3_sparse_complex_raises_type_error_like_keras3():
  import tf_reference

  var, grads = _problem(51, np.complex64, True, 1)
  with pytest.raises(TypeError):  # tf.math.is_nan has no complex kernel.
    tf_reference.run_keras3([var], grads, learning_rate=0.01)
  opt = ot.keras3_rmsprop(0.01)
  state = opt.init(jnp.asarray(var))
  with pytest.raises(TypeError, match="IndexedSlices"):
    opt.update(toolbox.to_jax(grads[0][0]), state)
  dense = toolbox.to_jax(grads[0][0]).to_dense()
  updates, _ = opt.update(dense, state)
  assert updates.dtype == jnp.complex64


def test_keras3_complex128_raises():
  """Keras 3 updates complex128 variables mostly in complex64: refused."""
  with jax.enable_x64(True):
    params = jnp.ones(4, jnp.complex128)
    opt = ot.keras3_rmsprop(0.01)
    state = opt.init(params)
    with pytest.raises(TypeError, match="complex128"):
      opt.update(params, state)
    small = params.astype(jnp.complex64)
    opt.update(small, opt.init(small))


def test_cpu_kernel_declines_complex():
  """``backend="ffi"`` names the dtype; ``"auto"`` runs complex on XLA."""
  params = {"c": jnp.ones(5, jnp.complex64), "r": jnp.ones(5)}
  grads = jax.tree.map(lambda p: p * 0.5, params)
  state = ot.rmsprop_init(params, momentum=0.5)
  with pytest.raises(ValueError, match=r"complex64.*backend='xla'"):
    ot.rmsprop_update(grads, state, momentum=0.5, backend="ffi")
  results = [
    ot.rmsprop_apply(params, grads, state, momentum=0.5, backend=backend)
    for backend in ("auto", "xla")
  ]
  jax.tree.map(
    lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
    *results,
  )


def test_low_level_functions_take_complex():
  """rmsprop_init/update/apply with complex leaves, fused == two-step."""
  with jax.enable_x64(True):
    params = {"a": jnp.ones(5, jnp.complex64), "b": jnp.ones(3, jnp.complex128)}
    grads = jax.tree.map(lambda p: (0.5 - 2j) * p, params)
    state = ot.rmsprop_init(params, centered=True, flavor="tf1")
    assert state.ms["a"].dtype == jnp.complex64 and state.ms["a"][0] == 1
    kwargs = dict(learning_rate=0.1, momentum=0.5, flavor="tf1")
    updates, s1 = jax.jit(functools.partial(ot.rmsprop_update, **kwargs))(
      grads, state
    )
    new, s2 = jax.jit(functools.partial(ot.rmsprop_apply, **kwargs))(
      params, grads, state
    )
    expected = ot.apply_updates(params, updates)
    for leaf in ("a", "b"):
      assert_bitwise(new[leaf], expected[leaf], leaf)
      assert_bitwise(s1.mom[leaf], s2.mom[leaf], leaf)


def test_integer_params_still_raise():
  with pytest.raises(TypeError, match="complex64 and complex128"):
    ot.rmsprop_init({"n": jnp.ones(3, jnp.int32)})
