"""TensorFlow/Keras RMSprop, reproduced exactly, as an optax transformation."""

from optax_tfrmsprop._src.alias import rmsprop
from optax_tfrmsprop._src.base import Rounding
from optax_tfrmsprop._src.base import RMSpropState
from optax_tfrmsprop._src.checkpoint import check_checkpoint
from optax_tfrmsprop._src.checkpoint import checkpoint_target
from optax_tfrmsprop._src.numerics import ulp_distance
from optax_tfrmsprop._src.transform import rmsprop_init
from optax_tfrmsprop._src.transform import rmsprop_update

__version__ = "0.1.0"

__all__ = (
    "RMSpropState",
    "Rounding",
    "check_checkpoint",
    "checkpoint_target",
    "rmsprop",
    "rmsprop_init",
    "rmsprop_update",
    "ulp_distance",
)
