"""Eigen's summation order in a program that does not grow with the input.

Issue 17, item 4: ``numerics.eigen_sum`` (the norms of ``clipnorm`` and
``global_clipnorm`` with ``rounding="tf_cpu"``) used to spell Eigen's order
as index constants the size of the input (135 MB of HLO at 16M elements).
It now computes the tree in the program. These tests check it against real
TensorFlow at sizes that reach every branch of Eigen's reduction, and that
the lowered program has the same size for 1K and 1G elements.
"""

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optax_tfrmsprop._src import clipping
from optax_tfrmsprop._src import numerics


def _sizes(dtype) -> list:
  """Sizes around every boundary of Eigen's reduction for ``dtype``.

  A packet is 32 bytes (8 float32, 4 float64), a chunk four packets, a leaf
  at most 1024 packets; larger inputs split into a tree of leaves, whose
  sibling leaves can sit at different depths.
  """
  packet = numerics.EIGEN_PACKET_BYTES // np.dtype(dtype).itemsize
  chunk, leaf = 4 * packet, 1024 * packet
  return sorted(
    {
      1,
      packet - 1,  # tail only
      packet,  # one packet, no chunk
      packet + 1,
      3 * packet + packet - 1,  # three extra packets and a tail
      chunk,  # one chunk
      chunk + 1,
      2 * chunk + 2 * packet + 3,  # chunks, extra packets, tail
      leaf - 1,
      leaf,  # the largest leaf
      leaf + 1,  # two leaves, the right one a single element
      leaf + packet,
      2 * leaf,
      2 * leaf + packet,  # a split left child next to a leaf
      2 * leaf + packet + 5,
      3 * leaf + 7,
      16 * leaf - packet + 1,
      100_003,
    }
  )


def _squares(n, dtype, seed=0):
  rng = np.random.default_rng(seed)
  return ((3 * rng.standard_normal(n)) ** 2).astype(dtype)


def _sums(g):
  """``reduce_sum(g * g)`` and ``l2_loss(g)`` in Eigen's order, one program."""
  squares = numerics.rounded(g * g)
  return (
    numerics.eigen_sum(squares),
    numerics.eigen_sum(numerics.rounded(squares * 0.5)),
  )


def _assert_tf_sums(dtype, sizes):
  tf = pytest.importorskip("tensorflow")
  reduce_sum = tf.function(tf.reduce_sum)
  l2_loss = tf.function(tf.nn.l2_loss)
  sums = jax.jit(_sums)
  for n in sizes:
    x = _squares(n, dtype, seed=n)
    g = np.sqrt(x) * np.where(np.arange(n) % 3 == 0, -1, 1).astype(dtype)
    total, halved = sums(g)
    assert np.asarray(total) == reduce_sum(g * g).numpy(), n
    assert np.asarray(halved) == l2_loss(g).numpy(), n


def test_every_branch_matches_tf_float32():
  """Tail, packets, chunks, one leaf and uneven trees, against TF."""
  _assert_tf_sums(np.float32, _sizes(np.float32))


def test_every_branch_matches_tf_float64(x64):
  del x64
  _assert_tf_sums(np.float64, _sizes(np.float64))


# TF with one intra-op thread: Eigen's FullReducer then sums the whole input
# as one tree, whatever its size. With more threads, TF cuts inputs above
# about 260K float32 (130K float64) elements into one tree per thread
# (Eigen's cost model), which numerics.eigen_sum does not model.
_TF_ONE_THREAD = r"""
import sys
import numpy as np
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(1)
data = dict(np.load(sys.argv[1]))
out = {}
for name, x in data.items():
  out[name + "_sum"] = tf.reduce_sum(x * x).numpy()
  out[name + "_l2"] = tf.nn.l2_loss(x).numpy()
np.savez(sys.argv[2], **out)
"""


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_deep_trees_match_single_threaded_tf(dtype, x64, tmp_path):
  """Odd sizes up to 3M elements, against TF reducing on one thread."""
  del x64
  pytest.importorskip("tensorflow")
  rng = np.random.default_rng(17)
  sizes = [(1 << 21) + 13, 2_999_999, int(rng.integers(300_000, 1 << 20))]
  inputs = {f"n{n}": np.sqrt(_squares(n, dtype, seed=n)) for n in sizes}
  np.savez(tmp_path / "in.npz", **inputs)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  subprocess.run(
    [
      sys.executable,
      "-c",
      _TF_ONE_THREAD,
      str(tmp_path / "in.npz"),
      str(tmp_path / "out.npz"),
    ],
    check=True,
    env=env,
    timeout=600,
  )
  tf_out = dict(np.load(tmp_path / "out.npz"))
  sums = jax.jit(_sums)
  for name, x in inputs.items():
    total, halved = sums(x)
    assert np.asarray(total) == tf_out[name + "_sum"], name
    assert np.asarray(halved) == tf_out[name + "_l2"], name


# The lowered eigen_sum of any input size is well under this; the index
# constants it replaces took 8 MB at 1M elements.
_PROGRAM_BYTES = 64 << 10


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_program_size_does_not_grow_with_the_input(dtype, x64):
  """1K to 1G elements give one program, up to the numbers in it.

  The inputs are traced only; nothing is allocated.
  """
  del x64
  sizes = [1 << 10, (1 << 20) + 3, 1 << 24, (1 << 26) + 8, 1 << 30]
  texts = {
    n: jax.jit(numerics.eigen_sum)
    .lower(jax.ShapeDtypeStruct((n,), dtype))
    .as_text()
    for n in sizes
  }
  assert max(map(len, texts.values())) < _PROGRAM_BYTES
  # Past one leaf, shapes and loop bounds are the only numbers that change.
  programs = {re.sub(r"\d+", "#", texts[n]) for n in sizes[1:]}
  assert len(programs) == 1


@pytest.mark.parametrize("clip", ["clipnorm", "global_clipnorm"])
def test_clipping_program_is_small_at_64m(clip):
  g = jax.ShapeDtypeStruct((1 << 26,), jnp.float32)
  fn = jax.jit(
    lambda g: clipping.clip_gradients(
      [g],
      clipvalue=None,
      clipnorm=1.0 if clip == "clipnorm" else None,
      global_clipnorm=1.0 if clip == "global_clipnorm" else None,
      rounding="tf_cpu",
    )
  )
  assert len(fn.lower(g).as_text()) < 2 * _PROGRAM_BYTES
