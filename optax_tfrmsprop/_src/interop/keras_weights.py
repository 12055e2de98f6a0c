"""Keras' optimizer weight lists to and from :class:`RMSpropState`.

``tf_keras.optimizers.legacy.RMSprop.get_weights()`` lists the iteration count
(int64), then ``rms`` for every variable, then ``momentum``, then ``mg``;
:func:`state_to_keras_weights` and :func:`state_from_keras_weights` convert
between that list and the functional state, and the Keras-style class
validates ``set_weights`` with the same checks.
"""

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_tfrmsprop._src import base
from optax_tfrmsprop._src import transform

# The slots of the update, in TF's creation order, and their state fields.
SLOT_FIELDS = (("rms", "ms"), ("momentum", "mom"), ("mg", "mg"))
_INT32_MAX = np.iinfo(np.int32).max


def expected_signature(arrays) -> list[tuple[tuple[int, ...], np.dtype]]:
  return [(tuple(np.shape(a)), np.dtype(a.dtype)) for a in arrays]


def check_weights(weights: Sequence[Any], slot_signature, *, owner: str):
  """Validates a TF weight list against the slots; returns numpy arrays.

  Args:
    weights: ``[iterations, slot, ...]`` or, Keras-1 style, the slots alone.
    slot_signature: ``(shape, dtype)`` of each slot, in TF's order.
    owner: how the error messages name the optimizer.

  Returns:
    ``(iterations, slots)``: an int and a list of numpy arrays; the
    iterations is 0 for the one-shorter form, as in Keras.

  Raises:
    ValueError: naming the position of the first wrong entry.
  """
  weights = list(weights)
  expected = len(slot_signature) + 1
  if len(weights) == expected - 1:
    weights = [np.int64(0)] + weights
  if len(weights) != expected:
    raise length_error(owner, weights, expected)
  iterations = np.asarray(weights[0])
  if iterations.shape != () or iterations.dtype.kind not in "iu":
    raise ValueError(
        "Weight 0 (the iteration count) must be an integer scalar, got shape "
        f"{iterations.shape} and dtype {iterations.dtype}.")
  if not 0 <= int(iterations) <= _INT32_MAX:
    raise ValueError(
        f"Weight 0 (the iteration count) must be in [0, {_INT32_MAX}], got "
        f"{int(iterations)}.")
  slots = []
  for position, (w, (shape, dtype)) in enumerate(
      zip(weights[1:], slot_signature), start=1):
    w = np.asarray(w)
    if w.shape != shape:
      raise ValueError(
          f"Weight {position}: optimizer weight shape {shape} not compatible "
          f"with provided weight shape {w.shape}.")
    if w.dtype != dtype:
      raise ValueError(
          f"Weight {position}: optimizer weight dtype {dtype} differs from "
          f"provided weight dtype {w.dtype}.")
    slots.append(w)
  return int(iterations), slots


def length_error(owner: str, weights: list[Any], expected: int):
  return ValueError(  # TF's wording, double space included.
      f"You called `set_weights(weights)` on optimizer {owner} with a  "
      f"weight list of length {len(weights)}, but the optimizer was "
      f"expecting {expected} weights. Provided weights: "
      f"{str(weights)[:50]}...")


def _present_fields(state: base.RMSpropState) -> list[str]:
  """The slot fields ``state`` has, in TF's creation order."""
  return [field for _, field in SLOT_FIELDS
          if getattr(state, field) is not None]


def state_to_keras_weights(state: base.RMSpropState) -> list[np.ndarray]:
  """The weight list ``tf_keras.optimizers.legacy.RMSprop`` would hold.

  TF lists the iteration count (int64), then ``rms`` for every variable, then
  ``momentum`` for every variable, then ``mg`` for every variable. Variables
  come in the leaf order of the state's trees: build the params as a list in
  the model's ``trainable_variables`` order to match a Keras model.

  Args:
    state: an :class:`RMSpropState`.

  Returns:
    A list of numpy arrays for ``tf_keras`` ``optimizer.set_weights``.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_tfrmsprop import rmsprop_init
    >>> w = state_to_keras_weights(rmsprop_init([jnp.ones(2)], centered=True))
    >>> [a.shape for a in w], w[0].dtype
    ([(), (2,), (2,)], dtype('int64'))
  """
  weights = [np.int64(state.count)]
  for field in _present_fields(state):
    weights.extend(np.asarray(a) for a in jax.tree.leaves(getattr(state, field)))
  return weights


def state_from_keras_weights(
    weights: Sequence[Any], params: optax.Params, *, centered: bool = False,
    use_momentum: bool = False,
) -> base.RMSpropState:
  """Builds an :class:`RMSpropState` from a ``tf_keras`` weight list.

  The inverse of :func:`state_to_keras_weights`. ``params`` gives the tree,
  shapes and dtypes (variables in its leaf order); ``centered`` and
  ``use_momentum`` give the slots TF created (see
  :func:`~optax_tfrmsprop._src.alias.uses_momentum`). The Keras-1 form
  without the iteration count is accepted and starts at 0, as in Keras.

  Args:
    weights: ``optimizer.get_weights()`` of a TF RMSprop.
    params: the parameter tree the state is for.
    centered: whether the TF optimizer was centered.
    use_momentum: whether it took the momentum path.

  Returns:
    The state.

  Raises:
    ValueError: naming the position of a weight of the wrong length, shape
      or dtype.

  Example:
    >>> import jax.numpy as jnp, numpy as np
    >>> s = state_from_keras_weights([np.int64(3), np.ones(2, np.float32)],
    ...                              [jnp.zeros(2)])
    >>> int(s.count), s.ms[0]
    (3, Array([1., 1.], dtype=float32))
  """
  template = transform.rmsprop_init(
      params, centered=centered, use_momentum=use_momentum)
  fields = _present_fields(template)
  signature = [
      sig for field in fields
      for sig in expected_signature(jax.tree.leaves(getattr(template, field)))
  ]
  iterations, slots = check_weights(weights, signature, owner="RMSprop")
  new_slots = {}
  remaining = iter(slots)
  for field in fields:
    leaves, treedef = jax.tree.flatten(getattr(template, field))
    new_slots[field] = treedef.unflatten(
        [jnp.asarray(next(remaining)) for _ in leaves])
  return template.replace(count=jnp.asarray(iterations, jnp.int32),
                          **new_slots)
