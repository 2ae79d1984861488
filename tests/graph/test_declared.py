"""Declared dependencies: ``depends_on=`` and ``Graph(track=False)``, and graphs under ``torch.compile``.

A graph whose declarations are right gives, from the same seed, the same value and gradient as the
tracked graph; undeclared in ``track=False`` means "every node so far", which is still unbiased.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torch.distributions import Categorical, Normal

from gradest import Graph, LeaveOneOut, Pathwise, ScoreFunction
from gradest.testing import assert_unbiased
from tests.graph.common import DTYPE, flat_grads, leaves, replicate, seeded

K = 3
TABLE = torch.tensor([1.0, -2.0, 0.5], dtype=DTYPE)


def _params() -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(11)
    return leaves(torch.randn(2, K, generator=g), torch.randn(2, K, generator=g), torch.randn(2, generator=g))


def _mixed(logits: Tensor, mu: Tensor, w: Tensor, *, track: bool, declare: bool) -> Tensor:
    """k ~ Cat(logits) by score function, y ~ N(mu[k], 1) pathwise below it; costs TABLE[k]·w and (y − w)²."""
    names = {"k": "k", "y": "y"} if declare else {"k": None, "y": None}
    with Graph(track=track) as g:
        k = g.sample("k", Categorical(logits=logits), ScoreFunction(LeaveOneOut()), n=3)  # [3, 2]
        loc = mu.expand(3, 2, K).gather(-1, k.unsqueeze(-1)).squeeze(-1)
        y = g.sample("y", Normal(loc, 1.0), Pathwise(), depends_on=names["k"])
        g.cost(TABLE[k] * w, depends_on=names["k"])
        g.cost((y - w) ** 2, depends_on=names["y"])
    return g.loss()


@pytest.mark.parametrize("track", [True, False])
def test_declared_dependencies_equal_tracked_ones(track: bool) -> None:
    params = _params()
    with seeded(0):
        found = _mixed(*params, track=True, declare=False)
    with seeded(0):
        declared = _mixed(*params, track=track, declare=True)
    torch.testing.assert_close(declared, found, rtol=0, atol=0)
    torch.testing.assert_close(flat_grads(declared, params), flat_grads(found, params), rtol=1e-12, atol=1e-12)


def test_untracked_samples_are_plain_tensors() -> None:
    (logits,) = leaves(torch.zeros(K))
    with Graph(track=False) as g:
        k = g.sample("k", Categorical(logits=logits), n=2)
        x = g.sample("x", Normal(torch.zeros(()), 1.0), n=2, depends_on=())
    assert type(k) is Tensor and type(x) is Tensor and x.grad_fn is None


def test_undeclared_cost_is_credited_to_every_node_and_stays_unbiased() -> None:
    """``track=False`` without ``depends_on``: cost TABLE[k] is also credited to the independent node
    x (a zero-mean extra term); the gradient is unbiased against the closed form."""
    r = 4000
    logits, loc = replicate(r, torch.tensor([0.3, -0.2, 0.1]), torch.tensor(0.4))
    with seeded(1), Graph(track=False) as g:
        k = g.sample("k", Categorical(logits=logits), ScoreFunction(LeaveOneOut()), n=2)  # [2, R]
        x = g.sample("x", Normal(loc, 1.0), ScoreFunction(LeaveOneOut()), n=2, depends_on=())
        g.cost(TABLE.to(logits.dtype)[k] + 0 * x)
        assert {g.nodes[i].name for i in g.costs[0].deps} == {"k", "x"}
    estimates = flat_grads(g.loss(), [logits, loc], r=r)
    exact_logits, exact_loc = leaves(torch.tensor([0.3, -0.2, 0.1]), torch.tensor(0.4))
    value = (exact_logits.softmax(-1) * TABLE).sum() + 0 * exact_loc
    exact = flat_grads(value, [exact_logits, exact_loc])
    assert_unbiased(estimates, exact)
    assert estimates[:, -1].abs().sum() > 0  # x did receive (zero-mean) credit


def test_declaration_errors() -> None:
    with pytest.raises(TypeError, match=r"Graph: track='yes' must be True .* or False"):
        Graph(track="yes")  # type: ignore[arg-type]
    with Graph() as g:
        k = g.sample("k", Categorical(logits=torch.zeros(K)), n=2)
        with pytest.raises(ValueError, match=r"Graph.cost: depends_on names 'z', which is not a node of this "
                                             r"graph \(nodes: \['k'\]\)"):
            g.cost(TABLE[k], depends_on=["z"])
        with pytest.raises(TypeError, match=r"Graph.sample: depends_on=3 must be a node name or a list"):
            g.sample("y", Normal(0.0, 1.0), depends_on=3)  # type: ignore[arg-type]


# ---- torch.compile ----------------------------------------------------------------------------------


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.usefixtures("fresh_dynamo")
def test_untracked_graph_compiles_with_fullgraph() -> None:
    """A mixed discrete/continuous graph with declared dependencies: no graph break, and the same
    value and gradients as eager from the same seed (``aot_eager`` draws with the eager generator)."""
    def step(logits: Tensor, mu: Tensor, w: Tensor) -> Tensor:
        with Graph(track=False) as g:
            k = g.sample("k", Categorical(logits=logits, validate_args=False), ScoreFunction(LeaveOneOut()), n=3)
            loc = mu.expand(3, 2, K).gather(-1, k.unsqueeze(-1)).squeeze(-1)
            y = g.sample("y", Normal(loc, 1.0, validate_args=False), depends_on="k")
            g.cost(TABLE[k] * w, depends_on="k")
            g.cost((y - w) ** 2, depends_on="y")
        return g.loss()

    params = _params()
    with seeded(0):
        eager = step(*params)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    with seeded(0):
        out = compiled(*params)
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(flat_grads(out, params), flat_grads(eager, params))


@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize("pathwise_child", [False, True])
@pytest.mark.parametrize("fullgraph", [True, False])
def test_tracked_graph_under_compile_names_the_fix(fullgraph: bool, pathwise_child: bool) -> None:
    """A tracked graph cannot be compiled (the compiler does not run the subclass that carries the
    nodes, so credit would be lost silently): with or without ``fullgraph`` the error says so and
    names ``Graph(track=False)``. Without ``fullgraph`` the compiler resumes after the graph's
    creation and meets the samples in two ways, both covered: a sample of a closed graph (one node),
    and a sample the compiler rebuilt without its nodes (a pathwise node whose parameters were
    computed from a discrete sample)."""
    def step(logits: Tensor, mu: Tensor, w: Tensor) -> Tensor:
        with Graph() as g:
            k = g.sample("k", Categorical(logits=logits, validate_args=False), ScoreFunction(LeaveOneOut()), n=3)
            g.cost(TABLE[k] * w)
            if pathwise_child:
                loc = mu.expand(3, 2, K).gather(-1, k.unsqueeze(-1)).squeeze(-1)
                y = g.sample("y", Normal(loc, 1.0, validate_args=False))
                g.cost((y - w) ** 2)
        return g.loss()

    compiled = torch.compile(step, fullgraph=fullgraph, backend="aot_eager")
    with pytest.raises(Exception, match=r"cannot be traced by torch.compile.*Graph\(track=False\)"):
        compiled(*_params())
