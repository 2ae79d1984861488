"""One verdict per row, read by the table, recommend, the JSON and the figure; rows that could not run
stay everywhere with their reason; the bias threshold is the whole report's; errors name the argument."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import gradest
from gradest.diagnostics import Report, Row, compare, recommend
from gradest.diagnostics.plots import decision_figure, plot_report, plot_sweeps
from gradest.problems import Problem


@pytest.fixture(scope="module")
def categorical() -> Report:
    # The categorical problems of a user: three estimators cannot run on it, and used to vanish.
    problem = Problem(lambda k: torch.tensor([0.0, 1.0, 3.0])[k], lambda logits: torch.distributions.Categorical(
        logits=logits), [torch.zeros(3)], name="mine")
    return compare(problem, "pathwise,arm,measure-valued,score+leave-one-out,enumerate,gumbel-softmax", trials=400,
                   timing_repeats=1)


def _texts(fig) -> str:
    return "\n".join([t.get_text() for t in fig.texts] + [t.get_text() for ax in fig.axes for t in ax.texts]
                     + [t.get_text() for ax in fig.axes for t in ax.get_yticklabels()])


def test_rows_that_cannot_run_stay_in_table_json_and_figure(categorical):
    na = {r.estimator: r for r in categorical.rows if r.status == "n/a"}
    assert set(na) == {"pathwise", "arm", "measure-valued", "gumbel-softmax"}
    assert all(na[e].error == "NotImplementedError" for e in ("pathwise", "arm", "measure-valued"))
    # f indexes a table: it cannot take relaxed (one-hot) points, and the reason says so
    assert na["gumbel-softmax"].reason.startswith("f failed at this estimator's points (float32 [4, 3]): IndexError")
    table = {row[1]: row for row in categorical.table()[1:]}
    assert table["pathwise"][-1] == "n/a: Categorical has no rsample"
    assert [row[1] for row in categorical.table()[1:]][-4:] == ["pathwise", "arm", "measure-valued",
                                                               "gumbel-softmax"]  # last, in the order given
    data = json.loads(categorical.to_json())
    assert {r["estimator"]: r["verdict"] for r in data["rows"]}["arm"] == "n/a"
    text = _texts(decision_figure(categorical))
    assert "could not run" in text and "pathwise: Categorical has no rsample" in text and "arm" in text


def test_only_estimators_that_cannot_run_still_make_a_table_and_a_figure():
    report = compare("gaussian-square", "arm,disarm", trials=40, timing_repeats=1)
    assert len(report.table()) == 3 and report.tests == 0
    (rec,) = recommend(report)
    assert rec.estimator is None and "2 could not run" in rec.text
    assert "no estimator ran" in _texts(decision_figure(report))


def _row(estimator: str, *, z: float, claim: bool = True, var: float = 1.0, seconds: float = 1e-4) -> Row:
    return Row(problem="p", estimator=estimator, n=4, trials=1000, mean=[0.0], exact=[0.0], bias=0.1,
               bias_se=[0.05], variance=var, variance_se=0.01 * var, snr=1.0, seconds=seconds, unbiased=claim,
               bias_z=z)


def test_table_recommendation_json_and_figure_agree_on_bias():
    # straight-through: biased by design, 3.2 SE off, below the report's threshold: not "significant"
    # anywhere (the table said "≈0 within noise" while the recommendation said "biased, 4.3 SE").
    report = Report([_row("loo", z=0.5, var=1.0), _row("st", z=3.2, claim=False, var=1e-4),
                     _row("broken", z=40.0, var=10.0)], {"false_alarm": 1e-3})
    assert round(report.z, 2) == 3.59 and report.tests == 3
    verdicts = {r.estimator: r.verdict for r in report.rows}
    assert verdicts == {"loo": "unbiased", "st": "biased by design", "broken": "biased"}
    notes = {row[1]: row[-1] for row in report.table()[1:]}
    assert notes["loo"] == "★ recommended" and notes["st"] == "biased by design (not detected here)"
    assert notes["broken"].startswith("biased, z=40.0 (claims unbiased")
    bias = {row[1]: row[3] for row in report.table()[1:]}
    assert bias["st"].startswith("≈0") and bias["broken"].endswith("*")
    (rec,) = recommend(report)
    assert rec.estimator == "loo" and rec.alternative == "st"
    assert "biased by design (its bias is below this run's noise, 3.2 SE)" in rec.text
    assert "significant" not in rec.text.split("broken")[0]
    assert "broken claims to be unbiased but is 40.0 SE off" in rec.text
    assert {r["estimator"]: r["verdict"] for r in json.loads(report.to_json())["rows"]} == verdicts
    text = _texts(decision_figure(report))
    assert "biased by design" in text and "biased (40 SE)" in text and "★ loo" in text


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.sampled_from(["p", "q"]), st.floats(0.0, 8.0), st.booleans(),
                          st.floats(1e-4, 1e2), st.floats(1e-6, 1e-2), st.booleans()), min_size=1, max_size=8))
def test_the_tables_star_is_recommends_pick(specs):
    """The table marks, for each problem, exactly the estimator recommend() picks (ties: the faster)."""
    rows = []
    for i, (problem, z, claim, var, seconds, ran) in enumerate(specs):
        r = _row(f"e{i}", z=z, claim=claim, var=var, seconds=seconds)
        r.problem = problem
        if not ran:
            r.status, r.reason, r.error = "n/a", "could not run", "NotImplementedError"
        rows.append(r)
    report = Report(rows, {"false_alarm": 1e-3})
    starred = {(row[0], row[1]) for row in report.table()[1:] if row[-1] == "★ recommended"}
    assert starred == {(rec.problem, rec.estimator) for rec in recommend(report) if rec.estimator is not None}


def test_the_threshold_is_the_whole_reports_and_adding_reports_retests():
    one = Report([_row("a", z=3.5)], {"false_alarm": 1e-3})
    assert one.rows[0].biased  # z = 3.29 for one coordinate
    many = one + Report([_row(f"b{i}", z=0.0) for i in range(99)], {"false_alarm": 1e-3})
    assert not many.rows[0].biased and many.tests == 100  # z = 4.42 for a hundred
    assert one.rows[0].biased  # the first report keeps its own flags


def test_a_significant_estimator_wins_by_a_margin_and_a_close_one_says_so():
    close = Report([_row("a", z=0, var=1.0), _row("b", z=0, var=1.01)], {})
    assert "within the measurement's noise" in recommend(close)[0].text
    far = Report([_row("a", z=0, var=1.0), _row("b", z=0, var=3.0)], {})
    assert "within" not in recommend(far)[0].text and "3× lower variance × time than b" in recommend(far)[0].text


@pytest.mark.parametrize("call, error, match", [
    (lambda: recommend("x"), TypeError, "recommend: report='x' is a str, not a Report"),
    (lambda: recommend(Report([])), None, None),
    (lambda: recommend(Report([]), margin=0.5), ValueError, "margin=0.5 must be a finite number > 1"),
    (lambda: plot_report("x", "a.png"), TypeError, "plot_report: report='x' is a str"),
    (lambda: plot_report(Report([]), ""), TypeError, "path='' must be a file name"),
    (lambda: plot_report(Report([]), "a.png"), ValueError, "no comparison rows"),
    (lambda: plot_sweeps(Report([]), "a.png"), ValueError, "no measured sweep rows"),
    (lambda: Report.from_json("{"), ValueError, "Report.from_json: text is not JSON"),
    (lambda: Report.from_json("[]"), ValueError, "expected a JSON object, got list"),
    (lambda: Report.from_json('{"version": 1, "rows": []}'), ValueError, "version=1, expected 2"),
    (lambda: Report.from_json('{"version": 2, "rows": [{"problem": "p", "estimator": "e", "n": 1, "trials": 1, '
                              '"colour": 3}]}'), ValueError, r"rows\[0\] has unknown fields \['colour'\]"),
    (lambda: Report([], {"false_alarm": 2}), ValueError, r"settings\['false_alarm'\]=2 must lie in \(0, 1\)"),
    (lambda: Report("rows"), TypeError, "rows must be a list of Row"),
    (lambda: Report([]).table("n"), ValueError, "kind='n' is not in this report"),
])
def test_errors_name_the_argument(call, error, match, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if error is None:
        assert call() == []
        return
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("kwargs, match", [
    ({"n": 0}, "n=0 must be an int >= 1"),
    ({"trials": 5}, "trials=5 must be an int >= 20"),
    ({"seed": -1}, "seed=-1 must be an int >= 0"),
    ({"timing_repeats": 0}, "timing_repeats=0"),
    ({"train_steps": -1}, "train_steps=-1"),
    ({"false_alarm": 0.0}, "false_alarm=0.0 must lie in"),
])
def test_compare_settings_are_checked_first(kwargs, match):
    with pytest.raises(ValueError, match=match):
        compare("gaussian-square", "pathwise", **kwargs)


@pytest.mark.parametrize("kwargs, match", [({"n": 2.0}, "n=2.0 must be an int"), ({"trials": "100"}, "trials='100'"),
                                           ({"seed": True}, "seed=True must be an int")])
def test_compare_settings_of_the_wrong_type(kwargs, match):
    with pytest.raises(TypeError, match=match):
        compare("gaussian-square", "pathwise", **kwargs)


def test_problems_with_the_same_name_get_distinct_labels():
    twice = [(lambda x: x**2, lambda m: torch.distributions.Normal(m, 1.0), [torch.tensor(0.5)])] * 2
    report = compare(twice, "pathwise", trials=40, timing_repeats=1)
    assert [r.problem for r in report.rows] == ["custom-0", "custom-1"]
    named = [Problem(lambda x: x**2, lambda m: torch.distributions.Normal(m, 1.0), [torch.tensor(0.5)], name="p")] * 2
    assert [r.problem for r in compare(named, "pathwise", trials=40, timing_repeats=1).rows] == ["p", "p#2"]


def test_json_round_trip_keeps_rows_and_flags(categorical):
    again = Report.from_json(categorical.to_json())
    assert again.to_json() == categorical.to_json()
    assert [r.verdict for r in again.rows] == [r.verdict for r in categorical.rows]


def test_an_estimator_that_fails_mid_way_gets_its_error_not_a_crash():
    class Flaky(gradest.ScoreFunction):
        calls = 0

        def forward(self, *args, **kwargs):  # pragma: no cover - never called by the surrogate
            raise AssertionError

    def f(x):
        f.calls += 1
        if f.calls > 3:
            raise RuntimeError("the simulator crashed")
        return x

    f.calls = 0
    problem = Problem(f, lambda m: torch.distributions.Normal(m, 1.0), [torch.tensor(0.5)], name="flaky",
                      objective=lambda m: m)
    (row,) = compare(problem, {"score": Flaky}, trials=40, timing_repeats=1).rows
    assert row.status == "n/a" and row.error == "RuntimeError" and "simulator crashed" in row.reason
