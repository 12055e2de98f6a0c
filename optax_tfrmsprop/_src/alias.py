"""The optimizers ``rmsprop``, ``tf1_rmsprop``, ``keras3_rmsprop``: one factory.

Each is an ``optax.GradientTransformationExtraArgs`` built by the private
:func:`_rmsprop` from its flavor (:data:`~optax_tfrmsprop._src.base.SEMANTICS`)
and its arguments, validated once at construction.
"""

from typing import Any

import jax
import optax

from optax_tfrmsprop._src import base
from optax_tfrmsprop._src import cpu_kernel
from optax_tfrmsprop._src import transform

# Kept importable from here: the Keras-style class and older code use them.
validate_hyperparams = transform.validate_hyperparams


def uses_momentum(momentum: Any) -> bool:
  """tf_keras' rule: the kernel path iff momentum is a tensor, callable or > 0.

  So ``momentum=jnp.asarray(0.)`` (and any momentum injected by
  ``optax.inject_hyperparams``) takes the kernel path, with epsilon inside the
  square root. The rule of every flavor is
  :meth:`~optax_tfrmsprop._src.base.Semantics.uses_momentum`.
  """
  return base.SEMANTICS["keras_legacy"].uses_momentum(momentum)


def _check_slots_match(
  state: Any, centered: bool, use_momentum: bool, momentum: Any
) -> None:
  """Raises a ValueError unless ``state`` has the slots this optimizer makes.

  The slots pick TF's path (``mg``: centered, ``mom``: the momentum kernels),
  so a state built by another configuration would silently step another
  optimizer. (:func:`transform.rmsprop_update` takes its path from the state
  on purpose.) Anything but a state is left to :func:`transform.step`.
  """
  if not isinstance(state, base.RMSpropState):
    return
  for slot, made in (("mg", centered), ("mom", use_momentum)):
    if (getattr(state, slot) is not None) != made:
      raise ValueError(
        f"The state {'lacks' if made else 'has'} the {slot} slot, but this "
        f"optimizer (momentum={momentum!r}, centered={centered}) "
        f"{'makes' if made else 'makes no'} {slot}: TF would take another "
        "path. Step the state this optimizer's init built (or call "
        "rmsprop_update, whose path follows the state)."
      )


def _rmsprop(
  flavor: base.Flavor,
  *,
  learning_rate: optax.ScalarOrSchedule,
  rho: jax.typing.ArrayLike,
  momentum: jax.typing.ArrayLike,
  epsilon: jax.typing.ArrayLike,
  centered: bool,
  rounding: base.Rounding,
  decay: jax.typing.ArrayLike = 0.0,
  clipvalue: jax.typing.ArrayLike | None = None,
  clipnorm: jax.typing.ArrayLike | None = None,
  global_clipnorm: jax.typing.ArrayLike | None = None,
  backend: cpu_kernel.Backend = "auto",
) -> optax.GradientTransformationExtraArgs:
  """Builds the optimizer of ``flavor``: the factory of the three aliases.

  The arguments are validated once, into a :class:`transform.UpdateConfig`;
  ``init_fn`` makes the flavor's state with the slots TF would create and
  ``update_fn`` steps it with that config (:func:`transform.step`).
  """
  config = transform.UpdateConfig(
    learning_rate=learning_rate,
    rho=rho,
    momentum=momentum,
    epsilon=epsilon,
    decay=decay,
    clipvalue=clipvalue,
    clipnorm=clipnorm,
    global_clipnorm=global_clipnorm,
    rounding=rounding,
    backend=backend,
    flavor=flavor,
  )
  for name in ("clipvalue", "clipnorm", "global_clipnorm"):
    value = getattr(config, name)
    # TF accepts 0, which maps every gradient to 0 (or NaN): refused here.
    if value is not None and transform.concrete_scalar(name, value) == 0:
      raise ValueError(f"{name} must be in (0.0, inf), got {name}={value!r}.")
  semantics = base.semantics(flavor)
  use_momentum = semantics.uses_momentum(momentum)

  def init_fn(params):
    return transform.rmsprop_init(
      params, centered=centered, use_momentum=use_momentum, flavor=flavor
    )

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    _check_slots_match(state, centered, use_momentum, momentum)
    return transform.step(updates, state, config)

  # optax's OptState alias does not name chex dataclasses, which are pytrees.
  return optax.GradientTransformationExtraArgs(init_fn, update_fn)  # pyrefly: ignore[bad-argument-type]


def rmsprop(
  learning_rate: optax.ScalarOrSchedule = 0.001,
  rho: jax.typing.ArrayLike = 0.9,
  momentum: jax.typing.ArrayLike = 0.0,
  epsilon: jax.typing.ArrayLike = 1e-7,
  centered: bool = False,
  *,
  decay: jax.typing.ArrayLike = 0.0,
  clipnorm: jax.typing.ArrayLike | None = None,
  clipvalue: jax.typing.ArrayLike | None = None,
  global_clipnorm: jax.typing.ArrayLike | None = None,
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
  return _rmsprop(
    "keras_legacy",
    learning_rate=learning_rate,
    rho=rho,
    momentum=momentum,
    epsilon=epsilon,
    centered=centered,
    decay=decay,
    clipvalue=clipvalue,
    clipnorm=clipnorm,
    global_clipnorm=global_clipnorm,
    rounding=rounding,
    backend=backend,
  )


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
  transform.check_range("decay", decay, 0.0, 1.0)  # TF1's name for rho.
  return _rmsprop(
    "tf1",
    learning_rate=learning_rate,
    rho=decay,
    momentum=momentum,
    epsilon=epsilon,
    centered=centered,
    rounding=rounding,
  )


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
  return _rmsprop(
    "keras3",
    learning_rate=learning_rate,
    rho=rho,
    momentum=momentum,
    epsilon=epsilon,
    centered=centered,
    rounding=rounding,
  )
