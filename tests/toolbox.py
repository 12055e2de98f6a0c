"""The tests' shared vocabulary: TF's paths, problems, ULPs, backends, slots.

One place for what every test file needs to say the same thing the same way:

* :data:`PATHS`: TF's eight update paths P1-P8 as ``docs/equations.md`` names
  them, with the options that select each;
* :func:`problem`: initial variables and per-step gradients (mixed scales,
  zeros, optionally special values; dense leaves and :class:`Table` leaves
  whose gradients are ``IndexedSlices`` with duplicate rows);
* :func:`run`: jitted steps of an optimizer (or the fused ``rmsprop_apply``);
* :func:`max_ulp` / :func:`slot_ulps` (the one ULP measure, per tree and per
  TF slot) and :func:`assert_ulp`, :func:`assert_same_as_tf`,
  :func:`assert_bitwise` (the assertions on it);
* :data:`backend_params`, :data:`needs_kernel` (and the ``both_backends``
  fixture of ``conftest.py``): the XLA path and the CPU kernel;
* :func:`tf_slot_names`: our state field -> TF's slot name, read from
  ``base.SEMANTICS``.

Nothing here imports TensorFlow; ``tf_reference.py`` runs it, lazily.
"""

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import optax_tfrmsprop as ot
from optax_tfrmsprop._src import base
from optax_tfrmsprop._src import cpu_kernel

# The paths.


class Path(NamedTuple):
  """One of TF's update paths (``docs/equations.md``, "Choosing the path").

  Attributes:
    sparse: the gradient is an ``IndexedSlices`` (P5-P8).
    momentum: TF's momentum kernels run (``momentum > 0``).
    centered: the ``centered`` option.
    tf: what TF runs for ``tf_keras.optimizers.legacy.RMSprop``.
  """

  sparse: bool
  momentum: bool
  centered: bool
  tf: str

  @property
  def options(self) -> dict[str, Any]:
    """The optimizer options that take this path (momentum 0.9 when on)."""
    return dict(momentum=0.9 if self.momentum else 0.0, centered=self.centered)


PATHS: dict[str, Path] = {
  "P1": Path(False, False, False, "graph ops"),
  "P2": Path(False, False, True, "graph ops"),
  "P3": Path(False, True, False, "ResourceApplyRMSProp"),
  "P4": Path(False, True, True, "ResourceApplyCenteredRMSProp"),
  "P5": Path(True, False, False, "graph ops + scatter_add"),
  "P6": Path(True, False, True, "graph ops + scatter_add"),
  "P7": Path(True, True, False, "ResourceSparseApplyRMSProp"),
  "P8": Path(True, True, True, "ResourceSparseApplyCenteredRMSProp"),
}
""":class:`Path` by name, as ``docs/equations.md`` numbers them."""

DENSE_PATHS = tuple(name for name, p in PATHS.items() if not p.sparse)
SPARSE_PATHS = tuple(name for name, p in PATHS.items() if p.sparse)


def options(path: str, **overrides) -> dict[str, Any]:
  """``PATHS[path].options`` updated with ``overrides``."""
  return {**PATHS[path].options, **overrides}


def sparse_twin(path: str) -> str:
  """The sparse path with the dense path's options (P1 -> P5, ...)."""
  return path if PATHS[path].sparse else f"P{int(path[1:]) + 4}"


# The TF slot map.


def tf_slot_names(flavor: str = "keras_legacy") -> dict[str, str]:
  """Our state field -> TF's slot name, in TF's creation order."""
  return dict(base.SEMANTICS[flavor].slots)


# Backends.

KERNEL_BUILT = cpu_kernel.is_built()
needs_kernel = pytest.mark.skipif(
  not KERNEL_BUILT, reason="the C++ kernel is not built"
)
BACKENDS = ("xla", "ffi")
backend_params = [
  pytest.param(b, marks=[needs_kernel] if b == "ffi" else [], id=b)
  for b in BACKENDS
]
"""``backend`` parameters: the XLA path, and the kernel where it is built."""


def select_backend(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
  """Makes ``backend="auto"`` mean ``backend`` (skips without the kernel)."""
  if backend == "ffi" and not KERNEL_BUILT:
    pytest.skip("the CPU kernel is not built")
  monkeypatch.setenv(cpu_kernel.BACKEND_ENV_VAR, backend)


# Problems.

SHAPES = ((), (0,), (37,), (8, 16))
"""Default dense shapes: a scalar, an empty leaf, an odd vector, a matrix."""
SCALES = (1e-3, 1.0, 30.0)
SPECIALS = ("zero", "subnormal", "1e30", "inf", "nan")


@dataclasses.dataclass(frozen=True)
class Table:
  """A ``(rows, width)`` variable whose gradients are ``IndexedSlices``.

  Each step's gradient is ``(values, indices, (rows, width))`` with ``n_ids``
  rows at indices drawn with replacement (so duplicates are likely).
  """

  rows: int
  width: int
  n_ids: int

  @property
  def shape(self) -> tuple[int, int]:
    return (self.rows, self.width)


def _special(kind: str, dtype) -> float:
  if kind == "subnormal":
    return float(ml_dtypes.finfo(dtype).smallest_subnormal) * 3
  return {"zero": 0.0, "1e30": 1e30, "inf": np.inf, "nan": np.nan}[kind]


def problem(
  seed: int,
  dtype,
  steps: int,
  shapes=SHAPES,
  *,
  specials: tuple[str, ...] = ("zero",),
  special_rate: float = 0.05,
):
  """Initial variables and ``steps`` steps of gradients, from ``seed``.

  Variables are standard normal. A gradient element is standard normal times
  a scale drawn from :data:`SCALES` per element; with probability
  ``special_rate`` it is replaced by one of ``specials`` (with a random
  sign), and when ``"zero"`` is among them a whole gradient is zero with
  probability 0.1.

  Args:
    seed: the random seed.
    dtype: the numpy dtype of every array.
    steps: the number of gradient steps.
    shapes: one entry per variable: a shape (dense gradients) or a
      :class:`Table` (``IndexedSlices`` gradients, as tuples).
    specials: the special values mixed in (names from :data:`SPECIALS`).
    special_rate: the probability of a special value per element.

  Returns:
    ``(variables, grad_steps)``: a list of numpy arrays, and one list of
    gradients per step (dense arrays, or ``(values, indices, dense_shape)``
    tuples for tables), as ``tf_reference`` and :func:`run` take them.
  """
  rng = np.random.default_rng(seed)
  variables = [
    rng.standard_normal(getattr(s, "shape", s)).astype(dtype) for s in shapes
  ]

  def gradient(shape):
    g = rng.standard_normal(shape) * rng.choice(SCALES, size=shape)
    if specials:
      pick = rng.random(shape) < special_rate
      kinds = rng.choice(specials, size=shape)
      signs = rng.choice([-1.0, 1.0], size=shape)
      values = np.vectorize(lambda k: _special(k, dtype), otypes=[float])(kinds)
      g = np.where(pick, values * signs, g)
      if "zero" in specials and rng.random() < 0.1:
        g = np.zeros(shape)
    return np.asarray(g).astype(dtype)

  def leaf_gradient(s):
    if isinstance(s, Table):
      values = gradient((s.n_ids, s.width))
      indices = rng.integers(0, s.rows, s.n_ids).astype(np.int32)
      return values, indices, s.shape
    return gradient(s)

  return variables, [[leaf_gradient(s) for s in shapes] for _ in range(steps)]


# Running.


def to_jax(g):
  """A numpy gradient, or a ``(values, indices, dense_shape)`` tuple, in JAX."""
  if isinstance(g, tuple):
    return ot.IndexedSlices(jnp.asarray(g[0]), jnp.asarray(g[1]), g[2])
  return jnp.asarray(g)


def run(opt, variables, grad_steps, *, state=None, fused=None):
  """Jitted steps of ``opt`` from ``variables``; returns ``(params, state)``.

  Args:
    opt: the gradient transformation (its ``init`` makes the state).
    variables: the initial variables (a list of arrays).
    grad_steps: one list of gradients per step, as :func:`problem` returns.
    state: the initial state, instead of ``opt.init(variables)``.
    fused: the hyperparameters of ``rmsprop_apply`` to step with instead of
      ``opt.update`` + ``apply_updates``, params and state donated.

  Returns:
    The final params (a list of arrays) and state.
  """
  params = [jnp.asarray(v) for v in variables]
  state = opt.init(params) if state is None else state
  if fused is not None:
    step = jax.jit(
      lambda p, s, g: ot.rmsprop_apply(p, g, s, **fused), donate_argnums=(0, 1)
    )
  else:

    @jax.jit
    def step(p, s, g):
      updates, s = opt.update(g, s, p)
      return ot.apply_updates(p, updates), s

  for grads in grad_steps:
    params, state = step(params, state, [to_jax(g) for g in grads])
  return params, state


# ULPs.


def max_ulp(actual, expected) -> int:
  """The largest ULP distance between two trees' leaves; NaN equals NaN.

  Leaves are compared pairwise in ``jax.tree.leaves`` order; the counts,
  shapes and dtypes must agree. Complex leaves count the real and imaginary
  parts' distances.
  """
  actual, expected = jax.tree.leaves(actual), jax.tree.leaves(expected)
  assert len(actual) == len(expected), (len(actual), len(expected))
  worst = 0
  for ours, theirs in zip(actual, expected):
    a, e = np.asarray(ours), np.asarray(theirs)
    assert a.shape == e.shape, (a.shape, e.shape)
    if np.iscomplexobj(a) and a.dtype == e.dtype:  # real and imaginary parts
      a, e = (np.atleast_1d(x).view(a.real.dtype) for x in (a, e))
    worst = max(worst, int(ot.ulp_distance(a, e).max(initial=0)))
  return worst


def slot_ulps(params, state, tf_vars, tf_slots, flavor="keras_legacy"):
  """Largest ULP distance of the variables and of each slot from TF's.

  Slots are matched through the flavor's TF slot names
  (:func:`tf_slot_names`); a slot present on one side only is an error.

  Args:
    params: our variables, a list of arrays.
    state: our state.
    tf_vars: TF's variables, in the same order.
    tf_slots: TF's slots, ``{TF slot name: [per-variable values]}``.
    flavor: the flavor whose slot names TF used.

  Returns:
    ``{"var": ulps, <field>: ulps, ...}`` for every slot present.
  """
  ulps = {"var": max_ulp(params, tf_vars)}
  for field, tf_name in tf_slot_names(flavor).items():
    ours = getattr(state, field)
    assert (ours is None) == (tf_name not in tf_slots), (field, list(tf_slots))
    if ours is not None:
      ulps[field] = max_ulp(ours, tf_slots[tf_name])
  return ulps


def assert_ulp(actual, expected, ulps: int = 0, context: Any = None) -> None:
  """Asserts every leaf is within ``ulps`` ULP (0: equal, NaN equal NaN)."""
  distance = max_ulp(actual, expected)
  assert distance <= ulps, (distance, context)


def assert_same_as_tf(
  params, state, tf_vars, tf_slots, flavor="keras_legacy", context=None
):
  """Asserts the variables and every slot are 0 ULP from TF's, slot for slot.

  Args, as :func:`slot_ulps`; ``context`` is shown on failure.

  Returns:
    The :func:`slot_ulps` dict (all zero).
  """
  ulps = slot_ulps(params, state, tf_vars, tf_slots, flavor)
  assert ulps == dict.fromkeys(ulps, 0), (ulps, context)
  return ulps


def assert_bitwise(actual, expected) -> None:
  """Asserts two trees are equal bit for bit: structure, dtypes, bytes."""
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for ours, theirs in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    a, e = np.asarray(ours), np.asarray(theirs)
    assert (a.shape, a.dtype) == (e.shape, e.dtype), (a, e)
    np.testing.assert_array_equal(
      np.atleast_1d(a).view(np.uint8), np.atleast_1d(e).view(np.uint8)
    )
