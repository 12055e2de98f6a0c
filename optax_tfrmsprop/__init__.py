"""TensorFlow/Keras RMSprop, reproduced exactly, as an optax transformation."""

from optax_tfrmsprop._src.alias import rmsprop
from optax_tfrmsprop._src.base import Rounding
from optax_tfrmsprop._src.base import RMSpropState
from optax_tfrmsprop._src.numerics import ulp_distance
from optax_tfrmsprop._src.sparse import apply_updates
from optax_tfrmsprop._src.sparse import IndexedSlices
from optax_tfrmsprop._src.sparse import sparse_embedding_value_and_grad
from optax_tfrmsprop._src.transform import rmsprop_init
from optax_tfrmsprop._src.transform import rmsprop_update

__version__ = "0.1.0"

__all__ = (
    "IndexedSlices",
    "RMSpropState",
    "Rounding",
    "apply_updates",
    "rmsprop",
    "rmsprop_init",
    "rmsprop_update",
    "sparse_embedding_value_and_grad",
    "ulp_distance",
)
