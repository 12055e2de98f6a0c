"""``minimize``'s gradients: a zero-argument loss traced and compiled once.

TF's ``minimize`` records the loss on a ``GradientTape`` at every call. Here
the loss is traced once with jax and the gradient function compiled; later
calls only run the compiled function. To stay correct when the data change,
the compiled function takes as inputs everything the loss can see change
between calls:

* every :class:`Variable` the loss reads (through ``v.value`` or operators),
  wherever it reaches it: the ones in ``var_list`` are differentiated, the
  others are read as they are at each call;
* the arrays (and lists, tuples and dicts of arrays) that the loss names
  itself: its closure variables, its default arguments and the module-level
  names its code reads (also inside its comprehensions and nested lambdas),
  and the arguments of a ``functools.partial``.

Everything else the loss names (functions, modules, objects, Python numbers,
the structure of those containers) is part of the cache key: an object by
identity, a number or string by value. The cache is keyed by the loss' code
(not the function object, so a ``lambda`` rebuilt at every step hits it), by
that key and by the ``var_list``. Arrays the loss reaches any other way, as
attributes of an object or through the globals of a function it calls, are
constants of the compiled function, as under ``jax.jit``: read data that
change through a Variable or a name of the loss.

A loss whose Python needs concrete values (``if float(v) > 0:``) cannot be
traced; it is then differentiated eagerly at every call (``jax.vjp``), as the
class did before the cache existed.
"""

import collections
from collections.abc import Callable, Sequence
import contextlib
import functools
import threading
import types
from typing import Any
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from optax_tfrmsprop._src.keras import variable as variable_lib

Variable = variable_lib.Variable

_ARRAY_TYPES = (jax.Array, np.ndarray, np.generic)
_VALUE_TYPES = (bool, int, float, complex, str, bytes, type(None))
_CONTAINERS = (list, tuple, dict)
# jax errors that mean "this Python needs concrete values".
_CONCRETE_ERRORS = (
  jax.errors.ConcretizationTypeError,
  jax.errors.TracerArrayConversionError,
  jax.errors.TracerBoolConversionError,
  jax.errors.TracerIntegerConversionError,
)


class _UnknownRead(Exception):
  """A trace read a Variable that is not among the compiled inputs."""


@contextlib.contextmanager
def _reading(read: Callable[[Variable], jax.Array]):
  """Routes this thread's Variable reads through ``read``."""
  local = variable_lib._tracing
  previous = getattr(local, "read", None)
  local.read = read
  try:
    yield
  finally:
    local.read = previous


# --- What the loss can see: its parts, split into a key and array inputs. ---


@functools.lru_cache(maxsize=256)
def _global_names(code: types.CodeType) -> tuple[str, ...]:
  """Names ``code`` (and the code nested in it) may read as globals."""
  names = set(code.co_names)
  for const in code.co_consts:
    if isinstance(const, types.CodeType):
      names.update(_global_names(const))
  return tuple(sorted(names))


class _Parts:
  """A loss split into a hashable key, its array inputs and a rebuilder.

  Attributes:
    key: what the compiled gradient depends on besides the array inputs.
    leaves: the array inputs, in the order ``rebuild`` consumes them.
    rebuild: ``rebuild(iterator)`` is the loss with its arrays taken from the
      iterator (tracers, inside the trace).
    objects: what the key names by identity; the cache entry keeps them alive
      so that their ids cannot be reused.
  """

  def __init__(self, loss: Callable[[], Any]):
    self._statics: list = []
    self.leaves: list = []
    self.objects: list = []
    self.rebuild = self._callable(loss)
    self.key = tuple(self._statics)

  def _object(self, obj) -> Callable[[Any], Any]:
    self.objects.append(obj)
    self._statics.append(("object", id(obj)))
    return lambda it: obj

  def _split(self, obj: Any) -> Callable[[Any], Any]:
    """Keys ``obj`` and collects its arrays; returns its rebuilder."""
    statics = self._statics
    if isinstance(obj, Variable):
      # Read through the trace's read hook, never baked in.
      statics.append(("variable", obj._unique_id))
      return lambda it: obj
    if isinstance(obj, _ARRAY_TYPES):
      statics.append(
        (
          "array",
          np.shape(obj),
          np.result_type(obj),
          getattr(obj, "weak_type", False),
        )
      )
      self.leaves.append(obj)
      return next
    if isinstance(obj, _VALUE_TYPES):
      statics.append((type(obj), obj))
      return lambda it: obj
    if type(obj) is dict:
      keys = list(obj)
      statics.append(("dict", tuple(self._key_of(k) for k in keys)))
      parts = [self._split(obj[k]) for k in keys]
      return lambda it: dict(zip(keys, [p(it) for p in parts]))
    if type(obj) in (list, tuple):
      statics.append((type(obj), len(obj)))
      parts = [self._split(v) for v in obj]
      kind = type(obj)
      return lambda it: kind([p(it) for p in parts])
    # Functions, modules, classes and other objects: by identity.
    return self._object(obj)

  def _key_of(self, key: Any) -> Any:
    if isinstance(key, _VALUE_TYPES):
      return (type(key), key)
    self.objects.append(key)
    return ("object", id(key))

  def _callable(self, fn) -> Callable[[Any], Callable[[], Any]]:
    statics = self._statics
    if isinstance(fn, functools.partial):
      names = sorted(fn.keywords)
      statics.append(("partial", len(fn.args), tuple(names)))
      func = self._callable(fn.func)
      args = [self._split(a) for a in fn.args]
      keywords = [self._split(fn.keywords[k]) for k in names]
      return lambda it: functools.partial(
        func(it),
        *[a(it) for a in args],
        **dict(zip(names, [k(it) for k in keywords])),
      )
    if isinstance(fn, types.MethodType):
      statics.append(("method",))
      func = self._callable(fn.__func__)
      owner = self._split(fn.__self__)
      return lambda it: types.MethodType(func(it), owner(it))
    if not isinstance(fn, types.FunctionType):
      return self._object(fn)
    code = fn.__code__
    statics.append(("code", code))
    cells = [self._split(_cell_contents(c)) for c in fn.__closure__ or ()]
    defaults = [self._split(d) for d in fn.__defaults__ or ()]
    kwdefaults = fn.__kwdefaults__ or {}
    kw_names = sorted(kwdefaults)
    kw_parts = [self._split(kwdefaults[k]) for k in kw_names]
    namespace = fn.__globals__
    names = [n for n in _global_names(code) if n in namespace]
    self.objects.append(namespace)
    statics.append(("globals", id(namespace), tuple(names)))
    globals_ = [self._split(namespace[n]) for n in names]

    def rebuild(it):
      values = [c(it) for c in cells]
      default_values = tuple(d(it) for d in defaults) or None
      kw_values = [k(it) for k in kw_parts]
      new_globals = dict(namespace)
      new_globals.update(zip(names, [g(it) for g in globals_]))
      closure = (
        tuple(
          types.CellType() if v is _EMPTY else types.CellType(v) for v in values
        )
        or None
      )
      new = types.FunctionType(
        code, new_globals, fn.__name__, default_values, closure
      )
      new.__kwdefaults__ = dict(zip(kw_names, kw_values)) or None
      return new

    return rebuild


_EMPTY = object()


def _cell_contents(cell) -> Any:
  try:
    return cell.cell_contents
  except ValueError:  # A closure variable not assigned yet.
    return _EMPTY


# --- The compiled gradient. ---


class _Entry:
  """The compiled gradient of one loss (code and key) and variable set."""

  def __init__(self, parts: _Parts, var_list: Sequence[Variable]):
    self.objects = parts.objects
    self.rebuild = parts.rebuild
    self.differentiable = [
      jnp.issubdtype(v.dtype, jnp.inexact) for v in var_list
    ]
    self.extras: list[Variable] = []  # Read, but not in var_list.
    self.used: list[bool] = []
    self.loss_shape = None  # Known once traced.
    self.function = None  # (diff, fixed, leaves, grad_loss) -> used grads.
    self.compiled = None  # Its jit.
    self.fused = None  # A caller's jit of the gradients and its update.
    self.eager = False

  def _split_vars(self, var_list):
    """``(differentiated, read-only)`` Variables."""
    diff = [v for v, d in zip(var_list, self.differentiable) if d]
    fixed = [v for v, d in zip(var_list, self.differentiable) if not d]
    return diff, fixed + self.extras

  def _loss(self, var_list, diff, fixed, leaves, unknown: str):
    """``loss()`` reading ``diff`` and ``fixed`` as the Variables' values.

    Args:
      var_list: the Variables to differentiate.
      diff: values of its floating-point Variables (tracers in a trace).
      fixed: values of its others, then of :attr:`extras`.
      leaves: the array inputs of the loss' names.
      unknown: what a read of another Variable does: ``"add"`` it to
        :attr:`extras` (and read its value), ``"read"`` its value, or
        ``"raise"`` :class:`_UnknownRead`.

    Returns:
      The loss as an array.
    """
    diff_vars, fixed_vars = self._split_vars(var_list)
    by_id = {v._unique_id: x for v, x in zip(diff_vars, diff)}
    by_id.update((v._unique_id, x) for v, x in zip(fixed_vars, fixed))

    def read(var):
      x = by_id.get(var._unique_id)
      if x is not None:
        return x
      if unknown == "raise":
        raise _UnknownRead(var.name)
      if unknown == "add":
        self.extras.append(var)
        by_id[var._unique_id] = var._value
      return var._value

    with _reading(read):
      out = self.rebuild(iter(leaves))()
    if isinstance(out, Variable):
      out = out.value
    return jnp.asarray(out)

  def _inputs(self, var_list):
    diff_vars, fixed_vars = self._split_vars(var_list)
    return (
      [v._value for v in diff_vars],
      [v._value for v in fixed_vars],
    )

  def build(self, var_list, leaves) -> None:
    """Traces the loss, finds the Variables it reads, compiles the gradient."""
    diff, fixed = self._inputs(var_list)
    try:
      jaxpr = jax.make_jaxpr(
        lambda d, arrays: self._loss(var_list, d, fixed, arrays, "add")
      )(diff, leaves)
    except _CONCRETE_ERRORS:
      self.eager = True
      return
    self.loss_shape = jaxpr.out_avals[0].shape
    # A Variable whose value no equation uses gets TF's None gradient.
    referenced = {id(x) for eqn in jaxpr.jaxpr.eqns for x in eqn.invars}
    referenced |= {id(x) for x in jaxpr.jaxpr.outvars}
    used = iter([id(x) in referenced for x in jaxpr.jaxpr.invars[: len(diff)]])
    self.used = [next(used) if d else False for d in self.differentiable]
    keep = [u for u, d in zip(self.used, self.differentiable) if d]

    def gradients(diff, fixed, leaves, grad_loss):
      out, vjp = jax.vjp(
        lambda d: self._loss(var_list, d, fixed, leaves, "raise"), diff
      )
      (grads,) = vjp(_cotangent(out, grad_loss))
      return [g for g, k in zip(grads, keep) if k]

    self.function = gradients
    self.compiled = jax.jit(gradients)

  def inputs(self, var_list, leaves, grad_loss) -> tuple:
    """The arguments of :attr:`function` at this call.

    Raises:
      ValueError: ``grad_loss`` does not broadcast to the loss' shape
        (checked here, before the caller's step creates any slot).
    """
    if grad_loss is not None and self.loss_shape is not None:
      try:
        fits = jnp.broadcast_shapes(grad_loss.shape, self.loss_shape)
      except ValueError:
        fits = None
      if fits != self.loss_shape:
        raise ValueError(
          f"grad_loss has shape {grad_loss.shape}, which does not broadcast "
          f"to the loss' shape {self.loss_shape}."
        )
    diff, fixed = self._inputs(var_list)
    return diff, fixed, list(leaves), grad_loss

  def gradients(self, var_list, leaves, grad_loss) -> list[jax.Array | None]:
    if self.eager:
      return self._eager(var_list, leaves, grad_loss)
    compiled = self.compiled
    assert compiled is not None  # Built unless eager.
    grads = iter(compiled(*self.inputs(var_list, leaves, grad_loss)))
    return [next(grads) if u else None for u in self.used]

  def _eager(self, var_list, leaves, grad_loss):
    """``jax.vjp`` at every call; a Variable the loss never reads gets None."""
    diff, fixed = self._inputs(var_list)
    diff_vars, _ = self._split_vars(var_list)
    read = set()

    def loss_of(d):
      # Record which of var_list's Variables the loss reads.
      values = {v._unique_id: x for v, x in zip(diff_vars, d)}

      def recording(var):
        read.add(var._unique_id)
        return values.get(var._unique_id, var._value)

      with _reading(recording):
        out = self.rebuild(iter(leaves))()
      return jnp.asarray(out.value if isinstance(out, Variable) else out)

    del fixed
    out, vjp = jax.vjp(loss_of, diff)
    grads = iter(vjp(_cotangent(out, grad_loss))[0])
    return [
      (g if v._unique_id in read else None) if d else None
      for v, d, g in (
        (v, d, next(grads) if d else None)
        for v, d in zip(var_list, self.differentiable)
      )
    ]


def _cotangent(out: jax.Array, grad_loss) -> jax.Array:
  """TF's ``output_gradients``: ones (a sum) unless ``grad_loss`` is given."""
  if grad_loss is None:
    return jnp.ones_like(out)
  return jnp.broadcast_to(jnp.asarray(grad_loss, out.dtype), out.shape)


class GradientCache:
  """Compiled gradients of zero-argument losses; the least recently used go.

  Args:
    maxsize: how many (loss, variable set) entries to keep.
  """

  _RETRACE_WARNING = 5  # Traces of one code before the warning.

  def __init__(self, maxsize: int = 16):
    self._entries: collections.OrderedDict = collections.OrderedDict()
    self._maxsize = maxsize
    self._lock = threading.Lock()
    self._traces_by_code: collections.Counter = collections.Counter()
    self.traces = 0  # Cache misses, for tests and diagnostics.

  def clear(self) -> None:
    """Drops every compiled gradient."""
    with self._lock:
      self._entries.clear()

  def gradients(
    self, loss: Callable[[], Any], var_list: Sequence[Variable], grad_loss=None
  ) -> list[jax.Array | None]:
    """The gradients of ``loss()`` with respect to ``var_list``.

    Args:
      loss: a zero-argument callable.
      var_list: the Variables to differentiate.
      grad_loss: the cotangent of the loss (ones by default).

    Returns:
      One gradient per Variable; ``None`` for a Variable the loss does not
      use or that is not floating-point (TF's ``None`` gradient).
    """
    return self.run(
      loss,
      var_list,
      grad_loss,
      lambda entry, leaves, grad_loss: entry.gradients(
        var_list, leaves, grad_loss
      ),
    )

  def run(
    self,
    loss: Callable[[], Any],
    var_list: Sequence[Variable],
    grad_loss,
    use: Callable[["_Entry", list, Any], Any],
  ) -> Any:
    """``use(entry, leaves, grad_loss)`` with the entry of this loss.

    The entry is traced at the first call with a loss and variable set; if
    ``use`` meets a Variable that the trace did not see (the loss took
    another Python path), the loss is traced again.

    Args:
      loss: a zero-argument callable.
      var_list: the Variables to differentiate.
      grad_loss: the cotangent of the loss, or ``None``.
      use: what to do with the entry (e.g. :meth:`_Entry.gradients`).

    Returns:
      What ``use`` returns.
    """
    if grad_loss is not None:
      grad_loss = jnp.asarray(grad_loss)
    for attempt in range(3):
      parts = _Parts(loss)
      key = (
        parts.key,
        tuple(v._unique_id for v in var_list),
        None if grad_loss is None else (grad_loss.shape, grad_loss.dtype),
      )
      with self._lock:
        entry = self._entries.get(key)
        if entry is not None:
          self._entries.move_to_end(key)
      if entry is None:
        entry = _Entry(parts, var_list)
        entry.eager = attempt == 2  # The loss reads other Variables each time.
        if not entry.eager:
          entry.build(var_list, parts.leaves)
        self._count_trace(loss)
        with self._lock:
          self._entries[key] = entry
          while len(self._entries) > self._maxsize:
            self._entries.popitem(last=False)
      try:
        return use(entry, parts.leaves, grad_loss)
      except _UnknownRead:
        # The loss took another Python path than in the first trace and read
        # a new Variable: trace again.
        with self._lock:
          self._entries.pop(key, None)
    raise AssertionError("unreachable")

  def _count_trace(self, loss) -> None:
    code = getattr(getattr(loss, "func", loss), "__code__", None)
    with self._lock:
      self.traces += 1
      self._traces_by_code[code] += 1
      count = self._traces_by_code[code]
    if code is not None and count == self._RETRACE_WARNING:
      warnings.warn(
        f"minimize traced the loss {getattr(loss, '__qualname__', loss)} "
        f"{count} times: something it names changes at every call (a "
        "Python number, an object or a container's structure are part "
        "of the compiled gradient's key; arrays and Variables are not), "
        "or var_list does. Keep what changes in arrays or Variables.",
        UserWarning,
        stacklevel=4,
      )
