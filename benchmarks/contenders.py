"""Everything the dense benchmark times: one :class:`Contender` per entry.

A contender turns ``(params, grads, path)`` (numpy arrays and a
:class:`~benchmarks.workloads.Path`) into a ``step()`` callable that applies
one RMSprop update to its own copy of the params and returns when the update
is done. Contenders of the same ``group`` run in one worker process, their
steps interleaved so that load on the machine hits them alike; a group's
imports never meet another group's. Adding a backend is adding an entry to
:data:`CONTENDERS`.
"""

from collections.abc import Callable
import dataclasses
import functools
import pathlib

import numpy as np

from benchmarks.workloads import HYPERPARAMS

Step = Callable[[], None]


class Unavailable(Exception):
  """The contender cannot run here; the message says why."""


@dataclasses.dataclass(frozen=True)
class Contender:
  """One implementation of the RMSprop step.

  Attributes:
    name: the label in tables.
    group: the worker process it runs in (``jax``, ``tf``, ``torch``).
    make: ``make(params, grads, path) -> step``; raises :class:`Unavailable`.
    compiled: whether its first call traces and compiles (then timed on the
      workloads that ask for it).
    description: how it is configured, for the report.
  """

  name: str
  group: str
  make: Callable[..., Step]
  compiled: bool = False
  description: str = ""


def _jax_step(update_and_apply, params, state, grads, donate=True) -> Step:
  """Jits ``update_and_apply`` with params and state donated; returns a step.

  ``donate=False`` times the same step without donation.
  """
  import jax

  step_fn = jax.jit(update_and_apply, donate_argnums=(0, 1) if donate else ())
  carry = [jax.device_put(params), jax.device_put(state)]
  grads = jax.device_put(grads)

  def step():
    carry[:] = step_fn(carry[0], carry[1], grads)
    jax.block_until_ready(carry)

  return step


def _optax_step(opt, params, grads, donate=True) -> Step:
  import jax
  import optax

  def update_and_apply(params, state, grads):
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  params = jax.device_put(params)
  return _jax_step(update_and_apply, params, opt.init(params), grads, donate)


def _ours_fused(backend: str):
  def make(params, grads, path, donate=True):
    import functools

    import optax_tfrmsprop

    state = optax_tfrmsprop.rmsprop_init(
      params, centered=path.centered, use_momentum=path.momentum > 0
    )
    apply = functools.partial(
      optax_tfrmsprop.rmsprop_apply,
      momentum=path.momentum,
      backend=backend,
      **HYPERPARAMS,
    )
    return _jax_step(
      lambda p, s, g: apply(p, g, s), params, state, grads, donate
    )

  return make


def _ours_optax_api(params, grads, path, donate=True):
  import optax_tfrmsprop

  opt = optax_tfrmsprop.rmsprop(
    momentum=path.momentum, centered=path.centered, **HYPERPARAMS
  )
  return _optax_step(opt, params, grads, donate)


def _optax(params, grads, path, donate=True):
  import optax

  # TF's epsilon sits outside the square root on the momentum-free paths and
  # inside on the kernel (momentum) paths; optax's initial_scale=0 is TF's.
  opt = optax.rmsprop(
    HYPERPARAMS["learning_rate"],
    decay=HYPERPARAMS["rho"],
    eps=HYPERPARAMS["epsilon"],
    eps_in_sqrt=path.momentum > 0,
    centered=path.centered,
    momentum=path.momentum or None,
  )
  return _optax_step(opt, params, grads, donate)


def _keras3(params, grads, path):
  import os

  if os.environ.get("KERAS_BACKEND") != "jax":
    raise Unavailable("needs KERAS_BACKEND=jax set before keras is imported")
  try:
    import keras
  except ImportError as e:
    raise Unavailable(f"keras is not installed ({e})") from e
  opt = keras.optimizers.RMSprop(
    momentum=path.momentum, centered=path.centered, **HYPERPARAMS
  )
  names = list(params)
  variables = [keras.Variable(params[k]) for k in names]
  opt.build(variables)

  def update_and_apply(trainable, opt_vars, grads):
    return opt.stateless_apply(opt_vars, grads, trainable)

  return _jax_step(
    update_and_apply,
    [v.value for v in variables],
    [v.value for v in opt.variables],
    [grads[k] for k in names],
  )


def _tf_keras(params, grads, path):
  try:
    import tensorflow as tf
    import tf_keras
  except ImportError as e:
    raise Unavailable(f"tensorflow/tf_keras is not installed ({e})") from e
  opt = tf_keras.optimizers.legacy.RMSprop(
    momentum=path.momentum, centered=path.centered, **HYPERPARAMS
  )
  variables = [tf.Variable(v) for v in params.values()]
  grads = [tf.constant(g) for g in grads.values()]

  @tf.function
  def apply():
    opt.apply_gradients(zip(grads, variables))

  return apply


def _torch(params, grads, path):
  try:
    import torch
  except ImportError as e:
    raise Unavailable(
      "torch is not installed (the CPU build is optional: the default "
      f"package index may only offer the far larger CUDA build) ({e})"
    ) from e
  tensors = []
  for name, value in params.items():
    tensor = torch.nn.Parameter(torch.from_numpy(value.copy()))
    tensor.grad = torch.from_numpy(grads[name])
    tensors.append(tensor)
  opt = torch.optim.RMSprop(
    tensors,
    lr=HYPERPARAMS["learning_rate"],
    alpha=HYPERPARAMS["rho"],
    eps=HYPERPARAMS["epsilon"],
    momentum=path.momentum,
    centered=path.centered,
    foreach=True,
  )
  return opt.step


# Lanes of the XLA roofline's interleaved layout: long enough to vectorise,
# short enough that one row of all the arrays stays in L1.
_ROOFLINE_LANES = 1024


def _xla_roofline(params, grads, path):
  """An in-place jitted pass with exactly the path's traffic.

  The path's ``writes`` arrays are interleaved as ``[n / lanes, writes,
  lanes]``, so XLA:CPU makes one loop that reads each of them and the
  gradient once and writes each of them once (separate arrays would give one
  loop per written array, each reading the gradient again).
  """
  import jax.numpy as jnp

  del params
  g = _flat(grads)
  rows = g.size // _ROOFLINE_LANES
  g = g[: rows * _ROOFLINE_LANES].reshape(rows, 1, _ROOFLINE_LANES)
  slots = jnp.zeros((rows, path.writes, _ROOFLINE_LANES), jnp.float32)

  def update(slots, unused_state, g):
    return slots * 0.5 + g, unused_state

  return _jax_step(update, slots, (), g)


def _flat(tree: dict) -> np.ndarray:
  """All leaves of ``tree`` as one flat float32 array."""
  return np.concatenate([x.ravel() for x in tree.values()])


@functools.cache
def _roofline_library():
  """Compiles ``roofline.c`` into a temporary folder and loads it."""
  import ctypes
  import shutil
  import subprocess
  import tempfile

  compiler = shutil.which("cc") or shutil.which("gcc")
  if compiler is None:
    raise Unavailable("no C compiler (cc) on the PATH")
  library = pathlib.Path(tempfile.mkdtemp(), "roofline.so")
  source = pathlib.Path(__file__).with_name("roofline.c")
  build = subprocess.run(
    [
      compiler,
      "-O3",
      "-march=native",
      "-fopenmp",
      "-fno-math-errno",
      "-ffp-contract=off",
      "-shared",
      "-fPIC",
      str(source),
      "-o",
      str(library),
    ],
    capture_output=True,
    text=True,
    check=False,
  )
  if build.returncode:
    raise Unavailable(f"{compiler} failed: {build.stderr.strip()[-300:]}")
  lib = ctypes.CDLL(str(library))
  lib.step.restype = None
  lib.step.argtypes = (
    [ctypes.c_void_p] * 5
    + [ctypes.c_size_t, ctypes.c_int, ctypes.c_int]
    + [ctypes.c_float] * 4
  )
  return lib


def _c_roofline(params, grads, path):
  """``roofline.c``'s single pass over the whole tree as one array."""
  lib = _roofline_library()
  g, var = _flat(grads), _flat(params)
  # The slots a path does not use are never touched: one element stands in.
  ms, mg, mom = (
    np.zeros(g.size if used else 1, np.float32)
    for used in (True, path.centered, path.momentum > 0)
  )
  arrays = (g, var, ms, mg, mom)
  args = (
    g.size,
    path.centered,
    path.momentum > 0,
    HYPERPARAMS["learning_rate"],
    HYPERPARAMS["rho"],
    path.momentum,
    HYPERPARAMS["epsilon"],
  )

  def step():
    lib.step(*(a.ctypes.data for a in arrays), *args)

  return step


OURS = "optax_tfrmsprop"
OURS_OPTAX_API = f"{OURS} optax-API"
OURS_XLA = f"{OURS} xla"
ROOFLINE = "XLA roofline"
C_ROOFLINE = "C roofline"

CONTENDERS = (
  Contender(
    OURS,
    "jax",
    _ours_fused("auto"),
    compiled=True,
    description="rmsprop_apply(params, grads, state, ...) (update "
    "and apply fused; the C++ kernel where built), jit, donated",
  ),
  Contender(
    OURS_OPTAX_API,
    "jax",
    _ours_optax_api,
    compiled=True,
    description="rmsprop(...).update + optax.apply_updates "
    '(backend="auto"), jit, donated',
  ),
  Contender(
    OURS_XLA,
    "jax",
    _ours_fused("xla"),
    compiled=True,
    description='rmsprop_apply(..., backend="xla"): the pure XLA '
    "path (what GPU/TPU run), jit, donated",
  ),
  Contender(
    "optax",
    "jax",
    _optax,
    compiled=True,
    description="optax.rmsprop(decay=rho, eps, eps_in_sqrt=momentum"
    " path, momentum or None), jit, donated",
  ),
  Contender(
    "keras3",
    "jax",
    _keras3,
    compiled=True,
    description="keras.optimizers.RMSprop.stateless_apply (JAX "
    "backend), jit, donated",
  ),
  Contender(
    "tf_keras",
    "tf",
    _tf_keras,
    compiled=True,
    description="tf_keras.optimizers.legacy.RMSprop.apply_gradients"
    " in tf.function",
  ),
  Contender(
    "torch",
    "torch",
    _torch,
    description="torch.optim.RMSprop(foreach=True), CPU",
  ),
  Contender(
    ROOFLINE,
    "jax",
    _xla_roofline,
    description="in-place jitted x*0.5+g over the path's arrays "
    "interleaved: reads and writes each once (issue 6)",
  ),
  Contender(
    C_ROOFLINE,
    "jax",
    _c_roofline,
    description="benchmarks/roofline.c: the path's RMSprop step as "
    "one OpenMP/SIMD pass in C (-O3 -march=native), in place on "
    "numpy arrays (issue 9)",
  ),
)

# Timed in every group, interleaved with its contenders, so that a contender
# in another process is compared with numbers taken under the same load.
REFERENCES = (OURS, ROOFLINE, C_ROOFLINE)

# Contenders whose first call is timed ``compile_reps`` times, for the
# compile-time targets (the others once).
COMPILE_TIMED = (OURS, OURS_XLA, "optax")

# The contenders of the largest workload, where time is dearest.
HEADLINE = (OURS, "optax") + REFERENCES
