"""vmap through the CPU kernel equals a Python loop over the batch, bitwise.

Issue 12, item 12: ``jax.vmap(rmsprop(0.01, momentum=0.9).update)`` raised
``NotImplementedError: Batching rule for 'custom_partitioning'``. The dense
call now batches as one kernel call on the batched leaves (the update is
elementwise) or, with batched hyperparameters, as a loop of calls; the sparse
call as a loop of calls. Every path through the kernel (dense P1-P4 fused,
P3/P4 through the optax API, sparse P7/P8 both ways) is checked against a
loop of unbatched steps, and the batched program must contain the kernel.
"""

import operator

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_tfrmsprop
from optax_tfrmsprop._src import cpu_kernel
import toolbox
from toolbox import PATHS

pytestmark = toolbox.needs_kernel

BATCH = 3
# A schedule of the (batched) step count makes the hyperparameters batched.
LEARNING_RATES = {
  "shared_hypers": 0.01,
  "batched_hypers": optax.exponential_decay(0.1, 1, 0.5),
}


def _assert_bitwise(batched, loop):
  toolbox.assert_bitwise(
    batched, jax.tree.map(lambda *xs: jnp.stack(xs), *loop)
  )


def _at(tree, index):
  """Every leaf of ``tree`` indexed by ``index``."""
  return jax.tree.map(operator.itemgetter(index), tree)


def _check(step, args, in_axes, target):
  """``vmap(step)`` against a loop over the batched arguments."""
  batched_step = jax.jit(jax.vmap(step, in_axes=in_axes))
  assert target in batched_step.lower(*args).as_text()
  batched = batched_step(*args)
  unbatched = jax.jit(step)
  take = lambda i: [
    a if axis is None else _at(a, i) for a, axis in zip(args, in_axes)
  ]
  _assert_bitwise(batched, [unbatched(*take(i)) for i in range(BATCH)])


def _tree(rng, dtype, batch=(BATCH,)):
  return {
    "w": jnp.asarray(rng.normal(size=(*batch, 37, 19)), dtype),
    "b": jnp.asarray(rng.normal(size=(*batch, 19)), dtype),
  }


def test_the_reported_example():
  opt = optax_tfrmsprop.rmsprop(0.01, momentum=0.9)
  params = jnp.arange(12.0).reshape(BATCH, 4)
  state = jax.vmap(opt.init)(params)
  updates, new_state = jax.vmap(opt.update)(params, state)
  loop = [opt.update(params[i], _at(state, i)) for i in range(BATCH)]
  _assert_bitwise((updates, new_state), loop)


# Every dense path through the kernel (opt.update on P1/P2 takes the XLA
# path), float32 with shared and batched hyperparameters, float64 with shared.
DENSE_CASES = [
  pytest.param(path, fused, lr, dtype, id=f"{path}-{mode}-{lr}-{dtype}")
  for path in toolbox.DENSE_PATHS
  for fused, mode in ((False, "optax"), (True, "fused"))
  if fused or PATHS[path].momentum
  for lr, dtype in (
    ("shared_hypers", "float32"),
    ("batched_hypers", "float32"),
    ("shared_hypers", "float64"),
  )
]


@pytest.mark.parametrize("path, fused, lr, dtype", DENSE_CASES)
def test_dense_paths(x64, path, fused, lr, dtype):
  del x64
  rng = np.random.default_rng(0)
  params, grads = _tree(rng, dtype), _tree(rng, dtype)
  config = dict(learning_rate=LEARNING_RATES[lr], **PATHS[path].options)
  opt = optax_tfrmsprop.rmsprop(**config, backend="ffi")
  state = jax.vmap(opt.init)(params)
  # Different counts per batch element: batched hyperparameters under a
  # schedule.
  state = state.replace(count=jnp.arange(BATCH, dtype=jnp.int32))
  if fused:
    del config["centered"]
    step = lambda p, s, g: optax_tfrmsprop.rmsprop_apply(
      p, g, s, **config, backend="ffi"
    )
  else:

    def step(p, s, g):
      updates, s = opt.update(g, s, p)
      return optax.apply_updates(p, updates), s

  _check(step, (params, state, grads), (0, 0, 0), cpu_kernel.DENSE_TARGET)


@pytest.mark.parametrize("fused", [False, True], ids=["optax", "fused"])
def test_dense_unbatched_state_and_params(fused):
  """Only the gradients batched: the shared leaves are broadcast."""
  rng = np.random.default_rng(1)
  params = _tree(rng, jnp.float32, batch=())
  grads = _tree(rng, jnp.float32)
  opt = optax_tfrmsprop.rmsprop(
    0.01, momentum=0.9, centered=True, backend="ffi"
  )
  if fused:
    step = lambda p, s, g: optax_tfrmsprop.rmsprop_apply(
      p, g, s, learning_rate=0.01, momentum=0.9, backend="ffi"
    )
  else:
    step = lambda p, s, g: opt.update(g, s, p)
  _check(
    step,
    (params, opt.init(params), grads),
    (None, None, 0),
    cpu_kernel.DENSE_TARGET,
  )


def test_nested_vmap():
  rng = np.random.default_rng(2)
  params = jnp.asarray(rng.normal(size=(2, BATCH, 10)), jnp.float32)
  opt = optax_tfrmsprop.rmsprop(0.01, momentum=0.9, backend="ffi")
  state = jax.vmap(jax.vmap(opt.init))(params)
  nested = jax.jit(jax.vmap(jax.vmap(opt.update)))
  assert cpu_kernel.DENSE_TARGET in nested.lower(params, state).as_text()
  out = nested(params, state)
  for i in range(2):
    _assert_bitwise(
      _at(out, i),
      [opt.update(params[i, j], _at(state, (i, j))) for j in range(BATCH)],
    )


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("fused", [False, True], ids=["optax", "fused"])
@pytest.mark.parametrize("centered", [False, True], ids=["P7", "P8"])
def test_sparse_paths(x64, centered, fused, dtype):
  del x64
  if not cpu_kernel.handles_sparse(dtype):
    pytest.skip(f"no sparse kernel for {dtype} on this CPU")
  rng = np.random.default_rng(3)
  shape = (50, 16)
  table = jnp.asarray(rng.normal(size=(BATCH, *shape)), dtype)
  # Duplicates and an out-of-range index (dropped) in every batch element.
  indices = jnp.asarray(
    np.concatenate(
      [
        rng.integers(0, 50, size=(BATCH, 6)),
        np.full((BATCH, 1), 3),
        np.full((BATCH, 1), 50),
      ],
      axis=1,
    )
  )
  values = jnp.asarray(rng.normal(size=(BATCH, 8, 16)), dtype)
  opt = optax_tfrmsprop.rmsprop(
    0.01, momentum=0.9, centered=centered, backend="ffi"
  )

  def step(p, s, v, i):
    g = optax_tfrmsprop.IndexedSlices(v, i, shape)
    if fused:
      return optax_tfrmsprop.rmsprop_apply(
        p, g, s, learning_rate=0.01, momentum=0.9, backend="ffi"
      )
    updates, s = opt.update(g, s, p)
    return optax_tfrmsprop.apply_updates(p, updates), s

  state = jax.vmap(opt.init)(table)
  _check(
    step,
    (table, state, values, indices),
    (0, 0, 0, 0),
    cpu_kernel.SPARSE_TARGET,
  )


def test_sharded_batch_runs_shard_by_shard():
  """Vmap over sharded params: each device updates its own block."""
  mesh = jax.make_mesh(
    (4, 2), ("x", "y"), axis_types=(jax.sharding.AxisType.Auto,) * 2
  )
  sharding = jax.NamedSharding(mesh, jax.P(None, "x", "y"))
  rng = np.random.default_rng(4)
  params = jax.device_put(
    jnp.asarray(rng.normal(size=(BATCH, 64, 32)), jnp.float32), sharding
  )
  opt = optax_tfrmsprop.rmsprop(
    0.01, momentum=0.9, centered=True, backend="ffi"
  )
  state = opt.init(params).replace(count=jnp.zeros(BATCH, jnp.int32))
  step = lambda p, s: opt.update(p, s, p)
  batched = jax.jit(jax.vmap(step))
  hlo = batched.lower(params, state).compile().as_text()
  assert cpu_kernel.DENSE_TARGET in hlo and "all-gather" not in hlo
  assert f"f32[{BATCH},16,16]" in hlo  # One block per device.
  updates, new_state = batched(params, state)
  assert new_state.mom.sharding.is_equivalent_to(sharding, 3)
  _assert_bitwise(
    (updates, new_state),
    [jax.jit(step)(params[i], _at(state, i)) for i in range(BATCH)],
  )
