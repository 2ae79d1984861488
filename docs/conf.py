"""Sphinx configuration: autodoc + napoleon (Google style), MathJax, MyST for the Markdown pages.

The API reference is generated from the packages' ``__all__`` at build time (``api.rst``), so every
public name has a page made from its docstring, and a name added to ``__all__`` appears without
editing the docs. The examples page is generated from the scripts' docstrings. ``make docs`` builds
with warnings as errors.
"""

from __future__ import annotations

import ast
import importlib
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import gradest  # noqa: E402

project = "gradest"
author = "The gradest contributors"
copyright = "2026, The gradest contributors"
version = release = gradest.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
templates_path = ["_templates"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
html_theme = "furo"
html_title = f"gradest {release}"

autosummary_generate = True
autodoc_typehints = "description"
autodoc_member_order = "bysource"
autodoc_default_options = {"exclude-members": "forward, extra_repr"}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True  # "Attributes:" as a field list: no second description of a NamedTuple's fields
myst_heading_anchors = 3
myst_enable_extensions = ["dollarmath"]
suppress_warnings = ["myst.xref_missing"]  # links to repository files (BENCHMARKS.md, examples/) outside the docs

# Public namespaces and what each page is called. Every name in their __all__ gets a page.
SECTIONS = [
    ("gradest", "Estimators, expectation and Graph"),
    ("gradest.rl", "Reinforcement learning: gradest.rl"),
    ("gradest.optim", "Finite sums: gradest.optim"),
    ("gradest.diagnostics", "Diagnostics: gradest.diagnostics"),
    ("gradest.diagnostics.plots", "Figures: gradest.diagnostics.plots"),
    ("gradest.problems", "Problems: gradest.problems"),
    ("gradest.testing", "Testing helpers: gradest.testing"),
    ("gradest.cli", "Command line: gradest.cli"),
]


def public_names() -> list[tuple[str, list[str]]]:
    """Each public namespace with the names of its ``__all__`` that get a page: not submodules, not
    constants (those are described on their module's page). ``tests/test_docs.py`` reads this too."""
    out = []
    for module_name, _ in SECTIONS:
        module = importlib.import_module(module_name)
        names = [n for n in module.__all__ if not isinstance(getattr(module, n), type(sys)) and not n.isupper()]
        out.append((module_name, names))
    return out


def _api() -> str:
    out = [".. This file is written by conf.py from the packages' __all__; do not edit.", "", "API reference",
           "=============", "", "Every public name, documented from its docstring.", ""]
    for (module_name, title), (_, names) in zip(SECTIONS, public_names()):
        out += [title, "-" * len(title), "", f".. automodule:: {module_name}", "   :no-members:", "",
                f".. currentmodule:: {module_name}", "", ".. autosummary::", "   :toctree: _generated",
                "   :nosignatures:", ""]
        out += [f"   {n}" for n in names] + [""]
    return "\n".join(out)


def _examples() -> str:
    out = ["<!-- This file is written by conf.py from examples/*.py; do not edit. -->", "", "# Examples", "",
           "Single files in `examples/`, read top to bottom, flags at the top (`--help` shows them with their "
           "defaults). Each writes a figure.", ""]
    for path in sorted((ROOT / "examples").glob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        head, _, rest = doc.partition("\n")
        out += [f"## `{path.name}`", "", f"**{head.strip()}**", "", "```{eval-rst}", _literal_blocks(rest.strip()),
                "```", "",
                f"```bash\npython examples/{path.name} --help\n```", ""]
    return "\n".join(out)


# The project names keyword-clashing arguments with a trailing underscore (``lambda_``, STYLE.md §3); in
# reStructuredText a bare ``name_`` is a hyperlink reference. Set such names in docstrings as literals.
_TRAILING = re.compile(r"(?:(?<=^)|(?<=[\s\-:/'\"<(\[{]))([A-Za-z]\w*_)(?=[\s\-.,:;!?\\/'\")\]}>]|$)")


def _literal_trailing_underscores(app, what, name, obj, options, lines) -> None:  # noqa: ANN001
    in_math = False
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith(".. math::") or stripped.startswith(">>>") or stripped.startswith("..."):
            in_math = stripped.startswith(".. math::")
            continue
        if in_math and (not stripped or line.startswith(" ")):
            continue
        in_math = False
        lines[i] = _plain(line)


def _plain(line: str) -> str:
    """Outside backquotes (literals, roles such as :math:`...`, references), a bare ``name_`` becomes a
    literal and a ``|`` (a length or an absolute value, |y|) a plain bar, not a substitution reference.
    Grid-table lines (borders, and rows from | to |) are left alone."""
    stripped = line.strip()
    if stripped.startswith(("+-", "+=")) or (stripped.startswith("|") and stripped.endswith("|")):
        return line
    parts = _QUOTED.split(line)  # odd items: ``literals``, `roles` and `references`, kept as they are
    return "".join(p if k % 2 else _TRAILING.sub(r"``\1``", p).replace("|", "\\|") for k, p in enumerate(parts))


_QUOTED = re.compile(r"(``.*?``|`[^`]*`)")


def _generate(app, config) -> None:  # noqa: ANN001
    _write("api.rst", _api())
    _write("examples.md", _examples())


def setup(app) -> None:  # noqa: ANN001
    app.connect("config-inited", _generate)  # before Sphinx looks for the source files
    app.connect("autodoc-process-docstring", _literal_trailing_underscores)


def _literal_blocks(text: str) -> str:
    """An indented block after a line ending in one colon (a table of flags, a command) is set as a
    literal block ("::"), as the scripts' docstrings mean it, not as a reStructuredText definition list;
    other lines get the docstrings' treatment (``_plain``)."""
    lines = text.splitlines()
    literal = False
    for i, line in enumerate(lines):
        if line.strip() and not line.startswith(" "):
            literal = False
        if not literal:
            lines[i] = _plain(line)
        if (line.endswith(":") and i + 2 < len(lines) and not lines[i + 1].strip()
                and lines[i + 2].startswith(" ")):
            lines[i] = lines[i] if line.endswith("::") else lines[i] + ":"
            literal = True
    return "\n".join(lines)


def _write(name: str, text: str) -> None:
    path = HERE / name
    if not path.exists() or path.read_text() != text:  # unchanged files keep their times: no rebuild
        path.write_text(text)

