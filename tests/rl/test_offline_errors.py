"""Every bad input to gradest.rl.offline raises an error naming the argument, its value and the fix; padding
after an episode's end is ignored whatever it holds."""

from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import gradest
from gradest import rl

T_, B_ = 4, 3


def _episodes(**over):
    """Three logged episodes: lengths 4 (no end flag: ends at T), 2 (terminated) and 3 (truncated)."""
    g = torch.Generator().manual_seed(0)
    terminated = torch.zeros(T_, B_, dtype=torch.bool)
    truncated = torch.zeros(T_, B_, dtype=torch.bool)
    terminated[1, 1] = True
    truncated[2, 2] = True
    kw = dict(rewards=torch.randn(T_, B_, generator=g, dtype=torch.float64),
              log_rhos=0.3 * torch.randn(T_, B_, generator=g, dtype=torch.float64),
              terminated=terminated, truncated=truncated, gamma=0.9, method="pdis")
    kw.update(over)
    return kw


def _model():
    g = torch.Generator().manual_seed(1)
    return dict(q_values=torch.randn(T_, B_, generator=g, dtype=torch.float64),
                v_values=torch.randn(T_, B_, generator=g, dtype=torch.float64))


def _loss_args(**over):
    kw = _episodes()
    log_rhos = kw.pop("log_rhos")
    kw.pop("method")
    behaviour = torch.full((T_, B_), math.log(0.5), dtype=torch.float64)
    kw.update(log_probs=(behaviour + log_rhos).requires_grad_(), behaviour_log_probs=behaviour)
    kw.update(over)
    return kw


@pytest.mark.parametrize("method,error,match", [
    ("IS", ValueError, "method='IS' is not one of 'is', 'pdis', 'wis', 'wpdis', 'dr', 'wdr'"),
    (None, TypeError, "method=None must be a string, one of 'is'"),
])
def test_unknown_method(method, error, match):
    with pytest.raises(error, match=re.escape(match)):
        rl.off_policy_value(**_episodes(method=method))
    with pytest.raises(error, match=re.escape(f"method={method!r}")):
        rl.off_policy_policy_loss(**_loss_args(method=method))


@pytest.mark.parametrize("method", ["dr", "wdr"])
@pytest.mark.parametrize("missing", ["q_values", "v_values"])
def test_doubly_robust_without_a_model(method, missing):
    model = _model()
    del model[missing]
    with pytest.raises(ValueError, match=re.escape(f"method='{method}' needs {missing}: q_values[t] = q̂(s_t, a_t)")):
        rl.off_policy_value(**_episodes(method=method, **model))


@pytest.mark.parametrize("method", ["is", "pdis", "wis", "wpdis"])
def test_a_model_given_to_a_method_that_does_not_read_it(method):
    with pytest.raises(ValueError, match=re.escape(f"q_values is read only by the doubly robust methods, not by "
                                                   f"method='{method}'")):
        rl.off_policy_value(**_episodes(method=method, **_model()))
    with pytest.raises(ValueError, match=re.escape("v_values is read only by the doubly robust methods")):
        rl.off_policy_policy_loss(**_loss_args(v_values=torch.zeros(T_, B_)))


def test_fewer_than_two_episodes():
    kw = _episodes()
    one = {k: (v[:, :1] if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    with pytest.raises(ValueError, match=re.escape("rewards.shape=(4, 1) holds 1 episode(s) of 4 step(s); pass at "
                                                   "least 2 episodes")):
        rl.off_policy_value(**one)
    vector = {k: (v[:, 0] if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    with pytest.raises(ValueError, match=re.escape("rewards.shape=(4,) holds 1 episode(s)")):
        rl.off_policy_value(**vector)
    empty = {k: (v[:0] if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    with pytest.raises(ValueError, match=re.escape("holds 0 episode(s) of 0 step(s)")):
        rl.off_policy_value(**empty)


def test_the_policy_loss_takes_a_single_episode_but_not_an_empty_one():
    kw = _loss_args()
    one = {k: (v[:, 0] if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}  # [T]: one episode
    loss = rl.off_policy_policy_loss(**one)
    loss.backward()
    assert torch.isfinite(loss)
    empty = {k: (v[:0] if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    with pytest.raises(ValueError, match=re.escape("log_probs.shape=(0, 3) holds 0 episode(s) of 0 step(s); pass "
                                                   "at least 1 episode")):
        rl.off_policy_policy_loss(**empty)


@pytest.mark.parametrize(
    "name,value,word",
    [(name, value, word) for name in ("rewards", "log_rhos", "q_values", "v_values")
     for value, word in ((float("nan"), "NaN"), (float("inf"), "+inf"), (float("-inf"), "-inf"))
     if not (name == "log_rhos" and word == "-inf")],  # ratio 0: test_self_normalised_methods_with_every_weight_zero
)
def test_nonfinite_values_on_an_episodes_steps(name, value, word):
    kw = _episodes(method="dr", **_model())
    kw[name] = kw[name].clone()
    kw[name][1, 0] = value
    with pytest.raises(ValueError, match=re.escape(f"off_policy_value: {name} contains {word} (1 of 12 elements)")):
        rl.off_policy_value(**kw)


@pytest.mark.parametrize("name", ["log_probs", "behaviour_log_probs", "rewards"])
def test_nonfinite_values_in_the_policy_loss(name):
    kw = _loss_args()
    bad = kw[name].detach().clone()
    bad[0, 2] = float("-inf")
    kw[name] = bad.requires_grad_() if name == "log_probs" else bad
    with pytest.raises(ValueError, match=re.escape(f"off_policy_policy_loss: {name} contains -inf (1 of 12")):
        rl.off_policy_policy_loss(**kw)


def test_padding_is_ignored_whatever_it_holds():
    """NaN, inf, both flags at once, a second start: after the first end, nothing is read."""
    clean = _episodes(**_model())
    del clean["method"]
    dirty = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in clean.items()}
    pad = torch.zeros(T_, B_, dtype=torch.bool)
    pad[2:, 1] = True  # episode 1 ended at step 1
    pad[3, 2] = True  # episode 2 ended at step 2
    for name in ("rewards", "log_rhos", "q_values", "v_values"):
        dirty[name][pad] = float("nan")
    dirty["log_rhos"][3, 1] = float("inf")
    dirty["terminated"][2:, 1] = True  # repeated end flags: padding
    dirty["truncated"][2:, 1] = True  # and both flags at once, there
    for method in ("is", "pdis", "wis", "wpdis", "dr", "wdr"):
        drop = () if method in ("dr", "wdr") else ("q_values", "v_values")
        got = rl.off_policy_value(**{k: v for k, v in dirty.items() if k not in drop}, method=method)
        want = rl.off_policy_value(**{k: v for k, v in clean.items() if k not in drop}, method=method)
        assert torch.equal(got.value, want.value) and torch.equal(got.stderr, want.stderr), method


def test_both_flags_at_an_episodes_end():
    kw = _episodes()
    kw["terminated"] = kw["terminated"].clone()
    kw["terminated"][2, 2] = True  # episode 2 ends at step 2, truncated too
    with pytest.raises(ValueError, match=re.escape("terminated=True and truncated=True at the end of episode 2 "
                                                   "(step 2)")):
        rl.off_policy_value(**kw)


def test_a_second_episode_in_a_column():
    kw = _episodes()
    kw["terminated"] = kw["terminated"].clone()
    kw["terminated"][3, 1] = True  # episode 1 ended at step 1; step 2 did not end; step 3 ends "again"
    with pytest.raises(ValueError, match=re.escape("column 1 ends an episode at step 1 and again at step 3 after "
                                                   "steps that did not end one")):
        rl.off_policy_value(**kw)
    with pytest.raises(ValueError, match=re.escape("column 1 ends an episode at step 1 and again at step 3")):
        rl.off_policy_policy_loss(**_loss_args(terminated=kw["terminated"]))
    loss_args = _loss_args(terminated=kw["terminated"])
    one = {k: (v[:, 1] if isinstance(v, torch.Tensor) else v) for k, v in loss_args.items()}
    with pytest.raises(ValueError, match=re.escape("column 0 ends an episode at step 1 and again at step 3")):
        rl.off_policy_policy_loss(**one)  # a single episode, [T]
    # in [T, 2, 3] batches the column is named by its index in *B
    wide = {k: (torch.stack([v, v], 1) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    with pytest.raises(ValueError, match=re.escape("column (0, 1) ends an episode")):
        rl.off_policy_value(**wide)


def test_self_normalised_methods_with_every_weight_zero():
    kw = _episodes(log_rhos=torch.full((T_, B_), float("-inf"), dtype=torch.float64))
    for method in ("wis", "wpdis"):
        with pytest.raises(ValueError, match=re.escape(f"every episode has weight 0 (π never takes a logged action), "
                                                       f"so method='{method}'")):
            rl.off_policy_value(**{**kw, "method": method})
    est = rl.off_policy_value(**{**kw, "method": "is"})  # 0 with a standard error of 0
    assert est.value == 0 and est.stderr == 0


def test_policy_loss_gradient_requirements():
    kw = _loss_args()
    with pytest.raises(ValueError, match=re.escape("log_probs has no autograd history (requires_grad=False)")):
        rl.off_policy_policy_loss(**{**kw, "log_probs": kw["log_probs"].detach()})
    model = _model()
    with pytest.raises(ValueError, match=re.escape("v_values has no autograd history, but with method='dr' "
                                                   "v_values = Σ_a π_θ(a|s_t) q̂(s_t, a) depends on θ")):
        rl.off_policy_policy_loss(**kw, method="dr", **model)
    with pytest.raises(ValueError, match=re.escape("method='dr' needs v_values")):
        rl.off_policy_policy_loss(**kw, method="dr", q_values=model["q_values"])
    with pytest.raises(ValueError, match=re.escape("clip=0.0 must be a finite float > 0")):
        rl.off_policy_policy_loss(**kw, clip=0.0)


@pytest.mark.parametrize("over,error,match", [
    (dict(level=1.0), ValueError, "level=1.0 must be a float in (0, 1)"),
    (dict(level="95%"), ValueError, "level='95%' must be a float in (0, 1)"),
    (dict(method="percentile"), ValueError, "method='percentile' must be 't' or 'bootstrap'"),
    (dict(method="bootstrap", resamples=10), ValueError, "resamples=10 must be >= 100"),
    (dict(method="bootstrap", resamples=2000.0), TypeError, "resamples=2000.0 must be an int"),
    (dict(method="bootstrap", generator=0), TypeError, "generator=0 must be a torch.Generator or None"),
])
def test_confidence_interval_arguments(over, error, match):
    est = rl.off_policy_value(**_episodes())
    with pytest.raises(error, match=re.escape(match)):
        est.confidence_interval(**over)


@pytest.mark.parametrize("fn", ["retrace", "n_step_returns"])
def test_rollout_functions_check_like_every_time_major_function(fn):
    g = torch.Generator().manual_seed(0)
    x = lambda: torch.randn(T_, B_, generator=g)  # noqa: E731
    kw = dict(rewards=x(), next_values=x(), terminated=torch.zeros(T_, B_, dtype=torch.bool), gamma=0.9)
    kw.update(dict(q_values=x(), log_rhos=x()) if fn == "retrace" else dict(n=2))
    f = getattr(rl, fn)
    with pytest.raises(ValueError, match=re.escape("next_values.shape=(4, 2) does not match ")):
        f(**{**kw, "next_values": torch.zeros(T_, 2)})
    with pytest.raises(TypeError, match=re.escape("terminated=tensor(shape=(4, 3), dtype=torch.float32) must be a "
                                                  "bool tensor")):
        f(**{**kw, "terminated": torch.zeros(T_, B_)})
    with pytest.raises(ValueError, match=re.escape("gamma=2.0 must lie in [0, 1]")):
        f(**{**kw, "gamma": 2.0})
    bad = x()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match=re.escape(f"{fn}: rewards contains NaN (1 of 12 elements)")):
        f(**{**kw, "rewards": bad})
    both = torch.zeros(T_, B_, dtype=torch.bool)
    both[1, 2] = True
    with pytest.raises(ValueError, match=re.escape("terminated=True and truncated=True at 1 step(s), first at index "
                                                   "(1, 2)")):
        f(**{**kw, "terminated": both, "truncated": both.clone()})
    if fn == "retrace":
        with pytest.raises(ValueError, match=re.escape("lambda_=1.5 must lie in [0, 1]")):
            f(**{**kw, "lambda_": 1.5})
        inf = x()
        inf[2, 1] = float("inf")
        with pytest.raises(ValueError, match=re.escape("retrace: log_rhos contains +inf (1 of 12 elements)")):
            f(**{**kw, "log_rhos": inf})


@pytest.mark.parametrize("n,error,match", [
    (0, ValueError, "n=0 must be >= 1"),
    (-3, ValueError, "n=-3 must be >= 1"),
    (2.0, TypeError, "n=2.0 must be an int >= 1"),
    (True, TypeError, "n=True must be an int >= 1"),
])
def test_n_step_n(n, error, match):
    with pytest.raises(error, match=re.escape(match)):
        rl.n_step_returns(rewards=torch.zeros(3, 2), next_values=torch.zeros(3, 2),
                          terminated=torch.zeros(3, 2, dtype=torch.bool), gamma=0.9, n=n)


def test_checks_that_sync_are_validation_checks():
    """With gradest.set_validation(False) the NaN, both-flags and second-episode checks are skipped."""
    kw = _episodes()
    kw["rewards"] = kw["rewards"].clone()
    kw["rewards"][0, 0] = float("nan")
    before = gradest.is_validation_enabled()
    gradest.set_validation(False)
    try:
        assert torch.isnan(rl.off_policy_value(**kw).value)
    finally:
        gradest.set_validation(before)


@settings(max_examples=100, deadline=None, derandomize=True)  # the same examples in every run
@given(data=st.data())
def test_property_padding_never_changes_an_estimate(data):
    """Random episode lengths and ends; anything written after each episode's end (any float, any flags
    that do not start a second episode) leaves every method's value and stderr unchanged."""
    steps = data.draw(st.integers(1, 8))
    episodes = data.draw(st.integers(2, 6))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    lengths = [data.draw(st.integers(1, steps)) for _ in range(episodes)]
    kinds = [data.draw(st.sampled_from(["terminated", "truncated", "none"])) for _ in range(episodes)]
    terminated = torch.zeros(steps, episodes, dtype=torch.bool)
    truncated = torch.zeros(steps, episodes, dtype=torch.bool)
    for b, (n, kind) in enumerate(zip(lengths, kinds)):
        if kind == "terminated" or (kind == "none" and n < steps):
            terminated[n - 1, b] = True
        elif kind == "truncated":
            truncated[n - 1, b] = True
    clean = dict(rewards=torch.randn(steps, episodes, generator=g, dtype=torch.float64),
                 log_rhos=torch.randn(steps, episodes, generator=g, dtype=torch.float64),
                 q_values=torch.randn(steps, episodes, generator=g, dtype=torch.float64),
                 v_values=torch.randn(steps, episodes, generator=g, dtype=torch.float64))
    dirty = {k: v.clone() for k, v in clean.items()}
    dirty_term, dirty_trunc = terminated.clone(), truncated.clone()
    junk = st.sampled_from([float("nan"), float("inf"), float("-inf"), 1e30, -7.0])
    for b, n in enumerate(lengths):
        for t in range(n, steps):
            for v in dirty.values():
                v[t, b] = data.draw(junk)
        if n < steps and data.draw(st.booleans()):  # padding flagged done all the way
            dirty_term[n:, b] = True
            dirty_trunc[n:, b] = data.draw(st.booleans())
    for method in ("is", "pdis", "wis", "wpdis", "dr", "wdr"):
        model = method in ("dr", "wdr")

        def run(tensors, term, trunc, method=method, model=model):
            return rl.off_policy_value(rewards=tensors["rewards"], log_rhos=tensors["log_rhos"], terminated=term,
                                       truncated=trunc, gamma=0.9, method=method,
                                       q_values=tensors["q_values"] if model else None,
                                       v_values=tensors["v_values"] if model else None)

        want = run(clean, terminated, truncated)
        got = run(dirty, dirty_term, dirty_trunc)
        assert torch.isfinite(got.value) and torch.equal(got.value, want.value), method
        assert torch.equal(got.stderr, want.stderr), method
