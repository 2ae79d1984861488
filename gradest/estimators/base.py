"""The estimator contract: ``check`` the arguments, ``draw`` the points, build the ``surrogate``.

Every estimator answers three questions, in this order:

1. ``check(dist, n)``: can this rule handle this family and sample count? Raise the documented error.
2. ``draw(dist, n)``: where must the cost ``f`` be evaluated? A :class:`Draw` holds the points
   ``value`` of shape ``[m, *B, *E]`` (``m = n`` for Monte Carlo rules, the support size for
   enumeration) and whatever the rule needs later (log-probabilities, noise, relaxed copies).
3. ``surrogate(draw, cost)``: combine the costs ``[m, *B]`` into a tensor of shape ``[*B]`` whose value
   is the estimate of E[f] and whose gradient is the estimator; it is built from ``weight``,
   ``correction`` and ``reduce`` (see :class:`Estimator`), which a graph composes across nodes.

:func:`gradest.expectation` makes these three calls; so does every node of a graph.
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

from torch import Tensor, nn
from torch.distributions import Distribution

__all__ = ["Draw", "Estimator", "default_for"]


class Draw(NamedTuple):
    """Where an estimator wants the cost evaluated, and what it needs to combine the costs.

    Attributes:
        value: ``[m, *B, *E]`` the points f is evaluated at.
        log_prob: ``[m, *B]`` log-probabilities for score terms, or None for purely pathwise rules.
        dist: the distribution the points came from (baselines and control variates may read it).
        extra: rule-specific tensors (noise, antithetic partners, relaxed copies, weights ...).
    """

    value: Tensor
    log_prob: Tensor | None
    dist: Distribution
    extra: dict[str, Tensor]


class Estimator(nn.Module):
    r"""Base class of gradient estimators.

    A rule is given by ``check`` and ``draw`` and three small pieces that say how the costs at the
    drawn points become a surrogate. For one node (``expectation``) they combine as

    .. math:: s = \mathrm{reduce}\bigl(\mathrm{weight}\cdot \mathrm{cost} + \mathrm{correction}(\mathrm{cost})\bigr)

    and a ``Graph`` multiplies each cost by the weights of every node it depends on, adds each
    node's correction computed from the costs downstream of it, and reduces over every node's
    sample dimension (``graph/compose.py``). So each rule has exactly one implementation.

    - ``weight(draw)``: ``[m, *B]`` multiplicative weight of the costs, or None for 1. Its value is 1
      for Monte Carlo rules (a DiCE magic box carrying the score) and p(x) for enumeration.
    - ``correction(draw, cost)``: ``[m, *B]`` zero-valued additive term (baselines, control variates,
      auxiliary losses), or None.
    - ``reduce(draw, x)``: ``[m, ...] -> [...]`` over the node's sample dimension: a mean for Monte
      Carlo rules, a sum for enumeration.

    Estimators are ``nn.Module``s even when stateless, so state nests (a baseline's running mean is
    in ``state_dict()``), moves with ``.to(device)`` and joins a user's model through ``add_module``.
    """

    unbiased: ClassVar[bool] = True
    """A claim that the test registry checks against exact gradients."""

    elementwise: ClassVar[bool] = False
    """Whether the rule needs each cost element to depend only on its own batch element of the
    distribution (it varies all batch elements at once along its sample dimension, as enumeration
    and measure-valued perturbations do). A Graph refuses costs that reduce such a node's batch."""

    def check(self, dist: Distribution, n: int) -> None:
        """Raise ``NotImplementedError``/``ValueError`` if this rule cannot handle ``dist`` with ``n``."""

    def draw(self, dist: Distribution, n: int) -> Draw:
        raise NotImplementedError(f"{type(self).__name__} does not implement draw()")

    def weight(self, draw: Draw) -> Tensor | None:
        """Multiplicative weight ``[m, *B]`` of the costs at the drawn points (None: 1)."""
        return None

    def correction(self, draw: Draw, cost: Tensor) -> Tensor | None:
        """Zero-valued additive term, broadcastable to ``[m, *B]``, built from the costs (None: nothing)."""
        return None

    def reduce(self, draw: Draw, x: Tensor) -> Tensor:
        """Reduce over the node's sample dimension (dim 0): the Monte Carlo mean."""
        return x.mean(0)

    def surrogate(self, draw: Draw, cost: Tensor) -> Tensor:
        """The one-node surrogate ``[*B]`` from the costs ``[m, *B]`` at ``draw.value``."""
        w = self.weight(draw)
        s = cost if w is None else cost * w
        c = self.correction(draw, cost)
        if c is not None:
            s = s + c
        return self.reduce(draw, s)

    def extra_repr(self) -> str:
        return ""


def default_for(dist: Distribution, n: int) -> Estimator:
    """The estimator used when none is given.

    ``Pathwise()`` when the family has ``rsample`` (lowest variance for smooth costs), else
    ``ScoreFunction(LeaveOneOut())`` when ``n > 1``, else plain ``ScoreFunction()``.
    """
    from gradest.estimators.baselines import LeaveOneOut
    from gradest.estimators.pathwise import Pathwise
    from gradest.estimators.score_function import ScoreFunction

    if dist.has_rsample:
        return Pathwise()
    if n > 1:
        return ScoreFunction(LeaveOneOut())
    return ScoreFunction()
