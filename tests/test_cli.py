"""The command line with tiny settings: your own problem from a file, estimators with options, only the
sweeps asked for, JSON for machines, one-line errors, --help with defaults."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gradest.cli import main
from gradest.diagnostics import Report

PROBLEM = '''
import torch
from torch.distributions import Bernoulli, Independent
from gradest.problems import Problem


def make_problem():
    """E[(Σ b − 1.5)²] over three bits: exact by enumeration (8 states)."""
    def objective(logits):
        p = torch.sigmoid(logits)
        mean = p.sum(-1)
        return (p * (1 - p)).sum(-1) + (mean - 1.5) ** 2
    return Problem(lambda b: (b.sum(-1) - 1.5) ** 2, lambda logits: Independent(Bernoulli(logits=logits), 1),
                   [torch.tensor([0.3, -0.2, 0.1])], objective=objective, name="three-bits")


def as_tuple():
    return (lambda x: torch.cos(3 * x), lambda m: torch.distributions.Normal(m, 1.0), [torch.tensor(0.5)])
'''


@pytest.fixture()
def problem_file(tmp_path):
    path = tmp_path / "my_problem.py"
    path.write_text(PROBLEM)
    return path


def test_compare_on_a_problem_file_written_here(problem_file, tmp_path, capsys):
    out_json, png = tmp_path / "r.json", tmp_path / "r.png"
    code = main(["compare", "--problem", f"{problem_file}:make_problem", "--estimators",
                 "disarm,arm,rebar:temperature=0.5,score:baseline=loo,pathwise,enumerate", "--quick",
                 "--json", str(out_json), "--plot", str(png)])
    assert code == 0
    out = capsys.readouterr().out
    assert "three-bits" in out and "★ recommended" in out and "n/a: Independent(Bernoulli) has no rsample" in out
    data = json.loads(out_json.read_text())
    rows = {r["estimator"]: r for r in data["rows"]}
    assert list(rows) == ["disarm", "arm", "rebar:temperature=0.5", "score:baseline=leave-one-out", "pathwise",
                          "enumerate"]
    assert rows["pathwise"]["status"] == "n/a" and "rsample" in rows["pathwise"]["reason"]
    assert all(r["reference"] == "exact" for r in rows.values() if r["status"] == "ok")
    assert rows["enumerate"]["variance"] == 0.0 and rows["enumerate"]["verdict"] == "unbiased"
    assert all(not r["setting"] for r in data["rows"])  # no sweep unless asked
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not (tmp_path / "r-sweeps.png").exists()
    assert "• three-bits: use " in out


def test_a_tuple_problem_and_json_on_stdout(problem_file, capsys):
    assert main(["compare", "--problem", f"{problem_file}:as_tuple", "--estimators", "pathwise", "score",
                 "--quick", "--json", "-", "--plot", ""]) == 0
    captured = capsys.readouterr()
    report = Report.from_json(captured.out)  # stdout is the JSON alone
    assert [r.problem for r in report.rows] == ["as_tuple", "as_tuple"]
    assert [r.reference.split(",")[0] for r in report.rows] == ["reference: ScoreFunction"] * 2
    assert "as_tuple" in captured.err  # the table went to stderr


def test_sweeps_only_when_asked(tmp_path, capsys):
    png = tmp_path / "c.png"
    assert main(["compare", "--problems", "categorical-10", "--estimators", "score+leave-one-out,pathwise",
                 "--sweeps", "n,temperature", "--quick", "--plot", str(png), "--json", str(tmp_path / "c.json")]) == 0
    rows = json.loads((tmp_path / "c.json").read_text())["rows"]
    kinds = {r["estimator"] + ":" + ",".join(r["setting"]) for r in rows}
    assert kinds == {"score+leave-one-out:", "pathwise:", "score+leave-one-out:n", "gumbel-softmax:temperature"}
    assert (tmp_path / "c-sweeps.png").exists()
    out = capsys.readouterr().out
    assert "variance against samples n" in out and "GAE" not in out


@pytest.mark.parametrize("argv, message", [
    (["--problems", "nope"], "unknown problem 'nope'; choose from: gaussian-square"),
    (["--estimators", "rebar:tau=1"], "has no option 'tau'; rebar takes temperature, eta, learn"),
    (["--estimators", "vimco"], "multi-sample bound"),
    (["--problem", "missing.py:make"], "there is no file 'missing.py'"),
    (["--problem", "nocolon"], "must be FILE.py:FUNCTION or MODULE:FUNCTION"),
    (["--problems", "gaussian-square", "--samples", "0"], "n=0 must be an int >= 1"),
    (["--problems", "gaussian-square", "--trials", "5"], "trials=5 must be an int >= 20"),
    (["--problems", "gaussian-square", "--sweeps", "tau"], "sweep 'tau' is unknown"),
    (["--problems", "gaussian-square", "--false-alarm", "2"], "false_alarm=2.0 must lie in"),
    (["--problems", "gaussian-square", "--estimators", "pathwise", "--json", "no/such/dir/r.json"],
     "cannot write 'no/such/dir/r.json': No such file or directory"),
])
def test_errors_are_one_line_with_exit_code_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["compare", "--quick", "--plot", "", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gradest compare: ") and message in err[0], err


def test_listings_version_and_help_with_defaults(capsys):
    assert main(["problems"]) == 0 and "categorical-10" in capsys.readouterr().out
    assert main(["estimators"]) == 0
    out = capsys.readouterr().out
    assert "rebar" in out and ":temperature=float (default 0.5)" in out and "measure-valued" in out
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "(default: 2000, or 200 with --quick)" in help_text and "(default: 4)" in help_text
    assert "(default: None)" not in help_text


def test_python_dash_m_gradest_runs():
    done = subprocess.run([sys.executable, "-m", "gradest", "estimators"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "disarm" in done.stdout
