"""Per-step cost of the Keras-style class vs the raw jitted step vs tf_keras.

Two small MLPs (16-32-10 and 784-256-128-10, float32, 4 and 6 variables)
with fixed gradients; the tiny one shows the fixed per-step overhead, the
larger one how it compares with a step's arithmetic:

* ``raw``: ``jax.jit`` of ``rmsprop_update`` + ``optax.apply_updates``, with
  params and state carried by the caller (the functional floor);
* ``class``: ``optax_tfrmsprop.RMSprop.apply_gradients`` on Variables;
* ``tf_eager`` / ``tf_function``: ``tf_keras.optimizers.legacy.RMSprop``'s
  own ``apply_gradients``, eager and in ``tf.function``.

Run: ``python benchmarks/keras_wrapper_overhead.py [--steps N]``. Prints the
median per-step time of each and the class' overhead over the raw step.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_tfrmsprop as otr

MLPS = {
    "16-32-10": [(16, 32), (32,), (32, 10), (10,)],
    "784-256-128-10": [(784, 256), (256,), (256, 128), (128,), (128, 10),
                       (10,)],
}
CONFIG = dict(learning_rate=0.001, momentum=0.9, centered=True)


def _interleaved_us(contenders, steps: int, repeats: int):
  """Per-step times (us) of each contender over ``repeats`` rounds.

  Each round times ``steps`` steps of every contender in turn, so that load
  from other processes hits all of them alike; overheads are then taken
  round by round.
  """
  for step in contenders.values():
    step()  # Compile / warm up.
  times = {name: [] for name in contenders}
  for _ in range(repeats):
    for name, step in contenders.items():
      start = time.perf_counter()
      for _ in range(steps):
        step()
      times[name].append((time.perf_counter() - start) / steps * 1e6)
  return {name: np.array(t) for name, t in times.items()}


def measure(shapes, steps: int, repeats: int) -> dict[str, float]:
  """Per-round us/step of the four contenders on an MLP of ``shapes``."""
  rng = np.random.RandomState(0)
  values = [rng.randn(*s).astype(np.float32) * 0.1 for s in shapes]
  grads_np = [rng.randn(*s).astype(np.float32) for s in shapes]
  grads = [jnp.asarray(g) for g in grads_np]

  # The functional floor: state and params threaded by the caller.
  @jax.jit
  def raw_step(params, state, grads):
    updates, state = otr.rmsprop_update(
        grads, state, learning_rate=0.001, rho=0.9, momentum=0.9)
    return optax.apply_updates(params, updates), state

  carry = [[jnp.asarray(v) for v in values]]
  carry.append(otr.rmsprop_init(carry[0], centered=True, use_momentum=True))

  def raw():
    carry[0], carry[1] = raw_step(carry[0], carry[1], grads)
    jax.block_until_ready(carry[0])

  variables = [otr.Variable(v) for v in values]
  opt = otr.RMSprop(**CONFIG)
  pairs = list(zip(grads, variables))

  def wrapped():
    opt.apply_gradients(pairs)
    jax.block_until_ready(variables[0].value)

  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tf_keras  # pylint: disable=g-import-not-at-top

  tf_vars = [tf.Variable(v) for v in values]
  tf_grads = [tf.constant(g) for g in grads_np]
  tf_opt = tf_keras.optimizers.legacy.RMSprop(**CONFIG)
  tf_pairs = list(zip(tf_grads, tf_vars))

  def tf_eager():
    tf_opt.apply_gradients(tf_pairs)

  tf_fn_opt = tf_keras.optimizers.legacy.RMSprop(**CONFIG)
  tf_fn_vars = [tf.Variable(v) for v in values]

  @tf.function
  def tf_fn_step(g):
    tf_fn_opt.apply_gradients(zip(g, tf_fn_vars))

  def tf_function():
    tf_fn_step(tf_grads)

  return _interleaved_us(
      {"raw": raw, "class": wrapped, "tf_eager": tf_eager,
       "tf_function": tf_function}, steps, repeats)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--repeats", type=int, default=21)
  args = parser.parse_args()
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}, "
        f"tf {tf.__version__}; {CONFIG}")
  for mlp, shapes in MLPS.items():
    print(f"MLP {mlp}:")
    report(measure(shapes, args.steps, args.repeats))


def report(times: dict[str, np.ndarray]) -> None:
  medians = {name: float(np.median(t)) for name, t in times.items()}
  for name, us in medians.items():
    print(f"  {name:12s} median {us:9.1f} us/step  "
          f"({us / medians['raw']:.2f}x raw)")
  overhead = times["class"] - times["raw"]
  print(f"  class overhead over raw: median {np.median(overhead):.1f} us/step "
        f"(min {overhead.min():.1f})")
  print(f"  tf_eager / class: {medians['tf_eager'] / medians['class']:.2f}x; "
        f"tf_function / class: "
        f"{medians['tf_function'] / medians['class']:.2f}x")


if __name__ == "__main__":
  main()
