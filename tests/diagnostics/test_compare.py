"""compare, sweeps and recommend: measured bias, the field's headline orderings, rendering."""

from __future__ import annotations

import math

import pytest
import torch

import gradest
from gradest.diagnostics import Report, compare, recommend, sweep_samples
from gradest.problems import BernoulliToy, Gaussian
from gradest.testing import SelfInclusiveMean, z_for

Z = z_for(1e-6, 1)


def _row(report: Report, estimator: str, problem: str | None = None):
    rows = [r for r in report.rows if r.estimator == estimator and (problem is None or r.problem == problem)]
    assert len(rows) == 1, rows
    return rows[0]


def _greater(big, small, factor: float = 1.0) -> bool:
    """big.variance > factor · small.variance, by more than z standard errors."""
    return big.variance - factor * small.variance > Z * math.hypot(big.variance_se, factor * small.variance_se)


def test_compare_measures_the_exact_bias_of_a_biased_baseline():
    # A baseline that sees its own sample's cost shrinks the gradient by (n - 1)/n: bias = -∇J / n.
    problem = Gaussian("shifted_square", k=2.0)
    ests = {
        "wrong": lambda: gradest.ScoreFunction(SelfInclusiveMean()),
        "loo": lambda: gradest.ScoreFunction(gradest.LeaveOneOut()),
    }
    report = compare([problem], ests, n=4, trials=20000, timing_repeats=1)
    wrong, loo = _row(report, "wrong"), _row(report, "loo")
    exact = torch.tensor(wrong.exact)
    expected = (-exact / 4).norm().item()
    se = torch.tensor(wrong.bias_se).norm().item()
    assert wrong.biased and abs(wrong.bias - expected) < Z * se
    assert not loo.biased and loo.bias_z < Z


def test_enumeration_is_exact_and_zero_variance():
    report = compare(["bernoulli-0.499", "categorical-10"], ["enumerate"], trials=40, timing_repeats=1)
    for row in report.rows:
        assert row.variance == 0 and row.bias < 1e-12 and not row.biased, row


@pytest.fixture(scope="module")
def headline() -> Report:
    problems = ["gaussian-square", "gaussian-cos3", "gaussian-bump", "gaussian-shifted-square", "logistic-regression"]
    ests = ["pathwise", "score", "score+leave-one-out", "score+moving-average"]
    return compare(problems, ests, n=4, trials=8000, timing_repeats=1)


def test_score_function_variance_far_above_pathwise_on_smooth_costs(headline):
    assert _greater(_row(headline, "score", "gaussian-square"), _row(headline, "pathwise", "gaussian-square"), 3.0)
    p = "logistic-regression"  # two orders of magnitude on Mohamed et al.'s §8 model
    assert _greater(_row(headline, "score", p), _row(headline, "pathwise", p), factor=100.0)


def test_pathwise_loses_to_the_score_function_on_cos3x(headline):
    assert _greater(_row(headline, "pathwise", "gaussian-cos3"), _row(headline, "score", "gaussian-cos3"))


def test_baselines_cut_variance_and_a_mean_baseline_can_raise_it(headline):
    p = "gaussian-shifted-square"
    assert _greater(_row(headline, "score", p), _row(headline, "score+leave-one-out", p))
    p = "gaussian-bump"  # E[f] sits far from the costs that carry the signal: the mean baseline hurts
    assert _greater(_row(headline, "score+moving-average", p), _row(headline, "score", p))


def test_no_unbiased_estimator_is_flagged_biased(headline):
    assert not any(r.biased for r in headline.rows if r.status == "ok")


def test_variance_falls_as_one_over_n():
    report = sweep_samples(Gaussian("square"), ["pathwise"], ns=(2, 32), trials=8000)
    small, large = (r for r in report.rows)
    ratio = small.variance / large.variance
    se = ratio * math.hypot(small.variance_se / small.variance, large.variance_se / large.variance)
    assert abs(ratio - 16) < Z * se


def test_recommend_picks_the_cheapest_unbiased_and_names_biased_winners():
    report = compare([BernoulliToy(0.499)], ["score", "score+leave-one-out", "enumerate"], trials=200,
                     timing_repeats=2)
    (rec,) = recommend(report)
    assert rec.estimator == "enumerate" and "zero variance" in rec.text
    report = compare([Gaussian("shifted_square", k=2.0)], {
        "loo": lambda: gradest.ScoreFunction(gradest.LeaveOneOut()),
        "wrong": lambda: gradest.ScoreFunction(SelfInclusiveMean()),
    }, trials=2000, timing_repeats=2)
    for r in report.rows:  # pretend the wrong one is far cheaper, to exercise the biased branch
        r.seconds = 1e-9 if r.estimator == "wrong" else 1.0
    (rec,) = recommend(report, margin=2.0)
    assert rec.estimator == "loo" and rec.alternative == "wrong" and "biased" in rec.text


def test_custom_problem_uses_a_reference():
    loc = torch.tensor([0.3, -0.2])
    report = compare([(lambda x: (x - 1.0).square(), lambda m: torch.distributions.Normal(m, 1.0), (loc,))],
                     ["pathwise", "score"], n=2, trials=200, timing_repeats=1)
    for row in report.rows:
        assert row.reference.startswith("reference") and not row.biased


def test_report_json_round_trip_and_bad_arguments():
    report = compare(["gaussian-square"], ["pathwise"], trials=40, timing_repeats=1)
    assert Report.from_json(report.to_json()).to_json() == report.to_json()
    with pytest.raises(ValueError, match="problem='nope'"):
        compare(["nope"], ["pathwise"])
    with pytest.raises(ValueError, match="estimator='nope'"):
        compare(["gaussian-square"], ["nope"])
    with pytest.raises(ValueError, match="trials=5"):
        compare(["gaussian-square"], ["pathwise"], trials=5)
    with pytest.raises(ValueError, match="n=0"):
        compare(["gaussian-square"], ["pathwise"], n=0)


def test_figures_render(tmp_path):
    import matplotlib.image

    from gradest.diagnostics.plots import plot_report

    report = compare(["gaussian-square", "bernoulli-0.499"], ["pathwise", "score", "enumerate"], trials=40,
                     timing_repeats=1)
    report = report + sweep_samples("gaussian-square", ["pathwise"], ns=(2, 4), trials=40)
    path = plot_report(report, tmp_path / "f.png")
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 200 and image.shape[1] > 800 and image.std() > 0.01  # two panels, not blank


def test_gae_lambda_trade_off():
    from gradest.diagnostics import sweep_gae_lambda

    report = sweep_gae_lambda((0.0, 1.0), trials=20000)
    td, mc = report.rows
    assert td.biased and not mc.biased  # λ = 0 inherits the critic's error; λ = 1 is unbiased
    assert mc.variance - td.variance > Z * math.hypot(mc.variance_se, td.variance_se)
