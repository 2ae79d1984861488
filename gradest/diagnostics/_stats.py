"""Normal quantiles for a family-wise false-alarm rate, and the standard error of a sample variance.

``gradest.testing`` re-exports ``z_for`` and ``sample_variance_se`` from here (product code does not
import ``testing``, so the one definition lives on this side).
"""

from __future__ import annotations

import torch
from torch import Tensor


def z_for(false_alarm: float, tests: int, dtype: torch.dtype = torch.float64) -> float:
    """Two-sided normal quantile that keeps the family-wise false-alarm rate over ``tests`` comparisons at
    ``false_alarm`` (Bonferroni: each test at ``false_alarm / tests``; fewer than one test counts as one).

    Example:
        >>> from gradest.testing import z_for
        >>> round(z_for(1e-6, 1), 2), round(z_for(1e-6, 10), 2)     # more tests, a higher bar for each
        (4.89, 5.33)
    """
    if not 0 < false_alarm < 1:
        raise ValueError(f"z_for: false_alarm={false_alarm} must lie in (0, 1); 1e-6 is typical.")
    return float(torch.special.ndtri(torch.tensor(1 - false_alarm / (2 * max(1, tests)), dtype=dtype)))


def sample_variance_se(draws: Tensor) -> tuple[Tensor, Tensor]:
    """Per-coordinate sample variance of ``draws`` ``[R, D]`` and its standard error.

    Var(s²) ≈ (μ₄ − σ⁴ (R−3)/(R−1)) / R, with μ₄ the fourth central moment.

    Example:
        >>> import torch
        >>> from gradest.testing import sample_variance_se
        >>> _ = torch.manual_seed(0)
        >>> var, se = sample_variance_se(2 * torch.randn(2000, 3))     # exact variance 4
        >>> bool(((var - 4).abs() < 5 * se).all()), round(se.mean().item(), 2)
        (True, 0.13)
    """
    draws = draws.reshape(draws.shape[0], -1).to(torch.float64)
    r = draws.shape[0]
    c = draws - draws.mean(0)
    var = c.square().sum(0) / (r - 1)
    m4 = c.pow(4).mean(0)
    se = ((m4 - var.square() * (r - 3) / (r - 1)).clamp_min(0) / r).sqrt()
    return var, se


def mean_and_moments(draws: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-coordinate mean of ``draws`` ``[R, D]``, its variance (s²/R) and its third cumulant (μ̂₃/R²)."""
    draws = draws.reshape(draws.shape[0], -1).to(torch.float64)
    r = draws.shape[0]
    mean = draws.mean(0)
    c = draws - mean
    return mean, c.square().sum(0) / (r - 1) / r, c.pow(3).mean(0) / r**2


def bias_z(difference: Tensor, variance: Tensor, third: Tensor, floor: float) -> Tensor:
    r"""|z| per coordinate of a difference of means, corrected for its skewness (Hall 1992).

    With :math:`T = d/\sqrt{v}` and the standardised third cumulant :math:`\kappa = k_3 / v^{3/2}` of the
    difference d (variance v, third cumulant k₃; for one sample of R draws, κ = γ/√R), the statistic
    :math:`T + \kappa T^2/3 + \kappa^2 T^3/27 + \kappa/6` is normal up to O(1/R) where T itself is
    off by O(1/√R): with skewed draws (score functions, ratio baselines) the plain T puts several
    times too much mass beyond z ≈ 4 at R = 200, and the transformed one does not. The transform is
    monotone in T, so it only recalibrates the test. ``floor`` (rounding) keeps deterministic rules finite.

    Reference: Hall (1992). On the Removal of Skewness by Transformation. JRSS B 54(1).
    """
    sd = variance.clamp_min(0).sqrt()
    t = difference / (sd + floor)
    kappa = torch.where(sd > floor, third / (sd**3).clamp_min(torch.finfo(sd.dtype).tiny), torch.zeros_like(sd))
    return (t + kappa * t.square() / 3 + kappa.square() * t.pow(3) / 27 + kappa / 6).abs()
