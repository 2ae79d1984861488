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


def retrace(q_values, next_values, rewards, log_rhos, terminated, truncated, gamma, lambda_):
    """Munos et al.'s target, one step at a time in RLax's form:
    G_t = r_t + γ(1 - term_t) E_π Q(s'_t) + γ (1 - done_t) c_{t+1} (G_{t+1} - Q(s_{t+1}, a_{t+1}))."""
    q, nv, r, lr = q_values.double(), next_values.double(), rewards.double(), log_rhos.double()
    term, done = _flags(terminated, truncated)
    steps = r.shape[0]
    out = torch.empty_like(r)
    for t in range(steps - 1, -1, -1):
        g = r[t] + gamma * (1 - term[t]) * nv[t]
        if t < steps - 1:
            c = lambda_ * lr[t + 1].exp().clamp(max=1.0)
            g = g + gamma * (1 - done[t]) * c * (out[t + 1] - q[t + 1])
        out[t] = g
    return out


def n_step_returns(rewards, next_values, terminated, truncated, gamma, n):
    """Sum up to n rewards from t, stopping after the episode's last step, then bootstrap unless it terminated."""
    r, nv = rewards.double(), next_values.double()
    term, done = _flags(terminated, truncated)
    steps = r.shape[0]
    out = torch.empty_like(r)
    for t in range(steps):
        for b in range(r[t].numel()):
            idx = (t, *torch.unravel_index(torch.tensor(b), r.shape[1:])) if r.dim() > 1 else (t,)
            total, k = 0.0, t
            while True:
                total += gamma ** (k - t) * float(r[(k, *idx[1:])])
                last = k == t + n - 1 or k == steps - 1 or bool(done[(k, *idx[1:])])
                if last:
                    if not bool(term[(k, *idx[1:])]):
                        total += gamma ** (k - t + 1) * float(nv[(k, *idx[1:])])
                    break
                k += 1
            out[idx] = total
    return out
