"""The estimator registry: every estimator and baseline, on problems whose exact gradient is known.

Each :class:`Case` pairs an estimator factory with a problem, a sample count ``n`` and the claim the
generic tests check:

- ``"unbiased"``: the mean of R independent gradient estimates equals the exact gradient within z·SE
  (``gradest.testing.assert_unbiased``, false-alarm rate 1e-6);
- ``"exact"``: every single estimate equals the exact gradient to rounding.

R (``replications``) belongs to the case. It is chosen so the standard error of every coordinate is at
most ``POWER · max(|∇J|, 1)``, with a margin; ``test_unbiased.py`` checks this. When a check fails or is
underpowered, raise R here. Never widen the tolerance. Replications are batched along a leading batch
dimension (``gradest.problems.gradient_draws``), so R = 10⁵ costs milliseconds.

A new estimator adds cases here, not new tests.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.distributions import (
    Beta,
    Dirichlet,
    Distribution,
    Exponential,
    Gamma,
    Independent,
    Laplace,
    OneHotCategorical,
    StudentT,
)

from gradest import (
    Constant,
    ControlVariate,
    Critic,
    Enumerate,
    Estimator,
    ImplicitReparam,
    LeaveOneOut,
    MovingAverage,
    OptimalConstant,
    Pathwise,
    ScoreFunction,
)
from gradest.problems import BernoulliTable, BernoulliToy, CategoricalTable, Gaussian, Problem, gradient_draws
from gradest.testing import NonreparameterizedExponential, NonreparameterizedLaplace, NonreparameterizedNormal

CLAIMS = ("unbiased", "exact")

POWER = 0.05
"""Every case must reach SE ≤ POWER · max(|∇J|, 1) per coordinate (the harness's default is 0.1)."""


@dataclass(frozen=True)
class Case:
    """One registry entry: ``estimator_factory()`` on ``problem`` with ``n`` samples makes ``claim``.

    Attributes:
        name: the test id, ``estimator/problem/n``.
        estimator_factory: returns a fresh estimator (state such as a moving average starts empty).
        problem: a ``gradest.problems.Problem`` with an exact gradient.
        n: samples per estimate.
        claim: one of ``CLAIMS``.
        replications: R, independent estimates per call of the estimator.
        calls: how many times the same estimator is called (R estimates each), so that state carried
            from one call to the next (moving averages) is exercised.
    """

    name: str
    estimator_factory: Callable[[], Estimator]
    problem: Problem
    n: int = 1
    claim: str = "unbiased"
    replications: int = 10_000
    calls: int = 1

    def __post_init__(self) -> None:
        if self.claim not in CLAIMS:
            raise ValueError(f"Case {self.name}: claim={self.claim!r} must be one of {CLAIMS}.")

    @property
    def seed(self) -> int:
        """A fixed seed per case (stable across runs and processes, unlike ``hash``)."""
        return zlib.crc32(self.name.encode())

    def draws(self, *, replications: int | None = None) -> Tensor:
        """``[calls · R, D]`` independent gradient estimates, in float64."""
        return gradient_draws(
            self.problem,
            self.estimator_factory,
            n=self.n,
            replications=self.replications if replications is None else replications,
            calls=self.calls,
            dtype=torch.float64,
        )


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's CPU generator seeded, restoring the caller's RNG state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# ---- problems that need a family other than the built-in ones -------------------------------------


class FamilyGaussian(Gaussian):
    """A ``Gaussian`` problem whose distribution is built by another ``Normal`` class.

    With ``NonreparameterizedNormal`` the model, its objective and its variances are unchanged, but
    ``rsample`` is hidden, so ``ImplicitReparam`` must rebuild the pathwise gradient from the CDF.
    """

    def __init__(self, cost: str, family: type[Distribution], **kwargs: float) -> None:
        super().__init__(cost, **kwargs)
        self.family = family
        self.name = f"{self.name}[{family.__name__}]"

    def dist(self, loc: Tensor, scale: Tensor) -> Distribution:
        return self.family(loc, scale)


class ClosedForm(Problem):
    """J(θ) = E_{x∼family(*θ)}[f(x)] with J known exactly (from the family's moments, or by enumeration)."""

    def __init__(
        self,
        name: str,
        family: Callable[..., Distribution],
        initial: tuple[float | list[float], ...],
        f: Callable[[Tensor], Tensor],
        objective: Callable[..., Tensor],
    ) -> None:
        self.name = f"{name}[{family.__name__}]"
        self.family = family
        self._initial = tuple(torch.tensor(v, dtype=torch.float64) for v in initial)
        self._f = f
        self._objective = objective

    def initial(self) -> tuple[Tensor, ...]:
        return self._initial

    def dist(self, *params: Tensor) -> Distribution:
        return self.family(*params)

    def f(self, x: Tensor) -> Tensor:
        return self._f(x)

    def objective(self, *params: Tensor) -> Tensor:
        return self._objective(*params)


def _square(x: Tensor) -> Tensor:
    return x.square()


def laplace_square(family: type[Distribution] = Laplace) -> ClosedForm:
    """E[x²] under Laplace(loc, scale) = loc² + 2 scale²."""
    return ClosedForm(
        "laplace-square", family, (0.5, 1.5), _square, lambda loc, b: loc.square() + 2 * b.square()
    )


def exponential_square(family: type[Distribution] = Exponential) -> ClosedForm:
    """E[x²] under Exponential(rate) = 2 / rate²."""
    return ClosedForm("exponential-square", family, (1.5,), _square, lambda rate: 2 / rate.square())


def gamma_square(concentration: float) -> ClosedForm:
    """E[x²] under Gamma(α, β) = α(α + 1) / β²."""
    return ClosedForm(
        f"gamma-square(alpha={concentration:g})", Gamma, (concentration, 1.5), _square,
        lambda a, b: a * (a + 1) / b.square(),
    )


def beta_square() -> ClosedForm:
    """E[x²] under Beta(a, b) = a(a + 1) / ((a + b)(a + b + 1))."""
    return ClosedForm(
        "beta-square", Beta, (2.0, 3.0), _square, lambda a, b: a * (a + 1) / ((a + b) * (a + b + 1))
    )


_DIRICHLET_WEIGHTS = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)


def dirichlet_weighted_square() -> ClosedForm:
    """E[Σ_k w_k x_k²] under Dirichlet(α) = Σ_k w_k α_k(α_k + 1) / (α₀(α₀ + 1)), α₀ = Σ_k α_k."""

    def objective(alpha: Tensor) -> Tensor:
        a0 = alpha.sum(-1)
        w = _DIRICHLET_WEIGHTS.to(alpha)
        return (w * alpha * (alpha + 1)).sum(-1) / (a0 * (a0 + 1))

    return ClosedForm(
        "dirichlet-weighted-square", Dirichlet, ([1.0, 2.0, 3.0],),
        lambda x: (_DIRICHLET_WEIGHTS.to(x) * x.square()).sum(-1), objective,
    )


def student_t_square() -> ClosedForm:
    """E[x²] under StudentT(ν, loc, scale) = loc² + scale² ν / (ν − 2), for ν > 2.

    ν = 10 keeps the gradient estimates' fourth moments finite, so their SE is trustworthy.
    """
    return ClosedForm(
        "student-t-square", StudentT, (10.0, 0.5, 1.0), _square,
        lambda df, loc, scale: loc.square() + scale.square() * df / (df - 2),
    )


def one_hot(logits: Tensor) -> OneHotCategorical:
    return OneHotCategorical(logits=logits)


def independent_one_hot(logits: Tensor) -> Independent:
    return Independent(OneHotCategorical(logits=logits), 1)


_ONE_HOT_TABLE = torch.tensor([0.3, -1.2, 0.8, 2.0, -0.4, 1.1], dtype=torch.float64)
_ONE_HOT_LOGITS = [0.2, -0.5, 1.0, 0.0, -1.3, 0.4]


def one_hot_table() -> ClosedForm:
    """E[table · x] for one-hot x ∼ OneHotCategorical(logits) = softmax(logits) · table."""
    return ClosedForm(
        "one-hot-table", one_hot, (_ONE_HOT_LOGITS,),
        lambda x: (x * _ONE_HOT_TABLE.to(x)).sum(-1),
        lambda logits: (torch.softmax(logits, -1) * _ONE_HOT_TABLE.to(logits)).sum(-1),
    )


_JOINT_TABLE = torch.randn(4, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def joint_one_hot_table() -> ClosedForm:
    """E[table[k₁, k₂, k₃]] for three independent one-hot 4-way variables: a non-additive cost over a
    joint support of 64 points, exact by enumeration (an outer product of the three softmaxes)."""

    def f(x: Tensor) -> Tensor:
        k = x.argmax(-1)
        return _JOINT_TABLE.to(x.device)[k[..., 0], k[..., 1], k[..., 2]].to(x.dtype)

    def objective(logits: Tensor) -> Tensor:
        p = torch.softmax(logits, -1)
        joint = torch.einsum("...a,...b,...c->...abc", p[..., 0, :], p[..., 1, :], p[..., 2, :])
        return (joint * _JOINT_TABLE.to(logits)).sum((-3, -2, -1))

    logits = [[0.5, -0.3, 0.0, 1.0], [-1.0, 0.2, 0.7, 0.1], [0.0, 0.0, -0.6, 0.9]]
    return ClosedForm("joint-one-hot-table", independent_one_hot, (logits,), f, objective)


# ---- estimator factories ---------------------------------------------------------------------------


def _score(baseline: Callable[[], nn.Module] | None = None) -> Callable[[], Estimator]:
    return lambda: ScoreFunction(None if baseline is None else baseline())


def _critic(features: int) -> Callable[[], Estimator]:
    """ScoreFunction with a float64 linear critic on ``features`` inputs (the distribution's parameters)."""
    return lambda: ScoreFunction(Critic(nn.Linear(features, 1, dtype=torch.float64)))


def _control_variate(
    g: Callable[[Tensor], Tensor], mean_of_g: Callable[[Distribution], Tensor], c: float = 1.0
) -> Callable[[], Estimator]:
    return lambda: ScoreFunction(ControlVariate(g, mean_of_g, coefficient=c))


def _case(label: str, factory: Callable[[], Estimator], problem: Problem, n: int = 1, **kwargs) -> Case:
    return Case(f"{label}/{problem.name}/n={n}", factory, problem, n, **kwargs)


def _score_function_cases(
    problem: Problem,
    *,
    features: int,
    control_variate: tuple[Callable[[Tensor], Tensor], Callable[[Distribution], Tensor]],
    b: float,
    replications: int,
) -> list[Case]:
    """ScoreFunction with no baseline and with each baseline, on one problem.

    Stateful cases split the same R over their calls, so every case costs about R estimates.
    """
    g, mean_of_g = control_variate
    r = replications
    average = _score(lambda: MovingAverage(0.9))
    running = _score(lambda: OptimalConstant(decay=0.9))
    return [
        _case("score", _score(), problem, 1, replications=r),
        _case("score", _score(), problem, 4, replications=r),
        _case(f"score+constant({b:g})", _score(lambda: Constant(b)), problem, 1, replications=r),
        _case("score+moving-average(0.9)", average, problem, 1, replications=r // 5, calls=5),
        _case("score+moving-average(0.9)", average, problem, 4, replications=r // 3, calls=3),
        _case("score+leave-one-out", _score(LeaveOneOut), problem, 4, replications=r),
        _case("score+leave-one-out", _score(LeaveOneOut), problem, 2, replications=r),
        _case("score+optimal-constant", _score(OptimalConstant), problem, 4, replications=r),
        _case("score+optimal-constant(decay=0.9)", running, problem, 1, replications=r // 3, calls=3),
        _case("score+optimal-constant(decay=0.9)", running, problem, 4, replications=r // 3, calls=3),
        _case("score+critic", _critic(features), problem, 1, replications=r // 3, calls=3),
        _case("score+control-variate", _control_variate(g, mean_of_g), problem, 1, replications=r),
    ]


# ---- the registry ----------------------------------------------------------------------------------

GAUSSIANS = (
    Gaussian("square"),
    Gaussian("shifted_square", k=2.0),
    Gaussian("cos", k=3.0),
    Gaussian("bump", k=1.0),
)

BERNOULLI_TOYS = tuple(BernoulliToy(t, logit=logit) for t in (0.45, 0.499) for logit in (0.0, 1.5, -2.0))

DISCRETE = (*BERNOULLI_TOYS, CategoricalTable(10), BernoulliTable(3))


def _gaussian_cases() -> list[Case]:
    with_baselines = (GAUSSIANS[1], GAUSSIANS[2])
    cases = []
    for p in GAUSSIANS:
        cases.append(_case("pathwise", Pathwise, p, 1, replications=20_000))
        cases.append(_case("pathwise", Pathwise, p, 4, replications=10_000))
        if p not in with_baselines:
            cases.append(_case("score", _score(), p, 1, replications=200_000))
        fake = FamilyGaussian(p.cost, NonreparameterizedNormal, k=p.k, mu=p.mu, sigma=p.sigma)
        cases.append(_case("implicit-reparam", ImplicitReparam, fake, 1, replications=20_000))
    # Every baseline, on a cost whose mean is far from zero (heavy-tailed estimates) and on a bounded
    # one whose mean is small.
    identity = (lambda x: x, lambda d: d.mean)
    for p, r in zip(with_baselines, (150_000, 30_000), strict=True):
        cases += _score_function_cases(p, features=2, control_variate=identity, b=2.0, replications=r)
    # The control variate with a coefficient other than 1.
    square = GAUSSIANS[0]
    scaled = _control_variate(*identity, c=-0.5)
    cases.append(_case("score+control-variate(c=-0.5)", scaled, square, 1, replications=100_000))
    return cases


def _discrete_cases() -> list[Case]:
    cases = []
    for p in BERNOULLI_TOYS:
        cv = (lambda b: b, lambda d: d.probs)
        cases += _score_function_cases(p, features=1, control_variate=cv, b=0.25, replications=50_000)
    table = CategoricalTable(10)
    first = (lambda x: (x == 0).to(torch.float64), lambda d: d.probs[..., 0])
    cases += _score_function_cases(table, features=10, control_variate=first, b=0.5, replications=50_000)
    bits = BernoulliTable(3)
    ones = (lambda b: b.sum(-1), lambda d: d.mean.sum(-1))
    cases += _score_function_cases(bits, features=3, control_variate=ones, b=0.5, replications=50_000)
    for p, features in ((one_hot_table(), 6), (joint_one_hot_table(), 12)):
        cases += [
            _case("score", _score(), p, 1, replications=50_000),
            _case("score+leave-one-out", _score(LeaveOneOut), p, 4, replications=50_000),
            _case("score+optimal-constant", _score(OptimalConstant), p, 4, replications=50_000),
            _case("score+critic", _critic(features), p, 1, replications=50_000),
            _case("enumerate", Enumerate, p, 1, claim="exact", replications=3),
        ]
    for p in DISCRETE:
        cases.append(_case("enumerate", Enumerate, p, 1, claim="exact", replications=3))
    return cases


def _continuous_family_cases() -> list[Case]:
    """Pathwise on torch's implicit reparameterisations; ImplicitReparam on families with rsample hidden;
    score-function baselines on continuous families other than the Normal."""
    cases = [
        _case("pathwise", Pathwise, gamma_square(2.0), 1, replications=20_000),
        _case("pathwise", Pathwise, gamma_square(0.5), 1, replications=20_000),
        _case("pathwise", Pathwise, beta_square(), 1, replications=10_000),
        _case("pathwise", Pathwise, dirichlet_weighted_square(), 1, replications=10_000),
        _case("pathwise", Pathwise, student_t_square(), 1, replications=20_000),
        _case("pathwise", Pathwise, laplace_square(), 1, replications=50_000),
        _case("pathwise", Pathwise, exponential_square(), 1, replications=20_000),
        _case("implicit-reparam", ImplicitReparam, laplace_square(NonreparameterizedLaplace), 1,
              replications=50_000),
        _case("implicit-reparam", ImplicitReparam, exponential_square(NonreparameterizedExponential), 1,
              replications=20_000),
        _case("score+leave-one-out", _score(LeaveOneOut), gamma_square(2.0), 4, replications=20_000),
        _case("score+optimal-constant", _score(OptimalConstant), gamma_square(2.0), 4, replications=20_000),
        _case("score+optimal-constant", _score(OptimalConstant), dirichlet_weighted_square(), 4,
              replications=20_000),
        _case("score+leave-one-out", _score(LeaveOneOut), laplace_square(NonreparameterizedLaplace), 4,
              replications=50_000),
        _case("score", _score(), exponential_square(NonreparameterizedExponential), 1, replications=100_000),
    ]
    return cases


CASES: list[Case] = _gaussian_cases() + _discrete_cases() + _continuous_family_cases()

# Further estimator families keep their cases in files of their own (imported at the end: they use Case).
from tests.estimators import cases_bounds, cases_rebar_relax, cases_relaxed, cases_unordered  # noqa: E402

CASES += cases_relaxed.CASES + cases_rebar_relax.CASES + cases_bounds.CASES + cases_unordered.CASES
