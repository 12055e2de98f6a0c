"""Re-executes notebooks in place so their saved outputs match the code.

Each notebook runs in a fresh kernel started in ``notebooks/``, importing the
package from this checkout. Outputs written to stderr (TensorFlow's and XLA's
start-up logs, which change from machine to machine) are dropped from the saved
file and printed here instead, so nothing is hidden; so are the kernel's
per-cell timestamps, which would make every run a diff.

Run from the repository root::

  python scripts/execute_notebooks.py                 # every notebook
  python scripts/execute_notebooks.py notebooks/x.ipynb
"""

import os
import pathlib
import sys
import time

from nbclient import NotebookClient
import nbformat

REPO = pathlib.Path(__file__).resolve().parents[1]


def execute(path: pathlib.Path) -> None:
  notebook = nbformat.read(path, as_version=4)
  start = time.perf_counter()
  NotebookClient(
    notebook,
    timeout=600,
    kernel_name="python3",
    resources={"metadata": {"path": str(path.parent)}},
  ).execute()
  for cell in notebook.cells:
    if cell.cell_type != "code":
      continue
    for output in cell.outputs:
      if output.output_type == "stream" and output.name == "stderr":
        print(f"  {path.name}: dropped stderr: {output.text.strip()[:200]}")
    cell.metadata.pop("execution", None)
    cell.outputs = [
      o
      for o in cell.outputs
      if not (o.output_type == "stream" and o.name == "stderr")
    ]
  nbformat.validate(notebook)
  nbformat.write(notebook, path)
  print(f"{path.name}: executed in {time.perf_counter() - start:.1f} s")


def main(argv: list[str]) -> None:
  os.environ["PYTHONPATH"] = os.pathsep.join(
    filter(None, [str(REPO), os.environ.get("PYTHONPATH")])
  )
  paths = [pathlib.Path(a).resolve() for a in argv] or sorted(
    (REPO / "notebooks").glob("*.ipynb")
  )
  for path in paths:
    execute(path)


if __name__ == "__main__":
  main(sys.argv[1:])
