"""The diagnosis: which semantics reproduce a record, and why the others don't.

:func:`diagnose` replays a record (:mod:`replay`) through every semantics that
the record's algebra (:mod:`probe`) does not rule out, ranks them, and explains
the closest one's departure when none reproduces the record exactly.
"""

from collections.abc import Sequence
import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp

from optax_tfrmsprop._src import numerics
from optax_tfrmsprop._src.doctor import probe as probe_lib
from optax_tfrmsprop._src.doctor import record as record_lib
from optax_tfrmsprop._src.doctor import replay as replay_lib
from optax_tfrmsprop._src.keras import schedules

_ROUNDING_ULPS = 16
"""A first departure of at most this many ULP, where the algebra agrees, is a
rounding difference (FMA contraction, rsqrt against a division, op order)."""


@dataclasses.dataclass
class Diagnosis:
  """The doctor's answer for one record.

  Attributes:
    record: the diagnosed :class:`~optax_tfrmsprop.doctor.Record`.
    replays: every replayed semantics, closest first.
    ruled_out: ``(candidate name, reason)`` for the semantics the record's
      algebra excludes without a replay.
    findings: what the record's numbers say about its algebra.
    hints: the likely causes of the closest replay's departure (empty when
      one is exact).
    replay_device: the device the replays ran on.

  Example:
    >>> import numpy as np
    >>> from optax_tfrmsprop import doctor
    >>> w = doctor.RecordWriter(  # PyTorch's RMSprop step, by hand.
    ...     source="custom", optimizer="torch-style", names=["x"],
    ...     config=dict(learning_rate=0.1, rho=0.99, epsilon=1e-8),
    ...     slot_names={"ms": "square_avg"})
    >>> x, v = np.float32([1.0, -2.0, 3.0]), np.zeros(3, np.float32)
    >>> w.begin([x])
    >>> for _ in range(3):
    ...   g = np.float32(2) * x
    ...   v = v * np.float32(0.99) + np.float32(0.01) * g * g
    ...   x = x - np.float32(0.1) * g / (np.sqrt(v) + np.float32(1e-8))
    ...   w.step([g], [x], {"ms": [v]})
    >>> d = doctor.diagnose(w.record(), families=["keras_legacy"])
    >>> d.exact, d.closest.candidate.name
    ([], 'keras_legacy / tf_cpu')
    >>> d.closest.first.step, d.hints[0].split(":")[0]
    (1, 'dtype casts')
  """

  record: record_lib.Record
  replays: list[replay_lib.Replay]
  ruled_out: list[tuple[str, str]]
  findings: probe_lib.Findings
  hints: list[str]
  replay_device: str

  @property
  def exact(self) -> list[replay_lib.Replay]:
    """The replays that reproduce the record bit for bit."""
    return [r for r in self.replays if r.exact]

  @property
  def closest(self) -> replay_lib.Replay | None:
    """The best replay: an exact one, or the one that departs last."""
    ran = [r for r in self.replays if r.error is None]
    return ran[0] if ran else None

  @property
  def verdict(self) -> str:
    """One line: the semantics that reproduce the record, or the closest."""
    if self.exact:
      return "reproduced exactly by " + "; ".join(
        r.candidate.name for r in self.exact
      )
    best = self.closest
    if best is None:
      return "no semantics could be replayed"
    return (
      f"no known semantics reproduces the record; closest: "
      f"{best.candidate.name}, {_departure(self.record, best)}"
    )

  def explain(self, replay: replay_lib.Replay) -> list[str]:
    """The likely causes of ``replay``'s departure (empty if it is exact).

    :attr:`hints` explains the closest replay; this explains any other.

    Args:
      replay: one of :attr:`replays`.

    Returns:
      The hints, most specific first.
    """
    return _explain(self.record, replay, self.findings)

  def replay_of(self, name: str) -> replay_lib.Replay:
    """The replay of the semantics named ``name`` (a :attr:`Candidate.name`)."""
    for r in self.replays:
      if r.candidate.name == name:
        return r
    raise KeyError(
      f"{name!r} was not replayed (ruled out, or not a "
      "semantics of this record)."
    )

  def tiers(self) -> dict[str, str]:
    """Each rounding tier's outcome for the record's own semantics.

    The record's family (and, for optax, the options of its best replay),
    under each rounding tier and schedule evaluation.
    """
    family = _family(self.record)
    ran = [
      r
      for r in self.replays
      if r.error is None and r.candidate.family == family
    ]
    if not ran:
      return {}
    best = ran[0].candidate
    same = lambda c: (
      (c.eps_in_sqrt, c.initial_scale, c.decay_float32)
      == (best.eps_in_sqrt, best.initial_scale, best.decay_float32)
    )
    out = {}
    for r in ran:
      c = r.candidate
      if not same(c):
        continue
      key = c.rounding + (f" / {c.schedule} schedule" if c.schedule else "")
      out[key] = (
        "exact" if r.exact else "departs at " + _departure(self.record, r)
      )
    return out

  def report(self, *, per_step: bool = True, all_steps: bool = False) -> str:
    """The diagnosis as text (what ``python -m optax_tfrmsprop.doctor`` prints).

    Args:
      per_step: include the per-step ULP table of the closest replay.
      all_steps: list every step, instead of collapsing runs of 0 ULP.

    Returns:
      The report.
    """
    return _render(self, per_step=per_step, all_steps=all_steps)

  def to_json(self) -> dict[str, Any]:
    """The diagnosis as JSON-safe data (``--json``)."""
    rec = self.record
    return {
      "record": {
        k: rec.meta.get(k)
        for k in (
          "source",
          "optimizer",
          "config",
          "run",
          "variables",
          "steps",
          "fresh",
        )
      },
      "verdict": self.verdict,
      "exact": [r.candidate.name for r in self.exact],
      "closest": None
      if self.closest is None
      else {
        "semantics": self.closest.candidate.name,
        "code": self.closest.candidate.code(rec.config),
        "first_departure": (
          None
          if self.closest.first is None
          else dataclasses.asdict(self.closest.first)
        ),
      },
      "hints": self.hints,
      "tiers": self.tiers(),
      "findings": record_lib.json_safe(self.findings.as_dict()),
      "replays": [
        {
          "semantics": r.candidate.name,
          "code": r.candidate.code(rec.config),
          "exact": r.exact,
          "error": r.error,
          "structure": r.structure,
          "first_departure": (
            None if r.first is None else dataclasses.asdict(r.first)
          ),
          "max_ulp": None if r.error else r.max_ulp,
          "ulps_per_step": None if r.error else r.ulps.tolist(),
        }
        for r in self.replays
      ],
      "quantities": list(replay_lib.QUANTITIES),
      "ruled_out": [
        {"semantics": n, "reason": why} for n, why in self.ruled_out
      ],
      "replay_device": self.replay_device,
    }


def _family(rec: record_lib.Record) -> str:
  if rec.source == "optax_tfrmsprop":
    return rec.config.get("flavor", "keras_legacy")
  if rec.source in replay_lib.FAMILIES:
    return rec.source
  return "keras_legacy"


def _departure(rec: record_lib.Record, r: replay_lib.Replay) -> str:
  if r.first is None:
    return (
      "no step (0 ULP on every shared quantity), but the slots "
      "differ: " + ", ".join(r.structure)
    )
  d = r.first
  where = "variable" if d.quantity == "var" else f"slot {d.quantity} of"
  return (
    f"step {d.step}, {where} {rec.names[d.variable]!r}: {d.ulp} ULP "
    f"(error {d.step_relative:.1e} of {_scale_name(d)})"
  )


def _scale_name(d: replay_lib.Divergence) -> str:
  return "the step" if d.quantity == "var" else "the slot"


def _rounding_level(rec, d: replay_lib.Divergence) -> bool:
  """Whether a first departure is of the size rounding leaves."""
  dtype = numerics.real_dtype(rec.params[d.variable].dtype)
  eps = float(probe_lib.finfo(dtype).eps)
  return d.ulp <= _ROUNDING_ULPS or d.step_relative <= 64 * eps


def _rule_out(
  rec: record_lib.Record, c: replay_lib.Candidate, found: probe_lib.Findings
) -> str | None:
  """Why the record's algebra excludes ``c``, or None."""
  if (
    rec.fresh
    and found.initial_ms is not None
    and (c.initial_ms != found.initial_ms)
  ):
    return (
      f"initial ms {c.initial_ms:g}; the record's first step starts "
      f"from {found.initial_ms:g}"
    )
  if found.epsilon in ("inside", "outside") and (
    c.epsilon_inside(rec.config) != (found.epsilon == "inside")
  ):
    placed = "inside" if c.epsilon_inside(rec.config) else "outside"
    return (
      f"epsilon {placed} the square root; the record has it {found.epsilon}"
    )
  return None


def diagnose(
  record: str | os.PathLike | record_lib.Record,
  *,
  families: Sequence[str] | None = None,
  exhaustive: bool = False,
  steps: int | None = None,
  device: str | None = "cpu",
) -> Diagnosis:
  """Replays a record through every known semantics and diagnoses it.

  The semantics are this package's ``rmsprop`` (tf_keras legacy),
  ``tf1_rmsprop`` and ``keras3_rmsprop``, each with the ``tf_cpu`` and
  ``tf_xla`` rounding tiers and, for a learning-rate schedule, graph or eager
  evaluation of the schedule; and ``optax.rmsprop`` with ``eps_in_sqrt``,
  ``initial_scale`` 0 or 1 and ``decay`` as a Python float or
  ``jnp.float32``, jit-compiled or op by op. Semantics whose algebra the
  record's first steps contradict (initial mean square, epsilon placement)
  are ruled out without a replay unless ``exhaustive``.

  Args:
    record: a record file or :class:`~optax_tfrmsprop.doctor.Record`.
    families: only these families (``"keras_legacy"``, ``"tf1"``,
      ``"keras3"``, ``"optax"``).
    exhaustive: replay every semantics, even those the probes rule out.
    steps: diagnose only the first ``steps`` steps.
    device: the jax platform to replay on (``"cpu"``: any record, from any
      device, is replayed on the CPU and the report says which tier, if any,
      matches; ``None``: jax's default device).

  Returns:
    The :class:`Diagnosis`; ``print(diagnosis.report())`` shows it.

  Example:
    >>> import os, tempfile
    >>> import jax, jax.numpy as jnp, optax
    >>> from optax_tfrmsprop import doctor
    >>> path = os.path.join(tempfile.mkdtemp(), "run.npz")
    >>> opt = doctor.record(optax.rmsprop, path, steps=2, learning_rate=0.1,
    ...                     momentum=0.9)
    >>> params = jnp.linspace(-1.0, 1.0, 16)
    >>> state = opt.init(params)
    >>> step = jax.jit(opt.update)
    >>> for _ in range(3):
    ...   updates, state = step(2 * params, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> d = doctor.diagnose(path, families=["optax"])
    >>> print(d.exact[0].candidate.name)
    optax.rmsprop(eps_in_sqrt=True, initial_scale=0, decay=float) / jit
  """
  rec = (
    record_lib.load(record)
    if isinstance(record, (str, os.PathLike))
    else record
  )
  if steps is not None:
    rec = rec.truncated(steps)
  found = probe_lib.probe(rec)
  tried = replay_lib.candidates(rec, families)
  ruled_out, kept = [], []
  for c in tried:
    why = None if exhaustive else _rule_out(rec, c, found)
    if why is None:
      kept.append(c)
    else:
      ruled_out.append((c, why))
  if not kept:  # The probes exclude everything: replay all, to measure.
    kept, ruled_out = [c for c, _ in ruled_out], []
  try:
    dev = jax.devices(device)[0] if device else jax.devices()[0]
  except RuntimeError as e:
    raise ValueError(
      f"No jax device of platform {device!r} to replay on: {e}"
    ) from e
  with jax.default_device(dev):
    replays = [replay_lib.replay(rec, c) for c in kept]
  replays.sort(key=lambda r: r.sort_key())
  hints = [] if any(r.exact for r in replays) else _hints(rec, replays, found)
  return Diagnosis(
    record=rec,
    replays=replays,
    ruled_out=[(c.name, why) for c, why in ruled_out],
    findings=found,
    hints=hints,
    replay_device=f"{dev.platform} ({getattr(dev, 'device_kind', '')})",
  )


# Hints.


def _schedule_values(
  rec, count: int
) -> dict[schedules.Evaluation, float] | None:
  """The schedule's value at ``count`` under each available evaluation."""
  lr = rec.config["learning_rate"]
  if not isinstance(lr, dict):
    return None
  values = {}
  for ev in schedules.EVALUATIONS:
    schedule = replay_lib.build_schedule(lr["schedule"], ev)
    values[ev] = float(schedule(jnp.asarray(count, jnp.float32)))
  return values


def _hints(rec, replays, found: probe_lib.Findings) -> list[str]:
  """Likely causes of the closest replay's departure, most specific first."""
  best = next((r for r in replays if r.error is None), None)
  if best is None:
    return [
      "no semantics could be replayed: "
      + "; ".join(sorted({r.error for r in replays if r.error}))
    ]
  return _explain(rec, best, found)


def _explain(
  rec, best: replay_lib.Replay, found: probe_lib.Findings
) -> list[str]:
  """Likely causes of one replay's departure from the record."""
  if best.error is not None:
    return [f"not replayed: {best.error}"]
  if best.exact:
    return []
  c = best.candidate
  config = rec.config
  hints = []
  if found.epsilon == "neither":
    hints.append(
      "epsilon placement / learning rate: neither epsilon inside nor "
      "outside the square root fits the recorded steps with the config's "
      "learning rate, so the learning rate (or epsilon) the run used is "
      "not the one in its config."
    )
  elif found.epsilon is not None and c.epsilon_inside(config) != (
    found.epsilon == "inside"
  ):
    hints.append(
      f"epsilon placement: the record has epsilon {found.epsilon} the "
      f"square root, {c.name} puts it "
      f"{'inside' if c.epsilon_inside(config) else 'outside'}."
    )
  if found.ms_decay is not None:
    start, measured, configured = found.ms_decay
    hints.append(
      f"mean-square decay: the record's first step has "
      f"{_first_ms(start, measured)} (initial ms {start:g}), so it used "
      f"1 - rho = {measured:.7g} (rho = {1 - measured:.7g}); its config's "
      f"rho gives 1 - rho = {configured:.7g}, which fits neither initial "
      "mean square. The run decays the mean square with a rho other than "
      "its config's."
    )
  if (
    rec.fresh
    and found.initial_ms is not None
    and (c.initial_ms != found.initial_ms)
  ):
    hints.append(
      f"initial ms: the record's mean square starts at "
      f"{found.initial_ms:g}, {c.name} starts it at {c.initial_ms:g} "
      "(TF1 and optax.rmsprop(initial_scale=1) start at 1)."
    )
  if found.lr_in_momentum is False:
    hints.append(
      "lr inside momentum: the record's momentum slot does not contain "
      "the learning rate (the variable moves by lr * momentum, as in "
      "PyTorch's RMSprop); TF, Keras and optax accumulate lr * update in "
      "the momentum slot, so their steps differ as soon as the learning "
      "rate is not 1 or changes."
    )
  if found.lr_departures:
    k, est, exp = found.lr_departures[0]
    hints.append(
      f"learning rate: at step {k} the record used about {est:.7g} where "
      f"its config gives {exp:.7g} ({len(found.lr_departures)} of the "
      "probed steps differ): was the learning rate changed outside the "
      "optimizer's config (a callback, an assignment)?"
    )
  if found.one_minus_rho is not None and (
    (found.one_minus_rho == "double") != c.one_minus_rho_in_double()
  ):
    dtype_c, double_c = found.one_minus_rho_values or (0.0, 0.0)
    record_c = double_c if found.one_minus_rho == "double" else dtype_c
    other_c = dtype_c if found.one_minus_rho == "double" else double_c
    how = (
      "in double, then rounded"
      if found.one_minus_rho == "double"
      else "from float32 rho in the variable dtype"
    )
    hints.append(
      f"dtype casts: the record computes 1 - rho = {record_c!r} ({how}); "
      f"{c.name} uses {other_c!r}. "
      "(tf_keras and TF1 round rho to float32 first; Keras 3 and "
      "optax.rmsprop with a Python float decay compute 1 - rho in double; "
      "pass decay=jnp.float32(rho) to optax for the former.)"
    )
  d = best.first
  if d is not None and isinstance(config["learning_rate"], dict):
    count = (
      d.step - 1 if rec.iterations is None else int(rec.iterations[d.step - 1])
    )
    values = _schedule_values(rec, count)
    graph = rec.meta.get("run", {}).get("graph")
    if values and len(values) > 1 and len(set(values.values())) > 1:
      hints.append(
        f"schedule evaluation: at step {d.step} the schedule evaluated in "
        f"a graph (Model.fit, tf.function) gives {values['graph']!r} and "
        f"evaluated eagerly {values['eager']!r}; {c.name} uses the "
        f"{c.schedule} value."
      )
    elif values and len(values) == 1 and graph:
      hints.append(
        "schedule evaluation: the record ran its schedule in a graph "
        "(Model.fit or tf.function), whose rewrites round some steps' "
        "learning rate differently from eager evaluation; this version of "
        "the package's schedule ports reproduces eager evaluation only."
      )
  if d is not None and not hints and _rounding_level(rec, d):
    hints.append(_rounding_hint(rec, best))
  if not hints:
    if d is None:
      hints.append("the slots differ: " + ", ".join(best.structure))
    else:
      agree, undecided = _probe_verdicts(rec, found)
      probes = []
      if agree:
        probes.append(f"{_join(agree)} agree")
      if undecided:
        probes.append(
          f"{_join(undecided)} {'is' if len(undecided) == 1 else 'are'} "
          "undecided"
        )
      hints.append(
        f"unknown: {c.name} departs at step {d.step} by {d.ulp} ULP (an "
        f"error of {d.step_relative:.1e} of {_scale_name(d)}), more than "
        "rounding, with no algebraic difference the probes can see ("
        + ("; ".join(probes) or "no probe ran")
        + ")."
      )
  return hints


def _first_ms(start: float, one_minus_rho: float) -> str:
  """Step 1's mean square from ``start``, as a formula in ``g^2``."""
  slope = f"{one_minus_rho:.7g} * g^2"
  if not start:
    return f"ms = {slope}"
  return f"ms = {(1 - one_minus_rho) * start:.7g} + {slope}"


def _join(names: list[str]) -> str:
  """``a``, ``a and b``, ``a, b and c``."""
  return " and ".join(
    [", ".join(names[:-1]), names[-1]] if names[1:] else names
  )


def _probe_verdicts(
  rec: record_lib.Record, found: probe_lib.Findings
) -> tuple[list[str], list[str]]:
  """The probes that decided (and agree) and those that could not decide.

  Called when no probe's finding explains a departure, so every probe that
  decided agrees with the replay; an undecided one does not.

  Args:
    rec: the record.
    found: its probes' findings.

  Returns:
    ``(agreeing, undecided)`` probe names, in the report's order.
  """
  decided = {
    # A trained optimizer's slots come from the record: nothing to probe.
    "initial ms": found.initial_ms is not None if rec.fresh else None,
    "epsilon placement": found.epsilon is not None,
    # Only a momentum slot shows where the learning rate is.
    "lr inside momentum": (
      found.lr_in_momentum is not None if "mom" in rec.slots else None
    ),
    "1 - rho": found.one_minus_rho is not None if rec.fresh else None,
    "the learning rate per step": bool(found.learning_rates),
  }
  agree = [name for name, ok in decided.items() if ok]
  undecided = [name for name, ok in decided.items() if ok is False]
  return agree, undecided


def _rounding_hint(rec, best) -> str:
  d, c = best.first, best.candidate
  run = rec.meta.get("run", {})
  kind = run.get("device_kind", "cpu")
  where = {
    "ms": "in the mean-square update (TF's kernels use ms + (g*g - ms)*c, "
    "its graph ops and XLA rho*ms + c*g*g)",
    "mg": "in the mean-gradient update",
    "mom": "in the momentum update (a*b + c contracted to an FMA, or "
    "x / sqrt(d) computed as x * rsqrt(d))",
    "var": "in the step (x / sqrt(d) against x * rsqrt(d), or the "
    "variable update fused into an FMA)",
  }[d.quantity]
  text = (
    f"FMA/rsqrt rounding: the algebra agrees, but {c.name} departs at "
    f"step {d.step} {where}, by {d.ulp} ULP (an error of "
    f"{d.step_relative:.1e} of {_scale_name(d)})."
  )
  if kind == "gpu":
    text += (
      f" The record was made on a GPU "
      f"({run.get('device_description') or run.get('device')}): TF's "
      "GPU kernels are compiled with FMA contraction and XLA:GPU "
      "fuses and approximates differently from the CPU, so no CPU "
      "rounding tier reproduces them bit for bit."
    )
  elif (
    c.family == "keras3"
    and rec.source == "keras3"
    and run.get("graph")
    and not run.get("jit_compile")
  ):
    text += (
      " Keras 3 ran in a TF graph (Model.fit or tf.function): "
      "grappler rewrites its (lr * g) / sqrt(v + eps) into "
      "(lr * g) * rsqrt(v + eps), and TF's CPU rsqrt is a hardware "
      "estimate refined by one Newton step; this package reproduces "
      "Keras 3 as it runs eagerly (tf_cpu) or under XLA (tf_xla)."
    )
  elif run.get("jit_compile") and c.rounding == "tf_cpu":
    text += " The run was XLA-compiled (jit_compile): compare the tf_xla tier."
  return text


# Rendering.


def _describe_config(config: dict[str, Any]) -> str:
  lr = config["learning_rate"]
  if isinstance(lr, dict):
    s = lr["schedule"]
    inner = ", ".join(
      f"{k}={v!r}"
      for k, v in s.get("config", {}).items()
      if k != "name" and v is not None
    )
    lr = f"{s.get('class_name')}({inner})"
  elif lr != "per_step":
    lr = repr(replay_lib.nominal(lr))
  parts = [f"learning_rate={lr}"]
  for key in ("rho", "momentum", "epsilon"):
    parts.append(f"{key}={replay_lib.nominal(config[key])!r}")
  parts.append(f"centered={config['centered']}")
  for key in ("decay", *record_lib.CLIP_OPTIONS):
    if config.get(key):
      parts.append(f"{key}={config[key]!r}")
  opts = config.get("optax")
  if opts:
    parts += [f"{k}={v!r}" for k, v in opts.items()]
  if config.get("unsupported"):
    parts.append(f"not replayed: {config['unsupported']}")
  return ", ".join(parts)


def _describe_run(rec) -> tuple[str, str]:
  run = rec.meta.get("run", {})
  how = {
    "model_fit": "Model.fit",
    "tf.function": "a tf.function step",
    "eager": "an eager step",
    "session": "a TF1 session",
    "jax": "a JAX step",
  }.get(run.get("how"), run.get("how", "?"))
  mode = (
    "XLA, jit_compile"
    if run.get("jit_compile")
    else "graph"
    if run.get("graph")
    else "eager"
  )
  if run.get("how") == "jax":
    mode = "jax"
  dtypes = sorted({v["dtype"] for v in rec.meta["variables"]})
  recorded = (
    f"{rec.meta.get('optimizer', rec.source)} in {how} ({mode}), "
    f"{rec.num_steps} steps, {len(rec.params)} variables "
    f"({', '.join(dtypes)})"
    + ("" if rec.fresh else ", from a trained optimizer")
  )
  host = run.get("host", {})
  versions = run.get("versions", {})
  lib = ", ".join(
    f"{k} {v}"
    for k, v in versions.items()
    if k in ("tensorflow", "keras", "jax", "optax")
  )
  device = (
    f"{run.get('device', '?')} ({run.get('device_kind', '?')}"
    + (
      f", {run['device_description']}" if run.get("device_description") else ""
    )
    + f"; host {host.get('cpu') or host.get('machine', '?')})"
    + (f"; {lib}" if lib else "")
  )
  return recorded, device


def _undistinguished(exact: list[replay_lib.Replay]) -> list[str]:
  """The candidate fields that vary among several exact replays."""
  if len(exact) < 2:
    return []
  names = {
    "family": "semantics",
    "rounding": "rounding tier",
    "schedule": "schedule evaluation",
    "eps_in_sqrt": "eps_in_sqrt",
    "initial_scale": "initial_scale",
    "decay_float32": "the decay's type",
  }
  fields = [f.name for f in dataclasses.fields(replay_lib.Candidate)]
  return [
    names[f]
    for f in fields
    if len({getattr(r.candidate, f) for r in exact}) > 1
  ]


def _findings_line(found: probe_lib.Findings) -> str:
  parts = []
  if found.initial_ms is not None:
    parts.append(f"initial ms {found.initial_ms:g}")
  if found.epsilon is not None:
    parts.append(
      f"epsilon {found.epsilon} the square root"
      if found.epsilon != "neither"
      else "neither epsilon placement fits"
    )
  if found.lr_in_momentum is not None:
    parts.append(
      "learning rate "
      + ("inside" if found.lr_in_momentum else "outside")
      + " momentum"
    )
  if found.one_minus_rho is not None:
    dtype_c, double_c = found.one_minus_rho_values or (0.0, 0.0)
    value = double_c if found.one_minus_rho == "double" else dtype_c
    parts.append(
      f"1 - rho = {value!r} ("
      + ("double" if found.one_minus_rho == "double" else "variable dtype")
      + ")"
    )
  if found.ms_decay is not None:
    start, measured, configured = found.ms_decay
    parts.append(
      f"initial ms undecided with the config's 1 - rho = {configured:.7g}; "
      f"step 1 fits initial ms {start:g} with 1 - rho = {measured:.7g}"
    )
  if found.learning_rates and not found.lr_departures:
    parts.append("learning rate as configured")
  return "; ".join(parts) or "undetermined (see notes)"


def _per_step_table(rec, r: replay_lib.Replay, all_steps: bool) -> list[str]:
  names = rec.names
  width = max([8] + [len(n) for n in names]) + 2
  head = f"  {'step':>9}  {'variable':<{width}}" + "".join(
    f"{q:>8}" for q in replay_lib.QUANTITIES
  )
  lines = [head]
  fmt = lambda u: "-" if u < 0 else str(u)
  k, n = 0, r.ulps.shape[0]
  while k < n:
    if not all_steps and r.ulps[k].max(initial=0) <= 0:
      end = k
      while end + 1 < n and r.ulps[end + 1].max(initial=0) <= 0:
        end += 1
      span = f"{k + 1}" if end == k else f"{k + 1}-{end + 1}"
      cols = [
        max(r.ulps[k : end + 1, :, q].max(initial=-1), -1)
        for q in range(len(replay_lib.QUANTITIES))
      ]
      lines.append(
        f"  {span:>9}  {'(all)':<{width}}"
        + "".join(f"{fmt(u):>8}" for u in cols)
      )
      k = end + 1
      continue
    for i, name in enumerate(names):
      lines.append(
        f"  {k + 1 if i == 0 else '':>9}  {name:<{width}}"
        + "".join(f"{fmt(u):>8}" for u in r.ulps[k, i])
      )
    k += 1
  return lines


def _render(diag: Diagnosis, *, per_step: bool, all_steps: bool) -> str:
  rec = diag.record
  recorded, device = _describe_run(rec)
  out = [
    "Parity doctor",
    f"  recorded: {recorded}",
    f"  device:   {device}",
    f"  config:   {_describe_config(rec.config)}",
    f"  replayed: on {diag.replay_device}, {len(diag.replays)} semantics"
    + (
      f" ({len(diag.ruled_out)} more ruled out by the record's algebra)"
      if diag.ruled_out
      else ""
    ),
    "",
  ]
  if diag.exact:
    out.append(
      f"Diagnosis: REPRODUCED EXACTLY (0 ULP on every variable and slot at "
      f"all {rec.num_steps} steps) by:"
    )
    for r in diag.exact:
      out.append(f"  {r.candidate.name}")
      out.append(f"    {r.candidate.code(rec.config)}")
    differ = _undistinguished(diag.exact)
    if differ:
      out.append(
        f"  This record cannot tell them apart: they differ only in "
        f"{', '.join(differ)}, which its numbers do not exercise."
      )
  else:
    best = diag.closest
    out.append("Diagnosis: NO KNOWN SEMANTICS REPRODUCES THIS RECORD.")
    if best is not None:
      out.append(f"  closest: {best.candidate.name}")
      out.append(f"    {best.candidate.code(rec.config)}")
      if best.first is not None:
        d = best.first
        what = "variable" if d.quantity == "var" else f"slot {d.quantity} of"
        out.append(
          f"  departs at step {d.step}, {what}"
          f" {rec.names[d.variable]!r}, element {d.index}: recorded "
          f"{d.recorded!r}, replayed {d.replayed!r} (largest distance "
          f"{d.ulp} ULP; error {d.step_relative:.1e} of "
          f"{_scale_name(d)})"
        )
      if best.structure:
        out.append(f"  slots differ: {', '.join(best.structure)}")
    for hint in diag.hints:
      out.append(f"  likely cause: {hint}")
  out.append("")
  tiers = diag.tiers()
  if tiers:
    out.append(f"Rounding tiers ({_family(rec)}):")
    out += [f"  {k}: {v}" for k, v in tiers.items()]
  out.append(f"The record's algebra: {_findings_line(diag.findings)}")
  for note in diag.findings.notes:
    out.append(f"  note: {note}")
  out.append("")
  out.append("Semantics replayed (closest first):")
  skipped = {}
  for r in diag.replays:
    if r.error:
      skipped.setdefault(r.error, []).append(r.candidate.name)
      continue
    if r.exact:
      status = "exact"
    elif r.first is None:
      status = _departure(rec, r)
    else:
      status = f"departs at {_departure(rec, r)}; max {r.max_ulp} ULP"
    out.append(f"  {r.candidate.name:<64} {status}")
  for error, names in skipped.items():
    families = sorted({n.split(" / ")[0].split("(")[0] for n in names})
    out.append(
      f"  not replayed ({len(names)} semantics of "
      f"{', '.join(families)}): {error}"
    )
  if diag.ruled_out:
    out.append("Ruled out by the record's algebra (not replayed):")
    by_reason = {}
    for name, why in diag.ruled_out:
      by_reason.setdefault(why, []).append(name)
    for why, names in by_reason.items():
      out.append(f"  {why}:")
      out += [f"    {name}" for name in names]
  best = diag.closest
  if per_step and best is not None:
    out.append("")
    out.append(
      f"Per step, {best.candidate.name} "
      "(largest ULP distance per variable and slot; - : no slot):"
    )
    out += _per_step_table(rec, best, all_steps)
  return "\n".join(out)


def dumps(diag: Diagnosis) -> str:
  """The diagnosis as a JSON string."""
  return json.dumps(diag.to_json(), indent=1)
