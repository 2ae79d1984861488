"""No global state: graphs are independent objects, nothing needs resetting between steps, and a graph
leaves torch's RNG (beyond its own draws), validation switches and autograd mode as it found them."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch import Tensor
from torch.distributions import Categorical, Distribution, Normal

import gradest
from gradest import Enumerate, Graph, LeaveOneOut, ScoreFunction, expectation
from gradest.graph.dependencies import Provenance
from tests.graph.common import DTYPE, flat_grads, leaves, seeded

TABLE = torch.tensor([0.5, -1.0, 2.0], dtype=DTYPE)
ROUNDING = {"rtol": 1e-12, "atol": 1e-12}


def _params() -> tuple[Tensor, ...]:
    gen = torch.Generator().manual_seed(2)
    return leaves(torch.randn(5, 3, generator=gen), torch.randn(5, generator=gen))


def _f(z: Tensor) -> Tensor:
    return TABLE[z]


def _h(x: Tensor) -> Tensor:
    return torch.cos(x) * x


def test_two_graphs_open_at_once_work_independently() -> None:
    """Interleaved sampling and costs in two open graphs give what two ``expectation`` calls give on
    the same random stream (and a node name may be reused across graphs)."""
    logits, loc = _params()
    with seeded(0):
        with Graph() as g, Graph() as h:
            z = g.sample("node", Categorical(logits=logits), ScoreFunction(LeaveOneOut()), n=4)
            x = h.sample("node", Normal(loc, 1.0), n=3)
            h.cost(_h(x))
            g.cost(_f(z))
        loss_h = h.loss()  # in the opposite order of the costs
        loss_g = g.loss()
        by_graphs = flat_grads(loss_g + loss_h, [logits, loc])
    with seeded(0):
        s_g = expectation(_f, Categorical(logits=logits), ScoreFunction(LeaveOneOut()), n=4).sum()
        s_h = expectation(_h, Normal(loc, 1.0), n=3).sum()
        by_expectation = flat_grads(s_g + s_h, [logits, loc])
    torch.testing.assert_close(loss_g, s_g, **ROUNDING)
    torch.testing.assert_close(loss_h, s_h, **ROUNDING)
    torch.testing.assert_close(by_graphs, by_expectation, **ROUNDING)


def test_one_graph_closing_leaves_the_other_open() -> None:
    logits, loc = _params()
    with Graph() as outer:
        z = outer.sample("z", Categorical(logits=logits), n=2)
        with Graph() as inner:
            x = inner.sample("x", Normal(loc, 1.0))
            inner.cost(_h(x))
        outer.cost(_f(z + 0))  # z still usable: only inner closed
    assert torch.isfinite(inner.loss() + outer.loss())


def _step(seed: int, estimator_a, estimator_b) -> tuple[Tensor, Tensor]:
    logits, loc = _params()
    with seeded(seed), Graph() as g:
        z = g.sample("z", Categorical(logits=logits), estimator_a, n=4)
        y = g.sample("y", Normal(TABLE[z] + loc, 1.0), estimator_b, n=2)
        g.cost((y - 1) ** 2)
    loss = g.loss()
    loss.backward(create_graph=True)
    first = torch.cat([logits.grad.reshape(-1), loc.grad.reshape(-1)])
    second = flat_grads(first.square().sum(), [logits, loc])  # differentiate the gradient once more
    logits.grad = loc.grad = None  # break the parameter ↔ gradient cycle torch warns about
    return first.detach(), second


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
def test_nothing_needs_resetting_after_backward_create_graph() -> None:
    """Steps with ``backward(create_graph=True)`` are repeatable bit for bit: no hidden state carried."""
    a = _step(3, ScoreFunction(LeaveOneOut()), None)
    _step(4, ScoreFunction(LeaveOneOut()), None)  # an unrelated step in between
    b = _step(3, ScoreFunction(LeaveOneOut()), None)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[1].abs().sum() > 0


def test_graph_touches_no_global_state() -> None:
    """The RNG advances exactly as the node's own draws would advance it; validation switches, autograd
    mode and default dtype are unchanged."""
    logits, loc = _params()
    switches = (gradest.is_validation_enabled(), Distribution._validate_args, torch.is_grad_enabled(),
                torch.get_default_dtype(), torch.is_anomaly_enabled())
    with seeded(5):
        with Graph() as g:
            z = g.sample("z", Categorical(logits=logits), ScoreFunction(LeaveOneOut()), n=4)
            e = g.sample("e", Categorical(logits=logits), Enumerate())
            y = g.sample("y", Normal(TABLE[z] + loc, 1.0), n=2)
            g.cost((y - 1) ** 2)
            g.cost(_f(e))
        torch.autograd.grad(g.loss(), [logits, loc], create_graph=True)
        after_graph = torch.get_rng_state()
    with seeded(5):
        z = Categorical(logits=logits).sample((4,))
        Normal(TABLE[z] + loc, 1.0).rsample((2,))
        after_draws = torch.get_rng_state()
    assert torch.equal(after_graph, after_draws)
    assert switches == (gradest.is_validation_enabled(), Distribution._validate_args, torch.is_grad_enabled(),
                        torch.get_default_dtype(), torch.is_anomaly_enabled())


def test_loss_is_repeatable() -> None:
    """``loss()`` may be called twice on a graph without baselines that hold state: same value, same
    gradient."""
    logits, loc = _params()
    with Graph() as g:
        z = g.sample("z", Categorical(logits=logits), ScoreFunction(LeaveOneOut()), n=4)
        g.cost(_f(z))
    first, second = g.loss(), g.loss()
    assert torch.equal(first, second)
    assert torch.equal(flat_grads(first, [logits], retain_graph=True), flat_grads(second, [logits]))


@pytest.mark.parametrize("backward", [True, False])
@pytest.mark.parametrize("track", [True, False])
def test_a_finished_graph_is_freed(track: bool, backward: bool) -> None:
    """Nothing outlives a step: once its loss is dropped, the graph, its draws and the tensors computed
    from its samples are garbage. (The graph keeps each cost as a plain alias, which holds the tensor
    computed from samples in C++, out of the garbage collector's sight; when tags held their graph,
    that made every tracked graph uncollectable.)"""
    logits, loc = _params()
    weight = leaves(torch.randn(3, 1, dtype=DTYPE))[0]

    def step() -> weakref.ref:
        with Graph(track=track) as g:
            z = g.sample("z", Categorical(logits=logits), ScoreFunction(LeaveOneOut()), n=4)
            y = g.sample("y", Normal(loc, 1.0), n=4, depends_on=None if track else ())
            g.cost((torch.nn.functional.one_hot(z, 3).to(DTYPE) @ weight).squeeze(-1) * y)
        loss = g.loss()
        if backward:
            loss.backward()
        return weakref.ref(g)

    gc.collect()
    before = sum(1 for o in gc.get_objects() if type(o) is Provenance)
    refs = [step() for _ in range(3)]
    gc.collect()
    assert [r() for r in refs] == [None, None, None]
    assert sum(1 for o in gc.get_objects() if type(o) is Provenance) == before
