r"""Measure-valued gradients: the derivative of a density as a difference of two distributions.

For a parameter θ_j, a weak derivative writes :math:`\partial_{\theta_j} p_\theta(x) = c_j\,
\bigl(p^+_j(x) - p^-_j(x)\bigr)` with probability densities :math:`p^\pm_j`, so that

.. math::
    \partial_{\theta_j} \mathbb{E}_{p_\theta}[f(x)] = c_j\,\bigl(\mathbb{E}_{p^+_j}[f] - \mathbb{E}_{p^-_j}[f]\bigr),

estimated by evaluating f at samples of :math:`p^\pm_j`. f need not be differentiable (or even
continuous). The decompositions used (Mohamed et al. 2020, §6, Table 1), for each coordinate j of a
factorised distribution (the others held at an exact sample x):

============ ========= ================================================ ======================== ==============
family       parameter :math:`p^+_j` (coordinate j)                      :math:`p^-_j`            :math:`c_j`
============ ========= ================================================ ======================== ==============
Normal       loc μ     μ + σ W, W ∼ Weibull(√2, 2) (Rayleigh)            μ − σ W                  1/(σ√(2π))
Normal       scale σ   μ + σ M, M ∼ double-sided Maxwell                 μ + σ ε (x itself)       1/σ
Bernoulli    probs p   1                                                 0                        1
Poisson      rate λ    x_j + 1                                           x_j (x itself)           1
============ ========= ================================================ ======================== ==============

References:
    Pflug (1989). Sampling Derivatives of Probabilities. Computing 42.
    Mohamed et al. (2020). Monte Carlo Gradient Estimation in Machine Learning, §6. JMLR.
    arXiv:1906.10652.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor
from torch.distributions import Bernoulli, Distribution, Normal, Poisson

from gradest._validation import describe
from gradest.estimators._families import check_parameters, event_dims, leaf, sum_last
from gradest.estimators.base import Draw, Estimator
from gradest.surrogate import stop_gradient, straight_through

__all__ = ["MeasureValued", "MeasureValuedDraw"]


@dataclass(frozen=True, eq=False)
class MeasureValuedDraw(Draw):
    """MeasureValued's record: ``points`` is the n exact samples (the values) followed by the perturbed
    copies, one block of n rows per coordinate and side (see ``MeasureValued``)."""

def _perturb(x: Tensor, new: Tensor, r: int) -> Tensor:
    """Copies of ``x`` ``[n, *B, *R]`` with one coordinate of R at a time replaced by ``new``.

    Returns ``[d·n, *B, *R]`` (d = prod(R); block j changes coordinate j only). Without event dims
    (r = 0) every batch element is replaced at once: ``new`` itself.
    """
    if r == 0:
        return new
    shape = x.shape
    d = math.prod(shape[len(shape) - r :])
    flat_x = x.reshape(*shape[: len(shape) - r], d)
    flat_new = new.reshape(flat_x.shape)
    eye = torch.eye(d, dtype=torch.bool, device=x.device).reshape(d, *[1] * (flat_x.dim() - 1), d)
    return torch.where(eye, flat_new, flat_x).reshape(d * shape[0], *shape[1:])


def _blocks(cost: Tensor, n: int, count: int, event: torch.Size) -> Tensor:
    """Rows ``n:`` of ``cost`` ``[n(1 + count·d), *B]`` as ``[count, n, *B, *R]`` (coordinate j last)."""
    d = math.prod(event)
    rows = cost[n:].reshape(count, d, n, *cost.shape[1:])
    return rows.movedim(1, -1).reshape(count, n, *cost.shape[1:], *event)


class MeasureValued(Estimator):
    r"""Measure-valued gradient via weak-derivative decompositions: Normal, Bernoulli, Poisson.

    .. math::
        \hat g_{\theta_j} = \frac1n \sum_{i=1}^n c_j\,\bigl(f(x_i^{+j}) - f(x_i^{-j})\bigr)

    where :math:`x_i^{\pm j}` is an exact sample :math:`x_i` with coordinate j replaced by a sample of
    :math:`p^\pm_j` (table in the module docstring). The gradient is taken with respect to the
    distribution's own parameters (loc and scale, probs, rate) and flows on to θ by the chain rule;
    the surrogate's value is the mean of f over the n exact samples.

    f is called once on ``[m, *B, *E]`` points, the n exact samples first: m = n(1 + 3d) for Normal
    (d = number of coordinates of ``Independent``, 1 without), n(1 + d) for Bernoulli (the flipped
    bit; the sample itself is the other side) and Poisson (x + 1). Points of a pair share their
    randomness (the ± Weibull points share W; the Maxwell point shares its first normal and its sign
    with x), which lowers the variance and keeps each side's distribution exact. In a
    :class:`~gradest.Graph` the node's samples are the n exact ones, and the costs at the perturbed
    copies are computed by replaying the operations on them.

    Requires: ``dist`` is Normal, Bernoulli or Poisson, or Independent of these (Bernoulli from
    ``logits`` or ``probs``); each cost element depends only on its own batch element's sample, as
    for every estimator in ``expectation`` (batch elements are perturbed together, so a graph cost
    that reduces over the node's batch dims is biased here: put such coordinates in the event with
    ``Independent``, where they are perturbed one at a time). f need not be differentiable.
    Bias: none.

    Note:
        First derivatives only: the estimator's own gradient with respect to θ is not propagated.

    Example:
        >>> import torch, gradest
        >>> _ = torch.manual_seed(0)
        >>> loc = torch.tensor(0.5, requires_grad=True)
        >>> dist = torch.distributions.Normal(loc, 1.0)
        >>> s = gradest.expectation(lambda x: (x > 0).double(), dist, gradest.MeasureValued(), n=20000)
        >>> s.backward(); abs(loc.grad.item() - 0.3521) < 0.02   # the N(0.5, 1) density at 0
        True

    References:
        Pflug (1989). Sampling Derivatives of Probabilities. Computing 42.
        Mohamed et al. (2020). Monte Carlo Gradient Estimation in Machine Learning, §6. JMLR.
        arXiv:1906.10652.
    """

    unbiased = True
    families = (Normal, Bernoulli, Poisson)
    elementwise = True
    auxiliary_points = True
    has_correction = True

    def check(self, dist: Distribution, n: int) -> None:
        if not isinstance(leaf(dist), self.families):
            raise NotImplementedError(
                f"MeasureValued: dist={describe(dist)} has no weak-derivative decomposition here; it "
                "supports Normal, Bernoulli and Poisson (and Independent of these). Use Pathwise() for "
                "reparameterisable families, or ScoreFunction(LeaveOneOut()) for any family."
            )
        check_parameters("MeasureValued", dist, boundary=True)  # f(x with 1) − f(x with 0) is exact at p ∈ {0, 1}

    def draw(self, dist: Distribution, n: int) -> MeasureValuedDraw:
        inner = leaf(dist)
        r = event_dims(dist, inner)
        if isinstance(inner, Normal):
            loc, scale = stop_gradient(inner.loc), stop_gradient(inner.scale)
            eps = torch.randn((3, n, *inner.batch_shape), dtype=loc.dtype, device=loc.device)
            x = loc + scale * eps[0]
            maxwell = torch.sign(eps[0]) * eps.square().sum(0).sqrt()  # ±χ₃, sharing x's normal and sign
            weibull = eps[1:].square().sum(0).sqrt()  # χ₂ = Rayleigh = Weibull(√2, 2)
            sides = [loc + scale * maxwell, loc + scale * weibull, loc - scale * weibull]
            value = torch.cat([x] + [_perturb(x, v, r) for v in sides], 0)
        elif isinstance(inner, Bernoulli):
            x = inner.sample((n,))
            value = torch.cat([x, _perturb(x, 1 - x, r)], 0)
        else:
            x = inner.sample((n,))
            value = torch.cat([x, _perturb(x, x + 1, r)], 0)
        return MeasureValuedDraw(value, n, dist, None)

    def correction(self, draw: MeasureValuedDraw, cost: Tensor) -> Tensor:  # type: ignore[override]
        """The zero-valued gradient term ``[n, *B]`` from the (stopped) costs at every point."""
        dist, x, n = draw.dist, draw.values, draw.n
        inner = leaf(dist)
        r = event_dims(dist, inner)
        event = inner.batch_shape[len(inner.batch_shape) - r :]
        c = stop_gradient(cost)
        here = c[:n].reshape(c[:n].shape + (1,) * r)  # f at the exact samples, [n, *B, 1...]
        if isinstance(inner, Normal):
            maxwell, plus, minus = _blocks(c, n, 3, event)
            scale = stop_gradient(inner.scale)
            g_scale = (maxwell - here) / scale
            g_loc = (plus - minus) / (scale * math.sqrt(2 * math.pi))
            term = sum_last(g_loc * inner.loc + g_scale * inner.scale, r)
        elif isinstance(inner, Bernoulli):
            (flipped,) = _blocks(c, n, 1, event)
            g_probs = (1 - 2 * x) * (flipped - here)  # f(x with x_j = 1) − f(x with x_j = 0)
            term = sum_last(g_probs * inner.probs, r)
        else:
            (up,) = _blocks(c, n, 1, event)
            term = sum_last((up - here) * cast(Poisson, inner).rate, r)
        return straight_through(0.0, term)
