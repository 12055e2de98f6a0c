"""Recording a real run with one added line: TF, Keras and optax recorders.

:func:`record` instruments an optimizer (or a Keras model's optimizer, or an
optax optimizer it builds) so that every step hands the doctor the gradients
the optimizer received and the variables and slots after the step, without
changing a bit of the run:

* **TensorFlow, outside XLA** (``Model.fit``, a ``tf.function`` or eager
  ``GradientTape`` loop, a TF1 session): after the optimizer's own ops, one
  ``tf.numpy_function`` receives the gradients and reads of the variables and
  slots, which are ordered after the update. It only reads what the update
  wrote, and a ``tf.cond`` on a step counter skips it once the requested steps
  are recorded. The record is written when they are.
* **TensorFlow under XLA** (``jit_compile=True``, Keras 3's default on GPU):
  ``numpy_function`` cannot be compiled, so each step instead writes into
  preallocated recording variables (one row per step); the record is read from
  them when ``Model.fit`` returns, at :meth:`Recorder.save`, or at exit.
* **optax / JAX**: the optimizer's ``update`` passes the gradients, the params
  it was given and the new state to ``jax.debug.callback``.

``tests/test_doctor.py`` proves for each that a recorded run ends bitwise
equal to the same run unrecorded.
"""

import atexit
from collections.abc import Callable
import threading
from typing import Any
import warnings
import weakref

import numpy as np

from optax_tfrmsprop._src import base
from optax_tfrmsprop._src.doctor import record as record_lib

# Canonical slot (state field) to TF's slot name, per flavor.
_SLOT_NAMES = {f: dict(base.SEMANTICS[f].slots) for f in base.FLAVORS}


def _common_fields(per_var: list[dict[str, Any]]) -> list[str]:
  """The canonical slots every variable has (none without variables)."""
  return [
    f for f in record_lib.SLOTS if per_var and all(f in s for s in per_var)
  ]


def _by_field(flat: list, fields: list[str], n: int) -> dict[str, list]:
  """Slot values laid out variable by variable, as ``{field: per variable}``.

  ``flat`` holds, for each of ``n`` variables in turn, one value per field
  of ``fields`` (the order the recorders read slots in).
  """
  k = len(fields)
  return {f: [flat[i * k + j] for i in range(n)] for j, f in enumerate(fields)}


def _versions() -> dict[str, str]:
  """Versions of the libraries that may have run the recorded optimizer."""
  import importlib.metadata

  found = {}
  for name in (
    "tensorflow",
    "tf_keras",
    "keras",
    "jax",
    "jaxlib",
    "optax",
    "optax_tfrmsprop",
  ):
    try:
      found[name] = importlib.metadata.version(name.replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
      continue
  return found


_LIVE: "weakref.WeakSet[Recorder]" = weakref.WeakSet()


@atexit.register
def _save_live_recorders() -> None:
  """Writes what the live recorders hold at interpreter exit."""
  for recorder in list(_LIVE):
    recorder._save_at_exit()


class Recorder:
  """Collects the steps of one run into a record file.

  Made by :func:`record`; nothing to construct yourself. The record is written
  to :attr:`path` automatically (when the requested steps are recorded, when
  an instrumented ``Model.fit`` returns, and at interpreter exit); call
  :meth:`save` to write it earlier. Used as a context manager, it saves on
  exit.

  Attributes:
    path: where the record is written.
    steps: how many steps are recorded (the first ``steps`` of the run).

  Example:
    >>> import os, tempfile
    >>> import jax.numpy as jnp, optax
    >>> from optax_tfrmsprop import doctor
    >>> path = os.path.join(tempfile.mkdtemp(), "run.npz")
    >>> with doctor.record(optax.rmsprop, path, learning_rate=0.1) as opt:
    ...   params = jnp.ones(3)
    ...   state = opt.init(params)
    ...   for _ in range(3):
    ...     updates, state = opt.update(params, state, params)
    ...     params = optax.apply_updates(params, updates)
    >>> opt.steps_recorded, doctor.load(path).num_steps
    (2, 2)
  """

  def __init__(self, path: str, steps: int):
    if int(steps) < 1:
      raise ValueError(f"steps must be >= 1, got steps={steps!r}.")
    self.path = path
    self.steps = int(steps)
    self._writer: Any = None  # A RecordWriter once the first step is seen.
    self._saved_steps = -1
    self._lock = threading.RLock()
    _LIVE.add(self)

  @property
  def steps_recorded(self) -> int:
    """The number of complete steps recorded so far."""
    return 0 if self._writer is None else self._writer.num_steps

  def _claim(self, opt) -> None:
    """Marks ``opt`` as recorded by this recorder; one recorder at a time."""
    if getattr(opt, "_parity_doctor_recorder", None) is not None:
      raise ValueError(
        "This optimizer is already being recorded by the parity doctor."
      )
    opt._parity_doctor_recorder = self

  def _collect(self) -> None:
    """Brings steps held elsewhere (device buffers) into the writer."""

  def _extra_meta(self) -> dict[str, Any]:
    return {}

  def record(self) -> record_lib.Record:
    """The :class:`~optax_tfrmsprop.doctor.Record` of the steps so far."""
    self._collect()
    if self._writer is None or self._writer.num_steps == 0:
      raise ValueError(
        "No step has been recorded yet: the optimizer has not applied "
        "gradients since record() instrumented it. (A step function that "
        "tf.function traced before record() was called runs without the "
        "instrumentation: call record() before the first step, or "
        "re-create the tf.function.)"
      )
    return self._writer.record(extra_meta=self._extra_meta())

  def save(self, path: str | None = None) -> str:
    """Writes the record to ``path`` (default :attr:`path`); returns it."""
    with self._lock:
      rec = self.record()
      written = rec.save(path or self.path)
      if path is None or path == self.path:
        self._saved_steps = rec.num_steps
      return written

  def _maybe_save(self) -> None:
    try:
      if self.steps_recorded_total() > self._saved_steps:
        self.save()
    except ValueError:
      pass

  def steps_recorded_total(self) -> int:
    self._collect()
    return self.steps_recorded

  def _save_at_exit(self) -> None:
    try:
      self._maybe_save()
    # At exit, whatever went wrong must not mask the program's own outcome.
    except Exception as e:  # noqa: BLE001
      warnings.warn(
        f"The parity doctor could not write {self.path}: {e}", stacklevel=2
      )

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self._maybe_save()


# TensorFlow.


class _TFAdapter:
  """What differs between the three TF optimizers the recorder instruments."""

  source = ""

  def __init__(self, opt):
    self.opt = opt

  def slots(self, var) -> dict[str, Any]:
    """Canonical slot name to the slot variable of ``var`` (existing ones)."""
    raise NotImplementedError

  def iterations(self):
    return None

  def hyper_tensors(self) -> dict[str, Any]:
    """Hyperparameter tensors to read after each step (name -> tensor)."""
    return {}

  def config(self, hypers: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """``(canonical config, optimizer's own config)``.

    ``hypers`` holds the per-step values read through :meth:`hyper_tensors`.
    """
    raise NotImplementedError

  @property
  def optimizer(self) -> str:
    """The TF optimizer's name (``base.Semantics.optimizer``)."""
    return base.SEMANTICS[self.source].optimizer

  @staticmethod
  def value(v):
    return v


def _lr_config(per_step: np.ndarray | None, nominal) -> Any:
  """A float learning rate, or ``"per_step"`` if it changed during the run."""
  if per_step is not None and len(per_step) and np.any(per_step != per_step[0]):
    return "per_step"
  if per_step is not None and len(per_step):
    return float(per_step[0])
  return float(nominal)


def _keras_config(own: dict, hypers: dict[str, np.ndarray]) -> dict[str, Any]:
  """The record's config from a Keras RMSprop's ``get_config()``.

  Both generations (tf_keras legacy, Keras 3) share these keys: learning
  rate, rho, momentum, epsilon, centered and clipping.
  """
  lr = own["learning_rate"]
  if isinstance(lr, dict):
    lr = {"schedule": lr}
  else:
    lr = _lr_config(hypers.get("learning_rate"), lr)
  config = dict(
    learning_rate=lr,
    rho=float(own["rho"]),
    momentum=float(own["momentum"]),
    epsilon=float(own["epsilon"]),
    centered=bool(own["centered"]),
  )
  for key in record_lib.CLIP_OPTIONS:
    if own.get(key) is not None:
      config[key] = float(own[key])
  return config


class _KerasLegacyAdapter(_TFAdapter):
  """``tf_keras.optimizers.legacy.RMSprop`` (TF 2.0-2.10's tf.keras)."""

  source = "keras_legacy"

  def slots(self, var):
    import tf_keras

    del tf_keras
    from tf_keras.src.optimizers.legacy import optimizer_v2

    found = self.opt._slots.get(optimizer_v2._var_key(var), {})
    return {
      field: found[name]
      for field, name in _SLOT_NAMES[self.source].items()
      if name in found
    }

  def iterations(self):
    return self.opt.iterations

  def hyper_tensors(self):
    lr = self.opt._hyper.get("learning_rate")
    import tensorflow as tf

    if isinstance(lr, tf.Variable):
      return {"learning_rate": lr}
    return {}

  def config(self, hypers):
    own = self.opt.get_config()
    config = _keras_config(own, hypers)
    config.update(
      decay=float(own["decay"]), momentum_path=bool(self.opt._momentum)
    )
    return config, own


class _TF1Adapter(_TFAdapter):
  """``tf.compat.v1.train.RMSPropOptimizer``."""

  source = "tf1"
  _HYPERS = (
    ("learning_rate", "_learning_rate"),
    ("rho", "_decay"),
    ("momentum", "_momentum"),
    ("epsilon", "_epsilon"),
  )

  def slots(self, var):
    found = {}
    for field, name in _SLOT_NAMES[self.source].items():
      slot = self.opt.get_slot(var, name)
      if slot is not None:
        found[field] = slot
    return found

  def hyper_tensors(self):
    return {
      name: getattr(self.opt, f"{attr}_tensor")
      for name, attr in self._HYPERS
      if getattr(self.opt, f"{attr}_tensor", None) is not None
    }

  def config(self, hypers):
    config, own = {}, {}
    for name, attr in self._HYPERS:
      value = getattr(self.opt, attr)
      python = isinstance(value, (int, float)) and not isinstance(value, bool)
      own[attr.lstrip("_")] = value if python else repr(value)
      if name == "learning_rate":
        config[name] = (
          float(value) if python else _lr_config(hypers.get(name), np.nan)
        )
      elif python:
        config[name] = float(value)
      else:
        config[name] = float(hypers[name][0])
    own["centered"] = config["centered"] = bool(self.opt._centered)
    own["name"] = self.opt.get_name()
    config["decay"] = 0.0
    return config, own


class _Keras3Adapter(_TFAdapter):
  """Keras 3's ``keras.optimizers.RMSprop`` on the TensorFlow backend."""

  source = "keras3"
  _LISTS = (
    ("ms", "_velocities"),
    ("mom", "_momentums"),
    ("mg", "_average_gradients"),
  )

  def slots(self, var):
    if not self.opt.built:
      return {}
    index = self.opt._get_variable_index(var)
    return {
      field: getattr(self.opt, attr)[index]
      for field, attr in self._LISTS
      if getattr(self.opt, attr, None)
    }

  def iterations(self):
    return self.opt.iterations

  def hyper_tensors(self):
    lr = self.opt._learning_rate
    if hasattr(lr, "value") and hasattr(lr, "assign"):
      return {"learning_rate": lr}
    return {}

  @staticmethod
  def value(v):
    # A Keras 3 variable wraps a tf.Variable; a tf.Variable's ``value`` is a
    # method.
    inner = getattr(v, "value", None)
    return v if callable(inner) or inner is None else inner

  def config(self, hypers):
    own = self.opt.get_config()
    config: dict[str, Any] = dict(_keras_config(own, hypers), decay=0.0)
    unsupported = {
      k: own[k]
      for k in (
        "weight_decay",
        "use_ema",
        "loss_scale_factor",
        "gradient_accumulation_steps",
      )
      if own.get(k)
    }
    if unsupported:
      config["unsupported"] = unsupported
    return config, own


def _tf_adapter(opt) -> _TFAdapter | None:
  """The adapter of a TF/Keras RMSprop, or None for anything else."""
  for module, cls_name, adapter in (
    ("tf_keras.src.optimizers.legacy.rmsprop", "RMSprop", _KerasLegacyAdapter),
    ("tensorflow.python.training.rmsprop", "RMSPropOptimizer", _TF1Adapter),
    ("keras.src.optimizers.rmsprop", "RMSprop", _Keras3Adapter),
  ):
    for klass in type(opt).__mro__:
      if klass.__module__ == module and klass.__name__ == cls_name:
        return adapter(opt)
  return None


def _device_description(tf, device: str) -> dict[str, Any]:
  """The device string of a variable, its kind, and the GPU's name.

  A TF1 graph's variables are placed only when the session runs; TF places
  them on a GPU when there is one.
  """
  if not device:
    device = (
      "(placed by the session: a GPU)"
      if tf.config.list_physical_devices("GPU")
      else "(placed by the session: the CPU)"
    )
  kind = (
    "gpu"
    if "GPU" in device.upper()
    else ("tpu" if "TPU" in device.upper() else "cpu")
  )
  described: dict[str, Any] = {"device": device, "device_kind": kind}
  if kind == "gpu":
    try:
      gpus = tf.config.list_physical_devices("GPU")
      if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        described["device_description"] = details.get("device_name", "")
        if "compute_capability" in details:
          described["compute_capability"] = list(details["compute_capability"])
    except (RuntimeError, ValueError, tf.errors.OpError):
      pass  # The GPU's name is a courtesy; the device string stays.
  return described


class _TFRecorder(Recorder):
  """Instruments one TF/Keras optimizer instance (see the module docstring)."""

  def __init__(
    self, adapter: _TFAdapter, path: str, steps: int, how: str | None = None
  ):
    super().__init__(path, steps)
    import tensorflow as tf

    self._tf = tf
    self._adapter = adapter
    self._how = how
    self._vars: Any = None  # The recorded variables, in order.
    self._sparse: Any = None  # Whether each gradient is row-sparse.
    self._fields: Any = None  # Canonical slots recorded.
    self._had_slots = None  # Slots existed before the first step.
    self._counter: Any = None
    self._buffers: Any = None  # XLA recording variables.
    self._run = {}
    self._hypers: dict[str, list[np.ndarray]] = {}
    self._pending_initial: Any = None
    self._first_iteration = None
    self._stopped = False  # A step the record cannot follow came.
    self._patch()

  # Instrumentation.

  def _patch(self):
    opt = self._adapter.opt
    self._claim(opt)
    if self._adapter.source == "keras3":
      original = opt.apply

      def apply(grads, trainable_variables=None):
        variables = (
          list(trainable_variables)
          if trainable_variables is not None
          else list(opt._trainable_variables)
        )
        return self._step(
          list(grads), variables, lambda: original(grads, trainable_variables)
        )

      opt.apply = apply
    else:
      original = opt.apply_gradients

      def apply_gradients(grads_and_vars, *args, **kwargs):
        pairs = list(grads_and_vars)
        return self._step(
          [g for g, _ in pairs],
          [v for _, v in pairs],
          lambda: original(pairs, *args, **kwargs),
        )

      opt.apply_gradients = apply_gradients

  def _setup(self, grads, variables):
    tf = self._tf
    keep = [i for i, g in enumerate(grads) if g is not None]
    self._vars = [variables[i] for i in keep]
    self._sparse = [isinstance(grads[i], tf.IndexedSlices) for i in keep]
    existing = [self._adapter.slots(v) for v in self._vars]
    self._had_slots = bool(existing) and all(existing)
    names = [getattr(v, "path", None) or v.name for v in self._vars]
    names = [n[:-2] if n.endswith(":0") else n for n in names]
    self._names = names
    device = self._adapter.value(self._vars[0]).device if self._vars else ""
    graph = not tf.executing_eagerly()
    func_graph = graph and hasattr(
      tf.compat.v1.get_default_graph(), "outer_graph"
    )
    how = self._how or (
      "session"
      if graph and not func_graph
      else "tf.function"
      if graph
      else "eager"
    )
    self._run = dict(
      how=how,
      graph=graph,
      jit_compile=self._in_xla(),
      **_device_description(tf, device or ""),
      versions=_versions(),
    )

  def _in_xla(self) -> bool:
    tf = self._tf
    if tf.executing_eagerly():
      return False
    from tensorflow.python.ops import control_flow_util

    return bool(
      control_flow_util.GraphOrParentsInXlaContext(
        tf.compat.v1.get_default_graph()
      )
    )

  def _variables_match(self, grads, variables) -> bool:
    kept = [v for g, v in zip(grads, variables) if g is not None]
    return len(kept) == len(self._vars) and all(
      a is b for a, b in zip(kept, self._vars)
    )

  def _step(self, grads, variables, apply_original):
    tf = self._tf
    if all(g is None for g in grads):
      return apply_original()
    if self._vars is None:
      self._setup(grads, variables)
    elif not self._variables_match(grads, variables):
      warnings.warn(
        "The parity doctor records one fixed list of variables (those with "
        "a gradient at the first step); this step updates another list, so "
        "the record ends before it.",
        stacklevel=3,
      )
      self._stopped = True
      return apply_original()
    if self._counter is None:
      with tf.init_scope():
        self._counter = tf.Variable(
          tf.constant(0, tf.int64), trainable=False, name="parity_doctor_step"
        )
    eager = tf.executing_eagerly()
    if eager:
      return self._step_eager(grads, apply_original)
    if self._in_xla():
      return self._step_xla(grads, apply_original)
    return self._step_graph(grads, apply_original)

  def _slot_vars(self):
    per_var = [self._adapter.slots(v) for v in self._vars]
    if self._fields is None:
      self._fields = _common_fields(per_var)
    return [[s[f] for f in self._fields] for s in per_var]

  def _read(self, v):
    return self._tf.identity(self._adapter.value(v))

  def _before_tensors(self):
    """Reads of the variables (and existing slots) before the first step."""
    reads = [self._read(v) for v in self._vars]
    if self._had_slots:
      initial = [self._adapter.slots(v) for v in self._vars]
      fields = [f for f in record_lib.SLOTS if all(f in s for s in initial)]
      self._initial_fields = fields
      reads += [self._read(s[f]) for s in initial for f in fields]
    iterations = self._adapter.iterations()
    if iterations is not None:
      reads.append(self._tf.cast(self._read(iterations), self._tf.int64))
    return reads

  def _grad_tensors(self, grads):
    tf = self._tf
    out = []
    for g in (g for g in grads if g is not None):
      if isinstance(g, tf.IndexedSlices):
        out += [g.values, tf.cast(g.indices, tf.int64)]
      else:
        out.append(tf.convert_to_tensor(g))
    return out

  def _after_tensors(self):
    reads = [self._read(v) for v in self._vars]
    reads += [self._read(s) for slots in self._slot_vars() for s in slots]
    hypers = self._adapter.hyper_tensors()
    self._hyper_names = sorted(hypers)
    reads += [
      self._tf.cast(self._read(hypers[k]), self._tf.float64)
      for k in self._hyper_names
    ]
    return reads

  # Host side: numpy arrays in the recording order.

  def _host_before(self, *arrays):
    n = len(self._vars)
    params = list(arrays[:n])
    rest = list(arrays[n:])
    initial = None
    if self._had_slots:
      initial = _by_field(rest, self._initial_fields, n)
      rest = rest[n * len(self._initial_fields) :]
    self._first_iteration = int(rest[0]) if rest else None
    self._pending_initial = (params, initial)
    return np.int64(0)

  def _ensure_writer(self):
    if self._writer is not None:
      return
    params, initial = self._pending_initial
    slot_names = {f: _SLOT_NAMES[self._adapter.source][f] for f in self._fields}
    self._writer = record_lib.RecordWriter(
      source=self._adapter.source,
      optimizer=self._adapter.optimizer,
      config={"learning_rate": 0.0, "rho": 0.0, "epsilon": 0.0},
      names=self._names,
      slot_names=slot_names,
      run=self._run,
    )
    if initial is not None:
      initial = {f: initial[f] for f in self._fields if f in initial}
      if set(initial) != set(self._fields):
        initial = None
    self._writer.begin(params, initial)

  def _host_step(self, *arrays):
    with self._lock:
      if self.steps_recorded >= self.steps or self._stopped:
        return np.int64(-1)
      self._ensure_writer()
      arrays = list(arrays)
      grads = []
      for sparse in self._sparse:
        if sparse:
          grads.append((arrays.pop(0), arrays.pop(0)))
        else:
          grads.append(arrays.pop(0))
      n = len(self._vars)
      params = arrays[:n]
      k = len(self._fields)
      slots = _by_field(arrays[n : n + n * k], self._fields, n)
      for name, value in zip(self._hyper_names, arrays[n + n * k :]):
        self._hypers.setdefault(name, []).append(np.asarray(value))
      iteration = (
        None
        if self._first_iteration is None
        else self._first_iteration + self.steps_recorded
      )
      self._writer.step(grads, params, slots, iteration=iteration)
      full = self.steps_recorded >= self.steps
    if full:
      self._maybe_save()
    return np.int64(self.steps_recorded)

  # The three schedules of capture.

  def _step_eager(self, grads, apply_original):
    recording = int(self._counter.numpy()) < self.steps
    if recording and int(self._counter.numpy()) == 0:
      self._host_before(*[t.numpy() for t in self._before_tensors()])
    result = apply_original()
    if recording:
      self._host_step(
        *[t.numpy() for t in self._grad_tensors(grads) + self._after_tensors()]
      )
    self._counter.assign_add(1)
    return result

  def _step_graph(self, grads, apply_original):
    tf = self._tf
    count = self._counter.read_value()

    def before():
      return tf.numpy_function(
        self._host_before, self._before_tensors(), tf.int64, stateful=True
      )

    none = lambda: tf.constant(-1, tf.int64)
    pre = tf.cond(tf.equal(count, 0), before, none)
    with tf.control_dependencies([pre]):
      result = apply_original()
    deps = [r for r in [result] if r is not None]
    with tf.control_dependencies(deps):

      def after():
        return tf.numpy_function(
          self._host_step,
          self._grad_tensors(grads) + self._after_tensors(),
          tf.int64,
          stateful=True,
        )

      post = tf.cond(count < self.steps, after, none)
      with tf.control_dependencies([post]):
        increment = self._counter.assign_add(1)
    return _after(tf, result, increment)

  def _step_xla(self, grads, apply_original):
    tf = self._tf
    if any(self._sparse):
      raise NotImplementedError(
        "The parity doctor cannot record row-sparse (IndexedSlices) "
        "gradients under XLA (jit_compile=True); record that run without "
        "jit_compile."
      )
    count = self._counter.read_value()
    before = self._before_tensors()
    result = apply_original()
    deps = [r for r in [result] if r is not None]
    with tf.control_dependencies(deps):
      after = self._grad_tensors(grads) + self._after_tensors()
      if self._buffers is None:
        with tf.init_scope():
          self._buffers = (
            [
              tf.Variable(
                tf.zeros((2,) + tuple(t.shape), t.dtype), trainable=False
              )
              for t in before
            ],
            [
              tf.Variable(
                tf.zeros((self.steps + 1,) + tuple(t.shape), t.dtype),
                trainable=False,
              )
              for t in after
            ],
          )
      first_row = tf.where(
        tf.equal(count, 0), tf.constant(0, tf.int64), tf.constant(1, tf.int64)
      )
      row = tf.minimum(count, self.steps)
      writes = [
        b.scatter_nd_update([[first_row]], t[None])
        for b, t in zip(self._buffers[0], before)
      ]
      writes += [
        b.scatter_nd_update([[row]], t[None])
        for b, t in zip(self._buffers[1], after)
      ]
      with tf.control_dependencies(writes):
        increment = self._counter.assign_add(1)
    return _after(tf, result, increment)

  def _collect(self):
    """Moves XLA-recorded rows into the writer (eagerly)."""
    if self._buffers is None or self._counter is None:
      return
    tf = self._tf
    if not tf.executing_eagerly():
      return
    try:
      count = int(self._counter.numpy())
    except (RuntimeError, ValueError, tf.errors.OpError):
      return  # TF is shutting down (at exit): nothing more to collect.
    available = min(count, self.steps)
    if available <= self.steps_recorded:
      return
    if self._writer is None:
      self._host_before(*[b[0].numpy() for b in self._buffers[0]])
    rows = [b[:available].numpy() for b in self._buffers[1]]
    for k in range(self.steps_recorded, available):
      self._host_step(*[r[k] for r in rows])

  def _extra_meta(self):
    hypers = {k: np.stack(v) for k, v in self._hypers.items()}
    return record_lib.config_meta(*self._adapter.config(hypers))

  def record(self):
    rec = super().record()
    if rec.config.get("learning_rate") == "per_step":
      rec.learning_rates = np.array(
        [float(v) for v in self._hypers["learning_rate"][: rec.num_steps]]
      )
    if (
      self._had_slots
      and rec.iterations is not None
      and int(rec.iterations[0]) == 0
    ):
      # Built but never stepped (Keras 3 builds before the first step).
      rec.meta["fresh"] = True
      rec.initial_slots = None
    return rec


def _after(tf, result, increment):
  """``result``, made to depend on the recording ops (graph mode)."""
  if result is None:
    return None
  if isinstance(result, tf.Operation):
    return tf.group(result, increment)
  with tf.control_dependencies([increment]):
    return tf.identity(result)


class _Keras3JaxRecorder(Recorder):
  """Keras 3 on the JAX backend.

  ``stateless_apply`` (what ``Model.fit`` runs under ``jax.jit``) hands each
  step to ``jax.debug.callback``; an eager ``apply`` is read directly.
  """

  def __init__(self, opt, path, steps, how=None):
    super().__init__(path, steps)
    import jax

    self._jax = jax
    self._adapter = _Keras3Adapter(opt)
    self._how = how
    self._fields: Any = None
    self._claim(opt)
    stateless_apply = opt.stateless_apply
    apply = opt.apply

    def recorded_stateless_apply(
      optimizer_variables, grads, trainable_variables
    ):
      new_trainable, new_optimizer = stateless_apply(
        optimizer_variables, grads, trainable_variables
      )
      index = self._indices()
      jax.debug.callback(
        self._host,
        list(grads),
        list(trainable_variables),
        list(new_trainable),
        [optimizer_variables[j] for j in index["all"]],
        [new_optimizer[j] for j in index["all"]],
        optimizer_variables[index["iterations"]],
      )
      return new_trainable, new_optimizer

    def recorded_apply(grads, trainable_variables=None):
      from keras.src import backend

      if backend.in_stateless_scope():
        return apply(grads, trainable_variables)
      variables = list(
        trainable_variables
        if trainable_variables is not None
        else opt._trainable_variables
      )
      before = [np.asarray(v.value) for v in variables]
      built = opt.built
      slots_before = (
        [np.asarray(v.value) for v in self._slot_variables()] if built else None
      )
      iteration = int(np.asarray(opt.iterations.value))
      result = apply(grads, trainable_variables)
      if slots_before is None:
        slots_before = [
          np.zeros_like(np.asarray(v.value)) for v in self._slot_variables()
        ]
      self._host(
        list(grads),
        before,
        [np.asarray(v.value) for v in variables],
        slots_before,
        [np.asarray(v.value) for v in self._slot_variables()],
        iteration,
      )
      return result

    opt.stateless_apply = recorded_stateless_apply
    opt.apply = recorded_apply

  def _slot_variables(self):
    opt = self._adapter.opt
    per_var = [self._adapter.slots(v) for v in opt._trainable_variables]
    if self._fields is None:
      self._fields = _common_fields(per_var)
    return [s[f] for s in per_var for f in self._fields]

  def _indices(self):
    opt = self._adapter.opt
    ids = [id(v) for v in opt.variables]
    return {
      "all": [ids.index(id(v)) for v in self._slot_variables()],
      "iterations": ids.index(id(opt.iterations)),
    }

  def _host(self, grads, before, after, slots_before, slots_after, iteration):
    with self._lock:
      if self.steps_recorded >= self.steps:
        return
      opt = self._adapter.opt
      n = len(after)
      split = lambda flat: _by_field(
        [np.asarray(x) for x in flat], self._fields, n
      )
      if self._writer is None:
        device = self._jax.devices()[0]
        run = dict(
          how=self._how or "jax",
          graph=True,
          jit_compile=self._how == "model_fit",
          device=str(device),
          device_kind=device.platform,
          versions=_versions(),
        )
        self._writer = record_lib.RecordWriter(
          source="keras3",
          optimizer=self._adapter.optimizer,
          config={"learning_rate": 0.0, "rho": 0.0, "epsilon": 0.0},
          names=[v.path for v in opt._trainable_variables],
          slot_names={f: _SLOT_NAMES["keras3"][f] for f in self._fields},
          run=run,
        )
        initial = split(slots_before) if int(iteration) else None
        self._writer.begin([np.asarray(p) for p in before], initial)
      self._writer.step(
        [np.asarray(g) for g in grads],
        [np.asarray(p) for p in after],
        split(slots_after),
        iteration=int(iteration),
      )
      full = self.steps_recorded >= self.steps
    # Inside Model.fit the JAX trainer holds the variables' values, so the
    # config (which reads the learning-rate variable) is read when fit
    # returns.
    if full and self._how != "model_fit":
      self._maybe_save()

  def _collect(self):
    self._jax.effects_barrier()

  def _extra_meta(self):
    return record_lib.config_meta(*self._adapter.config({}))


def _is_keras3_jax(opt) -> bool:
  if not isinstance(_tf_adapter(opt), _Keras3Adapter):
    return False
  from keras.src import backend

  return backend.backend() == "jax"


def _record_model(model, path, steps):
  """Instruments ``model.optimizer`` and saves when ``model.fit`` returns."""
  adapter = _tf_adapter(model.optimizer)
  if adapter is None:
    raise TypeError(
      "The parity doctor records RMSprop optimizers; this model's "
      f"optimizer is a {type(model.optimizer).__name__}."
    )
  if _is_keras3_jax(model.optimizer):
    recorder = _Keras3JaxRecorder(model.optimizer, path, steps, how="model_fit")
  else:
    recorder = _TFRecorder(adapter, path, steps, how="model_fit")
  # A train function traced before the instrumentation would not record.
  if getattr(model, "train_function", None) is not None:
    model.train_function = None
  fit = model.fit

  def fit_and_save(*args, **kwargs):
    history = fit(*args, **kwargs)
    recorder._maybe_save()
    return history

  model.fit = fit_and_save
  return recorder


# optax / JAX.


class _OptaxRecorder(Recorder):
  """Records an optax optimizer built by :func:`record` from a factory."""

  def __init__(self, factory, path, steps, kwargs):
    super().__init__(path, steps)
    import jax

    self._jax = jax
    self._source, self._config, self._own = _optax_config(factory, kwargs)
    self.transformation = _recording_transformation(
      factory(**kwargs), self._host, self._set_names
    )
    self.init = self.transformation.init
    self.update = self.transformation.update
    self._pending = None
    self._names = None

  def _set_names(self, names):
    self._names = names

  def _host(self, grads, params, slots):
    with self._lock:
      if self.steps_recorded >= self.steps:
        return
      grads = [np.asarray(g) for g in grads]
      params = [np.asarray(p) for p in params]
      if self._writer is None:
        fields = [f for f in record_lib.SLOTS if slots.get(f) is not None]
        names = self._names or [f"param{i}" for i in range(len(params))]
        self._writer = record_lib.RecordWriter(
          source=self._source,
          optimizer=self._own["optimizer"],
          config=self._config,
          optimizer_config=self._own,
          names=names,
          slot_names={f: self._own["slots"][f] for f in fields},
          run=_jax_run(self._jax),
        )
        self._writer.begin(params)
      elif self._pending is not None:
        g, s = self._pending
        self._writer.step(g, params, s)
      self._pending = (
        grads,
        {
          f: [np.asarray(a) for a in v]
          for f, v in slots.items()
          if v is not None
        },
      )
      full = self.steps_recorded >= self.steps
    if full:
      self._maybe_save()

  def _collect(self):
    self._jax.effects_barrier()

  def save(self, path: str | None = None, *, params: Any = None) -> str:
    """Writes the record; ``params`` completes the last step.

    The variables after an optax step are the params of the next ``update``
    call, so the last step's are unknown until then: pass the final params
    here to record that step too.

    Args:
      path: where to write (default :attr:`path`).
      params: the params after the last ``update``, or None.

    Returns:
      The path written.
    """
    self._collect()
    if params is not None:
      with self._lock:
        if self._pending is not None and self.steps_recorded < self.steps:
          g, s = self._pending
          self._writer.step(
            g, [np.asarray(p) for p in self._jax.tree.leaves(params)], s
          )
          self._pending = None
    return super().save(path)


def _jax_run(jax) -> dict[str, Any]:
  device = jax.devices()[0]
  description = getattr(device, "device_kind", "")
  return dict(
    how="jax",
    graph=True,
    jit_compile=None,
    device=str(device),
    device_kind=device.platform,
    device_description=("" if description == device.platform else description),
    versions=_versions(),
  )


def _optax_config(factory, kwargs) -> tuple[str, dict, dict]:
  """The canonical config of ``factory(**kwargs)`` for a supported factory."""
  import inspect

  import optax

  from optax_tfrmsprop._src import alias
  from optax_tfrmsprop._src.keras import schedules

  bound = inspect.signature(factory).bind(**kwargs)
  bound.apply_defaults()
  args = dict(bound.arguments)
  lr = args["learning_rate"]
  if isinstance(lr, schedules.LearningRateSchedule):
    lr = {"schedule": schedules.serialize(lr)}
  elif callable(lr):
    raise TypeError(
      "The parity doctor records a float learning rate or one of the Keras "
      "schedule ports of optax_tfrmsprop.keras.schedules; got a callable "
      f"learning_rate={lr!r}."
    )
  else:
    lr = float(lr)
  own: dict[str, Any] = {
    k: (v if isinstance(v, (bool, int, float, str, type(None))) else repr(v))
    for k, v in args.items()
  }
  if factory is optax.rmsprop:
    decay = args["decay"]
    own.update(
      optimizer="optax.rmsprop",
      slots={"ms": "nu", "mg": "mu", "mom": "trace (negated)"},
    )
    momentum = args["momentum"]
    config = dict(
      learning_rate=lr,
      rho=float(decay),
      momentum=0.0 if momentum is None else float(momentum),
      epsilon=float(args["eps"]),
      centered=bool(args["centered"]),
      decay=0.0,
      optax=dict(
        eps_in_sqrt=bool(args["eps_in_sqrt"]),
        initial_scale=float(args["initial_scale"]),
        decay_float32=(
          np.asarray(decay).dtype == np.float32 and not isinstance(decay, float)
        ),
        nesterov=bool(args["nesterov"]),
        bias_correction=bool(args["bias_correction"]),
      ),
    )
    return "optax", config, own
  presets = {
    alias.rmsprop: "keras_legacy",
    alias.tf1_rmsprop: "tf1",
    alias.keras3_rmsprop: "keras3",
  }
  if factory in presets:
    flavor = presets[factory]
    rho = args["decay"] if flavor == "tf1" else args["rho"]
    config = dict(
      learning_rate=lr,
      rho=float(rho),
      momentum=float(args["momentum"]),
      epsilon=float(args["epsilon"]),
      centered=bool(args["centered"]),
      decay=0.0 if flavor == "tf1" else float(args.get("decay", 0.0)),
      flavor=flavor,
      rounding=args.get("rounding", "tf_cpu"),
    )
    for key in record_lib.CLIP_OPTIONS:
      if args.get(key) is not None:
        config[key] = float(args[key])
    own.update(
      optimizer=f"optax_tfrmsprop.{factory.__name__}",
      slots={"ms": "ms", "mg": "mg", "mom": "mom"},
    )
    return "optax_tfrmsprop", config, own
  raise TypeError(
    "record() builds and records optax.rmsprop or optax_tfrmsprop's "
    "rmsprop, tf1_rmsprop and keras3_rmsprop; got the factory "
    f"{getattr(factory, '__name__', factory)!r}."
  )


def _recording_transformation(
  inner, host: Callable[..., None], set_names: Callable[[list[str]], None]
):
  """``inner`` whose ``update`` hands each step to ``host`` (debug callback)."""
  import jax
  import optax

  from optax_tfrmsprop._src.doctor import replay as replay_lib

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError(
        "A recorded optimizer needs the params: call "
        "update(grads, state, params)."
      )
    new_updates, new_state = inner.update(updates, state, params, **extra_args)
    names = [
      jax.tree_util.keystr(path, simple=True, separator="/")
      for path, _ in jax.tree_util.tree_leaves_with_path(params)
    ]
    set_names(
      [
        "params" if not n else f"params[{n}]" if n.isdigit() else n
        for n in names
      ]
    )
    jax.debug.callback(
      host,
      jax.tree.leaves(updates),
      jax.tree.leaves(params),
      replay_lib.canonical_slots(new_state),
    )
    return new_updates, new_state

  return optax.GradientTransformationExtraArgs(inner.init, update_fn)


def record(target: Any, path: str, *, steps: int = 20, **kwargs) -> Recorder:
  """Records a run for the parity doctor: one added line.

  ``target`` is one of:

  * a Keras model (tf_keras or Keras 3, compiled with an RMSprop): its
    optimizer is recorded and the record is written when ``fit`` returns;
  * a ``tf_keras.optimizers.legacy.RMSprop``, a Keras 3
    ``keras.optimizers.RMSprop`` or a ``tf.compat.v1.train.RMSPropOptimizer``
    (a ``GradientTape`` loop, eager or in ``tf.function``, or a TF1
    session);
  * ``optax.rmsprop`` or one of this package's ``rmsprop``, ``tf1_rmsprop``,
    ``keras3_rmsprop``: the optimizer is built from ``kwargs`` and the
    returned recorder *is* the optimizer (``init``/``update``; pass ``params``
    to ``update``).

  Call it before the first step. Recording does not change the run: the
  recorded values are read after the optimizer's own operations, whose inputs
  and order are untouched (``tests/test_doctor.py`` compares recorded and
  unrecorded runs bit for bit).

  Args:
    target: the model, optimizer or optimizer factory to record.
    path: the record file (``.npz``), written when ``steps`` steps are
      recorded, when an instrumented ``Model.fit`` returns, at exit, or by
      :meth:`Recorder.save`.
    steps: how many steps to record, from the first step after this call.
    **kwargs: the factory's arguments, when ``target`` is a factory.

  Returns:
    The :class:`Recorder`; for an optax factory, also the optimizer.

  Raises:
    TypeError: for a target the doctor cannot record.

  Example:
    >>> import os, tempfile
    >>> import jax, jax.numpy as jnp, optax
    >>> from optax_tfrmsprop import doctor
    >>> path = os.path.join(tempfile.mkdtemp(), "run.npz")
    >>> opt = doctor.record(optax.rmsprop, path, steps=3, learning_rate=0.1)
    >>> params = {"w": jnp.array([1.0, -2.0])}
    >>> state = opt.init(params)
    >>> for _ in range(4):  # the 4th update completes step 3's params
    ...   grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
    ...   updates, state = opt.update(grads, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> doctor.load(path).num_steps
    3
  """
  if (
    callable(target)
    and not hasattr(target, "apply_gradients")
    and not (hasattr(target, "fit"))
    and _tf_adapter(target) is None
  ):
    return _OptaxRecorder(target, path, steps, kwargs)
  if kwargs:
    raise TypeError(
      f"Unexpected arguments {sorted(kwargs)}: only an optimizer factory "
      "takes arguments."
    )
  if hasattr(target, "fit") and hasattr(target, "optimizer"):
    return _record_model(target, path, steps)
  adapter = _tf_adapter(target)
  if adapter is None:
    raise TypeError(
      "record() takes a Keras model, a TF/Keras RMSprop optimizer, or an "
      f"optimizer factory; got a {type(target).__name__}."
    )
  if _is_keras3_jax(target):
    return _Keras3JaxRecorder(target, path, steps)
  return _TFRecorder(adapter, path, steps)
