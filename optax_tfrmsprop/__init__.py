"""TensorFlow/Keras RMSprop, reproduced exactly, as an optax transformation."""

from optax_tfrmsprop._src.alias import rmsprop
from optax_tfrmsprop._src.base import Flavor
from optax_tfrmsprop._src.base import Rounding
from optax_tfrmsprop._src.base import RMSpropState
from optax_tfrmsprop._src.numerics import ulp_distance
from optax_tfrmsprop._src.presets import keras3_rmsprop
from optax_tfrmsprop._src.presets import tf1_rmsprop
from optax_tfrmsprop._src.transform import rmsprop_init
from optax_tfrmsprop._src.transform import rmsprop_update

__version__ = "0.1.0"

__all__ = (
    "Flavor",
    "RMSpropState",
    "Rounding",
    "keras3_rmsprop",
    "rmsprop",
    "rmsprop_init",
    "rmsprop_update",
    "tf1_rmsprop",
    "ulp_distance",
)
