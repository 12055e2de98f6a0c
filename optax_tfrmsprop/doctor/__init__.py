"""The parity doctor: why does my port not match TensorFlow?

Record a real run with one added line, then ask the doctor which semantics
reproduce it bit for bit, or where the closest one departs and why::

  from optax_tfrmsprop import doctor
  doctor.record(model, "run.npz")        # before model.fit(...)
  ...
  $ python -m optax_tfrmsprop.doctor run.npz

See ``docs/doctor.md``.
"""

from optax_tfrmsprop._src.doctor.capture import record
from optax_tfrmsprop._src.doctor.capture import Recorder
from optax_tfrmsprop._src.doctor.record import load
from optax_tfrmsprop._src.doctor.record import Record
from optax_tfrmsprop._src.doctor.record import RecordWriter
from optax_tfrmsprop._src.doctor.replay import Candidate
from optax_tfrmsprop._src.doctor.report import diagnose
from optax_tfrmsprop._src.doctor.report import Diagnosis

__all__ = (
  "Candidate",
  "Diagnosis",
  "Record",
  "RecordWriter",
  "Recorder",
  "diagnose",
  "load",
  "record",
)
