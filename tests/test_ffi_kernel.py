"""The single-pass CPU kernel: TF-exact, equal to the XLA path, composable."""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_tfrmsprop
from optax_tfrmsprop._src import cpu_kernel
import toolbox
from toolbox import backend_params
from toolbox import needs_kernel

# 33708 elements in all: above the kernel's threshold for splitting work over
# threads, so thread ranges cut across leaves; (5,) has a scalar-loop tail.
SHAPES = ((3, 11000), (37, 19), (5,))
CONFIG = dict(learning_rate=0.01, rho=0.9, epsilon=1e-7)


@functools.cache
def _problem(dtype, steps):
  return toolbox.problem(0, dtype, steps, SHAPES)


@functools.cache
def _tf_result(path, dtype, steps):
  import tf_reference

  return tf_reference.run_tf(
    *_problem(dtype, steps), **CONFIG, **toolbox.options(path)
  )


def _run(path, dtype, steps, backend, *, fused):
  """``steps`` jitted steps; ``fused`` uses rmsprop_apply with donation."""
  config = dict(CONFIG, **toolbox.options(path))
  opt = optax_tfrmsprop.rmsprop(**config, backend=backend)
  del config["centered"]  # rmsprop_apply reads it from the state.
  fused = dict(config, backend=backend) if fused else None
  return toolbox.run(opt, *_problem(dtype, steps), fused=fused)


@pytest.mark.slow
@pytest.mark.parametrize("fused", [False, True], ids=["optax", "fused"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("path", toolbox.DENSE_PATHS)
@pytest.mark.parametrize("backend", backend_params)
def test_200_steps_match_tf(x64, backend, path, dtype, fused):
  del x64
  tf_vars, tf_slots, iterations = _tf_result(path, dtype, 200)
  params, state = _run(path, dtype, 200, backend, fused=fused)
  assert int(state.count) == iterations == 200
  toolbox.assert_same_as_tf(params, state, tf_vars, tf_slots)


def _steps(opt, params, n=5, seed=1, jit=True):
  rng = np.random.default_rng(seed)
  state = opt.init(params)

  def step(p, s, g):
    updates, s = opt.update(g, s, p)
    return optax.apply_updates(p, updates), s

  step = jax.jit(step) if jit else step
  for _ in range(n):
    grads = jax.tree.map(
      lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params
    )
    params, state = step(params, state, grads)
  return params, state


def _params(dtype=jnp.float32):
  rng = np.random.default_rng(2)
  return {
    "w": jnp.asarray(rng.normal(size=(64, 33)), dtype),
    "b": jnp.asarray(rng.normal(size=(33,)), dtype),
  }


COMPOSITIONS = {
  "chain": lambda backend: optax.chain(
    optax.identity(),
    optax_tfrmsprop.rmsprop(0.01, momentum=0.9, backend=backend),
  ),
  "inject_hyperparams": lambda backend: optax.inject_hyperparams(
    optax_tfrmsprop.rmsprop, static_args=("centered", "backend")
  )(
    learning_rate=0.01,
    rho=0.8,
    momentum=0.5,
    epsilon=1e-6,
    centered=True,
    backend=backend,
  ),
  "masked": lambda backend: optax.masked(
    optax_tfrmsprop.rmsprop(0.01, centered=True, backend=backend),
    {"w": True, "b": False},
  ),
  "multi_steps": lambda backend: optax.MultiSteps(
    optax_tfrmsprop.rmsprop(0.01, momentum=0.9, centered=True, backend=backend),
    every_k_schedule=2,
  ),
}


@needs_kernel
@pytest.mark.parametrize("name", sorted(COMPOSITIONS))
def test_composes_bit_identically(name):
  make = COMPOSITIONS[name]
  toolbox.assert_bitwise(
    _steps(make("ffi"), _params()), _steps(make("xla"), _params())
  )


@needs_kernel
def test_schedule_and_traced_hyperparams():
  schedule = optax.exponential_decay(0.1, 3, 0.5)

  def run(backend):
    opt = optax_tfrmsprop.rmsprop(
      schedule, momentum=0.9, decay=0.01, backend=backend
    )
    return _steps(opt, _params())

  toolbox.assert_bitwise(run("ffi"), run("xla"))


@needs_kernel
def test_half_precision_leaves_fall_back_to_xla():
  params = dict(_params(), h=jnp.ones((9,), jnp.bfloat16))

  def make(backend):
    return optax_tfrmsprop.rmsprop(0.01, momentum=0.9, backend=backend)

  toolbox.assert_bitwise(
    _steps(make("ffi"), params), _steps(make("xla"), params)
  )


@needs_kernel
def test_sharded_params_update_shard_by_shard():
  mesh = jax.make_mesh((4, 2), ("x", "y"))
  spec = {"w": jax.P("x", "y"), "b": jax.P("y")}
  shardings = jax.tree.map(lambda s: jax.NamedSharding(mesh, s), spec)
  rng = np.random.default_rng(3)
  params = jax.device_put(
    {
      "w": jnp.asarray(rng.normal(size=(64, 32)), jnp.float32),
      "b": jnp.asarray(rng.normal(size=(32,)), jnp.float32),
    },
    shardings,
  )
  grads = jax.device_put(jax.tree.map(lambda p: p * 0.5 + 1, params), shardings)

  def step(backend, p, g):
    opt = optax_tfrmsprop.rmsprop(
      0.01, momentum=0.9, centered=True, backend=backend
    )
    state = opt.init(p)
    updates, state = opt.update(g, state, p)
    return optax.apply_updates(p, updates), state

  ffi_step = jax.jit(functools.partial(step, "ffi"))
  hlo = ffi_step.lower(params, grads).compile().as_text()
  assert "tfrmsprop_dense" in hlo
  assert "all-gather" not in hlo and "all-reduce" not in hlo
  # Each device runs the kernel on its own 16x16 block.
  assert "f32[16,16]" in hlo
  new_params, new_state = ffi_step(params, grads)
  for leaf, sharding in ((new_params, shardings), (new_state.mom, shardings)):
    jax.tree.map(
      lambda x, s: (
        x.sharding.is_equivalent_to(s, x.ndim)
        or pytest.fail(f"{x.sharding} != {s}")
      ),
      leaf,
      sharding,
    )
  toolbox.assert_bitwise(
    (new_params, new_state),
    jax.jit(functools.partial(step, "xla"))(params, grads),
  )


@needs_kernel
def test_donated_params_and_state_update_in_place():
  params = _params()
  opt = optax_tfrmsprop.rmsprop(
    0.01, momentum=0.9, centered=True, backend="ffi"
  )
  step = jax.jit(
    lambda p, s, g: optax_tfrmsprop.rmsprop_apply(
      p, g, s, learning_rate=0.01, momentum=0.9, backend="ffi"
    ),
    donate_argnums=(0, 1),
  )
  state = opt.init(params)
  hlo = step.lower(params, state, params).compile().as_text()
  assert "custom-call" in hlo and " copy(" not in hlo


@needs_kernel
def test_other_platforms_lower_to_jnp():
  opt = optax_tfrmsprop.rmsprop(0.01, momentum=0.9, backend="ffi")
  params = _params()
  state = opt.init(params)
  for platform, has_kernel in (("cpu", True), ("cuda", False), ("tpu", False)):
    exported = jax.export.export(
      jax.jit(opt.update),
      platforms=[platform],
      disabled_checks=[
        jax.export.DisabledSafetyCheck.custom_call("tfrmsprop_dense")
      ],
    )(params, state)
    assert ("tfrmsprop_dense" in exported.mlir_module()) == has_kernel


def test_backend_selection(monkeypatch):
  with pytest.raises(ValueError, match="backend"):
    optax_tfrmsprop.rmsprop(backend="gpu")
  monkeypatch.setenv(cpu_kernel.BACKEND_ENV_VAR, "xla")
  assert not cpu_kernel.use_kernel("auto")
  assert cpu_kernel.use_kernel("ffi") == optax_tfrmsprop.cpu_kernel_is_built()
  monkeypatch.setenv(cpu_kernel.BACKEND_ENV_VAR, "fast")
  with pytest.raises(ValueError, match=cpu_kernel.BACKEND_ENV_VAR):
    cpu_kernel.use_kernel("auto")
  monkeypatch.delenv(cpu_kernel.BACKEND_ENV_VAR)
  assert cpu_kernel.use_kernel("auto") == optax_tfrmsprop.cpu_kernel_is_built()
  assert not cpu_kernel.use_kernel("xla")


def test_unbuilt_kernel_falls_back_with_one_warning(monkeypatch):
  monkeypatch.delenv(cpu_kernel.BACKEND_ENV_VAR, raising=False)
  monkeypatch.setattr(cpu_kernel, "_load", lambda: "not built (test)")
  cpu_kernel._warn_fallback.cache_clear()
  with pytest.warns(RuntimeWarning, match="not built"):
    assert not cpu_kernel.use_kernel("auto")
  with pytest.raises(RuntimeError, match="backend='ffi'"):
    cpu_kernel.use_kernel("ffi")
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # Warned once already: no second warning.
    _steps(optax_tfrmsprop.rmsprop(0.01), _params(), n=1)
  cpu_kernel._warn_fallback.cache_clear()
