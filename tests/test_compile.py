"""Surrogates compile with ``torch.compile(fullgraph=True)``: a whole training step, no graph break.

A step is: a tiny model outputs distribution parameters, ``gradest.expectation`` builds the
surrogate, its gradient is taken, and an SGD update is applied. It is compiled in two forms:

- ``backward``: ``loss.backward()`` and an in-place SGD update of ``p.grad``. Dynamo traces
  ``Tensor.backward`` only with ``torch._dynamo.config.trace_autograd_ops`` (torch >= 2.13); the form is
  skipped where the flag does not exist. ``torch.optim.SGD.step`` graph-breaks by design in torch
  (``optimizer._use_grad`` calls ``torch._dynamo.graph_break()``), so the update is written out.
- ``func``: ``torch.func.grad_and_value`` over ``torch.func.functional_call`` and a functional update.

Both are compared with the same step run eagerly under the same seed. ``aot_eager`` runs the random
ops of the graph eagerly, so the samples and hence the results are identical; the slow ``inductor``
variant sets ``fallback_random`` so that inductor draws with the eager generator too.
Distributions built inside a compiled function use ``validate_args=False`` (their argument checks
force a device sync); gradest's own sync-forcing checks are off while compiling.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Normal

import gradest

LR = 0.1
HAS_TRACE_AUTOGRAD_OPS = hasattr(torch._dynamo.config, "trace_autograd_ops")


@pytest.fixture(autouse=True)
def fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


ESTIMATORS: dict[str, Callable[[], gradest.Estimator]] = {
    "Pathwise": gradest.Pathwise,
    "ScoreFunction(LeaveOneOut)": lambda: gradest.ScoreFunction(gradest.LeaveOneOut()),
    "ScoreFunction(OptimalConstant)": lambda: gradest.ScoreFunction(gradest.OptimalConstant()),
    "ScoreFunction(MovingAverage)": lambda: gradest.ScoreFunction(gradest.MovingAverage(0.5)),
}
KINDS = ["Pathwise", "ScoreFunction(LeaveOneOut)"]  # the two the design names; the others guard fixes
# Stateful baselines update buffers in place, which torch.func transforms refuse (captured mutation).
STATELESS_KINDS = ["Pathwise", "ScoreFunction(LeaveOneOut)", "ScoreFunction(OptimalConstant)"]
ALL_KINDS = list(ESTIMATORS)


def _surrogate(est: gradest.Estimator, out: Tensor) -> Tensor:
    """The objective of one step, from the model's output ``[5, 3]``."""
    if isinstance(est, gradest.Pathwise):
        dist = Normal(out[:, 0], nn.functional.softplus(out[:, 1]) + 0.1, validate_args=False)
        s = gradest.expectation(lambda z: (z - out[:, 2]).square(), dist, est, n=4)
    else:
        dist = Categorical(logits=out, validate_args=False)
        table = torch.tensor([1.0, -2.0, 0.5])
        s = gradest.expectation(lambda k: table[k], dist, est, n=4)
    return s.mean()


def _backward_step(model: nn.Module, x: Tensor, est: gradest.Estimator) -> tuple[Tensor, list[Tensor]]:
    loss = _surrogate(est, model(x))
    loss.backward()
    grads = []
    with torch.no_grad():
        for p in model.parameters():
            grads.append(p.grad.clone())
            p.sub_(LR * p.grad)
            p.grad = None
    return loss.detach(), grads


def _func_step(model: nn.Module, est: gradest.Estimator) -> Callable:
    def loss_fn(params: dict[str, Tensor], x: Tensor) -> Tensor:
        return _surrogate(est, torch.func.functional_call(model, params, (x,)))

    def step(params: dict[str, Tensor], x: Tensor) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        grads, loss = torch.func.grad_and_value(loss_fn)(params, x)
        return loss, grads, {k: p - LR * grads[k] for k, p in params.items()}

    return step


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 3))


X = torch.linspace(-1, 1, 10).reshape(5, 2)


def _assert_useful(grads: list[Tensor]) -> None:
    assert all(bool(g.isfinite().all()) for g in grads)
    assert any(bool(g.abs().sum() > 0) for g in grads)


def _check_backward_form(kind: str, backend: str, steps: int = 2) -> None:
    eager_model, compiled_model = _model(), _model()
    eager_est, compiled_est = ESTIMATORS[kind](), ESTIMATORS[kind]()
    compiled = torch.compile(_backward_step, fullgraph=True, backend=backend)
    for seed in range(steps):
        torch.manual_seed(seed)
        eager_loss, eager_grads = _backward_step(eager_model, X, eager_est)
        torch.manual_seed(seed)
        with torch._dynamo.config.patch(trace_autograd_ops=True):
            loss, grads = compiled(compiled_model, X, compiled_est)
        torch.testing.assert_close(loss, eager_loss)
        _assert_useful(grads)
        torch.testing.assert_close(grads, eager_grads)
        torch.testing.assert_close(list(compiled_model.parameters()), list(eager_model.parameters()))
        torch.testing.assert_close(compiled_est.state_dict(), eager_est.state_dict())


def _check_func_form(kind: str, backend: str, steps: int = 2) -> None:
    model = _model()
    eager_params = {k: v.detach().clone() for k, v in model.named_parameters()}
    params = copy.deepcopy(eager_params)
    eager_step = _func_step(model, ESTIMATORS[kind]())
    compiled = torch.compile(_func_step(model, ESTIMATORS[kind]()), fullgraph=True, backend=backend)
    for seed in range(steps):
        torch.manual_seed(seed)
        eager_loss, eager_grads, eager_params = eager_step(eager_params, X)
        torch.manual_seed(seed)
        loss, grads, params = compiled(params, X)
        torch.testing.assert_close(loss, eager_loss)
        _assert_useful(list(grads.values()))
        torch.testing.assert_close(grads, eager_grads)
        torch.testing.assert_close(params, eager_params)


needs_trace_autograd_ops = pytest.mark.skipif(
    not HAS_TRACE_AUTOGRAD_OPS, reason="this torch cannot trace Tensor.backward with fullgraph"
)


@needs_trace_autograd_ops
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_compiled_backward_step_matches_eager(kind: str) -> None:
    _check_backward_form(kind, "aot_eager")


@pytest.mark.parametrize("kind", STATELESS_KINDS)
def test_compiled_func_step_matches_eager(kind: str) -> None:
    _check_func_form(kind, "aot_eager")


@pytest.mark.parametrize("kind", ["ScoreFunction(OptimalConstant)"])
def test_compiled_forward_eager_backward_matches_eager(kind: str) -> None:
    """The commonest use: compile the loss only, differentiate outside."""
    model = _model()
    loss_fn = torch.compile(_surrogate, fullgraph=True, backend="aot_eager")
    grads = []
    for fn in (_surrogate, loss_fn):
        torch.manual_seed(0)
        fn(ESTIMATORS[kind](), model(X)).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        model.zero_grad()
    _assert_useful(grads[1])
    torch.testing.assert_close(grads[1], grads[0])


def test_eager_step_is_the_estimator_on_the_same_samples() -> None:
    """The eager reference is itself right: the RLOO gradient recomputed by hand from the same draw."""
    model = _model()
    out = model(X)
    torch.manual_seed(3)
    loss = _surrogate(ESTIMATORS["ScoreFunction(LeaveOneOut)"](), out)
    (g,) = torch.autograd.grad(loss, out)
    torch.manual_seed(3)
    k = Categorical(logits=out.detach()).sample((4,))  # the same draw
    c = torch.tensor([1.0, -2.0, 0.5])[k]
    b = (c.sum(0) - c) / 3
    score = nn.functional.one_hot(k, 3) - torch.softmax(out.detach(), -1)  # d log p(k) / d logits
    torch.testing.assert_close(g, ((c - b).unsqueeze(-1) * score).mean(0) / 5)
    assert loss.item() == pytest.approx(float(c.mean()))


@pytest.mark.slow
@needs_trace_autograd_ops
@pytest.mark.parametrize("kind", KINDS)
def test_inductor_backward_step_matches_eager(kind: str) -> None:
    with torch._inductor.config.patch(fallback_random=True):
        _check_backward_form(kind, "inductor")


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_inductor_func_step_matches_eager(kind: str) -> None:
    with torch._inductor.config.patch(fallback_random=True):
        _check_func_form(kind, "inductor")
