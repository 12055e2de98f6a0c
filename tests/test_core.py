"""The functional core as an optax citizen: trees, composition, errors."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_tfrmsprop
from optax_tfrmsprop import RMSpropState

PARAMS = {
  "w": jnp.ones((3, 2)),
  "b": jnp.zeros((2,)),
  "s": jnp.asarray(2.0),
  "empty": jnp.zeros((0, 4)),
}


def grads_like(params, seed=0):
  keys = jax.random.split(jax.random.key(seed), len(jax.tree.leaves(params)))
  leaves, treedef = jax.tree.flatten(params)
  return treedef.unflatten(
    [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
  )


@pytest.mark.parametrize(
  "momentum,centered", [(0.0, False), (0.0, True), (0.9, False), (0.9, True)]
)
def test_state_layout(momentum, centered):
  opt = optax_tfrmsprop.rmsprop(momentum=momentum, centered=centered)
  state = opt.init(PARAMS)
  assert isinstance(state, RMSpropState)
  assert state.count.dtype == jnp.int32 and state.count.shape == ()
  chex.assert_trees_all_equal_shapes_and_dtypes(state.ms, PARAMS)
  assert (state.mg is not None) == centered
  assert (state.mom is not None) == (momentum > 0)
  updates, new_state = jax.jit(opt.update)(grads_like(PARAMS), state)
  chex.assert_trees_all_equal_shapes_and_dtypes(updates, PARAMS)
  chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)
  chex.assert_tree_all_finite(new_state)
  assert int(new_state.count) == 1


def test_functional_api_equals_transformation():
  grads = grads_like(PARAMS)
  state = optax_tfrmsprop.rmsprop_init(PARAMS, centered=True, use_momentum=True)
  updates, state = optax_tfrmsprop.rmsprop_update(
    grads, state, learning_rate=0.01, momentum=0.5
  )
  opt = optax_tfrmsprop.rmsprop(0.01, momentum=0.5, centered=True)
  expected_updates, expected_state = opt.update(grads, opt.init(PARAMS))
  chex.assert_trees_all_equal(updates, expected_updates)
  chex.assert_trees_all_equal(state, expected_state)


def test_none_leaves_and_masked_nodes():
  params = {"a": jnp.ones(3), "frozen": None}
  opt = optax_tfrmsprop.rmsprop(0.1, momentum=0.9)
  state = opt.init(params)
  assert state.ms["frozen"] is None
  updates, _ = opt.update({"a": jnp.ones(3), "frozen": None}, state)
  assert updates["frozen"] is None

  masked = optax.masked(opt, {"w": True, "b": False, "s": True, "empty": True})
  state = masked.init(PARAMS)
  updates, state = jax.jit(masked.update)(grads_like(PARAMS), state, PARAMS)
  assert isinstance(state.inner_state.ms["b"], optax.MaskedNode)
  np.testing.assert_array_equal(updates["b"], grads_like(PARAMS)["b"])


def test_chain_multisteps_and_apply_if_finite():
  grads = grads_like(PARAMS)
  base = optax_tfrmsprop.rmsprop(0.01, momentum=0.9)
  chained = optax.chain(optax.scale(1.0), base)
  u_chain, _ = chained.update(grads, chained.init(PARAMS))
  u_base, _ = base.update(grads, base.init(PARAMS))
  chex.assert_trees_all_equal(u_chain, u_base)

  multi = optax.MultiSteps(base, every_k_schedule=2)
  state = multi.init(PARAMS)
  u1, state = multi.update(grads, state, PARAMS)
  chex.assert_trees_all_equal(u1, jax.tree.map(jnp.zeros_like, PARAMS))
  u2, state = multi.update(grads, state, PARAMS)
  chex.assert_trees_all_equal(u2, u_base)  # The mean of two equal gradients.

  guarded = optax.apply_if_finite(base, max_consecutive_errors=3)
  state = guarded.init(PARAMS)
  bad = jax.tree.map(lambda g: g * jnp.nan, grads)
  updates, state = guarded.update(bad, state, PARAMS)
  assert int(state.inner_state.count) == 0
  chex.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like, PARAMS))


def test_inject_hyperparams_matches_and_does_not_retrace():
  grads = grads_like(PARAMS)
  injected = optax.inject_hyperparams(optax_tfrmsprop.rmsprop)(
    learning_rate=0.01, momentum=0.9, centered=True
  )
  plain = optax_tfrmsprop.rmsprop(0.01, momentum=0.9, centered=True)
  state = injected.init(PARAMS)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(state, grads):
    return injected.update(grads, state, PARAMS)

  updates, state = step(state, grads)
  expected, _ = plain.update(grads, plain.init(PARAMS))
  chex.assert_trees_all_equal(updates, expected)
  state.hyperparams["learning_rate"] = jnp.asarray(0.5, jnp.float32)
  updates, state = step(state, grads)
  assert not np.allclose(updates["w"], expected["w"])


def test_inject_hyperparams_static_momentum_keeps_plain_path():
  make = optax.inject_hyperparams(
    optax_tfrmsprop.rmsprop, static_args=("momentum",)
  )
  assert make(0.01, momentum=0.0).init(PARAMS).inner_state.mom is None
  # Without static_args the injected momentum is an array: TF's kernel path.
  injected = optax.inject_hyperparams(optax_tfrmsprop.rmsprop)(0.01)
  assert injected.init(PARAMS).inner_state.mom is not None


def test_hyperparameters_follow_leaf_dtype():
  params = {
    "f32": jnp.ones(4, jnp.float32),
    "bf16": jnp.ones(4, jnp.bfloat16),
    "f16": jnp.ones(4, jnp.float16),
  }
  opt = optax_tfrmsprop.rmsprop(0.1, momentum=0.9, centered=True)
  state = opt.init(params)
  updates, state = jax.jit(opt.update)(params, state)
  chex.assert_trees_all_equal_dtypes(updates, params)
  chex.assert_trees_all_equal_dtypes(state.ms, params)
  chex.assert_trees_all_equal_dtypes(state.mom, params)


@pytest.mark.parametrize(
  "kwargs,name",
  [
    ({"learning_rate": -0.1}, "learning_rate"),
    ({"rho": 1.5}, "rho"),
    ({"rho": -0.1}, "rho"),
    ({"momentum": 1.5}, "momentum"),
    ({"momentum": -0.5}, "momentum"),
    ({"epsilon": -1e-7}, "epsilon"),
    ({"decay": -1.0}, "decay"),
    ({"clipnorm": 0.0}, "clipnorm"),
    ({"clipvalue": -1.0}, "clipvalue"),
    ({"global_clipnorm": 0.0}, "global_clipnorm"),
    ({"clipnorm": 1.0, "global_clipnorm": 1.0}, "global_clipnorm"),
    ({"rho": jnp.ones(2)}, "rho"),
    ({"rounding": "fast"}, "rounding"),
  ],
)
def test_invalid_hyperparameters_name_the_argument(kwargs, name):
  with pytest.raises(ValueError, match=name):
    optax_tfrmsprop.rmsprop(**kwargs)


def test_grads_not_matching_state_raise_clearly_and_leave_state():
  opt = optax_tfrmsprop.rmsprop(0.1)
  state = opt.init(PARAMS)
  before = jax.tree.map(np.asarray, state)
  with pytest.raises(ValueError, match="gradient tree does not match"):
    opt.update({"w": jnp.ones((3, 2))}, state)
  bad = dict(grads_like(PARAMS), w=jnp.ones((2, 3)))
  with pytest.raises(ValueError, match=r"\['w'\] has shape \(2, 3\)"):
    opt.update(bad, state)
  bad = dict(grads_like(PARAMS), b=jnp.ones((2,), jnp.float16))
  with pytest.raises(ValueError, match=r"\['b'\].*float16"):
    opt.update(bad, state)
  chex.assert_trees_all_equal(jax.tree.map(np.asarray, state), before)


def test_epsilon_zero_is_keras_default():
  grads = grads_like(PARAMS)
  zero = optax_tfrmsprop.rmsprop(0.1, epsilon=0.0)
  default = optax_tfrmsprop.rmsprop(0.1, epsilon=1e-7)
  chex.assert_trees_all_equal(
    zero.update(grads, zero.init(PARAMS))[0],
    default.update(grads, default.init(PARAMS))[0],
  )


def test_count_saturates():
  opt = optax_tfrmsprop.rmsprop(0.1)
  state = opt.init(PARAMS).replace(count=jnp.asarray(2**31 - 1, jnp.int32))
  _, state = opt.update(grads_like(PARAMS), state)
  assert int(state.count) == 2**31 - 1


def test_ulp_distance():
  a = np.array([1.0, -0.0, np.nan, 1.0], np.float32)
  b = np.array(
    [np.nextafter(np.float32(1), np.float32(2)), 0.0, np.nan, -1.0], np.float32
  )
  np.testing.assert_array_equal(
    optax_tfrmsprop.ulp_distance(a, b), [1, 0, 0, 2 * 0x3F800000]
  )


def test_inject_hyperparams_float32_reproduces_keras_hyper_variables(x64):
  """Keras keeps lr/rho/momentum in float32 variables, even for f64 params.

  ``hyperparam_dtype=jnp.float32`` reproduces that; epsilon, which Keras casts
  from the Python float directly, stays exact as a static argument.
  """
  del x64
  params = {"w": jnp.linspace(-1.0, 1.0, 7, dtype=jnp.float64)}
  grads = {"w": jnp.linspace(0.3, -2.0, 7, dtype=jnp.float64)}
  expected, _ = optax_tfrmsprop.rmsprop(0.1, rho=0.8, momentum=0.3).update(
    grads, optax_tfrmsprop.rmsprop_init(params, use_momentum=True)
  )

  def injected_update(**inject_kwargs):
    opt = optax.inject_hyperparams(
      optax_tfrmsprop.rmsprop, static_args=("epsilon",), **inject_kwargs
    )(0.1, rho=0.8, momentum=0.3)
    return opt.update(grads, opt.init(params), params)[0]["w"]

  np.testing.assert_array_equal(
    injected_update(hyperparam_dtype=jnp.float32), expected["w"]
  )
  assert not np.array_equal(injected_update(), expected["w"])
