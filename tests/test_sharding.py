"""The optimizer on params sharded over the 8 CPU devices of conftest.py.

The update is elementwise per leaf, so on any layout the slots must follow
their params, the compiled update must hold no collective, and the results
must equal the single-device run bit for bit, on the XLA path and on the CPU
kernel (``backend="ffi"``, partitioned shard by shard). Clipping by norm is
the exception: a norm of a sharded gradient is a reduction across shards.
Sparse updates gather and scatter rows of a row-sharded table on the shards
that hold them.
"""

import functools
import re

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
import pytest

import optax_tfrmsprop
import toolbox
from toolbox import backend_params
from toolbox import needs_kernel

COLLECTIVES = re.compile(
  r"\b(all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute|"
  r"collective-broadcast)(-start)?\("
)

STEPS = 3

DENSE_PATHS = {
  "P1": toolbox.options("P1"),
  "P2": toolbox.options("P2"),
  "P3": toolbox.options("P3"),
  "P4_tf_xla": toolbox.options("P4", rounding="tf_xla"),
}


def _params():
  rng = np.random.default_rng(0)
  return {
    "embed": rng.standard_normal((64, 16)).astype(np.float32),
    "dense": {
      "w": rng.standard_normal((16, 8)).astype(np.float32),
      "b": rng.standard_normal(8).astype(np.float32),
    },
    "scale": np.float32(1.5),
  }


def _grads(step):
  rng = np.random.default_rng(100 + step)
  return jax.tree.map(
    lambda p: rng.standard_normal(np.shape(p)).astype(np.float32), _params()
  )


def _layout(name):
  """The shardings of ``_params()`` in a named layout."""
  if name == "2d mixed":
    mesh = jax.make_mesh(
      (4, 2), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2
    )
    specs = {
      "embed": P("data", "model"),
      "dense": {"w": P("model"), "b": P("model")},
      "scale": P(),
    }
  else:
    mesh = jax.make_mesh((8,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))
    specs = {
      "data parallel": {
        "embed": P(),
        "dense": {"w": P(), "b": P()},
        "scale": P(),
      },
      "fully sharded": {
        "embed": P("x"),
        "dense": {"w": P(None, "x"), "b": P("x")},
        "scale": P(),
      },
      "mixed": {
        "embed": P("x"),
        "dense": {"w": P(), "b": P("x")},
        "scale": P(),
      },
    }[name]
  return jax.tree.map(
    lambda spec: NamedSharding(mesh, spec),
    specs,
    is_leaf=lambda x: isinstance(x, P),
  )


LAYOUTS = ("data parallel", "fully sharded", "mixed", "2d mixed")


def _run(optimizer, layout):
  """``STEPS`` jitted updates; returns (params, state, compiled update)."""
  params = _params()
  if layout is not None:
    params = jax.device_put(params, layout)
  state = optimizer.init(params)
  update = jax.jit(optimizer.update)
  for t in range(STEPS):
    grads = _grads(t)
    if layout is not None:
      grads = jax.device_put(grads, layout)
    updates, state = update(grads, state)
    params = optax.apply_updates(params, updates)
  return params, state, update.lower(grads, state).compile()


def _slot_trees(state):
  return [slot for slot in (state.ms, state.mg, state.mom) if slot is not None]


# The optax API takes the kernel in the momentum paths with "tf_cpu" rounding
# only: the others run the same XLA code whatever the backend.
PATH_BACKENDS = [
  pytest.param(path, "xla", id=f"{path}-xla") for path in DENSE_PATHS
] + [pytest.param("P3", "ffi", marks=needs_kernel, id="P3-ffi")]


@pytest.mark.parametrize("path, backend", PATH_BACKENDS)
@pytest.mark.parametrize("layout_name", LAYOUTS)
def test_sharded_update_keeps_layout_without_collectives(
  layout_name, path, backend
):
  layout = _layout(layout_name)
  optimizer = optax_tfrmsprop.rmsprop(
    0.01, **DENSE_PATHS[path], backend=backend
  )

  state = optimizer.init(jax.device_put(_params(), layout))
  for slots in _slot_trees(state):
    jax.tree.map(
      lambda s, want: _assert_same_sharding(s.sharding, want), slots, layout
    )

  params, state, compiled = _run(optimizer, layout)
  hlo = compiled.as_text()
  assert ("tfrmsprop_dense" in hlo) == (backend == "ffi")
  assert not COLLECTIVES.search(hlo), COLLECTIVES.search(hlo).group(0)
  # What the compiled update returns is laid out as it was given: no
  # resharding of the updates or of any slot.
  _, state_in = compiled.input_shardings[0]
  updates_out, state_out = compiled.output_shardings
  jax.tree.map(_assert_same_sharding, updates_out, layout)
  for slots_in, slots_out in zip(_slot_trees(state_in), _slot_trees(state_out)):
    jax.tree.map(_assert_same_sharding, slots_out, slots_in)
  for slots in _slot_trees(state):
    jax.tree.map(
      lambda s, want: _assert_same_sharding(s.sharding, want), slots, layout
    )

  jax.tree.map(
    np.testing.assert_array_equal, (params, state), _single_device_run(path)
  )


@functools.cache
def _single_device_run(path):
  optimizer = optax_tfrmsprop.rmsprop(0.01, **DENSE_PATHS[path], backend="xla")
  return _run(optimizer, None)[:2]


def _run_fused(path, layout, backend):
  """``STEPS`` of ``rmsprop_apply``; returns (params, state, compiled step)."""
  config = toolbox.options(path)
  centered = config.pop("centered")
  params = _params() if layout is None else jax.device_put(_params(), layout)
  state = optax_tfrmsprop.rmsprop_init(
    params, centered=centered, use_momentum=toolbox.PATHS[path].momentum
  )
  step = jax.jit(
    functools.partial(
      optax_tfrmsprop.rmsprop_apply,
      learning_rate=0.01,
      backend=backend,
      **config,
    )
  )
  grads = [_grads(t) for t in range(STEPS)]
  if layout is not None:
    grads = [jax.device_put(g, layout) for g in grads]
  compiled = step.lower(params, grads[0], state).compile()
  for g in grads:
    params, state = compiled(params, g, state)
  return params, state, compiled


@needs_kernel
@pytest.mark.parametrize("path", toolbox.DENSE_PATHS)
@pytest.mark.parametrize("layout_name", ["fully sharded", "2d mixed"])
def test_sharded_kernel_apply_runs_shard_by_shard(layout_name, path):
  """``rmsprop_apply`` takes the kernel in every path: no collective either."""
  layout = _layout(layout_name)
  params, state, compiled = _run_fused(path, layout, "ffi")
  hlo = compiled.as_text()
  assert "tfrmsprop_dense" in hlo
  assert not COLLECTIVES.search(hlo), COLLECTIVES.search(hlo).group(0)
  params_out, state_out = compiled.output_shardings
  jax.tree.map(_assert_same_sharding, params_out, layout)
  for slots in _slot_trees(state_out):
    jax.tree.map(_assert_same_sharding, slots, layout)
  jax.tree.map(
    np.testing.assert_array_equal,
    (params, state),
    _run_fused(path, None, "xla")[:2],
  )


def _assert_same_sharding(got, want):
  ndim = len(want.spec) if isinstance(want, NamedSharding) else 0
  assert got.is_equivalent_to(want, max(ndim, 2)), (got, want)


@pytest.mark.parametrize("clipping", ["clipnorm", "global_clipnorm"])
@pytest.mark.parametrize("layout_name", ["fully sharded", "2d mixed"])
def test_sharded_norm_clipping_tf_cpu_is_exact(layout_name, clipping):
  """``tf_cpu`` sums norms in Eigen's fixed order: sharding changes no bit.

  That order is sequential within each 8192-element Eigen leaf, so the
  squared gradient is gathered for the norm; the slots stay sharded.
  """
  layout = _layout(layout_name)
  optimizer = optax_tfrmsprop.rmsprop(0.01, momentum=0.9, **{clipping: 1.0})
  params, state, compiled = _run(optimizer, layout)
  assert {m.group(1) for m in COLLECTIVES.finditer(compiled.as_text())} <= {
    "all-gather",
    "all-reduce",
  }
  for slots in _slot_trees(state):
    jax.tree.map(
      lambda s, want: _assert_same_sharding(s.sharding, want), slots, layout
    )
  expected_params, expected_state, _ = _run(optimizer, None)
  jax.tree.map(
    np.testing.assert_array_equal,
    (params, state),
    (expected_params, expected_state),
  )


@pytest.mark.parametrize("clipping", ["clipnorm", "global_clipnorm"])
@pytest.mark.parametrize("layout_name", ["fully sharded", "2d mixed"])
def test_sharded_norm_clipping_tf_xla_only_all_reduces(layout_name, clipping):
  """``tf_xla`` sums norms as XLA does: per-shard sums and one all-reduce."""
  layout = _layout(layout_name)
  optimizer = optax_tfrmsprop.rmsprop(
    0.01, momentum=0.9, rounding="tf_xla", **{clipping: 1.0}
  )
  params = jax.device_put(_params(), layout)
  grads = jax.device_put(_grads(0), layout)
  update = jax.jit(optimizer.update)
  updates, _ = update(grads, optimizer.init(params))
  # The norms are the only reductions across shards; nothing is gathered.
  hlo = update.lower(grads, optimizer.init(params)).compile().as_text()
  assert {m.group(1) for m in COLLECTIVES.finditer(hlo)} == {"all-reduce"}

  # Per-shard partial sums change the summation order of the norms, so the
  # clipped gradients can differ; the rest of the step is elementwise. The
  # bound follows from the arithmetic, not from a measurement (u = 2**-24,
  # an ULP is at most 2 u relative):
  # * two orders of summing n non-negative terms (rounded squares) differ by
  #   a relative 2 gamma(n) ~ 2 n u; the square root halves it; with the few
  #   roundings of the clipping factor and of ``g * factor``, a clipped
  #   gradient moves by at most delta = (n + 8) u relative, n the number of
  #   summed elements (the largest leaf for clipnorm, all for
  #   global_clipnorm);
  # * the tf_xla step may also round each of its operations differently once
  #   sharded (other fusions; rsqrt is within 2 ULP of exact): at most 4 ULP,
  #   8 u, per operation, 4 operations per quantity below;
  # * the first update, (g lr) rsqrt(c g^2 + eps), moves by at most
  #   delta + 32 u relative (its log-derivative in g is in [0, 1]);
  # * ms, a sum of positive c g^2 terms, by 2 delta + 32 u relative;
  # * each momentum term, |lr g / sqrt(ms + eps)| <= lr / sqrt(c), by
  #   2 delta + 32 u relative, so the params by STEPS**2 times that
  #   absolutely (mom sums the terms, the params sum the moms), plus a
  #   rounding of each addition to the params.
  u = 2.0**-24
  sizes = [np.size(x) for x in jax.tree.leaves(_params())]
  n = max(sizes) if clipping == "clipnorm" else sum(sizes)
  delta = (n + 8) * u
  expected_updates, _ = jax.jit(optimizer.update)(
    _grads(0), optimizer.init(_params())
  )
  params, state, _ = _run(optimizer, layout)
  expected_params, expected_state, _ = _run(optimizer, None)
  jax.tree.map(
    functools.partial(np.testing.assert_allclose, rtol=delta + 32 * u),
    updates,
    expected_updates,
  )
  jax.tree.map(
    functools.partial(np.testing.assert_allclose, rtol=2 * delta + 32 * u),
    state.ms,
    expected_state.ms,
  )
  print(
    f"\n{layout_name} {clipping}: first update "
    f"{toolbox.max_ulp(updates, expected_updates)} ULP, ms after {STEPS} steps "
    f"{toolbox.max_ulp(state.ms, expected_state.ms)} ULP, params "
    f"{toolbox.max_ulp(params, expected_params)} ULP (bounded above, not by "
    "these counts)"
  )
  lr, c = 0.01, 1 - np.float32(0.9)
  term = lr / np.sqrt(c)
  for p, want in zip(jax.tree.leaves(params), jax.tree.leaves(expected_params)):
    np.testing.assert_allclose(
      p, want, rtol=2 * STEPS * u, atol=STEPS**2 * (2 * delta + 32 * u) * term
    )


@pytest.mark.parametrize("backend", backend_params)
def test_state_types_stable_over_update_with_sharding_in_types(backend):
  """Optax's check: init on abstract params, types unchanged by update.

  With sharding in types (``Explicit`` axes) the kernel runs in a shard_map.
  """
  mesh = jax.make_mesh(
    (8,), ("x",), axis_types=(jax.sharding.AxisType.Explicit,)
  )
  sharding = NamedSharding(mesh, P(None, "x"))
  optimizer = optax_tfrmsprop.rmsprop(
    0.1, momentum=0.9, centered=True, backend=backend
  )
  with jax.set_mesh(mesh):
    params = jnp.asarray(
      np.random.default_rng(0).standard_normal((2, 8, 4)),
      jnp.float32,
      out_sharding=sharding,
    )
    abstract = jax.ShapeDtypeStruct(
      params.shape, params.dtype, sharding=sharding
    )
    abstract_state = jax.eval_shape(optimizer.init, abstract)
    state0 = optimizer.init(params)
    state1 = jax.jit(optimizer.init)(params)
    update = jax.jit(optimizer.update)
    updates, state2 = update(params, state0)
    hlo = update.lower(params, state0).compile().as_text()
    types = [jax.tree.map(jax.typeof, s) for s in (state0, state1, state2)]
  assert not COLLECTIVES.search(hlo), COLLECTIVES.search(hlo).group(0)
  assert ("tfrmsprop_dense" in hlo) == (backend == "ffi")
  expected = optax_tfrmsprop.rmsprop(
    0.1, momentum=0.9, centered=True, backend="xla"
  ).update(np.asarray(params), optimizer.init(np.asarray(params)))
  jax.tree.map(np.testing.assert_array_equal, (updates, state2), expected)
  assert types[0] == types[1] == types[2]
  for abstract_slot, slot in zip(
    _slot_trees(abstract_state), _slot_trees(types[0])
  ):
    assert (abstract_slot.shape, abstract_slot.dtype) == (
      slot.shape,
      slot.dtype,
    )
    assert abstract_slot.sharding.spec == slot.sharding.spec
    assert slot.sharding.spec == P(None, "x", None)


# --- Sparse updates on a row-sharded embedding table. ---
# The CPU kernel's sparse call (P7/P8) has no partitioning rule: on a sharded
# table XLA would run it on a gathered copy. Sharded sparse tables therefore
# take backend="xla", whose row gathers and scatters stay local.

SPARSE_PATHS = {
  "P5": dict(),
  "P6": dict(centered=True),
  "P7": dict(momentum=0.9),
  "P8": dict(momentum=0.9, centered=True),
}
TABLE_SHAPE = (64, 16)
GRAD_ROWS = 16  # rows of each IndexedSlices gradient, duplicates included
_SIGNED_ZERO_HYPERS = (0.0, 1.0)  # learning_rate, rho


def _table_layout(name):
  if name == "rows":
    mesh = jax.make_mesh((8,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))
    return NamedSharding(mesh, P("x"))
  mesh = jax.make_mesh(
    (4, 2), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2
  )
  return NamedSharding(mesh, P("data", "model"))


def _sparse_start(optimizer, layout, *, signed_zeros):
  """The table and its optimizer state, both laid out by ``layout``.

  With ``signed_zeros`` the ``mg`` and ``mom`` slots start at ``-0.0``.
  """
  table = (
    np.random.default_rng(0).standard_normal(TABLE_SHAPE).astype(np.float32)
  )
  put = lambda x: x if layout is None else jax.device_put(x, layout)
  state = optimizer.init(put(table))
  if signed_zeros:
    negative_zeros = lambda slot: (
      None if slot is None else put(np.full(TABLE_SHAPE, -0.0, np.float32))
    )
    state = state.replace(
      mg=negative_zeros(state.mg), mom=negative_zeros(state.mom)
    )
  return put(table), state


def _sparse_grads(step, *, negative=False):
  rng = np.random.default_rng(200 + step)
  values = rng.standard_normal((GRAD_ROWS, TABLE_SHAPE[1])).astype(np.float32)
  indices = rng.integers(0, TABLE_SHAPE[0], GRAD_ROWS).astype(np.int32)
  return optax_tfrmsprop.IndexedSlices(
    -np.abs(values) if negative else values, indices, TABLE_SHAPE
  )


def _run_sparse(
  optimizer,
  table_layout,
  grads_layout,
  *,
  signed_zeros=False,
  replicate_grads=False,
):
  """``STEPS`` jitted sparse steps; returns (table, state, updates, compiled).

  With ``signed_zeros`` the gradients are negative and the slots ``mg`` and
  ``mom`` start at ``-0.0`` (see ``_sparse_start``). With
  ``replicate_grads`` the step constrains the gradient to be replicated
  before the update.
  """
  table, state = _sparse_start(
    optimizer, table_layout, signed_zeros=signed_zeros
  )

  def step(table, state, grads):
    if replicate_grads:
      grads = jax.lax.with_sharding_constraint(
        grads, NamedSharding(table_layout.mesh, P())
      )
    updates, state = optimizer.update(grads, state)
    return optax_tfrmsprop.apply_updates(table, updates), state, updates

  grads = [_sparse_grads(t, negative=signed_zeros) for t in range(STEPS)]
  if grads_layout is not None:
    grads = jax.device_put(grads, grads_layout)
  compiled = jax.jit(step).lower(table, state, grads[0]).compile()
  for g in grads:
    table, state, updates = compiled(table, state, g)
  return table, state, updates, compiled


@functools.cache
def _unsharded_sparse_run(path, signed_zeros=False):
  optimizer = optax_tfrmsprop.rmsprop(
    *_SIGNED_ZERO_HYPERS if signed_zeros else (0.01,),
    **SPARSE_PATHS[path],
    backend="xla",
  )
  return _run_sparse(optimizer, None, None, signed_zeros=signed_zeros)[:3]


def _assert_same_bits(got, want):
  got, want = np.asarray(got), np.asarray(want)
  assert got.dtype == want.dtype and got.shape == want.shape
  bits = f"u{got.dtype.itemsize}"
  np.testing.assert_array_equal(got.view(bits), want.view(bits))


def _collective_shapes(hlo):
  """``(collective, result shapes)`` of every collective in ``hlo``."""
  found = []
  for line in hlo.splitlines():
    match = COLLECTIVES.search(line)
    if match:
      shapes = re.findall(r"[a-z]+[0-9]*\[([0-9,]*)\]", line[: match.start()])
      found.append(
        (
          match.group(1),
          [tuple(int(d) for d in s.split(",") if d) for s in shapes],
        )
      )
  return found


@pytest.mark.parametrize("path", SPARSE_PATHS)
@pytest.mark.parametrize("layout_name", ["rows", "rows x columns"])
def test_sparse_update_of_row_sharded_table_is_exact_and_local(
  layout_name, path
):
  """Replicated IndexedSlices on a sharded table: bits of the unsharded run.

  Each shard gathers, updates and scatters the rows it holds; the only
  communication is an all-reduce of the gathered gradient-sized rows (as
  bits, see ``sparse.take_rows``), never a table-sized array.
  """
  layout = _table_layout(layout_name)
  optimizer = optax_tfrmsprop.rmsprop(0.01, **SPARSE_PATHS[path], backend="xla")
  replicated = NamedSharding(layout.mesh, P())
  table, state, updates, compiled = _run_sparse(optimizer, layout, replicated)

  collectives = _collective_shapes(compiled.as_text())
  assert {op for op, _ in collectives} <= {"all-reduce"}, collectives
  for _, shapes in collectives:
    assert all(shape[0] == GRAD_ROWS for shape in shapes), collectives
  assert table.sharding.is_equivalent_to(layout, 2)
  for slots in _slot_trees(state):
    assert slots.sharding.is_equivalent_to(layout, 2)

  jax.tree.map(
    _assert_same_bits, (table, state, updates), _unsharded_sparse_run(path)
  )


def test_batch_sharded_sparse_gradient_replicated_in_the_step_is_exact():
  """Gradient rows sharded like a batch: replicate them, then update.

  De-duplication sums repeated rows in input order; on rows sharded over the
  devices XLA would sum them per shard and then across shards (measured: 1-3
  ULP off the unsharded run after 3 steps, docs/distributed.md). A sharding
  constraint in the step all-gathers the rows, moving bits only.
  """
  layout = _table_layout("rows")
  optimizer = optax_tfrmsprop.rmsprop(0.01, **SPARSE_PATHS["P8"], backend="xla")
  *results, compiled = _run_sparse(
    optimizer, layout, layout, replicate_grads=True
  )
  collectives = _collective_shapes(compiled.as_text())
  assert {op for op, _ in collectives} == {"all-gather", "all-reduce"}
  for _, shapes in collectives:
    assert all(shape[0] == GRAD_ROWS for shape in shapes), collectives
  jax.tree.map(_assert_same_bits, tuple(results), _unsharded_sparse_run("P8"))


@pytest.mark.parametrize("path", ["P6", "P8"])
def test_sparse_update_of_row_sharded_table_keeps_signed_zeros(path):
  """A gathered ``-0.0`` slot row stays ``-0.0``, as on one device.

  With ``rho=1`` the gradient term ``G c`` of ``mg`` is ``-0.0`` for negative
  ``G``, and with a zero learning rate so is ``mom``'s; from ``-0.0`` slots
  the updated rows are ``-0.0 + -0.0``. Had the sharded gather summed float
  zeros across shards, they would come back ``+0.0``.
  """
  layout = _table_layout("rows")
  optimizer = optax_tfrmsprop.rmsprop(
    *_SIGNED_ZERO_HYPERS, **SPARSE_PATHS[path], backend="xla"
  )
  sharded = _run_sparse(
    optimizer, layout, NamedSharding(layout.mesh, P()), signed_zeros=True
  )[:3]
  expected = _unsharded_sparse_run(path, signed_zeros=True)
  jax.tree.map(_assert_same_bits, sharded, expected)
  _, state, updates = expected
  touched = np.asarray(updates.indices)
  touched = touched[touched < TABLE_SHAPE[0]]  # not the padding
  assert np.signbit(np.asarray(state.mg)[touched]).all()
