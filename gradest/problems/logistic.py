"""Bayesian logistic regression on scikit-learn's breast_cancer (Mohamed et al. 2020, §8)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Independent, Normal

from gradest.problems.base import Problem

__all__ = ["LogisticRegression"]


def _breast_cancer() -> tuple[Tensor, Tensor]:
    try:
        from sklearn.datasets import load_breast_cancer
    except ImportError as e:  # pragma: no cover - the cli extra installs scikit-learn
        raise ImportError(
            "LogisticRegression: needs scikit-learn for load_breast_cancer; pip install 'gradest[cli]'."
        ) from e
    data = load_breast_cancer()
    x = (data.data - data.data.mean(0)) / data.data.std(0)
    x = np.concatenate([x, np.ones((x.shape[0], 1))], 1)  # intercept
    y = 2.0 * data.target - 1.0  # labels ±1
    return torch.from_numpy(x), torch.from_numpy(y)


class LogisticRegression(Problem):
    r"""The expected log-likelihood of Bayesian logistic regression under a mean-field Gaussian.

    .. math::
        J(\mu, \sigma) = \mathbb{E}_{w\sim\mathcal N(\mu, \mathrm{diag}\,\sigma^2)}
        \Bigl[\frac1N \sum_{i=1}^N \log \mathrm{sigmoid}(y_i\, x_i^\top w)\Bigr]

    on the standardised breast_cancer data (569 × 30, plus an intercept; d = 31, so 62 parameters).
    Each term depends on w only through :math:`a_i = x_i^\top w \sim \mathcal N(x_i^\top\mu,
    \sum_j x_{ij}^2\sigma_j^2)`, so J is a sum of one-dimensional Gaussian integrals, computed by
    Gauss–Hermite quadrature to rounding: the exact gradient is known, for the score-function and
    pathwise estimators alike. This is the variational part of the ELBO (the Gaussian prior's KL is
    analytic and has no estimator).

    Example:
        >>> from gradest.problems import LogisticRegression
        >>> problem = LogisticRegression()               # needs scikit-learn (the cli extra)
        >>> [p.shape for p in problem.params()], problem.exact_gradient().shape
        ([torch.Size([31]), torch.Size([31])], torch.Size([62]))

    References:
        Mohamed et al. (2020). Monte Carlo Gradient Estimation in Machine Learning, §8. JMLR.
        arXiv:1906.10652.
    """

    def __init__(self, *, scale: float = 0.5, seed: int = 0) -> None:
        self.x, self.y = _breast_cancer()
        g = torch.Generator().manual_seed(seed)
        d = self.x.shape[1]
        self.mu0 = 0.3 * torch.randn(d, generator=g, dtype=torch.float64)
        self.sigma0 = torch.full((d,), scale, dtype=torch.float64)
        self.name = f"logistic-regression(breast_cancer,d={d})"

    def initial(self) -> tuple[Tensor, ...]:
        return self.mu0, self.sigma0

    def dist(self, loc: Tensor, scale: Tensor) -> Independent:
        return Independent(Normal(loc, scale), 1)

    def f(self, w: Tensor) -> Tensor:
        xy = (self.x * self.y.unsqueeze(-1)).to(w)  # [N, d]
        return torch.nn.functional.logsigmoid(w @ xy.T).mean(-1)

    def objective(self, loc: Tensor, scale: Tensor) -> Tensor:
        eps, wts = np.polynomial.hermite_e.hermegauss(80)
        eps_t = torch.from_numpy(eps).to(loc)
        wts_t = torch.from_numpy(wts / math.sqrt(2 * math.pi)).to(loc)
        x, y = self.x.to(loc), self.y.to(loc)
        m = y * (loc @ x.T)  # [..., N]: mean of y_i a_i
        s = (scale.square() @ x.square().T).sqrt()  # [..., N]
        a = m.unsqueeze(-1) + s.unsqueeze(-1) * eps_t  # [..., N, nodes]
        return (torch.nn.functional.logsigmoid(a) * wts_t).sum(-1).mean(-1)
