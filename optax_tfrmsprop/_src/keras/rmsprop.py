"""The Keras-style, stateful ``RMSprop``: the TF 2.0 API over the functional core.

:class:`RMSprop` keeps TF's objects (``iterations``, slot variables, weight
lists, configs) and runs every step through one cached, jit-compiled call of
:func:`~optax_tfrmsprop.rmsprop_update`; it never computes an update itself.
Hyperparameters enter that call as traced scalars, so changing them (or
reading them from callables every step) never recompiles.
"""

import functools
import numbers
import warnings
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from optax_tfrmsprop._src import alias
from optax_tfrmsprop._src import base
from optax_tfrmsprop._src import numerics
from optax_tfrmsprop._src import sparse
from optax_tfrmsprop._src import transform
from optax_tfrmsprop._src.interop import keras_weights
from optax_tfrmsprop._src.keras import schedules
from optax_tfrmsprop._src.keras.variable import Variable

_ALLOWED_KWARGS = frozenset(
    {"clipnorm", "clipvalue", "lr", "decay", "global_clipnorm"})
_HYPER_NAMES = ("learning_rate", "rho", "momentum", "decay")


@functools.partial(jax.jit, static_argnames=("static",))
def _compiled_step(values, grads, state, hypers, *, static):
  """One ``apply_gradients``: the core update, then ``var + update``.

  Args:
    values: the variables' values, a list.
    grads: their gradients.
    state: an :class:`RMSpropState` over lists.
    hypers: traced scalars: ``lr`` (unless a schedule is static), ``rho``,
      ``momentum``, ``decay`` (unless static) (float32, as TF's hyper
      variables) and ``epsilon`` (the widest float, cast per variable like
      TF's Python float).
    static: ``(schedule, decay, clipvalue, clipnorm, global_clipnorm,
      rounding)``; ``decay`` is ``None`` when traced.

  Returns:
    ``(new values, new state)``.
  """
  schedule, decay, clipvalue, clipnorm, global_clipnorm, rounding = static
  updates, state = transform.rmsprop_update(
      grads, state,
      learning_rate=hypers["lr"] if schedule is None else schedule,
      rho=hypers["rho"], momentum=hypers["momentum"],
      epsilon=hypers["epsilon"],
      decay=hypers["decay"] if decay is None else decay, clipvalue=clipvalue,
      clipnorm=clipnorm, global_clipnorm=global_clipnorm, rounding=rounding)
  return sparse.apply_updates(values, updates), state


def _grad_signature(g) -> tuple[tuple[int, ...], np.dtype]:
  """Shape and dtype of the parameter a (dense or sparse) gradient is for."""
  dense_shape = getattr(g, "dense_shape", None)
  if dense_shape is not None:
    return tuple(int(d) for d in np.asarray(dense_shape)), np.dtype(
        g.values.dtype)
  # The array's own dtype: a float64 numpy gradient is an error for a float32
  # variable (as in TF), not something to truncate.
  return tuple(np.shape(g)), np.dtype(g.dtype)


def _as_gradient(g, var: Variable):
  """A gradient as the step takes it: arrays stay, Python numbers get var's dtype."""
  if isinstance(g, Variable):
    return g.value
  if isinstance(g, (jax.Array, np.ndarray, np.generic)) or hasattr(
      g, "dense_shape"):
    return g
  return jnp.asarray(g, var.dtype)


def _jsonable(value: Any) -> Any:
  """Numpy and jax scalars as Python numbers, recursively."""
  if isinstance(value, dict):
    return {k: _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, (jax.Array, np.ndarray, np.generic)):
    return np.asarray(value).item()
  return value


class RMSprop:
  r"""``tf.keras.optimizers.RMSprop`` of TF 2.0 (tf_keras' legacy), on JAX.

  A stateful optimizer of :class:`Variable`\ s with every member of the TF
  2.0 API, whose steps are the functional :func:`~optax_tfrmsprop.rmsprop_update`
  (bit-identical to TF's CPU kernels) compiled once. As in TF, the update
  path is fixed at construction: momentum path iff ``momentum`` is an array,
  a callable, or > 0; ``centered`` adds the ``mg`` slot.

  ``learning_rate``, ``decay``, ``momentum`` and ``epsilon`` may be
  zero-argument callables, called at every step; ``learning_rate`` may also
  be a :class:`~optax_tfrmsprop.schedules.LearningRateSchedule`, called with
  the step count cast to each variable's dtype. ``rho``, ``learning_rate``,
  ``momentum`` and ``decay`` given as Python numbers reach the update as
  float32 (TF keeps them in float32 variables); ``epsilon`` goes straight to
  each variable's dtype, and ``0`` or ``None`` mean ``1e-7``.

  Args:
    learning_rate: a number, array, schedule, or zero-argument callable.
    rho: discounting factor of the moving averages.
    momentum: plain momentum; a Python number must be in [0, 1].
    epsilon: small constant of the denominator.
    centered: normalise by the estimated variance of the gradient.
    name: prefix of the slot names (``RMSprop/<var>/rms:0``).
    **kwargs: only tf_keras' ``lr`` (deprecated alias of ``learning_rate``),
      ``decay`` (inverse-time decay), ``clipnorm``, ``clipvalue`` and
      ``global_clipnorm``.

  Example:
    >>> opt = RMSprop(learning_rate=0.1)
    >>> var = Variable(10.0)
    >>> loss = lambda: (var.value ** 2) / 2.0
    >>> print(opt.minimize(loss, [var]).numpy())
    1
    >>> print(var.numpy())
    9.683772
  """

  def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0,
               epsilon=1e-07, centered=False, name="RMSprop", **kwargs):
    for key, value in kwargs.items():
      if key not in _ALLOWED_KWARGS:
        raise TypeError(
            "Unexpected keyword argument passed to optimizer: "
            f"{key}. Allowed kwargs are {set(_ALLOWED_KWARGS)}.")
      if value is not None and not callable(value) and value < 0:
        raise ValueError(f"Expected {key} >= 0, received: {value}")
      if key == "lr":
        warnings.warn(
            "The `lr` argument is deprecated, use `learning_rate` instead.",
            UserWarning, stacklevel=2)
    if (kwargs.get("clipnorm") is not None
        and kwargs.get("global_clipnorm") is not None):
      raise ValueError(
          "Cannot accept both `clipnorm` and `global_clipnorm`. Received: "
          f"`clipnorm`={kwargs['clipnorm']}, "
          f"`global_clipnorm`={kwargs['global_clipnorm']}.")
    if (isinstance(momentum, (int, float)) and not isinstance(momentum, bool)
        and not 0 <= momentum <= 1):
      raise ValueError(
          "`momentum` must be between [0, 1]. Received: "
          f"momentum={momentum} (of type {type(momentum)}).")
    object.__setattr__(self, "_hyper", {})
    self._name = name
    self._hyper["learning_rate"] = kwargs.get("lr", learning_rate)
    self._initial_decay = kwargs.get("decay", 0.0)
    self._hyper["decay"] = self._initial_decay
    self._hyper["rho"] = rho
    self._hyper["momentum"] = momentum
    self._momentum = alias.uses_momentum(momentum)
    self.epsilon = epsilon or numerics.KERAS_EPSILON
    self.centered = centered
    self.clipnorm = kwargs.get("clipnorm")
    self.clipvalue = kwargs.get("clipvalue")
    self.global_clipnorm = kwargs.get("global_clipnorm")
    self._iterations: Optional[Variable] = None
    # Whether TF would have made its float32 hyper variables by now.
    self._hypers_created = False
    self._weights: list[Variable] = []
    self._slots: dict[int, dict[str, Variable]] = {}
    self._slot_names: list[str] = []
    # (key, device arrays, the values they hold, kept alive for the key).
    self._hyper_cache: tuple[Any, ...] = (None, None, None)

  # -- hyperparameters as attributes, as in TF (``opt.lr`` aliases).

  def __getattr__(self, name):
    hyper = self.__dict__.get("_hyper", {})
    if name == "lr":
      name = "learning_rate"
    if name in hyper:
      return hyper[name]
    raise AttributeError(
        f"'{type(self).__name__}' object has no attribute '{name}'")

  def __setattr__(self, name, value):
    if name == "lr":
      name = "learning_rate"
    if name in self.__dict__.get("_hyper", {}):
      self._hyper[name] = value
    else:
      object.__setattr__(self, name, value)

  # -- variables.

  @property
  def iterations(self) -> Variable:
    """Variable. The number of training steps this Optimizer has run."""
    if self._iterations is None:
      self._iterations = self.add_weight("iter", shape=[], dtype=jnp.int32)
      self._weights.append(self._iterations)
    return self._iterations

  @iterations.setter
  def iterations(self, variable: Union[Variable, int]):
    if self._iterations is not None:
      raise RuntimeError(
          "Cannot set `iterations` to a new Variable after the Optimizer "
          "weights have been created. Here it is attempting to set "
          f"`iterations` to {variable}.")
    if not isinstance(variable, Variable):
      variable = Variable(variable, name=f"{self._name}/iter",
                          dtype=jnp.int32, trainable=False)
    self._iterations = variable
    self._weights.append(variable)

  @property
  def weights(self) -> list[Variable]:
    """Returns variables of this Optimizer based on the order created."""
    return list(self._weights)

  def variables(self) -> list[Variable]:
    """Returns variables of this Optimizer based on the order created."""
    return list(self._weights)

  def add_weight(self, name, shape, dtype=None, initializer="zeros",
                 trainable=None, synchronization=None, aggregation=None):
    """Creates a Variable named ``<optimizer>/<name>`` (not added to weights).

    Args:
      name: the weight's name.
      shape: its shape.
      dtype: its dtype (default float32).
      initializer: ``"zeros"``, ``"ones"``, a value, or a callable
        ``(shape, dtype) -> value``.
      trainable: recorded on the Variable (default False, as TF's
        optimizer weights).
      synchronization: accepted for TF compatibility; single-device here.
      aggregation: accepted for TF compatibility; single-device here.

    Returns:
      The new :class:`Variable`.
    """
    del synchronization, aggregation
    dtype = jnp.float32 if dtype is None else dtype
    return Variable(_initial_value(initializer, tuple(shape), dtype),
                    name=f"{self._name}/{name}", dtype=dtype,
                    trainable=bool(trainable))

  def add_slot(self, var: Variable, slot_name: str, initializer="zeros",
               shape=None) -> Variable:
    """Adds (or returns the existing) slot ``slot_name`` of ``var``.

    Args:
      var: a :class:`Variable`.
      slot_name: the slot's name (``rms``, ``momentum`` and ``mg`` are the
        ones the update uses).
      initializer: ``"zeros"``, ``"ones"``, a value, or a callable
        ``(shape, dtype) -> value``.
      shape: defaults to ``var``'s shape.

    Returns:
      The slot :class:`Variable`, named ``<optimizer>/<var>/<slot>:0``.
    """
    _check_variable(var)
    if slot_name not in self._slot_names:
      self._slot_names.append(slot_name)
    slots = self._slots.setdefault(id(var), {})
    if slot_name not in slots:
      shape = var.shape if shape is None else tuple(shape)
      slots[slot_name] = Variable(
          _initial_value(initializer, shape, var.dtype),
          name=f"{self._name}/{var._shared_name}/{slot_name}",  # pylint: disable=protected-access
          dtype=var.dtype, trainable=False)
      self._weights.append(slots[slot_name])
    return slots[slot_name]

  def get_slot(self, var: Variable, slot_name: str) -> Variable:
    """The slot ``slot_name`` (``rms``, ``momentum``, ``mg``) of ``var``."""
    try:
      return self._slots[id(var)][slot_name]
    except KeyError:
      raise KeyError(
          f"No slot {slot_name!r} for variable {getattr(var, 'name', var)}; "
          f"slots are created at the first step or by build(). Slot names: "
          f"{self._slot_names}.") from None

  def get_slot_names(self) -> list[str]:
    """A list of names for this optimizer's slots."""
    return list(self._slot_names)

  def build(self, var_list: Iterable[Variable]) -> None:
    """Creates ``iterations`` and the slots of ``var_list``, in TF's order.

    TF does this at the first step; calling it first lets a fresh optimizer
    take a TF weight list with :meth:`set_weights`.

    Args:
      var_list: the variables, in the order TF saw them (the model's
        ``trainable_variables``).
    """
    var_list = list(var_list)
    for var in var_list:
      _check_variable(var)
    _ = self.iterations
    self._hypers_created = True
    for slot_name, _ in keras_weights.SLOT_FIELDS:
      if self._uses_slot(slot_name):
        for var in var_list:
          self.add_slot(var, slot_name)

  def _uses_slot(self, slot_name: str) -> bool:
    return {"rms": True, "momentum": self._momentum,
            "mg": bool(self.centered)}[slot_name]

  # -- weights.

  def get_weights(self) -> list[np.ndarray]:
    """The optimizer's weights as numpy arrays: iterations (int64) first."""
    return [np.int64(w.numpy()) if w is self._iterations else w.numpy()
            for w in self._weights]

  def set_weights(self, weights: Sequence[Any]) -> None:
    """Sets the weights from a list in :meth:`get_weights`' (TF's) layout.

    A list one shorter than :attr:`weights` lacks the iteration count (the
    Keras-1 form), which then becomes 0, as in TF.

    Args:
      weights: numpy arrays.

    Raises:
      ValueError: on a wrong length, or a wrong shape or dtype, naming its
        position; the optimizer is left unchanged.
    """
    params = self._weights
    weights = list(weights)
    if not params:
      if weights:
        raise keras_weights.length_error(self._name, weights, 0)
      return
    if params[0] is not self._iterations:
      raise ValueError(
          "The optimizer's first weight must be its iterations: call "
          "build(var_list) before adding slots by hand.")
    others = params[1:]
    iterations, values = keras_weights.check_weights(
        weights, keras_weights.expected_signature([w.value for w in others]),
        owner=self._name)
    self._iterations.assign(iterations)
    for var, value in zip(others, values):
      var.assign(value)

  # -- steps.

  def apply_gradients(self, grads_and_vars, name=None,
                      experimental_aggregate_gradients=True):
    """Apply gradients to variables.

    Args:
      grads_and_vars: (gradient, :class:`Variable`) pairs; a gradient is an
        array (or :class:`~optax_tfrmsprop.IndexedSlices`) of the variable's
        shape and dtype, or ``None`` to skip the variable.
      name: accepted for TF compatibility.
      experimental_aggregate_gradients: accepted for TF compatibility
        (single device: nothing to aggregate).

    Returns:
      A :class:`Variable` holding the new iteration count, or ``None`` for an
      empty list (no step is taken).

    Raises:
      TypeError: if ``grads_and_vars`` is malformed.
      ValueError: if no variable has a gradient, or a gradient does not fit
        its variable. Nothing is changed when an error is raised.
    """
    del name, experimental_aggregate_gradients
    pairs = _filter_pairs(grads_and_vars)
    if not pairs:
      _ = self.iterations
      self._hypers_created = True
      return None
    grads = [_as_gradient(g, v) for g, v in pairs]
    variables = [v for _, v in pairs]
    for g, v in zip(grads, variables):
      shape, dtype = _grad_signature(g)
      if shape != v.shape or dtype != v.dtype:
        raise ValueError(
            f"The gradient of variable {v.name} has shape {shape} and dtype "
            f"{dtype}, but the variable has shape {v.shape} and dtype "
            f"{v.dtype}.")
    hypers = self._step_hypers()  # Reads callables; may raise.
    if self._iterations is None or any(
        "rms" not in self._slots.get(id(v), {}) for v in variables):
      self.build(variables)
    slot_vars = {name: [self._slots[id(v)][name] for v in variables]
                 for name, _ in keras_weights.SLOT_FIELDS if self._uses_slot(name)}
    count = self._iterations.value
    state = base.RMSpropState(
        count=count if count.dtype == jnp.int32 else count.astype(jnp.int32),
        **{field: [s.value for s in slot_vars[name]]
           for name, field in keras_weights.SLOT_FIELDS if name in slot_vars})
    learning_rate = self._hyper["learning_rate"]
    schedule = (learning_rate
                if isinstance(learning_rate, schedules.LearningRateSchedule)
                else None)
    static = (schedule, self._static_decay(),
              _static_float(self.clipvalue, "clipvalue"),
              _static_float(self.clipnorm, "clipnorm"),
              _static_float(self.global_clipnorm, "global_clipnorm"),
              "tf_cpu")
    values, state = _compiled_step(
        [v.value for v in variables], grads, state, hypers, static=static)
    for var, value in zip(variables, values):
      var._value = value  # pylint: disable=protected-access
    for name, field in keras_weights.SLOT_FIELDS:
      if name in slot_vars:
        for slot, value in zip(slot_vars[name], getattr(state, field)):
          slot._value = value  # pylint: disable=protected-access
    self._iterations.assign(state.count)
    return Variable._wrap(state.count, f"{self._name}/iter")  # pylint: disable=protected-access

  def _step_hypers(self) -> dict[str, Any]:
    """The traced hyperparameters of this step, as device scalars.

    Python numbers (and callables returning them) become float32, as TF's
    hyper variables (and its casts of Python numbers) make them; arrays keep
    their dtype. Device copies are reused while the values do not change.
    """
    values = {}
    for name in _HYPER_NAMES:
      value = self._hyper[name]
      if isinstance(value, schedules.LearningRateSchedule):
        value = 0.0  # The schedule itself goes into the compiled step.
      elif name == "decay" and self._static_decay() is not None:
        continue
      elif callable(value):
        value = value()
      values[name] = value
    epsilon = self.epsilon() if callable(self.epsilon) else self.epsilon
    values["epsilon"] = epsilon
    key = tuple((k, _cache_key(v)) for k, v in values.items())
    if self._hyper_cache[0] != key:
      arrays = {k: _hyper_array(k, v) for k, v in values.items()}
      arrays["lr"] = arrays.pop("learning_rate")
      self._hyper_cache = (key, jax.device_put(arrays), values)
    return self._hyper_cache[1]

  def _static_decay(self) -> Optional[float]:
    """``decay`` as a compile-time constant, or ``None`` to trace it.

    TF decides at construction: a Python ``decay`` is applied only if it
    was > 0 then, and later assignments do not change that. Such a decay
    is a constant (a traced one costs a few scalar ops per step); callables
    and arrays are read at every step.
    """
    decay = self._hyper["decay"]
    if callable(decay) or numerics.is_tensor(decay):
      return None
    return float(self._initial_decay) if self._initial_decay > 0 else 0.0

  def minimize(self, loss: Callable[[], Any], var_list, grad_loss=None,
               name=None):
    """Minimize ``loss`` by updating ``var_list``.

    Computes the gradients with jax (see :meth:`get_gradients`) and calls
    :meth:`apply_gradients`.

    Args:
      loss: a zero-argument callable returning the value to minimize; it reads
        the variables (``v.value`` or operators on ``v``).
      var_list: list or tuple of :class:`Variable`, or a callable returning
        one.
      grad_loss: optional cotangent of ``loss`` (default ones).
      name: accepted for TF compatibility.

    Returns:
      A :class:`Variable` with the new iteration count.
    """
    if callable(var_list):
      var_list = var_list()
    var_list = list(var_list)
    grads = _gradients(loss, var_list, grad_loss)
    return self.apply_gradients(zip(grads, var_list), name=name)

  def get_gradients(self, loss: Callable[[], Any], params):
    """Gradients of ``loss`` with respect to ``params``, clipped as configured.

    Args:
      loss: a zero-argument callable reading the variables.
      params: list of :class:`Variable`.

    Returns:
      List of gradient arrays.

    Raises:
      ValueError: if a variable does not influence the loss (TF's ``None``
        gradient).
    """
    params = list(params)
    grads = _gradients(loss, params, None)
    for grad, param in zip(grads, params):
      if grad is None:
        raise ValueError(
            f"Variable {param} has `None` for gradient. Please make sure that "
            "all of your ops have a gradient defined (i.e. are "
            "differentiable).")
    return grads

  def get_updates(self, loss: Callable[[], Any], params):
    """Computes the gradients of ``loss`` and applies them; a one-item list."""
    params = list(params)
    grads = self.get_gradients(loss, params)
    return [self.apply_gradients(list(zip(grads, params)))]

  # -- config.

  def get_config(self) -> dict[str, Any]:
    """TF's config keys and values, always JSON-serialisable.

    Returns:
      ``name``; ``clipnorm``, ``clipvalue``, ``global_clipnorm`` when set;
      then ``learning_rate`` (a serialised schedule, or the current value of
      a callable), ``decay``, ``rho``, ``momentum``, ``epsilon``,
      ``centered``.
    """
    config = {"name": self._name}
    for key in ("clipnorm", "clipvalue", "global_clipnorm"):
      if getattr(self, key) is not None:
        config[key] = getattr(self, key)
    config.update(
        learning_rate=self._serialize_hyperparameter("learning_rate"),
        decay=self._initial_decay,
        rho=self._serialize_hyperparameter("rho"),
        momentum=self._serialize_hyperparameter("momentum"),
        epsilon=self.epsilon() if callable(self.epsilon) else self.epsilon,
        centered=self.centered)
    return _jsonable(config)

  def _serialize_hyperparameter(self, name):
    value = self._hyper[name]
    if isinstance(value, schedules.LearningRateSchedule):
      return schedules.serialize(value)
    if callable(value):
      return value()
    if self._hypers_created or numerics.is_tensor(value):
      # TF then reads its float32 hyper variable (or tensor).
      return float(np.float32(value))
    return value

  @classmethod
  def from_config(cls, config, custom_objects=None, *,
                  evaluation="graph") -> "RMSprop":
    """Creates an optimizer from a config, e.g. a TF RMSprop's ``get_config()``.

    Args:
      config: the config dict; ``lr`` is taken as ``learning_rate``, and a
        dict ``learning_rate`` as a serialised Keras schedule.
      custom_objects: maps class names to custom schedule classes.
      evaluation: how a serialised Keras schedule is evaluated: ``"graph"``
        (default), the values ``Model.fit`` computes, or ``"eager"``, those
        of TF's eager execution (see ``schedules.deserialize``).

    Returns:
      An optimizer instance.

    Raises:
      TypeError: for an unknown key or schedule class.
      ValueError: for an unknown ``evaluation``.
    """
    config = dict(config)
    schedules.check_evaluation(evaluation)
    if "lr" in config:
      config["learning_rate"] = config.pop("lr")
    if isinstance(config.get("learning_rate"), dict):
      config["learning_rate"] = schedules.deserialize(
          config["learning_rate"], custom_objects=custom_objects,
          evaluation=evaluation)
    return cls(**config)


def _check_variable(var) -> None:
  if not isinstance(var, Variable):
    raise TypeError(
        f"Expected an optax_tfrmsprop.Variable, got {type(var).__name__}: "
        f"{var!r}.")


def _initial_value(initializer, shape, dtype):
  if isinstance(initializer, str):
    fills = {"zeros": jnp.zeros, "ones": jnp.ones}
    if initializer not in fills:
      raise ValueError(
          f"Unknown initializer {initializer!r}; use 'zeros', 'ones', a "
          "value, or a callable (shape, dtype) -> value.")
    return fills[initializer](shape, dtype)
  if callable(initializer):
    return initializer(shape=shape, dtype=dtype)
  return jnp.asarray(initializer, dtype)


def _filter_pairs(grads_and_vars) -> list[tuple[Any, Variable]]:
  """Validates the pairs and drops ``None`` gradients, as TF does."""
  try:
    pairs = list(grads_and_vars)
  except TypeError:
    raise TypeError(
        "grads_and_vars must be an iterable of (gradient, variable) pairs, "
        f"got {grads_and_vars!r}.") from None
  for i, pair in enumerate(pairs):
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
      raise TypeError(
          "grads_and_vars must be (gradient, variable) pairs; item "
          f"{i} is {pair!r}.")
    if not isinstance(pair[1], Variable):
      raise TypeError(
          f"grads_and_vars item {i}: the second element must be an "
          f"optax_tfrmsprop.Variable, got {type(pair[1]).__name__}.")
  if not pairs:
    return []
  kept = [(g, v) for g, v in pairs if g is not None]
  if not kept:
    raise ValueError(
        "No gradients provided for any variable: "
        f"({[v.name for _, v in pairs]},). Provided `grads_and_vars` is "
        f"{tuple(pairs)}.")
  if len(kept) < len(pairs):
    warnings.warn(
        "Gradients do not exist for variables "
        f"{[v.name for g, v in pairs if g is None]} when minimizing the loss. "
        "If you're using `model.compile()`, did you forget to provide a "
        "`loss` argument?", UserWarning, stacklevel=3)
  seen = set()
  for _, v in kept:
    if id(v) in seen:
      raise ValueError(
          f"Variable {v.name} appears twice in grads_and_vars; sum its "
          "gradients into one.")
    seen.add(id(v))
  return kept


def _gradients(loss: Callable[[], Any], var_list: list[Variable], grad_loss):
  """Gradients of a zero-argument loss reading ``var_list``; ``None`` if unused.

  The variables temporarily hold jax tracers while the loss runs. A variable
  the loss never reads, or that is not floating-point, gets ``None``, like
  ``tf.GradientTape``.
  """
  for var in var_list:
    _check_variable(var)
  floats = [v for v in var_list if jnp.issubdtype(v.dtype, jnp.inexact)]

  def loss_of(values):
    saved = [v._value for v in floats]  # pylint: disable=protected-access
    try:
      for var, value in zip(floats, values):
        var._value = value  # pylint: disable=protected-access
      return jnp.asarray(loss())
    finally:
      for var, value in zip(floats, saved):
        var._value = value  # pylint: disable=protected-access

  values = [v.value for v in floats]
  jaxpr = jax.make_jaxpr(loss_of)(values)
  used = _used_inputs(jaxpr.jaxpr)
  out, vjp = jax.vjp(loss_of, values)
  cotangent = (jnp.ones_like(out) if grad_loss is None
               else jnp.asarray(grad_loss, out.dtype))
  (grads,) = vjp(cotangent)
  by_id = {id(v): (g if u else None)
           for v, g, u in zip(floats, grads, used)}
  return [by_id.get(id(v)) for v in var_list]


def _used_inputs(jaxpr) -> list[bool]:
  """Whether each input of ``jaxpr`` reaches an equation or an output."""
  referenced = {id(x) for eqn in jaxpr.eqns for x in eqn.invars}
  referenced |= {id(x) for x in jaxpr.outvars}
  return [id(x) in referenced for x in jaxpr.invars]


def _static_float(value, name) -> Optional[float]:
  if value is None:
    return None
  if isinstance(value, numbers.Real) or (
      isinstance(value, (np.ndarray, np.generic, jax.Array))
      and np.ndim(value) == 0):
    return float(value)
  raise TypeError(f"{name} must be a number, got {name}={value!r}.")


def _cache_key(value) -> Any:
  """Equal keys mean equal hyperparameter arrays."""
  if isinstance(value, jax.Array):
    return ("jax", id(value))  # Immutable, and the cache holds a reference.
  if isinstance(value, (np.ndarray, np.generic)):
    return ("numpy", np.dtype(value.dtype), np.asarray(value).tobytes())
  return (type(value), value)


def _hyper_array(name: str, value) -> jax.Array:
  """A hyperparameter as the compiled step takes it (see ``_step_hypers``)."""
  if isinstance(value, Variable):
    value = value.value
  if isinstance(value, (jax.Array, np.ndarray, np.generic)):
    if np.ndim(value) != 0:
      raise ValueError(f"{name} must be a scalar, got shape {np.shape(value)}.")
    return value
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise TypeError(f"{name} must be a real number, got {name}={value!r}.")
  if name == "epsilon":
    # TF converts the Python float straight to each variable's dtype: keep
    # it in the widest float, from which each cast rounds once.
    return np.asarray(value or numerics.KERAS_EPSILON,
                      jax.dtypes.canonicalize_dtype(np.float64))
  return np.float32(value)
