"""Runs the ``>>>`` examples of every public name as doctests.

Every function and class exported by ``optax_tfrmsprop``, or by a public
sub-namespace it exports (``keras``, ``keras.schedules``, ``interop``), must
document its arguments and results and carry an example; the examples must run
and print what they claim. The ``__all__`` of each namespace is the list of
public names, so a new export is checked without touching this file.
"""

import doctest
import inspect

import pytest

import optax_tfrmsprop


def _is_callable_api(obj) -> bool:
  return inspect.isfunction(obj) or inspect.isclass(obj)


def _public_callables(
  namespace=optax_tfrmsprop, prefix=""
) -> dict[str, object]:
  """Exported functions and classes, and those of exported namespaces.

  A public sub-namespace (``keras``, ``interop``) contributes the names in its
  ``__all__``, keyed ``namespace.name``.
  """
  found = {}
  for name in namespace.__all__:
    obj = getattr(namespace, name)
    if _is_callable_api(obj):
      found[prefix + name] = obj
    elif inspect.ismodule(obj):
      found.update(_public_callables(obj, f"{prefix}{name}."))
  return found


_PUBLIC = _public_callables()
_PUBLIC_CALLABLES = sorted(_PUBLIC)


def _doctests(obj) -> list[doctest.DocTest]:
  module = inspect.getmodule(obj)
  finder = doctest.DocTestFinder(exclude_empty=True)
  # The examples see the defining module's globals, as under
  # ``pytest --doctest-modules``.
  return [
    test
    for test in finder.find(obj, globs=vars(module).copy())
    if test.examples
  ]


def test_public_callables_are_found():
  assert "rmsprop" in _PUBLIC_CALLABLES
  assert "RMSpropState" in _PUBLIC_CALLABLES
  assert "schedules.ExponentialDecay" in _PUBLIC_CALLABLES


@pytest.mark.parametrize("name", _PUBLIC_CALLABLES)
def test_docstring_documents_arguments_results_and_example(name):
  obj = _PUBLIC[name]
  doc = inspect.getdoc(obj) or ""
  assert ">>>" in doc, f"{name} has no >>> example."
  if inspect.isfunction(obj):
    if inspect.signature(obj).parameters:
      assert "Args:" in doc, f"{name} does not document its arguments."
    assert "Returns:" in doc, f"{name} does not document its result."
  elif inspect.signature(obj).parameters:
    assert "Attributes:" in doc or "Args:" in doc, (
      f"{name} documents neither its attributes nor its arguments."
    )


@pytest.mark.parametrize("name", _PUBLIC_CALLABLES)
def test_examples_run(name):
  tests = _doctests(_PUBLIC[name])
  assert tests, f"{name} has no doctest."
  runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
  for test in tests:
    runner.run(test)
  result = runner.summarize(verbose=False)
  assert result.attempted > 0
  assert result.failed == 0, f"{result.failed} example(s) of {name} failed."
