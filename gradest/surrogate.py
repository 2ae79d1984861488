r"""The two detach tricks every estimator is built from, and nothing else.

A *surrogate* is an ordinary tensor whose value is a Monte Carlo estimate of an expectation and whose
autograd gradient is the gradient estimator. Estimators never call ``.detach()`` themselves: they use
these primitives, so the value/gradient bookkeeping lives in one place.

References:
    Foerster et al. (2018). DiCE: The Infinitely Differentiable Monte Carlo Estimator. ICML.
    arXiv:1802.05098.
    Bengio et al. (2013). Estimating or Propagating Gradients Through Stochastic Neurons.
    arXiv:1308.3432.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["magic_box", "straight_through", "stop_gradient"]


def magic_box(log_prob: Tensor) -> Tensor:
    r"""DiCE's magic box: value exactly 1, and :math:`\nabla \boxdot(l) = \boxdot(l)\,\nabla l`.

    .. math::
        \boxdot(l) = \exp\bigl(l - \bot(l)\bigr)

    Because the derivative reproduces the box, score-function terms stay correct under repeated
    differentiation (Hessian-vector products of an expectation).

    Args:
        log_prob: ``[*S]`` log-probabilities (summed over whatever the cost depends on).

    Returns:
        ``[*S]`` tensor of ones carrying the score in its gradient.

    Example:
        >>> import torch, gradest
        >>> theta = torch.tensor(0.5, requires_grad=True)
        >>> box = gradest.magic_box(2 * theta)                  # value 1, gradient 2 · box
        >>> g, = torch.autograd.grad(box, theta, create_graph=True)
        >>> box.item(), g.item(), torch.autograd.grad(g, theta)[0].item()   # the second derivative: 2² · box
        (1.0, 2.0, 4.0)
    """
    return torch.exp(log_prob - log_prob.detach())


def straight_through(hard: Tensor | float, soft: Tensor) -> Tensor:
    r"""A tensor with the value of ``hard`` and the gradient of ``soft``.

    .. math::
        \mathrm{st}(h, s) = \bot(h) + \bigl(s - \bot(s)\bigr)

    The value is ``hard`` exactly (``s - ⊥(s)`` is exactly zero), not ``s + (h - s)``, which rounds.
    Use it for any non-differentiable operation (round, sign, argmax, quantisation). An auxiliary
    objective enters a surrogate as ``straight_through(0.0, aux)``: the value is unchanged and one
    ``backward()`` also trains the auxiliary model.

    Bias: the gradient is that of ``soft``; it equals the true gradient only where ``hard`` and ``soft``
    agree to first order (e.g. straight-through estimators are exact for costs linear in the sample).

    Example:
        >>> import torch, gradest
        >>> x = torch.tensor([0.2, 0.7], requires_grad=True)
        >>> y = gradest.straight_through(x.round(), 3 * x)      # the value of round(x), the gradient of 3x
        >>> y.sum().backward(); y.tolist(), x.grad.tolist()
        ([0.0, 1.0], [3.0, 3.0])
    """
    if not isinstance(hard, Tensor):  # a number; 0 (an auxiliary objective) needs no addition
        return soft - soft.detach() + hard if hard else soft - soft.detach()
    return hard.detach() + (soft - soft.detach())


def stop_gradient(x: Tensor) -> Tensor:
    """The value of ``x`` with no gradient: targets of auxiliary regressions, baseline statistics."""
    return x.detach()
