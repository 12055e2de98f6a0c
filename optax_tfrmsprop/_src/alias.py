"""The optimizers: ``rmsprop`` (the seed's Keras RMSprop), ``tf1_rmsprop``, ``keras3_rmsprop``."""

import numbers
from typing import Any, Optional

import jax
import numpy as np
import optax

from optax_tfrmsprop._src import base
from optax_tfrmsprop._src import cpu_kernel
from optax_tfrmsprop._src import numerics
from optax_tfrmsprop._src import transform


def _concrete_scalar(name: str, value: Any) -> Optional[float]:
  """``value`` as a float when it is known now; ``None`` when traced."""
  if isinstance(value, jax.core.Tracer):
    return None
  if isinstance(value, (jax.Array, np.ndarray, np.generic)):
    if np.ndim(value) != 0:
      raise ValueError(f"{name} must be a scalar, got shape {np.shape(value)}.")
    return float(value)
  if isinstance(value, numbers.Real) and not isinstance(value, bool):
    return float(value)
  raise TypeError(f"{name} must be a real number, got {name}={value!r}.")


def _check_range(name: str, value: Any, low: float, high: float = np.inf,
                 *, low_inclusive: bool = True) -> None:
  x = _concrete_scalar(name, value)
  if x is None:
    return
  too_low = x < low if low_inclusive else x <= low
  if too_low or x > high or np.isnan(x):
    bracket = "[" if low_inclusive else "("
    upper = "inf)" if high == np.inf else f"{high}]"
    raise ValueError(
        f"{name} must be in {bracket}{low}, {upper}, got {name}={value!r}.")


def validate_hyperparams(*, learning_rate, rho, momentum, epsilon, decay,
                         clipvalue, clipnorm, global_clipnorm) -> None:
  """Raises a ValueError naming the first invalid hyperparameter.

  Values known only at trace time (under ``jit`` or ``inject_hyperparams``)
  are not checked.
  """
  if not callable(learning_rate):
    _check_range("learning_rate", learning_rate, 0.0)
  _check_range("rho", rho, 0.0, 1.0)
  if not callable(momentum):
    _check_range("momentum", momentum, 0.0, 1.0)
  _check_range("epsilon", epsilon, 0.0)
  _check_range("decay", decay, 0.0)
  for name, value in (("clipvalue", clipvalue), ("clipnorm", clipnorm),
                      ("global_clipnorm", global_clipnorm)):
    if value is not None:
      _check_range(name, value, 0.0, low_inclusive=False)
  if clipnorm is not None and global_clipnorm is not None:
    raise ValueError(
        "Cannot accept both clipnorm and global_clipnorm, got "
        f"clipnorm={clipnorm!r}, global_clipnorm={global_clipnorm!r}.")


def uses_momentum(momentum: Any) -> bool:
  """TF's rule: the kernel path iff momentum is a tensor, a callable, or > 0.

  So ``momentum=jnp.asarray(0.)`` (and any momentum injected by
  ``optax.inject_hyperparams``) takes the kernel path, with epsilon inside the
  square root.
  """
  return numerics.is_tensor(momentum) or callable(momentum) or momentum > 0


def rmsprop(
    learning_rate: optax.ScalarOrSchedule = 0.001,
    rho: jax.typing.ArrayLike = 0.9,
    momentum: jax.typing.ArrayLike = 0.0,
    epsilon: jax.typing.ArrayLike = 1e-7,
    centered: bool = False,
    *,
    decay: jax.typing.ArrayLike = 0.0,
    clipnorm: Optional[jax.typing.ArrayLike] = None,
    clipvalue: Optional[jax.typing.ArrayLike] = None,
    global_clipnorm: Optional[jax.typing.ArrayLike] = None,
    rounding: base.Rounding = "tf_cpu",
    backend: cpu_kernel.Backend = "auto",
) -> optax.GradientTransformationExtraArgs:
  r"""TF2/Keras RMSprop (``tf_keras.optimizers.legacy.RMSprop``), bit-exact.

  Reproduces the optimizer of the TF 2.0 API page, which tf_keras keeps as the
  legacy optimizer, including its four dense paths (see
  :func:`rmsprop_update` for the equations):

  ======================  =======================  ==========================
  path                    TF implementation        epsilon
  ======================  =======================  ==========================
  momentum 0              graph ops                outside: ``sqrt(s) + eps``
  momentum 0, centered    graph ops                outside
  momentum > 0            ResourceApplyRMSProp     inside: ``sqrt(s + eps)``
  momentum, centered      ResourceApplyCentered..  inside
  ======================  =======================  ==========================

  With ``rounding="tf_cpu"`` the results are bit-identical, under ``jax.jit``,
  to TF's CPU kernels; ``"tf_xla"`` follows TF's XLA lowering instead. The
  updates are added to the params (``optax.apply_updates``); the learning rate
  is already inside them, and inside the momentum slot, as in TF.

  Hyperparameters are cast per leaf to the leaf's dtype as TF does:
  ``learning_rate``, ``rho``, ``momentum`` and ``decay`` through float32,
  ``epsilon`` directly, ``1 - rho`` in the leaf dtype.

  Optax equivalents: ``rho`` is optax's ``decay``, ``epsilon`` its ``eps``;
  optax's ``eps_in_sqrt`` is what the momentum flag decides here, and its
  ``initial_scale`` is 0.

  .. warning::
    As in TF, ``momentum`` selects the path: a Python number takes the kernel
    path only when it is > 0, but an array always does, even if zero. Under
    ``optax.inject_hyperparams`` every numeric argument becomes an array, so
    pass ``static_args=("momentum",)`` to keep the momentum-free path.

  Args:
    learning_rate: a float or an optax schedule; a schedule receives TF's
      ``iterations`` (the count before this step) cast to the leaf dtype.
    rho: discounting factor of the moving averages (optax's ``decay``).
    momentum: plain (not Nesterov) momentum coefficient, in [0, 1].
    epsilon: small constant for the denominator; ``0`` becomes ``1e-7`` as in
      Keras.
    centered: normalise by the estimated variance (adds the ``mg`` slot).
    decay: Keras' inverse-time decay, ``lr / (1 + decay * iterations)``.
    clipnorm: clip each gradient to this L2 norm.
    clipvalue: clip each gradient element to ``[-clipvalue, clipvalue]``.
    global_clipnorm: clip all gradients to this global L2 norm (not together
      with ``clipnorm``).
    rounding: ``"tf_cpu"`` (TF's CPU kernels) or ``"tf_xla"``
      (``jit_compile=True``, TPU).
    backend: how CPU lowerings compute the ``"tf_cpu"`` update: ``"ffi"``
      (the package's single-pass C++ kernel), ``"xla"`` (jnp), or ``"auto"``
      (the ``OPTAX_TFRMSPROP_BACKEND`` environment variable if set, else the
      kernel when built). Same bits either way; GPU and TPU always use jnp.
      See ``docs/cpu_kernel.md``.

  Returns:
    The corresponding :class:`optax.GradientTransformationExtraArgs`, whose
    state is an :class:`RMSpropState`.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> import optax_tfrmsprop
    >>> opt = optax_tfrmsprop.rmsprop(learning_rate=0.1)
    >>> params = jnp.array(10.0)
    >>> state = opt.init(params)
    >>> grads = jax.grad(lambda x: x**2 / 2)(params)
    >>> updates, state = opt.update(grads, state)
    >>> print(optax.apply_updates(params, updates))
    9.683772

  References:
    Hinton, `Neural Networks for Machine Learning, lecture 6e
    <http://www.cs.toronto.edu/~tijmen/csc321/slides/lecture_slides_lec6.pdf>`_,
    2012.
  """
  validate_hyperparams(
      learning_rate=learning_rate, rho=rho, momentum=momentum, epsilon=epsilon,
      decay=decay, clipvalue=clipvalue, clipnorm=clipnorm,
      global_clipnorm=global_clipnorm)
  numerics.rounder(rounding)  # Validates the name.
  cpu_kernel.check_backend(backend)
  use_momentum = uses_momentum(momentum)

  def init_fn(params):
    return transform.rmsprop_init(
        params, centered=centered, use_momentum=use_momentum)

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    return transform.rmsprop_update(
        updates, state, learning_rate=learning_rate, rho=rho,
        momentum=momentum, epsilon=epsilon, decay=decay, clipvalue=clipvalue,
        clipnorm=clipnorm, global_clipnorm=global_clipnorm, rounding=rounding,
        backend=backend)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _validate(*, learning_rate, rho, momentum, epsilon, rounding) -> None:
  validate_hyperparams(
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
        params, centered=centered, flavor="tf1")

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
  use_momentum = uses_momentum(momentum)

  def init_fn(params):
    return transform.rmsprop_init(
        params, centered=centered, use_momentum=use_momentum,
        flavor="keras3")

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    return transform.rmsprop_update(
        updates, state, learning_rate=learning_rate, rho=rho,
        momentum=momentum, epsilon=epsilon, rounding=rounding,
        flavor="keras3")

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
