"""What a record's numbers say about its algebra, independent of rounding.

The bit-exact replays (:mod:`replay`) tell whether a known semantics
reproduces a record; when none does, the hint comes from here. Each probe
fits the recorded steps, in float64, to two algebraic hypotheses that differ
by far more than rounding, and answers only when the record separates them:

* the initial mean square (0 as in Keras and optax, 1 as in TF1 and
  ``optax.rmsprop(initial_scale=1)``); when neither fits, the decay the first
  step's mean square shows (a ``rho`` other than the config's);
* epsilon inside or outside the square root;
* the learning rate inside the momentum accumulator (TF, Keras, optax) or
  outside it (PyTorch's ``torch.optim.RMSprop``);
* ``1 - rho`` computed in the variable's dtype (tf_keras, TF1) or in double
  (Keras 3, ``optax.rmsprop`` with a Python ``decay``);
* the learning rate of each step, against the record's config.
"""

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np

from optax_tfrmsprop._src import clipping
from optax_tfrmsprop._src.doctor import record as record_lib
from optax_tfrmsprop._src.doctor import replay as replay_lib

_PROBE_STEPS = 8  # Steps looked at for the epsilon and learning-rate probes.


@dataclasses.dataclass
class Findings:
  """The record's algebra, as far as its numbers decide it.

  Attributes:
    initial_ms: 0.0 or 1.0 when the first step decides it, else None.
    epsilon: ``"inside"`` or ``"outside"`` the square root, ``"neither"``
      when both fail, or None when the record cannot tell (every mean square
      much larger than epsilon).
    lr_in_momentum: whether the momentum slot holds the learning rate
      (None: no momentum slot, or undecided).
    one_minus_rho: ``"dtype"`` (``1 - rho`` rounded from float32 operands in
      the variable's dtype) or ``"double"``; None when undecided.
    one_minus_rho_values: the two candidate values of ``1 - rho``.
    ms_decay: when the initial-mean-square probe is undecided because the
      first step's ``ms`` fits neither start with the config's ``rho``:
      ``(initial ms, measured 1 - rho, config's 1 - rho)`` if it fits
      ``ms = (1 - c) * initial + c * g**2`` for one measured ``c``, else None.
    learning_rates: per probed step ``(step, estimated, expected)``.
    lr_departures: the steps whose estimated learning rate departs from the
      config's by more than 0.1%.
    notes: why a probe did not run.
  """

  initial_ms: float | None = None
  epsilon: str | None = None
  lr_in_momentum: bool | None = None
  one_minus_rho: str | None = None
  one_minus_rho_values: tuple[float, float] | None = None
  ms_decay: tuple[float, float, float] | None = None
  learning_rates: list[tuple[int, float, float]] = dataclasses.field(
    default_factory=list
  )
  lr_departures: list[tuple[int, float, float]] = dataclasses.field(
    default_factory=list
  )
  notes: list[str] = dataclasses.field(default_factory=list)

  def as_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def finfo(dtype):
  """``np.finfo``, bfloat16 included (through ml_dtypes)."""
  import ml_dtypes

  return ml_dtypes.finfo(dtype)


def _eps(dtype) -> float:
  return float(finfo(dtype).eps)


def _ulp(x: np.ndarray, dtype) -> np.ndarray:
  """The spacing of ``dtype`` at ``|x|`` (its smallest normal at 0)."""
  info = finfo(dtype)
  mag = np.maximum(np.abs(x), float(info.tiny))
  return 2.0 ** (np.floor(np.log2(mag)) - info.nmant)


def _probe_vars(rec: record_lib.Record) -> list[int]:
  """The variables the probes use: dense, real floating point."""
  out = []
  for i, g in enumerate(rec.grads):
    if isinstance(g, record_lib.SparseSteps):
      continue
    dtype = np.dtype(rec.params[i].dtype)
    if dtype.kind != "f" and dtype.name != "bfloat16":
      continue
    out.append(i)
  return out


def _f64(a) -> np.ndarray:
  return np.asarray(a).astype(np.float64)


def _gradients_used(rec: record_lib.Record, steps: int) -> list[list[Any]]:
  """Per step, the gradients after tf_keras' clipping (what the update used).

  Row-sparse gradients are ``None`` (the probes use dense variables only),
  but their rows count in the global norm.
  """
  config = rec.config
  clips = {k: config.get(k) for k in record_lib.CLIP_OPTIONS}
  clip = None
  if any(v is not None for v in clips.values()):
    import jax

    clip = jax.jit(
      lambda leaves: clipping.clip_gradients(
        leaves,
        clipvalue=clips["clipvalue"],
        clipnorm=clips["clipnorm"],
        global_clipnorm=clips["global_clipnorm"],
      )
    )
  out = []
  for k in range(steps):
    raw = [rec.grad(k, i) for i in range(len(rec.grads))]
    if clip is not None:
      with replay_lib.precision(rec):
        rows = [g[0] if isinstance(g, tuple) else g for g in raw]
        raw = [
          None if isinstance(g, tuple) else np.asarray(c)
          for g, c in zip(raw, clip(rows))
        ]
    out.append([None if isinstance(g, tuple) else _f64(g) for g in raw])
  return out


def expected_learning_rates(rec: record_lib.Record) -> np.ndarray | None:
  """The learning rate of each step the config implies (float64), or None."""
  config = rec.config
  lr = config["learning_rate"]
  n = rec.num_steps
  counts = (
    np.arange(n) if rec.iterations is None else rec.iterations.astype(np.int64)
  )
  if lr == "per_step":
    values = np.asarray(rec.learning_rates, np.float64)
  elif isinstance(lr, dict):
    try:
      schedule = replay_lib.build_schedule(lr["schedule"], "eager")
      values = np.array(
        [float(schedule(jnp.asarray(c, jnp.float32))) for c in counts]
      )
    # A custom schedule may fail in any way; the probes then skip the rate.
    except Exception:  # noqa: BLE001
      return None
  else:
    values = np.full(n, float(lr))
  decay = float(config.get("decay") or 0.0)
  if decay:
    values = values / (1.0 + decay * counts)
  return values


def _fit_ms_decay(
  rec: record_lib.Record, variables: list[int], grads: list[Any], start: float
) -> float | None:
  """The ``1 - rho`` that step 1's ``ms`` fits from ``start``, or None.

  Fits ``ms = start + c * (g**2 - start)`` (``rho * start + (1 - rho) * g**2``
  with ``c = 1 - rho``) by the median of each element's ``c``, and keeps it
  only if nearly every element agrees to rounding.

  Args:
    rec: a fresh record.
    variables: the probed variables.
    grads: step 1's gradients (after clipping), per variable, in float64.
    start: the initial mean square, 0 or 1.

  Returns:
    The measured ``1 - rho``, or None when no single value fits.
  """
  estimates, fits = [], []
  for i in variables:
    g2 = grads[i] * grads[i]
    ms1 = _f64(rec.slots["ms"][i][0])
    # Elements whose g**2 is close to the start say nothing about c.
    ok = np.abs(g2 - start) > 1e-3 * np.maximum(g2, 1.0)
    estimates.extend(((ms1[ok] - start) / (g2[ok] - start)).tolist())
    fits.append((i, g2, ms1))
  if not estimates:
    return None
  c = float(np.median(estimates))
  agree = total = 0
  for i, g2, ms1 in fits:
    dtype = rec.params[i].dtype
    pred = start + c * (g2 - start)
    tol = 16 * _eps(dtype) * np.abs(pred) + 2 * _ulp(ms1, dtype)
    agree += int(np.sum(np.abs(pred - ms1) <= tol))
    total += g2.size
  return c if total and agree >= 0.95 * total else None


def probe(rec: record_lib.Record) -> Findings:
  """Fits the record's steps to the algebraic hypotheses above.

  Args:
    rec: the record.

  Returns:
    The :class:`Findings`.
  """
  found = Findings()
  if rec.num_steps == 0:
    found.notes.append("the record has no steps")
    return found
  config = rec.config
  rho = float(replay_lib.nominal(config["rho"]))
  mu = float(config.get("momentum") or 0.0)
  eps = float(config["epsilon"])
  variables = _probe_vars(rec)
  if not variables:
    found.notes.append("no dense real-valued variable to probe")
    return found
  steps = range(min(rec.num_steps, _PROBE_STEPS))
  used = _gradients_used(rec, len(steps))
  has_mom = "mom" in rec.slots
  centered = "mg" in rec.slots

  # Initial mean square, from step 1 of a fresh record.
  if rec.fresh:
    votes = {0.0: 0, 1.0: 0}
    total = 0
    for i in variables:
      dtype = rec.params[i].dtype
      g = used[0][i]
      ms1 = _f64(rec.slots["ms"][i][0])
      c = 1.0 - rho
      for v in votes:
        pred = rho * v + c * g * g
        tol = 16 * _eps(dtype) * np.abs(pred) + 2 * _ulp(ms1, dtype)
        votes[v] += int(np.sum(np.abs(pred - ms1) <= tol))
      total += g.size
    if total:
      best = 0.0 if votes[0.0] >= votes[1.0] else 1.0
      if votes[best] >= 0.95 * total and votes[1 - best] < 0.5 * total:
        found.initial_ms = best
    if total and found.initial_ms is None:
      # Neither start fits with the config's rho: measure the decay itself,
      # which names a rho other than the config's as the cause.
      fitted = {
        v: _fit_ms_decay(rec, variables, used[0], v) for v in (0.0, 1.0)
      }
      fitted = {v: c for v, c in fitted.items() if c is not None}
      if len(fitted) == 1:
        ((start, measured),) = fitted.items()
        found.ms_decay = (start, measured, 1.0 - rho)
  else:
    found.notes.append(
      "the record starts from a trained optimizer; its "
      "initial slots are taken from the record"
    )

  expected = expected_learning_rates(rec)

  # 1 - rho, from step 1 when the initial mean square is 0.
  if rec.fresh and found.initial_ms == 0.0:
    values = []
    c_dtype = c_double = 0.0
    for i in variables:
      dtype = np.dtype(rec.params[i].dtype)
      g = used[0][i]
      ms1 = _f64(rec.slots["ms"][i][0])
      ok = (np.abs(g) > np.sqrt(float(finfo(dtype).tiny)) * 1e3) & (ms1 > 0)
      values.extend((ms1[ok] / (g[ok] * g[ok])).tolist())
      one = dtype.type(1)
      c_dtype = float(one - dtype.type(np.float32(rho)))
      c_double = float(dtype.type(1.0 - rho))
    if values and c_dtype != c_double:
      estimate = float(np.median(values))
      found.one_minus_rho_values = (c_dtype, c_double)
      gap = abs(c_dtype - c_double)
      if abs(estimate - c_dtype) < 0.5 * gap:
        found.one_minus_rho = "dtype"
      elif abs(estimate - c_double) < 0.5 * gap:
        found.one_minus_rho = "double"

  # Where the learning rate is (with a momentum slot), then epsilon
  # placement and the learning rate of each step.
  def increments(i, k):
    """The recorded increment of step k and the variable's change.

    Returns the increment, its rounding noise, the variable's change, the
    momentum slot (or None) and the variable's rounding noise.
    """
    dtype = np.dtype(rec.params[i].dtype)
    var_before = _f64(rec.params[i][k])
    var_after = _f64(rec.params[i][k + 1])
    delta = var_before - var_after
    var_noise = 2 * _ulp(var_before, dtype) + 2 * _ulp(var_after, dtype)
    if not has_mom:
      return delta, var_noise, delta, None, var_noise
    mom = _f64(rec.slots["mom"][i][k])
    if k > 0:
      mom_before = _f64(rec.slots["mom"][i][k - 1])
    elif rec.fresh or not rec.initial_slots:
      mom_before = np.zeros_like(mom)
    else:
      mom_before = _f64(rec.initial_slots["mom"][i])
    noise = 2 * _ulp(mom, dtype) + 2 * _ulp(mu * mom_before, dtype)
    return mom - mu * mom_before, noise, delta, mom, var_noise

  lr_inside = [0, 0]
  if has_mom and expected is not None:
    for i in variables:
      dtype = np.dtype(rec.params[i].dtype)
      for k in steps:
        lr_k = float(expected[k])
        if abs(lr_k - 1.0) <= 1e-2:
          continue
        _, _, delta, mom, var_noise = increments(i, k)
        assert mom is not None  # has_mom
        # The variable moves by the momentum slot (lr inside it) or by lr
        # times the slot (lr outside, PyTorch's buffer).
        ok = np.abs(delta) > 32 * var_noise
        tol = var_noise + 16 * _eps(dtype) * np.abs(delta)
        lr_inside[0] += int(np.sum((np.abs(delta - mom) <= tol)[ok]))
        lr_inside[1] += int(np.sum((np.abs(delta - lr_k * mom) <= tol)[ok]))
  if sum(lr_inside):
    if lr_inside[0] >= 0.9 * sum(lr_inside):
      found.lr_in_momentum = True
    elif lr_inside[1] >= 0.9 * sum(lr_inside):
      found.lr_in_momentum = False
  lr_outside = found.lr_in_momentum is False

  fits = {"inside": [0, 0], "outside": [0, 0]}
  estimates = {k: [] for k in steps}
  for i in variables:
    dtype = np.dtype(rec.params[i].dtype)
    e = _eps(dtype)
    for k in steps:
      if expected is None:
        break
      g = used[k][i]
      ms = _f64(rec.slots["ms"][i][k])
      s = ms - _f64(rec.slots["mg"][i][k]) ** 2 if centered else ms
      inc, noise, _, _, _ = increments(i, k)
      lr_k = float(expected[k])
      if lr_outside:  # The slot accumulates g / den; compare lr times it.
        inc, noise = inc * lr_k, noise * lr_k
      with np.errstate(divide="ignore", invalid="ignore"):
        pred = {
          "outside": lr_k * g / (np.sqrt(np.maximum(s, 0)) + eps),
          "inside": lr_k * g / np.sqrt(np.maximum(s + eps, 0)),
        }
      usable = (
        (g != 0) & np.isfinite(pred["inside"]) & np.isfinite(pred["outside"])
      )
      tol = {h: 16 * e * np.abs(p) + noise for h, p in pred.items()}
      apart = usable & (
        np.abs(pred["inside"] - pred["outside"])
        > 4 * (tol["inside"] + tol["outside"])
      )
      for h in fits:
        fits[h][0] += int(np.sum(np.abs(inc - pred[h])[apart] <= tol[h][apart]))
        fits[h][1] += int(np.sum(apart))
      # The learning rate this step used, where the increment is well above
      # its rounding noise and epsilon does not matter.
      good = usable & (np.abs(inc) > 1e4 * noise) & ~apart
      if np.any(good):
        den = np.sqrt(np.maximum(s, 0))[good] + eps
        estimates[k].extend((inc[good] * den / g[good]).tolist())
  total = fits["inside"][1]
  if total:
    inside = fits["inside"][0] / total
    outside = fits["outside"][0] / total
    if inside >= 0.95 and outside < 0.5:
      found.epsilon = "inside"
    elif outside >= 0.95 and inside < 0.5:
      found.epsilon = "outside"
    elif inside < 0.5 and outside < 0.5:
      found.epsilon = "neither"
  if expected is not None:
    for k in steps:
      if len(estimates[k]) >= 1:
        est = float(np.median(estimates[k]))
        exp = float(expected[k])
        found.learning_rates.append((k + 1, est, exp))
        if exp and abs(est / exp - 1) > 1e-3:
          found.lr_departures.append((k + 1, est, exp))
  return found
