"""Every example: ``--help`` shows each flag's default, and the script draws a progress bar and writes a
figure (the flags and calls are there; ``tests/test_examples.py`` and friends run them)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.py"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_help_shows_defaults(path):
    pytest.importorskip("sklearn")
    pytest.importorskip("gymnasium")
    done = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    flags = re.findall(r"^\s+(--[\w-]+)", done.stdout, re.M)
    assert len(flags) >= 3 and text.count("(default:") == len(flags), text


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_progress_bar_and_figure(path):
    source = path.read_text()
    assert "rich.progress" in source  # a bar when rich is installed (the cli extra)
    assert "--plot" in source and "savefig(" in source
