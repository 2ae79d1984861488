"""Plain float64 loops over time: the definitions every vectorised function in gradest.rl is checked against.

Each loop is written the way the recurrence reads in the docstrings, one step at a time, with the
episode-end convention spelled out: ``done = terminated | truncated``; nothing is carried across a done
step or past the last step; terminated steps bootstrap nothing, truncated steps (and the last step, unless
it terminated) bootstrap from ``next_values``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def reverse_scan(a: Tensor, b: Tensor) -> Tensor:
    a, b = a.double(), b.double()
    out = torch.empty_like(a)
    y = torch.zeros_like(a[0]) if a.shape[0] else None
    for t in range(a.shape[0] - 1, -1, -1):
        y = a[t] + b[t] * y
        out[t] = y
    return out


def _flags(terminated: Tensor, truncated: Tensor | None) -> tuple[Tensor, Tensor]:
    term = terminated.double()
    done = (terminated | truncated).double() if truncated is not None else term
    return term, done


def gae(rewards, values, next_values, terminated, truncated, gamma, lambda_):
    r, v, nv = rewards.double(), values.double(), next_values.double()
    term, done = _flags(terminated, truncated)
    out = torch.empty_like(r)
    carry = torch.zeros_like(r[0])
    for t in range(r.shape[0] - 1, -1, -1):
        delta = r[t] + gamma * (1 - term[t]) * nv[t] - v[t]
        carry = delta + gamma * lambda_ * (1 - done[t]) * carry
        out[t] = carry
    return out


def td_lambda(rewards, next_values, terminated, truncated, gamma, lambda_):
    r, nv = rewards.double(), next_values.double()
    term, done = _flags(terminated, truncated)
    out = torch.empty_like(r)
    steps = r.shape[0]
    for t in range(steps - 1, -1, -1):
        if t == steps - 1:
            out[t] = r[t] + gamma * (1 - term[t]) * nv[t]
        else:
            inside = r[t] + gamma * ((1 - lambda_) * nv[t] + lambda_ * out[t + 1])
            cut = r[t] + gamma * (1 - term[t]) * nv[t]
            out[t] = torch.where(done[t] > 0, cut, inside)
    return out


def discounted_returns(rewards, terminated, truncated, gamma, next_values=None):
    r = rewards.double()
    term, done = _flags(terminated, truncated)
    out = torch.empty_like(r)
    steps = r.shape[0]
    for t in range(steps - 1, -1, -1):
        later = out[t + 1] if t < steps - 1 else torch.zeros_like(r[t])
        g = r[t] + gamma * (1 - done[t]) * later
        if next_values is not None:
            cut = done[t] if t < steps - 1 else torch.ones_like(done[t])
            g = g + gamma * cut * (1 - term[t]) * next_values[t].double()
        out[t] = g
    return out


def vtrace(log_rhos, rewards, values, next_values, terminated, truncated, gamma, lambda_, rho_bar, c_bar):
    lr, r, v, nv = log_rhos.double(), rewards.double(), values.double(), next_values.double()
    term, done = _flags(terminated, truncated)
    steps = r.shape[0]
    vs = torch.empty_like(r)
    acc = torch.zeros_like(r[0])
    for t in range(steps - 1, -1, -1):
        rho = lr[t].exp().clamp(max=rho_bar)
        c = lambda_ * lr[t].exp().clamp(max=c_bar)
        delta = rho * (r[t] + gamma * (1 - term[t]) * nv[t] - v[t])
        acc = delta + gamma * c * (1 - done[t]) * acc
        vs[t] = v[t] + acc
    adv = torch.empty_like(r)
    for t in range(steps):
        rho = lr[t].exp().clamp(max=rho_bar)
        later = vs[t + 1] if t < steps - 1 else nv[t]
        nxt = torch.where(done[t] > 0, nv[t], later)
        adv[t] = rho * (r[t] + gamma * (1 - term[t]) * nxt - v[t])
    return vs, adv


def per_decision_importance_weights(log_rhos, terminated, truncated, clip=None):
    rho = log_rhos.double().exp()
    if clip is not None:
        rho = rho.clamp(max=clip)
    _, done = _flags(terminated, truncated)
    out = torch.empty_like(rho)
    for t in range(rho.shape[0]):
        keep = torch.zeros_like(rho[t]) if t == 0 else 1 - done[t - 1]
        prev = out[t - 1] if t > 0 else torch.ones_like(rho[t])
        out[t] = rho[t] * (keep * prev + (1 - keep))
    return out


def sequence_policy_loss(*, logp, rewards, group_size, mask=None, advantage="rloo", ref_logp=None, kl_coef=0.0,
                         kl="k1-reward", old_logp=None, clip=None, ratio="token", behaviour_logp=None, tis_cap=None,
                         length_norm="none"):
    """The loss of ``gradest.rl.sequence_policy_loss`` one sequence and one token at a time, as its docstring
    reads: returns, group baselines, KL-to-go, weights, ratios, clipping, importance weights, KL terms."""
    N, L = logp.shape
    G = group_size
    mask = torch.ones(N, L, dtype=torch.bool) if mask is None else mask.bool()
    beta = float(kl_coef)
    in_reward = beta > 0 and kl.endswith("reward")
    in_loss = beta > 0 and kl.endswith("loss")
    kind = kl[:2]

    def k(delta):
        if kind == "k1":
            return delta
        if kind == "k2":
            return 0.5 * delta**2
        return torch.exp(-delta) - 1 + delta

    rollout = (logp if old_logp is None else old_logp).detach()
    tokens = [[t for t in range(L) if mask[i, t]] for i in range(N)]
    kappa = [{t: (k(rollout[i, t] - ref_logp[i, t]) if in_reward else 0.0) for t in tokens[i]} for i in range(N)]
    returns = [rewards[i] - beta * sum(kappa[i].values()) if in_reward else rewards[i] for i in range(N)]
    baseline, scale = [], []
    for i in range(N):
        members = [j for j in range(N) if j // G == i // G]
        group = torch.stack([torch.as_tensor(returns[j]) for j in members])
        if advantage == "rloo":
            baseline.append((group.sum() - returns[i]) / (G - 1))
        else:
            baseline.append(group.mean())
        scale.append(1.0 / (group.std() + 1e-4) if advantage == "grpo" else 1.0)
    total_tokens = sum(len(ts) for ts in tokens)

    def weight(i):
        if length_norm == "none":
            return 1.0
        if length_norm == "sequence":
            return 1.0 / len(tokens[i])
        return N / total_tokens

    lo, hi = (None, None)
    if clip is not None:
        eps_lo, eps_hi = clip if isinstance(clip, tuple) else (clip, clip)
        lo, hi = 1 - eps_lo, 1 + eps_hi

    def clipped(r, a):
        return r * a if clip is None else torch.minimum(r * a, r.clamp(lo, hi) * a)

    def tis_of(log_w):
        w = torch.exp(log_w)
        return w if tis_cap is None else w.clamp(max=tis_cap)

    loss = 0.0
    for i in range(N):
        seq_adv = (returns[i] - baseline[i]) * scale[i]
        if behaviour_logp is not None and ratio == "sequence":
            tis_seq = tis_of(sum(rollout[i, t] - behaviour_logp[i, t] for t in tokens[i]))
        for t in tokens[i]:
            tis = 1.0
            if behaviour_logp is not None:
                tis = tis_of(rollout[i, t] - behaviour_logp[i, t]) if ratio == "token" else tis_seq
            if ratio == "token":
                if in_reward and advantage != "grpo":
                    a = rewards[i] - beta * sum(kappa[i][s] for s in tokens[i] if s >= t) - baseline[i]
                else:
                    a = seq_adv
                old = logp[i, t].detach() if old_logp is None else old_logp[i, t]
                loss = loss - weight(i) * tis * clipped(torch.exp(logp[i, t] - old), a) / N
            if in_loss:
                loss = loss + weight(i) * tis * beta * k(logp[i, t] - ref_logp[i, t]) / N
        if ratio == "sequence":
            old = logp[i].detach() if old_logp is None else old_logp[i]
            log_s = sum(weight(i) * (logp[i, t] - old[t]) for t in tokens[i])
            tis = tis_seq if behaviour_logp is not None else 1.0
            loss = loss - tis * clipped(torch.exp(log_s), seq_adv) / N
    return loss
