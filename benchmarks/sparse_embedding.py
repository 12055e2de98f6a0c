"""Sparse RMSprop on an embedding table: JAX sparse vs JAX dense vs TF sparse.

Usage: ``python -m benchmarks.sparse_embedding [--small]`` from the repository
root (so the checkout, not an installed copy, is imported).

For each of TF's sparse paths (P5-P8) it times one optimizer step on a
``rows x width`` float32 table with ``ids`` looked-up rows per step:

* ``xla sparse``: ``rmsprop`` on an ``IndexedSlices`` gradient followed by
  ``apply_updates``, jitted, params and state donated, ``backend="xla"``;
* ``ffi sparse``: the same with ``backend="ffi"`` (the CPU kernel runs
  P7/P8; P5/P6 have no kernel and take the XLA path);
* ``ffi fused``: ``rmsprop_apply`` with ``backend="ffi"``, donated (P7/P8
  update the table rows inside the kernel);
* ``dense``: the same optimizer on a dense table-sized gradient (the dense
  path with the same momentum/centered flags, ``backend="xla"``), jitted and
  donated;
* ``tf sparse``: ``tf_keras.optimizers.legacy.RMSprop.apply_gradients`` with a
  ``tf.IndexedSlices`` inside ``tf.function``.

It prints the median (and minimum) step times, their ratios to ``ffi fused``
(``xla sparse`` without the kernel), and the temporary memory of the compiled JAX steps
(``compiled.memory_analysis().temp_size_in_bytes``). Without the built kernel
the ffi contenders are left out.
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax
import jax.numpy as jnp
import numpy as np

import optax_tfrmsprop as ot

PATHS = {
    "P5": dict(momentum=0.0, centered=False),
    "P6": dict(momentum=0.0, centered=True),
    "P7": dict(momentum=0.9, centered=False),
    "P8": dict(momentum=0.9, centered=True),
}


def _timed(run):
  start = time.perf_counter()
  run()
  return time.perf_counter() - start


def jax_runner(config, shape, grads, *, sparse, backend, fused=False):
  """A function running one donated step, and the step's temp bytes."""
  opt = ot.rmsprop(learning_rate=0.01, backend=backend, **config)

  def step(params, state, values, ids):
    grad = ot.IndexedSlices(values, ids, shape) if sparse else values
    if fused:
      return ot.rmsprop_apply(params, grad, state, learning_rate=0.01,
                              momentum=config["momentum"], backend=backend)
    updates, state = opt.update(grad, state)
    return ot.apply_updates(params, updates), state

  params = jnp.asarray(np.random.default_rng(0).normal(size=shape),
                       jnp.float32)
  state = jax.jit(opt.init)(params)
  compiled = (jax.jit(step, donate_argnums=(0, 1))
              .lower(params, state, *grads[0]).compile())
  temp = compiled.memory_analysis().temp_size_in_bytes
  carry = [params, state]
  count = [0]

  def run():
    values, ids = grads[count[0] % len(grads)]
    count[0] += 1
    carry[:] = compiled(*carry, values, ids)
    jax.block_until_ready(carry)

  return run, temp


def tf_runner(config, shape, grads):
  """A function running TF's own sparse apply, in ``tf.function``."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tf_keras  # pylint: disable=g-import-not-at-top

  var = tf.Variable(np.random.default_rng(0).normal(size=shape)
                    .astype(np.float32))
  opt = tf_keras.optimizers.legacy.RMSprop(learning_rate=0.01, **config)

  @tf.function
  def step(values, ids):
    opt.apply_gradients([(tf.IndexedSlices(values, ids, shape), var)])

  tf_grads = [(tf.constant(np.asarray(v)), tf.constant(np.asarray(i)))
              for v, i in grads]
  count = [0]

  def run():
    values, ids = tf_grads[count[0] % len(tf_grads)]
    count[0] += 1
    step(values, ids)
    var[0, 0].numpy()  # Waits for the step.

  return run


def seconds(runs, repeats):
  """Median and minimum seconds per call of each run, interleaved.

  Interleaving makes a varying machine load hit every contender alike.
  """
  for run in runs:
    run()  # Warm-up: compilation, slot creation, first touch of memory.
  times = [[_timed(run) for run in runs] for _ in range(repeats)]
  return [(statistics.median(c), min(c)) for c in zip(*times)]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--small", action="store_true",
                      help="a 10,000 x 64 table and 256 ids (CI smoke run)")
  parser.add_argument("--repeats", type=int, default=None)
  parser.add_argument("--paths", nargs="+", default=list(PATHS),
                      choices=list(PATHS))
  args = parser.parse_args()
  rows, width, num_ids = (10_000, 64, 256) if args.small else (
      1_000_000, 64, 4096)
  repeats = args.repeats or (5 if args.small else 15)
  shape = (rows, width)
  rng = np.random.default_rng(1)
  sparse_grads = [
      (jnp.asarray(rng.normal(size=(num_ids, width)), jnp.float32),
       jnp.asarray(rng.integers(0, rows, num_ids), jnp.int32))
      for _ in range(4)
  ]
  dense_grads = [(ot.IndexedSlices(v, i, shape).to_dense(), None)
                 for v, i in sparse_grads[:2]]
  contenders = {
      "xla sparse": dict(sparse=True, backend="xla"),
      "ffi sparse": dict(sparse=True, backend="ffi"),
      "ffi fused": dict(sparse=True, backend="ffi", fused=True),
      "dense": dict(sparse=False, backend="xla"),
  }
  if not ot.cpu_kernel_is_built():
    contenders = {k: v for k, v in contenders.items() if "ffi" not in k}
  names = [*contenders, "tf sparse"]
  # The ratios are to the fastest form this install has.
  reference = "ffi fused" if "ffi fused" in contenders else "xla sparse"
  print(f"table {rows:,} x {width} float32, {num_ids:,} ids/step, "
        f"{repeats} interleaved rounds, {jax.devices()[0].device_kind}")
  header = (f"{'path':4}  {'stat':6}  "
            + "  ".join(f"{k:>11}" for k in names)
            + f"  {'dense/ref':>9}  {'tf/ref':>7}  {'xla/ref':>7}")
  print(header)
  print("-" * len(header))
  temps = {}
  for name in args.paths:
    config = PATHS[name]
    runs = []
    for contender, options in contenders.items():
      grads = dense_grads if not options["sparse"] else sparse_grads
      run, temps[name, contender] = jax_runner(config, shape, grads, **options)
      runs.append(run)
    runs.append(tf_runner(config, shape, sparse_grads))
    timings = seconds(runs, repeats)
    del runs
    for stat_index, stat in enumerate(("median", "min")):
      times = dict(zip(names, (t[stat_index] for t in timings)))
      ref = times[reference]
      print(f"{name:4}  {stat:6}  "
            + "  ".join(f"{times[k] * 1e3:9.2f}ms" for k in names)
            + f"  {times['dense'] / ref:8.1f}x  "
            f"{times['tf sparse'] / ref:6.1f}x  "
            f"{times['xla sparse'] / ref:6.2f}x")
  print(f"ref = {reference}")
  print("temp MiB: " + "; ".join(
      f"{path} {contender} {temp / 2**20:.2f}"
      for (path, contender), temp in temps.items()))
  print(f"(table: {rows * width * 4 / 2**20:.0f} MiB; the dense step's "
        "gradient is an input, not counted as temp)")


if __name__ == "__main__":
  main()
