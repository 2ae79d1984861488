"""The likelihood-ratio (REINFORCE) estimator."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor
from torch.distributions import Distribution

from gradest.estimators._families import check_parameters, sample_with_log_prob
from gradest.estimators.base import Draw, Estimator, register_default
from gradest.estimators.baselines import Baseline, LeaveOneOut
from gradest.surrogate import magic_box

__all__ = ["ScoreFunction", "ScoreDraw"]


@dataclass(frozen=True, eq=False)
class ScoreDraw(Draw):
    """n samples (``points``), their ``log_prob`` ``[n, *B]``, and DiCE's magic box of it."""

    log_prob: Tensor
    box: Tensor


class ScoreFunction(Estimator):
    r"""Likelihood-ratio (REINFORCE) gradient with an optional baseline.

    .. math::
        \nabla_\theta \mathbb{E}[f(x)] \approx \frac{1}{n}\sum_{i=1}^n
        \bigl(f(x_i) - b_i\bigr)\nabla_\theta \log p_\theta(x_i) + \nabla_\theta f(x_i)

    The surrogate is ``mean_i(f_i·□(log p_i) + (1 − □(log p_i))·b_i)`` with DiCE's magic box □, so its
    value is the plain Monte Carlo mean and repeated differentiation gives unbiased higher derivatives.

    Requires: ``dist.log_prob`` differentiable in θ; f need not be differentiable (or even continuous)
    in x. Works for every family, discrete or continuous. f must map each sample to its own cost: an f
    that mixes the samples (``x.mean(0)``, a normalisation over dim 0) makes every cost depend on every
    sample, which no check can see cheaply, and biases the estimate (with ``LeaveOneOut()`` to exactly
    zero). Parameters of exactly 0 or 1 probability (``probs``) are refused: the gradient there depends
    on the outcome that is never drawn (use ``Enumerate()``, or logits, where −inf masks a category).
    Bias: none, provided b_i does not depend on x_i (every baseline in gradest guarantees this).

    Args:
        baseline: a :class:`~gradest.Baseline` (``Constant``, ``MovingAverage``, ``LeaveOneOut``,
            ``OptimalConstant``, ``Critic``, ``ControlVariate``) or None.

    Example:
        >>> import torch, gradest
        >>> _ = torch.manual_seed(0)
        >>> logits = torch.zeros(3, requires_grad=True)
        >>> est = gradest.ScoreFunction(gradest.LeaveOneOut())
        >>> s = gradest.expectation(lambda x: x.float(), torch.distributions.Categorical(logits=logits), est, n=8)
        >>> s.shape
        torch.Size([])

    References:
        Williams (1992). Simple Statistical Gradient-Following Algorithms for Connectionist
        Reinforcement Learning. Machine Learning 8.
        Mohamed et al. (2020). Monte Carlo Gradient Estimation in Machine Learning. JMLR.
        arXiv:1906.10652.
        Foerster et al. (2018). DiCE: The Infinitely Differentiable Monte Carlo Estimator. ICML.
        arXiv:1802.05098.
    """

    unbiased = True

    @property
    def has_correction(self) -> bool:  # type: ignore[override]
        return self.baseline is not None

    def __init__(self, baseline: Baseline | None = None) -> None:
        super().__init__()
        if baseline is not None and not isinstance(baseline, Baseline):
            raise TypeError(
                f"ScoreFunction: baseline={baseline!r} is not a gradest baseline; use Constant(b), "
                "MovingAverage(decay), LeaveOneOut(), OptimalConstant(), Critic(module) or "
                "ControlVariate(g, mean_of_g)."
            )
        self.baseline = baseline

    def check(self, dist: Distribution, n: int) -> None:
        check_parameters("ScoreFunction", dist)
        if self.baseline is not None:
            self.baseline.check(dist, n)

    def draw(self, dist: Distribution, n: int) -> ScoreDraw:
        value, log_prob = sample_with_log_prob(dist, n)
        return ScoreDraw(value, n, dist, log_prob, magic_box(log_prob))

    def weight(self, draw: ScoreDraw) -> Tensor:  # type: ignore[override]
        return draw.box

    def correction(self, draw: ScoreDraw, cost: Tensor) -> Tensor | None:  # type: ignore[override]
        if self.baseline is None:
            return None
        return self.baseline.term(draw, cost, draw.box)



@register_default(lambda dist: not dist.has_rsample)
def _score_function(dist: Distribution, n: int) -> Estimator:
    return ScoreFunction(LeaveOneOut()) if n > 1 else ScoreFunction()
