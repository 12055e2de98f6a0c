"""Main job: train a small MLP with TF-exact RMSprop, and with Keras alongside.

Run ``python -m optax_tfrmsprop --help`` for the options. The model is a
two-layer tanh MLP classifying a synthetic two-spirals data set, trained with
``optax_tfrmsprop.rmsprop`` in a jitted step. When TensorFlow and tf_keras are
installed, the same model, initial weights and batches are trained with
``tf_keras.optimizers.legacy.RMSprop`` in ``tf.function`` twice:

1. fed the gradients JAX computed, step by step: the optimizer alone, which is
   bit-identical (0 ULP) on CPU;
2. computing its own gradients: the end-to-end port, where the two frameworks'
   gradients (their matmul and tanh rounding) drift apart and training
   amplifies the drift; the optimizer plays no part in that difference.

Both frameworks run on the CPU (TF's CPU kernels are what the package
reproduces; set ``JAX_PLATFORMS`` to override JAX's choice), and timings
exclude compilation: each framework runs one warm-up step that is not timed
and leaves the training unchanged.
"""

import argparse
import contextlib
import functools
import os
import sys
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
  x = np.stack(
    [sign * radius * np.cos(angle), sign * radius * np.sin(angle)], axis=1
  )
  x += rng.normal(0.0, 0.02, x.shape)
  return x.astype(np.float32), label.astype(np.int32)


def init_params(hidden: int, seed: int) -> list[np.ndarray]:
  """Glorot-uniform weights and zero biases for a 2-hidden-hidden-2 MLP."""
  rng = np.random.default_rng(seed)

  def glorot(fan_in, fan_out):
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, (fan_in, fan_out)).astype(np.float32)

  return [
    glorot(2, hidden),
    np.zeros(hidden, np.float32),
    glorot(hidden, hidden),
    np.zeros(hidden, np.float32),
    glorot(hidden, 2),
    np.zeros(2, np.float32),
  ]


def logits_fn(params, x):
  """The MLP's logits."""
  w1, b1, w2, b2, w3, b3 = params
  h = jnp.tanh(x @ w1 + b1)
  h = jnp.tanh(h @ w2 + b2)
  return h @ w3 + b3


def loss_fn(params, x, y):
  """Mean softmax cross-entropy of the MLP on a batch."""
  logits = logits_fn(params, x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def accuracy(params, x, y) -> float:
  """Fraction of points the MLP classifies correctly."""
  return float(jnp.mean(jnp.argmax(logits_fn(params, x), axis=-1) == y))


def batches(x, y, batch_size, steps, seed):
  """The training batches, drawn once so that both frameworks see the same."""
  rng = np.random.default_rng(seed)
  for _ in range(steps):
    idx = rng.integers(0, len(x), batch_size)
    yield x[idx], y[idx]


def train_jax(params, data, config, log_every):
  """Trains with ``optax_tfrmsprop.rmsprop`` in a jitted step.

  Args:
    params: the initial weights, numpy arrays.
    data: the list of ``(x, y)`` batches.
    config: the optimizer's keyword arguments.
    log_every: print the loss every this many steps (0: never).

  Returns:
    The trained weights, the gradients of every step (numpy arrays) and the
    seconds per step, compilation excluded.
  """
  opt = optax_tfrmsprop.rmsprop(**config)

  # Params and state donated: the CPU kernel updates them in place.
  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss, grads

  params = [jnp.asarray(p) for p in params]
  state = opt.init(params)
  # Warm-up: compiles the step, on copies (the step consumes what it is
  # given). Its result is discarded, so the training below starts from the
  # same weights and state.
  warm_up = jax.tree.map(jnp.copy, (params, state))
  jax.block_until_ready(step(*warm_up, *data[0]))
  all_grads = []
  start = time.perf_counter()
  for i, (x, y) in enumerate(data):
    params, state, loss, grads = step(params, state, x, y)
    all_grads.append(grads)
    if log_every and i % log_every == 0:
      print(f"  step {i:5d}  loss {float(loss):.4f}")
  jax.block_until_ready(params)
  seconds_per_step = (time.perf_counter() - start) / len(data)
  all_grads = [[np.asarray(g) for g in grads] for grads in all_grads]
  return [np.asarray(p) for p in params], all_grads, seconds_per_step


@contextlib.contextmanager
def _stderr_silenced():
  """Sends the process's stderr (file descriptor 2) to /dev/null.

  TensorFlow's C++ start-up messages (the oneDNN and CUDA notices, the
  ``E0000 ... cuInit`` line on machines without a GPU) are written before its
  logging is configured, so ``TF_CPP_MIN_LOG_LEVEL`` does not reach all of
  them; they go straight to file descriptor 2.

  Yields:
    Nothing; stderr is restored on exit, also when an exception is raised.
  """
  sys.stderr.flush()
  saved = os.dup(2)
  devnull = os.open(os.devnull, os.O_WRONLY)
  try:
    os.dup2(devnull, 2)
    yield
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


def import_tf():
  """Imports TensorFlow and tf_keras quietly, with TF on the CPU.

  Returns:
    The ``tensorflow`` and ``tf_keras`` modules.

  Raises:
    ImportError: if either is not installed.
  """
  # Read by TF's C++ logging when it loads: errors and warnings off.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  with _stderr_silenced():
    import tensorflow as tf
    import tf_keras

    # The package reproduces TF's CPU kernels: keep TF off any GPU.
    tf.config.set_visible_devices([], "GPU")
    tf.constant(0.0).numpy()  # initialises the runtime, and its messages
  import absl.logging  # comes with TensorFlow

  absl.logging.set_verbosity(absl.logging.ERROR)
  tf.get_logger().setLevel("ERROR")
  return tf, tf_keras


def train_keras(tf, tf_keras, params, data, config, jax_grads=None):
  """Trains the same MLP with tf_keras' legacy RMSprop in ``tf.function``.

  Args:
    tf: the ``tensorflow`` module.
    tf_keras: the ``tf_keras`` module.
    params: the initial weights, numpy arrays.
    data: the list of ``(x, y)`` batches.
    config: the optimizer's keyword arguments.
    jax_grads: if given, TF's optimizer applies these gradients (one list per
      step) instead of computing its own, which isolates the optimizer from
      the two frameworks' matmul rounding.

  Returns:
    The trained weights and the seconds per step, compilation excluded.
  """
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
        tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)
      )
    opt.apply_gradients(zip(tape.gradient(loss, variables), variables))

  @tf.function
  def apply(grads):
    opt.apply_gradients(zip(grads, variables))

  if jax_grads is None:
    inputs = [(tf.constant(x), tf.constant(y)) for x, y in data]
    run = step
  else:
    inputs = [([tf.constant(g) for g in grads],) for grads in jax_grads]
    run = apply
  # Warm-up: traces and compiles the step, then puts the weights and the
  # optimizer's iterations and slots (all zero-initialised) back as they were.
  run(*inputs[0])
  for var, p in zip(variables, params):
    var.assign(p)
  opt.set_weights([np.zeros_like(w) for w in opt.get_weights()])
  start = time.perf_counter()
  for args in inputs:
    run(*args)
  seconds_per_step = (time.perf_counter() - start) / len(inputs)
  return [v.numpy() for v in variables], seconds_per_step


def max_difference(a, b) -> tuple[float, int]:
  """The largest absolute difference and ULP distance over lists of arrays."""
  diff = max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))
  ulps = max(
    int(optax_tfrmsprop.ulp_distance(x, y).max(initial=0)) for x, y in zip(a, b)
  )
  return diff, ulps


def main(argv=None):
  """Parses the options, trains with JAX, then with Keras, and compares."""
  parser = argparse.ArgumentParser(
    prog="python -m optax_tfrmsprop",
    description=__doc__.splitlines()[0],
    formatter_class=argparse.ArgumentDefaultsHelpFormatter,
  )
  parser.add_argument("--steps", type=int, default=1000, help="training steps")
  parser.add_argument("--batch-size", type=int, default=128, help="batch size")
  parser.add_argument("--hidden", type=int, default=32, help="hidden units")
  parser.add_argument(
    "--learning-rate", type=float, default=0.01, help="RMSprop learning_rate"
  )
  parser.add_argument(
    "--momentum", type=float, default=0.9, help="RMSprop momentum"
  )
  parser.add_argument(
    "--centered", action="store_true", help="RMSprop centered=True"
  )
  parser.add_argument(
    "--seed", type=int, default=0, help="seed of the data and the weights"
  )
  parser.add_argument(
    "--no-tf", action="store_true", help="skip the TensorFlow comparison"
  )
  args = parser.parse_args(argv)
  if "JAX_PLATFORMS" not in os.environ:
    jax.config.update("jax_platforms", "cpu")

  x, y = two_spirals(4096, args.seed)
  params = init_params(args.hidden, args.seed)
  config = dict(
    learning_rate=args.learning_rate,
    momentum=args.momentum,
    centered=args.centered,
  )
  data = list(batches(x, y, args.batch_size, args.steps, args.seed))
  settings = ", ".join(f"{k}={v}" for k, v in config.items())

  print(
    f"optax_tfrmsprop {optax_tfrmsprop.__version__}: Keras' RMSprop, bit for "
    f"bit, in JAX (jax {jax.__version__} on {jax.default_backend()})."
  )
  print(
    f"Training a 2-{args.hidden}-{args.hidden}-2 tanh MLP on two spirals: "
    f"{args.steps} steps of {args.batch_size}, RMSprop({settings}), with JAX:"
  )
  jax_params, jax_grads, jax_time = train_jax(
    params, data, config, log_every=max(args.steps // 10, 1)
  )
  jax_accuracy = accuracy(jax_params, x, y)
  jax_loss = float(loss_fn(jax_params, x, y))
  if args.no_tf:
    print(
      f"JAX: train accuracy {jax_accuracy:.3f}, loss {jax_loss:.4f}; "
      f"{jax_time * 1e3:.2f} ms per step (compilation excluded: one untimed "
      "warm-up step)."
    )
    return

  try:
    tf, tf_keras = import_tf()
  except ImportError as e:
    print(
      f"JAX: train accuracy {jax_accuracy:.3f}, loss {jax_loss:.4f}.\n"
      f"TensorFlow/tf_keras not available ({e}): skipping the Keras "
      "comparison (pip install -e '.[tf]' in the repository)."
    )
    return
  print(
    "...and with tf_keras.optimizers.legacy.RMSprop (TensorFlow "
    f"{tf.__version__}, CPU), the same weights and batches.\n"
  )
  fed, _ = train_keras(tf, tf_keras, params, data, config, jax_grads=jax_grads)
  diff, ulps = max_difference(jax_params, fed)
  verdict = "bit-identical" if ulps == 0 else "NOT bit-identical"
  print(
    f"1. The optimizer alone (Keras' RMSprop fed JAX's gradients): largest "
    f"parameter difference {diff:.3g} ({ulps} ULP), {verdict}."
  )
  own, keras_time = train_keras(tf, tf_keras, params, data, config)
  diff, _ = max_difference(jax_params, own)
  print(
    f"2. End to end (each framework computes its own gradients): largest "
    f"parameter difference {diff:.3g}. That is the frameworks' own gradients "
    "drifting apart (XLA and TF round the matmuls and tanh differently, and "
    "training amplifies it), not the optimizer: see 1."
  )
  print(
    f"3. Train accuracy: JAX {jax_accuracy:.3f}, Keras "
    f"{accuracy(own, x, y):.3f}; loss: JAX {jax_loss:.4f}, Keras "
    f"{float(loss_fn(own, x, y)):.4f}."
  )
  print(
    f"4. Time per step, compilation excluded (one untimed warm-up step each): "
    f"JAX jitted {jax_time * 1e3:.2f} ms, Keras tf.function "
    f"{keras_time * 1e3:.2f} ms."
  )


if __name__ == "__main__":
  main()
