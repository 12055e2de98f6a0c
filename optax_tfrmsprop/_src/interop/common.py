"""What every converter shares: the result type, slot names, counts, imports.

Each reader of a TF/Keras format returns a :class:`RestoredRMSprop` (params,
state, and the optimizer's hyperparameters or config the format holds); the
TF names of the slots come from :data:`~optax_tfrmsprop._src.base.SEMANTICS`;
an iteration count goes through :func:`checked_count` (never wrapped); and
TensorFlow, Keras and h5py are imported only inside the functions that need
them, through :func:`require`, whose error names the extra to install.
"""

import importlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_tfrmsprop._src import base

INT32_MAX = int(np.iinfo(np.int32).max)

# The pip extra that brings each optional module.
_EXTRAS = {
  "tensorflow": "tf",
  "tf_keras": "tf",
  "h5py": "tf",
  "keras": "tf",
}


class RestoredRMSprop(NamedTuple):
  """What every ``state_from_<format>`` reader of ``interop`` returns.

  Attributes:
    params: the parameter values the format holds, in the JAX tree asked for
      (``None`` for an optimizer weight list, which holds none).
    state: the :class:`~optax_tfrmsprop.RMSpropState` of the format's flavor
      (:class:`~optax_tfrmsprop.TF1RMSpropState` for TF1,
      :class:`~optax_tfrmsprop.Keras3RMSpropState` for Keras 3): slots and
      iteration count.
    hyperparams: what else the format says about the optimizer, as a dict: a
      TF2 checkpoint's float32 hyper variables (``learning_rate``, ``rho``,
      ``momentum``, ``decay``); an ``.h5`` file's or a Keras 3 optimizer's
      ``get_config()``; a TF1 checkpoint's ``global_step`` when asked for;
      empty for a weight list.

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
    ...     optax_tfrmsprop.interop.state_from_tf_checkpoint(
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

  params: optax.Params | None
  state: base.RMSpropState
  hyperparams: dict[str, Any]


def require(module: str, what: str) -> Any:
  """Imports an optional dependency, or says which extra installs it.

  Args:
    module: the module to import (``"tensorflow"``, ``"h5py"``, ...).
    what: what needs it, for the message (``"Reading a TF2 checkpoint"``).

  Returns:
    The module.

  Raises:
    ImportError: naming the module and the extra, when it is not installed.
  """
  try:
    return importlib.import_module(module)
  except ImportError as error:
    raise ImportError(
      f"{what} needs {module}, which is not installed: install the "
      f"package's '{_EXTRAS[module]}' extra (pip install "
      f"'optax-tfrmsprop[{_EXTRAS[module]}]', or pip install -e "
      f"'.[{_EXTRAS[module]}]' from a clone)."
    ) from error


def checked_count(value: Any, source: str) -> jax.Array:
  """A TF iteration count as ``state.count``: int32, exact, never wrapped.

  ``RMSpropState.count`` is int32 and saturates at its maximum, as optax's
  counts do; a TF count beyond that range cannot be carried exactly, and a
  wrapped one would be negative (and with ``decay`` would step uphill), so
  it is refused.

  Args:
    value: the count as stored (a numpy int64, a Python int, ...).
    source: where it comes from, for the message.

  Returns:
    The count as a jax int32 scalar.

  Raises:
    ValueError: naming ``source`` and the value, for a non-integer, a
      non-scalar, a negative count or one beyond the int32 maximum.
  """
  array = np.asarray(value)
  if array.shape != () or array.dtype.kind not in "iu":
    raise ValueError(
      f"{source} must be an integer scalar, got shape {array.shape} and "
      f"dtype {array.dtype}."
    )
  count = int(array)
  if not 0 <= count <= INT32_MAX:
    raise ValueError(
      f"{source} is {count}, outside [0, {INT32_MAX}]: the optimizer "
      "state's count is int32 (saturating at its maximum, as optax's "
      "counts), so this count cannot be carried exactly and is not "
      "wrapped. Reset the TF iteration count (e.g. "
      "optimizer.iterations.assign(...)) before converting, if a "
      "schedule or decay does not depend on it."
    )
  return jnp.asarray(count, jnp.int32)


def slot_names(flavor: str) -> tuple[tuple[str, str], ...]:
  """``(state field, TF slot name)`` of ``flavor``, in TF's creation order."""
  return base.semantics(flavor).slots


def present_fields(state: base.RMSpropState) -> list[str]:
  """The slot fields ``state`` has, in its flavor's TF creation order."""
  return [
    field
    for field, _ in slot_names(state.flavor)
    if getattr(state, field) is not None
  ]


def make_state(
  flavor: str, count: jax.Array, slots: dict[str, Any]
) -> base.RMSpropState:
  """The ``flavor``'s state class with ``count`` and the ``slots`` given.

  Args:
    flavor: the :data:`~optax_tfrmsprop.Flavor`.
    count: the int32 count.
    slots: state field (``ms``, ``mg``, ``mom``) to slot tree; absent fields
      are ``None``.

  Returns:
    The state.
  """
  return base.STATE_CLASSES[flavor](
    count=count, ms=slots["ms"], mg=slots.get("mg"), mom=slots.get("mom")
  )


def check_state(state: Any, flavor: str, argument: str = "state") -> None:
  """Raises a TypeError unless ``state`` is the ``flavor``'s state class."""
  expected = base.STATE_CLASSES[flavor]
  if type(state) is not expected:
    raise TypeError(
      f"`{argument}` must be a {expected.__name__} (the state of "
      f"{base.semantics(flavor).optimizer}), got "
      f"{type(state).__name__}."
    )


def key_name(key: Any) -> str:
  """One key of a tree path as text: dict key, attribute or index."""
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def param_path(key_path) -> str:
  """The default checkpoint name of a param: its tree keys joined by ``/``.

  A trailing ``.value`` (the payload of a flax ``nnx.Variable``) is left out,
  so ``nnx.state(model)``'s ``linear.kernel`` reads ``linear/kernel``.

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
  return "/".join(key_name(k) for k in strip_value_key(tuple(key_path)))


def strip_value_key(key_path: tuple[Any, ...]) -> tuple[Any, ...]:
  """``key_path`` without a trailing ``.value`` attribute (nnx Variables)."""
  if (
    key_path
    and isinstance(key_path[-1], jax.tree_util.GetAttrKey)
    and key_path[-1].name == "value"
  ):
    return key_path[:-1]
  return key_path


def shape_dtype(leaf: Any) -> tuple[tuple[int, ...], np.dtype]:
  """``(shape, dtype)`` of an array, a ShapeDtypeStruct or a variable."""
  dtype = getattr(leaf, "dtype", None)
  dtype = getattr(dtype, "as_numpy_dtype", dtype)  # A tf.DType.
  if dtype is None:
    dtype = jnp.result_type(leaf)
  shape = leaf.shape if hasattr(leaf, "shape") else np.shape(leaf)
  return tuple(int(d) for d in shape), np.dtype(dtype)


def describe(shape: tuple[int, ...], dtype: np.dtype) -> str:
  return f"{np.dtype(dtype).name}{tuple(shape)}"
