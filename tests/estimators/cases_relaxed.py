"""Registry cases for the relaxed, antithetic and measure-valued estimators (see cases.py for the Case contract).

Kept in its own file so that each family's cases are added without touching the others'. Claims:

- ``ARM``, ``DisARM``, ``MeasureValued``: unbiased for the true gradient (Bernoulli toys at t = 0.45 and
  0.499 for several logits, ``BernoulliTable(3)`` over all 2^d states, Gaussian, Poisson and factorised
  problems with closed forms); ``MeasureValued`` is exact for a single bit (f(1) − f(0) is the
  derivative itself).
- ``StraightThrough``: exact when f is linear in the sample (bits, one-hot vectors).
- ``GumbelSoftmax``: unbiased for the gradient of the *relaxed* objective E[f(y)], y binary Concrete,
  computed by Gauss–Legendre quadrature over the logistic noise (``relaxed_moment``); a two-way
  (One-Hot)Categorical relaxes to the same binary Concrete, so it is checked against the same numbers.
- ``GumbelSoftmax(hard=True)`` and ``GumbelRao``: for f linear in the sample, the straight-through
  gradient's mean is the relaxed objective's gradient, E[w · y]; unbiased for that.

Their biases against the true gradient are tested in ``test_relaxed.py``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Bernoulli, Categorical, Independent, Normal, OneHotCategorical, Poisson

from gradest.estimators.arm import ARM, DisARM
from gradest.estimators.measure_valued import MeasureValued
from gradest.estimators.relaxed import GumbelRao, GumbelSoftmax, StraightThrough
from gradest.problems import BernoulliTable, BernoulliToy
from tests.estimators.cases import BERNOULLI_TOYS, GAUSSIANS, Case, ClosedForm, _case, one_hot_table

# ---- the relaxed objective by quadrature -----------------------------------------------------------

QUADRATURE_NODES = 256
"""Gauss–Legendre nodes in u ∈ (0, 1). For τ ≥ 0.1 the integrand is a rational function of u with
poles well off [0, 1], so the error is far below rounding (checked in test_relaxed.py)."""


@functools.lru_cache(maxsize=4)
def _legendre(nodes: int) -> tuple[Tensor, Tensor]:
    """Gauss–Legendre nodes and weights on (0, 1), float64 (computed once: ``leggauss`` takes ~1 s)."""
    x, w = np.polynomial.legendre.leggauss(nodes)
    return torch.from_numpy((x + 1) / 2), torch.from_numpy(w / 2)


def relaxed_moment(h: Callable[[Tensor], Tensor], logits: Tensor, temperature: float,
                   nodes: int = QUADRATURE_NODES) -> Tensor:
    """E[h(σ((ℓ + L)/τ))] for L standard logistic, by quadrature in u with L = logit(u): ``[*S] -> [*S]``.

    Differentiable in ``logits``, so autograd gives the exact gradient of the relaxed objective.
    """
    u, weights = (t.to(logits) for t in _legendre(nodes))
    y = torch.sigmoid((logits.unsqueeze(-1) + torch.log(u) - torch.log1p(-u)) / temperature)
    return (h(y) * weights).sum(-1)


def bernoulli(logits: Tensor) -> Bernoulli:
    return Bernoulli(logits=logits)


def bernoulli_probs(probs: Tensor) -> Bernoulli:
    return Bernoulli(probs=probs)


def independent_bernoulli(logits: Tensor) -> Independent:
    return Independent(Bernoulli(logits=logits), 1)


def one_hot(logits: Tensor) -> OneHotCategorical:
    return OneHotCategorical(logits=logits)


def categorical(logits: Tensor) -> Categorical:
    return Categorical(logits=logits)


def independent_normal(loc: Tensor, scale: Tensor) -> Independent:
    return Independent(Normal(loc, scale), 1)


def poisson(rate: Tensor) -> Poisson:
    return Poisson(rate)


def independent_poisson(rate: Tensor) -> Independent:
    return Independent(Poisson(rate), 1)


def relaxed_toy(target: float, logit: float, temperature: float, family: Callable = bernoulli) -> ClosedForm:
    """E[(y − t)²] for y the binary Concrete relaxation of Bernoulli(σ(logit)) at temperature τ.

    For a two-way (One-Hot)Categorical with logits (logit, 0), y is the first coordinate of the relaxed
    one-hot vector: softmax((ℓ + G)/τ)₀ = σ((ℓ₀ − ℓ₁ + G₀ − G₁)/τ), and G₀ − G₁ is logistic.
    """

    def h(y: Tensor) -> Tensor:
        return (y - target).square()

    name = f"relaxed-toy(t={target:g},logit={logit:g},temperature={temperature:g})"
    if family is bernoulli:
        return ClosedForm(name, family, (logit,), h, lambda a: relaxed_moment(h, a, temperature))
    return ClosedForm(
        name, family, ([logit, 0.0],), lambda x: h(x[..., 0]),
        lambda a: relaxed_moment(h, a[..., 0] - a[..., 1], temperature),
    )


def relaxed_pair(temperature: float) -> ClosedForm:
    """E[(y₁ − 2y₂ + 0.3)²] for two independent binary Concrete coordinates: a cost that couples them,
    exact from the one-dimensional moments E[y_j], E[y_j²]."""
    logits = [0.8, -0.4]

    def f(y: Tensor) -> Tensor:
        return (y[..., 0] - 2 * y[..., 1] + 0.3).square()

    def objective(a: Tensor) -> Tensor:
        m1 = relaxed_moment(lambda y: y, a, temperature)
        m2 = relaxed_moment(lambda y: y.square(), a, temperature)
        return (m2[..., 0] + 4 * m2[..., 1] + 0.09 - 4 * m1[..., 0] * m1[..., 1]
                + 0.6 * m1[..., 0] - 1.2 * m1[..., 1])

    return ClosedForm(f"relaxed-pair(temperature={temperature:g})", independent_bernoulli, (logits,), f, objective)


_LINEAR_WEIGHTS = torch.tensor([1.5, -2.0, 0.7], dtype=torch.float64)


def relaxed_linear(temperature: float, family: Callable = independent_bernoulli) -> ClosedForm:
    """For f(x) = w · x, the mean of the straight-through Gumbel gradient is ∇ E[w · y], y relaxed.

    Bits: three independent coordinates; (One-Hot)Categorical: two classes (a binary Concrete).
    """
    name = f"relaxed-linear(temperature={temperature:g})"
    if family is independent_bernoulli:
        return ClosedForm(
            name, family, ([0.3, -1.1, 1.6],), lambda x: (x * _LINEAR_WEIGHTS.to(x)).sum(-1),
            lambda a: (_LINEAR_WEIGHTS.to(a) * relaxed_moment(lambda y: y, a, temperature)).sum(-1),
        )
    w = _LINEAR_WEIGHTS[:2]
    return ClosedForm(
        name, family, ([0.6, -0.2],), lambda x: (x * w.to(x)).sum(-1),
        lambda a: w[1] + (w[0] - w[1]) * relaxed_moment(lambda y: y, a[..., 0] - a[..., 1], temperature),
    )


# ---- linear costs, where straight-through is exact --------------------------------------------------


def bernoulli_linear(family: Callable = bernoulli) -> ClosedForm:
    """E[3b − 1] = 3p − 1."""
    if family is bernoulli_probs:
        return ClosedForm("bernoulli-linear", family, (0.3,), lambda b: 3 * b - 1, lambda p: 3 * p - 1)
    return ClosedForm("bernoulli-linear", family, (0.4,), lambda b: 3 * b - 1, lambda a: 3 * torch.sigmoid(a) - 1)


def bits_linear() -> ClosedForm:
    """E[w · b + 0.5] for three independent bits = w · σ(ℓ) + 0.5."""
    return ClosedForm(
        "bits-linear", independent_bernoulli, ([0.3, -1.1, 1.6],),
        lambda b: (b * _LINEAR_WEIGHTS.to(b)).sum(-1) + 0.5,
        lambda a: (_LINEAR_WEIGHTS.to(a) * torch.sigmoid(a)).sum(-1) + 0.5,
    )


_TABLE = torch.tensor([0.3, -1.2, 0.8, 2.0, -0.4], dtype=torch.float64)


def categorical_one_hot_table() -> ClosedForm:
    """E[table · onehot(k)] for k ∼ Categorical(logits): the relaxed and straight-through rules hand f
    one-hot vectors for Categorical too."""
    return ClosedForm(
        "one-hot-table", categorical, ([0.2, -0.5, 1.0, 0.0, -1.3],),
        lambda x: (x * _TABLE.to(x)).sum(-1),
        lambda a: (torch.softmax(a, -1) * _TABLE.to(a)).sum(-1),
    )


# ---- problems for the antithetic and measure-valued rules ------------------------------------------


def bernoulli_probs_toy(target: float = 0.45) -> ClosedForm:
    """The Bernoulli toy with the distribution built from ``probs``: the gradient is w.r.t. p."""
    return ClosedForm(
        f"bernoulli-toy(t={target:g})", bernoulli_probs, (0.3,), lambda b: (b - target).square(),
        lambda p: p * (1 - target) ** 2 + (1 - p) * target**2,
    )


_NORMAL_WEIGHTS = torch.tensor([1.0, -0.5, 0.8], dtype=torch.float64)


def independent_normal_cos() -> ClosedForm:
    """E[cos(w · x)] for x ∼ N(μ, diag σ²) = cos(w · μ) exp(−½ Σ w_j² σ_j²): a cost coupling the coordinates."""

    def objective(loc: Tensor, scale: Tensor) -> Tensor:
        w = _NORMAL_WEIGHTS.to(loc)
        return torch.cos((w * loc).sum(-1)) * torch.exp(-0.5 * (w.square() * scale.square()).sum(-1))

    return ClosedForm(
        "normal-cos", independent_normal, ([0.5, -0.3, 1.0], [1.0, 0.7, 1.3]),
        lambda x: torch.cos((x * _NORMAL_WEIGHTS.to(x)).sum(-1)), objective,
    )


_COS1, _SIN1 = math.cos(1.0), math.sin(1.0)


def poisson_cos() -> ClosedForm:
    """E[cos x] for x ∼ Poisson(λ) = Re E[e^{ix}] = exp(λ(cos 1 − 1)) cos(λ sin 1)."""
    return ClosedForm(
        "poisson-cos", poisson, (1.7,), torch.cos,
        lambda rate: torch.exp(rate * (_COS1 - 1)) * torch.cos(rate * _SIN1),
    )


def independent_poisson_cos() -> ClosedForm:
    """E[cos(x₁ − x₂)] = exp((λ₁ + λ₂)(cos 1 − 1)) cos((λ₁ − λ₂) sin 1): a cost coupling the coordinates."""
    return ClosedForm(
        "poisson-cos-difference", independent_poisson, ([1.7, 0.6],),
        lambda x: torch.cos(x[..., 0] - x[..., 1]),
        lambda r: torch.exp(r.sum(-1) * (_COS1 - 1)) * torch.cos((r[..., 0] - r[..., 1]) * _SIN1),
    )


# ---- the cases ---------------------------------------------------------------------------------------


def _antithetic_cases() -> list[Case]:
    cases = []
    table = BernoulliTable(3)
    for label, factory in (("arm", ARM), ("disarm", DisARM)):
        for p in BERNOULLI_TOYS:
            cases.append(_case(label, factory, p, 1, replications=10_000))
        cases.append(_case(label, factory, BernoulliToy(0.45, logit=1.5), 3, replications=10_000))
        cases.append(_case(label, factory, bernoulli_probs_toy(), 1, replications=10_000))
        cases.append(_case(label, factory, table, 1, replications=20_000))
        cases.append(_case(label, factory, table, 4, replications=10_000))
    return cases


def _measure_valued_cases() -> list[Case]:
    mv = MeasureValued
    cases = [_case("measure-valued", mv, p, 1, claim="exact", replications=100) for p in BERNOULLI_TOYS]
    cases += [
        _case("measure-valued", mv, bernoulli_probs_toy(), 1, claim="exact", replications=100),
        _case("measure-valued", mv, BernoulliTable(3), 1, replications=20_000),
        _case("measure-valued", mv, BernoulliTable(3), 3, replications=10_000),
        _case("measure-valued", mv, independent_normal_cos(), 1, replications=20_000),
        _case("measure-valued", mv, poisson_cos(), 1, replications=20_000),
        _case("measure-valued", mv, independent_poisson_cos(), 2, replications=20_000),
    ]
    for p in GAUSSIANS:
        cases.append(_case("measure-valued", mv, p, 1, replications=20_000))
    cases.append(_case("measure-valued", mv, GAUSSIANS[1], 4, replications=10_000))
    return cases


def _straight_through_cases() -> list[Case]:
    st = StraightThrough
    problems = [bernoulli_linear(), bernoulli_linear(bernoulli_probs), bits_linear(), one_hot_table(),
                categorical_one_hot_table()]
    return [_case("straight-through", st, p, n, claim="exact", replications=50) for p in problems for n in (1, 3)]


def _gumbel_cases() -> list[Case]:
    cases = []
    for temperature in (1.0, 0.5):
        def soft(temperature: float = temperature) -> GumbelSoftmax:
            return GumbelSoftmax(temperature)

        label = f"gumbel-softmax({temperature:g})"
        for logit in (0.0, 1.5, -2.0):
            cases.append(_case(label, soft, relaxed_toy(0.45, logit, temperature), 1, replications=10_000))
        cases += [
            _case(label, soft, relaxed_toy(0.45, 0.7, temperature), 4, replications=10_000),
            _case(label, soft, relaxed_toy(0.45, 0.7, temperature, one_hot), 1, replications=10_000),
            _case(label, soft, relaxed_toy(0.45, -0.9, temperature, categorical), 1, replications=10_000),
            _case(label, soft, relaxed_pair(temperature), 2, replications=10_000),
        ]
    temperature = 0.5
    for family in (independent_bernoulli, one_hot, categorical):
        p = relaxed_linear(temperature, family)
        cases += [
            _case(f"gumbel-softmax({temperature:g},hard)", lambda: GumbelSoftmax(temperature, hard=True), p, 1,
                  replications=10_000),
            _case(f"gumbel-rao(4,{temperature:g})", lambda: GumbelRao(4, temperature=temperature), p, 1,
                  replications=10_000),
            _case(f"gumbel-rao(1,{temperature:g})", lambda: GumbelRao(1, temperature=temperature), p, 2,
                  replications=10_000),
        ]
    return cases


CASES: list[Case] = _antithetic_cases() + _measure_valued_cases() + _straight_through_cases() + _gumbel_cases()
