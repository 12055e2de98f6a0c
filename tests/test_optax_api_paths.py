"""Issue 17: the optax API's kernel dispatch gives the XLA path's bits.

Through ``tx.update`` the CPU kernel now also runs the momentum-free paths:
on P2 (centered) it updates ``ms`` and ``mg`` in place and JAX computes the
update from the new slots (``update_rules.plain_update``) in the loop that
applies it; on P1 it does so for leaves whose minor dimension is tiny (OIHW
convolution kernels), where XLA's loops are slow. Every path, dtype and
layout must give bit for bit what the XLA path gives (``backend="xla"``,
which runs ``update_rules.update_leaf`` per leaf as before), under ``jit``,
``vmap`` and sharding, and beside sparse leaves. A step whose in-place
buffers are not donated warns at lowering time, naming ``donate_argnums``.
"""

import functools
import re
import warnings

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
import pytest

import optax_tfrmsprop
from optax_tfrmsprop._src import cpu_kernel

needs_kernel = pytest.mark.skipif(
  not cpu_kernel.is_built(), reason="the C++ kernel is not built"
)

PATHS = {
  "P1": dict(),
  "P2": dict(centered=True),
  "P3": dict(momentum=0.9),
  "P4": dict(momentum=0.9, centered=True),
}
DTYPES = {
  "float32": jnp.float32,
  "float64": jnp.float64,
  "bfloat16": jnp.bfloat16,
}
# The layouts of the dense benchmark, small: a 1-D leaf, ResNet-50's conv
# kernels in HWIO and OIHW (minor dimensions 1, 3, 7), BatchNorm vectors, a
# classifier, a matrix with a tiny minor dimension and a scalar.
LAYOUTS = {
  "leaf": {"w": (1000,)},
  "HWIO": {
    "stem": (7, 7, 3, 8),
    "conv": (3, 3, 8, 8),
    "proj": (1, 1, 8, 16),
    "gamma": (16,),
  },
  "OIHW": {
    "stem": (8, 3, 7, 7),
    "conv": (8, 8, 3, 3),
    "proj": (16, 8, 1, 1),
    "gamma": (16,),
  },
  "mixed": {
    "points": (50, 3),
    "dense": (24, 10),
    "bias": (10,),
    "scale": (),
  },
}
STEPS = 3
COLLECTIVES = re.compile(
  r"\b(all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute|"
  r"collective-broadcast)(-start)?\("
)


def _tree(layout, dtype, seed):
  rng = np.random.default_rng(seed)
  return {
    k: jnp.asarray(rng.standard_normal(s), dtype)
    for k, s in LAYOUTS[layout].items()
  }


def _optax_api(path, layout, dtype, backend, *, donate=True):
  """``STEPS`` jitted ``tx.update`` + ``optax.apply_updates``."""
  tx = optax_tfrmsprop.rmsprop(0.01, backend=backend, **PATHS[path])

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, updates

  step = jax.jit(step, donate_argnums=(0, 1) if donate else ())
  params = _tree(layout, dtype, 0)
  state = tx.init(params)
  for t in range(STEPS):
    params, state, updates = step(params, state, _tree(layout, dtype, 1 + t))
  return params, state, updates


def _fused(path, layout, dtype, backend):
  config = dict(PATHS[path])
  centered = config.pop("centered", False)
  apply = jax.jit(
    functools.partial(
      optax_tfrmsprop.rmsprop_apply,
      learning_rate=0.01,
      backend=backend,
      **config,
    ),
    donate_argnums=(0, 2),
  )
  params = _tree(layout, dtype, 0)
  state = optax_tfrmsprop.rmsprop_init(
    params, centered=centered, use_momentum="momentum" in config
  )
  for t in range(STEPS):
    params, state = apply(params, _tree(layout, dtype, 1 + t), state)
  return params, state


def _assert_bitwise(actual, expected):
  leaves, tree = jax.tree.flatten(actual)
  expected_leaves, expected_tree = jax.tree.flatten(expected)
  assert tree == expected_tree
  for a, b in zip(leaves, expected_leaves):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(
      np.atleast_1d(a).view(np.uint8), np.atleast_1d(b).view(np.uint8)
    )


@needs_kernel
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", PATHS)
def test_optax_api_and_fused_equal_the_xla_path(x64, path, dtype, layout):
  dtype = DTYPES[dtype]
  _assert_bitwise(
    _optax_api(path, layout, dtype, "ffi"),
    _optax_api(path, layout, dtype, "xla"),
  )
  _assert_bitwise(
    _fused(path, layout, dtype, "ffi"), _fused(path, layout, dtype, "xla")
  )


def _hlo(path, layout, dtype=jnp.float32):
  """The compiled optax-API step, params and state donated."""
  tx = optax_tfrmsprop.rmsprop(0.01, **PATHS[path])

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  params = _tree(layout, dtype, 0)
  return (
    jax.jit(step, donate_argnums=(0, 1))
    .lower(params, tx.init(params), params)
    .compile()
    .as_text()
  )


@needs_kernel
def test_kernel_runs_where_it_saves_traffic():
  """P2-P4 take the kernel; P1 only on leaves XLA loops over slowly.

  XLA's loops are slow on a tiny minor dimension, and on bfloat16, whose
  every operation is rounded.
  """
  for path in ("P2", "P3", "P4"):
    for layout in LAYOUTS:
      assert cpu_kernel.DENSE_TARGET in _hlo(path, layout), (path, layout)
  assert cpu_kernel.DENSE_TARGET in _hlo("P1", "OIHW")
  assert cpu_kernel.DENSE_TARGET in _hlo("P1", "mixed")  # points: (50, 3)
  assert cpu_kernel.DENSE_TARGET not in _hlo("P1", "HWIO")
  assert cpu_kernel.DENSE_TARGET not in _hlo("P1", "leaf")
  assert cpu_kernel.DENSE_TARGET in _hlo("P1", "leaf", jnp.bfloat16)
  # Donated and updated in place: no copy of any slot.
  for path in PATHS:
    assert not re.search(
      r"= f32\[[\d,]*\]\{[\d,]*\} copy\(", _hlo(path, "OIHW")
    )


@needs_kernel
@pytest.mark.parametrize("path", PATHS)
def test_vmap_equals_the_loop(path):
  """``vmap`` over a batch of optimizers equals a loop over the batch."""
  tx = optax_tfrmsprop.rmsprop(0.01, **PATHS[path])
  xla = optax_tfrmsprop.rmsprop(0.01, backend="xla", **PATHS[path])
  batch = [_tree("OIHW", jnp.float32, s) for s in range(3)]
  grads = [_tree("OIHW", jnp.float32, 10 + s) for s in range(3)]
  stack = lambda trees: jax.tree.map(lambda *x: jnp.stack(x), *trees)
  states = jax.vmap(tx.init)(stack(batch))
  update = jax.jit(jax.vmap(tx.update), donate_argnums=1)
  updates, states = update(stack(grads), states)
  for b in range(3):
    want_updates, want_state = jax.jit(xla.update)(grads[b], xla.init(batch[b]))
    _assert_bitwise(
      jax.tree.map(lambda x, b=b: x[b], (updates, states)),
      (want_updates, want_state),
    )


def _sharded_tree(dtype, seed, mesh):
  """OIHW and HWIO leaves sharded on their output and input channels."""
  specs = {
    "oihw_out": ((16, 8, 3, 3), P("x")),
    "oihw_in": ((16, 8, 3, 3), P(None, "x")),
    "hwio": ((3, 3, 8, 16), P(None, None, None, "x")),
    "points": ((64, 3), P("x")),
    "bias": ((16,), P("x")),
  }
  rng = np.random.default_rng(seed)
  return {
    k: jax.device_put(
      jnp.asarray(rng.standard_normal(shape), dtype),
      NamedSharding(mesh, spec),
    )
    for k, (shape, spec) in specs.items()
  }


@needs_kernel
@pytest.mark.parametrize("path", PATHS)
def test_sharded_update_equals_single_device_without_collectives(path):
  mesh = jax.make_mesh((8,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))
  tx = optax_tfrmsprop.rmsprop(0.01, **PATHS[path])
  xla = optax_tfrmsprop.rmsprop(0.01, backend="xla", **PATHS[path])

  def step(tx, params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  params = _sharded_tree(jnp.float32, 0, mesh)
  state = tx.init(params)
  sharded = jax.jit(functools.partial(step, tx), donate_argnums=(0, 1))
  single = jax.jit(functools.partial(step, xla))
  want_params = jax.tree.map(np.asarray, params)
  want_state = xla.init(want_params)
  grads = _sharded_tree(jnp.float32, 1, mesh)
  hlo = sharded.lower(params, state, grads).compile().as_text()
  assert not COLLECTIVES.search(hlo), COLLECTIVES.search(hlo).group(0)
  for t in range(STEPS):
    grads = _sharded_tree(jnp.float32, 1 + t, mesh)
    params, state = sharded(params, state, grads)
    want_params, want_state = single(
      want_params, want_state, jax.tree.map(np.asarray, grads)
    )
  for name, x in params.items():
    assert x.sharding.is_equivalent_to(grads[name].sharding, x.ndim)
  _assert_bitwise((params, state), (want_params, want_state))


@needs_kernel
@pytest.mark.parametrize("path", PATHS)
def test_sparse_leaves_beside_dense_ones(path):
  """An ``IndexedSlices`` leaf in the tree changes nothing for the others."""

  def run(backend):
    tx = optax_tfrmsprop.rmsprop(0.01, backend=backend, **PATHS[path])
    params = _tree("OIHW", jnp.float32, 0)
    params["table"] = jnp.ones((20, 4), jnp.float32)
    state = tx.init(params)

    @jax.jit
    def step(params, state, grads):
      updates, state = tx.update(grads, state, params)
      return optax_tfrmsprop.apply_updates(params, updates), state

    for t in range(STEPS):
      grads = _tree("OIHW", jnp.float32, 1 + t)
      grads["table"] = optax_tfrmsprop.IndexedSlices(
        jnp.full((3, 4), 0.5 + t, jnp.float32),
        jnp.array([2, 7, 2], jnp.int32),
        (20, 4),
      )
      with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Not donated.
        params, state = step(params, state, grads)
    return params, state

  _assert_bitwise(run("ffi"), run("xla"))


def _lower(fn, donate, *args):
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    jax.jit(fn, donate_argnums=donate).lower(*args)
  return [str(w.message) for w in caught if "donate" in str(w.message)]


@needs_kernel
@pytest.mark.parametrize("path", PATHS)
def test_undonated_in_place_buffers_warn_at_lowering(path):
  config = dict(PATHS[path])
  centered = config.pop("centered", False)
  params = _tree("OIHW", jnp.float32, 0)
  state = optax_tfrmsprop.rmsprop_init(
    params, centered=centered, use_momentum="momentum" in config
  )
  fused = functools.partial(
    optax_tfrmsprop.rmsprop_apply, learning_rate=0.01, **config
  )
  per_leaf = 2 + centered + ("momentum" in config)  # params, ms, [mg], [mom]
  total = per_leaf * len(params)

  assert not _lower(fused, (0, 2), params, params, state)
  (message,) = _lower(fused, (), params, params, state)
  assert f"{total} of the {total} params and slot buffers" in message
  assert "donate_argnums" in message
  (message,) = _lower(fused, (2,), params, params, state)
  assert f"{len(params)} of the {total}" in message  # the params only
  assert not _lower(
    functools.partial(fused, backend="xla"), (), params, params, state
  )

  tx = optax_tfrmsprop.rmsprop(0.01, **PATHS[path])
  assert not _lower(tx.update, (1,), params, tx.init(params))
  warned = _lower(tx.update, (), params, tx.init(params))
  kernel_leaves = len(params) - (path == "P1")  # P1: gamma stays on XLA
  assert len(warned) == 1
  assert (
    f"of the {(per_leaf - 1) * kernel_leaves} optimizer state" in (warned[0])
  )
