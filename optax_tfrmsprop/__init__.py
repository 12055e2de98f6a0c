"""TensorFlow/Keras RMSprop, reproduced exactly, as an optax transformation."""

from optax_tfrmsprop._src.alias import rmsprop
from optax_tfrmsprop._src.base import Rounding
from optax_tfrmsprop._src.base import RMSpropState
from optax_tfrmsprop._src.checkpoint import check_checkpoint
from optax_tfrmsprop._src.checkpoint import checkpoint_target
from optax_tfrmsprop._src.keras_compat import RMSprop
from optax_tfrmsprop._src.keras_compat import state_from_keras_weights
from optax_tfrmsprop._src.keras_compat import state_to_keras_weights
from optax_tfrmsprop._src.keras_compat import Variable
from optax_tfrmsprop._src.numerics import ulp_distance
from optax_tfrmsprop._src import schedules
from optax_tfrmsprop._src.transform import rmsprop_init
from optax_tfrmsprop._src.transform import rmsprop_update

__version__ = "0.1.0"

__all__ = (
    "RMSprop",
    "RMSpropState",
    "Rounding",
    "Variable",
    "check_checkpoint",
    "checkpoint_target",
    "rmsprop",
    "rmsprop_init",
    "rmsprop_update",
    "schedules",
    "state_from_keras_weights",
    "state_to_keras_weights",
    "ulp_distance",
)
