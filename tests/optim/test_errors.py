"""Every documented error: the message names the place, the argument and its value, and the fix."""

from __future__ import annotations

import pytest
import torch

import gradest
from gradest.optim import SAGA, SVRG

from .problems import logistic

BOTH = [SAGA, SVRG]


def _params() -> list[torch.Tensor]:
    return [torch.zeros(3, requires_grad=True)]


@pytest.mark.parametrize("cls", BOTH)
@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"lr": 0.0}, ValueError, r"lr=0.0 must be finite and > 0"),
        ({"lr": -1}, ValueError, r"lr=-1 must be finite and > 0"),
        ({"lr": float("nan")}, ValueError, r"lr=nan must be finite"),
        ({"lr": "fast"}, TypeError, r"lr='fast' must be a number"),
        ({"num_examples": 0}, ValueError, r"num_examples=0 must be >= 1"),
        ({"num_examples": 10.0}, TypeError, r"num_examples=10.0 must be an int"),
        ({"weight_decay": -0.1}, ValueError, r"weight_decay=-0.1 must be finite and >= 0"),
    ],
)
def test_constructor_arguments(cls: type, kwargs: dict, error: type, match: str) -> None:
    args = {"lr": 0.1, "num_examples": 10, **kwargs}
    with pytest.raises(error, match=f"{cls.__name__}: {match}"):
        cls(_params(), **args)


@pytest.mark.parametrize("cls", BOTH)
def test_param_groups_are_checked_and_must_agree_on_num_examples(cls: type) -> None:
    with pytest.raises(ValueError, match=rf"{cls.__name__}: lr=0 must be finite and > 0"):
        cls([{"params": _params(), "lr": 0}], lr=0.1, num_examples=10)
    with pytest.raises(ValueError, match=rf"{cls.__name__}: weight_decay=-1 must be finite and >= 0"):
        cls([{"params": _params(), "weight_decay": -1}], lr=0.1, num_examples=10)
    with pytest.raises(ValueError, match=r"param group has num_examples=5 but the first group has num_examples=10"):
        cls([{"params": _params()}, {"params": _params(), "num_examples": 5}], lr=0.1, num_examples=10)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"snapshot_every": 0}, ValueError, r"SVRG: snapshot_every=0 must be >= 1"),
        ({"snapshot_every": 2.5}, TypeError, r"SVRG: snapshot_every=2.5 must be an int"),
        ({"chunk_size": 0}, ValueError, r"SVRG: chunk_size=0 must be >= 1"),
    ],
)
def test_svrg_arguments(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        SVRG(_params(), lr=0.1, num_examples=10, **kwargs)


def test_glm_arguments() -> None:
    X = torch.randn(10, 3)
    with pytest.raises(TypeError, match=r"SAGA: features=list must be a tensor"):
        SAGA(_params(), lr=0.1, num_examples=10, features=[[1.0]])
    with pytest.raises(ValueError, match=r"SAGA: features has shape \(9, 3\), expected "
                                         r"\(num_examples, D\) = \(10, D\)"):
        SAGA(_params(), lr=0.1, num_examples=10, features=X[:9])
    with pytest.raises(ValueError, match=r"SAGA: features=... \(the GLM table\) needs exactly the weight"):
        SAGA([*_params(), *_params(), *_params()], lr=0.1, num_examples=10, features=X)
    with pytest.raises(ValueError, match=r"SAGA: the first parameter \(the weight\) has shape \(4,\), expected \(D,\)"):
        SAGA([torch.zeros(4, requires_grad=True)], lr=0.1, num_examples=10, features=X)
    with pytest.raises(ValueError, match=r"SAGA: the bias has shape \(2,\), expected 1 element"):
        SAGA([*_params(), torch.zeros(2, requires_grad=True)], lr=0.1, num_examples=10, features=X)


def test_glm_rejects_a_model_that_is_not_a_glm_in_features() -> None:
    problem = logistic(N=10, D=3)
    w = problem.params[0]

    def with_penalty(i: torch.Tensor) -> torch.Tensor:  # the L2 term belongs in weight_decay
        return problem.losses(i) + 0.5 * w.square().sum()

    opt = SAGA(problem.params, lr=0.1, num_examples=10, features=problem.X)
    opt.step(torch.tensor([0]), problem.losses)
    with torch.no_grad():
        w.add_(1.0)
    with pytest.raises(ValueError, match=r"SAGA.step: the per-example gradients are not those of a generalised "
                                         r"linear model in features \(relative residual"):
        opt.step(torch.tensor([0, 1]), with_penalty)


@pytest.mark.parametrize("cls", BOTH)
@pytest.mark.parametrize(
    "indices,error,match",
    [
        (torch.tensor([3, 1200]), ValueError, r"index=1200 is outside \[0, num_examples=1000\)\."),
        (torch.tensor([-1]), ValueError, r"index=-1 is outside \[0, num_examples=1000\)\."),
        ([1, 2], TypeError, r"indices=list must be a 1-D integer tensor"),
        (torch.tensor([1.0]), TypeError, r"indices has dtype torch.float32; example indices must be an integer"),
        (torch.tensor(3), ValueError, r"indices has shape \(\); expected a non-empty 1-D tensor"),
        (torch.zeros(0, dtype=torch.long), ValueError, r"indices has shape \(0,\); expected a non-empty"),
        (torch.zeros(2, 2, dtype=torch.long), ValueError, r"indices has shape \(2, 2\); expected"),
    ],
)
def test_bad_indices(cls: type, indices: object, error: type, match: str) -> None:
    problem = logistic(N=1000, D=3)
    opt = cls(problem.params, lr=0.1, num_examples=1000)
    with pytest.raises(error, match=f"{cls.__name__}.step: {match}"):
        opt.step(indices, problem.losses)
    if cls is SAGA:
        with pytest.raises(error, match=f"SAGA.direction: {match}"):
            opt.direction(indices, problem.losses)


@pytest.mark.parametrize("cls", BOTH)
def test_bad_losses(cls: type) -> None:
    problem = logistic(N=10, D=3)
    w = problem.params[0]
    opt = cls(problem.params, lr=0.1, num_examples=10)
    idx = torch.tensor([1, 2])
    name = cls.__name__
    with pytest.raises(TypeError, match=rf"{name}.step: losses=int is not callable; pass a function"):
        opt.step(idx, 3)
    with pytest.raises(TypeError, match=rf"{name}.step: losses\(indices\) returned float; it must return a tensor"):
        opt.step(idx, lambda i: 1.0)
    with pytest.raises(ValueError, match=rf"{name}.step: losses\(indices\) returned shape \(\), expected "
                                         r"\(len\(indices\),\) = \(2,\); return one loss per example"):
        opt.step(idx, lambda i: problem.losses(i).mean())
    with pytest.raises(ValueError, match=r"returned shape \(2, 1\), expected \(len\(indices\),\) = \(2,\)"):
        opt.step(idx, lambda i: problem.losses(i).unsqueeze(1))
    with pytest.raises(TypeError, match=rf"{name}.step: losses\(indices\) returned dtype torch.int64"):
        opt.step(idx, lambda i: i)
    with pytest.raises(ValueError, match=rf"{name}.step: losses\(indices\) does not depend on the parameters"):
        opt.step(idx, lambda i: problem.losses(i).detach())
    with pytest.raises(ValueError, match=rf"{name}.step: losses\(indices\) contains NaN \(1 of 2 elements\)"):
        opt.step(idx, lambda i: problem.losses(i) * torch.where(i == 2, float("nan"), 1.0).to(w.dtype))
    gradest.set_validation(False)
    try:
        opt.step(idx, lambda i: problem.losses(i) * torch.where(i == 2, float("nan"), 1.0).to(w.dtype))
    finally:
        gradest.set_validation(True)


def test_svrg_direction_before_any_snapshot() -> None:
    problem = logistic(N=10, D=3)
    opt = SVRG(problem.params, lr=0.1, num_examples=10)
    with pytest.raises(RuntimeError, match=r"SVRG.direction: no snapshot yet; call step\(\) once first"):
        opt.direction(torch.tensor([1]), problem.losses)


@pytest.mark.parametrize("name", ["lr", "weight_decay"])
def test_functional_core_needs_one_rate_per_parameter(name: str) -> None:
    from gradest.optim import saga_direction, saga_step

    params = [torch.zeros(3), torch.zeros(())]
    deltas, means = [torch.ones(2, 3), torch.ones(2)], [torch.zeros(3), torch.zeros(())]
    kwargs = {"lr": 0.1, "weight_decay": 0.0, name: [0.1]}
    with pytest.raises(ValueError, match=rf"saga_step: {name}=\[0.1\] has 1 value\(s\) for 2 parameters"):
        saga_step(params, deltas, means, num_examples=4, **kwargs)
    if name == "weight_decay":
        with pytest.raises(ValueError, match=r"saga_direction: weight_decay=\[0.1\] has 1 value\(s\) for 2"):
            saga_direction(params, deltas, means, weight_decay=[0.1])
    # a number, or one per parameter, give the same step
    one, each = [p.clone() for p in params], [p.clone() for p in params]
    saga_step(one, deltas, [m.clone() for m in means], lr=0.1, weight_decay=0.5, num_examples=4)
    saga_step(each, deltas, [m.clone() for m in means], lr=[0.1, 0.1], weight_decay=[0.5, 0.5], num_examples=4)
    for a, b in zip(one, each, strict=True):
        assert torch.equal(a, b)
