"""TF1 Saver checkpoints and Keras 3 optimizers load and continue exactly."""

import jax
import numpy as np
import optax
import pytest

import interop_helpers as helpers
import optax_tfrmsprop
import tf_reference
import toolbox
from toolbox import DENSE_PATHS


def _continue_in_jax(opt, params, state, grad_steps):
  step = jax.jit(opt.update)
  for grads in grad_steps:
    updates, state = step(grads, state)
    params = optax.apply_updates(params, updates)
  return params, state


def test_tf1_slot_names_follow_creation_order():
  assert optax_tfrmsprop.tf1_slot_names("w", centered=False) == {
    "ms": "w/RMSProp",
    "mom": "w/RMSProp_1",
  }
  assert optax_tfrmsprop.tf1_slot_names(
    "w", centered=True, optimizer_name="Opt"
  ) == {"ms": "w/Opt", "mg": "w/Opt_1", "mom": "w/Opt_2"}


@pytest.mark.parametrize("path", DENSE_PATHS)
def test_tf1_saver_checkpoint_continues_exactly(tmp_path, path):
  config = toolbox.options(path, learning_rate=0.01, decay=0.9, epsilon=1e-3)
  centered = config["centered"]
  before, after = helpers.tf1_grads(30, seed=1), helpers.tf1_grads(30, seed=2)
  rng = np.random.default_rng(0)
  init = {
    n: rng.standard_normal(s).astype(np.float32)
    for n, s in helpers.TF1_SHAPES.items()
  }
  helpers.tf1_session(config, init, before, save=str(tmp_path / "model.ckpt"))
  tf_final, _, _ = helpers.tf1_session(config, init, before + after)

  names = {n: n for n in helpers.TF1_SHAPES}
  params, state = optax_tfrmsprop.tf1_state_from_checkpoint(
    str(tmp_path), names, centered=centered, global_step_name="global_step"
  )
  assert int(state.count) == len(before)
  assert (state.mg is not None) == centered and state.mom is not None
  opt = optax_tfrmsprop.tf1_rmsprop(**config)
  params, _ = _continue_in_jax(opt, params, state, after)
  toolbox.assert_ulp(params, tf_final)


def test_tf1_checkpoint_names_missing_slot(tmp_path):
  tf = tf_reference.tf
  graph = tf.Graph()
  with graph.as_default():
    w = tf.compat.v1.get_variable("w", initializer=np.ones(3, np.float32))
    train = tf.compat.v1.train.RMSPropOptimizer(0.1).minimize(
      tf.reduce_sum(w * w)
    )
    with tf.compat.v1.Session(graph=graph) as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      sess.run(train)
      tf.compat.v1.train.Saver().save(sess, str(tmp_path / "ckpt"))
  with pytest.raises(
    ValueError, match="'w/RMSProp_2' is not in the checkpoint"
  ):
    optax_tfrmsprop.tf1_state_from_checkpoint(
      str(tmp_path), {"w": "w"}, centered=True
    )


@pytest.mark.parametrize("path", DENSE_PATHS)
def test_keras3_optimizer_continues_exactly(path):
  keras = tf_reference.keras3()
  tf = tf_reference.tf
  config = toolbox.options(path, learning_rate=0.01, rho=0.9)
  centered = config["centered"]
  before, after = helpers.tf1_grads(30, seed=1), helpers.tf1_grads(30, seed=2)
  rng = np.random.default_rng(0)
  variables = {
    n: keras.Variable(
      rng.standard_normal(s).astype(np.float32), name=n.replace("/", "_")
    )
    for n, s in helpers.TF1_SHAPES.items()
  }
  opt = keras.optimizers.RMSprop(**config)
  opt.build(list(variables.values()))
  for grads in before:  # Eagerly: Keras 3's ops as written.
    opt.apply_gradients(
      [(tf.constant(grads[n]), variables[n]) for n in helpers.TF1_SHAPES]
    )

  params, state = optax_tfrmsprop.keras3_state_from_optimizer(opt, variables)
  assert int(state.count) == len(before)
  assert (state.mg is not None) == centered
  assert (state.mom is not None) == toolbox.PATHS[path].momentum
  for grads in after:
    opt.apply_gradients(
      [(tf.constant(grads[n]), variables[n]) for n in helpers.TF1_SHAPES]
    )
  jax_opt = optax_tfrmsprop.keras3_rmsprop(**config)
  params, state = _continue_in_jax(jax_opt, params, state, after)
  toolbox.assert_ulp(params, {n: v.numpy() for n, v in variables.items()})
  toolbox.assert_ulp(
    state.ms,
    {n: v.numpy() for n, v in zip(helpers.TF1_SHAPES, opt._velocities)},
  )
  assert int(state.count) == int(opt.iterations.numpy())


def test_keras3_unknown_variable_is_named():
  keras = tf_reference.keras3()
  opt = keras.optimizers.RMSprop()
  opt.build([keras.Variable(np.ones(2, np.float32), name="a")])
  stranger = keras.Variable(np.ones(2, np.float32), name="stranger")
  with pytest.raises(ValueError, match="stranger_velocity"):
    optax_tfrmsprop.keras3_state_from_optimizer(opt, [stranger])


def _tf1_checkpoint(path, optimizers):
  """A Saver checkpoint of ``w`` and the slots of ``(name, centered)``s."""
  tf = tf_reference.tf
  graph = tf.Graph()
  with graph.as_default():
    w = tf.compat.v1.get_variable("w", initializer=np.ones(3, np.float32))
    train = [
      tf.compat.v1.train.RMSPropOptimizer(
        0.1, momentum=0.9, centered=centered, name=name
      ).minimize(tf.reduce_sum(w * w * w))
      for name, centered in optimizers
    ]
    with tf.compat.v1.Session(graph=graph) as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      sess.run(train)
      return tf.compat.v1.train.Saver().save(sess, str(path))


def test_tf1_centered_checkpoint_read_as_plain_is_refused(tmp_path):
  # Read with centered=False, a centered checkpoint's 'w/RMSProp_1' (mg)
  # was taken for the momentum slot.
  prefix = _tf1_checkpoint(tmp_path / "centered", [("RMSProp", True)])
  with pytest.raises(
    ValueError,
    match=(
      r"looks centered: for param 'w' it holds 'w/RMSProp_2'.*"
      r"'w/RMSProp_1' is its 'mg' slot.*Pass centered=True"
    ),
  ):
    optax_tfrmsprop.interop.state_from_tf1_checkpoint(
      prefix, {"w": "w"}, centered=False
    )
  _, state, _ = optax_tfrmsprop.interop.state_from_tf1_checkpoint(
    prefix, {"w": "w"}, centered=True
  )
  assert state.mg is not None


@pytest.mark.parametrize(
  ("optimizers", "read"),
  [
    # Two plain optimizers: w/RMSProp to w/RMSProp_3; the first's slots
    # are w/RMSProp and w/RMSProp_1, but a centered one then a plain one
    # would leave w/RMSProp_1 to the mg slot.
    ([("RMSProp", False), ("RMSProp", False)], ("RMSProp", False)),
    ([("RMSProp", False), ("RMSProp", True)], ("RMSProp", True)),
    # RMSProp_1's first slot takes w/RMSProp_1_1: read as named, its
    # 'w/RMSProp_1' would be the other optimizer's momentum.
    ([("RMSProp", False), ("RMSProp_1", False)], ("RMSProp_1", False)),
    # RMSProp_1 first: RMSProp's momentum is w/RMSProp_2, not _1.
    ([("RMSProp_1", False), ("RMSProp", False)], ("RMSProp", False)),
  ],
)
def test_tf1_slot_names_of_several_optimizers_are_refused(
  tmp_path, optimizers, read
):
  prefix = _tf1_checkpoint(tmp_path / "ckpt", optimizers)
  name, centered = read
  with pytest.raises(
    ValueError,
    match=(
      r"holds \[.*\] besides \[.*\], the slots of param 'w' .*"
      r"cannot be told from the names"
    ),
  ):
    optax_tfrmsprop.interop.state_from_tf1_checkpoint(
      prefix, {"w": "w"}, centered=centered, optimizer_name=name
    )


def test_keras3_variables_with_the_same_path_keep_their_own_slots():
  # Slots were matched by name, and two variables named "w" have slots of
  # the same name: the second's velocity was read and written for both.
  keras = tf_reference.keras3()
  w1 = keras.Variable(np.ones(3, np.float32), name="w")
  w2 = keras.Variable(np.ones(3, np.float32), name="w")
  assert w1.path == w2.path
  opt = keras.optimizers.RMSprop(0.1)
  opt.apply_gradients(
    [(np.full(3, 1.0, np.float32), w1), (np.full(3, 10.0, np.float32), w2)]
  )
  _, state, _ = optax_tfrmsprop.interop.state_from_keras3(
    opt, {"w1": w1, "w2": w2}
  )
  np.testing.assert_array_equal(state.ms["w1"], opt._velocities[0].numpy())
  np.testing.assert_array_equal(state.ms["w2"], opt._velocities[1].numpy())
  assert state.ms["w1"][0] != state.ms["w2"][0]

  other = keras.optimizers.RMSprop(0.1)
  other.build([w2, w1])  # Built in another order than the tree's.
  optax_tfrmsprop.interop.state_to_keras3(
    {"w1": np.ones(3, np.float32), "w2": np.ones(3, np.float32)},
    state,
    other,
    {"w1": w1, "w2": w2},
  )
  np.testing.assert_array_equal(other._velocities[0].numpy(), state.ms["w2"])
  np.testing.assert_array_equal(other._velocities[1].numpy(), state.ms["w1"])
  with pytest.raises(
    ValueError,
    match=r"param 'a' and param 'b' are the same Keras variable \('w'\)",
  ):
    optax_tfrmsprop.interop.state_from_keras3(opt, {"a": w1, "b": w1})
