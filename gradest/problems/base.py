"""Problems with exact answers: E_{p_θ}[f] known in closed form, by quadrature or by enumeration.

A problem builds its parameters as leaf tensors with an optional leading *replication* dimension R:
one call of an estimator on the batched distribution then gives R independent gradient estimates,
one per replication, in ``param.grad[r]`` (the cost of each replication touches only its own slice).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.distributions import Distribution

from gradest.estimators.base import Estimator
from gradest.expect import expectation

__all__ = ["Problem", "CustomProblem", "gradient_draws"]


class Problem:
    """A stochastic objective J(θ) = E_{x∼p_θ}[f(x)] whose value and gradient are known exactly.

    Subclasses define ``initial`` (the parameter values, a tuple of tensors), ``dist(*params)``,
    ``f(x)`` and ``objective(*params)`` (the exact J, differentiable in the params).
    """

    name: str = "problem"
    exact: bool = True
    """Whether ``objective`` (and so ``exact_gradient``) is known; if not, see ``reference``."""
    batched: bool = True
    """Whether ``dist`` and ``f`` accept parameters with a leading replication dimension."""
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

    def reference(self) -> tuple[Estimator, int]:
        """For problems without an exact gradient: the unbiased estimator and n for a reference."""
        raise NotImplementedError(f"{self.name} has an exact gradient; it needs no reference")

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
        if problem.batched:
            out.append(_gradient(problem, est, n, problem.params(replications, dtype=dtype), replications))
        else:  # one estimate per call
            out += [_gradient(problem, est, n, problem.params(dtype=dtype), 1) for _ in range(replications)]
    return torch.cat(out, 0)


def _gradient(problem: Problem, est: Estimator, n: int, params: tuple[Tensor, ...], rows: int) -> Tensor:
    s = expectation(problem.f, problem.dist(*params), est, n=n)
    grads = torch.autograd.grad(s.sum(), params, allow_unused=True)
    flat = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    return torch.cat([g.reshape(rows, -1) for g in flat], 1)


class CustomProblem(Problem):
    """A user's objective ``E_{dist(*params)}[f(x)]`` with no known exact gradient.

    ``compare`` measures bias against a high-precision reference (see ``reference``): enumeration
    when the support is small, else the pathwise gradient when the family has ``rsample``, else the
    score function with a leave-one-out baseline and many samples.
    """

    exact = False
    batched = False

    def __init__(self, f: Callable[[Tensor], Tensor], dist: Callable[..., Distribution],
                 params: Sequence[Tensor], *, name: str = "custom") -> None:
        if not callable(f) or not callable(dist):
            raise TypeError("CustomProblem: pass (f, dist, params) with f and dist callable.")
        self._f, self.dist = f, dist  # type: ignore[method-assign]
        self._initial = tuple(torch.as_tensor(p).detach() for p in params)
        self.name = name

    def initial(self) -> tuple[Tensor, ...]:
        return self._initial

    def params(self, replications: int | None = None, dtype: torch.dtype = torch.float64) -> tuple[Tensor, ...]:
        return tuple(p.to(dtype if p.is_floating_point() else p.dtype).clone().requires_grad_() for p in self._initial)

    def f(self, x: Tensor) -> Tensor:
        return self._f(x)

    def reference(self) -> tuple[Estimator, int]:
        from gradest.estimators import Enumerate, LeaveOneOut, Pathwise, ScoreFunction

        dist = self.dist(*self.params())
        try:
            Enumerate().check(dist, 1)
            return Enumerate(), 1
        except (NotImplementedError, ValueError):
            pass
        if dist.has_rsample:
            return Pathwise(), 16
        return ScoreFunction(LeaveOneOut()), 64
