"""Runs the real tf_keras legacy RMSprop: the oracle of the differential tests."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
tf_keras = pytest.importorskip("tf_keras")


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
  variables = [tf.Variable(v) for v in var_values]
  opt = tf_keras.optimizers.legacy.RMSprop(**config)

  @tf.function(jit_compile=jit_compile, reduce_retracing=True)
  def step(grads):
    opt.apply_gradients(zip(grads, variables))

  def to_tf(g):
    if isinstance(g, tuple):
      values, indices, dense_shape = g
      return tf.IndexedSlices(
          tf.constant(values), tf.constant(indices),
          tf.constant(dense_shape, tf.int64))
    return tf.constant(g)

  for grads in grad_steps:
    step([to_tf(g) for g in grads])
  slots = {
      name: [opt.get_slot(v, name).numpy() for v in variables]
      for name in opt.get_slot_names()
  }
  return [v.numpy() for v in variables], slots, int(opt.iterations.numpy())
