"""TF1 ``tf.compat.v1.train.Saver`` checkpoints of RMSPropOptimizer, both ways.

TF1 names every slot of a variable ``<var>/<optimizer name>`` and the graph
makes the names unique in creation order (``rms``, ``mg`` when centered,
``momentum``: the slot order of ``base.SEMANTICS["tf1"]``), so the slots of
``dense/kernel`` are ``dense/kernel/RMSProp``, ``dense/kernel/RMSProp_1``,
... :func:`state_from_tf1_checkpoint` reads them into a
:class:`~optax_tfrmsprop.TF1RMSpropState`; :func:`state_to_tf1_checkpoint`
writes one that ``Saver.restore`` loads into a TF1 graph. TensorFlow is
imported only inside them.
"""

import collections
import os
import re
from typing import Any

import jax
import numpy as np
import optax

from optax_tfrmsprop._src import base
from optax_tfrmsprop._src.interop import common
from optax_tfrmsprop._src.interop import correspondence as correspondence_lib

VarNames = Any | correspondence_lib.Correspondence


def tf1_slot_names(
  var_name: str, *, centered: bool, optimizer_name: str = "RMSProp"
) -> dict[str, str]:
  """The checkpoint keys of TF1 ``RMSPropOptimizer``'s slots for one variable.

  TF1 names every slot of ``var`` ``<var>/<optimizer_name>`` and the graph
  makes the names unique in creation order: ``rms``, then ``mg`` (only when
  centered), then ``momentum``.

  Args:
    var_name: the variable's name in the graph, without ``:0``.
    centered: whether the optimizer was centered (which shifts the suffixes).
    optimizer_name: the optimizer's ``name`` argument.

  Returns:
    A dict from state field (``ms``, ``mg``, ``mom``) to checkpoint key.

  Example:
    >>> tf1_slot_names("dense/kernel", centered=True)["mom"]
    'dense/kernel/RMSProp_2'
  """
  fields = [
    field for field, _ in common.slot_names("tf1") if field != "mg" or centered
  ]
  prefix = f"{var_name}/{optimizer_name}"
  return {
    field: prefix if i == 0 else f"{prefix}_{i}"
    for i, field in enumerate(fields)
  }


def _stem(name: str) -> str:
  """``name`` without the ``_1``, ``_2``, ... suffixes TF1 adds to unique it."""
  match = re.fullmatch(r"(.*?)(?:_[1-9][0-9]*)*", name)
  return match.group(1) if match else name


def _check_slot_layout(
  stored, names, pairs, *, centered: bool, optimizer_name: str, path: str
) -> None:
  """Raises unless each variable's slot keys are exactly one optimizer's.

  TF1 uniques a slot's scope name ``<var>/<name>`` by trying ``<name>``,
  then ``<name>_1``, ``<name>_2``, ...: the first free one, per variable, in
  creation order. One ``RMSPropOptimizer`` on a variable thus takes the
  keys of :func:`tf1_slot_names` (increasing, in its slot order) when it is
  the only optimizer whose name has the same stem (the name without such
  suffixes); any other, before or after it (a second ``RMSProp``, or an
  ``RMSProp_1`` whose first slot collides with ``RMSProp``'s second), takes
  keys of that stem too, and the names no longer say whose slot is whose
  (a centered optimizer and a plain one leave ``RMSProp`` to ``RMSProp_4``
  in either order). So the read is sound only
  when the keys of the stem are exactly the expected ones; a centered
  checkpoint read with ``centered=False`` has one more (its ``momentum``).
  Keys that share no stem with ``optimizer_name`` (another optimizer's
  ``Adam``) do not interfere and are ignored.

  Args:
    stored: the checkpoint's keys.
    names: the TF1 variable names, in ``pairs``' order.
    pairs: their correspondence, for the messages.
    centered: whether the optimizer read is centered.
    optimizer_name: its ``name``.
    path: the checkpoint, for the messages.

  Raises:
    ValueError: naming the variable and the keys, before anything is read.
  """
  stem = _stem(optimizer_name)
  family = collections.defaultdict(set)
  for key in stored:
    var, _, base = key.rpartition("/")
    if var and _stem(base) == stem:
      family[var].add(key)
  for i, name in enumerate(names):
    keys = tf1_slot_names(
      name, centered=centered, optimizer_name=optimizer_name
    )
    extra = sorted(family[name] - set(keys.values()))
    if not extra:
      continue  # A missing key is named when it is read.
    as_centered = tf1_slot_names(
      name, centered=True, optimizer_name=optimizer_name
    )
    if not centered and family[name] == set(as_centered.values()):
      raise ValueError(
        f"The checkpoint {path!r} looks centered: for "
        f"{pairs.describe(i)} it holds {as_centered['mom']!r}, the "
        "'momentum' slot of a centered "
        f"RMSPropOptimizer(name={optimizer_name!r}), whose "
        f"{keys['mom']!r} is its 'mg' slot, not 'momentum'. Pass "
        "centered=True."
      )
    raise ValueError(
      f"The checkpoint {path!r} holds {extra} besides "
      f"{sorted(keys.values())}, the slots of {pairs.describe(i)} that one "
      f"RMSPropOptimizer(name={optimizer_name!r}, centered={centered}) "
      "makes: TF1 numbers the slots of every optimizer on a variable whose "
      f"name has the stem {stem!r} in one sequence, so which slot is whose "
      "cannot be told from the names. Save the checkpoint with a Saver "
      "whose var_list holds the variables and this optimizer's slots only, "
      "or give the optimizers names with different stems."
    )


def _names_and_pairs(
  var_names: VarNames, shapes_of
) -> tuple[list[str], correspondence_lib.Correspondence]:
  """``(names in order, correspondence)`` for a name tree or a correspondence.

  Args:
    var_names: a tree of TF variable names (its leaf order is used), or a
      correspondence whose Keras names are the TF1 names.
    shapes_of: name -> ``(shape, dtype)``, for a name tree's template.
  """
  if isinstance(var_names, correspondence_lib.Correspondence):
    return [str(name) for name in var_names.keras_names], var_names
  names = jax.tree.leaves(var_names)
  template = jax.tree.unflatten(
    jax.tree.structure(var_names),
    [jax.ShapeDtypeStruct(*shapes_of(n)) for n in names],
  )
  return names, correspondence_lib.Correspondence.from_tree(template)


def state_from_tf1_checkpoint(
  checkpoint: Any,
  var_names: VarNames,
  *,
  centered: bool = False,
  optimizer_name: str = "RMSProp",
  global_step_name: str | None = None,
) -> common.RestoredRMSprop:
  """Reads a TF1 ``tf.compat.v1.train.Saver`` checkpoint of RMSPropOptimizer.

  Args:
    checkpoint: a checkpoint prefix (``.../model.ckpt-100``) or a directory,
      whose latest checkpoint is read.
    var_names: a tree of TF variable names (without ``:0``), whose structure
      the params take; or a :class:`~optax_tfrmsprop.interop.Correspondence`
      built from the TF1 variables (or a model whose variable names the
      graph used) and a JAX param tree.
    centered: whether the TF1 optimizer was centered.
    optimizer_name: the TF1 optimizer's ``name`` (``"RMSProp"`` by default).
    global_step_name: if given, the name of the global step variable, which
      becomes ``state.count`` (what a schedule passed to
      :func:`~optax_tfrmsprop.tf1_rmsprop` is called with); else 0.

  Returns:
    A :class:`~optax_tfrmsprop.interop.RestoredRMSprop` with a
    :class:`~optax_tfrmsprop.TF1RMSpropState`, for
    :func:`~optax_tfrmsprop.tf1_rmsprop` with the same ``centered``;
    ``hyperparams`` holds ``global_step`` when it was read (TF1 checkpoints
    hold no hyperparameters).

  Raises:
    ValueError: when a variable or one of its slots is not in the
      checkpoint, the checkpoint holds more slot keys for a variable than
      one optimizer named ``optimizer_name`` with this ``centered`` makes
      (a centered checkpoint read with ``centered=False``; or another
      optimizer whose name has the same stem, whose slots TF1 numbers in
      the same sequence, so that the names are ambiguous), or the global
      step is beyond int32.
    ImportError: when TensorFlow is not installed, naming the extra.

  Example:
    >>> import tempfile
    >>> import tensorflow as tf
    >>> from optax_tfrmsprop import interop
    >>> with tf.Graph().as_default():
    ...   v = tf.compat.v1.get_variable("v", initializer=[1.0, 2.0])
    ...   opt = tf.compat.v1.train.RMSPropOptimizer(0.1, momentum=0.9)
    ...   train = opt.minimize(tf.reduce_sum(v * v))
    ...   with tf.compat.v1.Session() as sess:
    ...     sess.run(tf.compat.v1.global_variables_initializer())
    ...     _ = sess.run(train)
    ...     prefix = tf.compat.v1.train.Saver().save(
    ...         sess, tempfile.mkdtemp() + "/model.ckpt")
    >>> params, state, _ = interop.state_from_tf1_checkpoint(
    ...     prefix, {"v": "v"})
    >>> params["v"].shape, state.mom["v"].shape, state.mg
    ((2,), (2,), None)
  """
  tf = common.require("tensorflow", "Reading a TF1 checkpoint")
  path = os.fspath(checkpoint)
  if os.path.isdir(path):
    path = tf.train.latest_checkpoint(path) or path
  reader = tf.train.load_checkpoint(path)
  stored = reader.get_variable_to_shape_map()
  dtypes = reader.get_variable_to_dtype_map()

  def read(key, what):
    if key not in stored:
      raise ValueError(
        f"{key!r} is not in the checkpoint {path!r} ({what}); check the "
        f"variable names, centered={centered} and "
        f"optimizer_name={optimizer_name!r}."
      )
    return reader.get_tensor(key)

  def shapes_of(name):
    read(name, "a variable")
    return tuple(stored[name]), np.dtype(dtypes[name].as_numpy_dtype)

  hyperparams = {}
  count = common.checked_count(0, "")
  if global_step_name is not None:
    step = read(global_step_name, "the global step")
    count = common.checked_count(
      step, f"The global step {global_step_name!r} in {path!r}"
    )
    hyperparams["global_step"] = step
  names, pairs = _names_and_pairs(var_names, shapes_of)
  _check_slot_layout(
    stored,
    names,
    pairs,
    centered=centered,
    optimizer_name=optimizer_name,
    path=path,
  )
  slots = {}
  for field, slot in common.slot_names("tf1"):
    if field == "mg" and not centered:
      continue
    keys = [
      tf1_slot_names(n, centered=centered, optimizer_name=optimizer_name)[field]
      for n in names
    ]
    slots[field] = pairs.from_keras(
      [
        read(k, f"the {slot!r} slot of {pairs.describe(i)}")
        for i, k in enumerate(keys)
      ],
      f"{slot!r} slot",
    )
  state = common.make_state("tf1", count, slots)
  values = pairs.from_keras(
    [read(n, f"the value of {pairs.describe(i)}") for i, n in enumerate(names)],
    "value",
  )
  return common.RestoredRMSprop(values, state, hyperparams)


def tf1_state_from_checkpoint(
  checkpoint: Any,
  var_names: Any,
  *,
  centered: bool = False,
  optimizer_name: str = "RMSProp",
  global_step_name: str | None = None,
) -> tuple[Any, base.RMSpropState]:
  """Reads a TF1 ``tf.compat.v1.train.Saver`` checkpoint of RMSPropOptimizer.

  Kept for backward compatibility: the ``(params, state)`` of
  :func:`~optax_tfrmsprop.interop.state_from_tf1_checkpoint`.

  Args:
    checkpoint: a checkpoint prefix or a directory.
    var_names: a tree of TF variable names, or a correspondence.
    centered: whether the TF1 optimizer was centered.
    optimizer_name: the TF1 optimizer's ``name``.
    global_step_name: the global step variable's name, for ``state.count``.

  Returns:
    ``(params, state)`` for :func:`~optax_tfrmsprop.tf1_rmsprop`.

  Example:
    >>> import tempfile
    >>> import tensorflow as tf
    >>> with tf.Graph().as_default():
    ...   v = tf.compat.v1.get_variable("v", initializer=[1.0, 2.0])
    ...   train = tf.compat.v1.train.RMSPropOptimizer(0.1).minimize(
    ...       tf.reduce_sum(v * v))
    ...   with tf.compat.v1.Session() as sess:
    ...     sess.run(tf.compat.v1.global_variables_initializer())
    ...     _ = sess.run(train)
    ...     prefix = tf.compat.v1.train.Saver().save(
    ...         sess, tempfile.mkdtemp() + "/model.ckpt")
    >>> params, state = tf1_state_from_checkpoint(prefix, {"v": "v"})
    >>> type(state).__name__
    'TF1RMSpropState'
  """
  restored = state_from_tf1_checkpoint(
    checkpoint,
    var_names,
    centered=centered,
    optimizer_name=optimizer_name,
    global_step_name=global_step_name,
  )
  return restored.params, restored.state


def state_to_tf1_checkpoint(
  path: Any,
  params: optax.Params,
  state: base.TF1RMSpropState,
  var_names: VarNames,
  *,
  optimizer_name: str = "RMSProp",
  global_step_name: str | None = None,
) -> str:
  """Writes params and a TF1 state as a ``tf.compat.v1.train.Saver`` checkpoint.

  The checkpoint holds each variable under its TF1 name, its
  ``RMSPropOptimizer`` slots under the names TF1 gives them (see
  :func:`~optax_tfrmsprop.tf1_slot_names`) and, if ``global_step_name`` is
  given, ``state.count`` as the int64 global step. A TF1 graph with the same
  variables and an ``RMSPropOptimizer(name=optimizer_name, centered=...)``
  restores it with ``tf.compat.v1.train.Saver().restore(sess, path)`` and
  continues bit-identically to :func:`~optax_tfrmsprop.tf1_rmsprop`. TF1
  stores no hyperparameters: the graph's own are used.

  Args:
    path: the checkpoint prefix to write.
    params: the JAX params.
    state: their :class:`~optax_tfrmsprop.TF1RMSpropState`.
    var_names: a tree of TF1 variable names with the params' structure, or a
      :class:`~optax_tfrmsprop.interop.Correspondence` whose Keras names are
      the TF1 names.
    optimizer_name: the TF1 optimizer's ``name``.
    global_step_name: the name of the global step variable to write, if any
      (``"global_step"`` for ``tf.compat.v1.train.get_or_create_global_step``).

  Returns:
    The path written.

  Raises:
    TypeError: if ``state`` is not a ``TF1RMSpropState``.
    ValueError: before anything is written, if ``var_names``, the params or
      a slot of the state does not have the structure, shapes and dtypes of
      the params (naming the slot and the param).
    ImportError: when TensorFlow is not installed, naming the extra.

  Example:
    >>> import os, tempfile
    >>> import jax.numpy as jnp
    >>> import tensorflow as tf
    >>> import optax_tfrmsprop
    >>> from optax_tfrmsprop import interop
    >>> params = {"v": jnp.array([1.0, 2.0])}
    >>> state = optax_tfrmsprop.tf1_rmsprop(0.1).init(params)
    >>> prefix = interop.state_to_tf1_checkpoint(
    ...     os.path.join(tempfile.mkdtemp(), "model.ckpt"), params, state,
    ...     {"v": "v"})
    >>> with tf.Graph().as_default():
    ...   v = tf.compat.v1.get_variable("v", shape=[2])
    ...   opt = tf.compat.v1.train.RMSPropOptimizer(0.1)
    ...   train = opt.minimize(tf.reduce_sum(v * v))
    ...   with tf.compat.v1.Session() as sess:
    ...     tf.compat.v1.train.Saver().restore(sess, prefix)
    ...     print(sess.run(opt.get_slot(v, "rms")))
    [1. 1.]
  """
  common.check_state(state, "tf1")
  tf = common.require("tensorflow", "Writing a TF1 checkpoint")
  if isinstance(var_names, correspondence_lib.Correspondence):
    names = list(var_names.keras_names)
    pairs = var_names
  else:
    names = jax.tree.leaves(var_names)
    if jax.tree.structure(var_names) != jax.tree.structure(params):
      raise ValueError(
        "`var_names` must have the structure of the params: "
        f"{jax.tree.structure(var_names)} vs {jax.tree.structure(params)}."
      )
    pairs = correspondence_lib.Correspondence.from_tree(params)
  # Everything is checked before a graph is built or a file written.
  values = [np.asarray(v) for v in pairs.checked_to_keras(params, "value")]
  slot_values = {
    field: [
      np.asarray(v)
      for v in pairs.checked_to_keras(
        getattr(state, field), f"{slot!r} slot (state.{field})"
      )
    ]
    for field, slot in common.slot_names("tf1")
    if getattr(state, field) is not None
  }
  centered = state.mg is not None
  graph = tf.Graph()
  with graph.as_default():
    variables = [
      tf.compat.v1.get_variable(
        name,
        shape=value.shape,
        dtype=tf.as_dtype(value.dtype),
        initializer=tf.compat.v1.zeros_initializer(),
      )
      for name, value in zip(names, values)
    ]
    optimizer = tf.compat.v1.train.RMSPropOptimizer(
      learning_rate=1.0, centered=centered, name=optimizer_name
    )
    # Building (not running) the update creates the slots, named as TF1
    # names them.
    optimizer.apply_gradients([(tf.zeros_like(v), v) for v in variables])
    assignments: list[tuple[Any, Any]] = list(zip(variables, values))
    for field, slot in common.slot_names("tf1"):
      if field in slot_values:
        assignments += [
          (optimizer.get_slot(v, slot), value)
          for v, value in zip(variables, slot_values[field])
        ]
    saved = variables + [slot for slot, _ in assignments[len(variables) :]]
    if global_step_name is not None:
      step = tf.compat.v1.get_variable(
        global_step_name,
        shape=(),
        dtype=tf.int64,
        trainable=False,
        initializer=tf.compat.v1.zeros_initializer(),
      )
      assignments.append((step, np.int64(int(state.count))))
      saved.append(step)
    feeds = [
      tf.compat.v1.placeholder(v.dtype.base_dtype, v.shape)
      for v, _ in assignments
    ]
    assign = [v.assign(f) for (v, _), f in zip(assignments, feeds)]
    saver = tf.compat.v1.train.Saver(var_list=saved)
    with tf.compat.v1.Session(graph=graph) as sess:
      sess.run(assign, {f: value for f, (_, value) in zip(feeds, assignments)})
      return saver.save(sess, os.fspath(path), write_meta_graph=False)
