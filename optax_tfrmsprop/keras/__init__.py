"""The Keras-style API: the stateful ``RMSprop``, ``Variable`` and schedules."""

from optax_tfrmsprop._src.keras.optimizer_v2 import OptimizerV2
from optax_tfrmsprop._src.keras.rmsprop import RMSprop
from optax_tfrmsprop._src.keras.variable import Variable
from optax_tfrmsprop.keras import schedules

__all__ = (
  "OptimizerV2",
  "RMSprop",
  "Variable",
  "schedules",
)
