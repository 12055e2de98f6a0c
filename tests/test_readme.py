"""The front door: README's code blocks run as written, its commands are CI's.

Every ```python block of README.md and docs/index.md runs on its own, in a
fresh namespace, exactly as a reader would paste it: no block may lean on
names another block defined. A block that imports an optional package that is
not installed (TensorFlow, orbax) is skipped.
"""

import ast
import importlib.util
import pathlib
import re
import tomllib
import warnings

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PAGES = ("README.md", "docs/index.md")
_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def _python_blocks():
  for page in PAGES:
    text = (REPO / page).read_text()
    for match in _BLOCK.finditer(text):
      line = text.count("\n", 0, match.start()) + 1
      yield pytest.param(match.group(1), id=f"{page}:{line}")


def _imported_modules(source: str) -> set[str]:
  modules = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      modules.update(alias.name.split(".")[0] for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.level == 0:
      modules.add(node.module.split(".")[0])
  return modules


def test_pages_have_python_blocks():
  assert len(list(_python_blocks())) >= 8


@pytest.mark.parametrize("source", list(_python_blocks()))
def test_block_runs_as_written(source):
  missing = sorted(
    m for m in _imported_modules(source) if importlib.util.find_spec(m) is None
  )
  if missing:
    pytest.skip(f"needs {', '.join(missing)}")
  # A block a user copies must not draw the package's donation warning.
  with warnings.catch_warnings():
    warnings.filterwarnings(
      "error", "optax_tfrmsprop: .*not donated", RuntimeWarning
    )
    exec(compile(source, "<readme block>", "exec"), {"__name__": "__readme__"})


def _readme_test_command() -> str:
  lines = (REPO / "README.md").read_text().splitlines()
  commands = [
    line for line in lines if re.match(r"pip install .*\[test\]", line)
  ]
  assert commands, "README.md has no 'pip install ...[test]...' line"
  return commands[0]


def test_ci_runs_exactly_the_readme_test_command():
  ci = (REPO / ".ci" / "run").read_text().splitlines()
  assert _readme_test_command() in ci
  assert "set -euo pipefail" in ci  # pytest's exit 5 (no tests) fails CI


def test_install_instructions_work_from_a_clone():
  # The package is not on the package index: every pip install of it is an
  # editable install of the clone, so the C++ kernel is built in place and
  # installing an extra keeps the editable install.
  for page in PAGES:
    text = (REPO / page).read_text()
    installs = re.findall(r"pip install [^\n`]*", text)
    assert installs, page
    for command in installs:
      args = [a.strip("\"'") for a in command.split()]
      assert not any(a.startswith("optax-tfrmsprop") for a in args), command
      if any(a == "." or a.startswith(".[") for a in args):
        assert "-e" in args, (page, command)


def test_extras_name_one_tensorflow_and_docs_only_in_docs():
  project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
  extras = project["optional-dependencies"]
  names = {
    extra: {re.split(r"[\[<>=!~ ;]", r, maxsplit=1)[0] for r in reqs}
    for extra, reqs in extras.items()
  }
  assert "tensorflow" in names["tf"] and "tensorflow-cpu" not in names["tf"]
  everything = set().union(*names.values())
  assert "tensorflow-cpu" not in everything
  assert "mkdocs" in names["docs"]
  assert not {"mkdocs", "mkdocs-material", "mkdocstrings"} & names["test"]
  # The test extra still brings the docs build and TF, through itself.
  assert "optax-tfrmsprop[docs,tf]" in extras["test"]
