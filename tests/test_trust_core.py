"""The functional core at its edges: misuse raises, the XLA path stays exact.

Regression tests of issue 12 (items 3, 4, 9, 11 and 13): every public
combination of calls computes what a named TF optimizer computes, or raises
an ordinary exception naming the argument before anything is computed.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_tfrmsprop as ot
from optax_tfrmsprop._src import base
import toolbox

PARAMS = {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.ones(3)}
GRADS = jax.tree.map(lambda p: p * 0.5 + 0.25, PARAMS)


# Item 3: the arguments must agree with the state.


@pytest.mark.parametrize("fused", [False, True], ids=["update", "apply"])
def test_momentum_without_mom_slot_raises_and_says_how_to_build_it(fused):
  state = ot.rmsprop_init(PARAMS)
  call = (
    (lambda **kw: ot.rmsprop_apply(PARAMS, GRADS, state, **kw))
    if fused
    else (lambda **kw: ot.rmsprop_update(GRADS, state, **kw))
  )
  for momentum in (0.9, np.float32(0.5), jnp.asarray(0.1)):
    with pytest.raises(ValueError, match=r"momentum=.*mom slot.*rmsprop_init"):
      call(momentum=momentum)
  # Under jit a Python momentum is still known at trace time.
  with pytest.raises(ValueError, match="momentum"):
    jax.jit(lambda g, s: ot.rmsprop_update(g, s, momentum=0.9))(GRADS, state)
  call(momentum=0.0)  # TF's momentum-free path: fine.


@pytest.mark.parametrize(
  "make",
  [ot.rmsprop, ot.tf1_rmsprop, ot.keras3_rmsprop],
  ids=lambda f: f.__name__,
)
def test_an_optimizer_refuses_a_state_of_another_configuration(make):
  """The slots pick TF's path: a state built for another one is refused."""
  configs = [
    dict(learning_rate=0.01, momentum=m, centered=c)
    for m in (0.0, 0.9)
    for c in (False, True)
  ]
  for built in configs:
    state = make(**built).init(PARAMS)
    for config in configs:
      opt = make(**config)
      same = (state.mg is None, state.mom is None) == (
        opt.init(PARAMS).mg is None,
        opt.init(PARAMS).mom is None,
      )
      if same:
        opt.update(GRADS, state)
      else:
        with pytest.raises(ValueError, match=r"the (mg|mom) slot.*init"):
          opt.update(GRADS, state)
  # inject_hyperparams passes momentum as an array: init and update agree.
  injected = optax.inject_hyperparams(make)(
    learning_rate=0.01, momentum=0.0, centered=True
  )
  injected.update(GRADS, injected.init(PARAMS))


def test_init_momentum_argument_applies_tfs_rule():
  assert ot.rmsprop_init(PARAMS, momentum=0.9).mom is not None
  assert ot.rmsprop_init(PARAMS, momentum=0.0).mom is None
  assert ot.rmsprop_init(PARAMS, momentum=jnp.asarray(0.0)).mom is not None
  assert ot.rmsprop_init(PARAMS, momentum=0.0, flavor="tf1").mom is not None
  with pytest.raises(ValueError, match="use_momentum=False contradicts"):
    ot.rmsprop_init(PARAMS, use_momentum=False, momentum=0.9)
  with pytest.raises(ValueError, match="momentum"):
    ot.rmsprop_init(PARAMS, momentum=1.5)
  # Built so, the state and the update cannot disagree; equal to rmsprop.
  state = ot.rmsprop_init(PARAMS, momentum=0.9)
  updates, state = ot.rmsprop_update(GRADS, state, momentum=0.9)
  opt = ot.rmsprop(momentum=0.9)
  expected, expected_state = opt.update(GRADS, opt.init(PARAMS))
  jax.tree.map(
    np.testing.assert_array_equal, (updates, state), (expected, expected_state)
  )


def test_tf1_state_needs_its_mom_slot():
  state = ot.tf1_rmsprop(0.1).init(PARAMS)
  with pytest.raises(ValueError, match="always has one"):
    ot.rmsprop_update(GRADS, state.replace(mom=None), learning_rate=0.1)
  with pytest.raises(ValueError, match="flavor='tf1' does not match"):
    ot.rmsprop_update(GRADS, ot.rmsprop_init(PARAMS), flavor="tf1")


@pytest.mark.parametrize(
  "option",
  [
    {"decay": 0.1},
    {"clipvalue": 1.0},
    {"clipnorm": 1.0},
    {"global_clipnorm": 1.0},
  ],
)
@pytest.mark.parametrize("flavor", ["tf1", "keras3"])
def test_options_the_flavor_lacks_raise(flavor, option):
  """TF1 has no decay or clipping; Keras 3 ignores ``decay``.

  Keras 3 also clips with formulas of its own, which are not reproduced.
  """
  state = ot.rmsprop_init(PARAMS, flavor=flavor)
  ((name, _),) = option.items()
  with pytest.raises(ValueError, match=rf"{name}=.*has no {name}"):
    ot.rmsprop_update(GRADS, state, learning_rate=0.1, **option)


def test_state_slots_must_match_each_other_and_the_params():
  state = ot.rmsprop_init(PARAMS, centered=True, momentum=0.9)
  bad_mg = dict(state.mg, w=jnp.zeros((3, 2)))
  with pytest.raises(
    ValueError, match=r"state.mg at \['w'\] has shape \(3, 2\)"
  ):
    ot.rmsprop_update(GRADS, state.replace(mg=bad_mg), momentum=0.9)
  bad_mom = dict(state.mom, b=jnp.zeros(3, jnp.float16))
  with pytest.raises(ValueError, match=r"state.mom at \['b'\].*float16"):
    ot.rmsprop_update(GRADS, state.replace(mom=bad_mom), momentum=0.9)
  with pytest.raises(
    ValueError, match="state.mom does not match the optimizer state's structure"
  ):
    ot.rmsprop_update(
      GRADS, state.replace(mom={"w": state.mom["w"]}), momentum=0.9
    )
  with pytest.raises(ValueError, match="count must be an integer scalar"):
    ot.rmsprop_update(GRADS, state.replace(count=jnp.zeros(2)), momentum=0.9)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_apply_params_must_match_the_state(sparse):
  """Params of another shape or dtype than the slots are refused.

  The sparse case wrote out of bounds in the CPU kernel.
  """
  table = jnp.zeros((20, 4))
  state = ot.rmsprop_init(table, momentum=0.9)
  grad = (
    ot.IndexedSlices(jnp.ones((1, 4)), jnp.array([19]), (20, 4))
    if sparse
    else jnp.ones((20, 4))
  )
  for params, message in (
    (jnp.zeros((2, 4)), r"shape \(2, 4\)"),
    (jnp.zeros((20, 4), jnp.int32), "int32"),
    ({"t": table}, "params does not match"),
  ):
    with pytest.raises(ValueError, match=message):
      ot.rmsprop_apply(params, grad, state, momentum=0.9)


# Item 11: every argument of rmsprop_update / rmsprop_apply is validated.


@pytest.mark.parametrize(
  "kwargs, error, name",
  [
    ({"clipvalue": -1.0}, ValueError, "clipvalue"),
    ({"clipnorm": -1.0}, ValueError, "clipnorm"),
    ({"global_clipnorm": -1.0}, ValueError, "global_clipnorm"),
    ({"clipnorm": 1.0, "global_clipnorm": 1.0}, ValueError, "global_clipnorm"),
    ({"learning_rate": "0.1"}, TypeError, "learning_rate"),
    ({"learning_rate": -0.1}, ValueError, "learning_rate"),
    ({"learning_rate": jnp.ones(2)}, ValueError, "learning_rate"),
    ({"rho": 1.5}, ValueError, "rho"),
    ({"momentum": -0.5}, ValueError, "momentum"),
    ({"momentum": lambda: 0.5}, TypeError, "momentum"),
    ({"epsilon": -1e-7}, ValueError, "epsilon"),
    ({"epsilon": None}, TypeError, "epsilon"),
    ({"decay": -1.0}, ValueError, "decay"),
    ({"rounding": "fast"}, ValueError, "rounding"),
    ({"backend": "gpu"}, ValueError, "backend"),
    ({"flavor": "tf3"}, ValueError, "flavor"),
  ],
)
@pytest.mark.parametrize("fused", [False, True], ids=["update", "apply"])
def test_invalid_arguments_raise_naming_them(kwargs, error, name, fused):
  state = ot.rmsprop_init(PARAMS)
  with pytest.raises(error, match=name):
    if fused:
      ot.rmsprop_apply(PARAMS, GRADS, state, **kwargs)
    else:
      ot.rmsprop_update(GRADS, state, **kwargs)


def test_schedule_returning_an_array_raises_at_trace_time():
  state = ot.rmsprop_init(PARAMS)
  schedule = lambda count: jnp.full((2, 3), 0.1)
  with pytest.raises(ValueError, match=r"learning_rate.*scalar.*\(2, 3\)"):
    jax.jit(lambda g, s: ot.rmsprop_update(g, s, learning_rate=schedule))(
      GRADS, state
    )
  with pytest.raises(ValueError, match="learning_rate"):
    ot.rmsprop(learning_rate=schedule).update(GRADS, state)


@pytest.mark.parametrize("returned", [None, "0.1", True, 1j])
def test_schedule_returning_no_real_number_raises_naming_it(returned):
  state = ot.rmsprop_init(PARAMS)
  with pytest.raises(TypeError, match="learning_rate: .*real number"):
    ot.rmsprop_update(GRADS, state, learning_rate=lambda count: returned)


@pytest.mark.parametrize("backend", toolbox.backend_params)
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_python_number_gradient_is_an_array_of_the_params_dtype(
  backend, momentum
):
  params = jnp.float32(1.0)
  state = ot.rmsprop_init(params, momentum=momentum)
  step = lambda g: ot.rmsprop_apply(
    params, g, state, momentum=momentum, backend=backend
  )
  toolbox.assert_bitwise(step(0.5), step(jnp.float32(0.5)))


def test_traced_hyperparameters_of_the_wrong_shape_raise():
  state = ot.rmsprop_init(PARAMS)
  with pytest.raises(ValueError, match=r"rho must be a scalar"):
    jax.jit(lambda g, s, r: ot.rmsprop_update(g, s, rho=r))(
      GRADS, state, jnp.full(3, 0.9)
    )


# Item 13: parameters of dtypes TF's RMSprop does not update.


@pytest.mark.parametrize(
  "dtype, message",
  [
    (jnp.int32, r"\['w'\] has dtype int32"),
    (jnp.uint8, r"\['w'\] has dtype uint8"),
    (jnp.bool_, r"\['w'\] has dtype bool"),
  ],
)
@pytest.mark.parametrize("make", ["rmsprop", "tf1_rmsprop", "keras3_rmsprop"])
def test_non_float_params_raise_naming_leaf_and_dtype(make, dtype, message):
  params = {"w": jnp.ones(3, dtype), "b": jnp.ones(2)}
  with pytest.raises(TypeError, match=message):
    getattr(ot, make)(0.1).init(params)
  with pytest.raises(TypeError, match=message):
    ot.rmsprop_init(params)
  # A state built by hand is checked too.
  state = base.RMSpropState(count=jnp.zeros([], jnp.int32), ms=params)
  with pytest.raises(TypeError, match=message):
    ot.rmsprop_update(params, state)


def test_masked_integer_leaves_are_fine():
  params = {"w": jnp.ones(3), "step": jnp.zeros((), jnp.int32)}
  opt = optax.masked(ot.rmsprop(0.1), {"w": True, "step": False})
  state = opt.init(params)
  updates, _ = opt.update(
    {"w": jnp.ones(3), "step": jnp.zeros((), jnp.int32)}, state
  )
  assert updates["w"].shape == (3,)


# Item 9: indices beyond int32 never wrap; embedding gradients are jax.grad's.


def test_int64_indices_beyond_int32_are_refused_without_x64():
  indices = np.array([1, 2**32 + 2], np.int64)
  with pytest.raises(ValueError, match=r"indices\[1\] = 4294967298 .*int32"):
    ot.IndexedSlices(jnp.ones((2, 3)), indices, (4, 3))
  with pytest.raises(ValueError, match=r"indices\[0\] = -4294967295"):
    ot.IndexedSlices(jnp.ones((1, 3)), [-(2**32) + 1], (4, 3))
  with pytest.raises(ValueError, match=r"ids\[0, 1\] = 4294967298"):
    ot.sparse_embedding_value_and_grad(
      jnp.sum, jnp.ones((4, 3)), np.array([[0, 2**32 + 2]])
    )
  # In range, int64 numpy indices are fine.
  ot.IndexedSlices(jnp.ones((2, 3)), np.array([1, 3], np.int64), (4, 3))


@pytest.mark.parametrize("backend", ["xla", "ffi"])
def test_int64_indices_beyond_int32_under_jit_with_x64_touch_nothing(
  backend, x64
):
  del x64
  if backend == "ffi" and not ot.cpu_kernel_is_built():
    pytest.skip("the CPU kernel is not built")
  opt = ot.rmsprop(0.1, momentum=0.9, backend=backend)
  params = jnp.arange(12.0).reshape(4, 3)
  state = opt.init(params)

  @jax.jit
  def step(params, state, grad):
    updates, state = opt.update(grad, state)
    return ot.apply_updates(params, updates), state

  grad = ot.IndexedSlices(
    jnp.ones((2, 3)), np.array([2**32 + 2, 1], np.int64), (4, 3)
  )
  new_params, new_state = step(params, state, grad)
  changed = np.any(np.asarray(new_params) != np.asarray(params), axis=1)
  np.testing.assert_array_equal(changed, [False, True, False, False])
  np.testing.assert_array_equal(np.any(new_state.ms != 0, axis=1), changed)


def _bag_loss(rows, w):
  return jnp.sum(jnp.tanh(jnp.mean(rows, axis=1) @ w))


def test_embedding_grad_with_invalid_ids_is_jax_grad_of_its_forward():
  """Under jit, invalid ids read zero rows and get no gradient.

  The IndexedSlices densifies to ``jax.grad`` of the loss it returns.
  """
  rng = np.random.default_rng(3)
  table = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(4, 2)), jnp.float32)
  ids = jnp.array([[0, -1, 5], [2, 6, -6]])  # -1, 6, -6 invalid

  loss, (g, w_grad) = jax.jit(
    lambda t, i, w: ot.sparse_embedding_value_and_grad(_bag_loss, t, i, w)
  )(table, ids, w)

  def forward(t, w):
    valid = (ids >= 0) & (ids < t.shape[0])
    rows = jnp.where(valid[..., None], t[jnp.clip(ids, 0, t.shape[0] - 1)], 0)
    return _bag_loss(rows, w)

  want_loss, (want_table, want_w) = jax.value_and_grad(forward, (0, 1))(
    table, w
  )
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
  np.testing.assert_allclose(g.to_dense(), want_table, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(w_grad, want_w, rtol=1e-6)
  assert not np.any(np.asarray(g.to_dense())[[1, 3, 4]])  # untouched rows


@pytest.mark.parametrize("bad", [-1, 6])
def test_embedding_grad_with_concrete_invalid_ids_raises(bad):
  with pytest.raises(ValueError, match=rf"ids\[1\] = {bad} is not in \[0, 6\)"):
    ot.sparse_embedding_value_and_grad(
      jnp.sum, jnp.ones((6, 4)), jnp.array([0, bad])
    )


# Item 4: the XLA path's rounding barriers, against TF.


@pytest.mark.parametrize("backend", toolbox.backend_params)
def test_global_clipnorm_momentum_centered_matches_tf(backend):
  """Issue 12's case: ``g * scale`` was fused into ``g - mg`` on XLA.

  Up to 4,096 ULP on ``mg`` after 3 steps, measured on main.
  """
  import tf_reference

  rng = np.random.default_rng(0)
  variables = [rng.standard_normal(10_000).astype(np.float32)]
  steps = [
    [(rng.standard_normal(10_000) * 3).astype(np.float32)] for _ in range(3)
  ]
  config = dict(
    learning_rate=0.01, momentum=0.9, centered=True, global_clipnorm=1.0
  )
  tf_vars, tf_slots, _ = tf_reference.run_tf(variables, steps, **config)
  opt = ot.rmsprop(**config, backend=backend)
  params = [jnp.asarray(v) for v in variables]
  state = opt.init(params)

  @jax.jit
  def step(params, state, grads):
    updates, state = opt.update(grads, state)
    return optax.apply_updates(params, updates), state

  for grads in steps:
    params, state = step(params, state, grads)
  toolbox.assert_same_as_tf(params, state, tf_vars, tf_slots)


@pytest.mark.parametrize("sparse", [False, True])
def test_global_clipnorm_of_mixed_dtypes_raises_like_tf(sparse, x64):
  """tf.clip_by_global_norm stacks the norms: one dtype or an exception."""
  import tf_reference

  variables = [np.ones(3, np.float32), np.ones(2, np.float64)]
  grads = [np.full(3, 2, np.float32), np.full(2, 2, np.float64)]
  if sparse:
    grads[1] = (grads[1][:1], np.array([1]), np.array([2]))
  with pytest.raises(TypeError, match="float"):  # Pack of float and double.
    tf_reference.run_tf(variables, [grads], global_clipnorm=0.5)
  jax_grads = [
    ot.IndexedSlices(jnp.asarray(g[0]), jnp.asarray(g[1]), (2,))
    if isinstance(g, tuple)
    else jnp.asarray(g)
    for g in grads
  ]
  opt = ot.rmsprop(0.1, global_clipnorm=0.5)
  state = opt.init([jnp.asarray(v) for v in variables])
  with pytest.raises(
    TypeError,
    match=r"global_clipnorm=0.5: .*\[0\] is float32, \[1\] is float64",
  ):
    opt.update(jax_grads, state)
  keras = ot.RMSprop(0.1, global_clipnorm=0.5)
  params = [ot.Variable(v) for v in variables]
  with pytest.raises(TypeError, match="global_clipnorm"):
    keras.apply_gradients(zip(jax_grads, params))
  assert int(keras.iterations) == 0
  for param, value in zip(params, variables):
    np.testing.assert_array_equal(np.asarray(param), value)
  # One dtype clips as before.
  same = [jnp.ones(3), jnp.ones(2)]
  opt.update(same, opt.init(same))


def test_hyperparams_record_is_in_the_kernels_operand_order():
  from optax_tfrmsprop._src import cpu_kernel

  assert base.Hyperparams._fields == cpu_kernel.HYPER_ORDER
  h = base.Hyperparams(*(jnp.float32(i) for i in range(5)))
  np.testing.assert_array_equal(h.operand(), np.arange(5, dtype=np.float32))
