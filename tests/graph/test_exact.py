"""Graphs of enumerated nodes only are deterministic: value and gradient equal the exact ones to
rounding, on every replication and for every seed."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import Tensor
from torch.distributions import Bernoulli, Categorical, Independent

from gradest import Enumerate, Graph
from tests.graph.common import DTYPE, flat_grads, leaves, replicate, seeded
from tests.graph.test_unbiased import CHAIN, INDEPENDENT, Model

ROUNDING = {"rtol": 1e-12, "atol": 1e-12}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- three enumerated nodes: a → b (logits W[a]), c independent (two bits, enumerated jointly) --------

T_BC = torch.randn(3, 4, generator=_gen(5), dtype=DTYPE)
U_A = torch.randn(2, generator=_gen(6), dtype=DTYPE)
POWERS = torch.tensor([2, 1])


def _three_objective(la: Tensor, w: Tensor, lc: Tensor, scale: Tensor) -> Tensor:
    pa = torch.softmax(la, -1)
    pb = torch.softmax(w, -1)  # [a, b]
    bits = torch.sigmoid(lc)
    total = la.new_zeros(())
    for a, b, c0, c1 in itertools.product(range(2), range(3), range(2), range(2)):
        pc = (bits[0] if c0 else 1 - bits[0]) * (bits[1] if c1 else 1 - bits[1])
        total = total + pa[a] * pb[a, b] * pc * (T_BC[b, 2 * c0 + c1] * scale + U_A[a])
    return total


def _three_build(g: Graph, params, r, estimators, ns) -> list[Tensor]:
    la, w, lc, scale = params
    a = g.sample("a", Categorical(logits=la), Enumerate())
    b = g.sample("b", Categorical(logits=w[torch.arange(r), a]), Enumerate())
    c = g.sample("c", Independent(Bernoulli(logits=lc), 1), Enumerate())
    # an enumerated node's values are not copied along its enumerated parents' dims (b: size 1 at a's)
    assert a.shape == (2, r) and b.shape == (3, 1, r) and c.shape == (4, 1, 1, r, 2)
    index = (c.long() * POWERS).sum(-1)
    return [T_BC[b, index] * scale, U_A[a]]


THREE = Model(
    "a→b, c",
    (torch.tensor([0.3, -0.3]), torch.tensor([[0.5, -0.5, 0.0], [-1.0, 0.2, 0.4]]), torch.tensor([0.7, -0.2]),
     torch.tensor(1.2)),
    _three_objective,
    _three_build,
)

MODELS = [
    pytest.param(INDEPENDENT, (Enumerate, Enumerate), (1, 1), id="independent"),
    pytest.param(CHAIN, (Enumerate, Enumerate), (1, 1), id="chain"),
    pytest.param(THREE, (), (), id="three"),
]


@pytest.mark.parametrize(("model", "factories", "ns"), MODELS)
@pytest.mark.parametrize("seed", [0, 1])
def test_enumerated_graphs_are_exact(model: Model, factories, ns, seed: int) -> None:
    r = 5
    draws = model.draws(factories, ns, r, seed=seed)
    exact = model.exact()
    assert exact[:-1].abs().max() > 0.01  # the gradient is not trivially zero
    for row in draws:
        torch.testing.assert_close(row, exact, **ROUNDING)


def test_enumerated_loss_value_is_the_objective() -> None:
    """``loss()`` is the exact sum of the objective over the replications."""
    r = 4
    params = replicate(r, *INDEPENDENT.initial)
    with Graph() as g:
        for c in INDEPENDENT.build(g, params, r, (Enumerate(), Enumerate()), (1, 1)):
            g.cost(c)
    torch.testing.assert_close(g.loss(), r * INDEPENDENT.objective(*leaves(*INDEPENDENT.initial)), **ROUNDING)


def test_enumeration_consumes_no_randomness() -> None:
    with seeded(0):
        before = torch.get_rng_state()
        THREE.step((), (), 3)
        assert torch.equal(torch.get_rng_state(), before)


def test_enumerated_independent_nodes_take_fresh_dims() -> None:
    """Two independent enumerated nodes get their own sample dims, so a cost spans their joint support."""
    (la, lb) = leaves(torch.zeros(3), torch.zeros(4))
    with Graph() as g:
        a = g.sample("a", Categorical(logits=la), Enumerate())
        b = g.sample("b", Categorical(logits=lb), Enumerate())
        assert a.shape == (3,) and b.shape == (4, 1)
        g.cost((a * 10 + b).to(DTYPE))
    torch.testing.assert_close(g.loss(), torch.tensor(1.0 * 10 + 1.5, dtype=DTYPE), **ROUNDING)
    grads = flat_grads(g.loss(), [la, lb])
    k3, k4 = torch.arange(3, dtype=DTYPE), torch.arange(4, dtype=DTYPE)
    exact = torch.cat([10 * (k3 - 1.0) / 3, (k4 - 1.5) / 4])  # d/dlogits of E[k] = p_k (k - E[k])
    torch.testing.assert_close(grads, exact, **ROUNDING)
