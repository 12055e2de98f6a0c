"""Griffe extension: the docstrings' reStructuredText markup, as Markdown.

The docstrings follow optax's conventions, written for Sphinx (``:func:``
roles, ``.. math::``, ``.. warning::``, simple tables, ```text <url>`_``
links). mkdocstrings renders docstrings as Markdown, so this extension rewrites
those constructs before rendering. The source stays Sphinx-ready.
"""

import re
import textwrap

import griffe

_ROLE = re.compile(r":(?:func|class|meth|attr|mod|obj|data):`(~?)([^`]+)`")
_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_LINK = re.compile(r"`([^`<]+?)\s*<([^>]+)>`_+", re.S)
_DIRECTIVE = re.compile(r"^(\s*)\.\. (\w+)::\s*(.*)$")
_TABLE_RULE = re.compile(r"^\s*=+(\s+=+)+\s*$")
_ADMONITIONS = {"warning", "note", "seealso", "versionchanged", "versionadded"}


def _block(lines, start, indent):
  """The lines after ``start`` indented deeper than ``indent`` (and blanks)."""
  end = start
  while end < len(lines) and (
    not lines[end].strip()
    or len(lines[end]) - len(lines[end].lstrip()) > indent
  ):
    end += 1
  while end > start and not lines[end - 1].strip():
    end -= 1
  return textwrap.dedent("\n".join(lines[start:end])).splitlines(), end


def _table(lines, start):
  """A reST simple table at ``lines[start]`` as a Markdown table."""
  rule = lines[start]
  spans = [m.span() for m in re.finditer(r"=+", rule)]
  end = start + 1
  rows, rules_seen = [], 1
  while end < len(lines) and rules_seen < 3 and lines[end].strip():
    if _TABLE_RULE.match(lines[end]):
      rules_seen += 1
    else:
      line = lines[end].ljust(spans[-1][1])
      bounds = [s for s, _ in spans[1:]] + [len(line)]
      rows.append([line[s:e].strip() for (s, _), e in zip(spans, bounds)])
    end += 1
  indent = rule[: len(rule) - len(rule.lstrip())]
  md = [
    indent + "| " + " | ".join(rows[0]) + " |",
    indent + "|" + "---|" * len(spans),
  ]
  md += [indent + "| " + " | ".join(row) + " |" for row in rows[1:]]
  return md, end


def rst_to_markdown(text: str) -> str:
  """Rewrites the reST constructs used in this package's docstrings."""
  lines = text.splitlines()
  out, i = [], 0
  while i < len(lines):
    line = lines[i]
    directive = _DIRECTIVE.match(line)
    if _TABLE_RULE.match(line):
      table, i = _table(lines, i)
      out += table
      continue
    if directive:
      indent, name, argument = directive.groups()
      body, i = _block(lines, i + 1, len(indent))
      if name == "math":
        out += [indent + "$$", indent + r"\begin{aligned}"]
        out += [indent + row for row in body if row.strip()]
        out += [indent + r"\end{aligned}", indent + "$$"]
      elif name in _ADMONITIONS:
        kind = {
          "seealso": "info",
          "versionchanged": "info",
          "versionadded": "info",
        }.get(name, name)
        title = f' "{argument}"' if argument else ""
        out.append(f"{indent}!!! {kind}{title}")
        out += [indent + "    " + row if row.strip() else "" for row in body]
      else:
        out.append(line)
        out += [indent + "  " + row for row in body]
      continue
    out.append(line)
    i += 1
  text = "\n".join(out)
  text = _MATH_ROLE.sub(r"\\(\1\\)", text)
  # Sphinx shows only the last component of a ``~``-prefixed target.
  text = _ROLE.sub(
    lambda m: f"`{m.group(2).split('.')[-1] if m.group(1) else m.group(2)}`",
    text,
  )
  return _LINK.sub(
    lambda m: f"[{' '.join(m.group(1).split())}]({m.group(2)})", text
  )


class RstDocstrings(griffe.Extension):
  """Converts each loaded object's docstring from reST to Markdown."""

  def on_instance(self, *, node, obj, agent, **kwargs):
    del node, agent, kwargs
    if obj.docstring is not None:
      obj.docstring.value = rst_to_markdown(obj.docstring.value)
