"""Credit assignment: a cost is credited to exactly the nodes it depends on.

A cost that does not depend on a node contributes *exactly* zero to that node's parameters' gradient on
every draw (not merely zero in expectation), also when the dependency on a discrete sample runs through
integer indices, comparisons, embeddings or one-hot codes, which autograd cannot follow. A cost that
depends on a node only through a later node's distribution is credited to it.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Bernoulli, Categorical, Normal

from gradest import (
    Critic,
    Enumerate,
    Graph,
    ImplicitReparam,
    LeaveOneOut,
    MovingAverage,
    OptimalConstant,
    Pathwise,
    ScoreFunction,
    magic_box,
)
from gradest.graph.dependencies import Provenance
from tests.graph.common import DTYPE, flat_grads, replicate, seeded

R = 50
TABLE = torch.tensor([0.5, -1.0, 2.0], dtype=DTYPE)
EMBED = torch.tensor([[1.0, -2.0], [0.5, 0.0], [3.0, 1.0]], dtype=DTYPE)
ROWS = torch.arange(R)

# Ways a cost can be computed from a categorical sample b (values 0..2), none of them differentiable.
OPS: dict[str, Callable[[Tensor], Tensor]] = {
    "index": lambda b: TABLE[b],
    "long": lambda b: (b.long() * 3 - 1).to(DTYPE) ** 2,
    "float": lambda b: b.to(DTYPE).cos(),
    "compare": lambda b: (b == 1).to(DTYPE) - 0.5 * (b > 1).float().to(DTYPE),
    "where": lambda b: torch.where(b == 2, 1.5, -0.5).to(DTYPE),
    "embedding": lambda b: F.embedding(b, EMBED).sum(-1),
    "one_hot": lambda b: (F.one_hot(b, 3).to(DTYPE) * TABLE).sum(-1),
    "gather": lambda b: TABLE.expand(*b.shape, 3).gather(-1, b.unsqueeze(-1)).squeeze(-1),
    "index_select": lambda b: TABLE.index_select(0, b.flatten()).reshape(b.shape),
}


class Node:
    """A node family with its parameter ``[R, *shape]`` and a default estimator factory."""

    def __init__(self, name: str, make: Callable[[Tensor], object], shape: tuple, estimator, n: int) -> None:
        self.name, self.make, self.shape, self.estimator, self.n = name, make, shape, estimator, n

    def sample(self, g: Graph, param: Tensor, label: str):
        return g.sample(label, self.make(param), self.estimator(), n=self.n)


A_NODES = [
    Node("score1", lambda p: Bernoulli(logits=p), (), ScoreFunction, 1),
    Node("loo4", lambda p: Bernoulli(logits=p), (), lambda: ScoreFunction(LeaveOneOut()), 4),
    Node("moving-average", lambda p: Categorical(logits=p), (3,), lambda: ScoreFunction(MovingAverage(0.5)), 2),
    Node("optimal-constant", lambda p: Categorical(logits=p), (3,), lambda: ScoreFunction(OptimalConstant()), 4),
    Node("critic", lambda p: Categorical(logits=p), (3,),
         lambda: ScoreFunction(Critic(nn.Linear(3, 1).to(DTYPE))), 4),
    Node("enumerate", lambda p: Categorical(logits=p), (3,), Enumerate, 1),
    Node("pathwise", lambda p: Normal(p, 1.0), (), Pathwise, 4),
    Node("implicit", lambda p: Normal(p, 1.0), (), ImplicitReparam, 4),
]
B_NODES = [
    Node("score1", lambda p: Categorical(logits=p), (3,), ScoreFunction, 1),
    Node("loo4", lambda p: Categorical(logits=p), (3,), lambda: ScoreFunction(LeaveOneOut()), 4),
    Node("enumerate", lambda p: Categorical(logits=p), (3,), Enumerate, 1),
]


def _a_cost(a: Tensor) -> Tensor:
    return (a.to(DTYPE) - 0.3) ** 2 if a.is_floating_point() else TABLE[a]


def _grads(a_node: Node, b_node: Node, op, *, seed: int, with_a_cost: bool, with_b_cost: bool) -> Tensor:
    gen = torch.Generator().manual_seed(9)
    pa, pb = replicate(R, torch.randn(a_node.shape, generator=gen), torch.randn(b_node.shape, generator=gen))
    with seeded(seed), Graph() as g:
        a = a_node.sample(g, pa, "a")
        b = b_node.sample(g, pb, "b")
        if with_a_cost:
            g.cost(_a_cost(a) + (a.to(DTYPE) if a.is_floating_point() else TABLE[a]) * op(b), name="ab")
        if with_b_cost:
            g.cost(op(b), name="b")
        loss = g.loss()
    return flat_grads(loss, [pa, pb], R)


@pytest.mark.parametrize("b_node", B_NODES, ids=lambda x: f"b={x.name}")
@pytest.mark.parametrize("a_node", A_NODES[:2] + A_NODES[5:6], ids=lambda x: f"a={x.name}")
def test_cost_of_b_only_gives_a_exactly_zero(a_node: Node, b_node: Node) -> None:
    """a and b independent, the only cost a function of b (through every op in OPS): a's parameters get
    exactly zero gradient on every replication, and b's do not."""
    d = max(1, len(a_node.shape) and a_node.shape[0])
    for name, op in OPS.items():
        grads = _grads(a_node, b_node, op, seed=1, with_a_cost=False, with_b_cost=True)
        assert torch.equal(grads[:, :d], torch.zeros_like(grads[:, :d])), name
        assert (grads[:, d:] != 0).any(), name  # b is credited


def _check_unchanged(a_node: Node, b_node: Node, ops: list[str]) -> None:
    d = max(1, len(a_node.shape) and a_node.shape[0])
    for name in ops:
        both = _grads(a_node, b_node, OPS[name], seed=2, with_a_cost=True, with_b_cost=True)
        only = _grads(a_node, b_node, OPS[name], seed=2, with_a_cost=True, with_b_cost=False)
        assert torch.equal(both[:, :d], only[:, :d]), name
        assert (both[:, :d] != 0).any(), name


@pytest.mark.parametrize("b_node", B_NODES, ids=lambda x: f"b={x.name}")
@pytest.mark.parametrize("a_node", A_NODES, ids=lambda x: f"a={x.name}")
def test_cost_of_b_leaves_as_gradient_unchanged(a_node: Node, b_node: Node) -> None:
    """Adding a cost of b alone to a cost of (a, b) changes a's gradient (its estimator, baseline and
    all) by exactly nothing."""
    _check_unchanged(a_node, b_node, ["index", "compare", "embedding"])


@pytest.mark.slow
@pytest.mark.parametrize("b_node", B_NODES, ids=lambda x: f"b={x.name}")
@pytest.mark.parametrize("a_node", A_NODES, ids=lambda x: f"a={x.name}")
def test_cost_of_b_leaves_as_gradient_unchanged_every_op(a_node: Node, b_node: Node) -> None:
    _check_unchanged(a_node, b_node, list(OPS))


def _chain_params() -> tuple[Tensor, ...]:
    gen = torch.Generator().manual_seed(4)
    return replicate(R, torch.randn(2, generator=gen), torch.randn(3, generator=gen), torch.randn(2, 3, generator=gen))


def test_graph_equals_hand_written_dice_surrogate() -> None:
    """a, b independent; c ~ Categorical(W[a]). Costs f(b), h(c), k(a, b): the loss's gradient is that of
    the hand-written surrogate ``f(b)□b + h(c)□a□c + k(a,b)□a□b`` on the same draw, so h(c) reaches a
    (through c's distribution) and f(b) does not."""
    la, lb, w = _chain_params()
    f, h = OPS["embedding"], OPS["one_hot"]
    k_table = torch.randn(2, 3, generator=torch.Generator().manual_seed(8), dtype=DTYPE)

    with seeded(3), Graph() as g:
        a = g.sample("a", Categorical(logits=la), ScoreFunction())
        b = g.sample("b", Categorical(logits=lb), ScoreFunction())
        c = g.sample("c", Categorical(logits=w[ROWS, a]), ScoreFunction())
        g.cost(f(b))
        g.cost(h(c))
        g.cost(k_table[a, b])
        loss = g.loss()
    by_graph = flat_grads(loss, [la, lb, w], R)

    with seeded(3):
        da, db = Categorical(logits=la), Categorical(logits=lb)
        a = da.sample((1,))
        b = db.sample((1,))
        dc = Categorical(logits=w[ROWS, a])
        c = dc.sample((1,))
        box_a, box_b, box_c = magic_box(da.log_prob(a)), magic_box(db.log_prob(b)), magic_box(dc.log_prob(c))
        s = (f(b) * box_b).sum() + (h(c) * box_a * box_c).sum() + (k_table[a, b] * box_a * box_b).sum()
    by_hand = flat_grads(s, [la, lb, w], R)
    torch.testing.assert_close(loss, s, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(by_graph, by_hand, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("op", ["index", "embedding", "one_hot", "compare"])
def test_cost_through_a_later_nodes_distribution_is_credited(op: str) -> None:
    """a → c (c's logits are W[a], an integer lookup); the cost depends on c only, yet a's logits get a
    gradient; a cost of an independent b alone still gives a nothing."""
    la, lb, w = _chain_params()
    with seeded(5), Graph() as g:
        a = g.sample("a", Categorical(logits=la), ScoreFunction(LeaveOneOut()), n=4)
        b = g.sample("b", Categorical(logits=lb), ScoreFunction(LeaveOneOut()), n=4)
        c = g.sample("c", Categorical(logits=w[ROWS, a]), ScoreFunction(), n=1)
        g.cost(OPS[op](c), name="c")
        loss_c = g.loss()
    d_a = flat_grads(loss_c, [la], R)
    assert (d_a != 0).any(1).float().mean() > 0.2  # zero only where a's 4 samples tie in cost
    with seeded(5), Graph() as g:
        a = g.sample("a", Categorical(logits=la), ScoreFunction(LeaveOneOut()), n=4)
        b = g.sample("b", Categorical(logits=lb), ScoreFunction(LeaveOneOut()), n=4)
        g.cost(OPS[op](b), name="b")
        loss_b = g.loss()
    assert torch.equal(flat_grads(loss_b, [la], R), torch.zeros(R, 2, dtype=DTYPE))


def test_credit_through_bits_packed_into_an_index() -> None:
    """``(bits.long() * powers).sum(-1)`` indexes a table: the cost depends on the Bernoulli node only."""
    la, lb = replicate(R, torch.tensor([0.2, -0.4]), torch.zeros(3))
    table = torch.randn(4, generator=torch.Generator().manual_seed(1), dtype=DTYPE)
    with seeded(6), Graph() as g:
        bits = g.sample("bits", Bernoulli(logits=la), ScoreFunction(LeaveOneOut()), n=4)
        other = g.sample("other", Categorical(logits=lb), ScoreFunction(LeaveOneOut()), n=4)
        g.cost(table[(bits.long() * torch.tensor([2, 1])).sum(-1)])
        g.cost(TABLE[other] * 0.0)
        loss = g.loss()
    grads = flat_grads(loss, [la, lb], R)
    assert (grads[:, :2] != 0).any()
    assert torch.equal(grads[:, 2:], torch.zeros(R, 3, dtype=DTYPE))


def test_continuous_sample_of_another_node_gives_exactly_zero() -> None:
    """A pathwise node x and a score-function node b: a cost of b only leaves x's loc untouched, a cost
    of x only leaves b's logits untouched."""
    loc, lb = replicate(R, torch.tensor(0.3), torch.zeros(3))
    for which in ("x", "b"):
        with seeded(7), Graph() as g:
            x = g.sample("x", Normal(loc, 1.0), n=4)
            b = g.sample("b", Categorical(logits=lb), ScoreFunction(LeaveOneOut()), n=4)
            g.cost(x**2 if which == "x" else TABLE[b])
            loss = g.loss()
        grads = flat_grads(loss, [loc, lb], R)
        untouched = grads[:, 1:] if which == "x" else grads[:, :1]
        assert torch.equal(untouched, torch.zeros_like(untouched))



def test_thresholded_continuous_sample_keeps_its_dependencies() -> None:
    """A continuous sample turned into an index leaves autograd's graph; the cost is still credited to
    it and to the discrete node above it."""
    logits = torch.zeros(3, requires_grad=True)
    with Graph() as g:
        k = g.sample("k", Categorical(logits=logits), n=4)
        y = g.sample("y", Normal(torch.tensor([-1.0, 0.0, 1.0])[k], 1.0))
        g.cost(torch.tensor([0.0, 1.0])[(y > 0).long()], name="threshold")
    assert {g.nodes[i].name for i in g.costs[0].deps} == {"k", "y"}
    g.loss().backward()
    assert logits.grad.abs().sum() > 0


def test_samples_written_into_a_plain_tensor_in_place_keep_their_dependencies() -> None:
    """``buf[t] = z`` and ``h.add_(y)`` make the buffers carry the nodes while the graph is open; once it
    has closed they are the user's plain tensors again, as are the samples."""
    logits = torch.zeros(2, 3, requires_grad=True)
    actions = torch.zeros(2, 4, dtype=torch.long)
    running = torch.zeros(4)
    with Graph() as g:
        for t in range(2):
            actions[t] = g.sample(f"a{t}", Categorical(logits=logits[t]), n=4)
        running.add_(actions[1].to(running.dtype))
        g.cost(TABLE[actions].sum(0), name="rollout")
        x = g.sample("x", Normal(torch.zeros(()), 1.0), n=4, depends_on=())
        assert isinstance(running, Provenance) and isinstance(x * 0 + 1, Provenance)
    assert {g.nodes[i].name for i in g.costs[0].deps} == {"a0", "a1"}
    g.loss().backward()
    assert (logits.grad.abs().sum(-1) > 0).all()
    assert type(running + 1) is torch.Tensor and type(running) is torch.Tensor  # plain again
    assert type(x + 1) is torch.Tensor  # and so are the samples
