"""One MLP in tf_keras, flax linen and flax nnx, for the interchange tests.

Two hidden layers of the same shapes, so matching them needs the layer order
their names give (``Dense_0`` before ``Dense_1``, ``linear1`` before
``linear2``), not only their shapes.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_tfrmsprop
from optax_tfrmsprop import interop
from tf_reference import tf
from tf_reference import tf_keras
import toolbox

nn = pytest.importorskip("flax.linen")
nnx = pytest.importorskip("flax.nnx")

WIDTH, OUT = 6, 2
CONFIG = dict(learning_rate=0.01, momentum=0.5, centered=True, decay=0.01)


def data(seed=0, n=16):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n, WIDTH)).astype(np.float32)
  return x, np.sin(x[:, :OUT]).astype(np.float32)


def keras_model(seed=0, compile_config=CONFIG):
  """A compiled tf_keras MLP (names uniquified by tf_keras, as in a session)."""
  tf_keras.utils.set_random_seed(seed)
  model = tf_keras.Sequential(
    [
      tf_keras.Input((WIDTH,)),
      tf_keras.layers.Dense(WIDTH, activation="tanh"),
      tf_keras.layers.Dense(WIDTH, activation="tanh"),
      tf_keras.layers.Dense(OUT),
    ]
  )
  if compile_config is not None:
    model.compile(tf_keras.optimizers.legacy.RMSprop(**compile_config), "mse")
  return model


class LinenMLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = jnp.tanh(nn.Dense(WIDTH)(x))
    x = jnp.tanh(nn.Dense(WIDTH)(x))
    return nn.Dense(OUT)(x)


class NnxMLP(nnx.Module):
  def __init__(self, rngs):
    self.linear1 = nnx.Linear(WIDTH, WIDTH, rngs=rngs)
    self.linear2 = nnx.Linear(WIDTH, WIDTH, rngs=rngs)
    self.out = nnx.Linear(WIDTH, OUT, rngs=rngs)

  def __call__(self, x):
    x = jnp.tanh(self.linear1(x))
    x = jnp.tanh(self.linear2(x))
    return self.out(x)


class Flax:
  """A flax model as (params, loss gradient), linen or nnx."""

  def __init__(self, kind):
    self.kind = kind
    x = jnp.zeros((1, WIDTH))
    if kind == "linen":
      module = LinenMLP()
      self.params = module.init(jax.random.key(1), x)["params"]
      self._apply = lambda p, x: module.apply({"params": p}, x)
    else:
      graphdef, self.params = nnx.split(NnxMLP(nnx.Rngs(1)))
      self._apply = lambda p, x: nnx.merge(graphdef, p)(x)

  def grads(self, params, x, y):
    return _grads(self._apply, params, x, y)


def _mse(apply, params, x, y):
  return jnp.mean((apply(params, x) - y) ** 2)


_grads = jax.jit(jax.grad(_mse, argnums=1), static_argnums=0)


def continue_both(model, optimizer, flax, pairs, params, state, steps, seed):
  """``steps`` steps in JAX (flax's gradients) and in TF fed the same ones.

  Returns:
    ``(params, state, grads)``: the JAX run's end and the gradients, in
    Keras order, that both runs took.
  """
  update = jax.jit(optax_tfrmsprop.rmsprop(**CONFIG).update)

  @tf.function
  def tf_step(grads):
    optimizer.apply_gradients(zip(grads, model.trainable_variables))

  taken = []
  for step in range(steps):
    x, y = data(seed + step, n=8)
    grads = flax.grads(params, x, y)
    keras_grads = [np.asarray(g) for g in pairs.to_keras(grads)]
    taken.append(keras_grads)
    tf_step([tf.constant(g) for g in keras_grads])
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params, state, taken


def assert_same_as_keras(pairs, params, model):
  """Every param equals its Keras weight bit for bit."""
  for name, ours, theirs in zip(
    pairs.keras_names, pairs.to_keras(params), model.trainable_variables
  ):
    assert name == theirs.name[:-2]
    toolbox.assert_ulp(ours, theirs.numpy(), context=name)


def correspondence(model, flax):
  return interop.correspondence(model, flax.params)


TF1_SHAPES = {"dense/kernel": (6, 10), "dense/bias": (10,)}
"""The TF1 graph of the Saver tests: one dense layer."""


def tf1_grads(steps, seed):
  """``steps`` gradients of :data:`TF1_SHAPES`, as dicts by variable name."""
  _, grad_steps = toolbox.problem(seed, np.float32, steps, TF1_SHAPES.values())
  return [dict(zip(TF1_SHAPES, grads)) for grads in grad_steps]


def tf1_session(config, init, steps, *, restore=None, save=None):
  """Runs TF1's RMSPropOptimizer in a graph; returns the variables' values."""
  graph = tf.Graph()
  with graph.as_default():
    variables = {
      n: tf.compat.v1.get_variable(n, initializer=v) for n, v in init.items()
    }
    feeds = {
      n: tf.compat.v1.placeholder(tf.float32, s) for n, s in TF1_SHAPES.items()
    }
    global_step = tf.compat.v1.train.get_or_create_global_step()
    train = tf.compat.v1.train.RMSPropOptimizer(**config).apply_gradients(
      [(feeds[n], variables[n]) for n in TF1_SHAPES], global_step=global_step
    )
    saver = tf.compat.v1.train.Saver()
    with tf.compat.v1.Session(graph=graph) as sess:
      if restore is None:
        sess.run(tf.compat.v1.global_variables_initializer())
      else:
        saver.restore(sess, restore)
      start = sess.run(global_step)
      for grads in steps:
        sess.run(train, {feeds[n]: g for n, g in grads.items()})
      if save is not None:
        saver.save(sess, save, global_step=global_step)
      return sess.run(variables), start, list(variables.values())
