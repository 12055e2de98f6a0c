"""Continue a Keras run in JAX: RMSprop state out of a TF2 training checkpoint.

A checkpoint written by ``tf.train.Checkpoint(model=..., optimizer=...)`` or
``Model.save_weights(prefix)`` (TF format) for a Keras model trained with
``tf_keras.optimizers.legacy.RMSprop`` stores, by object path,

* each variable: ``<path>/.ATTRIBUTES/VARIABLE_VALUE``, where ``<path>`` is
  e.g. ``layer_with_weights-0/kernel`` (prefixed by ``model/`` for a
  ``tf.train.Checkpoint(model=...)``);
* its slots: ``<path>/.OPTIMIZER_SLOT/<optimizer>/{rms,momentum,mg}/...``;
* the optimizer's ``iter`` and its float32 hyperparameters.

:func:`restore_rmsprop_from_tf_checkpoint` reads them (TensorFlow is imported
only then; install the ``tf`` extra) and lays them onto a JAX param tree.
"""

from typing import Any, Callable, Mapping, NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_tfrmsprop._src import base
from optax_tfrmsprop._src import transform

_VALUE = "/.ATTRIBUTES/VARIABLE_VALUE"
_SLOT = "/.OPTIMIZER_SLOT/"
_ITER = "/iter" + _VALUE
_HYPERS = ("learning_rate", "rho", "momentum", "decay")

Mapping_ = Union[Mapping[str, str], Callable[[str], str], None]


class RestoredRMSprop(NamedTuple):
  """What :func:`restore_rmsprop_from_tf_checkpoint` returns.

  Attributes:
    params: the variables' values, in the template's tree.
    state: the :class:`RMSpropState` (slots and iteration count).
    hyperparams: the optimizer's float32 hyper variables found in the
      checkpoint (``learning_rate``, ``rho``, ``momentum``, ``decay``).

  Example:
    A centered Keras optimizer takes one step and is checkpointed; JAX takes
    the next step, TF too, and they agree bit for bit:

    >>> import os, tempfile
    >>> import jax.numpy as jnp
    >>> import tensorflow as tf
    >>> import tf_keras
    >>> import optax_tfrmsprop
    >>> w = tf.Variable([1.0, 2.0])
    >>> opt = tf_keras.optimizers.legacy.RMSprop(0.1, centered=True)
    >>> _ = opt.apply_gradients([(tf.constant([0.5, -0.5]), w)])
    >>> prefix = os.path.join(tempfile.mkdtemp(), "ckpt")
    >>> _ = tf.train.Checkpoint(w=w, optimizer=opt).write(prefix)
    >>> params, state, hyperparams = (
    ...     optax_tfrmsprop.restore_rmsprop_from_tf_checkpoint(
    ...         prefix, {"w": jnp.zeros(2)}))
    >>> int(state.count), state.mom, state.mg is not None
    (1, None, True)
    >>> jax_opt = optax_tfrmsprop.rmsprop(
    ...     learning_rate=hyperparams["learning_rate"], centered=True)
    >>> updates, state = jax_opt.update({"w": jnp.array([0.5, -0.5])}, state)
    >>> _ = opt.apply_gradients([(tf.constant([0.5, -0.5]), w)])
    >>> bool((params["w"] + updates["w"] == w.numpy()).all())
    True
  """

  params: optax.Params
  state: base.RMSpropState
  hyperparams: dict[str, np.ndarray]


def param_path(key_path) -> str:
  """The default checkpoint name of a param: its tree keys joined by ``/``.

  Args:
    key_path: a key path from ``jax.tree_util.tree_flatten_with_path``.

  Returns:
    e.g. ``"layer_with_weights-0/kernel"`` for
    ``params["layer_with_weights-0"]["kernel"]``.

  Example:
    >>> import jax
    >>> (path, _), = jax.tree_util.tree_flatten_with_path({"a": [1.0]})[0]
    >>> param_path(path)
    'a/0'
  """
  parts = []
  for key in key_path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def _read(path: str) -> dict[str, np.ndarray]:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  reader = tf.train.load_checkpoint(path)
  return {
      key: reader.get_tensor(key)
      for key in reader.get_variable_to_shape_map()
      if key.endswith(_VALUE)
  }


def _optimizer_prefix(tensors: Mapping[str, Any]) -> str:
  found = [k[: -len(_ITER)] for k in tensors if k.endswith(_ITER)]
  if len(found) != 1:
    raise ValueError(
        "Expected exactly one optimizer (an `iter` variable) in the "
        f"checkpoint, found {len(found)}: {found}.")
  return found[0]


def _variable_paths(tensors: Mapping[str, Any], optimizer: str) -> list[str]:
  return sorted(
      k[: -len(_VALUE)] for k in tensors
      if _SLOT not in k and not k.startswith(optimizer + "/"))


def _resolve(name: str, variables: list[str]) -> str:
  """The checkpoint variable whose path is ``name`` or ends in ``/name``."""
  matches = [v for v in variables if v == name or v.endswith("/" + name)]
  if len(matches) != 1:
    raise ValueError(
        f"Param {name!r} matches {len(matches)} checkpoint variables "
        f"({matches}); pass `mapping` to choose. Checkpoint variables: "
        f"{variables}.")
  return matches[0]


def restore_rmsprop_from_tf_checkpoint(
    path: str,
    params: optax.Params,
    *,
    mapping: Mapping_ = None,
) -> RestoredRMSprop:
  """Reads a legacy-RMSprop Keras training checkpoint onto a JAX param tree.

  Each leaf of ``params`` (a template: only its tree, shapes and dtypes are
  used) is matched with a checkpoint variable: by default the one whose
  object path is, or ends in, the leaf's tree keys joined by ``/`` (see
  :func:`param_path`); so ``{"layer_with_weights-0": {"kernel": ...}}``
  matches both ``layer_with_weights-0/kernel`` and
  ``model/layer_with_weights-0/kernel``. ``mapping`` overrides this with a
  dict from :func:`param_path` names to checkpoint paths, or a callable.
  Whether the optimizer was centered and took the momentum path follows from
  the slots present.

  Args:
    path: the checkpoint prefix (as given to ``write``/``save_weights``) or
      directory.
    params: the param tree template.
    mapping: optional override of the default name matching.

  Returns:
    A :class:`RestoredRMSprop`; ``rmsprop_update`` with the same
    hyperparameters continues the Keras run bit for bit.

  Raises:
    ValueError: for a missing or ambiguous variable or slot, or one whose
      shape or dtype does not match the template.

  Example:
    A Keras model trained for two steps with momentum, saved with
    ``save_weights``, and read onto a template with the Keras layer names:

    >>> import os, tempfile
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> import tf_keras
    >>> model = tf_keras.Sequential([
    ...     tf_keras.layers.Dense(2, input_shape=(3,))])
    >>> model.compile(
    ...     tf_keras.optimizers.legacy.RMSprop(0.01, momentum=0.9), "mse")
    >>> _ = model.fit(np.ones((8, 3)), np.zeros((8, 2)), batch_size=4,
    ...               verbose=0)
    >>> prefix = os.path.join(tempfile.mkdtemp(), "ckpt")
    >>> model.save_weights(prefix)
    >>> template = {"layer_with_weights-0": {
    ...     "kernel": jnp.zeros((3, 2)), "bias": jnp.zeros(2)}}
    >>> restored = restore_rmsprop_from_tf_checkpoint(prefix, template)
    >>> int(restored.state.count), restored.state.mom is not None
    (2, True)
    >>> layer = restored.params["layer_with_weights-0"]
    >>> bool((layer["kernel"] == model.layers[0].kernel.numpy()).all())
    True
    >>> sorted(restored.hyperparams)
    ['decay', 'learning_rate', 'momentum', 'rho']
  """
  tensors = _read(path)
  optimizer = _optimizer_prefix(tensors)
  variables = _variable_paths(tensors, optimizer)
  slot_owner = optimizer.rsplit("/", 1)[-1]
  leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(params)

  def checkpoint_name(key_path) -> str:
    name = param_path(key_path)
    if mapping is None:
      return _resolve(name, variables)
    if callable(mapping):
      return mapping(name)
    if name not in mapping:
      raise ValueError(f"`mapping` has no entry for param {name!r}.")
    return mapping[name]

  def fetch(key: str, leaf, what: str) -> jax.Array:
    if key not in tensors:
      raise ValueError(f"The checkpoint has no {what} ({key!r}).")
    value = tensors[key]
    if value.shape != np.shape(leaf) or value.dtype != jnp.result_type(leaf):
      raise ValueError(
          f"{what} ({key!r}) has shape {value.shape} and dtype {value.dtype}; "
          f"the param has shape {np.shape(leaf)} and dtype "
          f"{jnp.result_type(leaf)}.")
    return jnp.asarray(value)

  names = [checkpoint_name(p) for p, _ in leaves_with_path]
  leaves = [leaf for _, leaf in leaves_with_path]
  first = names[0] if names else ""
  present = {
      slot for slot in ("momentum", "mg")
      if f"{first}{_SLOT}{slot_owner}/{slot}{_VALUE}" in tensors
  }
  template = transform.rmsprop_init(
      params, centered="mg" in present, use_momentum="momentum" in present)

  def slot_tree(slot: str):
    return treedef.unflatten([
        fetch(f"{n}{_SLOT}{slot_owner}/{slot}{_VALUE}", leaf,
              f"the {slot!r} slot of {n!r}")
        for n, leaf in zip(names, leaves)
    ])

  state = template.replace(
      count=jnp.asarray(tensors[optimizer + _ITER], jnp.int32),
      ms=slot_tree("rms"),
      mom=slot_tree("momentum") if template.mom is not None else None,
      mg=slot_tree("mg") if template.mg is not None else None,
  )
  restored = treedef.unflatten([
      fetch(n + _VALUE, leaf, f"the variable {n!r}")
      for n, leaf in zip(names, leaves)
  ])
  hyperparams = {
      h: tensors[f"{optimizer}/{h}{_VALUE}"] for h in _HYPERS
      if f"{optimizer}/{h}{_VALUE}" in tensors
  }
  return RestoredRMSprop(restored, state, hyperparams)
