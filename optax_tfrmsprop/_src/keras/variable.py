"""``Variable``: the ``tf.Variable`` stand-in of the Keras-style class."""

from collections.abc import Callable
import itertools
import threading
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

# Unique ids, never reused (unlike ``id()``): the optimizer keys slots by them,
# as tf_keras keys them by ``_unique_id``.
_ids = itertools.count()
# The thread-local read override of ``minimize``'s trace (see ``_read``).
_tracing = threading.local()
_USE_VALUE = (
  "pass its value instead: v.value (for example jnp.sum(v.value), "
  "jax.grad(f)([v.value for v in variables]))"
)


def _never_built(aux, children) -> "Variable":
  del aux, children
  raise AssertionError("a Variable is never flattened, so never rebuilt")


def _not_a_jax_type(var: "Variable"):
  """Jax's flatten of a Variable: a TypeError that says to use ``.value``."""
  raise TypeError(
    f"{var.name} is an optax_tfrmsprop.Variable, a mutable holder that jax "
    f"functions and transformations (jit, grad, vmap) do not take; "
    f"{_USE_VALUE}."
  )


class Variable:
  """A mutable holder of a jax array that stands in for ``tf.Variable``.

  Reads as its current value, as a ``tf.Variable`` does in TF 2 code:
  arithmetic and comparisons with Python numbers, NumPy arrays, jax arrays and
  other Variables, on either side, return jax arrays (``np_array @ v``
  included: NumPy defers to the Variable, and NumPy ufuncs such as
  ``np.tanh(v)`` run as their ``jnp`` namesakes); ``v.T``, indexing,
  iteration, ``float(v)``, ``np.asarray(v)`` and ``jnp.asarray(v)`` read the
  value too. ``==`` and ``!=`` are elementwise, so a Variable is unhashable,
  as in TF 2 (key dicts by :meth:`ref`).

  jax's jitted functions and transformations only take arrays: ``jnp.sum(v)``,
  ``jax.nn.relu(v)``, ``jax.jit(f)(v)`` or ``jax.grad(f)(variables)`` raise a
  ``TypeError`` that says to pass ``v.value``. Inside a loss given to
  :meth:`RMSprop.minimize`, every read of a Variable (``v.value`` or an
  operator) is what gets differentiated.

  Args:
    initial_value: the value, or a callable returning it (as ``tf.Variable``
      takes). Python floats become float32 and ints int32, as in TF.
    name: the variable's name; ``v.name`` appends ``":0"`` as TF does.
      Defaults to ``"Variable"``.
    dtype: the dtype to convert ``initial_value`` to; by default the value's
      own (float32 / int32 for Python numbers).
    trainable: recorded as ``v.trainable``, as on a ``tf.Variable``; the
      optimizer updates whatever ``var_list`` holds, as TF's does.
    constraint: an optional function ``value -> value`` (a jax array in and
      out, same shape), which the optimizer applies to the variable after
      each update from a dense gradient, as TF does (Keras'
      ``kernel_constraint``).

  Example:
    >>> import numpy as np
    >>> v = Variable(10.0, name="v")
    >>> v.assign_sub(1.5).numpy()
    array(8.5, dtype=float32)
    >>> v.name, float(v * 2), type(np.float32(2.0) * v).__name__
    ('v:0', 17.0, 'ArrayImpl')
  """

  # NumPy routes its operators and ufuncs through ``__array_ufunc__`` instead
  # of converting the Variable to a NumPy array.

  def __init__(
    self,
    initial_value: Any,
    name: str | None = None,
    dtype: jax.typing.DTypeLike | None = None,
    trainable: bool = True,
    constraint: Callable[[jax.Array], Any] | None = None,
  ):
    if constraint is not None and not callable(constraint):
      raise ValueError(
        "The `constraint` argument must be a callable. Received: "
        f"constraint={constraint!r}"
      )
    if callable(initial_value):
      initial_value = initial_value()
    if isinstance(initial_value, Variable):
      initial_value = initial_value.value
    if dtype is None and not isinstance(
      initial_value, (jax.Array, np.ndarray, np.generic)
    ):
      # Like ``tf.Variable``: Python floats are float32, ints int32.
      dtype = {"f": np.float32, "i": np.int32}.get(
        np.asarray(initial_value).dtype.kind
      )
    value = jnp.asarray(initial_value, dtype)
    # A weakly typed value would change type at the first update (retrace).
    self._value = jax.lax.convert_element_type(value, value.dtype)
    self._shared_name = name or "Variable"
    self._unique_id = next(_ids)
    self.trainable = trainable
    self.constraint = constraint

  @classmethod
  def _wrap(cls, value: jax.Array, name: str) -> "Variable":
    """A Variable around an existing array, without conversions."""
    var = cls.__new__(cls)
    var._value, var._shared_name, var.trainable = value, name, False
    var._unique_id, var.constraint = next(_ids), None
    return var

  def __copy__(self) -> "Variable":
    # A copy is another Variable: its own unique id, so its own slots.
    new = Variable._wrap(self._value, self._shared_name)
    new.trainable, new.constraint = self.trainable, self.constraint
    return new

  def __deepcopy__(self, memo) -> "Variable":
    new = self.__copy__()
    memo[id(self)] = new
    return new

  def _read(self) -> jax.Array:
    """The value, or what ``minimize``'s trace substitutes for it."""
    override = getattr(_tracing, "read", None)
    if override is None:
      return self._value
    return override(self)

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
  def size(self) -> int:
    return self._value.size

  @property
  def value(self) -> jax.Array:
    """The current value (a jax array)."""
    return self._read()

  @property
  def T(self) -> jax.Array:
    """The transposed value."""
    return self._read().T

  def read_value(self) -> jax.Array:
    return self._read()

  def numpy(self) -> np.ndarray:
    return np.asarray(self._read())

  def ref(self) -> "_Reference":
    """A hashable reference to this Variable (TF's ``v.ref()``)."""
    return _Reference(self)

  def assign(
    self, value: Any, use_locking=None, name=None, read_value=True
  ) -> Optional["Variable"]:
    """Replaces the value; the shape must stay, the dtype is kept.

    Args:
      value: the new value.
      use_locking: accepted for TF compatibility.
      name: accepted for TF compatibility.
      read_value: return the Variable (TF returns its new value) if True,
        else ``None``.

    Returns:
      The Variable, or ``None`` when ``read_value`` is False.
    """
    del use_locking, name
    if getattr(_tracing, "read", None) is not None:
      # The loss is traced once and its compiled gradient reused: an
      # assignment in it would not happen at every call, as in TF.
      raise RuntimeError(
        f"The loss given to minimize assigns {self.name}: a loss may only "
        "read Variables (it is traced once, not run at every call)."
      )
    if isinstance(value, Variable):
      value = value.value
    new = jnp.asarray(value, self.dtype)
    if new.shape != self.shape:
      raise ValueError(
        f"Cannot assign a value of shape {new.shape} to variable "
        f"{self.name} of shape {self.shape}."
      )
    self._value = new
    return self if read_value else None

  def assign_add(
    self, delta: Any, use_locking=None, name=None, read_value=True
  ) -> Optional["Variable"]:
    """Adds ``delta`` to the value; see :meth:`assign`."""
    if isinstance(delta, Variable):
      delta = delta.value
    return self.assign(
      self._value + jnp.asarray(delta, self.dtype),
      use_locking,
      name,
      read_value,
    )

  def assign_sub(
    self, delta: Any, use_locking=None, name=None, read_value=True
  ) -> Optional["Variable"]:
    """Subtracts ``delta`` from the value; see :meth:`assign`."""
    if isinstance(delta, Variable):
      delta = delta.value
    return self.assign(
      self._value - jnp.asarray(delta, self.dtype),
      use_locking,
      name,
      read_value,
    )

  def __jax_array__(self):
    return self._read()

  def __array__(self, dtype=None, copy=None):
    del copy
    return np.asarray(self._read(), dtype)

  def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
    """NumPy ufuncs on Variables run as ``jnp`` functions on their values."""
    function = getattr(jnp, ufunc.__name__, None)
    if method != "__call__" or kwargs or function is None:
      raise TypeError(
        f"numpy.{ufunc.__name__}.{method} does not take an "
        f"optax_tfrmsprop.Variable; {_USE_VALUE}."
      )
    return function(*(_unwrap(x) for x in inputs))

  def __repr__(self):
    return (
      f"<Variable '{self.name}' shape={self.shape} dtype={self.dtype}, "
      f"numpy={self.numpy()!r}>"
    )

  def __len__(self):
    return len(self._value)

  def __iter__(self):
    return iter(self._read())

  def __getitem__(self, index):
    return self._read()[index]

  def __float__(self):
    return float(self._read())

  def __int__(self):
    return int(self._read())

  def __index__(self):
    return int(self._read())

  def __bool__(self):
    return bool(self._read())

  __hash__ = None  # Elementwise ``==``, as tf.Variable: key by ``ref()``.


class _Reference:
  """A hashable reference to a :class:`Variable`, equal by identity."""

  __slots__ = ("_var",)

  def __init__(self, var: Variable):
    self._var = var

  def deref(self) -> Variable:
    return self._var

  def __hash__(self):
    return hash(self._var._unique_id)

  def __eq__(self, other):
    return isinstance(other, _Reference) and other._var is self._var


def _unwrap(x):
  return x._read() if isinstance(x, Variable) else x


def _binary(op):
  return lambda self, other: op(self._read(), _unwrap(other))


def _reflected(op):
  return lambda self, other: op(_unwrap(other), self._read())


def _unary(op):
  return lambda self: op(self._read())


for _name, _op in (
  ("add", jnp.add),
  ("sub", jnp.subtract),
  ("mul", jnp.multiply),
  ("truediv", jnp.true_divide),
  ("floordiv", jnp.floor_divide),
  ("mod", jnp.mod),
  ("pow", jnp.power),
  ("matmul", jnp.matmul),
):
  setattr(Variable, f"__{_name}__", _binary(_op))
  setattr(Variable, f"__r{_name}__", _reflected(_op))
for _name, _op in (
  ("lt", jnp.less),
  ("le", jnp.less_equal),
  ("gt", jnp.greater),
  ("ge", jnp.greater_equal),
  ("eq", jnp.equal),
  ("ne", jnp.not_equal),
):
  setattr(Variable, f"__{_name}__", _binary(_op))
for _name, _op in (
  ("neg", jnp.negative),
  ("pos", jnp.positive),
  ("abs", jnp.abs),
  ("invert", jnp.invert),
):
  setattr(Variable, f"__{_name}__", _unary(_op))

# jax flattens the arguments of its jitted functions and transformations as
# pytrees: a Variable there raises the TypeError above instead of jax's
# message about ``__jax_array__``.
jax.tree_util.register_pytree_node(Variable, _not_a_jax_type, _never_built)
