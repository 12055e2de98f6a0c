"""Generic machinery of a tf_keras legacy optimizer (``OptimizerV2``), on JAX.

:class:`OptimizerV2` holds what every optimizer of TF 2.0's
``tf.keras.optimizers`` shares: hyperparameters (float32 Variables, read and
assigned as attributes), ``iterations``, slots and weights (get/set), the
``apply_gradients`` pipeline (``None`` gradients, aggregation,
transformations, one compiled update, constraints), ``minimize`` (its
gradients compiled once per loss and variable set, see
:mod:`loss_gradients`) and the config. A subclass, like tf_keras' own, only
declares its slots, prepares its hyperparameters and applies one step: see
:class:`~optax_tfrmsprop.keras.RMSprop`.
"""

from collections.abc import Callable, Iterable, Sequence
import copy
import functools
import threading
from typing import (
  Any,
  NamedTuple,
)
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from optax_tfrmsprop._src import cpu_kernel
from optax_tfrmsprop._src import sparse
from optax_tfrmsprop._src.interop import keras_weights
from optax_tfrmsprop._src.keras import loss_gradients
from optax_tfrmsprop._src.keras import schedules
from optax_tfrmsprop._src.keras.variable import Variable

# What tf_keras' OptimizerV2 accepts in **kwargs.
_ALLOWED_KWARGS = ("clipnorm", "clipvalue", "lr", "decay", "global_clipnorm")
_CLIP_OPTIONS = ("clipnorm", "clipvalue", "global_clipnorm")  # TF config order.
_MAX_PLANS = 64


class OptimizerV2:
  """tf_keras' legacy ``OptimizerV2`` over Variables.

  Subclasses implement ``_create_slots(var_list)``, ``_prepare(var_list)``
  (the step's hyperparameters) and ``_apply_step(values, grads, slots,
  iterations, prepared)`` (one compiled update of every variable and slot),
  and extend ``get_config``. Every step holds the optimizer's lock, so
  threads calling :meth:`apply_gradients` or :meth:`minimize` on one
  optimizer take their steps one after the other.

  Args:
    name: the prefix of the optimizer's weight names.
    gradient_aggregator: ``f(grads_and_vars) -> grads_and_vars``, called in
      :meth:`apply_gradients` (TF: to sum gradients across replicas; the
      default returns them as they are, one device here).
    gradient_transformers: functions ``f(grads_and_vars) -> grads_and_vars``
      applied in order after aggregation; not together with the clip
      options (as in TF).
    **kwargs: ``clipnorm``, ``clipvalue``, ``global_clipnorm`` (clip the
      gradients as TF does), ``decay`` (inverse-time decay of the learning
      rate) and ``lr`` (deprecated alias of ``learning_rate``).

  Example:
    >>> from optax_tfrmsprop.keras import RMSprop
    >>> opt = RMSprop(learning_rate=0.1)
    >>> isinstance(opt, OptimizerV2), opt.lr.name
    (True, 'RMSprop/learning_rate:0')
  """

  def __init__(
    self,
    name: str,
    gradient_aggregator: Callable[[list], list] | None = None,
    gradient_transformers: Sequence[Callable] | None = None,
    **kwargs,
  ):
    for key, value in kwargs.items():
      if key not in _ALLOWED_KWARGS:
        raise TypeError(
          "Unexpected keyword argument passed to optimizer: "
          f"{key}. Allowed kwargs are {set(_ALLOWED_KWARGS)}."
        )
      if value is not None and _is_negative(value):
        raise ValueError(f"Expected {key} >= 0, received: {value}")
      if key == "lr":
        warnings.warn(
          "The `lr` argument is deprecated, use `learning_rate` instead.",
          UserWarning,
          stacklevel=3,
        )
    object.__setattr__(self, "_hyper", {})
    # A subclass' cache, cleared by every __setattr__.
    self._derived: Any = None
    self._lock = threading.RLock()
    self._name = name
    self._slots: dict[int, dict[str, Variable]] = {}  # By Variable unique id.
    self._slot_names: list[str] = []
    self._weights: list[Variable] = []
    self._iterations: Variable | None = None
    self._initial_decay = kwargs.pop("decay", 0.0)
    self._hypers_created = False
    # One entry per variable set: its slot Variables and dtypes (see _plan).
    self._plans: dict[tuple[int, ...], _Plan] = {}
    self._gradient_cache = loss_gradients.GradientCache()
    self.gradient_aggregator = gradient_aggregator
    self.gradient_transformers = list(gradient_transformers or [])
    self._clip = {}
    for key in ("clipnorm", "global_clipnorm", "clipvalue"):
      self._set_clip(key, kwargs.pop(key, None), check=False)
    if self.clipnorm is not None and self.global_clipnorm is not None:
      raise ValueError(
        "Cannot accept both `clipnorm` and `global_clipnorm`. Received: "
        f"`clipnorm`={self.clipnorm}, "
        f"`global_clipnorm`={self.global_clipnorm}."
      )

  def __deepcopy__(self, memo):
    # As tf_keras: a copy of every attribute, but a lock of its own.
    new = type(self).__new__(type(self))
    memo[id(self)] = new
    fresh = {"_lock": threading.RLock, "_gradient_cache": _new_cache}
    for key, value in self.__dict__.items():
      make = fresh.get(key)
      new.__dict__[key] = make() if make else copy.deepcopy(value, memo)
    return new

  # -- Clip options: TF's properties.

  def _set_clip(self, name: str, value, check: bool = True) -> None:
    if value is not None and self.gradient_transformers:
      raise ValueError(
        f"`{name}` cannot be set when `gradient_transformers` is set. "
        "Instead, use the `gradient_transformers` to specify clipping and "
        f"other transformations. Received: val={value}, "
        f"gradient_transformers={self.gradient_transformers}."
      )
    if check:
      self._check_hyperparameters(**{name: value})
    self._clip[name] = value

  clipnorm = property(
    lambda self: self._clip["clipnorm"],
    lambda self, value: self._set_clip("clipnorm", value),
    doc="`float` or `None`. If set, clips gradients to a maximum norm.",
  )
  clipvalue = property(
    lambda self: self._clip["clipvalue"],
    lambda self, value: self._set_clip("clipvalue", value),
    doc="`float` or `None`. If set, clips gradients to a maximum value.",
  )
  global_clipnorm = property(
    lambda self: self._clip["global_clipnorm"],
    lambda self, value: self._set_clip("global_clipnorm", value),
    doc="`float` or `None`. If set, clips gradients to a global norm.",
  )

  def _check_hyperparameters(self, **changes) -> None:
    """Raises before a hyperparameter changes to an invalid value.

    Subclasses check their hyperparameters, updated by ``changes``, with the
    functional core's validation.
    """
    del changes

  # -- Hyperparameters, as TF's ``_set_hyper`` / ``_get_hyper``.

  def _set_hyper(self, name: str, value: Any) -> None:
    """Sets a hyperparameter: replaces it, or assigns into its Variable."""
    if name not in self._hyper:
      self._hyper[name] = value
      return
    previous = self._hyper[name]
    if not isinstance(previous, Variable) or (
      callable(value) and not isinstance(value, Variable)
    ):
      # A schedule (TF) or a callable (TF cannot assign one into its
      # variable) replaces the hyperparameter.
      self._hyper[name] = value
    else:
      # TF assigns into the hyper variable (its own or the user's), so a
      # compiled step sees the new value without retracing.
      previous.assign(value.value if isinstance(value, Variable) else value)

  def _get_hyper(self, name: str) -> Any:
    """A hyperparameter as TF reads it: a callable is called."""
    if not self._hypers_created:
      self._create_hypers()
    value = self._hyper[name]
    if callable(value) and not isinstance(
      value, schedules.LearningRateSchedule
    ):
      value = value()
    return value

  def _create_hypers(self) -> None:
    """Numbers become float32 Variables, as TF's hyper variables.

    As in TF, everything but a tensor (a jax array here), a Variable and a
    callable (or schedule): Python and NumPy numbers.
    """
    if self._hypers_created:
      return
    for name, value in sorted(self._hyper.items()):
      if not (isinstance(value, (Variable, jax.Array)) or callable(value)):
        self._hyper[name] = self.add_weight(
          name, shape=[], dtype=jnp.float32, initializer=value
        )
    self._hypers_created = True

  def __getattr__(self, name: str) -> Any:
    # Only called when normal lookup fails: hyperparameters (and ``lr``).
    hyper = self.__dict__.get("_hyper")
    if hyper is not None:
      key = "learning_rate" if name == "lr" else name
      if key in hyper:
        return self._get_hyper(key)
    raise AttributeError(
      f"'{type(self).__name__}' object has no attribute '{name}'"
    )

  def __setattr__(self, name: str, value: Any) -> None:
    if name == "lr":
      name = "learning_rate"
    if name in self.__dict__.get("_hyper", ()):
      self._check_hyperparameters(**{name: value})
      with self._lock:
        self._set_hyper(name, value)
    else:
      object.__setattr__(self, name, value)
    if name not in ("_derived", "_plans"):
      # What is derived from the attributes is derived again.
      self.__dict__["_derived"] = None
      self.__dict__.get("_plans", {}).clear()

  def __dir__(self):
    names = set(super().__dir__()) | set(self._hyper)
    if "learning_rate" in self._hyper:
      names.add("lr")
    return sorted(names)

  # -- Variables.

  @property
  def iterations(self) -> Variable:
    """Variable. The number of training steps this Optimizer has run."""
    if self._iterations is None:
      self._iterations = self.add_weight("iter", shape=[], dtype=jnp.int32)
      self._weights.append(self._iterations)
    return self._iterations

  @iterations.setter
  def iterations(self, variable: Variable | int):
    if self._iterations is not None:
      raise RuntimeError(
        "Cannot set `iterations` to a new Variable after the Optimizer "
        "weights have been created. Here it is attempting to set "
        f"`iterations` to {variable}."
      )
    if not isinstance(variable, Variable):
      variable = Variable(
        variable, name=f"{self._name}/iter", dtype=jnp.int32, trainable=False
      )
    self._iterations = variable
    self._weights.append(variable)

  @property
  def weights(self) -> list[Variable]:
    """Returns variables of this Optimizer based on the order created."""
    return list(self._weights)

  def variables(self) -> list[Variable]:
    """Returns variables of this Optimizer based on the order created."""
    return list(self._weights)

  def add_weight(
    self,
    name,
    shape,
    dtype=None,
    initializer="zeros",
    trainable=None,
    synchronization=None,
    aggregation=None,
  ):
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
    return Variable(
      _initial_value(initializer, tuple(shape), dtype),
      name=f"{self._name}/{name}",
      dtype=dtype,
      trainable=bool(trainable),
    )

  def add_slot(
    self, var: Variable, slot_name: str, initializer="zeros", shape=None
  ) -> Variable:
    """Adds (or returns the existing) slot ``slot_name`` of ``var``.

    Slots are keyed by the Variable's unique id (TF's ``_unique_id``), never
    reused: a new Variable never inherits a dead one's slots.

    Args:
      var: a :class:`Variable`.
      slot_name: the slot's name.
      initializer: ``"zeros"``, ``"ones"``, a value, or a callable
        ``(shape, dtype) -> value``.
      shape: defaults to ``var``'s shape.

    Returns:
      The slot :class:`Variable`, named ``<optimizer>/<var>/<slot>:0``.
    """
    _check_variable(var)
    with self._lock:
      if slot_name not in self._slot_names:
        self._slot_names.append(slot_name)
      slots = self._slots.setdefault(var._unique_id, {})
      if slot_name not in slots:
        shape = var.shape if shape is None else tuple(shape)
        slots[slot_name] = Variable(
          _initial_value(initializer, shape, var.dtype),
          name=f"{self._name}/{var._shared_name}/{slot_name}",
          dtype=var.dtype,
          trainable=False,
        )
        self._weights.append(slots[slot_name])
      return slots[slot_name]

  def get_slot(self, var: Variable, slot_name: str) -> Variable:
    """The slot ``slot_name`` of ``var``."""
    try:
      return self._slots[var._unique_id][slot_name]
    except (KeyError, AttributeError):
      raise KeyError(
        f"No slot {slot_name!r} for variable {getattr(var, 'name', var)}; "
        f"slots are created at the first step or by build(). Slot names: "
        f"{self._slot_names}."
      ) from None

  def get_slot_names(self) -> list[str]:
    """A list of names for this optimizer's slots."""
    return list(self._slot_names)

  def _create_slots(self, var_list: list[Variable]) -> None:
    """Subclasses add their slots for ``var_list`` (TF's ``_create_slots``)."""
    del var_list

  def _step_slot_names(self) -> list[str]:
    """Subclasses name the slots their step reads and writes."""
    return []

  def build(self, var_list: Iterable[Variable]) -> None:
    """Creates ``iterations``, the hyperparameters and the slots, in TF's order.

    TF does this at the first step (``_create_all_weights``); calling it
    first lets a fresh optimizer take a TF weight list with
    :meth:`set_weights`.

    Args:
      var_list: the variables, in the order TF saw them (the model's
        ``trainable_variables``).
    """
    var_list = list(var_list)
    for var in var_list:
      _check_variable(var)
    with self._lock:
      _ = self.iterations
      self._create_hypers()
      self._create_slots(var_list)

  # -- Weights.

  def get_weights(self) -> list[Any]:
    """The optimizer's weights as numpy arrays: iterations (int64) first."""
    with self._lock:
      return [
        np.int64(w.numpy()) if w is self._iterations else w.numpy()
        for w in self._weights
      ]

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
    with self._lock:
      params = self._weights
      weights = list(weights)
      if not params:
        if weights:
          raise keras_weights.length_error(self._name, weights, 0)
        return
      if params[0] is not self._iterations:
        raise ValueError(
          "The optimizer's first weight must be its iterations: call "
          "build(var_list) before adding slots by hand."
        )
      others = params[1:]
      iterations, values = keras_weights.check_weights(
        weights,
        keras_weights.expected_signature([w.value for w in others]),
        owner=self._name,
      )
      self.iterations.assign(iterations)
      for var, value in zip(others, values):
        var.assign(value)

  # -- Steps.

  def _aggregate_gradients(self, grads_and_vars: list) -> list:
    """TF's hook: sums gradients across replicas (one device: unchanged)."""
    if self.gradient_aggregator is None:
      return grads_and_vars
    return _pairs(self.gradient_aggregator(grads_and_vars), "the aggregator")

  def _transform_unaggregated_gradients(self, grads_and_vars: list) -> list:
    """TF's hook before aggregation; unchanged here."""
    return grads_and_vars

  def _transform_gradients(self, grads_and_vars: list) -> list:
    """The ``gradient_transformers``, in order.

    TF clips first; the clip options (which the compiled step applies) and
    the transformers cannot be set together, so the order is TF's.
    """
    for fn in self.gradient_transformers:
      grads_and_vars = _pairs(fn(grads_and_vars), "a gradient transformer")
    return grads_and_vars

  def _prepare(self, var_list: list[Variable], dtypes: frozenset) -> Any:
    """Subclasses evaluate the step's hyperparameters (TF's ``_prepare``).

    Args:
      var_list: the variables of this step.
      dtypes: their dtypes (TF prepares the hyperparameters per dtype).

    Returns:
      ``(traced, static)``: arrays for the compiled step, and what it is
      specialised on (hashable).
    """
    raise NotImplementedError

  def _apply_step(self, values, grads, slots, iterations, prepared):
    """Subclasses apply one step: ``(values, slots, iterations)`` after it.

    ``slots`` holds one list of slot values per name of
    ``_step_slot_names()``, in that order, and so does the result. It may
    run inside a jax trace (``minimize`` compiles it with the gradients).
    """
    raise NotImplementedError

  def apply_gradients(
    self, grads_and_vars, name=None, experimental_aggregate_gradients=True
  ):
    """Apply gradients to variables.

    The gradients are aggregated (``gradient_aggregator``) and transformed
    (``gradient_transformers``), then one compiled step updates every
    variable, its slots and ``iterations``; then each variable's
    ``constraint``, if any, is applied to its new value. Steps from several
    threads run one after the other. Every error below is raised before
    anything changes.

    Args:
      grads_and_vars: (gradient, :class:`Variable`) pairs; a gradient is an
        array (or :class:`~optax_tfrmsprop.IndexedSlices`) of the variable's
        shape and dtype, or ``None`` to skip the variable.
      name: accepted for TF compatibility.
      experimental_aggregate_gradients: call ``gradient_aggregator`` (TF:
        sum across replicas).

    Returns:
      A :class:`Variable` holding the new iteration count, or ``None`` for an
      empty list (no step is taken).

    Raises:
      TypeError: if ``grads_and_vars`` is malformed.
      ValueError: if no variable has a gradient, or a gradient does not fit
        its variable (an out-of-range ``IndexedSlices`` index included).
      RuntimeError: for a sparse gradient of a variable with a constraint.
    """
    del name
    with self._lock:
      pairs = _filter_empty_gradients(grads_and_vars)
      if not pairs:
        _ = self.iterations
        self._create_hypers()
        return None
      if experimental_aggregate_gradients:
        pairs = self._aggregate_gradients(
          self._transform_unaggregated_gradients(pairs)
        )
      pairs = self._transform_gradients(pairs)
      grads, variables, values, key = _check_gradients(pairs)
      return self._step(
        variables,
        key,
        lambda slots, iterations, prepared: self._apply_step(
          values, grads, slots, iterations, prepared
        ),
      )

  def _step(
    self, variables: list[Variable], key: tuple[int, ...], update: Callable
  ) -> Variable:
    """Creates the weights if new, updates, writes the results back.

    Args:
      variables: the variables of the step, without repeats.
      key: their unique ids.
      update: ``update(slots, iterations, prepared) -> (values, slots,
        iterations)``: the step (``_apply_step`` or minimize's fused one).

    Returns:
      A Variable holding the new iteration count.
    """
    plan = self._plans.get(key)
    if plan is None:
      _check_unique(variables, "grads_and_vars", "sum its gradients into one")
      plan = self._plan(variables)  # Creates the weights, as TF does here.
    iterations = self.iterations
    # Calls callables: may raise.
    prepared = self._prepare(variables, plan.dtypes)
    # Not donated: the user may still hold a Variable's array.
    with cpu_kernel.undonated_by_design():
      values, slots, count = update(
        [[s._value for s in vs] for vs in plan.slots],
        iterations._value,
        prepared,
      )
    for var, value in zip(variables, values):
      var._value = value
    for slot_vars, new in zip(plan.slots, slots):
      for slot, value in zip(slot_vars, new):
        slot._value = value
    for var in variables:
      if var.constraint is not None:
        _apply_constraint(var)
    iterations._value = count
    return Variable._wrap(count, f"{self._name}/iter")

  def _plan(self, variables: list[Variable]) -> "_Plan":
    """Creates the weights of ``variables``; returns their slots and dtypes."""
    self.build(variables)
    plan = _Plan(
      slots=[
        [self._slots[v._unique_id][n] for v in variables]
        for n in self._step_slot_names()
      ],
      dtypes=frozenset(np.dtype(v.dtype) for v in variables),
    )
    if len(self._plans) >= _MAX_PLANS:
      self._plans.clear()
    self._plans[tuple(v._unique_id for v in variables)] = plan
    return plan

  def minimize(
    self,
    loss: Callable[[], Any],
    var_list,
    grad_loss=None,
    name=None,
    tape=None,
  ):
    """Minimize ``loss`` by updating ``var_list``.

    Computes the gradients with jax and calls :meth:`apply_gradients`. The
    gradient function is traced and compiled at the first call with a loss
    and variable set, and reused: see ``docs/keras_api.md`` for what the loss
    may read and what makes it trace again.

    Args:
      loss: a zero-argument callable returning the value to minimize; it
        reads the variables (``v.value`` or operators on ``v``).
      var_list: list or tuple of :class:`Variable`, or a callable returning
        one (called before the loss: the variables must exist).
      grad_loss: optional cotangent of ``loss`` (default ones).
      name: accepted for TF compatibility.
      tape: not supported (jax has no tape): a ``ValueError``.

    Returns:
      A :class:`Variable` with the new iteration count.

    Raises:
      ValueError: if ``loss`` is not callable, a ``tape`` is given,
        ``var_list`` names a Variable twice or ``grad_loss`` does not
        broadcast to the loss' shape (before anything changes).
      TypeError: if ``var_list`` holds something other than Variables.
    """
    if tape is not None or not callable(loss):
      raise ValueError(
        "minimize needs `loss` as a zero-argument callable (jax has no "
        "GradientTape); with gradients computed elsewhere, call "
        f"apply_gradients. Received: loss={loss!r}, tape={tape!r}."
      )
    with self._lock:
      var_list = _variable_list(var_list)
      _check_unique(var_list, "var_list", "list it once")
      if not var_list:  # TF applies nothing and counts no step.
        return self.apply_gradients([], name=name)
      if self.gradient_aggregator is None and not self.gradient_transformers:
        iterations = self._gradient_cache.run(
          loss,
          var_list,
          grad_loss,
          functools.partial(self._fused_minimize, var_list),
        )
        if iterations is not None:
          return iterations
      grads_and_vars = self._compute_gradients(loss, var_list, grad_loss)
      return self.apply_gradients(grads_and_vars, name=name)

  def _fused_minimize(self, var_list, entry, leaves, grad_loss):
    """The gradients and the step in one compiled call, when it is the same.

    That is when every Variable of ``var_list`` gets a gradient (no TF
    warning to give, nothing to skip) and no aggregator or transformer runs
    Python between the two. The step is ``_apply_step`` traced inside.

    Returns:
      The new iteration count, or ``None`` where :meth:`apply_gradients`
      must run instead.
    """
    if entry.eager or not all(entry.used):
      return None
    if entry.fused is None:

      def fused(inputs, slots, iterations, traced, static):
        grads = entry.function(*inputs)
        return self._apply_step(
          inputs[0], grads, slots, iterations, (traced, static)
        )

      entry.fused = jax.jit(fused, static_argnames="static")
    inputs = entry.inputs(var_list, leaves, grad_loss)
    key = tuple(v._unique_id for v in var_list)
    return self._step(
      var_list,
      key,
      lambda slots, iterations, prepared: entry.fused(
        inputs, slots, iterations, prepared[0], static=prepared[1]
      ),
    )

  def _compute_gradients(self, loss, var_list, grad_loss=None):
    """``(gradient, variable)`` pairs of ``loss``; ``None`` where TF's is."""
    var_list = _variable_list(var_list)
    grads = self._gradient_cache.gradients(loss, var_list, grad_loss)
    return list(zip(grads, var_list))

  def get_gradients(self, loss: Callable[[], Any], params):
    """Gradients of ``loss`` with respect to ``params``.

    Args:
      loss: a zero-argument callable reading the variables.
      params: list of :class:`Variable`.

    Returns:
      List of gradient arrays (not clipped: the step clips).

    Raises:
      ValueError: if a variable does not influence the loss (TF's ``None``
        gradient).
    """
    pairs = self._compute_gradients(loss, params)
    for grad, param in pairs:
      if grad is None:
        raise ValueError(
          f"Variable {param} has `None` for gradient. Please make sure that "
          "all of your ops have a gradient defined (i.e. are "
          "differentiable). Common ops without gradient: K.argmax, "
          "K.round, K.eval."
        )
    return [g for g, _ in pairs]

  def get_updates(self, loss: Callable[[], Any], params):
    """Computes the gradients of ``loss`` and applies them; a one-item list.

    Args:
      loss: a zero-argument callable reading the variables.
      params: list of :class:`Variable`.

    Returns:
      ``[apply_gradients(...)]``.
    """
    params = list(params)
    grads = self.get_gradients(loss, params)
    return [self.apply_gradients(list(zip(grads, params)))]

  # -- Config.

  def get_config(self) -> dict[str, Any]:
    """``name`` and the clip options that are set (subclasses add theirs)."""
    config = {"name": self._name}
    for key in _CLIP_OPTIONS:
      if self._clip[key] is not None:
        config[key] = self._clip[key]
    return config

  def _serialize_hyperparameter(self, name: str) -> Any:
    """A hyperparameter's config value: TF's, as a JSON-safe number."""
    value = self._hyper[name]
    if isinstance(value, schedules.LearningRateSchedule):
      return schedules.serialize(value)
    if callable(value):
      value = value()
    if isinstance(value, Variable):
      value = value.value
    return _jsonable(value)

  @classmethod
  def from_config(
    cls,
    config,
    custom_objects=None,
    *,
    evaluation: schedules.Evaluation = "graph",
  ):
    """Creates an optimizer from a config, e.g. a TF optimizer's config.

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
        config["learning_rate"],
        custom_objects=custom_objects,
        evaluation=evaluation,
      )
    return cls(**config)


class _Plan(NamedTuple):
  """What ``apply_gradients`` keeps per variable set."""

  slots: list[list[Variable]]  # Per name of ``_step_slot_names()``.
  dtypes: frozenset


def _is_negative(value) -> bool:
  if isinstance(value, Variable):
    value = value.value
  try:
    return bool(np.any(np.asarray(value) < 0))
  except TypeError:
    raise TypeError(f"Expected a number, received: {value!r}") from None


def _new_cache() -> loss_gradients.GradientCache:
  return loss_gradients.GradientCache()


def _variable_list(var_list) -> list[Variable]:
  """``var_list`` (or what it returns, if callable) as a checked list."""
  if callable(var_list):
    var_list = var_list()
  var_list = list(var_list)
  for var in var_list:
    _check_variable(var)
  return var_list


def _check_variable(var) -> None:
  if not isinstance(var, Variable):
    raise TypeError(
      f"Expected an optax_tfrmsprop.Variable, got {type(var).__name__}: "
      f"{var!r}."
    )


def _initial_value(initializer, shape, dtype):
  if isinstance(initializer, str):
    fills = {"zeros": jnp.zeros, "ones": jnp.ones}
    if initializer not in fills:
      raise ValueError(
        f"Unknown initializer {initializer!r}; use 'zeros', 'ones', a "
        "value, or a callable (shape, dtype) -> value."
      )
    return fills[initializer](shape, dtype)
  if callable(initializer):
    return initializer(shape=shape, dtype=dtype)
  return jnp.asarray(initializer, dtype)


def _pairs(grads_and_vars, what: str) -> list:
  """A transformation's result as a list of (gradient, Variable) pairs."""
  pairs = list(grads_and_vars)
  for pair in pairs:
    if (
      not isinstance(pair, (tuple, list))
      or len(pair) != 2
      or not isinstance(pair[1], Variable)
    ):
      raise TypeError(
        f"{what} must return (gradient, Variable) pairs, got {pair!r}."
      )
  return [tuple(p) for p in pairs]


def _filter_empty_gradients(grads_and_vars) -> list[tuple[Any, Variable]]:
  """Validates the pairs and drops ``None`` gradients, as TF does."""
  try:
    pairs = list(grads_and_vars)
  except TypeError:
    raise TypeError(
      "grads_and_vars must be an iterable of (gradient, variable) pairs, "
      f"got {grads_and_vars!r}."
    ) from None
  kept = []
  for i, item in enumerate(pairs):
    pair = item
    if type(pair) is not tuple or len(pair) != 2:
      if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise TypeError(
          "grads_and_vars must be (gradient, variable) pairs; item "
          f"{i} is {pair!r}."
        )
      pair = tuple(pair)
    if not isinstance(pair[1], Variable):
      raise TypeError(
        f"grads_and_vars item {i}: the second element must be an "
        f"optax_tfrmsprop.Variable, got {type(pair[1]).__name__}."
      )
    if pair[0] is not None:
      kept.append(pair)
  if not pairs or len(kept) == len(pairs):
    return kept
  if not kept:
    raise ValueError(
      "No gradients provided for any variable: "
      f"({[v.name for _, v in pairs]},). Provided `grads_and_vars` is "
      f"{tuple(pairs)}."
    )
  warnings.warn(
    "Gradients do not exist for variables "
    f"{[v.name for g, v in pairs if g is None]} when minimizing the loss. "
    "If you're using `model.compile()`, did you forget to provide a "
    "`loss` argument?",
    UserWarning,
    stacklevel=4,
  )
  return kept


def _check_unique(variables: list[Variable], where: str, fix: str) -> None:
  """Raises a ValueError naming a Variable that ``where`` lists twice.

  TF would update it once per occurrence, each from the other's result; one
  step per Variable is what is reproduced here. ``fix`` says what to do.
  """
  seen = set()
  for v in variables:
    if v._unique_id in seen:
      raise ValueError(f"Variable {v.name} appears twice in {where}; {fix}.")
    seen.add(v._unique_id)


def _check_gradients(pairs) -> tuple[list, list, list, tuple[int, ...]]:
  """Checks every gradient against its variable, in one pass.

  Returns:
    ``(gradients as the step takes them, variables, their values, their
    unique ids)``.

  Raises:
    ValueError: for a gradient that does not fit its variable.
  """
  grads, variables, values, ids = [], [], [], []
  for grad, var in pairs:
    value = var._value
    # A jax array of the value's own type: checked quickly; anything else
    # (NumPy, Python numbers, IndexedSlices, errors) the slow way.
    common = (
      type(grad) is type(value)
      and grad.shape == value.shape
      and grad.dtype == value.dtype
    )
    grads.append(grad if common else _check_gradient(grad, var))
    variables.append(var)
    values.append(value)
    ids.append(var._unique_id)
  return grads, variables, values, tuple(ids)


def _check_gradient(g, var: Variable):
  """The gradient as the step takes it; raises if it does not fit ``var``."""
  value = var._value
  if isinstance(g, Variable):
    g = g.value
  if isinstance(g, sparse.IndexedSlices):
    if var.constraint is not None:
      raise RuntimeError(
        "Cannot use a constraint function on a sparse variable. Received: "
        f"grad={g}, var.constraint={var.constraint}."
      )
    # Shapes, dtypes and (concrete) indices: TF's InvalidArgumentError for
    # an index out of range, before anything changes.
    sparse.check_sparse_grad(f"the gradient of {var.name}", g, var._value)
    return g
  if not isinstance(g, (jax.Array, np.ndarray, np.generic)):
    g = jnp.asarray(g, var.dtype)  # Python numbers and lists, as TF's.
  # The array's own dtype: a float64 numpy gradient is an error for a float32
  # variable (as in TF), not something to truncate.
  if g.shape != value.shape or g.dtype != value.dtype:
    raise ValueError(
      f"The gradient of variable {var.name} has shape {tuple(g.shape)} and "
      f"dtype {np.dtype(g.dtype)}, but the variable has shape "
      f"{var.shape} and dtype {var.dtype}."
    )
  return g


def _apply_constraint(var: Variable) -> None:
  """``var.assign(var.constraint(value))``, as TF after a dense update."""
  value = var._value
  constraint = var.constraint
  assert constraint is not None
  new = jnp.asarray(constraint(value))
  if new.shape != value.shape:
    raise ValueError(
      f"The constraint of {var.name} returned shape {new.shape}; the "
      f"variable has shape {value.shape}."
    )
  var._value = new.astype(value.dtype)


def _jsonable(value: Any) -> Any:
  """Numpy and jax scalars as Python numbers, recursively."""
  if isinstance(value, dict):
    return {k: _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, (jax.Array, np.ndarray, np.generic)):
    return np.asarray(value).item()
  return value
