"""Installed with no extras (``pip install .`` in a fresh venv), every ``gradest`` command works, or says in
one line which extra to install. Slow: it builds a venv and installs gradest and torch (pinned by
constraints.txt) into it."""

from __future__ import annotations

import os
import subprocess
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PROBLEM = '''
import torch
from gradest.problems import Problem

def make_problem():
    return Problem(lambda x: (x > 0).float(), lambda m: torch.distributions.Normal(m, 1.0), [torch.tensor(0.3)])
'''


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("no-extras")
    venv.EnvBuilder(with_pip=True).create(where / "venv")
    python = where / "venv" / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-c", str(ROOT / "constraints.txt"), str(ROOT)],
                   check=True, timeout=900, cwd=where)
    return where


def _run(fresh: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([str(fresh / "venv" / "bin" / args[0]), *args[1:]], capture_output=True, text=True,
                          timeout=600, cwd=fresh, env=env)


@pytest.mark.slow
def test_the_extras_are_absent_and_the_package_is_complete(fresh):
    done = _run(fresh, "python", "-c", "import importlib.util as u, gradest, pathlib; "
                "print([m for m in ('sklearn', 'matplotlib', 'rich') if u.find_spec(m)]); "
                "print((pathlib.Path(gradest.__file__).parent / 'py.typed').exists())")
    assert done.returncode == 0 and done.stdout.split() == ["[]", "True"], done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("args, works", [
    (("gradest", "--version"), True),
    (("gradest", "problems"), True),
    (("gradest", "estimators"), True),
    (("gradest", "compare", "--problems", "gaussian-square,bernoulli-0.499", "--quick"), True),
    (("gradest", "compare", "--problem", "my_problem.py:make_problem", "--estimators", "pathwise,score",
      "--quick", "--json", "out.json"), True),
    (("gradest", "compare", "--problems", "gaussian-square", "--quick", "--sweeps", "all", "--plot", ""), True),
    (("gradest", "compare", "--quick"), False),  # logistic-regression and digits-vae load scikit-learn's data
    (("gradest", "compare", "--problems", "digits-vae", "--quick"), False),
    (("gradest", "compare", "--problems", "gaussian-square", "--quick", "--plot", "x.png"), False),
    (("python", "-m", "gradest", "compare", "--problems", "logistic-regression", "--quick"), False),
])
def test_every_command_works_or_names_the_extra_in_one_line(fresh, args, works):
    (fresh / "my_problem.py").write_text(PROBLEM)
    done = _run(fresh, *args)
    assert "Traceback" not in done.stderr, done.stderr
    if works:
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip()
        if args[1] == "compare" and "--plot" not in args:  # no matplotlib: the figure is skipped, in one line
            assert done.stderr.strip() == ("gradest compare: no figure: figures need matplotlib: "
                                           "pip install 'gradest[cli]'")
    else:
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, done.stderr
        assert "pip install 'gradest[cli]'" in lines[0]
