"""The golden vectors: real TF's results, replayed bit for bit without TF.

``scripts/make_goldens.py`` ran each flavor's TF optimizer for a few steps
per path (P1-P8), dtype and rounding and froze the inputs and TF's final
variables, slots and step count in ``tests/goldens/*.npz``. Each file is
replayed here through the matching alias, jitted (the files of one flavor,
rounding and dtype in one jitted step), on the XLA path and (float32 and
float64 on ``tf_cpu``) on the CPU kernel; the variables and every slot must
equal TF's bit for bit. No TensorFlow is imported: this is the parity
core that runs anywhere, in seconds; the live differential tests
(``test_tf_parity.py``, ``test_presets.py``, ``test_sparse.py``,
``test_fuzz_tf.py``) run TF itself.
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import optax_tfrmsprop as ot
import toolbox

GOLDENS = sorted((pathlib.Path(__file__).parent / "goldens").glob("*.npz"))
ALIASES = {
  "keras_legacy": ot.rmsprop,
  "tf1": ot.tf1_rmsprop,
  "keras3": ot.keras3_rmsprop,
}
DTYPES = {
  "float32": np.float32,
  "float64": np.float64,
  "float16": np.float16,
  "bfloat16": ml_dtypes.bfloat16,
}


def _groups():
  """Files by ``(flavor, rounding, dtype)``: one jitted replay per group."""
  groups = {}
  for path in GOLDENS:
    flavor, rounding, _, dtype = path.stem.split("-")
    groups.setdefault(f"{flavor}-{rounding}-{dtype}", []).append(path)
  return groups


def _cases():
  for name, files in _groups().items():
    yield pytest.param(files, "xla", id=f"{name}-xla")
    _, rounding, dtype = name.split("-")
    if rounding == "tf_cpu" and dtype in ("float32", "float64"):
      yield pytest.param(
        files, "ffi", marks=toolbox.needs_kernel, id=f"{name}-ffi"
      )


def load(path):
  """``(meta, variables, grad_steps, tf_vars, tf_slots)`` of one file."""
  with np.load(path) as f:
    meta = json.loads(str(f["meta"]))
    dtype = DTYPES[meta["dtype"]]
    arrays = {
      k: f[k].view(dtype) if f[k].dtype.kind == "u" else f[k] for k in f.files
    }
  n = len(meta["sparse"])
  variables = [arrays[f"init/{i}"] for i in range(n)]
  grad_steps = []
  for t in range(meta["steps"]):
    grads = []
    for i, sparse in enumerate(meta["sparse"]):
      if sparse:
        values = arrays[f"grad/{i}/values"][t]
        indices = arrays[f"grad/{i}/indices"][t]
        grads.append((values, indices, variables[i].shape))
      else:
        grads.append(arrays[f"grad/{i}"][t])
    grad_steps.append(grads)
  tf_vars = [arrays[f"final/{i}"] for i in range(n)]
  tf_slots = {
    name: [arrays[f"slot/{name}/{i}"] for i in range(n)]
    for name in meta["slots"]
  }
  return meta, variables, grad_steps, tf_vars, tf_slots


def test_goldens_cover_every_flavor_path_and_dtype():
  """The files are there: each flavor has every path in every dtype TF has."""
  stems = {p.stem for p in GOLDENS}
  for flavor in ALIASES:
    for path in toolbox.PATHS:
      for dtype in ("float32", "float64", "float16"):
        assert f"{flavor}-tf_cpu-{path}-{dtype}" in stems
    for path in toolbox.DENSE_PATHS:
      assert f"{flavor}-tf_cpu-{path}-bfloat16" in stems
      assert f"{flavor}-tf_xla-{path}-float32" in stems
  total = sum(p.stat().st_size for p in GOLDENS)
  assert total < 1024**2, total


@pytest.mark.parametrize("files, backend", list(_cases()))
def test_goldens_replay_bit_for_bit(files, backend, monkeypatch):
  """Every path of one flavor, rounding and dtype, stepped in one jit."""
  toolbox.select_backend(backend, monkeypatch)
  goldens = [load(path) for path in files]
  optimizers = [
    ALIASES[meta["flavor"]](**meta["config"], rounding=meta["rounding"])
    for meta, *_ in goldens
  ]

  @jax.jit
  def step(params, states, grads):
    new = []
    for opt, p, s, g in zip(optimizers, params, states, grads):
      updates, new_state = opt.update(g, s, p)
      new.append((ot.apply_updates(p, updates), new_state))
    return tuple(map(list, zip(*new)))

  with jax.enable_x64(goldens[0][0]["dtype"] == "float64"):
    params = [[jnp.asarray(v) for v in g[1]] for g in goldens]
    states = [opt.init(p) for opt, p in zip(optimizers, params)]
    for t in range(goldens[0][0]["steps"]):
      grads = [[toolbox.to_jax(x) for x in g[2][t]] for g in goldens]
      params, states = step(params, states, grads)
  for path, (meta, _, _, tf_vars, tf_slots), p, state in zip(
    files, goldens, params, states
  ):
    assert int(state.count) == meta["count"], path.name
    toolbox.assert_same_as_tf(
      p, state, tf_vars, tf_slots, meta["flavor"], context=path.name
    )
    # Bit for bit, signed zeros included.
    slots = toolbox.tf_slot_names(meta["flavor"])
    present = [f for f in slots if getattr(state, f) is not None]
    toolbox.assert_bitwise(
      [p] + [getattr(state, f) for f in present],
      [tf_vars] + [tf_slots[slots[f]] for f in present],
    )
