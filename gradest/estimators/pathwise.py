"""Reparameterisation gradients: explicit/implicit via ``rsample``, and implicit from any CDF."""

from __future__ import annotations

import torch
from torch.distributions import Distribution, Gamma, TransformedDistribution

from gradest._validation import describe
from gradest.estimators._families import check_parameters, leaf
from gradest.estimators.base import Draw, Estimator, register_default
from gradest.surrogate import stop_gradient, straight_through

__all__ = ["Pathwise", "ImplicitReparam"]


class Pathwise(Estimator):
    r"""Pathwise (reparameterisation) gradient through ``dist.rsample``.

    .. math::
        \nabla_\theta \mathbb{E}_{p_\theta}[f(x)] \approx \frac{1}{n}\sum_{i=1}^n
        \nabla_\theta f\bigl(g_\theta(\epsilon_i)\bigr), \qquad x_i = g_\theta(\epsilon_i)

    torch's ``rsample`` covers explicit reparameterisations (Normal, MultivariateNormal, Laplace ...)
    and implicit ones (Gamma, Beta, Dirichlet, StudentT, whose gradients come from the CDF).

    Requires: ``dist.has_rsample``; f differentiable in x almost everywhere. An f that reaches x only
    through operations without a derivative (a comparison, ``.long()``, ``round``, ``.detach()``, a
    numpy round trip) would give a gradient of exactly zero: while validation is on such an f is refused
    with an error that points to ``ScoreFunction``.
    Bias: none.

    Example:
        >>> import torch, gradest
        >>> _ = torch.manual_seed(0)
        >>> loc = torch.tensor(1.0, requires_grad=True)
        >>> s = gradest.expectation(lambda x: x**2, torch.distributions.Normal(loc, 1.0), gradest.Pathwise(), n=1000)
        >>> s.backward(); abs(loc.grad.item() - 2.0) < 0.2
        True

    References:
        Kingma & Welling (2014). Auto-Encoding Variational Bayes. ICLR. arXiv:1312.6114.
        Rezende et al. (2014). Stochastic Backpropagation and Approximate Inference in Deep Generative
        Models. ICML. arXiv:1401.4082.
        Figurnov et al. (2018). Implicit Reparameterization Gradients. NeurIPS. arXiv:1805.08498.
    """

    unbiased = True
    differentiable_f = "values"

    def check(self, dist: Distribution, n: int) -> None:
        if not dist.has_rsample:
            raise NotImplementedError(
                f"Pathwise: dist={describe(dist)} has no rsample; use ScoreFunction(), Enumerate(), "
                "ImplicitReparam() (continuous univariate families with a cdf) or GumbelSoftmax(...)."
            )
        check_parameters("Pathwise", dist)

    def draw(self, dist: Distribution, n: int) -> Draw:
        return Draw(dist.rsample((n,)), n, dist, None)


@register_default(lambda dist: dist.has_rsample)
def _pathwise(dist: Distribution, n: int) -> Estimator:
    return Pathwise()


def _has_cdf(dist: Distribution) -> bool:
    """Whether the family has a ``cdf`` whose derivative torch implements.

    ``Distribution.cdf`` raises, so a family without its own is out; so are the Gamma-based ones
    (Gamma, Chi2, InverseGamma), whose cdf is the regularised incomplete gamma function, which torch
    cannot differentiate in the concentration."""
    if isinstance(dist, TransformedDistribution):
        return all(t.bijective for t in dist.transforms) and _has_cdf(dist.base_dist)
    return type(dist).cdf is not Distribution.cdf and not isinstance(dist, Gamma)


class ImplicitReparam(Estimator):
    r"""Implicit reparameterisation from a differentiable CDF, for families without ``rsample``.

    A sample is drawn without gradient and given the derivative of the inverse CDF by the implicit
    function theorem applied to :math:`F_\theta(x) = u`:

    .. math::
        \frac{\mathrm{d}x}{\mathrm{d}\theta} = -\frac{\nabla_\theta F_\theta(x)}{p_\theta(x)},
        \qquad
        \nabla_\theta \mathbb{E}[f(x)] \approx \frac{1}{n}\sum_i f'(x_i)\,\frac{\mathrm{d}x_i}{\mathrm{d}\theta}

    The sample enters ``f`` as ``straight_through(x, -F_θ(x) / ⊥p_θ(x))``: value x, gradient above.

    Requires: a univariate continuous family (``event_shape == ()``, or ``Independent`` of one) with
    ``cdf`` and ``log_prob`` differentiable in θ; f differentiable in x.
    Bias: none.

    Note:
        First derivatives only: second derivatives of the implicit map are not propagated.

    Example:
        >>> import torch, gradest
        >>> _ = torch.manual_seed(0)
        >>> loc, scale = torch.tensor(1.0, requires_grad=True), torch.tensor(2.0, requires_grad=True)
        >>> dist = torch.distributions.Laplace(loc, scale)
        >>> s = gradest.expectation(lambda x: x, dist, gradest.ImplicitReparam(), n=100)
        >>> s.backward(); round(loc.grad.item(), 4)     # dx/dloc = 1 for every sample
        1.0

    References:
        Figurnov et al. (2018). Implicit Reparameterization Gradients. NeurIPS. arXiv:1805.08498.
    """

    unbiased = True
    differentiable_f = "values"

    def check(self, dist: Distribution, n: int) -> None:
        base = leaf(dist)
        if base.event_shape != torch.Size([]) or not _has_cdf(base) or base.has_enumerate_support:
            fix = "Use Pathwise() when dist.has_rsample, else ScoreFunction()."
            if isinstance(base, Gamma) or (isinstance(base, TransformedDistribution) and dist.has_rsample):
                fix = (f"torch cannot differentiate the cdf of {type(base).__name__} in all its parameters, but "
                       "the family has rsample with implicit gradients: use Pathwise().")
            raise NotImplementedError(
                f"ImplicitReparam: dist={describe(dist)} is not a univariate continuous family with a "
                "differentiable cdf; it supports e.g. Normal, Laplace, Exponential, Uniform, Cauchy, Gumbel, "
                f"Weibull (and Independent of these). {fix}"
            )
        check_parameters("ImplicitReparam", dist)

    def draw(self, dist: Distribution, n: int) -> Draw:
        base = leaf(dist)
        x = base.sample((n,))
        density = torch.exp(base.log_prob(x))
        value = straight_through(x, -base.cdf(x) / stop_gradient(density))
        return Draw(value, n, dist, None)
