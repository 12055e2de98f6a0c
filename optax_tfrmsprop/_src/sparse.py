r"""Row-sparse gradients (TF's ``IndexedSlices``): the type and its row ops.

TF applies RMSprop to an ``IndexedSlices`` gradient through four sparse paths
(P5-P8 of the spec, in :mod:`update_rules`) whose semantics differ from the
dense ones. This module holds the gradient type, the jit-safe
de-duplication that tf_keras performs first, the row gathers and scatters,
:func:`apply_updates`, which scatters the row updates into the params, and
:func:`sparse_embedding_value_and_grad`, which makes such gradients.

Invalid indices (negative, or ``>= dense_shape[0]``) are rejected with a
``ValueError`` when the indices are concrete. Under ``jax.jit`` they cannot be
checked; they are then mapped to the out-of-range row ``dense_shape[0]`` and
every scatter drops them, so they change no row of the params or of any slot
(their values still count in ``clipnorm`` / ``global_clipnorm``). Indices
are never wrapped: without ``jax_enable_x64``, jax converts an int64 array to
int32 at the ``jit`` boundary, modulo 2**32, so an :class:`IndexedSlices`
refuses concrete indices outside the int32 range when it is built.
"""

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_tfrmsprop._src import base


@jax.tree_util.register_pytree_node_class
class IndexedSlices:
  """A row-sparse gradient: ``values[k]`` belongs to row ``indices[k]``.

  The equivalent of ``tf.IndexedSlices``: it stands for the dense array of
  shape ``dense_shape`` that is zero except for the listed rows, duplicates
  summed. It can be the gradient leaf of a param of shape ``dense_shape`` in
  :func:`optax_tfrmsprop.rmsprop`; the updates then hold an
  ``IndexedSlices`` of row updates at the same place, which
  :func:`optax_tfrmsprop.apply_updates` scatters into the param.

  ``values`` and ``indices`` are the pytree children; ``dense_shape`` is
  static (auxiliary data), so it must be a tuple of Python ints.

  Attributes:
    values: ``shape=(n, *dense_shape[1:])``, the rows.
    indices: ``shape=(n,)``, integer row numbers, duplicates allowed.
    dense_shape: the shape of the dense array (of the param).

  Example:
    >>> import jax.numpy as jnp
    >>> g = IndexedSlices(jnp.ones((2, 3)), jnp.array([4, 1]), (5, 3))
    >>> g.dense_shape
    (5, 3)
  """

  def __init__(self, values, indices, dense_shape: Sequence[int]):
    check_indices_fit(indices)
    self.values = values
    self.indices = indices
    self.dense_shape = tuple(int(d) for d in dense_shape)

  def tree_flatten(self):
    return (self.values, self.indices), self.dense_shape

  @classmethod
  def tree_unflatten(cls, dense_shape, children):
    values, indices = children
    return cls(values, indices, dense_shape)

  def __repr__(self):
    return (
      f"IndexedSlices(values={self.values!r}, indices={self.indices!r}, "
      f"dense_shape={self.dense_shape})"
    )

  def to_dense(self) -> jax.Array:
    """The dense array, duplicates summed, invalid indices dropped."""
    rows = valid_rows(jnp.asarray(self.indices), self.dense_shape[0])
    zeros = jnp.zeros(self.dense_shape, jnp.result_type(self.values))
    return zeros.at[rows].add(self.values, mode="drop")


def _first(mask: np.ndarray) -> tuple[int, ...]:
  """The position of the first True of ``mask``."""
  return tuple(
    int(i) for i in np.unravel_index(int(np.argmax(mask)), mask.shape)
  )


def _show(position: tuple[int, ...]) -> str:
  return ", ".join(map(str, position))


def check_indices_fit(indices: Any, name: str = "indices") -> None:
  """Raises a ValueError if jax would wrap concrete ``indices`` to int32.

  Without ``jax_enable_x64`` jax represents integers in int32 and converts
  larger integer arrays modulo 2**32 (at the ``jit`` boundary, silently), so
  index 2**32 + 2 would become row 2. Traced and jax arrays are already in a
  jax dtype and are not checked.

  Args:
    indices: row numbers: a numpy array or scalar, a list, or a jax array.
    name: the argument's name, for the message.
  """
  if not isinstance(indices, (np.ndarray, np.generic, list, tuple, int)):
    return
  if jax.dtypes.canonicalize_dtype(np.int64) == np.int64:
    return  # x64: jax keeps int64.
  concrete = np.asarray(indices)
  if not np.issubdtype(concrete.dtype, np.integer) or concrete.size == 0:
    return
  limits = np.iinfo(np.int32)
  bad = (concrete < limits.min) | (concrete > limits.max)
  if bad.any():
    k = _first(bad)
    raise ValueError(
      f"{name}[{_show(k)}] = {concrete[k]} does not fit in int32, to which "
      "jax converts indices without jax_enable_x64 (modulo 2**32, so it "
      "would address another row). Enable x64 (jax.config.update("
      "'jax_enable_x64', True)) for such tables."
    )


def is_indexed_slices(x: Any) -> bool:
  """``is_leaf`` predicate that keeps :class:`IndexedSlices` whole."""
  return isinstance(x, IndexedSlices)


def valid_rows(indices: jax.Array, num_rows: int) -> jax.Array:
  """``indices`` as int32, every invalid one replaced by ``num_rows``."""
  # Negative indices would wrap in jnp's scatter even with mode="drop", so
  # every invalid index becomes the one out-of-range row ``num_rows``.
  invalid = (indices < 0) | (indices >= num_rows)
  return jnp.where(invalid, num_rows, indices).astype(jnp.int32)


def take_rows(table: jax.Array, rows: jax.Array) -> jax.Array:
  """``table[rows]`` with zero rows for out-of-bounds ``rows``, bits kept.

  On a table sharded by rows, XLA's SPMD partitioner gathers each row on the
  shard that holds it, zeros it on the others and sums across shards: in
  floating point that sum turns ``-0.0`` into ``+0.0``. Gathering the bit
  patterns as unsigned integers makes the sum exact, so a sharded table gives
  the bits of an unsharded one. Without sharding the bitcasts cost nothing.

  Args:
    table: ``(num_rows, ...)``.
    rows: integer row numbers of any shape; negative ones count from the end
      (as in numpy) and those out of bounds give zero rows.

  Returns:
    ``rows.shape + table.shape[1:]``, the rows.
  """
  if jnp.issubdtype(table.dtype, jnp.complexfloating):  # Part by part.
    return jax.lax.complex(
      take_rows(jnp.real(table), rows), take_rows(jnp.imag(table), rows)
    )
  bits = jnp.dtype(f"uint{8 * table.dtype.itemsize}")
  gathered = (
    jax.lax.bitcast_convert_type(table, bits)
    .at[rows]
    .get(mode="fill", fill_value=0)
  )
  return jax.lax.bitcast_convert_type(gathered, table.dtype)


def _check_rows(where: str, g: IndexedSlices, shape: tuple) -> None:
  """Raises a ValueError unless ``g`` lists rows of a param of ``shape``.

  ``dense_shape`` is the param's, ``indices`` a 1-D integer array and
  ``values`` one row of the param per index.
  """
  if not shape:
    raise ValueError(
      f"{where}: an IndexedSlices lists rows, and its parameter is a scalar."
    )
  if g.dense_shape != shape:
    raise ValueError(
      f"{where} has dense_shape {g.dense_shape}, but its parameter has "
      f"shape {shape}."
    )
  indices = g.indices
  if jnp.ndim(indices) != 1 or not jnp.issubdtype(
    jnp.result_type(indices), jnp.integer
  ):
    raise ValueError(
      f"{where}: indices must be a 1-D integer array, got shape "
      f"{jnp.shape(indices)} and dtype {jnp.result_type(indices)}."
    )
  want = (jnp.shape(indices)[0],) + tuple(shape[1:])
  if jnp.shape(g.values) != want:
    raise ValueError(
      f"{where}: values must have shape {want} (one row per index), got "
      f"{jnp.shape(g.values)}."
    )


def check_sparse_grad(path: str, g: IndexedSlices, slot: jax.Array) -> None:
  """Raises a ValueError when ``g`` cannot be a gradient of ``slot``'s param.

  Shapes and dtypes are always checked; index values only when concrete.

  Args:
    path: where ``g`` sits in the gradient tree, for the message.
    g: the sparse gradient.
    slot: a slot (or the param) of the matching param.
  """
  where = f"Sparse gradient at {path}"
  _check_rows(where, g, slot.shape)
  values, indices = g.values, g.indices
  if jnp.result_type(values) != slot.dtype:
    raise ValueError(
      f"{where}: values must have dtype {slot.dtype}, got "
      f"{jnp.result_type(values)}."
    )
  if not isinstance(indices, jax.core.Tracer):
    concrete = np.asarray(indices)
    bad = (concrete < 0) | (concrete >= slot.shape[0])
    if bad.any():
      k = int(np.argmax(bad))
      raise ValueError(
        f"{where}: indices[{k}] = {concrete[k]} is not in [0, {slot.shape[0]})."
      )


def deduplicate(values: jax.Array, indices: jax.Array, num_rows: int):
  """tf_keras' ``_deduplicate_indexed_slices``, with static shapes.

  ``tf.unique`` lists the distinct indices in order of first occurrence and
  ``tf.math.unsorted_segment_sum`` adds the rows of each index, starting from
  zero, in input order. Here the output keeps the input length ``n``: the
  ``u`` distinct indices come first, in first-occurrence order, followed by
  ``n - u`` padding entries of index ``num_rows`` (out of range, so every
  scatter drops them) and zero rows. Invalid indices are mapped to
  ``num_rows`` as well.

  Args:
    values: ``(n, ...)`` rows.
    indices: ``(n,)`` row numbers.
    num_rows: the number of rows of the dense array.

  Returns:
    ``(summed_values, unique_indices)``, shaped like the inputs.

  The CPU kernel (``csrc/sparse_kernel.cc::RunRows``) mirrors this for P7/P8;
  change one, change both.
  """
  rows = valid_rows(indices, num_rows)
  n = rows.shape[0]
  if n == 0:
    return values, rows
  position = jnp.arange(n, dtype=jnp.int32)
  order = jnp.argsort(rows, stable=True).astype(jnp.int32)
  sorted_rows = rows[order]
  starts = jnp.concatenate(
    [jnp.ones(1, bool), sorted_rows[1:] != sorted_rows[:-1]]
  )
  # A stable sort puts each group's first occurrence at the group's start.
  group_start = jax.lax.cummax(jnp.where(starts, position, 0))
  first = jnp.zeros(n, jnp.int32).at[order].set(order[group_start])
  rank = jnp.cumsum(first == position, dtype=jnp.int32) - 1
  segment = rank[first]
  # XLA:CPU's scatter-add visits updates in order: sequential summation in
  # input order, as unsorted_segment_sum does.
  summed = jax.ops.segment_sum(values, segment, num_segments=n)
  unique = jnp.full(n, num_rows, jnp.int32).at[segment].set(rows)
  return summed, unique


def apply_updates(params: optax.Params, updates: optax.Updates) -> optax.Params:
  """``optax.apply_updates`` that also scatters :class:`IndexedSlices`.

  Dense leaves become ``param + update``; a sparse update adds its rows to
  the listed rows of the param (rows with an out-of-range index are dropped).
  Results keep the param dtype. With the params donated to a jitted step,
  the sparse scatter happens in place.

  Args:
    params: the parameter tree.
    updates: the updates of :func:`optax_tfrmsprop.rmsprop`, a tree matching
      ``params`` whose leaves may be :class:`IndexedSlices`.

  Returns:
    The updated params.

  Example:
    >>> import jax.numpy as jnp
    >>> u = IndexedSlices(jnp.array([[1.0, 2.0]]), jnp.array([1]), (2, 2))
    >>> apply_updates(jnp.zeros((2, 2)), u)
    Array([[0., 0.],
           [1., 2.]], dtype=float32)
  """

  def apply_leaf(path, p, u):
    if p is None:
      return None
    if isinstance(u, IndexedSlices):
      _check_rows(
        f"Sparse update at {base.tree_path(path)}",
        u,
        jnp.shape(p),
      )
      rows = valid_rows(jnp.asarray(u.indices), p.shape[0])
      return p.at[rows].add(u.values.astype(p.dtype), mode="drop")
    return jnp.asarray(p + u).astype(jnp.asarray(p).dtype)

  return jax.tree_util.tree_map_with_path(
    apply_leaf, params, updates, is_leaf=lambda x: x is None
  )


def sparse_embedding_value_and_grad(
  loss_fn: Callable[..., Any],
  table: jax.Array,
  ids: jax.Array,
  *args: Any,
  has_aux: bool = False,
) -> tuple[Any, tuple[Any, ...]]:
  """Loss and gradients of an embedding model, the table's as IndexedSlices.

  ``jax.grad`` of a loss through ``table[ids]`` builds a table-sized
  cotangent. Here the loss is differentiated with respect to the gathered
  rows ``table[ids]`` instead, and that row gradient is paired with ``ids``,
  as TF's gradient of ``tf.gather`` / ``embedding_lookup`` is. Its
  :meth:`IndexedSlices.to_dense` equals ``jax.grad`` with respect to the
  table, and nothing of the table's size is allocated.

  Invalid ids (negative, or ``>= table.shape[0]``) raise a ValueError when
  concrete, as TF's CPU gather does. Under ``jit`` they read zero rows
  (TF's GPU gather), and their gradient rows are dropped by
  :meth:`IndexedSlices.to_dense`, :func:`apply_updates` and the optimizers,
  so the gradient is still ``jax.grad`` of the loss that was computed.

  Args:
    loss_fn: ``loss_fn(rows, *args)``, where ``rows = table[ids]`` has shape
      ``ids.shape + table.shape[1:]``; returns a scalar loss (and an aux
      value when ``has_aux``).
    table: the embedding table, ``(num_rows, ...)``.
    ids: integer row ids of any shape, in ``[0, num_rows)``.
    *args: further differentiable arguments of ``loss_fn`` (e.g. the dense
      params of the rest of the model).
    has_aux: ``loss_fn`` returns ``(loss, aux)``.

  Returns:
    ``(value, grads)``: ``value`` is the loss (or ``(loss, aux)``) and
    ``grads`` is ``(table_grad, *arg_grads)`` with ``table_grad`` an
    :class:`IndexedSlices` of ``ids.size`` rows.

  Example:
    >>> import jax.numpy as jnp
    >>> table = jnp.arange(8.0).reshape(4, 2)
    >>> loss, (g,) = sparse_embedding_value_and_grad(
    ...     lambda rows: jnp.sum(rows ** 2), table, jnp.array([3, 0, 3]))
    >>> g.indices, g.values[0]
    (Array([3, 0, 3], dtype=int32), Array([12., 14.], dtype=float32))
  """
  if not jnp.shape(table):
    raise ValueError(
      "table must have rows (shape (num_rows, ...)), got a scalar."
    )
  num_rows = table.shape[0]
  ids_dtype = ids.dtype if hasattr(ids, "dtype") else np.asarray(ids).dtype
  if not jnp.issubdtype(ids_dtype, jnp.integer):  # Under jit too.
    raise TypeError(f"ids must be integers, got dtype {ids_dtype}.")
  if not isinstance(ids, jax.core.Tracer):
    check_indices_fit(ids, "ids")
    concrete = np.asarray(ids)
    bad = (concrete < 0) | (concrete >= num_rows)
    if bad.any():
      k = _first(bad)
      raise ValueError(
        f"ids[{_show(k)}] = {concrete[k]} is not in [0, {num_rows})."
      )
  ids = jnp.asarray(ids)
  # Traced invalid ids (negative, or past the end) read zero rows: the
  # gradient rows paired with them are dropped wherever the gradient is used,
  # which is the gradient of these zero rows.
  rows = take_rows(table, valid_rows(ids, num_rows))
  argnums = tuple(range(1 + len(args)))
  value, grads = jax.value_and_grad(loss_fn, argnums, has_aux=has_aux)(
    rows, *args
  )
  table_grad = IndexedSlices(
    grads[0].reshape((ids.size,) + table.shape[1:]),
    ids.reshape(-1),
    table.shape,
  )
  return value, (table_grad, *grads[1:])
