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
  if isinstance(x, EigenValue):
    return x  # Every operation inside is rounded already.
  return jnp.where(is_nan(x), jnp.asarray(jnp.nan, x.dtype), x)


def is_nan(x: jax.Array) -> jax.Array:
  """``isnan`` computed on the bits, which LLVM cannot fold away."""
  uint = jnp.dtype(f"uint{8 * x.dtype.itemsize}")
  bits = jax.lax.bitcast_convert_type(x, uint)
  magnitude = bits & np.array(np.iinfo(uint).max >> 1, uint)
  inf_bits = jax.lax.bitcast_convert_type(jnp.asarray(np.inf, x.dtype), uint)
  return magnitude > inf_bits


def divide(x: Any, divisor: Any) -> Any:
  """``x / divisor`` rounded as a true division, under ``jit`` and ``vmap``.

  XLA turns a division by a broadcast (a scalar, or under ``vmap`` an
  unbatched divisor of a batched dividend) into a multiply by its rounded
  reciprocal, and sinks any elementwise op on the broadcast value below the
  broadcast. Selecting the divisor per element on ``x``'s NaN-ness makes it
  as wide as ``x``; the select changes nothing, as ``nan / d`` is NaN anyway.
  Eigen values divide with this inside (:class:`EigenBFloat16`,
  :class:`EigenComplex`).

  Args:
    x: the dividend.
    divisor: an array that broadcasts to ``x``'s shape.

  Returns:
    ``x / divisor``, elementwise.
  """
  if isinstance(x, EigenValue) or isinstance(divisor, EigenValue):
    return x / divisor
  x = jnp.asarray(x)
  nan = jnp.asarray(jnp.nan, x.dtype)
  return x / jnp.where(is_nan(x), nan, jnp.asarray(divisor).astype(x.dtype))


def unrounded(x: Any) -> Any:
  """The rounding hook of ``"tf_xla"``: XLA fuses as it fuses TF's program."""
  return x


def quotient(x: Any, divisor: Any, round_) -> Any:
  """``x / divisor`` as the rounding target of ``round_`` divides.

  A true division (:func:`divide`) for ``"tf_cpu"``; for ``"tf_xla"`` the
  plain ``/``, which XLA may rewrite (``a / sqrt(b)`` to ``a * rsqrt(b)``) as
  it rewrites TF's own program.
  """
  return x / divisor if round_ is unrounded else divide(x, divisor)


def rounder(rounding: base.Rounding):
  """The rounding hook of a rounding target (rounded or unrounded)."""
  if rounding == "tf_cpu":
    return rounded
  if rounding == "tf_xla":
    return unrounded
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

  A complex leaf sees its real dtype's values with a zero imaginary part:
  TF casts the float hyperparameters to the complex dtype, and its complex
  arithmetic on them (``1 - rho``, ``decay``; schedules cast the complex
  step back to float) rounds as the real arithmetic does.

  Raises:
    ValueError: when a schedule returns anything but a scalar.
  """
  if is_complex(dtype):
    parts = hyperparams(
      semantics,
      real_dtype(dtype),
      count=count,
      learning_rate=learning_rate,
      rho=rho,
      momentum=momentum,
      epsilon=epsilon,
      decay=decay,
      round_=round_,
    )
    return base.Hyperparams(*(x.astype(dtype) for x in parts))
  count = jnp.asarray(count)
  step = count.astype(dtype)
  if callable(learning_rate):
    lr_step = step if semantics.schedule_step_in_leaf_dtype else count
    returned = learning_rate(lr_step)
    try:
      value = jnp.asarray(returned)
    except (TypeError, ValueError):
      value = None
    if value is None or not (
      jnp.issubdtype(value.dtype, jnp.floating)
      or jnp.issubdtype(value.dtype, jnp.integer)
    ):
      raise TypeError(
        "learning_rate: the schedule must return a real number, got "
        f"{returned!r}."
      )
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


# Complex arithmetic as TF's CPU kernels compute it.


def is_complex(dtype) -> bool:
  """Whether ``dtype`` is complex64 or complex128."""
  return jnp.issubdtype(dtype, jnp.complexfloating)


def real_dtype(dtype) -> np.dtype:
  """The dtype of the real and imaginary parts of ``dtype`` (or ``dtype``)."""
  return np.dtype(jnp.finfo(dtype).dtype)


def eigen_tail(shape: tuple[int, ...], dtype, valid: Any = None) -> Any:
  """Which elements of a complex op's output Eigen computes with scalar code.

  TF's CPU kernels evaluate an elementwise expression over the flattened
  tensor in AVX packets (4 complex64 or 2 complex128 values) and the last
  ``size % packet`` elements one at a time, with other algorithms for the
  quotient and square root (:class:`EigenComplex`).

  Args:
    shape: the shape of the op's output.
    dtype: its complex dtype.
    valid: the number of leading elements that TF's tensor has (a traced
      count of de-duplicated rows times the row width), when the array is
      padded beyond it; ``None`` when the whole array is TF's tensor.

  Returns:
    ``False`` when no element is scalar, ``True`` when all are, else a
    boolean array of ``shape``.
  """
  packet = EIGEN_PACKET_BYTES // np.dtype(dtype).itemsize
  size = int(np.prod(shape))
  if valid is None:
    if size % packet == 0:
      return False
    if size < packet:
      return True
    return (np.arange(size) >= size - size % packet).reshape(shape)
  index = jnp.arange(size).reshape(shape)
  return index >= valid - valid % packet


def _select(tail, scalar, packet) -> tuple[jax.Array, jax.Array]:
  """``scalar`` where ``tail``, else ``packet`` (both pairs of parts)."""
  if tail is True:
    return scalar()
  if tail is False or tail is None:
    return packet()
  (sre, sim), (pre, pim) = scalar(), packet()
  return jnp.where(tail, sre, pre), jnp.where(tail, sim, pim)


def _hypot(ax: jax.Array, ay: jax.Array) -> jax.Array:
  """Eigen's ``positive_real_hypot(|x|, |y|)``: ``p sqrt(1 + (q / p)^2)``."""
  r = rounded
  p, q = jnp.maximum(ax, ay), jnp.minimum(ax, ay)
  qp = r(q / jnp.where(p == 0, 1, p))
  h = r(p * r(jnp.sqrt(1 + r(qp * qp))))
  h = jnp.where(p == 0, 0, h)
  inf, nan = jnp.asarray(jnp.inf, ax.dtype), jnp.asarray(jnp.nan, ax.dtype)
  h = jnp.where(jnp.isnan(ax) | jnp.isnan(ay), nan, h)
  return jnp.where(jnp.isinf(ax) | jnp.isinf(ay), inf, h)


@jax.tree_util.register_pytree_node_class
class EigenComplex:
  r"""A complex array whose arithmetic rounds as TF's CPU kernels do.

  XLA computes a complex product as two fused multiply-adds and has its own
  quotient and square root; TF's Eigen kernels (AVX, no FMA) round every
  real operation. This value type holds the real and imaginary parts and
  overloads ``+``, ``-``, ``*`` and ``/`` (with arrays, numbers or another
  :class:`EigenComplex`) so that the update rules of :mod:`update_rules`,
  written once for every dtype, give TF's bits on complex leaves
  (``rounding="tf_cpu"``). With :math:`x = a + ib`, :math:`y = c + id`:

  * product (packets and scalars alike): :math:`(ac - bd) + i(ad + bc)`;
  * quotient, in packets (``pdiv_complex``): with :math:`m = \max(|c|, |d|)`,
    :math:`c' = c / m`, :math:`d' = d / m`,
    :math:`((ac' + bd') / (c'^2 + d'^2)) / m + i((bc' - ad') / (c'^2 + d'^2))
    / m`; in scalar code (the compiler's Smith division), with
    :math:`|c| \ge |d|`: :math:`r = d / c`, :math:`t = dr + c`,
    :math:`(br + a) / t + i(b - ar) / t` (and symmetrically);
  * square root: Eigen's ``psqrt_complex`` in packets, ``complex_sqrt`` in
    scalar code (they differ where the real part is zero);
  * reciprocal square root: ``complex_rsqrt`` (scalar code only: Eigen has
    no complex rsqrt packet, so TF's sparse kernels run scalar code).

  ``tail`` says which elements TF computes with scalar code
  (:func:`eigen_tail`); ``None`` for scalars that adopt their partner's.

  Attributes:
    re: the real parts.
    im: the imaginary parts.
    tail: ``None``, a bool, or a boolean array broadcastable to ``re``.

  Example:
    >>> import jax.numpy as jnp
    >>> z = EigenComplex.wrap(jnp.complex64([3 + 4j]), tail=False)
    >>> (z * z).value(), z.sqrt().value()
    (Array([-7.+24.j], dtype=complex64), Array([2.+1.j], dtype=complex64))
  """

  def __init__(self, re, im, tail=None):
    self.re, self.im, self.tail = re, im, tail

  def tree_flatten(self):
    if self.tail is None or isinstance(self.tail, bool):
      return (self.re, self.im, None), self.tail
    return (self.re, self.im, jnp.asarray(self.tail)), None

  @classmethod
  def tree_unflatten(cls, static_tail, children):
    re, im, tail = children
    return cls(re, im, static_tail if tail is None else tail)

  @classmethod
  def wrap(cls, z, tail=None) -> "EigenComplex":
    """``z`` (a complex array) as an :class:`EigenComplex`."""
    if isinstance(z, EigenComplex):
      return z
    z = jnp.asarray(z)
    return cls(jnp.real(z), jnp.imag(z), tail)

  def value(self) -> jax.Array:
    """The complex array."""
    return jax.lax.complex(self.re, self.im)

  @property
  def shape(self) -> tuple[int, ...]:
    return jnp.shape(self.re)

  @property
  def dtype(self):
    return jnp.result_type(self.value())

  def _other(self, other) -> "EigenComplex":
    if isinstance(other, EigenComplex):
      return other
    z = jnp.asarray(other, dtype=self.dtype)
    return EigenComplex(jnp.real(z), jnp.imag(z))

  def _tail(self, other: "EigenComplex"):
    return self.tail if other.tail is None else other.tail

  def __neg__(self):
    return EigenComplex(-self.re, -self.im, self.tail)

  def __add__(self, other):
    o = self._other(other)
    return EigenComplex(self.re + o.re, self.im + o.im, self._tail(o))

  def __radd__(self, other):
    return self._other(other) + self

  def __sub__(self, other):
    o = self._other(other)
    return EigenComplex(self.re - o.re, self.im - o.im, self._tail(o))

  def __rsub__(self, other):
    return self._other(other) - self

  def __mul__(self, other):
    o, r = self._other(other), rounded
    a, b, c, d = self.re, self.im, o.re, o.im
    return EigenComplex(r(a * c) - r(b * d), r(a * d) + r(b * c), self._tail(o))

  def __rmul__(self, other):
    return self._other(other) * self

  def __truediv__(self, other):
    o, r = self._other(other), rounded
    a, b, c, d = self.re, self.im, o.re, o.im

    def packet():  # pdiv_complex
      m = jnp.maximum(jnp.abs(c), jnp.abs(d))
      cs, ds = r(c / m), r(d / m)
      denom = r(cs * cs) + r(ds * ds)
      re = r(a * cs) - r(b * -ds)
      im = r(a * -ds) + r(b * cs)
      return (
        r(divide(r(divide(re, denom)), m)),
        r(divide(r(divide(im, denom)), m)),
      )

    def scalar():  # Smith's division, as clang emits it for std::complex.
      by_d = jnp.abs(c) < jnp.abs(d)
      p, q = jnp.where(by_d, c, d), jnp.where(by_d, d, c)
      ratio = r(p / q)
      denom = r(p * ratio) + q
      re = jnp.where(by_d, r(a * ratio) + b, r(b * ratio) + a)
      im = jnp.where(by_d, r(b * ratio) - a, b - r(a * ratio))
      return r(divide(re, denom)), r(divide(im, denom))

    tail = self._tail(o)
    return EigenComplex(*_select(tail, scalar, packet), tail)

  def __rtruediv__(self, other):
    return self._other(other) / self

  def sqrt(self) -> "EigenComplex":
    """The principal square root, as Eigen's packet or scalar code."""
    r, x, y = rounded, self.re, self.im
    ax, ay = jnp.abs(x), jnp.abs(y)
    inf = jnp.asarray(jnp.inf, x.dtype)

    def packet():  # psqrt_complex
      amax, amin = jnp.maximum(ax, ay), jnp.minimum(ax, ay)
      ratio = r(amin / amax)
      hyp = jnp.where(
        amin == 0, amax, r(amax * r(jnp.sqrt(1 + r(ratio * ratio))))
      )
      rho = r(jnp.sqrt(r(0.5 * (ax + hyp))))
      eta = jnp.where(amax == 0, 0, r(0.5 * r(y / rho)))
      negative = x < 0
      re = jnp.where(negative, jnp.abs(eta), rho)
      im = jnp.where(negative, jnp.copysign(rho, y), eta)
      # Infinities: (x, +-inf) -> (inf, +-inf); (+-inf, y) -> (inf, 0|y|)
      # or (0|y|, inf) for -inf.
      zero_y = ay * 0
      re = jnp.where(jnp.isinf(x), jnp.where(negative, zero_y, inf), re)
      im = jnp.where(jnp.isinf(x), jnp.where(negative, inf, zero_y), im)
      return jnp.where(jnp.isinf(y), inf, re), jnp.where(jnp.isinf(y), y, im)

    def scalar():  # complex_sqrt
      w = r(jnp.sqrt(r(0.5 * (ax + _hypot(ax, ay)))))
      signed_w = jnp.where(y < 0, -w, w)
      half_over = r(2 * w)
      re = jnp.where(x > 0, w, r(ay / half_over))
      im = jnp.where(x > 0, r(y / half_over), signed_w)
      re = jnp.where(x == 0, w, re)
      im = jnp.where(x == 0, signed_w, im)
      return jnp.where(jnp.isinf(y), inf, re), jnp.where(jnp.isinf(y), y, im)

    return EigenComplex(*_select(self.tail, scalar, packet), self.tail)

  def rsqrt(self) -> "EigenComplex":
    """``1 / sqrt``, as Eigen's scalar ``complex_rsqrt`` (no packet exists)."""
    r, x, y = rounded, self.re, self.im
    ax, ay = jnp.abs(x), jnp.abs(y)
    abs_z = _hypot(ax, ay)
    w = r(jnp.sqrt(r(0.5 * (ax + abs_z))))
    woz = r(w / abs_z)
    denom = r(r(2 * w) * abs_z)
    signed = jnp.where(y < 0, woz, -woz)
    re = jnp.where(x > 0, woz, r(ay / denom))
    im = jnp.where(x > 0, r(-y / denom), signed)
    re = jnp.where(x == 0, woz, re)
    im = jnp.where(x == 0, signed, im)
    infinite = jnp.isinf(x) | jnp.isinf(y)
    re = jnp.where(infinite, 0, re)
    im = jnp.where(infinite, 0, im)
    zero = abs_z == 0
    re = jnp.where(zero, jnp.inf, re)
    im = jnp.where(zero, jnp.nan, im)
    return EigenComplex(re, im, True)


class EigenBFloat16:
  """bfloat16 values computed as TF's Eigen computes them, in float32 words.

  Eigen evaluates each bfloat16 operation in float32 and rounds the result to
  bfloat16, to nearest even; as float32 has more than twice bfloat16's
  precision plus two bits, that is the correctly rounded bfloat16 operation.
  XLA:CPU computes a bfloat16 array op the same way, but its float32 to
  bfloat16 conversion costs more than the arithmetic, so a step of a dozen
  operations is compute-bound. This class holds the values as float32 (low 16
  bits zero) and rounds each result with three integer operations, the
  arithmetic of the CPU kernel (``csrc/bfloat16.h::BFloat16Arith``): the same
  bits, about 1.7x faster. The integer rounding also stands between every
  product and sum or quotient, so XLA cannot contract them; a quotient goes
  through :func:`divide`, so that a broadcast divisor stays a division.

  Attributes:
    x: the float32 values.

  Example:
    >>> import jax.numpy as jnp
    >>> a = EigenBFloat16.wrap(jnp.bfloat16([1.0, 3.0]))
    >>> (a / 3).value()
    Array([0.333984, 1], dtype=bfloat16)
  """

  def __init__(self, x: jax.Array):
    self.x = x

  @classmethod
  def wrap(cls, z) -> "EigenBFloat16":
    """``z`` (a bfloat16 array) as an :class:`EigenBFloat16`."""
    if isinstance(z, EigenBFloat16):
      return z
    # Widened on the bits: XLA may drop a float32 -> bfloat16 -> float32
    # pair of converts (excess precision), leaving z's producer unrounded.
    bits = jax.lax.bitcast_convert_type(
      jnp.asarray(z, jnp.bfloat16), jnp.uint16
    )
    wide = bits.astype(jnp.uint32) << np.uint32(16)
    return cls(jax.lax.bitcast_convert_type(wide, jnp.float32))

  @staticmethod
  def _round(x: jax.Array) -> "EigenBFloat16":
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    odd = (bits >> 16) & np.uint32(1)
    nearest_even = (bits + np.uint32(0x7FFF) + odd) & np.uint32(0xFFFF0000)
    return EigenBFloat16(jax.lax.bitcast_convert_type(nearest_even, x.dtype))

  def value(self) -> jax.Array:
    """The bfloat16 array: the top 16 bits (the low 16 are zero)."""
    bits = jax.lax.bitcast_convert_type(self.x, jnp.uint32) >> np.uint32(16)
    return jax.lax.bitcast_convert_type(bits.astype(jnp.uint16), jnp.bfloat16)

  @property
  def shape(self) -> tuple[int, ...]:
    return jnp.shape(self.x)

  @property
  def dtype(self):
    return jnp.dtype(jnp.bfloat16)

  def _other(self, other) -> "EigenBFloat16":
    return EigenBFloat16.wrap(other)

  def __neg__(self):
    return EigenBFloat16(-self.x)

  def __add__(self, other):
    return self._round(self.x + self._other(other).x)

  def __radd__(self, other):
    return self._other(other) + self

  def __sub__(self, other):
    return self._round(self.x - self._other(other).x)

  def __rsub__(self, other):
    return self._other(other) - self

  def __mul__(self, other):
    return self._round(self.x * self._other(other).x)

  def __rmul__(self, other):
    return self._other(other) * self

  def __truediv__(self, other):
    return self._round(divide(self.x, self._other(other).x))

  def __rtruediv__(self, other):
    return self._other(other) / self

  def sqrt(self) -> "EigenBFloat16":
    return self._round(jnp.sqrt(self.x))


EigenValue = EigenComplex | EigenBFloat16


def sqrt(x: Any) -> Any:
  """``jnp.sqrt``, or TF's square root of an Eigen value."""
  if isinstance(x, EigenValue):
    return x.sqrt()
  return jnp.sqrt(x)


def plain(x: Any) -> Any:
  """The array behind ``x``: an Eigen value's array, else ``x``."""
  return x.value() if isinstance(x, EigenValue) else x
