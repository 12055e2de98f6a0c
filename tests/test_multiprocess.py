"""Data-parallel training across two local processes (jax.distributed, gloo).

Runs examples/multiprocess_train.py as two processes with two CPU devices each,
joined on loopback into one 4-device mesh, and as one process with four CPU
devices; with the order-fixed gradient reduction the two runs must agree bit
for bit, on the XLA path and on the CPU kernel.
"""

import contextlib
import importlib.util
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from optax_tfrmsprop._src import cpu_kernel
from toolbox import backend_params

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(REPO, "examples", "multiprocess_train.py")
TIMEOUT_S = 180
STEPS = 10


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(*args, backend, log):
  # The example configures its CPU devices itself; the test process's
  # XLA_FLAGS (8 devices) must not leak into it.
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["PYTHONPATH"] = REPO
  env[cpu_kernel.BACKEND_ENV_VAR] = backend
  return subprocess.Popen(
    [sys.executable, EXAMPLE, f"--steps={STEPS}", *args],
    env=env,
    stdout=log,
    stderr=subprocess.STDOUT,
    start_new_session=True,
  )


def _finish(processes, logs):
  """Waits for every process (bounded); kills them all on any failure."""
  try:
    for process in processes:
      process.wait(timeout=TIMEOUT_S)
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
        process.wait(timeout=30)
  for process, log in zip(processes, logs):
    log.seek(0)
    assert process.returncode == 0, log.read()


@pytest.mark.slow
@pytest.mark.parametrize("backend", backend_params)
def test_two_processes_equal_one_process(tmp_path, backend):
  address = f"127.0.0.1:{_free_port()}"
  with contextlib.ExitStack() as stack:
    logs = [
      stack.enter_context(open(tmp_path / f"process{i}.log", "w+"))
      for i in range(3)
    ]
    processes = [
      _start(
        f"--coordinator-address={address}",
        "--num-processes=2",
        f"--process-id={i}",
        "--cpu-devices=2",
        "--initialization-timeout=60",
        f"--output={tmp_path / 'two_processes.npz'}",
        backend=backend,
        log=logs[i],
      )
      for i in range(2)
    ]
    _finish(processes, logs[:2])
    single = _start(
      "--num-processes=1",
      "--cpu-devices=4",
      f"--output={tmp_path / 'one_process.npz'}",
      backend=backend,
      log=logs[2],
    )
    _finish([single], logs[2:])
    logs[0].seek(0)
    assert "on 4 devices in 2 processes" in logs[0].read()

  two = np.load(tmp_path / "two_processes.npz")
  one = np.load(tmp_path / "one_process.npz")
  assert sorted(two.files) == sorted(one.files) == ["b1", "b2", "w1", "w2"]
  for name in one.files:
    np.testing.assert_array_equal(two[name], one[name], err_msg=name)
  # Training moved the params: the comparison is not between initial values.
  initial = _example().init_params()
  assert all(not np.array_equal(one[name], initial[name]) for name in initial)


def _example():
  spec = importlib.util.spec_from_file_location("multiprocess_train", EXAMPLE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
