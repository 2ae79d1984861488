"""Every documented bad input to gradest.rl raises a built-in error naming the argument and its value."""

from __future__ import annotations

import re

import pytest
import torch

import gradest
from gradest import rl

T_, B_ = 5, 2


def _args(**over):
    g = torch.Generator().manual_seed(0)
    kw = dict(
        rewards=torch.randn(T_, B_, generator=g),
        values=torch.randn(T_, B_, generator=g),
        next_values=torch.randn(T_, B_, generator=g),
        terminated=torch.zeros(T_, B_, dtype=torch.bool),
        truncated=torch.zeros(T_, B_, dtype=torch.bool),
        gamma=0.99,
        lambda_=0.95,
    )
    kw.update(over)
    return kw


def _call(fn, kw):
    names = {
        "gae": ("rewards", "values", "next_values", "terminated", "truncated", "gamma", "lambda_"),
        "td_lambda": ("rewards", "next_values", "terminated", "truncated", "gamma", "lambda_"),
        "discounted_returns": ("rewards", "next_values", "terminated", "truncated", "gamma"),
        "vtrace": ("log_rhos", "rewards", "values", "next_values", "terminated", "truncated", "gamma", "lambda_",
                   "rho_bar", "c_bar"),
    }[fn.__name__]
    kw = dict(kw)
    if fn is rl.vtrace:
        kw.setdefault("log_rhos", torch.zeros(T_, B_))
    return fn(**{k: v for k, v in kw.items() if k in names})


TIME_MAJOR = [rl.gae, rl.td_lambda, rl.discounted_returns, rl.vtrace]


@pytest.mark.parametrize("fn", TIME_MAJOR)
@pytest.mark.parametrize("name,value,error,match", [
    ("rewards", [1.0, 2.0], TypeError, "rewards=[1.0, 2.0] is a list"),
    ("rewards", torch.ones(T_, B_, dtype=torch.long), TypeError,
     "rewards=tensor(shape=(5, 2), dtype=torch.int64) must be a floating tensor"),
    ("next_values", torch.ones(T_ - 1, B_), ValueError, "next_values.shape=(4, 2) does not match "),
    ("next_values", torch.ones(T_, 1), ValueError, "next_values.shape=(5, 1) does not match"),  # would broadcast
    ("terminated", torch.zeros(T_, B_), TypeError,
     "terminated=tensor(shape=(5, 2), dtype=torch.float32) must be a bool tensor"),
    ("truncated", torch.zeros(T_, B_, dtype=torch.uint8), TypeError,
     "truncated=tensor(shape=(5, 2), dtype=torch.uint8) must be a bool tensor"),
    ("terminated", torch.zeros(T_ + 1, B_, dtype=torch.bool), ValueError, "terminated.shape=(6, 2)"),
    ("gamma", 1.5, ValueError, "gamma=1.5 must lie in [0, 1]"),
    ("gamma", -0.1, ValueError, "gamma=-0.1 must lie in [0, 1]"),
    ("gamma", float("nan"), ValueError, "gamma=nan must lie in [0, 1]"),
    ("gamma", "0.9", TypeError, "gamma='0.9' must be a float"),
])
def test_time_major_arguments(fn, name, value, error, match):
    with pytest.raises(error, match=re.escape(match)):
        _call(fn, _args(**{name: value}))


@pytest.mark.parametrize("fn", [rl.gae, rl.td_lambda, rl.vtrace])
@pytest.mark.parametrize("value", [1.01, -1e-9])
def test_lambda_outside_the_unit_interval(fn, value):
    with pytest.raises(ValueError, match=re.escape(f"lambda_={value} must lie in [0, 1]")):
        _call(fn, _args(lambda_=value))


@pytest.mark.parametrize("fn", TIME_MAJOR)
def test_a_step_both_terminated_and_truncated(fn):
    both = torch.zeros(T_, B_, dtype=torch.bool)
    both[2, 1] = True
    with pytest.raises(ValueError, match=re.escape("terminated=True and truncated=True at 1 step(s), first at "
                                                   "index (2, 1)")):
        _call(fn, _args(terminated=both, truncated=both.clone()))


@pytest.mark.parametrize("fn", TIME_MAJOR)
def test_the_both_flags_check_is_a_validation_check(fn):
    both = torch.ones(T_, B_, dtype=torch.bool)
    before = gradest.is_validation_enabled()
    gradest.set_validation(False)
    try:
        _call(fn, _args(terminated=both, truncated=both.clone()))  # no sync, no error
    finally:
        gradest.set_validation(before)


@pytest.mark.parametrize("fn", TIME_MAJOR)
def test_a_scalar_has_no_time_dimension(fn):
    kw = {k: (v[0, 0] if isinstance(v, torch.Tensor) else v) for k, v in _args().items()}
    kw["log_rhos"] = torch.tensor(0.0)
    with pytest.raises(ValueError, match=re.escape("shape=() has no time dimension")):
        _call(fn, kw)


@pytest.mark.slow  # the first use of the meta device loads torch's meta kernels (seconds)
@pytest.mark.parametrize("fn", TIME_MAJOR)
def test_devices_that_differ(fn):
    kw = _args(next_values=torch.empty(T_, B_, device="meta"))
    with pytest.raises(ValueError, match=re.escape("next_values.device=meta does not match ")):
        _call(fn, kw)


@pytest.mark.parametrize("name,value,match", [
    ("rho_bar", 0.0, "rho_bar=0.0 must be a finite float > 0"),
    ("c_bar", -1.0, "c_bar=-1.0 must be a finite float > 0"),
    ("rho_bar", float("inf"), "rho_bar=inf must be a finite float > 0"),
])
def test_vtrace_thresholds(name, value, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        _call(rl.vtrace, _args(**{name: value}))


def test_vtrace_threshold_type():
    with pytest.raises(TypeError, match=re.escape("c_bar=None must be a float > 0")):
        _call(rl.vtrace, _args(c_bar=None))


def test_vtrace_log_rhos_shape():
    with pytest.raises(ValueError, match=re.escape("rewards.shape=(5, 2) does not match log_rhos.shape=(5, 3)")):
        _call(rl.vtrace, _args(log_rhos=torch.zeros(T_, 3)))


def test_importance_weights_errors():
    with pytest.raises(TypeError, match=re.escape("log_rhos=0.5 is a float, not a tensor")):
        rl.importance_weights(log_rhos=0.5)
    with pytest.raises(ValueError, match=re.escape("clip=0 must be a finite float > 0")):
        rl.importance_weights(log_rhos=torch.zeros(3), clip=0)
    with pytest.raises(ValueError, match=re.escape("clip=-2.0 must be a finite float > 0")):
        rl.per_decision_importance_weights(log_rhos=torch.zeros(3, 1), terminated=torch.zeros(3, 1, dtype=torch.bool),
                                           clip=-2.0)
    with pytest.raises(TypeError, match=re.escape("terminated=tensor(shape=(3, 1), dtype=torch.int64) must be a bool")):
        rl.per_decision_importance_weights(log_rhos=torch.zeros(3, 1), terminated=torch.zeros(3, 1, dtype=torch.long))


def test_group_advantages_errors():
    with pytest.raises(ValueError, match=re.escape("rewards.shape=(1, 3) needs n >= 2 samples")):
        rl.group_advantages(rewards=torch.zeros(1, 3))
    with pytest.raises(ValueError, match=re.escape("rewards.shape=() needs n >= 2 samples")):
        rl.group_advantages(rewards=torch.tensor(1.0))
    with pytest.raises(TypeError, match=re.escape("normalize='yes' must be a bool")):
        rl.group_advantages(rewards=torch.zeros(4, 3), normalize="yes")
    with pytest.raises(ValueError, match=re.escape("eps=0.0 must be a finite float > 0")):
        rl.group_advantages(rewards=torch.zeros(4, 3), normalize=True, eps=0.0)
    with pytest.raises(TypeError, match=re.escape("rewards=tensor(shape=(4,), dtype=torch.int64) must be a floating")):
        rl.group_advantages(rewards=torch.zeros(4, dtype=torch.long))


def test_policy_gradient_loss_errors():
    lp = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match=re.escape("advantages.shape=(3, 1) does not match log_probs.shape=(3,)")):
        rl.policy_gradient_loss(log_probs=lp, advantages=torch.zeros(3, 1))
    with pytest.raises(ValueError, match=re.escape("old_log_probs.shape=(2,) does not match log_probs.shape=(3,)")):
        rl.policy_gradient_loss(log_probs=lp, advantages=torch.zeros(3), old_log_probs=torch.zeros(2))
    with pytest.raises(ValueError, match=re.escape("clip=0.0 must be a finite float > 0")):
        rl.policy_gradient_loss(log_probs=lp, advantages=torch.zeros(3), old_log_probs=torch.zeros(3), clip=0.0)
    with pytest.raises(TypeError, match=re.escape("log_probs=[0.0] is a list, not a tensor")):
        rl.policy_gradient_loss(log_probs=[0.0], advantages=torch.zeros(1))
    bad = "advantages=tensor(shape=(3,), dtype=torch.int64) must be a floating"
    with pytest.raises(TypeError, match=re.escape(bad)):
        rl.policy_gradient_loss(log_probs=lp, advantages=torch.zeros(3, dtype=torch.long))


def test_mixed_floating_dtypes_promote_as_in_torch():
    kw = _args(values=torch.zeros(T_, B_, dtype=torch.float64))
    assert _call(rl.gae, kw).dtype == torch.float64
