r"""The estimator contract: ``check`` the arguments, ``draw`` the points, and three pieces that compose.

Every estimator answers, in this order:

1. ``check(dist, n)``: can this rule handle this family and sample count? Raise the documented error.
2. ``draw(dist, n)``: where must the cost ``f`` be evaluated? The rule returns its own typed record, a
   :class:`Draw` subclass with the common fields (``points``, ``n``, ``dist``, ``log_prob``) and its
   own named fields. ``points[:n]`` are the node's *values* — what f sees first and what a
   :class:`~gradest.Graph` hands the user: exact samples of ``dist`` (the whole support for
   ``Enumerate``, the relaxed samples for ``GumbelSoftmax(hard=False)``). ``points[n:]`` are
   *auxiliary points* (relaxed copies, antithetic partners, perturbations) that only the rule's
   correction reads.
3. How the costs at those points become a surrogate, in three pieces that ``graph/compose.py``
   combines — for one node (``expectation``) and for every node of a graph alike:

   - ``weight(draw)``: ``[n, *B]`` multiplicative weight of the costs at the values, or None for 1
     (a DiCE magic box for score terms, p(x) for enumeration);
   - ``correction(draw, cost)``: an additive term ``[n, *B]`` (or ``[1, *B]``) from the costs at all
     points ``[m, *B]`` (baselines, control variates, REBAR's relaxed terms, ARM's partners);
   - the declared ``reduction`` of the sample dimension: a Monte Carlo ``"mean"`` or a ``"sum"``.

   .. math:: s = \mathrm{R}\bigl(\mathrm{weight}\cdot \mathrm{cost}_{:n} + \mathrm{correction}(\mathrm{cost})\bigr)

What a graph needs to know about a rule is declared in the class body, as ``torch.distributions``
declares ``has_rsample``: :attr:`Estimator.reduction`, :attr:`Estimator.shares_sample_dim`,
:attr:`Estimator.elementwise`, :attr:`Estimator.auxiliary_points`, :attr:`Estimator.live_costs`,
:attr:`Estimator.differentiable_f`, :attr:`Estimator.families`, :attr:`Estimator.eliminable`,
:attr:`Estimator.has_correction`.
The estimator used when none is given comes from a registry (:func:`register_default`), like
``torch.distributions.kl.register_kl``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

from torch import Tensor, nn
from torch.distributions import Distribution

__all__ = ["Draw", "Estimator", "default_for", "register_default"]


@dataclass(frozen=True, eq=False)
class Draw:
    """Where a rule wants the cost evaluated, and what it keeps to combine the costs.

    Each rule subclasses this with its own named fields (``ScoreDraw.box``, ``REBARDraw.z_tilde`` …),
    so a typo fails at type-check time and a reader sees at a glance what a rule keeps.

    Attributes:
        points: ``[m, *B, *E]`` every point f is evaluated at: the values first, then any auxiliary
            points.
        n: how many leading rows of ``points`` are the node's values (``values = points[:n]``).
        dist: the distribution the points came from (baselines and control variates may read it).
        log_prob: ``[n, *B]`` log-probabilities of the values for score terms, or None.

    Example:
        >>> import torch, gradest
        >>> _ = torch.manual_seed(0)
        >>> dist = torch.distributions.Bernoulli(probs=torch.full((3,), 0.5))
        >>> draw = gradest.ScoreFunction().draw(dist, 4)      # the samples and their log-probabilities
        >>> type(draw).__name__, draw.points.shape, draw.n, draw.log_prob.shape
        ('ScoreDraw', torch.Size([4, 3]), 4, torch.Size([4, 3]))
        >>> draw = gradest.DisARM().draw(dist, 4)             # antithetic partners after the values
        >>> draw.points.shape, draw.values.shape, draw.auxiliary.shape
        (torch.Size([8, 3]), torch.Size([4, 3]), torch.Size([4, 3]))
    """

    points: Tensor
    n: int
    dist: Distribution
    log_prob: Tensor | None

    @property
    def values(self) -> Tensor:
        """``[n, *B, *E]``: the node's values (``points[:n]``), what a graph hands the user."""
        return self.points if self.points.shape[0] == self.n else self.points[: self.n]

    @property
    def auxiliary(self) -> Tensor:
        """``[m − n, *B, *E]``: the points beyond the values (empty for most rules)."""
        return self.points[self.n :]


class Estimator(nn.Module):
    r"""Base class of gradient estimators (see the module docstring for the contract).

    Estimators are ``nn.Module``\ s even when stateless, so state nests (a baseline's running mean is
    in ``state_dict()``), moves with ``.to(device)`` and joins a user's model through ``add_module``.

    Example:
        The plain score-function rule, written as a new estimator:

        >>> import torch, gradest
        >>> class Reinforce(gradest.Estimator):
        ...     def draw(self, dist, n):
        ...         x = dist.sample((n,))
        ...         return gradest.Draw(x, n, dist, dist.log_prob(x))
        ...     def weight(self, draw):
        ...         return gradest.magic_box(draw.log_prob)      # value 1, gradient ∇log p
        >>> _ = torch.manual_seed(0)
        >>> logits = torch.zeros(3, requires_grad=True)
        >>> s = gradest.expectation(lambda x: x, torch.distributions.Bernoulli(logits=logits), Reinforce(), n=4)
        >>> s.sum().backward(); logits.grad.tolist()
        [0.375, 0.25, 0.375]
    """

    unbiased: ClassVar[bool] = True
    """A claim that the test registry checks against exact gradients."""

    reduction: ClassVar[Literal["mean", "sum"]] = "mean"
    """How the sample dimension is reduced: the Monte Carlo mean, or a sum (enumeration, whose weights
    are probabilities; the unordered set, whose weights hold p(s)R(S, s)/n)."""

    shares_sample_dim: ClassVar[bool] = True
    """Whether the values are i.i.d. samples, so that an independent node with the same n may share the
    sample dimension (its i-th sample pairs with this node's i-th). False for enumeration and sets."""

    elementwise: ClassVar[bool] = False
    """Whether the rule varies all batch elements at once along its sample dimension (enumeration,
    measure-valued perturbations, sets), so each cost element may depend only on its own batch element."""

    auxiliary_points: ClassVar[bool] = False
    """Whether the rule evaluates f beyond its values (``draw.points[n:]``): REBAR's relaxations, ARM's
    antithetic partners, measure-valued perturbations. A graph evaluates its costs there by replaying
    each operation on those points (see :class:`~gradest.Graph`)."""

    live_costs: ClassVar[bool] = False
    """Whether ``correction`` differentiates the costs it is given (REBAR's pathwise control variate,
    ARM's partners); otherwise it receives them with the gradient stopped."""

    differentiable_f: ClassVar[Literal["values", "auxiliary"] | None] = None
    """Where f must be differentiable for the gradient to be right: at the values (pathwise rules and
    relaxations), at the auxiliary points (REBAR), or nowhere. A cost that reaches those points only
    through operations without a derivative is refused while validation is on."""

    families: ClassVar[tuple[type[Distribution], ...] | None] = None
    """The leaf families the rule takes (inside any ``Independent``), or None for every family its
    requirement admits (``Pathwise``: those with ``rsample``; ``Enumerate``: those with an enumerable
    support). ``check`` refuses the others with a ``NotImplementedError`` naming the families."""

    eliminable: ClassVar[bool] = False
    """Whether the values are the whole support and the weight the probability, so that a graph may
    sum the node out by variable elimination rather than over the joint support (``Enumerate``)."""

    has_correction: ClassVar[bool] = False
    """Whether ``correction`` returns a term (a rule whose correction depends on its configuration,
    such as ``ScoreFunction(baseline=None)``, answers with a property)."""

    def __init__(self) -> None:  # the real signature for help() and IDEs (nn.Module's is (*args, **kwargs))
        super().__init__()

    def check(self, dist: Distribution, n: int) -> None:
        """Raise ``NotImplementedError``/``ValueError`` if this rule cannot handle ``dist`` with ``n``."""

    def delegate(self, dist: Distribution, n: int, *, too_large: bool = False) -> Estimator:
        """The estimator that handles ``dist``: this one (``Enumerate`` hands a support too large for its
        budget, or a node whose factor is ``too_large`` for its graph's budget, to its ``fallback``)."""
        return self

    def draw(self, dist: Distribution, n: int) -> Draw:
        raise NotImplementedError(f"{type(self).__name__} does not implement draw()")

    def weight(self, draw: Draw) -> Tensor | None:
        """Multiplicative weight ``[n, *B]`` of the costs at the values (None: 1)."""
        return None

    def correction(self, draw: Draw, cost: Tensor) -> Tensor | None:
        """Additive term ``[n, *B]`` or ``[1, *B]`` built from the costs ``[m, *B]`` at every point
        (None: nothing). The costs carry their gradient only when the rule declares ``live_costs``."""
        return None



Factory = Callable[[Distribution, int], Estimator]

_DEFAULTS: list[tuple[Callable[[Distribution], bool], Factory]] = []
"""The registry: (applies(dist), factory(dist, n)), most recently registered first."""


def register_default(applies: Callable[[Distribution], bool]) -> Callable[[Factory], Factory]:
    """Register ``factory(dist, n)`` as the estimator for the distributions ``applies(dist)`` accepts.

    The most recent registration that applies wins, so a user can override gradest's defaults for a
    family of their own. gradest's estimator modules register disjoint defaults (``Pathwise`` for
    families with ``rsample``, ``ScoreFunction`` for the rest), so the base module imports none of them.
    A registration cannot be removed: it holds for the rest of the process, and ``applies`` is then
    asked about every distribution that comes without an estimator, so it must answer False (not
    raise) for families it does not know.

    Example:
        A family of your own, summed exactly when no estimator is given (``family=Coin`` binds the
        class itself, so the test keeps working once the name ``Coin`` is gone):

        >>> import torch, gradest
        >>> class Coin(torch.distributions.Bernoulli):
        ...     pass
        >>> @gradest.register_default(lambda dist, family=Coin: isinstance(dist, family))
        ... def enumerate_coins(dist, n):
        ...     return gradest.Enumerate()
        >>> p = torch.tensor(0.3, requires_grad=True)
        >>> s = gradest.expectation(lambda x: x, Coin(probs=p))      # E[x] = p, exactly
        >>> s.backward(); round(s.item(), 4), round(p.grad.item(), 4)
        (0.3, 1.0)
    """

    def decorate(factory: Factory) -> Factory:
        _DEFAULTS.insert(0, (applies, factory))
        return factory

    return decorate


def default_for(dist: Distribution, n: int) -> Estimator:
    """The estimator used when none is given: the most recent registration that applies.

    As registered by gradest: ``Pathwise()`` when the family has ``rsample``, else
    ``ScoreFunction(LeaveOneOut())`` when ``n > 1``, else ``ScoreFunction()``.
    """
    for applies, factory in _DEFAULTS:
        try:
            found = applies(dist)
        except Exception as err:
            raise TypeError(
                f"register_default: the predicate {getattr(applies, '__qualname__', applies)!r} raised "
                f"{type(err).__name__}({err}) for dist={type(dist).__name__}; a predicate is asked about every "
                "distribution that has no estimator given, so it must return False for families it does not "
                "handle (check isinstance(dist, YourFamily) first)."
            ) from err
        if found:
            return factory(dist, n)
    raise LookupError(f"no default estimator is registered for dist={type(dist).__name__}")
