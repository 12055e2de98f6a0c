"""Executes every notebook in notebooks/: a broken notebook fails the suite."""

import os
import pathlib

from nbclient import NotebookClient
import nbformat
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def test_notebooks_are_found():
  assert {
    "quickstart.ipynb",
    "porting_from_keras.ipynb",
    "sparse_embeddings.ipynb",
    "interchange_flax_keras.ipynb",
    "parity_doctor.ipynb",
  } <= {path.name for path in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_saved_executed(path):
  notebook = nbformat.read(path, as_version=4)
  nbformat.validate(notebook)
  code = [cell for cell in notebook.cells if cell.cell_type == "code"]
  assert code and all(cell.execution_count for cell in code), (
    f"{path.name} is not saved with its outputs."
  )


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, monkeypatch):
  # The kernel starts in the notebook's folder, as Jupyter would start it, and
  # imports the package from this checkout whether or not it is installed.
  monkeypatch.setenv(
    "PYTHONPATH",
    os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
  )
  notebook = nbformat.read(path, as_version=4)
  client = NotebookClient(
    notebook,
    timeout=300,
    kernel_name="python3",
    resources={"metadata": {"path": str(path.parent)}},
  )
  client.execute()  # Raises CellExecutionError, with the traceback, on error.
  errors = [
    output
    for cell in notebook.cells
    if cell.cell_type == "code"
    for output in cell.outputs
    if output.output_type == "error"
  ]
  assert not errors
