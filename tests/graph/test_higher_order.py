"""Second derivatives through ``g.loss()`` are unbiased for the Hessian of the objective (DiCE), also
with baselines, which enter "loaded" with their ancestors' magic boxes (Farquhar et al. 2019).

Replications are batched: replication r's loss depends only on slice r of the parameters, so
differentiating ``Σ_r ∂loss/∂θ_{r,d}`` once more gives row d of every replication's Hessian at once.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torch.distributions import Categorical

from gradest import Enumerate, Graph, LeaveOneOut, MovingAverage, Pathwise, ScoreFunction
from gradest.testing import assert_unbiased
from tests.graph.common import DTYPE, flat_grads, leaves, replicate, seeded
from tests.graph.test_unbiased import CAT_NORMAL, CHAIN, Model


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- one score-function node: J = Σ_k softmax(logits)_k t_k ---------------------------------------------

T_K = torch.tensor([1.0, -0.5, 2.0], dtype=DTYPE)


def _single_build(g: Graph, params, r, estimators, ns) -> list[Tensor]:
    (logits,) = params
    z = g.sample("z", Categorical(logits=logits), estimators[0], n=ns[0])
    return [T_K[z]]


SINGLE = Model("categorical", (torch.tensor([0.2, -0.3, 0.1]),),
               lambda logits: (torch.softmax(logits, -1) * T_K).sum(), _single_build)

# ---- a chain with a cost of both nodes: J = Σ p(z1) p(z2|z1) T[z1, z2] -----------------------------------

T_12 = torch.randn(2, 3, generator=_gen(2), dtype=DTYPE)


def _chain2_objective(l1: Tensor, w: Tensor) -> Tensor:
    return (torch.softmax(l1, -1)[:, None] * torch.softmax(w, -1) * T_12).sum()


def _chain2_build(g: Graph, params, r, estimators, ns) -> list[Tensor]:
    l1, w = params
    z1 = g.sample("z1", Categorical(logits=l1), estimators[0], n=ns[0])
    z2 = g.sample("z2", Categorical(logits=w[torch.arange(r), z1]), estimators[1], n=ns[1])
    return [T_12[z1, z2]]


CHAIN2 = Model("chain(z1,z2)", CHAIN.initial, _chain2_objective, _chain2_build)


def hessian_draws(model: Model, factories, ns, r: int, *, seed: int, warmup: int = 0) -> Tensor:
    """``[R, D, D]`` independent Hessian estimates; ``warmup`` calls first feed stateful baselines."""
    with seeded(seed):
        estimators = tuple(f() for f in factories)
        for _ in range(warmup):
            model.step(estimators, ns, r)
        params = replicate(r, *model.initial)
        with Graph() as g:
            for c in model.build(g, params, r, estimators, ns):
                g.cost(c)
        grads = flat_grads(g.loss(), params, r, create_graph=True)  # [R, D]
        rows = [flat_grads(grads[:, d].sum(), params, r, retain_graph=True) for d in range(grads.shape[1])]
    return torch.stack(rows, 1)


def exact_hessian(model: Model) -> Tensor:
    params = leaves(*model.initial)
    shapes, sizes = [p.shape for p in params], [p.numel() for p in params]

    def objective(flat: Tensor) -> Tensor:
        return model.objective(*[x.reshape(s) for x, s in zip(flat.split(sizes), shapes, strict=True)])

    return torch.autograd.functional.hessian(objective, torch.cat([p.detach().reshape(-1) for p in params]))


def _loo() -> ScoreFunction:
    return ScoreFunction(LeaveOneOut())


def _moving_average() -> ScoreFunction:
    return ScoreFunction(MovingAverage(0.5))


CASES = [
    # (label, model, factories, ns, R, warm-up calls): R keeps every entry's SE below 0.01 · max(|H|, 1).
    ("score1", SINGLE, (ScoreFunction,), (1,), 2_000, 0),
    ("loo4", SINGLE, (_loo,), (4,), 2_000, 0),
    ("moving-average1", SINGLE, (_moving_average,), (1,), 2_000, 1),
    ("score1/score1", CHAIN2, (ScoreFunction, ScoreFunction), (1, 1), 3_000, 0),
    ("loo4/loo3", CHAIN2, (_loo, _loo), (4, 3), 1_000, 0),
    ("moving-average2/moving-average1", CHAIN2, (_moving_average, _moving_average), (2, 1), 2_000, 1),
    ("loo4/score1 (cost of z2 only)", CHAIN, (_loo, ScoreFunction), (4, 1), 1_000, 0),
    ("loo4/pathwise", CAT_NORMAL, (_loo, Pathwise), (4, 1), 4_000, 0),
]


def _params(cases: list, scale: int = 1) -> list:
    return [pytest.param(c[1], c[2], c[3], scale * c[4], c[5], id=f"{c[1].name}/{c[0]}") for c in cases]


def check_second_derivatives(model: Model, factories, ns, r: int, warmup: int, seed: int) -> None:
    draws = hessian_draws(model, factories, ns, r, seed=seed, warmup=warmup)
    exact = exact_hessian(model)
    assert exact.abs().max() > 0.05
    assert_unbiased(draws, exact)


@pytest.mark.parametrize(("model", "factories", "ns", "r", "warmup"), _params(CASES))
def test_graph_second_derivatives_are_unbiased(model: Model, factories, ns, r: int, warmup: int) -> None:
    check_second_derivatives(model, factories, ns, r, warmup, seed=17)


@pytest.mark.slow
@pytest.mark.parametrize(("model", "factories", "ns", "r", "warmup"), _params(CASES, scale=10))
def test_graph_second_derivatives_are_unbiased_large_r(model: Model, factories, ns, r: int, warmup: int) -> None:
    """Ten times R and a fresh seed: a bias a tenth of the default run's could detect shows up here."""
    check_second_derivatives(model, factories, ns, r, warmup, seed=18)


def test_enumerated_chain_hessian_is_exact() -> None:
    draws = hessian_draws(CHAIN2, (Enumerate, Enumerate), (1, 1), 3, seed=0)
    for h in draws:
        torch.testing.assert_close(h, exact_hessian(CHAIN2), rtol=1e-12, atol=1e-12)


def test_cross_derivatives_between_chained_nodes_are_nonzero() -> None:
    """The parent-child block of the chain's Hessian (score of z1 times score of z2) has signal, so the
    chain cases test the cross terms, not just each node's own block."""
    h = exact_hessian(CHAIN2)
    assert h[:2, 2:].abs().max() > 0.01


def test_normal_sigma_hessian_reference() -> None:
    """Sanity of the closed form used by ``CAT_NORMAL``: ∂²J/∂σ² = 2 Σ_z p(z) = 2."""
    h = exact_hessian(CAT_NORMAL)
    torch.testing.assert_close(h[-1, -1], torch.tensor(2.0, dtype=DTYPE))
