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

import torch
from torch import Tensor
from torch.distributions import Bernoulli, Distribution

from gradest._validation import describe
from gradest.estimators.base import Draw, Estimator
from gradest.estimators.relaxed import _event_dims, _leaf, _logits, _sum_last
from gradest.surrogate import stop_gradient, straight_through

__all__ = ["ARM", "DisARM"]


class _Antithetic(Estimator):
    """Shared draw and correction of ARM and DisARM; subclasses give the per-pair term."""

    def check(self, dist: Distribution, n: int) -> None:
        name = type(self).__name__
        if not isinstance(_leaf(dist), Bernoulli):
            raise NotImplementedError(
                f"{name}: dist={describe(dist)} is not Bernoulli; {name} supports Bernoulli and "
                "Independent(Bernoulli) only. For categorical families use REBAR(...), RELAX(...), "
                "UnorderedSet(k) or ScoreFunction(LeaveOneOut()); for continuous ones Pathwise()."
            )

    def draw(self, dist: Distribution, n: int) -> Draw:
        leaf = _leaf(dist)
        logits = stop_gradient(_logits(leaf))
        # torch.rand may return exactly 0, which is harmless here (b = 1, b̃ = 0 for any p > 0): no clamp.
        u = torch.rand((n, *leaf.batch_shape), dtype=logits.dtype, device=logits.device)
        probs = torch.sigmoid(logits)
        # [b_1..b_n, b̃_1..b̃_n] in one comparison: b = 1[u < σ(φ)], b̃ = 1[1 − u < σ(φ)].
        value = (torch.cat([u, 1 - u], 0) < probs).to(logits.dtype)
        return Draw(value, None, dist, {"u": u, "probs": probs})

    def pair_term(self, draw: Draw, difference: Tensor, logits: Tensor, r: int) -> Tensor:
        """Σ_j g_ij φ_j ``[n, *B]`` for each pair i, from ``difference = f(b) − f(b̃)`` ``[n, *B]``
        (stopped) and the logits ``[*B, *R]`` (differentiable); R: the ``r`` event dims."""
        raise NotImplementedError

    def correction(self, draw: Draw, cost: Tensor) -> Tensor:
        leaf = _leaf(draw.dist)
        n = draw.extra["u"].shape[0]
        c = stop_gradient(cost)
        term = self.pair_term(draw, c[:n] - c[n:], _logits(leaf), _event_dims(draw.dist, leaf))
        if n > 1:
            term = term.mean(0, keepdim=True)
        # [1, *B]: the mean over the n pairs, broadcast over all 2n rows, so their mean keeps it.
        return straight_through(0.0, term)


class ARM(_Antithetic):
    r"""Augment-REINFORCE-Merge: an antithetic, self-baselined gradient for Bernoulli logits.

    .. math::
        b = 1[u < \sigma(\phi)],\; \tilde b = 1[1 - u < \sigma(\phi)],\; u \sim U(0, 1)^d, \qquad
        \hat g_\phi = \frac1n \sum_{i=1}^n \bigl(f(\tilde b_i) - f(b_i)\bigr)\bigl(u_i - \tfrac12\bigr)

    f is called on the 2n points ``[b_1..b_n, b̃_1..b̃_n]`` (``[2n, *B, *E]``), each an exact sample,
    so the surrogate's value is their mean. One uniform vector drives all d coordinates of
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

    def pair_term(self, draw: Draw, difference: Tensor, logits: Tensor, r: int) -> Tensor:
        # g_ij = −(f(b_i) − f(b̃_i))(u_ij − ½)
        return -difference * _sum_last((draw.extra["u"] - 0.5) * logits, r)


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

    def pair_term(self, draw: Draw, difference: Tensor, logits: Tensor, r: int) -> Tensor:
        n = difference.shape[0]
        b, b_anti = draw.value[:n], draw.value[n:]
        probs = draw.extra["probs"]
        weight = torch.maximum(probs, 1 - probs)  # σ(|φ|)
        return (0.5 * difference) * _sum_last((b - b_anti) * weight * logits, r)
