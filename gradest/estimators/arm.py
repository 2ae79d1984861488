r"""Antithetic estimators for Bernoulli latents: ARM and DisARM.

Both draw n antithetic pairs from one uniform vector u each, :math:`b = 1[u < \sigma(\phi)]` and
:math:`\tilde b = 1[1 - u < \sigma(\phi)]` (each an exact sample of the Bernoulli), evaluate f at all
2n points, and give an unbiased gradient with respect to the logits φ. The gradient enters the
surrogate as a zero-valued term ``straight_through(0, mean_i Σ_j g_ij φ_j)`` with g computed from the
(stopped) costs, so it reaches the logits and from there, by the chain rule, whatever produced them
(an encoder, or ``probs`` when the distribution was built from probabilities).

The per-pair coefficients are never materialised as a ``[n, *B, *R]`` tensor times the costs: each
rule writes its term as (a per-pair number) × Σ_j (a per-coordinate factor)·φ_j, the factor is
multiplied into the logits once and summed, and the per-pair costs scale the sum. This is the same
arithmetic a hand-written surrogate does, with two fewer passes over the latents.

References:
    Yin & Zhou (2019). ARM: Augment-REINFORCE-Merge Gradient for Stochastic Binary Networks. ICLR.
    arXiv:1807.11143.
    Dong et al. (2020). DisARM: An Antithetic Gradient Estimator for Binary Latent Variables.
    NeurIPS. arXiv:2006.10680.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.distributions import Bernoulli, Distribution

from gradest._validation import describe
from gradest.estimators._families import check_parameters, event_dims, leaf, logits, sum_last
from gradest.estimators.base import Draw, Estimator
from gradest.surrogate import stop_gradient, straight_through

__all__ = ["ARM", "DisARM", "AntitheticDraw"]


@dataclass(frozen=True, eq=False)
class AntitheticDraw(Draw):
    """ARM's and DisARM's record: ``points`` is ``[b_1..b_n, b̃_1..b̃_n]`` (the n samples b are the
    values, their antithetic partners b̃ the auxiliary points), from the uniforms ``u`` ``[n, *B, *R]``
    and the probabilities σ(φ) (``probs``, stopped)."""

    u: Tensor
    probs: Tensor


class _Antithetic(Estimator):
    """Shared draw and correction of ARM and DisARM; subclasses give the per-pair term."""

    families = (Bernoulli,)
    auxiliary_points = True
    has_correction = True

    def check(self, dist: Distribution, n: int) -> None:
        name = type(self).__name__
        if not isinstance(leaf(dist), self.families):
            raise NotImplementedError(
                f"{name}: dist={describe(dist)} is not Bernoulli; {name} supports Bernoulli and "
                "Independent(Bernoulli) only. For categorical families use REBAR(...), RELAX(...), "
                "UnorderedSet(k) or ScoreFunction(LeaveOneOut()); for continuous ones Pathwise()."
            )
        check_parameters(name, dist)

    def draw(self, dist: Distribution, n: int) -> AntitheticDraw:
        inner = leaf(dist)
        ell = stop_gradient(logits(inner))
        # torch.rand may return exactly 0, which is harmless here (b = 1, b̃ = 0 for any p > 0): no clamp.
        u = torch.rand((n, *inner.batch_shape), dtype=ell.dtype, device=ell.device)
        probs = torch.sigmoid(ell)
        # [b_1..b_n, b̃_1..b̃_n] in one comparison: b = 1[u < σ(φ)], b̃ = 1[1 − u < σ(φ)].
        value = (torch.cat([u, 1 - u], 0) < probs).to(ell.dtype)
        return AntitheticDraw(value, n, dist, None, u, probs)

    def pair_term(self, draw: AntitheticDraw, difference: Tensor, ell: Tensor, r: int) -> Tensor:
        """Σ_j g_ij φ_j ``[n, *B]`` for each pair i, from ``difference = f(b) − f(b̃)`` ``[n, *B]``
        (stopped) and the logits ``[*B, *R]`` (differentiable); R: the ``r`` event dims."""
        raise NotImplementedError

    def correction(self, draw: AntitheticDraw, cost: Tensor) -> Tensor:  # type: ignore[override]
        """From the (stopped) costs ``[2n, *B]`` at the samples and their partners: the partners' half of
        the estimate, ``(f(b̃) − f(b))/2`` per pair, so that the value is the mean over all 2n exact
        samples (parameters inside f receive ∇f(b), unbiased), plus the zero-valued gradient term for the
        logits, the mean over the pairs ``[1, *B]``."""
        inner = leaf(draw.dist)
        n = draw.n
        c = stop_gradient(cost)
        term = self.pair_term(draw, c[:n] - c[n:], logits(inner), event_dims(draw.dist, inner))
        if n > 1:
            term = term.mean(0, keepdim=True)
        return 0.5 * (c[n:] - c[:n]) + straight_through(0.0, term)


class ARM(_Antithetic):
    r"""Augment-REINFORCE-Merge: an antithetic, self-baselined gradient for Bernoulli logits.

    .. math::
        b = 1[u < \sigma(\phi)],\; \tilde b = 1[1 - u < \sigma(\phi)],\; u \sim U(0, 1)^d, \qquad
        \hat g_\phi = \frac1n \sum_{i=1}^n \bigl(f(\tilde b_i) - f(b_i)\bigr)\bigl(u_i - \tfrac12\bigr)

    f is called on the 2n points ``[b_1..b_n, b̃_1..b̃_n]`` (``[2n, *B, *E]``), each an exact sample,
    so the surrogate's value is their mean. In a :class:`~gradest.Graph` the node's samples are the n
    b's, and the costs at the partners b̃ are computed by replaying the operations on them. One uniform
    vector drives all d coordinates of
    ``Independent(Bernoulli)``, which makes this the multivariate ARM (f may couple the coordinates).

    Requires: ``dist`` is Bernoulli or Independent(Bernoulli), from ``logits`` or ``probs``; f need
    not be differentiable in b.
    Bias: none. Variance: at least that of DisARM, coordinate by coordinate.

    Note:
        First derivatives only: the estimator's own gradient with respect to θ is not propagated.

    Example:
        >>> import torch, gradest
        >>> _ = torch.manual_seed(0)
        >>> logits = torch.zeros(3, requires_grad=True)
        >>> dist = torch.distributions.Independent(torch.distributions.Bernoulli(logits=logits), 1)
        >>> s = gradest.expectation(lambda b: (b.sum(-1) - 1.5) ** 2, dist, gradest.ARM(), n=4)
        >>> s.backward(); logits.grad.shape
        torch.Size([3])

    References:
        Yin & Zhou (2019). ARM: Augment-REINFORCE-Merge Gradient for Stochastic Binary Networks.
        ICLR. arXiv:1807.11143.
    """

    unbiased = True

    def pair_term(self, draw: AntitheticDraw, difference: Tensor, ell: Tensor, r: int) -> Tensor:
        # g_ij = −(f(b_i) − f(b̃_i))(u_ij − ½)
        return -difference * sum_last((draw.u - 0.5) * ell, r)


class DisARM(_Antithetic):
    r"""DisARM: ARM with the continuous augmentation integrated out; lower variance at the same cost.

    .. math::
        \hat g_{\phi_j} = \frac1n \sum_{i=1}^n \tfrac12\bigl(f(b_i) - f(\tilde b_i)\bigr)
        (-1)^{\tilde b_{ij}}\, 1[b_{ij} \ne \tilde b_{ij}]\, \sigma(|\phi_j|)

    with the antithetic pairs of :class:`ARM`. It is ARM's conditional expectation given (b, b̃), so
    its variance is no larger in any coordinate; in one dimension at p = ½ it is exactly zero. For
    bits, :math:`(-1)^{\tilde b}\, 1[b \ne \tilde b] = b - \tilde b`, and
    :math:`\sigma(|\phi|) = \max(\sigma(\phi), 1 - \sigma(\phi))`, which is how it is computed.

    Requires: ``dist`` is Bernoulli or Independent(Bernoulli), from ``logits`` or ``probs``; f need
    not be differentiable in b.
    Bias: none.

    Note:
        First derivatives only: the estimator's own gradient with respect to θ is not propagated.

    Example:
        >>> import torch, gradest
        >>> _ = torch.manual_seed(0)
        >>> logits = torch.zeros(3, requires_grad=True)
        >>> dist = torch.distributions.Independent(torch.distributions.Bernoulli(logits=logits), 1)
        >>> s = gradest.expectation(lambda b: (b.sum(-1) - 1.5) ** 2, dist, gradest.DisARM(), n=4)
        >>> s.backward(); logits.grad.shape
        torch.Size([3])

    References:
        Dong et al. (2020). DisARM: An Antithetic Gradient Estimator for Binary Latent Variables.
        NeurIPS. arXiv:2006.10680.
    """

    unbiased = True

    def pair_term(self, draw: AntitheticDraw, difference: Tensor, ell: Tensor, r: int) -> Tensor:
        b, b_anti = draw.values, draw.auxiliary
        weight = torch.maximum(draw.probs, 1 - draw.probs)  # σ(|φ|)
        return (0.5 * difference) * sum_last((b - b_anti) * weight * ell, r)
