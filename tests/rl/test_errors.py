"""Every documented bad input to gradest.rl raises a built-in error naming the argument and its value."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

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


# --- non-finite values (validation on by default; set_validation(False) keeps the fast path) --------

FLOAT_ARGS = {
    rl.gae: ("rewards", "values", "next_values"),
    rl.td_lambda: ("rewards", "next_values"),
    rl.discounted_returns: ("rewards", "next_values"),
    rl.vtrace: ("log_rhos", "rewards", "values", "next_values"),
}
NONFINITE = [(float("nan"), "NaN"), (float("inf"), "+inf"), (float("-inf"), "-inf")]


def _with(value, index=(3, 1)):
    t = torch.randn(T_, B_, generator=torch.Generator().manual_seed(1))
    t[index] = value
    return t


@pytest.mark.parametrize(
    "fn,name,value,word",
    [(fn, name, value, word) for fn, names in FLOAT_ARGS.items() for name in names for value, word in NONFINITE
     if not (name == "log_rhos" and word == "-inf")],  # a log-ratio of -inf is a ratio of 0 (tested below)
)
def test_nonfinite_values_are_refused(fn, name, value, word):
    kw = _args(**{name: _with(value)})
    with pytest.raises(ValueError, match=re.escape(f"{fn.__name__}: {name} contains {word} (1 of 10 elements); ")):
        _call(fn, kw)


@pytest.mark.parametrize("fn", TIME_MAJOR)
def test_the_first_argument_at_fault_is_named_with_every_count(fn):
    bad = torch.full((T_, B_), float("nan"))
    bad[0, 0], bad[1, 0] = float("inf"), float("-inf")
    kw = _args(rewards=torch.ones(T_, B_), next_values=bad)
    with pytest.raises(ValueError, match=re.escape(
            "next_values contains NaN (8 of 10 elements) and +inf (1 of 10 elements) and -inf (1 of 10 elements)")):
        _call(fn, kw)


@pytest.mark.parametrize("fn", TIME_MAJOR)
def test_nonfinite_values_pass_unchecked_without_validation(fn):
    kw = _args(rewards=_with(float("nan")))
    before = gradest.is_validation_enabled()
    gradest.set_validation(False)
    try:
        out = _call(fn, kw)
    finally:
        gradest.set_validation(before)
    out = out[0] if isinstance(out, tuple) else out
    assert torch.isnan(out).any()  # today's fast path: no check, no sync


def test_log_rhos_may_be_minus_inf_but_not_plus_inf_or_nan():
    terminated = torch.zeros(T_, B_, dtype=torch.bool)
    for word, value in (("NaN", float("nan")), ("+inf", float("inf"))):
        match = re.escape(f"log_rhos contains {word} (1 of 10 elements); log_rhos = log π(a|s) - log μ(a|s)")
        with pytest.raises(ValueError, match="importance_weights: " + match):
            rl.importance_weights(log_rhos=_with(value))
        with pytest.raises(ValueError, match="per_decision_importance_weights: " + match):
            rl.per_decision_importance_weights(log_rhos=_with(value), terminated=terminated)
    w = rl.importance_weights(log_rhos=_with(float("-inf")))
    assert w[3, 1] == 0 and torch.isfinite(w).all()


def test_overflowing_sums_of_finite_values_are_not_refused():
    from gradest.rl._checks import check_values

    big = torch.full((4,), 3e38)  # float32: the sum is inf, every element is finite
    check_values("f", ("rewards", "log_rhos"), (big, big))
    check_values("f", ("rewards",), (big,))
    check_values("f", ("log_rhos",), (-big,))


def test_group_advantages_and_policy_gradient_loss_refuse_nonfinite_values():
    with pytest.raises(ValueError, match=re.escape("group_advantages: rewards contains +inf (1 of 10 elements)")):
        rl.group_advantages(rewards=_with(float("inf")))
    lp = torch.zeros(T_, B_, requires_grad=True)
    for name, word, value in (("advantages", "NaN", float("nan")), ("old_log_probs", "-inf", float("-inf")),
                              ("log_probs", "-inf", float("-inf"))):
        kw = dict(log_probs=lp, advantages=torch.ones(T_, B_), old_log_probs=torch.zeros(T_, B_))
        kw[name] = _with(value)
        with pytest.raises(ValueError, match=re.escape(f"policy_gradient_loss: {name} contains {word} (1 of 10")):
            rl.policy_gradient_loss(**kw)


@settings(max_examples=150, deadline=None, derandomize=True)  # the same examples in every run
@given(data=st.data())
def test_property_every_nonfinite_value_is_named_or_the_result_is_finite(data):
    """Random function, shape, argument and position: a NaN or ±inf gives the error naming that argument
    (log_rhos: -inf is a ratio of 0 and gives a finite result); finite inputs give a finite result."""
    fn = data.draw(st.sampled_from(TIME_MAJOR))
    steps = data.draw(st.integers(1, 300))
    batch = data.draw(st.sampled_from([(), (1,), (3,), (2, 2)]))
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    shape = (steps, *batch)
    kw = {name: torch.randn(shape, generator=g, dtype=dtype) for name in FLOAT_ARGS[fn]}
    u = torch.rand(shape, generator=g)
    kw.update(terminated=u < 0.05, truncated=(u >= 0.05) & (u < 0.1), gamma=0.99, lambda_=0.95)
    name = data.draw(st.sampled_from(FLOAT_ARGS[fn] + (None,)))
    value = data.draw(st.sampled_from([float("nan"), float("inf"), float("-inf")]))
    if name is not None:
        index = tuple(data.draw(st.integers(0, n - 1)) for n in shape)
        kw[name][index] = value
    if name is None or (name == "log_rhos" and value == float("-inf")):
        out = fn(**{k: v for k, v in kw.items() if k != "lambda_" or fn is not rl.discounted_returns})
        for o in out if isinstance(out, tuple) else (out,):
            assert torch.isfinite(o).all()
        return
    with pytest.raises(ValueError, match=re.escape(f"{fn.__name__}: {name} contains ")):
        fn(**{k: v for k, v in kw.items() if k != "lambda_" or fn is not rl.discounted_returns})
