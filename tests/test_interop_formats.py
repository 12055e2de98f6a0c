"""Every Keras save format in: a tf_keras run continues in flax at 0 ULP.

A tf_keras MLP trained with ``Model.fit`` (legacy RMSprop, momentum, centered,
decay) is saved in each format, read onto a flax linen and a flax nnx param
tree through :func:`interop.correspondence`, and continued in JAX with the
flax model's own gradients; Keras, fed the same gradients, must land on the
same bits. Each unreadable file gets an error that says what to do.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

import interop_helpers as helpers
import optax_tfrmsprop
from optax_tfrmsprop import interop
from tf_reference import tf
from tf_reference import tf_keras

FIT_STEPS = 4  # Two epochs of two batches.
FLAX_STEPS = 5


def _fit(model):
  x, y = helpers.data()
  model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)


def _save(model, fmt, directory):
  """Saves ``model`` (and its optimizer) as ``fmt``; returns what to read."""
  optimizer = model.optimizer
  if fmt == "save_weights":
    model.save_weights(str(directory / "weights"))
    return str(directory / "weights")
  if fmt == "checkpoint":
    return tf.train.Checkpoint(model=model, optimizer=optimizer).write(
      str(directory / "ckpt")
    )
  if fmt == "nested_checkpoint":  # The model two levels down, other names.
    trainer = tf.train.Checkpoint(net=model, opt=optimizer)
    return tf.train.Checkpoint(trainer=trainer, epoch=tf.Variable(3)).write(
      str(directory / "ckpt")
    )
  if fmt == "manager":
    manager = tf.train.CheckpointManager(
      tf.train.Checkpoint(model=model, optimizer=optimizer),
      str(directory / "managed"),
      max_to_keep=2,
    )
    manager.save()
    return str(directory / "managed")
  if fmt == "savedmodel":
    model.save(str(directory / "savedmodel"))
    return str(directory / "savedmodel")
  assert fmt == "h5"
  model.save(str(directory / "run.h5"))
  return str(directory / "run.h5")


def _read(fmt, path, pairs):
  if fmt == "h5":
    return interop.state_from_h5(path, pairs)
  return interop.state_from_tf_checkpoint(path, pairs)


@pytest.mark.parametrize(
  "fmt",
  [
    "save_weights",
    "checkpoint",
    "nested_checkpoint",
    "manager",
    "savedmodel",
    "h5",
  ],
)
def test_keras_fit_continues_in_linen_and_nnx(tmp_path, fmt):
  model = helpers.keras_model()
  _fit(model)
  path = _save(model, fmt, tmp_path)
  saved_weights = model.get_weights()
  saved_optimizer = model.optimizer.get_weights()
  for kind in ("linen", "nnx"):
    flax = helpers.Flax(kind)
    pairs = helpers.correspondence(model, flax)
    params, state, hyperparams = _read(fmt, path, pairs)
    if fmt == "nested_checkpoint":  # Found by itself; `prefix` says it too.
      again = interop.state_from_tf_checkpoint(
        path, pairs, prefix="trainer/net"
      )
      assert int(again.state.count) == int(state.count)
    assert type(state) is optax_tfrmsprop.RMSpropState
    assert int(state.count) == FIT_STEPS
    assert state.mom is not None and state.mg is not None
    helpers.assert_same_as_keras(pairs, params, model)
    key = "learning_rate"
    np.testing.assert_array_equal(
      np.float32(hyperparams[key]), np.float32(helpers.CONFIG[key])
    )
    # The restored state is TF's, slot by slot, in TF's own weight order.
    assert all(
      np.array_equal(a, b)
      for a, b in zip(
        interop.state_to_optimizer_weights(state, pairs), saved_optimizer
      )
    )
    params, state, _ = helpers.continue_both(
      model, model.optimizer, flax, pairs, params, state, FLAX_STEPS, seed=10
    )
    helpers.assert_same_as_keras(pairs, params, model)
    assert int(state.count) == int(model.optimizer.iterations.numpy())
    # Back to the saved point for the other flax flavor.
    model.set_weights(saved_weights)
    model.optimizer.set_weights(saved_optimizer)


def test_plain_template_and_mapping_with_any_prefix(tmp_path):
  """No correspondence: names as keys; `mapping` is matched under a prefix."""
  model = helpers.keras_model()
  _fit(model)
  path = _save(model, "checkpoint", tmp_path)  # Keys start with "model/".
  kernels = [v.numpy() for v in model.trainable_variables[::2]]
  template = [np.zeros_like(k) for k in kernels]
  mapping = {str(i): f"layer_with_weights-{i}/kernel" for i in range(3)}
  restored = interop.state_from_tf_checkpoint(path, template, mapping=mapping)
  for ours, theirs in zip(restored.params, kernels):
    np.testing.assert_array_equal(ours, theirs)
  # A mapping to a variable without slots names it.
  extra = tf.Variable(np.zeros(2, np.float32))
  path = tf.train.Checkpoint(
    model=model, optimizer=model.optimizer, extra=extra
  ).write(str(tmp_path / "extra"))
  with pytest.raises(
    ValueError, match=(r"no 'rms' slot for param '1', checkpoint path 'extra'")
  ):
    interop.state_from_tf_checkpoint(
      path,
      [template[0], np.zeros(2, np.float32)],
      mapping={"0": "layer_with_weights-0/kernel", "1": "extra"},
    )


def test_flax_tree_without_correspondence_says_what_to_do(tmp_path):
  model = helpers.keras_model()
  _fit(model)
  path = _save(model, "save_weights", tmp_path)
  with pytest.raises(
    ValueError,
    match=(
      r"Param 'Dense_0/bias': 'Dense_0/bias' matches 0 checkpoint variables"
      r".*pass a correspondence built from the Keras model"
    ),
  ):
    interop.state_from_tf_checkpoint(path, helpers.Flax("linen").params)


def test_checkpoint_of_another_model_names_the_weight(tmp_path):
  model = helpers.keras_model()
  _fit(model)
  path = _save(model, "save_weights", tmp_path)
  tf_keras.utils.set_random_seed(0)
  other = tf_keras.Sequential(
    [tf_keras.Input((helpers.WIDTH,)), tf_keras.layers.Dense(2)]
  )
  params = {
    "Dense_0": {
      "kernel": np.zeros((helpers.WIDTH, 2), np.float32),
      "bias": np.zeros(2, np.float32),
    }
  }
  pairs = interop.correspondence(other, params)
  with pytest.raises(
    ValueError,
    match=(
      r"The value of Keras weight 'dense_\d+/kernel' \(JAX path "
      r"'Dense_0/kernel'\) is float32\(6, 6\); the param is "
      r"float32\(6, 2\)"
    ),
  ):
    interop.state_from_tf_checkpoint(path, pairs)
  lone = tf.train.Checkpoint(w=tf.Variable(np.zeros(2, np.float32)))
  path = lone.write(str(tmp_path / "lone"))
  with pytest.raises(
    ValueError,
    match=(
      r"Keras weight 'dense_\d+/kernel' \(JAX path 'Dense_0/kernel'\) is not "
      r"in the checkpoint .*: no variable 'layer_with_weights-0/kernel'"
    ),
  ):
    interop.state_from_tf_checkpoint(path, pairs)


@pytest.mark.parametrize("slot", ["momentum", "mg"])
def test_a_slot_missing_for_the_first_weight_only_is_refused(tmp_path, slot):
  """Not read as a state without that slot: the other weights still have it.

  TF's ``load_weights(...).assert_consumed()`` raises a NotFoundError there.
  """
  model = helpers.keras_model()
  _fit(model)
  path = _save(model, "save_weights", tmp_path)
  reader = tf.train.load_checkpoint(path)
  dropped = (
    f"layer_with_weights-0/kernel/.OPTIMIZER_SLOT/optimizer/{slot}"
    "/.ATTRIBUTES/VARIABLE_VALUE"
  )
  keys = [k for k, _ in tf.train.list_variables(path) if k != dropped]
  assert len(keys) == len(tf.train.list_variables(path)) - 1
  damaged = str(tmp_path / "damaged")
  tf.raw_ops.SaveV2(
    prefix=damaged,
    tensor_names=keys,
    shape_and_slices=[""] * len(keys),
    tensors=[tf.constant(reader.get_tensor(k)) for k in keys],
  )
  pairs = helpers.correspondence(model, helpers.Flax("linen"))
  with pytest.raises(
    ValueError,
    match=(
      r"checkpoint path 'layer_with_weights-0/bias' has the slots "
      r"\['rms', 'momentum', 'mg'\], but .*'layer_with_weights-0/kernel' "
      r"has \[.*\]: every weight of one RMSprop has the same slots"
    ),
  ):
    interop.state_from_tf_checkpoint(damaged, pairs)


def test_files_of_other_formats_say_what_to_use(tmp_path):
  model = helpers.keras_model()
  _fit(model)
  flax = helpers.Flax("linen")
  pairs = helpers.correspondence(model, flax)
  model.save(str(tmp_path / "run.keras"))
  for read in (interop.state_from_tf_checkpoint, interop.state_from_h5):
    with pytest.raises(
      ValueError,
      match=(
        r"Keras v3 \(.keras\) archive.*tf_keras saves no state of a legacy "
        r"optimizer in it.*model.save_weights\(prefix\)"
      ),
    ):
      read(str(tmp_path / "run.keras"), pairs)
  model.save_weights(str(tmp_path / "weights.h5"))
  with pytest.raises(
    ValueError,
    match=(r"holds no optimizer state \(it was written by model.save_weights"),
  ):
    interop.state_from_h5(str(tmp_path / "weights.h5"), pairs)
  model.save(str(tmp_path / "run.h5"))
  with pytest.raises(
    ValueError,
    match=(
      r"is an HDF5 \(.h5\) file, not a TF checkpoint: read it with "
      r"optax_tfrmsprop.interop.state_from_h5"
    ),
  ):
    interop.state_from_tf_checkpoint(str(tmp_path / "run.h5"), pairs)
  with pytest.raises(ValueError, match="is a TF checkpoint or SavedModel"):
    interop.state_from_h5(str(tmp_path), pairs)
  with pytest.raises(ValueError, match="holds no TF checkpoint"):
    interop.state_from_tf_checkpoint(str(tmp_path), pairs)
  with pytest.raises(ValueError, match="No TF checkpoint at"):
    interop.state_from_tf_checkpoint(str(tmp_path / "nothing"), pairs)


def test_non_legacy_optimizer_checkpoint_is_refused(tmp_path):
  model = helpers.keras_model(compile_config=None)
  model.compile(tf_keras.optimizers.RMSprop(0.01), "mse")
  _fit(model)
  model.save_weights(str(tmp_path / "weights"))
  with pytest.raises(
    ValueError, match=(r"Expected one tf_keras legacy RMSprop.*non-legacy")
  ):
    interop.state_from_tf_checkpoint(
      str(tmp_path / "weights"),
      interop.correspondence(model, helpers.Flax("linen").params),
    )


def test_missing_tensorflow_names_the_extra(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow", None)
  with pytest.raises(
    ImportError,
    match=(
      r"Reading a TF2 checkpoint needs tensorflow.*'optax-tfrmsprop\[tf\]'"
    ),
  ):
    interop.state_from_tf_checkpoint("anything", [np.zeros(2)])


def test_h5_and_weight_lists_read_without_tensorflow(tmp_path):
  """Only the formats that need TF import it: .h5 needs h5py alone."""
  model = helpers.keras_model()
  _fit(model)
  model.save(str(tmp_path / "run.h5"))
  expected = [v.numpy() for v in model.trainable_variables]
  np.savez(tmp_path / "expected.npz", *expected)
  script = f"""
import sys
sys.modules["tensorflow"] = None  # Any import of TensorFlow fails.
import numpy as np
from optax_tfrmsprop import interop
expected = list(np.load({str(tmp_path / 'expected.npz')!r}).values())
params, state, config = interop.state_from_h5(
    {str(tmp_path / 'run.h5')!r}, [np.zeros_like(e) for e in expected])
assert all(np.array_equal(p, e) for p, e in zip(params, expected))
assert int(state.count) == {FIT_STEPS} and config["centered"] is True
weights = interop.state_to_optimizer_weights(state)
interop.state_from_optimizer_weights(weights, expected, centered=True,
                                     use_momentum=True)
print("ok")
"""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run(
    [sys.executable, "-c", script],
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
    check=False,  # The assertion shows stderr.
  )
  assert result.stdout.strip().endswith("ok"), result.stderr


BEYOND_INT32 = 2**31 + 10


def test_iterations_beyond_int32_are_refused_by_every_reader(tmp_path):
  """Never wrapped: the weight list, TF2 checkpoints and .h5 files."""
  message = r"is 2147483658, outside \[0, 2147483647\].*not wrapped"
  model = helpers.keras_model()
  _fit(model)
  model.optimizer.iterations.assign(BEYOND_INT32)
  pairs = helpers.correspondence(model, helpers.Flax("linen"))
  weights = model.optimizer.get_weights()
  assert weights[0] == BEYOND_INT32
  with pytest.raises(ValueError, match="Weight 0 .*" + message):
    interop.state_from_optimizer_weights(
      weights, pairs, centered=True, use_momentum=True
    )
  with pytest.raises(ValueError, match="Weight 0 .*" + message):
    optax_tfrmsprop.state_from_keras_weights(
      weights,
      [v.numpy() for v in model.trainable_variables],
      centered=True,
      use_momentum=True,
    )
  model.save_weights(str(tmp_path / "weights"))
  with pytest.raises(ValueError, match="iteration count .*" + message):
    interop.state_from_tf_checkpoint(str(tmp_path / "weights"), pairs)
  model.save(str(tmp_path / "run.h5"))
  with pytest.raises(ValueError, match="iteration count .*" + message):
    interop.state_from_h5(str(tmp_path / "run.h5"), pairs)
  # The largest int32 count is carried exactly.
  model.optimizer.iterations.assign(2**31 - 1)
  model.save_weights(str(tmp_path / "weights"))
  state = interop.state_from_tf_checkpoint(
    str(tmp_path / "weights"), pairs
  ).state
  assert int(state.count) == 2**31 - 1
