"""Convergence: least squares reaches the closed form; L2 logistic regression converges linearly
where SGD with the same step stalls at its noise floor; float32 works; param groups keep their own lr."""

from __future__ import annotations

import pytest
import torch

from gradest.optim import SAGA, SVRG

from .problems import Problem, least_squares, logistic, minimum, subopt


def _l_max(X: torch.Tensor, curvature: float) -> float:
    """Largest per-example smoothness constant, the intercept counted as a feature equal to 1."""
    return curvature * float((X.double().square().sum(1) + 1).max())


def _lr(X: torch.Tensor, b: int, curvature: float) -> float:
    """1/(3 L(b)), the mini-batch smoothness of Gazagnadou et al. (2019), arXiv:1901.08669:
    L(b) = N(b−1)/(b(N−1)) L + (N−b)/(b(N−1)) L_max; b = 1 gives the paper's 1/(3 L_max)."""
    N = X.shape[0]
    A = torch.cat([X.double(), torch.ones(N, 1, dtype=torch.float64)], 1)
    L = curvature * float(torch.linalg.eigvalsh(A.T @ A / N).max())
    Lb = N * (b - 1) / (b * (N - 1)) * L + (N - b) / (b * (N - 1)) * _l_max(X, curvature)
    return 1 / (3 * Lb)


def _run(opt: torch.optim.Optimizer, problem: Problem, epochs: int, b: int, seed: int = 0,
         record: bool = False) -> list[float]:
    g = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(epochs):
        for _ in range(problem.N // b):
            opt.step(torch.randint(problem.N, (b,), generator=g).to(problem.X.device), problem.losses)
        if record:
            with torch.no_grad():
                values.append(float(problem.objective()))
    return values


MAKERS = {
    "saga": lambda pb, lr: SAGA(pb.groups(weight_decay=pb.lam), lr=lr, num_examples=pb.N),
    "saga-glm": lambda pb, lr: SAGA(pb.groups(weight_decay=pb.lam), lr=lr, num_examples=pb.N, features=pb.X),
    "svrg": lambda pb, lr: SVRG(pb.groups(weight_decay=pb.lam), lr=lr, num_examples=pb.N),
}


@pytest.mark.parametrize("kind,b", [
    ("saga", 1),
    ("saga-glm", 4),
    ("svrg", 4),
    pytest.param("saga-glm", 1, marks=pytest.mark.slow),
    pytest.param("saga", 4, marks=pytest.mark.slow),
])
def test_least_squares_converges_to_the_closed_form(kind: str, b: int) -> None:
    problem, exact = least_squares(N=30, D=3)
    opt = MAKERS[kind](problem, _lr(problem.X, b, 1.0))
    _run(opt, problem, epochs=60 if b == 1 else 130, b=b)
    got = torch.cat([p.detach().reshape(-1) for p in problem.params])
    torch.testing.assert_close(got, exact, rtol=1e-8, atol=1e-8)


def test_logistic_converges_linearly_where_sgd_with_the_same_step_stalls() -> None:
    problem = logistic(N=40, D=3, lam=1e-2)
    best = minimum(problem)
    lr = 1 / (3 * _l_max(problem.X, 0.25))
    results = {}
    for name in ("saga", "svrg", "sgd"):
        problem = logistic(N=40, D=3, lam=1e-2)
        groups = problem.groups(weight_decay=1e-2)
        if name == "saga":
            opt: torch.optim.Optimizer = SAGA(groups, lr=lr, num_examples=40)
        elif name == "svrg":
            opt = SVRG(groups, lr=lr, num_examples=40)
        else:
            opt = _SGD(groups, lr=lr)
        results[name] = [subopt(v, best) for v in _run(opt, problem, epochs=40, b=1, record=True)]
    saga, svrg, sgd = results["saga"], results["svrg"], results["sgd"]
    for curve in (saga, svrg):
        assert curve[-1] < 1e-12
        # linear rate: each block of 10 epochs gains at least a factor 10 until rounding
        for a, c in zip(curve[4:35:5], curve[9:40:5], strict=True):
            assert c < max(a / 10, 1e-13), curve
    # SGD with the same constant step: stuck at its noise floor, far above
    assert min(sgd[20:]) > 1e-6, sgd
    assert max(sgd[20:]) < 0.2, sgd  # (below the start, about 0.3: it did make progress)


class _SGD(torch.optim.SGD):
    """torch's SGD with the optimisers' ``step(indices, losses)`` signature, for like-for-like runs."""

    def step(self, indices, losses):  # type: ignore[override]
        self.zero_grad()
        losses(indices).mean().backward()
        return super().step()


@pytest.mark.parametrize("kind", ["saga", "saga-glm", "svrg"])
def test_float32_keeps_dtype_and_converges(kind: str) -> None:
    problem = logistic(N=40, D=3, lam=1e-2, dtype=torch.float32)
    opt = MAKERS[kind](problem, _lr(problem.X, 4, 0.25))
    _run(opt, problem, epochs=40, b=4)
    for p in problem.params:
        assert p.dtype == torch.float32
        for value in opt.state[p].values():
            if torch.is_tensor(value):
                assert value.dtype == torch.float32
    grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(problem.objective(), problem.params)])
    assert float(grad.abs().max()) < 1e-5


@pytest.mark.parametrize("kind", ["saga", "svrg"])
def test_param_groups_keep_their_own_lr_and_weight_decay(kind: str) -> None:
    problem = logistic(N=10, D=3)
    w, c = problem.params
    groups = [{"params": [w], "lr": 0.3, "weight_decay": 0.5}, {"params": [c], "lr": 0.07}]
    cls = SAGA if kind == "saga" else SVRG
    opt = cls(groups, lr=1.0, num_examples=10)
    assert [g["lr"] for g in opt.param_groups] == [0.3, 0.07]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.5, 0.0]
    _run(opt, problem, epochs=1, b=2)
    idx = torch.tensor([1, 4])
    before = [p.detach().clone() for p in problem.params]
    d = opt.direction(idx, problem.losses)
    opt.step(idx, problem.losses)
    torch.testing.assert_close(w.detach(), before[0] - 0.3 * d[0], rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(c.detach(), before[1] - 0.07 * d[1], rtol=1e-14, atol=1e-14)


def test_lr_scheduler_drives_the_step() -> None:
    problem = logistic(N=10, D=3)
    opt = SAGA(problem.params, lr=0.5, num_examples=10)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.1)
    opt.step(torch.tensor([0]), problem.losses)
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    before = [p.detach().clone() for p in problem.params]
    d = opt.direction(torch.tensor([3]), problem.losses)
    opt.step(torch.tensor([3]), problem.losses)
    torch.testing.assert_close(problem.params[0].detach(), before[0] - 0.05 * d[0], rtol=1e-14, atol=1e-14)


def test_svrg_snapshots_on_schedule_and_step_does_not_touch_grad() -> None:
    problem = logistic(N=10, D=3)
    w = problem.params[0]
    calls: list[int] = []

    def losses(i: torch.Tensor) -> torch.Tensor:
        calls.append(len(i))
        return problem.losses(i)

    opt = SVRG(problem.params, lr=0.1, num_examples=10, snapshot_every=3, chunk_size=4)
    for _ in range(4):
        opt.step(torch.tensor([1, 2]), losses)
    # step 0: the batch, then the snapshot in chunks 4+4+2 (θ = θ̃, no second call for the batch);
    # steps 1-2: the batch at θ and at θ̃; step 3: the batch, then a new snapshot
    assert calls == [2, 4, 4, 2, 2, 2, 2, 2, 2, 4, 4, 2]
    assert opt.state[w]["step"] == 4 and opt.state[w]["next_snapshot"] == 6
    assert w.grad is None

    opt = SVRG(problem.params, lr=0.1, num_examples=10)  # default: every ⌈2N/b⌉ = 10 steps at b = 2
    opt.step(torch.tensor([1, 2]), problem.losses)
    assert opt.state[w]["next_snapshot"] == 10


def test_unused_parameter_gets_zero_gradient_and_frozen_parameter_is_skipped() -> None:
    problem = logistic(N=10, D=3)
    unused = torch.ones(2, dtype=torch.float64, requires_grad=True)
    frozen = torch.ones(2, dtype=torch.float64, requires_grad=False)
    opt = SAGA([*problem.params, unused, frozen], lr=0.1, num_examples=10, weight_decay=0.5)
    opt.step(torch.tensor([0, 1]), problem.losses)
    torch.testing.assert_close(unused.detach(), torch.full((2,), 1 - 0.1 * 0.5, dtype=torch.float64))
    assert torch.equal(frozen, torch.ones(2, dtype=torch.float64))
    assert frozen not in opt.state


@pytest.mark.parametrize("kind", ["saga", "svrg"])
def test_add_param_group_mid_run(kind: str) -> None:
    """A group added after some steps gets its state (SVRG: a fresh snapshot) and stays unbiased."""
    problem = logistic(N=10, D=3)
    w, c = problem.params
    cls = SAGA if kind == "saga" else SVRG
    opt = cls([w], lr=0.1, num_examples=10)
    for j in range(3):
        opt.step(torch.tensor([j, j + 1]), problem.losses)
    opt.add_param_group({"params": [c], "lr": 0.05})
    for j in range(3):
        opt.step(torch.tensor([j, j + 4]), problem.losses)
    assert set(opt.state[c]) == set(opt.state[w])
    dirs = [opt.direction(torch.tensor([j]), problem.losses) for j in range(10)]
    mean = [torch.stack(col).mean(0) for col in zip(*dirs, strict=True)]
    for a, e in zip(mean, torch.autograd.grad(problem.losses(torch.arange(10)).mean(), [w, c]), strict=True):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)
