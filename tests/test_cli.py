"""The command line with tiny settings: exit codes, JSON schema, errors for bad names."""

from __future__ import annotations

import json

import pytest

from gradest.cli import main
from gradest.diagnostics import Report


def test_compare_writes_json_and_table(tmp_path, capsys):
    path = tmp_path / "report.json"
    png = tmp_path / "report.png"
    code = main(["compare", "--problems", "gaussian-square", "bernoulli-0.499", "--estimators", "pathwise",
                 "score+leave-one-out", "enumerate", "--trials", "200", "--quick", "--json", str(path),
                 "--plot", str(png)])
    assert code == 0
    out = capsys.readouterr().out
    assert "pathwise" in out and "score+leave-one-out" in out
    data = json.loads(path.read_text())
    assert data["version"] == 2 and set(data["settings"]) >= {"n", "trials", "seed", "torch"}
    rows = {(r["problem"], r["estimator"]): r for r in data["rows"]}
    assert len(rows) == 6
    assert rows[("bernoulli-0.499", "pathwise")]["status"] == "n/a"
    assert "rsample" in rows[("bernoulli-0.499", "pathwise")]["reason"]
    ok = rows[("gaussian-square", "pathwise")]
    assert ok["status"] == "ok" and len(ok["mean"]) == len(ok["exact"]) == 2
    assert ok["variance"] > 0 and ok["seconds"] > 0
    assert rows[("bernoulli-0.499", "enumerate")]["variance"] == 0.0
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = Report.from_json(path.read_text())
    assert Report.from_json(report.to_json()).to_json() == report.to_json()


def test_unknown_problem_lists_valid_ones(capsys):
    assert main(["compare", "--problems", "nope"]) == 2
    err = capsys.readouterr().err
    assert "'nope'" in err and "gaussian-square" in err


def test_bad_samples_exit_code(capsys):
    assert main(["compare", "--samples", "0", "--quick", "--plot", ""]) == 2
    assert "--samples=0" in capsys.readouterr().err


def test_problems_and_version(capsys):
    assert main(["problems"]) == 0
    assert "categorical-10" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0


def test_report_rejects_other_versions():
    with pytest.raises(ValueError, match="version=7"):
        Report.from_json('{"version": 7, "rows": []}')
