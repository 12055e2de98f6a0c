"""No operand crashes the process: the CPU kernel's three lines of defence.

Issue 12, items 1-2: a params table with fewer rows than its state, int32 or
float64 params over a float32 state, a float64 ``mom`` beside a float32
``ms`` each killed the process (or wrote out of bounds) inside the kernel.
Every case in ``kernel_safety_cases.py`` now raises an ordinary exception
that names the operand: the public API's checks (both backends), the
``cpu_kernel`` checks, and, called directly through ``jax.ffi.ffi_call``
past both, the C++ handlers' own. The cases run in child processes, so a
segfault fails the test instead of killing pytest.
"""

import json
import os
import re
import subprocess
import sys

import pytest

import kernel_safety_cases
from optax_tfrmsprop._src import cpu_kernel
from optax_tfrmsprop._src import numerics
from optax_tfrmsprop._src import update_rules

CHILD = os.path.join(os.path.dirname(__file__), "kernel_safety_cases.py")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

needs_kernel = pytest.mark.skipif(
  not cpu_kernel.is_built(), reason="the C++ kernel is not built"
)


def _run_child(mode, names):
  """Runs the cases in one child; returns {name: outcome}, and its exit."""
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  env.pop(cpu_kernel.BACKEND_ENV_VAR, None)
  proc = subprocess.run(
    [sys.executable, CHILD, mode, *names],
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )
  outcomes, started = {}, None
  for line in proc.stdout.splitlines():
    if line.startswith("{"):
      record = json.loads(line)
      if "start" in record:
        started = record["start"]
      else:
        outcomes[record["case"]] = record
  return outcomes, proc, started


@needs_kernel
@pytest.mark.parametrize("mode", ["x32", "x64"])
def test_every_malformed_operand_raises_and_names_it(mode):
  names = [
    name
    for name, (_, x64, _, _) in kernel_safety_cases.CASES.items()
    if x64 == (mode == "x64")
  ]
  # The well-formed step runs last, after every error.
  names.sort(key=lambda name: name.startswith("kernel_still_right"))
  outcomes, proc, started = _run_child(mode, names)
  if proc.returncode != 0:
    pytest.fail(
      f"the child process died (exit {proc.returncode}) during case "
      f"{started!r}:\n{proc.stderr[-3000:]}"
    )
  failures = []
  for name in names:
    _, _, error, match = kernel_safety_cases.CASES[name]
    got = outcomes[name]
    if error is None:
      if got["error"] is not None:
        failures.append(f"{name}: raised {got['error']}\n{got['traceback']}")
    elif got["error"] is None:
      failures.append(f"{name}: no error")
    elif error != "*" and got["error"] != error:
      failures.append(
        f"{name}: {got['error']} instead of {error}: {got['message']}"
      )
    elif not re.search(match, got["message"], re.DOTALL):
      failures.append(
        f"{name}: message {got['message']!r} does not match {match!r}"
      )
  assert not failures, "\n".join(failures)


def test_cases_cover_both_modes_and_every_line_of_defence():
  """Guards the table itself, so that a filter cannot empty a test."""
  names = kernel_safety_cases.CASES
  for prefix in (
    "apply_",
    "dense_update_",
    "sparse_update_",
    "ffi_dense_",
    "ffi_sparse_",
  ):
    assert any(n.startswith(prefix) for n in names), prefix
  assert {x64 for _, x64, _, _ in names.values()} == {False, True}


@needs_kernel
def test_the_library_and_python_share_the_constants(monkeypatch):
  library = cpu_kernel._library()
  assert library.TfRmspropEigenPacketBytes() == numerics.EIGEN_PACKET_BYTES
  assert library.TfRmspropNumHypers() == len(cpu_kernel.HYPER_ORDER)
  # update_rules' float packet is read from the same definition.
  assert update_rules.PACKET * 4 == numerics.EIGEN_PACKET_BYTES
  # A library built from other sources is refused, with the reason.
  monkeypatch.setattr(numerics, "EIGEN_PACKET_BYTES", 64)
  reason = cpu_kernel._library.__wrapped__()
  assert isinstance(reason, str) and "rebuild" in reason


@needs_kernel
def test_two_targets_dispatch_on_the_element_type(x64):
  """One dense and one sparse target serve float32 and float64 alike."""
  del x64
  import jax
  import jax.numpy as jnp

  import optax_tfrmsprop

  for dtype in (jnp.float32, jnp.float64):
    params = {"w": jnp.ones((4, 8), dtype)}
    state = optax_tfrmsprop.rmsprop_init(params, use_momentum=True)
    grads = {
      "w": optax_tfrmsprop.IndexedSlices(
        jnp.ones((2, 8), dtype), jnp.array([1, 3]), (4, 8)
      )
    }
    for g in (params, grads):
      step = jax.jit(
        lambda p, g, s: optax_tfrmsprop.rmsprop_apply(
          p, g, s, momentum=0.9, backend="ffi"
        )
      )
      hlo = step.lower(params, g, state).as_text()
      target = (
        cpu_kernel.DENSE_TARGET if g is params else cpu_kernel.SPARSE_TARGET
      )
      assert re.search(rf'custom_call_target\s*=\s*"{target}"', hlo) or (
        f'@{target}' in hlo
      ), hlo[:2000]
