"""TF1 and Keras 3 presets against the real TF1 and Keras 3 optimizers."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_tfrmsprop
from optax_tfrmsprop._src import base
from optax_tfrmsprop._src import transform
import tf_reference
import toolbox
from toolbox import DENSE_PATHS

pytestmark = pytest.mark.usefixtures(
  "both_backends"
)  # TF tests on both backends.

STEPS = 200
SHAPES = ((37,), (5, 9))


def _problem(dtype, steps=STEPS, seed=0):
  return toolbox.problem(seed, dtype, steps, SHAPES)


def tf1_ulps(path, rounding, dtype=np.float32, steps=STEPS, **config):
  """Largest ULP distances (vars and each slot) of tf1_rmsprop vs TF1.

  TF1 always runs its momentum kernels: P1/P2's options (momentum 0) take
  them with a zero momentum.
  """
  values, grad_steps = _problem(dtype, steps)
  config = toolbox.options(path, learning_rate=0.01, **config)
  tf_vars, tf_slots = tf_reference.run_tf1(
    values, grad_steps, jit_compile=rounding == "tf_xla", **config
  )
  params, state = toolbox.run(
    optax_tfrmsprop.tf1_rmsprop(**config, rounding=rounding), values, grad_steps
  )
  return toolbox.slot_ulps(params, state, tf_vars, tf_slots, "tf1")


def keras3_ulps(
  path, rounding, dtype=np.float32, steps=STEPS, eager=None, **config
):
  """Largest ULP distances (vars and each slot) of keras3_rmsprop vs Keras 3.

  By default Keras 3 runs eagerly for ``"tf_cpu"`` (its ops as written) and in
  ``tf.function(jit_compile=True)`` for ``"tf_xla"``.
  """
  values, grad_steps = _problem(dtype, steps)
  config = toolbox.options(path, learning_rate=0.01, **config)
  xla = rounding == "tf_xla"
  tf_vars, opt = tf_reference.run_keras3(
    values,
    grad_steps,
    jit_compile=xla,
    eager=not xla if eager is None else eager,
    **config,
  )
  params, state = toolbox.run(
    optax_tfrmsprop.keras3_rmsprop(**config, rounding=rounding),
    values,
    grad_steps,
  )
  assert int(opt.iterations.numpy()) == int(state.count) == steps
  return toolbox.slot_ulps(params, state, tf_vars, keras3_slots(opt), "keras3")


def keras3_slots(opt):
  """Keras 3's variables by slot name, as ``tf_reference.run_tf`` gives TF's."""
  lists = {
    "velocity": opt._velocities,
    "momentum": opt._momentums,  # [] without momentum
    "average_gradient": opt._average_gradients,  # [] unless centered
  }
  return {k: [v.numpy() for v in vs] for k, vs in lists.items() if vs}


@pytest.mark.parametrize("rounding", base.ROUNDINGS)
@pytest.mark.parametrize("path", DENSE_PATHS)
def test_tf1_matches_tf1_optimizer_f32(path, rounding):
  ulps = tf1_ulps(path, rounding)
  assert ulps == dict.fromkeys(ulps, 0)


@pytest.mark.parametrize("rounding", base.ROUNDINGS)
@pytest.mark.parametrize("path", DENSE_PATHS)
def test_keras3_matches_keras3_optimizer_f32(path, rounding):
  ulps = keras3_ulps(path, rounding)
  assert ulps == dict.fromkeys(ulps, 0)


@pytest.mark.parametrize("path", ["P1", "P4"])
def test_presets_match_in_float64(x64, path):
  # TF1 rounds epsilon (1e-10) through float32; Keras 3 converts it directly
  # and computes 1 - rho in double.
  tf1 = tf1_ulps(path, "tf_cpu", np.float64, steps=50)
  keras3 = keras3_ulps(path, "tf_cpu", np.float64, steps=50)
  assert tf1 == dict.fromkeys(tf1, 0)
  assert keras3 == dict.fromkeys(keras3, 0)


def test_tf1_keeps_zero_epsilon():
  ulps = tf1_ulps("P3", "tf_cpu", steps=20, epsilon=0.0, momentum=0.5)
  assert ulps == dict.fromkeys(ulps, 0)


def test_keras3_keeps_zero_epsilon():
  ulps = keras3_ulps("P1", "tf_cpu", steps=20, epsilon=0.0, rho=0.8)
  assert ulps == dict.fromkeys(ulps, 0)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_keras3_in_tf_function_is_close_not_exact(momentum):
  # Inside tf.function grappler turns Keras 3's x / sqrt(d) into
  # x * rsqrt(d), and TF's CPU rsqrt is a hardware estimate plus one Newton
  # step; "tf_cpu" reproduces the ops as Keras writes them instead.
  # Both are within the bound of tf_reference.packet_rsqrt_drift: TF's rsqrt
  # (an estimate and a Newton step) against a correctly rounded division.
  steps = 50
  values, grad_steps = _problem(np.float32, steps)
  config = dict(learning_rate=0.01, momentum=momentum)
  tf_vars, _ = tf_reference.run_keras3(values, grad_steps, **config)
  params, _ = toolbox.run(
    optax_tfrmsprop.keras3_rmsprop(**config), values, grad_steps
  )
  for p, v in zip(params, tf_vars):
    np.testing.assert_allclose(
      p,
      v,
      rtol=2 * steps * tf_reference.U32,
      atol=tf_reference.packet_rsqrt_drift(steps, 0.01, 0.9, momentum),
    )


def test_preset_states():
  params = {"w": jnp.zeros(3), "b": jnp.zeros((), jnp.bfloat16)}
  tf1 = optax_tfrmsprop.tf1_rmsprop(0.1).init(params)
  assert tf1.mg is None and tf1.mom is not None
  np.testing.assert_array_equal(tf1.ms["w"], np.ones(3))
  assert tf1.ms["b"].dtype == jnp.bfloat16 and tf1.ms["b"] == 1
  tf1c = optax_tfrmsprop.tf1_rmsprop(0.1, centered=True).init(params)
  np.testing.assert_array_equal(tf1c.mg["w"], np.zeros(3))
  keras3 = optax_tfrmsprop.keras3_rmsprop().init(params)
  assert keras3.mom is None and keras3.mg is None
  np.testing.assert_array_equal(keras3.ms["w"], np.zeros(3))
  assert optax_tfrmsprop.keras3_rmsprop(momentum=0.5).init(params).mom


def test_presets_work_with_inject_hyperparams():
  params = jnp.arange(4.0)
  # Keras 3 computes 1 - rho in double from a Python rho only, and takes the
  # momentum path from a Python momentum > 0: both stay static.
  for preset, static in (
    (optax_tfrmsprop.tf1_rmsprop, ()),
    (optax_tfrmsprop.keras3_rmsprop, ("momentum", "rho")),
  ):
    plain = preset(learning_rate=0.1)
    injected = optax.inject_hyperparams(preset, static_args=static)(
      learning_rate=0.1
    )
    u1, _ = jax.jit(plain.update)(params, plain.init(params))
    u2, _ = jax.jit(injected.update)(params, injected.init(params))
    np.testing.assert_array_equal(u1, u2)


@pytest.mark.parametrize("preset", ["tf1_rmsprop", "keras3_rmsprop"])
def test_presets_reject_bad_arguments(preset):
  make = getattr(optax_tfrmsprop, preset)
  with pytest.raises(ValueError, match="learning_rate"):
    make(learning_rate=-1.0)
  with pytest.raises(ValueError, match="epsilon"):
    make(learning_rate=0.1, epsilon=-1.0)
  with pytest.raises(ValueError, match="rounding"):
    make(learning_rate=0.1, rounding="gpu")


def test_rmsprop_update_rejects_unknown_flavor():
  state = transform.rmsprop_init(jnp.zeros(2))
  with pytest.raises(ValueError, match="flavor"):
    transform.rmsprop_update(jnp.ones(2), state, flavor="tf3")


# A worked reproduction: EfficientNet's TF1 optimizer settings on a small conv
# net, trained in TF and in JAX.
EFFICIENTNET = dict(learning_rate=0.016, decay=0.9, momentum=0.9, epsilon=1e-3)


def _conv_data(steps, batch=16, seed=0):
  rng = np.random.default_rng(seed)
  params = dict(
    conv_w=(rng.standard_normal((3, 3, 3, 8)) * 0.3).astype(np.float32),
    conv_b=np.zeros(8, np.float32),
    dense_w=(rng.standard_normal((8, 4)) * 0.5).astype(np.float32),
    dense_b=np.zeros(4, np.float32),
  )
  # 64 images cycled in batches; the labels come from a fixed "teacher" of
  # the per-channel means, so the net has something to learn.
  images = rng.standard_normal((64, 8, 8, 3)).astype(np.float32)
  labels = np.argmax(
    images.mean(axis=(1, 2)) @ rng.standard_normal((3, 4)), axis=1
  )
  batches = [np.arange(i * batch, (i + 1) * batch) % 64 for i in range(steps)]
  return params, images[batches], labels[batches]


def _jax_loss(params, x, y):
  h = jax.lax.conv_general_dilated(
    x,
    params["conv_w"],
    (1, 1),
    "SAME",
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
  )
  h = jnp.mean(jax.nn.relu(h + params["conv_b"]), axis=(1, 2))
  logits = h @ params["dense_w"] + params["dense_b"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _train_tf1(params, xs, ys):
  """TF1 optimizer on the same net; returns losses, grads and final params."""
  tf = tf_reference.tf
  variables = {k: tf.Variable(v) for k, v in params.items()}
  opt = tf.compat.v1.train.RMSPropOptimizer(**EFFICIENTNET)

  @tf.function
  def step(x, y):
    with tf.GradientTape() as tape:
      h = tf.nn.conv2d(x, variables["conv_w"], 1, "SAME")
      h = tf.reduce_mean(tf.nn.relu(h + variables["conv_b"]), axis=(1, 2))
      logits = h @ variables["dense_w"] + variables["dense_b"]
      loss = tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)
      )
    grads = tape.gradient(loss, variables)
    opt.apply_gradients([(grads[k], variables[k]) for k in variables])
    return loss, grads

  losses, grad_steps = [], []
  for x, y in zip(xs, ys):
    loss, grads = step(x, y)
    losses.append(float(loss))
    grad_steps.append({k: g.numpy() for k, g in grads.items()})
  return (
    np.array(losses),
    grad_steps,
    {k: v.numpy() for k, v in variables.items()},
  )


@pytest.mark.slow
def test_tf1_efficientnet_settings_reproduce_training():
  steps = 300
  params, xs, ys = _conv_data(steps)
  tf_losses, tf_grads, tf_params = _train_tf1(params, xs, ys)
  opt = optax_tfrmsprop.tf1_rmsprop(**EFFICIENTNET)

  # Fed TF's gradients, the preset walks TF's trajectory bit for bit.
  replayed, _ = toolbox.run(
    opt,
    [params[k] for k in sorted(params)],
    [[g[k] for k in sorted(g)] for g in tf_grads],
  )
  toolbox.assert_ulp(replayed, [tf_params[k] for k in sorted(params)])

  # Trained end to end in JAX (lax.conv, JAX's own gradients), the loss curve
  # follows TF's; the residue is the conv/matmul gradient summation order.
  @jax.jit
  def step(params, state, x, y):
    loss, grads = jax.value_and_grad(_jax_loss)(params, x, y)
    updates, state = opt.update(grads, state)
    return optax.apply_updates(params, updates), state, loss

  p = {k: jnp.asarray(v) for k, v in params.items()}
  state = opt.init(p)
  jax_losses = []
  for x, y in zip(xs, ys):
    p, state, loss = step(p, state, x, y)
    jax_losses.append(float(loss))
  np.testing.assert_allclose(jax_losses, tf_losses, rtol=5e-4)
  assert tf_losses[-20:].mean() < 0.1 * tf_losses[:20].mean()  # It learns.


def _sparse_problem(steps=40, seed=5):
  """A 30 x 67 table (IndexedSlices with duplicate rows) and a dense vector.

  The rows are wider than a packet.
  """
  return toolbox.problem(
    seed, np.float32, steps, [toolbox.Table(30, 67, 12), (5,)]
  )


@pytest.mark.parametrize("centered", [False, True])
def test_tf1_sparse_gradients_match_tf1(centered, both_backends):
  """TF1 sums duplicate rows, then runs its sparse kernels (P7/P8).

  Bitwise on the CPU kernel; the jnp path's float32 packet rsqrt differs on
  some lanes (docs/sparse.md), so there it is within the bound derived in
  ``tf_reference.packet_rsqrt_drift``.
  """
  values, grad_steps = _sparse_problem()
  config = dict(learning_rate=0.01, momentum=0.5, centered=centered)
  tf_vars, _ = tf_reference.run_tf1(values, grad_steps, **config)
  params, _ = toolbox.run(
    optax_tfrmsprop.tf1_rmsprop(**config), values, grad_steps
  )
  if both_backends == "ffi":
    toolbox.assert_ulp(params, tf_vars)
  else:
    steps = len(grad_steps)
    np.testing.assert_allclose(
      params[0],
      tf_vars[0],
      rtol=2 * steps * tf_reference.U32,
      atol=tf_reference.packet_rsqrt_drift(steps, 0.01, 0.9, 0.5),
    )
    np.testing.assert_array_equal(params[1], tf_vars[1])  # dense: exact


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_keras3_sparse_gradients_are_densified_like_keras3(momentum):
  values, grad_steps = _sparse_problem()
  config = dict(learning_rate=0.01, momentum=momentum, centered=True)
  tf_vars, _ = tf_reference.run_keras3(values, grad_steps, eager=True, **config)
  params, _ = toolbox.run(
    optax_tfrmsprop.keras3_rmsprop(**config), values, grad_steps
  )
  toolbox.assert_ulp(params, tf_vars)
