r"""``iwae_bound``: the surrogate of a multi-sample (importance-weighted) bound on log p(x)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import Distribution

from gradest._validation import check_distribution, check_finite, check_n, is_validation_enabled
from gradest.estimators.base import Estimator
from gradest.estimators.multisample import MultisampleEstimator, default_bound_estimator

__all__ = ["iwae_bound"]


def iwae_bound(
    log_joint: Callable[[Tensor], Tensor],
    dist: Distribution,
    estimator: MultisampleEstimator | None = None,
    n: int = 1,
) -> Tensor:
    r"""The surrogate of the importance-weighted bound :math:`\mathcal{L}_n` on :math:`\log p_\theta(x)`.

    .. math::
        \mathcal{L}_n(\theta, \phi) = \mathbb{E}_{z_{1:n} \sim q_\phi}
        \Bigl[\log \frac1n \sum_{i=1}^n \frac{p_\theta(x, z_i)}{q_\phi(z_i)}\Bigr]
        \;\le\; \log p_\theta(x)

    Its value is the Monte Carlo bound :math:`\log\frac1n\sum_i w_i` at n fresh samples of ``dist``
    (the IWAE bound; with n = 1, the ELBO's one-sample estimate), and its autograd gradient is the
    estimator's: with respect to q's parameters φ (those of ``dist``, and whatever produced them,
    e.g. an encoder) and to p's parameters θ (whatever ``log_joint`` closes over). Maximise it:
    ``(-iwae_bound(...)).mean().backward()``.

    This is a separate entry point from :func:`gradest.expectation` because the bound is not an
    expectation of a per-sample cost: its n samples meet inside one logarithm.

    Args:
        log_joint: maps samples ``[n, *B, *E]`` to :math:`\log p_\theta(x, z_i)` ``[n, *B]`` (the
            prior plus the likelihood of the batch element's data). It may close over parameters θ.
        dist: the proposal :math:`q_\phi(z)` with batch shape B (one bound per batch element, e.g. per
            data point) and event shape E; put a latent vector's dims in the event shape
            (``Independent(..., 1)``) so ``log_prob`` sums over them.
        estimator: a :class:`~gradest.estimators.multisample.MultisampleEstimator`: ``IWAE()``
            (plain: reparameterised with ``rsample``, else score function), ``VIMCO()`` (discrete q,
            n ≥ 2) or ``DReG()`` (reparameterisable q; n = 1 gives sticking-the-landing). By default
            ``IWAE()`` when ``dist.has_rsample``, else ``VIMCO()`` for n ≥ 2, else ``IWAE()``.
        n: samples per bound, K in the papers.

    Returns:
        ``[*B]`` surrogate of the bound, one per batch element.

    Raises:
        TypeError: log_joint is not callable or returns a non-tensor; dist is not a Distribution;
            estimator is an ``expectation`` estimator or not an estimator at all.
        ValueError: n < 1 (n < 2 for VIMCO); log_joint's output has the wrong shape, or holds NaN
            (while validation is on).
        NotImplementedError: the estimator does not support the family (DReG without ``rsample``).

    Example:
        >>> import torch
        >>> from gradest.multisample import iwae_bound
        >>> _ = torch.manual_seed(0)
        >>> loc = torch.zeros(2, requires_grad=True)
        >>> q = torch.distributions.Normal(loc, 1.0)
        >>> log_joint = lambda z: torch.distributions.Normal(0.5, 1.0).log_prob(z)
        >>> bound = iwae_bound(log_joint, q, n=10)
        >>> (-bound.sum()).backward(); loc.grad.shape
        torch.Size([2])

    References:
        Burda et al. (2016). Importance Weighted Autoencoders. ICLR. arXiv:1509.00519.
        Mnih & Rezende (2016). Variational Inference for Monte Carlo Objectives. ICML. arXiv:1602.06725.
        Tucker et al. (2019). Doubly Reparameterized Gradient Estimators for Monte Carlo Objectives.
        ICLR. arXiv:1810.04152.
    """
    where = "iwae_bound"
    if not callable(log_joint):
        raise TypeError(
            f"{where}: log_joint={log_joint!r} is not callable; pass a function mapping samples "
            "[n, *B, *E] to log p(x, z) [n, *B]."
        )
    dist = check_distribution(where, dist)
    n = check_n(where, n)
    if estimator is None:
        estimator = default_bound_estimator(dist, n)
    elif isinstance(estimator, Estimator):
        raise TypeError(
            f"{where}: estimator={type(estimator).__name__}() estimates the gradient of an expectation "
            "E[f], not of a multi-sample bound; use IWAE() (plain; reparameterised when dist has "
            "rsample), DReG() (reparameterisable q) or VIMCO() (discrete q, n >= 2) from "
            "gradest.estimators.multisample, or gradest.expectation for E[f]."
        )
    elif not isinstance(estimator, MultisampleEstimator):
        raise TypeError(
            f"{where}: estimator={estimator!r} is not a multi-sample estimator; pass IWAE(), DReG() or "
            "VIMCO() from gradest.estimators.multisample."
        )
    estimator.check(dist, n)
    draw = estimator.draw(dist, n)
    value = log_joint(draw.value)
    expected = draw.value.shape[: 1 + len(dist.batch_shape)]
    if not isinstance(value, Tensor):
        raise TypeError(
            f"{where}: log_joint returned {type(value).__name__}, expected a tensor of shape {tuple(expected)}."
        )
    if value.shape != expected:
        raise ValueError(
            f"{where}: log_joint returned shape {tuple(value.shape)}, expected (n, *dist.batch_shape) = "
            f"{tuple(expected)}; sum log p(x, z) over the event (latent and data) dimensions inside "
            "log_joint and keep the sample dimension."
        )
    if not value.is_floating_point():
        raise TypeError(f"{where}: log_joint returned dtype={value.dtype}; log-densities must be floating point.")
    # -inf is a legal log-density (a sample of zero joint probability) as long as one sample per batch
    # element has a finite weight; NaN, +inf and a batch element with every weight zero are not.
    check_finite(where, "log_joint's output", value.masked_fill(value == -torch.inf, 0.0),
                 "check log_joint for 0/0, inf - inf or log of an overflow at the sampled points.")
    if is_validation_enabled() and bool((value == -torch.inf).all(0).any()):
        dead = int((value == -torch.inf).all(0).sum())
        raise ValueError(
            f"{where}: log_joint's output is -inf for all n={value.shape[0]} samples of {dead} batch "
            "element(s), so the bound is -inf and its gradient undefined; raise n, or make q cover the "
            "support of p(x, z) (a proposal that puts its mass where p is zero)."
        )
    return estimator.surrogate(draw, value)
