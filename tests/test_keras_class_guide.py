"""The port of TF's "training loop from scratch" in docs/keras_api.md runs.

The block after ``<!-- guide-port -->`` runs as written; the TF script it
ports, on the same weights and batches, ends where it ends (up to the two
frameworks' gradient arithmetic: the optimizer is bit-exact, the forward and
backward passes are not).
"""

import contextlib
import io
import pathlib
import re

import numpy as np
import pytest

_DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "keras_api.md"


def _blocks_after(marker: str) -> list[str]:
  text = _DOC.read_text()
  tail = text[text.index(marker) :]
  return re.findall(r"```python\n(.*?)```", tail, flags=re.S)


def _run(source: str, namespace: dict) -> str:
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    exec(compile(source, str(_DOC), "exec"), namespace)
  return out.getvalue()


@pytest.mark.slow
def test_the_guide_port_runs_and_trains_like_the_tf_script():
  port, minimize_variant = _blocks_after("<!-- guide-port -->")[:2]
  setup = port[: port.index("epochs = 2")]
  start = {}
  _run(setup, start)  # The initial weights and the batches.
  initial = [w.numpy() for w in start["trainable_weights"]]

  namespace = {}
  printed = _run(port, namespace)
  assert printed.count("Training loss at step 0:") == 2
  final = [w.numpy() for w in namespace["trainable_weights"]]
  assert int(namespace["optimizer"].iterations) == 2 * 32

  from tests.tf_reference import tf
  from tests.tf_reference import tf_keras

  weights = [tf.Variable(w) for w in initial]
  optimizer = tf_keras.optimizers.legacy.RMSprop(learning_rate=1e-3)
  loss_fn = tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)

  @tf.function
  def train_step(x, y):
    with tf.GradientTape() as tape:
      h = tf.nn.relu(x @ weights[0] + weights[1])
      h = tf.nn.relu(h @ weights[2] + weights[3])
      loss_value = loss_fn(y, h @ weights[4] + weights[5])
    grads = tape.gradient(loss_value, weights)
    optimizer.apply_gradients(zip(grads, weights))

  for _ in range(2):
    for x, y in start["train_dataset"]:
      train_step(tf.constant(x), tf.constant(y))
  for ours, theirs, before in zip(final, weights, initial):
    moved = np.abs(theirs.numpy() - before).max()
    assert moved > 1e-3
    # The frameworks' gradients differ in the last bits; RMSprop's updates
    # are normalised, so the runs stay within a small part of the distance
    # they travelled.
    assert np.abs(ours - theirs.numpy()).max() <= 0.01 * moved

  # The minimize variant continues the same loop: one trace for all steps.
  _run(minimize_variant, namespace)
  optimizer = namespace["optimizer"]
  assert int(optimizer.iterations) == 3 * 32
  assert optimizer._gradient_cache.traces == 1
