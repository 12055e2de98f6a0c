"""Differential fuzz test of ``rmsprop`` against TF, on both backends.

For each clip mode (none, clipvalue, clipnorm, global_clipnorm,
clipvalue+clipnorm, clipvalue+global_clipnorm), each example draws the
hyperparameters (``decay`` and ``epsilon=0`` among them), float32 or float64,
and a short problem: a dense scalar, a dense array of odd size and an
``IndexedSlices`` gradient of an embedding table of odd width (duplicate
indices, sometimes none), with zeros, subnormals, 1e30, infinities and NaN
among the gradients. It runs for the four momentum/centered choices, so on
all eight paths (P1+P5, P2+P6, P3+P7, P4+P8), in
``tf_keras.optimizers.legacy.RMSprop`` inside ``tf.function`` and through
``rmsprop`` (or the fused ``rmsprop_apply``), jitted; variables and every
slot must be 0 ULP apart, NaN equal to NaN.

TF's float32 sparse momentum kernels (P7/P8) take Eigen's packet rsqrt on
the first ``8 * (W // 8)`` elements of each row of width ``W``: a hardware
estimate and a Newton step, so their bits depend on the CPU. The CPU kernel
computes exactly that (on CPUs with the estimate it knows,
``cpu_kernel.handles_sparse``), so on the ``ffi`` backend every width is
drawn; where the float32 sparse kernel does not run (the ``xla`` backend),
float32 P7/P8 rows are drawn narrower than a packet, where TF computes
``1 / sqrt`` and 0 ULP is guaranteed. The packet lanes on the XLA path are
bounded in ``test_sparse.py``.
"""

import functools
import os

import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optax_tfrmsprop as ot
from optax_tfrmsprop._src import cpu_kernel
from optax_tfrmsprop._src import update_rules
import tf_reference
import toolbox

STEPS = 3
FUZZ_EXAMPLES_ENV_VAR = "OPTAX_TFRMSPROP_FUZZ_EXAMPLES"
CLIP_MODES = {
  "none": {},
  "clipvalue": {"clipvalue": 0.5},
  "clipnorm": {"clipnorm": 1.5},
  "global_clipnorm": {"global_clipnorm": 2.0},
  "clipvalue+clipnorm": {"clipvalue": 0.5, "clipnorm": 0.7},
  "clipvalue+global_clipnorm": {"clipvalue": 0.5, "global_clipnorm": 0.9},
}
# Each example runs the dense path and its sparse twin together.
PATHS = tuple(f"{p}+{toolbox.sparse_twin(p)}" for p in toolbox.DENSE_PATHS)
DTYPES = {"float32": np.float32, "float64": np.float64}


@functools.cache
def _problem(dtype_name, dense_shape, table_shape, n_ids, specials, seed):
  """Initial variables and ``STEPS`` steps of gradients, from ``seed``.

  A dense scalar, a dense array and an embedding table; an element becomes
  one of the ``specials`` with probability 0.1 (``toolbox.problem``).
  """
  table = toolbox.Table(*table_shape, n_ids)
  return toolbox.problem(
    seed,
    DTYPES[dtype_name],
    STEPS,
    [(), dense_shape, table],
    specials=specials,
    special_rate=0.1,
  )


@functools.cache
def _tf_results(key):
  """TF's final variables and slots for each path, from the problem ``key``."""
  dtype_name, dense_shape, table_shape, n_ids, specials, seed, config = key
  variables, steps = _problem(
    dtype_name, dense_shape, table_shape, n_ids, specials, seed
  )
  return [
    tf_reference.run_tf(variables, steps, **path_config)
    for path_config in _path_configs(dict(config))
  ]


def _path_configs(config):
  """The configuration of each of the four path pairs, in PATHS' order."""
  momentum = config.pop("momentum")
  configs = []
  for path in toolbox.DENSE_PATHS:
    path_config = dict(config, centered=toolbox.PATHS[path].centered)
    if toolbox.PATHS[path].momentum:
      path_config["momentum"] = momentum
    configs.append(path_config)
  return configs


def _run_jax(variables, steps, config, *, fused):
  """The four path pairs, stepped together in one jitted function."""
  optimizers, hypers = [], []
  for path_config in _path_configs(dict(config)):
    centered = path_config.pop("centered")
    optimizers.append(ot.rmsprop(centered=centered, **path_config))
    hypers.append(path_config)
  params = [[jnp.asarray(v) for v in variables] for _ in optimizers]
  states = [opt.init(p) for opt, p in zip(optimizers, params)]

  @jax.jit
  def step(params, states, grads):
    new = []
    for opt, hyper, p, s in zip(optimizers, hypers, params, states):
      if fused:
        new.append(ot.rmsprop_apply(p, grads, s, **hyper))
      else:
        updates, new_s = opt.update(grads, s, p)
        new.append((ot.apply_updates(p, updates), new_s))
    return tuple(map(list, zip(*new)))

  for raw in steps:
    params, states = step(params, states, [toolbox.to_jax(g) for g in raw])
  return params, states


# Special values an example puts among its gradients. The first set is what
# the first (simplest) example of each clip mode gets: finite values, so that
# no norm is NaN and every path's arithmetic is compared.
SPECIAL_SETS = (
  ("zero", "subnormal"),
  toolbox.SPECIALS,
  (),
  ("1e30",),
  ("inf",),
  ("nan",),
  ("zero", "1e30", "nan"),
  ("subnormal", "inf"),
)


@st.composite
def _examples(draw, clip_mode: str, packet_rows_f32: bool):
  """A configuration and the shape of its problem.

  Hypothesis tries the simplest example (every first choice) first, so the
  lists start with demanding values: ``epsilon=0``, a ``decay``, rows wider
  than a packet, duplicate indices. Successive clip modes start from the
  other dtype and the other API.
  """
  index = list(CLIP_MODES).index(clip_mode)
  dtypes = sorted(DTYPES)
  first = (index + 1) % 2  # float32 first for the global_clipnorm modes
  dtype_name = draw(st.sampled_from(dtypes[first:] + dtypes[:first]))
  config = dict(
    learning_rate=draw(st.sampled_from([0.01, 1e-3, 0.3])),
    rho=draw(st.sampled_from([0.9, 0.0, 0.5, 0.999])),
    momentum=draw(st.sampled_from([0.9, 0.1, 1.0])),
    epsilon=draw(st.sampled_from([0.0, 1e-7, 1e-3])),
    decay=draw(st.sampled_from([0.01, 0.0, 0.5])),
    **CLIP_MODES[clip_mode],
  )
  widths = [17, 13, 1, 3, 7, 8, 9, 16]
  if dtype_name == "float32" and not packet_rows_f32:
    widths = [w for w in widths if w < update_rules.PACKET][::-1]
  table_shape = (
    draw(st.sampled_from([7, 2, 12, 5])),
    draw(st.sampled_from(widths)),
  )
  dense_shape = draw(st.sampled_from([(37,), (1,), (7,), (3, 5), (2, 3, 5)]))
  n_ids = draw(st.sampled_from([9, 0, 1, 14, 5]))
  specials = draw(st.sampled_from(SPECIAL_SETS))
  seed = draw(st.integers(0, 2**16))
  fused = draw(st.sampled_from([bool(index // 2 % 2), not index // 2 % 2]))
  key = (
    dtype_name,
    dense_shape,
    table_shape,
    n_ids,
    specials,
    seed,
    tuple(sorted(config.items())),
  )
  return key, fused


def _check(key, fused):
  dtype_name, dense_shape, table_shape, n_ids, specials, seed, config = key
  variables, steps = _problem(
    dtype_name, dense_shape, table_shape, n_ids, specials, seed
  )
  with jax.enable_x64(dtype_name == "float64"):
    params, states = _run_jax(variables, steps, config, fused=fused)
  for path, (tf_vars, tf_slots, iterations), p, state in zip(
    PATHS, _tf_results(key), params, states
  ):
    assert int(state.count) == iterations == STEPS
    toolbox.assert_same_as_tf(
      p, state, tf_vars, tf_slots, context=(path, key, fused)
    )


def _fuzz(backend, clip_mode, max_examples):
  packet_rows_f32 = backend == "ffi" and cpu_kernel.handles_sparse(np.float32)

  # A fixed seed per clip mode: the same examples on every run and on both
  # backends. No shrinking: an example costs a TF run and an XLA
  # compilation per path, and the failing example is reported as drawn.
  @hypothesis.seed(list(CLIP_MODES).index(clip_mode))
  @hypothesis.settings(
    max_examples=max_examples,
    deadline=None,
    database=None,
    phases=(hypothesis.Phase.explicit, hypothesis.Phase.generate),
    suppress_health_check=list(hypothesis.HealthCheck),
  )
  @hypothesis.given(_examples(clip_mode, packet_rows_f32))
  def run(example):
    _check(*example)

  run()


@pytest.mark.parametrize("clip_mode", CLIP_MODES)
def test_fuzz_against_tf(both_backends, clip_mode):
  """The first example of each clip mode, on all eight paths: 0 ULP.

  On both backends. An example costs an XLA compilation and a TF run per
  path; the slow test below runs more.
  """
  _fuzz(both_backends, clip_mode, max_examples=1)


@pytest.mark.slow
@pytest.mark.parametrize("clip_mode", CLIP_MODES)
def test_fuzz_against_tf_long(both_backends, clip_mode):
  """More examples per clip mode: 3 by default, N with the variable.

  The suite runs slow tests too; ``OPTAX_TFRMSPROP_FUZZ_EXAMPLES=N`` runs N
  per clip mode and backend, for a longer soak.
  """
  _fuzz(
    both_backends,
    clip_mode,
    max_examples=int(os.environ.get(FUZZ_EXAMPLES_ENV_VAR, "3")),
  )
