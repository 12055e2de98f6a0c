r"""The per-leaf update math: TF's RMSprop paths P1-P8 for every flavor.

The only home of the update arithmetic. One leaf at a time, in TF's
evaluation order: the dense paths of the Keras legacy and TF1 optimizers
(P1-P4, for each rounding target), Keras 3's single formula, and the
row-sparse paths (P5-P8); :func:`update_leaf` picks one from the flavor's
``update_rule`` (:data:`~optax_tfrmsprop._src.base.SEMANTICS`).
:mod:`transform` applies them over trees and dispatches to the CPU kernel,
whose loops (``csrc/``) mirror the ``"tf_cpu"`` expressions here line by line:
change one, change both.

Complex and bfloat16 leaves run the same rules: with ``"tf_cpu"`` rounding on
:class:`~optax_tfrmsprop._src.numerics.EigenComplex` and
:class:`~optax_tfrmsprop._src.numerics.EigenBFloat16` values, whose operators
compute TF's Eigen arithmetic (the kernel has bfloat16 loops, no complex
ones).
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optax_tfrmsprop._src import base
from optax_tfrmsprop._src import numerics
from optax_tfrmsprop._src import sparse

# Eigen's float packets on the AVX build TF ships (8 lanes): the first
# ``PACKET * (row_width // PACKET)`` elements of each row of
# ResourceSparseApply[Centered]RMSProp take the vectorised rsqrt.
PACKET = numerics.EIGEN_PACKET_BYTES // np.dtype(np.float32).itemsize


def update_leaf(
  g,
  ms,
  mg,
  mom,
  h: base.Hyperparams,
  *,
  semantics: base.Semantics,
  rounding: base.Rounding,
):
  """One leaf of the flavor's update; returns ``(update, ms, mg, mom)``.

  The one dispatch on ``semantics.update_rule``: ``"keras3"`` runs
  :func:`keras3_leaf` on every gradient; ``"tf_kernels"`` runs
  :func:`sparse_leaf` on an ``IndexedSlices`` and :func:`dense_leaf` on an
  array. Complex and bfloat16 leaves in ``"tf_cpu"`` rounding run them in
  TF's Eigen arithmetic (:func:`eigen_operands`), and the results are
  unwrapped; ``"tf_xla"`` uses XLA's arithmetic, as TF's XLA does.

  Args:
    g: the (clipped) gradient: an array or an ``IndexedSlices``.
    ms: the ``ms`` slot.
    mg: the ``mg`` slot or ``None``.
    mom: the ``mom`` slot or ``None``; present means TF's momentum path.
    h: the hyperparameters in the leaf dtype.
    semantics: the flavor's table entry.
    rounding: the TF evaluation to reproduce.

  Returns:
    ``(update, ms, mg, mom)``: ``update`` is added to the variable; it is an
    ``IndexedSlices`` of row updates on TF's sparse paths.
  """
  g, h = eigen_operands(g, h, ms.dtype, rounding)
  if semantics.update_rule == "keras3":
    result = keras3_leaf(g, ms, mg, mom, h, numerics.rounder(rounding))
  elif isinstance(g, sparse.IndexedSlices):
    result = sparse_leaf(g, ms, mg, mom, h, numerics.rounder(rounding))
  else:
    result = dense_leaf(g, ms, mg, mom, h, rounding)
  update, ms, mg, mom = (numerics.plain(x) for x in result)
  if isinstance(update, sparse.IndexedSlices):
    update = sparse.IndexedSlices(
      numerics.plain(update.values), update.indices, update.dense_shape
    )
  return update, ms, mg, mom


def eigen_operands(g, h, dtype, rounding: base.Rounding, *slots):
  """``(g, h, *slots)`` in TF's Eigen arithmetic for leaves of ``dtype``.

  With ``"tf_cpu"`` rounding, complex hyperparameters and a dense complex
  gradient become :class:`~optax_tfrmsprop._src.numerics.EigenComplex` (the
  gradient marked with the elements TF computes in scalar code,
  :func:`~optax_tfrmsprop._src.numerics.eigen_tail`), and a dense bfloat16
  gradient and its hyperparameters
  :class:`~optax_tfrmsprop._src.numerics.EigenBFloat16`; so do the given
  slots (``None`` stays ``None``). Other operands, and ``"tf_xla"`` (XLA's
  own arithmetic, as TF's XLA), pass through. Results come back with
  :func:`~optax_tfrmsprop._src.numerics.plain`.

  Args:
    g: the gradient: an array or an ``IndexedSlices`` (kept as it is; its
      rows are converted after de-duplication).
    h: the hyperparameters in ``dtype``.
    dtype: the leaf dtype.
    rounding: the TF evaluation to reproduce.
    *slots: slots to convert too. Those left out are converted where they
      meet a converted operand, except in an operation between two slots.

  Returns:
    ``(g, h, *slots)``.
  """
  if rounding != "tf_cpu":
    return g, h, *slots
  dense = not isinstance(g, sparse.IndexedSlices)
  if numerics.is_complex(dtype):
    wrap = numerics.EigenComplex.wrap
    if dense:
      g = wrap(g, numerics.eigen_tail(g.shape, dtype))
  elif jnp.dtype(dtype) == jnp.bfloat16 and dense:
    wrap = numerics.EigenBFloat16.wrap
    g = wrap(g)
  else:
    return g, h, *slots
  h = type(h)._make(map(wrap, h))
  return g, h, *(None if x is None else wrap(x) for x in slots)


def keras3_leaf(g, ms, mg, mom, h: base.Hyperparams, r):
  """One leaf of Keras 3's ``RMSprop.update_step``; as :func:`update_leaf`.

  A single formula for every path: epsilon inside the square root, the plain
  EMA form, and momentum (when its slot exists) applied after the division.
  An ``IndexedSlices`` gradient goes through Keras 3's TF ops as they treat
  one: the elementwise products are taken row by row and densified
  (duplicates summed in order) where they meet a dense slot, the increment is
  divided row by row, and without momentum its rows are subtracted one by one
  (``scatter_sub``), so the update stays an ``IndexedSlices``.
  """
  lr, rho, c, mu, eps = h
  if isinstance(g, sparse.IndexedSlices):

    def rows(f):
      # Rounded, or XLA folds "zeros + rows, then + slot" into one scatter-add
      # onto the slot, which sums duplicates in another order.
      return r(
        sparse.IndexedSlices(f(g.values), g.indices, g.dense_shape).to_dense()
      )
  else:

    def rows(f):
      return f(g)

  ms = r(rho * ms) + rows(lambda x: r(c * (x * x)))
  denom = ms + eps
  if mg is not None:
    mg = r(rho * mg) + rows(lambda x: r(c * x))
    denom = (ms - r(mg * mg)) + eps
  root = r(numerics.sqrt(denom))
  if isinstance(g, sparse.IndexedSlices):
    at = sparse.valid_rows(jnp.asarray(g.indices), g.dense_shape[0])
    increment = sparse.IndexedSlices(
      numerics.quotient(lr * g.values, sparse.take_rows(root, at), r),
      g.indices,
      g.dense_shape,
    )
    if mom is None:
      return (
        sparse.IndexedSlices(-increment.values, g.indices, g.dense_shape),
        ms,
        mg,
        mom,
      )
    increment = r(increment.to_dense())
  else:
    increment = numerics.quotient(lr * g, root, r)
  if mom is None:
    return -increment, ms, mg, mom
  mom = r(mu * mom) + increment
  return -mom, ms, mg, mom


def dense_leaf(g, ms, mg, mom, h: base.Hyperparams, rounding: base.Rounding):
  """One dense leaf of TF's kernels rule (P1-P4); as :func:`update_leaf`.

  ``update`` is what is added to the variable (``-step``). TF1 always has the
  ``mom`` slot, so it always takes the kernel branch below.

  The "tf_cpu" expressions are mirrored line by line by the CPU kernel,
  ``csrc/dense_loops.h``: change one, change both (docs/cpu_kernel.md).
  """
  r = numerics.rounder(rounding)
  lr, rho, c, mu, eps = h
  if mom is None:
    # P1/P2: tf_keras' graph ops, epsilon outside the square root.
    ms = r(rho * ms) + r(c * (g * g))
    if mg is not None:
      mg = r(rho * mg) + r(c * g)
    return plain_update(g, ms, mg, h, r), ms, mg, mom
  if rounding == "tf_cpu":
    # P3/P4: the Eigen functors of ResourceApply[Centered]RMSProp, with their
    # incremental EMA form and epsilon inside the square root.
    ms = ms + r((r(g * g) - ms) * c)
    denom = ms + eps
    if mg is not None:
      mg = mg + r((g - mg) * c)
      denom = (ms - r(mg * mg)) + eps
    mom = r(mom * mu) + numerics.quotient(g * lr, r(numerics.sqrt(denom)), r)
  else:
    # P3/P4 as tf2xla lowers them (plain EMA form, rsqrt), for XLA to fuse.
    ms = (g * g) * c + ms * rho
    denom = ms + eps
    if mg is not None:
      mg = g * c + mg * rho
      denom = (ms - mg * mg) + eps
    mom = mom * mu + (g * lr) * jax.lax.rsqrt(denom)
  return -mom, ms, mg, mom


def plain_update(g, ms, mg, h: base.Hyperparams, r):
  """P1/P2's update from the new slots ``ms`` and ``mg`` (or ``None``).

  The end of :func:`dense_leaf`'s momentum-free branch, on its own so that
  the optax API can update the slots in the CPU kernel and compute this in
  the loop that applies it (``transform``): the kernel mirrors the slot
  lines, this mirrors the rest.
  """
  lr, _, _, _, eps = h
  denom = ms if mg is None else ms - r(mg * mg)
  return -numerics.quotient(lr * g, numerics.sqrt(denom) + eps, r)


def packet_rsqrt(x: Any, round_) -> Any:
  """Eigen's ``rsqrt`` over rows of ``x`` as TF's sparse kernels evaluate it.

  Per row of width ``W``, the first ``8 * (W // 8)`` elements use Eigen's
  packet rsqrt and the remaining ``W % 8`` ``1 / sqrt``. float32 packets are
  the hardware estimate refined by one Newton step; ``jax.lax.rsqrt`` is the
  same estimate and step on XLA:CPU, but with fused multiply-adds, so a lane
  can differ by an ULP (the CPU kernel, ``csrc/sparse_kernel.cc``, computes
  TF's exact packet rsqrt). float16 packets are the float32 rsqrt of the
  widened value rounded to half; float64 uses ``1 / sqrt`` throughout.

  Args:
    x: ``(n, ...)`` positive rows.
    round_: the rounding hook.

  Returns:
    ``rsqrt(x)``, rounded to ``x``'s dtype.
  """
  if isinstance(x, numerics.EigenComplex):
    return x.rsqrt()
  exact = 1 / round_(jnp.sqrt(x))
  if x.dtype == jnp.float64 or x.ndim < 1 or numerics.is_complex(x.dtype):
    return exact
  width = int(np.prod(x.shape[1:]))
  packet_width = PACKET * (width // PACKET)
  if packet_width == 0:
    return exact
  if x.dtype == jnp.float32:
    packet = jax.lax.rsqrt(x)
  else:
    packet = jax.lax.rsqrt(x.astype(jnp.float32)).astype(x.dtype)
  lane = jnp.arange(width).reshape(x.shape[1:])
  return jnp.where(lane < packet_width, packet, exact)


def sparse_leaf(g: sparse.IndexedSlices, ms, mg, mom, h, round_):
  r"""One sparse leaf (P5-P8); returns ``(update, ms, mg, mom)``.

  ``G`` and ``I`` are the de-duplicated rows and indices, every operation
  rounds to the leaf dtype in the order written, and ``update`` is an
  :class:`~optax_tfrmsprop.IndexedSlices` of row increments on the unique
  indices ``I``
  (padded with out-of-range rows).

  Without momentum (P5/P6: tf_keras' graph ops, with grappler's rewrite of
  ``(G G) c`` into ``(G c) G`` that every ``tf.function`` gets):

  .. math::

    s \leftarrow s \rho \text{ (every row)},\;
    s_I \leftarrow s_I + (G c) G,\;
    [\bar g \leftarrow \bar g \rho,\; \bar g_I \leftarrow \bar g_I + G c],\;
    u_I = \frac{(-\eta) G}{\sqrt{s_I [- \bar g_I \bar g_I]} + \epsilon}

  With momentum (P7/P8: ``ResourceSparseApply[Centered]RMSProp``, only rows
  ``I`` of any slot change):

  .. math::

    s_I \leftarrow s_I \rho + (G G) c,\;
    [\bar g_I \leftarrow \bar g_I \rho + G c],\;
    m_I \leftarrow m_I \mu + (\mathrm{rsqrt}((s_I + \epsilon)
      [- \bar g_I \bar g_I]) \eta) G,\;
    u_I = -m_I

  Args:
    g: the (clipped) gradient.
    ms: the ``ms`` slot.
    mg: the ``mg`` slot or ``None``.
    mom: the ``mom`` slot or ``None``.
    h: the hyperparameters materialised in the leaf dtype.
    round_: the rounding hook.

  Returns:
    ``(update, ms, mg, mom)``.
  """
  lr, rho, c, mu, eps = h
  num_rows = ms.shape[0]
  grad, rows = sparse.deduplicate(g.values, g.indices, num_rows)
  if isinstance(lr, numerics.EigenComplex):
    # TF's tensors hold the u de-duplicated rows; the rest is padding.
    if mom is None:
      width = int(np.prod(ms.shape[1:]))
      valid = jnp.sum(rows < num_rows) * width
      tail = numerics.eigen_tail(grad.shape, ms.dtype, valid)
    else:
      tail = True  # No complex rsqrt packet: the kernels run scalar code.
    grad = numerics.EigenComplex.wrap(grad, tail)
  take = lambda slot: sparse.take_rows(numerics.plain(slot), rows)
  put = lambda slot, new: (
    numerics.plain(slot).at[rows].set(numerics.plain(new), mode="drop")
  )
  if mom is None:
    ms = round_(ms * rho)
    ms_rows = take(ms) + round_((grad * c) * grad)
    ms = put(ms, ms_rows)
    denom = ms_rows
    if mg is not None:
      mg = round_(mg * rho)
      mg_rows = take(mg) + round_(grad * c)
      mg = put(mg, mg_rows)
      denom = ms_rows - round_(mg_rows * mg_rows)
    step = numerics.quotient((-lr) * grad, numerics.sqrt(denom) + eps, round_)
    return sparse.IndexedSlices(step, rows, g.dense_shape), ms, mg, mom
  # P7/P8: mirrored line by line by csrc/sparse_kernel.cc::UpdateRow, which
  # the "ffi" backend runs on CPU; change one, change both.
  ms_rows = round_(take(ms) * rho) + round_((grad * grad) * c)
  denom = ms_rows + eps
  if mg is not None:
    mg_rows = round_(take(mg) * rho) + round_(grad * c)
    mg = put(mg, mg_rows)
    denom = denom - round_(mg_rows * mg_rows)
  scale = packet_rsqrt(denom, round_) * lr
  mom_rows = round_(take(mom) * mu) + round_(scale * grad)
  ms, mom = put(ms, ms_rows), put(mom, mom_rows)
  return sparse.IndexedSlices(-mom_rows, rows, g.dense_shape), ms, mg, mom
