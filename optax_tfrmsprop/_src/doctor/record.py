"""The parity doctor's record: one optimizer run, step by step, in one file.

A record holds, for every step of a run, the gradients the optimizer received
(before any clipping), the variables and slots after the step, and the
optimizer's configuration and device. It is a single ``.npz`` file: numpy
arrays, plus the metadata as a JSON string in the ``meta`` entry; nothing is
pickled, so any language with a zip and a ``.npy`` reader can read it.

Arrays, for variable ``i`` (in the optimizer's order) and ``N`` steps:

* ``var{i}``: ``(N + 1, *shape)``, the variable before the first recorded step
  and after each step;
* ``grad{i}``: ``(N, *shape)``; for row-sparse (``IndexedSlices``) gradients
  ``grad{i}.values`` ``(n, *shape[1:])``, ``grad{i}.indices`` ``(n,)`` and
  ``grad{i}.offsets`` ``(N + 1,)``: step ``k`` owns rows
  ``offsets[k]:offsets[k + 1]``;
* ``ms{i}``, ``mg{i}``, ``mom{i}``: ``(N, *shape)``, the slots after each step,
  in TF's convention (``ms``: mean square, ``mg``: mean gradient, ``mom``: the
  momentum accumulator that is *subtracted* from the variable; optax's
  ``trace`` is stored negated, which is exact);
* ``ms{i}.initial`` (etc.): the slots before the first step, when the record
  does not start from a fresh optimizer;
* ``iterations``: ``(N,)`` the optimizer's step counter before each step, and
  ``learning_rate``: ``(N,)`` the learning rate of each step, when the
  recorder could read it (TF1's learning-rate tensor).

bfloat16 arrays are stored as their uint16 bits (the metadata names the
dtype). :class:`RecordWriter` builds a record from any framework's arrays, so a
port written in PyTorch (or anything else) can be recorded too.
"""

from collections.abc import Mapping, Sequence
import dataclasses
import io
import json
import os
import platform
from typing import Any
import zipfile
import zlib

import numpy as np

FORMAT = "optax_tfrmsprop.doctor.record"
VERSION = 1
SLOTS = ("ms", "mg", "mom")
"""The canonical slot names: TF's ``rms``, ``mg`` and ``momentum``."""
CLIP_OPTIONS = ("clipnorm", "clipvalue", "global_clipnorm")
"""Keras' gradient clipping options, in the order records and reports use."""

SOURCES = (
  "keras_legacy",
  "tf1",
  "keras3",
  "optax",
  "optax_tfrmsprop",
  "custom",
)
"""What made a record: the three TF/Keras generations, ``optax.rmsprop``, this
package's own optimizers, or anything else (:class:`RecordWriter`)."""


def _dtype_name(dtype) -> str:
  return np.dtype(dtype).name


def _to_storable(a: np.ndarray) -> np.ndarray:
  """bfloat16 (an ml_dtypes extension dtype) as its uint16 bits."""
  if a.dtype.name == "bfloat16":
    return a.view(np.uint16)
  return a


def _from_storable(a: np.ndarray, dtype_name: str) -> np.ndarray:
  if dtype_name == "bfloat16":
    import ml_dtypes

    return a.view(ml_dtypes.bfloat16)
  return a


def config_meta(
  config: Mapping[str, Any], optimizer_config: Mapping[str, Any]
) -> dict[str, Any]:
  """A record's ``config`` and ``optimizer_config`` entries.

  Args:
    config: the canonical config; the options it omits get their defaults
      (no momentum, not centered, no decay).
    optimizer_config: the optimizer's own config, as it reports it.

  Returns:
    ``{"config": ..., "optimizer_config": ...}``, JSON-safe.
  """
  defaults = {"momentum": 0.0, "centered": False, "decay": 0.0}
  return {
    "config": json_safe(dict(defaults, **config)),
    "optimizer_config": json_safe(dict(optimizer_config)),
  }


def json_safe(value: Any) -> Any:
  """Config values as JSON: numpy scalars to Python, tuples to lists."""
  if isinstance(value, Mapping):
    return {str(k): json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_safe(v) for v in value]
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray) and value.ndim == 0:
    return value.item()
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  return repr(value)


@dataclasses.dataclass
class SparseSteps:
  """The row-sparse gradients of one variable over a record's steps.

  Attributes:
    values: the rows of every step, concatenated.
    indices: their row numbers.
    offsets: step ``k`` owns ``values[offsets[k]:offsets[k + 1]]``.
    dense_shape: the variable's shape.
  """

  values: np.ndarray
  indices: np.ndarray
  offsets: np.ndarray
  dense_shape: tuple[int, ...]

  def step(self, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(values, indices)`` of step ``k`` (0-based)."""
    lo, hi = int(self.offsets[k]), int(self.offsets[k + 1])
    return self.values[lo:hi], self.indices[lo:hi]


@dataclasses.dataclass
class Record:
  """One recorded optimizer run (see the module docstring for the layout).

  Attributes:
    meta: the JSON metadata: ``source``, ``optimizer``, ``config`` (the
      canonical hyperparameters), ``optimizer_config`` (as the optimizer
      reports it), ``run`` (how and on which device it ran, library
      versions), ``variables`` (names, shapes, dtypes), ``slots`` (the
      canonical slots present, with the optimizer's own names) and ``fresh``
      (whether the first step started from a fresh optimizer).
    params: per variable, ``(N + 1, *shape)``: before step 1, then after each.
    grads: per variable, ``(N, *shape)`` or a :class:`SparseSteps`.
    slots: canonical slot name to per-variable ``(N, *shape)`` arrays.
    initial_slots: the slots before step 1 when the record is not fresh.
    iterations: ``(N,)`` step counter before each step, or ``None``.
    learning_rates: ``(N,)`` learning rate of each step, or ``None``.

  Example:
    >>> import os, tempfile
    >>> import numpy as np
    >>> from optax_tfrmsprop import doctor
    >>> w = doctor.RecordWriter(
    ...     source="custom", optimizer="sketch",
    ...     config=dict(learning_rate=0.1, rho=0.9, epsilon=1e-7),
    ...     names=["x"], slot_names={"ms": "ms"})
    >>> w.begin([np.float32([1.0])])
    >>> w.step([np.float32([2.0])], [np.float32([0.7])],
    ...        {"ms": [np.float32([0.4])]})
    >>> path = w.save(os.path.join(tempfile.mkdtemp(), "r.npz"))
    >>> rec = doctor.load(path)
    >>> history = rec.params[0]  # before step 1, after step 1
    >>> rec.num_steps, rec.names, history.ravel()
    (1, ['x'], array([1. , 0.7], dtype=float32))
  """

  meta: dict[str, Any]
  params: list[np.ndarray]
  grads: list[Any]
  slots: dict[str, list[np.ndarray]]
  initial_slots: dict[str, list[np.ndarray]] | None = None
  iterations: np.ndarray | None = None
  learning_rates: np.ndarray | None = None

  @property
  def num_steps(self) -> int:
    return int(self.params[0].shape[0]) - 1 if self.params else 0

  @property
  def names(self) -> list[str]:
    return [v["name"] for v in self.meta["variables"]]

  @property
  def config(self) -> dict[str, Any]:
    return self.meta["config"]

  @property
  def source(self) -> str:
    return self.meta["source"]

  @property
  def fresh(self) -> bool:
    return bool(self.meta.get("fresh", True))

  def grad(self, k: int, i: int):
    """The gradient of variable ``i`` at step ``k`` (0-based).

    Returns an array, or ``(values, indices, dense_shape)``.
    """
    g = self.grads[i]
    if isinstance(g, SparseSteps):
      return (*g.step(k), g.dense_shape)
    return g[k]

  def truncated(self, steps: int) -> "Record":
    """The first ``steps`` steps of this record."""
    steps = max(0, min(int(steps), self.num_steps))

    def cut_grad(g):
      if isinstance(g, SparseSteps):
        end = int(g.offsets[steps])
        return SparseSteps(
          g.values[:end], g.indices[:end], g.offsets[: steps + 1], g.dense_shape
        )
      return g[:steps]

    meta = dict(self.meta, steps=steps)
    return Record(
      meta=meta,
      params=[p[: steps + 1] for p in self.params],
      grads=[cut_grad(g) for g in self.grads],
      slots={k: [s[:steps] for s in v] for k, v in self.slots.items()},
      initial_slots=self.initial_slots,
      iterations=(None if self.iterations is None else self.iterations[:steps]),
      learning_rates=(
        None if self.learning_rates is None else self.learning_rates[:steps]
      ),
    )

  def save(self, path: str) -> str:
    """Writes the record to ``path`` (an ``.npz`` file); returns the path."""
    arrays = {"meta": np.array(json.dumps(json_safe(self.meta)))}
    for i, p in enumerate(self.params):
      arrays[f"var{i}"] = _to_storable(np.asarray(p))
    for i, g in enumerate(self.grads):
      if isinstance(g, SparseSteps):
        arrays[f"grad{i}.values"] = _to_storable(np.asarray(g.values))
        arrays[f"grad{i}.indices"] = np.asarray(g.indices, np.int64)
        arrays[f"grad{i}.offsets"] = np.asarray(g.offsets, np.int64)
      else:
        arrays[f"grad{i}"] = _to_storable(np.asarray(g))
    for name, per_var in self.slots.items():
      for i, s in enumerate(per_var):
        arrays[f"{name}{i}"] = _to_storable(np.asarray(s))
    for name, per_var in (self.initial_slots or {}).items():
      for i, s in enumerate(per_var):
        arrays[f"{name}{i}.initial"] = _to_storable(np.asarray(s))
    if self.iterations is not None:
      arrays["iterations"] = np.asarray(self.iterations, np.int64)
    if self.learning_rates is not None:
      arrays["learning_rate"] = np.asarray(self.learning_rates)
    path = os.fspath(path)
    directory = os.path.dirname(path)
    if directory:
      os.makedirs(directory, exist_ok=True)
    # Written whole, then renamed: a reader never sees half a record.
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
      f.write(buffer.getvalue())
    os.replace(tmp, path)
    return path


class _Malformed(ValueError):
  """A record file whose structure is not what :meth:`Record.save` writes."""


def _is_number(value: Any) -> bool:
  """Whether a JSON value is a number (JSON's true and false are not)."""
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_type(where: str, value: Any, kind: type, what: str) -> None:
  """Raises :class:`_Malformed` unless ``value`` is a ``kind``.

  Args:
    where: the value's place in the metadata, for the message.
    value: the value.
    kind: the Python type JSON gives it; ``bool`` is not an ``int`` here.
    what: the expected value, in words.

  Raises:
    _Malformed: naming ``where`` and the value found.
  """
  if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
    raise _Malformed(f"{where} is {value!r}, not {what}")


def _check_config(config: Any) -> None:
  """Raises :class:`_Malformed` unless ``config`` is a canonical config."""
  _check_type("meta['config']", config, dict, "an object")
  for key in ("learning_rate", "rho", "momentum", "epsilon", "centered"):
    if key not in config:
      raise _Malformed(f"meta['config'] has no {key!r}")
  lr = config["learning_rate"]
  if isinstance(lr, dict):
    _check_type(
      "meta['config']['learning_rate']['schedule']",
      lr.get("schedule"),
      dict,
      "a serialised Keras schedule (an object)",
    )
  elif lr != "per_step" and not _is_number(lr):
    raise _Malformed(
      f"meta['config']['learning_rate'] is {lr!r}, not a number, "
      "'per_step' or {'schedule': ...}"
    )
  for key in ("rho", "momentum", "epsilon", "decay"):
    if key in config and not _is_number(config[key]):
      raise _Malformed(
        f"meta['config'][{key!r}] is {config[key]!r}, not a number"
      )
  for key in CLIP_OPTIONS:
    value = config.get(key)
    if value is not None and not _is_number(value):
      raise _Malformed(
        f"meta['config'][{key!r}] is {value!r}, not a number or null"
      )
  _check_type(
    "meta['config']['centered']", config["centered"], bool, "true or false"
  )
  for key, kind, what in (
    ("momentum_path", bool, "true or false"),
    ("flavor", str, "a string"),
    ("rounding", str, "a string"),
    ("optax", dict, "an object"),
  ):
    if config.get(key) is not None:
      _check_type(f"meta['config'][{key!r}]", config[key], kind, what)


def _storage_dtype(dtype_name: Any, where: str) -> np.dtype:
  """The dtype a variable of ``dtype_name`` is stored in (bfloat16: uint16)."""
  if dtype_name == "bfloat16":
    return np.dtype(np.uint16)
  try:
    dtype = np.dtype(dtype_name) if isinstance(dtype_name, str) else None
  except TypeError:
    dtype = None
  if dtype is None or dtype.kind not in "fc":
    raise _Malformed(f"{where} is {dtype_name!r}, not a floating-point dtype")
  return dtype


def _check_meta(meta: dict[str, Any]) -> None:
  """Raises :class:`_Malformed` unless ``meta`` has what :class:`Record` uses.

  The keys and types are those :class:`RecordWriter` writes.
  """
  for key in ("source", "optimizer", "config", "variables", "slots"):
    if key not in meta:
      raise _Malformed(f"meta has no {key!r}")
  if meta["source"] not in SOURCES:
    raise _Malformed(
      f"meta['source'] is {meta['source']!r}, not one of {SOURCES}"
    )
  _check_type("meta['optimizer']", meta["optimizer"], str, "a string")
  for key in ("run", "optimizer_config"):
    if key in meta:
      _check_type(f"meta[{key!r}]", meta[key], dict, "an object")
  if "fresh" in meta:
    _check_type("meta['fresh']", meta["fresh"], bool, "true or false")
  if "steps" in meta:
    _check_type("meta['steps']", meta["steps"], int, "an integer")
  _check_config(meta["config"])
  slots = meta["slots"]
  _check_type("meta['slots']", slots, dict, "an object")
  if "ms" not in slots or set(slots) - set(SLOTS):
    raise _Malformed(
      f"meta['slots'] names {sorted(slots)}; it must name 'ms' and only "
      f"slots among {SLOTS}"
    )
  variables = meta["variables"]
  _check_type("meta['variables']", variables, list, "a list")
  for i, v in enumerate(variables):
    where = f"meta['variables'][{i}]"
    _check_type(where, v, dict, "an object")
    for key in ("name", "shape", "dtype"):
      if key not in v:
        raise _Malformed(f"{where} has no {key!r}")
    _check_type(f"{where}['name']", v["name"], str, "a string")
    shape = v["shape"]
    if not isinstance(shape, list) or not all(
      isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
    ):
      raise _Malformed(f"{where}['shape'] is {shape!r}, not a list of sizes")
    _storage_dtype(v["dtype"], f"{where}['dtype']")


def _check_array(
  name: str, a: np.ndarray, shape: tuple[int, ...], dtype: np.dtype | None
) -> None:
  """Raises :class:`_Malformed` unless array ``name`` has this shape, dtype.

  ``dtype=None`` accepts any floating-point dtype.
  """
  if a.shape != shape:
    raise _Malformed(f"{name!r} has shape {a.shape}, expected {shape}")
  if dtype is None:
    ok = a.dtype.kind in "fc"
  else:
    ok = a.dtype == dtype
  if not ok:
    raise _Malformed(
      f"{name!r} has dtype {a.dtype}, expected "
      f"{dtype if dtype is not None else 'a floating-point dtype'}"
    )


def _check_sparse(
  i: int, arrays: dict[str, np.ndarray], steps: int, shape: tuple, dtype
) -> None:
  """Raises :class:`_Malformed` unless variable ``i``'s rows are consistent."""
  if not shape:
    raise _Malformed(f"variable {i} is a scalar with row-sparse gradients")
  values = arrays[f"grad{i}.values"]
  indices = arrays[f"grad{i}.indices"]
  offsets = arrays[f"grad{i}.offsets"]
  for name, a in ((".indices", indices), (".offsets", offsets)):
    if a.ndim != 1 or a.dtype.kind not in "iu":
      raise _Malformed(f"'grad{i}{name}' is not a 1-D integer array")
  rows = len(indices)
  _check_array(f"grad{i}.values", values, (rows, *shape[1:]), dtype)
  if len(offsets) != steps + 1:
    raise _Malformed(
      f"'grad{i}.offsets' has {len(offsets)} entries, expected {steps + 1}"
    )
  if offsets[0] != 0 or offsets[-1] != rows or np.any(np.diff(offsets) < 0):
    raise _Malformed(
      f"'grad{i}.offsets' does not split its {rows} rows into steps"
    )
  if rows and (indices.min() < 0 or indices.max() >= shape[0]):
    raise _Malformed(f"'grad{i}.indices' holds rows outside 0..{shape[0] - 1}")


def _read_arrays(
  meta: dict[str, Any], files: set[str], read
) -> dict[str, np.ndarray]:
  """Reads and checks every array the (checked) ``meta`` names.

  Args:
    meta: the record's metadata, checked by :func:`_check_meta`.
    files: the names in the archive.
    read: reads one named array.

  Returns:
    The arrays, stored form (bfloat16 as uint16), by name.

  Raises:
    _Malformed: naming the first array that is missing or disagrees.
  """
  arrays: dict[str, np.ndarray] = {}

  def get(name: str) -> np.ndarray:
    if name not in files:
      raise _Malformed(f"it has no array {name!r}")
    arrays[name] = read(name)
    return arrays[name]

  steps = None
  for i, v in enumerate(meta["variables"]):
    shape = tuple(v["shape"])
    stored = _storage_dtype(v["dtype"], "")
    # Gradients and slots may be in any float dtype (a port's own), except
    # bfloat16's, which are its bits.
    any_float = stored if v["dtype"] == "bfloat16" else None
    var = get(f"var{i}")
    if var.ndim < 1 or var.shape[0] < 1:
      raise _Malformed(f"'var{i}' has shape {var.shape}, no step axis")
    if steps is None:
      steps = var.shape[0] - 1
    _check_array(f"var{i}", var, (steps + 1, *shape), stored)
    if f"grad{i}" in files:
      _check_array(f"grad{i}", get(f"grad{i}"), (steps, *shape), any_float)
    else:
      for part in ("values", "indices", "offsets"):
        get(f"grad{i}.{part}")
      _check_sparse(i, arrays, steps, shape, any_float)
    for slot in meta["slots"]:
      _check_array(f"{slot}{i}", get(f"{slot}{i}"), (steps, *shape), any_float)
      if f"{slot}0.initial" in files:
        name = f"{slot}{i}.initial"
        _check_array(name, get(name), shape, any_float)
  steps = steps or 0
  if meta.get("steps", steps) != steps:
    raise _Malformed(
      f"meta['steps'] is {meta['steps']}, but the arrays hold {steps} steps"
    )
  for name, kinds in (("iterations", "iu"), ("learning_rate", "fiu")):
    if name in files:
      a = get(name)
      if a.shape != (steps,) or a.dtype.kind not in kinds:
        raise _Malformed(
          f"{name!r} is {a.dtype}{a.shape}, expected {steps} "
          f"{'integers' if kinds == 'iu' else 'numbers'}"
        )
  if (
    meta["config"]["learning_rate"] == "per_step"
    and "learning_rate" not in files
  ):
    raise _Malformed(
      "meta['config']['learning_rate'] is 'per_step' but it has no "
      "'learning_rate' array"
    )
  return arrays


def load(path: str | os.PathLike) -> Record:
  """Reads a record written by :meth:`Record.save` (never unpickles).

  The whole structure is checked before anything is returned: the metadata's
  keys and types, every array it names, and the shapes and step counts of
  the variables, gradients and slots.

  Args:
    path: the ``.npz`` file.

  Returns:
    The :class:`Record`.

  Raises:
    ValueError: if the file is not a doctor record, is of a newer format, or
      is a malformed one (``<path> is not a valid parity doctor record:
      <what>``).

  Example:
    >>> import os, tempfile
    >>> import numpy as np
    >>> from optax_tfrmsprop import doctor
    >>> path = os.path.join(tempfile.mkdtemp(), "not_a_record.npz")
    >>> np.savez(path, x=np.zeros(2))
    >>> doctor.load(path)
    Traceback (most recent call last):
    ...
    ValueError: ... is not a parity doctor record (no 'meta').
  """
  try:
    data = np.load(os.fspath(path), allow_pickle=False)
  except (EOFError, ValueError, zipfile.BadZipFile) as e:
    raise ValueError(f"{path} is not a parity doctor record ({e}).") from e
  if not isinstance(data, np.lib.npyio.NpzFile):
    raise ValueError(f"{path} is not a parity doctor record (not an .npz).")

  def read(name: str) -> np.ndarray:
    # A damaged member fails in zip, zlib or the .npy parser.
    try:
      return data[name]
    except (EOFError, OSError, ValueError, zipfile.BadZipFile, zlib.error) as e:
      raise _Malformed(f"its array {name!r} cannot be read ({e})") from e

  with data:
    files = set(data.files)
    if "meta" not in files:
      raise ValueError(f"{path} is not a parity doctor record (no 'meta').")
    try:
      text = read("meta")
      if text.ndim != 0 or text.dtype.kind not in "US":
        raise _Malformed("'meta' is not a JSON string")
      try:
        meta = json.loads(str(text))
      except json.JSONDecodeError as e:
        raise _Malformed(f"'meta' is not valid JSON ({e})") from e
      if not isinstance(meta, dict):
        raise _Malformed(
          f"'meta' is a JSON {type(meta).__name__}, not an object"
        )
    except _Malformed as e:
      raise ValueError(
        f"{path} is not a valid parity doctor record: {e}."
      ) from e
    if meta.get("format") != FORMAT:
      raise ValueError(f"{path} is not a parity doctor record.")
    version = meta.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
      raise ValueError(
        f"{path} is not a valid parity doctor record: meta['version'] is "
        f"{version!r}, not an integer."
      )
    if version > VERSION:
      raise ValueError(
        f"{path} has record format version {version}; this "
        f"version of optax_tfrmsprop reads up to {VERSION}."
      )
    try:
      _check_meta(meta)
      arrays = _read_arrays(meta, files, read)
    except _Malformed as e:
      raise ValueError(
        f"{path} is not a valid parity doctor record: {e}."
      ) from e
  dtypes = [v["dtype"] for v in meta["variables"]]
  params, grads = [], []
  for i, dtype in enumerate(dtypes):
    params.append(_from_storable(arrays[f"var{i}"], dtype))
    if f"grad{i}" in arrays:
      grads.append(_from_storable(arrays[f"grad{i}"], dtype))
    else:
      grads.append(
        SparseSteps(
          _from_storable(arrays[f"grad{i}.values"], dtype),
          arrays[f"grad{i}.indices"],
          arrays[f"grad{i}.offsets"],
          tuple(meta["variables"][i]["shape"]),
        )
      )
  slots, initial = {}, {}
  for name in meta["slots"]:
    slots[name] = [
      _from_storable(arrays[f"{name}{i}"], dtype)
      for i, dtype in enumerate(dtypes)
    ]
    if f"{name}0.initial" in arrays:
      initial[name] = [
        _from_storable(arrays[f"{name}{i}.initial"], dtype)
        for i, dtype in enumerate(dtypes)
      ]
  return Record(
    meta=meta,
    params=params,
    grads=grads,
    slots=slots,
    initial_slots=initial or None,
    iterations=arrays.get("iterations"),
    learning_rates=arrays.get("learning_rate"),
  )


def host_description() -> dict[str, Any]:
  """The machine a record is made on: architecture and CPU model."""
  cpu = platform.processor() or ""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  return {
    "machine": platform.machine(),
    "cpu": cpu,
    "system": platform.system(),
    "python": platform.python_version(),
  }


class RecordWriter:
  """Builds a :class:`Record` step by step, from any framework's arrays.

  The recorders of :func:`~optax_tfrmsprop.doctor.record` use it; call it
  directly to record a port written in another framework (PyTorch, a
  hand-written loop) and let the doctor say how it departs from TF.

  Args:
    source: what ran (one of :data:`SOURCES`; ``"custom"`` for anything else).
    optimizer: the optimizer's name, for the report.
    config: the canonical hyperparameters: ``learning_rate`` (a float, or
      ``{"schedule": <Keras-serialised schedule>}``, or ``"per_step"`` with
      ``learning_rate=`` given to :meth:`step`), ``rho``, ``momentum``,
      ``epsilon``, ``centered``, and optionally ``decay`` (Keras' inverse-time
      decay), ``clipnorm``, ``clipvalue``, ``global_clipnorm``.
    names: the variables' names, in order.
    slot_names: canonical slot (``ms``, ``mg``, ``mom``) to the optimizer's
      own slot name, for every slot the run has.
    optimizer_config: the optimizer's own config, kept for the report.
    run: how and where the run happened (``how``, ``device``,
      ``device_kind``, ``graph``, ``jit_compile``, ...), kept for the report.

  Example:
    >>> import numpy as np
    >>> from optax_tfrmsprop import doctor
    >>> w = doctor.RecordWriter(
    ...     source="custom", optimizer="hand-written RMSprop",
    ...     config=dict(learning_rate=0.1, rho=0.9, momentum=0.0,
    ...                 epsilon=1e-7, centered=False),
    ...     names=["x"], slot_names={"ms": "square_avg"})
    >>> x, ms = np.float32([10.0]), np.float32([0.0])
    >>> w.begin([x])
    >>> g = x.copy()
    >>> ms = np.float32(0.9) * ms + np.float32(0.1) * (g * g)
    >>> x = x - np.float32(0.1) * g / (np.sqrt(ms) + np.float32(1e-7))
    >>> w.step([g], [x], {"ms": [ms]})
    >>> w.record().num_steps
    1
  """

  def __init__(
    self,
    *,
    source: str,
    optimizer: str,
    config: Mapping[str, Any],
    names: Sequence[str],
    slot_names: Mapping[str, str],
    optimizer_config: Mapping[str, Any] | None = None,
    run: Mapping[str, Any] | None = None,
  ):
    if source not in SOURCES:
      raise ValueError(f"source must be one of {SOURCES}, got {source!r}.")
    unknown = set(slot_names) - set(SLOTS)
    if unknown:
      raise ValueError(
        f"slot_names keys must be among {SLOTS}, got {sorted(unknown)}."
      )
    if "ms" not in slot_names:
      raise ValueError("slot_names must name the mean-square slot 'ms'.")
    missing = {"learning_rate", "rho", "epsilon"} - set(config)
    if missing:
      raise ValueError(f"config lacks {sorted(missing)}.")
    self._meta = {
      "format": FORMAT,
      "version": VERSION,
      "source": source,
      "optimizer": optimizer,
      **config_meta(config, optimizer_config or {}),
      "run": json_safe(dict({"host": host_description()}, **(run or {}))),
      "slots": dict(slot_names),
    }
    self._names = [str(n) for n in names]
    self._params: list[list[np.ndarray]] = []
    self._grads: list[list[Any]] = []
    self._slots: dict[str, list[list[np.ndarray]]] = {k: [] for k in slot_names}
    self._initial: dict[str, list[np.ndarray]] | None = None
    self._iterations: list[int] = []
    self._learning_rates: list[float] = []

  @property
  def num_steps(self) -> int:
    return len(self._grads[0]) if self._grads else 0

  def begin(
    self,
    params: Sequence[Any],
    slots: Mapping[str, Sequence[Any]] | None = None,
  ) -> None:
    """Sets the variables before the first step.

    ``slots`` are given when the optimizer is not fresh (it stepped before).
    """
    if len(params) != len(self._names):
      raise ValueError(
        f"{len(params)} params for {len(self._names)} variable names."
      )
    self._params = [[np.array(p)] for p in params]
    self._grads = [[] for _ in params]
    self._slots = {k: [[] for _ in params] for k in self._slots}
    if slots is not None:
      self._initial = {k: [np.array(s) for s in slots[k]] for k in self._slots}
    self._iterations, self._learning_rates = [], []

  def step(
    self,
    grads: Sequence[Any],
    params: Sequence[Any],
    slots: Mapping[str, Sequence[Any]],
    *,
    iteration: int | None = None,
    learning_rate: float | None = None,
  ) -> None:
    """Adds one step: the gradients received, the variables and slots after.

    ``mom`` is in TF's convention: the variable decreases by it.

    A gradient is an array, or ``(values, indices)`` rows of a row-sparse
    gradient (or an object with ``.values`` and ``.indices``).
    """
    if not self._params:
      raise ValueError("Call begin(params) before the first step.")
    if len(grads) != len(self._names) or len(params) != len(self._names):
      raise ValueError(
        f"Expected {len(self._names)} gradients and params, got "
        f"{len(grads)} and {len(params)}."
      )
    for i, grad in enumerate(grads):
      if hasattr(grad, "indices") and hasattr(grad, "values"):
        grad = (grad.values, grad.indices)  # noqa: PLW2901
      if isinstance(grad, tuple):
        kept = (np.array(grad[0]), np.array(grad[1], np.int64).reshape(-1))
      else:
        kept = np.array(grad)
      self._grads[i].append(kept)
      self._params[i].append(np.array(params[i]))
    for k in self._slots:
      if k not in slots or len(slots[k]) != len(self._names):
        raise ValueError(f"slots[{k!r}] must have one array per variable.")
      for i, s in enumerate(slots[k]):
        self._slots[k][i].append(np.array(s))
    if iteration is not None:
      self._iterations.append(int(iteration))
    if learning_rate is not None:
      self._learning_rates.append(float(learning_rate))

  def record(
    self,
    *,
    fresh: bool | None = None,
    extra_meta: Mapping[str, Any] | None = None,
  ) -> Record:
    """The :class:`Record` of the steps so far.

    Args:
      fresh: whether the first step started from a fresh optimizer (default:
        no initial slots were given to :meth:`begin`).
      extra_meta: more metadata, merged in.

    Returns:
      The record.
    """
    n = self.num_steps
    first = [p[0] for p in self._params]
    meta = dict(self._meta, **(extra_meta or {}))
    meta["steps"] = n
    meta["fresh"] = (self._initial is None) if fresh is None else bool(fresh)
    meta["variables"] = [
      {
        "name": name,
        "shape": list(np.shape(p)),
        "dtype": _dtype_name(np.asarray(p).dtype),
        "sparse": any(isinstance(g, tuple) for g in self._grads[i]),
      }
      for i, (name, p) in enumerate(zip(self._names, first))
    ]
    grads: list[Any] = []
    for i, per_step in enumerate(self._grads):
      if meta["variables"][i]["sparse"]:
        if not all(isinstance(g, tuple) for g in per_step):
          raise ValueError(
            f"Variable {self._names[i]!r} has row-sparse gradients at some "
            "steps and dense ones at others; TF takes different paths for "
            "the two, so a record keeps one kind per variable."
          )
        rows = per_step
        shape = np.shape(first[i])
        values = (
          np.concatenate([r[0] for r in rows])
          if rows
          else np.zeros((0, *shape[1:]), first[i].dtype)
        )
        indices = (
          np.concatenate([r[1] for r in rows])
          if rows
          else np.zeros((0,), np.int64)
        )
        offsets = np.cumsum([0] + [len(r[1]) for r in rows])
        grads.append(
          SparseSteps(
            values.astype(first[i].dtype), indices, offsets, tuple(shape)
          )
        )
      else:
        grads.append(
          np.stack(per_step)
          if per_step
          else np.zeros((0, *np.shape(first[i])), first[i].dtype)
        )
    stack = lambda arrays, like: (
      np.stack(arrays) if arrays else np.zeros((0, *np.shape(like)), like.dtype)
    )
    return Record(
      meta=meta,
      params=[np.stack(p) for p in self._params],
      grads=grads,
      slots={
        k: [stack(s, first[i]) for i, s in enumerate(v)]
        for k, v in self._slots.items()
      },
      initial_slots=self._initial,
      iterations=(
        np.array(self._iterations, np.int64)
        if len(self._iterations) == n and n
        else None
      ),
      learning_rates=(
        np.array(self._learning_rates)
        if len(self._learning_rates) == n and n
        else None
      ),
    )

  def save(self, path: str, **kwargs) -> str:
    """Writes :meth:`record` to ``path``; returns the path."""
    return self.record(**kwargs).save(path)
