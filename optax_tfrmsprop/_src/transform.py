r"""The functional core's tree plumbing: init, update and apply over pytrees.

:func:`rmsprop_init`, :func:`rmsprop_update` and :func:`rmsprop_apply` check
their arguments against each other and against the state, clip the gradients
(:mod:`clipping`), materialise the hyperparameters per leaf dtype
(:func:`numerics.hyperparams`), and run :func:`update_rules.update_leaf` on
every leaf, or the CPU kernel (:mod:`cpu_kernel`) where it computes the same
bits. Every other entry point (the optimizers of :mod:`alias`, the Keras-style
class, checkpoint interchange) goes through them; the per-leaf math itself
lives in :mod:`update_rules` only.
"""

import dataclasses
import numbers
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_tfrmsprop._src import base
from optax_tfrmsprop._src import clipping
from optax_tfrmsprop._src import cpu_kernel
from optax_tfrmsprop._src import numerics
from optax_tfrmsprop._src import sparse
from optax_tfrmsprop._src import update_rules

# The leaf dtypes TF's RMSprop updates.
_FLOAT_DTYPES = tuple(
  jnp.dtype(d)
  for d in (
    jnp.float16,
    jnp.bfloat16,
    jnp.float32,
    jnp.float64,
    jnp.complex64,
    jnp.complex128,
  )
)
_CLIP_OPTIONS = ("clipvalue", "clipnorm", "global_clipnorm")


# Argument validation.


def concrete_scalar(name: str, value: Any) -> float | None:
  """``value`` as a float when it is known now; ``None`` when traced.

  Raises:
    ValueError: ``value`` is an array of another shape than ``()``.
    TypeError: ``value`` is neither a real number nor an array.
  """
  if isinstance(value, (jax.Array, np.ndarray, np.generic)):
    if np.ndim(value) != 0:
      raise ValueError(f"{name} must be a scalar, got shape {np.shape(value)}.")
    if not jnp.issubdtype(value.dtype, jnp.number) or (
      jnp.issubdtype(value.dtype, jnp.complexfloating)
    ):
      raise TypeError(
        f"{name} must be a real number, got an array of dtype {value.dtype}."
      )
    if isinstance(value, jax.core.Tracer):
      return None
    return float(value)
  if isinstance(value, numbers.Real) and not isinstance(value, bool):
    return float(value)
  raise TypeError(f"{name} must be a real number, got {name}={value!r}.")


def check_range(
  name: str,
  value: Any,
  low: float,
  high: float = np.inf,
  *,
  low_inclusive: bool = True,
) -> None:
  """Raises a ValueError naming ``name`` if ``value`` is out of the range.

  Args:
    name: the argument's name.
    value: its value (see :func:`concrete_scalar`; traced values pass).
    low: the lower bound.
    high: the upper bound (inclusive).
    low_inclusive: whether ``low`` itself is allowed.
  """
  x = concrete_scalar(name, value)
  if x is None:
    return
  too_low = x < low if low_inclusive else x <= low
  if too_low or x > high or np.isnan(x):
    bracket = "[" if low_inclusive else "("
    upper = "inf)" if high == np.inf else f"{high}]"
    raise ValueError(
      f"{name} must be in {bracket}{low}, {upper}, got {name}={value!r}."
    )


def validate_hyperparams(
  *,
  learning_rate,
  rho,
  momentum,
  epsilon,
  decay,
  clipvalue,
  clipnorm,
  global_clipnorm,
) -> None:
  """Raises an exception naming the first invalid hyperparameter.

  Numbers must be real scalars (an array must have shape ``()``; a string
  raises): ``learning_rate``, ``epsilon`` and ``decay`` non-negative, ``rho``
  and ``momentum`` in [0, 1], the clipping bounds non-negative (TF's own
  check), and ``clipnorm`` not together with ``global_clipnorm``.
  ``learning_rate`` may be a schedule (checked when called: it must return a
  scalar). Values known only at trace time (under ``jit`` or
  ``inject_hyperparams``) are checked for shape only.

  Raises:
    ValueError: a value out of range or of the wrong shape.
    TypeError: a value that is not a number.
  """
  if not callable(learning_rate):
    check_range("learning_rate", learning_rate, 0.0)
  check_range("rho", rho, 0.0, 1.0)
  check_range("momentum", momentum, 0.0, 1.0)
  check_range("epsilon", epsilon, 0.0)
  check_range("decay", decay, 0.0)
  for name, value in zip(_CLIP_OPTIONS, (clipvalue, clipnorm, global_clipnorm)):
    if value is not None:
      check_range(name, value, 0.0)
  if clipnorm is not None and global_clipnorm is not None:
    raise ValueError(
      "Cannot accept both clipnorm and global_clipnorm, got "
      f"clipnorm={clipnorm!r}, global_clipnorm={global_clipnorm!r}."
    )


@dataclasses.dataclass(frozen=True)
class UpdateConfig:
  """The arguments of one :func:`rmsprop_update`, validated once.

  The optimizers of :mod:`alias` build one at construction and step with it;
  :func:`rmsprop_update` and :func:`rmsprop_apply` build one per call. The
  attributes are those arguments (see :func:`rmsprop_update`).
  """

  learning_rate: Any
  rho: Any
  momentum: Any
  epsilon: Any
  decay: Any
  clipvalue: Any
  clipnorm: Any
  global_clipnorm: Any
  rounding: base.Rounding
  backend: cpu_kernel.Backend
  flavor: base.Flavor | None

  def __post_init__(self):
    validate_hyperparams(
      learning_rate=self.learning_rate,
      rho=self.rho,
      momentum=self.momentum,
      epsilon=self.epsilon,
      decay=self.decay,
      clipvalue=self.clipvalue,
      clipnorm=self.clipnorm,
      global_clipnorm=self.global_clipnorm,
    )
    numerics.rounder(self.rounding)  # Validates the name.
    cpu_kernel.check_backend(self.backend)
    if self.flavor is not None:
      base.semantics(self.flavor)

  def options(self) -> dict[str, Any]:
    """The optional processing asked for: ``decay`` and clipping."""
    given = {
      name: getattr(self, name)
      for name in _CLIP_OPTIONS
      if getattr(self, name) is not None
    }
    if numerics.is_tensor(self.decay) or self.decay != 0:
      given = {"decay": self.decay, **given}
    return given


def check_param_dtype(where: str, dtype) -> None:
  """Raises a TypeError unless ``dtype`` is one TF's RMSprop updates.

  Args:
    where: the leaf, for the message.
    dtype: its dtype.
  """
  dtype = jnp.dtype(dtype)
  if dtype in _FLOAT_DTYPES:
    return
  raise TypeError(
    f"The parameter at {where} has dtype {dtype}: RMSprop updates only "
    "float16, bfloat16, float32, float64, complex64 and complex128 "
    "parameters (TF raises for an "
    "integer variable too). Leave it out of the tree, or mask it with "
    "optax.masked."
  )


def _check_slots_and_params(state: base.RMSpropState, params) -> None:
  """Raises a ValueError naming the first slot or param unlike its ``ms``.

  TF's variable and its slots share shape and dtype; both backends update
  them leaf by leaf in ``ms``'s layout (the CPU kernel in place), so a
  mismatch must stop here rather than reach the kernel.
  """
  ms_def = jax.tree.structure(state.ms)
  ms_leaves = jax.tree_util.tree_leaves_with_path(state.ms)
  trees = [
    (f"state.{name}", getattr(state, name))
    for name in ("mg", "mom")
    if getattr(state, name) is not None
  ]
  if params is not None:
    trees.append(("params", params))
  for name, tree in trees:
    if jax.tree.structure(tree) != ms_def:
      raise ValueError(
        f"{name} does not match the optimizer state's structure.\n"
        f"  {name}: {jax.tree.structure(tree)}\n  state.ms: {ms_def}"
      )
    for (path, ms), x in zip(ms_leaves, jax.tree.leaves(tree)):
      if jnp.shape(x) != ms.shape or jnp.result_type(x) != ms.dtype:
        raise ValueError(
          f"{name} at {base.tree_path(path)} has shape {jnp.shape(x)} and "
          f"dtype {jnp.result_type(x)}, but state.ms there has shape "
          f"{ms.shape} and dtype {ms.dtype}."
        )


def _check_state(
  state: base.RMSpropState, semantics: base.Semantics, params
) -> None:
  """Raises when the state or ``params`` are not what rmsprop_init builds.

  A TypeError for leaves of a dtype TF's RMSprop does not update, a
  ValueError for the rest (count, slots and params unlike ``ms``, TF1's
  ``mom``).
  """
  name = type(state).__name__
  if jnp.shape(state.count) != () or not jnp.issubdtype(
    jnp.result_type(state.count), jnp.integer
  ):
    raise ValueError(
      f"The {name}'s count must be an integer scalar, got shape "
      f"{jnp.shape(state.count)} and dtype {jnp.result_type(state.count)}."
    )
  for path, ms in jax.tree_util.tree_leaves_with_path(state.ms):
    check_param_dtype(base.tree_path(path), jnp.result_type(ms))
  _check_slots_and_params(state, params)
  if state.mom is None and semantics.always_momentum:
    raise ValueError(
      f"The {name} has no mom slot, but {semantics.optimizer} always has "
      f"one: build the state with rmsprop_init(params, "
      f"flavor={semantics.flavor!r})."
    )


def _check_config(
  config: UpdateConfig, state: base.RMSpropState, semantics: base.Semantics
) -> None:
  """Raises a ValueError if the arguments ask what the state's TF lacks.

  ``decay`` and clipping exist only where ``semantics.options`` lists them;
  a nonzero momentum needs the ``mom`` slot (TF's momentum path).
  """
  for option, value in config.options().items():
    if option not in semantics.options:
      having = [
        s.flavor for s in base.SEMANTICS.values() if option in s.options
      ]
      raise ValueError(
        f"{option}={value!r}: {semantics.optimizer} has no {option} (the "
        f"state is a {type(state).__name__}, of flavor "
        f"{semantics.flavor!r}); only the flavors {having} have it."
      )
  if state.mom is None:
    momentum = concrete_scalar("momentum", config.momentum)
    if momentum is not None and momentum != 0:
      raise ValueError(
        f"momentum={config.momentum!r} needs the state's mom slot (TF's "
        "momentum path), but the state has none: build it with "
        f"rmsprop_init(params, momentum={config.momentum!r}) (or "
        "use_momentum=True), or use optax_tfrmsprop.rmsprop(..., "
        "momentum=...), whose init does."
      )


def _check_global_clipnorm_dtypes(
  config: UpdateConfig, state: base.RMSpropState, semantics: base.Semantics
) -> None:
  """Raises a TypeError where ``tf.clip_by_global_norm`` does.

  TF stacks the per-gradient norms into one tensor, which fails when the
  gradients have several dtypes (a TypeError in ``tf.function``, an
  InvalidArgumentError eagerly). The gradients have their slots' dtypes
  (:func:`_check_matches`), so the slots say it.
  """
  if config.global_clipnorm is None:
    return
  first_of = {}
  for path, ms in jax.tree_util.tree_leaves_with_path(state.ms):
    first_of.setdefault(jnp.dtype(ms.dtype), path)
  if len(first_of) > 1:
    examples = ", ".join(
      f"{base.tree_path(path)} is {dtype}" for dtype, path in first_of.items()
    )
    raise TypeError(
      f"global_clipnorm={config.global_clipnorm!r}: the gradients have "
      f"several dtypes ({examples}), and {semantics.optimizer} raises then "
      "(tf.clip_by_global_norm stacks their norms into one tensor). Give "
      "every parameter one dtype, or clip each dtype's gradients separately."
    )


def _check_complex(
  config: UpdateConfig,
  state: base.RMSpropState,
  semantics: base.Semantics,
  grads,
) -> None:
  """Raises where TF refuses a complex leaf, naming the argument.

  TF's clipping ops (``clip_by_value``'s minimum, ``clip_by_norm``'s
  comparison, ``clip_by_global_norm``'s ``l2_loss``) have no complex kernels,
  and Keras 3 refuses complex ``IndexedSlices``
  (``Semantics.complex_sparse``): TypeErrors, as TF raises them. Keras 3's
  complex128 updates, which it computes mostly in complex64, are refused
  (``Semantics.complex128_exact``). The CPU kernel declines complex leaves
  (:func:`cpu_kernel.check_dtype`).
  """
  complex_leaves = [
    (path, ms.dtype)
    for path, ms in jax.tree_util.tree_leaves_with_path(state.ms)
    if numerics.is_complex(ms.dtype)
  ]
  if not complex_leaves:
    return
  path, dtype = complex_leaves[0]
  cpu_kernel.check_dtype(config.backend, dtype, base.tree_path(path))
  for option in _CLIP_OPTIONS:
    value = getattr(config, option)
    if value is not None:
      raise TypeError(
        f"{option}={value!r}: TF's clipping ops have no complex kernels "
        f"(the gradient at {base.tree_path(path)} has dtype {dtype}), so "
        f"{semantics.optimizer} raises a TypeError; clip complex gradients "
        "before the update or leave them out of the clipped tree."
      )
  for path, ms in jax.tree_util.tree_leaves_with_path(state.ms):
    if ms.dtype == jnp.complex128 and not semantics.complex128_exact:
      raise TypeError(
        f"The parameter at {base.tree_path(path)} has dtype complex128: "
        f"{semantics.optimizer} computes most of its update in complex64 "
        "(Keras 3 promotes complex128 with a Python float to complex64), "
        "which is not reproduced here. Use complex64 parameters, or "
        "optax_tfrmsprop.rmsprop / tf1_rmsprop."
      )
  if semantics.complex_sparse:
    return
  for path, g in jax.tree_util.tree_leaves_with_path(
    grads, is_leaf=sparse.is_indexed_slices
  ):
    if isinstance(g, sparse.IndexedSlices) and numerics.is_complex(
      jnp.result_type(g.values)
    ):
      raise TypeError(
        f"The gradient at {base.tree_path(path)} is an IndexedSlices of dtype "
        f"{jnp.result_type(g.values)}: {semantics.optimizer} raises a "
        "TypeError for complex sparse gradients (tf.math.is_nan has no "
        "complex kernel); pass its dense gradient (to_dense())."
      )


def _check_matches(grads, state: base.RMSpropState) -> None:
  """Raises a ValueError naming the first gradient unlike its slot.

  An :class:`~optax_tfrmsprop.IndexedSlices` stands where the params have an
  array.
  """
  grads_def = jax.tree.structure(grads, is_leaf=sparse.is_indexed_slices)
  slots_def = jax.tree.structure(state.ms)
  if grads_def != slots_def:
    raise ValueError(
      "The gradient tree does not match the optimizer state (built by init "
      f"from the params).\n  gradients: {grads_def}\n  state:     {slots_def}"
    )
  ms_leaves = jax.tree.leaves(state.ms)
  for (path, g), ms in zip(
    jax.tree_util.tree_leaves_with_path(
      grads, is_leaf=sparse.is_indexed_slices
    ),
    ms_leaves,
  ):
    where = base.tree_path(path)
    if isinstance(g, sparse.IndexedSlices):
      sparse.check_sparse_grad(where, g, ms)
    elif jnp.shape(g) != ms.shape or jnp.result_type(g) != ms.dtype:
      raise ValueError(
        f"Gradient at {where} has shape "
        f"{jnp.shape(g)} and dtype {jnp.result_type(g)}, but its parameter "
        f"(and slot) has shape {ms.shape} and dtype {ms.dtype}."
      )


def rmsprop_init(
  params: optax.Params,
  *,
  centered: bool = False,
  use_momentum: bool | None = None,
  flavor: base.Flavor = "keras_legacy",
  momentum: jax.typing.ArrayLike | None = None,
) -> base.RMSpropState:
  """Creates slots shaped and typed like ``params``, as TF does.

  Which slots exist fixes TF's path for the life of the state: ``mom``
  present selects TF's momentum kernels, ``mg`` present means centered.
  Passing the ``momentum`` the updates will use (instead of
  ``use_momentum``) applies TF's rule (:meth:`base.Semantics.uses_momentum`),
  so the state cannot disagree with it.

  Args:
    params: the parameter tree (float16, bfloat16, float32, float64,
      complex64 or complex128 leaves). ``None`` and ``optax.MaskedNode``
      leaves get no slot.
    centered: create the ``mg`` slot (TF's ``centered=True``).
    use_momentum: create the ``mom`` slot (TF's momentum path; TF1 always
      has it). Default: as ``momentum`` says, else no.
    flavor: the RMSprop generation (:data:`Flavor`); it decides the state's
      class and the initial ``ms`` (ones in TF1).
    momentum: the momentum the updates will use; creates the ``mom`` slot
      when TF would (> 0, or an array).

  Returns:
    The flavor's :class:`RMSpropState` with ``count == 0``.

  Raises:
    TypeError: a parameter is not of a float dtype TF's RMSprop updates.
    ValueError: ``use_momentum`` contradicts ``momentum``, or an invalid
      ``flavor`` or ``momentum``.

  Example:
    >>> import jax.numpy as jnp
    >>> state = rmsprop_init({"w": jnp.ones(3)}, momentum=0.9)
    >>> state.mom["w"], state.mg
    (Array([0., 0., 0.], dtype=float32), None)
  """
  semantics = base.semantics(flavor)
  if momentum is not None:
    check_range("momentum", momentum, 0.0, 1.0)
    takes_path = semantics.uses_momentum(momentum)
    if use_momentum is not None and bool(use_momentum) != takes_path:
      raise ValueError(
        f"use_momentum={use_momentum!r} contradicts momentum={momentum!r}, "
        f"with which {semantics.optimizer} "
        f"{'takes' if takes_path else 'does not take'} its momentum path; "
        "pass only momentum."
      )
    use_momentum = takes_path
  for path, p in jax.tree_util.tree_leaves_with_path(params):
    check_param_dtype(
      base.tree_path(path),
      p.dtype if hasattr(p, "dtype") else jnp.result_type(p),
    )
  # Strongly typed slots, so a weakly typed param (a Python scalar) cannot make
  # the state's type change after the first update and force a retrace. The
  # barrier keeps them variables when init and update share a jit: XLA would
  # fold 0 + x to x, which is -0 where TF's sum is +0.
  filled = lambda value: jax.lax.optimization_barrier(
    jax.tree.map(lambda p: jnp.full_like(p, value, dtype=p.dtype), params)
  )
  return base.STATE_CLASSES[flavor](
    count=jnp.zeros([], jnp.int32),
    ms=filled(semantics.initial_ms),
    mg=filled(0) if centered else None,
    mom=filled(0) if use_momentum or semantics.always_momentum else None,
  )


class _HyperparamsByDtype:
  """:func:`numerics.hyperparams` of one step, computed once per leaf dtype."""

  def __init__(
    self, semantics: base.Semantics, config: UpdateConfig, count: chex.Array
  ):
    self._semantics = semantics
    self._config = config
    self._count = count
    self._by_dtype = {}

  def __call__(self, dtype) -> base.Hyperparams:
    dtype = jnp.dtype(dtype)
    if dtype not in self._by_dtype:
      c = self._config
      self._by_dtype[dtype] = numerics.hyperparams(
        self._semantics,
        dtype,
        count=self._count,
        learning_rate=c.learning_rate,
        rho=c.rho,
        momentum=c.momentum,
        epsilon=c.epsilon,
        decay=c.decay,
        round_=numerics.rounder(c.rounding),
      )
    return self._by_dtype[dtype]


# Backend dispatch: the same leaves through the CPU kernel where it applies.


def _sparse_leaf(g, var, ms, mg, mom, xla_leaf, hyper, backend, *, apply):
  """TF's sparse update of one leaf; as :func:`_dense_leaves` for one leaf.

  The momentum paths (P7/P8) run in the CPU kernel where it can: it
  de-duplicates and updates the rows in one call, with TF's float32 packet
  rsqrt, which jnp cannot reach (``docs/sparse.md``).
  """
  h = hyper(ms.dtype)  # Outside both branches, as in _dense_leaves.
  if (
    mom is None
    or not cpu_kernel.handles_sparse(ms.dtype)
    or not cpu_kernel.use_kernel(backend)
  ):
    return xla_leaf(g, var, ms, mg, mom)

  def kernel():
    rows = sparse.valid_rows(jnp.asarray(g.indices), ms.shape[0])
    first, new_ms, new_mg, new_mom = cpu_kernel.sparse_update(
      g.values, rows, var, ms, mg, mom, h.operand(), apply=apply
    )
    if not apply:
      update_rows, unique = first
      first = sparse.IndexedSlices(update_rows, unique, g.dense_shape)
    return first, new_ms, new_mg, new_mom

  return jax.lax.platform_dependent(
    cpu=kernel, default=lambda: xla_leaf(g, var, ms, mg, mom)
  )


# XLA:CPU runs an elementwise loop with the minor dimension innermost: on a
# leaf whose minor dimension is tiny (the 1x1, 3x3, 7x7 windows of an OIHW
# convolution kernel) its loops are about 2x slower than on the same data in
# 1-D. The kernel's loops do not depend on the shape.
_TINY_MINOR_DIM = 8


def _runs_in_kernel(leaf, apply: bool) -> bool:
  """Whether the CPU kernel updates this dense leaf ``(g, var, ms, mg, mom)``.

  Every float32, float64 and bfloat16 leaf, except through the optax API
  without momentum and centering (P1 without ``apply``): there the kernel's
  slot pass and XLA's loops move the same 7N bytes, so the kernel takes only
  the leaves whose XLA loops are slow: for their layout (a tiny minor
  dimension), or compute-bound (bfloat16, rounded after every operation).
  """
  _, _, ms, mg, mom = leaf
  if not cpu_kernel.handles(ms.dtype):
    return False
  if apply or mg is not None or mom is not None or ms.dtype == jnp.bfloat16:
    return True
  return ms.ndim >= 2 and ms.shape[-1] < _TINY_MINOR_DIM


def _checked_donation(leaves, apply: bool) -> list[tuple[Any, ...]]:
  """``leaves`` with the arrays the kernel updates in place checked.

  See :func:`cpu_kernel.check_donated`: the params (with ``apply``) and the
  slots of the leaves the kernel runs must be donated to the jitted step, or
  XLA copies them. Checked here, where they are still the jitted function's
  arguments (inside ``platform_dependent`` they are a branch's).
  """
  in_place = [
    x
    for leaf in leaves
    if _runs_in_kernel(leaf, apply)
    for x in leaf[1:]
    if x is not None
  ]
  checked = iter(
    cpu_kernel.check_donated(
      in_place,
      "params and slot buffers" if apply else "optimizer state buffers",
    )
  )
  return [
    (leaf[0], *(None if x is None else next(checked) for x in leaf[1:]))
    if _runs_in_kernel(leaf, apply)
    else leaf
    for leaf in leaves
  ]


def _dense_leaves(leaves, xla_leaf, hyper, backend, *, apply):
  """Runs ``xla_leaf`` on every leaf, or the CPU kernel where it can.

  Args:
    leaves: ``(g, var, ms, mg, mom)`` per leaf; ``var`` is ``None`` unless
      ``apply``.
    xla_leaf: the jnp update of one leaf (:func:`update_rules.update_leaf`).
    hyper: the per-dtype hyperparameters.
    backend: see :mod:`cpu_kernel`.
    apply: return new variables (``var + update``) instead of updates.

  Returns:
    ``(update or new var, ms, mg, mom)`` per leaf.
  """

  def xla():
    return [xla_leaf(*leaf) for leaf in leaves]

  if not cpu_kernel.use_kernel(backend):
    return xla()
  leaves = _checked_donation(leaves, apply)
  # Materialise the hyperparameters outside both branches: cached inside one,
  # they would leak that branch's tracers into the other.
  for leaf in leaves:
    hyper(leaf[2].dtype)

  def kernel():
    results: list[Any] = [None] * len(leaves)
    by_dtype = {}
    for i, leaf in enumerate(leaves):
      if _runs_in_kernel(leaf, apply):
        by_dtype.setdefault(jnp.dtype(leaf[2].dtype), []).append(i)
      else:  # float16, complex and P1's well-shaped leaves stay on XLA.
        results[i] = xla_leaf(*leaf)
    for dtype, indices in by_dtype.items():
      _, _, _, mg, mom = leaves[indices[0]]
      out = cpu_kernel.dense_update(
        [leaves[i] for i in indices],
        hyper(dtype).operand(),
        centered=mg is not None,
        momentum=mom is not None,
        apply=apply,
      )
      for i, (first, ms, mg, mom) in zip(indices, out):
        if first is not None:  # The new variable.
          update = first
        elif mom is not None:  # P3/P4.
          update = -mom
        else:  # P1/P2: from the new slots, in the loop that applies it.
          g, h, new_ms, new_mg = update_rules.eigen_operands(
            leaves[i][0], hyper(dtype), dtype, "tf_cpu", ms, mg
          )
          update = numerics.plain(
            update_rules.plain_update(g, new_ms, new_mg, h, numerics.rounded)
          )
        results[i] = update, ms, mg, mom
    return results

  return jax.lax.platform_dependent(cpu=kernel, default=xla)


def rmsprop_update(
  grads: optax.Updates,
  state: base.RMSpropState,
  *,
  learning_rate: optax.ScalarOrSchedule = 0.001,
  rho: jax.typing.ArrayLike = 0.9,
  momentum: jax.typing.ArrayLike = 0.0,
  epsilon: jax.typing.ArrayLike = 1e-7,
  decay: jax.typing.ArrayLike = 0.0,
  clipvalue: jax.typing.ArrayLike | None = None,
  clipnorm: jax.typing.ArrayLike | None = None,
  global_clipnorm: jax.typing.ArrayLike | None = None,
  rounding: base.Rounding = "tf_cpu",
  flavor: base.Flavor | None = None,
  backend: cpu_kernel.Backend = "auto",
) -> tuple[optax.Updates, base.RMSpropState]:
  r"""One step of ``tf_keras.optimizers.legacy.RMSprop.apply_gradients``.

  The path is fixed by the state: ``state.mom`` present selects TF's kernels
  (``ResourceApply[Centered]RMSProp``), absent the Python graph ops;
  ``state.mg`` present means centered. With :math:`c = 1 - \rho` computed in
  the leaf dtype, :math:`\eta_t` the learning rate at the step count before the
  increment (after ``decay``: :math:`\eta / (1 + d \cdot t)`), and every
  operation rounded to the leaf dtype in the order written:

  .. math::

    \text{no momentum:}\quad & s \leftarrow (\rho s) + (c (g g)),\;
      [\bar g \leftarrow (\rho \bar g) + (c g)],\;
      u = -\frac{\eta_t g}{\sqrt{s\,[-\,\bar g \bar g]} + \epsilon} \\
    \text{momentum:}\quad & s \leftarrow s + ((g g) - s) c,\;
      [\bar g \leftarrow \bar g + (g - \bar g) c],\;
      m \leftarrow (m \mu) + \frac{g \eta_t}{\sqrt{(s\,[-\,\bar g \bar g]) +
      \epsilon}},\; u = -m

  Gradients are first clipped by value, then per-tensor norm, then global norm.

  ``flavor="tf1"`` is TF1's ``RMSPropOptimizer``: the momentum equations
  above (its state always has ``mom``), with every hyperparameter, epsilon
  included, rounded through float32 and a zero epsilon kept.
  ``flavor="keras3"`` is Keras 3's ``RMSprop``, one formula on every path,
  with :math:`c = 1 - \rho` computed in double for a Python ``rho``:

  .. math::

    s \leftarrow (\rho s) + (c (g g)),\;
    [\bar g \leftarrow (\rho \bar g) + (c g)],\;
    i = \frac{\eta_t g}{\sqrt{(s\,[-\,\bar g \bar g]) + \epsilon}},\;
    [m \leftarrow (\mu m) + i],\; u = -i \text{ or } -m

  A gradient leaf may be an :class:`~optax_tfrmsprop.IndexedSlices`; it takes
  TF's sparse paths (de-duplication after clipping, then P5-P8, see
  ``_src/update_rules.py``) and its update is an ``IndexedSlices`` of row
  increments for :func:`~optax_tfrmsprop.apply_updates` (Keras 3 densifies it
  instead).

  Args:
    grads: gradients, a tree matching the params given to :func:`rmsprop_init`
      (an ``IndexedSlices`` may stand where the params have an array).
    state: the current state.
    learning_rate: a scalar, or a schedule called with the step count cast to
      each leaf's dtype (TF's ``iterations``, before the increment).
    rho: discounting factor of the moving averages.
    momentum: the momentum coefficient. It acts only through ``state.mom``:
      a nonzero value on a state without that slot raises (a traced value
      cannot be checked; TF ignores it then too, its path being fixed when
      the slots are made).
    epsilon: added to the denominator; ``0`` means Keras' ``1e-7``.
    decay: Keras' inverse-time learning-rate decay (Keras legacy flavor
      only, as ``clipvalue``, ``clipnorm`` and ``global_clipnorm``).
    clipvalue: clip each element to ``[-clipvalue, clipvalue]``.
    clipnorm: clip each gradient to this L2 norm.
    global_clipnorm: clip all gradients together to this global L2 norm.
    rounding: the TF evaluation to reproduce: ``"tf_cpu"`` or ``"tf_xla"``.
    flavor: the RMSprop generation: ``"keras_legacy"``, ``"tf1"`` or
      ``"keras3"`` (see :data:`Flavor`). The state's class decides it (see
      :func:`rmsprop_init`); if given, it must match.
    backend: ``"auto"``, ``"ffi"`` (the single-pass CPU kernel, ``"tf_cpu"``
      rounding only) or ``"xla"``; see ``docs/cpu_kernel.md``. Both give the
      same bits.

  Returns:
    ``(updates, new_state)``; ``optax_tfrmsprop.apply_updates(params,
    updates)`` gives TF's new variables (``optax.apply_updates`` too when no
    leaf is sparse).

  Raises:
    ValueError: an argument out of range or contradicting the state (a
      ``momentum`` without the ``mom`` slot, ``decay`` or clipping for a
      flavor without them, gradients not shaped like the slots, a schedule
      returning a non-scalar), naming it; nothing is computed.
    TypeError: a hyperparameter that is not a number, or a state that is not
      an :class:`RMSpropState` of float leaves.

  Example:
    >>> import jax.numpy as jnp
    >>> state = rmsprop_init({"w": jnp.array([1.0, -2.0])})
    >>> grads = {"w": jnp.array([0.5, 0.5])}
    >>> updates, state = rmsprop_update(grads, state, learning_rate=0.1)
    >>> updates["w"], state.count
    (Array([-0.31622753, -0.31622753], dtype=float32), Array(1, dtype=int32))
  """
  config = UpdateConfig(
    learning_rate=learning_rate,
    rho=rho,
    momentum=momentum,
    epsilon=epsilon,
    decay=decay,
    clipvalue=clipvalue,
    clipnorm=clipnorm,
    global_clipnorm=global_clipnorm,
    rounding=rounding,
    backend=backend,
    flavor=flavor,
  )
  return step(grads, state, config)


def rmsprop_apply(
  params: optax.Params,
  grads: optax.Updates,
  state: base.RMSpropState,
  *,
  learning_rate: optax.ScalarOrSchedule = 0.001,
  rho: jax.typing.ArrayLike = 0.9,
  momentum: jax.typing.ArrayLike = 0.0,
  epsilon: jax.typing.ArrayLike = 1e-7,
  decay: jax.typing.ArrayLike = 0.0,
  clipvalue: jax.typing.ArrayLike | None = None,
  clipnorm: jax.typing.ArrayLike | None = None,
  global_clipnorm: jax.typing.ArrayLike | None = None,
  rounding: base.Rounding = "tf_cpu",
  flavor: base.Flavor | None = None,
  backend: cpu_kernel.Backend = "auto",
) -> tuple[optax.Params, base.RMSpropState]:
  """:func:`rmsprop_update` and ``optax.apply_updates`` as one fused step.

  The result is bit-identical to the two-step form. With the CPU kernel, each
  element of params, gradient and slots is read once and written once, in
  place when ``params`` and ``state`` are donated to the jitted step, which is
  the memory-bandwidth limit of the update (the two-step form makes another
  pass over params and updates).

  Args:
    params: the parameters; they must have the slots' shapes and dtypes.
    grads: their gradients.
    state: the current state.
    learning_rate: as in :func:`rmsprop_update`.
    rho: as in :func:`rmsprop_update`.
    momentum: as in :func:`rmsprop_update`.
    epsilon: as in :func:`rmsprop_update`.
    decay: as in :func:`rmsprop_update`.
    clipvalue: as in :func:`rmsprop_update`.
    clipnorm: as in :func:`rmsprop_update`.
    global_clipnorm: as in :func:`rmsprop_update`.
    rounding: as in :func:`rmsprop_update`.
    flavor: as in :func:`rmsprop_update`.
    backend: as in :func:`rmsprop_update`.

  Returns:
    ``(new_params, new_state)``, TF's variables and slots after the step.

  Raises:
    ValueError: as :func:`rmsprop_update`, and when ``params`` are not shaped
      and typed like the state's slots.
    TypeError: as :func:`rmsprop_update`.

  Example:
    >>> import jax.numpy as jnp
    >>> params = jnp.array([10.0])
    >>> state = rmsprop_init(params, momentum=0.9)
    >>> params, state = rmsprop_apply(params, params, state, learning_rate=0.1,
    ...                               momentum=0.9)
    >>> params
    Array([9.683772], dtype=float32)
  """
  config = UpdateConfig(
    learning_rate=learning_rate,
    rho=rho,
    momentum=momentum,
    epsilon=epsilon,
    decay=decay,
    clipvalue=clipvalue,
    clipnorm=clipnorm,
    global_clipnorm=global_clipnorm,
    rounding=rounding,
    backend=backend,
    flavor=flavor,
  )
  return step(grads, state, config, params)


def step(
  grads: optax.Updates,
  state: base.RMSpropState,
  config: UpdateConfig,
  params: optax.Params | None = None,
):
  """:func:`rmsprop_update`, or :func:`rmsprop_apply` when params are given.

  Args:
    grads: the gradients.
    state: the current state.
    config: the (validated) arguments.
    params: the parameters, for the fused step; ``None`` for updates.

  Returns:
    ``(updates or new params, new state)``.
  """
  if not isinstance(state, base.RMSpropState):
    raise TypeError(
      "state must be an RMSpropState (from rmsprop_init or an optimizer's "
      f"init), got {type(state).__name__}."
    )
  if config.flavor is not None and config.flavor != state.flavor:
    raise ValueError(
      f"flavor={config.flavor!r} does not match the state, a "
      f"{type(state).__name__} of flavor {state.flavor!r}: build the "
      f"state with rmsprop_init(..., flavor={config.flavor!r})."
    )
  semantics = base.semantics(state.flavor)
  _check_state(state, semantics, params)
  _check_config(config, state, semantics)
  _check_matches(grads, state)
  _check_complex(config, state, semantics, grads)
  _check_global_clipnorm_dtypes(config, state, semantics)
  apply = params is not None

  given, treedef = jax.tree.flatten(grads, is_leaf=sparse.is_indexed_slices)
  # Gradients as arrays of their slot's dtype, as TF converts them: a Python
  # number, or numpy float64 values that jax would hold as float32.
  leaves: list[Any] = [
    sparse.IndexedSlices(
      jnp.asarray(g.values, ms.dtype), g.indices, g.dense_shape
    )
    if isinstance(g, sparse.IndexedSlices)
    else jnp.asarray(g, ms.dtype)
    for g, ms in zip(given, jax.tree.leaves(state.ms))
  ]
  # TF clips the rows of a sparse gradient before de-duplicating them.
  is_sparse = [isinstance(g, sparse.IndexedSlices) for g in leaves]
  clipped = clipping.clip_gradients(
    [g.values if s else g for g, s in zip(leaves, is_sparse)],
    clipvalue=config.clipvalue,
    clipnorm=config.clipnorm,
    global_clipnorm=config.global_clipnorm,
    rounding=config.rounding,
  )
  leaves = [
    sparse.IndexedSlices(v, g.indices, g.dense_shape) if s else v
    for g, v, s in zip(leaves, clipped, is_sparse)
  ]
  hyper = _HyperparamsByDtype(semantics, config, state.count)

  def xla_leaf(g, var, ms, mg, mom):
    update, ms, mg, mom = update_rules.update_leaf(
      g,
      ms,
      mg,
      mom,
      hyper(ms.dtype),
      semantics=semantics,
      rounding=config.rounding,
    )
    return (sparse.apply_updates(var, update) if apply else update), ms, mg, mom

  absent = [None] * len(leaves)
  ms_leaves = jax.tree.leaves(state.ms)
  mg_leaves = absent if state.mg is None else jax.tree.leaves(state.mg)
  mom_leaves = absent if state.mom is None else jax.tree.leaves(state.mom)
  var_leaves = treedef.flatten_up_to(params) if apply else absent
  per_leaf = list(zip(leaves, var_leaves, ms_leaves, mg_leaves, mom_leaves))
  if config.rounding != "tf_cpu" or semantics.update_rule != "tf_kernels":
    # The CPU kernel implements TF's kernels rule in "tf_cpu" rounding only.
    results = [xla_leaf(*leaf) for leaf in per_leaf]
  else:
    results = [
      _sparse_leaf(*leaf, xla_leaf, hyper, config.backend, apply=apply)
      if s
      else None
      for leaf, s in zip(per_leaf, is_sparse)
    ]
    dense = [i for i, s in enumerate(is_sparse) if not s]
    dense_results = _dense_leaves(
      [per_leaf[i] for i in dense], xla_leaf, hyper, config.backend, apply=apply
    )
    for i, result in zip(dense, dense_results):
      results[i] = result
  updates, ms, mg, mom = map(list, zip(*results)) if results else ([],) * 4
  unflatten = treedef.unflatten
  new_state = dataclasses.replace(
    state,
    count=jnp.asarray(optax.safe_increment(state.count)),
    ms=unflatten(ms),
    mg=None if state.mg is None else unflatten(mg),
    mom=None if state.mom is None else unflatten(mom),
  )
  return unflatten(updates), new_state
