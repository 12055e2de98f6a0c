"""checkpoint_target for any optax state that contains an RMSpropState.

Chains, masked, multi_transform, inject_hyperparams and MultiSteps, of every
flavor: the target has the state's structure and types, each slot the
sharding of its param, the rest replicated; orbax restores a state saved on
one device onto eight, and training continues bit-identically.
"""

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import optax_tfrmsprop

MASK = {"w": True, "b": False, "layers": [True]}
LABELS = {"w": "rms", "b": "sgd", "layers": ["rms"]}

OPTIMIZERS = {
  "chain": lambda: optax.chain(
    optax.clip(1.0), optax_tfrmsprop.rmsprop(0.01, momentum=0.9)
  ),
  "masked": lambda: optax.masked(
    optax_tfrmsprop.rmsprop(0.01, momentum=0.9, centered=True), MASK
  ),
  "multi_transform": lambda: optax.multi_transform(
    {
      "rms": optax_tfrmsprop.tf1_rmsprop(0.01, centered=True),
      "sgd": optax.sgd(0.1),
    },
    LABELS,
  ),
  "inject_hyperparams": lambda: optax.inject_hyperparams(
    optax_tfrmsprop.keras3_rmsprop, static_args=("momentum",)
  )(learning_rate=0.01, momentum=0.9),
  "multi_steps": lambda: optax.MultiSteps(
    optax_tfrmsprop.rmsprop(0.01, centered=True), every_k_schedule=2
  ),
}


def _params():
  rng = np.random.default_rng(0)
  return {
    "w": rng.standard_normal((8, 4)).astype(np.float32),
    "b": rng.standard_normal(4).astype(np.float32),
    "layers": [rng.standard_normal((2, 8)).astype(np.float32)],
  }


def _layout():
  mesh = jax.make_mesh((8,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))
  return {
    "w": NamedSharding(mesh, P("x")),
    "b": NamedSharding(mesh, P()),
    "layers": [NamedSharding(mesh, P(None, "x"))],
  }


def _train(optimizer, params, state, steps, seed):
  rng = np.random.default_rng(seed)
  step = jax.jit(optimizer.update)
  for _ in range(steps):
    grads = jax.tree.map(
      lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), params
    )
    updates, state = step(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params, state


def _slots(state):
  """Every RMSpropState in ``state``."""
  return [
    s
    for s in jax.tree.leaves(
      state, is_leaf=lambda x: isinstance(x, optax_tfrmsprop.RMSpropState)
    )
    if isinstance(s, optax_tfrmsprop.RMSpropState)
  ]


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_target_restores_onto_eight_devices_and_continues(tmp_path, name):
  optimizer = OPTIMIZERS[name]()
  params, state = _train(
    optimizer, _params(), optimizer.init(_params()), 3, seed=1
  )
  with ocp.CheckpointManager(tmp_path) as manager:
    manager.save(
      1, args=ocp.args.StandardSave({"params": params, "opt_state": state})
    )

  layout = _layout()
  abstract = jax.tree.map(
    lambda p, s: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=s),
    _params(),
    layout,
  )
  target = optax_tfrmsprop.checkpoint_target(optimizer, abstract)
  assert jax.tree.structure(target) == jax.tree.structure(
    jax.eval_shape(optimizer.init, abstract)
  )
  rms_states = _slots(target)
  assert rms_states
  for rms in rms_states:
    for field in ("ms", "mg", "mom"):
      slot = getattr(rms, field)
      for path, leaf in jax.tree_util.tree_flatten_with_path(slot)[0]:
        want = layout
        for key in path:
          want = want[key.key if hasattr(key, "key") else key.idx]
        assert leaf.sharding == want, (field, path)
    assert rms.count.sharding.spec == P()
  if name == "multi_steps":  # Accumulated gradients are params-shaped.
    assert target.acc_grads["w"].sharding == layout["w"]
    assert target.mini_step.sharding.spec == P()
  if name == "masked":  # A masked-out param has no slot.
    assert isinstance(target.inner_state.ms["b"], optax.MaskedNode)

  with ocp.CheckpointManager(
    tmp_path, item_handlers=ocp.StandardCheckpointHandler()
  ) as manager:
    full_target = {"params": abstract, "opt_state": target}
    optax_tfrmsprop.check_checkpoint(manager.item_metadata(1), full_target)
    restored = manager.restore(1, args=ocp.args.StandardRestore(full_target))
  resumed = _train(
    optimizer, restored["params"], restored["opt_state"], 3, seed=2
  )
  expected = _train(optimizer, params, state, 3, seed=2)
  jax.tree.map(np.testing.assert_array_equal, resumed, expected)


def test_slot_without_param_is_named():
  optimizer = optax_tfrmsprop.rmsprop()
  with pytest.raises(ValueError, match=r"The 'ms' slot at 'w' matches no"):
    # The params given do not have the state's tree: a state for {"w"}
    # is checked against params {"v"} only through its slots.
    optax_tfrmsprop.checkpoint_target(
      _OneParamOptimizer(optimizer), {"v": jnp.ones(2)}
    )


class _OneParamOptimizer:
  """An optimizer whose state is always for the param ``w``."""

  def __init__(self, inner):
    self.inner = inner

  def init(self, params):
    del params
    return self.inner.init({"w": jnp.ones(2)})
