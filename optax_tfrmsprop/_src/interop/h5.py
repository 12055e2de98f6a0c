"""Keras ``.h5`` model files that include a legacy RMSprop's state.

``model.save("run.h5")`` (tf_keras, ``include_optimizer=True``, the
default) writes the model's weights under ``model_weights/<layer>/<name>``,
the optimizer's weights under ``optimizer_weights`` (``iter``, then the
``rms``, ``momentum`` and ``mg`` slots, each named after its variable) and
the optimizer's config as JSON. :func:`state_from_h5` reads them with h5py
alone: no TensorFlow is imported.
"""

import json
import os
import re
from typing import Any
import zipfile

import numpy as np

from optax_tfrmsprop._src.interop import common
from optax_tfrmsprop._src.interop import keras_weights
from optax_tfrmsprop._src.interop import tf2_checkpoint


def _text(value: Any) -> str:
  return value.decode("utf8") if isinstance(value, bytes) else str(value)


def state_from_h5(
  path: Any, params: keras_weights.ParamsOrCorrespondence
) -> common.RestoredRMSprop:
  """Reads a tf_keras ``.h5`` model file with its legacy RMSprop state.

  The variables come in Keras order (the model's layers in order, each
  layer's trainable weights in order, as ``model.trainable_variables``),
  matched to ``params`` as a weight list is: a tree in Keras order, or a
  :class:`~optax_tfrmsprop.interop.Correspondence` for a flax tree. Slots
  are found by their variable's name in the file, so a file saved after a
  restore (whose optimizer lists its weights in another order) reads the
  same. Needs h5py only (the ``tf`` extra brings it).

  Args:
    path: the ``.h5`` file written by ``model.save`` (or
      ``tf_keras.models.save_model``) with the optimizer included.
    params: the param tree template (leaves in Keras order) or a
      correspondence.

  Returns:
    A :class:`~optax_tfrmsprop.interop.RestoredRMSprop` whose
    ``hyperparams`` is the optimizer's ``get_config()`` as saved.

  Raises:
    ValueError: for a file without optimizer state (``save_weights``,
      ``include_optimizer=False``), another optimizer, a ``.keras`` archive,
      a TF checkpoint, a variable or slot missing or of the wrong shape
      (naming the Keras weight and the JAX path), or an iteration count
      beyond int32.
    ImportError: when h5py is not installed, naming the extra.

  Example:
    >>> import os, tempfile
    >>> import jax.numpy as jnp, numpy as np
    >>> import tf_keras
    >>> from optax_tfrmsprop import interop
    >>> model = tf_keras.Sequential([
    ...     tf_keras.Input((3,)), tf_keras.layers.Dense(2)])
    >>> model.compile(
    ...     tf_keras.optimizers.legacy.RMSprop(0.01, centered=True), "mse")
    >>> _ = model.fit(np.ones((8, 3)), np.zeros((8, 2)), batch_size=4,
    ...               verbose=0)
    >>> path = os.path.join(tempfile.mkdtemp(), "run.h5")
    >>> model.save(path)
    >>> params = {"Dense_0": {"bias": jnp.zeros(2),
    ...                       "kernel": jnp.zeros((3, 2))}}
    >>> restored = interop.state_from_h5(
    ...     path, interop.correspondence(model, params))
    >>> int(restored.state.count), restored.hyperparams["centered"]
    (2, True)
  """
  path = os.fspath(path)
  if os.path.isfile(path) and zipfile.is_zipfile(path):
    raise tf2_checkpoint.keras_archive_error(path)
  if not tf2_checkpoint.is_hdf5(path):
    if os.path.isfile(path + ".index") or os.path.isdir(path):
      raise ValueError(
        f"{path!r} is a TF checkpoint or SavedModel, not an .h5 file: read "
        "it with optax_tfrmsprop.interop.state_from_tf_checkpoint."
      )
    raise ValueError(f"{path!r} is not an HDF5 (.h5) file.")
  h5py = common.require("h5py", "Reading an .h5 file")
  pairs = keras_weights.as_correspondence(params)
  with h5py.File(path, "r") as f:
    if "optimizer_weights" not in f:
      raise ValueError(
        f"{path!r} holds no optimizer state (it was written by "
        "model.save_weights, or model.save with include_optimizer=False): "
        "save the run with model.save('run.h5'), model.save_weights(prefix)"
        " (TF format) or tf.train.Checkpoint."
      )
    config = json.loads(_text(f.attrs["training_config"]))["optimizer_config"]
    if (
      config.get("class_name") != "RMSprop"
      or config["config"].get("is_legacy_optimizer") is False
    ):
      raise ValueError(
        f"{path!r} holds the state of {config.get('class_name')} "
        f"({config['config']}), not of tf_keras.optimizers.legacy.RMSprop."
      )
    group = f["optimizer_weights"]
    slot_values = {}
    count = None
    tf_slots = {
      slot: field for field, slot in common.slot_names("keras_legacy")
    }
    for name in (_text(n) for n in group.attrs["weight_names"]):
      stem = re.sub(r":\d+$", "", name)
      variable, _, slot = stem.rpartition("/")
      if slot == "iter":
        count = np.asarray(group[name])
      elif slot in tf_slots:
        slot_values[(variable, slot)] = np.asarray(group[name])
      else:
        raise ValueError(
          f"{path!r}: the optimizer weight {name!r} is not a slot of a "
          "legacy RMSprop."
        )
    if count is None:
      raise ValueError(f"{path!r}: the optimizer weights have no 'iter'.")
    weights = f["model_weights"]
    model_values = []  # (name, value), in layer order.
    for layer in (_text(n) for n in weights.attrs["layer_names"]):
      for name in (_text(n) for n in weights[layer].attrs["weight_names"]):
        model_values.append(
          (re.sub(r":\d+$", "", name), np.asarray(weights[layer][name]))
        )
  optimizer_name = config["config"].get("name", "RMSprop")

  def slots_of(variable):
    found = {}
    for (owner, slot), value in slot_values.items():
      if owner in (variable, f"{optimizer_name}/{variable}"):
        found[slot] = value
    return found

  trainable = [(name, value, slots_of(name)) for name, value in model_values]
  trainable = [t for t in trainable if t[2]]
  if len(trainable) != len(pairs):
    raise ValueError(
      f"{path!r} holds optimizer slots for {len(trainable)} variables "
      f"({[t[0] for t in trainable]}), but the params have {len(pairs)} "
      f"leaves ({list(pairs.jax_paths)})."
    )
  present = [
    slot
    for _, slot in common.slot_names("keras_legacy")
    if slot in trainable[0][2]
  ]
  for i, (name, _, slots) in enumerate(trainable):
    if sorted(slots) != sorted(present):
      raise ValueError(
        f"{path!r}: the variable {name!r} ({pairs.describe(i)}) has the "
        f"slots {sorted(slots)}, the first variable {sorted(present)}."
      )
  state = common.make_state(
    "keras_legacy",
    common.checked_count(count, f"The iteration count in {path!r}"),
    {
      tf_slots[slot]: pairs.from_keras(
        [t[2][slot] for t in trainable], f"{slot!r} slot"
      )
      for slot in present
    },
  )
  values = pairs.from_keras([t[1] for t in trainable], "value")
  return common.RestoredRMSprop(values, state, dict(config["config"]))
