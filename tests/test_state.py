"""Every stateful part round-trips through ``state_dict`` / ``load_state_dict`` and a checkpoint file.

Checkpoints load with ``torch.load(..., weights_only=True)`` (STYLE.md §4): state holds only tensors.
A fresh module loaded with a state continues exactly as the original would have: the next baseline
(and so the next gradient) is identical, bit for bit.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli

import gradest


def _checkpoint(state: dict[str, object]) -> dict[str, object]:
    """torch.save then torch.load(weights_only=True), through memory."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _assert_same_state(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


_LOGITS = torch.tensor([[0.3, -1.2, 0.5], [2.0, 0.1, -0.7]], dtype=torch.float64)


def _f(x: Tensor) -> Tensor:
    return (x - 0.45).square() + 0.1 * x.cumsum(-1)


def _step(est: gradest.Estimator, seed: int, n: int = 4) -> tuple[Tensor, Tensor]:
    """One training step's surrogate and gradient on a fixed Bernoulli, drawn under ``seed``."""
    logits = _LOGITS.clone().requires_grad_()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        s = gradest.expectation(_f, Bernoulli(logits=logits), est, n=n)
    (g,) = torch.autograd.grad(s.sum(), logits)
    return s.detach(), g


def _warm(est: gradest.Estimator, steps: int = 3) -> gradest.Estimator:
    for seed in range(steps):
        _step(est, seed)
    return est


# ---------------------------------------------------------------------------------------------------
# Each stateful part
# ---------------------------------------------------------------------------------------------------


def test_moving_average_round_trip_gives_the_identical_next_baseline() -> None:
    ma = gradest.MovingAverage(0.9)
    est = _warm(gradest.ScoreFunction(ma))
    state = ma.state_dict()
    assert set(state) == {"mean", "weight"}
    assert float(state["weight"]) > 0  # the updates happened

    fresh = gradest.MovingAverage(0.9)
    fresh.load_state_dict(_checkpoint(state))
    _assert_same_state(fresh.state_dict(), state)

    # The next baseline, read directly, is identical...
    cost = torch.tensor([[0.2, 1.0, 0.3], [0.4, 0.0, 0.9]], dtype=torch.float64)
    draw = est.draw(Bernoulli(logits=_LOGITS), 2)
    b_original, b_fresh = ma(draw, cost), fresh(draw, cost)
    assert torch.equal(b_original, b_fresh)
    # ... it is not the first-call baseline of an unloaded average (b = 0), and both moved on alike.
    assert float(b_original) != 0.0
    assert float(gradest.MovingAverage(0.9)(draw, cost)) == 0.0
    _assert_same_state(fresh.state_dict(), ma.state_dict())


def test_moving_average_round_trip_gives_the_identical_next_gradient() -> None:
    original = _warm(gradest.ScoreFunction(gradest.MovingAverage(0.8)))
    restored = gradest.ScoreFunction(gradest.MovingAverage(0.8))
    restored.load_state_dict(_checkpoint(original.state_dict()))
    s1, g1 = _step(original, seed=10)
    s2, g2 = _step(restored, seed=10)
    assert torch.equal(s1, s2) and torch.equal(g1, g2)
    # and a fresh, unwarmed one differs: the state mattered
    _, g3 = _step(gradest.ScoreFunction(gradest.MovingAverage(0.8)), seed=10)
    assert not torch.equal(g1, g3)


@pytest.mark.parametrize("b", [0.7, torch.tensor([0.1, -0.2, 0.3])], ids=["number", "tensor"])
def test_constant_round_trip(b: float | Tensor) -> None:
    original = gradest.ScoreFunction(gradest.Constant(b))
    state = original.state_dict()
    assert set(state) == {"baseline.b"}
    restored = gradest.ScoreFunction(gradest.Constant(torch.zeros_like(torch.as_tensor(b))))
    restored.load_state_dict(_checkpoint(state))
    _assert_same_state(restored.state_dict(), state)
    s1, g1 = _step(original, seed=1)
    s2, g2 = _step(restored, seed=1)
    assert torch.equal(s1, s2) and torch.equal(g1, g2)


def _critic_module() -> nn.Module:
    return nn.Sequential(nn.Linear(1, 4), nn.Tanh(), nn.Linear(4, 1)).double()


def test_critic_round_trip_with_nested_module_parameters() -> None:
    torch.manual_seed(0)
    critic = gradest.Critic(_critic_module())
    est = gradest.ScoreFunction(critic)
    opt = torch.optim.SGD(est.parameters(), lr=0.1)
    for seed in range(3):  # train the critic a little: its regression loss rides in the same backward
        logits = _LOGITS.clone().requires_grad_()
        torch.manual_seed(seed)
        gradest.expectation(_f, Bernoulli(logits=logits), est, n=4).sum().backward()
        opt.step()
        opt.zero_grad()
    state = est.state_dict()
    keys = {"module.0.weight", "module.0.bias", "module.2.weight", "module.2.bias"}
    assert set(critic.state_dict()) == keys
    assert set(state) == {f"baseline.{k}" for k in keys}

    torch.manual_seed(123)  # a fresh critic starts elsewhere
    restored = gradest.ScoreFunction(gradest.Critic(_critic_module()))
    key = "baseline.module.0.weight"
    assert not torch.equal(restored.state_dict()[key], state[key])
    restored.load_state_dict(_checkpoint(state))
    _assert_same_state(restored.state_dict(), state)
    s1, g1 = _step(est, seed=5)
    s2, g2 = _step(restored, seed=5)
    assert torch.equal(s1, s2) and torch.equal(g1, g2)


def test_score_function_moving_average_nested_keys() -> None:
    est = _warm(gradest.ScoreFunction(gradest.MovingAverage(0.9)))
    state = est.state_dict()
    assert set(state) == {"baseline.mean", "baseline.weight"}
    # nested once more inside a user's model, the keys nest too
    model = nn.Module()
    model.add_module("encoder", nn.Linear(2, 3))
    model.add_module("estimator", est)
    keys = set(model.state_dict())
    assert {"estimator.baseline.mean", "estimator.baseline.weight", "encoder.weight", "encoder.bias"} == keys
    restored = nn.Module()
    restored.add_module("encoder", nn.Linear(2, 3))
    restored.add_module("estimator", gradest.ScoreFunction(gradest.MovingAverage(0.9)))
    restored.load_state_dict(_checkpoint(model.state_dict()))
    _assert_same_state(restored.state_dict(), model.state_dict())


def test_optimal_constant_running_moments_round_trip() -> None:
    original = _warm(gradest.ScoreFunction(gradest.OptimalConstant(decay=0.9)))
    state = original.state_dict()
    assert set(state) == {"baseline.num", "baseline.den"}
    assert state["baseline.num"].numel() == _LOGITS.numel()  # one running moment per parameter coordinate
    restored = gradest.ScoreFunction(gradest.OptimalConstant(decay=0.9))  # moments not yet sized
    restored.load_state_dict(_checkpoint(state))
    _assert_same_state(restored.state_dict(), state)
    s1, g1 = _step(original, seed=7)
    s2, g2 = _step(restored, seed=7)
    assert torch.equal(s1, s2) and torch.equal(g1, g2)


# ---------------------------------------------------------------------------------------------------
# Every estimator: its state (possibly empty) survives a weights_only checkpoint
# ---------------------------------------------------------------------------------------------------

FACTORIES: dict[str, Callable[[], gradest.Estimator]] = {
    "Pathwise": gradest.Pathwise,
    "ImplicitReparam": gradest.ImplicitReparam,
    "Enumerate": gradest.Enumerate,
    "ScoreFunction": gradest.ScoreFunction,
    "ScoreFunction(LeaveOneOut)": lambda: gradest.ScoreFunction(gradest.LeaveOneOut()),
    "ScoreFunction(Constant)": lambda: gradest.ScoreFunction(gradest.Constant(0.3)),
    "ScoreFunction(MovingAverage)": lambda: gradest.ScoreFunction(gradest.MovingAverage(0.9)),
    "ScoreFunction(OptimalConstant)": lambda: gradest.ScoreFunction(gradest.OptimalConstant()),
    "ScoreFunction(Critic)": lambda: gradest.ScoreFunction(gradest.Critic(nn.Linear(1, 1).double())),
    "ScoreFunction(ControlVariate)": lambda: gradest.ScoreFunction(
        gradest.ControlVariate(lambda x: x, lambda d: d.probs)
    ),
}
STATELESS = {"Pathwise", "ImplicitReparam", "Enumerate", "ScoreFunction", "ScoreFunction(LeaveOneOut)",
             "ScoreFunction(ControlVariate)"}


@pytest.mark.parametrize("name", list(FACTORIES))
def test_every_estimator_state_is_weights_only_loadable(name: str) -> None:
    est = FACTORIES[name]()
    if name.startswith("ScoreFunction"):
        _warm(est)
    state = est.state_dict()
    if name in STATELESS:
        assert state == {}
    for v in state.values():
        assert isinstance(v, Tensor)
    fresh = FACTORIES[name]()
    fresh.load_state_dict(_checkpoint(state))
    _assert_same_state(fresh.state_dict(), state)


def test_state_moves_with_to() -> None:
    est = gradest.ScoreFunction(gradest.MovingAverage(0.9)).to(torch.float64)
    assert est.state_dict()["baseline.mean"].dtype == torch.float64
    _warm(est)
    restored = gradest.ScoreFunction(gradest.MovingAverage(0.9)).to(torch.float64)
    restored.load_state_dict(_checkpoint(est.state_dict()))
    _assert_same_state(restored.state_dict(), est.state_dict())
