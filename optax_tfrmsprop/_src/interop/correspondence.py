"""Which Keras weight is which JAX leaf: one correspondence for every format.

Keras orders a model's weights by creation (``dense/kernel``,
``dense/bias``, ``dense_1/kernel``, ...); a JAX param tree is flattened in
key order (flax's ``Dense_0/bias`` before ``Dense_0/kernel``, ``Dense_10``
before ``Dense_2``). A :class:`Correspondence` pairs the two once, by layer
order and shape or from the user's list of paths, and every reader and writer
of :mod:`optax_tfrmsprop.interop` uses it: weight lists, TF2/TF1 checkpoints,
``.h5`` files and Keras 3 optimizers, in both directions.
"""

import collections
from collections.abc import Iterator, Sequence
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_tfrmsprop._src.interop import common

# Keras' names of weights that flax names otherwise; used only to tell apart
# weights of the same shape within one layer.
_NAME_ALIASES = {
  "gamma": ("scale",),
  "beta": ("bias",),
  "embeddings": ("embedding",),
}

PathLike = str | Sequence[Any]


def _keras_name(variable: Any) -> str:
  """``dense/kernel`` for a tf_keras, TF1 or Keras 3 variable."""
  name = getattr(variable, "path", None) or variable.name
  return re.sub(r":\d+$", "", str(name))


class Correspondence:
  """Which Keras weight is which leaf of a JAX param tree.

  Built by :func:`correspondence`; pass it wherever a reader or writer of
  :mod:`optax_tfrmsprop.interop` takes ``params``. It holds the param tree's
  structure, shapes and dtypes, the Keras weights' names in Keras order (the
  order of ``model.trainable_variables``, in which TF creates the optimizer's
  slots) and, for a tf_keras model, the model itself (a TF2 checkpoint finds
  the weights by their object paths in it).

  Attributes:
    keras_names: the Keras weights' names (``dense/kernel``), in Keras
      order; ``None`` entries when built from a bare param tree.
    jax_paths: the JAX path of each Keras weight (``Dense_0/kernel``), in
      Keras order.
    shapes: the shape of each, in Keras order.
    dtypes: the dtype of each, in Keras order.
    model: the Keras model it was built from, or ``None``.
    variables: the Keras variables, in Keras order, or ``None``.

  Example:
    >>> import jax.numpy as jnp
    >>> import tf_keras
    >>> from optax_tfrmsprop import interop
    >>> model = tf_keras.Sequential([tf_keras.Input((3,)),
    ...                              tf_keras.layers.Dense(2, name="out")])
    >>> params = {"Dense_0": {"bias": jnp.zeros(2),
    ...                       "kernel": jnp.zeros((3, 2))}}
    >>> pairs = interop.correspondence(model, params)
    >>> list(pairs)
    [('out/kernel', 'Dense_0/kernel'), ('out/bias', 'Dense_0/bias')]
    >>> pairs.to_keras(params)[0].shape
    (3, 2)
  """

  def __init__(
    self,
    *,
    treedef,
    key_paths,
    template,
    leaf_index,
    keras_names=None,
    model=None,
    variables=None,
  ):
    self._treedef = treedef
    self._template = tuple(template)  # (shape, dtype) per JAX leaf.
    self._leaf_index = tuple(leaf_index)  # JAX leaf of each Keras weight.
    n = len(self._leaf_index)
    if sorted(self._leaf_index) != list(range(len(self._template))):
      raise ValueError("Every JAX leaf must have exactly one Keras weight.")
    self.keras_names = (
      tuple(keras_names) if keras_names is not None else (None,) * n
    )
    self.model = model
    self.variables = tuple(variables) if variables is not None else None
    self.shapes = tuple(self._template[i][0] for i in self._leaf_index)
    self.dtypes = tuple(self._template[i][1] for i in self._leaf_index)
    self.jax_paths = tuple(
      common.param_path(key_paths[i]) for i in self._leaf_index
    )
    self._object_paths = None

  @classmethod
  def from_tree(cls, params: optax.Params) -> "Correspondence":
    """The correspondence of a tree whose leaf order is Keras' order."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    return cls(
      treedef=treedef,
      key_paths=[path for path, _ in flat],
      template=[common.shape_dtype(leaf) for _, leaf in flat],
      leaf_index=range(len(flat)),
    )

  def __len__(self) -> int:
    return len(self._leaf_index)

  def __iter__(self) -> Iterator[tuple[str | None, str]]:
    return iter(zip(self.keras_names, self.jax_paths))

  def __repr__(self) -> str:
    rows = [
      f"  {k!r} <-> {j!r}  {common.describe(s, d)}"
      for (k, j), s, d in zip(self, self.shapes, self.dtypes)
    ]
    return "Correspondence(\n" + "\n".join(rows) + "\n)"

  def describe(self, i: int) -> str:
    """``Keras weight 'dense/kernel' (JAX path 'Dense_0/kernel')``."""
    if self.keras_names[i] is None:
      return f"param {self.jax_paths[i]!r}"
    return (
      f"Keras weight {self.keras_names[i]!r} (JAX path {self.jax_paths[i]!r})"
    )

  def to_keras(self, tree: Any) -> list[Any]:
    """The leaves of a params-shaped tree (params, a slot), in Keras order.

    Args:
      tree: a tree with the structure of the params.

    Returns:
      Its leaves, one per Keras weight, in Keras order.

    Raises:
      ValueError: if the tree's structure is not the params'.
    """
    leaves, treedef = jax.tree.flatten(tree)
    if treedef != self._treedef:
      raise ValueError(
        "The tree does not have the structure of the params this "
        f"correspondence was built for: {treedef} vs {self._treedef}."
      )
    return [leaves[i] for i in self._leaf_index]

  def checked_to_keras(self, tree: Any, what: str) -> list[Any]:
    """The leaves of ``tree`` in Keras order, each checked against its param.

    What a writer calls on the params and every slot before it changes
    anything: a tree of other params (a state for other variables) would
    otherwise be written position by position under the wrong names.

    Args:
      tree: a tree with the structure, shapes and dtypes of the params.
      what: what the tree is (``"value"``, ``"'rms' slot"``), for the error
        messages.

    Returns:
      Its leaves, one per Keras weight, in Keras order.

    Raises:
      ValueError: naming ``what`` and the paths that the tree has and the
        params lack (or the reverse), or the weight whose shape or dtype
        differs.
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    if treedef != self._treedef:
      theirs = {common.param_path(path) for path, _ in flat}
      extra = sorted(theirs - set(self.jax_paths))
      missing = sorted(set(self.jax_paths) - theirs)
      diff = "; ".join(
        text
        for text, paths in (
          (f"it has {extra}, which the params lack", extra),
          (f"it lacks {missing}", missing),
        )
        if paths
      )
      raise ValueError(
        f"The {what} does not have the structure of the params"
        f"{': ' + diff if diff else ''} ({treedef} vs {self._treedef})."
      )
    leaves = self.to_keras(tree)
    for i, leaf in enumerate(leaves):
      self._check_like_param(i, leaf, what)
    return leaves

  def _check_like_param(self, i: int, value: Any, what: str):
    """``value``'s ``(shape, dtype)``; a ValueError unless param ``i``'s."""
    shape, dtype = common.shape_dtype(value)
    if (shape, dtype) != (self.shapes[i], self.dtypes[i]):
      raise ValueError(
        f"The {what} of {self.describe(i)} is "
        f"{common.describe(shape, dtype)}; the param is "
        f"{common.describe(self.shapes[i], self.dtypes[i])}."
      )
    return shape, dtype

  def from_keras(
    self, values: Sequence[Any], what: str = "value"
  ) -> optax.Params:
    """A JAX tree from values in Keras order, checked against the params.

    Args:
      values: one array per Keras weight, in Keras order.
      what: what the values are (``"value"``, ``"'rms' slot"``), for the
        error messages.

    Returns:
      The tree, with the params' structure; jax arrays.

    Raises:
      ValueError: naming the Keras weight and the JAX path of a value of
        the wrong shape or dtype, or a wrong number of values.
    """
    values = list(values)
    if len(values) != len(self):
      raise ValueError(f"Got {len(values)} {what}s for {len(self)} weights.")
    leaves = [None] * len(self)
    for i, value in enumerate(values):
      _, dtype = self._check_like_param(i, value, what)
      leaf = jnp.asarray(np.asarray(value))
      if leaf.dtype != dtype:
        raise ValueError(
          f"The {what} of {self.describe(i)} is {dtype.name}, which jax "
          f"holds as {leaf.dtype.name}: enable 64-bit types "
          "(jax.config.update('jax_enable_x64', True)) before converting."
        )
      leaves[self._leaf_index[i]] = leaf
    return self._treedef.unflatten(leaves)

  def object_paths(self) -> list[tuple[str, ...]]:
    """Each Keras weight's object path in the model, as TF2 checkpoints key it.

    TF2 object checkpoints (``save_weights``, ``tf.train.Checkpoint``,
    SavedModel variables) store a variable under the path of attribute names
    that leads to it from the saved root, the first found breadth first:
    ``("layer_with_weights-0", "kernel")`` for ``model.save_weights``.

    Returns:
      One tuple of names per Keras weight, in Keras order.

    Raises:
      ValueError: if the correspondence was not built from a TF-trackable
        (tf_keras) model, or a weight is not reachable from it.
    """
    if self._object_paths is None:
      if self.model is None or self.variables is None:
        raise ValueError(
          "Finding the weights in a TF2 checkpoint needs the tf_keras "
          "model: build the correspondence with "
          "interop.correspondence(model, params)."
        )
      tf = common.require("tensorflow", "Finding a model's object paths")
      found = {}
      seen = {id(self.model)}
      queue: collections.deque[tuple[Any, tuple[str, ...]]] = collections.deque(
        [(self.model, ())]
      )
      while queue:
        node, path = queue.popleft()
        for name, child in tf.train.TrackableView(node).children(node).items():
          if id(child) in seen:
            continue
          seen.add(id(child))
          found[id(child)] = path + (name,)
          queue.append((child, path + (name,)))
      missing = [i for i, v in enumerate(self.variables) if id(v) not in found]
      if missing:
        raise ValueError(
          f"{self.describe(missing[0])} is not tracked by the model, so "
          "no TF2 checkpoint of it holds it."
        )
      self._object_paths = [found[id(v)] for v in self.variables]
    return list(self._object_paths)


class _Group:
  """A Keras layer or a JAX module: its weights, by position."""

  def __init__(self, key, members):
    self.key = key  # Keras: the layer name; JAX: the module path (a tuple).
    self.members = members  # [(index, short name, shape, dtype)]
    self.signature = tuple(sorted(m[2] for m in members))

  def name(self) -> str:
    if isinstance(self.key, tuple):
      return "/".join(str(k) for k in self.key) or "<root>"
    return self.key or "<root>"

  def listing(self) -> str:
    return ", ".join(
      f"{m[1]!r} {common.describe(m[2], m[3])}" for m in self.members
    )


def _component(key: Any) -> Any:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return getattr(key, attr)
  return key


def _number_key(component: Any) -> tuple[int, str, int]:
  """Sort key: list indices, then ``<stem><number>`` names, then others."""
  if isinstance(component, int):
    return (0, "", component)
  match = re.fullmatch(r"(.*?)(\d+)", str(component))
  if match:
    return (1, match.group(1), int(match.group(2)))
  return (2, str(component), 0)


def _order_known(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
  """Whether the names of modules ``a`` and ``b`` say which comes first.

  They do where they first differ in a list index, or in the number after a
  common stem (flax's ``Dense_2`` and ``Dense_10``; ``linear1`` and
  ``linear2``): the order in which flax and nnx create them.
  """
  for x, y in zip(a, b):
    if x != y:
      kx, ky = _number_key(x), _number_key(y)
      return kx[0] == ky[0] and kx[0] in (0, 1) and kx[1] == ky[1]
  return False


def _keras_side(keras: Any):
  """``(model, variables)`` from a Keras model/layer or a list of variables."""
  if hasattr(keras, "trainable_variables") and not isinstance(
    keras, (list, tuple)
  ):
    variables = list(keras.trainable_variables)
    if not variables:
      raise ValueError(
        "The Keras model has no trainable variables yet: build it first "
        "(call it on a batch, or give it an Input)."
      )
    return keras, variables
  return None, list(keras)


def correspondence(
  keras: Any,
  params: optax.Params,
  *,
  paths: Sequence[PathLike] | None = None,
) -> Correspondence:
  """Pairs a Keras model's weights with the leaves of a JAX param tree.

  Without ``paths``, by layer order and shape:

  * the Keras weights (``model.trainable_variables``, the order in which TF
    creates the optimizer's slots) are grouped by layer (``dense/kernel``
    and ``dense/bias`` form ``dense``); the JAX leaves by module (the path
    without the leaf's own key: ``Dense_0`` for ``Dense_0/kernel``; flax
    ``nnx`` state's ``.value`` is looked through);
  * a layer goes with the module whose leaves have the same shapes; among
    several such, layers in Keras order go with modules in the order their
    names give: list indices, and numbers after a common stem (flax's
    ``Dense_2`` before ``Dense_10``, ``layers/2`` before ``layers/10``,
    ``linear1`` before ``linear2``). Modules whose names say nothing about
    their order (``encoder``, ``decoder``) and have the same shapes are
    ambiguous: the error lists the candidates;
  * within a layer, weights go with leaves of the same shape; same-shaped
    ones by name (``kernel``/``kernel``, ``bias``/``bias``, Keras' ``gamma``
    and ``beta`` with flax's ``scale`` and ``bias``), else the error lists
    the candidates.

  A plain list or tuple of arrays is matched position by position.

  With ``paths``, the user says it: the JAX path of each Keras weight, in
  Keras order (``"Dense_0/kernel"``, or a tuple of keys).

  Args:
    keras: a Keras model or layer (tf_keras, or Keras 3), or a list of
      variables (TF1 graph variables included) in the order the optimizer saw
      them.
    params: the JAX param tree: a flax ``linen`` params dict,
      ``nnx.state(model, nnx.Param)``, or any pytree of arrays (or
      :class:`jax.ShapeDtypeStruct`).
    paths: optionally, the JAX path of every Keras weight, in Keras order.

  Returns:
    The :class:`Correspondence`.

  Raises:
    ValueError: naming the Keras weight and the JAX path (or the candidates)
      when shapes or dtypes differ, a layer has no module, or the match is
      ambiguous.

  Example:
    A Keras MLP and the same MLP in flax linen, whose params flatten as
    ``Dense_0/bias, Dense_0/kernel, Dense_1/bias, ...``:

    >>> import jax, jax.numpy as jnp
    >>> import flax.linen as nn
    >>> import tf_keras
    >>> from optax_tfrmsprop import interop
    >>> keras_model = tf_keras.Sequential([
    ...     tf_keras.Input((3,)), tf_keras.layers.Dense(4, name="hidden"),
    ...     tf_keras.layers.Dense(1, name="out")])
    >>> flax_model = nn.Sequential([nn.Dense(4), nn.Dense(1)])
    >>> params = flax_model.init(jax.random.key(0), jnp.ones((1, 3)))
    >>> pairs = interop.correspondence(keras_model, params["params"])
    >>> for keras_name, jax_path in pairs:
    ...   print(keras_name, "<->", jax_path)
    hidden/kernel <-> layers_0/kernel
    hidden/bias <-> layers_0/bias
    out/kernel <-> layers_1/kernel
    out/bias <-> layers_1/bias
  """
  model, variables = _keras_side(keras)
  names = [_keras_name(v) for v in variables]
  kinfo = [common.shape_dtype(v) for v in variables]
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  key_paths = [common.strip_value_key(tuple(p)) for p, _ in flat]
  jinfo = [common.shape_dtype(leaf) for _, leaf in flat]
  jnames = ["/".join(str(_component(k)) for k in p) for p in key_paths]

  def keras_desc(i):
    return f"Keras weight {names[i]!r} {common.describe(*kinfo[i])}"

  if paths is not None:
    leaf_index = _explicit(
      paths, names, jnames, [p for p, _ in flat], keras_desc
    )
  elif all(
    len(p) == 1 and isinstance(p[0], jax.tree_util.SequenceKey)
    for p in key_paths
  ):
    if len(flat) != len(names):
      raise ValueError(
        f"The params are a sequence of {len(flat)} arrays, matched by "
        f"position, but the Keras model has {len(names)} trainable "
        f"weights: {names}."
      )
    leaf_index = list(range(len(flat)))
  else:
    leaf_index = _by_layers(names, kinfo, key_paths, jinfo, jnames, keras_desc)
  if len(flat) != len(names):
    unmatched = sorted(set(range(len(flat))) - set(leaf_index))
    raise ValueError(
      f"The params have {len(flat)} leaves and the Keras model "
      f"{len(names)} trainable weights; no Keras weight for: "
      f"{[jnames[j] for j in unmatched]}."
    )
  for i, j in enumerate(leaf_index):
    if kinfo[i] != jinfo[j]:
      raise ValueError(
        f"{keras_desc(i)} and JAX path {jnames[j]!r} "
        f"{common.describe(*jinfo[j])} differ in shape or dtype; the "
        "optimizer's slots take their variable's, so convert the params "
        "(or the Keras model) first, or pass `paths=`."
      )
  return Correspondence(
    treedef=treedef,
    key_paths=[p for p, _ in flat],
    template=jinfo,
    leaf_index=leaf_index,
    keras_names=names,
    model=model,
    variables=variables,
  )


def _explicit(paths, names, jnames, full_paths, keras_desc) -> list[int]:
  """Leaf indices of the user's ``paths``, checked one by one."""
  paths = list(paths)
  if len(paths) != len(names):
    raise ValueError(
      f"`paths` has {len(paths)} entries, but the Keras model has "
      f"{len(names)} trainable weights, in this order: {names}."
    )
  index = {}
  for j, name in enumerate(jnames):
    index[name] = j
    index["/".join(str(_component(k)) for k in full_paths[j])] = j
  leaf_index = []
  for i, path in enumerate(paths):
    text = (
      path
      if isinstance(path, str)
      else "/".join(str(_component(k)) for k in path)
    )
    if text not in index:
      raise ValueError(
        f"paths[{i}] = {text!r}, given for {keras_desc(i)}, is not a path "
        f"of the params; their paths are: {jnames}."
      )
    j = index[text]
    if j in leaf_index:
      raise ValueError(
        f"paths[{i}] = {text!r}, given for {keras_desc(i)}, is also given "
        f"for Keras weight {names[leaf_index.index(j)]!r}."
      )
    leaf_index.append(j)
  return leaf_index


def _by_layers(names, kinfo, key_paths, jinfo, jnames, keras_desc) -> list[int]:
  """Leaf indices matched by layer order and shape (see correspondence)."""
  runs = []  # Consecutive weights of one layer.
  for i, name in enumerate(names):
    layer, _, short = name.rpartition("/")
    if not runs or runs[-1][0] != layer:
      runs.append((layer, []))
    runs[-1][1].append((i, short, kinfo[i][0], kinfo[i][1]))
  layers = [_Group(layer, members) for layer, members in runs]
  by_module = collections.defaultdict(list)
  for j, path in enumerate(key_paths):
    module = tuple(_component(k) for k in path[:-1])
    short = str(_component(path[-1])) if path else ""
    by_module[module].append((j, short, jinfo[j][0], jinfo[j][1]))
  modules = [_Group(k, v) for k, v in by_module.items()]

  hint = (
    " Pass `paths=`: the JAX path of each Keras weight, in Keras "
    f"order ({names})."
  )
  by_signature = collections.defaultdict(list)
  for module in modules:
    by_signature[module.signature].append(module)
  pairs = []
  layers_by_signature = collections.defaultdict(list)
  for layer in layers:
    layers_by_signature[layer.signature].append(layer)
  for signature, these_layers in layers_by_signature.items():
    candidates = sorted(
      by_signature.get(signature, []),
      key=lambda m: [_number_key(c) for c in m.key],
    )
    if len(candidates) != len(these_layers):
      others = [m for m in modules if m.signature not in layers_by_signature]
      if len(candidates) < len(these_layers):
        first = (
          f"Keras layer {these_layers[len(candidates)].name()!r} "
          f"({these_layers[len(candidates)].listing()}) has no JAX "
          "module with the same shapes"
        )
      else:
        first = (
          f"JAX module {candidates[len(these_layers)].name()!r} "
          f"({candidates[len(these_layers)].listing()}) has no Keras "
          "layer with the same shapes"
        )
      raise ValueError(
        f"{first}: Keras layers {[layer.name() for layer in these_layers]} and "
        f"JAX modules {[m.name() for m in candidates]} have them. JAX "
        "modules with shapes of no Keras layer: "
        f"{[f'{m.name()} ({m.listing()})' for m in others]}." + hint
      )
    first = these_layers[0].members[0][0]
    options = [
      jnames[m[0]]
      for c in candidates
      for m in c.members
      if m[2] == kinfo[first][0]
    ]
    for a in range(len(candidates)):
      for b in range(a + 1, len(candidates)):
        if not _order_known(candidates[a].key, candidates[b].key):
          raise ValueError(
            f"Keras layers {[layer.name() for layer in these_layers]} have the "
            "same shapes as the JAX modules "
            f"{[m.name() for m in candidates]}, whose names do not say "
            f"which comes first ({candidates[a].name()!r} and "
            f"{candidates[b].name()!r}): candidates for "
            f"{keras_desc(first)}: "
            f"{options}." + hint
          )
    pairs.extend(zip(these_layers, candidates))

  leaf_index: list[Any] = [None] * len(names)
  for layer, module in pairs:
    for i, short, shape, _ in layer.members:
      same = [m for m in module.members if m[2] == shape]
      if len(same) > 1:
        wanted = (short,) + _NAME_ALIASES.get(short, ())
        named = [m for m in same if m[1] in wanted]
        if len(named) != 1:
          raise ValueError(
            f"{keras_desc(i)} has several candidates of its shape in JAX "
            f"module {module.name()!r}: "
            f"{[jnames[m[0]] for m in same]}." + hint
          )
        same = named
      leaf_index[i] = same[0][0]
  for layer, module in pairs:
    chosen = [leaf_index[m[0]] for m in layer.members]
    if len(set(chosen)) != len(chosen):
      raise ValueError(
        f"The weights of Keras layer {layer.name()!r} ({layer.listing()}) "
        f"cannot be told apart in JAX module {module.name()!r} "
        f"({module.listing()})." + hint
      )
  return leaf_index
