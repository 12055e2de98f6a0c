"""Restore targets and checks for checkpointed optimizer states.

The state is a plain pytree, so any pytree checkpointer (orbax) saves it. Two
things are left to the caller on restore, and these helpers do them:

* the target: orbax restores into the given tree's type (our
  :class:`RMSpropState`, not a dict) and onto the given shardings, which may
  differ from the saved layout; the step ``count`` must then sit on the params'
  devices too, or the jitted update refuses the mix;
* the check: orbax does not say which leaf of a mismatched tree is wrong,
  and it silently casts a leaf saved in another dtype.

Neither helper imports orbax: they work on shapes, dtypes and tree paths.
"""

import dataclasses
from typing import Any

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec
import numpy as np
import optax

from optax_tfrmsprop._src import base


def _sharding_of(leaf: Any) -> jax.sharding.Sharding:
  sharding = getattr(leaf, "sharding", None)
  if sharding is None:
    # Host arrays and unsharded abstract leaves restore onto the first
    # local device, where jax would put them.
    return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return sharding


def _replicated_like(sharding: jax.sharding.Sharding) -> jax.sharding.Sharding:
  """A sharding that replicates a value over ``sharding``'s devices."""
  if isinstance(sharding, NamedSharding):
    return NamedSharding(sharding.mesh, PartitionSpec())
  devices = sharding._device_assignment
  if len(devices) == 1:
    return jax.sharding.SingleDeviceSharding(devices[0])
  mesh = jax.sharding.Mesh(np.asarray(devices), ("devices",))
  return NamedSharding(mesh, PartitionSpec())


def checkpoint_target(
  optimizer: optax.GradientTransformation, params: optax.Params
) -> optax.OptState:
  """The abstract optimizer state to restore a checkpoint into.

  Slots get the shape, dtype and sharding of their parameter; every other leaf
  (the step ``count``, injected hyperparameters) is replicated over the
  devices of the params. No array is allocated, so the params may themselves be
  :class:`jax.ShapeDtypeStruct` with shardings. Works for any optax state that
  contains an :class:`~optax_tfrmsprop.RMSpropState` (of any flavor):
  ``optax.chain``, ``optax.masked`` and ``optax.multi_transform`` (whose
  slots cover only some params), ``optax.inject_hyperparams``,
  ``optax.MultiSteps`` (its accumulated gradients get their param's
  sharding too), since it follows ``optimizer.init``:

  * each slot of an ``RMSpropState`` takes the sharding of the param at the
    same tree path (a masked-out param has no slot);
  * any other subtree shaped like the whole params (``MultiSteps``'
    ``acc_grads``, another transformation's trace) takes the params'
    shardings;
  * every other leaf is replicated.

  Args:
    optimizer: the transformation whose state was saved (anything with an
      ``init``, e.g. ``optax.MultiSteps``).
    params: the params (arrays or :class:`jax.ShapeDtypeStruct`), laid out as
      the restored state should be.

  Returns:
    A tree of :class:`jax.ShapeDtypeStruct` with the structure and types of
    ``optimizer.init(params)``: pass it to orbax's ``StandardRestore``.

  Raises:
    ValueError: if a slot's path is not a path of the params.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import optax_tfrmsprop
    >>> opt = optax.masked(optax_tfrmsprop.rmsprop(momentum=0.9),
    ...                    {"w": True, "b": False})
    >>> target = optax_tfrmsprop.checkpoint_target(
    ...     opt, {"w": jnp.ones(3), "b": jnp.ones(2)})
    >>> target.inner_state.mom["w"].shape, target.inner_state.mom["b"]
    ((3,), MaskedNode())
  """
  shapes = jax.eval_shape(optimizer.init, params)
  flat, params_def = jax.tree_util.tree_flatten_with_path(params)
  shardings = [_sharding_of(leaf) for _, leaf in flat]
  by_path = {
    tuple(path): (sharding, np.shape(leaf))
    for (path, leaf), sharding in zip(flat, shardings)
  }
  replicated = _replicated_like(
    shardings[0] if shardings else _sharding_of(None)
  )

  def with_sharding(leaf, sharding):
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)

  def slot_target(field, tree):
    def one(path, leaf):
      if tuple(path) not in by_path:
        raise ValueError(
          f"The {field!r} slot at {_path_name(path)!r} matches no param; "
          "pass the params the optimizer was initialised with."
        )
      return with_sharding(leaf, by_path[tuple(path)][0])

    return jax.tree_util.tree_map_with_path(one, tree)

  param_shapes = [np.shape(leaf) for _, leaf in flat]

  def params_shaped(node) -> bool:
    if isinstance(node, jax.ShapeDtypeStruct) and (
      params_def.num_nodes != 1 or node.shape == ()
    ):
      return False  # A leaf is params-shaped only if the params are one array.
    leaves, treedef = jax.tree.flatten(node)
    return (
      treedef == params_def
      and bool(leaves)
      and all(np.shape(a) == b for a, b in zip(leaves, param_shapes))
    )

  def is_node(node) -> bool:
    return isinstance(node, base.RMSpropState) or params_shaped(node)

  def target(node):
    if isinstance(node, base.RMSpropState):
      targets: dict[str, Any] = {
        field: slot_target(field, getattr(node, field))
        for field in ("ms", "mg", "mom")
      }
      targets["count"] = with_sharding(node.count, replicated)
      return dataclasses.replace(node, **targets)
    if is_node(node):
      return jax.tree.unflatten(
        params_def,
        [
          with_sharding(leaf, sharding)
          for leaf, sharding in zip(jax.tree.leaves(node), shardings)
        ],
      )
    return with_sharding(node, replicated)

  return jax.tree.map(target, shapes, is_leaf=is_node)


def _path_name(path) -> str:
  """``ms/w/0``: a tree path written the same for dicts and dataclasses.

  Checkpointers store a dataclass as a dict of its fields, so attribute,
  dict and sequence keys must compare equal by name.
  """
  names = []
  for key in path:
    for attr in ("name", "key", "idx"):
      if hasattr(key, attr):
        names.append(str(getattr(key, attr)))
        break
    else:
      names.append(str(key))
  return "/".join(names) or "<root>"


_READ_METADATA_HINT = (
  "With orbax, read it with CheckpointManager(..., "
  "item_handlers=ocp.StandardCheckpointHandler()) and pass "
  "item_metadata(step)."
)


def _saved_tree(saved: Any) -> Any:
  """The tree of leaf metadata inside what orbax's metadata calls return.

  ``StandardCheckpointer().metadata(path)`` and ``CheckpointManager.metadata
  (step)`` return a ``StepMetadata`` (orbax 0.12), which keeps the item's
  metadata in ``item_metadata``; ``CheckpointManager.item_metadata(step)``
  returns a ``TreeMetadata``, which keeps the tree in ``tree``. Orbax is not
  imported: both are recognised by those attributes.

  Args:
    saved: a ``StepMetadata``, a ``TreeMetadata`` or a tree.

  Returns:
    The tree of leaves.
  """
  item = getattr(saved, "item_metadata", None)
  # A CheckpointManager has an item_metadata method; only unwrap data.
  if item is not None and not callable(item):
    saved = item
  return getattr(saved, "tree", saved)


def _leaves_by_name(tree) -> dict[str, Any]:
  return {
    _path_name(path): leaf
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


def check_checkpoint(saved: Any, target: Any) -> None:
  """Raises a ValueError naming the leaves where a checkpoint and target differ.

  Compares the saved tree (orbax's ``CheckpointManager.item_metadata(step)``,
  the ``StepMetadata`` of ``StandardCheckpointer().metadata(path)``, or any
  tree of leaves with ``shape`` and ``dtype``) with the restore target
  leaf by leaf: missing or unexpected leaves (e.g. a slot of another
  configuration, such as ``mg`` saved by a centered optimizer), then shapes and
  dtypes. Call it before restoring: orbax reports a shape mismatch without
  the leaf's name and restores a different dtype by casting.

  Args:
    saved: the saved tree's metadata.
    target: the restore target, e.g. from :func:`checkpoint_target`.

  Returns:
    None: it returns only when every leaf matches.

  Raises:
    ValueError: naming every mismatched leaf by its path (``mom/w``), or
      saying how to read the metadata when ``saved`` holds no array metadata.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import optax_tfrmsprop
    >>> saved = jax.eval_shape(optax_tfrmsprop.rmsprop().init, jnp.ones(3))
    >>> target = jax.eval_shape(optax_tfrmsprop.rmsprop().init, jnp.ones(4))
    >>> optax_tfrmsprop.check_checkpoint(saved, target)
    Traceback (most recent call last):
    ...
    ValueError: The checkpoint does not match the optimizer state:
      ms: saved float32(3,), expected float32(4,)
  """
  saved_leaves = _leaves_by_name(_saved_tree(saved))
  target_leaves = _leaves_by_name(target)
  if target_leaves and not saved_leaves:
    raise ValueError(
      f"The checkpoint metadata holds no arrays. {_READ_METADATA_HINT}"
    )
  # Leaves without a shape and dtype are not array metadata: comparing them
  # would report every expected leaf missing.
  opaque = [
    f"{name} ({type(leaf).__name__})"
    for name, leaf in saved_leaves.items()
    if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype"))
  ]
  if opaque:
    raise ValueError(
      "The checkpoint metadata is not a tree of array metadata (leaves "
      f"without a shape and dtype: {', '.join(opaque)}). "
      f"{_READ_METADATA_HINT}"
    )
  problems = [
    f"{name}: expected by the optimizer, not in the checkpoint"
    for name in target_leaves
    if name not in saved_leaves
  ] + [
    f"{name}: in the checkpoint, not in the optimizer state"
    for name in saved_leaves
    if name not in target_leaves
  ]
  for name, want in target_leaves.items():
    have = saved_leaves.get(name)
    if have is None:
      continue
    have_type = (np.dtype(have.dtype), tuple(have.shape))
    want_type = (np.dtype(want.dtype), tuple(want.shape))
    if have_type != want_type:
      problems.append(
        f"{name}: saved {have_type[0]}{have_type[1]}, expected "
        f"{want_type[0]}{want_type[1]}"
      )
  if problems:
    raise ValueError(
      "The checkpoint does not match the optimizer state:\n  "
      + "\n  ".join(problems)
    )
