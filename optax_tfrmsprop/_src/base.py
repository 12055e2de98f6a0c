"""The vocabulary: state classes, the per-flavor table of TF facts, types.

Everything that differs between the generations of TF/Keras RMSprop is data in
:data:`SEMANTICS`, read by every layer (update rules, optimizers, the
Keras-style class, checkpoint interchange); the state's class says which
generation it belongs to, so a state cannot be stepped by another's rules.
:class:`Hyperparams` is the record of hyperparameters one leaf dtype sees, in
the C++ kernel's operand order.
"""

import dataclasses
from typing import Any, ClassVar, Literal, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

Rounding = Literal["tf_cpu", "tf_xla"]
"""Which TensorFlow evaluation the update reproduces bit for bit.

* ``"tf_cpu"``: TF's CPU graph ops and Eigen kernels (the default; what
  ``tf.function`` and ``Model.fit`` run on CPU). Every op rounds to the
  parameter dtype in TF's order; XLA's fused multiply-adds and ``rsqrt``
  rewrites are blocked.
* ``"tf_xla"``: TF's XLA lowering (``jit_compile=True``, TPU). The same ops in
  the order TF's tf2xla kernels build them, left to XLA to fuse.
"""

ROUNDINGS: tuple[str, ...] = ("tf_cpu", "tf_xla")

Flavor = Literal["keras_legacy", "tf1", "keras3"]
"""Which generation of TF/Keras RMSprop the update reproduces.

* ``"keras_legacy"``: ``tf_keras.optimizers.legacy.RMSprop`` (TF 2.0-2.10's
  ``tf.keras.optimizers.RMSprop``): graph ops without momentum, the kernels
  with it; hyperparameters through float32 except epsilon.
* ``"tf1"``: ``tf.compat.v1.train.RMSPropOptimizer``: always the kernels; every
  hyperparameter, epsilon included, through float32.
* ``"keras3"``: ``keras.optimizers.RMSprop`` (Keras 3): one formula with
  epsilon inside the square root; Python hyperparameters converted straight
  from double, ``1 - rho`` computed in double.
"""

FLAVORS: tuple[str, ...] = ("keras_legacy", "tf1", "keras3")


@dataclasses.dataclass(frozen=True)
class Semantics:
  """What one generation of TF/Keras RMSprop computes, as data.

  Attributes:
    flavor: the :data:`Flavor` it describes.
    optimizer: the TF/Keras class reproduced.
    initial_ms: the initial value of the ``ms`` slot (TF1: ones).
    always_momentum: TF's momentum kernels run even with ``momentum=0`` (TF1),
      so the ``mom`` slot always exists.
    update_rule: ``"tf_kernels"``: TF's graph ops without a ``mom`` slot
      (P1/P2, epsilon outside the square root), its kernels with one (P3/P4),
      and row-sparse ``IndexedSlices`` paths (P5-P8); ``"keras3"``: Keras 3's
      single formula, epsilon inside the square root, sparse gradients
      densified.
    hypers_through_float32: ``rho`` and ``momentum`` given as Python numbers
      are rounded to float32 before the cast to the leaf dtype (TF keeps them
      in float32 variables); otherwise they go straight from double. The
      learning rate and ``decay`` always go through float32.
    epsilon_through_float32: a Python ``epsilon`` is rounded to float32 first
      (TF1's tensor); otherwise it goes straight to the leaf dtype.
    zero_epsilon_is_default: ``epsilon=0`` (or ``None``) means Keras' 1e-7.
    one_minus_rho_in_double: ``1 - rho`` of a Python ``rho`` is computed in
      double and then converted (Keras 3); otherwise in the leaf dtype.
    schedule_step_in_leaf_dtype: a schedule is called with the step count cast
      to the leaf dtype (tf_keras legacy); otherwise with the integer count.
    options: the optional gradient processing the TF optimizer itself has
      (Keras' inverse-time ``decay`` and its clipping); the others raise
      rather than compute something no TF optimizer of that flavor computes.
    slots: ``(state field, TF slot name)`` in TF's creation order.
    complex_sparse: an ``IndexedSlices`` gradient of a complex variable
      trains; otherwise TF raises a TypeError (Keras 3's sparse division
      calls ``tf.math.is_nan``, which has no complex kernel).
    complex128_exact: complex128 variables are updated in complex128. Keras
      3 promotes complex128 with a Python float (and with complex64) to
      complex64 (``keras.backend.result_type``), so most of its update of a
      complex128 variable runs in complex64; that is not reproduced, and
      such leaves raise a TypeError.
  """

  flavor: str
  optimizer: str
  initial_ms: float
  always_momentum: bool
  update_rule: Literal["tf_kernels", "keras3"]
  hypers_through_float32: bool
  epsilon_through_float32: bool
  zero_epsilon_is_default: bool
  one_minus_rho_in_double: bool
  schedule_step_in_leaf_dtype: bool
  options: tuple[str, ...]
  slots: tuple[tuple[str, str], ...]
  complex_sparse: bool = True
  complex128_exact: bool = True

  def uses_momentum(self, momentum: Any) -> bool:
    """Whether TF takes its momentum path (and creates the ``mom`` slot).

    TF1 always does. tf_keras' rule (kept for Keras 3's slot): momentum is a
    tensor, a callable, or a number > 0. So ``momentum=jnp.asarray(0.)`` (and
    any momentum injected by ``optax.inject_hyperparams``) takes the kernel
    path, with epsilon inside the square root.

    Args:
      momentum: the ``momentum`` hyperparameter as given.

    Returns:
      Whether the state has a ``mom`` slot.
    """
    return (
      self.always_momentum
      or isinstance(momentum, jax.Array)
      or callable(momentum)
      or momentum > 0
    )


SEMANTICS: dict[str, Semantics] = {
  "keras_legacy": Semantics(
    flavor="keras_legacy",
    optimizer="tf_keras.optimizers.legacy.RMSprop",
    initial_ms=0.0,
    always_momentum=False,
    update_rule="tf_kernels",
    hypers_through_float32=True,
    epsilon_through_float32=False,
    zero_epsilon_is_default=True,
    one_minus_rho_in_double=False,
    schedule_step_in_leaf_dtype=True,
    options=("decay", "clipvalue", "clipnorm", "global_clipnorm"),
    slots=(("ms", "rms"), ("mom", "momentum"), ("mg", "mg")),
  ),
  "tf1": Semantics(
    flavor="tf1",
    optimizer="tf.compat.v1.train.RMSPropOptimizer",
    initial_ms=1.0,
    always_momentum=True,
    update_rule="tf_kernels",
    hypers_through_float32=True,
    epsilon_through_float32=True,
    zero_epsilon_is_default=False,
    one_minus_rho_in_double=False,
    schedule_step_in_leaf_dtype=False,
    options=(),
    slots=(("ms", "rms"), ("mg", "mg"), ("mom", "momentum")),
  ),
  "keras3": Semantics(
    flavor="keras3",
    optimizer="keras.optimizers.RMSprop",
    initial_ms=0.0,
    always_momentum=False,
    update_rule="keras3",
    hypers_through_float32=False,
    epsilon_through_float32=False,
    zero_epsilon_is_default=False,
    one_minus_rho_in_double=True,
    schedule_step_in_leaf_dtype=False,
    # Keras 3 clips with formulas of its own (not reproduced) and ignores
    # ``decay`` with a warning.
    options=(),
    slots=(("ms", "velocity"), ("mom", "momentum"), ("mg", "average_gradient")),
    complex_sparse=False,
    complex128_exact=False,
  ),
}
""":class:`Semantics` of each :data:`Flavor`."""


def semantics(flavor: str) -> Semantics:
  """The :class:`Semantics` of ``flavor``; a ValueError names a wrong one."""
  if flavor not in SEMANTICS:
    raise ValueError(f"flavor must be one of {FLAVORS}, got flavor={flavor!r}.")
  return SEMANTICS[flavor]


class Hyperparams(NamedTuple):
  """The hyperparameters one leaf dtype sees, in the C++ kernel's order.

  TF materialises them once per variable dtype (``_prepare_local``); every
  field is a scalar of that dtype, made by
  :func:`optax_tfrmsprop._src.numerics.hyperparams` from :data:`SEMANTICS`.

  Attributes:
    lr: the learning rate at this step (schedule and ``decay`` applied).
    rho: the discounting factor.
    one_minus_rho: ``1 - rho`` as the flavor computes it.
    momentum: the momentum coefficient.
    epsilon: epsilon, after the flavor's rule for zero.

  Example:
    >>> import jax.numpy as jnp
    >>> h = Hyperparams(*jnp.float32([0.1, 0.9, 0.1, 0.0, 1e-7]))
    >>> h.operand().shape
    (5,)
  """

  lr: jax.Array
  rho: jax.Array
  one_minus_rho: jax.Array
  momentum: jax.Array
  epsilon: jax.Array

  def operand(self) -> jax.Array:
    """The kernel's hyperparameter operand ``[lr, rho, 1 - rho, mu, eps]``."""
    return jnp.stack(self)


@chex.dataclass(frozen=True, mappable_dataclass=False)
class RMSpropState:
  """State of :func:`optax_tfrmsprop.rmsprop`, laid out like TF's slots.

  A slot that the configuration does not use is ``None`` (an empty pytree, so
  it costs nothing in checkpoints and is decided statically at ``init``).

  Attributes:
    count: TF's ``iterations``: the number of updates applied so far.
      ``shape=(), dtype=int32``, saturating at the int32 maximum.
    ms: TF's ``rms`` slot, the moving average of squared gradients; a tree
      shaped and typed like the params.
    mg: TF's ``mg`` slot, the moving average of gradients; like ``ms`` when
      ``centered``, else ``None``.
    mom: TF's ``momentum`` slot; like ``ms`` when the momentum path is taken,
      else ``None``.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax_tfrmsprop
    >>> opt = optax_tfrmsprop.rmsprop(learning_rate=0.1, centered=True)
    >>> state = opt.init({"w": jnp.ones(2)})
    >>> state.count, state.mg["w"], state.mom
    (Array(0, dtype=int32), Array([0., 0.], dtype=float32), None)
  """

  flavor: ClassVar[str] = "keras_legacy"

  count: chex.Array
  ms: optax.Updates
  mg: optax.Updates | None = None
  mom: optax.Updates | None = None


@chex.dataclass(frozen=True, mappable_dataclass=False)
class TF1RMSpropState(RMSpropState):
  """State of :func:`optax_tfrmsprop.tf1_rmsprop`: TF1's slots (``mom`` always).

  The class marks the state as TF1's, so only TF1's rules step it.

  Attributes:
    count: the number of updates applied so far (TF1 itself has none; a
      schedule is called with it).
    ms: TF1's ``rms`` slot; it starts at ones.
    mg: TF1's ``mg`` slot when ``centered``, else ``None``.
    mom: TF1's ``momentum`` slot, always present.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax_tfrmsprop
    >>> state = optax_tfrmsprop.tf1_rmsprop(0.1).init(jnp.zeros(2))
    >>> type(state).__name__, state.ms
    ('TF1RMSpropState', Array([1., 1.], dtype=float32))
  """

  flavor: ClassVar[str] = "tf1"


@chex.dataclass(frozen=True, mappable_dataclass=False)
class Keras3RMSpropState(RMSpropState):
  """State of :func:`optax_tfrmsprop.keras3_rmsprop`: Keras 3's variables.

  The class marks the state as Keras 3's, so only Keras 3's rules step it.

  Attributes:
    count: Keras 3's ``iteration``.
    ms: Keras 3's ``velocity`` variables.
    mg: its ``average_gradient`` variables when ``centered``, else ``None``.
    mom: its ``momentum`` variables when ``momentum > 0``, else ``None``.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax_tfrmsprop
    >>> state = optax_tfrmsprop.keras3_rmsprop(momentum=0.9).init(jnp.zeros(2))
    >>> type(state).__name__, state.mom
    ('Keras3RMSpropState', Array([0., 0.], dtype=float32))
  """

  flavor: ClassVar[str] = "keras3"


STATE_CLASSES: dict[str, type[RMSpropState]] = {
  "keras_legacy": RMSpropState,
  "tf1": TF1RMSpropState,
  "keras3": Keras3RMSpropState,
}
"""The state class of each :data:`Flavor`."""


def tree_path(path) -> str:
  """A leaf's path as error messages name it (``['w']``, or ``the root``)."""
  return jax.tree_util.keystr(path) or "the root"
