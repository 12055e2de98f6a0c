"""The parity doctor, on records of real TF, Keras and optax runs.

Each recorder is proven not to change the run it records (the recorded run
ends bitwise equal to the same run unrecorded), and the doctor must name the
semantics that reproduce each record: tf_keras' ``Model.fit`` and a
``GradientTape`` loop (eager, ``tf.function``, XLA), Keras 3, TF1 in a
session, and ``optax.rmsprop`` with its options. Records with a known fault
check that the hint names the fault.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optax_tfrmsprop import doctor

tf = pytest.importorskip("tensorflow")
tf_keras = pytest.importorskip("tf_keras")

import tf_reference  # noqa: E402  (tests/ is on sys.path)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_X = np.random.RandomState(0).randn(64, 5).astype(np.float32)
_Y = np.random.RandomState(1).randn(64, 1).astype(np.float32)
_W0 = [
  np.random.RandomState(2).randn(5, 8).astype(np.float32),
  np.random.RandomState(3).randn(8).astype(np.float32) * 0.1,
]
_BATCHES = np.random.RandomState(4).randn(10, 16, 5).astype(np.float32)


def _bits_equal(a, b) -> bool:
  return len(a) == len(b) and all(
    np.array_equal(
      np.atleast_1d(x).view(np.uint8), np.atleast_1d(y).view(np.uint8)
    )
    for x, y in zip(a, b)
  )


def _fit_legacy(path, *, epochs=3, jit_compile=False, steps=10, **config):
  """A tf_keras Model.fit run; returns its final weights and slots."""
  tf_keras.utils.set_random_seed(0)
  model = tf_keras.Sequential(
    [
      tf_keras.layers.Dense(8, activation="tanh", input_shape=(5,)),
      tf_keras.layers.Dense(1),
    ]
  )
  opt = tf_keras.optimizers.legacy.RMSprop(**config)
  model.compile(opt, "mse", jit_compile=jit_compile)
  if path is not None:
    doctor.record(model, path, steps=steps)
  model.fit(_X, _Y, batch_size=16, epochs=epochs, verbose=0, shuffle=False)
  return [v.numpy() for v in model.weights] + opt.get_weights()


def _loss(vs, x):
  return tf.reduce_mean(tf.tanh(x @ vs[0] + vs[1]) ** 2)


def _tape_loop(opt, path, *, graph=True, jit_compile=False, steps=8, warmup=0):
  """A GradientTape loop; the apply step alone may be XLA-compiled.

  ``warmup`` steps run before the recorder is attached (a record that
  starts from a trained optimizer).
  """
  vs = [tf.Variable(w) for w in _W0]

  def apply_gradients(g):
    opt.apply_gradients(zip(g, vs))

  # Traced anew once recording starts: a function traced before record()
  # keeps running without the instrumentation.
  trace = lambda: (
    tf.function(apply_gradients, jit_compile=jit_compile)
    if graph
    else apply_gradients
  )
  apply = trace()

  def grads(x):
    with tf.GradientTape() as tape:
      loss = _loss(vs, x)
    return tape.gradient(loss, vs)

  recorder = None
  for k, x in enumerate(_BATCHES):
    if k == warmup and path is not None:
      recorder = doctor.record(opt, path, steps=steps)
      apply = trace()
    apply(grads(x))
  if recorder is not None:
    recorder.save()
  return [v.numpy() for v in vs]


@pytest.fixture(scope="module")
def records(tmp_path_factory):
  """Records shared by several tests (each made once)."""
  return tmp_path_factory.mktemp("records")


# The record file.


def test_record_file_round_trips_without_pickle(tmp_path):
  import ml_dtypes

  writer = doctor.RecordWriter(
    source="custom",
    optimizer="test",
    config=dict(learning_rate=0.1, rho=0.9, epsilon=1e-7),
    names=["table", "w"],
    slot_names={"ms": "square_avg"},
  )
  table = np.zeros((4, 2), np.float32)
  w = np.ones(3, ml_dtypes.bfloat16)
  writer.begin([table, w])
  for k in range(3):
    rows = (np.full((2, 2), k, np.float32), np.array([k, 0]))
    writer.step(
      [rows, w * k], [table + k, w + k], {"ms": [table, w]}, iteration=k
    )
  path = writer.save(str(tmp_path / "r.npz"))
  with np.load(path, allow_pickle=False) as data:  # Readable unpickled.
    assert "meta" in data.files and "grad0.values" in data.files
  rec = doctor.load(path)
  assert rec.num_steps == 3 and rec.names == ["table", "w"]
  assert rec.params[1].dtype == ml_dtypes.bfloat16
  assert _bits_equal([rec.params[1][2]], [w + 1])
  values, indices, shape = rec.grad(2, 0)
  np.testing.assert_array_equal(indices, [2, 0])
  assert shape == (4, 2) and np.all(values == 2)
  assert list(rec.iterations) == [0, 1, 2]
  assert rec.truncated(2).num_steps == 2


def test_record_writer_names_a_wrong_input():
  with pytest.raises(ValueError, match="source"):
    doctor.RecordWriter(
      source="torch", optimizer="x", config={}, names=[], slot_names={"ms": "v"}
    )
  writer = doctor.RecordWriter(
    source="custom",
    optimizer="x",
    config=dict(learning_rate=0.1, rho=0.9, epsilon=1e-7),
    names=["a"],
    slot_names={"ms": "v"},
  )
  with pytest.raises(ValueError, match="begin"):
    writer.step([np.zeros(1)], [np.zeros(1)], {"ms": [np.zeros(1)]})
  writer.begin([np.zeros(1)])
  with pytest.raises(ValueError, match="slots"):
    writer.step([np.zeros(1)], [np.zeros(1)], {})


def test_load_rejects_a_foreign_file(tmp_path):
  path = tmp_path / "x.npz"
  np.savez(path, a=np.zeros(2))
  with pytest.raises(ValueError, match="not a parity doctor record"):
    doctor.load(str(path))


def _plain_record(path, *, rho=0.9, steps=5):
  """TF's plain path (epsilon outside the root) in numpy, recorded by hand.

  The config always says rho=0.9; the run decays ms with ``rho``.
  """
  f32 = np.float32
  rng = np.random.default_rng(0)
  writer = doctor.RecordWriter(
    source="custom",
    optimizer="port",
    config=dict(
      learning_rate=0.01, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False
    ),
    names=["x"],
    slot_names={"ms": "rms"},
  )
  x = rng.normal(size=6).astype(f32)
  ms = np.zeros(6, f32)
  writer.begin([x])
  for _ in range(steps):
    g = rng.normal(size=6).astype(f32)
    ms = ms + (g * g - ms) * (f32(1) - f32(rho))
    x = x - f32(0.01) * g / (np.sqrt(ms) + f32(1e-7))
    writer.step([g], [x.copy()], {"ms": [ms.copy()]})
  return writer.save(path)


def _with_meta(**changes):
  """A malformation: the record's meta with ``changes`` (None deletes)."""

  def change(arrays):
    meta = json.loads(str(arrays["meta"]))
    for key, value in changes.items():
      if value is None:
        del meta[key]
      else:
        meta[key] = value(meta) if callable(value) else value
    arrays["meta"] = np.array(json.dumps(meta))

  return change


def _with_config(**changes):
  return _with_meta(config=lambda meta: dict(meta["config"], **changes))


def _set(name, make):
  def change(arrays):
    arrays[name] = make(arrays[name])

  return change


@pytest.mark.parametrize(
  "malform, what",
  [
    (_set("meta", lambda _: np.array("[1, 2]")), "'meta' is a JSON list"),
    (_set("meta", lambda _: np.array("{not json")), "'meta' is not valid JSON"),
    (_with_meta(config=None), "meta has no 'config'"),
    (_set("grad0", lambda g: g[:2]), "'grad0' has shape (2, 6)"),
    (
      _with_meta(slots={"ms": "rms", "mg": "mg"}),
      "it has no array 'mg0'",
    ),
    (
      _with_meta(variables=lambda meta: meta["variables"] * 2),
      "it has no array 'var1'",
    ),
    (_set("var0", lambda v: v[:, :3]), "'var0' has shape (6, 3)"),
    (_set("ms0", lambda v: v[:, :2]), "'ms0' has shape (5, 2)"),
    (_with_config(rho="abc"), "meta['config']['rho'] is 'abc'"),
    (
      _with_config(learning_rate=None),
      "meta['config']['learning_rate'] is None",
    ),
    (_set("var0", lambda v: v.astype(np.int32)), "'var0' has dtype int32"),
    (_with_meta(steps=7), "meta['steps'] is 7"),
  ],
)
def test_malformed_record_is_refused_as_unreadable(tmp_path, malform, what):
  # Every malformation is one ValueError naming what is wrong, which the
  # command line reports as an unreadable file (2), not as "no match" (1).
  from optax_tfrmsprop.doctor import __main__ as cli

  good = np.load(_plain_record(str(tmp_path / "good.npz")))
  arrays = {k: good[k] for k in good.files}
  malform(arrays)
  path = str(tmp_path / "bad.npz")
  np.savez(path, **arrays)
  with pytest.raises(ValueError) as error:
    doctor.load(path)
  message = str(error.value)
  assert message.startswith(f"{path} is not a valid parity doctor record: ")
  assert what in message
  assert cli.main([path]) == 2


def test_record_rejects_a_foreign_target(tmp_path):
  with pytest.raises(TypeError, match="RMSprop"):
    doctor.record(tf_keras.optimizers.legacy.Adam(), str(tmp_path / "r.npz"))
  with pytest.raises(TypeError, match="factory"):
    doctor.record(optax.adam, str(tmp_path / "r.npz"), learning_rate=0.1)


# tf_keras legacy: Model.fit and GradientTape loops.


@pytest.mark.parametrize(
  "config",
  [
    dict(learning_rate=0.01),
    dict(learning_rate=0.01, momentum=0.9, centered=True),
  ],
  ids=["plain", "momentum_centered"],
)
def test_model_fit_record_is_exact_keras_legacy(tmp_path, config):
  path = str(tmp_path / "fit.npz")
  unrecorded = _fit_legacy(None, **config)
  recorded = _fit_legacy(path, **config)
  assert _bits_equal(recorded, unrecorded)  # Recording changes nothing.
  rec = doctor.load(path)
  assert rec.num_steps == 10 and rec.meta["run"]["how"] == "model_fit"
  assert rec.meta["run"]["graph"] and not rec.meta["run"]["jit_compile"]
  assert rec.fresh and list(rec.iterations) == list(range(10))
  d = doctor.diagnose(path)
  names = [r.candidate.name for r in d.exact]
  assert "keras_legacy / tf_cpu" in names, d.report()
  assert d.closest.candidate.family == "keras_legacy"
  assert d.closest.ulps.max() == 0 and d.hints == []
  text = d.report()
  assert "REPRODUCED EXACTLY" in text and "optax_tfrmsprop.rmsprop(" in text
  assert d.findings.initial_ms == 0.0
  assert d.findings.epsilon in (
    None,
    "outside" if "momentum" not in config else "inside",
  )


@pytest.mark.slow
def test_model_fit_jit_compile_is_recorded_without_changing_it(tmp_path):
  path = str(tmp_path / "xla.npz")
  config = dict(learning_rate=0.01, momentum=0.9)
  unrecorded = _fit_legacy(None, jit_compile=True, **config)
  recorded = _fit_legacy(path, jit_compile=True, **config)
  assert _bits_equal(recorded, unrecorded)
  rec = doctor.load(path)
  assert rec.meta["run"]["jit_compile"] and rec.num_steps == 10
  # The XLA-recorded steps are consistent with the run's final weights:
  # the run continued from the last recorded step.
  d = doctor.diagnose(path, families=["keras_legacy"])
  assert d.closest.candidate.family == "keras_legacy"
  assert set(d.tiers()) == {"tf_cpu", "tf_xla"}


def test_gradient_tape_eager_record_is_exact(tmp_path):
  path = str(tmp_path / "tape.npz")
  make = lambda: tf_keras.optimizers.legacy.RMSprop(0.02, centered=True)
  unrecorded = _tape_loop(make(), None, graph=False)
  recorded = _tape_loop(make(), path, graph=False)
  assert _bits_equal(recorded, unrecorded)
  rec = doctor.load(path)
  assert rec.meta["run"]["how"] == "eager" and list(rec.slots) == ["ms", "mg"]
  d = doctor.diagnose(path)
  assert "keras_legacy / tf_cpu" in [r.candidate.name for r in d.exact]


def test_gradient_tape_xla_step_is_exact_on_the_tf_xla_tier(tmp_path):
  path = str(tmp_path / "tape_xla.npz")
  make = lambda: tf_keras.optimizers.legacy.RMSprop(0.01, momentum=0.5)
  unrecorded = _tape_loop(make(), None, jit_compile=True)
  recorded = _tape_loop(make(), path, jit_compile=True)
  assert _bits_equal(recorded, unrecorded)
  d = doctor.diagnose(path)
  assert d.record.meta["run"]["jit_compile"]
  assert [r.candidate.name for r in d.exact] == ["keras_legacy / tf_xla"]
  assert d.tiers()["tf_xla"] == "exact"
  assert d.tiers()["tf_cpu"].startswith("departs at step")


@pytest.mark.parametrize("dtype", ["float64", "float16", "bfloat16"])
def test_records_of_other_dtypes_are_replayed_in_their_dtype(tmp_path, dtype):
  path = str(tmp_path / f"{dtype}.npz")
  w = tf.Variable(tf.cast(_W0[0], dtype))
  opt = tf_keras.optimizers.legacy.RMSprop(0.01, momentum=0.9)
  doctor.record(opt, path, steps=4)

  @tf.function
  def step(x):
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(tf.tanh(tf.cast(x, dtype) @ w) ** 2)
    opt.apply_gradients([(tape.gradient(loss, w), w)])

  for x in _BATCHES[:4]:
    step(x)
  rec = doctor.load(path)
  assert rec.meta["variables"][0]["dtype"] == dtype
  d = doctor.diagnose(path, families=["keras_legacy"])
  assert "keras_legacy / tf_cpu" in [r.candidate.name for r in d.exact], (
    d.report()
  )


def test_record_of_a_trained_optimizer_starts_from_its_slots(tmp_path):
  path = str(tmp_path / "late.npz")
  make = lambda: tf_keras.optimizers.legacy.RMSprop(
    0.01, momentum=0.9, decay=0.05
  )
  _tape_loop(make(), path, warmup=3, steps=5)
  rec = doctor.load(path)
  assert not rec.fresh and list(rec.iterations) == [3, 4, 5, 6, 7]
  assert set(rec.initial_slots) == {"ms", "mom"}
  d = doctor.diagnose(path, families=["keras_legacy"])
  assert "keras_legacy / tf_cpu" in [r.candidate.name for r in d.exact]


def test_learning_rate_changed_by_a_callback_is_replayed(tmp_path):
  path = str(tmp_path / "sched_cb.npz")
  tf_keras.utils.set_random_seed(0)
  model = tf_keras.Sequential([tf_keras.layers.Dense(1, input_shape=(5,))])
  model.compile(tf_keras.optimizers.legacy.RMSprop(0.01), "mse")
  doctor.record(model, path, steps=8)
  halve = tf_keras.callbacks.LearningRateScheduler(
    lambda epoch, lr: lr * 0.5 if epoch else lr
  )
  model.fit(
    _X, _Y, batch_size=16, epochs=2, verbose=0, shuffle=False, callbacks=[halve]
  )
  rec = doctor.load(path)
  assert rec.config["learning_rate"] == "per_step"
  assert rec.learning_rates[0] == 2 * rec.learning_rates[-1]
  d = doctor.diagnose(path, families=["keras_legacy"])
  assert "keras_legacy / tf_cpu" in [r.candidate.name for r in d.exact]


@pytest.mark.slow
def test_sparse_model_fit_record_is_exact(tmp_path):
  """Embedding gradients (IndexedSlices) with clipnorm and decay: P6."""
  path = str(tmp_path / "sparse.npz")
  ids = np.random.RandomState(5).randint(0, 30, size=(64, 4))

  def fit(record_path):
    tf_keras.utils.set_random_seed(0)
    model = tf_keras.Sequential(
      [
        tf_keras.layers.Embedding(30, 4, input_length=4),
        tf_keras.layers.Flatten(),
        tf_keras.layers.Dense(1),
      ]
    )
    opt = tf_keras.optimizers.legacy.RMSprop(
      0.01, centered=True, clipnorm=1.0, decay=0.01
    )
    model.compile(opt, "mse")
    if record_path:
      doctor.record(model, record_path, steps=6)
    model.fit(ids, _Y, batch_size=16, epochs=2, verbose=0, shuffle=False)
    return [v.numpy() for v in model.weights] + opt.get_weights()

  assert _bits_equal(fit(path), fit(None))
  rec = doctor.load(path)
  assert rec.meta["variables"][0]["sparse"]
  d = doctor.diagnose(path)
  assert "keras_legacy / tf_cpu" in [r.candidate.name for r in d.exact]


def test_schedule_in_model_fit_is_diagnosed(tmp_path):
  path = str(tmp_path / "schedule.npz")
  schedule = tf_keras.optimizers.schedules.PolynomialDecay(0.05, 12, 0.001)
  _fit_legacy(path, learning_rate=schedule, steps=12)
  d = doctor.diagnose(path, families=["keras_legacy"])
  # Model.fit evaluates the schedule in a graph, and the ports reproduce it.
  assert "keras_legacy / tf_cpu / graph schedule" in [
    r.candidate.name for r in d.exact
  ], d.report()


def test_schedule_in_an_eager_loop_is_named_eager(tmp_path):
  """Eager evaluation is named, and the graph one departs for that reason."""
  path = str(tmp_path / "eager_schedule.npz")
  schedule = tf_keras.optimizers.schedules.InverseTimeDecay(0.05, 3, 0.7)
  _tape_loop(
    tf_keras.optimizers.legacy.RMSprop(schedule), path, graph=False, steps=10
  )
  d = doctor.diagnose(path, families=["keras_legacy"])
  names = [r.candidate.name for r in d.exact]
  assert "keras_legacy / tf_cpu / eager schedule" in names, d.report()
  graph = d.replay_of("keras_legacy / tf_cpu / graph schedule")
  if not graph.exact:  # The two evaluations differ at some recorded step.
    assert any(h.startswith("schedule evaluation") for h in d.explain(graph)), (
      d.explain(graph)
    )


# Keras 3, TF1.


def test_keras3_eager_record_is_keras3(tmp_path):
  keras = tf_reference.keras3()
  path = str(tmp_path / "k3.npz")
  unrecorded = _tape_loop(
    keras.optimizers.RMSprop(0.01, momentum=0.9), None, graph=False
  )
  recorded = _tape_loop(
    keras.optimizers.RMSprop(0.01, momentum=0.9), path, graph=False
  )
  assert _bits_equal(recorded, unrecorded)
  rec = doctor.load(path)
  assert rec.source == "keras3" and set(rec.slots) == {"ms", "mom"}
  d = doctor.diagnose(path)
  assert "keras3 / tf_cpu" in [r.candidate.name for r in d.exact], d.report()
  assert d.findings.one_minus_rho == "double"


@pytest.mark.slow
def test_keras3_model_fit_is_named_keras3(tmp_path):
  keras = tf_reference.keras3()
  path = str(tmp_path / "k3_fit.npz")

  def fit(record_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
      [
        keras.Input((5,)),
        keras.layers.Dense(8, activation="tanh"),
        keras.layers.Dense(1),
      ]
    )
    model.compile(keras.optimizers.RMSprop(0.01), "mse")
    if record_path:
      doctor.record(model, record_path, steps=8)
    model.fit(_X, _Y, batch_size=16, epochs=3, verbose=0, shuffle=False)
    return [v.numpy() for v in model.weights]

  assert _bits_equal(fit(path), fit(None))
  d = doctor.diagnose(path)
  assert d.closest.candidate.family == "keras3", d.report()
  if not d.exact:  # Grappler's rsqrt rewrite of Keras 3's graph.
    assert any("rsqrt" in h for h in d.hints), d.report()


_KERAS3_JAX_FIT = """
import os, sys
os.environ["KERAS_BACKEND"] = "jax"
import numpy as np, keras
from optax_tfrmsprop import doctor
x = np.random.RandomState(0).randn(64, 5).astype(np.float32)
y = np.random.RandomState(1).randn(64, 1).astype(np.float32)
def fit(path):
  keras.utils.set_random_seed(0)
  model = keras.Sequential([keras.Input((5,)),
                            keras.layers.Dense(8, activation="tanh"),
                            keras.layers.Dense(1)])
  model.compile(keras.optimizers.RMSprop(0.01, momentum=0.9), "mse")
  if path:
    doctor.record(model, path, steps=8)
  model.fit(x, y, batch_size=16, epochs=3, verbose=0, shuffle=False)
  return [np.asarray(v.value) for v in model.weights]
same = all(np.array_equal(a.view(np.uint8), b.view(np.uint8))
           for a, b in zip(fit(None), fit(sys.argv[1])))
print("recorded run equals unrecorded run:", same)
"""


@pytest.mark.slow
def test_keras3_jax_backend_model_fit_is_keras3_tf_xla(tmp_path):
  """Keras 3 on JAX: Model.fit jit-compiles stateless_apply."""
  pytest.importorskip("keras")
  path = str(tmp_path / "k3_jax.npz")
  env = dict(
    os.environ,
    KERAS_BACKEND="jax",
    PYTHONPATH=os.pathsep.join(
      filter(None, [REPO, os.environ.get("PYTHONPATH")])
    ),
  )
  done = subprocess.run(
    [sys.executable, "-c", _KERAS3_JAX_FIT, path],
    capture_output=True,
    text=True,
    env=env,
    timeout=600,
    check=False,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  assert "recorded run equals unrecorded run: True" in done.stdout
  rec = doctor.load(path)
  assert rec.source == "keras3" and rec.meta["run"]["how"] == "model_fit"
  d = doctor.diagnose(path, families=["keras3"])
  assert [r.candidate.name for r in d.exact] == ["keras3 / tf_xla"], d.report()


def test_tf1_session_record_is_tf1(tmp_path):
  path = str(tmp_path / "tf1.npz")

  def run(record_path):
    with tf.Graph().as_default():
      w = tf.compat.v1.get_variable("w", initializer=tf.constant(_W0[0]))
      x = tf.compat.v1.placeholder(tf.float32, (16, 5))
      step = tf.compat.v1.train.get_or_create_global_step()
      lr = tf.compat.v1.train.exponential_decay(0.01, step, 2, 0.5)
      opt = tf.compat.v1.train.RMSPropOptimizer(lr, momentum=0.9, centered=True)
      if record_path:
        doctor.record(opt, record_path, steps=6)
      train = opt.minimize(
        tf.reduce_mean(tf.tanh(x @ w) ** 2), global_step=step
      )
      with tf.compat.v1.Session() as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        for batch in _BATCHES:
          sess.run(train, {x: batch})
        return [sess.run(w)]

  assert _bits_equal(run(path), run(None))
  rec = doctor.load(path)
  assert rec.meta["run"]["how"] == "session"
  assert rec.config["learning_rate"] == "per_step"
  d = doctor.diagnose(path)
  assert "tf1 / tf_cpu" in [r.candidate.name for r in d.exact], d.report()
  assert d.findings.initial_ms == 1.0


# optax.


def _optax_run(opt, steps=9):
  params = {"b": jnp.asarray(_W0[1]), "w": jnp.asarray(_W0[0])}
  state = opt.init(params)

  @jax.jit
  def step(params, state, x):
    grads = jax.grad(lambda p: jnp.mean(jnp.tanh(x @ p["w"] + p["b"]) ** 2))(
      params
    )
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for x in _BATCHES[:steps]:
    params, state = step(params, state, jnp.asarray(x))
  return jax.tree.leaves((params, state))


@pytest.mark.parametrize(
  "kwargs, expected",
  [
    (
      dict(learning_rate=0.01, momentum=0.9),
      "optax.rmsprop(eps_in_sqrt=True, initial_scale=0, decay=float) / jit",
    ),
    (
      dict(
        learning_rate=0.01,
        eps_in_sqrt=False,
        centered=True,
        decay=jnp.float32(0.9),
      ),
      "optax.rmsprop(eps_in_sqrt=False, initial_scale=0, decay=jnp.float32)"
      " / jit",
    ),
  ],
  ids=["momentum", "centered_eps_outside_f32_decay"],
)
def test_optax_record_is_named_with_its_options(tmp_path, kwargs, expected):
  path = str(tmp_path / "optax.npz")
  unrecorded = _optax_run(optax.rmsprop(**kwargs))
  recorder = doctor.record(optax.rmsprop, path, steps=8, **kwargs)
  recorded = _optax_run(recorder)
  assert _bits_equal(recorded, unrecorded)
  rec = doctor.load(path)
  assert rec.source == "optax" and rec.names == ["b", "w"]
  d = doctor.diagnose(path)
  names = [r.candidate.name for r in d.exact]
  assert expected in names, d.report()
  # decay as a Python float and as jnp.float32 give another 1 - rho.
  other = (
    expected.replace("decay=float", "decay=jnp.float32")
    if "decay=float" in expected
    else expected.replace("decay=jnp.float32", "decay=float")
  )
  assert other not in names


def test_optax_update_without_params_is_an_error(tmp_path):
  opt = doctor.record(optax.rmsprop, str(tmp_path / "r.npz"), learning_rate=0.1)
  state = opt.init(jnp.zeros(2))
  with pytest.raises(ValueError, match="params"):
    opt.update(jnp.ones(2), state)


# Hints: records whose fault is known.


@pytest.fixture(scope="module")
def plain_fit_record(records):
  path = str(records / "plain.npz")
  _fit_legacy(path, learning_rate=0.01)
  return path


def test_hint_names_epsilon_placement(plain_fit_record):
  d = doctor.diagnose(plain_fit_record, families=["keras3"])
  assert not d.exact and d.findings.epsilon == "outside"
  assert any(h.startswith("epsilon placement") for h in d.hints), d.report()


def test_hint_names_dtype_casts(plain_fit_record):
  d = doctor.diagnose(plain_fit_record, families=["optax"], exhaustive=True)
  assert d.findings.one_minus_rho == "dtype"
  r = d.replay_of(
    "optax.rmsprop(eps_in_sqrt=False, initial_scale=0, decay=float) / jit"
  )
  assert any(h.startswith("dtype casts") for h in d.explain(r)), d.explain(r)


def test_hint_names_initial_ms(tmp_path):
  path = str(tmp_path / "tf1.npz")
  _tape_loop(tf.compat.v1.train.RMSPropOptimizer(0.01, momentum=0.9), path)
  d = doctor.diagnose(path, families=["keras_legacy"], exhaustive=True)
  assert not d.exact
  assert any(h.startswith("initial ms") for h in d.hints), d.report()


def _pytorch_style_record(path):
  """PyTorch's RMSprop with momentum, written in numpy and recorded by hand.

  Epsilon is outside the square root and lr outside the momentum buffer.
  """
  lr, alpha, eps, mu = (
    np.float32(0.01),
    np.float32(0.9),
    np.float32(1e-3),
    (np.float32(0.9)),
  )
  w = _W0[0].copy()
  v = np.zeros_like(w)
  buf = np.zeros_like(w)
  writer = doctor.RecordWriter(
    source="custom",
    optimizer="torch.optim.RMSprop (emulated)",
    config=dict(
      learning_rate=0.01, rho=0.9, momentum=0.9, epsilon=1e-3, centered=False
    ),
    names=["w"],
    slot_names={"ms": "square_avg", "mom": "momentum_buffer"},
  )
  writer.begin([w])
  rng = np.random.RandomState(6)
  for _ in range(6):
    g = (rng.randn(*w.shape) * rng.choice([1e-3, 1.0], w.shape)).astype(
      np.float32
    )
    v = v * alpha + (np.float32(1) - alpha) * g * g
    buf = buf * mu + g / (np.sqrt(v) + eps)
    w = w - lr * buf
    writer.step([g], [w], {"ms": [v], "mom": [buf]})
  writer.save(path)


def test_hint_names_lr_inside_momentum(tmp_path):
  path = str(tmp_path / "torch.npz")
  _pytorch_style_record(path)
  d = doctor.diagnose(path)
  assert not d.exact
  assert d.findings.lr_in_momentum is False
  assert any(h.startswith("lr inside momentum") for h in d.hints), d.report()


def test_hint_names_a_learning_rate_outside_the_config(
  tmp_path, plain_fit_record
):
  rec = doctor.load(plain_fit_record)
  rec.meta["config"]["learning_rate"] = 0.02
  d = doctor.diagnose(rec, families=["keras_legacy"])
  assert not d.exact and d.findings.lr_departures
  assert any(h.startswith("learning rate") for h in d.hints), d.report()


def test_hint_names_a_mean_square_decay_outside_the_config(tmp_path):
  # The run decays ms with rho=0.95, its config says 0.9: step 1's ms / g^2
  # is 0.05, which fits neither initial ms with 1 - rho = 0.1, so the
  # initial-ms and 1 - rho probes cannot decide; the decay is measured.
  d = doctor.diagnose(_plain_record(str(tmp_path / "r.npz"), rho=0.95))
  assert not d.exact
  assert d.findings.initial_ms is None and d.findings.one_minus_rho is None
  start, measured, configured = d.findings.ms_decay
  assert start == 0.0 and configured == pytest.approx(0.1)
  assert measured == pytest.approx(0.05, rel=1e-5)
  assert d.hints[0].startswith("mean-square decay"), d.hints
  assert "1 - rho = 0.05" in d.hints[0] and "rho = 0.95" in d.hints[0]
  assert not any("agree" in h for h in d.hints), d.hints
  assert "1 - rho = 0.05" in d.report()


def test_unknown_hint_names_undecided_probes_as_undecided(tmp_path):
  # Without the decay measurement nothing explains the departure: the hint
  # may call agreeing only the probes that decided.
  d = doctor.diagnose(_plain_record(str(tmp_path / "r.npz"), rho=0.95))
  d.findings.ms_decay = None
  (hint,) = d.explain(d.closest)
  assert hint.startswith("unknown"), hint
  assert "epsilon placement and the learning rate per step agree" in hint
  assert "initial ms and 1 - rho are undecided" in hint


def test_decay_as_configured_is_not_measured(tmp_path):
  # With the config's rho the initial-ms probe decides: no decay finding.
  d = doctor.diagnose(_plain_record(str(tmp_path / "r.npz")))
  assert d.findings.initial_ms == 0.0 and d.findings.ms_decay is None
  assert not any("mean-square decay" in h for h in d.hints), d.hints


def test_gpu_record_is_replayed_on_cpu_and_named_rounding(plain_fit_record):
  """A GPU-labelled record, one ULP away at step 4 (as an FMA leaves it).

  The report says which tier matches and why none does.
  """
  rec = doctor.load(plain_fit_record)
  rec.meta["run"].update(
    device="/device:GPU:0", device_kind="gpu", device_description="NVIDIA H100"
  )
  bits = rec.params[0][4:].view(np.uint32)
  bits[:, 0, 0] += 1
  d = doctor.diagnose(rec, families=["keras_legacy"])
  assert not d.exact and d.replay_device.startswith("cpu")
  assert d.closest.first.step == 4
  assert d.closest.first.ulp == 1
  assert any("FMA/rsqrt rounding" in h and "GPU" in h for h in d.hints)
  assert "tf_cpu" in d.tiers()


# The command line.


def test_command_line_reports_and_exits_with_the_verdict(
  plain_fit_record, capsys
):
  from optax_tfrmsprop.doctor import __main__ as cli

  assert cli.main([plain_fit_record, "--family", "keras_legacy"]) == 0
  out = capsys.readouterr().out
  assert "REPRODUCED EXACTLY" in out and "Per step" in out
  assert cli.main([plain_fit_record, "--family", "keras3", "--json"]) == 1
  data = json.loads(capsys.readouterr().out)
  assert data["exact"] == [] and data["hints"]
  assert len(data["replays"][0]["ulps_per_step"]) == 10
  assert cli.main([os.devnull]) == 2


def test_python_dash_m_runs(plain_fit_record):
  env = dict(
    os.environ,
    PYTHONPATH=os.pathsep.join(
      filter(None, [REPO, os.environ.get("PYTHONPATH")])
    ),
  )
  done = subprocess.run(
    [
      sys.executable,
      "-m",
      "optax_tfrmsprop.doctor",
      plain_fit_record,
      "--family",
      "keras_legacy",
      "--steps",
      "3",
    ],
    capture_output=True,
    text=True,
    env=env,
    timeout=300,
    check=False,
  )
  assert done.returncode == 0, done.stderr
  assert "all 3 steps" in done.stdout
