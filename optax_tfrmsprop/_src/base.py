"""State and shared types of the TF-exact RMSprop."""

from typing import Literal, Optional

import chex
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

  count: chex.Array
  ms: optax.Updates
  mg: Optional[optax.Updates] = None
  mom: Optional[optax.Updates] = None
