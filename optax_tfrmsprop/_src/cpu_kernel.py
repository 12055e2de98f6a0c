"""The CPU kernel (``csrc/``) behind the dense and sparse updates, via jax.ffi.

XLA compiles an RMSprop step into several loops per leaf and rewrites its
floating-point expressions; the C++ kernel reads each gradient, variable and
slot element once, writes it once, in place, and evaluates TF's expressions in
TF's order (compiled without contraction). Its loops mirror
``update_rules.dense_leaf`` (``"tf_cpu"``) line by line; see
``docs/cpu_kernel.md``.

Backend choice (``backend=`` of :func:`~optax_tfrmsprop.rmsprop`):

* ``"auto"`` (default): the value of the ``OPTAX_TFRMSPROP_BACKEND``
  environment variable if set, else ``"ffi"`` when the kernel is built and
  ``"xla"`` (with a one-time warning on a CPU host) when it is not;
* ``"ffi"``: the kernel on CPU; an error if it is not built;
* ``"xla"``: jnp everywhere.

The same library runs TF's sparse momentum paths (P7/P8) on the rows a
gradient touches, with TF's float32 packet rsqrt (:func:`sparse_update`).

The kernel serves only CPU lowerings: the same jitted function lowers to the
jnp path on GPU and TPU (``jax.lax.platform_dependent``).
"""

import ctypes
import functools
import importlib.machinery
import os
import pathlib
import warnings
from typing import Literal, Optional

import jax
from jax.experimental import custom_partitioning as cp
import numpy as np

Backend = Literal["auto", "ffi", "xla"]
BACKENDS = ("auto", "ffi", "xla")
BACKEND_ENV_VAR = "OPTAX_TFRMSPROP_BACKEND"

# The kernel's float types and their FFI targets; other dtypes use jnp.
_TARGETS = {
    np.dtype(np.float32): ("tfrmsprop_dense_f32", "TfRmspropDenseF32"),
    np.dtype(np.float64): ("tfrmsprop_dense_f64", "TfRmspropDenseF64"),
}
# The sparse momentum paths (P7/P8), the same two float types.
_SPARSE_TARGETS = {
    np.dtype(np.float32): ("tfrmsprop_sparse_f32", "TfRmspropSparseF32"),
    np.dtype(np.float64): ("tfrmsprop_sparse_f64", "TfRmspropSparseF64"),
}


def _library_path() -> Optional[pathlib.Path]:
  here = pathlib.Path(__file__).parent
  for suffix in importlib.machinery.EXTENSION_SUFFIXES:
    path = here / f"_cpu_kernel{suffix}"
    if path.exists():
      return path
  return None


@functools.cache
def _library() -> ctypes.CDLL | str:
  """The loaded extension, its FFI targets registered once, or why not."""
  path = _library_path()
  if path is None:
    return "the C++ extension was not built at install time"
  try:
    library = ctypes.CDLL(str(path))
  except OSError as e:
    return f"it could not be loaded ({e})"
  for target, symbol in (*_TARGETS.values(), *_SPARSE_TARGETS.values()):
    jax.ffi.register_ffi_target(
        target, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")
  return library


def _load() -> Optional[str]:
  """Loads the kernel; returns why it is unavailable, or None on success."""
  library = _library()
  return library if isinstance(library, str) else None


def is_built() -> bool:
  """Whether the CPU kernel is built and registered with XLA.

  Returns:
    ``True`` when :func:`~optax_tfrmsprop.rmsprop` can use ``backend="ffi"``.

  Example:
    >>> import optax_tfrmsprop
    >>> isinstance(optax_tfrmsprop.cpu_kernel_is_built(), bool)
    True
  """
  return _load() is None


@functools.cache
def _warn_fallback(reason: str) -> None:
  warnings.warn(
      f"optax_tfrmsprop: the single-pass CPU kernel is unavailable ({reason}); "
      f"using the slower XLA path. Set {BACKEND_ENV_VAR}=xla to silence this.",
      RuntimeWarning, stacklevel=4)


def check_backend(backend: str) -> None:
  """Raises a ValueError unless ``backend`` is one of :data:`BACKENDS`."""
  if backend not in BACKENDS:
    raise ValueError(
        f"backend must be one of {BACKENDS}, got backend={backend!r}.")


def use_kernel(backend: Backend) -> bool:
  """Resolves ``backend`` (and the environment variable) to kernel or not.

  Args:
    backend: ``"auto"``, ``"ffi"`` or ``"xla"``.

  Returns:
    Whether CPU lowerings should call the kernel.
  """
  check_backend(backend)
  if backend == "auto":
    backend = os.environ.get(BACKEND_ENV_VAR, "auto").lower() or "auto"
    if backend not in BACKENDS:
      raise ValueError(
          f"{BACKEND_ENV_VAR} must be one of {BACKENDS}, got {backend!r}.")
  if backend == "xla":
    return False
  reason = _load()
  if backend == "ffi" and reason is not None:
    raise RuntimeError(
        f"backend='ffi' was requested but the CPU kernel is unavailable: "
        f"{reason}. Reinstall with a C++17 compiler and OpenMP, or use "
        "backend='xla'.")
  if reason is not None and jax.default_backend() == "cpu":
    _warn_fallback(reason)
  return reason is None


def handles(dtype) -> bool:
  """Whether the kernel has loops for leaves of ``dtype``."""
  return np.dtype(dtype) in _TARGETS


@functools.cache
def handles_sparse(dtype) -> bool:
  """Whether the kernel runs sparse momentum leaves (P7/P8) of ``dtype``.

  float32 needs TF's packet rsqrt, the AVX estimate ``vrsqrtps``; on CPUs
  without it (and on ARM) float32 leaves keep the jnp path and its bound.
  """
  dtype = np.dtype(dtype)
  if dtype not in _SPARSE_TARGETS or _load() is not None:
    return False
  return dtype != np.float32 or bool(_library().TfRmspropSparseF32Supported())


def _call_kernel(centered, momentum, apply, hypers, leaves):
  """One FFI call on local (unsharded) arrays; see :func:`dense_update`."""
  target = _TARGETS[np.dtype(hypers.dtype)][0]
  operands, results, aliases = [hypers], [], {}

  def add(x, *, alias):
    if alias:
      aliases[len(operands)] = len(results)
      # The result keeps its operand's type, sharding included (a mesh with
      # Explicit axes puts it in the type).
      results.append(jax.ShapeDtypeStruct(x.shape, x.dtype,
                                          sharding=jax.typeof(x).sharding))
    operands.append(x)

  for g, var, ms, mg, mom in leaves:
    add(g, alias=False)
    if apply:
      add(var, alias=True)
    for slot in (ms, mg, mom):
      if slot is not None:
        add(slot, alias=True)
  flat = jax.ffi.ffi_call(
      target, results, input_output_aliases=aliases,
      vmap_method="sequential")(
          *operands, centered=centered, momentum=momentum, apply=apply)
  flat = iter(flat)
  present = _leaf_outputs(centered, momentum, apply)
  return [tuple(next(flat) if p else None for p in present) for _ in leaves]


@functools.partial(cp.custom_partitioning, static_argnums=(0, 1, 2))
def _partitioned_call(centered, momentum, apply, hypers, leaves):
  return _call_kernel(centered, momentum, apply, hypers, leaves)


def _leaf_outputs(centered, momentum, apply):
  """Which of ``(first, ms, mg, mom)`` each leaf returns."""
  return (apply, True, centered, momentum)


def _partition(centered, momentum, apply, mesh, arg_shapes, result_shape):
  """Runs the kernel shard by shard, each leaf sharded as its slot ``ms``."""
  del result_shape
  _, leaves = arg_shapes
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  arg_shardings = (replicated, [
      tuple(None if x is None else leaf[2].sharding for x in leaf)
      for leaf in leaves
  ])
  result_shardings = [
      tuple(leaf[2].sharding if present else None
            for present in _leaf_outputs(centered, momentum, apply))
      for leaf in leaves
  ]

  def lower(hypers, local_leaves):
    return _call_kernel(centered, momentum, apply, hypers, local_leaves)

  return mesh, lower, result_shardings, arg_shardings


def _sharding_rule(centered, momentum, apply, mesh, operand_types,
                   result_types):
  """Elementwise Shardy rule: a leaf's arrays and results share its factors.

  The hyperparameter vector (factor ``h``) stays replicated; a scalar leaf
  is written as an empty entry (its arrays have no factor).
  """
  del mesh, result_types
  per_leaf_in = 2 + apply + centered + momentum
  per_leaf_out = sum(_leaf_outputs(centered, momentum, apply))
  ranks = [len(t.shape) for t in operand_types[1::per_leaf_in]]
  factors = [
      " ".join(f"k{k}d{d}" for d in range(rank))  # "" for a scalar
      for k, rank in enumerate(ranks)
  ]
  ins = ["h"] + [f for f in factors for _ in range(per_leaf_in)]
  outs = [f for f in factors for _ in range(per_leaf_out)]
  rule = ", ".join(ins) + " -> " + ", ".join(outs)
  return rule, {"need_replication_factors": ("h",)}


_partitioned_call.def_partition(
    partition=_partition, sharding_rule=_sharding_rule)


def dense_update(leaves, hypers, *, centered: bool, momentum: bool,
                 apply: bool):
  """Runs TF's dense update on ``leaves`` of one dtype in one kernel call.

  Args:
    leaves: ``(g, var, ms, mg, mom)`` per leaf, absent arrays ``None``
      (``var`` is used only with ``apply``).
    hypers: ``[lr, rho, 1 - rho, momentum, epsilon]`` in the leaves' dtype.
    centered: the ``mg`` slot is present.
    momentum: the ``mom`` slot is present (TF's kernel paths P3/P4).
    apply: update ``var`` in place instead of returning optax updates.
      Required without ``momentum``: P1/P2's update would need a buffer of its
      own, which costs more than the XLA path (docs/cpu_kernel.md).

  Returns:
    Per leaf ``(first, ms, mg, mom)``: ``first`` is the new variable with
    ``apply``, else ``None`` (the P3/P4 update is ``-mom``).
  """
  return _partitioned_call(centered, momentum, apply, hypers, leaves)


def sparse_update(values, indices, var, ms, mg, mom, hypers, *, apply: bool):
  """Runs tf_keras' de-duplication and P7/P8 on the rows of one leaf.

  ``ResourceSparseApply[Centered]RMSProp`` after ``tf.unique`` and
  ``unsorted_segment_sum``: ``csrc/sparse_kernel.cc`` mirrors
  ``sparse.deduplicate`` and the momentum branch of ``update_rules.sparse_leaf``
  (``"tf_cpu"``), with TF's float32 packet rsqrt. Only the rows listed
  change, in place (operands aliased to results).

  Args:
    values: ``(n, ...)`` gradient rows, duplicates allowed.
    indices: ``(n,)`` int32 row indices in ``[0, ms.shape[0]]``, where
      ``ms.shape[0]`` stands for every invalid index and changes nothing.
    var: the variable, used only with ``apply``.
    ms: the ``ms`` slot.
    mg: the ``mg`` slot, or ``None`` (P7).
    mom: the ``mom`` slot.
    hypers: ``[lr, rho, 1 - rho, momentum, epsilon]`` in the leaf dtype.
    apply: update ``var`` in place instead of returning the update rows.

  Returns:
    ``(first, ms, mg, mom)``: with ``apply``, ``first`` is the new variable;
    otherwise it is ``(update, unique)``, the ``(n, ...)`` update rows
    ``-mom`` and their ``(n,)`` distinct indices, laid out as
    ``sparse.deduplicate`` lays them out (padding: index ``ms.shape[0]``,
    rows ``-0``).
  """
  target = _SPARSE_TARGETS[np.dtype(ms.dtype)][0]
  slots = [x for x in (ms, mg, mom) if x is not None]
  operands = [hypers, values, indices] + ([var] if apply else []) + slots
  first = [var] if apply else [values, indices]
  results = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in first + slots]
  aliases = {3 + apply + k: len(first) + k for k in range(len(slots))}
  if apply:
    aliases[3] = 0
  out = iter(jax.ffi.ffi_call(
      target, results, input_output_aliases=aliases,
      vmap_method="sequential")(*operands, centered=mg is not None,
                                apply=apply))
  first = next(out) if apply else (next(out), next(out))
  ms = next(out)
  mg = None if mg is None else next(out)
  return first, ms, mg, next(out)
