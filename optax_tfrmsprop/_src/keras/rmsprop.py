"""The Keras-style ``RMSprop``: tf_keras' legacy RMSprop over the core.

As tf_keras' ``rmsprop.py`` does over ``OptimizerV2``, this module only
declares the slots, prepares the hyperparameters and applies one step: the
step is a single jit-compiled call of :func:`~optax_tfrmsprop.rmsprop_apply`,
which holds all the update math. The TF facts (slot names and order, how
hyperparameters are cast, the epsilon rule) come from
``base.SEMANTICS["keras_legacy"]``.
"""

import functools
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from optax_tfrmsprop._src import alias
from optax_tfrmsprop._src import base
from optax_tfrmsprop._src import cpu_kernel
from optax_tfrmsprop._src import numerics
from optax_tfrmsprop._src import transform
from optax_tfrmsprop._src.keras import optimizer_v2
from optax_tfrmsprop._src.keras import schedules
from optax_tfrmsprop._src.keras.variable import Variable

_SEMANTICS = base.SEMANTICS["keras_legacy"]
_16_BIT_FLOATS = frozenset(map(np.dtype, (np.float16, jnp.bfloat16)))


class _StepConfig(NamedTuple):
  """What a compiled step is specialised on (changing it compiles again)."""

  schedule: schedules.LearningRateSchedule | None
  decay: float | None  # None: traced (an array or Variable decay).
  epsilon: float | None  # None: traced.
  clipvalue: float | None
  clipnorm: float | None
  global_clipnorm: float | None
  rounding: str
  backend: str


@functools.partial(jax.jit, static_argnames=("config",))
def _compiled_step(values, grads, slots, count, hypers, *, config):
  """One step of every variable: :func:`rmsprop_apply` on lists.

  Args:
    values: the variables' values.
    grads: their gradients (arrays or IndexedSlices).
    slots: state field (``ms``, ``mom``, ``mg``) to the slots' values.
    count: ``iterations`` (int32).
    hypers: the traced hyperparameters: ``rho``, ``momentum`` and, unless
      static in ``config``, ``learning_rate``, ``epsilon``, ``decay``.
    config: a :class:`_StepConfig`.

  Returns:
    ``(new values, new slots, new count)``.
  """
  state = base.STATE_CLASSES[_SEMANTICS.flavor](
    count=count, ms=slots["ms"], mg=slots.get("mg"), mom=slots.get("mom")
  )
  values, state = transform.rmsprop_apply(
    values,
    grads,
    state,
    learning_rate=(
      hypers["learning_rate"] if config.schedule is None else config.schedule
    ),
    rho=hypers["rho"],
    momentum=hypers["momentum"],
    epsilon=(hypers["epsilon"] if config.epsilon is None else config.epsilon),
    decay=hypers["decay"] if config.decay is None else config.decay,
    clipvalue=config.clipvalue,
    clipnorm=config.clipnorm,
    global_clipnorm=config.global_clipnorm,
    rounding=config.rounding,
    backend=config.backend,
  )
  return values, {field: getattr(state, field) for field in slots}, state.count


class RMSprop(optimizer_v2.OptimizerV2):
  r"""``tf.keras.optimizers.RMSprop`` of TF 2.0 (tf_keras' legacy), on JAX.

  A stateful optimizer of :class:`Variable`\ s with the TF 2.0 API, whose
  step is :func:`~optax_tfrmsprop.rmsprop_apply` (TF's four dense and four
  sparse paths, bit for bit) compiled once. As in TF, the update path is
  fixed at construction: momentum path (epsilon inside the square root) iff
  ``momentum`` is an array, a Variable or callable, or > 0; ``centered`` adds
  the ``mg`` slot.

  Hyperparameters behave as TF's. ``opt.learning_rate`` (``opt.lr``),
  ``opt.rho``, ``opt.momentum`` and ``opt.decay`` given as numbers are
  float32 :class:`Variable`\ s, created at the first step (or the first
  read); ``opt.lr = x`` or ``opt.lr.assign(x)`` changes the value the next
  step uses without compiling again, and ``opt.learning_rate = schedule``
  replaces it. A Variable, an array or a zero-argument callable given for
  ``learning_rate``, ``rho`` or ``momentum`` is read at every step;
  ``learning_rate`` may also be a
  :class:`~optax_tfrmsprop.keras.schedules.LearningRateSchedule`, called with
  ``iterations`` cast to each variable's dtype. ``epsilon`` is a Python float
  (``0`` or ``None`` mean ``1e-7``) converted straight to each variable's
  dtype; ``decay`` (inverse-time decay) is read at construction only, as in
  TF (assigning ``opt.decay`` later changes the Variable, not the steps).

  Args:
    learning_rate: a number, array, Variable, schedule, or zero-argument
      callable.
    rho: discounting factor of the moving averages.
    momentum: plain momentum; a Python number must be in [0, 1].
    epsilon: small constant of the denominator.
    centered: normalise by the estimated variance of the gradient.
    name: prefix of the weight names (``RMSprop/<var>/rms:0``).
    rounding: which TF evaluation the step reproduces bit for bit:
      ``"tf_cpu"`` (TF's CPU kernels, what ``tf.function`` and ``Model.fit``
      run) or ``"tf_xla"`` (``jit_compile=True``). Not a TF argument: it is
      keyword-only and not in :meth:`get_config`.
    backend: how the CPU computes ``"tf_cpu"``: ``"auto"``, ``"ffi"`` (the
      C++ kernel) or ``"xla"``; the same bits. Keyword-only, not in the
      config.
    **kwargs: tf_keras' ``lr`` (deprecated alias of ``learning_rate``),
      ``decay``, ``clipnorm``, ``clipvalue``, ``global_clipnorm``,
      ``gradient_aggregator`` and ``gradient_transformers`` (see
      :class:`OptimizerV2`).

  Example:
    >>> opt = RMSprop(learning_rate=0.1)
    >>> var = Variable(10.0)
    >>> loss = lambda: (var ** 2) / 2.0
    >>> print(opt.minimize(loss, [var]).numpy())
    1
    >>> print(var.numpy())
    9.683772
    >>> opt.lr.assign(0.0)  # doctest: +ELLIPSIS
    <Variable 'RMSprop/learning_rate:0' shape=() dtype=float32, numpy=...>
    >>> _ = opt.minimize(loss, [var])
    >>> print(var.numpy(), opt.iterations.numpy())
    9.683772 2
  """

  def __init__(
    self,
    learning_rate=0.001,
    rho=0.9,
    momentum=0.0,
    epsilon=1e-07,
    centered=False,
    name="RMSprop",
    *,
    rounding: base.Rounding = "tf_cpu",
    backend: cpu_kernel.Backend = "auto",
    **kwargs,
  ):
    super().__init__(name, **kwargs)
    numerics.rounder(rounding)  # Validates the names.
    cpu_kernel.check_backend(backend)
    self._rounding = rounding
    self._backend = backend
    if (
      isinstance(momentum, (int, float))
      and not isinstance(momentum, bool)
      and not 0 <= momentum <= 1
    ):
      raise ValueError(
        "`momentum` must be between [0, 1]. Received: "
        f"momentum={momentum} (of type {type(momentum)})."
      )
    if _SEMANTICS.zero_epsilon_is_default:
      epsilon = epsilon or numerics.KERAS_EPSILON
    self._check_hyperparameters(
      learning_rate=kwargs.get("lr", learning_rate),
      rho=rho,
      momentum=momentum,
      epsilon=epsilon,
    )
    self._set_hyper("learning_rate", kwargs.get("lr", learning_rate))
    self._set_hyper("decay", self._initial_decay)
    self._set_hyper("rho", rho)
    self._momentum = bool(alias.uses_momentum(momentum))
    self._set_hyper("momentum", momentum)
    self._epsilon = epsilon
    self.centered = centered

  @property
  def epsilon(self) -> Any:
    """Python float (or callable), converted to each variable's dtype."""
    return self._epsilon

  @epsilon.setter
  def epsilon(self, value):
    if not callable(value) and not isinstance(value, Variable) and not value:
      # TF substitutes 1e-7 for a falsy epsilon only at construction; the
      # core always does, so a later 0 is refused rather than changed.
      raise ValueError(
        "epsilon=0 after construction: TF then computes with 0, which this "
        "class does not reproduce; construct the optimizer with the "
        f"epsilon you want. Received: epsilon={value!r}."
      )
    self._check_hyperparameters(epsilon=value)
    self._epsilon = value

  def _check_hyperparameters(self, **changes) -> None:
    """The functional core's validation, on what is known now.

    Variables and arrays are checked at their current value; callables and
    schedules are read at every step and, as in TF, not checked.
    """
    hyper = self.__dict__.get("_hyper", {})
    current = dict(
      learning_rate=hyper.get("learning_rate", 0.0),
      rho=hyper.get("rho", 0.0),
      momentum=hyper.get("momentum", 0.0),
      epsilon=self.__dict__.get("_epsilon", numerics.KERAS_EPSILON),
      decay=self._initial_decay,
      **self._clip,
    )
    current.update(changes)
    for key, value in current.items():
      if isinstance(value, Variable):
        current[key] = value.value
      elif callable(value) and key != "learning_rate":
        current[key] = 0.0  # Read at every step; a valid stand-in.
    alias.validate_hyperparams(**current)

  # -- Slots: TF's names and creation order, from the flavor table.

  def _slot_fields(self) -> list[tuple[str, str]]:
    """``(state field, TF slot name)`` of the slots this configuration uses."""
    used = {
      "ms": True,
      "mg": bool(self.centered),
      "mom": self._momentum or _SEMANTICS.always_momentum,
    }
    return [(field, name) for field, name in _SEMANTICS.slots if used[field]]

  def _create_slots(self, var_list):
    for _, slot_name in self._slot_fields():
      for var in var_list:
        self.add_slot(var, slot_name)

  def _step_slot_names(self) -> list[str]:
    return [name for _, name in self._slot_fields()]

  # -- The step.

  def _prepare(self, var_list, dtypes):
    """The step's traced hyperparameters and its static configuration.

    Python numbers are float32 (TF's hyper variables, and the float32 tensor
    it makes of a callable's number); arrays and Variables keep their dtype
    and reach each variable's dtype by one cast, as in TF. A callable is
    called now, at every step.
    """
    del var_list
    if self._derived is None:
      self._derived = self._static_config()
    config, readers, epsilon, _ = self._derived
    hypers = {name: read() for name, read in readers}
    x64 = jax.dtypes.canonicalize_dtype(np.float64) == np.float64
    if type(epsilon) is not float:
      if callable(epsilon):
        epsilon = epsilon()
      if isinstance(epsilon, Variable):
        epsilon = epsilon.value
      if isinstance(epsilon, jax.Array):
        hypers["epsilon"] = epsilon  # A tensor: cast to each dtype, as TF.
        return hypers, config
    if not x64 and not dtypes.isdisjoint(_16_BIT_FLOATS):
      # TF converts a Python float straight to a 16-bit dtype; through the
      # widest float first it could round twice.
      config = config._replace(epsilon=float(epsilon))
    else:
      hypers["epsilon"] = _widest_float(float(epsilon), x64)
    return hypers, config

  def _static_config(self):
    """What changes only by attribute assignments, derived once.

    Returns:
      ``(config, readers, epsilon, fields)``: the :class:`_StepConfig`
      (epsilon not yet decided), ``(name, read)`` pairs whose ``read()``
      gives the traced hyperparameter, the epsilon attribute, and the state
      fields of the step's slots.
    """
    learning_rate = self._hyper["learning_rate"]
    schedule = (
      learning_rate
      if isinstance(learning_rate, schedules.LearningRateSchedule)
      else None
    )
    names = ["rho", "momentum"] + (
      ["learning_rate"] if schedule is None else []
    )
    readers = [(name, _reader(self._hyper[name])) for name in names]
    decay = self._initial_decay
    static_decay = None
    if isinstance(decay, numbers.Real):
      static_decay = float(decay) if float(decay) > 0 else 0.0
    else:
      readers.append(("decay", _reader(decay)))
    config = _StepConfig(
      schedule=schedule,
      decay=static_decay,
      epsilon=None,
      clipvalue=_static_float(self.clipvalue),
      clipnorm=_static_float(self.clipnorm),
      global_clipnorm=_static_float(self.global_clipnorm),
      rounding=self._rounding,
      backend=self._backend,
    )
    fields = tuple(field for field, _ in self._slot_fields())
    return config, tuple(readers), self._epsilon, fields

  def _apply_step(self, values, grads, slots, iterations, prepared):
    hypers, config = prepared
    fields = self._derived[3]
    new_values, new_slots, count = _compiled_step(
      values, grads, dict(zip(fields, slots)), iterations, hypers, config=config
    )
    return new_values, [new_slots[f] for f in fields], count

  # -- Config.

  def get_config(self) -> dict[str, Any]:
    """TF's config keys and values, always JSON-serialisable.

    Returns:
      ``name``; ``clipnorm``, ``clipvalue``, ``global_clipnorm`` when set;
      then ``learning_rate`` (a serialised schedule, or the value of a
      callable or Variable), ``decay``, ``rho``, ``momentum``, ``epsilon``,
      ``centered``. After the hyper variables exist, TF's values are
      ``np.float32``; here they are the same numbers as Python floats.
      ``rounding`` and ``backend`` are not TF's and not included.
    """
    config = super().get_config()
    epsilon = self._epsilon() if callable(self._epsilon) else self._epsilon
    config.update(
      learning_rate=self._serialize_hyperparameter("learning_rate"),
      decay=optimizer_v2._jsonable(self._initial_decay),
      rho=self._serialize_hyperparameter("rho"),
      momentum=self._serialize_hyperparameter("momentum"),
      epsilon=optimizer_v2._jsonable(
        epsilon.value if isinstance(epsilon, Variable) else epsilon
      ),
      centered=self.centered,
    )
    return optimizer_v2._jsonable(config)


def _reader(value) -> Any:
  """A function that reads a hyperparameter as the compiled step takes it."""
  if isinstance(value, Variable):
    return lambda: value._value
  if callable(value):
    return lambda: _traced(value())
  traced = _traced(value)
  return lambda: traced


def _traced(value) -> Any:
  """A hyperparameter as the compiled step takes it (a traced argument).

  Variables and arrays keep their dtype (one cast to each variable's dtype
  follows, as TF's ``tf.cast``); a number becomes TF's float32 tensor.
  """
  if type(value) is Variable:
    return value._value
  if isinstance(value, Variable):
    return value._value
  if isinstance(value, jax.Array) or (
    isinstance(value, np.ndarray) and value.dtype.kind == "f"
  ):
    return value
  if isinstance(value, bool) or not isinstance(
    value, (numbers.Real, np.generic, np.ndarray)
  ):
    raise TypeError(f"Expected a number or an array, got {value!r}.")
  return numerics.as_dtype(value, jnp.float32, through_float32=True)


@functools.lru_cache(maxsize=16)
def _widest_float(value: float, x64: bool) -> jax.Array:
  """A Python epsilon in the widest float, on the device (cached)."""
  return jax.device_put(np.asarray(value, np.float64 if x64 else np.float32))


def _static_float(value) -> float | None:
  if value is None:
    return None
  if isinstance(value, Variable):
    value = value.value
  return float(value)
