"""The documentation runs: every docstring example (doctest of every gradest module), every ```python
block of README.md and docs/guide.md, and an example for every public name.

Examples in files whose owners have not written them yet are listed in ``MISSING_EXAMPLES`` with the
file and the reason; they are strict xfails, so the run reports them (and fails once one is written,
until its entry is removed). The Sphinx build itself runs in ``make test`` (``make docs``, warnings
as errors).
"""

from __future__ import annotations

import doctest
import importlib
import importlib.metadata
import importlib.util
import inspect
import pkgutil
import re
import textwrap
from pathlib import Path

import pytest
import torch

import gradest

ROOT = Path(__file__).resolve().parent.parent


def _modules() -> list[str]:
    names = [m.name for m in pkgutil.walk_packages(gradest.__path__, "gradest.")]
    return ["gradest"] + [n for n in names if n != "gradest.__main__"]  # __main__ runs the command


def _doctests() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    found = {}
    for name in _modules():
        for test in finder.find(importlib.import_module(name), name):
            if test.examples:
                found.setdefault((test.filename, test.lineno), test)  # re-exports are found twice
    return sorted(found.values(), key=lambda t: t.name)


DOCTESTS = _doctests()


@pytest.mark.parametrize("test", DOCTESTS, ids=[t.name for t in DOCTESTS])
def test_docstring_example(test: doctest.DocTest) -> None:
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    lines: list[str] = []
    with torch.random.fork_rng():
        result = runner.run(test, out=lines.append, clear_globs=True)
    assert result.failed == 0, "".join(lines)


def test_every_module_with_examples_is_collected() -> None:
    assert len(DOCTESTS) >= 50  # a finder that silently found nothing would pass every test above
    files = {Path(t.filename).relative_to(ROOT).as_posix() for t in DOCTESTS}
    assert {"gradest/expect.py", "gradest/diagnostics/compare.py", "gradest/rl/advantages.py"} <= files


# ---- an example for every public name ----------------------------------------------------------------

def _public() -> list[tuple[str, object]]:
    spec = importlib.util.spec_from_file_location("docs_conf", ROOT / "docs" / "conf.py")
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    return [(f"{module}.{name}", getattr(importlib.import_module(module), name))
            for module, names in conf.public_names() for name in names]


MISSING_EXAMPLES: dict[str, str] = {}  # name: file (owned elsewhere) and what is missing
PUBLIC = _public()


@pytest.mark.parametrize("name, obj", [
    pytest.param(name, obj, marks=pytest.mark.xfail(strict=True, reason=MISSING_EXAMPLES[name]))
    if name in MISSING_EXAMPLES else (name, obj) for name, obj in PUBLIC
], ids=[name for name, _ in PUBLIC])
def test_public_name_has_an_example(name: str, obj: object) -> None:
    doc = inspect.getdoc(obj) or ""
    assert ">>>" in doc, f"{name} has no Example in its docstring"


def test_missing_examples_lists_only_public_names() -> None:
    assert set(MISSING_EXAMPLES) <= {name for name, _ in PUBLIC}


# ---- README and guide ---------------------------------------------------------------------------------

def _blocks(path: Path) -> list[tuple[str, str]]:
    text = path.read_text()
    out = []
    for m in re.finditer(r"^( *)```python\n(.*?)^\1```", text, re.S | re.M):  # also indented, in a list
        line = text.count("\n", 0, m.start()) + 1
        out.append((f"{path.relative_to(ROOT).as_posix()}:{line}", textwrap.dedent(m.group(2))))
    return out


BLOCKS = _blocks(ROOT / "README.md") + _blocks(ROOT / "docs" / "guide.md")
FRAGMENTS: dict[str, str] = {}  # blocks not runnable on their own (first line: why), owned elsewhere


@pytest.mark.parametrize("where, code", [
    pytest.param(w, c, marks=pytest.mark.xfail(strict=True, reason=FRAGMENTS[c.splitlines()[0]]))
    if c.splitlines()[0] in FRAGMENTS else (w, c) for w, c in BLOCKS
], ids=[w for w, _ in BLOCKS])
def test_markdown_python_block_runs(where: str, code: str, tmp_path, monkeypatch) -> None:
    """Each block runs on its own, as a reader would paste it (in a scratch folder)."""
    monkeypatch.chdir(tmp_path)
    with torch.random.fork_rng():
        exec(compile(code, where, "exec"), {"__name__": "__main__"})


def test_markdown_blocks_are_found() -> None:
    assert sum(w.startswith("README.md") for w, _ in BLOCKS) >= 2
    assert sum(w.startswith("docs/guide.md") for w, _ in BLOCKS) >= 2


# ---- package metadata -----------------------------------------------------------------------------------

def test_one_version_and_the_package_files() -> None:
    assert importlib.metadata.version("gradest") == gradest.__version__
    assert (Path(gradest.__file__).parent / "py.typed").exists()
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    assert "## [Unreleased]" in (ROOT / "CHANGELOG.md").read_text()
