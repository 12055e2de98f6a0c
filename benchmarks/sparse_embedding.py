"""Sparse RMSprop on an embedding table: JAX sparse vs dense vs TF sparse.

``python -m benchmarks.sparse_embedding [--small] [--out DIR]`` times, for
each of TF's sparse paths (P5-P8), one optimizer step on a ``rows x width``
float32 table with ``ids`` looked-up rows per step, and writes
``sparse_embedding.{md,json}`` into ``DIR``:

* ``optax_tfrmsprop sparse``: the fused ``rmsprop_apply`` on an
  ``IndexedSlices`` gradient (on CPU the kernel updates the touched rows of
  the table and slots in place), jitted, params and state donated;
* ``optax_tfrmsprop sparse optax-API``: ``rmsprop`` ``update`` followed by
  ``apply_updates``, jitted, donated;
* ``optax_tfrmsprop`` / ``optax``: the dense benchmark's steps (fused
  ``rmsprop_apply``; ``optax.rmsprop``) on the dense table-sized gradient
  with the same flags;
* ``tf_keras sparse``: ``tf_keras.optimizers.legacy.RMSprop.apply_gradients``
  with a ``tf.IndexedSlices`` inside ``tf.function``.

It also records the temporary memory of the compiled sparse step
(``compiled.memory_analysis().temp_size_in_bytes``).
"""

import sys

import numpy as np

from benchmarks import contenders as contenders_lib
from benchmarks import harness
from benchmarks import workloads
from benchmarks.contenders import OURS

# TF's numbers of the sparse paths, as the semantics spec and docs use them.
P_NUMBERS = {
  "plain": "P5",
  "centered": "P6",
  "momentum": "P7",
  "momentum+centered": "P8",
}
SPARSE = f"{OURS} sparse"
SPARSE_API = f"{OURS} sparse optax-API"
TF_SPARSE = "tf_keras sparse"
DENSE_PEERS = (OURS, "optax")
# Distinct gradients cycled through, so no step repeats the previous ids.
_GRADIENTS = 4


def _settings(small: bool) -> dict:
  if small:
    return dict(
      rows=10_000,
      width=64,
      ids=256,
      **harness.SMOKE_ROUNDS,
      paths=workloads.dense_paths(small=True),
    )
  # TF's no-momentum sparse steps decay the whole table's slots and take
  # seconds each on a loaded 2-core machine: few rounds, a time budget.
  return dict(
    rows=1_000_000,
    width=64,
    ids=4096,
    warmup=1,
    min_reps=7,
    max_reps=30,
    budget_s=3.0,
    paths=workloads.PATHS,
  )


def _jax_sparse(path, table, gradients, *, fused: bool):
  """A donated jitted sparse step, and its compiled temporary bytes."""
  import jax

  import optax_tfrmsprop as ot

  opt = ot.rmsprop(
    momentum=path.momentum, centered=path.centered, **workloads.HYPERPARAMS
  )

  def step(params, state, values, ids):
    grads = ot.IndexedSlices(values, ids, table.shape)
    if fused:
      return ot.rmsprop_apply(
        params, grads, state, momentum=path.momentum, **workloads.HYPERPARAMS
      )
    updates, state = opt.update(grads, state)
    return ot.apply_updates(params, updates), state

  params = jax.device_put(table)
  state = opt.init(params)
  compiled = (
    jax.jit(step, donate_argnums=(0, 1))
    .lower(params, state, *gradients[0])
    .compile()
  )
  carry = [params, state]
  count = [0]

  def run():
    values, ids = gradients[count[0] % len(gradients)]
    count[0] += 1
    carry[:] = compiled(*carry, values, ids)
    jax.block_until_ready(carry)

  return run, compiled.memory_analysis().temp_size_in_bytes


def _tf_sparse(path, table, gradients):
  """TF's own sparse apply in ``tf.function``."""
  import tensorflow as tf
  import tf_keras

  var = tf.Variable(table)
  opt = tf_keras.optimizers.legacy.RMSprop(
    momentum=path.momentum, centered=path.centered, **workloads.HYPERPARAMS
  )

  @tf.function
  def step(values, ids):
    opt.apply_gradients([(tf.IndexedSlices(values, ids, table.shape), var)])

  tf_gradients = [(tf.constant(v), tf.constant(i)) for v, i in gradients]
  count = [0]

  def run():
    step(*tf_gradients[count[0] % len(tf_gradients)])
    count[0] += 1
    var[0, 0].numpy()  # Waits for the step.

  return run


def _densified(values, ids, shape) -> np.ndarray:
  """The table-sized gradient of ``(values, ids)``, duplicates summed."""
  dense = np.zeros(shape, np.float32)
  np.add.at(dense, ids, values)
  return dense


def measure(small: bool) -> list:
  """Times every contender on every path; one record each."""
  settings = _settings(small)
  shape = (settings["rows"], settings["width"])
  rng = np.random.default_rng(1)
  table = rng.standard_normal(shape, dtype=np.float32)
  gradients = [
    (
      rng.standard_normal((settings["ids"], shape[1]), dtype=np.float32),
      rng.integers(0, shape[0], settings["ids"]).astype(np.int32),
    )
    for _ in range(_GRADIENTS)
  ]
  dense_params = {"table": table}
  dense_grads = {"table": _densified(*gradients[0], shape)}
  makers = {
    c.name: c.make for c in contenders_lib.CONTENDERS if c.name in DENSE_PEERS
  }
  records = []
  for path in settings["paths"]:
    sparse_run, temp = _jax_sparse(path, table, gradients, fused=True)
    api_run, _ = _jax_sparse(path, table, gradients, fused=False)
    steps = {SPARSE: sparse_run, SPARSE_API: api_run}
    steps.update(
      {
        name: makers[name](dense_params, dense_grads, path)
        for name in DENSE_PEERS
      }
    )
    try:
      steps[TF_SPARSE] = _tf_sparse(path, table, gradients)
    except ImportError as e:
      records.append(
        dict(
          path=path.name,
          contender=TF_SPARSE,
          skipped=f"tensorflow/tf_keras not installed ({e})",
        )
      )
    times = harness.time_rounds(steps, settings)
    for name, samples in times.items():
      records.append(
        dict(
          path=path.name,
          contender=name,
          step=harness.summary(samples),
          temp_bytes=temp if name == SPARSE else None,
          table_bytes=table.nbytes,
          ids=settings["ids"],
        )
      )
    del steps, sparse_run, api_run
    print(
      f"{P_NUMBERS[path.name]} {path.name}: "
      + ", ".join(
        f"{k} {1e3 * harness.summary(v)['median']:.2f} ms"
        for k, v in times.items()
      ),
      flush=True,
    )
  return records


def _median(records, path, name):
  return next(
    (
      r["step"]["median"]
      for r in records
      if (r["path"], r["contender"]) == (path, name) and "step" in r
    ),
    None,
  )


def targets(records: list) -> list:
  """Issues 6 and 3's sparse targets: ``(issue, target, measured, met)``."""
  out = []
  for path in workloads.PATHS:
    sparse = _median(records, path.name, SPARSE)
    if sparse is None:
      continue
    label = f"{P_NUMBERS[path.name]} {path.name}"

    def over(name, sparse=sparse, path=path):
      other = _median(records, path.name, name)
      return other and other / sparse

    tf, ours_dense, optax = over(TF_SPARSE), over(OURS), over("optax")
    if path.momentum:
      if optax:
        out.append(
          (
            6,
            f"{label}: >= 40x optax's dense step (optax/sparse)",
            f"{optax:.1f}",
            optax >= 40,
          )
        )
      if tf:
        out.append(
          (
            6,
            f"{label}: >= 1.5x TF's sparse kernel (tf/sparse)",
            f"{tf:.2f}",
            tf >= 1.5,
          )
        )
        out.append(
          (
            3,
            f"{label}: faster than TF's sparse apply (tf/sparse > 1)",
            f"{tf:.2f}",
            tf > 1,
          )
        )
      if ours_dense:
        out.append(
          (
            3,
            f"{label}: >= 20x the dense step of the same table (dense/sparse)",
            f"{ours_dense:.1f}",
            ours_dense >= 20,
          )
        )
      record = next(
        r for r in records if (r["path"], r["contender"]) == (path.name, SPARSE)
      )
      share = record["temp_bytes"] / record["table_bytes"]
      out.append(
        (
          3,
          f"{label}: temporary memory far below the table (<= 10% of it)",
          f"{record['temp_bytes'] / 2**20:.2f} MiB, {100 * share:.1f}%",
          share <= 0.1,
        )
      )
    else:
      if tf:
        out.append(
          (
            6,
            f"{label}: >= 5x TF's graph kernels (tf/sparse)",
            f"{tf:.2f}",
            tf >= 5,
          )
        )
      if ours_dense:
        out.append(
          (
            3,
            f"{label}: as fast as a dense step (sparse/dense <= 1.05)",
            f"{1 / ours_dense:.2f}",
            1 / ours_dense <= 1.05,
          )
        )
  return out


def markdown(records: list, info: dict, command: str) -> str:
  """The report: machine, command, table and targets."""
  timed = [r for r in records if "step" in r]
  first = timed[0]
  lines = harness.report_head(
    "Sparse (IndexedSlices) RMSprop step on an embedding table", command, info
  ) + [
    f"Table {first['table_bytes'] // 4 // 64:,} x 64 float32 "
    f"({first['table_bytes'] / 2**20:.0f} MiB), {first['ids']:,} "
    "random ids per step (4 sets cycled). Times are per step in ms: "
    "median (min–max) over interleaved repetitions after warm-up; "
    "`x/sparse` is x's median over the sparse step's (> 1: the sparse "
    "step is faster). Dense contenders update the same table from the "
    "dense gradient. Temp: `compiled.memory_analysis()."
    "temp_size_in_bytes` of the sparse step.",
    "",
  ]
  rows = []
  for r in timed:
    sparse = _median(records, r["path"], SPARSE)
    rows.append(
      [
        f"{P_NUMBERS[r['path']]} {r['path']}",
        r["contender"],
        harness.ms(r["step"]),
        r["step"]["reps"],
        f"{r['step']['median'] / sparse:.2f}",
        f"{r['temp_bytes'] / 2**20:.2f} MiB"
        if r["temp_bytes"] is not None
        else "–",
      ]
    )
  lines += harness.table(
    ["path", "contender", "ms", "reps", "x/sparse", "temp"], rows
  ) + [""]
  lines += harness.skipped_lines(records)
  lines += harness.targets_table(targets(records))
  return "\n".join(lines)


def main(argv=None) -> int:
  return harness.run_suite(
    "sparse_embedding", __doc__.splitlines()[0], measure, markdown, argv
  )


if __name__ == "__main__":
  sys.exit(main())
