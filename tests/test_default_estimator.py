"""``estimator=None`` picks ``Pathwise()`` when the family has ``rsample``, else
``ScoreFunction(LeaveOneOut())`` for ``n > 1``, else ``ScoreFunction()``.

Checked twice: by asking ``gradest.estimators.default_for`` directly, and by behaviour, i.e. under the
same seed ``expectation(f, dist, n=n)`` gives the same value and gradient as the named estimator.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torch.distributions import (
    Bernoulli,
    Beta,
    Categorical,
    Distribution,
    Gamma,
    Independent,
    Normal,
    OneHotCategorical,
)

import gradest
from gradest.estimators import default_for
from gradest.testing.fakes import NonreparameterizedNormal


def _leaf(*shape: int) -> Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(shape, generator=g, dtype=torch.float64).requires_grad_()


class Family:
    """A distribution built from one leaf parameter, so that tests can differentiate with respect to it."""

    def __init__(self, shape: tuple[int, ...], build) -> None:  # noqa: ANN001
        self.shape, self.build = shape, build

    def __call__(self, leaf: Tensor | None = None) -> Distribution:
        return self.build(_leaf(*self.shape) if leaf is None else leaf)


REPARAMETERISED = {
    "Normal": Family((3,), lambda t: Normal(t, 1.0)),
    "Gamma": Family((3,), lambda t: Gamma(t.exp(), 1.0)),
    "Beta": Family((3,), lambda t: Beta(t.exp(), 2.0)),
    "Independent(Normal)": Family((2, 3), lambda t: Independent(Normal(t, 1.0), 1)),
}
NOT_REPARAMETERISED = {
    "Bernoulli": Family((3,), lambda t: Bernoulli(logits=t)),
    "Categorical": Family((3, 4), lambda t: Categorical(logits=t)),
    "OneHotCategorical": Family((3, 4), lambda t: OneHotCategorical(logits=t)),
    "Independent(Bernoulli)": Family((2, 3), lambda t: Independent(Bernoulli(logits=t), 1)),
    "NonreparameterizedNormal": Family((3,), lambda t: NonreparameterizedNormal(t, 1.0)),
}


@pytest.mark.parametrize("n", [1, 2, 8])
@pytest.mark.parametrize("name", list(REPARAMETERISED))
def test_default_for_rsample_families_is_pathwise(name: str, n: int) -> None:
    est = default_for(REPARAMETERISED[name](), n)
    assert type(est) is gradest.Pathwise


@pytest.mark.parametrize("n", [2, 4, 100])
@pytest.mark.parametrize("name", list(NOT_REPARAMETERISED))
def test_default_for_other_families_with_several_samples_is_leave_one_out(name: str, n: int) -> None:
    est = default_for(NOT_REPARAMETERISED[name](), n)
    assert type(est) is gradest.ScoreFunction
    assert type(est.baseline) is gradest.LeaveOneOut


@pytest.mark.parametrize("name", list(NOT_REPARAMETERISED))
def test_default_for_other_families_with_one_sample_is_plain_score_function(name: str) -> None:
    est = default_for(NOT_REPARAMETERISED[name](), 1)
    assert type(est) is gradest.ScoreFunction
    assert est.baseline is None


def test_default_for_returns_a_fresh_estimator_each_time() -> None:
    dist = Bernoulli(logits=_leaf(3))
    assert default_for(dist, 4) is not default_for(dist, 4)


# ---------------------------------------------------------------------------------------------------
# Behaviour: expectation(estimator=None) is the named estimator, draw for draw
# ---------------------------------------------------------------------------------------------------


def _value_and_grads(family: Family, f, estimator: gradest.Estimator | None, n: int, seed: int = 0):  # noqa: ANN001
    leaf = _leaf(*family.shape)
    torch.manual_seed(seed)
    s = gradest.expectation(f, family(leaf), estimator, n=n)
    return s.detach(), torch.autograd.grad(s.sum(), leaf)


def _assert_same(a, b) -> None:  # noqa: ANN001
    assert torch.equal(a[0], b[0])
    assert len(a[1]) == len(b[1]) > 0
    for x, y in zip(a[1], b[1], strict=True):
        assert torch.equal(x, y)


def _score_cost(x: Tensor) -> Tensor:
    x = x.to(torch.float64)
    return (x - 0.4).square().reshape(*x.shape[:2], -1).sum(-1) if x.dim() > 2 else (x - 0.4).square()


@pytest.mark.parametrize("name", list(REPARAMETERISED))
def test_default_behaves_as_pathwise(name: str) -> None:
    make = REPARAMETERISED[name]
    seen = []

    def f(x: Tensor) -> Tensor:
        seen.append(x)
        return _score_cost(x)

    default = _value_and_grads(make, f, None, n=4)
    assert seen[0].requires_grad  # the points carry the reparameterisation
    _assert_same(default, _value_and_grads(make, f, gradest.Pathwise(), n=4))


@pytest.mark.parametrize("name", list(NOT_REPARAMETERISED))
def test_default_behaves_as_leave_one_out_for_several_samples(name: str) -> None:
    make = NOT_REPARAMETERISED[name]
    default = _value_and_grads(make, _score_cost, None, n=4)
    _assert_same(default, _value_and_grads(make, _score_cost, gradest.ScoreFunction(gradest.LeaveOneOut()), n=4))
    # and the baseline is really there: the plain score function's gradient on the same draw differs
    plain = _value_and_grads(make, _score_cost, gradest.ScoreFunction(), n=4)
    assert torch.equal(default[0], plain[0])
    assert any(not torch.equal(x, y) for x, y in zip(default[1], plain[1], strict=True))


@pytest.mark.parametrize("name", list(NOT_REPARAMETERISED))
def test_default_behaves_as_plain_score_function_for_one_sample(name: str) -> None:
    make = NOT_REPARAMETERISED[name]
    default = _value_and_grads(make, _score_cost, None, n=1)  # no LeaveOneOut error for n = 1
    _assert_same(default, _value_and_grads(make, _score_cost, gradest.ScoreFunction(), n=1))


def test_default_leaves_explicit_choice_alone() -> None:
    """An explicit estimator is used as given, even where the default would differ."""
    make = REPARAMETERISED["Normal"]
    explicit = _value_and_grads(make, _score_cost, gradest.ScoreFunction(), n=4)
    default = _value_and_grads(make, _score_cost, None, n=4)
    assert not all(torch.equal(x, y) for x, y in zip(explicit[1], default[1], strict=True))
