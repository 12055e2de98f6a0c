"""Keras' learning-rate schedules, in JAX, with Keras' values bit for bit.

Ports of ``tf_keras.optimizers.schedules`` (the classes a TF ``RMSprop``
config can name). Each schedule computes in the dtype ``D`` of its
``initial_learning_rate`` (float32 for Python numbers), receives the step the
optimizer gives it (TF's ``iterations`` cast to the variable dtype) and casts
it to ``D``. Constants reach ``D`` the way TF converts them: arguments that TF
passes through ``tf.cast`` (``decay_rate``, ``power``, ...) become float32
tensors first, while Python literals in the formulas go straight to ``D``.

TF evaluates the same Keras formula two ways, and each schedule reproduces
either one (``evaluation=``):

* ``"graph"`` (the default) is what ``Model.fit`` computes: it runs the
  optimizer in a ``tf.function`` graph, and grappler rewrites the schedule's
  arithmetic before it runs (the step, a variable, is the only input that is
  not a constant):

  - constant folding strength-reduces a division by a constant, ``x / c``,
    to ``x * (1 / c)``, the reciprocal rounded to ``D``;
  - it pushes a constant down a chain of products and folds it into the
    constant found there (``c1 * (x * c2)`` becomes ``x * (c1 * c2)``, the
    product rounded to ``D``; with two non-constant factors the constant
    joins the second factor in name order); not for float16/bfloat16;
  - it drops ``x * 1`` and ``x + 0``, which exposes further chains (an
    ``alpha`` of 0);
  - the arithmetic optimizer turns ``pow(x, c)`` into ``x * x`` (c = 2),
    ``x**2 * x`` (3), ``sqrt`` (0.5), ``1 / sqrt`` (-0.5), ``1 / x`` (-1);
  - a ``tf.cond`` on a constant (``CosineDecayRestarts``' ``t_mul == 1``) is
    resolved, so the remaining branch sees the constants; a ``tf.cond`` on the
    step (``CosineDecay``'s warmup) hides them from both branches.

* ``"eager"`` is what TF computes when the schedule is called eagerly (a
  custom training loop without ``tf.function``): every operation as written.

Every operation rounds to ``D`` in TF's order: :func:`numerics.rounded` stops
XLA from fusing a product into the sum that consumes it, and true divisions
hide their divisor from XLA (which would otherwise multiply by a reciprocal).
Constants that TF's graph folds are folded here in numpy, in ``D``.

Schedules are JAX-traceable callables ``step -> learning rate``, so they also
work as optax schedules (e.g. ``rmsprop(learning_rate=ExponentialDecay(...))``).
They serialise to, and deserialise from, Keras' config dicts; ``evaluation``
is not part of the config.
"""

from collections.abc import Mapping
import math
from typing import Any, cast, Literal

import jax
import jax.numpy as jnp
import numpy as np

from optax_tfrmsprop._src import numerics

_MODULE = "keras.optimizers.schedules"

Evaluation = Literal["graph", "eager"]
EVALUATIONS: tuple[Evaluation, ...] = ("graph", "eager")


def check_evaluation(evaluation: Any) -> Evaluation:
  """Returns ``evaluation`` if it is ``"graph"`` or ``"eager"``, else raises."""
  if evaluation not in EVALUATIONS:
    raise ValueError(
      f"evaluation must be one of {EVALUATIONS}, got evaluation={evaluation!r}."
    )
  return cast(Evaluation, evaluation)


# Eager evaluation: TF's ops one by one.


def _tensor(value: Any) -> jax.Array:
  """``tf.convert_to_tensor``: Python floats to float32, ints to int32."""
  if isinstance(value, (jax.Array, np.ndarray, np.generic)):
    return jnp.asarray(value)
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise TypeError(f"Expected a number or an array, got {value!r}.")
  return jnp.asarray(
    value, jnp.int32 if isinstance(value, int) else jnp.float32
  )


def _cast(value: Any, dtype) -> jax.Array:
  """``tf.cast(value, dtype)``, converting Python numbers to tensors first."""
  return _tensor(value).astype(dtype)


def _divide(x: jax.Array, divisor: jax.Array) -> jax.Array:
  """``x / divisor``, rounded once, as TF divides.

  XLA replaces a division by a compile-time constant with a multiplication by
  its (rounded) reciprocal; the optimisation barrier hides the constant, and
  :func:`numerics.divide` the broadcast that ``vmap`` over the step makes of
  it.
  """
  return numerics.divide(x, jax.lax.optimization_barrier(jnp.asarray(divisor)))


def _quotient(x: jax.Array, divisor: jax.Array) -> jax.Array:
  """A schedule's result ``x / divisor``, kept apart from later divisions.

  The optimizer divides the learning rate by ``1 + decay * step``; XLA would
  merge ``(x / d1) / d2`` into ``x / (d1 * d2)``, which TF does not.
  """
  return numerics.rounded(_divide(x, divisor))


def _literal(value: float, dtype) -> jax.Array:
  """A Python literal in a TF formula: converted straight to ``dtype``."""
  return jnp.asarray(value, dtype)


def _hidden(c: Any, step: jax.Array) -> jax.Array:
  """The constant ``c`` as a run-time value, for ``pow`` and ``log``.

  TF calls the C library's ``pow`` and ``log`` on its constants at run time
  (or folds them with the same kernels). XLA and LLVM would instead see a
  constant operand and specialise or fold the call (LLVM turns ``pow(x, -1)``
  into ``1 / x`` and ``pow(x, 3)`` into products), which rounds differently;
  an optimisation barrier does not survive until LLVM.
  Selecting ``c`` on the step's NaN-ness keeps it opaque; the optimizer's
  step, a cast integer, is never NaN.

  Args:
    c: a constant.
    step: the step.

  Returns:
    ``c``, as an array of its dtype.
  """
  c = jnp.asarray(c)
  step = jnp.asarray(step)
  if not jnp.issubdtype(step.dtype, jnp.floating):
    step = step.astype(jnp.float32)  # An integer step (optax's count).
  return jnp.where(numerics.is_nan(step), jnp.asarray(jnp.nan, c.dtype), c)


# Graph evaluation: the constants grappler folds, folded in numpy.


def _np_tensor(value: Any) -> np.ndarray:
  """``tf.convert_to_tensor`` of a config value, as a numpy constant."""
  if isinstance(value, (jax.Array, np.ndarray, np.generic)):
    return np.asarray(value)
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise TypeError(f"Expected a number or an array, got {value!r}.")
  if isinstance(value, float):
    return np.asarray(value, np.float32)
  return np.asarray(value, np.int32 if -(2**31) <= value < 2**31 else np.int64)


def _np_cast(value: Any, dtype) -> np.ndarray:
  """``tf.cast(value, dtype)`` of a config value, as a numpy constant."""
  return _np_tensor(value).astype(dtype)


def _np_literal(value: Any, dtype) -> np.ndarray:
  """A Python literal in a TF formula, as a numpy constant of ``dtype``."""
  return np.asarray(value, dtype)


def _fold(op, a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """A binary op on two constants, rounded once to their dtype (folding)."""
  with np.errstate(all="ignore"):
    return np.asarray(op(a, b), a.dtype)


def _reciprocal(c: np.ndarray) -> np.ndarray:
  """``1 / c`` in ``c``'s dtype: what ``x / c`` multiplies by in a graph."""
  return _fold(np.divide, np.ones_like(c), c)


def _pushes_down(dtype) -> bool:
  """Whether grappler's ConstantPushDown rewrites products of ``dtype``."""
  return jnp.dtype(dtype) not in (
    jnp.dtype(jnp.float16),
    jnp.dtype(jnp.bfloat16),
  )


def _times(x: jax.Array, c: np.ndarray) -> jax.Array:
  """``x * c`` for a constant ``c``, as grappler leaves it.

  Constant folding drops a product by one (a product by zero stays, so
  ``inf * 0`` is NaN as in TF). The product is rounded before any consumer
  sees it (no fused multiply-add).
  """
  if c == 1:
    return x
  return numerics.rounded(x * jnp.asarray(c))


def _plus(x: jax.Array, c: np.ndarray) -> jax.Array:
  """``x + c`` for a constant ``c``; grappler drops an addition of zero."""
  if c == 0:
    return x
  return x + jnp.asarray(c)


def _scaled_power(
  q: jax.Array,
  power: np.ndarray,
  scale: np.ndarray,
  pushes_down: bool,
  step: jax.Array,
) -> jax.Array:
  """``scale * pow(q, power)`` after grappler's ConvertPow and push-down.

  The arithmetic optimizer rewrites a power by a constant exponent of 2, 3, 1,
  0.5, 0, -0.5 or -1 into other ops. A cube becomes ``q * square(q)``, a
  product that constant folding then regroups as ``square(q) * (scale * q)``.

  Args:
    q: the base.
    power: the constant exponent.
    scale: the constant factor.
    pushes_down: whether constant push-down applies to the dtype.
    step: the step (see :func:`_hidden`).

  Returns:
    The value.
  """
  square = lambda: numerics.rounded(q * q)
  if power == 3:
    if pushes_down and scale != 1:
      return square() * numerics.rounded(q * jnp.asarray(scale))
    powered = q * square()
  elif power == 2:
    powered = square()
  elif power == 1:
    powered = q
  elif power == 0.5:
    powered = jnp.sqrt(q)
  elif power == 0:
    powered = jnp.ones_like(q)
  elif power == -0.5:
    powered = _divide(jnp.ones_like(q), jnp.sqrt(q))
  elif power == -1:
    powered = _divide(jnp.ones_like(q), q)
  else:
    powered = jnp.power(q, _hidden(power, step))
  return _times(powered, scale)


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


class _KerasSchedule(LearningRateSchedule):
  """A Keras schedule, evaluated as TF's graph or as TF eagerly."""

  def __init__(self, *, evaluation: Evaluation = "graph"):
    self._evaluation = check_evaluation(evaluation)

  @property
  def evaluation(self) -> Evaluation:
    """``"graph"`` (``Model.fit``'s values) or ``"eager"``."""
    return self._evaluation

  def __call__(self, step):
    step = jnp.asarray(step)
    if self._evaluation == "graph":
      return self._graph(step)
    return self._eager(step)

  def _graph(self, step: jax.Array) -> jax.Array:
    raise NotImplementedError

  def _eager(self, step: jax.Array) -> jax.Array:
    raise NotImplementedError

  @classmethod
  def from_config(
    cls, config: Mapping[str, Any], *, evaluation: Evaluation = "graph"
  ) -> "LearningRateSchedule":
    return cls(**config, evaluation=evaluation)


class ExponentialDecay(_KerasSchedule):
  r"""``lr0 * decay_rate ** (step / decay_steps)`` (floored if ``staircase``).

  In a graph the division is a multiplication by ``1 / decay_steps`` rounded
  to the schedule's dtype: ``lr0 * decay_rate ** (step * (1 / decay_steps))``.

  Args:
    initial_learning_rate: the learning rate at step 0; its dtype (float32
      for a Python number) is the dtype of the schedule's arithmetic.
    decay_steps: the number of steps over which the rate is multiplied by
      ``decay_rate``.
    decay_rate: the factor per ``decay_steps``.
    staircase: floor ``step / decay_steps``, so the rate changes in steps.
    name: kept in the config, as Keras keeps it.
    evaluation: ``"graph"`` (default): the values TF computes in a graph,
      i.e. under ``Model.fit`` or ``tf.function``; ``"eager"``: the values of
      TF's eager execution. Not part of the config.

  Example:
    >>> print(ExponentialDecay(0.1, 10, 0.5)(10.0))
    0.05
    >>> graph = ExponentialDecay(0.1, 7, 0.93)  # What Model.fit computes.
    >>> eager = ExponentialDecay(0.1, 7, 0.93, evaluation="eager")
    >>> print(graph(19.0), eager(19.0))
    0.0821209 0.08212091
  """

  def __init__(
    self,
    initial_learning_rate,
    decay_steps,
    decay_rate,
    staircase=False,
    name=None,
    *,
    evaluation: Evaluation = "graph",
  ):
    self.initial_learning_rate = initial_learning_rate
    self.decay_steps = decay_steps
    self.decay_rate = decay_rate
    self.staircase = staircase
    self.name = name
    super().__init__(evaluation=evaluation)

  def _eager(self, step):
    lr0 = _tensor(self.initial_learning_rate)
    dtype = lr0.dtype
    p = _divide(step.astype(dtype), _cast(self.decay_steps, dtype))
    if self.staircase:
      p = jnp.floor(p)
    return lr0 * jnp.power(_hidden(_cast(self.decay_rate, dtype), step), p)

  def _graph(self, step):
    lr0 = _np_tensor(self.initial_learning_rate)
    dtype = lr0.dtype
    p = _times(
      step.astype(dtype), _reciprocal(_np_cast(self.decay_steps, dtype))
    )
    if self.staircase:
      p = jnp.floor(p)
    rate = _hidden(_np_cast(self.decay_rate, dtype), step)
    return _times(jnp.power(rate, p), lr0)

  def get_config(self):
    return dict(
      initial_learning_rate=self.initial_learning_rate,
      decay_steps=self.decay_steps,
      decay_rate=self.decay_rate,
      staircase=self.staircase,
      name=self.name,
    )


class PiecewiseConstantDecay(_KerasSchedule):
  """``values[i]`` for ``boundaries[i-1] < step <= boundaries[i]``.

  The boundaries are cast to the step's dtype; the result has the dtype of
  ``values`` (int32 for Python ints). Graph and eager evaluation agree.

  Args:
    boundaries: increasing step boundaries.
    values: the rates, one more than ``boundaries``.
    name: kept in the config, as Keras keeps it.
    evaluation: ``"graph"`` (default) or ``"eager"``; both give the same
      values for this schedule. Not part of the config.

  Raises:
    ValueError: if ``values`` is not one longer than ``boundaries``.

  Example:
    >>> print(PiecewiseConstantDecay([10, 20], [1.0, 0.5, 0.1])(15.0))
    0.5
  """

  def __init__(
    self, boundaries, values, name=None, *, evaluation: Evaluation = "graph"
  ):
    if len(boundaries) != len(values) - 1:
      raise ValueError(
        "The length of boundaries should be 1 less than the length of "
        f"values. Received: boundaries={boundaries} of length "
        f"{len(boundaries)}, and values={values} of length {len(values)}."
      )
    self.boundaries = boundaries
    self.values = values
    self.name = name
    super().__init__(evaluation=evaluation)

  def _eager(self, step):
    bounds = [_tensor(b).astype(step.dtype) for b in self.boundaries]
    values = [_tensor(v) for v in self.values]
    conditions = [step <= bounds[0], step > bounds[-1]]
    choices = [values[0], values[-1]]
    for low, high, v in zip(bounds[:-1], bounds[1:], values[1:-1]):
      conditions.append((step > low) & (step <= high))
      choices.append(v)
    return jnp.select(conditions, choices, values[0])

  # The comparisons and the selected constants are the same in a graph.
  _graph = _eager

  def _dtype(self):
    return _tensor(self.values[0]).dtype

  def get_config(self):
    return dict(boundaries=self.boundaries, values=self.values, name=self.name)


class PolynomialDecay(_KerasSchedule):
  """``(lr0 - end) * (1 - s / ds) ** power + end``, optionally cycling.

  In a graph ``s / ds`` is ``s * (1 / ds)`` (without ``cycle``; with it, the
  multiplier's ``ceil(step / decay_steps)`` is), and a ``power`` of 2, 3, 1,
  0.5, 0, -0.5 or -1 is computed as TF's arithmetic optimizer rewrites it
  (square, ``q**2 * ((lr0 - end) * q)``, identity, sqrt, one, ``1 / sqrt``,
  reciprocal). After ``decay_steps``, ``ds * (1 / ds)`` can round to just
  below 1 (``decay_steps=41`` in float32), so the graph's rate never reaches
  ``end_learning_rate``: with ``(0.1, 41, 0.001, power=0.5)`` it stays at
  0.00102417, in TF's graph as here.

  Args:
    initial_learning_rate: the learning rate at step 0; its dtype (float32
      for a Python number) is the dtype of the schedule's arithmetic.
    decay_steps: ``ds``, the steps from ``lr0`` to ``end``.
    end_learning_rate: ``end``, the rate reached after ``decay_steps``.
    power: the polynomial's power (1: linear decay).
    cycle: instead of holding ``end`` after ``decay_steps``, decay again
      over the next multiple of ``decay_steps``.
    name: kept in the config, as Keras keeps it.
    evaluation: ``"graph"`` (default): the values TF computes in a graph,
      i.e. under ``Model.fit`` or ``tf.function``; ``"eager"``: the values of
      TF's eager execution. Not part of the config.

  Raises:
    TypeError: when called with ``cycle=True`` in graph evaluation and an
      ``initial_learning_rate`` that is not float32: TF's graph then mixes a
      float32 ``1.0`` into the schedule's dtype and fails the same way.

  Example:
    >>> print(PolynomialDecay(0.1, 10, 0.01, cycle=True)(15.0))
    0.0325
  """

  def __init__(
    self,
    initial_learning_rate,
    decay_steps,
    end_learning_rate=0.0001,
    power=1.0,
    cycle=False,
    name=None,
    *,
    evaluation: Evaluation = "graph",
  ):
    self.initial_learning_rate = initial_learning_rate
    self.decay_steps = decay_steps
    self.end_learning_rate = end_learning_rate
    self.power = power
    self.cycle = cycle
    self.name = name
    super().__init__(evaluation=evaluation)

  def _eager(self, step):
    lr0 = _tensor(self.initial_learning_rate)
    dtype = lr0.dtype
    end = _cast(self.end_learning_rate, dtype)
    power = _cast(self.power, dtype)
    s = step.astype(dtype)
    ds = _cast(self.decay_steps, dtype)
    if self.cycle:
      # The first multiple of decay_steps above the step; 1 at step 0.
      multiplier = jnp.where(
        s == 0,
        _literal(1.0, dtype),
        jnp.ceil(_divide(s, _literal(self.decay_steps, dtype))),
      )
      ds = ds * multiplier
    else:
      s = jnp.minimum(s, ds)
    p = _divide(s, ds)
    powered = jnp.power(1 - p, _hidden(power, step))
    decayed = numerics.rounded((lr0 - end) * powered)
    return decayed + end

  def _graph(self, step):
    lr0 = _np_tensor(self.initial_learning_rate)
    dtype = lr0.dtype
    end = _np_cast(self.end_learning_rate, dtype)
    power = _np_cast(self.power, dtype)
    ds = _np_cast(self.decay_steps, dtype)
    s = step.astype(dtype)
    if self.cycle:
      if dtype != np.float32:
        # tf.where(step == 0, 1.0, ceil(...)): a graph converts the Python
        # 1.0 to float32 on its own, then rejects the mix of dtypes.
        raise TypeError(
          "PolynomialDecay(cycle=True) with a "
          f"{np.dtype(dtype).name} initial_learning_rate fails in a TF "
          "graph (Model.fit, tf.function): TF raises \"TypeError: Input "
          "'e' of 'SelectV2' Op has type "
          f"{np.dtype(dtype).name} that does not match type float32\". "
          "Use evaluation='eager' for TF's eager values."
        )
      steps = _reciprocal(_np_literal(self.decay_steps, dtype))
      multiplier = jnp.where(
        s == 0, jnp.ones_like(s), jnp.ceil(_times(s, steps))
      )
      p = _divide(s, _times(multiplier, ds))
    else:
      p = _times(jnp.minimum(s, jnp.asarray(ds)), _reciprocal(ds))
    q = _literal(1, dtype) - numerics.rounded(p)
    decayed = _scaled_power(
      q, power, _fold(np.subtract, lr0, end), _pushes_down(dtype), step
    )
    return _plus(numerics.rounded(decayed), end)

  def get_config(self):
    return dict(
      initial_learning_rate=self.initial_learning_rate,
      decay_steps=self.decay_steps,
      end_learning_rate=self.end_learning_rate,
      power=self.power,
      cycle=self.cycle,
      name=self.name,
    )


class InverseTimeDecay(_KerasSchedule):
  """``lr0 / (1 + decay_rate * step / decay_steps)`` (floored if staircase).

  In a graph, without ``staircase``, ``decay_rate * (step / decay_steps)``
  is ``step * k`` with the constant ``k = decay_rate * (1 / decay_steps)``
  rounded to the schedule's dtype; with it, the floor of
  ``step * (1 / decay_steps)`` times ``decay_rate``.

  Args:
    initial_learning_rate: the learning rate at step 0; its dtype (float32
      for a Python number) is the dtype of the schedule's arithmetic.
    decay_steps: the step scale of the decay.
    decay_rate: the rate added to the divisor per ``decay_steps``.
    staircase: floor ``step / decay_steps``, so the rate changes in steps.
    name: kept in the config, as Keras keeps it.
    evaluation: ``"graph"`` (default): the values TF computes in a graph,
      i.e. under ``Model.fit`` or ``tf.function``; ``"eager"``: the values of
      TF's eager execution. Not part of the config.

  Example:
    >>> print(InverseTimeDecay(0.1, 1, 0.5)(2.0))
    0.05
  """

  def __init__(
    self,
    initial_learning_rate,
    decay_steps,
    decay_rate,
    staircase=False,
    name=None,
    *,
    evaluation: Evaluation = "graph",
  ):
    self.initial_learning_rate = initial_learning_rate
    self.decay_steps = decay_steps
    self.decay_rate = decay_rate
    self.staircase = staircase
    self.name = name
    super().__init__(evaluation=evaluation)

  def _eager(self, step):
    lr0 = _tensor(self.initial_learning_rate)
    dtype = lr0.dtype
    p = _divide(step.astype(dtype), _cast(self.decay_steps, dtype))
    if self.staircase:
      p = jnp.floor(p)
    denom = _cast(1, dtype) + numerics.rounded(
      _cast(self.decay_rate, dtype) * p
    )
    return _quotient(lr0, denom)

  def _graph(self, step):
    lr0 = _np_tensor(self.initial_learning_rate)
    dtype = lr0.dtype
    rate = _np_cast(self.decay_rate, dtype)
    inverse = _reciprocal(_np_cast(self.decay_steps, dtype))
    s = step.astype(dtype)
    if self.staircase:
      term = _times(jnp.floor(_times(s, inverse)), rate)
    elif _pushes_down(dtype):
      term = _times(s, _fold(np.multiply, rate, inverse))
    else:
      term = _times(_times(s, inverse), rate)
    denom = _literal(1, dtype) + numerics.rounded(term)
    return _quotient(jnp.asarray(lr0), denom)

  def get_config(self):
    return dict(
      initial_learning_rate=self.initial_learning_rate,
      decay_steps=self.decay_steps,
      decay_rate=self.decay_rate,
      staircase=self.staircase,
      name=self.name,
    )


class CosineDecay(_KerasSchedule):
  """Cosine decay from ``lr0`` to ``alpha * lr0``, with optional warmup.

  Without warmup: ``lr0 * ((1 - alpha) * 0.5 * (1 + cos(pi * s / ds)) +
  alpha)`` with ``s = min(step, ds)``. With ``warmup_target``, a linear ramp
  from ``lr0`` to the target over ``warmup_steps``, then the cosine decay of
  the target.

  In a graph, without warmup, ``pi * (s / ds)`` is ``s * k`` with the
  constant ``k = pi * (1 / ds)`` rounded to the schedule's dtype. With
  warmup, the graph's ``tf.cond`` on the step keeps the constants out of
  both branches, and graph and eager evaluation agree.

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
    evaluation: ``"graph"`` (default): the values TF computes in a graph,
      i.e. under ``Model.fit`` or ``tf.function``; ``"eager"``: the values of
      TF's eager execution. Not part of the config.

  Example:
    >>> print(CosineDecay(0.1, 10)(5.0))
    0.049999997
  """

  def __init__(
    self,
    initial_learning_rate,
    decay_steps,
    alpha=0.0,
    name=None,
    warmup_target=None,
    warmup_steps=0,
    *,
    evaluation: Evaluation = "graph",
  ):
    self.initial_learning_rate = initial_learning_rate
    self.decay_steps = decay_steps
    self.alpha = alpha
    self.name = name
    self.warmup_target = warmup_target
    self.warmup_steps = warmup_steps
    super().__init__(evaluation=evaluation)

  def _decay(self, s, ds, decay_from, dtype):
    fraction = _divide(s, ds)
    cosine = _literal(0.5, dtype) * (
      _literal(1.0, dtype) + jnp.cos(_literal(math.pi, dtype) * fraction)
    )
    # ``1 - alpha`` and ``alpha`` are Python numbers in Keras' formula.
    decayed = numerics.rounded(_literal(1 - self.alpha, dtype) * cosine)
    return decay_from * (decayed + _literal(self.alpha, dtype))

  def _eager(self, step):
    lr0 = _tensor(self.initial_learning_rate)
    dtype = lr0.dtype
    ds = _cast(self.decay_steps, dtype)
    s = step.astype(dtype)
    if self.warmup_target is None:
      return self._decay(jnp.minimum(s, ds), ds, lr0, dtype)
    target = _cast(self.warmup_target, dtype)
    warmup_steps = _cast(self.warmup_steps, dtype)
    s = jnp.minimum(s, ds + warmup_steps)
    ramp = numerics.rounded((target - lr0) * _divide(s, warmup_steps)) + lr0
    return jnp.where(
      s < warmup_steps, ramp, self._decay(s - warmup_steps, ds, target, dtype)
    )

  def _graph(self, step):
    if self.warmup_target is not None:
      # Both branches of the graph's tf.cond see the constants through the
      # cond's inputs, as non-constants: nothing is rewritten.
      return self._eager(step)
    lr0 = _np_tensor(self.initial_learning_rate)
    dtype = lr0.dtype
    pushes_down = _pushes_down(dtype)
    ds = _np_cast(self.decay_steps, dtype)
    s = jnp.minimum(step.astype(dtype), jnp.asarray(ds))
    pi = _np_literal(math.pi, dtype)
    inverse = _reciprocal(ds)
    if pushes_down:
      angle = _times(s, _fold(np.multiply, pi, inverse))
    else:
      angle = _times(_times(s, inverse), pi)
    cosine = jnp.cos(angle) + _literal(1, dtype)
    half = _np_literal(0.5, dtype)
    one_minus_alpha = _np_literal(1 - self.alpha, dtype)
    alpha = _np_literal(self.alpha, dtype)
    if not pushes_down:
      decayed = _times(_times(cosine, half), one_minus_alpha)
      return _times(_plus(numerics.rounded(decayed), alpha), lr0)
    scale = _fold(np.multiply, one_minus_alpha, half)
    if alpha == 0:
      # ``decayed + 0`` is dropped, and lr0 joins the product's constant.
      return _times(cosine, _fold(np.multiply, lr0, scale))
    decayed = numerics.rounded(_times(cosine, scale))
    return _times(_plus(decayed, alpha), lr0)

  def get_config(self):
    return dict(
      initial_learning_rate=self.initial_learning_rate,
      decay_steps=self.decay_steps,
      alpha=self.alpha,
      name=self.name,
      warmup_target=self.warmup_target,
      warmup_steps=self.warmup_steps,
    )


class CosineDecayRestarts(_KerasSchedule):
  """SGDR: cosine decay restarted every ``first_decay_steps * t_mul ** i``.

  In a graph the ``t_mul == 1`` test is folded and only its branch runs;
  ``step / first_decay_steps``, ``log(...) / log(t_mul)`` and
  ``(1 - t_mul**i) / (1 - t_mul)`` multiply by reciprocals rounded to the
  schedule's dtype, and ``(1 - alpha) * (0.5 * m_mul**i * (1 + cos))`` is
  regrouped as ``(1 + cos) * (m_mul**i * ((1 - alpha) * 0.5))``; with
  ``alpha == 0`` the ``+ alpha`` is dropped and ``initial_learning_rate``
  joins that constant too.

  Args:
    initial_learning_rate: the learning rate at step 0; its dtype (float32
      for a Python number) is the dtype of the schedule's arithmetic.
    first_decay_steps: the length of the first period.
    t_mul: each period is ``t_mul`` times longer than the previous one.
    m_mul: each restart begins at ``m_mul`` times the previous start rate.
    alpha: the minimum rate, as a fraction of ``initial_learning_rate``.
    name: kept in the config, as Keras keeps it.
    evaluation: ``"graph"`` (default): the values TF computes in a graph,
      i.e. under ``Model.fit`` or ``tf.function``; ``"eager"``: the values of
      TF's eager execution. Not part of the config.

  Example:
    >>> print(CosineDecayRestarts(0.1, 10)(10.0))
    0.1
  """

  def __init__(
    self,
    initial_learning_rate,
    first_decay_steps,
    t_mul=2.0,
    m_mul=1.0,
    alpha=0.0,
    name=None,
    *,
    evaluation: Evaluation = "graph",
  ):
    self.initial_learning_rate = initial_learning_rate
    self.first_decay_steps = first_decay_steps
    self.t_mul = t_mul
    self.m_mul = m_mul
    self.alpha = alpha
    self.name = name
    super().__init__(evaluation=evaluation)

  def _eager(self, step):
    lr0 = _tensor(self.initial_learning_rate)
    dtype = lr0.dtype
    one = _literal(1.0, dtype)
    alpha = _cast(self.alpha, dtype)
    t_mul = _hidden(_cast(self.t_mul, dtype), step)
    m_mul = _hidden(_cast(self.m_mul, dtype), step)
    fraction = _divide(step.astype(dtype), _cast(self.first_decay_steps, dtype))
    # t_mul == 1: periods of equal length.
    i_equal = jnp.floor(fraction)
    fraction_equal = fraction - i_equal
    # Otherwise the periods grow geometrically.
    i_geometric = jnp.floor(
      _divide(
        jnp.log(one - numerics.rounded(fraction * (one - t_mul))),
        jnp.log(t_mul),
      )
    )
    t_pow = jnp.power(t_mul, i_geometric)
    sum_r = _divide(one - t_pow, one - t_mul)
    fraction_geometric = _divide(fraction - sum_r, t_pow)
    equal = t_mul == one
    i_restart = jnp.where(equal, i_equal, i_geometric)
    fraction = jnp.where(equal, fraction_equal, fraction_geometric)
    m_fac = jnp.power(m_mul, i_restart)
    cosine = (_literal(0.5, dtype) * m_fac) * (
      one + jnp.cos(_literal(math.pi, dtype) * fraction)
    )
    decayed = numerics.rounded((one - alpha) * cosine) + alpha
    return lr0 * decayed

  def _graph(self, step):
    lr0 = _np_tensor(self.initial_learning_rate)
    dtype = lr0.dtype
    one = _np_literal(1, dtype)
    alpha = _np_cast(self.alpha, dtype)
    t_mul = _np_cast(self.t_mul, dtype)
    m_mul = _np_cast(self.m_mul, dtype)
    fraction = _times(
      step.astype(dtype), _reciprocal(_np_cast(self.first_decay_steps, dtype))
    )
    if t_mul == 1:
      i_restart = jnp.floor(fraction)
      fraction = fraction - i_restart
    else:
      one_minus_t = _fold(np.subtract, one, t_mul)
      # log(t_mul) is folded by TF's own Log kernel, then inverted.
      inverse_log = _divide(jnp.asarray(one), jnp.log(_hidden(t_mul, step)))
      log = jnp.log(
        jnp.asarray(one) - numerics.rounded(_times(fraction, one_minus_t))
      )
      i_restart = jnp.floor(numerics.rounded(log) * inverse_log)
      t_pow = jnp.power(_hidden(t_mul, step), i_restart)
      sum_r = _times(jnp.asarray(one) - t_pow, _reciprocal(one_minus_t))
      fraction = _divide(fraction - numerics.rounded(sum_r), t_pow)
    m_fac = jnp.power(_hidden(m_mul, step), i_restart)
    cosine = jnp.cos(_times(fraction, _np_literal(math.pi, dtype)))
    cosine = cosine + jnp.asarray(one)
    half = _np_literal(0.5, dtype)
    one_minus_alpha = _fold(np.subtract, one, alpha)
    if not _pushes_down(dtype):
      decayed = _times(
        numerics.rounded(_times(m_fac, half) * cosine), one_minus_alpha
      )
      return _times(_plus(numerics.rounded(decayed), alpha), lr0)
    scale = _fold(np.multiply, half, one_minus_alpha)
    if alpha == 0:
      # ``decayed + 0`` is dropped, and lr0 joins the product's constant.
      scale = _fold(np.multiply, lr0, scale)
      return cosine * numerics.rounded(_times(m_fac, scale))
    decayed = numerics.rounded(cosine * numerics.rounded(_times(m_fac, scale)))
    return _times(decayed + jnp.asarray(alpha), lr0)

  def get_config(self):
    return dict(
      initial_learning_rate=self.initial_learning_rate,
      first_decay_steps=self.first_decay_steps,
      t_mul=self.t_mul,
      m_mul=self.m_mul,
      alpha=self.alpha,
      name=self.name,
    )


KERAS_SCHEDULES: dict[str, type[LearningRateSchedule]] = {
  cls.__name__: cls
  for cls in (
    ExponentialDecay,
    PiecewiseConstantDecay,
    PolynomialDecay,
    InverseTimeDecay,
    CosineDecay,
    CosineDecayRestarts,
  )
}

_SERIALIZED_KEYS = frozenset(
  {"module", "class_name", "config", "registered_name"}
)


def serialize(schedule: LearningRateSchedule) -> dict[str, Any]:
  """A schedule as Keras serialises it (JSON-safe when its config is).

  ``evaluation`` is not serialised: Keras' format has no place for it, and
  a config from this package stays identical to Keras' own.

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
  custom_objects: Mapping[str, Any] | None = None,
  *,
  evaluation: Evaluation = "graph",
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
    evaluation: for the Keras schedules (and subclasses of them):
      ``"graph"`` (default), the values ``Model.fit`` computes, or
      ``"eager"``, those of TF's eager execution. Other custom classes are
      built from their config alone.

  Returns:
    The schedule.

  Raises:
    TypeError: for an unknown class name.
    ValueError: for a malformed dict, unknown config keys or an unknown
      ``evaluation``.

  Example:
    >>> deserialize({"class_name": "InverseTimeDecay", "config": {
    ...     "initial_learning_rate": 0.1, "decay_steps": 1,
    ...     "decay_rate": 0.5}}, evaluation="eager").evaluation
    'eager'
  """
  check_evaluation(evaluation)
  if not isinstance(config, Mapping) or "class_name" not in config:
    raise ValueError(
      "A serialized learning rate schedule must be a dict with "
      f"'class_name' and 'config', got {config!r}."
    )
  unknown = set(config) - _SERIALIZED_KEYS
  if unknown:
    raise ValueError(
      f"Unknown keys {sorted(unknown)} in the serialized learning rate "
      f"schedule; expected a subset of {sorted(_SERIALIZED_KEYS)}."
    )
  class_name = config["class_name"]
  custom_objects = dict(custom_objects or {})
  cls = custom_objects.get(class_name) or custom_objects.get(
    config.get("registered_name") or class_name
  )
  if cls is None and config.get("module") in (None, _MODULE):
    cls = KERAS_SCHEDULES.get(class_name)
  if cls is None:
    raise TypeError(
      f"Cannot deserialize object of type `{class_name}`. If "
      f"`{class_name}` is a custom class, pass it in `custom_objects` "
      f"(e.g. custom_objects={{'{class_name}': {class_name}}})."
    )
  inner = dict(config.get("config") or {})
  try:
    if isinstance(cls, type) and issubclass(cls, _KerasSchedule):
      return cls.from_config(inner, evaluation=evaluation)
    return cls.from_config(inner)
  except TypeError as e:
    raise ValueError(
      f"Invalid config for learning rate schedule `{class_name}`: {e}"
    ) from e
