"""Exact expectation by summing over a small discrete support."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.distributions import Bernoulli, Categorical, Distribution, Independent, OneHotCategorical

from gradest._validation import describe
from gradest.estimators._families import categorical, check_parameters, event_dims, leaf, support_size
from gradest.estimators.base import Draw, Estimator

__all__ = ["Enumerate", "EnumerateDraw"]


@dataclass(frozen=True, eq=False)
class EnumerateDraw(Draw):
    """The support ``[K, *B, *E]`` (``points``, all of them values); the probability of each point and
    its logarithm ``[K, *B]``, differentiable in θ, are computed when first read (a graph that
    eliminates the node reads only the logarithm)."""

    @functools.cached_property
    def probs(self) -> Tensor:
        return _probabilities(self.dist, self.points)

    @functools.cached_property
    def log_probs(self) -> Tensor:
        return _log_probabilities(self.dist, self.points)


def _probabilities(dist: Distribution, value: Tensor) -> Tensor:
    """p(x) ``[K, *B]`` at the support points ``value``.

    For Bernoulli and categorical leaves it is read off the probabilities themselves (p or 1 − p, a
    gathered probability), not as ``exp(log_prob)``: the gradient is then exact at p ∈ {0, 1} too (the
    cost difference), where ``log_prob`` goes through clamped logits and gives zero. Other families
    use ``exp(log_prob)``.
    """
    inner = leaf(dist)
    r = event_dims(dist, inner)
    if isinstance(inner, Bernoulli):
        p = inner.probs
        per = torch.where(value > 0.5, p, 1 - p)  # bits [K, *B, *R]
    elif isinstance(inner, (Categorical, OneHotCategorical)):
        p = categorical(inner).probs  # [*B, *R, C]
        index = value.argmax(-1) if isinstance(inner, OneHotCategorical) else value
        per = p.expand(index.shape + p.shape[-1:]).gather(-1, index.unsqueeze(-1)).squeeze(-1)
    else:
        return torch.exp(dist.log_prob(value))
    for _ in range(r):
        per = per.prod(-1)
    return per


def _log_probabilities(dist: Distribution, value: Tensor) -> Tensor:
    """log p(x) ``[K, *B]`` at the support points, in log space (Bernoulli: −softplus(∓ℓ); categorical:
    the normalised logits gathered), so that a long product of them never underflows."""
    inner = leaf(dist)
    r = event_dims(dist, inner)
    if isinstance(inner, Bernoulli):
        ell = inner.logits
        per = torch.where(value > 0.5, -torch.nn.functional.softplus(-ell), -torch.nn.functional.softplus(ell))
    elif isinstance(inner, (Categorical, OneHotCategorical)):
        logits = categorical(inner).logits  # normalised
        index = value.argmax(-1) if isinstance(inner, OneHotCategorical) else value
        per = logits.expand(index.shape + logits.shape[-1:]).gather(-1, index.unsqueeze(-1)).squeeze(-1)
    else:
        return dist.log_prob(value)
    for _ in range(r):
        per = per.sum(-1)
    return per


def _joint_support(dist: Independent) -> Tensor:
    """``[K^m, *B, *R, *E]``: every joint configuration of the reinterpreted dimensions R."""
    base = dist.base_dist
    r = dist.reinterpreted_batch_ndims
    inner = base.batch_shape[len(base.batch_shape) - r :]
    support = base.enumerate_support(expand=False)  # [K, 1, ..., 1, *E]
    k = support.shape[0]
    flat = support.reshape(k, *base.event_shape)  # the support of one element
    m = math.prod(inner)
    idx = torch.cartesian_prod(*[torch.arange(k, device=support.device)] * m) if m > 1 else (
        torch.arange(k, device=support.device).unsqueeze(-1)
    )
    joint = flat[idx].reshape(k**m, *[1] * len(dist.batch_shape), *inner, *base.event_shape)
    return joint.expand(k**m, *dist.batch_shape, *inner, *base.event_shape)


class Enumerate(Estimator):
    r"""Exact expectation and gradient by summing over the whole support.

    .. math::
        \mathbb{E}_{p_\theta}[f(x)] = \sum_{x \in \mathcal{X}} p_\theta(x)\, f(x), \qquad
        \nabla_\theta \mathbb{E} = \sum_x \bigl(f(x)\nabla_\theta p_\theta(x) + p_\theta(x)\nabla_\theta f(x)\bigr)

    ``f`` is called once on all support points, ``[|X|, *B, *E]``. For ``Independent`` families the
    support is the joint one, ``K^m`` points for m independent K-way variables; beyond ``budget``
    points a ``ValueError`` says so before any work — or, with ``fallback``, the node is estimated by
    the rule you name there. ``n`` is ignored: the sum is exact.

    In a :class:`~gradest.Graph` an enumerated node is *eliminated*: the graph sums it out by variable
    elimination over the factors it shares with other enumerated nodes (a forward pass along a
    ``Graph.markov`` chain; a min-fill order otherwise), never over the joint support of all of them,
    and with ``Graph.observe`` it marginalises observations inside the log (see ``Graph``).

    Requires: ``dist.has_enumerate_support`` (Bernoulli, Categorical, OneHotCategorical, Binomial ...),
    with the same support for every batch element. Probabilities of exactly 0 or 1 are fine: the
    weights are the probabilities themselves, so the gradient there is exact (the cost difference).
    Bias: none; variance: zero.

    Args:
        budget: the largest number of support points (per batch element) to enumerate.
        fallback: an estimator used instead when the support exceeds ``budget`` (or, in a graph, when
            the node's factor would exceed ``Graph(enumerate_budget=...)``), e.g.
            ``ScoreFunction(LeaveOneOut())``; with None (the default) that is an error. The node then
            is that estimator's (``graph.nodes[i].estimator`` says which), never a silent approximation.

    Example:
        >>> import torch, gradest
        >>> logits = torch.zeros(3, requires_grad=True)
        >>> table = torch.tensor([1.0, 2.0, 4.0])
        >>> s = gradest.expectation(lambda k: table[k], torch.distributions.Categorical(logits=logits),
        ...                         gradest.Enumerate())
        >>> round(s.item(), 4)   # (1 + 2 + 4) / 3, exactly
        2.3333

    References:
        Mohamed et al. (2020). Monte Carlo Gradient Estimation in Machine Learning. JMLR.
        arXiv:1906.10652.
        Obermeyer et al. (2019). Tensor Variable Elimination for Plated Factor Graphs. ICML.
        arXiv:1902.03210.
    """

    unbiased = True
    elementwise = True
    reduction = "sum"
    shares_sample_dim = False
    eliminable = True

    def __init__(self, *, budget: int = 2**16, fallback: Estimator | None = None) -> None:
        super().__init__()
        if isinstance(budget, bool) or not isinstance(budget, int):
            raise TypeError(f"Enumerate: budget={budget!r} must be an int; 65536 is the default.")
        if budget < 1:
            raise ValueError(f"Enumerate: budget={budget} must be >= 1; 65536 is the default.")
        if fallback is not None and (not isinstance(fallback, Estimator) or isinstance(fallback, Enumerate)):
            raise TypeError(
                f"Enumerate: fallback={fallback!r} must be a sampling estimator used where the support is too "
                "large to enumerate, e.g. gradest.ScoreFunction(gradest.LeaveOneOut())."
            )
        self.budget = budget
        self.fallback = fallback

    def delegate(self, dist: Distribution, n: int, *, too_large: bool = False) -> Estimator:
        """``self``, or ``fallback`` when the support is over ``budget`` (or, ``too_large``, the node's factor
        is over its graph's budget) and a fallback was named."""
        if self.fallback is None or not leaf(dist).has_enumerate_support:
            return self
        return self.fallback if too_large or support_size(dist) > self.budget else self

    def check(self, dist: Distribution, n: int) -> None:
        base = leaf(dist)
        if not base.has_enumerate_support:
            raise NotImplementedError(
                f"Enumerate: dist={describe(dist)} has no enumerable support; it supports Bernoulli, "
                "Categorical, OneHotCategorical, Binomial (and Independent of these). "
                "Use ScoreFunction(...) or a relaxation instead."
            )
        size = support_size(dist)
        if size > self.budget:
            raise ValueError(
                f"Enumerate: dist={describe(dist)} has {size} joint support points, over "
                f"budget={self.budget}; raise Enumerate(budget=...) if memory allows, or name a sampling "
                "estimator for such nodes: Enumerate(fallback=ScoreFunction(LeaveOneOut())) with n >= 2."
            )

        check_parameters("Enumerate", dist, boundary=True)

    def draw(self, dist: Distribution, n: int) -> EnumerateDraw:
        value = _joint_support(dist) if isinstance(dist, Independent) else dist.enumerate_support(expand=True)
        return EnumerateDraw(value, value.shape[0], dist, None)

    def weight(self, draw: EnumerateDraw) -> Tensor:  # type: ignore[override]
        return draw.probs

    def extra_repr(self) -> str:
        return f"budget={self.budget}" + ("" if self.fallback is None else ", fallback=...")
