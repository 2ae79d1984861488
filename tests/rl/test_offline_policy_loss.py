"""off_policy_policy_loss on the enumerable tabular MDP: its gradient (and Hessian) averaged over μ's
trajectories is exactly ∇J(π_θ) (∇²J); on sampled data it passes z·SE; clipping is caught as biased."""

from __future__ import annotations

import pytest
import torch

from gradest import rl
from gradest.testing import assert_unbiased

from . import tabular as tb


@pytest.fixture(scope="module")
def trajs():
    return tb.enumerate_trajectories()


def _loss(trajs, theta, method, model, columns=None, weights=None, **over):
    """The loss on the trajectories ``columns`` (all by default). With ``weights`` [K], each trajectory's
    rewards, q̂ and v̂ are scaled by weights · K, so that the loss is -Σ_b weights_b J_b(θ) (it is linear
    in them jointly)."""
    pi = tb.policy(theta)
    log_probs = trajs.log_policy(pi)
    behaviour = trajs.log_policy(tb.MU)
    rewards = trajs.rewards
    q_values = v_values = None
    if method == "dr":
        q = {"exact": tb.q_table(tb.policy(theta.detach())), "zero": torch.zeros(tb.H, 2, 2, dtype=tb.DT),
             "rough": tb.q_table(tb.policy()) + torch.randn(tb.H, 2, 2, generator=torch.Generator().manual_seed(3),
                                                             dtype=tb.DT)}[model]
        q_values, v_values = tb.model_values(trajs, q, pi)
    scale = None if weights is None else weights * weights.numel()
    tensors = [log_probs, behaviour, rewards, trajs.terminated, trajs.truncated, q_values, v_values]
    if columns is not None:
        tensors = [None if t is None else t[:, columns] for t in tensors]
    log_probs, behaviour, rewards, terminated, truncated, q_values, v_values = tensors
    if scale is not None:
        rewards = rewards * scale
        q_values = None if q_values is None else q_values * scale
        v_values = None if v_values is None else v_values * scale
    kw = dict(log_probs=log_probs, behaviour_log_probs=behaviour, rewards=rewards, terminated=terminated,
              truncated=truncated, gamma=tb.GAMMA, method=method, q_values=q_values, v_values=v_values)
    kw.update(over)
    return rl.off_policy_policy_loss(**kw)


def _exact_gradient_and_hessian():
    theta = tb.THETA.clone().requires_grad_()
    (g,) = torch.autograd.grad(tb.exact_value(tb.policy(theta)), theta, create_graph=True)
    flat = g.flatten()
    hess = torch.stack([torch.autograd.grad(flat[i], theta, retain_graph=True)[0].flatten() for i in range(4)])
    return g.detach(), hess


CASES = [("pdis", None), ("dr", "exact"), ("dr", "rough"), ("dr", "zero")]


@pytest.mark.parametrize("method,model", CASES)
def test_gradient_averaged_over_mu_is_exactly_the_policy_gradient(trajs, method, model):
    theta = tb.THETA.clone().requires_grad_()
    loss = _loss(trajs, theta, method, model, weights=trajs.prob(tb.MU))
    (g,) = torch.autograd.grad(-loss, theta)
    want, _ = _exact_gradient_and_hessian()
    torch.testing.assert_close(g, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method,model", [("pdis", None), ("dr", "rough")])
def test_hessian_averaged_over_mu_is_exactly_the_policy_hessian(trajs, method, model):
    """The magic box keeps higher derivatives unbiased: ∇² of the loss averaged under μ is -∇²J."""
    theta = tb.THETA.clone().requires_grad_()
    loss = _loss(trajs, theta, method, model, weights=trajs.prob(tb.MU))
    (g,) = torch.autograd.grad(-loss, theta, create_graph=True)
    flat = g.flatten()
    hess = torch.stack([torch.autograd.grad(flat[i], theta, retain_graph=True)[0].flatten() for i in range(4)])
    _, want = _exact_gradient_and_hessian()
    torch.testing.assert_close(hess, want, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("method,model", [("pdis", None), ("dr", "rough")])
def test_value_is_minus_the_off_policy_estimate(trajs, method, model):
    theta = tb.THETA.clone().requires_grad_()
    loss = _loss(trajs, theta, method, model)
    pi = tb.policy(tb.THETA)
    kw = {}
    if method == "dr":
        q = tb.q_table(tb.policy()) + torch.randn(tb.H, 2, 2, generator=torch.Generator().manual_seed(3), dtype=tb.DT)
        kw = dict(zip(("q_values", "v_values"), tb.model_values(trajs, q, pi)))
    est = rl.off_policy_value(rewards=trajs.rewards, log_rhos=trajs.log_policy(pi) - trajs.log_policy(tb.MU),
                              terminated=trajs.terminated, truncated=trajs.truncated, gamma=tb.GAMMA, method=method,
                              **kw)
    torch.testing.assert_close(loss.detach(), -est.value, rtol=1e-12, atol=1e-12)


def _sampled_gradients(trajs, method, model, replications=300, episodes=20, seed=21, **over):
    columns = tb.sample_columns(trajs, episodes=episodes, replications=replications, seed=seed)
    out = []
    for c in columns:
        theta = tb.THETA.clone().requires_grad_()
        (g,) = torch.autograd.grad(-_loss(trajs, theta, method, model, columns=c, **over), theta)
        out.append(g.flatten())
    return torch.stack(out)


@pytest.mark.parametrize("method,model", [("pdis", None), ("dr", "rough")])
def test_unbiased_on_sampled_data(trajs, method, model):
    want, _ = _exact_gradient_and_hessian()
    assert_unbiased(_sampled_gradients(trajs, method, model), want.flatten())


def test_clipping_is_biased_and_the_check_catches_it(trajs):
    """clip=1 cuts every ratio above 1 (up to 2.3 here): the z·SE check must flag it (its power)."""
    want, _ = _exact_gradient_and_hessian()
    draws = _sampled_gradients(trajs, "pdis", None, replications=1000, clip=1.0)
    with pytest.raises(AssertionError, match="biased at"):
        assert_unbiased(draws, want.flatten())


def test_a_clip_above_every_ratio_changes_nothing(trajs):
    ratios = (tb.policy() / tb.MU).max()
    theta = tb.THETA.clone().requires_grad_()
    (free,) = torch.autograd.grad(_loss(trajs, theta, "dr", "rough"), theta)
    (clipped,) = torch.autograd.grad(_loss(trajs, theta, "dr", "rough", clip=float(ratios) + 1e-6), theta)
    torch.testing.assert_close(clipped, free, rtol=0, atol=0)


def test_batch_major_gives_the_same_loss_and_gradient(trajs):
    theta = tb.THETA.clone().requires_grad_()
    pi = tb.policy(theta)
    q_values, v_values = tb.model_values(trajs, tb.q_table(tb.policy()), pi)
    time_major = dict(log_probs=trajs.log_policy(pi), behaviour_log_probs=trajs.log_policy(tb.MU),
                      rewards=trajs.rewards, terminated=trajs.terminated, truncated=trajs.truncated,
                      q_values=q_values, v_values=v_values)
    a = rl.off_policy_policy_loss(**time_major, gamma=tb.GAMMA, method="dr")
    b = rl.off_policy_policy_loss(**{k: v.T for k, v in time_major.items()}, gamma=tb.GAMMA, method="dr",
                                  time_dim=1)
    (ga,) = torch.autograd.grad(a, theta, retain_graph=True)
    (gb,) = torch.autograd.grad(b, theta)
    torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gb, ga, rtol=1e-12, atol=1e-12)


def test_padding_gets_no_gradient_and_no_nan(trajs):
    theta = tb.THETA.clone().requires_grad_()
    pi = tb.policy(theta)
    log_probs = trajs.log_policy(pi)  # NaN on the padding
    loss = rl.off_policy_policy_loss(log_probs=log_probs, behaviour_log_probs=trajs.log_policy(tb.MU),
                                     rewards=trajs.rewards, terminated=trajs.terminated, gamma=tb.GAMMA)
    (g,) = torch.autograd.grad(loss, theta)
    assert torch.isfinite(g).all() and torch.isfinite(loss)


def test_the_value_can_be_logged_without_gradients(trajs):
    with torch.no_grad():
        pi = tb.policy()
        loss = rl.off_policy_policy_loss(log_probs=trajs.log_policy(pi), behaviour_log_probs=trajs.log_policy(tb.MU),
                                         rewards=trajs.rewards, terminated=trajs.terminated, gamma=tb.GAMMA)
    assert not loss.requires_grad and torch.isfinite(loss)
