"""mkdocs hook: the API reference lists every name in ``__all__``.

``docs/api.md`` holds the marker ``<!-- public-api -->``; this hook replaces it
with one mkdocstrings block per public name, read from the package's
``__init__.py`` without importing it, so a new export appears in the reference
without editing the page.
"""

import ast
import pathlib

MARKER = "<!-- public-api -->"
PACKAGE = "optax_tfrmsprop"
INIT = pathlib.Path(__file__).parents[2] / PACKAGE / "__init__.py"


def public_names() -> list[str]:
  """The strings of the ``__all__`` assignment in the package's __init__.py."""
  for node in ast.parse(INIT.read_text()).body:
    if isinstance(node, ast.Assign) and any(
      isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
    ):
      return list(ast.literal_eval(node.value))
  raise ValueError(f"{INIT} defines no __all__.")


def on_page_markdown(markdown, page, **kwargs):
  del kwargs
  if page.file.src_uri != "api.md":
    return markdown
  if MARKER not in markdown:
    raise ValueError(f"api.md lost its {MARKER} marker.")
  blocks = "\n\n".join(f"::: {PACKAGE}.{name}" for name in public_names())
  return markdown.replace(MARKER, blocks)
