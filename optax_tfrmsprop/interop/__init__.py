"""Optimizer state to and from TensorFlow and Keras: weight lists, checkpoints."""

from optax_tfrmsprop._src.interop.keras_weights import state_from_keras_weights
from optax_tfrmsprop._src.interop.keras_weights import state_to_keras_weights
from optax_tfrmsprop._src.interop.tf1_keras3 import keras3_state_from_optimizer
from optax_tfrmsprop._src.interop.tf1_keras3 import tf1_slot_names
from optax_tfrmsprop._src.interop.tf1_keras3 import tf1_state_from_checkpoint
from optax_tfrmsprop._src.interop.tf2_checkpoint import restore_rmsprop_from_tf_checkpoint
from optax_tfrmsprop._src.interop.tf2_checkpoint import RestoredRMSprop

__all__ = (
    "RestoredRMSprop",
    "keras3_state_from_optimizer",
    "restore_rmsprop_from_tf_checkpoint",
    "state_from_keras_weights",
    "state_to_keras_weights",
    "tf1_slot_names",
    "tf1_state_from_checkpoint",
)
