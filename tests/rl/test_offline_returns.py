"""retrace and n_step_returns: float64 loops to 1e-9, the identities, both kinds of episode end."""

from __future__ import annotations

import math

import pytest
import torch

from gradest import rl

from . import references as ref
from .conftest import make_rollout

TOL = dict(rtol=1e-9, atol=1e-9)
SHAPES = [(1, ()), (2, (1,)), (7, (3,)), (50, (2, 2)), (300, (3,)), (1029, (2,))]


def _q(d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(d.rewards.shape, generator=g, dtype=d.rewards.dtype)


@pytest.mark.parametrize("steps,batch", SHAPES)
@pytest.mark.parametrize("lambda_", [1.0, 0.9, 0.0])
@pytest.mark.parametrize("with_truncation", [True, False])
def test_retrace_matches_the_loop(steps, batch, lambda_, with_truncation):
    d = make_rollout((steps, *batch), seed=steps, p_terminated=0.05, p_truncated=0.05)
    trunc = d.truncated if with_truncation else None
    q = _q(d)
    log_rhos = d.log_rhos.clone()
    log_rhos[torch.rand(log_rhos.shape, generator=torch.Generator().manual_seed(3)) < 0.05] = float("-inf")
    got = rl.retrace(q_values=q, next_values=d.next_values, rewards=d.rewards, log_rhos=log_rhos,
                     terminated=d.terminated, truncated=trunc, gamma=0.97, lambda_=lambda_)
    want = ref.retrace(q, d.next_values, d.rewards, log_rhos, d.terminated, trunc, 0.97, lambda_)
    torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("steps,batch", SHAPES[:5])
@pytest.mark.parametrize("n", [1, 2, 3, 5, 16, 17, 64, 1000, 2000])
def test_n_step_returns_match_the_loop(steps, batch, n):
    d = make_rollout((steps, *batch), seed=steps + 1, p_terminated=0.04, p_truncated=0.04)
    for trunc in (d.truncated, None):
        got = rl.n_step_returns(rewards=d.rewards, next_values=d.next_values, terminated=d.terminated,
                                truncated=trunc, gamma=0.95, n=n)
        want = ref.n_step_returns(d.rewards, d.next_values, d.terminated, trunc, 0.95, n)
        torch.testing.assert_close(got, want, **TOL)


def test_n_step_by_hand_with_both_episode_ends():
    # one env, γ = 0.5, n = 3: step 1 is truncated (V(final obs) = 10), step 3 terminates, step 5 is last
    rewards = torch.tensor([[1.0], [2.0], [3.0], [4.0], [5.0], [6.0]], dtype=torch.float64)
    next_values = torch.tensor([[7.0], [10.0], [8.0], [9.0], [11.0], [12.0]], dtype=torch.float64)
    terminated = torch.tensor([[False], [False], [False], [True], [False], [False]])
    truncated = torch.tensor([[False], [True], [False], [False], [False], [False]])
    got = rl.n_step_returns(rewards=rewards, next_values=next_values, terminated=terminated, truncated=truncated,
                            gamma=0.5, n=3).flatten().tolist()
    assert got == [1 + 0.5 * 2 + 0.25 * 10,  # cut at the truncation: bootstrap from the final observation
                   2 + 0.5 * 10,
                   3 + 0.5 * 4,  # the episode terminates at step 3: no bootstrap
                   4,
                   5 + 0.5 * 6 + 0.25 * 12,  # the rollout ends at step 5: bootstrap from next_values[5]
                   6 + 0.5 * 12]


# --- identities -----------------------------------------------------------------------------------


def test_n_step_one_is_the_one_step_td_target(rollout):
    d = rollout
    got = rl.n_step_returns(rewards=d.rewards, next_values=d.next_values, terminated=d.terminated,
                            truncated=d.truncated, gamma=0.9, n=1)
    torch.testing.assert_close(got, d.rewards + 0.9 * d.next_values.masked_fill(d.terminated, 0.0), **TOL)


@pytest.mark.parametrize("n", [50, 51, 10**6])
def test_n_step_past_the_rollout_is_the_bootstrapped_discounted_return(rollout, n):
    d = rollout  # 50 steps
    kw = dict(rewards=d.rewards, next_values=d.next_values, terminated=d.terminated, truncated=d.truncated, gamma=0.9)
    torch.testing.assert_close(rl.n_step_returns(n=n, **kw), rl.discounted_returns(**kw), **TOL)


def test_retrace_with_lambda_zero_is_the_one_step_expected_sarsa_target(rollout):
    d = rollout
    got = rl.retrace(q_values=_q(d), next_values=d.next_values, rewards=d.rewards, log_rhos=d.log_rhos,
                     terminated=d.terminated, truncated=d.truncated, gamma=0.9, lambda_=0.0)
    torch.testing.assert_close(got, d.rewards + 0.9 * d.next_values.masked_fill(d.terminated, 0.0), **TOL)


def _sarsa_next_values(d, q):
    """next_values[t] = q[t+1] inside episodes (the expected value equals the sampled one), the final
    observation's value at episode ends."""
    done = d.terminated | d.truncated
    inside = torch.cat([q[1:], d.next_values[-1:]])
    return torch.where(done, d.next_values, inside)


@pytest.mark.parametrize("lambda_", [1.0, 0.8, 0.3])
def test_retrace_on_policy_is_the_lambda_return(rollout, lambda_):
    """π = μ (every ratio 1, so c = λ) and E_π Q(s_{t+1}) = Q(s_{t+1}, a_{t+1}): the λ-return of td_lambda."""
    d = rollout
    q = _q(d)
    nv = _sarsa_next_values(d, q)
    kw = dict(rewards=d.rewards, next_values=nv, terminated=d.terminated, truncated=d.truncated, gamma=0.95)
    got = rl.retrace(q_values=q, log_rhos=torch.zeros_like(q), lambda_=lambda_, **kw)
    torch.testing.assert_close(got, rl.td_lambda(lambda_=lambda_, **kw), **TOL)
    if lambda_ == 1.0:
        torch.testing.assert_close(got, rl.discounted_returns(**kw), **TOL)


def test_retrace_on_policy_with_lambda_one_corrects_the_return_by_expected_values(rollout):
    """π = μ, λ = 1, any values: the discounted return plus Σ γ^k (E_π Q(s_{t+k+1}) - Q(s_{t+k+1}, a_{t+k+1}))
    inside the episode: the return with zero-mean expected-SARSA corrections."""
    d = rollout
    q = _q(d)
    correction = _sarsa_next_values(d, q)  # where the corrections are zero
    got = rl.retrace(q_values=q, next_values=d.next_values, rewards=d.rewards, log_rhos=torch.zeros_like(q),
                     terminated=d.terminated, truncated=d.truncated, gamma=0.95)
    shifted = d.rewards + 0.95 * (d.next_values - correction).masked_fill(d.terminated | d.truncated, 0.0)
    want = rl.discounted_returns(rewards=shifted, next_values=correction, terminated=d.terminated,
                                 truncated=d.truncated, gamma=0.95)
    torch.testing.assert_close(got, want, **TOL)


def test_retrace_traces_are_cut_by_the_next_steps_ratio():
    """A ratio of 0 at step t+1 (log -inf) cuts the trace after step t: the target at t is one-step."""
    q = torch.tensor([[1.0], [2.0], [3.0]], dtype=torch.float64)
    nv = torch.tensor([[4.0], [5.0], [6.0]], dtype=torch.float64)
    r = torch.ones(3, 1, dtype=torch.float64)
    lr = torch.tensor([[0.0], [float("-inf")], [math.log(3.0)]], dtype=torch.float64)
    term = torch.zeros(3, 1, dtype=torch.bool)
    got = rl.retrace(q_values=q, next_values=nv, rewards=r, log_rhos=lr, terminated=term, gamma=0.5).flatten()
    g2 = 1 + 0.5 * 6  # last step: bootstrap, nothing carried
    g1 = 1 + 0.5 * 5 + 0.5 * 1.0 * (g2 - 3)  # c_2 = min(1, 3) = 1
    g0 = 1 + 0.5 * 4  # c_1 = 0
    assert got.tolist() == [g0, g1, g2]


def test_targets_carry_no_gradient(rollout):
    d = rollout
    q = _q(d).requires_grad_()
    out = rl.retrace(q_values=q, next_values=d.next_values.requires_grad_(), rewards=d.rewards, log_rhos=d.log_rhos,
                     terminated=d.terminated, gamma=0.9)
    assert not out.requires_grad
    out = rl.n_step_returns(rewards=d.rewards.requires_grad_(), next_values=d.next_values, terminated=d.terminated,
                            gamma=0.9, n=3)
    assert not out.requires_grad


def test_float32_stays_within_the_task_2_bar_of_the_float64_loop():
    """float32 within 1e-5 of the loop run on the same (rounded) inputs, at T = 1000."""
    d = make_rollout((1000, 4), seed=2)
    q, nv, r, lr = (x.float() for x in (_q(d), d.next_values, d.rewards, d.log_rhos))
    got = rl.retrace(q_values=q, next_values=nv, rewards=r, log_rhos=lr, terminated=d.terminated,
                     truncated=d.truncated, gamma=0.99)
    want = ref.retrace(q, nv, r, lr, d.terminated, d.truncated, 0.99, 1.0)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5)
    got = rl.n_step_returns(rewards=r, next_values=nv, terminated=d.terminated, truncated=d.truncated, gamma=0.99,
                            n=20)
    want = ref.n_step_returns(r, nv, d.terminated, d.truncated, 0.99, 20)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5)


def test_bfloat16_n_step_returns_within_its_rounding():
    """bfloat16 (8 bits of mantissa): within 20 · 2^-8 · max|term| for windows of 20 terms."""
    d = make_rollout((200, 3), seed=4)
    r, nv = d.rewards.bfloat16(), d.next_values.bfloat16()
    got = rl.n_step_returns(rewards=r, next_values=nv, terminated=d.terminated, truncated=d.truncated, gamma=0.99,
                            n=20)
    assert got.dtype == torch.bfloat16
    tol = 20 * 2**-8 * float(torch.cat([r, nv]).abs().max())
    want = ref.n_step_returns(r, nv, d.terminated, d.truncated, 0.99, 20)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=tol)


def test_empty_rollouts():
    e = make_rollout((4, 2))
    kw = dict(terminated=e.terminated[:0], truncated=e.truncated[:0], gamma=0.9)
    assert rl.retrace(q_values=e.values[:0], next_values=e.next_values[:0], rewards=e.rewards[:0],
                      log_rhos=e.log_rhos[:0], **kw).shape == (0, 2)
    assert rl.n_step_returns(rewards=e.rewards[:0], next_values=e.next_values[:0], n=3, **kw).shape == (0, 2)
