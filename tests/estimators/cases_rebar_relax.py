"""Registry cases for REBAR, RELAX and UnorderedSet (see cases.py for the Case contract).

Kept in its own file so that each family's cases are added without touching the others'. All three
are claimed unbiased for the true gradient, on:

- the Bernoulli toy E[(b − t)²] at t = 0.45 and t = 0.499 for several logits, and built from ``probs``;
- ``BernoulliTable(3)`` over all 2³ states (REBAR sees it through the multilinear extension of the
  table, which equals the table at every state: REBAR evaluates f at relaxed points, where a lookup
  by ``b.long()`` would be piecewise constant and break the pathwise terms);
- ``CategoricalTable(10)``, a 6-way ``OneHotCategorical`` table, a categorical built from ``probs``,
  and three independent 4-way one-hot variables with a non-additive cost (multilinear for REBAR);
- UnorderedSet for k = 1, 2, 4 and several sets (n > 1); with k equal to the support size it is
  exact on every draw.

RELAX's control is a small MLP, and ``REBAR(learn=True)`` has η and log τ; each is trained for a few
steps of its own variance loss inside the factory (on the same problem, REBAR's η from 0 on some), so
the registry checks the estimator with learned state in use.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.distributions import Categorical

from gradest.estimators.base import Estimator
from gradest.estimators.rebar_relax import REBAR, RELAX
from gradest.estimators.unordered import UnorderedSet
from gradest.expect import expectation
from gradest.problems import BernoulliTable, CategoricalTable, Problem
from tests.estimators.cases import (
    _JOINT_TABLE,
    BERNOULLI_TOYS,
    Case,
    ClosedForm,
    _case,
    joint_one_hot_table,
    one_hot_table,
)
from tests.estimators.cases_relaxed import bernoulli_probs_toy

# ---- problems whose cost is smooth on the relaxed points ----------------------------------------------


class MultilinearBernoulliTable(BernoulliTable):
    """``BernoulliTable(d)`` with f the multilinear extension Σ_s table[s] Π_j y_j^{s_j}(1 − y_j)^{1−s_j}.

    It equals ``table[b]`` at every state b, so J and its gradient are unchanged; on relaxed points
    y ∈ (0, 1)^d it is smooth, as REBAR requires.
    """

    def __init__(self, d: int = 3, *, seed: int = 0) -> None:
        super().__init__(d, seed=seed)
        self.name = f"{self.name}[multilinear]"
        self.states = (torch.arange(2**d).unsqueeze(-1) // self.powers) % 2  # [2^d, d]

    def f(self, b: Tensor) -> Tensor:
        s = self.states.to(b)
        weights = (b.unsqueeze(-2) * s + (1 - b.unsqueeze(-2)) * (1 - s)).prod(-1)  # [..., 2^d]
        return (weights * self.table.to(b)).sum(-1)


def multilinear_joint_one_hot_table() -> ClosedForm:
    """``joint_one_hot_table`` with f = Σ_{abc} table[a, b, c] x₁[a] x₂[b] x₃[c], smooth on the simplex."""
    base = joint_one_hot_table()

    def f(x: Tensor) -> Tensor:
        return torch.einsum("...a,...b,...c,abc->...", x[..., 0, :], x[..., 1, :], x[..., 2, :],
                            _JOINT_TABLE.to(x))

    initial = tuple(t.tolist() for t in base.initial())
    return ClosedForm("joint-one-hot-table[multilinear]", base.family, initial, f, base.objective)


_PROBS_TABLE = torch.tensor([0.3, -1.2, 0.8, 2.0, -0.4], dtype=torch.float64)


def _table_cost(x: Tensor) -> Tensor:
    """table[x] for indices, x · table for one-hot-shaped floats (as REBAR hands Categorical f)."""
    table = _PROBS_TABLE.to(x.device)
    return (x * table.to(x.dtype)).sum(-1) if x.is_floating_point() else table[x]


def categorical_probs(probs: Tensor) -> Categorical:
    return Categorical(probs=probs)


def categorical_probs_table() -> ClosedForm:
    """E[table[x]] for x ∼ Categorical(probs) (unnormalised: torch divides by the sum, and so does J)."""
    return ClosedForm(
        "categorical-probs-table", categorical_probs, ([0.2, 0.1, 0.4, 0.25, 0.3],), _table_cost,
        lambda p: ((p / p.sum(-1, keepdim=True)) * _PROBS_TABLE.to(p)).sum(-1),
    )


# ---- RELAX's control: an MLP over the event dims of z, trained inside the factory -------------------


class EventMLP(nn.Module):
    """c(z) for z ``[n, *B, *E']``: an MLP over the ``event_dims`` trailing dims of z, ``[n, *B]``."""

    def __init__(self, features: int, event_dims: int, hidden: int = 16) -> None:
        super().__init__()
        self.event_dims = event_dims
        self.net = nn.Sequential(nn.Linear(features, hidden), nn.Tanh(), nn.Linear(hidden, 1)).to(torch.float64)

    def forward(self, z: Tensor) -> Tensor:
        x = z.unsqueeze(-1) if self.event_dims == 0 else z.flatten(z.dim() - self.event_dims)
        return self.net(x).squeeze(-1)


TRAINING_STEPS = 20
TRAINING_REPLICATIONS = 32


def trained(make: Callable[[], Estimator], problem: Problem, *, n: int = 1, steps: int = TRAINING_STEPS,
            lr: float = 1e-2) -> Callable[[], Estimator]:
    """A factory: ``make()`` after ``steps`` Adam steps of its own parameters on their variance loss.

    Each step is one ``backward()`` of the surrogate on R = 32 replications of ``problem``: the same
    call that gives θ its gradient trains the estimator's parameters (RELAX's control, REBAR's η and τ).
    """

    def factory() -> Estimator:
        est = make()
        opt = torch.optim.Adam(est.parameters(), lr=lr)
        for _ in range(steps):
            params = problem.params(TRAINING_REPLICATIONS)
            s = expectation(problem.f, problem.dist(*params), est, n=n)
            opt.zero_grad()
            s.sum().backward()
            opt.step()
        return est

    return factory


def trained_relax(problem: Problem, features: int, event_dims: int, *, n: int = 1,
                  steps: int = TRAINING_STEPS) -> Callable[[], Estimator]:
    """A factory: RELAX with an ``EventMLP`` control, trained as in :func:`trained`."""
    return trained(lambda: RELAX(EventMLP(features, event_dims)), problem, n=n, steps=steps)


def trained_rebar(problem: Problem, temperature: float = 0.5, eta: float = 1.0, *, n: int = 1,
                  steps: int = TRAINING_STEPS) -> Callable[[], Estimator]:
    """A factory: ``REBAR(learn=True)`` after ``steps`` Adam steps (lr 0.05) of η and log τ."""
    return trained(lambda: REBAR(temperature=temperature, eta=eta, learn=True).to(torch.float64), problem,
                   n=n, steps=steps, lr=5e-2)


def _rebar(temperature: float = 0.5, eta: float = 1.0) -> Callable[[], Estimator]:
    return lambda: REBAR(temperature=temperature, eta=eta)


def _unordered(k: int) -> Callable[[], Estimator]:
    return lambda: UnorderedSet(k)


# ---- the cases ---------------------------------------------------------------------------------------


def _rebar_cases() -> list[Case]:
    cases = [_case("rebar(0.5,1)", _rebar(), p, 1, replications=20_000) for p in BERNOULLI_TOYS]
    toy = BERNOULLI_TOYS[1]
    cases += [
        _case("rebar(0.1,1)", _rebar(0.1), toy, 1, replications=20_000),
        _case("rebar(1,0.5)", _rebar(1.0, 0.5), toy, 1, replications=20_000),
        _case("rebar(0.5,1)", _rebar(), toy, 3, replications=10_000),
        _case("rebar(0.5,1)", _rebar(), bernoulli_probs_toy(), 1, replications=20_000),
        _case("rebar(0.5,1)", _rebar(), MultilinearBernoulliTable(3), 1, replications=20_000),
        _case("rebar(0.5,1)", _rebar(), MultilinearBernoulliTable(3), 2, replications=10_000),
        _case("rebar(0.5,1)", _rebar(), CategoricalTable(10), 1, replications=20_000),
        _case("rebar(0.3,1)", _rebar(0.3), CategoricalTable(10), 2, replications=10_000),
        _case("rebar(0.5,1)", _rebar(), one_hot_table(), 1, replications=20_000),
        _case("rebar(0.5,1)", _rebar(), categorical_probs_table(), 1, replications=20_000),
        _case("rebar(0.5,1)", _rebar(), multilinear_joint_one_hot_table(), 1, replications=20_000),
    ]
    return cases


def _rebar_learn_cases() -> list[Case]:
    """REBAR with η and τ trained on its variance (from poor starting values), on the smooth problems."""
    toy = BERNOULLI_TOYS[1]
    table, one_hot, joint = MultilinearBernoulliTable(3), one_hot_table(), multilinear_joint_one_hot_table()
    categorical, probs = CategoricalTable(10), categorical_probs_table()
    label = "rebar(learn)"
    cases = [_case(label, trained_rebar(p, eta=0.0), p, 1, replications=20_000) for p in BERNOULLI_TOYS]
    cases += [
        _case(label, trained_rebar(toy, 1.0, 0.5, n=3), toy, 3, replications=10_000),
        _case(label, trained_rebar(bernoulli_probs_toy()), bernoulli_probs_toy(), 1, replications=20_000),
        _case(label, trained_rebar(table, eta=0.0), table, 1, replications=20_000),
        _case(label, trained_rebar(table, n=2), table, 2, replications=10_000),
        _case(label, trained_rebar(categorical, 0.3), categorical, 1, replications=20_000),
        _case(label, trained_rebar(one_hot), one_hot, 1, replications=20_000),
        _case(label, trained_rebar(probs), probs, 1, replications=20_000),
        _case(label, trained_rebar(joint), joint, 1, replications=20_000),
    ]
    return cases


def _relax_cases() -> list[Case]:
    cases = [_case("relax(mlp)", trained_relax(p, 1, 0), p, 1, replications=20_000) for p in BERNOULLI_TOYS]
    toy = BERNOULLI_TOYS[1]
    table, categorical = BernoulliTable(3), CategoricalTable(10)
    one_hot, probs, joint = one_hot_table(), categorical_probs_table(), joint_one_hot_table()
    cases += [
        _case("relax(mlp)", trained_relax(toy, 1, 0, n=3), toy, 3, replications=10_000),
        _case("relax(mlp)", trained_relax(bernoulli_probs_toy(), 1, 0), bernoulli_probs_toy(), 1,
              replications=20_000),
        _case("relax(mlp)", trained_relax(table, 3, 1), table, 1, replications=20_000),
        _case("relax(mlp)", trained_relax(categorical, 10, 1), categorical, 1, replications=20_000),
        _case("relax(mlp)", trained_relax(one_hot, 6, 1), one_hot, 1, replications=20_000),
        _case("relax(mlp)", trained_relax(probs, 5, 1), probs, 1, replications=20_000),
        _case("relax(mlp)", trained_relax(joint, 12, 2), joint, 1, replications=20_000),
    ]
    return cases


def _unordered_set_cases() -> list[Case]:
    categorical = CategoricalTable(10)
    cases = [_case(f"unordered-set({k})", _unordered(k), categorical, 1, replications=20_000) for k in (1, 2, 4)]
    cases += [
        _case("unordered-set(3)", _unordered(3), categorical, 2, replications=10_000),
        _case("unordered-set(10)", _unordered(10), categorical, 1, claim="exact", replications=3),
        _case("unordered-set(3)", _unordered(3), one_hot_table(), 1, replications=20_000),
        _case("unordered-set(2)", _unordered(2), one_hot_table(), 3, replications=10_000),
        _case("unordered-set(6)", _unordered(6), one_hot_table(), 2, claim="exact", replications=3),
        _case("unordered-set(2)", _unordered(2), categorical_probs_table(), 1, replications=20_000),
    ]
    return cases


CASES: list[Case] = _rebar_cases() + _rebar_learn_cases() + _relax_cases() + _unordered_set_cases()
