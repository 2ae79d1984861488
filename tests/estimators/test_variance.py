"""Variances of gradient estimates against closed forms (Gauss–Hermite quadrature), on the Gaussian problems.

Each check compares the sample variance of R independent estimates with the exact variance at z·SE,
the SE of the sample variance taken from the fourth central moment (``assert_variance``, false-alarm
rate 1e-6). Score-function estimates are heavy-tailed, so their checks take up to R = 3·10⁵; the
replications are batched, so each check still costs well under a second.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from gradest import Constant, ImplicitReparam, LeaveOneOut, Pathwise, ScoreFunction
from gradest.problems import Gaussian, gradient_draws
from gradest.testing import NonreparameterizedNormal, assert_variance
from tests.estimators.cases import GAUSSIANS, FamilyGaussian, seeded

IDS = [p.name for p in GAUSSIANS]


def replications(problem: Gaussian, heavy: int, light: int) -> int:
    """R for a relative SE of the variance near 0.04 (the check fails as underpowered above 0.1).

    Polynomial costs make score-function estimates heavy-tailed (their kurtosis is in the hundreds),
    so they need about ten times the replications of the bounded costs cos and bump.
    """
    return heavy if problem.cost in ("square", "shifted_square") else light


def _draws(problem: Gaussian, estimator: object, n: int, replications: int, seed: int) -> Tensor:
    with seeded(seed):
        return gradient_draws(problem, estimator, n=n, replications=replications)


@pytest.mark.parametrize("problem", GAUSSIANS, ids=IDS)
def test_pathwise_per_sample_variance(problem: Gaussian) -> None:
    draws = _draws(problem, Pathwise(), 1, 20_000, seed=10)
    assert_variance(draws, problem.per_sample_variance("pathwise"))


@pytest.mark.parametrize("problem", GAUSSIANS, ids=IDS)
def test_pathwise_variance_falls_as_one_over_n(problem: Gaussian) -> None:
    draws = _draws(problem, Pathwise(), 4, 20_000, seed=11)
    assert_variance(draws, problem.per_sample_variance("pathwise") / 4)


@pytest.mark.parametrize("problem", GAUSSIANS, ids=IDS)
def test_implicit_reparam_has_the_pathwise_variance(problem: Gaussian) -> None:
    """For a Normal, −∇F/p is exactly the pathwise dx/dθ = (1, ε): the same estimator, the same variance."""
    fake = FamilyGaussian(
        problem.cost, NonreparameterizedNormal, k=problem.k, mu=problem.mu, sigma=problem.sigma
    )
    draws = _draws(fake, ImplicitReparam(), 1, 20_000, seed=12)
    assert_variance(draws, problem.per_sample_variance("pathwise"))


@pytest.mark.parametrize("b", [None, 0.5, 2.0])
@pytest.mark.parametrize("problem", GAUSSIANS, ids=IDS)
def test_score_function_per_sample_variance(problem: Gaussian, b: float | None) -> None:
    baseline = None if b is None else Constant(b)   # 0.5 and 2.0 are exact in the float32 buffer
    draws = _draws(problem, ScoreFunction(baseline), 1, replications(problem, 300_000, 30_000), seed=13)
    assert_variance(draws, problem.per_sample_variance("score", baseline=0.0 if b is None else b))


def test_score_function_variance_falls_as_one_over_n() -> None:
    problem = GAUSSIANS[1]
    draws = _draws(problem, ScoreFunction(), 4, 200_000, seed=14)  # kurtosis falls with n
    assert_variance(draws, problem.per_sample_variance("score") / 4)


# ---- leave-one-out: a U-statistic with a closed-form variance ---------------------------------------


def leave_one_out_variance(problem: Gaussian, n: int) -> Tensor:
    r"""Exact variance ``[2]`` of ScoreFunction(LeaveOneOut()) with n samples, by quadrature.

    The estimator :math:`\frac{1}{n-1}\sum_i (f_i - \bar f) s_i` is the U-statistic of order 2 with
    kernel :math:`h(x, x') = \tfrac12 (f - f')(s - s')`, so (Hoeffding)

    .. math::
        \mathrm{Var} = \frac{4(n-2)}{n(n-1)}\zeta_1 + \frac{2}{n(n-1)}\zeta_2,\quad
        \zeta_1 = \tfrac14 \mathrm{Var}\bigl((f - \mu_f)s\bigr),\quad
        \zeta_2 = \tfrac12\bigl(\mathbb{E}[f^2 s^2] + \mathbb{E}[f^2]\,\mathbb{E}[s^2]\bigr)
                  - \mu_f\,\mathbb{E}[f s^2]

    using E[s] = 0; s is the score for μ, (ε/σ), or for σ, ((ε² − 1)/σ).
    """
    eps, w = problem._nodes()
    sigma = problem.sigma
    f = problem.f(problem.mu + sigma * eps)
    s = torch.stack([eps / sigma, (eps.square() - 1) / sigma])  # [2, nodes]

    def e(v: Tensor) -> Tensor:
        return (v * w).sum(-1)

    mu_f, g = e(f), e(f * s)
    zeta1 = (e((f - mu_f).square() * s.square()) - g.square()) / 4
    zeta2 = (e(f.square() * s.square()) + e(f.square()) * e(s.square())) / 2 - mu_f * e(f * s.square())
    return 4 * (n - 2) / (n * (n - 1)) * zeta1 + 2 / (n * (n - 1)) * zeta2


class _Offset(Gaussian):
    """``a · f(x) + c`` for the square cost (only used through f, by quadrature)."""

    def __init__(self, a: float, c: float) -> None:
        super().__init__("square")
        self.a, self.c = a, c

    def f(self, x: Tensor) -> Tensor:
        return self.a * super().f(x) + self.c


def test_leave_one_out_closed_form_reduces_to_known_cases() -> None:
    """A constant cost gives zero; f + c has the variance of f; n = 2 gives Var(h) by double quadrature."""
    square = GAUSSIANS[0]
    zero = torch.zeros(2, dtype=torch.float64)
    torch.testing.assert_close(leave_one_out_variance(_Offset(0.0, 3.0), 4), zero)
    shifted = leave_one_out_variance(_Offset(1.0, 5.0), 4)
    torch.testing.assert_close(shifted, leave_one_out_variance(square, 4))
    # n = 2: the estimator is h(x1, x2) = (f1 − f2)(s1 − s2)/2 itself.
    eps, w = square._nodes(60)
    f = square.f(square.mu + square.sigma * eps)
    s = torch.stack([eps / square.sigma, (eps.square() - 1) / square.sigma])   # [2, nodes]
    h = (f[:, None] - f[None]) * (s[:, :, None] - s[:, None]) / 2               # [2, nodes, nodes]
    ww = w[:, None] * w[None]
    var_h = (h.square() * ww).sum((-2, -1)) - (h * ww).sum((-2, -1)).square()
    torch.testing.assert_close(leave_one_out_variance(square, 2), var_h)


@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("problem", GAUSSIANS, ids=IDS)
def test_leave_one_out_variance(problem: Gaussian, n: int) -> None:
    draws = _draws(problem, ScoreFunction(LeaveOneOut()), n, replications(problem, 200_000, 20_000), seed=15)
    assert_variance(draws, leave_one_out_variance(problem, n))


def test_leave_one_out_beats_no_baseline_when_the_mean_cost_is_large() -> None:
    """Not a theorem in general, but for (x − 2)², whose mean 3.25 is large against its spread, RLOO's
    variance is about 0.7 of plain REINFORCE's at the same n. Both sides are exact (quadrature), and
    each is checked against draws above."""
    problem = GAUSSIANS[1]
    ratio = leave_one_out_variance(problem, 4) / (problem.per_sample_variance("score") / 4)
    assert (ratio < 0.75).all(), ratio

