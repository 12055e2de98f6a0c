r"""The functional core: TF-exact RMSprop state initialisation and update.

Every other entry point (the :func:`~optax_tfrmsprop.rmsprop` transformation,
the Keras-style class, checkpoint interchange) calls :func:`rmsprop_init` and
:func:`rmsprop_update`; the per-leaf math lives in :mod:`update_rules`.
"""

from typing import Optional

import jax
import jax.numpy as jnp
import optax

from optax_tfrmsprop._src import base
from optax_tfrmsprop._src import clipping
from optax_tfrmsprop._src import cpu_kernel
from optax_tfrmsprop._src import numerics
from optax_tfrmsprop._src import sparse
from optax_tfrmsprop._src import update_rules


def rmsprop_init(
    params: optax.Params,
    *,
    centered: bool = False,
    use_momentum: bool = False,
    flavor: base.Flavor = "keras_legacy",
) -> base.RMSpropState:
  """Creates slots shaped and typed like ``params``, as TF does.

  Args:
    params: the parameter tree. ``None`` and ``optax.MaskedNode`` leaves get no
      slot.
    centered: create the ``mg`` slot (TF's ``centered=True``).
    use_momentum: create the ``mom`` slot (TF's momentum path; TF1 always
      has it).
    flavor: the RMSprop generation (:data:`Flavor`); it decides the state's
      class and the initial ``ms`` (ones in TF1).

  Returns:
    The flavor's :class:`RMSpropState` with ``count == 0``.

  Example:
    >>> import jax.numpy as jnp
    >>> state = rmsprop_init({"w": jnp.ones(3)}, use_momentum=True)
    >>> state.mom["w"], state.mg
    (Array([0., 0., 0.], dtype=float32), None)
  """
  # Strongly typed slots, so a weakly typed param (a Python scalar) cannot make
  # the state's type change after the first update and force a retrace.
  semantics = base.semantics(flavor)
  filled = lambda value: jax.tree.map(
      lambda p: jnp.full_like(p, value, dtype=p.dtype), params)
  return base.STATE_CLASSES[flavor](
      count=jnp.zeros([], jnp.int32),
      ms=filled(semantics.initial_ms),
      mg=filled(0) if centered else None,
      mom=filled(0) if use_momentum or semantics.always_momentum else None,
  )


class _Hyperparams:
  """Hyperparameters materialised per dtype, as TF's ``_prepare_local`` does.

  TF evaluates them once per variable dtype; a mixed-precision tree therefore
  sees e.g. ``lr`` rounded to bfloat16 for bfloat16 leaves and to float32 for
  float32 leaves, and ``1 - rho`` computed in each leaf's dtype. How each
  hyperparameter reaches the leaf dtype depends on the flavor (see
  :data:`base.Flavor`).
  """

  def __init__(self, count, learning_rate, rho, momentum, epsilon, decay,
               round_, flavor):
    self._args = (count, learning_rate, rho, momentum, epsilon, decay, round_,
                  flavor)
    self._by_dtype = {}

  def __call__(self, dtype):
    dtype = jnp.dtype(dtype)
    if dtype not in self._by_dtype:
      self._by_dtype[dtype] = self._materialise(dtype, *self._args)
    return self._by_dtype[dtype]

  @staticmethod
  def _materialise(dtype, count, learning_rate, rho, momentum, epsilon, decay,
                   round_, flavor):
    step = count.astype(dtype)
    if callable(learning_rate):
      # tf_keras' legacy optimizer hands its schedule the step cast to the
      # variable dtype; Keras 3 hands it the integer iteration.
      lr_step = step if flavor == "keras_legacy" else count
      lr = jnp.asarray(learning_rate(lr_step)).astype(dtype)
    else:
      # All three keep a plain learning rate in a float32 variable or tensor.
      lr = numerics.as_dtype(learning_rate, dtype, through_float32=True)
    if numerics.is_tensor(decay) or decay > 0:
      decay_t = numerics.as_dtype(decay, dtype, through_float32=True)
      lr = lr / (1 + round_(decay_t * step))
    if flavor == "keras3":
      # Keras 3 multiplies by the Python floats themselves: each is converted
      # straight from double to the leaf dtype, and ``1 - rho`` is computed in
      # double first (an array ``rho`` computes it in its own dtype).
      as_t = lambda x: numerics.as_dtype(x, dtype, through_float32=False)
      return dict(
          lr=lr,
          rho=as_t(rho),
          one_minus_rho=as_t(1 - rho),
          momentum=as_t(momentum),
          epsilon=as_t(epsilon),
      )
    rho_t = numerics.as_dtype(rho, dtype, through_float32=True)
    if flavor == "tf1":
      # TF1 converts epsilon to a float32 tensor like the rest, and keeps 0.
      eps = numerics.as_dtype(epsilon, dtype, through_float32=True)
    else:
      eps = numerics.keras_epsilon(epsilon, dtype)
    return dict(
        lr=lr,
        rho=rho_t,
        one_minus_rho=1 - rho_t,
        momentum=numerics.as_dtype(momentum, dtype, through_float32=True),
        epsilon=eps,
    )


# Backend dispatch: the same leaves through the CPU kernel where it applies.


def _hyper_vector(h):
  """The kernel's hyperparameter operand: ``[lr, rho, 1 - rho, mu, eps]``."""
  return jnp.stack([h["lr"], h["rho"], h["one_minus_rho"], h["momentum"],
                    h["epsilon"]])


def _sparse_leaf(g, var, ms, mg, mom, hyper, rounding: base.Rounding,
                 backend: cpu_kernel.Backend, *, apply: bool):
  """TF's sparse update of one leaf; as :func:`_dense_leaves` for one leaf.

  The momentum paths (P7/P8) run in the CPU kernel where it can: it
  de-duplicates and updates the rows in one call, with TF's float32 packet
  rsqrt, which jnp cannot reach (``docs/sparse.md``).
  """
  h = hyper(ms.dtype)  # Outside both branches, as in _dense_leaves.

  def xla():
    update, new_ms, new_mg, new_mom = update_rules.sparse_leaf(
        g, ms, mg, mom, h, numerics.rounder(rounding))
    first = sparse.apply_updates(var, update) if apply else update
    return first, new_ms, new_mg, new_mom

  if (mom is None or rounding != "tf_cpu"
      or not cpu_kernel.handles_sparse(ms.dtype)
      or not cpu_kernel.use_kernel(backend)):
    return xla()

  def kernel():
    rows = sparse.valid_rows(jnp.asarray(g.indices), ms.shape[0])
    first, new_ms, new_mg, new_mom = cpu_kernel.sparse_update(
        g.values, rows, var, ms, mg, mom, _hyper_vector(h), apply=apply)
    if not apply:
      first = sparse.IndexedSlices(*first, g.dense_shape)
    return first, new_ms, new_mg, new_mom

  return jax.lax.platform_dependent(cpu=kernel, default=xla)


def _dense_leaves(leaves, hyper, rounding: base.Rounding, flavor: base.Flavor,
                  backend: cpu_kernel.Backend, *, apply: bool):
  """Runs :func:`update_rules.dense_leaf` on every leaf, or the CPU kernel where it can.

  Args:
    leaves: ``(g, var, ms, mg, mom)`` per leaf; ``var`` is ``None`` unless
      ``apply``.
    hyper: the per-dtype hyperparameters (:class:`_Hyperparams`).
    rounding: the TF evaluation to reproduce.
    flavor: the RMSprop generation; the kernel implements the Keras-legacy and
      TF1 expressions.
    backend: see :mod:`cpu_kernel`; the kernel implements ``"tf_cpu"`` only.
    apply: return new variables (``var + update``) instead of updates.

  Returns:
    ``(update or new var, ms, mg, mom)`` per leaf.
  """

  def xla_leaf(g, var, ms, mg, mom):
    update, ms, mg, mom = update_rules.dense_leaf(g, ms, mg, mom, hyper(ms.dtype), rounding,
                                      flavor)
    first = sparse.apply_updates(var, update) if apply else update
    return first, ms, mg, mom

  def xla():
    return [xla_leaf(*leaf) for leaf in leaves]

  if (rounding != "tf_cpu" or flavor == "keras3"
      or not cpu_kernel.use_kernel(backend)):
    return xla()
  if not apply and leaves and leaves[0][4] is None:
    # P1/P2 through the optax API: a kernel update would need a buffer of its
    # own, which XLA fills with a copy of the gradient; measured slower.
    return xla()
  # Materialise the hyperparameters outside both branches: cached inside one,
  # they would leak that branch's tracers into the other.
  for leaf in leaves:
    hyper(leaf[2].dtype)

  def kernel():
    results = [None] * len(leaves)
    by_dtype = {}
    for i, leaf in enumerate(leaves):
      if cpu_kernel.handles(leaf[2].dtype):
        by_dtype.setdefault(jnp.dtype(leaf[2].dtype), []).append(i)
      else:  # float16 and bfloat16 stay on XLA.
        results[i] = xla_leaf(*leaf)
    for dtype, indices in by_dtype.items():
      _, _, _, mg, mom = leaves[indices[0]]
      out = cpu_kernel.dense_update(
          [leaves[i] for i in indices], _hyper_vector(hyper(dtype)),
          centered=mg is not None, momentum=mom is not None, apply=apply)
      for i, (first, ms, mg, mom) in zip(indices, out):
        results[i] = (-mom if first is None else first), ms, mg, mom
    return results

  return jax.lax.platform_dependent(cpu=kernel, default=xla)


def _check_matches(grads, state: base.RMSpropState):
  """Raises a ValueError naming the first gradient that does not fit a slot.

  An :class:`~optax_tfrmsprop.IndexedSlices` stands where the params have an
  array.
  """
  grads_def = jax.tree.structure(grads, is_leaf=sparse.is_indexed_slices)
  slots_def = jax.tree.structure(state.ms)
  if grads_def != slots_def:
    raise ValueError(
        "The gradient tree does not match the optimizer state (built by init "
        f"from the params).\n  gradients: {grads_def}\n  state:     {slots_def}"
    )
  for (path, g), ms in zip(
      jax.tree_util.tree_leaves_with_path(
          grads, is_leaf=sparse.is_indexed_slices),
      jax.tree.leaves(state.ms),
  ):
    where = jax.tree_util.keystr(path) or "the root"
    if isinstance(g, sparse.IndexedSlices):
      sparse.check_sparse_grad(where, g, ms)
    elif jnp.shape(g) != ms.shape or jnp.result_type(g) != ms.dtype:
      raise ValueError(
          f"Gradient at {where} has shape "
          f"{jnp.shape(g)} and dtype {jnp.result_type(g)}, but its parameter "
          f"(and slot) has shape {ms.shape} and dtype {ms.dtype}."
      )


def _check_slots_and_params(state: base.RMSpropState, params) -> None:
  """Raises a ValueError naming the first slot or param unlike its ``ms``.

  TF's variable and its slots share shape and dtype; both backends update
  them leaf by leaf in ``ms``'s layout (the CPU kernel in place), so a
  mismatch must stop here rather than reach the kernel.
  """
  ms_def = jax.tree.structure(state.ms)
  ms_leaves = jax.tree_util.tree_leaves_with_path(state.ms)
  trees = [(f"state.{name}", getattr(state, name)) for name in ("mg", "mom")
           if getattr(state, name) is not None]
  if params is not None:
    trees.append(("params", params))
  for name, tree in trees:
    if jax.tree.structure(tree) != ms_def:
      raise ValueError(
          f"{name} does not match the optimizer state's structure.\n"
          f"  {name}: {jax.tree.structure(tree)}\n  state.ms: {ms_def}")
    for (path, ms), x in zip(ms_leaves, jax.tree.leaves(tree)):
      if jnp.shape(x) != ms.shape or jnp.result_type(x) != ms.dtype:
        raise ValueError(
            f"{name} at {jax.tree_util.keystr(path) or 'the root'} has shape "
            f"{jnp.shape(x)} and dtype {jnp.result_type(x)}, but state.ms "
            f"there has shape {ms.shape} and dtype {ms.dtype}.")


def rmsprop_update(
    grads: optax.Updates,
    state: base.RMSpropState,
    *,
    learning_rate: optax.ScalarOrSchedule = 0.001,
    rho: jax.typing.ArrayLike = 0.9,
    momentum: jax.typing.ArrayLike = 0.0,
    epsilon: jax.typing.ArrayLike = 1e-7,
    decay: jax.typing.ArrayLike = 0.0,
    clipvalue: Optional[jax.typing.ArrayLike] = None,
    clipnorm: Optional[jax.typing.ArrayLike] = None,
    global_clipnorm: Optional[jax.typing.ArrayLike] = None,
    rounding: base.Rounding = "tf_cpu",
    flavor: Optional[base.Flavor] = None,
    backend: cpu_kernel.Backend = "auto",
) -> tuple[optax.Updates, base.RMSpropState]:
  r"""One step of ``tf_keras.optimizers.legacy.RMSprop.apply_gradients``.

  The path is fixed by the state: ``state.mom`` present selects TF's kernels
  (``ResourceApply[Centered]RMSProp``), absent the Python graph ops;
  ``state.mg`` present means centered. With :math:`c = 1 - \rho` computed in
  the leaf dtype, :math:`\eta_t` the learning rate at the step count before the
  increment (after ``decay``: :math:`\eta / (1 + d \cdot t)`), and every
  operation rounded to the leaf dtype in the order written:

  .. math::

    \text{no momentum:}\quad & s \leftarrow (\rho s) + (c (g g)),\;
      [\bar g \leftarrow (\rho \bar g) + (c g)],\;
      u = -\frac{\eta_t g}{\sqrt{s\,[-\,\bar g \bar g]} + \epsilon} \\
    \text{momentum:}\quad & s \leftarrow s + ((g g) - s) c,\;
      [\bar g \leftarrow \bar g + (g - \bar g) c],\;
      m \leftarrow (m \mu) + \frac{g \eta_t}{\sqrt{(s\,[-\,\bar g \bar g]) +
      \epsilon}},\; u = -m

  Gradients are first clipped by value, then per-tensor norm, then global norm.

  ``flavor="tf1"`` is TF1's ``RMSPropOptimizer``: the momentum equations
  above (its state always has ``mom``), with every hyperparameter, epsilon
  included, rounded through float32 and a zero epsilon kept.
  ``flavor="keras3"`` is Keras 3's ``RMSprop``, one formula on every path,
  with :math:`c = 1 - \rho` computed in double for a Python ``rho``:

  .. math::

    s \leftarrow (\rho s) + (c (g g)),\;
    [\bar g \leftarrow (\rho \bar g) + (c g)],\;
    i = \frac{\eta_t g}{\sqrt{(s\,[-\,\bar g \bar g]) + \epsilon}},\;
    [m \leftarrow (\mu m) + i],\; u = -i \text{ or } -m

  A gradient leaf may be an :class:`~optax_tfrmsprop.IndexedSlices`; it takes
  TF's sparse paths (de-duplication after clipping, then P5-P8, see
  ``_src/update_rules.py``) and its update is an ``IndexedSlices`` of row increments
  for :func:`~optax_tfrmsprop.apply_updates` (Keras 3 densifies it instead).

  Args:
    grads: gradients, a tree matching the params given to :func:`rmsprop_init`
      (an ``IndexedSlices`` may stand where the params have an array).
    state: the current state.
    learning_rate: a scalar, or a schedule called with the step count cast to
      each leaf's dtype (TF's ``iterations``, before the increment).
    rho: discounting factor of the moving averages.
    momentum: the momentum coefficient (used only when ``state.mom`` exists).
    epsilon: added to the denominator; ``0`` means Keras' ``1e-7``.
    decay: Keras' inverse-time learning-rate decay.
    clipvalue: clip each element to ``[-clipvalue, clipvalue]``.
    clipnorm: clip each gradient to this L2 norm.
    global_clipnorm: clip all gradients together to this global L2 norm.
    rounding: the TF evaluation to reproduce: ``"tf_cpu"`` or ``"tf_xla"``.
    flavor: the RMSprop generation: ``"keras_legacy"``, ``"tf1"`` or
      ``"keras3"`` (see :data:`Flavor`). The state's class decides it (see
      :func:`rmsprop_init`); if given, it must match.
    backend: ``"auto"``, ``"ffi"`` (the single-pass CPU kernel, ``"tf_cpu"``
      rounding only) or ``"xla"``; see ``docs/cpu_kernel.md``. Both give the
      same bits.

  Returns:
    ``(updates, new_state)``; ``optax_tfrmsprop.apply_updates(params,
    updates)`` gives TF's new variables (``optax.apply_updates`` too when no
    leaf is sparse).

  Example:
    >>> import jax.numpy as jnp
    >>> state = rmsprop_init({"w": jnp.array([1.0, -2.0])})
    >>> grads = {"w": jnp.array([0.5, 0.5])}
    >>> updates, state = rmsprop_update(grads, state, learning_rate=0.1)
    >>> updates["w"], state.count
    (Array([-0.31622753, -0.31622753], dtype=float32), Array(1, dtype=int32))
  """
  return _step(grads, state, None, learning_rate=learning_rate, rho=rho,
               momentum=momentum, epsilon=epsilon, decay=decay,
               clipvalue=clipvalue, clipnorm=clipnorm,
               global_clipnorm=global_clipnorm, rounding=rounding,
               flavor=flavor, backend=backend)


def rmsprop_apply(
    params: optax.Params,
    grads: optax.Updates,
    state: base.RMSpropState,
    **hyperparams,
) -> tuple[optax.Params, base.RMSpropState]:
  """:func:`rmsprop_update` and ``optax.apply_updates`` as one fused step.

  The result is bit-identical to the two-step form. With the CPU kernel, each
  element of params, gradient and slots is read once and written once, in
  place when ``params`` and ``state`` are donated to the jitted step, which is
  the memory-bandwidth limit of the update (the two-step form makes another
  pass over params and updates).

  Args:
    params: the parameters.
    grads: their gradients.
    state: the current state.
    **hyperparams: the keyword arguments of :func:`rmsprop_update`.

  Returns:
    ``(new_params, new_state)``, TF's variables and slots after the step.

  Example:
    >>> import jax.numpy as jnp
    >>> params = jnp.array([10.0])
    >>> state = rmsprop_init(params)
    >>> params, state = rmsprop_apply(params, params, state, learning_rate=0.1)
    >>> params
    Array([9.683772], dtype=float32)
  """
  return _step(grads, state, params, **hyperparams)


def _step(grads, state, params, *, learning_rate=0.001, rho=0.9, momentum=0.0,
          epsilon=1e-7, decay=0.0, clipvalue=None, clipnorm=None,
          global_clipnorm=None, rounding="tf_cpu", flavor=None,
          backend="auto"):
  """:func:`rmsprop_update`, or :func:`rmsprop_apply` when params are given."""
  if not isinstance(state, base.RMSpropState):
    raise TypeError(
        "state must be an RMSpropState (from rmsprop_init or an optimizer's "
        f"init), got {type(state).__name__}.")
  if flavor is not None:
    base.semantics(flavor)
    if flavor != state.flavor:
      raise ValueError(
          f"flavor={flavor!r} does not match the state, a "
          f"{type(state).__name__} of flavor {state.flavor!r}: build the "
          f"state with rmsprop_init(..., flavor={flavor!r}).")
  flavor = state.flavor
  _check_matches(grads, state)
  _check_slots_and_params(state, params)
  round_ = numerics.rounder(rounding)
  leaves, treedef = jax.tree.flatten(grads, is_leaf=sparse.is_indexed_slices)
  # TF clips the rows of a sparse gradient before de-duplicating them.
  is_sparse = [isinstance(g, sparse.IndexedSlices) for g in leaves]
  clipped = clipping.clip_gradients(
      [g.values if s else g for g, s in zip(leaves, is_sparse)],
      clipvalue=clipvalue, clipnorm=clipnorm,
      global_clipnorm=global_clipnorm, rounding=rounding)
  leaves = [
      sparse.IndexedSlices(v, g.indices, g.dense_shape) if s else v
      for g, v, s in zip(leaves, clipped, is_sparse)
  ]
  hyper = _Hyperparams(state.count, learning_rate, rho, momentum, epsilon,
                       decay, round_, flavor)
  absent = [None] * len(leaves)
  ms_leaves = jax.tree.leaves(state.ms)
  mg_leaves = absent if state.mg is None else jax.tree.leaves(state.mg)
  mom_leaves = absent if state.mom is None else jax.tree.leaves(state.mom)
  var_leaves = absent if params is None else treedef.flatten_up_to(params)
  if flavor == "keras3":  # No row-sparse paths: _keras3_leaf densifies.
    is_sparse = [False] * len(leaves)
  per_leaf = list(zip(leaves, var_leaves, ms_leaves, mg_leaves, mom_leaves))
  dense = [i for i, s in enumerate(is_sparse) if not s]
  results = [
      _sparse_leaf(*leaf, hyper, rounding, backend, apply=params is not None)
      if s else None for leaf, s in zip(per_leaf, is_sparse)
  ]
  dense_results = _dense_leaves([per_leaf[i] for i in dense], hyper, rounding,
                                flavor, backend, apply=params is not None)
  for i, result in zip(dense, dense_results):
    results[i] = result
  updates, ms, mg, mom = map(list, zip(*results)) if results else ([],) * 4
  unflatten = treedef.unflatten
  new_state = state.replace(
      count=optax.safe_increment(state.count),
      ms=unflatten(ms),
      mg=None if state.mg is None else unflatten(mg),
      mom=None if state.mom is None else unflatten(mom),
  )
  return unflatten(updates), new_state
