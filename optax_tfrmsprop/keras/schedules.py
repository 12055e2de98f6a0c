"""Keras' learning-rate schedules, ported bit for bit."""

from optax_tfrmsprop._src.keras.schedules import CosineDecay
from optax_tfrmsprop._src.keras.schedules import CosineDecayRestarts
from optax_tfrmsprop._src.keras.schedules import deserialize
from optax_tfrmsprop._src.keras.schedules import ExponentialDecay
from optax_tfrmsprop._src.keras.schedules import InverseTimeDecay
from optax_tfrmsprop._src.keras.schedules import LearningRateSchedule
from optax_tfrmsprop._src.keras.schedules import PiecewiseConstantDecay
from optax_tfrmsprop._src.keras.schedules import PolynomialDecay
from optax_tfrmsprop._src.keras.schedules import serialize

__all__ = (
  "CosineDecay",
  "CosineDecayRestarts",
  "ExponentialDecay",
  "InverseTimeDecay",
  "LearningRateSchedule",
  "PiecewiseConstantDecay",
  "PolynomialDecay",
  "deserialize",
  "serialize",
)
