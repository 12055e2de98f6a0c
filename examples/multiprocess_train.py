r"""Data-parallel training with ``optax_tfrmsprop.rmsprop`` across processes.

Every process runs this same script. JAX's runtime forms one global mesh of
all processes' devices; the batch is split along it, the params and the
optimizer state are replicated, and the gradients are averaged across devices
and processes. The optimizer itself adds no communication.

Two ways to average are offered. ``--reduction=all-reduce`` takes the
gradient of the global mean loss and lets XLA insert the all-reduce: the usual
choice, but the summation order of the all-reduce depends on the collective
implementation, so runs on different process layouts differ in the last bits
(and RMSprop's normalisation carries those bits on). ``--reduction=ordered``
(the default) all-gathers the per-device gradients, which moves bits without
arithmetic, and sums them in device order on every device: the result depends
only on the number of devices, so two processes with two devices each
reproduce one process with four devices bit for bit.

On one machine, two processes with two CPU devices each (gloo collectives)::

  python examples/multiprocess_train.py --coordinator-address=127.0.0.1:12345 \
      --num-processes=2 --process-id=0 --cpu-devices=2 &
  python examples/multiprocess_train.py --coordinator-address=127.0.0.1:12345 \
      --num-processes=2 --process-id=1 --cpu-devices=2

On a cluster, leave out the flags that the cluster environment already gives
JAX (SLURM, Open MPI, Kubernetes, Cloud TPU pods); see docs/distributed.md.
"""

import argparse
import sys

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax

import optax_tfrmsprop

FEATURES = 8
HIDDEN = 16
GLOBAL_BATCH = 32


def make_data(steps: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """The global batches of every step, identical in every process."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((steps, GLOBAL_BATCH, FEATURES)).astype(np.float32)
  w = rng.standard_normal((FEATURES, 1)).astype(np.float32)
  y = np.tanh(x @ w) + 0.1 * rng.standard_normal((steps, GLOBAL_BATCH, 1))
  return x, y.astype(np.float32)


def init_params(seed: int = 1) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {
    "w1": (rng.standard_normal((FEATURES, HIDDEN)) / 3).astype(np.float32),
    "b1": np.zeros(HIDDEN, np.float32),
    "w2": (rng.standard_normal((HIDDEN, 1)) / 4).astype(np.float32),
    "b2": np.zeros(1, np.float32),
  }


def loss_fn(params, x, y):
  hidden = jnp.tanh(x @ params["w1"] + params["b1"])
  return jnp.mean((hidden @ params["w2"] + params["b2"] - y) ** 2)


def make_optimizer() -> optax.GradientTransformationExtraArgs:
  return optax_tfrmsprop.rmsprop(
    learning_rate=0.01, momentum=0.9, centered=True, global_clipnorm=1.0
  )


def ordered_mean_grads(mesh: jax.sharding.Mesh):
  """The gradient of the global mean loss, summed in a fixed device order."""
  n = mesh.size

  # The all-gathered sum is the same on every device, but shard_map cannot
  # infer that; hence check_vma=False.
  @jax.shard_map(
    mesh=mesh,
    in_specs=(P(), P("data"), P("data")),
    out_specs=P(),
    check_vma=False,
  )
  def grads(params, x, y):
    local = jax.grad(loss_fn)(params, x, y)  # the mean over local rows
    every = jax.lax.all_gather(local, "data")
    return jax.tree.map(lambda g: jnp.sum(g, axis=0) / n, every)

  return grads


def train(steps: int, reduction: str = "ordered") -> dict[str, np.ndarray]:
  """Trains on all devices of all processes; returns the final params.

  Args:
    steps: the number of optimizer steps.
    reduction: how gradients are averaged across devices: ``"ordered"`` or
      ``"all-reduce"`` (see the module docstring).

  Returns:
    The params after training, as numpy arrays (they are replicated, so every
    process can read them).
  """
  mesh = jax.make_mesh(
    (jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,)
  )
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P("data"))
  optimizer = make_optimizer()
  params = jax.device_put(init_params(), replicated)
  opt_state = optimizer.init(params)

  if reduction == "ordered":
    grad_fn = ordered_mean_grads(mesh)
  elif reduction == "all-reduce":
    grad_fn = jax.grad(loss_fn)
  else:
    raise ValueError(
      f"reduction must be 'ordered' or 'all-reduce', got {reduction!r}."
    )

  @jax.jit
  def step(params, opt_state, x, y):
    loss = loss_fn(params, x, y)
    grads = grad_fn(params, x, y)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  x_all, y_all = make_data(steps)
  # This process feeds only its own rows of each global batch.
  rows = GLOBAL_BATCH // jax.process_count()
  local = slice(jax.process_index() * rows, (jax.process_index() + 1) * rows)
  for t in range(steps):
    x = jax.make_array_from_process_local_data(batch_sharding, x_all[t, local])
    y = jax.make_array_from_process_local_data(batch_sharding, y_all[t, local])
    params, opt_state, loss = step(params, opt_state, x, y)
  if jax.process_index() == 0:
    print(
      f"final loss {float(loss):.6f} on {jax.device_count()} devices in "
      f"{jax.process_count()} processes",
      flush=True,
    )
  return jax.tree.map(np.asarray, params)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--coordinator-address",
    default=None,
    help="host:port of process 0; omit where the cluster "
    "environment provides it",
  )
  parser.add_argument("--num-processes", type=int, default=None)
  parser.add_argument("--process-id", type=int, default=None)
  parser.add_argument(
    "--cpu-devices",
    type=int,
    default=None,
    help="run on this many CPU devices per process (gloo "
    "collectives), for machines without accelerators",
  )
  parser.add_argument(
    "--initialization-timeout",
    type=int,
    default=300,
    help="seconds to wait for all processes to connect",
  )
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument(
    "--reduction", choices=("ordered", "all-reduce"), default="ordered"
  )
  parser.add_argument(
    "--output",
    default=None,
    help="process 0 saves the final params here (.npz)",
  )
  args = parser.parse_args(argv)

  if args.cpu_devices is not None:
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", args.cpu_devices)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if args.num_processes != 1:
    jax.distributed.initialize(
      coordinator_address=args.coordinator_address,
      num_processes=args.num_processes,
      process_id=args.process_id,
      initialization_timeout=args.initialization_timeout,
    )
  params = train(args.steps, args.reduction)
  if args.output is not None and jax.process_index() == 0:
    np.savez(args.output, **params)
  if args.num_processes != 1:
    jax.distributed.shutdown()


if __name__ == "__main__":
  main(sys.argv[1:])
