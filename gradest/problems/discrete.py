"""Discrete problems whose exact answers come from enumerating the support."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Bernoulli, Categorical, Independent

from gradest.problems.base import Problem

__all__ = ["BernoulliToy", "CategoricalTable", "BernoulliTable"]


class BernoulliToy(Problem):
    r"""The Bernoulli toy of Tucker et al. (2017): J(η) = E_{b∼Bern(σ(η))}[(b − t)²].

    .. math:: J = σ(η)(1 − t)^2 + (1 − σ(η))t^2, \qquad ∇_η J = σ(η)(1−σ(η))(1 − 2t)

    With t = 0.499 the signal is tiny against the noise: the classic hard case for score functions.

    Example:
        >>> from gradest.problems import BernoulliToy
        >>> BernoulliToy(0.499).exact_gradient()     # σ(0)(1 − σ(0))(1 − 2t) = 0.25 · 0.002
        tensor([0.0005], dtype=torch.float64)
    """

    def __init__(self, target: float = 0.45, *, logit: float = 0.0) -> None:
        self.target, self.logit = float(target), float(logit)
        self.name = f"bernoulli(t={self.target:g},logit={self.logit:g})"

    def initial(self) -> tuple[Tensor, ...]:
        return (torch.tensor(self.logit),)

    def dist(self, logits: Tensor) -> Bernoulli:
        return Bernoulli(logits=logits)

    def f(self, b: Tensor) -> Tensor:
        return (b - self.target).square()

    def objective(self, logits: Tensor) -> Tensor:
        p = torch.sigmoid(logits)
        return p * (1 - self.target) ** 2 + (1 - p) * self.target**2


class CategoricalTable(Problem):
    """J(logits) = Σ_k softmax(logits)_k · table[k], for a random table (seeded, reproducible).

    Example:
        >>> import torch
        >>> from gradest.problems import CategoricalTable
        >>> problem = CategoricalTable(10, seed=0)
        >>> float(problem.f(torch.tensor(3))) == float(problem.f(torch.eye(10, dtype=torch.float64)[3]))
        True
        >>> problem.exact_gradient().shape
        torch.Size([10])
    """

    def __init__(self, k: int = 10, *, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.table = torch.randn(k, generator=g, dtype=torch.float64)
        self.logits0 = torch.randn(k, generator=g, dtype=torch.float64)
        self.name = f"categorical(k={k},seed={seed})"

    def initial(self) -> tuple[Tensor, ...]:
        return (self.logits0,)

    def dist(self, logits: Tensor) -> Categorical:
        return Categorical(logits=logits)

    def f(self, x: Tensor) -> Tensor:
        """``table[x]`` for indices ``[n, *B]``; for one-hot or relaxed points ``[n, *B, k]`` (as
        relaxations give), the linear extension ``x · table``."""
        table = self.table.to(x.device)
        if x.is_floating_point():
            return (x * table.to(x.dtype)).sum(-1)
        return table[x]

    def objective(self, logits: Tensor) -> Tensor:
        return (torch.softmax(logits, -1) * self.table.to(logits)).sum(-1)


class BernoulliTable(Problem):
    """J(logits) = E_{b∼Π_j Bern(σ(logits_j))}[table[b]] over all 2^d states, for a random table.

    Example:
        >>> from gradest.problems import BernoulliTable
        >>> problem = BernoulliTable(3, seed=0)
        >>> problem.dist(*problem.params())        # three bits, one joint state of 2³
        Independent(Bernoulli(logits: torch.Size([3])), 1)
    """

    def __init__(self, d: int = 3, *, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.d = d
        self.table = torch.randn(2**d, generator=g, dtype=torch.float64)
        self.logits0 = torch.randn(d, generator=g, dtype=torch.float64)
        self.powers = 2 ** torch.arange(d - 1, -1, -1)
        self.name = f"bernoulli-table(d={d},seed={seed})"

    def initial(self) -> tuple[Tensor, ...]:
        return (self.logits0,)

    def dist(self, logits: Tensor) -> Independent:
        return Independent(Bernoulli(logits=logits), 1)

    def f(self, b: Tensor) -> Tensor:
        index = (b.long() * self.powers.to(b.device)).sum(-1)
        return self.table.to(b.device)[index].to(b.dtype)

    def objective(self, logits: Tensor) -> Tensor:
        states = ((torch.arange(2**self.d).unsqueeze(-1) // self.powers) % 2).to(logits)  # [2^d, d]
        log_sigmoid = torch.nn.functional.logsigmoid
        logp = (states * log_sigmoid(logits) + (1 - states) * log_sigmoid(-logits)).sum(-1)
        return (logp.exp() * self.table.to(logits)).sum(-1)
