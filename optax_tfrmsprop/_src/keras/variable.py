"""``Variable``: the stand-in for ``tf.Variable`` that the Keras-style class updates."""

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np


class Variable:
  """A mutable holder of a jax array that stands in for ``tf.Variable``.

  Arithmetic, comparisons, indexing and ``np.asarray`` / ``jnp.asarray``
  read the current value. Inside jax-transformed code (e.g. a loss given to
  :meth:`RMSprop.minimize`), read it with ``v.value`` or operators: jax no
  longer converts foreign objects implicitly in ``jnp`` functions.

  Args:
    initial_value: the value, or a callable returning it (as ``tf.Variable``
      takes). Python floats become float32 and ints int32, as in TF.
    name: the variable's name; ``v.name`` appends ``":0"`` as TF does.
      Defaults to ``"Variable"``.
    dtype: the dtype to convert ``initial_value`` to; by default the value's
      own (float32 / int32 for Python numbers).
    trainable: recorded as ``v.trainable``, as on a ``tf.Variable``; the
      optimizer updates whatever ``var_list`` holds, as TF's does.

  Example:
    >>> v = Variable(10.0, name="v")
    >>> v.assign_sub(1.5).numpy()
    array(8.5, dtype=float32)
    >>> v.name, float(v * 2)
    ('v:0', 17.0)
  """

  def __init__(self, initial_value: Any, name: Optional[str] = None,
               dtype: Optional[jax.typing.DTypeLike] = None,
               trainable: bool = True):
    if callable(initial_value):
      initial_value = initial_value()
    if dtype is None and not isinstance(
        initial_value, (jax.Array, np.ndarray, np.generic)):
      # Like ``tf.Variable``: Python floats are float32, ints int32.
      dtype = {"f": np.float32, "i": np.int32}.get(
          np.asarray(initial_value).dtype.kind)
    value = jnp.asarray(initial_value, dtype)
    # A weakly typed value would change type at the first update (retrace).
    self._value = jax.lax.convert_element_type(value, value.dtype)
    self._shared_name = name or "Variable"
    self.trainable = trainable

  @classmethod
  def _wrap(cls, value: jax.Array, name: str) -> "Variable":
    """A Variable around an existing array, without conversions."""
    var = cls.__new__(cls)
    var._value, var._shared_name, var.trainable = value, name, False
    return var

  @property
  def name(self) -> str:
    return f"{self._shared_name}:0"

  @property
  def shape(self) -> tuple[int, ...]:
    return self._value.shape

  @property
  def dtype(self) -> np.dtype:
    return self._value.dtype

  @property
  def ndim(self) -> int:
    return self._value.ndim

  @property
  def value(self) -> jax.Array:
    """The current value (a jax array)."""
    return self._value

  def read_value(self) -> jax.Array:
    return self._value

  def numpy(self) -> np.ndarray:
    return np.asarray(self._value)

  def assign(self, value: Any) -> "Variable":
    """Replaces the value; the shape must stay, the dtype is kept."""
    new = jnp.asarray(value, self.dtype)
    if new.shape != self.shape:
      raise ValueError(
          f"Cannot assign a value of shape {new.shape} to variable "
          f"{self.name} of shape {self.shape}.")
    self._value = new
    return self

  def assign_add(self, delta: Any) -> "Variable":
    return self.assign(self._value + jnp.asarray(delta, self.dtype))

  def assign_sub(self, delta: Any) -> "Variable":
    return self.assign(self._value - jnp.asarray(delta, self.dtype))

  def __jax_array__(self):
    return self._value

  def __array__(self, dtype=None, copy=None):
    del copy
    return np.asarray(self._value, dtype)

  def __repr__(self):
    return (f"<Variable '{self.name}' shape={self.shape} dtype={self.dtype}, "
            f"numpy={self.numpy()!r}>")

  def __len__(self):
    return len(self._value)

  def __getitem__(self, index):
    return self._value[index]

  def __float__(self):
    return float(self._value)

  def __int__(self):
    return int(self._value)

  def __index__(self):
    return int(self._value)

  def __bool__(self):
    return bool(self._value)


def _unwrap(x):
  return x._value if isinstance(x, Variable) else x  # pylint: disable=protected-access


def _binary(op):
  return lambda self, other: op(self._value, _unwrap(other))  # pylint: disable=protected-access


def _reflected(op):
  return lambda self, other: op(_unwrap(other), self._value)  # pylint: disable=protected-access


def _unary(op):
  return lambda self: op(self._value)  # pylint: disable=protected-access


for _name, _op in (("add", jnp.add), ("sub", jnp.subtract),
                   ("mul", jnp.multiply), ("truediv", jnp.true_divide),
                   ("floordiv", jnp.floor_divide), ("mod", jnp.mod),
                   ("pow", jnp.power), ("matmul", jnp.matmul)):
  setattr(Variable, f"__{_name}__", _binary(_op))
  setattr(Variable, f"__r{_name}__", _reflected(_op))
for _name, _op in (("lt", jnp.less), ("le", jnp.less_equal),
                   ("gt", jnp.greater), ("ge", jnp.greater_equal)):
  setattr(Variable, f"__{_name}__", _binary(_op))
for _name, _op in (("neg", jnp.negative), ("pos", jnp.positive),
                   ("abs", jnp.abs)):
  setattr(Variable, f"__{_name}__", _unary(_op))
