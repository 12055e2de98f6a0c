"""Runs the real TF/Keras RMSprops: the oracles of the differential tests.

TensorFlow is imported on first use, not with this module: a test that needs
it skips without it (``pytest.importorskip``), and the other tests of a file
that imports this module run without TensorFlow installed. ``tf`` and
``tf_keras`` here import on first attribute access too.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest


class _LazyModule:
  """A module imported on first attribute access; the test skips without it.

  So ``from tf_reference import tf`` at the top of a test file imports
  nothing: ``tf.constant(...)`` inside a test imports TensorFlow then, or
  skips that test (``pytest.importorskip``) where it is not installed.
  """

  def __init__(self, name):
    self._name = name

  def __getattr__(self, attr):
    if attr.startswith("_"):  # pytest's probes while it collects a module
      raise AttributeError(attr)
    return getattr(pytest.importorskip(self._name), attr)


tf = _LazyModule("tensorflow")
tf_keras = _LazyModule("tf_keras")


def _to_tf(g):
  """A numpy gradient, or ``(values, indices, dense_shape)``, as TF's."""
  if isinstance(g, tuple):
    values, indices, dense_shape = g
    return tf.IndexedSlices(
      tf.constant(values),
      tf.constant(indices),
      tf.constant(dense_shape, tf.int64),
    )
  return tf.constant(g)


def run_tf(var_values, grad_steps, *, jit_compile=False, **config):
  """Applies ``grad_steps`` with ``tf_keras.optimizers.legacy.RMSprop``.

  Args:
    var_values: initial variable values (numpy arrays).
    grad_steps: one list of gradients per step: numpy arrays, or
      ``(values, indices, dense_shape)`` tuples fed as ``tf.IndexedSlices``
      (TF's sparse paths).
    jit_compile: run the step with ``tf.function(jit_compile=True)`` (XLA).
    **config: constructor arguments of the optimizer.

  Returns:
    ``(vars, slots, iterations)``: final variable values, a dict from slot name
    (``rms``, ``mg``, ``momentum``) to the list of per-variable values, and the
    iteration count.
  """
  opt = tf_keras.optimizers.legacy.RMSprop(**config)
  values, slots = _apply_steps(opt, var_values, grad_steps, jit_compile)
  return values, slots, int(opt.iterations.numpy())


def _apply_steps(opt, var_values, grad_steps, jit_compile):
  """Runs ``opt.apply_gradients`` per step in ``tf.function``.

  Returns:
    ``(vars, slots)``: final variable values and a dict from slot name to the
    list of per-variable slot values.
  """
  variables = [tf.Variable(v) for v in var_values]

  @tf.function(jit_compile=jit_compile, reduce_retracing=True)
  def step(grads):
    opt.apply_gradients(zip(grads, variables))

  for grads in grad_steps:
    step([_to_tf(g) for g in grads])
  slots = {
    name: [opt.get_slot(v, name).numpy() for v in variables]
    for name in opt.get_slot_names()
  }
  return [v.numpy() for v in variables], slots


def run_tf1(var_values, grad_steps, *, jit_compile=False, **config):
  """Applies ``grad_steps`` with TF1's ``tf.compat.v1.train.RMSPropOptimizer``.

  Runs eagerly inside ``tf.function`` (the same kernels a ``tf.compat.v1``
  session runs; the graph-mode interchange tests use a real session).

  Args:
    var_values: initial variable values (numpy arrays).
    grad_steps: one list of gradients per step, as for :func:`run_tf`.
    jit_compile: run the step with ``tf.function(jit_compile=True)`` (XLA).
    **config: constructor arguments of the optimizer.

  Returns:
    ``(vars, slots)``: final variable values and a dict from slot name
    (``rms``, ``mg``, ``momentum``) to the list of per-variable values.
  """
  opt = tf.compat.v1.train.RMSPropOptimizer(**config)
  return _apply_steps(opt, var_values, grad_steps, jit_compile)


def run_keras3(
  var_values, grad_steps, *, jit_compile=False, eager=False, **config
):
  """Applies ``grad_steps`` with Keras 3's ``keras.optimizers.RMSprop`` (TF).

  Args:
    var_values: initial variable values (numpy arrays).
    grad_steps: one list of gradients per step, as for :func:`run_tf`.
    jit_compile: run the step with ``tf.function(jit_compile=True)`` (XLA).
    eager: run the step eagerly, op by op, as Keras 3 writes it. Inside a
      plain ``tf.function`` grappler rewrites its ``x / sqrt(d)`` into
      ``x * rsqrt(d)``, and TF's CPU rsqrt is a hardware estimate.
    **config: constructor arguments of the optimizer.

  Returns:
    ``(vars, optimizer)``: final variable values and the optimizer, whose
    ``variables`` hold Keras 3's state.
  """
  keras = keras3()
  variables = [
    keras.Variable(v, dtype=v.dtype, name=f"v{i}")
    for i, v in enumerate(var_values)
  ]
  opt = keras.optimizers.RMSprop(**config)
  opt.build(variables)

  def step(grads):
    opt.apply_gradients(zip(grads, variables))

  if not eager:
    step = tf.function(step, jit_compile=jit_compile, reduce_retracing=True)
  for grads in grad_steps:
    step([_to_tf(g) for g in grads])
  return [v.numpy() for v in variables], opt


def keras3():
  """Imports Keras 3 on the TensorFlow backend, or skips the test."""
  if os.environ.setdefault("KERAS_BACKEND", "tensorflow") != "tensorflow":
    pytest.skip("Keras 3 reference runs need KERAS_BACKEND=tensorflow.")
  keras = pytest.importorskip("keras")
  if int(keras.__version__.split(".")[0]) < 3:
    pytest.skip("Keras 3 is not installed.")
  return keras


# TF's float32 sparse momentum kernels (P7/P8) take Eigen's packet rsqrt: a
# hardware estimate plus a Newton step without FMA; jax.lax.rsqrt (the XLA
# path) is an estimate plus a step with FMA. A bound from the arithmetic, not
# from one machine: an estimate within e0 = 1.5 * 2**-12 (x86's documented
# bound for rsqrtps; ARM refines its estimate twice, which is tighter) is
# within 1.5 * e0**2 of 1/sqrt(x) after one Newton step, and evaluating the
# step adds at most 3 roundings of u = 2**-24; two such implementations
# differ by twice that, relative.
U32 = 2.0**-24
RSQRT_RELATIVE = 2 * (1.5 * (1.5 * 2.0**-12) ** 2 + 3 * U32)


def packet_rsqrt_drift(steps, learning_rate, rho, momentum):
  """How far XLA's P7/P8 variables can drift from TF's in float32.

  The momentum terms ``lr |G| rsqrt(ms + eps)`` are at most
  ``M = lr / sqrt(1 - rho)`` (``ms >= (1 - rho) G^2``); each step moves a
  term by ``(RSQRT_RELATIVE + 4 u) M`` (the rsqrt and two roundings on each
  side) and ``mom`` by a rounding ``2 u |mom| <= 2 u M / (1 - mu)``; the
  difference decays by ``mu`` a step, so ``mom`` stays within
  ``((RSQRT_RELATIVE + 4 u) + 2 u / (1 - mu)) M / (1 - mu)`` and the
  variable, which sums the moms, within ``steps`` times that (plus a rounding
  of each step's addition, ``2 u |var|`` a step, to add as a relative
  tolerance).

  Args:
    steps: the number of steps.
    learning_rate: the learning rate.
    rho: the discounting factor.
    momentum: the momentum coefficient, < 1.

  Returns:
    The absolute bound on the variables' difference.
  """
  m = learning_rate / np.sqrt(1 - np.float32(rho))
  per_mom = (
    ((RSQRT_RELATIVE + 4 * U32) + 2 * U32 / (1 - momentum)) * m / (1 - momentum)
  )
  return steps * per_mom
