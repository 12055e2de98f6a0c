"""Gradient clipping in tf_keras' order and with TF's arithmetic.

tf_keras' legacy optimizer clips in ``apply_gradients``, before the update, in
the order clipvalue, clipnorm, global_clipnorm (``tensorflow/python/ops/
clip_ops.py`` gives the formulas). Elementwise steps round as TF rounds; the
sums inside the norms are XLA reductions, whose summation order is not Eigen's,
so a clipped gradient can differ from TF's by an ULP or so of the norm.
"""

from typing import Any, Optional

import jax
import jax.numpy as jnp

from optax_tfrmsprop._src import numerics


def _divide_by_scalar(x: jax.Array, divisor: jax.Array, round_) -> jax.Array:
  # Broadcasting the divisor behind the rounding hook keeps XLA from turning
  # the quotient into a multiply by a rounded reciprocal.
  return x / round_(jnp.broadcast_to(divisor, x.shape))


def clip_by_value(g: jax.Array, clipvalue: Any) -> jax.Array:
  """``tf.clip_by_value(g, -v, v)``: ``max(min(g, v), -v)``; NaN passes."""
  v = jnp.asarray(clipvalue).astype(g.dtype)
  return jnp.maximum(jnp.minimum(g, v), -v)


def clip_by_norm(g: jax.Array, clipnorm: Any, round_) -> jax.Array:
  """``tf.clip_by_norm``: ``(g * C) / max(norm(g), C)``, per tensor.

  Not the identity when the norm is below ``C``: ``(g * C) / C`` rounds twice.

  Args:
    g: a gradient.
    clipnorm: the norm bound ``C``, cast directly to ``g``'s dtype.
    round_: the rounding hook of the rounding target.

  Returns:
    The clipped gradient.
  """
  c = jnp.asarray(clipnorm).astype(g.dtype)
  squares = jnp.sum(round_(g * g))
  positive = squares > 0
  norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, squares, 1)), squares)
  return _divide_by_scalar(g * c, jnp.maximum(norm, c), round_)


def global_norm_scale(leaves: list[jax.Array], global_clipnorm: Any, round_):
  """The factor ``tf.clip_by_global_norm`` multiplies every gradient by.

  ``norm = sqrt(2 * sum(l2_loss(g)))`` with ``l2_loss(g) = sum(g * g * 0.5)``,
  then ``scale = C * min(1 / norm, 1 / C) + (norm - norm)``, so a non-finite
  norm gives NaN. Mixed dtypes are summed in the widest of them.

  Args:
    leaves: the gradients.
    global_clipnorm: the bound ``C``.
    round_: the rounding hook of the rounding target.

  Returns:
    A scalar in the widest gradient dtype.
  """
  dtype = jnp.result_type(*leaves)
  half_squares = jnp.stack(
      [jnp.sum(round_(g * g) * 0.5).astype(dtype) for g in leaves]
  )
  norm = jnp.sqrt(jnp.sum(half_squares) * 2)
  c = jnp.asarray(global_clipnorm).astype(dtype)
  one = jnp.ones((), dtype)
  return c * jnp.minimum(one / norm, one / c) + (norm - norm)


def clip_gradients(
    leaves: list[jax.Array],
    *,
    clipvalue: Optional[Any],
    clipnorm: Optional[Any],
    global_clipnorm: Optional[Any],
    round_=numerics.rounded,
) -> list[jax.Array]:
  """Applies tf_keras' clipping pipeline to a flat list of gradients.

  Args:
    leaves: the gradients (for sparse gradients, their rows).
    clipvalue: elementwise bound, or ``None``.
    clipnorm: per-tensor norm bound, or ``None``.
    global_clipnorm: bound on the norm of all gradients together, or ``None``.
    round_: the rounding hook of the rounding target.

  Returns:
    The clipped gradients, in the same order.
  """
  if clipvalue is not None:
    leaves = [clip_by_value(g, clipvalue) for g in leaves]
  if clipnorm is not None:
    leaves = [clip_by_norm(g, clipnorm, round_) for g in leaves]
  if global_clipnorm is not None and leaves:
    scale = global_norm_scale(leaves, global_clipnorm, round_)
    leaves = [g * scale.astype(g.dtype) for g in leaves]
  return leaves
