"""Small graphs whose exact objective is known by enumeration or in closed form: every mix of
score-function, pathwise and enumerated nodes gives unbiased gradients (z·SE harness, false-alarm rate
1e-6); graphs of enumerated nodes only are exact to rounding on every draw.

Replications run along a leading batch dimension R, as in ``gradest.problems.gradient_draws``: every
parameter is ``[R, *shape]`` and replication r's costs touch only slice r, so one ``g.loss()`` gives R
independent gradient estimates. Each cost is multiplied by a per-replication scale ``e`` (a leaf of
ones): ``∂loss/∂e_r`` is replication r's estimate of the objective's *value*, checked alongside the
gradient (its exact counterpart is J itself).

When a check fails or is underpowered, raise R; never the tolerance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, Categorical, Normal

from gradest import (
    Critic,
    Enumerate,
    Estimator,
    Graph,
    ImplicitReparam,
    LeaveOneOut,
    MovingAverage,
    Pathwise,
    ScoreFunction,
)
from gradest.testing import SelfInclusiveMean, assert_unbiased
from tests.graph.common import DTYPE, flat_grads, leaves, replicate, seeded


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rows(r: int) -> Tensor:
    return torch.arange(r)


@dataclass
class Model:
    """A graph builder with its exact objective.

    ``build(g, params, r, estimators, ns) -> costs``: adds the nodes to ``g`` (parameters ``[R, *shape]``)
    and returns the costs, each with the replication dim followed by ``trailing`` batch dims.
    ``objective(*params)``: the exact J at the unreplicated parameters.
    """

    name: str
    initial: tuple[Tensor, ...]
    objective: Callable[..., Tensor]
    build: Callable[..., list[Tensor]]
    trailing: int = 0

    def exact(self) -> Tensor:
        """``[D + 1]``: the exact gradient, then the value (the gradient w.r.t. the cost scale e)."""
        params = leaves(*self.initial)
        value = self.objective(*params)
        return torch.cat([flat_grads(value, params), value.detach().reshape(1)])

    def step(self, estimators: tuple[Estimator, ...], ns: tuple[int, ...], r: int) -> Tensor:
        """``[R, D + 1]``: one graph, R independent estimates of (gradient, value)."""
        params = replicate(r, *self.initial)
        e = torch.ones(r, dtype=DTYPE, requires_grad=True)
        with Graph() as g:
            for c in self.build(g, params, r, estimators, ns):
                g.cost(c * e.reshape(r, *(1,) * self.trailing))
        return flat_grads(g.loss(), [*params, e], r)

    def draws(self, factories: tuple, ns: tuple[int, ...], r: int, *, seed: int, calls: int = 1) -> Tensor:
        with seeded(seed):
            estimators = tuple(f() for f in factories)
            return torch.cat([self.step(estimators, ns, r) for _ in range(calls)])


# ---- (a) categorical z → Normal(mu[z], sigma) → (y − c)² ----------------------------------------------

C = 0.5


def _cat_normal_objective(logits: Tensor, mu: Tensor, sigma: Tensor) -> Tensor:
    return (torch.softmax(logits, -1) * ((mu - C) ** 2 + sigma**2)).sum()


def _cat_normal_build(g: Graph, params, r, estimators, ns) -> list[Tensor]:
    logits, mu, sigma = params
    z = g.sample("z", Categorical(logits=logits), estimators[0], n=ns[0])
    y = g.sample("y", Normal(mu[_rows(r), z], sigma), estimators[1], n=ns[1])
    assert y.shape == (ns[1], z.shape[0], r)
    return [(y - C) ** 2]


CAT_NORMAL = Model(
    "cat→normal",
    (torch.tensor([0.3, -0.2, 0.1]), torch.tensor([-1.0, 0.5, 2.0]), torch.tensor(0.8)),
    _cat_normal_objective,
    _cat_normal_build,
)

# ---- (b) two independent nodes, a cost table over the joint, and a cost of one node ------------------

T_AB = torch.randn(2, 3, generator=_gen(1), dtype=DTYPE)
U_A = torch.randn(2, generator=_gen(2), dtype=DTYPE)


def _independent_objective(la: Tensor, lb: Tensor) -> Tensor:
    pa = torch.stack([1 - torch.sigmoid(la), torch.sigmoid(la)])
    pb = torch.softmax(lb, -1)
    return (pa[:, None] * pb[None, :] * T_AB).sum() + (pa * U_A).sum()


def _independent_build(g: Graph, params, r, estimators, ns) -> list[Tensor]:
    la, lb = params
    a = g.sample("a", Bernoulli(logits=la), estimators[0], n=ns[0]).long()
    b = g.sample("b", Categorical(logits=lb), estimators[1], n=ns[1])
    return [T_AB[a, b], U_A[a]]


INDEPENDENT = Model("bernoulli+categorical", (torch.tensor(0.4), torch.tensor([0.2, -0.5, 0.6])),
                    _independent_objective, _independent_build)

# ---- (c) chain z1 → z2 (z2's logits W[z1]), cost of z2 only ---------------------------------------------

T_Z2 = torch.tensor([1.5, -1.0, 0.5], dtype=DTYPE)


def _chain_objective(l1: Tensor, w: Tensor) -> Tensor:
    return (torch.softmax(l1, -1)[:, None] * torch.softmax(w, -1) * T_Z2).sum()


def _chain_build(g: Graph, params, r, estimators, ns) -> list[Tensor]:
    l1, w = params
    z1 = g.sample("z1", Categorical(logits=l1), estimators[0], n=ns[0])
    z2 = g.sample("z2", Categorical(logits=w[_rows(r), z1]), estimators[1], n=ns[1])
    return [T_Z2[z2]]


CHAIN = Model("chain", (torch.tensor([0.5, -0.5]), torch.tensor([[1.0, -1.0, 0.0], [-0.5, 0.0, 1.0]])),
              _chain_objective, _chain_build)

# ---- (e) nested plates: z (n=3) → y (n=2), baselines per plate -----------------------------------------

T_ZY = torch.randn(3, 2, generator=_gen(3), dtype=DTYPE)


def _nested_objective(l: Tensor, v: Tensor, mu: Tensor) -> Tensor:
    pz = torch.softmax(l, -1)
    py = torch.stack([1 - torch.sigmoid(v), torch.sigmoid(v)], -1)  # [3, 2]
    return (pz[:, None] * py * T_ZY).sum() + (pz * ((mu - C) ** 2 + 1)).sum()


def _nested_build(g: Graph, params, r, estimators, ns) -> list[Tensor]:
    l, v, mu = params
    z = g.sample("z", Categorical(logits=l), estimators[0], n=ns[0])
    y = g.sample("y", Bernoulli(logits=v[_rows(r), z]), estimators[1], n=ns[1])
    w = g.sample("w", Normal(mu[_rows(r), z], 1.0), estimators[2], n=ns[2])
    assert y.shape[1:] == (ns[0], r) and w.shape[-2:] == (ns[0], r)
    if isinstance(estimators[1], ScoreFunction):
        assert y.shape == (ns[1], ns[0], r)  # the child's plate leads: [n_y, n_z, R]
    return [T_ZY[z, y.long()], (w - C) ** 2]


NESTED = Model("nested", (torch.tensor([0.2, -0.4, 0.3]), torch.tensor([0.5, -1.0, 0.0]),
                          torch.tensor([-1.0, 0.0, 1.5])), _nested_objective, _nested_build)

# ---- (f) a cost over several batch elements of one node (a table over two Bernoulli bits) --------------

T_BITS = torch.randn(2, 2, generator=_gen(4), dtype=DTYPE)


def _bits_objective(logits: Tensor) -> Tensor:
    p = torch.stack([1 - torch.sigmoid(logits), torch.sigmoid(logits)], -1)  # [2 bits, 2 values]
    return (p[0][:, None] * p[1][None, :] * T_BITS).sum()


def _bits_build(g: Graph, params, r, estimators, ns) -> list[Tensor]:
    (logits,) = params
    b = g.sample("b", Bernoulli(logits=logits), estimators[0], n=ns[0]).long()  # [n, R, 2]
    return [T_BITS[b[..., 0], b[..., 1]]]


BITS = Model("two-bits", (torch.tensor([0.3, -0.6]),), _bits_objective, _bits_build)

# ---- (g) several cost elements credited to one node element (node batch dim 1, cost batch dim 5) -------

T_WIDE = torch.randn(3, 5, generator=_gen(5), dtype=DTYPE)


def _wide_objective(logits: Tensor) -> Tensor:
    return (torch.softmax(logits, -1) @ T_WIDE).sum()


def _wide_build(g: Graph, params, r, estimators, ns) -> list[Tensor]:
    (logits,) = params
    z = g.sample("z", Categorical(logits=logits[:, None, :]), estimators[0], n=ns[0])  # batch (R, 1)
    return [T_WIDE[z[..., 0]]]  # [m, R, 5]: batch (R, 5) against the node's (R, 1)


WIDE = Model("broadcast", (torch.tensor([0.4, -0.1, 0.2]),), _wide_objective, _wide_build, trailing=1)


def _loo() -> ScoreFunction:
    return ScoreFunction(LeaveOneOut())


def _critic() -> ScoreFunction:
    return ScoreFunction(Critic(nn.Linear(3, 1).to(DTYPE)))


CASES = [
    # (label, model, estimator factories, n per node, R, calls)
    ("loo4/pathwise", CAT_NORMAL, (_loo, Pathwise), (4, 1), 4_000, 1),
    ("score1/pathwise", CAT_NORMAL, (ScoreFunction, Pathwise), (1, 1), 10_000, 1),
    ("enumerate/pathwise", CAT_NORMAL, (Enumerate, Pathwise), (1, 1), 2_000, 1),
    ("default4/default2", CAT_NORMAL, (lambda: None, lambda: None), (4, 2), 4_000, 1),
    ("loo4/implicit2", CAT_NORMAL, (_loo, ImplicitReparam), (4, 2), 4_000, 1),
    ("enumerate/score-loo3", CAT_NORMAL, (Enumerate, _loo), (1, 3), 4_000, 1),
    ("loo4/enumerate", INDEPENDENT, (_loo, Enumerate), (4, 1), 4_000, 1),
    ("enumerate/score1", INDEPENDENT, (Enumerate, ScoreFunction), (1, 1), 4_000, 1),
    ("loo4/loo4", INDEPENDENT, (_loo, _loo), (4, 4), 4_000, 1),
    ("score2/loo3", INDEPENDENT, (ScoreFunction, _loo), (2, 3), 4_000, 1),
    ("moving-average/score1", INDEPENDENT, (lambda: ScoreFunction(MovingAverage(0.5)), ScoreFunction),
     (1, 1), 2_000, 3),
    ("loo4/score1", CHAIN, (_loo, ScoreFunction), (4, 1), 4_000, 1),
    ("loo4/loo3", CHAIN, (_loo, _loo), (4, 3), 4_000, 1),
    ("enumerate/loo3", CHAIN, (Enumerate, _loo), (1, 3), 4_000, 1),
    ("loo4/enumerate", CHAIN, (_loo, Enumerate), (4, 1), 4_000, 1),
    ("score1/enumerate", CHAIN, (ScoreFunction, Enumerate), (1, 1), 4_000, 1),
    ("loo4/critic2", CHAIN, (_loo, _critic), (4, 2), 4_000, 2),
    ("loo3/loo2/pathwise2", NESTED, (_loo, _loo, Pathwise), (3, 2, 2), 4_000, 1),
    ("loo3/loo2/pathwise1", NESTED, (_loo, _loo, Pathwise), (3, 2, 1), 4_000, 1),
    ("moving-average3/enumerate/pathwise2", NESTED,
     (lambda: ScoreFunction(MovingAverage(0.5)), Enumerate, Pathwise), (3, 1, 2), 2_000, 3),
    ("loo4", BITS, (_loo,), (4,), 4_000, 1),
    ("score1", BITS, (ScoreFunction,), (1,), 4_000, 1),
    ("score1", WIDE, (ScoreFunction,), (1,), 4_000, 1),
    ("loo4", WIDE, (_loo,), (4,), 4_000, 1),
    ("enumerate", WIDE, (Enumerate,), (1,), 200, 1),
]


@pytest.mark.parametrize(("model", "factories", "ns", "r", "calls"),
                         [pytest.param(*c[1:], id=f"{c[1].name}/{c[0]}") for c in CASES])
def test_graph_gradients_are_unbiased(model: Model, factories, ns, r: int, calls: int) -> None:
    draws = model.draws(factories, ns, r, seed=11, calls=calls)
    assert_unbiased(draws, model.exact())


def test_chain_credits_the_parent_through_the_childs_distribution() -> None:
    """The cost depends on z1 only through z2's distribution, yet z1's logits get their gradient."""
    draws = CHAIN.draws((_loo, ScoreFunction), (4, 1), 200, seed=3)
    exact = CHAIN.exact()
    assert exact[:2].abs().min() > 0.05
    assert (draws[:, :2] != 0).any(1).float().mean() > 0.5


def test_harness_catches_a_self_inclusive_baseline() -> None:
    """Power: a baseline that sees its own sample's cost shrinks z's score term by (n − 1)/n."""
    draws = CAT_NORMAL.draws((lambda: ScoreFunction(SelfInclusiveMean()), Pathwise), (4, 1), 4_000, seed=11)
    with pytest.raises(AssertionError, match="biased at"):
        assert_unbiased(draws, CAT_NORMAL.exact())
