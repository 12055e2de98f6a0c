"""The documentation site builds without a single warning."""

import os
import pathlib
import subprocess
import sys

import optax_tfrmsprop

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_mkdocs_build_strict(tmp_path):
  env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "mkdocs",
      "build",
      "--strict",
      "--config-file",
      str(REPO / "mkdocs.yml"),
      "--site-dir",
      str(tmp_path / "site"),
    ],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  assert result.returncode == 0, result.stdout + result.stderr
  api = (tmp_path / "site" / "api" / "index.html").read_text()
  for name in optax_tfrmsprop.__all__:
    assert f'id="optax_tfrmsprop.{name}"' in api, f"{name} is not documented."
  # docs/hooks/rst_docstrings.py turned the docstrings' reST into Markdown.
  for rst in (":func:", ":class:", ":math:", ".. math::", ".. warning::", "`_"):
    assert rst not in api, f"reST markup {rst!r} left in the API reference."
