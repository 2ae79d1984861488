"""SAGA agrees with scikit-learn's SAGA solver on L2 logistic regression: the same optimum, and a
comparable number of epochs to 1e-6 relative suboptimality at scikit-learn's own step-size rule.

scikit-learn minimises C Σ ℓ_i + ½‖w‖² (intercept unpenalised); with C = 1/(λN) that is N C times
(1/N) Σ ℓ_i + (λ/2)‖w‖², our objective with ``weight_decay=λ`` on the weight only.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from gradest.optim import SAGA

from .problems import Problem, data, logistic, minimum, subopt

sklearn_linear = pytest.importorskip("sklearn.linear_model")

N, D, LAM = 200, 5, 1e-2


def _problem() -> tuple[Problem, torch.Tensor]:
    problem = logistic(N=N, D=D, lam=LAM)
    with torch.no_grad():
        problem.X.sub_(problem.X.mean(0)).div_(problem.X.std(0))  # standardised, as scikit-learn users do
    _, y = data(N, D)
    return problem, y


def _sklearn(problem: Problem, y: torch.Tensor, max_iter: int) -> torch.Tensor:
    model = sklearn_linear.LogisticRegression(solver="saga", C=1 / (LAM * N), tol=0, max_iter=max_iter,
                                              random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: max_iter is the point
        model.fit(problem.X.numpy(), y.numpy())
    return torch.tensor([*model.coef_[0], model.intercept_[0]], dtype=torch.float64)


def _value(problem: Problem, theta: torch.Tensor) -> float:
    w, c = problem.params
    saved = [w.detach().clone(), c.detach().clone()]
    with torch.no_grad():
        w.copy_(theta[:-1])
        c.copy_(theta[-1])
        value = float(problem.objective())
        w.copy_(saved[0])
        c.copy_(saved[1])
    return value


def test_saga_matches_sklearn_saga_optimum_and_epochs() -> None:
    problem, y = _problem()
    best = minimum(problem)

    # scikit-learn: fresh fits with max_iter = k are exact prefixes of one run
    sk_epochs = next(k for k in range(1, 100) if subopt(_value(problem, _sklearn(problem, y, k)), best) < 1e-6)
    sk_optimum = _sklearn(problem, y, 300)

    # gradest at scikit-learn's step rule: η = 1 / (2L + min(2Nλ, L)), L = max‖x‖²/4 + 1/4 + λ
    L = 0.25 * (float(problem.X.square().sum(1).max()) + 1) + LAM
    lr = 1 / (2 * L + min(2 * N * LAM, L))
    opt = SAGA(problem.groups(weight_decay=LAM), lr=lr, num_examples=N, features=problem.X)
    g = torch.Generator().manual_seed(0)
    epochs = None
    for epoch in range(1, 40):
        for j in torch.randint(N, (N, 1), generator=g):
            opt.step(j, problem.losses)
        with torch.no_grad():
            gap = subopt(float(problem.objective()), best)
        if epochs is None and gap < 1e-6:
            epochs = epoch
        if gap < 1e-13:
            break
    assert epochs is not None and epochs <= 1.5 * sk_epochs, (epochs, sk_epochs)

    ours = torch.cat([p.detach().reshape(-1) for p in problem.params])
    assert subopt(_value(problem, sk_optimum), best) < 1e-13
    assert gap < 1e-13
    torch.testing.assert_close(ours, sk_optimum, rtol=1e-6, atol=1e-6)
