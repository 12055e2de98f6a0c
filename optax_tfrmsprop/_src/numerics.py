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
  uint = jnp.dtype(f"uint{8 * x.dtype.itemsize}")
  bits = jax.lax.bitcast_convert_type(x, uint)
  magnitude = bits & np.array(np.iinfo(uint).max >> 1, uint)
  inf_bits = jax.lax.bitcast_convert_type(jnp.asarray(np.inf, x.dtype), uint)
  return jnp.where(magnitude > inf_bits, jnp.asarray(jnp.nan, x.dtype), x)


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
