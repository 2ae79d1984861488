"""Statistical checks whose tolerance comes from the estimator's own standard error.

A test states a false-alarm rate, not an epsilon: with R independent replications of a D-dimensional
estimate, each coordinate's mean is compared with the exact value at z·SE, where z is the normal
quantile that makes the family-wise false-alarm rate (Bonferroni over D) equal to ``false_alarm``.
A check whose standard error is too large to detect anything fails as *underpowered*.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gradest.diagnostics._stats import sample_variance_se, z_for

__all__ = ["z_for", "assert_unbiased", "assert_variance", "sample_variance_se"]


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

    Example:
        >>> import torch, gradest
        >>> from gradest.testing import assert_unbiased
        >>> def gradient():      # one estimate of d/dlogits E[x] for x ~ Bernoulli(0.5); exactly p(1 − p)
        ...     logits = torch.zeros(3, requires_grad=True)
        ...     dist = torch.distributions.Bernoulli(logits=logits)
        ...     s = gradest.expectation(lambda x: x, dist, gradest.ScoreFunction(gradest.LeaveOneOut()), n=4)
        ...     return torch.autograd.grad(s.sum(), logits)[0]
        >>> _ = torch.manual_seed(0)
        >>> assert_unbiased(torch.stack([gradient() for _ in range(500)]), torch.full((3,), 0.25))
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


def assert_variance(
    draws: Tensor, exact_variance: Tensor, *, false_alarm: float = 1e-6, power: float = 0.1
) -> None:
    """Assert that the per-coordinate variance of ``draws`` ``[R, *D]`` equals ``exact_variance``.

    The tolerance is z·SE of the sample variance, the SE taken from the fourth central moment; the
    check is underpowered when that SE exceeds ``power`` times the exact variance.

    Example:
        >>> import torch, gradest
        >>> from gradest.testing import assert_variance
        >>> loc = torch.zeros(2, requires_grad=True)
        >>> def gradient():      # the pathwise estimate 2x of d/dloc E[x²], x ~ Normal(loc, 1): variance 4
        ...     s = gradest.expectation(lambda x: x**2, torch.distributions.Normal(loc, 1.0), gradest.Pathwise())
        ...     return torch.autograd.grad(s.sum(), loc)[0]
        >>> _ = torch.manual_seed(0)
        >>> assert_variance(torch.stack([gradient() for _ in range(2000)]), torch.full((2,), 4.0))
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
