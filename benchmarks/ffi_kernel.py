"""The CPU kernel against optax, the XLA path, TF and a C roofline, one run.

Usage: python benchmarks/ffi_kernel.py [--size 16777216] [--rounds 7]

Every contender runs a full step (update and apply) of float32 parameters in
place (donated buffers in JAX, variables in TF). Times are the median over
paired rounds: in each round every contender runs ``--steps`` steps in turn,
so drift in machine load hits all of them alike. The roofline is a minimal C
loop (``-O3 -march=native -fopenmp -ffp-contract=off``) doing the same single
pass over numpy arrays, called directly: the memory-bandwidth limit of the
update.

Set TFRMSPROP_FORCE_BASELINE=1 to measure the kernel's portable (SSE2/NEON)
loop instead of the AVX2/AVX-512 one the run-time dispatch picks.
"""

import argparse
import ctypes
import os
import statistics
import subprocess
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_tfrmsprop

PATHS = {
    "P1": dict(momentum=0.0, centered=False),
    "P2": dict(momentum=0.0, centered=True),
    "P3": dict(momentum=0.9, centered=False),
    "P4": dict(momentum=0.9, centered=True),
}
LR, RHO, EPS = 0.001, 0.9, 1e-7

_ROOFLINE_C = r"""
#include <math.h>
#include <stddef.h>
void step(float* g, float* v, float* ms, float* mg, float* mom, size_t n,
          int centered, int momentum, float lr, float rho, float mu,
          float eps) {
  const float c = 1.0f - rho;
  if (!momentum && !centered) {
    #pragma omp parallel for simd
    for (size_t i = 0; i < n; ++i) {
      ms[i] = rho * ms[i] + c * g[i] * g[i];
      v[i] -= lr * g[i] / (sqrtf(ms[i]) + eps);
    }
  } else if (!momentum) {
    #pragma omp parallel for simd
    for (size_t i = 0; i < n; ++i) {
      ms[i] = rho * ms[i] + c * g[i] * g[i];
      mg[i] = rho * mg[i] + c * g[i];
      v[i] -= lr * g[i] / (sqrtf(ms[i] - mg[i] * mg[i]) + eps);
    }
  } else if (!centered) {
    #pragma omp parallel for simd
    for (size_t i = 0; i < n; ++i) {
      ms[i] += (g[i] * g[i] - ms[i]) * c;
      mom[i] = mom[i] * mu + g[i] * lr / sqrtf(ms[i] + eps);
      v[i] -= mom[i];
    }
  } else {
    #pragma omp parallel for simd
    for (size_t i = 0; i < n; ++i) {
      ms[i] += (g[i] * g[i] - ms[i]) * c;
      mg[i] += (g[i] - mg[i]) * c;
      mom[i] = mom[i] * mu + g[i] * lr / sqrtf(ms[i] - mg[i] * mg[i] + eps);
      v[i] -= mom[i];
    }
  }
}
"""


def _roofline_library():
  folder = tempfile.mkdtemp()
  source, library = (os.path.join(folder, f) for f in ("r.c", "r.so"))
  with open(source, "w") as f:
    f.write(_ROOFLINE_C)
  subprocess.run(["cc", "-O3", "-march=native", "-fopenmp", "-fno-math-errno",
                  "-ffp-contract=off",
                  "-shared", "-fPIC", source, "-o", library], check=True)
  lib = ctypes.CDLL(library)
  lib.step.argtypes = [ctypes.c_void_p] * 5 + [
      ctypes.c_size_t, ctypes.c_int, ctypes.c_int] + [ctypes.c_float] * 4
  return lib


def roofline_step(lib, path, size):
  """A closure running one C step on fresh numpy arrays of ``size``."""
  # The same values as the JAX contenders: the centered paths' variance
  # estimate decays toward zero and denormals, whose cost must match.
  var, g = (np.array(x) for x in _tree([(size,)], 0) + _tree([(size,)], 1))
  arrays = [g, var] + [np.zeros(size, np.float32) for _ in range(3)]
  cfg = PATHS[path]
  args = (size, cfg["centered"], cfg["momentum"] > 0, LR, RHO, 0.9, EPS)
  return lambda: lib.step(*(a.ctypes.data for a in arrays), *args)


def _tree(shapes, seed=0):
  rng = np.random.default_rng(seed)
  return [jnp.asarray(rng.normal(size=s), jnp.float32) for s in shapes]


def jax_step(kind, path, shapes):
  """A closure running one jitted, donated step of ``kind`` on ``shapes``."""
  cfg = PATHS[path]
  params, grads = _tree(shapes), _tree(shapes, seed=1)
  if kind == "optax":
    opt = optax.rmsprop(LR, decay=jnp.float32(RHO), eps=EPS,
                        eps_in_sqrt=cfg["momentum"] > 0,
                        centered=cfg["centered"],
                        momentum=cfg["momentum"] or None)
  else:
    backend = kind.split("-")[0]
    opt = optax_tfrmsprop.rmsprop(LR, RHO, **cfg, backend=backend)
  state = opt.init(params)
  if kind.endswith("fused"):
    fn = lambda p, s, g: optax_tfrmsprop.rmsprop_apply(
        p, g, s, learning_rate=LR, rho=RHO, momentum=cfg["momentum"],
        backend=kind.split("-")[0])
  else:

    def fn(p, s, g):
      updates, s = opt.update(g, s, p)
      return optax.apply_updates(p, updates), s

  start = time.perf_counter()
  step = jax.jit(fn, donate_argnums=(0, 1)).lower(
      params, state, grads).compile()
  compile_s = time.perf_counter() - start
  carry = [params, state]

  def run():
    carry[:] = step(carry[0], carry[1], grads)
    jax.block_until_ready(carry)

  return run, compile_s


def tf_step(path, shapes):
  """A closure running one ``tf.function`` apply of tf_keras' legacy RMSprop."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tf_keras  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  variables = [tf.Variable(rng.normal(size=s).astype(np.float32))
               for s in shapes]
  grads = [tf.constant(rng.normal(size=s).astype(np.float32)) for s in shapes]
  opt = tf_keras.optimizers.legacy.RMSprop(LR, RHO, epsilon=EPS,
                                           **PATHS[path])

  @tf.function
  def apply():
    opt.apply_gradients(zip(grads, variables))

  apply()
  return apply


def resnet50_shapes(layout):
  """The 161 trainable shapes of Keras' ResNet-50 (conv kernels, BN, fc)."""
  shapes = []

  def conv(k, cin, cout, bias=False):
    shapes.append((k, k, cin, cout) if layout == "HWIO" else (cout, cin, k, k))
    shapes.extend([(cout,), (cout,)])  # The batch norm's gamma and beta.

  conv(7, 3, 64)
  cin = 64
  for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
    for b in range(blocks):
      if b == 0:
        conv(1, cin, 4 * width)
      conv(1, cin, width)
      conv(3, width, width)
      conv(1, width, 4 * width)
      cin = 4 * width
  shapes.extend([(2048, 1000), (1000,)])
  return shapes


def measure(contenders, rounds, steps):
  """Median seconds per step of each closure, over paired rounds."""
  for run in contenders.values():
    run()  # Warm up.
  samples = {name: [] for name in contenders}
  for _ in range(rounds):
    for name, run in contenders.items():
      start = time.perf_counter()
      for _ in range(steps):
        run()
      samples[name].append((time.perf_counter() - start) / steps)
  return {name: statistics.median(s) for name, s in samples.items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", type=int, default=1 << 24)
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--no-tf", action="store_true")
  args = parser.parse_args()
  print(f"jax {jax.__version__}, {os.cpu_count()} CPUs, kernel built: "
        f"{optax_tfrmsprop.cpu_kernel_is_built()}, baseline ISA forced: "
        f"{bool(os.environ.get('TFRMSPROP_FORCE_BASELINE'))}")
  lib = _roofline_library()
  kinds = ("optax", "xla", "ffi", "ffi-fused")

  print(f"\nDense step, one float32 leaf of {args.size} params "
        "(ms per step; ratios: optax time / ours, ours / roofline)")
  print("path  roofline  optax   xla     ffi     ffi-fused  "
        "optax/fused  fused/roof  optax/ffi")
  for path in PATHS:
    runs = {"roofline": roofline_step(lib, path, args.size)}
    for kind in kinds:
      runs[kind] = jax_step(kind, path, [(args.size,)])[0]
    t = measure(runs, args.rounds, args.steps)
    ms = {k: 1e3 * v for k, v in t.items()}
    print(f"{path}    {ms['roofline']:7.2f}  {ms['optax']:6.2f}  "
          f"{ms['xla']:6.2f}  {ms['ffi']:6.2f}  {ms['ffi-fused']:9.2f}  "
          f"{t['optax'] / t['ffi-fused']:11.2f}x "
          f"{t['ffi-fused'] / t['roofline']:10.2f}x "
          f"{t['optax'] / t['ffi']:9.2f}x")

  for layout in ("HWIO", "OIHW"):
    shapes = resnet50_shapes(layout)
    total = sum(int(np.prod(s)) for s in shapes)
    print(f"\nResNet-50 tree, {layout}, {len(shapes)} leaves, {total} params "
          "(ms per step)")
    print("path  optax   xla     ffi     ffi-fused  tf      "
          "optax/fused  tf/fused  compile xla/ffi (s)")
    for path in PATHS:
      runs, compile_s = {}, {}
      for kind in kinds:
        runs[kind], compile_s[kind] = jax_step(kind, path, shapes)
      if not args.no_tf:
        runs["tf"] = tf_step(path, shapes)
      t = measure(runs, args.rounds, args.steps)
      ms = {k: 1e3 * v for k, v in t.items()}
      tf_ms = ms.get("tf", float("nan"))
      print(f"{path}    {ms['optax']:6.2f}  {ms['xla']:6.2f}  "
            f"{ms['ffi']:6.2f}  {ms['ffi-fused']:9.2f}  {tf_ms:6.2f}  "
            f"{t['optax'] / t['ffi-fused']:11.2f}x "
            f"{tf_ms / ms['ffi-fused']:8.2f}x  "
            f"{compile_s['xla']:.2f}/{compile_s['ffi']:.2f}")


if __name__ == "__main__":
  main()
