"""Malformed operands for the CPU kernel, run in a child by test_kernel_safety.

``python kernel_safety_cases.py x64|x32 NAME...`` runs the named cases in
this process, in order, and prints one JSON line per case: ``{"case": NAME,
"error": TYPE or null, "message": ..., "traceback": ...}``, after a
``{"start": NAME}`` line,
so a case that kills the process (what every one of them did before the
checks) is named by the parent.

Three lines of defence, each tested on its own:

* the public entry points (``rmsprop_apply``/``rmsprop_update``) check params
  and slots against ``state.ms`` and name the leaf (``transform``);
* ``cpu_kernel.dense_update``/``sparse_update`` check every operand before
  the FFI call and name it;
* the C++ handlers check every operand, result and index again
  (``csrc/tfrmsprop.h``): the FFI targets are called here directly through
  ``jax.ffi.ffi_call``, past both Python checks.
"""

import json
import sys
import traceback

import jax
import jax.numpy as jnp
import numpy as np

# Each case: (function, x64, error type expected, regex of the message).
# The C++ errors surface as jax's runtime error for an INVALID_ARGUMENT
# status (its class is jax's business; the message is ours).
CASES = {}


def case(x64=False, error="ValueError", match=""):
  def register(fn):
    CASES[fn.__name__] = (fn, x64, error, match)
    return fn

  return register


def api_case(x64=False, match=""):
  """Registers the case on both backends, as ``name[ffi]`` and ``name[xla]``."""

  def register(fn):
    for backend in ("ffi", "xla"):
      CASES[f"{fn.__name__}[{backend}]"] = (
        lambda fn=fn, backend=backend: fn(backend),
        x64,
        "ValueError",
        match,
      )
    return fn

  return register


def _tx():
  import optax_tfrmsprop

  return optax_tfrmsprop


# --- The reported crashes, through the public API (issue 12, items 1-2). ---


@api_case(match=r"params at the root has shape \(2, 64\).*\(200000, 64\)")
def apply_sparse_params_fewer_rows_than_state(backend):
  o = _tx()
  state = o.rmsprop_init(jnp.zeros((200000, 64)), use_momentum=True)
  grad = o.IndexedSlices(jnp.ones((1, 64)), jnp.array([199999]), (200000, 64))
  return o.rmsprop_apply(
    jnp.zeros((2, 64)), grad, state, momentum=0.9, backend=backend
  )


@api_case(match=r"params at \['e'\] has shape \(2, 8\)")
def apply_small_sparse_params_fewer_rows_than_state(backend):
  # Before the checks this one returned normally after writing out of bounds.
  o = _tx()
  state = o.rmsprop_init(
    {"e": jnp.zeros((10, 8))}, use_momentum=True, centered=True
  )
  grad = {"e": o.IndexedSlices(jnp.ones((1, 8)), jnp.array([9]), (10, 8))}
  return o.rmsprop_apply(
    {"e": jnp.zeros((2, 8))}, grad, state, momentum=0.9, backend=backend
  )


@api_case(match=r"params at the root has shape \(1000,\) and dtype int32")
def apply_int32_params_over_float32_state(backend):
  o = _tx()
  state = o.rmsprop_init(jnp.zeros(1000), use_momentum=True)
  return o.rmsprop_apply(
    jnp.zeros(1000, jnp.int32),
    jnp.ones(1000),
    state,
    momentum=0.9,
    backend=backend,
  )


@api_case(x64=True, match=r"params at the root .* dtype float64")
def apply_float64_params_over_float32_state(backend):
  o = _tx()
  state = o.rmsprop_init(jnp.zeros(1000, jnp.float32), use_momentum=True)
  return o.rmsprop_apply(
    jnp.zeros(1000, jnp.float64),
    jnp.ones(1000, jnp.float32),
    state,
    momentum=0.9,
    backend=backend,
  )


@api_case(x64=True, match=r"state.mom at the root .* dtype float64")
def apply_float64_mom_over_float32_ms(backend):
  o = _tx()
  params = jnp.zeros(1000, jnp.float32)
  state = o.rmsprop_init(params, use_momentum=True)
  state = state.replace(mom=jnp.zeros(1000, jnp.float64))
  return o.rmsprop_apply(
    params, jnp.ones(1000, jnp.float32), state, momentum=0.9, backend=backend
  )


@api_case(match=r"state.mg at \['w'\] has shape \(5,\)")
def update_mg_shorter_than_ms(backend):
  o = _tx()
  params = {"w": jnp.zeros(6)}
  state = o.rmsprop_init(params, use_momentum=True, centered=True)
  state = state.replace(mg={"w": jnp.zeros(5)})
  return o.rmsprop_update(params, state, momentum=0.9, backend=backend)


@api_case(match=r"params at \['w'\] has shape \(999,\)")
def apply_dense_params_shorter_than_state(backend):
  o = _tx()
  state = o.rmsprop_init({"w": jnp.zeros(1000)})
  return o.rmsprop_apply(
    {"w": jnp.zeros(999)}, {"w": jnp.ones(1000)}, state, backend=backend
  )


# --- cpu_kernel's own operand checks, past the public API. ---

_H32 = lambda: jnp.array([0.01, 0.9, 0.1, 0.9, 1e-7], jnp.float32)


def _kernel():
  from optax_tfrmsprop._src import cpu_kernel

  cpu_kernel.use_kernel("ffi")  # Registers the targets.
  return cpu_kernel


@case(match=r"leaves\[1\] params has shape \(4,\) and dtype int32")
def dense_update_int32_var():
  x = jnp.zeros(4)
  return _kernel().dense_update(
    [(x, x, x, None, x), (x, x.astype(jnp.int32), x, None, x)],
    _H32(),
    centered=False,
    momentum=True,
    apply=True,
  )


@case(match=r"leaves\[0\] mom is missing")
def dense_update_missing_mom():
  x = jnp.zeros(4)
  return _kernel().dense_update(
    [(x, x, x, None, None)], _H32(), centered=False, momentum=True, apply=True
  )


@case(match=r"leaves\[0\] mg has shape \(3,\)")
def dense_update_short_mg():
  x = jnp.zeros(4)
  return _kernel().dense_update(
    [(x, None, x, x[:3], x)], _H32(), centered=True, momentum=True, apply=False
  )


@case(match=r"hypers must be a \(5,\) array of one of float32, float64")
def dense_update_four_hypers():
  x = jnp.zeros(4)
  return _kernel().dense_update(
    [(x, x, x, None, x)], _H32()[:4], centered=False, momentum=True, apply=True
  )


@case(
  x64=True,
  match=r"leaves\[0\] ms has shape \(4,\) and dtype float32, "
  r"but the hyperparameters .* float64",
)
def dense_update_float64_hypers_float32_leaves():
  x = jnp.zeros(4, jnp.float32)
  return _kernel().dense_update(
    [(x, x, x, None, x)],
    _H32().astype(jnp.float64),
    centered=False,
    momentum=True,
    apply=True,
  )


@case(
  match=r"leaves\[0\] params is given, but the path centered=True, "
  r"momentum=False, apply=False has none"
)
def dense_update_p2_slots_only_with_params():
  x = jnp.zeros(4)
  return _kernel().dense_update(
    [(x, x, x, x, None)],
    _H32(),
    centered=True,
    momentum=False,
    apply=False,
  )


@case(match=r"var \(params\) has shape \(2, 8\).*ms has shape \(10, 8\)")
def sparse_update_var_fewer_rows():
  t = jnp.zeros((10, 8))
  return _kernel().sparse_update(
    jnp.ones((1, 8)),
    jnp.array([9], jnp.int32),
    jnp.zeros((2, 8)),
    t,
    None,
    t,
    _H32(),
    apply=True,
  )


@case(match=r"values \(one row per index\) has shape \(1, 9\)")
def sparse_update_values_wider_than_rows():
  t = jnp.zeros((10, 8))
  return _kernel().sparse_update(
    jnp.ones((1, 9)),
    jnp.array([3], jnp.int32),
    t,
    t,
    None,
    t,
    _H32(),
    apply=True,
  )


@case(x64=True, match=r"indices must be a 1-D int32 array")
def sparse_update_int64_indices():
  t = jnp.zeros((10, 8), jnp.float32)
  return _kernel().sparse_update(
    jnp.ones((1, 8), jnp.float32),
    jnp.array([3], jnp.int64),
    t,
    t,
    None,
    t,
    _H32(),
    apply=True,
  )


@case(match=r"indices\[1\] = 11 is not in \[0, 10\]")
def sparse_update_index_beyond_table():
  t = jnp.zeros((10, 8))
  return _kernel().sparse_update(
    jnp.ones((2, 8)),
    jnp.array([3, 11], jnp.int32),
    t,
    t,
    None,
    t,
    _H32(),
    apply=True,
  )


@case(match=r"mom has shape \(10, 4\)")
def sparse_update_narrow_mom():
  t = jnp.zeros((10, 8))
  return _kernel().sparse_update(
    jnp.ones((1, 8)),
    jnp.array([3], jnp.int32),
    t,
    t,
    None,
    jnp.zeros((10, 4)),
    _H32(),
    apply=True,
  )


# --- The C++ handlers' checks: the targets called directly. ---

S = jax.ShapeDtypeStruct
CPP = dict(error="*", match=r"tfrmsprop: ")


def _dense(operands, results, aliases, **attrs):
  _kernel()
  attrs = dict(centered=False, momentum=True, apply=True) | attrs
  return jax.ffi.ffi_call(
    "tfrmsprop_dense", results, input_output_aliases=aliases
  )(*operands, **attrs)


_V = lambda dtype=jnp.float32: jnp.zeros(100, dtype)
_P3 = {2: 0, 3: 1, 4: 2}  # var, ms, mom aliased


@case(error="*", match=r"leaf 0 var operand has dtype S32")
def ffi_dense_int32_var():
  return _dense(
    [_H32(), _V(), _V(jnp.int32), _V(), _V()],
    [S((100,), jnp.int32), S((100,), jnp.float32), S((100,), jnp.float32)],
    _P3,
  )


@case(error="*", match=r"leaf 0 var operand has dtype F32 and shape \(2,\)")
def ffi_dense_short_var():
  return _dense(
    [_H32(), _V(), _V()[:2], _V(), _V()],
    [S((2,), jnp.float32), S((100,), jnp.float32), S((100,), jnp.float32)],
    _P3,
  )


@case(error="*", match=r"leaf 1 var operand has dtype F32 and shape \(50,\)")
def ffi_dense_second_leaf_var_shorter_than_g():
  small = jnp.zeros(50)
  return _dense(
    [_H32(), _V(), _V(), _V(), _V(), _V(), small, small, small],
    [S((100,), jnp.float32)] * 3 + [S((50,), jnp.float32)] * 3,
    _P3 | {6: 3, 7: 4, 8: 5},
  )


@case(x64=True, error="*", match=r"leaf 0 mom operand has dtype F64")
def ffi_dense_float64_mom():
  return _dense(
    [_H32(), _V(), _V(), _V(), _V(jnp.float64)],
    [S((100,), jnp.float32), S((100,), jnp.float32), S((100,), jnp.float64)],
    _P3,
  )


@case(error="*", match=r"runs float32, float64 and bfloat16 leaves, got F16")
def ffi_dense_float16_hypers():
  return _dense(
    [_H32().astype(jnp.float16), *[_V(jnp.float16)] * 4],
    [S((100,), jnp.float16)] * 3,
    _P3,
  )


@case(error="*", match=r"leaf 0 g operand has dtype F32 .* BF16")
def ffi_dense_bfloat16_hypers_float32_leaves():
  return _dense(
    [_H32().astype(jnp.bfloat16), _V(), _V(), _V(), _V()],
    [S((100,), jnp.float32)] * 3,
    _P3,
  )


@case(x64=True, error="*", match=r"leaf 0 g operand has dtype F32 .* F64")
def ffi_dense_float64_hypers_float32_leaves():
  return _dense(
    [_H32().astype(jnp.float64), _V(), _V(), _V(), _V()],
    [S((100,), jnp.float32)] * 3,
    _P3,
  )


@case(**CPP)
def ffi_dense_missing_result():
  return _dense(
    [_H32(), _V(), _V(), _V(), _V()], [S((100,), jnp.float32)] * 2, {2: 0, 3: 1}
  )


@case(error="*", match=r"the result is not aliased to its operand")
def ffi_dense_results_not_aliased():
  return _dense(
    [_H32(), _V(), _V(), _V(), _V()], [S((100,), jnp.float32)] * 3, {}
  )


@case(error="*", match=r"hyperparameter operand must have shape \(5,\)")
def ffi_dense_four_hypers():
  return _dense(
    [_H32()[:4], _V(), _V(), _V(), _V()], [S((100,), jnp.float32)] * 3, _P3
  )


@case(error="*", match=r"float32, float64 and bfloat16 leaves, got S32")
def ffi_dense_int_hypers():
  return _dense(
    [_H32().astype(jnp.int32), _V(), _V(), _V(), _V()],
    [S((100,), jnp.float32)] * 3,
    _P3,
  )


@case(error="*", match=r"leaf 0 ms result: the result is not aliased")
def ffi_dense_p1_slots_only_not_aliased():
  return _dense(
    [_H32(), _V(), _V()],
    [S((100,), jnp.float32)],
    {},
    momentum=False,
    apply=False,
  )


@case(error="*", match=r"leaf 0 mg operand has dtype F32 and shape \(50,\)")
def ffi_dense_p2_slots_only_short_mg():
  return _dense(
    [_H32(), _V(), _V(), jnp.zeros(50)],
    [S((100,), jnp.float32), S((50,), jnp.float32)],
    {2: 0, 3: 1},
    centered=True,
    momentum=False,
    apply=False,
  )


_T = lambda rows=1000, dtype=jnp.float32: jnp.zeros((rows, 64), dtype)
_I = lambda *rows: jnp.array(rows, jnp.int32)
_E = lambda: jnp.zeros((0,), jnp.float32)


def _sparse(
  values,
  indices,
  var,
  ms,
  mg,
  mom,
  *,
  first=None,
  unique=None,
  centered=False,
  apply=True,
  aliases=None,
):
  _kernel()
  table = S(ms.shape, ms.dtype)
  if first is None:
    first = S(var.shape, var.dtype) if apply else S(values.shape, values.dtype)
  if unique is None:
    unique = S((0,) if apply else indices.shape, jnp.int32)
  results = [
    first,
    unique,
    table,
    S(mg.shape, mg.dtype),
    S(mom.shape, mom.dtype),
  ]
  if aliases is None:
    aliases = (
      {4: 2, 6: 4} | ({3: 0} if apply else {}) | ({5: 3} if centered else {})
    )
  return jax.ffi.ffi_call(
    "tfrmsprop_sparse", results, input_output_aliases=aliases
  )(_H32(), values, indices, var, ms, mg, mom, centered=centered, apply=apply)


_ROW = lambda n=1: jnp.ones((n, 64), jnp.float32)


@case(error="*", match=r"var operand has dtype F32 and shape \(2, 64\)")
def ffi_sparse_var_fewer_rows_than_table():
  return _sparse(_ROW(), _I(999), _T(2), _T(), _E(), _T())


@case(error="*", match=r"indices\[1\] = 1001 is not in \[0, 1000\]")
def ffi_sparse_index_beyond_table():
  return _sparse(_ROW(2), _I(3, 1001), _T(), _T(), _E(), _T())


@case(error="*", match=r"indices\[0\] = -1 is not in \[0, 1000\]")
def ffi_sparse_negative_index():
  return _sparse(_ROW(), _I(-1), _T(), _T(), _E(), _T())


@case(error="*", match=r"\(1, 65\), expected dtype F32 and shape \(1, 64\)")
def ffi_sparse_values_wider_than_rows():
  return _sparse(jnp.ones((1, 65)), _I(3), _T(), _T(), _E(), _T())


@case(error="*", match=r"mom operand has dtype F32 and shape \(10, 64\)")
def ffi_sparse_short_mom():
  return _sparse(_ROW(), _I(3), _T(), _T(), _E(), _T(10))


@case(x64=True, error="*", match=r"mom operand has dtype F64")
def ffi_sparse_float64_mom():
  return _sparse(_ROW(), _I(3), _T(), _T(), _E(), _T(dtype=jnp.float64))


@case(x64=True, error="*", match=r"bad operands at: 2")
def ffi_sparse_int64_indices():
  # The typed binding (Buffer<S32, 1>) rejects it while decoding.
  return _sparse(_ROW(), jnp.array([3], jnp.int64), _T(), _T(), _E(), _T())


@case(error="*", match=r"unique result has 0 indices, expected 1")
def ffi_sparse_unique_result_missing():
  return _sparse(
    _ROW(),
    _I(3),
    _E(),
    _T(),
    _E(),
    _T(),
    apply=False,
    unique=S((0,), jnp.int32),
  )


@case(error="*", match=r"mg operand has dtype F32 and shape \(0,\)")
def ffi_sparse_centered_without_mg():
  return _sparse(
    _ROW(),
    _I(3),
    _T(),
    _T(),
    _E(),
    _T(),
    centered=True,
    aliases={4: 2, 6: 4, 3: 0},
  )


@case(error="*", match=r"ms result: the result is not aliased")
def ffi_sparse_results_not_aliased():
  return _sparse(_ROW(), _I(3), _T(), _T(), _E(), _T(), aliases={})


@case(error="*", match=r"hyperparameter operand must have shape \(5,\)")
def ffi_sparse_four_hypers():
  _kernel()
  t = _T()
  return jax.ffi.ffi_call(
    "tfrmsprop_sparse",
    [
      S(t.shape, t.dtype),
      S((0,), jnp.int32),
      S(t.shape, t.dtype),
      S((0,), t.dtype),
      S(t.shape, t.dtype),
    ],
    input_output_aliases={3: 0, 4: 2, 6: 4},
  )(_H32()[:4], _ROW(), _I(3), t, t, _E(), t, centered=False, apply=True)


@case(error=None)
def kernel_still_right_after_the_errors():
  """After every error above, a well-formed step equals the XLA path."""
  o = _tx()
  params = jnp.linspace(-1.0, 1.0, 40000, dtype=jnp.float32)
  state = o.rmsprop_init(params, use_momentum=True, centered=True)
  step = lambda b: o.rmsprop_apply(
    params, params * 0.5, state, momentum=0.9, backend=b
  )
  for x, y in zip(jax.tree.leaves(step("ffi")), jax.tree.leaves(step("xla"))):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def main(mode, names):
  jax.config.update("jax_enable_x64", mode == "x64")
  for name in names:
    print(json.dumps({"start": name}), flush=True)
    fn = CASES[name][0]
    try:
      jax.block_until_ready(fn())
      error, message, trace = None, "", ""
    except Exception as e:  # noqa: BLE001 - any exception is the result
      error, message, trace = type(e).__name__, str(e), traceback.format_exc()
    print(
      json.dumps(
        {"case": name, "error": error, "message": message, "traceback": trace}
      ),
      flush=True,
    )


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2:])
