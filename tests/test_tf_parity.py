"""Differential tests of the dense paths against tf_keras' legacy RMSprop."""

import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest

import optax_tfrmsprop
import tf_reference
import toolbox
from toolbox import DENSE_PATHS

pytestmark = pytest.mark.usefixtures(
  "both_backends"
)  # TF tests on both backends.

DTYPES = {
  "float32": np.float32,
  "float64": np.float64,
  "float16": np.float16,
  "bfloat16": ml_dtypes.bfloat16,
}


def run_jax(variables, grads, **config):
  """Runs ``rmsprop(**config)`` jitted over the gradient steps."""
  return toolbox.run(optax_tfrmsprop.rmsprop(**config), variables, grads)


def check_against_tf(
  config, dtype, steps, *, seed=0, jit_compile=False, shapes=toolbox.SHAPES
):
  """0 ULP on the variables and every slot after ``steps`` steps."""
  variables, grads = toolbox.problem(seed, dtype, steps, shapes)
  tf_vars, tf_slots, tf_iterations = tf_reference.run_tf(
    variables, grads, jit_compile=jit_compile, **config
  )
  rounding = "tf_xla" if jit_compile else "tf_cpu"
  params, state = run_jax(variables, grads, rounding=rounding, **config)
  assert int(state.count) == tf_iterations == steps
  toolbox.assert_same_as_tf(params, state, tf_vars, tf_slots)


@pytest.mark.parametrize("path", DENSE_PATHS)
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_bit_identical_to_tf_cpu(path, dtype):
  """200 jitted steps, 0 ULP on var and every slot (TF in tf.function)."""
  check_against_tf(toolbox.options(path), DTYPES[dtype], steps=200)


@pytest.mark.parametrize("fused", [False, True], ids=["api", "fused"])
@pytest.mark.parametrize("path", DENSE_PATHS)
def test_bfloat16_special_values_bit_identical(path, fused):
  """bfloat16 (the kernel's Eigen arithmetic on ffi) with every special value.

  Zeros, subnormals, 1e30, infinities and NaN among the gradients; a leaf
  with a minor dimension below 8 makes P1's optax update take the kernel too.
  """
  shapes = ((), (37,), (8, 16), (5, 3))
  variables, grads = toolbox.problem(
    4, ml_dtypes.bfloat16, 30, shapes, specials=toolbox.SPECIALS
  )
  config = toolbox.options(path)
  tf_vars, tf_slots, _ = tf_reference.run_tf(variables, grads, **config)
  centered = config.pop("centered", False)
  opt = optax_tfrmsprop.rmsprop(centered=centered, **config)
  params, state = toolbox.run(
    opt, variables, grads, fused=dict(config) if fused else None
  )
  toolbox.assert_same_as_tf(params, state, tf_vars, tf_slots)


@pytest.mark.parametrize("path", DENSE_PATHS)
def test_bit_identical_to_tf_cpu_float64(path, x64):
  del x64
  check_against_tf(toolbox.options(path), np.float64, steps=200)


@pytest.mark.parametrize("path", DENSE_PATHS)
def test_xla_rounding_matches_tf_jit_compile(path):
  """``rounding="tf_xla"`` against TF's ``jit_compile=True``, float32."""
  check_against_tf(
    toolbox.options(path), np.float32, steps=200, jit_compile=True
  )


@pytest.mark.parametrize(
  "extra",
  [
    {"learning_rate": 0.01, "decay": 0.01},
    {"learning_rate": 0.05, "rho": 0.5, "epsilon": 0.0},
    {"learning_rate": 0.02, "rho": 0.99, "epsilon": 1e-3},
    {"clipvalue": 0.5},
  ],
  ids=["decay", "epsilon_zero", "rho_eps", "clipvalue"],
)
@pytest.mark.parametrize("path", DENSE_PATHS)
def test_hyperparameters_bit_identical(path, extra):
  check_against_tf({**toolbox.options(path), **extra}, np.float32, steps=100)


@pytest.mark.parametrize("path", ["P1", "P4"])
def test_decay_float64_hypers_through_float32(path, x64):
  del x64
  check_against_tf(
    {**toolbox.options(path), "learning_rate": 0.1, "decay": 0.3, "rho": 0.8},
    np.float64,
    steps=50,
  )


def test_schedule_sees_iterations_before_increment():
  """A schedule gets TF's ``iterations`` (0 on the first step) in var dtype."""
  tf_keras = pytest.importorskip("tf_keras")
  keras_schedule = tf_keras.optimizers.schedules.PiecewiseConstantDecay(
    [3, 7], [0.1, 0.01, 0.001]
  )

  def schedule(step):  # The same rule as Keras': values[j] for b[j-1] < step.
    return jnp.where(step <= 3, 0.1, jnp.where(step <= 7, 0.01, 0.001))

  variables, grads = toolbox.problem(3, np.float32, 12)
  tf_vars, _, _ = tf_reference.run_tf(
    variables, grads, learning_rate=keras_schedule, momentum=0.5
  )
  params, _ = run_jax(variables, grads, learning_rate=schedule, momentum=0.5)
  toolbox.assert_ulp(params, tf_vars)


@pytest.mark.parametrize(
  "clip",
  [
    {"clipnorm": 1.0},
    {"global_clipnorm": 1.0},
    {"clipnorm": 1e6},
    {"global_clipnorm": 1e6},
    {"global_clipnorm": 41.0},
    {"clipvalue": 0.1, "clipnorm": 2.0},
    {"clipnorm": 3.0, "momentum": 0.9, "centered": True},
  ],
  ids=[
    "clipnorm",
    "global_clipnorm",
    "clipnorm_inactive",
    "global_inactive",
    "global_41",
    "clipvalue_then_clipnorm",
    "clipnorm_momentum_centered",
  ],
)
def test_norm_clipping_bit_identical(clip):
  """Norms are summed in Eigen's order, so clipping is bitwise TF's.

  The (300, 70) leaf spans three Eigen leaves of the summation tree.
  """
  check_against_tf(
    clip, np.float32, steps=60, shapes=[(), (0,), (37,), (8, 16), (300, 70)]
  )


@pytest.mark.parametrize("clip", [{"clipnorm": 0.5}, {"global_clipnorm": 2.0}])
def test_norm_clipping_float64_bit_identical(clip, x64):
  del x64
  check_against_tf(clip, np.float64, steps=30, shapes=[(7,), (129, 65)])


@pytest.mark.slow
def test_clipnorm_large_tensor_bit_identical():
  """A 1M-element gradient: a deep Eigen summation tree."""
  check_against_tf(
    {"clipnorm": 100.0, "momentum": 0.5},
    np.float32,
    steps=5,
    shapes=[(1000, 1000)],
  )


@hypothesis.settings(
  max_examples=12,
  deadline=None,
  derandomize=True,
  suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture],
)
@hypothesis.given(
  path=st.sampled_from(DENSE_PATHS),
  learning_rate=st.sampled_from([1e-4, 1e-3, 0.01, 0.3]),
  rho=st.sampled_from([0.0, 0.5, 0.9, 0.999, 1.0]),
  momentum=st.sampled_from([0.1, 0.5, 0.99, 1.0]),
  epsilon=st.sampled_from([0.0, 1e-10, 1e-7, 1e-3, 1.0]),
  decay=st.sampled_from([0.0, 1e-3, 0.5]),
  shape=st.sampled_from([(5,), (3, 4), (2, 3, 17), (129,)]),
  seed=st.integers(0, 2**16),
)
def test_random_configurations_bit_identical(
  path, learning_rate, rho, momentum, epsilon, decay, shape, seed
):
  config = dict(
    toolbox.options(path),
    learning_rate=learning_rate,
    rho=rho,
    epsilon=epsilon,
    decay=decay,
  )
  if toolbox.PATHS[path].momentum:
    config["momentum"] = momentum
  check_against_tf(config, np.float32, steps=20, seed=seed, shapes=[shape])


def test_mixed_dtype_tree_casts_hyperparameters_per_leaf():
  """One optimizer over float32 and bfloat16 variables, as in TF."""
  rng = np.random.default_rng(9)
  shapes = [(16,), (4, 4)]
  dtypes = [np.float32, ml_dtypes.bfloat16]
  variables = [rng.standard_normal(s).astype(d) for s, d in zip(shapes, dtypes)]
  grads = [
    [rng.standard_normal(s).astype(d) for s, d in zip(shapes, dtypes)]
    for _ in range(30)
  ]
  for path in DENSE_PATHS:
    config = toolbox.options(path, learning_rate=0.01, decay=0.1)
    tf_vars, _, _ = tf_reference.run_tf(variables, grads, **config)
    params, _ = run_jax(variables, grads, **config)
    toolbox.assert_ulp(params, tf_vars, context=config)


def test_seed_docstring_example():
  """Lr 0.1 on x**2/2 from 10.0 gives 9.683772 after one step, count 1."""
  opt = optax_tfrmsprop.rmsprop(learning_rate=0.1)
  params = jnp.array(10.0)
  state = opt.init(params)
  updates, state = opt.update(jax.grad(lambda x: x**2 / 2)(params), state)
  assert np.float32(optax.apply_updates(params, updates)) == np.float32(
    9.683772
  )
  assert int(state.count) == 1


def test_array_momentum_zero_takes_kernel_path_like_tf():
  """momentum=tensor(0.) takes TF's kernel path: epsilon inside the sqrt."""
  tf = pytest.importorskip("tensorflow")
  variables, grads = toolbox.problem(11, np.float32, 20)
  tf_vars, tf_slots, _ = tf_reference.run_tf(
    variables, grads, momentum=tf.constant(0.0)
  )
  params, state = run_jax(variables, grads, momentum=jnp.asarray(0.0))
  assert state.mom is not None and "momentum" in tf_slots
  toolbox.assert_ulp(params, tf_vars)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_eigen_sum_matches_tf_reduce_sum(dtype, x64):
  """The summation order behind the norms, against ``tf.reduce_sum``."""
  del x64
  tf = pytest.importorskip("tensorflow")
  from optax_tfrmsprop._src import numerics

  reduce_sum = tf.function(tf.reduce_sum)
  eigen_sum = jax.jit(numerics.eigen_sum)
  rng = np.random.default_rng(4)
  # Below Eigen's cost-model split (about 130K float64 elements), TF sums on
  # one thread on any machine; larger sizes are checked against TF set to one
  # intra-op thread in test_eigen_sum_program.py.
  for n in [0, 1, 7, 8, 31, 33, 100, 4097, 8193, 50_000, 100_000]:
    x = (3 * rng.standard_normal(n)).astype(dtype) ** 2
    assert np.asarray(eigen_sum(x)) == reduce_sum(x).numpy(), n


@pytest.mark.filterwarnings(
  "ignore:optax_tfrmsprop.*not donated:RuntimeWarning"
)
@pytest.mark.parametrize("backend", toolbox.backend_params)
@pytest.mark.parametrize("path", ["P2", "P3", "P4"])
def test_signed_zero_gradients_with_init_in_the_same_jit(path, backend):
  """Zero slots made in the step's own jit stay variables: +0, as TF's.

  XLA folded ``0 + x`` to ``x``, so a -0 gradient left -0 in ``mg`` and
  ``mom`` where TF has +0 (found by a hostile tester).
  """
  params = np.array([-1.0, -0.5, 0.5, 1.0], np.float32)
  grads = np.array([-0.0, 0.3, -0.0, 0.0], np.float32)
  options = toolbox.options(path)
  tf_vars, tf_slots, _ = tf_reference.run_tf(
    [params], [[grads]], learning_rate=0.01, **options
  )
  config = {k: v for k, v in options.items() if k != "centered"}

  def first_step(p, g):
    state = optax_tfrmsprop.rmsprop_init(p, **options)
    return optax_tfrmsprop.rmsprop_apply(
      p, g, state, learning_rate=0.01, backend=backend, **config
    )

  new_params, state = jax.jit(first_step)(params, grads)
  toolbox.assert_bitwise(new_params, jnp.asarray(tf_vars[0]))
  for field, slot in (("mg", "mg"), ("mom", "momentum")):
    if getattr(state, field) is not None:
      toolbox.assert_bitwise(
        getattr(state, field), jnp.asarray(tf_slots[slot][0])
      )
