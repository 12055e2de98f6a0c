"""Runs the real tf_keras legacy RMSprop: the oracle of the differential tests."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
tf_keras = pytest.importorskip("tf_keras")


def _to_tf(g):
  """A numpy gradient, or ``(values, indices, dense_shape)`` as IndexedSlices."""
  if isinstance(g, tuple):
    values, indices, dense_shape = g
    return tf.IndexedSlices(tf.constant(values), tf.constant(indices),
                            tf.constant(dense_shape, tf.int64))
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


def run_keras3(var_values, grad_steps, *, jit_compile=False, eager=False,
               **config):
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
