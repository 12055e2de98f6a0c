"""A Keras 3 ``keras.optimizers.RMSprop``'s variables, both ways.

Keras 3 names the slots of a variable with path ``p``
``<p with / replaced by _>_<slot>``, the slot names being those of
``base.SEMANTICS["keras3"]`` (``velocity``, ``momentum`` when
``momentum > 0``, ``average_gradient`` when centered); its ``iterations``
is the count. :func:`state_from_keras3` reads a built optimizer into a
:class:`~optax_tfrmsprop.Keras3RMSpropState`; :func:`state_to_keras3`
writes one back into an optimizer (and the params into the variables).
"""

from typing import Any

import jax
import numpy as np
import optax

from optax_tfrmsprop._src import base
from optax_tfrmsprop._src.interop import common
from optax_tfrmsprop._src.interop import correspondence as correspondence_lib

Variables = Any | correspondence_lib.Correspondence


def _variables_and_pairs(variables: Variables):
  """``(variables in order, correspondence)``."""
  if isinstance(variables, correspondence_lib.Correspondence):
    if variables.variables is None:
      raise ValueError(
        "The correspondence holds no Keras variables: build it from the "
        "Keras 3 model (interop.correspondence(model, params))."
      )
    return list(variables.variables), variables
  leaves = jax.tree.leaves(variables, is_leaf=lambda v: hasattr(v, "assign"))
  template = jax.tree.unflatten(
    jax.tree.structure(variables, is_leaf=lambda v: hasattr(v, "assign")),
    [jax.ShapeDtypeStruct(*common.shape_dtype(v)) for v in leaves],
  )
  return leaves, correspondence_lib.Correspondence.from_tree(template)


# The list in which a Keras 3 RMSprop keeps each slot, in its build order.
_SLOT_LISTS = {
  "ms": "_velocities",
  "mom": "_momentums",
  "mg": "_average_gradients",
}


def _slot_variables(optimizer, variables, pairs, fields):
  """The optimizer's variable for each (field, variable), as Keras finds it.

  Keras 3 keeps each slot as a list in build order and finds a variable's
  entry with ``_get_variable_index`` (keyed by the variable object, as its
  ``update_step`` does). The slots' names are not unique: two variables
  with the same ``path`` (two ``keras.Variable(..., name="w")``) have slots
  of the same name, so a match by name took one for the other.

  Args:
    optimizer: a built Keras 3 ``RMSprop``.
    variables: the Keras variables, in ``pairs``' order.
    pairs: their correspondence, for the messages.
    fields: the state fields to find (``ms``, ``mom``, ``mg``).

  Returns:
    A dict from field to the slot variables, in ``pairs``' order.

  Raises:
    ValueError: naming the variable, when the optimizer was not built with
      it or it is given twice.
  """
  seen = {}
  indices = []
  for i, variable in enumerate(variables):
    key = optimizer._var_key(variable)
    if key in seen:
      raise ValueError(
        f"{pairs.describe(seen[key])} and {pairs.describe(i)} are the same "
        f"Keras variable ({variable.path!r}); each needs its own."
      )
    seen[key] = i
    try:
      indices.append(optimizer._get_variable_index(variable))
    except KeyError:
      velocity = dict(common.slot_names("keras3"))["ms"]
      name = f"{variable.path.replace('/', '_')}_{velocity}"
      raise ValueError(
        f"The optimizer has no variable {name!r} for "
        f"{pairs.describe(i)} ({variable.path!r}); was it built with "
        "these variables?"
      ) from None
  return {
    field: [getattr(optimizer, _SLOT_LISTS[field])[k] for k in indices]
    for field in fields
  }


def _build_order(given: Variables, variables: list[Any]) -> list[Any]:
  """The variables in the order to build an unbuilt optimizer with.

  Keras 3 saves an optimizer's slots in a ``.keras`` archive by position and
  ``load_model`` builds the optimizer with ``model.trainable_variables``, so
  an optimizer built in another order loads with the slots of one variable
  on another. A correspondence holds the model's order (or that of the list
  it was built from), and a list or tuple, or a single variable, says its
  own; a dict's leaf order (its sorted keys) is not the model's.

  Args:
    given: the ``variables`` argument of :func:`state_to_keras3`.
    variables: its variables in leaf (or Keras) order.

  Returns:
    ``variables``, to build with.

  Raises:
    ValueError: when ``given`` does not say the order.
  """
  if (
    isinstance(given, correspondence_lib.Correspondence)
    or isinstance(given, (list, tuple))
    and all(hasattr(v, "assign") for v in given)
    or len(variables) <= 1
  ):
    return variables
  raise ValueError(
    "The Keras 3 optimizer is not built, and a "
    f"{type(given).__name__} of variables does not say the order Keras "
    "builds it in (that of model.trainable_variables), in which a "
    ".keras archive saves its slots: built in the tree's order, it would "
    "load with one variable's slots on another. Build it first "
    "(optimizer.build(model.trainable_variables)), or pass "
    "interop.correspondence(model, params) or a list of the variables in "
    "the model's order."
  )


def _fields(optimizer) -> list[str]:
  return [
    field
    for field, _ in common.slot_names("keras3")
    if field == "ms"
    or (field == "mom" and optimizer.momentum > 0)
    or (field == "mg" and optimizer.centered)
  ]


def state_from_keras3(
  optimizer: Any, variables: Variables
) -> common.RestoredRMSprop:
  """Reads a built Keras 3 ``keras.optimizers.RMSprop`` and its variables.

  Args:
    optimizer: a Keras 3 ``RMSprop`` that has been built (or applied).
    variables: a tree of the Keras variables it optimizes, whose structure
      the params take; or a :class:`~optax_tfrmsprop.interop.Correspondence`
      built from the Keras 3 model and a JAX param tree (flax linen, nnx).

  Returns:
    A :class:`~optax_tfrmsprop.interop.RestoredRMSprop` with a
    :class:`~optax_tfrmsprop.Keras3RMSpropState` for
    :func:`~optax_tfrmsprop.keras3_rmsprop` with the optimizer's
    ``momentum`` and ``centered``; ``hyperparams`` is its ``get_config()``.

  Raises:
    ValueError: when the optimizer has no slot for one of the variables, or
      its iteration count is beyond int32.

  Example:
    >>> import keras
    >>> import numpy as np
    >>> from optax_tfrmsprop import interop
    >>> w = keras.Variable(np.ones(3, np.float32), name="w")
    >>> opt = keras.optimizers.RMSprop(momentum=0.9)
    >>> _ = opt.apply_gradients([(np.full(3, 0.5, np.float32), w)])
    >>> params, state, config = interop.state_from_keras3(opt, {"w": w})
    >>> int(state.count), state.mom["w"].shape, config["momentum"]
    (1, (3,), 0.9)
  """
  variables, pairs = _variables_and_pairs(variables)
  fields = _fields(optimizer)
  slots = _slot_variables(optimizer, variables, pairs, fields)
  state = common.make_state(
    "keras3",
    common.checked_count(
      np.asarray(optimizer.iterations), "The Keras 3 optimizer's iterations"
    ),
    {
      field: pairs.from_keras(
        [np.asarray(s) for s in slots[field]], f"{field!r} slot"
      )
      for field in fields
    },
  )
  values = pairs.from_keras([np.asarray(v) for v in variables], "value")
  return common.RestoredRMSprop(values, state, optimizer.get_config())


def keras3_state_from_optimizer(
  optimizer: Any, variables: Any
) -> tuple[Any, base.RMSpropState]:
  """Reads a built Keras 3 ``keras.optimizers.RMSprop`` and its variables.

  Kept for backward compatibility: the ``(params, state)`` of
  :func:`~optax_tfrmsprop.interop.state_from_keras3`.

  Args:
    optimizer: a Keras 3 ``RMSprop`` that has been built (or applied).
    variables: a tree of the Keras variables it optimizes.

  Returns:
    ``(params, state)`` for :func:`~optax_tfrmsprop.keras3_rmsprop`.

  Example:
    >>> import keras
    >>> import numpy as np
    >>> w = keras.Variable(np.ones(3, np.float32), name="w")
    >>> opt = keras.optimizers.RMSprop(momentum=0.9)
    >>> _ = opt.apply_gradients([(np.full(3, 0.5, np.float32), w)])
    >>> params, state = keras3_state_from_optimizer(opt, {"w": w})
    >>> int(state.count), state.mom["w"].shape
    (1, (3,))
  """
  restored = state_from_keras3(optimizer, variables)
  return restored.params, restored.state


def state_to_keras3(
  params: optax.Params,
  state: base.Keras3RMSpropState,
  optimizer: Any,
  variables: Variables,
) -> Any:
  """Writes params and a Keras 3 state into Keras 3 variables and optimizer.

  Builds the optimizer for the variables if it is not built (Keras 3's public
  ``build``), then assigns the params to the variables, the slots to the
  optimizer's ``velocity``, ``momentum`` and ``average_gradient`` variables
  and ``state.count`` to its ``iterations``; ``apply_gradients`` (or
  ``Model.fit``) then continues bit-identically to
  :func:`~optax_tfrmsprop.keras3_rmsprop`.

  An unbuilt optimizer is built in the model's order
  (``model.trainable_variables``), in which a ``.keras`` archive saves its
  slots and ``keras.saving.load_model`` reads them back: that of a
  correspondence, or of a list or tuple of variables (taken to be the
  model's). A dict or other tree of several variables does not say it, and
  is refused for an unbuilt optimizer: build it first with
  ``optimizer.build(model.trainable_variables)``. A built optimizer's slots
  are found for each variable whatever its build order.

  Args:
    params: the JAX params.
    state: their :class:`~optax_tfrmsprop.Keras3RMSpropState`.
    optimizer: a Keras 3 ``RMSprop`` with the state's ``momentum`` and
      ``centered`` (``momentum > 0`` iff the state has a ``mom`` slot).
    variables: the Keras variables, as a tree with the params' structure or
      a :class:`~optax_tfrmsprop.interop.Correspondence` built from the Keras
      3 model (a dict of several variables only for a built optimizer).

  Returns:
    The optimizer.

  Raises:
    TypeError: if ``state`` is not a ``Keras3RMSpropState``.
    ValueError: before anything changes, if the optimizer's
      ``momentum``/``centered`` ask for other slots than the state has, a
      shape or dtype differs (naming the variable), or the optimizer is not
      built and ``variables`` does not say the model's order.

  Example:
    >>> import jax.numpy as jnp
    >>> import keras
    >>> import numpy as np
    >>> import optax_tfrmsprop
    >>> from optax_tfrmsprop import interop
    >>> params = {"w": jnp.array([1.0, 2.0])}
    >>> opt = optax_tfrmsprop.keras3_rmsprop(0.1, momentum=0.9)
    >>> state = opt.init(params)
    >>> updates, state = opt.update({"w": jnp.array([0.5, -0.5])}, state)
    >>> w = keras.Variable(np.zeros(2, np.float32), name="w")
    >>> keras_opt = interop.state_to_keras3(
    ...     params, state, keras.optimizers.RMSprop(0.1, momentum=0.9),
    ...     {"w": w})
    >>> int(keras_opt.iterations.numpy())
    1
  """
  common.check_state(state, "keras3")
  given = variables
  variables, pairs = _variables_and_pairs(variables)
  fields = _fields(optimizer)
  have = common.present_fields(state)
  if sorted(fields) != sorted(have):
    raise ValueError(
      f"The Keras 3 optimizer (momentum={optimizer.momentum}, "
      f"centered={optimizer.centered}) has the slots {fields}, the state "
      f"{have}: build it with the state's optimizer's arguments."
    )
  values = pairs.to_keras(params)
  slot_values = {f: pairs.to_keras(getattr(state, f)) for f in fields}
  for i, value in enumerate(values):  # Check everything before any change.
    for what, v in [("value", value)] + [
      (f"{f!r} slot", slot_values[f][i]) for f in fields
    ]:
      if common.shape_dtype(v) != common.shape_dtype(variables[i]):
        raise ValueError(
          f"The {what} of {pairs.describe(i)} is "
          f"{common.describe(*common.shape_dtype(v))}; the Keras variable "
          f"is {common.describe(*common.shape_dtype(variables[i]))}."
        )
  if not optimizer.built:
    optimizer.build(_build_order(given, variables))
  slots = _slot_variables(optimizer, variables, pairs, fields)
  for variable, value in zip(variables, values):
    variable.assign(np.asarray(value))
  for field in fields:
    for slot, value in zip(slots[field], slot_values[field]):
      slot.assign(np.asarray(value))
  optimizer.iterations.assign(np.int64(int(state.count)))
  return optimizer
