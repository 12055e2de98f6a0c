r"""RMSprop of the other TF/Keras generations: TF1 and Keras 3.

Both presets are thin optax wrappers over :func:`rmsprop_init` and
:func:`rmsprop_update`; the ``flavor`` argument of the latter selects how
hyperparameters reach each leaf dtype and, for Keras 3, its single update
formula. :func:`optax_tfrmsprop.rmsprop` stays the Keras-legacy (TF 2.0-2.10)
optimizer.
"""

import jax
import optax

from optax_tfrmsprop._src import alias
from optax_tfrmsprop._src import base
from optax_tfrmsprop._src import numerics
from optax_tfrmsprop._src import transform


def _validate(*, learning_rate, rho, momentum, epsilon, rounding) -> None:
  alias.validate_hyperparams(
      learning_rate=learning_rate, rho=rho, momentum=momentum,
      epsilon=epsilon, decay=0.0, clipvalue=None, clipnorm=None,
      global_clipnorm=None)
  numerics.rounder(rounding)  # Validates the name.


def tf1_rmsprop(
    learning_rate: optax.ScalarOrSchedule,
    decay: jax.typing.ArrayLike = 0.9,
    momentum: jax.typing.ArrayLike = 0.0,
    epsilon: jax.typing.ArrayLike = 1e-10,
    centered: bool = False,
    *,
    rounding: base.Rounding = "tf_cpu",
) -> optax.GradientTransformationExtraArgs:
  r"""TF1's ``tf.compat.v1.train.RMSPropOptimizer``, bit-exact.

  The optimizer of the TF1 reference implementations (EfficientNet, MobileNet,
  MnasNet, Inception). It differs from :func:`optax_tfrmsprop.rmsprop`:

  * it always runs TF's kernels ``ResourceApply[Centered]RMSProp``, even with
    ``momentum=0``, so epsilon is always inside the square root and the
    ``mom`` slot always exists;
  * ``ms`` (TF1's ``rms`` slot) starts at **ones**, not zeros;
  * every hyperparameter, ``epsilon`` included, goes through a float32 tensor
    before the cast to the leaf dtype, and ``epsilon=0`` is kept;
  * there is no decay, clipping or iteration counter in TF1 itself
    (``state.count`` still counts steps, for schedules).

  With :math:`c = 1 - \rho` computed in the leaf dtype and every operation
  rounded in the order written (``centered`` adds the bracketed terms):

  .. math::

    s \leftarrow s + ((g g) - s) c,\;
    [\bar g \leftarrow \bar g + (g - \bar g) c],\;
    m \leftarrow (m \mu) + \frac{g \eta}{\sqrt{(s\,[-\,\bar g \bar g]) +
    \epsilon}},\; u = -m

  ``rounding="tf_xla"`` follows TF's XLA lowering of the same kernels
  (``jit_compile=True``, TPU). Optax equivalents: ``decay`` is optax's
  ``decay``, ``epsilon`` its ``eps`` with ``eps_in_sqrt=True``, and
  ``initial_scale=1``.

  Args:
    learning_rate: a float or an optax schedule (called with the step count;
      TF1 users pass a tensor built from ``global_step``).
    decay: discounting factor of the moving averages (Keras' ``rho``).
    momentum: plain momentum coefficient; 0 still uses the momentum kernel.
    epsilon: added to the mean square inside the square root; TF1's default
      is 1e-10, and 0 is honoured.
    centered: normalise by the estimated variance (adds the ``mg`` slot).
    rounding: ``"tf_cpu"`` (TF's CPU kernels) or ``"tf_xla"``.

  Returns:
    The corresponding :class:`optax.GradientTransformationExtraArgs`, whose
    state is an :class:`RMSpropState` with ``mom`` always present.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> import optax_tfrmsprop
    >>> opt = optax_tfrmsprop.tf1_rmsprop(learning_rate=0.1)
    >>> params = jnp.array(10.0)
    >>> state = opt.init(params)
    >>> for _ in range(5):
    ...   grads = jax.grad(lambda x: x**2 / 2)(params)
    ...   updates, state = opt.update(grads, state)
    ...   params = optax.apply_updates(params, updates)
    >>> print(params)
    8.978178

  References:
    TensorFlow, `tf.compat.v1.train.RMSPropOptimizer
    <https://www.tensorflow.org/api_docs/python/tf/compat/v1/train/RMSPropOptimizer>`_.
  """
  _validate(learning_rate=learning_rate, rho=decay, momentum=momentum,
            epsilon=epsilon, rounding=rounding)

  def init_fn(params):
    return transform.rmsprop_init(
        params, centered=centered, use_momentum=True, initial_ms=1.0)

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    return transform.rmsprop_update(
        updates, state, learning_rate=learning_rate, rho=decay,
        momentum=momentum, epsilon=epsilon, rounding=rounding, flavor="tf1")

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def keras3_rmsprop(
    learning_rate: optax.ScalarOrSchedule = 0.001,
    rho: jax.typing.ArrayLike = 0.9,
    momentum: jax.typing.ArrayLike = 0.0,
    epsilon: jax.typing.ArrayLike = 1e-7,
    centered: bool = False,
    *,
    rounding: base.Rounding = "tf_cpu",
) -> optax.GradientTransformationExtraArgs:
  r"""Keras 3's ``keras.optimizers.RMSprop`` (TF backend), bit-exact.

  The optimizer of current Keras (``tf.keras`` from TF 2.16 on). It differs
  from :func:`optax_tfrmsprop.rmsprop`:

  * one formula on every path, with epsilon **inside** the square root even
    without momentum, and the plain EMA form;
  * ``1 - rho`` is computed in double from the Python float and then
    converted, so in float32 it is 0.1, not tf_keras' 0.100000024;
    ``rho``, ``momentum`` and ``epsilon`` go straight from double to the leaf
    dtype (an array ``rho`` computes ``1 - rho`` in its own dtype instead);
    the learning rate goes through float32, as Keras keeps it in a float32
    variable;
  * ``epsilon=0`` is kept, and the ``mom`` slot exists only when
    ``momentum > 0``.

  With every operation rounded in the order written (``centered`` adds the
  first pair of brackets, ``momentum > 0`` the second):

  .. math::

    s \leftarrow (\rho s) + (c (g g)),\;
    [\bar g \leftarrow (\rho \bar g) + (c g)],\;
    i = \frac{\eta_t g}{\sqrt{(s\,[-\,\bar g \bar g]) + \epsilon}},\;
    [m \leftarrow (\mu m) + i],\; u = -i \text{ or } -m

  ``rounding="tf_xla"`` follows the same ops under TF's XLA compilation
  (``jit_compile=True``, Keras' default on TPU). Optax equivalents: ``rho`` is
  optax's ``decay`` and ``epsilon`` its ``eps`` with ``eps_in_sqrt=True``.

  Args:
    learning_rate: a float or an optax schedule (called, as Keras 3 does, with
      the integer iteration count before this step).
    rho: discounting factor of the moving averages.
    momentum: plain momentum coefficient; the ``mom`` slot exists only if a
      Python number > 0 or an array is given.
    epsilon: added to the mean square inside the square root; 0 is kept.
    centered: normalise by the estimated variance (adds the ``mg`` slot).
    rounding: ``"tf_cpu"`` (TF's CPU kernels) or ``"tf_xla"``.

  Returns:
    The corresponding :class:`optax.GradientTransformationExtraArgs`, whose
    state is an :class:`RMSpropState`.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> import optax_tfrmsprop
    >>> opt = optax_tfrmsprop.keras3_rmsprop(learning_rate=0.1)
    >>> params = jnp.array(10.0)
    >>> state = opt.init(params)
    >>> grads = jax.grad(lambda x: x**2 / 2)(params)
    >>> updates, state = opt.update(grads, state)
    >>> print(optax.apply_updates(params, updates))
    9.683772

  References:
    Keras, `RMSprop <https://keras.io/api/optimizers/rmsprop/>`_.
  """
  _validate(learning_rate=learning_rate, rho=rho, momentum=momentum,
            epsilon=epsilon, rounding=rounding)
  use_momentum = alias.uses_momentum(momentum)

  def init_fn(params):
    return transform.rmsprop_init(
        params, centered=centered, use_momentum=use_momentum)

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    return transform.rmsprop_update(
        updates, state, learning_rate=learning_rate, rho=rho,
        momentum=momentum, epsilon=epsilon, rounding=rounding,
        flavor="keras3")

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
