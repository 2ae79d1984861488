"""A small tabular MDP whose every trajectory can be enumerated: exact values, gradients and moments of
the off-policy estimators of gradest.rl.offline.

Two states, two actions, a time limit of H = 3 steps; each step moves to state 0, state 1 or a terminal
state (a termination) with probabilities that depend on (s, a), and pays a reward r(s, a, s'). An episode
that reaches the time limit is truncated. Every trajectory is a column of time-major ``[H, K]`` tensors;
the steps after its end are padding and hold NaN here, which the estimators must ignore.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

DT = torch.float64
H = 3
GAMMA = 0.9
P0 = torch.tensor([0.6, 0.4], dtype=DT)
# P[s, a, s'] with s' = 2 the terminal state
P = torch.tensor([[[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]],
                  [[0.4, 0.4, 0.2], [0.2, 0.2, 0.6]]], dtype=DT)
R = torch.tensor([[[1.0, -0.5, 2.0], [0.0, 1.5, -1.0]],
                  [[-1.0, 0.5, 3.0], [2.0, -2.0, 0.5]]], dtype=DT)
MU = torch.tensor([[0.5, 0.5], [0.7, 0.3]], dtype=DT)  # the behaviour policy μ(a|s)
THETA = torch.tensor([[0.8, -0.6], [-0.4, 0.5]], dtype=DT)  # the target policy's logits


@dataclass
class Trajectories:
    """All K trajectories of the MDP, as time-major ``[H, K]`` columns (padding: NaN, flags False)."""

    states: Tensor  # long, padding 0
    actions: Tensor  # long, padding 0
    rewards: Tensor
    terminated: Tensor
    truncated: Tensor
    live: Tensor
    env_prob: Tensor  # [K]: P0 and transition probabilities along the trajectory (no policy)

    def log_policy(self, probs: Tensor) -> Tensor:
        """``[H, K]`` log π(a_t|s_t) for a table ``probs[s, a]`` (padding NaN)."""
        lp = probs.log()[self.states, self.actions]
        return torch.where(self.live, lp, torch.full_like(lp, float("nan")))

    def prob(self, probs: Tensor) -> Tensor:
        """``[K]`` probability of each trajectory under the policy ``probs[s, a]`` (differentiable)."""
        step = torch.where(self.live, probs[self.states, self.actions], torch.ones((), dtype=probs.dtype))
        return self.env_prob * step.prod(0)

    def returns(self) -> Tensor:
        """``[K]`` discounted return over the logged horizon."""
        discount = GAMMA ** torch.arange(H, dtype=DT).unsqueeze(1)
        return torch.where(self.live, self.rewards * discount, 0.0).sum(0)


def enumerate_trajectories() -> Trajectories:
    columns: list[tuple[list[int], list[int], list[float], bool, float]] = []

    def walk(s: int, steps: list[tuple[int, int, float]], prob: float) -> None:
        t = len(steps)
        for a in range(2):
            for nxt in range(3):
                p = float(P[s, a, nxt])
                step = steps + [(s, a, float(R[s, a, nxt]))]
                if nxt == 2 or t == H - 1:
                    columns.append(([x[0] for x in step], [x[1] for x in step], [x[2] for x in step], nxt == 2,
                                    prob * p))
                else:
                    walk(nxt, step, prob * p)

    for s0 in range(2):
        walk(s0, [], float(P0[s0]))
    k = len(columns)
    states = torch.zeros(H, k, dtype=torch.long)
    actions = torch.zeros(H, k, dtype=torch.long)
    rewards = torch.full((H, k), float("nan"), dtype=DT)
    terminated = torch.zeros(H, k, dtype=torch.bool)
    truncated = torch.zeros(H, k, dtype=torch.bool)
    live = torch.zeros(H, k, dtype=torch.bool)
    env_prob = torch.zeros(k, dtype=DT)
    for b, (ss, aa, rr, term, prob) in enumerate(columns):
        n = len(ss)
        states[:n, b], actions[:n, b] = torch.tensor(ss), torch.tensor(aa)
        rewards[:n, b] = torch.tensor(rr, dtype=DT)
        live[:n, b] = True
        (terminated if term else truncated)[n - 1, b] = True
        env_prob[b] = prob
    return Trajectories(states, actions, rewards, terminated, truncated, live, env_prob)


def policy(theta: Tensor = THETA) -> Tensor:
    return theta.softmax(-1)


def exact_value(probs: Tensor) -> Tensor:
    """J(π) over the logged horizon by enumeration (differentiable in ``probs``)."""
    trajs = enumerate_trajectories()
    return (trajs.prob(probs) * trajs.returns()).sum()


def q_table(probs: Tensor) -> Tensor:
    """``[H, S, A]`` Q^π_t(s, a) of the logged horizon: r(s, a, s') + γ V_{t+1}(s') with V_H = 0 and nothing
    after a termination."""
    q = torch.zeros(H, 2, 2, dtype=DT)
    v_next = torch.zeros(2, dtype=DT)
    for t in range(H - 1, -1, -1):
        cont = torch.cat([v_next, torch.zeros(1, dtype=DT)])  # V of s' (0 at the terminal state)
        q[t] = (P * (R + GAMMA * cont)).sum(-1)
        v_next = (probs * q[t]).sum(-1)
    return q


def model_values(trajs: Trajectories, q: Tensor, probs: Tensor) -> tuple[Tensor, Tensor]:
    """``q_values[t] = q̂_t(s_t, a_t)`` and ``v_values[t] = Σ_a π(a|s_t) q̂_t(s_t, a)`` for a table ``q``
    ``[H, S, A]`` (padding NaN); differentiable in ``probs``."""
    t = torch.arange(H).unsqueeze(1).expand_as(trajs.states)
    qv = q[t, trajs.states, trajs.actions]
    vv = (probs[trajs.states] * q[t, trajs.states]).sum(-1)
    nan = torch.full_like(qv, float("nan"))
    return torch.where(trajs.live, qv, nan), torch.where(trajs.live, vv, nan)


def sample_columns(trajs: Trajectories, episodes: int, replications: int, seed: int) -> Tensor:
    """``[replications, episodes]`` indices of trajectories drawn under μ (exact sampling from the
    enumerated distribution)."""
    g = torch.Generator().manual_seed(seed)
    p = trajs.prob(MU)
    return torch.multinomial(p, replications * episodes, replacement=True, generator=g).view(replications, episodes)
