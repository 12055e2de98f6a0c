"""Optimizer state to and from TensorFlow and Keras: one name per format.

Every reader is ``state_from_<format>`` and returns a
:class:`RestoredRMSprop` ``(params, state, hyperparams)``; every writer is
``state_to_<format>``. Which Keras weight is which JAX leaf is one
:class:`Correspondence` (:func:`correspondence`), accepted wherever a reader
takes ``params`` and by every writer. TensorFlow, Keras and h5py are imported
only inside the functions that need them.

* an optimizer's weight list (``get_weights()``):
  :func:`state_from_optimizer_weights`, :func:`state_to_optimizer_weights`;
* a TF2 object checkpoint (``save_weights``, ``tf.train.Checkpoint``,
  ``CheckpointManager``, SavedModel variables):
  :func:`state_from_tf_checkpoint`, :func:`state_to_tf_checkpoint`;
* a Keras ``.h5`` model file: :func:`state_from_h5`;
* a TF1 ``Saver`` checkpoint: :func:`state_from_tf1_checkpoint`,
  :func:`state_to_tf1_checkpoint`;
* a Keras 3 optimizer: :func:`state_from_keras3`, :func:`state_to_keras3`.
"""

from optax_tfrmsprop._src.interop.common import RestoredRMSprop
from optax_tfrmsprop._src.interop.correspondence import Correspondence
from optax_tfrmsprop._src.interop.correspondence import correspondence
from optax_tfrmsprop._src.interop.h5 import state_from_h5
from optax_tfrmsprop._src.interop.keras3 import state_from_keras3
from optax_tfrmsprop._src.interop.keras3 import state_to_keras3
from optax_tfrmsprop._src.interop.keras_weights import (
  state_from_optimizer_weights,
)
from optax_tfrmsprop._src.interop.keras_weights import (
  state_to_optimizer_weights,
)
from optax_tfrmsprop._src.interop.tf1_saver import state_from_tf1_checkpoint
from optax_tfrmsprop._src.interop.tf1_saver import state_to_tf1_checkpoint
from optax_tfrmsprop._src.interop.tf2_checkpoint import state_from_tf_checkpoint
from optax_tfrmsprop._src.interop.tf2_checkpoint import state_to_tf_checkpoint

__all__ = (
  "Correspondence",
  "RestoredRMSprop",
  "correspondence",
  "state_from_h5",
  "state_from_keras3",
  "state_from_optimizer_weights",
  "state_from_tf1_checkpoint",
  "state_from_tf_checkpoint",
  "state_to_keras3",
  "state_to_optimizer_weights",
  "state_to_tf1_checkpoint",
  "state_to_tf_checkpoint",
)
