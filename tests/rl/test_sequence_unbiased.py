"""Every line of sequence_policy_loss's bias table, checked against exact gradients on an enumerable language.

The toy language (``sequence_toy.Toy``: 3 content tokens and an end token, at most 3 tokens, 40
sequences per prompt, 2 prompts, a tabular policy) gives every expectation as a finite sum, so each
documented expected gradient is computed exactly by autograd through that sum. R replications of the
loss's gradient (each on P prompts × G samples) are then compared with it by ``assert_unbiased``
(tolerance z·SE from a false-alarm rate). Configurations documented as biased are compared with the
biased value the docstring states, and the cases marked *power* must fail against the unbiased value:
the harness can see each bias. The KL-in-the-loss identities are also checked exactly, by enumeration,
with no sampling at all.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from gradest.rl import sequence_policy_loss
from gradest.rl.sequence import STD_EPS
from gradest.testing import assert_unbiased

from .sequence_toy import Toy

TOY = Toy(prompts=2)
BETA = 0.5  # large enough that every KL term's bias is far outside the standard error
R = 3000


def draws(config: dict, *, G: int = 4, seed: int = 0, toy: Toy = TOY, sampler: Tensor | None = None,
          behaviour: bool = False) -> Tensor:
    """``[R, P, K, V]``: R independent gradients of the loss, each from G samples of every prompt.

    The samples come from π_θ, or from μ (``toy.behaviour``) with ``behaviour_logp`` passed."""
    gen = torch.Generator().manual_seed(seed)
    ids = toy.sample(toy.behaviour if behaviour else (toy.theta if sampler is None else sampler), R, G, gen)
    b = toy.batch(ids)
    kwargs = dict(mask=b.mask, group_size=G, ref_logp=toy.logp_of(toy.ref, ids), **config)
    if behaviour:
        kwargs["behaviour_logp"] = toy.logp_of(toy.behaviour, ids)
    if config.get("length_norm") == "token":  # Σ_j |y_j| couples a batch: one call per replication
        rows = toy.P * G
        kwargs.update(logp=b.logp, rewards=b.rewards)
        loss = sum(sequence_policy_loss(**{k: (v[r * rows:(r + 1) * rows] if isinstance(v, Tensor) else v)
                                           for k, v in kwargs.items()})
                   for r in range(R))
        scale = 1.0
    else:  # a mean over R replications' groups: each replication's gradient is R × its share
        loss = sequence_policy_loss(logp=b.logp, rewards=b.rewards, **kwargs)
        scale = float(R)
    (grad,) = torch.autograd.grad(loss, b.theta_rep)
    return grad * scale


def exact(fn: Callable[[Tensor], Tensor], toy: Toy = TOY) -> Tensor:
    return toy.grad(fn)


# --- the documented objectives (θ the policy table; every function averages over prompts) ------------

def reward(th: Tensor, toy: Toy = TOY) -> Tensor:
    return toy.expected_reward(th).mean()


def kl_seq(th: Tensor, toy: Toy = TOY) -> Tensor:
    return toy.kl_sequence(th).mean()


def kl_forward_fixed(th: Tensor) -> Tensor:  # F_→: Σ_t KL(π_θ‖π_ref)(·|y_<t), prefixes held fixed
    return TOY.kl_fixed_prefixes(th, direction="theta||ref").mean()


def kl_reverse_fixed(th: Tensor) -> Tensor:  # F_←: Σ_t KL(π_ref‖π_θ)(·|y_<t), prefixes held fixed
    return TOY.kl_fixed_prefixes(th, direction="ref||theta").mean()


def returns(th: Tensor, toy: Toy = TOY) -> Tensor:
    """``[P, S]`` T = R − β Σ_t δ_t, δ = log π − log π_ref at the current (detached) policy."""
    delta = (toy.token_logp(th) - toy.token_logp(toy.ref)).detach()
    return toy.rewards - BETA * delta.sum(-1)


def grpo_transform(th: Tensor, G: int) -> Tensor:
    """``[P, S]`` Ā(y) = E[(R_1 − mean)/(std + ε) | y_1 = y], the other G − 1 samples integrated out."""
    ids, p_others = TOY.others(th, G)  # [M, G-1], [P, M]
    own = TOY.rewards[:, :, None, None].expand(-1, -1, ids.shape[0], 1)  # [P, S, M, 1]
    rest = TOY.rewards[:, ids][:, None].expand(-1, TOY.S, -1, -1)  # [P, S, M, G-1]
    group = torch.cat([own, rest], -1)
    a = (group[..., 0] - group.mean(-1)) / (group.std(-1) + STD_EPS)  # [P, S, M]
    return (a * p_others[:, None, :]).sum(-1)


def grpo(th: Tensor, G: int = 3) -> Tensor:
    return (TOY.probs(th) * grpo_transform(th, G).detach()).sum(-1).mean()


def per_length(th: Tensor) -> Tensor:  # E[(R − c)/|y|] at c = E[R]: rloo with length_norm="sequence"
    c = TOY.expected_reward(th).detach()[:, None]
    return (TOY.probs(th) * (TOY.rewards - c) / TOY.lengths).sum(-1).mean()


def k3_per_length(th: Tensor) -> Tensor:  # E_y[(1/|y|) Σ_t k3_t(θ)], y held fixed: k3-loss under "sequence"
    delta = TOY.token_logp(th) - TOY.token_logp(TOY.ref)
    k3 = (torch.expm1(-delta) + delta).sum(-1)
    return (TOY.probs(th).detach() * k3 / TOY.lengths).sum(-1).mean()


def k1_reward_per_length(th: Tensor) -> Tensor:
    """Σ_y sg(π(y)/|y|) Σ_t sg(Ā_t(y)) log π_θ(y_t|·), Ā_t = R − β Σ_{s≥t} δ_s − E[T]: its gradient is the
    documented E[(1/|y|) Σ_t Ā_t ∇ log π_θ(y_t|·)] of k1-reward with length_norm="sequence"."""
    lp = TOY.token_logp(th)
    delta = (lp - TOY.token_logp(TOY.ref)).detach()
    to_go = delta.flip(-1).cumsum(-1).flip(-1)
    mean_t = (TOY.probs(th) * returns(th)).sum(-1).detach()[:, None, None]
    adv = (TOY.rewards[..., None] - BETA * to_go - mean_t) * TOY.mask
    return ((TOY.probs(th) / TOY.lengths).detach()[..., None] * adv * lp).sum((-1, -2)).mean()


def gspo(th: Tensor) -> Tensor:  # E[(T − E[T])/|y| ∇ log π(y)]: one sequence advantage, 1/|y|
    t = returns(th)
    mean_t = (TOY.probs(th) * t).sum(-1, keepdim=True).detach()
    return (TOY.probs(th) * ((t - mean_t) / TOY.lengths).detach()).sum(-1).mean()


def mean_length(toy: Toy) -> float:
    return float((toy.probs(toy.theta) * toy.lengths).sum(-1).mean())


def behaviour_probs() -> Tensor:
    return TOY.probs(TOY.behaviour)


def sequence_tis(th: Tensor, cap: float | None) -> Tensor:
    """y ∼ μ, weight min(π(y)/μ(y), C) on the sequence score, rewards only: Σ_y μ(y) w(y) (R − E_μR) ∇log π."""
    mu = behaviour_probs()
    w = (TOY.probs(th) / mu).detach()
    w = w if cap is None else w.clamp(max=cap)
    centred = TOY.rewards - (mu * TOY.rewards).sum(-1, keepdim=True)
    return (mu * w * centred * TOY.seq_logp(th)).sum(-1).mean()


def token_tis(th: Tensor) -> Tensor:
    """y ∼ μ, weight π/μ of each token on that token's score, rewards only."""
    mu = behaviour_probs()
    lp = TOY.token_logp(th)
    w = (lp - TOY.token_logp(TOY.behaviour)).exp().detach() * TOY.mask
    centred = TOY.rewards - (mu * TOY.rewards).sum(-1, keepdim=True)
    return ((mu * centred)[..., None] * w * lp).sum((-1, -2)).mean()


def test_the_objectives_differ() -> None:
    """The biases below are real: each pair of gradients differs here (else a test could not tell them apart)."""
    pairs = {"F_→ vs the sequence KL": (kl_forward_fixed, kl_seq),
             "F_← vs the sequence KL(π_ref‖π_θ)": (kl_reverse_fixed, lambda th: TOY.kl_sequence_reverse(th).mean()),
             "F_← vs F_→": (kl_reverse_fixed, kl_forward_fixed),
             "grpo vs E[R]": (grpo, reward),
             "E[(R − c)/|y|] vs E[R]/E|y|": (per_length, reward)}
    for name, (a, b) in pairs.items():
        ga, gb = exact(a), exact(b)
        assert not torch.allclose(ga / ga.norm(), gb / gb.norm(), atol=1e-2), name


# --- the table: configuration, G, the exact expected gradient, where the samples come from ----------

CASES: dict[str, tuple[dict, int, Callable[[], Tensor], bool]] = {
    "rloo, k1-reward, none: -grad J (unbiased)":
        (dict(kl_coef=BETA), 4, lambda: -exact(lambda th: TOY.objective(th, BETA)), False),
    "rloo, no KL: -grad E[R]":
        (dict(), 4, lambda: -exact(reward), False),
    "mean: (G-1)/G x rloo":
        (dict(advantage="mean", kl_coef=BETA), 4, lambda: -0.75 * exact(lambda th: TOY.objective(th, BETA)), False),
    "grpo: -grad E[A-bar(y)]":
        (dict(advantage="grpo"), 3, lambda: -exact(grpo), False),
    "grpo, k3-loss: -grad E[A-bar] + beta grad F_<-":
        (dict(advantage="grpo", kl="k3-loss", kl_coef=BETA), 3,
         lambda: -exact(grpo) + BETA * exact(kl_reverse_fixed), False),
    "k3-reward: -grad E[R] + beta (grad KL - grad F_<-)":
        (dict(kl="k3-reward", kl_coef=BETA), 4,
         lambda: -exact(reward) + BETA * (exact(kl_seq) - exact(kl_reverse_fixed)), False),
    "k1-loss: -grad E[R] (the KL term has mean zero)":
        (dict(kl="k1-loss", kl_coef=BETA), 4, lambda: -exact(reward), False),
    "k2-loss: -grad E[R] + beta grad F_->":
        (dict(kl="k2-loss", kl_coef=BETA), 4, lambda: -exact(reward) + BETA * exact(kl_forward_fixed), False),
    "k3-loss: -grad E[R] + beta grad F_<-":
        (dict(kl="k3-loss", kl_coef=BETA), 4, lambda: -exact(reward) + BETA * exact(kl_reverse_fixed), False),
    "sequence norm, rewards: -(grad E[R/|y|] - E[R] grad E[1/|y|])":
        (dict(length_norm="sequence"), 4, lambda: -exact(per_length), False),
    "sequence norm, k3-loss: + beta grad E[(1/|y|) sum_t k3_t]":
        (dict(length_norm="sequence", kl="k3-loss", kl_coef=BETA), 4,
         lambda: -exact(per_length) + BETA * exact(k3_per_length), False),
    "sequence norm, k1-reward: E[(1/|y|) sum_t A-bar_t grad log pi_t]":
        (dict(length_norm="sequence", kl_coef=BETA), 4, lambda: -exact(k1_reward_per_length), False),
    "ratio=sequence, none: -grad J (unbiased)":
        (dict(ratio="sequence", kl_coef=BETA), 4, lambda: -exact(lambda th: TOY.objective(th, BETA)), False),
    "ratio=sequence, sequence norm (GSPO at theta_old)":
        (dict(ratio="sequence", length_norm="sequence", kl_coef=BETA), 4, lambda: -exact(gspo), False),
    "y ~ mu, sequence weights, no cap: -grad J (unbiased)":
        (dict(ratio="sequence", kl_coef=BETA), 4, lambda: -exact(lambda th: TOY.objective(th, BETA)), True),
    "y ~ mu, sequence weights, cap 1.5: the truncated weights":
        (dict(ratio="sequence", tis_cap=1.5), 4, lambda: -exact(lambda th: sequence_tis(th, 1.5)), True),
    "y ~ mu, token weights: each token's own probability corrected":
        (dict(ratio="token"), 4, lambda: -exact(token_tis), True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_expected_gradient_is_the_documented_one(name: str) -> None:
    config, G, target, behaviour = CASES[name]
    assert_unbiased(draws(config, G=G, behaviour=behaviour).reshape(R, -1), target().reshape(-1))


POWER: dict[str, tuple[str, Callable[[], Tensor]]] = {
    # (the configuration of CASES to draw from, a value it must be told apart from)
    "mean is not unbiased": ("mean: (G-1)/G x rloo", lambda: -exact(lambda th: TOY.objective(th, BETA))),
    "grpo is not the gradient of E[R]": ("grpo: -grad E[A-bar(y)]", lambda: -exact(reward)),
    "k2-loss is not the sequence KL's gradient":
        ("k2-loss: -grad E[R] + beta grad F_->", lambda: -exact(reward) + BETA * exact(kl_seq)),
    "k3-loss is not the sequence KL's gradient":
        ("k3-loss: -grad E[R] + beta grad F_<-", lambda: -exact(reward) + BETA * exact(kl_seq)),
    "k3-loss is not the sequence KL(pi_ref||pi_theta)'s gradient":
        ("k3-loss: -grad E[R] + beta grad F_<-",
         lambda: -exact(reward) + BETA * exact(lambda th: TOY.kl_sequence_reverse(th).mean())),
    "k3-reward is not unbiased": ("k3-reward: -grad E[R] + beta (grad KL - grad F_<-)",
                                  lambda: -exact(reward) + BETA * exact(kl_seq)),
    "k1-loss does not regularise": ("k1-loss: -grad E[R] (the KL term has mean zero)",
                                    lambda: -exact(reward) + BETA * exact(kl_seq)),
    "sequence norm is not grad E[R] / E|y|": ("sequence norm, rewards: -(grad E[R/|y|] - E[R] grad E[1/|y|])",
                                              lambda: -exact(reward) / mean_length(TOY)),
    "token weights under mu are not unbiased": ("y ~ mu, token weights: each token's own probability corrected",
                                                lambda: -exact(reward)),
    "a cap biases the sequence weights": ("y ~ mu, sequence weights, cap 1.5: the truncated weights",
                                          lambda: -exact(reward)),
}


@pytest.mark.parametrize("name", list(POWER))
def test_power_each_bias_is_detected(name: str) -> None:
    case, wrong = POWER[name]
    config, G, _, behaviour = CASES[case]
    with pytest.raises(AssertionError, match="biased at"):
        assert_unbiased(draws(config, G=G, behaviour=behaviour).reshape(R, -1), wrong().reshape(-1))


# --- length_norm="token": exact at a fixed length, biased for small batches otherwise ---------------

FIXED = Toy(prompts=2, end=False, seed=1)  # no end token: every sequence has length L = 3


def test_token_norm_at_a_fixed_length_is_the_none_gradient_over_L() -> None:
    config = dict(length_norm="token", kl_coef=BETA)
    target = -exact(lambda th: FIXED.objective(th, BETA), FIXED) / FIXED.L
    assert_unbiased(draws(config, toy=FIXED).reshape(R, -1), target.reshape(-1))


ONE = Toy(prompts=1, seed=2)


def _token_norm_pairs(th: Tensor) -> Tensor:
    """One prompt, G = 2, rloo, rewards only: E over both samples of (R_1 − R_2)(∇log π(y_1) − ∇log π(y_2))
    / (|y_1| + |y_2|), as the gradient of a sum with the weights held fixed."""
    p, r, n, lp = ONE.probs(th)[0], ONE.rewards[0], ONE.lengths, ONE.seq_logp(th)[0]
    w = (p[:, None] * p[None, :] * (r[:, None] - r[None, :]) / (n[:, None] + n[None, :])).detach()
    return (w * (lp[:, None] - lp[None, :])).sum()


def test_token_norm_with_variable_lengths_is_the_batch_expectation_not_the_none_gradient_over_E_length() -> None:
    got = draws(dict(length_norm="token"), G=2, toy=ONE).reshape(R, -1)
    assert_unbiased(got, -exact(_token_norm_pairs, ONE).reshape(-1))
    with pytest.raises(AssertionError, match="biased at"):
        assert_unbiased(got, (-exact(lambda th: reward(th, ONE), ONE) / mean_length(ONE)).reshape(-1))


# --- the KL-in-the-loss identities, exactly (no sampling) -------------------------------------------

def _enumerated_kl_gradient(kl: str, length_norm: str = "none") -> Tensor:
    """Σ_y π_θ(y) ∇(the loss's KL terms of y), by calling the loss on every sequence once.

    Each sequence is a group of two copies with one reward (advantage 0), with its own copy of θ, so the
    gradient of the copy is 1/S of that sequence's own terms."""
    S = TOY.S
    ids = torch.arange(S).repeat_interleave(2).reshape(S, 1, 2).expand(S, TOY.P, 2)  # [S, P, 2]
    b = TOY.batch(ids)
    loss = sequence_policy_loss(logp=b.logp, rewards=torch.zeros_like(b.rewards), mask=b.mask, group_size=2,
                                ref_logp=TOY.logp_of(TOY.ref, ids), kl_coef=1.0, kl=kl, length_norm=length_norm)
    (grad,) = torch.autograd.grad(loss, b.theta_rep)  # [S, P, K, V]: sequence s of every prompt
    per_sequence = grad * S  # the mean over the P prompts of ∇ of sequence s's terms
    weights = TOY.probs(TOY.theta).T  # [S, P]
    return (weights[:, :, None, None] * per_sequence).sum(0)


@pytest.mark.parametrize("kl,objective", [
    ("k3-loss", kl_reverse_fixed),
    ("k2-loss", kl_forward_fixed),
    ("k1-loss", lambda th: 0.0 * th.sum()),
])
def test_kl_in_the_loss_equals_the_fixed_prefix_kl_gradient_exactly(kl: str, objective: Callable) -> None:
    """E[∇ Σ_t k3_t] = ∇ Σ_t E_{y<t}[KL(π_ref‖π_θ)(·|y_<t)] with the prefixes held fixed, and the same for
    k2 with KL(π_θ‖π_ref); k1's expected gradient is 0. Exact up to rounding (float64)."""
    torch.testing.assert_close(_enumerated_kl_gradient(kl), exact(objective), rtol=1e-9, atol=1e-12)


def test_k3_loss_under_sequence_norm_is_the_length_weighted_sum_exactly() -> None:
    torch.testing.assert_close(_enumerated_kl_gradient("k3-loss", "sequence"), exact(k3_per_length),
                               rtol=1e-9, atol=1e-12)


# --- kl_estimate: k1 and k3 are unbiased for the sequence KL, k2 is not -------------------------------

def _kl_draws(kind: str, seed: int = 0) -> Tensor:
    """``[R, P]``: Σ_t k_t of one sequence per prompt and replication (y ∼ π_θ)."""
    from gradest.rl import kl_estimate

    ids = TOY.sample(TOY.theta, R, 1, torch.Generator().manual_seed(seed))
    b = TOY.batch(ids)
    k = kl_estimate(logp=b.logp.detach(), ref_logp=TOY.logp_of(TOY.ref, ids), mask=b.mask, kind=kind)
    return k.sum(1).reshape(R, TOY.P)


@pytest.mark.parametrize("kind", ["k1", "k3"])
def test_kl_estimate_k1_and_k3_are_unbiased_for_the_sequence_kl(kind: str) -> None:
    assert_unbiased(_kl_draws(kind), TOY.kl_sequence(TOY.theta))


def test_kl_estimate_k2_is_biased_by_what_enumeration_says() -> None:
    delta = TOY.token_logp(TOY.theta) - TOY.token_logp(TOY.ref)
    expected_k2 = (TOY.probs(TOY.theta) * (0.5 * delta.square()).sum(-1)).sum(-1)
    draws = _kl_draws("k2")
    assert_unbiased(draws, expected_k2)
    with pytest.raises(AssertionError, match="biased at"):
        assert_unbiased(draws, TOY.kl_sequence(TOY.theta))
