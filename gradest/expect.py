"""``expectation``: a stochastic node with one cost, i.e. the surrogate of E_{p_θ}[f(x)]."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor
from torch.distributions import Distribution

from gradest._validation import check_distribution, check_n
from gradest.estimators.base import Draw, Estimator
from gradest.graph.checks import check_cost, check_differentiable, check_gradient, resolve_estimator
from gradest.graph.compose import Cost, Node, Slot, terms

__all__ = ["expectation", "surrogate"]


def expectation(
    f: Callable[[Tensor], Tensor],
    dist: Distribution,
    estimator: Estimator | None = None,
    n: int = 1,
) -> Tensor:
    r"""The surrogate of :math:`\mathbb{E}_{x\sim p_\theta}[f(x)]`.

    Its value is the estimator's Monte Carlo estimate of the expectation (the exact sum for
    ``Enumerate``), and its autograd gradient is the estimator, with respect to the distribution's
    parameters and to anything f depends on. Score-function terms use DiCE's magic box, so higher
    derivatives are right too. It is the one-node case of :class:`~gradest.Graph`'s composition: a
    graph with one node and one cost ``f(x)`` gives the same value and gradient.

    Args:
        f: maps points ``[m, *B, *E]`` to costs ``[m, *B]``. m = n for most rules; the support size for
            ``Enumerate``; rules that evaluate f beyond their samples say where in their docstring
            (REBAR: 3n, ARM and DisARM: 2n, MeasureValued: n(1 + ...), UnorderedSet: k·n). f may close
            over parameters; their gradients are estimated as well.
        dist: a ``torch.distributions.Distribution`` with batch shape B and event shape E.
        estimator: the rule; by default the registered one (:func:`gradest.register_default`):
            ``Pathwise()`` when the family has ``rsample``, else ``ScoreFunction(LeaveOneOut())`` for
            ``n > 1``, else ``ScoreFunction()``.
        n: samples per batch element.

    Returns:
        ``[*B]`` surrogate; reduce it (``.mean()``, ``.sum()``) and call ``.backward()``.

    Raises:
        TypeError: dist is not a Distribution, estimator is not an Estimator, f is not callable or
            returns a non-tensor or a non-floating tensor.
        ValueError: n < 1, f's output has the wrong shape; while validation is on, f returns NaN or
            ±inf, the distribution's parameters are not finite, or f reaches the points only through
            operations without a derivative where the rule needs one (``differentiable_f``).
        NotImplementedError: the estimator does not support the family.

    Example:
        >>> import torch, gradest
        >>> _ = torch.manual_seed(0)
        >>> logits = torch.zeros(4, requires_grad=True)
        >>> d = torch.distributions.Categorical(logits=logits)
        >>> s = gradest.expectation(lambda k: (k == 2).float(), d, gradest.Enumerate())
        >>> s.backward(); [round(g, 4) for g in logits.grad.tolist()]
        [-0.0625, -0.0625, 0.1875, -0.0625]
    """
    where = "expectation"
    if not callable(f):
        raise TypeError(f"{where}: f={f!r} is not callable; pass a function mapping samples to costs.")
    dist = check_distribution(where, dist)
    n = check_n(where, n)
    estimator = resolve_estimator(where, estimator, dist, n).delegate(dist, n)
    estimator.check(dist, n)
    draw = estimator.draw(dist, n)
    cost = check_cost(where, f(draw.points), draw.points.shape[: 1 + len(dist.batch_shape)])
    return surrogate(estimator, draw, cost, where=where)


def surrogate(estimator: Estimator, draw: Draw, cost: Tensor, *, where: str = "expectation") -> Tensor:
    """The one-node surrogate ``[*B]`` of ``estimator`` from its ``draw`` and the costs ``[m, *B]`` at
    ``draw.points``: a one-node, one-cost record handed to the graph's composition
    (:func:`gradest.graph.compose.terms`). ``expectation`` ends here; tests call it with a draw in hand.

    Example:
        >>> import torch, gradest
        >>> from gradest.testing import surrogate
        >>> _ = torch.manual_seed(0)
        >>> logits = torch.zeros(3, requires_grad=True)
        >>> estimator = gradest.ScoreFunction()
        >>> draw = estimator.draw(torch.distributions.Bernoulli(logits=logits), 4)
        >>> s = surrogate(estimator, draw, draw.points)          # the costs f(x) = x at the draw's points
        >>> torch.equal(s, draw.values.mean(0)), s.shape
        (True, torch.Size([3]))
    """
    node = Node("x", 0, draw.dist, estimator, draw)
    value, auxiliary = cost, {}
    if draw.points.shape[0] != draw.n:
        value, *rest = cost.split(draw.n)
        auxiliary = {0: tuple(rest)}
    record = Cost(value, "f", frozenset({0}), 1, auxiliary)
    check_differentiable(where, node, record, [node], "f")
    out = terms([node], [Slot(draw.n, estimator.shares_sample_dim, [0])], [record])
    return check_gradient(where, out[0] if len(out) == 1 else sum(out[1:], out[0]))
