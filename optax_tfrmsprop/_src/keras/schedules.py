"""Keras' learning-rate schedules, in JAX, with Keras' values bit for bit.

Ports of ``tf_keras.optimizers.schedules`` (the classes a TF ``RMSprop``
config can name). Each schedule computes in the dtype ``D`` of its
``initial_learning_rate`` (float32 for Python numbers), receives the step the
optimizer gives it (TF's ``iterations`` cast to the variable dtype) and casts
it to ``D``. Constants reach ``D`` the way TF converts them: arguments that TF
passes through ``tf.cast`` (``decay_rate``, ``power``, ...) become float32
tensors first, while Python literals in the formulas go straight to ``D``.
Every operation rounds to ``D`` in TF's order; :func:`numerics.rounded` stops
XLA from fusing a product into the sum that consumes it.

Schedules are JAX-traceable callables ``step -> learning rate``, so they also
work as optax schedules (e.g. ``rmsprop(learning_rate=ExponentialDecay(...))``).
They serialise to, and deserialise from, Keras' config dicts.
"""

import math
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from optax_tfrmsprop._src import numerics

_MODULE = "keras.optimizers.schedules"


def _tensor(value: Any) -> jax.Array:
  """``tf.convert_to_tensor(value)``: Python floats to float32, ints to int32."""
  if isinstance(value, (jax.Array, np.ndarray, np.generic)):
    return jnp.asarray(value)
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise TypeError(f"Expected a number or an array, got {value!r}.")
  return jnp.asarray(value, jnp.int32 if isinstance(value, int) else jnp.float32)


def _cast(value: Any, dtype) -> jax.Array:
  """``tf.cast(value, dtype)``, which converts Python numbers to tensors first."""
  return _tensor(value).astype(dtype)


def _divide(x: jax.Array, divisor: jax.Array) -> jax.Array:
  """``x / divisor``, rounded once, as TF divides.

  XLA replaces a division by a compile-time constant with a multiplication by
  its (rounded) reciprocal; the optimisation barrier hides the constant.
  """
  return x / jax.lax.optimization_barrier(divisor)


def _literal(value: float, dtype) -> jax.Array:
  """A Python literal in a TF formula: converted straight to ``dtype``."""
  return jnp.asarray(value, dtype)


class LearningRateSchedule:
  """Base class of the schedules; subclass it for a custom schedule.

  A subclass implements ``__call__(step)`` with JAX operations (it runs inside
  the jit-compiled optimizer step) and ``get_config()``; ``from_config`` calls
  the constructor with the config's entries.

  Example:
    >>> import jax.numpy as jnp
    >>> class Halving(LearningRateSchedule):
    ...   def __init__(self, initial_learning_rate):
    ...     self.initial_learning_rate = initial_learning_rate
    ...   def __call__(self, step):
    ...     return self.initial_learning_rate * 0.5 ** jnp.floor(step / 10)
    ...   def get_config(self):
    ...     return {"initial_learning_rate": self.initial_learning_rate}
    >>> schedule = Halving.from_config({"initial_learning_rate": 0.1})
    >>> print(schedule(jnp.float32(25)))
    0.025
  """

  def __call__(self, step: jax.Array) -> jax.Array:
    raise NotImplementedError(
        f"Learning rate schedule '{type(self).__name__}' must override "
        "`__call__(self, step)`."
    )

  def get_config(self) -> dict[str, Any]:
    raise NotImplementedError(
        f"Learning rate schedule '{type(self).__name__}' must override "
        "`get_config()` in order to be serializable."
    )

  @classmethod
  def from_config(cls, config: Mapping[str, Any]) -> "LearningRateSchedule":
    return cls(**config)

  def _dtype(self):
    return _tensor(self.get_config()["initial_learning_rate"]).dtype


class ExponentialDecay(LearningRateSchedule):
  r"""``lr0 * decay_rate ** (step / decay_steps)`` (floored if ``staircase``).

  Args:
    initial_learning_rate: the learning rate at step 0; its dtype (float32
      for a Python number) is the dtype of the schedule's arithmetic.
    decay_steps: the number of steps over which the rate is multiplied by
      ``decay_rate``.
    decay_rate: the factor per ``decay_steps``.
    staircase: floor ``step / decay_steps``, so the rate changes in steps.
    name: kept in the config, as Keras keeps it.

  Example:
    >>> print(ExponentialDecay(0.1, 10, 0.5)(10.0))
    0.05
  """

  def __init__(self, initial_learning_rate, decay_steps, decay_rate,
               staircase=False, name=None):
    self.initial_learning_rate = initial_learning_rate
    self.decay_steps = decay_steps
    self.decay_rate = decay_rate
    self.staircase = staircase
    self.name = name

  def __call__(self, step):
    lr0 = _tensor(self.initial_learning_rate)
    dtype = lr0.dtype
    p = _divide(jnp.asarray(step).astype(dtype), _cast(self.decay_steps, dtype))
    if self.staircase:
      p = jnp.floor(p)
    return lr0 * jnp.power(_cast(self.decay_rate, dtype), p)

  def get_config(self):
    return dict(initial_learning_rate=self.initial_learning_rate,
                decay_steps=self.decay_steps, decay_rate=self.decay_rate,
                staircase=self.staircase, name=self.name)


class PiecewiseConstantDecay(LearningRateSchedule):
  """``values[i]`` for ``boundaries[i-1] < step <= boundaries[i]``.

  The boundaries are cast to the step's dtype; the result has the dtype of
  ``values`` (int32 for Python ints).

  Args:
    boundaries: increasing step boundaries.
    values: the rates, one more than ``boundaries``.
    name: kept in the config, as Keras keeps it.

  Raises:
    ValueError: if ``values`` is not one longer than ``boundaries``.

  Example:
    >>> print(PiecewiseConstantDecay([10, 20], [1.0, 0.5, 0.1])(15.0))
    0.5
  """

  def __init__(self, boundaries, values, name=None):
    if len(boundaries) != len(values) - 1:
      raise ValueError(
          "The length of boundaries should be 1 less than the length of "
          f"values. Received: boundaries={boundaries} of length "
          f"{len(boundaries)}, and values={values} of length {len(values)}."
      )
    self.boundaries = boundaries
    self.values = values
    self.name = name

  def __call__(self, step):
    x = jnp.asarray(step)
    bounds = [_tensor(b).astype(x.dtype) for b in self.boundaries]
    values = [_tensor(v) for v in self.values]
    conditions = [x <= bounds[0], x > bounds[-1]]
    choices = [values[0], values[-1]]
    for low, high, v in zip(bounds[:-1], bounds[1:], values[1:-1]):
      conditions.append((x > low) & (x <= high))
      choices.append(v)
    return jnp.select(conditions, choices, values[0])

  def _dtype(self):
    return _tensor(self.values[0]).dtype

  def get_config(self):
    return dict(boundaries=self.boundaries, values=self.values, name=self.name)


class PolynomialDecay(LearningRateSchedule):
  """``(lr0 - end) * (1 - s / ds) ** power + end``, optionally cycling.

  Args:
    initial_learning_rate: the learning rate at step 0; its dtype (float32
      for a Python number) is the dtype of the schedule's arithmetic.
    decay_steps: ``ds``, the steps from ``lr0`` to ``end``.
    end_learning_rate: ``end``, the rate reached after ``decay_steps``.
    power: the polynomial's power (1: linear decay).
    cycle: instead of holding ``end`` after ``decay_steps``, decay again
      over the next multiple of ``decay_steps``.
    name: kept in the config, as Keras keeps it.

  Example:
    >>> print(PolynomialDecay(0.1, 10, 0.01, cycle=True)(15.0))
    0.0325
  """

  def __init__(self, initial_learning_rate, decay_steps,
               end_learning_rate=0.0001, power=1.0, cycle=False, name=None):
    self.initial_learning_rate = initial_learning_rate
    self.decay_steps = decay_steps
    self.end_learning_rate = end_learning_rate
    self.power = power
    self.cycle = cycle
    self.name = name

  def __call__(self, step):
    lr0 = _tensor(self.initial_learning_rate)
    dtype = lr0.dtype
    end = _cast(self.end_learning_rate, dtype)
    power = _cast(self.power, dtype)
    s = jnp.asarray(step).astype(dtype)
    ds = _cast(self.decay_steps, dtype)
    if self.cycle:
      # The first multiple of decay_steps above the step; 1 at step 0.
      multiplier = jnp.where(
          s == 0, _literal(1.0, dtype),
          jnp.ceil(_divide(s, _literal(self.decay_steps, dtype))))
      ds = ds * multiplier
    else:
      s = jnp.minimum(s, ds)
    p = _divide(s, ds)
    decayed = numerics.rounded((lr0 - end) * jnp.power(1 - p, power))
    return decayed + end

  def get_config(self):
    return dict(initial_learning_rate=self.initial_learning_rate,
                decay_steps=self.decay_steps,
                end_learning_rate=self.end_learning_rate, power=self.power,
                cycle=self.cycle, name=self.name)


class InverseTimeDecay(LearningRateSchedule):
  """``lr0 / (1 + decay_rate * step / decay_steps)`` (floored if staircase).

  Args:
    initial_learning_rate: the learning rate at step 0; its dtype (float32
      for a Python number) is the dtype of the schedule's arithmetic.
    decay_steps: the step scale of the decay.
    decay_rate: the rate added to the divisor per ``decay_steps``.
    staircase: floor ``step / decay_steps``, so the rate changes in steps.
    name: kept in the config, as Keras keeps it.

  Example:
    >>> print(InverseTimeDecay(0.1, 1, 0.5)(2.0))
    0.05
  """

  def __init__(self, initial_learning_rate, decay_steps, decay_rate,
               staircase=False, name=None):
    self.initial_learning_rate = initial_learning_rate
    self.decay_steps = decay_steps
    self.decay_rate = decay_rate
    self.staircase = staircase
    self.name = name

  def __call__(self, step):
    lr0 = _tensor(self.initial_learning_rate)
    dtype = lr0.dtype
    p = _divide(jnp.asarray(step).astype(dtype), _cast(self.decay_steps, dtype))
    if self.staircase:
      p = jnp.floor(p)
    denom = _cast(1, dtype) + numerics.rounded(
        _cast(self.decay_rate, dtype) * p)
    return _divide(lr0, denom)

  def get_config(self):
    return dict(initial_learning_rate=self.initial_learning_rate,
                decay_steps=self.decay_steps, decay_rate=self.decay_rate,
                staircase=self.staircase, name=self.name)


class CosineDecay(LearningRateSchedule):
  """Cosine decay from ``lr0`` to ``alpha * lr0``, with optional warmup.

  Without warmup: ``lr0 * ((1 - alpha) * 0.5 * (1 + cos(pi * s / ds)) +
  alpha)`` with ``s = min(step, ds)``. With ``warmup_target``, a linear ramp
  from ``lr0`` to the target over ``warmup_steps``, then the cosine decay of
  the target.

  Args:
    initial_learning_rate: the learning rate at step 0; its dtype (float32
      for a Python number) is the dtype of the schedule's arithmetic.
    decay_steps: ``ds``, the steps of the cosine decay.
    alpha: the final rate, as a fraction of the rate the cosine starts
      from (``initial_learning_rate``, or ``warmup_target`` with a warmup).
    name: kept in the config, as Keras keeps it.
    warmup_target: the rate reached at the end of the warmup; ``None``: no
      warmup.
    warmup_steps: the length of the warmup.

  Example:
    >>> print(CosineDecay(0.1, 10)(5.0))
    0.049999997
  """

  def __init__(self, initial_learning_rate, decay_steps, alpha=0.0, name=None,
               warmup_target=None, warmup_steps=0):
    self.initial_learning_rate = initial_learning_rate
    self.decay_steps = decay_steps
    self.alpha = alpha
    self.name = name
    self.warmup_target = warmup_target
    self.warmup_steps = warmup_steps

  def _decay(self, s, ds, decay_from, dtype):
    fraction = _divide(s, ds)
    cosine = _literal(0.5, dtype) * (
        _literal(1.0, dtype) + jnp.cos(_literal(math.pi, dtype) * fraction))
    # ``1 - alpha`` and ``alpha`` are Python numbers in Keras' formula.
    decayed = numerics.rounded(_literal(1 - self.alpha, dtype) * cosine)
    return decay_from * (decayed + _literal(self.alpha, dtype))

  def __call__(self, step):
    lr0 = _tensor(self.initial_learning_rate)
    dtype = lr0.dtype
    ds = _cast(self.decay_steps, dtype)
    s = jnp.asarray(step).astype(dtype)
    if self.warmup_target is None:
      return self._decay(jnp.minimum(s, ds), ds, lr0, dtype)
    target = _cast(self.warmup_target, dtype)
    warmup_steps = _cast(self.warmup_steps, dtype)
    s = jnp.minimum(s, ds + warmup_steps)
    ramp = numerics.rounded((target - lr0) * _divide(s, warmup_steps)) + lr0
    return jnp.where(s < warmup_steps, ramp,
                     self._decay(s - warmup_steps, ds, target, dtype))

  def get_config(self):
    return dict(initial_learning_rate=self.initial_learning_rate,
                decay_steps=self.decay_steps, alpha=self.alpha, name=self.name,
                warmup_target=self.warmup_target,
                warmup_steps=self.warmup_steps)


class CosineDecayRestarts(LearningRateSchedule):
  """SGDR: cosine decay restarted every ``first_decay_steps * t_mul ** i``.

  Args:
    initial_learning_rate: the learning rate at step 0; its dtype (float32
      for a Python number) is the dtype of the schedule's arithmetic.
    first_decay_steps: the length of the first period.
    t_mul: each period is ``t_mul`` times longer than the previous one.
    m_mul: each restart begins at ``m_mul`` times the previous start rate.
    alpha: the minimum rate, as a fraction of ``initial_learning_rate``.
    name: kept in the config, as Keras keeps it.

  Example:
    >>> print(CosineDecayRestarts(0.1, 10)(10.0))
    0.1
  """

  def __init__(self, initial_learning_rate, first_decay_steps, t_mul=2.0,
               m_mul=1.0, alpha=0.0, name=None):
    self.initial_learning_rate = initial_learning_rate
    self.first_decay_steps = first_decay_steps
    self.t_mul = t_mul
    self.m_mul = m_mul
    self.alpha = alpha
    self.name = name

  def __call__(self, step):
    lr0 = _tensor(self.initial_learning_rate)
    dtype = lr0.dtype
    one = _literal(1.0, dtype)
    alpha = _cast(self.alpha, dtype)
    t_mul = _cast(self.t_mul, dtype)
    m_mul = _cast(self.m_mul, dtype)
    fraction = _divide(jnp.asarray(step).astype(dtype),
                       _cast(self.first_decay_steps, dtype))
    # t_mul == 1: periods of equal length.
    i_equal = jnp.floor(fraction)
    fraction_equal = fraction - i_equal
    # Otherwise the periods grow geometrically.
    i_geometric = jnp.floor(_divide(
        jnp.log(one - numerics.rounded(fraction * (one - t_mul))),
        jnp.log(t_mul)))
    t_pow = jnp.power(t_mul, i_geometric)
    sum_r = _divide(one - t_pow, one - t_mul)
    fraction_geometric = _divide(fraction - sum_r, t_pow)
    equal = t_mul == one
    i_restart = jnp.where(equal, i_equal, i_geometric)
    fraction = jnp.where(equal, fraction_equal, fraction_geometric)
    m_fac = jnp.power(m_mul, i_restart)
    cosine = (_literal(0.5, dtype) * m_fac) * (
        one + jnp.cos(_literal(math.pi, dtype) * fraction))
    decayed = numerics.rounded((one - alpha) * cosine) + alpha
    return lr0 * decayed

  def get_config(self):
    return dict(initial_learning_rate=self.initial_learning_rate,
                first_decay_steps=self.first_decay_steps, t_mul=self.t_mul,
                m_mul=self.m_mul, alpha=self.alpha, name=self.name)


KERAS_SCHEDULES: dict[str, type[LearningRateSchedule]] = {
    cls.__name__: cls
    for cls in (ExponentialDecay, PiecewiseConstantDecay, PolynomialDecay,
                InverseTimeDecay, CosineDecay, CosineDecayRestarts)
}

_SERIALIZED_KEYS = frozenset({"module", "class_name", "config",
                              "registered_name"})


def serialize(schedule: LearningRateSchedule) -> dict[str, Any]:
  """A schedule as Keras serialises it (JSON-safe when its config is).

  Args:
    schedule: a :class:`LearningRateSchedule`.

  Returns:
    ``{'module', 'class_name', 'config', 'registered_name'}``: Keras' module
    for the built-in schedules; ``module=None`` and the class name as
    ``registered_name`` for custom ones.

  Example:
    >>> serialize(ExponentialDecay(0.1, 10, 0.5))["class_name"]
    'ExponentialDecay'
  """
  name = type(schedule).__name__
  builtin = KERAS_SCHEDULES.get(name) is type(schedule)
  return {
      "module": _MODULE if builtin else None,
      "class_name": name,
      "config": schedule.get_config(),
      "registered_name": None if builtin else name,
  }


def deserialize(
    config: Mapping[str, Any],
    custom_objects: Optional[Mapping[str, Any]] = None,
) -> LearningRateSchedule:
  """Builds a schedule from Keras' serialised form; never evaluates code.

  Accepts the current format (``module``, ``class_name``, ``config``,
  ``registered_name``) and the legacy one (``class_name``, ``config``). The
  class is looked up by name among the Keras schedules above, then in
  ``custom_objects``.

  Args:
    config: the serialised schedule.
    custom_objects: maps class names (or registered names) to user classes;
      each needs a ``from_config`` classmethod.

  Returns:
    The schedule.

  Raises:
    TypeError: for an unknown class name.
    ValueError: for a malformed dict or unknown config keys.

  Example:
    >>> deserialize({"class_name": "InverseTimeDecay", "config": {
    ...     "initial_learning_rate": 0.1, "decay_steps": 1,
    ...     "decay_rate": 0.5}}).decay_rate
    0.5
  """
  if not isinstance(config, Mapping) or "class_name" not in config:
    raise ValueError(
        "A serialized learning rate schedule must be a dict with "
        f"'class_name' and 'config', got {config!r}.")
  unknown = set(config) - _SERIALIZED_KEYS
  if unknown:
    raise ValueError(
        f"Unknown keys {sorted(unknown)} in the serialized learning rate "
        f"schedule; expected a subset of {sorted(_SERIALIZED_KEYS)}.")
  class_name = config["class_name"]
  custom_objects = dict(custom_objects or {})
  cls = custom_objects.get(class_name) or custom_objects.get(
      config.get("registered_name"))
  if cls is None and config.get("module") in (None, _MODULE):
    cls = KERAS_SCHEDULES.get(class_name)
  if cls is None:
    raise TypeError(
        f"Cannot deserialize object of type `{class_name}`. If "
        f"`{class_name}` is a custom class, pass it in `custom_objects` "
        f"(e.g. custom_objects={{'{class_name}': {class_name}}}).")
  inner = dict(config.get("config") or {})
  try:
    return cls.from_config(inner)
  except TypeError as e:
    raise ValueError(
        f"Invalid config for learning rate schedule `{class_name}`: {e}"
    ) from e
