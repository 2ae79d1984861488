"""``expectation``: a stochastic node with one cost, i.e. the surrogate of E_{p_θ}[f(x)]."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor
from torch.distributions import Distribution

from gradest._validation import check_distribution, check_finite, check_n
from gradest.estimators.base import Estimator, default_for
from gradest.estimators.multisample import refuse_in_expectation

__all__ = ["expectation"]


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
    derivatives are right too.

    Args:
        f: maps samples ``[m, *B, *E]`` to costs ``[m, *B]`` (m = n, or the support size for
            ``Enumerate``). f may close over parameters; their gradients are estimated as well.
        dist: a ``torch.distributions.Distribution`` with batch shape B and event shape E.
        estimator: the rule; by default ``Pathwise()`` when the family has ``rsample``, else
            ``ScoreFunction(LeaveOneOut())`` for ``n > 1``, else ``ScoreFunction()``.
        n: samples per batch element.

    Returns:
        ``[*B]`` surrogate; reduce it (``.mean()``, ``.sum()``) and call ``.backward()``.

    Raises:
        TypeError: dist is not a Distribution, estimator is not an Estimator, f is not callable or
            returns a non-tensor.
        ValueError: n < 1, f's output has the wrong shape, or f returns NaN (while validation is on).
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
    if estimator is None:
        estimator = default_for(dist, n)
    elif not isinstance(estimator, Estimator):
        refuse_in_expectation(where, estimator)
        raise TypeError(
            f"{where}: estimator={estimator!r} is not a gradest Estimator; pass e.g. gradest.Pathwise() "
            "or gradest.ScoreFunction(gradest.LeaveOneOut())."
        )
    estimator.check(dist, n)
    draw = estimator.draw(dist, n)
    cost = f(draw.value)
    check_cost(where, cost, draw.value.shape[: 1 + len(dist.batch_shape)])
    return estimator.surrogate(draw, cost)


def check_cost(where: str, cost: object, expected: tuple[int, ...]) -> Tensor:
    if not isinstance(cost, Tensor):
        raise TypeError(f"{where}: f returned {type(cost).__name__}, expected a tensor of shape {tuple(expected)}.")
    if cost.shape != expected:
        raise ValueError(
            f"{where}: f returned shape {tuple(cost.shape)}, expected (n, *dist.batch_shape) = "
            f"{tuple(expected)}; reduce the event dimensions inside f and keep the sample dimension."
        )
    check_finite(where, "f's output", cost, "check f for 0/0, log(0) or inf - inf at the sampled points.")
    return cost
