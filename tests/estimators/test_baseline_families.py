"""Which families each sample-based baseline supports, checked on every problem of the registry.

A baseline estimated from the other samples (leave-one-out, the optimal constant) equals c exactly when
the cost is the constant c, so the estimate of the (zero) gradient is zero to rounding, where plain
REINFORCE gives c·Σ∇log p. This catches a baseline that silently does nothing for some family, which
no unbiasedness test can see. Families whose parameters these baselines cannot read raise instead.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.distributions import Beta, LogNormal, Multinomial

from gradest import Critic, LeaveOneOut, OptimalConstant, ScoreFunction, expectation
from gradest.problems import Problem
from tests.estimators.cases import CASES, seeded

PROBLEMS = list({case.problem.name: case.problem for case in CASES}.values())

# OptimalConstant rebuilds the distribution from its constructor parameters; Beta keeps them on a
# wrapped Dirichlet, so it is refused (see test_unreadable_parameters_are_refused).
UNSUPPORTED = {OptimalConstant: ("Beta",)}


def _gradient(problem: Problem, baseline: nn.Module | None) -> tuple[Tensor, ...]:
    params = problem.params(64)
    dist = problem.dist(*params)

    def constant(x: Tensor) -> Tensor:
        return torch.full(x.shape[: 1 + len(dist.batch_shape)], 2.5, dtype=torch.float64)

    with seeded(16):
        s = expectation(constant, dist, ScoreFunction(baseline), n=4)
    return torch.autograd.grad(s.sum(), params)


@pytest.mark.parametrize("baseline", [LeaveOneOut, OptimalConstant])
@pytest.mark.parametrize("problem", PROBLEMS, ids=repr)
def test_baseline_removes_a_constant_cost(problem: Problem, baseline: type) -> None:
    if type(problem.dist(*problem.params())).__name__ in UNSUPPORTED.get(baseline, ()):
        with pytest.raises(NotImplementedError, match=rf"{baseline.__name__}: dist=.*Use LeaveOneOut\(\) instead"):
            _gradient(problem, baseline())
        return
    plain = _gradient(problem, None)
    scale = max(float(g.abs().max()) for g in plain)
    assert scale > 0.1  # plain REINFORCE does see the constant
    for g in _gradient(problem, baseline()):
        assert g.abs().max() <= 1e-12 * scale, (problem.name, float(g.abs().max()))


@pytest.mark.parametrize(
    "dist",
    [
        Beta(torch.tensor([2.0, 3.0]), torch.tensor([1.0, 4.0])),
        LogNormal(torch.zeros(2), torch.ones(2)),
        Multinomial(3, logits=torch.zeros(2, 3)),
    ],
    ids=lambda d: type(d).__name__,
)
@pytest.mark.parametrize(
    ("baseline", "match"),
    [
        (OptimalConstant, "OptimalConstant: dist=.* Use LeaveOneOut"),
        (lambda: Critic(nn.Linear(2, 1)), "Critic: dist=.* inputs="),
    ],
    ids=["OptimalConstant", "Critic"],
)
def test_unreadable_parameters_are_refused(dist, baseline, match: str) -> None:
    """Parameters kept on a wrapped distribution: a clear error before any work, not a silent no-op
    (OptimalConstant) or a failure deep inside torch.cat (Critic's default inputs)."""
    def f(x: Tensor) -> Tensor:
        return x.reshape(4, *dist.batch_shape, -1).sum(-1)

    with pytest.raises(NotImplementedError, match=match):
        expectation(f, dist, ScoreFunction(baseline()), n=4)


def test_critic_with_explicit_inputs_accepts_any_family() -> None:
    dist = Beta(torch.tensor([2.0, 3.0]), torch.tensor([1.0, 4.0]))
    critic = Critic(nn.Linear(1, 1), inputs=lambda d: torch.ones(2, 1))
    assert expectation(lambda x: x, dist, ScoreFunction(critic), n=4).shape == (2,)
