"""Replaying a record through every known RMSprop semantics, bit by bit.

Each :class:`Candidate` is one semantics this package (or optax) can compute:
a TF/Keras generation (``keras_legacy``, ``tf1``, ``keras3``) with a rounding
tier (``tf_cpu``: TF's CPU kernels; ``tf_xla``: TF's XLA lowering) and, for a
learning-rate schedule, graph or eager evaluation of the schedule; or
``optax.rmsprop`` with its options (``eps_in_sqrt``, ``initial_scale``,
``decay`` as a Python float or ``jnp.float32``), jit-compiled or op by op.

:func:`replay` starts from the record's first variables (and, for a fresh
optimizer, the candidate's own initial slots), feeds the recorded gradients
one step at a time, as the recorded run did, and measures after every step the
largest ULP distance of every variable and slot from the record.
"""

from collections.abc import Sequence
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_tfrmsprop._src import alias
from optax_tfrmsprop._src import base
from optax_tfrmsprop._src import numerics
from optax_tfrmsprop._src import sparse
from optax_tfrmsprop._src.doctor import record as record_lib
from optax_tfrmsprop._src.keras import schedules

QUANTITIES = ("var", "ms", "mg", "mom")
"""The compared quantities: the variable and the three canonical slots."""

FAMILIES = ("keras_legacy", "tf1", "keras3", "optax")
TF_ROUNDINGS = ("tf_cpu", "tf_xla")
OPTAX_ROUNDINGS = ("jit", "op_by_op")

_PRESETS = {
  "keras_legacy": "rmsprop",
  "tf1": "tf1_rmsprop",
  "keras3": "keras3_rmsprop",
}


# TF's slots in an optax.rmsprop state. Its ``trace`` accumulates updates
# that already carry ``-lr``: TF's ``mom`` (``var -= mom``) negated.
OPTAX_SLOTS = (("ms", "nu"), ("mg", "mu"), ("mom", "trace"))


def canonical_slots(state) -> dict[str, list[Any] | None]:
  """The slots of an optax_tfrmsprop or optax.rmsprop state, as TF has them.

  Args:
    state: an :class:`~optax_tfrmsprop.RMSpropState` or an ``optax.rmsprop``
      state.

  Returns:
    Canonical slot name (``ms``, ``mg``, ``mom``) to its leaves, or ``None``
    for a slot the state does not have.
  """
  if isinstance(state, base.RMSpropState):
    return {
      f: None
      if getattr(state, f) is None
      else jax.tree.leaves(getattr(state, f))
      for f in record_lib.SLOTS
    }
  slots = {}
  for field, key in OPTAX_SLOTS:
    value = optax.tree_utils.tree_get(state, key, default=None)
    leaves = None if value is None else jax.tree.leaves(value)
    slots[field] = (
      [-t for t in leaves] if field == "mom" and leaves is not None else leaves
    )
  return slots


def build_schedule(
  config: dict[str, Any], evaluation: schedules.Evaluation | None
):
  """A Keras-serialised schedule as this package's port, with ``evaluation``."""
  if evaluation is None:
    return schedules.deserialize(config)
  return schedules.deserialize(config, evaluation=evaluation)


@dataclasses.dataclass(frozen=True)
class Candidate:
  """One semantics the doctor replays a record with.

  Attributes:
    family: ``"keras_legacy"``, ``"tf1"``, ``"keras3"`` (this package's
      presets) or ``"optax"`` (``optax.rmsprop``).
    rounding: ``"tf_cpu"`` or ``"tf_xla"`` for the presets; ``"jit"`` or
      ``"op_by_op"`` for optax.
    schedule: ``"graph"`` or ``"eager"`` evaluation of a learning-rate
      schedule; ``None`` without a schedule.
    eps_in_sqrt: optax's option (``None`` for the presets).
    initial_scale: optax's initial ``nu`` (``None`` for the presets).
    decay_float32: optax's ``decay`` given as ``jnp.float32`` rather than a
      Python float (``None`` for the presets).

  Example:
    >>> from optax_tfrmsprop import doctor
    >>> c = doctor.Candidate("keras3", "tf_xla")
    >>> c.name
    'keras3 / tf_xla'
    >>> code = c.code(dict(learning_rate=0.01, rho=0.9, momentum=0.0,
    ...                    epsilon=1e-7, centered=False))
    >>> code.split("(")[0], "rounding='tf_xla'" in code
    ('optax_tfrmsprop.keras3_rmsprop', True)
  """

  family: str
  rounding: str
  schedule: schedules.Evaluation | None = None
  eps_in_sqrt: bool | None = None
  initial_scale: float | None = None
  decay_float32: bool | None = None

  @property
  def name(self) -> str:
    if self.family == "optax":
      parts = [
        f"eps_in_sqrt={self.eps_in_sqrt}",
        f"initial_scale={self.initial_scale:g}",
        "decay=jnp.float32" if self.decay_float32 else "decay=float",
      ]
      head = f"optax.rmsprop({', '.join(parts)})"
    else:
      head = self.family
    tail = [self.rounding] + (
      [f"{self.schedule} schedule"] if self.schedule else []
    )
    return f"{head} / {' / '.join(tail)}"

  @property
  def tier(self) -> str:
    """The rounding tier's description."""
    return {
      "tf_cpu": "tf_cpu (TF's CPU kernels: every op rounded, no FMA)",
      "tf_xla": "tf_xla (TF's XLA lowering, fused by XLA)",
      "jit": "jit (XLA-fused on the replay device)",
      "op_by_op": "op by op (every jnp op rounded)",
    }[self.rounding]

  def epsilon_inside(self, config: dict[str, Any]) -> bool:
    """Whether epsilon sits inside the square root for this config."""
    if self.family == "optax":
      return bool(self.eps_in_sqrt)
    # Inside on TF's kernel (momentum) paths and in Keras 3's one formula.
    semantics = base.SEMANTICS[self.family]
    return (
      semantics.update_rule == "keras3"
      or bool(config.get("momentum_path"))
      or semantics.uses_momentum(config["momentum"])
    )

  @property
  def initial_ms(self) -> float:
    if self.family == "optax":
      return float(self.initial_scale or 0.0)
    return base.SEMANTICS[self.family].initial_ms

  def one_minus_rho_in_double(self) -> bool:
    """``1 - rho`` computed in double (then rounded) rather than the dtype."""
    if self.family == "optax":
      return not self.decay_float32
    return base.SEMANTICS[self.family].one_minus_rho_in_double

  def not_applicable(self, config: dict[str, Any]) -> str | None:
    """Why this candidate cannot express ``config``, or None."""
    extras = [k for k in record_lib.CLIP_OPTIONS if config.get(k) is not None]
    if config.get("decay"):
      extras.append("decay")
    if self.family != "optax":
      extras = [
        k for k in extras if k not in base.SEMANTICS[self.family].options
      ]
    if extras:
      return (
        f"{self.family} has no {', '.join(extras)} (Keras' "
        "inverse-time decay and clipping are tf_keras options)"
      )
    return None

  def code(self, config: dict[str, Any]) -> str:
    """Python code that builds this semantics for ``config``."""
    lr = config["learning_rate"]
    if isinstance(lr, dict):
      lr_code = _schedule_code(lr["schedule"], self.schedule)
    elif lr == "per_step":
      lr_code = "<the recorded per-step learning rates>"
    else:
      lr_code = repr(nominal(lr))
    fmt = lambda x: repr(nominal(x))
    if self.family == "optax":
      decay = (
        f"jnp.float32({fmt(config['rho'])})"
        if self.decay_float32
        else fmt(config["rho"])
      )
      momentum = None if not config["momentum"] else nominal(config["momentum"])
      args = [
        f"learning_rate={lr_code}",
        f"decay={decay}",
        f"eps={fmt(config['epsilon'])}",
        f"initial_scale={self.initial_scale:g}",
        f"eps_in_sqrt={self.eps_in_sqrt}",
        f"centered={config['centered']}",
        f"momentum={momentum}",
      ]
      opts = config.get("optax") or {}
      for key in ("nesterov", "bias_correction"):
        if opts.get(key):
          args.append(f"{key}=True")
      head = "optax.rmsprop"
      tail = (
        "  # under jax.jit"
        if self.rounding == "jit"
        else ("  # not jit-compiled")
      )
      return f"{head}({', '.join(args)}){tail}"
    rho_name = "decay" if self.family == "tf1" else "rho"
    momentum = nominal(config["momentum"])
    momentum_code = repr(momentum)
    if (
      self.family == "keras_legacy"
      and config.get("momentum_path")
      and not momentum
    ):
      momentum_code = "jnp.asarray(0.0)"
    args = [
      f"learning_rate={lr_code}",
      f"{rho_name}={fmt(config['rho'])}",
      f"momentum={momentum_code}",
      f"epsilon={fmt(config['epsilon'])}",
      f"centered={config['centered']}",
    ]
    if self.family == "keras_legacy":
      if config.get("decay"):
        args.append(f"decay={fmt(config['decay'])}")
      for key in record_lib.CLIP_OPTIONS:
        if config.get(key) is not None:
          args.append(f"{key}={fmt(config[key])}")
    args.append(f"rounding={self.rounding!r}")
    return f"optax_tfrmsprop.{_PRESETS[self.family]}({', '.join(args)})"

  def build(self, rec: record_lib.Record) -> optax.GradientTransformation:
    """This semantics for the record's config (see :meth:`not_applicable`)."""
    config = rec.config
    lr: Any = _learning_rate(rec, self.schedule)
    if self.family == "optax":
      rho = nominal(config["rho"])
      opts = config.get("optax") or {}
      return optax.rmsprop(
        learning_rate=lr,
        decay=jnp.float32(rho) if self.decay_float32 else rho,
        eps=config["epsilon"],
        initial_scale=float(self.initial_scale or 0.0),
        eps_in_sqrt=bool(self.eps_in_sqrt),
        centered=config["centered"],
        momentum=(nominal(config["momentum"]) if config["momentum"] else None),
        nesterov=bool(opts.get("nesterov")),
        bias_correction=bool(opts.get("bias_correction")),
      )
    momentum = nominal(config["momentum"])
    common: dict[str, Any] = dict(
      epsilon=config["epsilon"],
      centered=config["centered"],
      rounding=self.rounding,
    )
    rho = nominal(config["rho"])
    if self.family == "keras_legacy":
      if config.get("momentum_path") and not momentum:
        momentum = jnp.asarray(0.0, jnp.float32)  # TF's tensor momentum.
      clips = {
        k: config[k]
        for k in record_lib.CLIP_OPTIONS
        if config.get(k) is not None
      }
      return alias.rmsprop(
        lr, rho, momentum, decay=config.get("decay", 0.0), **clips, **common
      )
    if self.family == "tf1":
      return alias.tf1_rmsprop(lr, decay=rho, momentum=momentum, **common)
    return alias.keras3_rmsprop(lr, rho, momentum, **common)

  def state_from(self, opt, params, slots: dict[str, list[Any]], count: int):
    """This candidate's state holding the recorded ``slots`` (not fresh)."""
    state = opt.init(params)
    present = canonical_slots(state)
    if self.family == "optax":
      values = {}
      for field, key in OPTAX_SLOTS:
        if present[field] is not None and field in slots:
          sign = -1 if field == "mom" else 1
          values[key] = [sign * jnp.asarray(s) for s in slots[field]]
      return optax.tree_utils.tree_set(state, **values)
    values = {
      f: [jnp.asarray(s) for s in slots[f]]
      for f in present
      if present[f] is not None and f in slots
    }
    return state.replace(count=jnp.asarray(count, jnp.int32), **values)


def _schedule_code(
  serialized: dict[str, Any], evaluation: schedules.Evaluation | None
) -> str:
  """Code building a serialised Keras schedule with this package's port."""
  ev = f", evaluation={evaluation!r}" if evaluation else ""
  name = serialized.get("class_name")
  if name in schedules.KERAS_SCHEDULES and serialized.get("module") in (
    None,
    "keras.optimizers.schedules",
  ):
    args = ", ".join(
      f"{k}={v!r}"
      for k, v in (serialized.get("config") or {}).items()
      if not (k == "name" and v is None)
    )
    return f"optax_tfrmsprop.keras.schedules.{name}({args}{ev})"
  return f"optax_tfrmsprop.keras.schedules.deserialize(<config>{ev})"


def nominal(x: Any) -> Any:
  """A float32-rounded hyperparameter back to the decimal the user wrote.

  tf_keras reports ``rho=0.9`` as ``np.float32(0.9)`` after the first step;
  its shortest decimal (0.9) rounds to the same float32, so the TF semantics
  are unchanged, and the other candidates see what a port would pass.
  """
  if not isinstance(x, float) or not np.isfinite(x):
    return x
  f32 = np.float32(x)
  if float(f32) == x:
    return float(str(f32))
  return x


def _learning_rate(
  rec: record_lib.Record, evaluation: schedules.Evaluation | None
):
  lr = rec.config["learning_rate"]
  if isinstance(lr, dict):
    return build_schedule(lr["schedule"], evaluation)
  if lr == "per_step":
    table = np.asarray(rec.learning_rates, np.float64)
    first = 0 if rec.iterations is None else int(rec.iterations[0])
    last = len(table) - 1

    def per_step(step):
      index = jnp.asarray(step).astype(jnp.int32) - first
      return jnp.asarray(table)[jnp.clip(index, 0, last)]

    return per_step
  return nominal(float(lr))


def candidates(
  rec: record_lib.Record, families: Sequence[str] | None = None
) -> list[Candidate]:
  """The semantics the doctor tries on ``rec``, the record's own first.

  Args:
    rec: the record.
    families: restrict to these families (default: all of :data:`FAMILIES`).

  Returns:
    The candidates.
  """
  families = list(families or FAMILIES)
  unknown = set(families) - set(FAMILIES)
  if unknown:
    raise ValueError(f"families must be among {FAMILIES}, got {unknown}.")
  own = rec.source if rec.source in families else None
  if rec.source == "optax_tfrmsprop":
    own = rec.config.get("flavor")
  if own in families:
    families.remove(own)
    families.insert(0, own)
  evaluations = (
    schedules.EVALUATIONS
    if isinstance(rec.config["learning_rate"], dict)
    else (None,)
  )
  found = []
  for family in families:
    if family == "optax":
      for ev in evaluations:
        for rounding in OPTAX_ROUNDINGS:
          for eps_in_sqrt in (True, False):
            for initial_scale in (0.0, 1.0):
              for decay_float32 in (False, True):
                found.append(
                  Candidate(
                    "optax",
                    rounding,
                    ev,
                    eps_in_sqrt,
                    initial_scale,
                    decay_float32,
                  )
                )
    else:
      for rounding in TF_ROUNDINGS:
        for ev in evaluations:
          found.append(Candidate(family, rounding, ev))
  return found


@dataclasses.dataclass
class Divergence:
  """Where a replay first departs from the record.

  Among the quantities that differ at the first step that differs, the one
  whose error is largest against its own step (the variable's change in that
  step; a slot's size) is reported: ULPs of a variable that barely moved
  exaggerate, ULPs of a slot do not.

  Attributes:
    step: the 1-based step.
    variable: the variable's index in the record.
    quantity: ``"var"``, ``"ms"``, ``"mg"`` or ``"mom"``.
    ulp: the largest ULP distance of that quantity at that step.
    index: the element (a tuple) with the largest error against its step.
    recorded: the record's value there.
    replayed: the candidate's value there.
    step_relative: ``|replayed - recorded|`` there, over the variable's
      change in the step (``var``) or the slot's size (``ms``, ``mg``,
      ``mom``).
  """

  step: int
  variable: int
  quantity: str
  ulp: int
  index: tuple[int, ...]
  recorded: float
  replayed: float
  step_relative: float = 0.0

  @property
  def relative(self) -> float:
    """``|replayed - recorded| / |recorded|`` at the element."""
    scale = abs(self.recorded) or 1.0
    return abs(self.replayed - self.recorded) / scale


@dataclasses.dataclass
class Replay:
  """One candidate replayed over a record.

  Attributes:
    candidate: the semantics.
    ulps: ``(steps, variables, 4)`` largest ULP distance after each step per
      variable and quantity (:data:`QUANTITIES`); -1 where the record or the
      candidate lacks that slot.
    structure: slots the record has and the candidate lacks (or the
      reverse), as ``"mom (record only)"``.
    error: why the candidate could not be replayed, or None.
    first: the first :class:`Divergence`, or None.
    steps: the number of steps replayed.
  """

  candidate: Candidate
  ulps: np.ndarray
  structure: list[str]
  error: str | None = None
  first: Divergence | None = None
  steps: int = 0

  @property
  def exact(self) -> bool:
    """0 ULP on every variable and slot at every step, with the same slots."""
    return (
      self.error is None
      and not self.structure
      and self.steps > 0
      and int(self.ulps.max(initial=0)) == 0
    )

  @property
  def max_ulp(self) -> int:
    return int(self.ulps.max(initial=0))

  def sort_key(self):
    """Closer replays sort first: exact, then later and smaller departures."""
    if self.error is not None:
      return (3, 0, 0, 0)
    if self.first is None:  # 0 ULP; exact unless the slots differ.
      return (0, 0, 0, 0) if not self.structure else (1, -np.inf, 0, 0)
    return (1, -self.first.step, self.first.step_relative, self.max_ulp)


def _float_view(a: np.ndarray) -> np.ndarray:
  """Complex arrays as their real float components, for ULP distances."""
  if np.iscomplexobj(a):
    return np.ascontiguousarray(a).view(numerics.real_dtype(a.dtype))
  return a


def _compare(replayed: np.ndarray, recorded: np.ndarray):
  """``(max ULP, argmax index)``; shapes and dtypes must agree."""
  a, b = _float_view(np.asarray(replayed)), _float_view(np.asarray(recorded))
  if a.shape != b.shape or a.dtype != b.dtype:
    return np.iinfo(np.int64).max, ()
  if a.size == 0:
    return 0, ()
  d = numerics.ulp_distance(a, b)
  flat = int(np.argmax(d))
  return int(d.reshape(-1)[flat]), np.unravel_index(flat, d.shape)


def _grads_at(rec: record_lib.Record, k: int, dense_only: bool):
  out: list[Any] = []
  for i in range(len(rec.grads)):
    g = rec.grad(k, i)
    if isinstance(g, tuple):
      values, indices, shape = g
      if dense_only:
        dense = np.zeros(shape, values.dtype)
        np.add.at(dense, indices, values)
        out.append(jnp.asarray(dense))
      else:
        out.append(
          sparse.IndexedSlices(
            jnp.asarray(values), jnp.asarray(indices, jnp.int32), shape
          )
        )
    else:
      out.append(jnp.asarray(g))
  return out


def replay(rec: record_lib.Record, candidate: Candidate) -> Replay:
  """Replays ``rec`` with ``candidate`` and measures every step's ULPs.

  Args:
    rec: the record.
    candidate: the semantics to replay with.

  Returns:
    The :class:`Replay`.
  """
  n, v = rec.num_steps, len(rec.params)
  ulps = np.full((n, v, len(QUANTITIES)), -1, np.int64)
  reason = candidate.not_applicable(rec.config)
  if reason is not None:
    return Replay(candidate, ulps, [], error=reason)
  try:
    with precision(rec):
      return _replay(rec, candidate, ulps)
  # One semantics failing on a record (an unsupported dtype, a schedule it
  # cannot build) is reported for that semantics; the others still run.
  except Exception as e:  # noqa: BLE001
    return Replay(candidate, ulps, [], error=f"{type(e).__name__}: {e}")


class precision:
  """Enables 64-bit jax types while replaying a float64 (complex128) record."""

  def __init__(self, rec):
    self._wide = any(
      np.dtype(p.dtype).itemsize * (1 if not np.iscomplexobj(p) else 0.5) == 8
      for p in rec.params
    )
    self._ctx = None

  def __enter__(self):
    if self._wide:
      self._ctx = jax.enable_x64(True)
      self._ctx.__enter__()

  def __exit__(self, *exc):
    if self._ctx is not None:
      self._ctx.__exit__(*exc)


def _replay(rec, candidate, ulps):
  opt = candidate.build(rec)
  params = [jnp.asarray(p[0]) for p in rec.params]
  if rec.fresh or not rec.initial_slots:
    state = opt.init(params)
  else:
    count = 0 if rec.iterations is None else int(rec.iterations[0])
    state = candidate.state_from(opt, params, rec.initial_slots, count)
  apply = (
    optax.apply_updates if candidate.family == "optax" else sparse.apply_updates
  )

  def step(params, state, grads):
    updates, state = opt.update(grads, state, params)
    return apply(params, updates), state, canonical_slots(state)

  if candidate.rounding != "op_by_op":
    # Each step's params and state are replaced by the next's.
    step = jax.jit(step, donate_argnums=(0, 1))
  structure = []
  present = canonical_slots(state)
  for field in record_lib.SLOTS:
    in_record = field in rec.slots
    in_candidate = present[field] is not None
    if in_record != in_candidate:
      structure.append(f"{field} ({'record' if in_record else 'replay'} only)")
  dense_only = candidate.family in ("optax",)
  first = None
  for k in range(rec.num_steps):
    grads = _grads_at(rec, k, dense_only)
    params, state, slots = step(params, state, grads)
    host_params, host_slots = jax.device_get((params, slots))
    for i in range(len(rec.params)):
      row = [
        (
          QUANTITIES.index("var"),
          host_params[i],
          rec.params[i][k + 1],
          rec.params[i][k],
        )
      ]
      for field in record_lib.SLOTS:
        if field in rec.slots and host_slots[field] is not None:
          row.append(
            (
              QUANTITIES.index(field),
              host_slots[field][i],
              rec.slots[field][i][k],
              _slot_before(rec, field, i, k),
            )
          )
      for q, replayed, recorded, before in row:
        mine = _float_view(np.asarray(replayed))
        theirs = _float_view(np.asarray(recorded))
        ulp, _ = _compare(mine, theirs)
        ulps[k, i, q] = ulp
        if ulp > 0 and (first is None or first.step == k + 1):
          found = _divergence(k, i, QUANTITIES[q], ulp, mine, theirs, before)
          if first is None or found.step_relative > first.step_relative:
            first = found
  return Replay(candidate, ulps, structure, first=first, steps=rec.num_steps)


def _slot_before(rec, field, i, k):
  """The recorded slot before step ``k`` (0-based), or None if unknown."""
  if k > 0:
    return rec.slots[field][i][k - 1]
  if rec.initial_slots and field in rec.initial_slots:
    return rec.initial_slots[field][i]
  return None


def _divergence(k, i, quantity, ulp, mine, theirs, before) -> "Divergence":
  """The element of one quantity whose error is largest against its step."""
  a = np.asarray(mine, np.float64)
  b = np.asarray(theirs, np.float64)
  prev = (
    np.zeros_like(b)
    if before is None
    else np.asarray(_float_view(np.asarray(before)), np.float64)
  )
  if quantity == "var":  # Against the step: the variable may dwarf it.
    scale = np.abs(b - prev)
  else:  # Against the slot's size: it may cross zero (mg, mom).
    scale = np.maximum(np.abs(b), np.abs(prev))
  with np.errstate(divide="ignore", invalid="ignore"):
    error = np.abs(a - b)
    relative = np.where(
      error == 0, 0.0, error / np.where(scale > 0, scale, np.inf)
    )
  relative = np.where(np.isnan(relative), np.inf, relative)
  flat = int(np.argmax(relative)) if relative.size else 0
  index = np.unravel_index(flat, relative.shape) if relative.size else ()
  return Divergence(
    step=k + 1,
    variable=i,
    quantity=quantity,
    ulp=ulp,
    index=tuple(int(j) for j in index),
    recorded=_scalar(theirs, index),
    replayed=_scalar(mine, index),
    step_relative=float(relative.reshape(-1)[flat]) if relative.size else 0.0,
  )


def _scalar(a: np.ndarray, index) -> float:
  if a.shape == () or not index:
    value = a.reshape(-1)[0] if a.size else np.nan
  else:
    value = a[tuple(index)] if len(index) == a.ndim else a.reshape(-1)[0]
  return float(value)
