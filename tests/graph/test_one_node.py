"""A one-node graph is ``expectation``: same seed, same draw, same value and gradient.

Each case runs ``expectation(f, dist, estimator, n)`` and the graph ``sample → cost(f(x)) → loss`` from
the same seed with a fresh estimator of the same kind, for several steps (so stateful baselines such
as ``MovingAverage`` are compared once they hold a running mean), and compares the values, the
gradients of the distribution's parameters, of a parameter ``f`` closes over and of the estimator's
own parameters (a critic's), and the estimator's state afterwards.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torch.distributions import Categorical

from gradest import (
    Enumerate,
    Estimator,
    Graph,
    LeaveOneOut,
    ScoreFunction,
    expectation,
)
from tests.estimators.rules import PAIRS, Family, Rule
from tests.graph.common import DTYPE, flat_grads, leaves, seeded

ROUNDING = {"rtol": 1e-12, "atol": 1e-12}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


K = 3
TABLE = torch.randn(K, generator=_gen(3), dtype=DTYPE)


def _run(estimator: Estimator, family: Family, batch: tuple, n: int, *, graph: bool) -> tuple[Tensor, Tensor]:
    params = family.params(batch)
    (w,) = leaves(torch.tensor(1.3))
    dist = family.make(*params)
    if graph:
        with Graph() as g:
            x = g.sample("x", dist, estimator, n=n)
            g.cost(family.f(x, w))
        s = g.loss()
    else:
        s = expectation(lambda x: family.f(x, w), dist, estimator, n=n).sum()
    trainable = [p for p in estimator.parameters() if p.requires_grad]
    return s.detach(), flat_grads(s, [*params, w, *trainable])


def _steps(rule: Rule, family: Family, batch: tuple, n: int, *, graph: bool):
    with seeded(0):
        estimator = rule.factory(family)
        out = [_run(estimator, family, batch, n, graph=graph) for _ in range(rule.steps)]
    return out, estimator.state_dict()


@pytest.mark.parametrize("batch", [(), (3,), (2, 3)], ids=lambda b: f"B={b}")
@pytest.mark.parametrize(("rule", "family"), [pytest.param(r, f, id=f"{r.name}/{f.name}") for r, f in PAIRS])
def test_one_node_graph_equals_expectation(rule: Rule, family: Family, batch: tuple) -> None:
    """Every rule of the registry, on every family it supports; for rules with auxiliary points the
    graph replays the cost on them, so this is also the test that the replay is the evaluation of f."""
    n = max(rule.min_n, 3)
    by_graph, state_graph = _steps(rule, family, batch, n, graph=True)
    by_expectation, state_expectation = _steps(rule, family, batch, n, graph=False)
    for (v_g, g_g), (v_e, g_e) in zip(by_graph, by_expectation, strict=True):
        torch.testing.assert_close(v_g, v_e, **ROUNDING)
        torch.testing.assert_close(g_g, g_e, **ROUNDING)
        assert g_g.abs().sum() > 0  # the comparison is not vacuous
    assert state_graph.keys() == state_expectation.keys()
    for k in state_graph:
        if isinstance(state_graph[k], Tensor):
            torch.testing.assert_close(state_graph[k], state_expectation[k], **ROUNDING)
        else:
            assert state_graph[k] == state_expectation[k]


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
