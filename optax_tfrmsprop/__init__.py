"""TensorFlow/Keras RMSprop, reproduced exactly, as an optax transformation."""

from optax_tfrmsprop._src.alias import rmsprop
from optax_tfrmsprop._src.base import Rounding
from optax_tfrmsprop._src.base import RMSpropState
from optax_tfrmsprop._src.cpu_kernel import is_built as cpu_kernel_is_built
from optax_tfrmsprop._src.numerics import ulp_distance
from optax_tfrmsprop._src.transform import rmsprop_apply
from optax_tfrmsprop._src.transform import rmsprop_init
from optax_tfrmsprop._src.transform import rmsprop_update

__version__ = "0.1.0"

__all__ = (
    "RMSpropState",
    "Rounding",
    "cpu_kernel_is_built",
    "rmsprop",
    "rmsprop_apply",
    "rmsprop_init",
    "rmsprop_update",
    "ulp_distance",
)
