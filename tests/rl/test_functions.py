"""gradest.rl's functions: a case worked by hand, agreement with plain loops, and the identities."""

from __future__ import annotations

import math

import pytest
import torch

import gradest
from gradest import rl

from . import references as ref
from .conftest import make_rollout

TOL = dict(rtol=1e-9, atol=1e-9)
F = False
T = True


class HandCase:
    """Four steps, one env, γ = λ = 0.5; step 1 is truncated (the final observation's value is 10),
    step 2 terminates, step 3 is the last of the rollout (bootstrapped from next_values[3] = 5)."""

    rewards = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    values = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    next_values = torch.tensor([[1.0], [10.0], [3.0], [5.0]])
    terminated = torch.tensor([[F], [F], [T], [F]])
    truncated = torch.tensor([[F], [T], [F], [F]])
    kw = dict(terminated=terminated, truncated=truncated, gamma=0.5)


def test_gae_by_hand():
    c = HandCase
    # δ = [1 + .5·1 - 0, 2 + .5·10 - 1, 3 + 0 - 2, 4 + .5·5 - 3] = [1.5, 6, 1, 3.5]
    # A3 = 3.5; A2 = 1 (terminated); A1 = 6 (truncated: nothing carried); A0 = 1.5 + .25·6 = 3
    got = rl.gae(rewards=c.rewards, values=c.values, next_values=c.next_values, lambda_=0.5, **c.kw)
    assert got.flatten().tolist() == [3.0, 6.0, 1.0, 3.5]


def test_td_lambda_by_hand():
    c = HandCase
    # G3 = 4 + .5·5; G2 = 3; G1 = 2 + .5·10; G0 = 1 + .5·(.5·1 + .5·G1)
    got = rl.td_lambda(rewards=c.rewards, next_values=c.next_values, lambda_=0.5, **c.kw)
    assert got.flatten().tolist() == [3.0, 7.0, 3.0, 6.5]


def test_discounted_returns_by_hand():
    c = HandCase
    plain = rl.discounted_returns(rewards=c.rewards, **c.kw)
    assert plain.flatten().tolist() == [2.0, 2.0, 3.0, 4.0]  # the truncated episode keeps what it saw
    boot = rl.discounted_returns(rewards=c.rewards, next_values=c.next_values, **c.kw)
    assert boot.flatten().tolist() == [4.5, 7.0, 3.0, 6.5]


def test_vtrace_by_hand_on_policy_is_the_lambda_return():
    c = HandCase
    vs, adv = rl.vtrace(log_rhos=torch.zeros(4, 1), rewards=c.rewards, values=c.values,
                        next_values=c.next_values, lambda_=0.5, **c.kw)
    assert vs.flatten().tolist() == [3.0, 7.0, 3.0, 6.5]
    # one-step advantages towards vs: r + γ v'_t - V with v' = vs[t+1], or next_values at a cut
    assert adv.flatten().tolist() == [1 + 0.5 * 7 - 0, 2 + 0.5 * 10 - 1, 3 - 2, 4 + 0.5 * 5 - 3]


def test_per_decision_weights_by_hand():
    log_rhos = torch.tensor([[math.log(2.0)], [math.log(3.0)], [math.log(0.5)], [math.log(4.0)]], dtype=torch.float64)
    w = rl.per_decision_importance_weights(log_rhos=log_rhos, terminated=HandCase.terminated,
                                           truncated=HandCase.truncated)
    torch.testing.assert_close(w.flatten(), torch.tensor([2.0, 6.0, 0.5, 4.0], dtype=torch.float64))
    clipped = rl.per_decision_importance_weights(log_rhos=log_rhos, terminated=HandCase.terminated, clip=2.5)
    torch.testing.assert_close(clipped.flatten(), torch.tensor([2.0, 5.0, 2.5, 2.5], dtype=torch.float64))


# --- agreement with the loops on random data, float64 ---------------------------------------------

SHAPES = [(1, 1), (7, ()), (50, (3,)), (300, (2, 2)), (1000, (4,))]


def _shape(steps, batch):
    return (steps, *((batch,) if isinstance(batch, int) else batch))


@pytest.mark.parametrize("steps,batch", SHAPES)
@pytest.mark.parametrize("with_truncation", [True, False])
@pytest.mark.parametrize("gamma,lambda_", [(0.99, 0.95), (0.9, 0.0), (1.0, 1.0), (0.5, 0.7)])
def test_returns_and_advantages_match_the_loops(steps, batch, with_truncation, gamma, lambda_):
    d = make_rollout(_shape(steps, batch), seed=steps)
    trunc = d.truncated if with_truncation else None
    got = rl.gae(rewards=d.rewards, values=d.values, next_values=d.next_values, terminated=d.terminated,
                 truncated=trunc, gamma=gamma, lambda_=lambda_)
    torch.testing.assert_close(got, ref.gae(d.rewards, d.values, d.next_values, d.terminated, trunc, gamma, lambda_),
                               **TOL)
    got = rl.td_lambda(rewards=d.rewards, next_values=d.next_values, terminated=d.terminated,
                       truncated=trunc, gamma=gamma, lambda_=lambda_)
    want = ref.td_lambda(d.rewards, d.next_values, d.terminated, trunc, gamma, lambda_)
    torch.testing.assert_close(got, want, **TOL)
    for nv in (None, d.next_values):
        got = rl.discounted_returns(rewards=d.rewards, terminated=d.terminated, truncated=trunc, gamma=gamma,
                                    next_values=nv)
        torch.testing.assert_close(got, ref.discounted_returns(d.rewards, d.terminated, trunc, gamma, nv), **TOL)


@pytest.mark.parametrize("steps,batch", SHAPES)
@pytest.mark.parametrize("rho_bar,c_bar,lambda_", [(1.0, 1.0, 1.0), (2.0, 0.5, 0.9), (0.7, 1.3, 0.5)])
def test_vtrace_matches_the_loop(steps, batch, rho_bar, c_bar, lambda_):
    d = make_rollout(_shape(steps, batch), seed=steps + 1)
    vs, adv = rl.vtrace(log_rhos=d.log_rhos, rewards=d.rewards, values=d.values, next_values=d.next_values,
                        terminated=d.terminated, truncated=d.truncated, gamma=0.97, lambda_=lambda_,
                        rho_bar=rho_bar, c_bar=c_bar)
    want_vs, want_adv = ref.vtrace(d.log_rhos, d.rewards, d.values, d.next_values, d.terminated, d.truncated,
                                   0.97, lambda_, rho_bar, c_bar)
    torch.testing.assert_close(vs, want_vs, **TOL)
    torch.testing.assert_close(adv, want_adv, **TOL)


@pytest.mark.parametrize("steps,batch", SHAPES)
@pytest.mark.parametrize("clip", [None, 1.0, 3.0])
def test_per_decision_weights_match_the_loop(steps, batch, clip):
    d = make_rollout(_shape(steps, batch), seed=steps + 2, p_terminated=0.1, p_truncated=0.1)
    got = rl.per_decision_importance_weights(log_rhos=d.log_rhos, terminated=d.terminated,
                                             truncated=d.truncated, clip=clip)
    want = ref.per_decision_importance_weights(d.log_rhos, d.terminated, d.truncated, clip)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=0.0)


# --- identities -----------------------------------------------------------------------------------


def test_lambda_one_gives_bootstrapped_returns_minus_values(rollout):
    d = rollout
    kw = dict(terminated=d.terminated, truncated=d.truncated, gamma=0.97)
    adv = rl.gae(rewards=d.rewards, values=d.values, next_values=d.next_values, lambda_=1.0, **kw)
    returns = rl.discounted_returns(rewards=d.rewards, next_values=d.next_values, **kw)
    torch.testing.assert_close(adv, returns - d.values, **TOL)


def test_lambda_zero_gives_one_step_td_errors(rollout):
    d = rollout
    adv = rl.gae(rewards=d.rewards, values=d.values, next_values=d.next_values, terminated=d.terminated,
                 truncated=d.truncated, gamma=0.9, lambda_=0.0)
    delta = d.rewards + 0.9 * d.next_values.masked_fill(d.terminated, 0.0) - d.values
    torch.testing.assert_close(adv, delta, **TOL)
    target = rl.td_lambda(rewards=d.rewards, next_values=d.next_values, terminated=d.terminated,
                          truncated=d.truncated, gamma=0.9, lambda_=0.0)
    torch.testing.assert_close(target, delta + d.values, **TOL)


def test_td_lambda_is_gae_plus_values(rollout):
    d = rollout
    kw = dict(rewards=d.rewards, next_values=d.next_values, terminated=d.terminated, truncated=d.truncated,
              gamma=0.99, lambda_=0.8)
    torch.testing.assert_close(rl.td_lambda(**kw), rl.gae(values=d.values, **kw) + d.values, **TOL)


def test_vtrace_on_policy_with_lambda_one_is_the_lambda_one_return(rollout):
    d = rollout
    kw = dict(rewards=d.rewards, next_values=d.next_values, terminated=d.terminated, truncated=d.truncated,
              gamma=0.95)
    vs, adv = rl.vtrace(log_rhos=torch.zeros_like(d.rewards), values=d.values, lambda_=1.0, **kw)
    torch.testing.assert_close(vs, rl.td_lambda(lambda_=1.0, **kw), **TOL)
    torch.testing.assert_close(vs, rl.discounted_returns(**{k: v for k, v in kw.items()}), **TOL)
    # the policy-gradient advantage is then the one-step advantage towards vs
    nxt = torch.where(d.terminated | d.truncated, d.next_values, torch.cat([vs[1:], d.next_values[-1:]]))
    torch.testing.assert_close(adv, d.rewards + 0.95 * nxt.masked_fill(d.terminated, 0.0) - d.values, **TOL)


def test_vtrace_on_policy_with_lambda_is_td_lambda(rollout):
    d = rollout
    kw = dict(rewards=d.rewards, next_values=d.next_values, terminated=d.terminated, truncated=d.truncated,
              gamma=0.95, lambda_=0.7)
    vs, _ = rl.vtrace(log_rhos=torch.zeros_like(d.rewards), values=d.values, **kw)
    torch.testing.assert_close(vs, rl.td_lambda(**kw), **TOL)


def test_without_truncation_flags_truncations_count_as_continuing(rollout):
    d = rollout
    both = rl.gae(rewards=d.rewards, values=d.values, next_values=d.next_values, terminated=d.terminated,
                  truncated=torch.zeros_like(d.terminated), gamma=0.9, lambda_=0.9)
    none = rl.gae(rewards=d.rewards, values=d.values, next_values=d.next_values, terminated=d.terminated,
                  gamma=0.9, lambda_=0.9)
    torch.testing.assert_close(both, none, rtol=0, atol=0)


def test_importance_weights():
    log_rhos = torch.tensor([math.log(0.5), 0.0, math.log(3.0)], dtype=torch.float64)
    torch.testing.assert_close(rl.importance_weights(log_rhos=log_rhos), log_rhos.exp())
    torch.testing.assert_close(rl.importance_weights(log_rhos=log_rhos, clip=1.0),
                               torch.tensor([0.5, 1.0, 1.0], dtype=torch.float64))


def test_importance_weights_are_unbiased_without_clip():
    """E_μ[ρ f] = E_π[f] by enumeration over a small action set."""
    mu = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    pi = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)
    f = torch.tensor([1.0, -2.0, 5.0], dtype=torch.float64)
    w = rl.importance_weights(log_rhos=pi.log() - mu.log())
    torch.testing.assert_close((mu * w * f).sum(), (pi * f).sum())


def test_group_advantages():
    g = torch.Generator().manual_seed(0)
    r = torch.randn(5, 3, 2, generator=g, dtype=torch.float64)
    loo = rl.group_advantages(rewards=r)
    n = r.shape[0]
    for i in range(n):
        others = torch.cat([r[:i], r[i + 1:]]).mean(0)
        torch.testing.assert_close(loo[i], r[i] - others, **TOL)
    norm = rl.group_advantages(rewards=r, normalize=True, eps=1e-4)
    torch.testing.assert_close(norm, (r - r.mean(0)) / (r.std(0) + 1e-4), **TOL)
    assert rl.group_advantages(rewards=torch.ones(4, 2), normalize=True).abs().max() == 0
    assert rl.group_advantages(rewards=torch.ones(4, 2)).abs().max() == 0


def test_leave_one_out_group_advantage_gives_an_unbiased_gradient():
    """Σ over the n samples of A_i ∇log p(x_i) has the same expectation as the plain score estimator:
    enumerated exactly over all 3^2 pairs of samples of a 3-way categorical."""
    logits = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64, requires_grad=True)
    f = torch.tensor([1.0, 4.0, -2.0], dtype=torch.float64)
    p = logits.softmax(0)
    exact = torch.autograd.grad((p * f).sum(), logits)[0]
    total = torch.zeros(3, dtype=torch.float64)
    for i in range(3):
        for j in range(3):
            x = torch.tensor([i, j])
            adv = rl.group_advantages(rewards=f[x].unsqueeze(1)).squeeze(1)
            lp = torch.distributions.Categorical(logits=logits).log_prob(x)
            loss = rl.policy_gradient_loss(log_probs=lp, advantages=adv).mean()
            total += p[i].detach() * p[j].detach() * -torch.autograd.grad(loss, logits)[0]
    torch.testing.assert_close(total, exact, **TOL)


def test_policy_gradient_loss_is_the_score_function_surrogate():
    logits = torch.tensor([0.2, -0.1, 0.4], requires_grad=True)
    dist = torch.distributions.Categorical(logits=logits)
    a = torch.tensor([2, 0, 2])
    adv = torch.tensor([1.5, -0.5, 2.0])
    lp = dist.log_prob(a)
    loss = rl.policy_gradient_loss(log_probs=lp, advantages=adv)
    torch.testing.assert_close(loss, -adv)  # value: minus the advantage (the ratio is 1)
    (g,) = torch.autograd.grad(loss.sum(), logits, retain_graph=True)
    (want,) = torch.autograd.grad(-(adv * lp).sum(), logits)
    torch.testing.assert_close(g, want)


def test_policy_gradient_loss_matches_gradest_score_function():
    """The same surrogate as gradest.expectation with ScoreFunction, for the same sampled action."""
    logits = torch.tensor([0.2, -0.1, 0.4], requires_grad=True)
    reward = torch.tensor([1.0, -2.0, 3.0])
    with torch.random.fork_rng():
        torch.manual_seed(3)
        s = gradest.expectation(lambda x: reward[x], torch.distributions.Categorical(logits=logits),
                                gradest.ScoreFunction(), n=4)
        (g_gradest,) = torch.autograd.grad(s, logits)
    with torch.random.fork_rng():
        torch.manual_seed(3)
        dist = torch.distributions.Categorical(logits=logits)
        a = dist.sample((4,))
    loss = rl.policy_gradient_loss(log_probs=dist.log_prob(a), advantages=reward[a]).mean()
    (g_rl,) = torch.autograd.grad(-loss, logits)
    torch.testing.assert_close(g_rl, g_gradest)


def test_ppo_clip_stops_the_gradient_outside_the_trust_region():
    lp = torch.tensor([0.0, 0.0, 0.0, 0.0], requires_grad=True)
    old = torch.log(torch.tensor([0.5, 1.5, 0.5, 1.5]))  # ratios 2, 2/3, 2, 2/3
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    loss = rl.policy_gradient_loss(log_probs=lp, advantages=adv, old_log_probs=old, clip=0.2)
    ratio = (lp - old).exp()
    torch.testing.assert_close(loss, -torch.minimum(ratio * adv, ratio.clamp(0.8, 1.2) * adv))
    (g,) = torch.autograd.grad(loss.sum(), lp)
    # ratio 2 > 1.2 with A > 0: clipped, no gradient; ratio 2/3 < 0.8 with A < 0: clipped; the others flow
    torch.testing.assert_close(g, torch.tensor([0.0, -2 / 3, 2.0, 0.0]))


def test_advantages_never_carry_gradient():
    d = make_rollout((20, 2))
    values = d.values.clone().requires_grad_()
    next_values = d.next_values.clone().requires_grad_()
    rewards = d.rewards.clone().requires_grad_()
    outs = [
        rl.gae(rewards=rewards, values=values, next_values=next_values, terminated=d.terminated, gamma=0.9,
               lambda_=0.9),
        rl.td_lambda(rewards=rewards, next_values=next_values, terminated=d.terminated, gamma=0.9, lambda_=0.9),
        rl.discounted_returns(rewards=rewards, terminated=d.terminated, gamma=0.9, next_values=next_values),
        *rl.vtrace(log_rhos=d.log_rhos.clone().requires_grad_(), rewards=rewards, values=values,
                   next_values=next_values, terminated=d.terminated, gamma=0.9),
        rl.group_advantages(rewards=rewards),
        rl.importance_weights(log_rhos=rewards),
        rl.per_decision_importance_weights(log_rhos=rewards, terminated=d.terminated),
    ]
    assert not any(o.requires_grad for o in outs)
    # and the policy-gradient loss detaches an advantage that does carry a graph
    lp = torch.zeros(20, 2, requires_grad=True)
    loss = rl.policy_gradient_loss(log_probs=lp, advantages=values * 2).sum()
    loss.backward()
    assert values.grad is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_is_preserved_and_empty_rollouts_work(dtype):
    d = make_rollout((6, 2), dtype=dtype)
    out = rl.gae(rewards=d.rewards, values=d.values, next_values=d.next_values, terminated=d.terminated,
                 truncated=d.truncated, gamma=0.9, lambda_=0.9)
    assert out.dtype == dtype and out.shape == (6, 2)
    e = make_rollout((6, 2), dtype=dtype)
    empty = dict(terminated=e.terminated[:0], truncated=e.truncated[:0], gamma=0.9)
    assert rl.gae(rewards=e.rewards[:0], values=e.values[:0], next_values=e.next_values[:0], lambda_=0.5,
                  **empty).shape == (0, 2)
    assert rl.td_lambda(rewards=e.rewards[:0], next_values=e.next_values[:0], lambda_=0.5, **empty).shape == (0, 2)
    assert rl.discounted_returns(rewards=e.rewards[:0], next_values=e.next_values[:0], **empty).shape == (0, 2)
    vs, adv = rl.vtrace(log_rhos=e.log_rhos[:0], rewards=e.rewards[:0], values=e.values[:0],
                        next_values=e.next_values[:0], **empty)
    assert vs.shape == adv.shape == (0, 2)


def test_half_precision_runs_through_the_blocked_scan():
    d = make_rollout((40, 3), dtype=torch.float32)
    got = rl.gae(rewards=d.rewards.bfloat16(), values=d.values.bfloat16(), next_values=d.next_values.bfloat16(),
                 terminated=d.terminated, gamma=0.9, lambda_=0.9)
    want = rl.gae(rewards=d.rewards, values=d.values, next_values=d.next_values, terminated=d.terminated,
                  gamma=0.9, lambda_=0.9)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, rtol=0.05, atol=0.1)


def test_gradest_rl_imports_only_torch_surrogate_validation_and_distributed():
    """Besides torch and gradest's own surrogate, validation and distributed modules, only the standard
    library's math and dataclasses (the result record)."""
    import ast
    import pathlib

    root = pathlib.Path(rl.__file__).parent
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                mod = node.module or ""
                allowed = ("__future__", "dataclasses", "torch", "gradest.surrogate", "gradest._validation",
                           "gradest._distributed")
                assert mod in allowed or mod.startswith(
                    ("torch.", "gradest.rl")), f"{path.name} imports {mod}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name in ("math", "torch"), f"{path.name} imports {alias.name}"


def test_docstring_examples_run():
    import doctest

    from gradest.rl import advantages, importance, losses, offline, returns

    for module in (returns, advantages, importance, losses, offline):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0 and result.attempted > 0, module.__name__


@pytest.mark.parametrize("steps", [7, 300, 1000])  # the closed form and the blocked scan
def test_a_log_ratio_of_minus_inf_is_a_ratio_of_zero(steps):
    d = make_rollout((steps, 3), seed=5, p_terminated=0.05, p_truncated=0.05)
    log_rhos = d.log_rhos.clone()
    log_rhos[torch.rand(log_rhos.shape, generator=torch.Generator().manual_seed(6)) < 0.1] = float("-inf")
    log_rhos[2, 0] = float("-inf")
    w = rl.per_decision_importance_weights(log_rhos=log_rhos, terminated=d.terminated, truncated=d.truncated)
    want = ref.per_decision_importance_weights(log_rhos, d.terminated, d.truncated)
    assert (want == 0).any() and (want > 0).any()
    torch.testing.assert_close(w, want, rtol=1e-9, atol=0.0)
    vs, adv = rl.vtrace(log_rhos=log_rhos, rewards=d.rewards, values=d.values, next_values=d.next_values,
                        terminated=d.terminated, truncated=d.truncated, gamma=0.9)
    want_vs, want_adv = ref.vtrace(log_rhos, d.rewards, d.values, d.next_values, d.terminated, d.truncated,
                                   0.9, 1.0, 1.0, 1.0)
    torch.testing.assert_close(vs, want_vs, **TOL)
    torch.testing.assert_close(adv, want_adv, **TOL)


@pytest.mark.parametrize("with_old", [False, True])
def test_policy_gradient_loss_second_derivative_is_the_score_functions(with_old):
    """The magic box keeps second derivatives right: d²/dθ² of the loss, with and without old_log_probs,
    equals that of -A·exp(log π_θ - ⊥log π_old) computed directly."""
    theta = torch.tensor([0.3, -0.2], dtype=torch.float64, requires_grad=True)
    a = torch.tensor([0, 1, 1])
    adv = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    old = torch.tensor([-0.9, -0.5, -0.7], dtype=torch.float64) if with_old else None

    def hessian(fn):
        lp = torch.distributions.Categorical(logits=theta).log_prob(a)
        (g,) = torch.autograd.grad(fn(lp).sum(), theta, create_graph=True)
        return torch.stack([torch.autograd.grad(g[i], theta, retain_graph=True)[0] for i in range(2)])

    got = hessian(lambda lp: rl.policy_gradient_loss(log_probs=lp, advantages=adv, old_log_probs=old))
    want = hessian(lambda lp: -adv * torch.exp(lp - (lp.detach() if old is None else old)))
    assert want.abs().max() > 0.1
    torch.testing.assert_close(got, want, **TOL)
