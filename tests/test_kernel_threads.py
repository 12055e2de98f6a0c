"""The kernel's loops on XLA's intra-op thread pool (issue 17, item 3).

The dense and sparse handlers split their loops into blocks that the calling
thread and XLA's own pool workers claim (``csrc/parallel.h``). The split only
decides which thread computes an element, so results must not depend on how
many threads there are, on how the blocks fall across leaves, or on other
kernel calls sharing the pool at the same time. Timings under load are in
``benchmarks/under_load.py``, never asserted here.
"""

import concurrent.futures
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optax_tfrmsprop as ot
from optax_tfrmsprop._src import cpu_kernel

pytestmark = pytest.mark.skipif(
  not cpu_kernel.is_built(), reason="the C++ kernel is not built"
)

# Leaves that put block boundaries (16384 float32, 8192 float64 elements)
# inside, at and next to leaf boundaries; 420K elements in all, above the
# 32768 below which a call stays on one thread.
SIZES = (1, 16383, 16385, 5, 70001, 16384, 300000, 3)
PATHS = {
  "P1": dict(momentum=0.0, centered=False),
  "P2": dict(momentum=0.0, centered=True),
  "P3": dict(momentum=0.9, centered=False),
  "P4": dict(momentum=0.9, centered=True),
}
# A sparse table wide enough (rows * width >= 32768) for the parallel rows.
TABLE = (3000, 64)

# Runs in a fresh interpreter whose CPU affinity is set before jax starts, so
# XLA's intra-op pool has as many threads as CPUs allowed; writes every
# result to the .npz file named by argv[2].
_WORKER = r"""
import os, sys
cpus = [int(c) for c in sys.argv[1].split(",")]
os.sched_setaffinity(0, cpus)
import jax
import numpy as np
sys.path.insert(0, sys.argv[3])
import test_kernel_threads as t
np.savez(sys.argv[2], **t.results())
"""


def _assert_bitwise(a, b, what):
  assert a.dtype == b.dtype and a.shape == b.shape, what
  np.testing.assert_array_equal(
    np.atleast_1d(a).view(np.uint8), np.atleast_1d(b).view(np.uint8), what
  )


def _dense_problem(dtype, seed=0):
  rng = np.random.default_rng(seed)
  params = [rng.standard_normal(s).astype(dtype) for s in SIZES]
  grads = [
    [rng.standard_normal(s).astype(dtype) for s in SIZES] for _ in range(3)
  ]
  return params, grads


def _dense_run(path, dtype, backend):
  """Three fused steps of ``path``; returns params and slots, flattened."""
  params, grads = _dense_problem(dtype)
  config = PATHS[path]
  state = ot.rmsprop_init(
    params, centered=config["centered"], use_momentum=config["momentum"] > 0
  )
  step = jax.jit(
    lambda p, s, g: ot.rmsprop_apply(
      p, g, s, learning_rate=0.01, momentum=config["momentum"], backend=backend
    )
  )
  params = jax.tree.map(jnp.asarray, params)
  for g in grads:
    params, state = step(params, state, g)
  return [np.asarray(x) for x in jax.tree.leaves((params, state))]


def _sparse_run(centered, backend):
  """Three sparse P7/P8 steps through the optax API; params and slots."""
  rng = np.random.default_rng(1)
  opt = ot.rmsprop(0.01, momentum=0.9, centered=centered, backend=backend)
  params = jnp.asarray(rng.standard_normal(TABLE).astype(np.float32))
  state = opt.init(params)
  step = jax.jit(lambda p, s, g: _sparse_step(opt, p, s, g))
  for _ in range(3):
    # Duplicated rows: the kernel sums them before the update.
    indices = rng.integers(0, TABLE[0], 2000)
    values = rng.standard_normal((2000, TABLE[1])).astype(np.float32)
    grad = ot.IndexedSlices(jnp.asarray(values), jnp.asarray(indices), TABLE)
    params, state = step(params, state, grad)
  return [np.asarray(x) for x in jax.tree.leaves((params, state))]


def _sparse_step(opt, params, state, grad):
  updates, state = opt.update(grad, state, params)
  return ot.apply_updates(params, updates), state


def results() -> dict:
  """Every result the tests compare, by name (for the worker)."""
  out = {}
  for path in PATHS:
    for dtype in (np.float32, np.float64):
      with jax.enable_x64(dtype == np.float64):
        for i, x in enumerate(_dense_run(path, dtype, "ffi")):
          assert x.dtype == dtype or x.ndim == 0
          out[f"dense_{path}_{np.dtype(dtype).name}_{i}"] = x
  if cpu_kernel.handles_sparse(np.float32):
    for centered in (False, True):
      for i, x in enumerate(_sparse_run(centered, "ffi")):
        out[f"sparse_{centered}_{i}"] = x
  return out


def _results_on(cpus, tmp_path) -> dict:
  out = tmp_path / f"cpus_{len(cpus)}.npz"
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
  subprocess.run(
    [
      sys.executable,
      "-c",
      _WORKER,
      ",".join(map(str, cpus)),
      str(out),
      str(pathlib.Path(__file__).parent),
    ],
    check=True,
    env=env,
    timeout=600,
  )
  with np.load(out) as data:
    return dict(data)


@pytest.mark.slow
@pytest.mark.skipif(
  len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs for the pool"
)
def test_results_do_not_depend_on_the_number_of_threads(tmp_path):
  """One CPU (no helper threads) and two give the same bits, dense and sparse.

  Also the same as the kernel in this process, whatever its pool.
  """
  cpus = sorted(os.sched_getaffinity(0))
  one = _results_on(cpus[:1], tmp_path)
  two = _results_on(cpus[:2], tmp_path)
  here = results()
  assert one.keys() == two.keys() == here.keys()
  for name in here:
    _assert_bitwise(one[name], two[name], name)
    _assert_bitwise(here[name], two[name], name)


@pytest.mark.parametrize("path", list(PATHS))
def test_blocks_across_leaf_boundaries_equal_the_xla_path(path):
  """The blocked loop covers every element of every leaf once, as XLA does."""
  kernel = _dense_run(path, np.float32, "ffi")
  xla = _dense_run(path, np.float32, "xla")
  for i, (a, b) in enumerate(zip(kernel, xla)):
    _assert_bitwise(a, b, f"{path} leaf {i}")


def test_concurrent_calls_share_the_pool():
  """Calls from several Python threads at once give what each gives alone.

  They share XLA's pool: no block may be lost, repeated or mixed up.
  """
  alone = {path: _dense_run(path, np.float32, "ffi") for path in PATHS}
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    together = dict(
      zip(
        PATHS,
        pool.map(lambda p: _dense_run(p, np.float32, "ffi"), list(PATHS)),
      )
    )
  for path in PATHS:
    for i, (a, b) in enumerate(zip(alone[path], together[path])):
      _assert_bitwise(a, b, f"{path} leaf {i}")


def test_the_library_brings_no_threading_runtime():
  """The loops run on XLA's pool: the library needs no OpenMP runtime."""
  library = pathlib.Path(cpu_kernel.__file__).parent.glob("_cpu_kernel*.so")
  for path in library:
    data = path.read_bytes()
    for symbol in (b"GOMP_parallel", b"omp_get_num_threads", b"libgomp"):
      assert symbol not in data, (path.name, symbol)
