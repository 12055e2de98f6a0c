"""The generic optax contract, for each of the three aliases.

``rmsprop``, ``tf1_rmsprop`` and ``keras3_rmsprop`` are each an
``optax.GradientTransformationExtraArgs``; whatever an optax user may do with
one (extra arguments, ``inject_hyperparams``, ``MultiSteps``, abstract
``init`` under ``jax.eval_shape``, ``jit``, ``vmap``, sharded params, mixed
dtypes) must work with all three and change nothing in the numbers. Each
property is checked for every alias, over the options of the dense paths
P1-P4 where the state's layout depends on them.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_tfrmsprop as ot
import toolbox
from toolbox import DENSE_PATHS

ALIASES = {
  "rmsprop": ot.rmsprop,
  "tf1_rmsprop": ot.tf1_rmsprop,
  "keras3_rmsprop": ot.keras3_rmsprop,
}
# Arguments that select the path, or that Keras 3 reads from a Python number,
# stay static under inject_hyperparams (docs/porting.md).
STATIC_ARGS = {
  "rmsprop": ("momentum", "centered"),
  "tf1_rmsprop": ("centered",),
  "keras3_rmsprop": ("momentum", "centered", "rho"),
}
PARAMS = {
  "w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4),
  "b": jnp.ones(4),
  "s": jnp.asarray(2.0),
}


def _grads(params, seed=0):
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return treedef.unflatten(
    [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
  )


def _make(alias, path, **kwargs):
  return ALIASES[alias](learning_rate=0.01, **toolbox.options(path), **kwargs)


def _steps(opt, params, n=3, **extra_args):
  """``n`` jitted steps from ``params``; returns (updates, params, state)."""
  state = opt.init(params)
  update = jax.jit(opt.update)
  updates = None
  for t in range(n):
    updates, state = update(_grads(params, t), state, params, **extra_args)
    params = optax.apply_updates(params, updates)
  return updates, params, state


aliases = pytest.mark.parametrize("alias", ALIASES)
paths = pytest.mark.parametrize("path", DENSE_PATHS)


@aliases
def test_is_a_gradient_transformation_with_extra_args(alias):
  opt = _make(alias, "P4")
  assert isinstance(opt, optax.GradientTransformationExtraArgs)
  plain = _steps(opt, PARAMS)
  with_extra = _steps(opt, PARAMS, loss=jnp.float32(3.0), value=None)
  toolbox.assert_bitwise(with_extra, plain)
  # And inside a chain, which forwards extra arguments to each member.
  chained = _steps(optax.chain(optax.identity(), opt), PARAMS, loss=1.0)
  toolbox.assert_bitwise(chained[:2], plain[:2])


@aliases
@paths
def test_inject_hyperparams_equals_plain_and_does_not_retrace(alias, path):
  plain = _make(alias, path)
  injected = optax.inject_hyperparams(
    ALIASES[alias], static_args=STATIC_ARGS[alias]
  )(learning_rate=0.01, **toolbox.options(path))
  grads = _grads(PARAMS)
  expected, expected_state = plain.update(grads, plain.init(PARAMS), PARAMS)

  traces = []

  @jax.jit
  def step(state):
    traces.append(None)
    return injected.update(grads, state, PARAMS)

  updates, state = step(injected.init(PARAMS))
  toolbox.assert_bitwise(updates, expected)
  toolbox.assert_bitwise(state.inner_state, expected_state)
  state.hyperparams["learning_rate"] = jnp.asarray(0.5, jnp.float32)
  updates, _ = step(state)
  assert not np.allclose(
    jax.tree.leaves(updates)[0], jax.tree.leaves(expected)[0]
  )
  assert len(traces) == 1


@aliases
@paths
def test_preserves_dtypes(alias, path, x64):
  del x64
  params = {
    "f64": jnp.ones(3, jnp.float64),
    "f32": jnp.ones(3, jnp.float32),
    "bf16": jnp.ones((2, 2), jnp.bfloat16),
    "f16": jnp.ones((), jnp.float16),
  }
  opt = _make(alias, path)
  updates, new_params, state = _steps(opt, params)
  chex.assert_trees_all_equal_dtypes(updates, params)
  chex.assert_trees_all_equal_dtypes(new_params, params)
  for slot in (state.ms, state.mg, state.mom):
    if slot is not None:
      chex.assert_trees_all_equal_shapes_and_dtypes(slot, params)
  assert state.count.dtype == jnp.int32


@aliases
@paths
def test_abstract_init_matches_init(alias, path):
  opt = _make(alias, path)
  abstract = jax.eval_shape(opt.init, PARAMS)
  concrete = opt.init(PARAMS)
  assert type(abstract) is type(concrete)
  chex.assert_trees_all_equal_shapes_and_dtypes(abstract, concrete)
  # From abstract params too: what a checkpoint restore target needs.
  from_abstract = jax.eval_shape(
    opt.init,
    jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), PARAMS),
  )
  chex.assert_trees_all_equal_shapes_and_dtypes(from_abstract, concrete)


@aliases
@paths
def test_jit_and_vmap_equal_eager(alias, path):
  opt = _make(alias, path)
  grads = _grads(PARAMS)
  state = opt.init(PARAMS)
  eager = opt.update(grads, state, PARAMS)
  toolbox.assert_bitwise(jax.jit(opt.update)(grads, state, PARAMS), eager)
  # A batch of 3 independent problems, against a loop over it.
  batch = jax.tree.map(lambda x: jnp.stack([x, 2 * x, -x]), PARAMS)
  batch_grads = jax.tree.map(lambda x: jnp.stack([x, x / 3, 5 * x]), grads)
  batch_state = jax.vmap(opt.init)(batch)
  batched = jax.jit(jax.vmap(opt.update))(batch_grads, batch_state, batch)
  for i in range(3):
    at = lambda tree, i=i: jax.tree.map(lambda x: x[i], tree)
    toolbox.assert_bitwise(
      at(batched), opt.update(at(batch_grads), at(batch_state), at(batch))
    )


@aliases
def test_multi_steps_accumulates_then_applies(alias):
  opt = _make(alias, "P4")
  multi = optax.MultiSteps(opt, every_k_schedule=2)
  grads = _grads(PARAMS)
  state = multi.init(PARAMS)
  first, state = multi.update(grads, state, PARAMS)
  chex.assert_trees_all_equal(first, jax.tree.map(jnp.zeros_like, PARAMS))
  second, state = multi.update(grads, state, PARAMS)
  expected, expected_state = opt.update(grads, opt.init(PARAMS), PARAMS)
  toolbox.assert_bitwise(second, expected)  # the mean of equal gradients
  toolbox.assert_bitwise(state.inner_opt_state, expected_state)


@aliases
@pytest.mark.parametrize("path", ["P1", "P4"])
def test_sharded_params_keep_their_sharding(alias, path):
  mesh = jax.make_mesh((4, 2), ("x", "y"))
  spec = {"w": jax.P(None, "y"), "b": jax.P("x"), "s": jax.P()}
  shardings = jax.tree.map(lambda s: jax.NamedSharding(mesh, s), spec)
  params = jax.device_put(
    {"w": jnp.ones((3, 4)), "b": jnp.arange(8.0), "s": jnp.asarray(1.0)},
    shardings,
  )
  opt = _make(alias, path)
  updates, new_params, state = _steps(opt, params)

  def same(x, sharding):
    assert x.sharding.is_equivalent_to(sharding, x.ndim), (x.sharding, sharding)

  jax.tree.map(same, updates, shardings)
  jax.tree.map(same, new_params, shardings)
  for slot in (state.ms, state.mg, state.mom):
    if slot is not None:
      jax.tree.map(same, slot, shardings)
  # The same numbers as unsharded.
  toolbox.assert_bitwise(
    (updates, new_params),
    _steps(opt, jax.tree.map(np.asarray, params))[:2],
  )
