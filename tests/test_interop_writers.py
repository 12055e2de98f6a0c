"""Every direction out: JAX states land back in Model.fit, TF1 and Keras 3.

Each test is a round trip against a run that stays in one framework, fed the
same gradients: TF trains, the state moves to JAX, JAX trains, the state moves
back through the writer (public TF/Keras restore calls only), TF trains on;
every variable must equal the reference's bit for bit.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import interop_helpers as helpers
import optax_tfrmsprop
from optax_tfrmsprop import interop
import tf_reference
from tf_reference import tf
import toolbox


def _fit(model, epochs=1):
  x, y = helpers.data()
  model.fit(x, y, batch_size=8, epochs=epochs, shuffle=False, verbose=0)


def _assert_models_equal(model, reference):
  for ours, theirs in zip(
    model.trainable_variables, reference.trainable_variables
  ):
    toolbox.assert_ulp(ours.numpy(), theirs.numpy(), context=ours.name)
    for slot in ("rms", "momentum", "mg"):
      np.testing.assert_array_equal(
        model.optimizer.get_slot(ours, slot).numpy(),
        reference.optimizer.get_slot(theirs, slot).numpy(),
      )
  assert int(model.optimizer.iterations.numpy()) == int(
    reference.optimizer.iterations.numpy()
  )


@pytest.mark.parametrize(
  "kind, layout", [("linen", "load_weights"), ("nnx", "tf.train.Checkpoint")]
)
def test_keras_fit_to_flax_to_keras_fit(tmp_path, kind, layout):
  reference = helpers.keras_model()  # Stays in Keras.
  start = helpers.keras_model()
  _fit(reference)
  _fit(start)
  start.save_weights(str(tmp_path / "from_keras"))
  flax = helpers.Flax(kind)
  pairs = interop.correspondence(start, flax.params)
  params, state, _ = interop.state_from_tf_checkpoint(
    str(tmp_path / "from_keras"), pairs
  )
  # Flax trains on with its own gradients; the reference is fed the same.
  params, state, _ = helpers.continue_both(
    reference, reference.optimizer, flax, pairs, params, state, 5, seed=20
  )
  model_path = "" if layout == "load_weights" else "model"
  prefix = interop.state_to_tf_checkpoint(
    str(tmp_path / "from_jax"),
    params,
    state,
    pairs,
    config=helpers.CONFIG,
    model_path=model_path,
  )

  model = helpers.keras_model()  # A new process would build the same.
  if layout == "load_weights":
    model.load_weights(prefix)
  else:
    tf.train.Checkpoint(model=model, optimizer=model.optimizer).restore(
      prefix
    ).assert_existing_objects_matched()
  _fit(model, epochs=2)
  _fit(reference, epochs=2)
  _assert_models_equal(model, reference)


def test_tf_checkpoint_writer_checks_its_arguments(tmp_path):
  model = helpers.keras_model(compile_config=None)
  flax = helpers.Flax("linen")
  pairs = interop.correspondence(model, flax.params)
  state = optax_tfrmsprop.rmsprop(**helpers.CONFIG).init(flax.params)
  with pytest.raises(
    ValueError,
    match=(
      r"config\['centered'\] = False asks for no 'mg' slot, but the state "
      r"has one"
    ),
  ):
    interop.state_to_tf_checkpoint(
      str(tmp_path / "x"),
      flax.params,
      state,
      pairs,
      config=dict(helpers.CONFIG, centered=False),
    )
  with pytest.raises(TypeError, match=r"`state` must be a RMSpropState"):
    interop.state_to_tf_checkpoint(
      str(tmp_path / "x"),
      flax.params,
      optax_tfrmsprop.tf1_rmsprop(0.1).init(flax.params),
      pairs,
      config=helpers.CONFIG,
    )
  with pytest.raises(ValueError, match="needs the tf_keras model"):
    interop.state_to_tf_checkpoint(
      str(tmp_path / "x"),
      flax.params,
      state,
      interop.Correspondence.from_tree(flax.params),
      config=helpers.CONFIG,
    )


@pytest.mark.parametrize(("momentum", "centered"), [(0.0, False), (0.9, True)])
def test_tf1_to_jax_to_tf1_saver(tmp_path, momentum, centered):
  config = dict(
    learning_rate=0.01,
    decay=0.9,
    momentum=momentum,
    epsilon=1e-3,
    centered=centered,
  )
  before, middle, after = (
    helpers.tf1_grads(10, 1),
    helpers.tf1_grads(10, 2),
    helpers.tf1_grads(10, 3),
  )
  rng = np.random.default_rng(0)
  init = {
    n: rng.standard_normal(s).astype(np.float32)
    for n, s in helpers.TF1_SHAPES.items()
  }
  expected, _, _ = helpers.tf1_session(config, init, before + middle + after)

  _, _, graph_variables = helpers.tf1_session(
    config, init, before, save=str(tmp_path / "tf1.ckpt")
  )
  # The JAX side is a flax-style tree; the correspondence pairs it with the
  # TF1 variables by layer and shape.
  template = {"Dense_0": {"bias": jnp.zeros(10), "kernel": jnp.zeros((6, 10))}}
  pairs = interop.correspondence(graph_variables, template)
  params, state, hyperparams = interop.state_from_tf1_checkpoint(
    str(tmp_path), pairs, centered=centered, global_step_name="global_step"
  )
  assert type(state) is optax_tfrmsprop.TF1RMSpropState
  assert int(state.count) == hyperparams["global_step"] == len(before)
  update = jax.jit(optax_tfrmsprop.tf1_rmsprop(**config).update)
  for grads in middle:
    updates, state = update(
      pairs.from_keras([grads[n] for n in pairs.keras_names]), state
    )
    params = optax.apply_updates(params, updates)
  prefix = interop.state_to_tf1_checkpoint(
    str(tmp_path / "from_jax.ckpt"),
    params,
    state,
    pairs,
    global_step_name="global_step",
  )

  zeros = {n: np.zeros(s, np.float32) for n, s in helpers.TF1_SHAPES.items()}
  final, step, _ = helpers.tf1_session(config, zeros, after, restore=prefix)
  assert step == len(before) + len(middle)
  toolbox.assert_ulp(final, expected)


def test_tf1_global_step_beyond_int32_is_refused(tmp_path):
  params = {"w": jnp.ones(2)}
  state = optax_tfrmsprop.tf1_rmsprop(0.1).init(params)
  interop.state_to_tf1_checkpoint(
    str(tmp_path / "ok.ckpt"), params, state, {"w": "w"}
  )
  graph = tf.Graph()
  with graph.as_default():
    tf.compat.v1.get_variable("w", initializer=np.ones(2, np.float32))
    tf.compat.v1.get_variable("global_step", initializer=np.int64(2**31 + 10))
    with tf.compat.v1.Session(graph=graph) as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      tf.compat.v1.train.Saver().save(sess, str(tmp_path / "big.ckpt"))
  with pytest.raises(
    ValueError,
    match=(
      r"The global step 'global_step' in .* is 2147483658, outside "
      r"\[0, 2147483647\].*not wrapped"
    ),
  ):
    interop.state_from_tf1_checkpoint(
      str(tmp_path / "big.ckpt"), {"w": "w"}, global_step_name="global_step"
    )
  with pytest.raises(TypeError, match=r"`state` must be a TF1RMSpropState"):
    interop.state_to_tf1_checkpoint(
      str(tmp_path / "x.ckpt"),
      params,
      optax_tfrmsprop.rmsprop().init(params),
      {"w": "w"},
    )


def _keras3_model(keras, seed):
  keras.utils.set_random_seed(seed)
  return keras.Sequential(
    [
      keras.Input((6,)),
      keras.layers.Dense(6, activation="tanh"),
      keras.layers.Dense(6, activation="tanh"),
      keras.layers.Dense(2),
    ]
  )


@pytest.mark.parametrize(("momentum", "centered"), [(0.0, False), (0.9, True)])
def test_keras3_to_jax_to_keras3(momentum, centered):
  keras = tf_reference.keras3()
  config = dict(
    learning_rate=0.01, rho=0.9, momentum=momentum, centered=centered
  )
  reference = _keras3_model(keras, 0)
  reference_opt = keras.optimizers.RMSprop(**config)
  start = _keras3_model(keras, 0)
  start_opt = keras.optimizers.RMSprop(**config)
  rng = np.random.default_rng(5)
  steps = [
    [
      rng.standard_normal(v.shape).astype(np.float32)
      for v in reference.trainable_variables
    ]
    for _ in range(30)
  ]

  def keras_steps(opt, model, grads_steps):
    for grads in grads_steps:  # Eagerly: Keras 3's ops as written.
      opt.apply_gradients(
        zip([tf.constant(g) for g in grads], model.trainable_variables)
      )

  keras_steps(reference_opt, reference, steps)
  keras_steps(start_opt, start, steps[:10])
  linen_like = {
    f"Dense_{i}": {"bias": jnp.zeros(v.shape[1]), "kernel": jnp.zeros(v.shape)}
    for i, v in enumerate(start.trainable_variables[::2])
  }
  pairs = interop.correspondence(start, linen_like)
  params, state, config_read = interop.state_from_keras3(start_opt, pairs)
  assert type(state) is optax_tfrmsprop.Keras3RMSpropState
  assert config_read["momentum"] == momentum
  update = jax.jit(optax_tfrmsprop.keras3_rmsprop(**config).update)
  for grads in steps[10:20]:
    updates, state = update(pairs.from_keras(grads), state)
    params = optax.apply_updates(params, updates)

  model = _keras3_model(keras, 1)  # Other initial values, overwritten.
  opt = interop.state_to_keras3(
    params,
    state,
    keras.optimizers.RMSprop(**config),
    interop.correspondence(model, linen_like),
  )
  keras_steps(opt, model, steps[20:])
  toolbox.assert_ulp(
    [v.numpy() for v in model.trainable_variables],
    [v.numpy() for v in reference.trainable_variables],
  )
  assert int(opt.iterations.numpy()) == 30


def test_keras3_errors(tmp_path):
  keras = tf_reference.keras3()
  model = _keras3_model(keras, 0)
  model.compile(keras.optimizers.RMSprop(0.01), "mse")
  model.optimizer.build(model.trainable_variables)
  model.save(str(tmp_path / "keras3.keras"))
  with pytest.raises(
    ValueError,
    match=(
      r"Keras v3 archive that holds a Keras 3 optimizer's variables: load it "
      r"with keras.saving.load_model\(path\) and read model.optimizer with "
      r"optax_tfrmsprop.interop.state_from_keras3"
    ),
  ):
    interop.state_from_tf_checkpoint(
      str(tmp_path / "keras3.keras"), [np.zeros((6, 6), np.float32)]
    )
  opt = keras.optimizers.RMSprop(momentum=0.9)
  opt.build(model.trainable_variables)
  opt.iterations.assign(2**31 + 10)
  with pytest.raises(
    ValueError,
    match=(
      r"The Keras 3 optimizer's iterations is 2147483658, outside "
      r"\[0, 2147483647\]"
    ),
  ):
    interop.state_from_keras3(opt, model.trainable_variables)
  params = [jnp.asarray(v.numpy()) for v in model.trainable_variables]
  state = optax_tfrmsprop.keras3_rmsprop(momentum=0.9).init(params)
  with pytest.raises(
    ValueError,
    match=(
      r"\(momentum=0.0, centered=False\) has the slots \['ms'\], the state "
      r"\['ms', 'mom'\]"
    ),
  ):
    interop.state_to_keras3(
      params, state, keras.optimizers.RMSprop(), model.trainable_variables
    )
  with pytest.raises(
    ValueError,
    match=(
      r"The value of param '0' is float32\(6, 6\); the Keras variable is "
      r"float32\(2,\)"
    ),
  ):
    interop.state_to_keras3(params, state, opt, model.trainable_variables[::-1])


def test_tf1_writer_checks_the_state_against_the_params(tmp_path):
  # A state of {a, b, c} written for params {a, c} put b's slots under
  # 'c/RMSProp' and 'c/RMSProp_1', position by position.
  opt = optax_tfrmsprop.tf1_rmsprop(0.1, momentum=0.9)
  big = {"a": jnp.ones(3), "b": jnp.full(3, 2.0), "c": jnp.full(3, 3.0)}
  state = opt.init(big)
  params = {"a": jnp.ones(3), "c": jnp.full(3, 3.0)}
  with pytest.raises(
    ValueError,
    match=(
      r"The 'rms' slot \(state.ms\) does not have the structure of the "
      r"params: it has \['b'\], which the params lack"
    ),
  ):
    interop.state_to_tf1_checkpoint(
      str(tmp_path / "m"), params, state, {"a": "a", "c": "c"}
    )
  wrong_shape = opt.init({"a": jnp.ones(3), "c": jnp.ones(4)})
  with pytest.raises(
    ValueError,
    match=r"The 'rms' slot \(state.ms\) of param 'c' is float32\(4,\); the "
    r"param is float32\(3,\)",
  ):
    interop.state_to_tf1_checkpoint(
      str(tmp_path / "m"), params, wrong_shape, {"a": "a", "c": "c"}
    )
  assert not list(tmp_path.iterdir())  # Refused before any file was written.


def test_keras3_writer_builds_in_the_models_order(tmp_path):
  # Built from a dict, the optimizer took its sorted keys' order; a .keras
  # archive saves the slots by position and load_model builds in the model's
  # order, so the two layers' velocities came back swapped.
  keras = tf_reference.keras3()

  def model():
    m = keras.Sequential(
      [
        keras.Input((4,)),
        keras.layers.Dense(4, use_bias=False),
        keras.layers.Dense(4, use_bias=False),
      ]
    )
    m.compile(keras.optimizers.RMSprop(0.01), "mse")
    return m

  m = model()
  first, second = m.trainable_variables
  params = {"z_first": jnp.ones((4, 4)), "a_second": jnp.ones((4, 4))}
  opt = optax_tfrmsprop.keras3_rmsprop(0.01)
  _, state = opt.update(
    {"z_first": jnp.full((4, 4), 1.0), "a_second": jnp.full((4, 4), 100.0)},
    opt.init(params),
  )
  with pytest.raises(
    ValueError,
    match=(
      r"not built, and a dict of variables does not say the order.*"
      r"optimizer.build\(model.trainable_variables\)"
    ),
  ):
    interop.state_to_keras3(
      params, state, m.optimizer, {"z_first": first, "a_second": second}
    )
  assert not m.optimizer.built  # Refused before any change.
  pairs = interop.correspondence(m, params, paths=["z_first", "a_second"])
  interop.state_to_keras3(params, state, m.optimizer, pairs)
  m.save(str(tmp_path / "m.keras"))
  loaded = keras.saving.load_model(str(tmp_path / "m.keras"))
  _, read, _ = interop.state_from_keras3(
    loaded.optimizer,
    interop.correspondence(loaded, params, paths=["z_first", "a_second"]),
  )
  for name in params:
    np.testing.assert_array_equal(read.ms[name], state.ms[name])
