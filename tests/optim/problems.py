"""Small finite sums with known answers, shared by the optimiser tests.

Each builder returns a ``Problem``: fresh parameters, the per-example ``losses`` closure over them,
and ``objective()``, the full (1/N) Σ ℓ_i + (λ/2)‖w‖² at the current parameters (λ only on the weight,
which is how the tests configure ``weight_decay``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class Problem:
    params: list[Tensor]
    losses: Callable[[Tensor], Tensor]
    X: Tensor
    N: int
    lam: float = 0.0

    def objective(self) -> Tensor:
        full = self.losses(torch.arange(self.N, device=self.X.device)).mean()
        return full + self.lam / 2 * self.params[0].square().sum()

    def full_gradient(self) -> list[Tensor]:
        """∇[(1/N) Σ ℓ_i + (λ/2)‖θ_0‖²] (the weight-decay term on the first parameter only)."""
        return list(torch.autograd.grad(self.objective(), self.params))

    def groups(self, **first: float) -> list[dict]:
        """The weight in its own group (with ``first``, e.g. weight_decay=λ), the rest in another."""
        out: list[dict] = [{"params": [self.params[0]], **first}]
        if len(self.params) > 1:
            out.append({"params": self.params[1:]})
        return out


def data(N: int, D: int, *, seed: int = 0, dtype: torch.dtype = torch.float64,
         device: str = "cpu") -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(N, D, generator=g, dtype=torch.float64)
    w = torch.randn(D, generator=g, dtype=torch.float64)
    y = (torch.rand(N, generator=g, dtype=torch.float64) < torch.sigmoid(X @ w + 0.3)).double()
    return X.to(device, dtype), y.to(device, dtype)


def logistic(N: int = 40, D: int = 3, *, lam: float = 1e-2, bias: bool = True, seed: int = 0,
             dtype: torch.dtype = torch.float64, device: str = "cpu") -> Problem:
    """ℓ_i = log(1 + exp(−s_i (x_i·w + c))), labels y ∈ {0, 1}."""
    X, y = data(N, D, seed=seed, dtype=dtype, device=device)
    w = torch.zeros(D, dtype=dtype, device=device, requires_grad=True)
    c = torch.zeros((), dtype=dtype, device=device, requires_grad=True)

    def losses(i: Tensor) -> Tensor:
        z = X[i] @ w + (c if bias else 0)
        return F.binary_cross_entropy_with_logits(z, y[i], reduction="none")

    return Problem([w, c] if bias else [w], losses, X, N, lam)


def least_squares(N: int = 30, D: int = 3, *, seed: int = 0, dtype: torch.dtype = torch.float64,
                  device: str = "cpu") -> tuple[Problem, Tensor]:
    """ℓ_i = ½ (x_i·w + c − t_i)², and the closed-form minimiser (w*, c*) from lstsq."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(N, D, generator=g, dtype=torch.float64)
    t = X @ torch.randn(D, generator=g, dtype=torch.float64) + 0.5 + 0.3 * torch.randn(N, generator=g,
                                                                                  dtype=torch.float64)
    A = torch.cat([X, torch.ones(N, 1, dtype=torch.float64)], 1)
    exact = torch.linalg.lstsq(A, t.unsqueeze(1)).solution.squeeze(1)
    X, t = X.to(device, dtype), t.to(device, dtype)
    w = torch.zeros(D, dtype=dtype, device=device, requires_grad=True)
    c = torch.zeros((), dtype=dtype, device=device, requires_grad=True)

    def losses(i: Tensor) -> Tensor:
        return 0.5 * (X[i] @ w + c - t[i]).square()

    return Problem([w, c], losses, X, N), exact.to(device, dtype)


def mlp(N: int = 12, D: int = 4, H: int = 5, K: int = 3, *, seed: int = 0, lam: float = 0.0,
        dtype: torch.dtype = torch.float64, device: str = "cpu") -> Problem:
    """A non-linear model: softmax regression on a tanh layer."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(N, D, generator=g, dtype=torch.float64).to(device, dtype)
    y = torch.randint(K, (N,), generator=g).to(device)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(D, H), nn.Tanh(), nn.Linear(H, K)).to(device, dtype)

    def losses(i: Tensor) -> Tensor:
        return F.cross_entropy(net(X[i]), y[i], reduction="none")

    return Problem(list(net.parameters()), losses, X, N, lam)


def subopt(value: float, best: float) -> float:
    return (value - best) / abs(best)


def minimum(problem: Problem) -> float:
    """The optimal objective, by L-BFGS in float64 on a copy of the parameters, polished to rounding."""
    saved = [p.detach().clone() for p in problem.params]
    opt = torch.optim.LBFGS(problem.params, lr=1, max_iter=1000, tolerance_grad=1e-15, tolerance_change=0,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = problem.objective()
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
    with torch.no_grad():
        best = float(problem.objective())
    with torch.no_grad():
        for p, s in zip(problem.params, saved, strict=True):
            p.copy_(s)
            p.grad = None
    return best
