"""Problems with exact answers: E_{p_θ}[f] known in closed form, by quadrature or by enumeration.

A problem builds its parameters as leaf tensors with an optional leading *replication* dimension R:
one call of an estimator on the batched distribution then gives R independent gradient estimates,
one per replication, in ``param.grad[r]`` (the cost of each replication touches only its own slice).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import Distribution

from gradest.estimators.base import Estimator
from gradest.expect import expectation

__all__ = ["Problem", "gradient_draws"]


class Problem:
    """A stochastic objective J(θ) = E_{x∼p_θ}[f(x)] whose value and gradient are known exactly.

    Subclasses define ``initial`` (the parameter values, a tuple of tensors), ``dist(*params)``,
    ``f(x)`` and ``objective(*params)`` (the exact J, differentiable in the params).
    """

    name: str = "problem"
    dist: Callable[..., Distribution]
    """``dist(*params)``: the distribution p_θ at the given parameters."""
    objective: Callable[..., Tensor]
    """``objective(*params)``: the exact J(θ), differentiable in the parameters."""

    def initial(self) -> tuple[Tensor, ...]:
        raise NotImplementedError

    def f(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def params(self, replications: int | None = None, dtype: torch.dtype = torch.float64) -> tuple[Tensor, ...]:
        """Fresh leaf parameters, ``[R, *shape]`` each when ``replications=R`` is given."""
        out = []
        for p in self.initial():
            p = p.to(dtype)
            if replications is not None:
                p = p.expand(replications, *p.shape)
            out.append(p.clone().requires_grad_())
        return tuple(out)

    def exact_value(self, dtype: torch.dtype = torch.float64) -> Tensor:
        return self.objective(*self.params(dtype=dtype)).detach()

    def exact_gradient(self, dtype: torch.dtype = torch.float64) -> Tensor:
        """The exact gradient, flattened over all parameters: ``[D]``."""
        params = self.params(dtype=dtype)
        grads = torch.autograd.grad(self.objective(*params), params)
        return torch.cat([g.reshape(-1) for g in grads])

    def __repr__(self) -> str:
        return self.name


def gradient_draws(
    problem: Problem,
    estimator: Estimator | Callable[[], Estimator],
    *,
    n: int = 1,
    replications: int = 1000,
    calls: int = 1,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """``[calls · R, D]`` independent gradient estimates of ``problem`` by ``estimator``.

    Each call draws R replications at once along a leading batch dimension. ``estimator`` is an
    Estimator, or a factory returning one (called once; state such as a moving average persists
    across ``calls``, as it would across training steps).
    """
    est = estimator if isinstance(estimator, Estimator) else estimator()
    out = []
    for _ in range(calls):
        params = problem.params(replications, dtype=dtype)
        s = expectation(problem.f, problem.dist(*params), est, n=n)
        grads = torch.autograd.grad(s.sum(), params, allow_unused=True)
        flat = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
        out.append(torch.cat([g.reshape(replications, -1) for g in flat], 1))
    return torch.cat(out, 0)
