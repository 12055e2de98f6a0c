"""Rounding control and per-leaf hyperparameter casting, as TF does them.

TF's CPU kernels (Eigen, built without floating-point contraction) round every
operation to the variable dtype. Under ``jax.jit`` XLA:CPU instead

* contracts ``a * b + c`` into a fused multiply-add,
* rewrites ``a / sqrt(b)`` as ``a * rsqrt(b)``, and
* turns a division by a broadcast scalar into a multiply by its reciprocal.

Each rewrite moves results by an ULP or more, and the differences compound over
steps. :func:`rounded` hides a value's producer from XLA's pattern matchers
while staying inside the fused loop, so it costs nothing measurable on a
memory-bound step. It is applied exactly where a rewrite could happen: products
that feed a sum or difference, square roots that feed a quotient, and scalar
divisors.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optax_tfrmsprop._src import base

# What TF's Keras backend substitutes for a falsy epsilon
# (``epsilon or backend.epsilon()``).
KERAS_EPSILON = 1e-7


def rounded(x: jax.Array) -> jax.Array:
  """Returns ``x``, rounded to its dtype where XLA would otherwise fuse it.

  ``where(is_nan(x), nan, x)`` is the identity on every value, but it stands
  between ``x``'s producer and its consumer, so XLA and LLVM can no longer
  merge the two into one differently rounded operation. The NaN test is done
  on the bits: a floating-point ``isnan`` is folded away by LLVM whenever it
  can prove ``x`` is not NaN (e.g. for a product of a constant and a
  converted integer), and the fusion comes back.

  Args:
    x: a floating-point array.

  Returns:
    An array equal to ``x``.
  """
  return jnp.where(is_nan(x), jnp.asarray(jnp.nan, x.dtype), x)


def is_nan(x: jax.Array) -> jax.Array:
  """``isnan`` computed on the bits, which LLVM cannot fold away."""
  uint = jnp.dtype(f"uint{8 * x.dtype.itemsize}")
  bits = jax.lax.bitcast_convert_type(x, uint)
  magnitude = bits & np.array(np.iinfo(uint).max >> 1, uint)
  inf_bits = jax.lax.bitcast_convert_type(jnp.asarray(np.inf, x.dtype), uint)
  return magnitude > inf_bits


def divide_by_scalar(x: jax.Array, divisor: jax.Array) -> jax.Array:
  """``x / divisor`` rounded as a true division, under ``jit`` too.

  XLA turns a division by a broadcast scalar into a multiply by its rounded
  reciprocal, and sinks any elementwise op on the broadcast scalar below the
  broadcast. Selecting the divisor per element on ``x``'s NaN-ness keeps it an
  array; the select changes nothing, as ``nan / d`` is NaN anyway.

  Args:
    x: the dividend.
    divisor: a scalar.

  Returns:
    ``x / divisor``, elementwise.
  """
  nan = jnp.asarray(jnp.nan, x.dtype)
  return x / jnp.where(is_nan(x), nan, divisor.astype(x.dtype))


def rounder(rounding: base.Rounding):
  """The rounding hook of a rounding target: :func:`rounded` or identity."""
  if rounding == "tf_cpu":
    return rounded
  if rounding == "tf_xla":
    return lambda x: x
  raise ValueError(
    f"rounding must be one of {base.ROUNDINGS}, got rounding={rounding!r}."
  )


def is_tensor(value: Any) -> bool:
  """Whether TF would see ``value`` as a tensor (a jax array, traced or not)."""
  return isinstance(value, jax.Array)


def as_dtype(value: Any, dtype, *, through_float32: bool) -> jax.Array:
  """Casts a hyperparameter to a leaf dtype the way TF materialises it.

  Python numbers that Keras keeps in float32 hyper variables (``learning_rate``,
  ``rho``, ``momentum``, ``decay``) are rounded to float32 first, so a float64
  leaf sees ``float64(float32(0.1))``. Arrays (TF's tensor hyperparameters,
  and what ``optax.inject_hyperparams`` passes) are cast directly.

  Args:
    value: a Python number, numpy scalar or array, or jax array.
    dtype: the leaf dtype.
    through_float32: round Python numbers to float32 first.

  Returns:
    A scalar array of ``dtype``.
  """
  if through_float32 and not isinstance(value, (jax.Array, np.ndarray)):
    value = np.float32(value)
  return jnp.asarray(value).astype(dtype)


def keras_epsilon(epsilon: Any, dtype) -> jax.Array:
  """Keras' epsilon in ``dtype``: zero becomes 1e-7, cast directly (no f32)."""
  fallback = jnp.asarray(KERAS_EPSILON, dtype)
  if is_tensor(epsilon):
    eps = epsilon.astype(dtype)
    return jnp.where(eps == 0, fallback, eps)
  return jnp.asarray(epsilon or KERAS_EPSILON, dtype)


def inverse_time_decay(
  lr: jax.Array, rate: jax.Array, step: jax.Array, round_=rounded
) -> jax.Array:
  """Keras' inverse-time decay ``lr / (1 + (rate * step))``, rounded as TF.

  The one home of the formula behind tf_keras' ``decay=`` argument
  (``_decayed_lr``) and of ``InverseTimeDecay`` (there ``step`` is
  ``step / decay_steps``, floored if ``staircase``). All three operands are
  in the dtype the result is computed in. The product is rounded before the
  sum (``round_``), and the division is a true division even when the
  denominator is a compile-time constant, where XLA would multiply by its
  rounded reciprocal.

  Args:
    lr: the learning rate.
    rate: the decay rate.
    step: the step (TF's ``iterations`` cast to the dtype).
    round_: the rounding hook (:func:`rounder`); :func:`rounded` by default.

  Returns:
    The decayed learning rate, of ``lr``'s dtype.

  Example:
    >>> import jax.numpy as jnp
    >>> print(inverse_time_decay(jnp.float32(0.1), jnp.float32(0.5),
    ...                          jnp.float32(2)))
    0.05
  """
  return lr / jax.lax.optimization_barrier(1 + round_(rate * step))


def hyperparams(
  semantics: base.Semantics,
  dtype,
  *,
  count: jax.typing.ArrayLike,
  learning_rate: Any,
  rho: Any,
  momentum: Any,
  epsilon: Any,
  decay: Any,
  round_,
) -> base.Hyperparams:
  """The hyperparameters a leaf of ``dtype`` sees, as TF's ``_prepare_local``.

  TF evaluates them once per variable dtype; a mixed-precision tree therefore
  sees e.g. ``lr`` rounded to bfloat16 for bfloat16 leaves and to float32 for
  float32 leaves. How each reaches the dtype is read from ``semantics``:

  * the learning rate: a schedule is called with the step count (cast to
    ``dtype`` when ``schedule_step_in_leaf_dtype``) and its value cast; a
    plain value goes through float32 (all flavors keep it in a float32
    variable); ``decay`` (through float32) divides it by
    ``1 + decay * step`` (:func:`inverse_time_decay`);
  * ``rho`` and ``momentum``: through float32 when
    ``hypers_through_float32``, else straight from double;
  * ``1 - rho``: in ``dtype`` from the cast ``rho``, or, when
    ``one_minus_rho_in_double``, in ``rho``'s own precision (double for a
    Python number) and then cast;
  * ``epsilon``: zero means 1e-7 when ``zero_epsilon_is_default``; through
    float32 when ``epsilon_through_float32``.

  Args:
    semantics: the flavor's :class:`~optax_tfrmsprop._src.base.Semantics`.
    dtype: the leaf dtype.
    count: the step count before this update (TF's ``iterations``).
    learning_rate: a scalar or a schedule.
    rho: the discounting factor.
    momentum: the momentum coefficient.
    epsilon: epsilon as given.
    decay: Keras' inverse-time decay; ``0`` for none.
    round_: the rounding hook (:func:`rounder`).

  Returns:
    A :class:`~optax_tfrmsprop._src.base.Hyperparams` of ``dtype`` scalars.

  Raises:
    ValueError: when a schedule returns anything but a scalar.
  """
  count = jnp.asarray(count)
  step = count.astype(dtype)
  if callable(learning_rate):
    lr_step = step if semantics.schedule_step_in_leaf_dtype else count
    value = jnp.asarray(learning_rate(lr_step))
    if jnp.ndim(value) != 0:
      raise ValueError(
        "learning_rate: the schedule must return a scalar, got an array of "
        f"shape {jnp.shape(value)}."
      )
    lr = value.astype(dtype)
  else:
    lr = as_dtype(learning_rate, dtype, through_float32=True)
  if is_tensor(decay) or decay > 0:
    lr = inverse_time_decay(
      lr, as_dtype(decay, dtype, through_float32=True), step, round_
    )
  through_float32 = semantics.hypers_through_float32
  rho_t = as_dtype(rho, dtype, through_float32=through_float32)
  if semantics.one_minus_rho_in_double:
    one_minus_rho = as_dtype(1 - rho, dtype, through_float32=False)
  else:
    one_minus_rho = 1 - rho_t
  if semantics.zero_epsilon_is_default:
    eps = keras_epsilon(epsilon, dtype)
  else:
    eps = as_dtype(
      epsilon, dtype, through_float32=semantics.epsilon_through_float32
    )
  return base.Hyperparams(
    lr=lr,
    rho=rho_t,
    one_minus_rho=one_minus_rho,
    momentum=as_dtype(momentum, dtype, through_float32=through_float32),
    epsilon=eps,
  )


def ulp_distance(a, b) -> np.ndarray:
  """Elementwise distance in units in the last place; NaNs equal each other.

  Args:
    a: a float array.
    b: a float array of the same shape and dtype.

  Returns:
    An int64 numpy array of the number of representable values between the two.

  Example:
    >>> import numpy as np
    >>> from optax_tfrmsprop import ulp_distance
    >>> ulp_distance(np.float32([1.0, 1.0, np.nan]),
    ...              np.float32([1.0, 1.0000002, np.nan]))
    array([0, 2, 0])
  """
  a, b = np.asarray(a), np.asarray(b)
  if a.dtype != b.dtype:
    raise ValueError(f"dtypes differ: {a.dtype} vs {b.dtype}.")
  unsigned = {2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize]
  sign = unsigned(1) << unsigned(8 * a.dtype.itemsize - 1)

  def ordered(x):
    # Map sign-magnitude floats onto a monotonic integer line (-0.0 == +0.0).
    raw = x.view(unsigned)
    magnitude = (raw & ~sign).astype(np.int64)
    return np.where(raw & sign, -magnitude, magnitude)

  both_nan = np.isnan(a.astype(np.float64)) & np.isnan(b.astype(np.float64))
  return np.where(both_nan, 0, np.abs(ordered(a) - ordered(b)))


# Eigen's full-reduction layout on x86-64 TF wheels (AVX): 32-byte packets,
# tree-split above ``packet * 1024`` elements. The packet size is the one
# Python definition (also of update_rules.PACKET); it mirrors
# csrc/tfrmsprop.h::kEigenPacketBytes, and cpu_kernel checks on loading the
# library that both agree.
EIGEN_PACKET_BYTES = 32
_EIGEN_LEAF_PACKETS = 1024


@functools.cache
def _eigen_depth(n: int, packet: int) -> int:
  """The depth of Eigen's split tree over ``n`` elements (0: one leaf).

  The tree depends on ``n`` alone: a node of ``s`` elements that starts on a
  packet boundary (the root does, and so does every split) is a leaf when
  ``s <= packet * 1024``, else splits into a left child of
  :func:`_left_size` elements and a right child of the rest, both starting on
  packet boundaries. Memoised on the size, so it visits a few sizes a level.
  """
  if n <= packet * _EIGEN_LEAF_PACKETS:
    return 0
  left = _left_size(n, packet)
  return 1 + max(_eigen_depth(left, packet), _eigen_depth(n - left, packet))


def _left_size(n, packet: int):
  """Elements of the left child of a node of ``n`` (a Python or jax int).

  Eigen splits at ``packet * ceil((first + ceil(n / 2)) / packet)``; with
  ``first`` on a packet boundary that is ``first`` plus this many.
  """
  half = (n + 1) // 2
  return packet * ((half + packet - 1) // packet)


def _packet_sum(vector: jax.Array) -> jax.Array:
  """Eigen's horizontal sum ``predux`` of packets ``vector[..., lanes]``.

  Halves are folded until four lanes are left, then ``(0 + 2) + (1 + 3)``.
  """
  while vector.shape[-1] > 4:
    half = vector.shape[-1] // 2
    vector = vector[..., :half] + vector[..., half:]
  return (vector[..., 0] + vector[..., 2]) + (vector[..., 1] + vector[..., 3])


def eigen_sum(x: jax.Array) -> jax.Array:
  """Sums ``x`` in the order TF's CPU ``reduce_sum`` does (single-threaded).

  Eigen (``InnerMostDimReducer``) splits the flattened input into a binary
  tree whose leaves hold at most 8192 float32 (4096 float64) elements: a
  node splits at the packet boundary at or after its midpoint, and its sum
  is ``left + right``. A leaf of ``s`` elements sums its chunks of four
  packets into four packet accumulators, one chunk after the other, adds
  them as ``((a0 + a1) + a2) + a3``, adds the (at most three) remaining
  packets, reduces that packet horizontally and adds it to the scalar sum
  of the tail (``s mod packet`` elements). Every addition here rounds in
  that order, so the result is bitwise TF's whenever TF reduces on one
  thread: always with one intra-op thread (tested up to 3M elements), and
  with more only below the size at which Eigen's cost model splits the
  input into one tree per thread (about 260K float32 or 130K float64
  elements for ``reduce_sum``, fewer for ``l2_loss``). Above it TF's sum
  depends on its thread count and can differ in the last bits.

  The program does not grow with ``x`` (nor does its compile time): the
  leaves' offsets and sizes are computed in the program by a loop over the
  tree's levels, the leaves' chunks are summed by a loop over the chunks
  that reads one chunk of every leaf per step (a gather of ``leaves``
  slices, nothing copied) and the leaf sums are combined by a loop over the
  levels. Positions past a leaf's end add ``+0``, which changes no sum:
  every partial sum here starts from ``+0`` and so is never ``-0``.

  Args:
    x: a float32 or float64 array, of any shape.

  Returns:
    A scalar of ``x``'s dtype.

  Example:
    >>> import numpy as np
    >>> x = np.float32([1e8, 1.0, -1e8, 1.0])
    >>> print(eigen_sum(x), np.float32(1e8) + 1 - np.float32(1e8) + 1)
    1.0 1.0
  """
  x = x.reshape(-1)
  n = x.shape[0]
  dtype = x.dtype
  packet = EIGEN_PACKET_BYTES // dtype.itemsize
  if n == 0:
    return jnp.zeros((), dtype)
  chunk = 4 * packet
  depth = _eigen_depth(n, packet)
  # Chunks of the largest leaf.
  rows = min(_EIGEN_LEAF_PACKETS // 4, -(-n // chunk))
  index = jnp.int32 if n + chunk < 2**31 else jnp.int64
  zero = jnp.zeros((), dtype)

  # Every leaf of the tree, completed to depth `depth`: bit l of slot j
  # chooses the child at level l (0 left, 1 right), so the two children of a
  # node at level l are slots j and j + 2**l. A node that is already a leaf
  # keeps its slots with bit l clear; the others are empty (size 0, read
  # from offset 0).
  num_slots = 1 << depth
  slots = jax.lax.iota(index, num_slots)

  def split(level, nodes):
    first, size = nodes
    right = ((slots >> level) & 1) == 1
    left = jnp.minimum(_left_size(size, packet), size)
    inner = size > packet * _EIGEN_LEAF_PACKETS
    first = jnp.where(right, jnp.where(inner, first + left, 0), first)
    size = jnp.where(
      inner, jnp.where(right, size - left, left), jnp.where(right, 0, size)
    )
    return first, size

  first, size = jax.lax.fori_loop(
    0,
    depth,
    split,
    (jnp.zeros_like(slots), jnp.full_like(slots, n)),
  )

  # Each leaf's chunk r is read from x, for every leaf at once (a gather of
  # one chunk per leaf); a chunk past a leaf's last whole one adds +0. x is
  # padded by a chunk: that also makes a sharded x gathered (all-gather)
  # rather than the small per-leaf arrays sharded and permuted.
  x = jnp.concatenate([x, jnp.zeros((chunk,), dtype)])
  full_rows = size // chunk
  by_start = jax.lax.GatherDimensionNumbers(
    offset_dims=(1,), collapsed_slice_dims=(), start_index_map=(0,)
  )

  def add_row(row, acc):
    start = first + row * chunk
    # Clamped only where the chunk is past the leaf's end (then dropped).
    values = jax.lax.gather(
      x,
      start[:, None],
      by_start,
      (chunk,),
      mode=jax.lax.GatherScatterMode.CLIP,
    ).reshape(num_slots, 4, packet)
    return acc + jnp.where((row < full_rows)[:, None, None], values, zero)

  acc = jax.lax.fori_loop(
    0, rows, add_row, jnp.zeros((num_slots, 4, packet), dtype)
  )
  vector = ((acc[:, 0] + acc[:, 1]) + acc[:, 2]) + acc[:, 3]
  # The rest of each leaf, under a chunk: at most three packets, then the
  # scalar tail; positions past the leaf's end read +0.
  offset = jnp.arange(chunk, dtype=index)
  rest_first = first + full_rows * chunk
  rest = jnp.where(
    offset < (size - full_rows * chunk)[:, None],
    x[jnp.minimum(rest_first[:, None] + offset, n - 1)],
    zero,
  )
  packets = size // packet - 4 * full_rows
  for k in range(3):
    extra = rest[:, k * packet : (k + 1) * packet]
    vector = vector + jnp.where((k < packets)[:, None], extra, zero)
  # The tail starts after the remaining packets.
  tail = rest[:, 3 * packet :]
  for k in (2, 1, 0):
    tail = jnp.where(
      (packets == k)[:, None], rest[:, k * packet : (k + 1) * packet], tail
    )
  tail_length = size % packet
  scalar = jnp.zeros((num_slots,), dtype)
  for k in range(packet - 1):
    scalar = scalar + jnp.where(k < tail_length, tail[:, k], zero)
  leaf_sums = scalar + _packet_sum(vector)

  # The tree, from the bottom level up: at level l the two children of
  # slot j < 2**l are slots j and j + 2**l, and their node is left + right
  # (an empty slot adds +0). Slots past 2**l are not read again.
  def combine(level, sums):
    half = num_slots >> (level + 1)
    pairs = jnp.concatenate([sums, jnp.zeros_like(sums)])
    return sums + jax.lax.dynamic_slice(pairs, (half,), (num_slots,))

  return jax.lax.fori_loop(0, depth, combine, leaf_sums)[0]
