"""Sparse (IndexedSlices) gradients against TF's sparse RMSprop paths P5-P8."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optax_tfrmsprop as ot
from optax_tfrmsprop._src import cpu_kernel
from optax_tfrmsprop._src import sparse
import tf_reference
from tf_reference import run_tf
import toolbox
from toolbox import backend_params
from toolbox import needs_kernel

# P7/P8 in float32 on the xla backend differ from TF's packet rsqrt within a
# bound derived in tf_reference (the ffi backend computes TF's and is
# bit-identical; see docs/sparse.md).
U = tf_reference.U32
RSQRT_RELATIVE = tf_reference.RSQRT_RELATIVE


def _make_steps(seed, dtype, *, rows=10, width=12, n=7, steps=100, dense=True):
  """Random sparse steps with duplicates (and a dense second variable)."""
  shapes = [toolbox.Table(rows, width, n)] + ([(3,)] if dense else [])
  return toolbox.problem(seed, dtype, steps, shapes)


def _config(path, **config):
  """``learning_rate=0.01`` and the options of ``path``."""
  return toolbox.options(path, learning_rate=0.01, **config)


def _run_jax(var_values, grad_steps, *, state=None, fused=False, **config):
  """Runs jitted steps of ``rmsprop(**config)``; returns params, state.

  A step is ``rmsprop`` + ``apply_updates``, or with ``fused`` the
  ``rmsprop_apply`` step with params and state donated.
  """
  opt = ot.rmsprop(**config)
  config.pop("centered", None)  # rmsprop_apply reads it from the state.
  fused = config if fused else None
  return toolbox.run(opt, var_values, grad_steps, state=state, fused=fused)


def _assert_same_as_tf(tf_result, params, state):
  tf_vars, tf_slots, _ = tf_result
  toolbox.assert_same_as_tf(params, state, tf_vars, tf_slots)


def _state_from_tf(tf_result, count):
  _, tf_slots, _ = tf_result
  slots = {
    field: [jnp.asarray(v) for v in tf_slots[tf_name]]
    for field, tf_name in toolbox.tf_slot_names().items()
    if tf_name in tf_slots
  }
  return ot.RMSpropState(count=jnp.asarray(count, jnp.int32), **slots)


@pytest.mark.parametrize("path", ["P5", "P6"])
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_no_momentum_paths_bit_identical_over_100_steps(path, dtype, x64):
  var_values, grad_steps = _make_steps(0, np.dtype(dtype))
  config = _config(path)
  tf_result = run_tf(var_values, grad_steps, **config)
  params, state = _run_jax(var_values, grad_steps, **config)
  _assert_same_as_tf(tf_result, params, state)


@pytest.mark.parametrize("backend", backend_params)
@pytest.mark.parametrize("path", ["P7", "P8"])
@pytest.mark.parametrize("dtype", ["float64", "float16"])
def test_momentum_paths_bit_identical_in_f64_and_f16(path, dtype, backend, x64):
  var_values, grad_steps = _make_steps(1, np.dtype(dtype))
  config = _config(path)
  tf_result = run_tf(var_values, grad_steps, **config)
  params, state = _run_jax(var_values, grad_steps, backend=backend, **config)
  _assert_same_as_tf(tf_result, params, state)


@functools.cache
def _wide_rows_tf(path, width):
  # 40 ids over 50 rows a step: many duplicates; 67 = 8 packets + 3 tail lanes.
  var_values, grad_steps = _make_steps(
    10, np.float32, rows=50, width=width, n=40
  )
  config = _config(path)
  return (
    var_values,
    grad_steps,
    config,
    run_tf(var_values, grad_steps, **config),
  )


@needs_kernel
@pytest.mark.slow
@pytest.mark.parametrize("fused", [False, True], ids=["optax", "fused"])
@pytest.mark.parametrize("width", [64, 67])
@pytest.mark.parametrize("path", ["P7", "P8"])
def test_momentum_paths_f32_bit_identical_on_the_kernel(path, width, fused):
  """The kernel computes TF's packet rsqrt: 0 ULP over 100 steps."""
  var_values, grad_steps, config, tf_result = _wide_rows_tf(path, width)
  params, state = _run_jax(
    var_values, grad_steps, backend="ffi", fused=fused, **config
  )
  _assert_same_as_tf(tf_result, params, state)


def _tf_packet_rsqrt(x):
  """TF's rsqrt of each element of 2-D ``x``, via its P7 kernel.

  With rho 1, epsilon 0, momentum 0, lr 1 and a gradient of ones,
  ResourceSparseApplyRMSProp leaves ``ms = x`` and sets ``mom = rsqrt(x)``.
  """
  tf = tf_reference.tf
  var, ms, mom = (
    tf.Variable(v) for v in (np.zeros_like(x), x, np.zeros_like(x))
  )
  one, zero = np.float32(1), np.float32(0)
  tf.raw_ops.ResourceSparseApplyRMSProp(
    var=var.handle,
    ms=ms.handle,
    mom=mom.handle,
    lr=one,
    rho=one,
    momentum=zero,
    epsilon=zero,
    grad=np.ones_like(x),
    indices=np.arange(len(x), dtype=np.int32),
  )
  return mom.numpy()


@needs_kernel
@pytest.mark.parametrize("width", [64, 67])
def test_kernel_rsqrt_matches_tf_on_every_lane(width):
  rng = np.random.default_rng(11)
  x = np.exp(rng.uniform(-87, 88, size=(1024, width))).astype(np.float32)
  tiny = np.finfo(np.float32).tiny
  special = [
    0.0,
    -0.0,
    tiny,
    tiny / 2,
    tiny / 2**20,
    np.inf,
    np.nan,
    -1.0,
    np.finfo(np.float32).max,
    1.0,
  ]
  x[:2, : len(special)] = special  # packet lanes
  x[2, -len(special) :] = special  # the tail lanes (width 67) and packets
  hypers = jnp.array([1, 1, 0, 0, 0], jnp.float32)
  cpu_kernel.use_kernel("ffi")  # Registers the targets.
  rsqrt = jax.jit(
    lambda x: cpu_kernel.sparse_update(
      jnp.ones_like(x),
      jnp.arange(len(x), dtype=jnp.int32),
      None,
      x,
      None,
      jnp.zeros_like(x),
      hypers,
      apply=False,
    )[3]
  )
  ours = np.asarray(rsqrt(jnp.asarray(x)))
  np.testing.assert_array_equal(
    ours.view(np.uint32), _tf_packet_rsqrt(x).view(np.uint32)
  )


@pytest.mark.parametrize("path", ["P7", "P8"])
@pytest.mark.slow
def test_momentum_paths_f32_per_step_bound(path):
  """One step from TF's own state, at two points of a 100-step run.

  Only the rsqrt lanes differ (by at most ``RSQRT_RELATIVE``); through
  ``scale = rsqrt * lr`` and ``scale * G`` (two more roundings each side) the
  momentum term differs by ``(RSQRT_RELATIVE + 4 u) |scale G|``, and the sum
  ``mom mu + term`` and the variable ``var - mom`` add a rounding of each
  side. The variable can be near zero, so its bound is absolute.
  """
  var_values, grad_steps = _make_steps(2, np.float32, rows=40, width=20, n=30)
  config = _config(path)
  for k in (0, 60):
    before = run_tf(var_values, grad_steps[:k], **config) if k else None
    start = before[0] if k else var_values
    state = _state_from_tf(before, k) if k else None
    tf_vars, tf_slots, _ = run_tf(var_values, grad_steps[: k + 1], **config)
    params, state = _run_jax(
      start, grad_steps[k : k + 1], state=state, backend="xla", **config
    )
    mom = tf_slots["momentum"][0]
    np.testing.assert_array_equal(state.ms[0], tf_slots["rms"][0])
    # |scale G| = lr |G| / sqrt(denominator), TF's term, from TF's new slots.
    mu = np.float32(0.9)
    prior_mom = (
      np.asarray(before[1]["momentum"][0]) if k else np.zeros_like(mom)
    )
    touched = np.zeros(mom.shape[0], bool)
    touched[grad_steps[k][0][1]] = True
    term = np.abs(mom - prior_mom * mu)  # the term, up to one rounding
    mom_bound = np.where(
      touched[:, None], (RSQRT_RELATIVE + 6 * U) * term + 2 * U * np.abs(mom), 0
    )
    assert np.all(np.abs(np.asarray(state.mom[0]) - mom) <= mom_bound)
    var_bound = mom_bound + 2 * U * np.abs(tf_vars[0])
    assert np.all(np.abs(np.asarray(params[0]) - tf_vars[0]) <= var_bound)


@pytest.mark.parametrize("path", ["P7", "P8"])
def test_momentum_paths_f32_close_after_100_steps(path):
  var_values, grad_steps = _make_steps(3, np.float32)
  config = _config(path)
  tf_vars, tf_slots, _ = run_tf(var_values, grad_steps, **config)
  params, state = _run_jax(var_values, grad_steps, backend="xla", **config)
  # Only rsqrt lanes differ (by an ULP); the slots that do not depend on it
  # stay bit-identical.
  np.testing.assert_array_equal(state.ms[0], tf_slots["rms"][0])
  np.testing.assert_array_equal(params[1], tf_vars[1])
  steps = len(grad_steps)
  atol = tf_reference.packet_rsqrt_drift(steps, 0.01, 0.9, 0.9)
  np.testing.assert_allclose(
    params[0], tf_vars[0], rtol=2 * steps * U, atol=atol
  )


@pytest.mark.parametrize("backend", backend_params)
def test_narrow_rows_have_no_packet_lanes_and_are_exact(backend):
  # Rows narrower than Eigen's 8-lane packet use 1/sqrt only.
  var_values, grad_steps = _make_steps(4, np.float32, width=7, dense=False)
  config = _config("P8")
  tf_result = run_tf(var_values, grad_steps, **config)
  params, state = _run_jax(var_values, grad_steps, backend=backend, **config)
  _assert_same_as_tf(tf_result, params, state)


@pytest.mark.parametrize("backend", backend_params)
@pytest.mark.parametrize("path", ["P5", "P6", "P7", "P8"])
def test_clipvalue_matches_tf(path, backend, x64):
  # float64 keeps P7/P8 exact, so any clipping difference would show.
  var_values, grad_steps = _make_steps(5, np.float64, steps=20)
  config = _config(path, clipvalue=0.5)
  tf_result = run_tf(var_values, grad_steps, **config)
  params, state = _run_jax(var_values, grad_steps, backend=backend, **config)
  _assert_same_as_tf(tf_result, params, state)


@pytest.mark.parametrize("backend", backend_params)
@pytest.mark.parametrize("path", ["P5", "P8"])
@pytest.mark.parametrize(
  "clip", [dict(clipnorm=2.0), dict(global_clipnorm=3.0, clipvalue=1.0)]
)
def test_norm_clipping_covers_duplicated_rows_like_tf(path, clip, backend, x64):
  """Norms are taken over the raw rows, duplicates included, as in TF.

  They are summed in Eigen's order (``numerics.eigen_sum``), so all 20 steps
  are bit-identical.
  """
  var_values, grad_steps = _make_steps(5, np.float64, steps=20)
  config = _config(path, **clip)
  tf_result = run_tf(var_values, grad_steps, **config)
  params, state = _run_jax(var_values, grad_steps, backend=backend, **config)
  _assert_same_as_tf(tf_result, params, state)


def test_bfloat16_no_momentum_paths_match_tf():
  var_values, grad_steps = _make_steps(6, jnp.bfloat16, steps=30)
  for path in ("P5", "P6"):
    config = _config(path)
    tf_result = run_tf(var_values, grad_steps, **config)
    params, state = _run_jax(var_values, grad_steps, **config)
    _assert_same_as_tf(tf_result, params, state)


def test_bfloat16_momentum_paths_have_no_tf_cpu_kernel():
  tf = tf_reference.tf
  var_values, grad_steps = _make_steps(6, jnp.bfloat16, steps=1, dense=False)
  with pytest.raises(tf.errors.InvalidArgumentError, match="No OpKernel"):
    run_tf(var_values, grad_steps, **toolbox.options("P7"))


def test_deduplicate_matches_tf_unique_and_segment_sum():
  tf = tf_reference.tf
  indices = np.array([5, 2, 5, 0, 2, 5, 7, 0], np.int32)
  # Sums that depend on the order of addition in float32.
  values = np.array([1e8, 1.0, 1.0, 3.0, -1.0, -1e8, 2.0, 0.5], np.float32)
  values = np.stack([values, values[::-1]], axis=1)
  ids, segments = tf.unique(indices)
  tf_sums = tf.math.unsorted_segment_sum(values, segments, tf.size(ids))
  summed, unique = jax.jit(sparse.deduplicate, static_argnums=2)(
    values, indices, 8
  )
  u = len(ids)
  np.testing.assert_array_equal(unique[:u], ids.numpy())
  np.testing.assert_array_equal(summed[:u], tf_sums.numpy())
  np.testing.assert_array_equal(unique[u:], 8)  # Padding: out of range.
  np.testing.assert_array_equal(summed[u:], 0)


@pytest.mark.parametrize("backend", backend_params)
@pytest.mark.parametrize("path", ["P5", "P6", "P7", "P8"])
def test_empty_index_set_follows_tf(path, backend, x64):
  var_values, _ = _make_steps(7, np.float64, steps=0)
  rng = np.random.default_rng(7)
  nonempty = [
    (rng.normal(size=(4, 12)), np.array([1, 3, 1, 8], np.int32), (10, 12)),
    np.ones(3),
  ]
  empty = [(np.zeros((0, 12)), np.zeros(0, np.int32), (10, 12)), np.ones(3)]
  grad_steps = [nonempty, empty, empty]
  config = _config(path)
  tf_result = run_tf(var_values, grad_steps, **config)
  params, state = _run_jax(var_values, grad_steps, backend=backend, **config)
  _assert_same_as_tf(tf_result, params, state)


@pytest.mark.parametrize("backend", backend_params)
def test_invalid_indices_under_jit_touch_nothing(backend):
  opt = ot.rmsprop(
    learning_rate=0.1, momentum=0.9, centered=True, backend=backend
  )
  params = jnp.arange(12.0).reshape(4, 3)
  state = opt.init(params)
  values = jnp.ones((4, 3))

  @jax.jit
  def step(params, state, indices):
    updates, state = opt.update(
      ot.IndexedSlices(values, indices, (4, 3)), state
    )
    return ot.apply_updates(params, updates), state

  new_params, new_state = step(params, state, jnp.array([-1, 4, 99, 2]))
  changed = np.any(np.asarray(new_params) != np.asarray(params), axis=1)
  np.testing.assert_array_equal(changed, [False, False, True, False])
  for slot in (new_state.ms, new_state.mg, new_state.mom):
    np.testing.assert_array_equal(np.any(slot != 0, axis=1), changed)


@pytest.mark.parametrize(
  "grad, message",
  [
    (
      ot.IndexedSlices(jnp.ones((2, 3)), jnp.array([0, 4]), (4, 3)),
      r"indices\[1\] = 4 is not in \[0, 4\)",
    ),
    (
      ot.IndexedSlices(jnp.ones((2, 3)), jnp.array([-1, 0]), (4, 3)),
      r"indices\[0\] = -1",
    ),
    (
      ot.IndexedSlices(jnp.ones((2, 3)), jnp.array([0, 1]), (5, 3)),
      r"dense_shape \(5, 3\).*shape \(4, 3\)",
    ),
    (
      ot.IndexedSlices(jnp.ones((2, 2)), jnp.array([0, 1]), (4, 3)),
      r"values must have shape \(2, 3\)",
    ),
    (
      ot.IndexedSlices(
        jnp.ones((2, 3), jnp.float16), jnp.array([0, 1]), (4, 3)
      ),
      r"dtype float32",
    ),
    (
      ot.IndexedSlices(jnp.ones((2, 3)), jnp.array([0.0, 1.0]), (4, 3)),
      r"1-D integer array",
    ),
  ],
)
def test_bad_sparse_input_raises_naming_the_leaf(grad, message):
  opt = ot.rmsprop(momentum=0.9)
  state = opt.init({"table": jnp.zeros((4, 3))})
  with pytest.raises(ValueError, match=r"\['table'\]"):
    opt.update({"table": grad}, state)
  with pytest.raises(ValueError, match=message):
    opt.update({"table": grad}, state)


def test_apply_updates_mixes_dense_sparse_and_none():
  params = {"a": jnp.zeros((3, 2)), "b": jnp.ones(2), "c": None}
  updates = {
    "a": ot.IndexedSlices(jnp.ones((3, 2)), jnp.array([2, 0, 3]), (3, 2)),
    "b": jnp.full(2, 0.5),
    "c": None,
  }
  new = jax.jit(ot.apply_updates)(params, updates)
  np.testing.assert_array_equal(new["a"], [[1, 1], [0, 0], [1, 1]])
  np.testing.assert_array_equal(new["b"], [1.5, 1.5])
  assert new["c"] is None


def _embedding_model(rows, w):
  # A bag-of-embeddings classifier: mean of the rows, a dense layer, and a
  # softmax cross-entropy against class 0.
  logits = jnp.mean(rows, axis=1) @ w
  return -jnp.mean(jax.nn.log_softmax(logits)[:, 0])


def test_sparse_embedding_grad_equals_dense_gradient():
  rng = np.random.default_rng(8)
  table = jnp.asarray(rng.normal(size=(50, 6)).astype(np.float32))
  w = jnp.asarray(rng.normal(size=(6, 4)).astype(np.float32))
  ids = jnp.asarray(rng.integers(0, 50, (5, 3)))  # Duplicates likely.
  grad_fn = jax.jit(
    lambda t, i, w: ot.sparse_embedding_value_and_grad(
      _embedding_model, t, i, w
    )
  )
  loss, (table_grad, w_grad) = grad_fn(table, ids, w)
  dense_loss, (dense_table, dense_w) = jax.value_and_grad(
    lambda t, w: _embedding_model(t[ids], w), argnums=(0, 1)
  )(table, w)
  np.testing.assert_allclose(loss, dense_loss, rtol=1e-6)
  np.testing.assert_allclose(
    table_grad.to_dense(), dense_table, rtol=1e-6, atol=1e-7
  )
  np.testing.assert_allclose(w_grad, dense_w, rtol=1e-6)
  # Nothing of the table's size is computed besides the table itself.
  jaxpr = jax.make_jaxpr(grad_fn)(table, ids, w).jaxpr
  table_sized = [
    v
    for eqn in jaxpr.eqns
    for v in eqn.outvars
    if getattr(v.aval, "shape", None) == table.shape
  ]
  assert not table_sized


def test_embedding_model_trains_like_tf():
  """The helper's IndexedSlices drive rmsprop as TF's gather gradient does."""
  tf = tf_reference.tf
  rng = np.random.default_rng(9)
  table0 = rng.normal(size=(30, 6)).astype(np.float32)
  w = jnp.asarray(rng.normal(size=(6, 4)).astype(np.float32))
  batches = [rng.integers(0, 30, (4, 3)).astype(np.int32) for _ in range(10)]
  grad_steps = []
  opt = ot.rmsprop(learning_rate=0.05)
  table, state = jnp.asarray(table0), opt.init(jnp.asarray(table0))
  for ids in batches:
    _, (g, _) = ot.sparse_embedding_value_and_grad(
      _embedding_model, table, ids, w
    )
    # TF's own gradient of tf.gather for the same table and ids.
    tf_table = tf.Variable(table)
    with tf.GradientTape() as tape:
      rows = tf.gather(tf_table, ids)
      logits = tf.reduce_mean(rows, axis=1) @ np.asarray(w)
      loss = -tf.reduce_mean(tf.nn.log_softmax(logits)[:, 0])
    tf_grad = tape.gradient(loss, tf_table)
    assert isinstance(tf_grad, tf.IndexedSlices)
    np.testing.assert_array_equal(g.indices, tf_grad.indices.numpy())
    np.testing.assert_allclose(
      g.values, tf_grad.values.numpy(), rtol=1e-5, atol=1e-7
    )
    grad_steps.append(
      [(np.asarray(g.values), np.asarray(g.indices), table0.shape)]
    )
    updates, state = opt.update(g, state)
    table = ot.apply_updates(table, updates)
  tf_vars, _, _ = run_tf([table0], grad_steps, learning_rate=0.05)
  np.testing.assert_array_equal(table, tf_vars[0])


@needs_kernel
@pytest.mark.parametrize("centered", [False, True])
def test_kernel_updates_the_touched_rows_in_place(centered):
  shape = (100_000, 64)
  opt = ot.rmsprop(0.01, momentum=0.9, centered=centered, backend="ffi")
  params = jnp.zeros(shape)
  state = opt.init(params)
  grad = ot.IndexedSlices(jnp.ones((256, 64)), jnp.arange(256) * 7, shape)
  step = jax.jit(
    lambda p, s, g: ot.rmsprop_apply(
      p, g, s, learning_rate=0.01, momentum=0.9, backend="ffi"
    ),
    donate_argnums=(0, 1),
  )
  compiled = step.lower(params, state, grad).compile()
  hlo = compiled.as_text()
  assert "tfrmsprop_sparse" in hlo and " copy(" not in hlo
  table_bytes = params.size * params.dtype.itemsize
  assert compiled.memory_analysis().temp_size_in_bytes < table_bytes // 100


@needs_kernel
def test_sparse_kernel_lowers_to_jnp_off_cpu():
  opt = ot.rmsprop(0.01, momentum=0.9, backend="ffi")
  state = opt.init(jnp.zeros((10, 16)))
  grad = ot.IndexedSlices(jnp.ones((3, 16)), jnp.array([1, 2, 1]), (10, 16))
  update = jax.jit(opt.update)
  for platform, has_kernel in (("cpu", True), ("cuda", False), ("tpu", False)):
    exported = jax.export.export(
      update,
      platforms=[platform],
      disabled_checks=[
        jax.export.DisabledSafetyCheck.custom_call("tfrmsprop_sparse")
      ],
    )(grad, state)
    assert ("tfrmsprop_sparse" in exported.mlir_module()) == has_kernel


@needs_kernel
@pytest.mark.parametrize("centered", [False, True])
def test_kernel_update_rows_are_laid_out_as_deduplicate(centered, x64):
  """Same distinct indices, order and padding; same rows (float64: exact)."""
  rng = np.random.default_rng(12)
  shape = (6, 9)
  values = jnp.asarray(rng.normal(size=(8, 9)))
  indices = jnp.array([4, 1, 4, 7, 0, 1, -2, 4])  # duplicates and invalid

  def update(backend):
    opt = ot.rmsprop(0.01, momentum=0.9, centered=centered, backend=backend)
    state = opt.init(jnp.ones(shape))
    return jax.jit(opt.update)(ot.IndexedSlices(values, indices, shape), state)

  (ours, state), (theirs, xla_state) = update("ffi"), update("xla")
  np.testing.assert_array_equal(ours.indices, [4, 1, 6, 0, 6, 6, 6, 6])
  np.testing.assert_array_equal(ours.indices, theirs.indices)
  valid = np.asarray(ours.indices) < shape[0]
  np.testing.assert_array_equal(
    np.asarray(ours.values)[valid], np.asarray(theirs.values)[valid]
  )
  assert np.all(np.signbit(ours.values[~valid]) & (ours.values[~valid] == 0))
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(xla_state)):
    np.testing.assert_array_equal(a, b)


# Misuse found by a hostile tester: each was silently wrong or a bare error.


@pytest.mark.parametrize(
  "values, indices, dense_shape, message",
  [
    (np.ones((2, 1)), [1, 2], (6, 3), r"values must have shape \(2, 3\)"),
    (np.arange(3.0), [0, 1, 2], (6, 3), r"values must have shape \(3, 3\)"),
    (np.ones((2, 3)), np.array([1.7, 2.0]), (6, 3), "1-D integer array"),
    (np.ones((2, 3)), [1, 2], (99, 3), r"dense_shape \(99, 3\)"),
  ],
)
def test_apply_updates_refuses_rows_that_do_not_fit(
  values, indices, dense_shape, message
):
  params = {"t": jnp.zeros((6, 3))}
  update = sparse.IndexedSlices(
    jnp.asarray(values, jnp.float32), jnp.asarray(indices), dense_shape
  )
  with pytest.raises(ValueError, match=r"Sparse update at \['t'\].*" + message):
    ot.apply_updates(params, {"t": update})


def test_an_optax_transform_after_rmsprop_that_scales_indices_is_caught():
  """optax.scale multiplies an IndexedSlices' indices too (to floats)."""
  import optax

  params = {"t": jnp.zeros((6, 3))}
  opt = optax.chain(ot.rmsprop(0.1, momentum=0.9), optax.scale(2.0))
  grads = {
    "t": sparse.IndexedSlices(jnp.ones((2, 3)), jnp.array([1, 2]), (6, 3))
  }
  updates, _ = opt.update(grads, opt.init(params))
  with pytest.raises(ValueError, match="1-D integer array"):
    ot.apply_updates(params, updates)


def test_scalar_params_and_tables_have_no_rows():
  state = ot.rmsprop_init({"t": jnp.float32(1.0)})
  scalar_rows = sparse.IndexedSlices(jnp.ones((1,)), jnp.array([0]), ())
  with pytest.raises(ValueError, match=r"\['t'\].*parameter is a scalar"):
    ot.rmsprop_update({"t": scalar_rows}, state)
  with pytest.raises(ValueError, match="parameter is a scalar"):
    ot.apply_updates({"t": jnp.float32(1.0)}, {"t": scalar_rows})
  with pytest.raises(ValueError, match="table must have rows"):
    ot.sparse_embedding_value_and_grad(jnp.sum, jnp.float32(1.0), jnp.array(0))


def test_float_ids_are_refused_under_jit_too():
  table = jnp.ones((6, 3))
  step = jax.jit(
    lambda ids: ot.sparse_embedding_value_and_grad(jnp.sum, table, ids)
  )
  with pytest.raises(TypeError, match="ids must be integers"):
    step(jnp.array([1.7, 2.2]))


@pytest.mark.parametrize("backend", backend_params)
def test_numpy_float64_values_are_the_slot_dtype_on_every_backend(backend):
  """Without x64, jax holds them as float32; the kernel got float64."""
  params = {"t": jnp.zeros((4, 3))}
  opt = ot.rmsprop(0.1, momentum=0.9, backend=backend)
  rows = np.ones((2, 3), np.float64)
  as_f64 = sparse.IndexedSlices(rows, jnp.array([1, 2]), (4, 3))
  as_f32 = sparse.IndexedSlices(
    jnp.asarray(rows, jnp.float32), jnp.array([1, 2]), (4, 3)
  )
  state = opt.init(params)
  toolbox.assert_bitwise(
    opt.update({"t": as_f64}, state)[0]["t"].values,
    opt.update({"t": as_f32}, state)[0]["t"].values,
  )
