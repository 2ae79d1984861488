"""The rule registry: every public estimator configuration once, with the families it supports.

``RULES`` drives the deterministic tests of the estimator contract (``test_contract.py``: the value is
the estimate recomputed by hand from the same draw, shapes, dtypes, devices, n) and the equality of a
one-node ``Graph`` with ``expectation`` (``tests/graph/test_one_node.py``); ``cases.py`` holds the
statistical claims (unbiased, exact) on problems with exact answers. A new estimator adds a rule here
and cases there; the coverage guards in ``test_contract.py`` and ``test_unbiased.py`` ask for both.

Each family builds its distribution from leaf parameters of batch shape B and has a cost ``f(x, w)``
that closes over a parameter ``w`` (so parameters inside f are checked too) and accepts every kind of
point a rule hands f: samples (indices, bits, one-hot vectors, reals), relaxed points, one-hot points
for ``Categorical`` under relaxations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, Categorical, Distribution, Independent, Normal, OneHotCategorical, Poisson

from gradest import (
    ARM,
    REBAR,
    RELAX,
    Constant,
    ControlVariate,
    Critic,
    DisARM,
    Draw,
    Enumerate,
    Estimator,
    GumbelRao,
    GumbelSoftmax,
    ImplicitReparam,
    LeaveOneOut,
    MeasureValued,
    MovingAverage,
    OptimalConstant,
    Pathwise,
    ScoreFunction,
    StraightThrough,
    UnorderedSet,
)
from gradest.testing import NonreparameterizedNormal

K = 3
TABLE = torch.tensor([0.7, -1.2, 0.4], dtype=torch.float64)
TABLE4 = torch.tensor([0.3, -0.8, 1.1, 0.5], dtype=torch.float64)
WEIGHTS = torch.tensor([1.0, -0.5], dtype=torch.float64)


@dataclass(frozen=True)
class Family:
    """A family: parameter shapes for batch shape B, the distribution from them, the cost f(x, w), the
    number of trailing event dims of a float point (RELAX's control sums over them), and the number of
    support points per batch element (0 when not enumerable)."""

    name: str
    shapes: Callable[[tuple[int, ...]], list[tuple[int, ...]]]
    make: Callable[..., Distribution]
    f: Callable[[Tensor, Tensor], Tensor]
    event: int = 0
    support: int = 0

    def params(self, batch: tuple[int, ...], dtype: torch.dtype = torch.float64, device: str = "cpu") -> list[Tensor]:
        g = torch.Generator().manual_seed(len(batch) + 7)
        return [(0.8 * torch.randn(s, generator=g, dtype=torch.float64)).to(dtype=dtype, device=device).requires_grad_()
                for s in self.shapes(batch)]


def _table(x: Tensor, w: Tensor) -> Tensor:
    table = TABLE.to(device=x.device, dtype=w.dtype)
    return ((x * table).sum(-1) if x.is_floating_point() else table[x]) * w


def _bits(x: Tensor, w: Tensor) -> Tensor:
    table = TABLE4.to(device=x.device, dtype=w.dtype)
    if x.is_floating_point():  # multilinear in each bit, so relaxed points are fine
        b0, b1 = x[..., 0], x[..., 1]
        return w * ((1 - b0) * (1 - b1) * table[0] + (1 - b0) * b1 * table[1] + b0 * (1 - b1) * table[2]
                    + b0 * b1 * table[3])
    return table[(x.long() * torch.tensor([2, 1], device=x.device)).sum(-1)] * w


def _normal(cls: type) -> Callable[[Tensor, Tensor], Distribution]:
    return lambda loc, log_scale: cls(loc, log_scale.exp())


FAMILIES = {
    "normal": Family("normal", lambda b: [b, b], _normal(Normal), lambda x, w: torch.cos(w * x) + x**2),
    "nonreparam-normal": Family("nonreparam-normal", lambda b: [b, b], _normal(NonreparameterizedNormal),
                                lambda x, w: torch.cos(w * x) + x**2),
    "independent-normal": Family("independent-normal", lambda b: [(*b, 2), (*b, 2)],
                                 lambda loc, log_scale: Independent(Normal(loc, log_scale.exp()), 1),
                                 lambda x, w: torch.cos(w * x.sum(-1)) + x.square().sum(-1), 1),
    "poisson": Family("poisson", lambda b: [b], lambda a: Poisson(a.exp()), lambda x, w: torch.cos(w * x) + 0.1 * x),
    "bernoulli": Family("bernoulli", lambda b: [b], lambda a: Bernoulli(logits=a), lambda x, w: (x - 0.3) ** 2 * w,
                        support=2),
    "bernoulli-probs": Family("bernoulli-probs", lambda b: [b], lambda a: Bernoulli(probs=torch.sigmoid(a)),
                              lambda x, w: (x - 0.3) ** 2 * w, support=2),
    "categorical": Family("categorical", lambda b: [(*b, K)], lambda a: Categorical(logits=a), _table, 1, K),
    "categorical-probs": Family("categorical-probs", lambda b: [(*b, K)],
                                lambda a: Categorical(probs=torch.softmax(a, -1)), _table, 1, K),
    "one-hot": Family("one-hot", lambda b: [(*b, K)], lambda a: OneHotCategorical(logits=a), _table, 1, K),
    "independent-bernoulli": Family("independent-bernoulli", lambda b: [(*b, 2)],
                                    lambda a: Independent(Bernoulli(logits=a), 1), _bits, 1, 4),
}

DISCRETE = ("bernoulli", "bernoulli-probs", "categorical", "categorical-probs", "one-hot", "independent-bernoulli")


class Control(nn.Module):
    """RELAX's control: a small MLP of z over its ``event`` trailing dims, ``[n, *B]``."""

    def __init__(self, features: int, event: int) -> None:
        super().__init__()
        self.event = event
        self.net = nn.Sequential(nn.Linear(features, 8), nn.Tanh(), nn.Linear(8, 1)).to(torch.float64)

    def forward(self, z: Tensor) -> Tensor:
        x = z.unsqueeze(-1) if self.event == 0 else z.flatten(z.dim() - self.event)
        return self.net(x.to(self.net[0].weight.dtype)).squeeze(-1).to(z.dtype)


def _mean(draw: Draw, cost: Tensor) -> Tensor:
    return cost[: draw.n].mean(0)


def _every_point(draw: Draw, cost: Tensor) -> Tensor:
    return cost.mean(0)


def _enumerated(draw: Draw, cost: Tensor) -> Tensor:
    return (draw.dist.log_prob(draw.points).exp() * cost).sum(0)


def _set(draw: Draw, cost: Tensor) -> Tensor:
    return (draw.log_weight.exp() * cost).sum(0)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Rule:
    """One estimator configuration.

    Attributes:
        name: the test id.
        factory: ``factory(family) -> Estimator`` (a fresh one; the family sizes a control or critic).
        families: names in ``FAMILIES`` the rule supports.
        value: the surrogate's value recomputed by hand from the draw and the costs at its points.
        min_n: the smallest n the rule takes.
        steps: calls of the same estimator in the one-node comparison (stateful rules carry state).
    """

    name: str
    factory: Callable[[Family], Estimator]
    families: tuple[str, ...]
    value: Callable[[Draw, Tensor], Tensor] = _mean
    min_n: int = 1
    steps: int = 1


def _critic(family: Family) -> Estimator:
    torch.manual_seed(5)  # the same critic wherever it is built under one seed
    features = sum(max(1, int(torch.Size(s[1:]).numel())) for s in family.shapes((1,)))
    return ScoreFunction(Critic(nn.Linear(features, 1).to(torch.float64)))


def _control_variate(family: Family) -> Estimator:
    if family.event:  # g(x) = Σ_j x_j, E[g] = Σ_j E[x_j]
        return ScoreFunction(ControlVariate(lambda x: x.sum(-1), lambda d: d.mean.sum(-1), coefficient=0.7))
    return ScoreFunction(ControlVariate(lambda x: x, lambda d: d.mean, coefficient=0.7))


def _relax(family: Family) -> Estimator:
    torch.manual_seed(6)
    features = K if family.name in ("categorical", "categorical-probs", "one-hot") else (2 if family.event else 1)
    return RELAX(Control(features, family.event))


RULES = {r.name: r for r in [
    Rule("pathwise", lambda fam: Pathwise(), ("normal", "independent-normal")),
    Rule("implicit-reparam", lambda fam: ImplicitReparam(), ("nonreparam-normal",)),
    Rule("score", lambda fam: ScoreFunction(), ("nonreparam-normal", "poisson", *DISCRETE)),
    Rule("score+constant", lambda fam: ScoreFunction(Constant(0.5)), ("bernoulli", "nonreparam-normal")),
    Rule("score+moving-average", lambda fam: ScoreFunction(MovingAverage(0.8)), ("categorical", "nonreparam-normal"),
         steps=3),
    Rule("score+leave-one-out", lambda fam: ScoreFunction(LeaveOneOut()),
         ("categorical", "one-hot", "independent-bernoulli", "poisson"), min_n=2),
    Rule("score+optimal-constant", lambda fam: ScoreFunction(OptimalConstant()),
         ("categorical", "nonreparam-normal", "bernoulli-probs"), min_n=2),
    Rule("score+optimal-constant(decay)", lambda fam: ScoreFunction(OptimalConstant(decay=0.5)), ("bernoulli",),
         steps=3),
    Rule("score+critic", _critic, ("categorical", "bernoulli"), steps=2),
    Rule("score+control-variate", _control_variate, ("bernoulli", "independent-bernoulli", "nonreparam-normal")),
    Rule("enumerate", lambda fam: Enumerate(), DISCRETE, _enumerated),
    Rule("gumbel-softmax", lambda fam: GumbelSoftmax(0.5), DISCRETE),
    Rule("gumbel-softmax(hard)", lambda fam: GumbelSoftmax(0.5, hard=True), DISCRETE),
    Rule("straight-through", lambda fam: StraightThrough(), DISCRETE),
    Rule("gumbel-rao", lambda fam: GumbelRao(3, temperature=0.5), DISCRETE),
    Rule("arm", lambda fam: ARM(), ("bernoulli", "bernoulli-probs", "independent-bernoulli"), _every_point),
    Rule("disarm", lambda fam: DisARM(), ("bernoulli", "bernoulli-probs", "independent-bernoulli"), _every_point),
    Rule("rebar", lambda fam: REBAR(temperature=0.5, eta=0.8), DISCRETE),
    Rule("rebar(learn)", lambda fam: REBAR(temperature=0.5, learn=True).double(), DISCRETE),
    Rule("relax", _relax, DISCRETE),
    Rule("unordered-set", lambda fam: UnorderedSet(2), DISCRETE, _set),
    Rule("measure-valued", lambda fam: MeasureValued(),
         ("normal", "independent-normal", "poisson", "bernoulli", "independent-bernoulli")),
]}

PAIRS = [(rule, FAMILIES[name]) for rule in RULES.values() for name in rule.families]
"""Every (rule, family) the registry claims to work."""
