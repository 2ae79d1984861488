"""Statistical checks whose tolerance comes from the estimator's own standard error.

A test states a false-alarm rate, not an epsilon: with R independent replications of a D-dimensional
estimate, each coordinate's mean is compared with the exact value at z·SE, where z is the normal
quantile that makes the family-wise false-alarm rate (Bonferroni over D) equal to ``false_alarm``.
A check whose standard error is too large to detect anything fails as *underpowered*.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["z_for", "assert_unbiased", "assert_variance", "sample_variance_se"]


def z_for(false_alarm: float, tests: int, dtype: torch.dtype = torch.float64) -> float:
    """Two-sided normal quantile for a family-wise ``false_alarm`` rate over ``tests`` comparisons."""
    if not 0 < false_alarm < 1:
        raise ValueError(f"z_for: false_alarm={false_alarm} must lie in (0, 1); 1e-6 is typical.")
    return float(torch.special.ndtri(torch.tensor(1 - false_alarm / (2 * tests), dtype=dtype)))


def _as_2d(draws: Tensor, exact: Tensor) -> tuple[Tensor, Tensor]:
    draws = draws.reshape(draws.shape[0], -1).to(torch.float64)
    exact = torch.as_tensor(exact).reshape(-1).to(draws)
    if draws.shape[1] != exact.numel():
        raise ValueError(
            f"draws have {draws.shape[1]} coordinates per replication but exact has {exact.numel()}; "
            "pass draws [R, *shape] and exact [*shape]."
        )
    if draws.shape[0] < 30:
        raise ValueError(f"draws has R={draws.shape[0]} replications; use R >= 100 for a normal SE.")
    return draws, exact


def assert_unbiased(
    draws: Tensor, exact: Tensor, *, false_alarm: float = 1e-6, power: float = 0.1
) -> None:
    """Assert that the mean of ``draws`` ``[R, *D]`` equals ``exact`` ``[*D]`` within z·SE.

    Args:
        draws: R independent estimates.
        exact: the exact value (closed form, quadrature or enumeration).
        false_alarm: probability that a correct estimator fails this check (family-wise).
        power: fail as underpowered when SE exceeds ``power · max(|exact|, 1)``: a check that cannot
            detect an error of that relative size proves nothing.

    Raises:
        AssertionError: biased coordinates (with their z-scores) or an underpowered check.
    """
    draws, exact = _as_2d(draws, exact)
    r = draws.shape[0]
    se = draws.std(0) / r**0.5
    z = z_for(false_alarm, exact.numel())
    scale = exact.abs().clamp_min(1.0)
    if (se > power * scale).any():
        raise AssertionError(f"underpowered: SE up to {float(se.max()):.3g}; raise R, not the tolerance")
    slack = z * se + 64 * torch.finfo(torch.float64).eps * scale  # rounding, not tuning
    err = (draws.mean(0) - exact).abs()
    off = err > slack
    if off.any():
        idx = off.nonzero().flatten().tolist()
        zs = (err / se.clamp_min(1e-300))[off].tolist()
        raise AssertionError(
            f"biased at {idx}: mean {draws.mean(0)[off].tolist()} vs exact {exact[off].tolist()}, "
            f"|error|/SE = {[round(v, 1) for v in zs]} > z={z:.1f}"
        )


def sample_variance_se(draws: Tensor) -> tuple[Tensor, Tensor]:
    """Per-coordinate sample variance of ``draws`` ``[R, D]`` and its standard error.

    Var(s²) ≈ (μ₄ − σ⁴ (R−3)/(R−1)) / R, with μ₄ the fourth central moment.
    """
    draws = draws.reshape(draws.shape[0], -1).to(torch.float64)
    r = draws.shape[0]
    c = draws - draws.mean(0)
    var = c.square().sum(0) / (r - 1)
    m4 = c.pow(4).mean(0)
    se = ((m4 - var.square() * (r - 3) / (r - 1)).clamp_min(0) / r).sqrt()
    return var, se


def assert_variance(
    draws: Tensor, exact_variance: Tensor, *, false_alarm: float = 1e-6, power: float = 0.1
) -> None:
    """Assert that the per-coordinate variance of ``draws`` ``[R, *D]`` equals ``exact_variance``.

    The tolerance is z·SE of the sample variance, the SE taken from the fourth central moment; the
    check is underpowered when that SE exceeds ``power`` times the exact variance.
    """
    draws, exact = _as_2d(draws, exact_variance)
    var, se = sample_variance_se(draws)
    z = z_for(false_alarm, exact.numel())
    if (se > power * exact.abs()).any():
        raise AssertionError(
            f"underpowered: relative SE of the variance up to {float((se / exact.abs()).max()):.3g}; raise R"
        )
    off = (var - exact).abs() > z * se + 64 * torch.finfo(torch.float64).eps * exact.abs()
    if off.any():
        raise AssertionError(
            f"variance off at {off.nonzero().flatten().tolist()}: {var[off].tolist()} vs "
            f"exact {exact[off].tolist()} (z={z:.1f})"
        )
