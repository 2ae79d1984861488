"""Estimator specs by name with options, instances and factories in ``compare``: every public estimator of
E[f] reachable by name, errors that name the argument, instances copied so the caller's state stays."""

from __future__ import annotations

import pytest
import torch

import gradest
from gradest.diagnostics import ESTIMATORS, compare, parse_estimators
from gradest.diagnostics.estimators import RelaxedCostControl
from gradest.problems import BernoulliToy, Gaussian, Problem


def _built(spec: str, problem=None):
    (recipe,) = parse_estimators(spec)
    return recipe.label, recipe.build(problem or BernoulliToy())


def test_every_public_estimator_of_an_expectation_has_a_name():
    classes = {type(_built(name)[1]) for name in ESTIMATORS}
    public = {getattr(gradest, n) for n in gradest.__all__}
    estimators = {c for c in public if isinstance(c, type) and issubclass(c, gradest.Estimator)} - {gradest.Estimator}
    assert estimators <= classes, estimators - classes


@pytest.mark.parametrize("spec, label, check", [
    ("disarm", "disarm", lambda e: isinstance(e, gradest.DisARM)),
    ("DisARM", "disarm", lambda e: isinstance(e, gradest.DisARM)),
    ("gumbel_softmax:temperature=0.1:hard=true", "gumbel-softmax:temperature=0.1:hard=true",
     lambda e: e.temperature == 0.1 and e.hard),
    ("rebar:temperature=0.3:eta=0.8", "rebar:temperature=0.3:eta=0.8",
     lambda e: e.temperature == 0.3 and float(e.eta) == 0.8),
    ("score:baseline=loo", "score:baseline=leave-one-out", lambda e: isinstance(e.baseline, gradest.LeaveOneOut)),
    ("score:baseline=moving-average:decay=0.5", "score:baseline=moving-average:decay=0.5",
     lambda e: isinstance(e.baseline, gradest.MovingAverage) and e.baseline.decay == 0.5),
    ("score:baseline=constant:b=2", "score:baseline=constant:b=2", lambda e: isinstance(e.baseline, gradest.Constant)),
    ("score", "score", lambda e: e.baseline is None),
    ("unordered-set:k=2", "unordered-set:k=2", lambda e: e.k == 2),
    ("gumbel-rao:k=3", "gumbel-rao:k=3", lambda e: e.k == 3),
    ("enumerate:budget=16", "enumerate:budget=16", lambda e: e.budget == 16),
    ("relax:temperature=0.2", "relax:temperature=0.2", lambda e: isinstance(e.control, RelaxedCostControl)),
])
def test_specs_build_what_they_say(spec, label, check):
    got, est = _built(spec)
    assert got == label and check(est)


def test_a_list_joined_by_commas():
    assert [r.label for r in parse_estimators("arm, disarm,,score+leave-one-out")] == [
        "arm", "disarm", "score+leave-one-out"]


@pytest.mark.parametrize("spec, error, match", [
    ("nope", ValueError, "estimator='nope' is unknown; choose from pathwise"),
    ("rebar:tau=0.3", ValueError, "has no option 'tau'; rebar takes temperature, eta, learn"),
    ("rebar:temperature=abc", ValueError, "temperature='abc' must be a number"),
    ("rebar:temperature", ValueError, "option 'temperature' must be KEY=VALUE"),
    ("rebar:temperature=0", ValueError, "rebar:temperature=0.*temperature"),  # REBAR's own check
    ("relax:temperature=-1", ValueError, "relax:temperature=-1.*must be a finite number > 0"),
    ("gumbel-softmax:hard=maybe", ValueError, "hard='maybe' must be true or false"),
    ("score:baseline=median", ValueError, "baseline='median' is not one of none, moving-average"),
    ("unordered-set:k=2.5", ValueError, "k='2.5' must be an int"),
    ("vimco", ValueError, "multi-sample bound"),
    ("", ValueError, "names no estimator"),
])
def test_bad_specs_fail_before_any_work(spec, error, match):
    with pytest.raises(error, match=match):
        parse_estimators(spec)


def test_instances_are_copied_so_the_callers_state_is_untouched():
    baseline = gradest.MovingAverage(0.9)
    est = gradest.ScoreFunction(baseline)
    before = {k: v.clone() for k, v in est.state_dict().items()}
    report = compare([Gaussian("square")], [est, est], trials=40, timing_repeats=1)
    assert [r.estimator for r in report.rows] == ["ScoreFunction(MovingAverage())",
                                                  "ScoreFunction(MovingAverage())#2"]
    assert all(r.status == "ok" for r in report.rows)
    after = est.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_estimator_objects_in_a_dict_are_instances_not_factories():
    # Passing REBAR() where a factory was expected used to call the module: "missing forward".
    report = compare(BernoulliToy(0.45), {"mine": gradest.REBAR(temperature=0.3), "fresh": gradest.DisARM,
                                          "spec": "arm"}, trials=40, timing_repeats=1)
    assert [(r.estimator, r.status) for r in report.rows] == [("mine", "ok"), ("fresh", "ok"), ("spec", "ok")]


def test_lambda_factories_are_named_after_what_they_build():
    report = compare(BernoulliToy(), [lambda: gradest.ScoreFunction(gradest.LeaveOneOut())], trials=40,
                     timing_repeats=1)
    assert report.rows[0].estimator == "ScoreFunction(LeaveOneOut())"


@pytest.mark.parametrize("bad, error, match", [
    (gradest.LeaveOneOut(), TypeError, "LeaveOneOut\\(\\) is a baseline.*ScoreFunction\\(LeaveOneOut"),
    (gradest.VIMCO(), TypeError, "VIMCO\\(\\) is not an estimator of E\\[f\\]"),
    (3, TypeError, "estimators=3 must be names"),
    ([3], TypeError, "estimators entry 3 must be a name"),
    ([], ValueError, "estimators is empty"),
])
def test_wrong_kinds_of_estimator_are_named(bad, error, match):
    with pytest.raises(error, match=match):
        compare("gaussian-square", bad, trials=40)


def test_a_factory_that_returns_something_else_is_a_type_error_in_its_row():
    report = compare("gaussian-square", {"broken": lambda: "pathwise"}, trials=40, timing_repeats=1)
    (row,) = report.rows
    assert row.status == "n/a" and row.error == "TypeError" and "returned str" in row.reason


def test_learned_parameters_are_trained_before_measurement():
    # A Critic baseline (and RELAX's control, REBAR(learn=True)) is trained by the surrogate's own backward:
    # compare takes train_steps Adam steps on the estimator's parameters before measuring it.
    problem = Problem(lambda b: b + 1.0, lambda logits: torch.distributions.Bernoulli(logits=logits),
                      [torch.zeros(3)], objective=lambda logits: torch.sigmoid(logits) + 1.0)
    constant_input = lambda d: torch.ones(*d.batch_shape, 1)  # noqa: E731
    critic = gradest.ScoreFunction(gradest.Critic(torch.nn.Linear(1, 1), inputs=constant_input))
    before = critic.baseline.module.bias.detach().clone()
    untrained = compare(problem, [critic], trials=1000, timing_repeats=1, train_steps=0)
    trained = compare(problem, [critic], trials=1000, timing_repeats=1, train_steps=300)
    a, b = untrained.rows[0], trained.rows[0]
    assert a.verdict == b.verdict == "unbiased"
    assert b.variance < 0.1 * a.variance  # the critic learnt E[f] = 1.5, where the variance is 0
    assert torch.equal(critic.baseline.module.bias, before)  # the caller's critic was copied, not trained
