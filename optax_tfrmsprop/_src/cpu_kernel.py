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

The library has two FFI targets, :data:`DENSE_TARGET` and
:data:`SPARSE_TARGET`, each dispatching on the element type of its operands;
``csrc/tfrmsprop.h`` holds what they share (the hyperparameter record
:data:`HYPER_ORDER`, the constants, the dense operand layout). Every operand
is checked here, naming it, before the call, and again in C++; ``vmap``
works on both calls and equals a loop over the batch.
"""

import contextlib
import contextvars
import ctypes
import functools
import importlib.machinery
import os
import pathlib
from typing import cast, Literal
import warnings

import jax
from jax.experimental import custom_partitioning as cp
from jax.extend import core as jex_core
from jax.interpreters import batching
from jax.interpreters import mlir
import jax.numpy as jnp
import numpy as np

from optax_tfrmsprop._src import numerics

Backend = Literal["auto", "ffi", "xla"]
BACKENDS = ("auto", "ffi", "xla")
BACKEND_ENV_VAR = "OPTAX_TFRMSPROP_BACKEND"

# The two FFI targets and their handler symbols in the library. Each
# dispatches on the element type of its operands (DENSE_DTYPES, DTYPES).
DENSE_TARGET = "tfrmsprop_dense"
SPARSE_TARGET = "tfrmsprop_sparse"
_HANDLERS = {DENSE_TARGET: "TfRmspropDense", SPARSE_TARGET: "TfRmspropSparse"}
# The sparse kernel's float types, and the dense kernel's (bfloat16 in TF's
# Eigen arithmetic, csrc/bfloat16.h); other dtypes use jnp.
DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
DENSE_DTYPES = (*DTYPES, np.dtype(jnp.bfloat16))
# The hyperparameter operand of both targets, in this order: mirrors
# csrc/tfrmsprop.h::HyperIndex (the library's count is checked on loading).
HYPER_ORDER = ("lr", "rho", "one_minus_rho", "momentum", "epsilon")


def _library_path() -> pathlib.Path | None:
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
    constants = (
      library.TfRmspropEigenPacketBytes(),
      library.TfRmspropNumHypers(),
    )
    handlers = {t: getattr(library, symbol) for t, symbol in _HANDLERS.items()}
  except (OSError, AttributeError) as e:
    return f"it could not be loaded ({e}); rebuild it"
  if constants != (numerics.EIGEN_PACKET_BYTES, len(HYPER_ORDER)):
    return (
      f"it was built from other sources (packet bytes and "
      f"hyperparameter count {constants}, expected "
      f"{(numerics.EIGEN_PACKET_BYTES, len(HYPER_ORDER))}); rebuild it"
    )
  for target, handler in handlers.items():
    jax.ffi.register_ffi_target(
      target, jax.ffi.pycapsule(handler), platform="cpu"
    )
  return library


def _load() -> str | None:
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
    RuntimeWarning,
    stacklevel=4,
  )


def check_backend(backend: str) -> None:
  """Raises a ValueError unless ``backend`` is one of :data:`BACKENDS`."""
  if backend not in BACKENDS:
    raise ValueError(
      f"backend must be one of {BACKENDS}, got backend={backend!r}."
    )


def use_kernel(backend: Backend) -> bool:
  """Resolves ``backend`` (and the environment variable) to kernel or not.

  Args:
    backend: ``"auto"``, ``"ffi"`` or ``"xla"``.

  Returns:
    Whether CPU lowerings should call the kernel.
  """
  check_backend(backend)
  if backend == "auto":
    chosen = os.environ.get(BACKEND_ENV_VAR, "auto").lower() or "auto"
    if chosen not in BACKENDS:
      raise ValueError(
        f"{BACKEND_ENV_VAR} must be one of {BACKENDS}, got {chosen!r}."
      )
    backend = cast(Backend, chosen)
  if backend == "xla":
    return False
  reason = _load()
  if backend == "ffi" and reason is not None:
    raise RuntimeError(
      f"backend='ffi' was requested but the CPU kernel is unavailable: "
      f"{reason}. Reinstall with a C++17 compiler, or use "
      "backend='xla'."
    )
  if reason is not None and jax.default_backend() == "cpu":
    _warn_fallback(reason)
  return reason is None


def check_dtype(backend: Backend, dtype, where: str) -> None:
  """Raises a ValueError when ``backend="ffi"`` meets a complex leaf.

  The kernel has no complex loops; ``"auto"`` runs such leaves on XLA.

  Args:
    backend: the requested backend.
    dtype: a leaf dtype.
    where: the leaf, for the message.
  """
  if backend == "ffi" and jnp.issubdtype(dtype, jnp.complexfloating):
    raise ValueError(
      f"backend='ffi': the CPU kernel has no {np.dtype(dtype)} loops (the "
      f"parameter at {where}); use backend='xla' (or 'auto', which runs "
      "complex leaves on XLA)."
    )


def handles(dtype) -> bool:
  """Whether the dense kernel has loops for leaves of ``dtype``."""
  return np.dtype(dtype) in DENSE_DTYPES


@functools.cache
def handles_sparse(dtype) -> bool:
  """Whether the kernel runs sparse momentum leaves (P7/P8) of ``dtype``.

  float32 needs TF's packet rsqrt, the AVX estimate ``vrsqrtps``; on CPUs
  without it (and on ARM) float32 leaves keep the jnp path and its bound.
  """
  dtype = np.dtype(dtype)
  if dtype not in DTYPES or _load() is not None:
    return False
  library = _library()
  assert not isinstance(library, str)  # _load() returned None.
  return dtype != np.float32 or bool(library.TfRmspropSparseF32Supported())


# Operand checks. The handlers check every operand again (csrc/tfrmsprop.h);
# these name the argument first, at trace time, before anything runs.


def _describe(x) -> str:
  return f"shape {tuple(jnp.shape(x))} and dtype {jnp.result_type(x)}"


def _check_hypers(where: str, hypers, dtypes) -> np.dtype:
  """Returns the leaf dtype, one of ``dtypes``, that ``hypers`` selects."""
  if (
    jnp.shape(hypers) != (len(HYPER_ORDER),)
    or jnp.result_type(hypers) not in dtypes
  ):
    names = ", ".join(map(str, dtypes))
    raise ValueError(
      f"{where}: hypers must be a ({len(HYPER_ORDER)},) array of one of "
      f"{names} [{', '.join(HYPER_ORDER)}], got {_describe(hypers)}."
    )
  return jnp.result_type(hypers)


def _check_like(where: str, what: str, x, shape, dtype, like: str) -> None:
  if tuple(jnp.shape(x)) != tuple(shape) or jnp.result_type(x) != dtype:
    raise ValueError(
      f"{where}: {what} has {_describe(x)}, but {like} has shape "
      f"{tuple(shape)} and dtype {dtype}."
    )


def _check_dtype(where: str, what: str, x, dtype) -> None:
  if jnp.result_type(x) != dtype:
    raise ValueError(
      f"{where}: {what} has {_describe(x)}, but the hyperparameters (which "
      f"select the loops) have dtype {dtype}."
    )


def _check_present(where: str, what: str, x, wanted: bool, path: str) -> None:
  if wanted and x is None:
    raise ValueError(f"{where}: {what} is missing; {path} needs it.")
  if not wanted and x is not None:
    raise ValueError(f"{where}: {what} is given, but {path} has none.")


def _check_dense(leaves, hypers, centered, momentum, apply) -> None:
  """Raises a ValueError naming the first operand the dense call cannot take."""
  where = "cpu_kernel.dense_update"
  dtype = _check_hypers(where, hypers, DENSE_DTYPES)
  path = f"the path centered={centered}, momentum={momentum}, apply={apply}"
  wanted = dict(gradient=True, params=apply, ms=True, mg=centered, mom=momentum)
  for k, leaf in enumerate(leaves):
    if len(leaf) != 5:
      raise ValueError(
        f"{where}: leaves[{k}] must be (g, var, ms, mg, mom), "
        f"got {len(leaf)} entries."
      )
    for (role, present), x in zip(wanted.items(), leaf):
      _check_present(where, f"leaves[{k}] {role}", x, present, path)
    ms = leaf[2]
    _check_dtype(where, f"leaves[{k}] ms", ms, dtype)
    for role, x in zip(wanted, leaf):
      if x is not None:
        _check_like(
          where,
          f"leaves[{k}] {role}",
          x,
          jnp.shape(ms),
          dtype,
          f"leaves[{k}] ms",
        )


def _check_sparse(values, indices, var, ms, mg, mom, hypers, apply) -> None:
  """Raises a ValueError naming the first operand the sparse call refuses."""
  where = "cpu_kernel.sparse_update"
  dtype = _check_hypers(where, hypers, DTYPES)
  path = f"the path centered={mg is not None}, apply={apply}"
  _check_present(where, "ms", ms, True, path)
  _check_present(where, "mom", mom, True, "a sparse momentum path")
  _check_present(where, "var (params)", var, apply, path)
  if jnp.ndim(ms) < 1:
    raise ValueError(
      f"{where}: ms must be a table of rows (rank >= 1), got {_describe(ms)}."
    )
  _check_dtype(where, "ms", ms, dtype)
  table = tuple(jnp.shape(ms))
  for what, x in (("mom", mom), ("mg", mg), ("var (params)", var)):
    if x is not None:
      _check_like(where, what, x, table, dtype, "ms")
  num_rows = table[0]
  if num_rows >= np.iinfo(np.int32).max:
    raise ValueError(
      f"{where}: the table has {num_rows} rows; int32 indices "
      "reach fewer than 2**31 - 1."
    )
  if jnp.ndim(indices) != 1 or jnp.result_type(indices) != np.int32:
    raise ValueError(
      f"{where}: indices must be a 1-D int32 array, got {_describe(indices)}."
    )
  rows = (jnp.shape(indices)[0], *table[1:])
  _check_like(
    where,
    "values (one row per index)",
    values,
    rows,
    dtype,
    "indices and ms, (len(indices), *ms.shape[1:]),",
  )
  if not isinstance(indices, jax.core.Tracer):
    concrete = np.asarray(indices)
    bad = (concrete < 0) | (concrete > num_rows)
    if bad.any():
      k = int(np.argmax(bad))
      raise ValueError(
        f"{where}: indices[{k}] = {concrete[k]} is not in [0, {num_rows}] "
        f"({num_rows} marks an invalid index)."
      )


# Donation. The kernel updates the params and slots in place (each result is
# aliased to its operand); XLA copies an operand first when it cannot give
# its buffer away, as for an argument of the jitted function that is not
# donated. Those copies (a read and a write of each array) make the step
# slower than optax's, which writes fresh buffers (docs/benchmarks.md).


def _undonated_argument(value) -> bool:
  """Whether ``value`` is an argument of the top-level function, not donated.

  ``jax.jit`` marks a donated argument of its ``main`` function with
  ``tf.aliasing_output`` or ``jax.buffer_donor`` before lowering the body.
  Anything else (a value computed in the step, an argument of a nested
  function) is not known to be undonated.
  """
  if not isinstance(value, mlir.ir.BlockArgument):
    return False
  function = value.owner.owner.operation
  if function.name != "func.func" or "sym_name" not in function.attributes:
    return False
  if mlir.ir.StringAttr(function.attributes["sym_name"]).value != "main":
    return False
  if "arg_attrs" not in function.attributes:
    return True
  attributes = mlir.ir.ArrayAttr(function.attributes["arg_attrs"])
  attrs = mlir.ir.DictAttr(attributes[value.arg_number])
  return not ("tf.aliasing_output" in attrs or "jax.buffer_donor" in attrs)


_donation_check_p = jex_core.Primitive("tfrmsprop_donation_check")
_donation_check_p.multiple_results = True
_donation_check_p.def_impl(lambda *arrays, what: arrays)
_donation_check_p.def_abstract_eval(lambda *avals, what: avals)


# Whether lowering warns about undonated in-place buffers. The package's own
# jitted steps that cannot donate by design turn it off (see
# undonated_by_design): the warning would name a fix the user cannot apply.
_warn_undonated = contextvars.ContextVar("warn_undonated", default=True)


@contextlib.contextmanager
def undonated_by_design():
  """Within it, jitted steps lowered in this thread do not warn of donation.

  For the package's own jitted calls whose buffers cannot be donated: the
  Keras-style class's (a :class:`Variable`'s array may still be held by the
  user). XLA copies those buffers before the kernel updates them in place.
  """
  token = _warn_undonated.set(False)
  try:
    yield
  finally:
    _warn_undonated.reset(token)


def _donation_check_lowering(ctx, *values, what):
  """Warns when an operand is an argument of the jitted step not donated."""
  del ctx
  undonated = sum(map(_undonated_argument, values))
  if undonated and _warn_undonated.get():
    warnings.warn(
      f"optax_tfrmsprop: {undonated} of the {len(values)} {what} updated "
      "in place by the CPU kernel are arguments of the jitted function that "
      "are not donated, so XLA copies each of them first, and the step is "
      "slower than optax's. Donate them: jax.jit(step, donate_argnums=...) "
      "with the positions of the params and the optimizer state (or pass "
      "backend='xla').",
      RuntimeWarning,
      stacklevel=2,
    )
  return values


# On CPU only (elsewhere the kernel does not run), and not cacheable: a cached
# lowering is emitted in a function of its own, whose arguments are not those
# of the jitted function.
mlir.register_lowering(
  _donation_check_p, _donation_check_lowering, "cpu", cacheable=False
)
mlir.register_lowering(_donation_check_p, lambda ctx, *values, what: values)
batching.primitive_batchers[_donation_check_p] = lambda arrays, dims, what: (
  _donation_check_p.bind(*arrays, what=what),
  dims,
)


def check_donated(arrays, what: str) -> list:
  """Returns ``arrays``; warns when the jitted step does not donate them.

  The identity, checked when the enclosing ``jax.jit`` lowers (once per
  compilation, at no cost to the step): a warning names ``donate_argnums``
  when one of ``arrays`` is an argument of the jitted function that is not
  donated, which the kernel would make XLA copy.

  Args:
    arrays: the arrays the kernel updates in place.
    what: what they are, for the warning ("params and slot buffers").

  Returns:
    ``arrays``, as a list.
  """
  return list(_donation_check_p.bind(*arrays, what=what)) if arrays else []


# The dense call: all leaves of one dtype in one custom call, partitioned
# shard by shard under a mesh and batched as one call under vmap.


def _call_kernel(centered, momentum, apply, hypers, leaves):
  """One FFI call on local (unsharded) arrays; see :func:`dense_update`.

  The operands are laid out as ``csrc/tfrmsprop.h::DenseLayout`` says.
  """
  operands, results, aliases = [hypers], [], {}

  def add(x, *, alias):
    if alias:
      aliases[len(operands)] = len(results)
      # The result keeps its operand's type, sharding included (a mesh with
      # Explicit axes puts it in the type).
      results.append(
        jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=jax.typeof(x).sharding)
      )
    operands.append(x)

  for g, var, ms, mg, mom in leaves:
    add(g, alias=False)
    if apply:
      add(var, alias=True)
    for slot in (ms, mg, mom):
      if slot is not None:
        add(slot, alias=True)
  flat = jax.ffi.ffi_call(
    DENSE_TARGET,
    results,
    input_output_aliases=aliases,
    vmap_method="sequential",
  )(*operands, centered=centered, momentum=momentum, apply=apply)
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
  arg_shardings = (
    replicated,
    [
      tuple(None if x is None else leaf[2].sharding for x in leaf)
      for leaf in leaves
    ],
  )
  result_shardings = [
    tuple(
      leaf[2].sharding if present else None
      for present in _leaf_outputs(centered, momentum, apply)
    )
    for leaf in leaves
  ]

  def lower(hypers, local_leaves):
    return _call_kernel(centered, momentum, apply, hypers, local_leaves)

  return mesh, lower, result_shardings, arg_shardings


def _sharding_rule(
  centered, momentum, apply, mesh, operand_types, result_types
):
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
  partition=_partition, sharding_rule=_sharding_rule
)


@functools.cache
def _dense_call(centered: bool, momentum: bool, apply: bool):
  """The partitioned dense call of one path, with a batching rule.

  ``custom_partitioning`` has no batching rule of its own. The update is
  elementwise, so under ``vmap`` with shared hyperparameters one call on the
  batched leaves (unbatched ones broadcast) gives the same bits as a loop over
  the batch; with batched hyperparameters (a schedule over a batched count)
  the batch runs as a loop of calls.
  """

  @jax.custom_batching.custom_vmap
  def call(hypers, leaves):
    return _partitioned_call(centered, momentum, apply, hypers, leaves)

  @call.def_vmap
  def _batched(axis_size, in_batched, hypers, leaves):
    hypers_batched, leaves_batched = in_batched
    leaves = jax.tree.map(
      lambda x, b: x if b else jnp.broadcast_to(x, (axis_size, *x.shape)),
      leaves,
      leaves_batched,
    )
    if hypers_batched:
      out = jax.lax.map(lambda args: call(*args), (hypers, leaves))
    else:
      out = call(hypers, leaves)
    return out, jax.tree.map(lambda _: True, out)

  return call


def dense_update(
  leaves, hypers, *, centered: bool, momentum: bool, apply: bool
):
  """Runs TF's dense update on ``leaves`` of one dtype in one kernel call.

  Args:
    leaves: ``(g, var, ms, mg, mom)`` per leaf, absent arrays ``None``
      (``var`` is used only with ``apply``), all of one shape each and of the
      dtype of ``hypers``.
    hypers: ``[lr, rho, 1 - rho, momentum, epsilon]`` (:data:`HYPER_ORDER`)
      in the leaves' dtype, float32, float64 or bfloat16.
    centered: the ``mg`` slot is present.
    momentum: the ``mom`` slot is present (TF's kernel paths P3/P4).
    apply: update ``var`` in place. Without it there is no update output:
      P3/P4's update is ``-mom``, and P1/P2 update only their slots (their
      update, ``update_rules.plain_update`` of the new slots, is computed in
      the loop that applies it; a buffer of its own would cost a page fault
      per 4 KiB every step, docs/cpu_kernel.md).

  Returns:
    Per leaf ``(first, ms, mg, mom)``: ``first`` is the new variable with
    ``apply``, else ``None``.

  Raises:
    ValueError: naming the first operand whose presence, shape or dtype does
      not fit the path.
  """
  leaves = [tuple(leaf) for leaf in leaves]
  _check_dense(leaves, hypers, centered, momentum, apply)
  return _dense_call(centered, momentum, apply)(hypers, leaves)


def sparse_update(values, indices, var, ms, mg, mom, hypers, *, apply: bool):
  """Runs tf_keras' de-duplication and P7/P8 on the rows of one leaf.

  ``ResourceSparseApply[Centered]RMSProp`` after ``tf.unique`` and
  ``unsorted_segment_sum``: ``csrc/sparse_kernel.cc`` mirrors
  ``sparse.deduplicate`` and the momentum branch of ``update_rules.sparse_leaf``
  (``"tf_cpu"``), with TF's float32 packet rsqrt. Only the rows listed
  change, in place (operands aliased to results). Under ``vmap`` the batch
  runs as a loop of calls.

  Args:
    values: ``(n, ...)`` gradient rows, duplicates allowed.
    indices: ``(n,)`` int32 row indices in ``[0, ms.shape[0]]``, where
      ``ms.shape[0]`` stands for every invalid index and changes nothing.
    var: the variable, used only with ``apply`` (else ``None``).
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

  Raises:
    ValueError: naming the first operand whose presence, shape or dtype does
      not fit (and, when the indices are concrete, the first index outside
      ``[0, ms.shape[0]]``).
  """
  _check_sparse(values, indices, var, ms, mg, mom, hypers, apply)
  dtype = ms.dtype
  # The handler takes a fixed operand list; an absent one is an empty array.
  empty = jnp.zeros((0,), dtype)
  operands = (
    hypers,
    values,
    indices,
    var if apply else empty,
    ms,
    empty if mg is None else mg,
    mom,
  )
  like = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)
  results = (
    like(var if apply else values),
    jax.ShapeDtypeStruct((0,) if apply else indices.shape, np.int32),
    like(ms),
    like(empty if mg is None else mg),
    like(mom),
  )
  aliases = {4: 2, 6: 4}  # ms, mom
  if apply:
    aliases[3] = 0  # var
  if mg is not None:
    aliases[5] = 3
  first, unique, ms, new_mg, mom = jax.ffi.ffi_call(
    SPARSE_TARGET,
    results,
    input_output_aliases=aliases,
    vmap_method="sequential",
  )(*operands, centered=mg is not None, apply=apply)
  first = first if apply else (first, unique)
  return first, ms, None if mg is None else new_mg, mom
