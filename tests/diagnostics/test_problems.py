"""Your own problem: ``Problem(f, dist, params, ...)``, ``load_problem("file.py:fn")``, and the reference a
problem without an exact gradient is measured against."""

from __future__ import annotations

import sys

import pytest
import torch
from torch.distributions import Bernoulli, Categorical, Independent, Normal, OneHotCategorical

import gradest
from gradest.diagnostics import compare, recommend
from gradest.problems import CustomProblem, Problem, load_problem
from gradest.testing import SelfInclusiveMean


def _normal(m):
    return Normal(m, 1.0)


def test_exact_gradient_from_objective_or_given():
    by_objective = Problem(lambda x: x**2, _normal, [torch.tensor([0.5, -1.0])], objective=lambda m: m**2 + 1)
    assert torch.equal(by_objective.exact_gradient(), torch.tensor([1.0, -2.0], dtype=torch.float64))
    given = Problem(lambda x: x**2, _normal, [torch.tensor([0.5, -1.0])], exact_gradient=[torch.tensor([1.0, -2.0])])
    assert given.exact and torch.equal(given.exact_gradient(), by_objective.exact_gradient())
    flat = Problem(lambda x: x, lambda m, s: Normal(m, s), [torch.tensor(0.0), torch.tensor(1.0)],
                   exact_gradient=torch.tensor([1.0, 0.0]))
    assert flat.exact_gradient().tolist() == [1.0, 0.0]


@pytest.mark.parametrize("kwargs, error, match", [
    ({"f": 3}, TypeError, "Problem: f=3 is not callable"),
    ({"dist": "normal"}, TypeError, "Problem: dist='normal' is not callable"),
    ({"params": torch.zeros(2)}, TypeError, "params=tensor.* must be a non-empty list or tuple"),
    ({"params": []}, TypeError, r"params=\[\] must be a non-empty list"),
    ({"params": ["a"]}, TypeError, r"params\[0\]='a' is not a tensor"),
    ({"params": [torch.tensor(1)]}, ValueError, r"params\[0\] has dtype=torch.int64; .* must be floating-point"),
    ({"exact_gradient": torch.zeros(3)}, ValueError, r"exact_gradient has shapes \[\(3,\)\] but the parameters have"),
    ({"exact_gradient": torch.tensor([float("nan")])}, ValueError, "exact_gradient contains NaN or inf"),
    ({"exact_gradient": torch.zeros(1), "objective": lambda m: m}, ValueError, "not both"),
    ({"objective": 1.0}, TypeError, "objective=1.0 is not callable"),
    ({"reference": "pathwise"}, TypeError, "reference='pathwise' must be an unbiased Estimator"),
    ({"reference": (gradest.Pathwise(), 0)}, ValueError, r"reference=\(estimator, n=0\) needs an int n >= 1"),
    ({"batched": 1}, TypeError, "batched=1 must be a bool"),
])
def test_problem_arguments_are_checked(kwargs, error, match):
    args = {"f": lambda x: x, "dist": _normal, "params": [torch.tensor(0.5)], **kwargs}
    with pytest.raises(error, match=match):
        Problem(args.pop("f"), args.pop("dist"), args.pop("params"), **args)


def test_numbers_are_accepted_as_parameters_and_the_old_name_works():
    problem = CustomProblem(lambda x: x, _normal, [0.5])
    assert problem.params()[0].dtype == torch.float64 and problem.name == "custom"


@pytest.mark.parametrize("dist, expected", [
    (lambda logits: Categorical(logits=logits), "Enumerate"),
    (lambda logits: Independent(Bernoulli(logits=logits), 1), "Enumerate"),  # 2^3 joint states
    (lambda logits: Independent(OneHotCategorical(logits=logits.expand(20, 3)), 1), "ScoreFunction"),  # 3^20
    (lambda loc: Normal(loc, 1.0), "ScoreFunction"),  # never Pathwise: f might be a step
])
def test_default_reference(dist, expected):
    est, n = Problem(lambda x: x.float().sum(-1) if x.dim() > 1 else x.float(), dist, [torch.zeros(3)]).reference()
    assert type(est).__name__ == expected and n == (1 if expected == "Enumerate" else 64)


def test_a_step_cost_needs_a_reference_that_asks_nothing_of_f():
    # E[1{x > 0}] under N(μ, 1): a pathwise gradient would be a silent 0. Pathwise itself refuses (n/a, with
    # the reason), and the default reference is the score function, which needs no derivative of f.
    problem = Problem(lambda x: (x > 0).float(), _normal, [torch.tensor(0.3)], name="step")
    report = compare(problem, "pathwise,score+leave-one-out", trials=2000, timing_repeats=1)
    pathwise, loo = report.rows
    assert pathwise.verdict == "n/a" and "without a derivative" in pathwise.reason
    assert loo.verdict == "unbiased" and loo.reference.startswith("reference: ScoreFunction, n=64")
    assert abs(loo.mean[0] - 0.3814) < 5 * loo.bias_se[0]  # the N(0.3, 1) density at 0


def test_an_estimator_that_wrongly_claims_to_be_unbiased_is_caught_against_the_reference():
    # A baseline that sees its own sample's cost shrinks the gradient by (n − 1)/n, under a class that
    # claims to be unbiased: measured against the default reference, it is flagged, and recommend says so.
    problem = Problem(lambda x: (x - 2.0) ** 2, _normal, [torch.tensor(0.3)], name="shifted")
    report = compare(problem, {"loo": "score+leave-one-out",
                               "self-inclusive": lambda: gradest.ScoreFunction(SelfInclusiveMean())},
                     trials=2000, timing_repeats=1)
    loo, wrong = report.rows
    assert loo.verdict == "unbiased" and wrong.verdict == "biased"
    (rec,) = recommend(report)
    assert rec.estimator == "loo" and "self-inclusive claims to be unbiased but is" in rec.text


def test_a_given_reference_is_used_and_batched_problems_are_drawn_in_one_call():
    calls = []

    def f(x):
        calls.append(x.shape)
        return x.square()

    problem = Problem(f, _normal, [torch.tensor([0.5, 1.0])], reference=(gradest.Pathwise(), 8), batched=True)
    (row,) = compare(problem, "pathwise", trials=200, timing_repeats=1).rows
    assert row.reference.startswith("reference: Pathwise, n=8") and row.verdict == "unbiased"
    assert (4, 20, 2) in calls  # 20 replications at once


def test_a_problem_whose_reference_fails_is_measured_without_bias():
    problem = Problem(lambda x: x**2, _normal, [torch.tensor(0.5)], reference=gradest.DisARM())
    (row,) = compare(problem, "pathwise", trials=40, timing_repeats=1).rows
    assert row.verdict == "unchecked" and row.bias is None and row.reference.startswith("no reference: DisARM")
    assert row.variance > 0 and "bias not measured" in compare(problem, "pathwise", trials=40,
                                                               timing_repeats=1).table()[1][-1]


PROBLEM_FILE = '''
import torch
from torch.distributions import Bernoulli, Independent
from gradest.problems import Problem
from helper import TARGET   # a neighbour module: the file's folder is on sys.path while it loads

def make_problem():
    return Problem(lambda b: (b.sum(-1) - TARGET) ** 2, lambda logits: Independent(Bernoulli(logits=logits), 1),
                   [torch.zeros(3)])

def as_tuple():
    return (lambda x: x ** 2, lambda m: torch.distributions.Normal(m, 1.0), [torch.tensor(0.5)])

def wrong():
    return 42

named = Problem(lambda x: x, lambda m: torch.distributions.Normal(m, 1.0), [torch.tensor(0.0)], name="named")
'''


@pytest.fixture()
def problem_file(tmp_path):
    (tmp_path / "helper.py").write_text("TARGET = 1.5\n")
    path = tmp_path / "my_problem.py"
    path.write_text(PROBLEM_FILE)
    yield path
    sys.modules.pop("helper", None)


def test_load_problem_from_a_file(problem_file):
    problem = load_problem(f"{problem_file}:make_problem")
    assert problem.name == "make_problem" and problem.reference()[0].__class__.__name__ == "Enumerate"
    assert load_problem(f"{problem_file}:as_tuple").name == "as_tuple"
    assert load_problem(f"{problem_file}:named").name == "named"
    assert str(problem_file.parent) not in sys.path


def test_load_problem_from_a_module():
    assert load_problem("tests.diagnostics.test_problems:_module_problem").name == "_module_problem"


def _module_problem():
    return Problem(lambda x: x, _normal, [torch.tensor(0.0)])


@pytest.mark.parametrize("spec, error, match", [
    ("my_problem.py", ValueError, "must be FILE.py:FUNCTION or MODULE:FUNCTION"),
    ("{dir}/nope.py:make_problem", ValueError, "there is no file"),
    ("{file}:missing", ValueError, "has no 'missing'; its functions are: .*as_tuple, make_problem"),
    ("{file}:wrong", TypeError, "returned: problem=wrong is int; expected a gradest.problems.Problem"),
    ("no_such_module_xyz:make", ValueError, "no module named 'no_such_module_xyz'"),
])
def test_load_problem_errors(spec, error, match, problem_file):
    with pytest.raises(error, match=match):
        load_problem(spec.format(dir=problem_file.parent, file=problem_file))
