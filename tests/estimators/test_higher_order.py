"""Second derivatives of surrogates (DiCE) are unbiased for the Hessian of the expectation.

For the score-function surrogate ``mean_i f_i □(log p_i)``, differentiating twice gives
``f (∇log p ∇log pᵀ + ∇²log p)``, whose expectation is ∇²E[f]. A baseline term ``(1 − □) b`` contributes
``−b (∇log p ∇log pᵀ + ∇²log p)``, which has mean zero when b does not depend on the sample.

Replications are batched as in ``gradient_draws``: replication r's surrogate depends only on slice r of
the parameters, so differentiating ``Σ_r ∂s_r/∂θ_{r,d}`` once more gives row d of every replication's
Hessian at once.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from gradest import Constant, Estimator, LeaveOneOut, Pathwise, ScoreFunction, expectation
from gradest.problems import CategoricalTable, Gaussian, Problem
from gradest.testing import assert_unbiased
from tests.estimators.cases import seeded


def hessian_draws(problem: Problem, estimator: Estimator, *, n: int, replications: int) -> Tensor:
    """``[R, D, D]`` independent Hessian estimates of ``problem`` by ``estimator``."""
    r = replications
    params = problem.params(r)
    s = expectation(problem.f, problem.dist(*params), estimator, n=n)
    grads = torch.autograd.grad(s.sum(), params, create_graph=True)
    g = torch.cat([x.reshape(r, -1) for x in grads], 1)  # [R, D]
    rows = []
    for d in range(g.shape[1]):
        row = torch.autograd.grad(g[:, d].sum(), params, retain_graph=True, allow_unused=True)
        row = [torch.zeros_like(p) if h is None else h for p, h in zip(params, row, strict=True)]
        rows.append(torch.cat([h.reshape(r, -1) for h in row], 1))
    return torch.stack(rows, 1)


def exact_hessian(problem: Problem) -> Tensor:
    """``[D, D]`` Hessian of the exact objective over the flattened parameters."""
    params = problem.params()
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]

    def objective(flat: Tensor) -> Tensor:
        parts = [x.reshape(shape) for x, shape in zip(flat.split(sizes), shapes, strict=True)]
        return problem.objective(*parts)

    flat = torch.cat([p.detach().reshape(-1) for p in params])
    return torch.autograd.functional.hessian(objective, flat)


SQUARE = Gaussian("square")
COS = Gaussian("cos", k=1.0)
TABLE = CategoricalTable(10)


def test_exact_hessians() -> None:
    """The references themselves: J = μ² + σ² has Hessian diag(2, 2); cos has nonzero mixed terms."""
    torch.testing.assert_close(exact_hessian(SQUARE), 2 * torch.eye(2, dtype=torch.float64))
    assert exact_hessian(COS)[0, 1].abs() > 0.1
    table = exact_hessian(TABLE)
    torch.testing.assert_close(table, table.T)
    assert (table.sum(-1).abs() < 1e-12).all()  # softmax is invariant to adding a constant to the logits


CASES = [
    # (label, estimator factory, problem, n, R): R keeps the SE of every entry near 0.03 · max(|H|, 1).
    # Score-function Hessians of x² are very heavy-tailed (f times a quartic in ε): plain REINFORCE
    # needs R ≈ 10⁶ there, so that case is in the slow job.
    ("score", ScoreFunction, COS, 1, 50_000),
    ("score", ScoreFunction, TABLE, 1, 5_000),
    ("score+leave-one-out", lambda: ScoreFunction(LeaveOneOut()), SQUARE, 4, 300_000),
    ("score+leave-one-out", lambda: ScoreFunction(LeaveOneOut()), COS, 4, 30_000),
    ("score+leave-one-out", lambda: ScoreFunction(LeaveOneOut()), TABLE, 4, 5_000),
    ("score+constant(0.5)", lambda: ScoreFunction(Constant(0.5)), COS, 1, 100_000),
    ("pathwise", Pathwise, COS, 1, 20_000),
]
SLOW_CASES = [
    ("score", ScoreFunction, SQUARE, 1, 1_000_000),
    ("score", ScoreFunction, SQUARE, 4, 400_000),
]


def _params(cases: list) -> list:
    return [pytest.param(*c[1:], id=f"{c[0]}/{c[2].name}/n={c[3]}") for c in cases]


def check_second_derivatives(factory, problem: Problem, n: int, replications: int, seed: int) -> None:
    with seeded(seed):
        draws = hessian_draws(problem, factory(), n=n, replications=replications)
    assert_unbiased(draws, exact_hessian(problem), power=0.05)


@pytest.mark.parametrize(("factory", "problem", "n", "replications"), _params(CASES))
def test_second_derivatives_are_unbiased(factory, problem: Problem, n: int, replications: int) -> None:
    check_second_derivatives(factory, problem, n, replications, seed=20)


@pytest.mark.slow
@pytest.mark.parametrize(("factory", "problem", "n", "replications"), _params(SLOW_CASES))
def test_second_derivatives_are_unbiased_heavy_tailed(
    factory, problem: Problem, n: int, replications: int
) -> None:
    check_second_derivatives(factory, problem, n, replications, seed=21)
