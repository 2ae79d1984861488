r"""The Gaussian problems of Mohamed et al. (2020), §3: E_{N(μ,σ²)}[f(x)] with closed-form answers.

Costs: ``square`` x², ``shifted_square`` (x − k)², ``cos`` cos(kx), ``bump`` exp(−kx²). For each the
objective is known in closed form (so the exact gradient follows by autograd) and the per-sample
variances of the pathwise and score-function estimators are computed by Gauss–Hermite quadrature
(exact for polynomial costs, accurate to rounding for the smooth ones).

References:
    Mohamed et al. (2020). Monte Carlo Gradient Estimation in Machine Learning. JMLR. arXiv:1906.10652.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Normal

from gradest.problems.base import Problem

__all__ = ["Gaussian", "COSTS"]

COSTS = ("square", "shifted_square", "cos", "bump")


class Gaussian(Problem):
    r"""J(μ, σ) = E_{x∼N(μ,σ²)}[f(x)] for one of the costs in ``COSTS``; parameters (μ, σ).

    ============== ====================== ==============================================
    cost           f(x)                   J(μ, σ)
    ============== ====================== ==============================================
    square         x²                     μ² + σ²
    shifted_square (x − k)²               (μ − k)² + σ²
    cos            cos(kx)                cos(kμ) e^{−k²σ²/2}
    bump           exp(−kx²)              (1 + 2kσ²)^{−1/2} exp(−kμ²/(1 + 2kσ²))
    ============== ====================== ==============================================

    Example:
        >>> from gradest.problems import Gaussian
        >>> problem = Gaussian("cos", k=3.0)
        >>> problem.params()          # (μ, σ), leaf tensors
        (tensor(0.5000, dtype=torch.float64, requires_grad=True), tensor(1., dtype=torch.float64, requires_grad=True))
        >>> [round(g, 4) for g in problem.exact_gradient().tolist()]   # J = cos(3μ) exp(−9σ²/2): ∂J/∂μ, ∂J/∂σ
        [-0.0332, -0.0071]
    """

    def __init__(self, cost: str = "square", *, k: float = 1.0, mu: float = 0.5, sigma: float = 1.0) -> None:
        if cost not in COSTS:
            raise ValueError(f"Gaussian: cost={cost!r} is not one of {COSTS}.")
        if not sigma > 0:
            raise ValueError(f"Gaussian: sigma={sigma} must be > 0.")
        self.cost, self.k, self.mu, self.sigma = cost, float(k), float(mu), float(sigma)
        kpart = "" if cost == "square" else f",k={self.k:g}"
        self.name = f"gaussian-{cost}(mu={self.mu:g},sigma={self.sigma:g}{kpart})"

    def initial(self) -> tuple[Tensor, ...]:
        return torch.tensor(self.mu), torch.tensor(self.sigma)

    def dist(self, loc: Tensor, scale: Tensor) -> Normal:
        return Normal(loc, scale)

    def f(self, x: Tensor) -> Tensor:
        k = self.k
        if self.cost == "square":
            return x.square()
        if self.cost == "shifted_square":
            return (x - k).square()
        if self.cost == "cos":
            return torch.cos(k * x)
        return torch.exp(-k * x.square())

    def objective(self, mu: Tensor, sigma: Tensor) -> Tensor:
        k = self.k
        if self.cost == "square":
            return mu.square() + sigma.square()
        if self.cost == "shifted_square":
            return (mu - k).square() + sigma.square()
        if self.cost == "cos":
            return torch.cos(k * mu) * torch.exp(-0.5 * k**2 * sigma.square())
        a = 1 + 2 * k * sigma.square()
        return a.rsqrt() * torch.exp(-k * mu.square() / a)

    # ---- per-sample variances by Gauss–Hermite quadrature ---------------------------------------

    def _nodes(self, degree: int = 120) -> tuple[Tensor, Tensor]:
        eps, w = np.polynomial.hermite_e.hermegauss(degree)
        return torch.from_numpy(eps), torch.from_numpy(w / math.sqrt(2 * math.pi))

    def per_sample_variance(self, estimator: str, *, baseline: float = 0.0) -> Tensor:
        """Variance ``[2]`` (for μ and σ) of the single-sample estimator.

        Args:
            estimator: ``"pathwise"`` (∇f(μ+σε)) or ``"score"`` ((f(x) − b)∇log N(x; μ, σ)).
            baseline: the constant b subtracted in the score estimator.
        """
        eps, w = self._nodes()
        mu, sigma = self.mu, self.sigma
        x = (mu + sigma * eps).requires_grad_()
        fx = self.f(x)
        if estimator == "pathwise":
            (fprime,) = torch.autograd.grad(fx.sum(), x)
            g = torch.stack([fprime, fprime * eps])
        elif estimator == "score":
            c = fx.detach() - baseline
            g = torch.stack([c * eps / sigma, c * (eps.square() - 1) / sigma])
        else:
            raise ValueError(f"per_sample_variance: estimator={estimator!r} must be 'pathwise' or 'score'.")
        mean = (g * w).sum(-1)
        return (g.square() * w).sum(-1) - mean.square()
