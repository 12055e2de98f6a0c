"""Writes the golden vectors: real TensorFlow's results, replayed without TF.

For each flavor (``keras_legacy``: ``tf_keras.optimizers.legacy.RMSprop``,
``tf1``: ``tf.compat.v1.train.RMSPropOptimizer``, ``keras3``:
``keras.optimizers.RMSprop``), each of TF's eight paths P1-P8
(``docs/equations.md``; TF1 runs its momentum kernels for P1/P2's options,
Keras 3 densifies P5-P8's ``IndexedSlices``), each dtype TF has kernels for
(float32, float64, float16, bfloat16) and each rounding, the script runs
``STEPS`` steps in TF and writes the initial variables, the gradients, and
TF's final variables, slots and step count to
``tests/goldens/<flavor>-<rounding>-<path>-<dtype>.npz``.
``tests/test_goldens.py`` replays every file through ``optax_tfrmsprop`` and
asserts bitwise equality.

Roundings: ``tf_cpu`` is TF's CPU kernels (tf_keras and TF1 in
``tf.function``; Keras 3 eagerly, its ops as written, since grappler rewrites
its division into a hardware rsqrt estimate inside ``tf.function``).
``tf_xla`` is ``tf.function(jit_compile=True)``, for the dense paths in
float32: where ``rounding="tf_xla"`` is designed to be 0 ULP and the live
tests assert it. (Measured with TF 2.21: float64 P3/P4 under XLA differ by
1-2 ULP on ``ms``/``mg`` after 3 steps; XLA's CPU float16/bfloat16
arithmetic goes through float32; the sparse paths are not claimed.)

The sparse tables are 7 wide, narrower than Eigen's float32 packet: TF then
computes ``1 / sqrt`` on every row, not the CPU's hardware rsqrt estimate, so
the files hold the same bits on every x86-64 or ARM CPU.

Every array is stored as its bit pattern (unsigned integers) with its dtype
in the metadata, so bfloat16 needs no pickling. The versions of TensorFlow,
tf_keras and Keras that produced a file are in its metadata too.

Run from the repository root, with the ``tf`` extra installed::

  python scripts/make_goldens.py            # every case
  python scripts/make_goldens.py --check    # compare with the files instead
"""

import argparse
import json
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import ml_dtypes
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
GOLDENS = ROOT / "tests" / "goldens"
# The TF runners and the problem generator of the differential tests: the
# goldens are those tests' TF side, frozen.
sys.path.insert(0, str(ROOT / "tests"))

import tf_reference  # noqa: E402
import toolbox  # noqa: E402

STEPS = 3
SEED = 7
FLAVORS = ("keras_legacy", "tf1", "keras3")
DTYPES = {
  "float32": np.float32,
  "float64": np.float64,
  "float16": np.float16,
  "bfloat16": ml_dtypes.bfloat16,
}
CONFIGS = {  # The flavors' own names and defaults (TF1's rho is "decay").
  "keras_legacy": dict(learning_rate=0.01, rho=0.9, epsilon=1e-7),
  "tf1": dict(learning_rate=0.01, decay=0.9, epsilon=1e-10),
  "keras3": dict(learning_rate=0.01, rho=0.9, epsilon=1e-7),
}
DENSE_SHAPES = [(), (5,), (3, 4)]
SPARSE_SHAPES = [toolbox.Table(6, 7, 5), (3,)]  # 5 ids of 6 rows: duplicates
BITS = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def cases():
  """``(flavor, rounding, path, dtype)`` of every golden file."""
  for flavor in FLAVORS:
    for path, spec in toolbox.PATHS.items():
      for dtype in DTYPES:
        yield flavor, "tf_cpu", path, dtype
        if not spec.sparse and dtype == "float32":
          yield flavor, "tf_xla", path, dtype


def _run_tf(flavor, rounding, path, variables, grad_steps):
  """TF's final variables, slots ``{TF name: [values]}`` and step count."""
  config = toolbox.options(path, **CONFIGS[flavor])
  xla = rounding == "tf_xla"
  if flavor == "keras_legacy":
    return tf_reference.run_tf(variables, grad_steps, jit_compile=xla, **config)
  if flavor == "tf1":
    tf_vars, slots = tf_reference.run_tf1(
      variables, grad_steps, jit_compile=xla, **config
    )
    return tf_vars, slots, len(grad_steps)  # TF1 itself counts nothing.
  tf_vars, opt = tf_reference.run_keras3(
    variables, grad_steps, jit_compile=xla, eager=not xla, **config
  )
  lists = {
    "velocity": opt._velocities,
    "momentum": opt._momentums,
    "average_gradient": opt._average_gradients,
  }
  slots = {k: [v.numpy() for v in vs] for k, vs in lists.items() if vs}
  return tf_vars, slots, int(opt.iterations.numpy())


def _bits(x):
  x = np.asarray(x)
  return x.view(BITS[x.dtype.itemsize]) if x.dtype.kind in "fV" else x


def golden(flavor, rounding, path, dtype, versions):
  """The arrays of one golden file."""
  spec = toolbox.PATHS[path]
  shapes = SPARSE_SHAPES if spec.sparse else DENSE_SHAPES
  variables, grad_steps = toolbox.problem(SEED, DTYPES[dtype], STEPS, shapes)
  tf_vars, slots, count = _run_tf(flavor, rounding, path, variables, grad_steps)
  meta = dict(
    flavor=flavor,
    rounding=rounding,
    path=path,
    dtype=dtype,
    config=toolbox.options(path, **CONFIGS[flavor]),
    steps=STEPS,
    sparse=[isinstance(s, toolbox.Table) for s in shapes],
    count=count,
    slots=sorted(slots),
    versions=versions,
    generator="scripts/make_goldens.py",
  )
  arrays = {"meta": np.array(json.dumps(meta, sort_keys=True))}
  for i, s in enumerate(shapes):
    arrays[f"init/{i}"] = _bits(variables[i])
    arrays[f"final/{i}"] = _bits(tf_vars[i])
    for name, values in slots.items():
      arrays[f"slot/{name}/{i}"] = _bits(values[i])
    if isinstance(s, toolbox.Table):
      arrays[f"grad/{i}/values"] = _bits(
        np.stack([g[i][0] for g in grad_steps])
      )
      arrays[f"grad/{i}/indices"] = np.stack([g[i][1] for g in grad_steps])
    else:
      arrays[f"grad/{i}"] = _bits(np.stack([g[i] for g in grad_steps]))
  return arrays


def file_name(flavor, rounding, path, dtype):
  return f"{flavor}-{rounding}-{path}-{dtype}.npz"


def versions():
  import keras
  import tensorflow as tf
  import tf_keras

  return {
    "tensorflow": tf.__version__,
    "tf_keras": tf_keras.__version__,
    "keras": keras.__version__,
  }


def main():
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0],
    formatter_class=argparse.ArgumentDefaultsHelpFormatter,
  )
  parser.add_argument(
    "--check",
    action="store_true",
    help="compare TF's results with the files instead of writing them",
  )
  parser.add_argument(
    "--out", default=str(GOLDENS), help="the folder of the .npz files"
  )
  args = parser.parse_args()
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  found = versions()
  mismatches = 0
  import tensorflow as tf

  written = 0
  for case in cases():
    target = out / file_name(*case)
    try:
      arrays = golden(*case, found)
    except tf.errors.InvalidArgumentError as e:
      # TF's sparse momentum kernels (all of TF1's) have no bfloat16 CPU
      # kernel: nothing to reproduce.
      if "No OpKernel" not in str(e):
        raise
      print("no TF kernel:", target.name)
      continue
    written += 1
    if args.check:
      with np.load(target) as stored:
        same = sorted(stored.files) == sorted(arrays) and all(
          k == "meta" or np.array_equal(stored[k], arrays[k]) for k in arrays
        )
      mismatches += not same
      print(("same     " if same else "DIFFERENT"), target.name)
    else:
      np.savez_compressed(target, **arrays)
  total = sum(p.stat().st_size for p in out.glob("*.npz"))
  print(f"{written} files, {total / 1024:.0f} KiB in {out}")
  print("versions:", json.dumps(found))
  return 1 if mismatches else 0


if __name__ == "__main__":
  sys.exit(main())
