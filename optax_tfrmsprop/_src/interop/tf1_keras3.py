"""Loading TF1 ``Saver`` checkpoints and Keras 3 optimizers into RMSpropState.

Both return the parameters and an :class:`RMSpropState` that
:func:`~optax_tfrmsprop.tf1_rmsprop` (resp.
:func:`~optax_tfrmsprop.keras3_rmsprop`) continues bit-identically to the
original optimizer. The parameter tree's structure is given by a tree of TF
variable names (TF1) or of Keras variables (Keras 3). TensorFlow is imported
only when a TF1 checkpoint is read.
"""

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_tfrmsprop._src import base


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
  fields = ("ms", "mg", "mom") if centered else ("ms", "mom")
  prefix = f"{var_name}/{optimizer_name}"
  return {
      field: prefix if i == 0 else f"{prefix}_{i}"
      for i, field in enumerate(fields)
  }


def tf1_state_from_checkpoint(
    checkpoint: str,
    var_names: Any,
    *,
    centered: bool = False,
    optimizer_name: str = "RMSProp",
    global_step_name: Optional[str] = None,
) -> tuple[optax.Params, base.RMSpropState]:
  """Reads a TF1 ``tf.compat.v1.train.Saver`` checkpoint of RMSPropOptimizer.

  Args:
    checkpoint: a checkpoint prefix (``.../model.ckpt-100``) or a directory,
      whose latest checkpoint is read.
    var_names: a tree of TF variable names (without ``:0``); its structure is
      that of the returned params.
    centered: whether the TF1 optimizer was centered.
    optimizer_name: the TF1 optimizer's ``name`` (``"RMSProp"`` by default).
    global_step_name: if given, the name of the global step variable, which
      becomes ``state.count`` (what a schedule passed to
      :func:`~optax_tfrmsprop.tf1_rmsprop` is called with); else 0.

  Returns:
    ``(params, state)`` for :func:`~optax_tfrmsprop.tf1_rmsprop` with the same
    ``centered``.

  Raises:
    ValueError: when a variable or one of its slots is not in the checkpoint.

  Example:
    >>> import tempfile
    >>> import tensorflow as tf
    >>> with tf.Graph().as_default():
    ...   v = tf.compat.v1.get_variable("v", initializer=[1.0, 2.0])
    ...   opt = tf.compat.v1.train.RMSPropOptimizer(0.1, momentum=0.9)
    ...   train = opt.minimize(tf.reduce_sum(v * v))
    ...   with tf.compat.v1.Session() as sess:
    ...     sess.run(tf.compat.v1.global_variables_initializer())
    ...     _ = sess.run(train)
    ...     prefix = tf.compat.v1.train.Saver().save(
    ...         sess, tempfile.mkdtemp() + "/model.ckpt")
    >>> params, state = tf1_state_from_checkpoint(prefix, {"v": "v"})
    >>> params["v"].shape, state.mom["v"].shape, state.mg
    ((2,), (2,), None)
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  path = tf.train.latest_checkpoint(checkpoint) or checkpoint
  reader = tf.train.load_checkpoint(path)
  stored = reader.get_variable_to_shape_map()

  def read(key):
    if key not in stored:
      raise ValueError(
          f"{key!r} is not in the checkpoint {path!r}; check var_names, "
          f"centered={centered} and optimizer_name={optimizer_name!r}.")
    return jnp.asarray(reader.get_tensor(key))

  def slot(field):
    return jax.tree.map(
        lambda name: read(
            tf1_slot_names(name, centered=centered,
                           optimizer_name=optimizer_name)[field]),
        var_names)

  count = 0 if global_step_name is None else int(read(global_step_name))
  state = base.TF1RMSpropState(
      count=jnp.asarray(count, jnp.int32),
      ms=slot("ms"),
      mg=slot("mg") if centered else None,
      mom=slot("mom"),
  )
  return jax.tree.map(read, var_names), state


def keras3_state_from_optimizer(
    optimizer: Any, variables: Any
) -> tuple[optax.Params, base.RMSpropState]:
  """Reads a built Keras 3 ``keras.optimizers.RMSprop`` and its variables.

  Keras 3 names the slots of a variable with path ``p``
  ``<p with / replaced by _>_velocity``, ``_momentum`` (only when
  ``momentum > 0``) and ``_average_gradient`` (only when centered); its
  ``iteration`` becomes ``state.count``.

  Args:
    optimizer: a Keras 3 ``RMSprop`` that has been built (or applied).
    variables: a tree of the Keras variables it optimizes; its structure is
      that of the returned params.

  Returns:
    ``(params, state)`` for :func:`~optax_tfrmsprop.keras3_rmsprop` with the
    optimizer's ``momentum`` and ``centered``.

  Raises:
    ValueError: when the optimizer has no slot for one of the variables.

  Example:
    >>> import keras
    >>> import numpy as np
    >>> w = keras.Variable(np.ones(3, np.float32), name="w")
    >>> opt = keras.optimizers.RMSprop(momentum=0.9)
    >>> _ = opt.apply_gradients([(np.full(3, 0.5, np.float32), w)])
    >>> params, state = keras3_state_from_optimizer(opt, {"w": w})
    >>> int(state.count), state.mom["w"].shape
    (1, (3,))
  """
  by_name = {v.name: v for v in optimizer.variables}

  def slot(suffix):
    def read(variable):
      name = f"{variable.path.replace('/', '_')}_{suffix}"
      if name not in by_name:
        raise ValueError(
            f"The optimizer has no variable {name!r} for {variable.path!r}; "
            "was it built with these variables?")
      return jnp.asarray(np.asarray(by_name[name]))

    return jax.tree.map(read, variables)

  state = base.Keras3RMSpropState(
      count=jnp.asarray(int(np.asarray(optimizer.iterations)), jnp.int32),
      ms=slot("velocity"),
      mg=slot("average_gradient") if optimizer.centered else None,
      mom=slot("momentum") if optimizer.momentum > 0 else None,
  )
  params = jax.tree.map(lambda v: jnp.asarray(np.asarray(v)), variables)
  return params, state
