"""A one-node graph is ``expectation``: same seed, same draw, same value and gradient.

Each case runs ``expectation(f, dist, estimator, n)`` and the graph ``sample → cost(f(x)) → loss`` from
the same seed with a fresh estimator of the same kind, for several steps (so stateful baselines such
as ``MovingAverage`` are compared once they hold a running mean), and compares the values, the
gradients of the distribution's parameters, of a parameter ``f`` closes over and of the estimator's
own parameters (a critic's), and the estimator's state afterwards.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, Categorical, Distribution, Independent, Normal, OneHotCategorical

from gradest import (
    Constant,
    ControlVariate,
    Critic,
    Enumerate,
    Estimator,
    Graph,
    ImplicitReparam,
    LeaveOneOut,
    MovingAverage,
    OptimalConstant,
    Pathwise,
    ScoreFunction,
    expectation,
)
from gradest.testing import NonreparameterizedNormal
from tests.graph.common import DTYPE, flat_grads, leaves, seeded

ROUNDING = {"rtol": 1e-12, "atol": 1e-12}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Family:
    """A distribution family with parameters of batch shape B and a cost f that closes over ``w``."""

    def __init__(self, name: str, make: Callable[..., Distribution], shapes: Callable[[tuple], list[tuple]],
                 f: Callable[[Tensor, Tensor], Tensor]) -> None:
        self.name, self.make, self.shapes, self.f = name, make, shapes, f

    def params(self, batch: tuple) -> list[Tensor]:
        g = _gen(len(batch) + 7)
        return [torch.randn(s, generator=g, dtype=DTYPE) for s in self.shapes(batch)]


def _normal(cls):
    return lambda loc, log_scale: cls(loc, log_scale.exp())


K = 3
TABLE = torch.randn(K, generator=_gen(3), dtype=DTYPE)
TABLE4 = torch.randn(4, generator=_gen(4), dtype=DTYPE)

NORMAL = Family("normal", _normal(Normal), lambda b: [b, b], lambda x, w: torch.cos(w * x) + x**2)
HIDDEN = Family("nonreparam-normal", _normal(NonreparameterizedNormal), lambda b: [b, b],
                lambda x, w: torch.cos(w * x) + x**2)
CATEGORICAL = Family("categorical", lambda logits: Categorical(logits=logits), lambda b: [(*b, K)],
                     lambda x, w: TABLE[x] * w)
ONE_HOT = Family("one-hot", lambda logits: OneHotCategorical(logits=logits), lambda b: [(*b, K)],
                 lambda x, w: (x * TABLE).sum(-1) * w)
BERNOULLI = Family("bernoulli", lambda logits: Bernoulli(logits=logits), lambda b: [b],
                   lambda x, w: (x - 0.3) ** 2 * w)
BITS = Family("independent-bernoulli", lambda logits: Independent(Bernoulli(logits=logits), 1),
              lambda b: [(*b, 2)], lambda x, w: TABLE4[(x.long() * torch.tensor([2, 1])).sum(-1)] * w)


def _control_variate() -> ControlVariate:
    return ControlVariate(lambda x: (x == 0).to(DTYPE), lambda d: d.probs[..., 0], coefficient=0.7)


def _critic() -> Critic:
    torch.manual_seed(5)  # inside the caller's seeded block: the same critic for both paths
    return Critic(nn.Linear(K, 1).to(DTYPE))


CASES = [
    # (label, estimator factory, family, n, steps)
    ("pathwise", Pathwise, NORMAL, 3, 1),
    ("implicit", ImplicitReparam, HIDDEN, 3, 1),
    ("score", ScoreFunction, CATEGORICAL, 1, 1),
    ("score", ScoreFunction, HIDDEN, 2, 1),
    ("score+constant", lambda: ScoreFunction(Constant(0.5)), BERNOULLI, 2, 1),
    ("score+leave-one-out", lambda: ScoreFunction(LeaveOneOut()), CATEGORICAL, 4, 1),
    ("score+leave-one-out", lambda: ScoreFunction(LeaveOneOut()), ONE_HOT, 4, 1),
    ("score+leave-one-out", lambda: ScoreFunction(LeaveOneOut()), BITS, 3, 1),
    ("score+moving-average", lambda: ScoreFunction(MovingAverage(0.8)), CATEGORICAL, 2, 3),
    ("score+moving-average", lambda: ScoreFunction(MovingAverage(0.8)), HIDDEN, 1, 3),
    ("score+optimal-constant", lambda: ScoreFunction(OptimalConstant()), CATEGORICAL, 4, 1),
    ("score+optimal-constant", lambda: ScoreFunction(OptimalConstant()), HIDDEN, 3, 1),
    ("score+optimal-constant(decay)", lambda: ScoreFunction(OptimalConstant(decay=0.5)), BERNOULLI, 2, 3),
    ("score+critic", lambda: ScoreFunction(_critic()), CATEGORICAL, 2, 2),
    ("score+control-variate", lambda: ScoreFunction(_control_variate()), CATEGORICAL, 4, 1),
    ("enumerate", Enumerate, CATEGORICAL, 1, 1),
    ("enumerate", Enumerate, ONE_HOT, 1, 1),
    ("enumerate", Enumerate, BERNOULLI, 1, 1),
    ("enumerate", Enumerate, BITS, 1, 1),
]


def _run(estimator: Estimator, family: Family, batch: tuple, n: int, *, graph: bool) -> tuple[Tensor, Tensor]:
    params = leaves(*family.params(batch))
    (w,) = leaves(torch.tensor(1.3))
    dist = family.make(*params)
    if graph:
        with Graph() as g:
            x = g.sample("x", dist, estimator, n=n)
            g.cost(family.f(x, w))
        s = g.loss()
    else:
        s = expectation(lambda x: family.f(x, w), dist, estimator, n=n).sum()
    return s.detach(), flat_grads(s, [*params, w, *estimator.parameters()])


def _steps(factory: Callable[[], Estimator], family: Family, batch: tuple, n: int, steps: int, *, graph: bool):
    with seeded(0):
        estimator = factory()
        out = [_run(estimator, family, batch, n, graph=graph) for _ in range(steps)]
    return out, estimator.state_dict()


@pytest.mark.parametrize("batch", [(), (3,), (2, 3)], ids=lambda b: f"B={b}")
@pytest.mark.parametrize(("factory", "family", "n", "steps"),
                         [pytest.param(*c[1:], id=f"{c[0]}/{c[2].name}/n={c[3]}") for c in CASES])
def test_one_node_graph_equals_expectation(factory, family: Family, n: int, steps: int, batch: tuple) -> None:
    by_graph, state_graph = _steps(factory, family, batch, n, steps, graph=True)
    by_expectation, state_expectation = _steps(factory, family, batch, n, steps, graph=False)
    for (v_g, g_g), (v_e, g_e) in zip(by_graph, by_expectation, strict=True):
        torch.testing.assert_close(v_g, v_e, **ROUNDING)
        torch.testing.assert_close(g_g, g_e, **ROUNDING)
        assert g_g.abs().sum() > 0  # the comparison is not vacuous
    assert state_graph.keys() == state_expectation.keys()
    for k in state_graph:
        torch.testing.assert_close(state_graph[k], state_expectation[k], **ROUNDING)


def test_one_node_graph_sample_is_the_draw() -> None:
    """The graph returns the estimator's values (same seed): ``[n, *B, *E]``, values unchanged."""
    (logits,) = leaves(torch.randn(2, 3, K, generator=_gen(1), dtype=DTYPE))
    for est, n, expected in [(ScoreFunction(LeaveOneOut()), 4, (4, 2, 3)), (Enumerate(), 1, (K, 2, 3))]:
        with seeded(0):
            reference = est.draw(Categorical(logits=logits), n).values
        with seeded(0), Graph() as g:
            x = g.sample("x", Categorical(logits=logits), est, n=n)
            assert x.shape == expected
            assert torch.equal(x.as_subclass(Tensor), reference)
            g.cost(TABLE[x])
