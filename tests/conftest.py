"""Test set-up: eight CPU devices for the sharding tests, quiet TensorFlow."""

import os

# Must happen before jax initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax
import pytest


@pytest.fixture
def x64():
  """Runs the test with 64-bit jax types enabled."""
  with jax.enable_x64(True):
    yield


@pytest.fixture(params=["ffi", "xla"])
def both_backends(request, monkeypatch):
  """Runs the test on the CPU kernel and on the XLA path (backend="auto")."""
  import toolbox  # After XLA_FLAGS is set.

  toolbox.select_backend(request.param, monkeypatch)
  return request.param
