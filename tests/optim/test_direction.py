"""The variance-reduced direction is unbiased, exactly: averaged over all N indices (or over every
batch of a sampling scheme) it equals the full gradient, whatever the table or snapshot holds.

The expectation over the index set is computed by enumeration, so the only slack is rounding.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from gradest.optim import SAGA, SVRG

from .problems import Problem, logistic, mlp

TOL = 1e-12  # float64 rounding over a few hundred operations


def _warm_up(opt: torch.optim.Optimizer, problem: Problem, steps: int = 25, b: int = 2) -> None:
    """Fill the table / move away from the snapshot with some steps on random batches."""
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        opt.step(torch.randint(problem.N, (b,), generator=g), problem.losses)


def _assert_close(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    for a, e in zip(got, want, strict=True):
        torch.testing.assert_close(a, e, rtol=TOL, atol=TOL)


def _average(opt: SAGA | SVRG, problem: Problem, batches: list[list[int]]) -> list[torch.Tensor]:
    dirs = [opt.direction(torch.tensor(B), problem.losses) for B in batches]
    return [torch.stack(col).mean(0) for col in zip(*dirs, strict=True)]


def _make(kind: str, problem: Problem, **kw):
    if kind == "saga":
        return SAGA(problem.groups(weight_decay=problem.lam), lr=0.05, num_examples=problem.N, **kw)
    if kind == "saga-glm":
        return SAGA(problem.groups(weight_decay=problem.lam), lr=0.05, num_examples=problem.N,
                    features=problem.X, **kw)
    return SVRG(problem.groups(weight_decay=problem.lam), lr=0.05, num_examples=problem.N,
                snapshot_every=10, **kw)


PROBLEMS = {
    "logistic": lambda N: logistic(N=N, D=3, lam=0.1),
    "mlp": lambda N: mlp(N=N, lam=0.0),
}
CASES = [("saga", "logistic"), ("saga", "mlp"), ("saga-glm", "logistic"), ("svrg", "logistic"), ("svrg", "mlp")]


@pytest.mark.parametrize("kind,name", CASES)
def test_direction_averaged_over_all_indices_is_the_full_gradient(kind: str, name: str) -> None:
    problem = PROBLEMS[name](10)
    opt = _make(kind, problem)
    _warm_up(opt, problem, steps=23)  # SVRG: 23 steps, snapshot at 20, 3 steps past it
    got = _average(opt, problem, [[j] for j in range(problem.N)])
    _assert_close(got, problem.full_gradient())


@pytest.mark.parametrize("kind,name", CASES)
def test_minibatch_direction_is_unbiased_with_and_without_replacement(kind: str, name: str) -> None:
    problem = PROBLEMS[name](6)
    opt = _make(kind, problem)
    _warm_up(opt, problem, steps=13)
    want = problem.full_gradient()
    N = problem.N
    with_replacement = [list(B) for B in itertools.product(range(N), repeat=2)]  # includes (i, i)
    without = [list(B) for B in itertools.combinations(range(N), 3)]
    _assert_close(_average(opt, problem, with_replacement), want)
    _assert_close(_average(opt, problem, without), want)


def test_direction_is_what_step_takes_and_changes_no_state() -> None:
    for kind in ("saga", "saga-glm", "svrg"):
        problem = logistic(N=10, D=3, lam=0.1)
        opt = _make(kind, problem)
        _warm_up(opt, problem, steps=5)
        before = [p.detach().clone() for p in problem.params]
        state = {k: v.clone() if torch.is_tensor(v) else v for s in opt.state.values() for k, v in s.items()}
        idx = torch.tensor([3, 7, 3])
        d = opt.direction(idx, problem.losses)
        after_dir = {k: v.clone() if torch.is_tensor(v) else v for s in opt.state.values() for k, v in s.items()}
        assert state.keys() == after_dir.keys()
        for k in state:
            assert torch.equal(torch.as_tensor(state[k]), torch.as_tensor(after_dir[k])), (kind, k)
        opt.step(idx, problem.losses)
        for p, b, di in zip(problem.params, before, d, strict=True):
            torch.testing.assert_close(p.detach(), b - 0.05 * di, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("features", [False, True])
def test_table_mean_stays_the_mean_of_the_table_with_repeated_indices(features: bool) -> None:
    problem = logistic(N=10, D=3, lam=0.1)
    opt = SAGA(problem.groups(weight_decay=0.1), lr=0.05, num_examples=10,
               features=problem.X if features else None)
    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        opt.step(torch.randint(10, (6,), generator=g), problem.losses)  # repeats are common
    w, c = problem.params
    if features:
        alpha = opt.state[w]["table"]
        rows = [alpha[:, None] * problem.X, alpha]
    else:
        rows = [opt.state[w]["table"], opt.state[c]["table"]]
    for p, r in zip(problem.params, rows, strict=True):
        torch.testing.assert_close(opt.state[p]["table_mean"], r.mean(0), rtol=1e-13, atol=1e-14)


def test_glm_table_matches_the_dense_table() -> None:
    """Same steps, same parameters (to rounding): the scalar table rebuilds the dense gradients."""
    runs = []
    for features in (False, True):
        problem = logistic(N=10, D=3, lam=0.1)
        opt = SAGA(problem.groups(weight_decay=0.1), lr=0.1, num_examples=10,
                   features=problem.X if features else None)
        g = torch.Generator().manual_seed(0)
        for _ in range(50):
            opt.step(torch.randint(10, (3,), generator=g), problem.losses)
        runs.append([p.detach() for p in problem.params])
    _assert_close(runs[1], runs[0])


def test_glm_without_bias_and_with_several_outputs() -> None:
    """W [K, D] without a bias: α_i ∈ R^K from the projection on x_i; table [N, K]."""
    g = torch.Generator().manual_seed(0)
    N, D, K = 9, 4, 3
    X = torch.randn(N, D, generator=g, dtype=torch.float64)
    y = torch.randint(K, (N,), generator=g)
    W = torch.zeros(K, D, dtype=torch.float64, requires_grad=True)

    def losses(i: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(X[i] @ W.T, y[i], reduction="none")

    problem = Problem([W], losses, X, N, lam=0.0)
    opt = SAGA([W], lr=0.1, num_examples=N, features=X)
    _warm_up(opt, problem, steps=20)
    assert opt.state[W]["table"].shape == (N, K)
    _assert_close(_average(opt, problem, [[j] for j in range(N)]), problem.full_gradient())


def test_per_example_gradients_fall_back_to_a_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """An operation vmap cannot batch: the loop gives the same rows."""
    problem = mlp(N=8)
    opt = SAGA(problem.params, lr=0.05, num_examples=8)
    want = opt.direction(torch.tensor([0, 5, 2]), problem.losses)
    grad = torch.autograd.grad

    def no_batching(*args, **kwargs):
        if kwargs.get("is_grads_batched"):
            raise RuntimeError("vmap: no batching rule")
        return grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", no_batching)
    _assert_close(opt.direction(torch.tensor([0, 5, 2]), problem.losses), want)
