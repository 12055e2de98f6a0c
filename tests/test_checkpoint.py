"""Orbax checkpoints of the optimizer state: resume, re-layout, faults."""

import functools
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import checkpoint_worker as worker
import optax_tfrmsprop
from optax_tfrmsprop._src import cpu_kernel
from toolbox import backend_params

WORKER = os.path.join(os.path.dirname(__file__), "checkpoint_worker.py")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_worker(*args, backend="auto", timeout=240):
  env = dict(
    os.environ,
    PYTHONPATH=REPO,
    JAX_PLATFORMS="cpu",
    OPTAX_TFRMSPROP_BACKEND=backend,
  )
  subprocess.run(
    [sys.executable, WORKER, *args], env=env, check=True, timeout=timeout
  )


@functools.cache
def _uninterrupted(name):
  """The params and state after all steps, without a checkpoint between."""
  optimizer = worker.CONFIGS[name]()
  params = jax.tree.map(jnp.asarray, worker.init_params())
  return worker.train(
    optimizer,
    params,
    optimizer.init(params),
    worker.FIRST_STEPS + worker.SECOND_STEPS,
    sparse=name in worker.SPARSE,
  )


# (saving backend, resuming backend): with the kernel built, each backend
# saves and resumes once, and every checkpoint continues on the other one.
BACKEND_PAIRS = (
  [("xla", "ffi"), ("ffi", "xla")]
  if optax_tfrmsprop.cpu_kernel_is_built()
  else [("xla", "xla")]
)


@pytest.mark.slow
@pytest.mark.parametrize("save_backend, resume_backend", BACKEND_PAIRS)
def test_resume_in_fresh_process_is_bit_identical(
  tmp_path, save_backend, resume_backend
):
  """Saved on one backend and resumed on another, in fresh processes.

  The backends give the same bits, so this process's default serves as the
  reference for both.
  """
  _run_worker("save", str(tmp_path / "ckpt"), backend=save_backend)
  _run_worker(
    "resume",
    str(tmp_path / "ckpt"),
    str(tmp_path / "out.npz"),
    backend=resume_backend,
  )
  resumed = np.load(tmp_path / "out.npz")
  expected = {}
  for name in worker.CONFIGS:
    params, opt_state = _uninterrupted(name)
    expected.update(worker.flat_arrays(f"{name}/params", params))
    expected.update(worker.flat_arrays(f"{name}/opt_state", opt_state))
  optimizer, variables = worker.keras_start()
  worker.train_keras(
    optimizer, variables, worker.FIRST_STEPS + worker.SECOND_STEPS
  )
  expected.update(worker.keras_arrays(optimizer, variables))
  assert sorted(resumed.files) == sorted(expected)
  for key, value in expected.items():
    np.testing.assert_array_equal(resumed[key], value, err_msg=key)


def _mesh():
  return jax.make_mesh((8,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))


def _sharded_layout():
  mesh = _mesh()
  return {
    "w": NamedSharding(mesh, P("x")),  # rows over the 8 devices
    "b": NamedSharding(mesh, P()),  # replicated
    "layers": [NamedSharding(mesh, P(None, "x"))],  # columns
  }


def _single_device_layout():
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda _: device, _sharded_layout())


@pytest.mark.parametrize("backend", backend_params)
@pytest.mark.parametrize(
  "name", ["centered_momentum", "injected", "sparse_centered_momentum"]
)
@pytest.mark.parametrize(
  "saved_on, restored_on",
  [("one device", "eight devices"), ("eight devices", "one device")],
)
def test_restore_onto_another_layout(
  tmp_path, monkeypatch, name, saved_on, restored_on, backend
):
  monkeypatch.setenv(cpu_kernel.BACKEND_ENV_VAR, backend)
  layouts = {
    "one device": _single_device_layout(),
    "eight devices": _sharded_layout(),
  }
  optimizer = worker.CONFIGS[name]()
  sparse = name in worker.SPARSE
  params = jax.device_put(worker.init_params(), layouts[saved_on])
  params, opt_state = worker.train(
    optimizer, params, optimizer.init(params), worker.FIRST_STEPS, sparse=sparse
  )
  with ocp.CheckpointManager(tmp_path) as manager:
    manager.save(
      1, args=ocp.args.StandardSave({"params": params, "opt_state": opt_state})
    )

  abstract_params = jax.tree.map(
    lambda p, s: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=s),
    worker.init_params(),
    layouts[restored_on],
  )
  target = {
    "params": abstract_params,
    "opt_state": optax_tfrmsprop.checkpoint_target(optimizer, abstract_params),
  }
  with ocp.CheckpointManager(tmp_path) as manager:
    restored = manager.restore(1, args=ocp.args.StandardRestore(target))
  slots = optax_tfrmsprop.checkpoint_target(optimizer, abstract_params)
  assert jax.tree.structure(restored["opt_state"]) == jax.tree.structure(slots)
  for leaf, want in zip(jax.tree.leaves(restored), jax.tree.leaves(target)):
    assert leaf.sharding == want.sharding

  params, opt_state = worker.train(
    optimizer,
    restored["params"],
    restored["opt_state"],
    worker.SECOND_STEPS,
    sparse=sparse,
  )
  expected = _uninterrupted(name)
  jax.tree.map(np.testing.assert_array_equal, (params, opt_state), expected)


def _kill_mid_save(directory) -> list[str]:
  """Starts the worker's big save, kills it once step 2's files appear.

  Returns:
    What the directory holds after the kill.
  """
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  process = subprocess.Popen(
    [sys.executable, WORKER, "big-save", str(directory)],
    env=env,
    stdout=subprocess.PIPE,
    text=True,
  )
  try:
    line = process.stdout.readline()
    assert line.strip() == "saving step 2", line
    # orbax makes step 2's temporary directory in a thread of its own.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(
      entry.startswith("2") for entry in os.listdir(directory)
    ):
      time.sleep(0.001)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
  finally:
    if process.poll() is None:
      process.kill()
      process.wait(timeout=30)
    process.stdout.close()
  return os.listdir(directory)


def test_killed_save_is_not_picked_up(tmp_path):
  # On a busy machine the 256 MiB save can finish before the kill lands;
  # that run says nothing about a killed save, so it is tried again.
  for attempt in range(3):
    directory = tmp_path / str(attempt)
    directory.mkdir()
    entries = _kill_mid_save(directory)
    if "2" not in entries:
      break
  else:
    pytest.fail("step 2 finished saving before the kill, three times")
  # The kill landed mid-save: step 2 exists only as an unfinished directory.
  assert any(entry.startswith("2.") for entry in entries), entries

  with ocp.CheckpointManager(directory) as manager:
    assert manager.all_steps() == [1]
    assert manager.latest_step() == 1
    target = {"w": jax.ShapeDtypeStruct((4,), jnp.float32)}
    restored = manager.restore(1, args=ocp.args.StandardRestore(target))
  np.testing.assert_array_equal(restored["w"], np.ones(4, np.float32))


def _saved_metadata(tmp_path, optimizer, params):
  with ocp.CheckpointManager(tmp_path) as manager:
    manager.save(1, args=ocp.args.StandardSave(optimizer.init(params)))
    manager.wait_until_finished()
    return manager.item_metadata(1)


PARAMS = {"w": np.zeros((8, 4), np.float32), "b": np.zeros(4, np.float32)}


@pytest.mark.parametrize(
  "other_optimizer, other_params, message",
  [
    (
      optax_tfrmsprop.rmsprop(momentum=0.9),
      {"w": np.zeros((8, 5), np.float32), "b": PARAMS["b"]},
      "ms/w: saved float32(8, 4), expected float32(8, 5)",
    ),
    (
      optax_tfrmsprop.rmsprop(momentum=0.9),
      {"w": PARAMS["w"].astype(jnp.bfloat16), "b": PARAMS["b"]},
      "mom/w: saved float32(8, 4), expected bfloat16(8, 4)",
    ),
    (
      optax_tfrmsprop.rmsprop(momentum=0.9, centered=True),
      PARAMS,
      "mg/b: expected by the optimizer, not in the checkpoint",
    ),
    (
      optax_tfrmsprop.rmsprop(),
      PARAMS,
      "mom/w: in the checkpoint, not in the optimizer state",
    ),
    (
      optax_tfrmsprop.rmsprop(momentum=0.9),
      {**PARAMS, "c": np.zeros(2)},
      "ms/c: expected by the optimizer, not in the checkpoint",
    ),
  ],
)
def test_mismatched_checkpoint_names_the_leaf(
  tmp_path, other_optimizer, other_params, message
):
  saved = _saved_metadata(
    tmp_path, optax_tfrmsprop.rmsprop(momentum=0.9), PARAMS
  )
  target = optax_tfrmsprop.checkpoint_target(other_optimizer, other_params)
  with pytest.raises(ValueError, match="does not match") as error:
    optax_tfrmsprop.check_checkpoint(saved, target)
  assert message in str(error.value)


def test_matching_checkpoint_passes_the_check(tmp_path):
  optimizer = optax.chain(
    optax.clip(1.0), optax_tfrmsprop.rmsprop(momentum=0.9, centered=True)
  )
  saved = _saved_metadata(tmp_path, optimizer, PARAMS)
  optax_tfrmsprop.check_checkpoint(
    saved, optax_tfrmsprop.checkpoint_target(optimizer, PARAMS)
  )


def test_check_accepts_standard_checkpointer_step_metadata(tmp_path):
  # orbax 0.12's StandardCheckpointer().metadata(path) is a StepMetadata,
  # not a tree: its leaves are in item_metadata.
  optimizer = optax_tfrmsprop.rmsprop(momentum=0.9)
  path = tmp_path / "c"
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path, optimizer.init(PARAMS))
  with ocp.StandardCheckpointer() as checkpointer:
    saved = checkpointer.metadata(path)
  optax_tfrmsprop.check_checkpoint(
    saved, optax_tfrmsprop.checkpoint_target(optimizer, PARAMS)
  )
  centered = optax_tfrmsprop.rmsprop(momentum=0.9, centered=True)
  with pytest.raises(ValueError, match="does not match") as error:
    optax_tfrmsprop.check_checkpoint(
      saved, optax_tfrmsprop.checkpoint_target(centered, PARAMS)
    )
  assert "mg/b: expected by the optimizer" in str(error.value)
  assert "<root>" not in str(error.value)


def test_check_refuses_metadata_without_arrays():
  target = optax_tfrmsprop.checkpoint_target(optax_tfrmsprop.rmsprop(), PARAMS)
  with pytest.raises(ValueError, match="not a tree of array metadata"):
    optax_tfrmsprop.check_checkpoint(object(), target)
