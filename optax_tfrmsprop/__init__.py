"""TensorFlow/Keras RMSprop, reproduced exactly, as an optax transformation."""

from optax_tfrmsprop import doctor
from optax_tfrmsprop import interop
from optax_tfrmsprop import keras
from optax_tfrmsprop._src.alias import keras3_rmsprop
from optax_tfrmsprop._src.alias import rmsprop
from optax_tfrmsprop._src.alias import tf1_rmsprop
from optax_tfrmsprop._src.base import Flavor
from optax_tfrmsprop._src.base import Keras3RMSpropState
from optax_tfrmsprop._src.base import RMSpropState
from optax_tfrmsprop._src.base import Rounding
from optax_tfrmsprop._src.base import TF1RMSpropState
from optax_tfrmsprop._src.checkpoint import check_checkpoint
from optax_tfrmsprop._src.checkpoint import checkpoint_target
from optax_tfrmsprop._src.cpu_kernel import is_built as cpu_kernel_is_built
from optax_tfrmsprop._src.interop.common import RestoredRMSprop
from optax_tfrmsprop._src.interop.keras3 import keras3_state_from_optimizer
from optax_tfrmsprop._src.interop.keras_weights import state_from_keras_weights
from optax_tfrmsprop._src.interop.keras_weights import state_to_keras_weights
from optax_tfrmsprop._src.interop.tf1_saver import tf1_slot_names
from optax_tfrmsprop._src.interop.tf1_saver import tf1_state_from_checkpoint
from optax_tfrmsprop._src.interop.tf2_checkpoint import (
  restore_rmsprop_from_tf_checkpoint,
)
from optax_tfrmsprop._src.keras.rmsprop import RMSprop
from optax_tfrmsprop._src.keras.variable import Variable
from optax_tfrmsprop._src.numerics import ulp_distance
from optax_tfrmsprop._src.sparse import apply_updates
from optax_tfrmsprop._src.sparse import IndexedSlices
from optax_tfrmsprop._src.sparse import sparse_embedding_value_and_grad
from optax_tfrmsprop._src.transform import rmsprop_apply
from optax_tfrmsprop._src.transform import rmsprop_init
from optax_tfrmsprop._src.transform import rmsprop_update
from optax_tfrmsprop.keras import schedules

__version__ = "0.1.0"

__all__ = (
  "Flavor",
  "IndexedSlices",
  "Keras3RMSpropState",
  "RMSprop",
  "RMSpropState",
  "RestoredRMSprop",
  "Rounding",
  "TF1RMSpropState",
  "Variable",
  "apply_updates",
  "check_checkpoint",
  "checkpoint_target",
  "cpu_kernel_is_built",
  "doctor",
  "interop",
  "keras",
  "keras3_rmsprop",
  "keras3_state_from_optimizer",
  "restore_rmsprop_from_tf_checkpoint",
  "rmsprop",
  "rmsprop_apply",
  "rmsprop_init",
  "rmsprop_update",
  "schedules",
  "sparse_embedding_value_and_grad",
  "state_from_keras_weights",
  "state_to_keras_weights",
  "tf1_rmsprop",
  "tf1_slot_names",
  "tf1_state_from_checkpoint",
  "ulp_distance",
)
