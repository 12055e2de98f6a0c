"""Main job: train a small MLP with TF-exact RMSprop, and with Keras alongside.

Run ``python -m optax_tfrmsprop --help`` for the options. The model is a
two-layer tanh MLP classifying a synthetic two-spirals data set, trained with
``optax_tfrmsprop.rmsprop`` in a jitted step. When TensorFlow and tf_keras are
installed, the same model, initial weights and batches are trained with
``tf_keras.optimizers.legacy.RMSprop`` in ``tf.function``, and the largest
parameter difference is printed: once with each framework computing its own
gradients (the end-to-end port), once with TF's optimizer fed JAX's gradients
(the optimizer alone, which is bit-identical).
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_tfrmsprop


def two_spirals(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Points on two interleaved noisy spirals, labelled 0 and 1."""
  rng = np.random.default_rng(seed)
  angle = np.sqrt(rng.uniform(0.0, 1.0, n)) * 3 * np.pi
  label = rng.integers(0, 2, n)
  radius = angle / (3 * np.pi)
  sign = 1 - 2 * label
  x = np.stack([sign * radius * np.cos(angle), sign * radius * np.sin(angle)],
               axis=1)
  x += rng.normal(0.0, 0.02, x.shape)
  return x.astype(np.float32), label.astype(np.int32)


def init_params(hidden: int, seed: int) -> list[np.ndarray]:
  """Glorot-uniform weights and zero biases for a 2-hidden-2 MLP."""
  rng = np.random.default_rng(seed)

  def glorot(fan_in, fan_out):
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, (fan_in, fan_out)).astype(np.float32)

  return [glorot(2, hidden), np.zeros(hidden, np.float32),
          glorot(hidden, hidden), np.zeros(hidden, np.float32),
          glorot(hidden, 2), np.zeros(2, np.float32)]


def loss_fn(params, x, y):
  w1, b1, w2, b2, w3, b3 = params
  h = jnp.tanh(x @ w1 + b1)
  h = jnp.tanh(h @ w2 + b2)
  logits = h @ w3 + b3
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def accuracy(params, x, y):
  w1, b1, w2, b2, w3, b3 = params
  h = jnp.tanh(jnp.tanh(x @ w1 + b1) @ w2 + b2)
  return float(jnp.mean(jnp.argmax(h @ w3 + b3, axis=-1) == y))


def batches(x, y, batch_size, steps, seed):
  rng = np.random.default_rng(seed)
  for _ in range(steps):
    idx = rng.integers(0, len(x), batch_size)
    yield x[idx], y[idx]


def train_jax(params, data, config, log_every):
  opt = optax_tfrmsprop.rmsprop(**config)

  @jax.jit
  def step(params, state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss, grads

  params = [jnp.asarray(p) for p in params]
  state = opt.init(params)
  all_grads = []
  for i, (x, y) in enumerate(data):
    params, state, loss, grads = step(params, state, x, y)
    all_grads.append([np.asarray(g) for g in grads])
    if log_every and (i % log_every == 0):
      print(f"  step {i:5d}  loss {float(loss):.4f}")
  return [np.asarray(p) for p in params], all_grads


def train_keras(params, data, config, jax_grads=None):
  """Trains the same MLP with tf_keras' legacy RMSprop in tf.function.

  With ``jax_grads``, TF's optimizer applies those gradients instead of its
  own, which isolates the optimizer from the two frameworks' matmul rounding.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tf_keras  # pylint: disable=g-import-not-at-top

  variables = [tf.Variable(p) for p in params]
  opt = tf_keras.optimizers.legacy.RMSprop(**config)

  @tf.function
  def step(x, y):
    with tf.GradientTape() as tape:
      w1, b1, w2, b2, w3, b3 = variables
      h = tf.tanh(x @ w1 + b1)
      h = tf.tanh(h @ w2 + b2)
      logits = h @ w3 + b3
      loss = tf.reduce_mean(
          tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
    opt.apply_gradients(zip(tape.gradient(loss, variables), variables))

  @tf.function
  def apply(grads):
    opt.apply_gradients(zip(grads, variables))

  if jax_grads is None:
    for x, y in data:
      step(tf.constant(x), tf.constant(y))
  else:
    for grads in jax_grads:
      apply([tf.constant(g) for g in grads])
  return [v.numpy() for v in variables]


def main(argv=None):
  parser = argparse.ArgumentParser(
      prog="python -m optax_tfrmsprop", description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=1000)
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--hidden", type=int, default=32)
  parser.add_argument("--learning-rate", type=float, default=0.01)
  parser.add_argument("--momentum", type=float, default=0.9)
  parser.add_argument("--centered", action="store_true")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--no-tf", action="store_true",
                      help="skip the TensorFlow comparison")
  args = parser.parse_args(argv)

  x, y = two_spirals(4096, args.seed)
  params = init_params(args.hidden, args.seed)
  config = dict(learning_rate=args.learning_rate, momentum=args.momentum,
                centered=args.centered)
  data = list(batches(x, y, args.batch_size, args.steps, args.seed))

  print(f"optax_tfrmsprop {optax_tfrmsprop.__version__}: RMSprop {config}, "
        f"{args.steps} steps on two spirals (jax {jax.__version__}, "
        f"{jax.default_backend()})")
  start = time.perf_counter()
  jax_params, jax_grads = train_jax(params, data, config,
                                    log_every=max(args.steps // 10, 1))
  print(f"JAX: {time.perf_counter() - start:.1f} s, train accuracy "
        f"{accuracy(jax_params, x, y):.3f}, loss "
        f"{float(loss_fn(jax_params, x, y)):.4f}")

  if args.no_tf:
    return
  try:
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
    import tf_keras  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    print("TensorFlow/tf_keras not installed: skipping the Keras comparison "
          "(pip install 'optax-tfrmsprop[tf]').")
    return
  start = time.perf_counter()
  keras_params = train_keras(params, data, config)
  print(f"Keras (tf_keras legacy RMSprop): {time.perf_counter() - start:.1f} s,"
        f" train accuracy {accuracy(keras_params, x, y):.3f}")
  end_to_end = max(float(np.max(np.abs(a - b)))
                   for a, b in zip(jax_params, keras_params))
  print(f"largest parameter difference, each framework's own gradients: "
        f"{end_to_end:.3g}")
  same_grads = train_keras(params, data, config, jax_grads=jax_grads)
  ulps = max(int(optax_tfrmsprop.ulp_distance(a, b).max(initial=0))
             for a, b in zip(jax_params, same_grads))
  diff = max(float(np.max(np.abs(a - b)))
             for a, b in zip(jax_params, same_grads))
  print(f"largest parameter difference, identical gradients (the optimizer "
        f"alone): {diff:.3g} ({ulps} ULP)")


if __name__ == "__main__":
  main()
