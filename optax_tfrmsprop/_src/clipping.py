"""Gradient clipping: tf_keras' clipvalue, clipnorm and global_clipnorm.

tf_keras' legacy optimizer clips in ``apply_gradients``, before the update, in
the order clipvalue, clipnorm, global_clipnorm (``tensorflow/python/ops/
clip_ops.py`` gives the formulas). Elementwise steps round as TF rounds, and
with ``rounding="tf_cpu"`` the norms of float32/float64 gradients are summed in
Eigen's order (:func:`numerics.eigen_sum`), so clipping is bitwise TF's too.
Every product that a later sum or difference consumes (the halved squares of
the global norm, the scaled gradients that the update subtracts from ``mg``)
goes through the rounding hook, or XLA would fuse it into a multiply-add.
"""

from typing import Any

import jax
import jax.numpy as jnp

from optax_tfrmsprop._src import base
from optax_tfrmsprop._src import numerics


def _sum(x: jax.Array, rounding) -> jax.Array:
  """``reduce_sum`` as the rounding target computes it."""
  if rounding == "tf_cpu" and x.dtype in (jnp.float32, jnp.float64):
    return numerics.eigen_sum(x)
  return jnp.sum(x)


def clip_by_value(g: jax.Array, clipvalue: Any) -> jax.Array:
  """``tf.clip_by_value(g, -v, v)``: ``max(min(g, v), -v)``; NaN passes."""
  v = jnp.asarray(clipvalue).astype(g.dtype)
  return jnp.maximum(jnp.minimum(g, v), -v)


def clip_by_norm(g: jax.Array, clipnorm: Any, rounding) -> jax.Array:
  """``tf.clip_by_norm``: ``(g * C) / max(norm(g), C)``, per tensor.

  Not the identity when the norm is below ``C``: ``(g * C) / C`` rounds twice.

  Args:
    g: a gradient.
    clipnorm: the norm bound ``C``, cast directly to ``g``'s dtype.
    rounding: the rounding target.

  Returns:
    The clipped gradient.
  """
  round_ = numerics.rounder(rounding)
  c = jnp.asarray(clipnorm).astype(g.dtype)
  squares = _sum(round_(g * g), rounding)
  positive = squares > 0
  norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, squares, 1)), squares)
  return numerics.divide(g * c, jnp.maximum(norm, c))


def global_norm_scale(leaves: list[jax.Array], global_clipnorm: Any, rounding):
  """The factor ``tf.clip_by_global_norm`` multiplies every gradient by.

  ``norm = sqrt(2 * sum(l2_loss(g)))`` with ``l2_loss(g) = sum(g * g * 0.5)``,
  then ``scale = C * min(1 / norm, 1 / C) + (norm - norm)``, so a non-finite
  norm gives NaN.

  Args:
    leaves: the gradients, all of one dtype (TF raises otherwise; see
      ``transform._check_global_clipnorm_dtypes``).
    global_clipnorm: the bound ``C``.
    rounding: the rounding target.

  Returns:
    A scalar of the gradients' dtype.
  """
  round_ = numerics.rounder(rounding)
  dtype = leaves[0].dtype
  half_squares = jnp.stack(
    [_sum(round_(round_(g * g) * 0.5), rounding) for g in leaves]
  )
  norm = jnp.sqrt(_sum(half_squares, rounding) * 2)
  c = jnp.asarray(global_clipnorm).astype(dtype)
  one = jnp.ones((), dtype)
  return round_(c * jnp.minimum(one / norm, one / c)) + (norm - norm)


def clip_gradients(
  leaves: list[jax.Array],
  *,
  clipvalue: Any | None,
  clipnorm: Any | None,
  global_clipnorm: Any | None,
  rounding: base.Rounding = "tf_cpu",
) -> list[jax.Array]:
  """Applies tf_keras' clipping pipeline to a flat list of gradients.

  Args:
    leaves: the gradients (for sparse gradients, their rows).
    clipvalue: elementwise bound, or ``None``.
    clipnorm: per-tensor norm bound, or ``None``.
    global_clipnorm: bound on the norm of all gradients together, or ``None``.
    rounding: the rounding target.

  Returns:
    The clipped gradients, in the same order.
  """
  if clipvalue is not None:
    leaves = [clip_by_value(g, clipvalue) for g in leaves]
  if clipnorm is not None:
    leaves = [clip_by_norm(g, clipnorm, rounding) for g in leaves]
  if global_clipnorm is not None and leaves:
    round_ = numerics.rounder(rounding)
    scale = global_norm_scale(leaves, global_clipnorm, rounding)
    # Rounded: ``g * scale`` feeds ``g - mg`` of the centered kernels (P4).
    leaves = [round_(g * scale.astype(g.dtype)) for g in leaves]
  return leaves
