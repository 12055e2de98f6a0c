"""Stop a Keras run (legacy RMSprop), restore its checkpoint in JAX, go on."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optax_tfrmsprop as otr
from optax_tfrmsprop._src.interop.tf2_checkpoint import param_path
from tests.tf_reference import tf
from tests.tf_reference import tf_keras
import toolbox

CONFIG = dict(learning_rate=0.01, momentum=0.5, centered=True)


def _model():
  tf_keras.utils.set_random_seed(0)
  return tf_keras.Sequential(
    [
      tf_keras.layers.Dense(5, activation="tanh", input_shape=(3,)),
      tf_keras.layers.Dense(1),
    ]
  )


def _train_keras(tmp_path, writer):
  model = _model()
  opt = tf_keras.optimizers.legacy.RMSprop(**CONFIG)
  model.compile(opt, "mse")
  rng = np.random.RandomState(0)
  x = rng.randn(32, 3).astype(np.float32)
  model.fit(x, np.sin(x[:, :1]), epochs=2, batch_size=8, verbose=0)
  prefix = str(tmp_path / "ckpt")
  if writer == "save_weights":
    model.save_weights(prefix)
    root = ""
  else:
    tf.train.Checkpoint(model=model, optimizer=opt).write(prefix)
    root = "model/"
  return model, opt, prefix, root


def _template():
  return {
    f"layer_with_weights-{i}": {"kernel": jnp.zeros(k), "bias": jnp.zeros(b)}
    for i, (k, b) in enumerate([((3, 5), (5,)), ((5, 1), (1,))])
  }


@pytest.mark.parametrize("writer", ["save_weights", "checkpoint"])
def test_keras_run_continues_bit_identically_in_jax(tmp_path, writer):
  model, opt, prefix, _ = _train_keras(tmp_path, writer)
  restored = otr.restore_rmsprop_from_tf_checkpoint(prefix, _template())
  assert int(restored.state.count) == int(opt.iterations.numpy()) == 8
  assert restored.state.mom is not None and restored.state.mg is not None
  np.testing.assert_array_equal(restored.hyperparams["rho"], np.float32(0.9))
  # Same gradients on both sides: TF computes them from its model.
  rng = np.random.RandomState(1)
  grads_steps = [
    [rng.randn(*v.shape).astype(np.float32) for v in model.trainable_variables]
    for _ in range(15)
  ]
  params, state = restored.params, restored.state
  names = [
    "layer_with_weights-0/kernel",
    "layer_with_weights-0/bias",
    "layer_with_weights-1/kernel",
    "layer_with_weights-1/bias",
  ]
  update = jax.jit(otr.rmsprop(**CONFIG).update)

  @tf.function
  def tf_step(grads):
    opt.apply_gradients(zip(grads, model.trainable_variables))

  for grads in grads_steps:
    tf_step([tf.constant(g) for g in grads])
    tree = jax.tree.unflatten(
      jax.tree.structure(params), [g for _, g in sorted(zip(names, grads))]
    )
    updates, state = update(tree, state)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
  by_name = dict(zip(names, model.trainable_variables))
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    expected = by_name[param_path(path)].numpy()
    toolbox.assert_ulp(leaf, expected, context=param_path(path))


def test_mapping_override_and_errors(tmp_path):
  model, _, prefix, root = _train_keras(tmp_path, "checkpoint")
  params = [jnp.zeros((5, 1)), jnp.zeros((3, 5))]
  mapping = {
    "0": root + "layer_with_weights-1/kernel",
    "1": root + "layer_with_weights-0/kernel",
  }
  restored = otr.restore_rmsprop_from_tf_checkpoint(
    prefix, params, mapping=mapping
  )
  np.testing.assert_array_equal(
    restored.params[1], model.trainable_variables[0].numpy()
  )
  with pytest.raises(ValueError, match="matches 0 checkpoint variables"):
    otr.restore_rmsprop_from_tf_checkpoint(prefix, {"dense": jnp.zeros(2)})
  wrong = _template()
  wrong["layer_with_weights-0"]["bias"] = jnp.zeros(4)
  with pytest.raises(
    ValueError,
    match=(
      r"The value of param 'layer_with_weights-0/bias' is float32\(5,\); "
      r"the param is float32\(4,\)"
    ),
  ):
    otr.restore_rmsprop_from_tf_checkpoint(prefix, wrong)
  with pytest.raises(ValueError, match="no entry"):
    otr.restore_rmsprop_from_tf_checkpoint(prefix, params, mapping={})
