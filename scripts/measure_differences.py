"""Measures how far other RMSprop implementations land from tf_keras' legacy.

Produces the numbers of ``docs/differences.md``. Every optimizer starts from
the same float32 parameters and receives the same gradient sequence (the
gradients do not depend on the parameters, so the comparison isolates the
update rule); the final parameters are compared with TensorFlow's in ULPs and
in relative terms.

Run from the repository root::

  python scripts/measure_differences.py
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import jax
import jax.numpy as jnp
import keras
import numpy as np
import optax
import tensorflow as tf
import tf_keras
import torch

import optax_tfrmsprop

STEPS = 100
SIZE = 4096
LR, RHO, EPS = 0.01, 0.9, 1e-7
CONFIGS = {
  "P1 plain": dict(momentum=0.0, centered=False),
  "P2 centered": dict(momentum=0.0, centered=True),
  "P3 momentum 0.9": dict(momentum=0.9, centered=False),
  "P4 momentum 0.9, centered": dict(momentum=0.9, centered=True),
}


def tf_legacy(x0, grads, momentum, centered):
  var = tf.Variable(x0)
  opt = tf_keras.optimizers.legacy.RMSprop(
    LR, rho=RHO, momentum=momentum, epsilon=EPS, centered=centered
  )

  @tf.function
  def step(g):
    opt.apply_gradients([(g, var)])

  for g in grads:
    step(tf.constant(g))
  return var.numpy()


def keras3(x0, grads, momentum, centered):
  var = keras.Variable(x0)
  opt = keras.optimizers.RMSprop(
    LR, rho=RHO, momentum=momentum, epsilon=EPS, centered=centered
  )

  @tf.function
  def step(g):
    opt.apply_gradients([(g, var)])

  for g in grads:
    step(tf.constant(g))
  return np.asarray(var.numpy())


def run_optax(opt, x0, grads):
  params = jnp.asarray(x0)
  state = opt.init(params)

  @jax.jit
  def step(params, state, g):
    updates, state = opt.update(g, state, params)
    return optax.apply_updates(params, updates), state

  for g in grads:
    params, state = step(params, state, g)
  return np.asarray(params)


def this_package(x0, grads, momentum, centered):
  return run_optax(
    optax_tfrmsprop.rmsprop(LR, RHO, momentum, EPS, centered), x0, grads
  )


def optax_closest(x0, grads, momentum, centered):
  # The closest optax.rmsprop settings (spec section 15): epsilon outside the
  # square root without momentum, inside with it; decay as a float32 array so
  # that 1 - decay is computed in float32 as TF does.
  opt = optax.rmsprop(
    LR,
    decay=jnp.float32(RHO),
    eps=EPS,
    eps_in_sqrt=momentum > 0,
    centered=centered,
    momentum=momentum or None,
  )
  return run_optax(opt, x0, grads)


def pytorch(x0, grads, momentum, centered):
  param = torch.nn.Parameter(torch.from_numpy(x0.copy()))
  opt = torch.optim.RMSprop(
    [param],
    lr=LR,
    alpha=RHO,
    eps=EPS,
    momentum=momentum,
    centered=centered,
    foreach=False,
  )
  for g in grads:
    param.grad = torch.from_numpy(g)
    opt.step()
  return param.detach().numpy()


def compare(name, got, want):
  ulp = optax_tfrmsprop.ulp_distance(got, want)
  diff = np.max(np.abs(got.astype(np.float64) - want))
  print(
    f"  {name:22s} max {int(ulp.max()):>10d} ULP, median "
    f"{int(np.median(ulp)):>4d} ULP, max |difference| {diff:.1e}"
  )


def main():
  rng = np.random.default_rng(0)
  x0 = rng.normal(size=SIZE).astype(np.float32)
  grads = [
    (rng.normal(size=SIZE) * 10.0 ** rng.uniform(-3, 1, SIZE)).astype(
      np.float32
    )
    for _ in range(STEPS)
  ]
  print(
    f"float32, {SIZE} parameters, {STEPS} steps, lr={LR}, rho={RHO}, "
    f"epsilon={EPS}; distance from tf_keras.optimizers.legacy.RMSprop:"
  )
  for label, config in CONFIGS.items():
    want = tf_legacy(x0, grads, **config)
    print(label)
    for name, fn in (
      ("optax_tfrmsprop (jit)", this_package),
      ("optax.rmsprop (jit)", optax_closest),
      ("Keras 3 RMSprop", keras3),
      ("torch.optim.RMSprop", pytorch),
    ):
      compare(name, fn(x0, grads, **config), want)

  # Hyperparameter dtype: one step on a float64 parameter with lr = 0.1.
  # TF materialises lr in a float32 variable, so the step is scaled by
  # float32(0.1) = 0.10000000149011612.
  with jax.enable_x64(True):
    x = np.ones(4, np.float64)
    g = np.full(4, 0.5)
    var = tf.Variable(x)
    tf_keras.optimizers.legacy.RMSprop(0.1).apply_gradients(
      [(tf.constant(g), var)]
    )
    want = x - var.numpy()
    params = jnp.asarray(x)
    state = optax_tfrmsprop.rmsprop(0.1).init(params)
    upd, _ = optax_tfrmsprop.rmsprop(0.1).update(jnp.asarray(g), state)
    ours = -np.asarray(upd)
    opt = optax.rmsprop(0.1, decay=0.9, eps=1e-7, eps_in_sqrt=False)
    upd, _ = opt.update(jnp.asarray(g), opt.init(params))
    theirs = -np.asarray(upd)
    param = torch.nn.Parameter(torch.from_numpy(x.copy()))
    topt = torch.optim.RMSprop([param], lr=0.1, alpha=0.9, eps=1e-7)
    param.grad = torch.from_numpy(g)
    topt.step()
    torch_step = x - param.detach().numpy()
  print("float64 parameter, lr=0.1, first step size / TF's step size - 1:")
  for name, step in (
    ("optax_tfrmsprop", ours),
    ("optax.rmsprop", theirs),
    ("torch.optim.RMSprop", torch_step),
  ):
    print(f"  {name:24s} {step[0] / want[0] - 1:+.2e}")

  # Sparse gradients.
  emb = torch.nn.Embedding(4, 2, sparse=True)
  emb(torch.tensor([1])).sum().backward()
  try:
    torch.optim.RMSprop(emb.parameters()).step()
    print("torch.optim.RMSprop accepted a sparse gradient")
  except RuntimeError as e:
    print(f"torch.optim.RMSprop, sparse gradient: RuntimeError: {e}")


if __name__ == "__main__":
  main()
