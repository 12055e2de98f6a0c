"""interop.correspondence: Keras weights <-> JAX leaves, and its errors.

Linen dicts, nnx state and plain pytrees, by layer order and shape or by the
user's paths; the errors name the Keras weight and the JAX path, or list the
candidates.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import interop_helpers as helpers
import optax_tfrmsprop
from optax_tfrmsprop import interop
from tf_reference import tf_keras


def _dense_stack(widths, names=None):
  tf_keras.utils.set_random_seed(0)
  layers = [tf_keras.Input((widths[0],))]
  for i, w in enumerate(widths[1:]):
    layers.append(
      tf_keras.layers.Dense(w, name=None if names is None else names[i])
    )
  return tf_keras.Sequential(layers)


def _zeros(shape):
  return jnp.zeros(shape, jnp.float32)


def _linen_like(widths, names):
  return {
    name: {"bias": _zeros(w_out), "kernel": _zeros((w_in, w_out))}
    for name, w_in, w_out in zip(names, widths, widths[1:])
  }


def _pairs_of(correspondence):
  return [
    (k.rpartition("/")[0], k.rpartition("/")[2], j) for k, j in correspondence
  ]


@pytest.mark.parametrize("kind", ["linen", "nnx"])
def test_flax_models_match_by_layer_order(kind):
  model = helpers.keras_model(compile_config=None)
  flax = helpers.Flax(kind)
  pairs = interop.correspondence(model, flax.params)
  modules = (
    ["Dense_0", "Dense_1", "Dense_2"]
    if kind == "linen"
    else ["linear1", "linear2", "out"]
  )
  assert list(pairs.jax_paths) == [
    f"{m}/{w}" for m in modules for w in ("kernel", "bias")
  ]
  assert list(pairs.keras_names) == [
    v.name[:-2] for v in model.trainable_variables
  ]
  # The values of the Keras model land where the flax model uses them.
  values = [v.numpy() for v in model.trainable_variables]
  params = pairs.from_keras(values)
  assert jax.tree.structure(params) == jax.tree.structure(flax.params)
  x = np.random.default_rng(0).standard_normal((3, helpers.WIDTH), np.float32)
  np.testing.assert_allclose(
    flax._apply(params, x), model(x).numpy(), rtol=1e-5, atol=1e-6
  )
  for ours, theirs in zip(pairs.to_keras(params), values):
    np.testing.assert_array_equal(ours, theirs)


def test_numbers_in_names_order_layers_beyond_ten():
  """Dense_10 comes after Dense_9, not after Dense_1 (as jax.tree sorts)."""
  widths = [3] * 13
  model = _dense_stack(widths)
  names = [f"Dense_{i}" for i in range(12)]
  params = _linen_like(widths, names)
  pairs = interop.correspondence(model, params)
  assert [j.split("/")[0] for j in pairs.jax_paths[::2]] == names
  nnx = helpers.nnx
  listing = getattr(nnx, "List", list)

  class Stack(nnx.Module):
    def __init__(self, rngs):
      self.layers = listing([nnx.Linear(3, 3, rngs=rngs) for _ in range(12)])

  pairs = interop.correspondence(model, nnx.state(Stack(nnx.Rngs(0))))
  assert [j.split("/")[1] for j in pairs.jax_paths[::2]] == [
    str(i) for i in range(12)
  ]
  assert pairs.jax_paths[-2:] == ("layers/11/kernel", "layers/11/bias")


def test_modules_told_apart_by_shape_need_no_order():
  model = _dense_stack([3, 4, 5], names=["encoder", "decoder"])
  params = _linen_like([3, 4, 5], ["encoder", "decoder"])
  pairs = interop.correspondence(model, params)
  assert _pairs_of(pairs) == [
    ("encoder", "kernel", "encoder/kernel"),
    ("encoder", "bias", "encoder/bias"),
    ("decoder", "kernel", "decoder/kernel"),
    ("decoder", "bias", "decoder/bias"),
  ]


def test_same_shaped_modules_without_order_are_ambiguous():
  model = _dense_stack([3, 3, 3], names=["encoder", "decoder"])
  params = _linen_like([3, 3, 3], ["encoder", "decoder"])
  with pytest.raises(
    ValueError,
    match=(
      r"Keras layers \['encoder', 'decoder'\] have the same shapes as the JAX "
      r"modules \['decoder', 'encoder'\], whose names do not say which comes "
      r"first.*candidates for Keras weight 'encoder/kernel' float32\(3, 3\): "
      r"\['decoder/kernel', 'encoder/kernel'\]. Pass `paths=`"
    ),
  ):
    interop.correspondence(model, params)
  pairs = interop.correspondence(
    model,
    params,
    paths=[
      "encoder/kernel",
      "encoder/bias",
      ("decoder", "kernel"),
      "decoder/bias",
    ],
  )
  assert list(pairs.jax_paths) == [
    "encoder/kernel",
    "encoder/bias",
    "decoder/kernel",
    "decoder/bias",
  ]


def test_same_shaped_weights_in_a_layer_are_told_apart_by_name():
  tf_keras.utils.set_random_seed(0)
  model = tf_keras.Sequential(
    [
      tf_keras.Input((4,)),
      tf_keras.layers.Dense(4),
      tf_keras.layers.BatchNormalization(),
    ]
  )
  params = {
    "Dense_0": {"kernel": _zeros((4, 4)), "bias": _zeros(4)},
    "BatchNorm_0": {"scale": _zeros(4), "bias": _zeros(4)},
  }
  pairs = interop.correspondence(model, params)
  short = [(k.rpartition("/")[2], j) for k, j in pairs]
  assert short[2:] == [
    ("gamma", "BatchNorm_0/scale"),
    ("beta", "BatchNorm_0/bias"),
  ]
  params["BatchNorm_0"] = {"a": _zeros(4), "b": _zeros(4)}
  with pytest.raises(
    ValueError,
    match=(
      r"Keras weight 'batch_normalization(_\d+)?/gamma' float32\(4,\) has "
      r"several candidates of its shape in JAX module 'BatchNorm_0': "
      r"\['BatchNorm_0/a', 'BatchNorm_0/b'\]"
    ),
  ):
    interop.correspondence(model, params)
  # Two same-shaped modules of different kinds: their order is unknown.
  tf_keras.utils.set_random_seed(0)
  model = tf_keras.Sequential(
    [
      tf_keras.Input((4,)),
      tf_keras.layers.BatchNormalization(),
      tf_keras.layers.LayerNormalization(),
    ]
  )
  params = {
    "BatchNorm_0": {"scale": _zeros(4), "bias": _zeros(4)},
    "LayerNorm_0": {"scale": _zeros(4), "bias": _zeros(4)},
  }
  with pytest.raises(
    ValueError,
    match=(
      r"whose names do not say which comes first \('BatchNorm_0' and "
      r"'LayerNorm_0'\): candidates for Keras weight "
      r"'batch_normalization(_\d+)?/gamma' float32\(4,\): "
      r"\['BatchNorm_0/bias', 'BatchNorm_0/scale', 'LayerNorm_0/bias', "
      r"'LayerNorm_0/scale'\]"
    ),
  ):
    interop.correspondence(model, params)


def test_plain_list_is_matched_by_position():
  model = _dense_stack([3, 4, 2])
  values = [v.numpy() for v in model.trainable_variables]
  pairs = interop.correspondence(model, [jnp.asarray(v) for v in values])
  assert list(pairs.jax_paths) == ["0", "1", "2", "3"]
  with pytest.raises(ValueError, match=r"sequence of 3 arrays.*4 trainable"):
    interop.correspondence(model, [jnp.asarray(v) for v in values[:3]])


def test_errors_name_the_keras_weight_and_the_jax_path():
  model = _dense_stack([3, 4, 2])
  params = _linen_like([3, 4, 2], ["Dense_0", "Dense_1"])
  params["Dense_1"]["kernel"] = _zeros((4, 3))
  with pytest.raises(
    ValueError,
    match=(
      r"Keras layer 'dense(_\d+)?' \('kernel' float32\(4, 2\), 'bias' "
      r"float32\(2,\)\) has no JAX module with the same shapes.*JAX modules "
      r"with shapes of no Keras layer: \[\"Dense_1 \('bias' float32\(2,\), "
      r"'kernel' float32\(4, 3\)\)\"\]"
    ),
  ):
    interop.correspondence(model, params)
  params = _linen_like([3, 4, 2], ["Dense_0", "Dense_1"])
  with pytest.raises(
    ValueError,
    match=(
      r"paths\[1\] = 'Dense_0/bais', given for Keras weight "
      r"'dense(_\d+)?/bias' float32\(4,\), is not a path of the params"
    ),
  ):
    interop.correspondence(
      model,
      params,
      paths=[
        "Dense_0/kernel",
        "Dense_0/bais",
        "Dense_1/kernel",
        "Dense_1/bias",
      ],
    )
  with pytest.raises(
    ValueError,
    match=(
      r"Keras weight 'dense(_\d+)?/kernel' float32\(3, 4\) and JAX path "
      r"'Dense_1/kernel' float32\(4, 2\) differ in shape or dtype"
    ),
  ):
    interop.correspondence(
      model,
      params,
      paths=[
        "Dense_1/kernel",
        "Dense_0/bias",
        "Dense_0/kernel",
        "Dense_1/bias",
      ],
    )
  with pytest.raises(ValueError, match=r"`paths` has 2 entries.*4 trainable"):
    interop.correspondence(model, params, paths=["a", "b"])
  with pytest.raises(
    ValueError, match=(r"is also given for Keras weight 'dense(_\d+)?/kernel'")
  ):
    interop.correspondence(
      model,
      params,
      paths=[
        "Dense_0/kernel",
        "Dense_0/kernel",
        "Dense_1/kernel",
        "Dense_1/bias",
      ],
    )
  params["extra"] = {"w": _zeros(7)}
  with pytest.raises(
    ValueError,
    match=(
      r"The params have 5 leaves and the Keras model 4 trainable weights; no "
      r"Keras weight for: \['extra/w'\]"
    ),
  ):
    interop.correspondence(model, params)
  bf16 = _linen_like([3, 4, 2], ["Dense_0", "Dense_1"])
  bf16["Dense_0"]["kernel"] = bf16["Dense_0"]["kernel"].astype(jnp.bfloat16)
  with pytest.raises(
    ValueError,
    match=(r"float32\(3, 4\) and JAX path 'Dense_0/kernel' bfloat16\(3, 4\)"),
  ):
    interop.correspondence(model, bf16)


def test_same_correspondence_serves_weight_lists_both_ways():
  model = helpers.keras_model()
  x, y = helpers.data()
  model.fit(x, y, batch_size=8, verbose=0)
  flax = helpers.Flax("linen")
  pairs = interop.correspondence(model, flax.params)
  weights = model.optimizer.get_weights()
  params, state, hyperparams = interop.state_from_optimizer_weights(
    weights, pairs, centered=True, use_momentum=True
  )
  assert params is None and hyperparams == {}
  assert jax.tree.structure(state.ms) == jax.tree.structure(flax.params)
  kernel = model.optimizer.get_slot(model.trainable_variables[2], "mg")
  np.testing.assert_array_equal(state.mg["Dense_1"]["kernel"], kernel.numpy())
  back = interop.state_to_optimizer_weights(state, pairs)
  assert len(back) == len(weights)
  for ours, theirs in zip(back, weights):
    np.testing.assert_array_equal(ours, theirs)
    assert np.asarray(ours).dtype == np.asarray(theirs).dtype
  # The old names keep working, in the leaf order of the params.
  in_order = [v.numpy() for v in model.trainable_variables]
  old = optax_tfrmsprop.state_from_keras_weights(
    weights, in_order, centered=True, use_momentum=True
  )
  for ours, theirs in zip(optax_tfrmsprop.state_to_keras_weights(old), weights):
    np.testing.assert_array_equal(ours, theirs)
  with pytest.raises(TypeError, match=r"`state` must be a RMSpropState"):
    interop.state_to_optimizer_weights(
      optax_tfrmsprop.tf1_rmsprop(0.1).init(in_order)
    )
  with pytest.raises(ValueError, match="does not have the structure"):
    pairs.to_keras(in_order)


def test_keras3_model_and_variables():
  keras = pytest.importorskip("keras")
  if int(keras.__version__.split(".")[0]) < 3:
    pytest.skip("Keras 3 is not installed.")
  model = keras.Sequential(
    [keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(2)]
  )
  pairs = interop.correspondence(
    model, _linen_like([3, 4, 2], ["Dense_0", "Dense_1"])
  )
  assert [k.split("/")[-1] for k in pairs.keras_names] == [
    "kernel",
    "bias",
    "kernel",
    "bias",
  ]
  assert pairs.jax_paths[2] == "Dense_1/kernel"
  assert pairs.variables[2] is model.trainable_variables[2]
