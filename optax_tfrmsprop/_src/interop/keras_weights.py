"""A tf_keras optimizer's weight list to and from :class:`RMSpropState`.

``tf_keras.optimizers.legacy.RMSprop.get_weights()`` lists the iteration count
(int64), then ``rms`` for every variable, then ``momentum``, then ``mg``
(the slot order of ``base.SEMANTICS["keras_legacy"]``), variables in the
order the optimizer first saw them (``model.trainable_variables``).
:func:`state_from_optimizer_weights` and :func:`state_to_optimizer_weights`
convert between that list and the functional state; the Keras-style class
validates ``set_weights`` with the same checks.
"""

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import optax

from optax_tfrmsprop._src import base
from optax_tfrmsprop._src.interop import common
from optax_tfrmsprop._src.interop import correspondence as correspondence_lib

# (TF slot name, state field) of tf_keras' legacy RMSprop, in creation order.
SLOT_FIELDS = tuple(
  (tf_name, field) for field, tf_name in common.slot_names("keras_legacy")
)

ParamsOrCorrespondence = optax.Params | correspondence_lib.Correspondence


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
    ValueError: naming the position of the first wrong entry; an iteration
      count outside int32 is refused, never wrapped.
  """
  weights = list(weights)
  expected = len(slot_signature) + 1
  if len(weights) == expected - 1:
    weights = [np.int64(0)] + weights
  if len(weights) != expected:
    raise length_error(owner, weights, expected)
  iterations = int(
    common.checked_count(weights[0], "Weight 0 (the iteration count)")
  )
  slots = []
  for position, (weight, (shape, dtype)) in enumerate(
    zip(weights[1:], slot_signature), start=1
  ):
    w = np.asarray(weight)
    if w.shape != shape:
      raise ValueError(
        f"Weight {position}: optimizer weight shape {shape} not compatible "
        f"with provided weight shape {w.shape}."
      )
    if w.dtype != dtype:
      raise ValueError(
        f"Weight {position}: optimizer weight dtype {dtype} differs from "
        f"provided weight dtype {w.dtype}."
      )
    slots.append(w)
  return iterations, slots


def length_error(owner: str, weights: list[Any], expected: int):
  return ValueError(  # TF's wording, double space included.
    f"You called `set_weights(weights)` on optimizer {owner} with a  "
    f"weight list of length {len(weights)}, but the optimizer was "
    f"expecting {expected} weights. Provided weights: "
    f"{str(weights)[:50]}..."
  )


def as_correspondence(
  params: ParamsOrCorrespondence,
) -> correspondence_lib.Correspondence:
  """``params`` itself, or the correspondence of a tree in Keras order."""
  if isinstance(params, correspondence_lib.Correspondence):
    return params
  return correspondence_lib.Correspondence.from_tree(params)


def state_to_optimizer_weights(
  state: base.RMSpropState,
  correspondence: correspondence_lib.Correspondence | None = None,
) -> list[np.ndarray]:
  """The weight list ``tf_keras.optimizers.legacy.RMSprop`` would hold.

  TF lists the iteration count (int64), then ``rms`` for every variable, then
  ``momentum`` for every variable, then ``mg`` for every variable. Variables
  come in Keras order: the ``correspondence``'s, else the leaf order of the
  state's trees (a list in ``model.trainable_variables`` order).

  Args:
    state: an :class:`RMSpropState`.
    correspondence: the :class:`~optax_tfrmsprop.interop.Correspondence` of
      the params, when their leaf order is not Keras' (a flax tree).

  Returns:
    A list of numpy arrays for ``tf_keras`` ``optimizer.set_weights``.

  Raises:
    TypeError: if ``state`` is not a (tf_keras legacy) ``RMSpropState``.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_tfrmsprop import rmsprop_init
    >>> w = state_to_optimizer_weights(
    ...     rmsprop_init([jnp.ones(2)], centered=True))
    >>> [a.shape for a in w], w[0].dtype
    ([(), (2,), (2,)], dtype('int64'))
  """
  common.check_state(state, "keras_legacy")
  weights: list[Any] = [np.int64(state.count)]
  for field in common.present_fields(state):
    tree = getattr(state, field)
    leaves = (
      correspondence.to_keras(tree)
      if correspondence is not None
      else jax.tree.leaves(tree)
    )
    weights.extend(np.asarray(a) for a in leaves)
  return weights


def state_from_optimizer_weights(
  weights: Sequence[Any],
  params: ParamsOrCorrespondence,
  *,
  centered: bool = False,
  use_momentum: bool = False,
) -> common.RestoredRMSprop:
  """Builds an :class:`RMSpropState` from a ``tf_keras`` optimizer weight list.

  The inverse of :func:`state_to_optimizer_weights`. ``params`` gives the
  tree, shapes and dtypes: a tree whose leaf order is Keras' (a list in
  ``model.trainable_variables`` order), or a
  :class:`~optax_tfrmsprop.interop.Correspondence` for any other tree (flax
  linen, nnx). ``centered`` and ``use_momentum`` give the slots TF created
  (see :func:`~optax_tfrmsprop._src.alias.uses_momentum`). The Keras-1 form
  without the iteration count is accepted and starts at 0, as in Keras.

  Args:
    weights: ``optimizer.get_weights()`` of a tf_keras legacy RMSprop.
    params: the parameter tree the state is for, or its correspondence.
    centered: whether the TF optimizer was centered.
    use_momentum: whether it took the momentum path.

  Returns:
    A :class:`~optax_tfrmsprop.interop.RestoredRMSprop` whose ``params`` is
    ``None`` (the list holds none) and ``hyperparams`` empty.

  Raises:
    ValueError: naming the position of a weight of the wrong length, shape
      or dtype, or an iteration count beyond int32.

  Example:
    >>> import jax.numpy as jnp, numpy as np
    >>> restored = state_from_optimizer_weights(
    ...     [np.int64(3), np.ones(2, np.float32)], [jnp.zeros(2)])
    >>> int(restored.state.count), restored.state.ms[0]
    (3, Array([1., 1.], dtype=float32))
  """
  pairs = as_correspondence(params)
  fields = [
    field
    for field, _ in common.slot_names("keras_legacy")
    if field == "ms"
    or (field == "mom" and use_momentum)
    or (field == "mg" and centered)
  ]
  signature = [
    (s, d) for _ in fields for s, d in zip(pairs.shapes, pairs.dtypes)
  ]
  iterations, slots = check_weights(weights, signature, owner="RMSprop")
  n = len(pairs)
  state = common.make_state(
    "keras_legacy",
    common.checked_count(iterations, "The iteration count"),
    {
      field: pairs.from_keras(slots[k * n : (k + 1) * n], f"{field!r} slot")
      for k, field in enumerate(fields)
    },
  )
  return common.RestoredRMSprop(None, state, {})


def state_to_keras_weights(state: base.RMSpropState) -> list[np.ndarray]:
  """The weight list ``tf_keras.optimizers.legacy.RMSprop`` would hold.

  Kept for backward compatibility: :func:`state_to_optimizer_weights` in
  :mod:`optax_tfrmsprop.interop` does the same and takes a correspondence.

  Args:
    state: an :class:`RMSpropState`, variables in its leaf order.

  Returns:
    A list of numpy arrays for ``tf_keras`` ``optimizer.set_weights``.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_tfrmsprop import rmsprop_init
    >>> w = state_to_keras_weights(rmsprop_init([jnp.ones(2)], centered=True))
    >>> [a.shape for a in w], w[0].dtype
    ([(), (2,), (2,)], dtype('int64'))
  """
  return state_to_optimizer_weights(state)


def state_from_keras_weights(
  weights: Sequence[Any],
  params: optax.Params,
  *,
  centered: bool = False,
  use_momentum: bool = False,
) -> base.RMSpropState:
  """Builds an :class:`RMSpropState` from a ``tf_keras`` weight list.

  Kept for backward compatibility: it returns the ``state`` of
  :func:`state_from_optimizer_weights` in :mod:`optax_tfrmsprop.interop`.

  Args:
    weights: ``optimizer.get_weights()`` of a TF RMSprop.
    params: the parameter tree the state is for (leaves in Keras order), or
      its :class:`~optax_tfrmsprop.interop.Correspondence`.
    centered: whether the TF optimizer was centered.
    use_momentum: whether it took the momentum path.

  Returns:
    The state.

  Example:
    >>> import jax.numpy as jnp, numpy as np
    >>> s = state_from_keras_weights([np.int64(3), np.ones(2, np.float32)],
    ...                              [jnp.zeros(2)])
    >>> int(s.count), s.ms[0]
    (3, Array([1., 1.], dtype=float32))
  """
  return state_from_optimizer_weights(
    weights, params, centered=centered, use_momentum=use_momentum
  ).state
