"""Training and checkpointing run by test_checkpoint.py, in and out of process.

``python checkpoint_worker.py save DIR`` trains every configuration for
``FIRST_STEPS`` steps and saves params and optimizer state with orbax;
``python checkpoint_worker.py resume DIR OUT`` restores them in a fresh
process, trains ``SECOND_STEPS`` more steps and writes the results to the
``OUT`` npz file. ``python checkpoint_worker.py big-save DIR`` saves a small
step 1, then starts a large step 2 and reports it, to be killed mid-save.

The optimizers use ``backend="auto"``: the ``OPTAX_TFRMSPROP_BACKEND``
environment variable picks the CPU kernel or the XLA path.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

import optax_tfrmsprop

FIRST_STEPS = 4
SECOND_STEPS = 4

CONFIGS = {
  "plain": lambda: optax_tfrmsprop.rmsprop(0.01),
  "centered": lambda: optax_tfrmsprop.rmsprop(0.01, centered=True),
  "momentum": lambda: optax_tfrmsprop.rmsprop(0.01, momentum=0.9),
  "centered_momentum": lambda: optax_tfrmsprop.rmsprop(
    0.01, momentum=0.9, centered=True
  ),
  "clipnorm_decay_xla": lambda: optax_tfrmsprop.rmsprop(
    0.01, momentum=0.5, clipnorm=0.5, decay=0.05, rounding="tf_xla"
  ),
  "schedule_global_clipnorm": lambda: optax_tfrmsprop.rmsprop(
    optax.exponential_decay(0.01, 3, 0.5), global_clipnorm=1.0
  ),
  "injected": lambda: optax.inject_hyperparams(
    optax_tfrmsprop.rmsprop, static_args=("momentum", "centered")
  )(learning_rate=0.01, momentum=0.9, centered=True),
  "sparse_centered": lambda: optax_tfrmsprop.rmsprop(0.01, centered=True),
  "sparse_centered_momentum": lambda: optax_tfrmsprop.rmsprop(
    0.01, momentum=0.9, centered=True
  ),
}
# These train "w" as an embedding table: its gradient is an IndexedSlices of
# the rows SPARSE_IDS looks up (TF's sparse paths), the others' are dense.
SPARSE = ("sparse_centered", "sparse_centered_momentum")
SPARSE_IDS = np.array([5, 1, 5, 7, 2, 5], np.int32)  # rows 0, 3, 4, 6 idle


def init_params() -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  return {
    "w": rng.standard_normal((8, 4)).astype(np.float32),
    "b": rng.standard_normal(4).astype(np.float32),
    "layers": [rng.standard_normal((2, 8)).astype(np.float32)],
  }


def _loss(params):
  # Elementwise in the params, so its gradient is computed the same way on any
  # device layout and the comparisons isolate the optimizer.
  return sum(
    jnp.sum(jnp.sin(3 * p) + p * p / 2) for p in jax.tree.leaves(params)
  )


def _sparse_grads(params):
  """``_loss`` of the rows of ``w`` that SPARSE_IDS looks up, and the rest."""
  others = {k: v for k, v in params.items() if k != "w"}
  _, (w_grad, others_grad) = optax_tfrmsprop.sparse_embedding_value_and_grad(
    lambda rows, others: _loss([rows, others]), params["w"], SPARSE_IDS, others
  )
  return {"w": w_grad, **others_grad}


def train(optimizer, params, opt_state, steps, *, sparse=False):
  """Runs ``steps`` jitted optimizer steps; returns ``(params, opt_state)``.

  With ``sparse``, ``w``'s gradient is an IndexedSlices (see ``SPARSE``).
  """

  @jax.jit
  def step(params, opt_state):
    if sparse:
      grads = _sparse_grads(params)
    else:
      grads = jax.grad(_loss)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax_tfrmsprop.apply_updates(params, updates), opt_state

  for _ in range(steps):
    params, opt_state = step(params, opt_state)
  return params, opt_state


def make_keras_optimizer():
  return optax_tfrmsprop.RMSprop(0.01, momentum=0.9, centered=True)


def train_keras(optimizer, variables, steps):
  """``steps`` of the Keras-style class's ``apply_gradients``."""
  grad_fn = jax.jit(jax.grad(_loss))
  for _ in range(steps):
    grads = grad_fn([v.value for v in variables])
    optimizer.apply_gradients(zip(grads, variables))


def keras_arrays(optimizer, variables) -> dict[str, np.ndarray]:
  return {
    **flat_arrays("keras/variables", [v.numpy() for v in variables]),
    **flat_arrays("keras/weights", optimizer.get_weights()),
  }


def _as_ndarrays(weights):
  # orbax saves arrays, not numpy scalars such as the int64 iteration count.
  return [np.asarray(w) for w in weights]


def keras_start():
  variables = [
    optax_tfrmsprop.Variable(p) for p in jax.tree.leaves(init_params())
  ]
  optimizer = make_keras_optimizer()
  optimizer.build(variables)
  return optimizer, variables


def flat_arrays(name, tree) -> dict[str, np.ndarray]:
  """``tree``'s leaves as numpy arrays keyed by ``name`` and tree path."""
  return {
    f"{name}{jax.tree_util.keystr(path)}": np.asarray(leaf)
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


def _save(directory):
  for name, make in CONFIGS.items():
    optimizer = make()
    params = jax.tree.map(jnp.asarray, init_params())
    params, opt_state = train(
      optimizer,
      params,
      optimizer.init(params),
      FIRST_STEPS,
      sparse=name in SPARSE,
    )
    with ocp.CheckpointManager(f"{directory}/{name}") as manager:
      manager.save(
        FIRST_STEPS,
        args=ocp.args.StandardSave({"params": params, "opt_state": opt_state}),
      )
  # The Keras-style class: its state is its weight list (get_weights).
  optimizer, variables = keras_start()
  train_keras(optimizer, variables, FIRST_STEPS)
  with ocp.CheckpointManager(f"{directory}/keras") as manager:
    manager.save(
      FIRST_STEPS,
      args=ocp.args.StandardSave(
        {
          "variables": [v.numpy() for v in variables],
          "weights": _as_ndarrays(optimizer.get_weights()),
        }
      ),
    )


def _resume(directory, out):
  results = {}
  for name, make in CONFIGS.items():
    optimizer = make()
    abstract_params = jax.eval_shape(init_params)
    target = {
      "params": abstract_params,
      "opt_state": optax_tfrmsprop.checkpoint_target(
        optimizer, abstract_params
      ),
    }
    # A fresh manager reads item metadata only when told the item's handler.
    with ocp.CheckpointManager(
      f"{directory}/{name}", item_handlers=ocp.StandardCheckpointHandler()
    ) as manager:
      step = manager.latest_step()
      optax_tfrmsprop.check_checkpoint(manager.item_metadata(step), target)
      restored = manager.restore(step, args=ocp.args.StandardRestore(target))
    # The state comes back as the optimizer's own types, not dicts.
    expected_type = jax.tree.structure(optimizer.init(init_params()))
    assert jax.tree.structure(restored["opt_state"]) == expected_type, name
    params, opt_state = train(
      optimizer,
      restored["params"],
      restored["opt_state"],
      SECOND_STEPS,
      sparse=name in SPARSE,
    )
    results.update(flat_arrays(f"{name}/params", params))
    results.update(flat_arrays(f"{name}/opt_state", opt_state))
  optimizer, variables = keras_start()
  with ocp.CheckpointManager(f"{directory}/keras") as manager:
    # numpy leaves in the target restore as numpy, keeping the int64 count.
    restored = manager.restore(
      FIRST_STEPS,
      args=ocp.args.StandardRestore(
        {
          "variables": [v.numpy() for v in variables],
          "weights": _as_ndarrays(optimizer.get_weights()),
        }
      ),
    )
  for variable, value in zip(variables, restored["variables"]):
    variable.assign(value)
  optimizer.set_weights(restored["weights"])
  train_keras(optimizer, variables, SECOND_STEPS)
  results.update(keras_arrays(optimizer, variables))
  np.savez(out, **results)


def _big_save(directory):
  with ocp.CheckpointManager(directory) as manager:
    manager.save(1, args=ocp.args.StandardSave({"w": jnp.ones(4)}))
    manager.wait_until_finished()
    big = {"w": jnp.ones((64, 1024, 1024), jnp.float32)}  # 256 MiB
    manager.save(2, args=ocp.args.StandardSave(big))
    print("saving step 2", flush=True)
    manager.wait_until_finished()
    print("saved step 2", flush=True)


if __name__ == "__main__":
  command, *arguments = sys.argv[1:]
  {"save": _save, "resume": _resume, "big-save": _big_save}[command](*arguments)
