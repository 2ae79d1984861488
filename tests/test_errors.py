"""Every documented bad input raises a built-in error that names the argument, its value and the fix.

Each check is matched against ``argument=value`` (STYLE.md §5). Checks at the entry point run before
any work: f is never called when the estimator cannot handle the distribution or ``n``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, Categorical, Independent, MultivariateNormal, Normal

import gradest


class CountingF:
    """A cost that counts its calls, to show that argument checks run before any work."""

    def __init__(self, f=lambda x: x.float()) -> None:  # noqa: ANN001
        self.f = f
        self.calls = 0

    def __call__(self, x: Tensor) -> Tensor:
        self.calls += 1
        return self.f(x)


@pytest.fixture
def validation_off() -> Iterator[None]:
    before = gradest.is_validation_enabled()
    gradest.set_validation(False)
    try:
        yield
    finally:
        gradest.set_validation(before)


@pytest.fixture
def validation_on() -> Iterator[None]:
    before = gradest.is_validation_enabled()
    gradest.set_validation(True)
    try:
        yield
    finally:
        gradest.set_validation(before)


def _bernoulli(shape: tuple[int, ...] = (3,)) -> Bernoulli:
    return Bernoulli(logits=torch.zeros(shape, requires_grad=True))


# ---------------------------------------------------------------------------------------------------
# expectation's own arguments
# ---------------------------------------------------------------------------------------------------


def test_f_not_callable() -> None:
    with pytest.raises(TypeError, match=r"expectation: f=3 is not callable; pass a function"):
        gradest.expectation(3, Normal(0.0, 1.0))


def test_f_returns_wrong_shape() -> None:
    dist = Normal(torch.zeros(3), 1.0)
    with pytest.raises(
        ValueError,
        match=r"expectation: f returned shape \(4, 3, 2\), expected \(n, \*dist.batch_shape\) = \(4, 3\); "
        r"reduce the event dimensions inside f",
    ):
        gradest.expectation(lambda x: x.unsqueeze(-1).expand(4, 3, 2), dist, n=4)


def test_f_returns_reduced_over_samples() -> None:
    """Reducing over the sample dimension inside f is the commonest slip; it must not broadcast silently."""
    with pytest.raises(ValueError, match=r"f returned shape \(3,\), expected .* = \(4, 3\)"):
        gradest.expectation(lambda x: x.mean(0), Normal(torch.zeros(3), 1.0), n=4)


@pytest.mark.parametrize("bad", [[1.0], 1.0, None], ids=["list", "float", "None"])
def test_f_returns_non_tensor(bad: object) -> None:
    with pytest.raises(TypeError, match=rf"expectation: f returned {type(bad).__name__}, expected a tensor"):
        gradest.expectation(lambda x: bad, Normal(0.0, 1.0))


@pytest.mark.parametrize("n", [0, -1])
def test_n_not_positive(n: int) -> None:
    f = CountingF()
    with pytest.raises(ValueError, match=rf"expectation: n={n} must be >= 1; use n=1"):
        gradest.expectation(f, Normal(0.0, 1.0), n=n)
    assert f.calls == 0


@pytest.mark.parametrize("n", [1.5, 2.0, "4", True, torch.tensor(4)], ids=repr)
def test_n_not_an_int(n: object) -> None:
    with pytest.raises(TypeError, match=r"expectation: n=.* must be an int"):
        gradest.expectation(lambda x: x, Normal(0.0, 1.0), n=n)


def test_n_float_names_value() -> None:
    with pytest.raises(TypeError, match=r"n=1\.5 must be an int"):
        gradest.expectation(lambda x: x, Normal(0.0, 1.0), n=1.5)


@pytest.mark.parametrize(
    ("dist", "name"),
    [("normal", "str"), (torch.zeros(3), "Tensor"), (Normal, "type"), (None, "NoneType")],
    ids=["str", "tensor", "class", "None"],
)
def test_dist_not_a_distribution(dist: object, name: str) -> None:
    with pytest.raises(TypeError, match=rf"expectation: dist={name} is not a torch\.distributions\.Distrib"):
        gradest.expectation(lambda x: x, dist)


@pytest.mark.parametrize(
    "estimator", ["pathwise", gradest.Pathwise, nn.Linear(1, 1), gradest.LeaveOneOut()],
    ids=["str", "class-not-instance", "module", "baseline"],
)
def test_estimator_not_an_estimator(estimator: object) -> None:
    fix = r"is a class; pass an instance, Pathwise\(\.\.\.\)" if estimator is gradest.Pathwise else (
        r"is not a gradest Estimator; pass e\.g\.")
    with pytest.raises(TypeError, match=rf"expectation: estimator=.* {fix}"):
        gradest.expectation(lambda x: x, Normal(0.0, 1.0), estimator)


def test_estimator_value_is_named() -> None:
    with pytest.raises(TypeError, match=r"estimator='pathwise' is not a gradest Estimator"):
        gradest.expectation(lambda x: x, Normal(0.0, 1.0), "pathwise")


# ---------------------------------------------------------------------------------------------------
# NaN costs: checked while validation is on, and only then
# ---------------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("validation_on")
@pytest.mark.parametrize(
    "estimator",
    [gradest.Pathwise(), gradest.ScoreFunction(), gradest.ScoreFunction(gradest.LeaveOneOut())],
    ids=["Pathwise", "ScoreFunction", "ScoreFunction(LeaveOneOut)"],
)
def test_nan_costs_raise_while_validating(estimator: gradest.Estimator) -> None:
    def f(x: Tensor) -> Tensor:
        c = x.square()
        return torch.where(torch.arange(4).unsqueeze(-1) == 1, torch.nan, c)

    with pytest.raises(ValueError, match=r"expectation: f's output contains NaN \(3 of 12 elements\); check"):
        gradest.expectation(f, Normal(torch.zeros(3), 1.0), estimator, n=4)


@pytest.mark.usefixtures("validation_on")
@pytest.mark.parametrize("bad", [torch.inf, -torch.inf], ids=["+inf", "-inf"])
@pytest.mark.parametrize(
    "estimator",
    [gradest.Pathwise(), gradest.ScoreFunction(), gradest.ScoreFunction(gradest.LeaveOneOut()), gradest.Enumerate()],
    ids=["Pathwise", "ScoreFunction", "ScoreFunction(LeaveOneOut)", "Enumerate"],
)
def test_infinite_costs_raise_while_validating(estimator: gradest.Estimator, bad: float) -> None:
    dist = _bernoulli() if isinstance(estimator, gradest.Enumerate) else Normal(torch.zeros(3), 1.0)
    sign = "+" if bad > 0 else "-"

    def f(x: Tensor) -> Tensor:
        return torch.where(torch.arange(x.shape[0]).reshape(-1, *[1] * (x.dim() - 1)) == 1, bad, x.float())

    with pytest.raises(ValueError, match=rf"expectation: f's output contains \{sign}inf \(3 of \d+ elements\); check"):
        gradest.expectation(f, dist, estimator, n=4)


@pytest.mark.usefixtures("validation_on")
def test_overflowing_sum_of_finite_costs_passes() -> None:
    big = torch.finfo(torch.float32).max / 8  # 12 costs: their sum overflows, each mean over 4 does not
    with torch.no_grad():  # only the value: nothing requires grad
        s = gradest.expectation(lambda x: torch.full_like(x, big), Normal(torch.zeros(3), 1.0), n=4)
    assert bool(torch.isfinite(s).all())


@pytest.mark.usefixtures("validation_on")
def test_nan_costs_raise_for_enumerate() -> None:
    with pytest.raises(ValueError, match=r"f's output contains NaN"):
        gradest.expectation(lambda b: torch.log(b - 1), _bernoulli(), gradest.Enumerate())


@pytest.mark.usefixtures("validation_off")
def test_nan_costs_pass_without_validation() -> None:
    assert not gradest.is_validation_enabled()
    s = gradest.expectation(lambda x: x * torch.nan, Normal(torch.zeros(3, requires_grad=True), 1.0), n=4)
    assert s.shape == (3,) and bool(s.isnan().all())


def test_validation_is_on_by_default_and_set_validation_round_trips() -> None:
    assert gradest.is_validation_enabled() is __debug__
    try:
        gradest.set_validation(False)
        assert gradest.is_validation_enabled() is False
        gradest.set_validation(True)
        assert gradest.is_validation_enabled() is True
    finally:
        gradest.set_validation(__debug__)


@pytest.mark.parametrize("enabled", ["yes", 1, None], ids=repr)
def test_set_validation_needs_a_bool(enabled: object) -> None:
    before = gradest.is_validation_enabled()
    with pytest.raises(TypeError, match=rf"set_validation: enabled={enabled!r} must be a bool"):
        gradest.set_validation(enabled)
    assert gradest.is_validation_enabled() is before


# ---------------------------------------------------------------------------------------------------
# Families an estimator does not support
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dist", [_bernoulli(), Categorical(logits=torch.zeros(4)), Independent(_bernoulli((2, 3)), 1)],
    ids=["Bernoulli", "Categorical", "Independent(Bernoulli)"],
)
def test_pathwise_without_rsample(dist) -> None:  # noqa: ANN001
    f = CountingF()
    name = type(dist).__name__
    with pytest.raises(
        NotImplementedError,
        match=rf"Pathwise: dist={name}\(.*\) has no rsample; use ScoreFunction\(\), Enumerate\(\), "
        r"ImplicitReparam\(\) .* or GumbelSoftmax\(\.\.\.\)",
    ):
        gradest.expectation(f, dist, gradest.Pathwise())
    assert f.calls == 0


def test_pathwise_error_describes_shapes() -> None:
    with pytest.raises(NotImplementedError, match=r"dist=Bernoulli\(batch_shape=\(3,\), event_shape=\(\)\)"):
        gradest.expectation(lambda x: x, _bernoulli(), gradest.Pathwise())


@pytest.mark.parametrize(
    "dist",
    [Normal(torch.zeros(2), 1.0), Independent(Normal(torch.zeros(2, 3), 1.0), 1),
     MultivariateNormal(torch.zeros(2), torch.eye(2))],
    ids=["Normal", "Independent(Normal)", "MultivariateNormal"],
)
def test_enumerate_continuous(dist) -> None:  # noqa: ANN001
    f = CountingF()
    with pytest.raises(
        NotImplementedError,
        match=rf"Enumerate: dist={type(dist).__name__}\(.*\) has no enumerable support; it supports Bern",
    ):
        gradest.expectation(f, dist, gradest.Enumerate())
    assert f.calls == 0


@pytest.mark.parametrize(
    "dist",
    [Categorical(logits=torch.zeros(3, 4)), MultivariateNormal(torch.zeros(2), torch.eye(2)), _bernoulli(),
     Independent(Categorical(logits=torch.zeros(2, 3, 4)), 1)],
    ids=["Categorical", "MultivariateNormal", "Bernoulli", "Independent(Categorical)"],
)
def test_implicit_reparam_unsupported(dist) -> None:  # noqa: ANN001
    f = CountingF()
    with pytest.raises(
        NotImplementedError,
        match=rf"ImplicitReparam: dist={type(dist).__name__}\(.*\) is not a univariate continuous family "
        r"with a differentiable cdf; it supports e\.g\. Normal.* Use Pathwise\(\) when dist\.has_rsample, "
        r"else ScoreFunction\(\)",
    ):
        gradest.expectation(f, dist, gradest.ImplicitReparam())
    assert f.calls == 0


# ---------------------------------------------------------------------------------------------------
# Enumerate's budget
# ---------------------------------------------------------------------------------------------------


def test_enumerate_over_budget() -> None:
    f = CountingF()
    dist = Independent(Bernoulli(logits=torch.zeros(20)), 1)
    with pytest.raises(
        ValueError,
        match=r"Enumerate: dist=Independent\(Bernoulli\(.*\)\) has 1048576 joint support points, over "
        r"budget=1000; raise Enumerate\(budget=\.\.\.\) .* Enumerate\(fallback=ScoreFunction\(LeaveOneOut\(\)\)\)",
    ):
        gradest.expectation(f, dist, gradest.Enumerate(budget=1000))
    assert f.calls == 0


def test_enumerate_at_budget_is_fine() -> None:
    dist = Independent(Bernoulli(logits=torch.zeros(3, requires_grad=True)), 1)
    s = gradest.expectation(lambda x: x.sum(-1), dist, gradest.Enumerate(budget=8))
    assert s.item() == pytest.approx(1.5)
    with pytest.raises(ValueError, match=r"has 8 joint support points, over budget=7"):
        gradest.expectation(lambda x: x.sum(-1), dist, gradest.Enumerate(budget=7))


@pytest.mark.parametrize("budget", [0, -5])
def test_enumerate_budget_not_positive(budget: int) -> None:
    with pytest.raises(ValueError, match=rf"Enumerate: budget={budget} must be >= 1; 65536 is the default"):
        gradest.Enumerate(budget=budget)


@pytest.mark.parametrize("budget", ["1000", 10.0, True, None], ids=repr)
def test_enumerate_budget_not_an_int(budget: object) -> None:
    with pytest.raises(TypeError, match=rf"Enumerate: budget={budget!r} must be an int"):
        gradest.Enumerate(budget=budget)


def test_enumerate_budget_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        gradest.Enumerate(1000)


# ---------------------------------------------------------------------------------------------------
# Baselines
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("baseline", ["x", 0.5, gradest.LeaveOneOut, gradest.Pathwise()],
                         ids=["str", "number", "class-not-instance", "estimator"])
def test_score_function_baseline_type(baseline: object) -> None:
    with pytest.raises(TypeError, match=r"ScoreFunction: baseline=.* is not a gradest baseline; use Const"):
        gradest.ScoreFunction(baseline)


def test_score_function_baseline_value_is_named() -> None:
    with pytest.raises(TypeError, match=r"ScoreFunction: baseline='x' is not a gradest baseline"):
        gradest.ScoreFunction(baseline="x")


@pytest.mark.parametrize(
    ("baseline", "name"),
    [(gradest.LeaveOneOut(), "LeaveOneOut"), (gradest.OptimalConstant(), "OptimalConstant")],
)
def test_single_sample_baselines_need_n_of_2(baseline: gradest.Baseline, name: str) -> None:
    f = CountingF()
    with pytest.raises(ValueError, match=rf"{name}: n=1 .*; use n >= 2"):
        gradest.expectation(f, _bernoulli(), gradest.ScoreFunction(baseline), n=1)
    assert f.calls == 0
    gradest.expectation(f, _bernoulli(), gradest.ScoreFunction(baseline), n=2)
    assert f.calls == 1


@pytest.mark.parametrize("decay", [1.0, -0.1, 1.5, float("nan")], ids=repr)
def test_moving_average_decay_out_of_range(decay: float) -> None:
    with pytest.raises(ValueError, match=rf"MovingAverage: decay={decay} must lie in \[0, 1\); 0\.9 to"):
        gradest.MovingAverage(decay=decay)
    with pytest.raises(ValueError, match=rf"OptimalConstant: decay={decay} must lie in \[0, 1\)"):
        gradest.OptimalConstant(decay=decay)


def test_optimal_constant_with_decay_takes_single_samples() -> None:
    est = gradest.ScoreFunction(gradest.OptimalConstant(decay=0.9))
    s = gradest.expectation(lambda x: x, _bernoulli(), est)
    assert s.shape == (3,)


@pytest.mark.parametrize("decay", [0.0, 0.99, torch.tensor(0.5)], ids=repr)
def test_moving_average_decay_in_range(decay: float) -> None:
    assert 0 <= gradest.MovingAverage(decay=decay).decay < 1


@pytest.mark.parametrize("decay", ["0.9", None, True], ids=repr)
def test_moving_average_decay_type(decay: object) -> None:
    with pytest.raises(TypeError, match=rf"MovingAverage: decay={decay!r} must be a float in \[0, 1\)"):
        gradest.MovingAverage(decay=decay)


@pytest.mark.parametrize("b", ["0.5", None, True], ids=repr)
def test_constant_type(b: object) -> None:
    with pytest.raises(TypeError, match=rf"Constant: b={b!r} must be a number or a floating tensor"):
        gradest.Constant(b)


@pytest.mark.parametrize("out", [2, 3, 4], ids=["[3, 2]", "[3, 3]", "[3, 4]"])
def test_critic_wrong_output_shape(out: int) -> None:
    critic = gradest.Critic(nn.Linear(1, out))
    with pytest.raises(
        ValueError,
        match=rf"Critic: module returned shape \(3, {out}\), expected dist.batch_shape = \(3,\) "
        r"\(or with a trailing 1\); make the module output one number per batch element",
    ):
        gradest.expectation(lambda x: x, _bernoulli(), gradest.ScoreFunction(critic), n=2)


def test_critic_trailing_one_is_fine() -> None:
    s = gradest.expectation(lambda x: x, _bernoulli(), gradest.ScoreFunction(gradest.Critic(nn.Linear(1, 1))))
    assert s.shape == (3,)


def test_critic_module_not_callable() -> None:
    with pytest.raises(TypeError, match=r"Critic: module=3 must be a callable nn.Module"):
        gradest.Critic(3)


def test_control_variate_wrong_shape() -> None:
    cv = gradest.ControlVariate(lambda x: x.unsqueeze(-1), 0.5)
    with pytest.raises(
        ValueError,
        match=r"ControlVariate: g returned shape \(4, 3, 1\), expected \(4, 3\) .*; reduce the event",
    ):
        gradest.expectation(lambda x: x, _bernoulli(), gradest.ScoreFunction(cv), n=4)


def test_control_variate_g_not_callable() -> None:
    with pytest.raises(TypeError, match=r"ControlVariate: g=0\.5 must be callable"):
        gradest.ControlVariate(0.5, 0.5)


def test_a_surrogate_with_nothing_to_differentiate_names_the_fix() -> None:
    """torch's own message at backward() ("element 0 of tensors does not require grad") names nothing."""
    with pytest.raises(ValueError, match=r"expectation: nothing in the surrogate requires grad.*torch.no_grad\(\)"):
        gradest.expectation(lambda x: x**2, Normal(torch.zeros(3), 1.0), n=2)
    with torch.no_grad():  # only the estimate: fine
        assert gradest.expectation(lambda x: x**2, Normal(torch.zeros(3), 1.0), n=2).shape == (3,)
    with gradest.Graph() as g:
        x = g.sample("x", Normal(torch.zeros(3), 1.0), n=2)
        g.cost(x**2)
    with pytest.raises(ValueError, match=r"Graph.loss: nothing in the surrogate requires grad"):
        g.loss()
