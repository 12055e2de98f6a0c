"""TF2 object checkpoints of a tf_keras model and its legacy RMSprop, both ways.

A checkpoint written by ``Model.save_weights(prefix)`` (TF format),
``tf.train.Checkpoint(model=..., optimizer=...)`` (any names, any nesting;
also through a ``tf.train.CheckpointManager``), or the variables of a
SavedModel (``model.save(dir)``) stores, by object path,

* each variable: ``<path>/.ATTRIBUTES/VARIABLE_VALUE``, where ``<path>`` is
  e.g. ``layer_with_weights-0/kernel`` (prefixed by ``model/`` for a
  ``tf.train.Checkpoint(model=...)``);
* its slots: ``<path>/.OPTIMIZER_SLOT/<optimizer>/{rms,momentum,mg}/...``;
* the optimizer's ``iter`` and its float32 hyperparameters.

:func:`state_from_tf_checkpoint` reads them onto a JAX param tree;
:func:`state_to_tf_checkpoint` writes a JAX run back so that
``model.load_weights`` (or ``tf.train.Checkpoint.restore``) and ``Model.fit``
continue it. TensorFlow is imported only inside them (the ``tf`` extra).
"""

from collections.abc import Callable, Mapping
import os
from typing import Any
import zipfile

import numpy as np
import optax

from optax_tfrmsprop._src import alias
from optax_tfrmsprop._src import base
from optax_tfrmsprop._src.interop import common
from optax_tfrmsprop._src.interop import correspondence as correspondence_lib
from optax_tfrmsprop._src.interop import keras_weights

_VALUE = "/.ATTRIBUTES/VARIABLE_VALUE"
_SLOT = "/.OPTIMIZER_SLOT/"
_ITER = "/iter" + _VALUE
_HYPERS = ("learning_rate", "rho", "momentum", "decay")
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

Mapping_ = Mapping[str, str] | Callable[[str], str] | None

RestoredRMSprop = common.RestoredRMSprop  # Its historical home.
param_path = common.param_path


def _escape(name: str) -> str:
  """A local name as TF2 checkpoint keys write it."""
  return name.replace(".", "..").replace("/", ".S")


def is_hdf5(path: str) -> bool:
  if not os.path.isfile(path):
    return False
  with open(path, "rb") as f:
    return f.read(8) == _HDF5_SIGNATURE


def keras_archive_error(path: str) -> ValueError:
  """The error for a ``.keras`` archive: what it holds and what to use."""
  holds_optimizer = False
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    if "model.weights.h5" in names:
      h5py = common.require("h5py", "Reading a .keras archive")
      with (
        archive.open("model.weights.h5") as raw,
        h5py.File(raw, "r") as weights,
      ):
        holds_optimizer = "optimizer" in weights and any(
          True for _ in weights["optimizer"].get("vars", {})
        )
  if holds_optimizer:
    return ValueError(
      f"{path!r} is a Keras v3 archive that holds a Keras 3 optimizer's "
      "variables: load it with keras.saving.load_model(path) and read "
      "model.optimizer with optax_tfrmsprop.interop.state_from_keras3."
    )
  return ValueError(
    f"{path!r} is a Keras v3 (.keras) archive: it holds the model's "
    "weights and the optimizer's config, but tf_keras saves no state of a "
    "legacy optimizer in it (no iteration count, no slots), so the run "
    "cannot be continued from it. Save the run with "
    "model.save_weights(prefix), tf.train.Checkpoint(model=model, "
    "optimizer=optimizer).write(prefix) or model.save('run.h5'), and read "
    "that with optax_tfrmsprop.interop.state_from_tf_checkpoint (or "
    "state_from_h5)."
  )


def _checkpoint_prefix(tf, path: Any) -> str:
  """The checkpoint prefix for a prefix, a directory or a SavedModel."""
  path = os.fspath(path)
  for suffix in (".index", ".data-00000-of-00001"):
    if path.endswith(suffix) and os.path.isfile(path):
      path = path[: -len(suffix)]
  if os.path.isfile(path) and zipfile.is_zipfile(path):
    raise keras_archive_error(path)
  if is_hdf5(path):
    raise ValueError(
      f"{path!r} is an HDF5 (.h5) file, not a TF checkpoint: read it with "
      "optax_tfrmsprop.interop.state_from_h5."
    )
  if os.path.isdir(path):
    if any(
      os.path.isfile(os.path.join(path, name))
      for name in ("saved_model.pb", "saved_model.pbtxt")
    ):
      return os.path.join(path, "variables", "variables")
    latest = tf.train.latest_checkpoint(path)
    if latest is None:
      raise ValueError(
        f"The directory {path!r} holds no TF checkpoint (no 'checkpoint' "
        "file naming the latest one) and no SavedModel."
      )
    return latest
  if not os.path.isfile(path + ".index"):
    raise ValueError(
      f"No TF checkpoint at {path!r} (no {path + '.index'!r}): give the "
      "prefix passed to save_weights/Checkpoint.write, a CheckpointManager "
      "directory or a SavedModel directory."
    )
  return path


class _Checkpoint:
  """The variable values of a TF2 checkpoint, read on demand."""

  def __init__(self, path: Any):
    tf = common.require("tensorflow", "Reading a TF2 checkpoint")
    self.path = _checkpoint_prefix(tf, path)
    self._reader = tf.train.load_checkpoint(self.path)
    self.keys = {
      k for k in self._reader.get_variable_to_shape_map() if k.endswith(_VALUE)
    }
    self.variables = sorted(
      k[: -len(_VALUE)] for k in self.keys if _SLOT not in k
    )

  def get(self, key: str) -> np.ndarray:
    return self._reader.get_tensor(key)

  def optimizers(self) -> list[str]:
    return sorted(k[: -len(_ITER)] for k in self.keys if k.endswith(_ITER))

  def slot_key(self, variable: str, optimizer: str, slot: str) -> str:
    return f"{variable}{_SLOT}{optimizer}/{slot}{_VALUE}"


def _resolve(name: str, variables: list[str], what: str) -> str:
  """The checkpoint variable whose path is ``name`` or ends in ``/name``."""
  matches = [v for v in variables if v == name or v.endswith("/" + name)]
  if len(matches) != 1:
    raise ValueError(
      f"{what}: {name!r} matches {len(matches)} checkpoint variables "
      f"({matches}); pass a correspondence built from the Keras model, or "
      f"`mapping`. Checkpoint variables: {variables}."
    )
  return matches[0]


def _model_prefix(checkpoint: _Checkpoint, object_paths, pairs, prefix):
  """Where the model sits in the checkpoint: ``''``, ``'model/'``, ..."""
  keys = ["/".join(_escape(n) for n in path) for path in object_paths]
  if prefix is not None:
    candidates = [prefix.strip("/") + "/" if prefix.strip("/") else ""]
  else:
    candidates = sorted(
      {
        v[: -len(keys[0])]
        for v in checkpoint.variables
        if v == keys[0] or v.endswith("/" + keys[0])
      }
    )
  found = [
    c for c in candidates if all(c + k in checkpoint.variables for k in keys)
  ]
  if len(found) == 1:
    return [found[0] + k for k in keys]
  if len(found) > 1:
    raise ValueError(
      f"The model's weights are in the checkpoint under several prefixes "
      f"({found}); pass `prefix=` to choose."
    )
  for c in candidates or [""]:
    for i, k in enumerate(keys):
      if c + k not in checkpoint.variables:
        raise ValueError(
          f"{pairs.describe(i)} is not in the checkpoint "
          f"{checkpoint.path!r}: no variable {c + k!r}. Was it written for "
          f"this model? Checkpoint variables: {checkpoint.variables}."
        )
  raise AssertionError("unreachable")


def state_from_tf_checkpoint(
  path: Any,
  params: keras_weights.ParamsOrCorrespondence,
  *,
  mapping: Mapping_ = None,
  prefix: str | None = None,
) -> common.RestoredRMSprop:
  """Reads a legacy-RMSprop Keras training checkpoint onto a JAX param tree.

  Reads what ``model.save_weights(prefix)``, ``tf.train.Checkpoint(...)
  .write``/``save`` (the model under any name: ``model=``, ``net=``, nested),
  a ``tf.train.CheckpointManager`` or ``model.save(dir)`` (a SavedModel)
  wrote for a tf_keras model trained with
  ``tf_keras.optimizers.legacy.RMSprop``. ``path`` is the prefix, a
  directory with a ``checkpoint`` file (its latest is read) or a SavedModel
  directory; an ``.h5`` file or a ``.keras`` archive gets an error saying
  what to use.

  Which variable is which leaf of ``params``:

  * a :class:`~optax_tfrmsprop.interop.Correspondence` built from the Keras
    model finds each weight by its object path in the model, wherever the
    model sits in the checkpoint (``prefix=`` picks one where several fit);
  * for a plain template tree, a leaf is the checkpoint variable whose
    object path is, or ends in, the leaf's tree keys joined by ``/`` (so
    ``{"layer_with_weights-0": {"kernel": ...}}`` matches
    ``layer_with_weights-0/kernel`` and ``model/layer_with_weights-0/kernel``);
    ``mapping`` (a dict from those names, or a callable) gives other names,
    matched the same way, with or without the checkpoint's prefix.

  Whether the optimizer was centered and took the momentum path follows from
  the slots present.

  Args:
    path: the checkpoint prefix, or a directory (CheckpointManager,
      SavedModel).
    params: the param tree template (only its tree, shapes and dtypes are
      used) or a correspondence.
    mapping: for a template, optional names of the checkpoint variables.
    prefix: where the model sits in the checkpoint (``""`` for
      ``save_weights``, ``"model"`` for ``tf.train.Checkpoint(model=...)``),
      when a correspondence finds it in several places.

  Returns:
    A :class:`~optax_tfrmsprop.interop.RestoredRMSprop`: the params, the
    :class:`~optax_tfrmsprop.RMSpropState`, and the checkpoint's float32
    hyper variables (``learning_rate``, ``rho``, ``momentum``, ``decay``);
    ``rmsprop`` with the same hyperparameters continues the Keras run bit
    for bit.

  Raises:
    ValueError: naming the Keras weight, the JAX path and the checkpoint
      path of a missing, ambiguous or mis-shaped variable or slot; for a file
      of another format; for an iteration count beyond int32.
    ImportError: when TensorFlow is not installed, naming the extra.

  Example:
    A Keras model trained for two steps with momentum, saved with
    ``save_weights``, and read onto a flax-style tree:

    >>> import os, tempfile
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> import tf_keras
    >>> from optax_tfrmsprop import interop
    >>> model = tf_keras.Sequential([
    ...     tf_keras.Input((3,)), tf_keras.layers.Dense(2)])
    >>> model.compile(
    ...     tf_keras.optimizers.legacy.RMSprop(0.01, momentum=0.9), "mse")
    >>> _ = model.fit(np.ones((8, 3)), np.zeros((8, 2)), batch_size=4,
    ...               verbose=0)
    >>> prefix = os.path.join(tempfile.mkdtemp(), "ckpt")
    >>> model.save_weights(prefix)
    >>> params = {"Dense_0": {"bias": jnp.zeros(2),
    ...                       "kernel": jnp.zeros((3, 2))}}
    >>> restored = interop.state_from_tf_checkpoint(
    ...     prefix, interop.correspondence(model, params))
    >>> int(restored.state.count), restored.state.mom is not None
    (2, True)
    >>> dense = restored.params["Dense_0"]
    >>> bool((dense["kernel"] == model.layers[0].kernel.numpy()).all())
    True
    >>> sorted(restored.hyperparams)
    ['decay', 'learning_rate', 'momentum', 'rho']
  """
  checkpoint = _Checkpoint(path)
  pairs = keras_weights.as_correspondence(params)
  if isinstance(params, correspondence_lib.Correspondence):
    if mapping is not None:
      raise ValueError("Pass either a correspondence or `mapping`, not both.")
    names = _model_prefix(checkpoint, pairs.object_paths(), pairs, prefix)
  else:

    def name_of(i):
      name = pairs.jax_paths[i]
      if mapping is None:
        return _resolve(name, checkpoint.variables, f"Param {name!r}")
      if callable(mapping):
        target = mapping(name)
      elif name not in mapping:
        raise ValueError(f"`mapping` has no entry for param {name!r}.")
      else:
        target = mapping[name]
      return _resolve(
        target.strip("/"), checkpoint.variables, f"`mapping` of param {name!r}"
      )

    names = [name_of(i) for i in range(len(pairs))]

  def where(i):
    return f"{pairs.describe(i)}, checkpoint path {names[i]!r}"

  optimizers = checkpoint.optimizers()
  owners = (
    [
      o
      for o in optimizers
      if checkpoint.slot_key(names[0], o, "rms") in checkpoint.keys
    ]
    if names
    else optimizers
  )
  if len(owners) != 1:
    slots = (
      sorted(k for k in checkpoint.keys if k.startswith(names[0] + _SLOT))
      if names
      else []
    )
    raise ValueError(
      f"Expected one tf_keras legacy RMSprop with an 'rms' slot for "
      f"{where(0) if names else 'the params'} in {checkpoint.path!r}; "
      f"optimizers with an `iter` variable: {optimizers}, slots of that "
      f"variable: {slots}. (A checkpoint of the non-legacy "
      "tf_keras.optimizers.RMSprop or of Keras 3 has no such slots: "
      "optax_tfrmsprop reproduces the legacy RMSprop and, with "
      "interop.state_from_keras3, Keras 3's.)"
    )
  optimizer = owners[0]
  slot_owner = optimizer

  def slots_of(i: int) -> dict[str, str]:
    """The checkpoint's slots of weight ``i``: field to TF slot name."""
    return {
      field: slot
      for field, slot in common.slot_names("keras_legacy")
      if checkpoint.slot_key(names[i], slot_owner, slot) in checkpoint.keys
    }

  # The slots present decide the path (centered, momentum), so every weight
  # must have the same ones: one missing for some weight is a damaged
  # checkpoint, not another optimizer.
  present = slots_of(0) if names else {}
  for i in range(1, len(names)):
    have = slots_of(i)
    if not have:  # Not a variable this optimizer updated.
      key = checkpoint.slot_key(names[i], slot_owner, "rms")
      raise ValueError(
        f"The checkpoint has no 'rms' slot for {where(i)} (no {key!r})."
      )
    if have != present:
      raise ValueError(
        f"In {checkpoint.path!r}, {where(i)} has the slots "
        f"{list(have.values())}, but {where(0)} has "
        f"{list(present.values())}: every weight of one RMSprop has the "
        "same slots."
      )

  def fetch(key: str, i: int, what: str):
    if key not in checkpoint.keys:
      raise ValueError(
        f"The checkpoint has no {what} for {where(i)} (no {key!r})."
      )
    return checkpoint.get(key)

  values = pairs.from_keras(
    [fetch(n + _VALUE, i, "value") for i, n in enumerate(names)], "value"
  )
  slots = {
    field: pairs.from_keras(
      [checkpoint.get(checkpoint.slot_key(n, slot_owner, slot)) for n in names],
      f"{slot!r} slot",
    )
    for field, slot in present.items()
  }
  count = common.checked_count(
    checkpoint.get(optimizer + _ITER),
    f"The checkpoint's iteration count ({optimizer}/iter)",
  )
  state = common.make_state("keras_legacy", count, slots)
  hyperparams = {
    h: checkpoint.get(f"{optimizer}/{h}{_VALUE}")
    for h in _HYPERS
    if f"{optimizer}/{h}{_VALUE}" in checkpoint.keys
  }
  return common.RestoredRMSprop(values, state, hyperparams)


def restore_rmsprop_from_tf_checkpoint(
  path: Any,
  params: keras_weights.ParamsOrCorrespondence,
  *,
  mapping: Mapping_ = None,
) -> common.RestoredRMSprop:
  """Reads a legacy-RMSprop Keras training checkpoint onto a JAX param tree.

  Kept for backward compatibility: the same as
  :func:`~optax_tfrmsprop.interop.state_from_tf_checkpoint`.

  Args:
    path: the checkpoint prefix (as given to ``write``/``save_weights``) or
      directory.
    params: the param tree template, or a correspondence.
    mapping: optional override of the default name matching.

  Returns:
    A :class:`RestoredRMSprop`.

  Example:
    >>> import os, tempfile
    >>> import jax.numpy as jnp
    >>> import tensorflow as tf
    >>> import tf_keras
    >>> w = tf.Variable([1.0, 2.0])
    >>> opt = tf_keras.optimizers.legacy.RMSprop(0.1)
    >>> _ = opt.apply_gradients([(tf.constant([0.5, -0.5]), w)])
    >>> prefix = os.path.join(tempfile.mkdtemp(), "ckpt")
    >>> _ = tf.train.Checkpoint(w=w, optimizer=opt).write(prefix)
    >>> restored = restore_rmsprop_from_tf_checkpoint(
    ...     prefix, {"w": jnp.zeros(2)})
    >>> int(restored.state.count)
    1
  """
  return state_from_tf_checkpoint(path, params, mapping=mapping)


def _container(tf, children: dict[str, Any]):
  """A trackable whose children are ``children`` (names used verbatim)."""
  return tf.train.Checkpoint(**children)


def _nest(paths: list[tuple[str, ...]], values: list[Any]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for path, value in zip(paths, values):
    node = tree
    for name in path[:-1]:
      node = node.setdefault(name, {})
    if path[-1] in node:
      raise ValueError(f"Two weights at the object path {'/'.join(path)!r}.")
    node[path[-1]] = value
  return tree


def state_to_tf_checkpoint(
  path: Any,
  params: optax.Params,
  state: base.RMSpropState,
  correspondence: correspondence_lib.Correspondence,
  *,
  config: Mapping[str, Any],
  model_path: str = "",
  optimizer_path: str = "optimizer",
) -> str:
  """Writes params and state as a TF2 checkpoint of the Keras model.

  The checkpoint has the object paths of the model the ``correspondence``
  was built from, so the user's tf_keras model, compiled with
  ``tf_keras.optimizers.legacy.RMSprop(**config)``, restores it with its own
  calls and continues bit-identically to the JAX run:

  * ``model_path=""`` (the default) lays it out as ``model.save_weights``
    does: restore with ``model.load_weights(path)``;
  * ``model_path="model"`` as ``tf.train.Checkpoint(model=model,
    optimizer=optimizer)``: restore with that object's ``restore(path)`` (or
    through a ``tf.train.CheckpointManager``).

  TF creates the optimizer's slots when it restores them (or at the first
  step), from the checkpoint's values; its ``iterations`` and hyper variables
  (``learning_rate``, ``rho``, ``momentum``, ``decay``) come from the
  checkpoint too, so ``config`` must be the optimizer's (the arguments given
  to :func:`~optax_tfrmsprop.rmsprop`). Only the trainable variables and the
  optimizer are written: non-trainable ones (batch-norm statistics) keep the
  model's values.

  Args:
    path: the checkpoint prefix to write.
    params: the JAX params.
    state: their :class:`~optax_tfrmsprop.RMSpropState` (of
      :func:`~optax_tfrmsprop.rmsprop`).
    correspondence: built from the tf_keras model and the params.
    config: the ``tf_keras.optimizers.legacy.RMSprop`` arguments
      (``learning_rate``, ``rho``, ``momentum``, ``epsilon``, ``centered``,
      ``decay``, clipping).
    model_path: where the model sits in the checkpoint: ``""`` for
      ``load_weights``, or the attribute name given to
      ``tf.train.Checkpoint`` (``"model"``); ``/`` nests.
    optimizer_path: where the optimizer sits: ``"optimizer"`` (both
      ``model.optimizer`` and the usual ``tf.train.Checkpoint`` name).

  Returns:
    The path written (the prefix), for ``load_weights`` or ``restore``.

  Raises:
    TypeError: if ``state`` is not an ``RMSpropState`` of ``rmsprop``.
    ValueError: if ``config`` asks for other slots than ``state`` has
      (``centered``, the momentum path), or the correspondence was not built
      from a tf_keras model.
    ImportError: when TensorFlow or tf_keras is not installed.

  Example:
    JAX continues a Keras model's run; ``load_weights`` brings it back:

    >>> import os, tempfile
    >>> import jax, jax.numpy as jnp
    >>> import tf_keras
    >>> import optax_tfrmsprop
    >>> from optax_tfrmsprop import interop
    >>> model = tf_keras.Sequential([
    ...     tf_keras.Input((3,)), tf_keras.layers.Dense(2)])
    >>> config = dict(learning_rate=0.01, momentum=0.9)
    >>> params = {"Dense_0": {"bias": jnp.zeros(2),
    ...                       "kernel": jnp.ones((3, 2))}}
    >>> opt = optax_tfrmsprop.rmsprop(**config)
    >>> state = opt.init(params)
    >>> updates, state = opt.update(
    ...     {"Dense_0": {"bias": jnp.ones(2), "kernel": jnp.ones((3, 2))}},
    ...     state)
    >>> params = jax.tree.map(lambda p, u: p + u, params, updates)
    >>> prefix = interop.state_to_tf_checkpoint(
    ...     os.path.join(tempfile.mkdtemp(), "ckpt"), params, state,
    ...     interop.correspondence(model, params), config=config)
    >>> model.compile(tf_keras.optimizers.legacy.RMSprop(**config), "mse")
    >>> _ = model.load_weights(prefix)
    >>> dense = params["Dense_0"]
    >>> bool((model.layers[0].bias.numpy() == dense["bias"]).all())
    True
  """
  common.check_state(state, "keras_legacy")
  tf = common.require("tensorflow", "Writing a TF2 checkpoint")
  tf_keras = common.require("tf_keras", "Writing a TF2 checkpoint")
  config = dict(config)
  for name, field, wanted in (
    ("centered", "mg", bool(config.get("centered", False))),
    ("momentum", "mom", alias.uses_momentum(config.get("momentum", 0.0))),
  ):
    if wanted != (getattr(state, field) is not None):
      raise ValueError(
        f"config[{name!r}] = {config.get(name)!r} asks for "
        f"{'a' if wanted else 'no'} {field!r} slot, but the state has "
        f"{'one' if not wanted else 'none'}: pass the arguments the "
        "state's optimizer was built with."
      )
  object_paths = correspondence.object_paths()
  names = list(correspondence.keras_names)
  values = correspondence.to_keras(params)
  variables = [
    tf.Variable(np.asarray(v), name=n) for v, n in zip(values, names)
  ]
  optimizer = tf_keras.optimizers.legacy.RMSprop(**config)
  # A step of zero gradients creates iterations, the hyper variables and the
  # slots in TF's order, through the public API; it leaves the variables as
  # they are, and everything is overwritten below.
  optimizer.apply_gradients([(tf.zeros_like(v), v) for v in variables])
  for variable, value in zip(variables, values):
    variable.assign(np.asarray(value))
  for field, slot in common.slot_names("keras_legacy"):
    if getattr(state, field) is not None:
      for variable, value in zip(
        variables, correspondence.to_keras(getattr(state, field))
      ):
        optimizer.get_slot(variable, slot).assign(np.asarray(value))
  optimizer.iterations.assign(np.int64(int(state.count)))

  def build(tree):
    return _container(
      tf, {k: build(v) if isinstance(v, dict) else v for k, v in tree.items()}
    )

  model_tree = _nest(object_paths, variables)
  root_tree: dict[str, Any] = {}
  model_names = [n for n in model_path.strip("/").split("/") if n]
  node = root_tree
  for name in model_names:
    node = node.setdefault(name, {})
  node.update(model_tree)
  optimizer_names = [n for n in optimizer_path.strip("/").split("/") if n]
  node = root_tree
  for name in optimizer_names[:-1]:
    node = node.setdefault(name, {})
  if optimizer_names[-1] in node:
    raise ValueError(
      f"optimizer_path={optimizer_path!r} collides with a weight of the model."
    )
  node[optimizer_names[-1]] = optimizer
  root = build(root_tree)
  if model_names:
    # What tf.train.Checkpoint.save writes, so that the user's Checkpoint
    # object restores with every object matched.
    root.save_counter.assign(1)
  return root.write(os.fspath(path))
