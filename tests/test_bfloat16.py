"""bfloat16 arithmetic in float32 words (``numerics.EigenBFloat16``).

Each operation must give the bits of XLA's own bfloat16 operation: widen to
float32, operate, round to nearest even; what Eigen computes too (the TF
parity tests run both against TF). Checked on random bit patterns, every
class of value among them (zeros, subnormals, normals, infinities, NaN),
jitted, where XLA would otherwise be free to rewrite the float32 arithmetic.
Both sides run on the same float32 arithmetic, so they flush subnormals
alike where the platform does (XLA:CPU, like TF, does).
"""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from optax_tfrmsprop._src import numerics

BF16 = ml_dtypes.bfloat16
OPS = {
  "add": lambda a, b: a + b,
  "sub": lambda a, b: a - b,
  "mul": lambda a, b: a * b,
  "div": lambda a, b: a / b,
  "sqrt": lambda a, b: numerics.sqrt(a),
  "neg": lambda a, b: -a,
  "scalar_rsub": lambda a, b: 0.1 - a,  # a Python number rounds first
}


def _operands(seed: int, n: int = 1 << 16) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  a, b = (rng.integers(0, 1 << 16, n, dtype=np.uint16) for _ in range(2))
  return a.view(BF16), b.view(BF16)


def _xla(name, a, b):
  """XLA's bfloat16 operation, one per call: no rounding can be elided."""
  return jnp.sqrt(a) if name == "sqrt" else OPS[name](a, b)


@pytest.mark.parametrize("name", OPS)
def test_each_operation_is_correctly_rounded(name):
  a, b = _operands(list(OPS).index(name))

  @jax.jit
  def compute(a, b):
    wa, wb = numerics.EigenBFloat16.wrap(a), numerics.EigenBFloat16.wrap(b)
    return numerics.plain(OPS[name](wa, wb))

  ours = np.asarray(compute(jnp.asarray(a), jnp.asarray(b)))
  theirs = np.asarray(jax.jit(_xla, static_argnums=0)(name, a, b))
  assert ours.dtype == BF16
  nan = np.isnan(theirs.astype(np.float32))
  np.testing.assert_array_equal(np.isnan(ours.astype(np.float32)), nan)
  np.testing.assert_array_equal(
    ours.view(np.uint16)[~nan], theirs.view(np.uint16)[~nan]
  )


def test_rounding_is_not_lost_to_excess_precision():
  """A bfloat16 value computed in the step is rounded before it is widened.

  XLA may fold ``bfloat16(x)`` followed by ``float32(...)`` into ``x``; the
  widening works on the bits so that it cannot.
  """

  @jax.jit
  def third(x):
    rounded = (x / 3).astype(jnp.bfloat16)  # rounded to bfloat16 by XLA
    return numerics.EigenBFloat16.wrap(rounded).x

  expected = np.float32(BF16(np.float32(1) / 3))
  assert np.float32(third(jnp.float32(1))) == expected
