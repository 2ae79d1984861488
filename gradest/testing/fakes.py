"""Testing fakes: distributions with their reparameterisation hidden, and a baseline that is wrong on purpose.

The ``Nonreparameterized*`` families are the same model, with the same densities and CDFs, but
``has_rsample = False`` and ``rsample`` raises, as in Pyro's testing fakes. Use them to test
``ImplicitReparam`` and default-estimator selection.

``SelfInclusiveMean`` is a *deliberately biased* baseline. A statistical test suite must be able to
catch it; that is its only use.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Exponential, Laplace, Normal

from gradest.estimators.base import Draw
from gradest.estimators.baselines import Baseline
from gradest.surrogate import stop_gradient

__all__ = [
    "NonreparameterizedNormal",
    "NonreparameterizedLaplace",
    "NonreparameterizedExponential",
    "SelfInclusiveMean",
]


_NO_SHAPE = torch.Size()


def _hide_rsample(cls: type) -> type:
    def rsample(self, sample_shape=_NO_SHAPE):  # noqa: ANN001, ANN202
        raise NotImplementedError(f"{type(self).__name__} hides rsample on purpose (a testing fake).")

    def sample(self, sample_shape=_NO_SHAPE):  # noqa: ANN001, ANN202
        with torch.no_grad():
            return cls.rsample(self, sample_shape)

    name = f"Nonreparameterized{cls.__name__}"
    namespace = {"has_rsample": False, "rsample": rsample, "sample": sample, "__module__": __name__}
    return type(name, (cls,), namespace)


NonreparameterizedNormal = _hide_rsample(Normal)
NonreparameterizedLaplace = _hide_rsample(Laplace)
NonreparameterizedExponential = _hide_rsample(Exponential)


class SelfInclusiveMean(Baseline):
    r"""WRONG ON PURPOSE: each sample's baseline is the mean of all n costs, its own cost included.

    .. math::
        b_i = \frac1n \sum_{j=1}^n f(x_j), \qquad
        \mathbb{E}\Bigl[\tfrac1n \textstyle\sum_i (f_i - b_i)\nabla\log p(x_i)\Bigr]
        = \frac{n-1}{n}\,\nabla_\theta \mathbb{E}[f]

    Because b_i depends on x_i, the score-function gradient is shrunk by (n − 1)/n (by 1/4 with n = 4).
    This is the classic mistake that ``LeaveOneOut`` avoids. It exists so the test suite can check that
    its unbiasedness harness has the power to catch a realistic bug: never use it to train anything.

    Bias: the gradient is ``(n − 1)/n`` times the true one (zero for n = 1).

    Example:
        The power case of a test: the harness must reject a gradient shrunk to 3/4 (0.1875, not 0.25).

        >>> import torch, gradest
        >>> from gradest.testing import SelfInclusiveMean, assert_unbiased
        >>> def gradient():
        ...     logits = torch.zeros(3, requires_grad=True)
        ...     dist = torch.distributions.Bernoulli(logits=logits)
        ...     s = gradest.expectation(lambda x: x, dist, gradest.ScoreFunction(SelfInclusiveMean()), n=4)
        ...     return torch.autograd.grad(s.sum(), logits)[0]
        >>> _ = torch.manual_seed(0)
        >>> assert_unbiased(torch.stack([gradient() for _ in range(500)]), torch.full((3,), 0.25))
        Traceback (most recent call last):
        AssertionError: biased at [0, 1, 2]: ...
    """

    def forward(self, draw: Draw, cost: Tensor) -> Tensor:
        return stop_gradient(cost).mean(0, keepdim=True)
