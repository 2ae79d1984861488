"""Normal quantiles for a family-wise false-alarm rate, and the standard error of a sample variance.

(``gradest.testing`` has the same two formulas for tests; product code does not import ``testing``.)
"""

from __future__ import annotations

import torch
from torch import Tensor


def z_for(false_alarm: float, tests: int) -> float:
    """Two-sided normal quantile that keeps the family-wise false-alarm rate over ``tests`` at ``false_alarm``
    (Bonferroni: each test at ``false_alarm / tests``)."""
    return float(torch.special.ndtri(torch.tensor(1 - false_alarm / (2 * max(1, tests)), dtype=torch.float64)))


def variance_se(draws: Tensor) -> tuple[Tensor, Tensor]:
    """Per-coordinate sample variance of ``draws`` ``[R, D]`` and its standard error,
    Var(s²) ≈ (μ₄ − σ⁴ (R−3)/(R−1)) / R with μ₄ the fourth central moment."""
    draws = draws.reshape(draws.shape[0], -1).to(torch.float64)
    r = draws.shape[0]
    c = draws - draws.mean(0)
    var = c.square().sum(0) / (r - 1)
    m4 = c.pow(4).mean(0)
    se = ((m4 - var.square() * (r - 3) / (r - 1)).clamp_min(0) / r).sqrt()
    return var, se
