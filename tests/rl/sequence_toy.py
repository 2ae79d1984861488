"""An enumerable language for testing sequence losses against exact gradients.

Tokens 0..C-1 are content, token C (= ``end``) ends a sequence; sequences have at most L tokens (the end
token counts; a sequence of L content tokens is cut there). With C = 3 and L = 3 there are
1 + 3 + 9 + 27 = 40 sequences per prompt. The policy is a table of logits, one row per (prompt, prefix)
and prefixes are the content strings of length 0..L-1 (13 of them), so every probability below is a
finite sum and every gradient exact. With ``end=False`` there is no end token and every sequence has
length L (C^L sequences).

Batches for Monte Carlo tests are built for R independent replications at once: the policy table is
copied per replication (``theta_rep`` ``[R, P, K, V]``), so one backward pass of a loss that is a mean
over the R replications' groups gives each replication's own gradient (times 1/R).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Batch:
    logp: Tensor  # [R * P * G, L], differentiable in theta_rep
    mask: Tensor  # [R * P * G, L] bool
    rewards: Tensor  # [R * P * G]
    ids: Tensor  # [R, P, G] sequence indices
    theta_rep: Tensor  # [R, P, K, V] leaf


class Toy:
    def __init__(self, *, prompts: int = 2, content: int = 3, length: int = 3, end: bool = True, seed: int = 0,
                 reward_levels: int = 3) -> None:
        self.P, self.C, self.L, self.has_end = prompts, content, length, end
        self.V = content + 1 if end else content
        self.end = content if end else None
        # prefixes: content strings of length 0..L-1, numbered by length then lexicographically
        self.prefixes = [p for j in range(length) for p in itertools.product(range(content), repeat=j)]
        self.K = len(self.prefixes)
        index = {p: k for k, p in enumerate(self.prefixes)}
        seqs: list[tuple[int, ...]] = []
        if end:
            for j in range(length):
                seqs += [p + (content,) for p in itertools.product(range(content), repeat=j)]
        seqs += list(itertools.product(range(content), repeat=length))
        self.S = len(seqs)
        self.tokens = torch.zeros(self.S, length, dtype=torch.long)
        self.mask = torch.zeros(self.S, length, dtype=torch.bool)
        self.prefix = torch.zeros(self.S, length, dtype=torch.long)
        for s, seq in enumerate(seqs):
            for t, tok in enumerate(seq):
                self.tokens[s, t], self.mask[s, t], self.prefix[s, t] = tok, True, index[seq[:t]]
        self.lengths = self.mask.sum(1).double()
        # the path to each prefix: (prefix id, token) pairs, padded with the root and a 0 weight
        self.path_prefix = torch.zeros(self.K, max(length - 1, 1), dtype=torch.long)
        self.path_token = torch.zeros(self.K, max(length - 1, 1), dtype=torch.long)
        self.path_mask = torch.zeros(self.K, max(length - 1, 1), dtype=torch.bool)
        for k, p in enumerate(self.prefixes):
            for j, tok in enumerate(p):
                self.path_prefix[k, j], self.path_token[k, j], self.path_mask[k, j] = index[p[:j]], tok, True
        g = torch.Generator().manual_seed(seed)
        # logits of moderate spread: every prefix is reached often, so the Monte Carlo means are close to
        # normal (a prefix seen in 1% of the replications would make the standard error unreliable)
        self.theta = 0.5 * torch.randn(self.P, self.K, self.V, generator=g, dtype=torch.float64)
        self.ref = self.theta + 0.7 * torch.randn(self.P, self.K, self.V, generator=g, dtype=torch.float64)
        self.behaviour = self.theta + 0.5 * torch.randn(self.P, self.K, self.V, generator=g, dtype=torch.float64)
        self.rewards = torch.randint(reward_levels, (self.P, self.S), generator=g).double()

    # --- exact quantities -----------------------------------------------------------------------------

    def token_logp(self, theta: Tensor) -> Tensor:
        """``[..., P, S, L]`` log π(y_t | x, y_<t) of every sequence (0 at masked positions)."""
        table = theta.log_softmax(-1)  # [..., P, K, V]
        out = table[..., self.prefix, self.tokens]  # [..., P, S, L]
        return out * self.mask

    def seq_logp(self, theta: Tensor) -> Tensor:
        """``[P, S]`` log π(y | x)."""
        return self.token_logp(theta).sum(-1)

    def probs(self, theta: Tensor) -> Tensor:
        return self.seq_logp(theta).exp()

    def reach(self, theta: Tensor) -> Tensor:
        """``[P, K]`` probability that generation reaches each prefix."""
        table = theta.log_softmax(-1)
        steps = table[:, self.path_prefix, self.path_token] * self.path_mask  # [P, K, L-1]
        return steps.sum(-1).exp()

    def expected_reward(self, theta: Tensor) -> Tensor:
        """``[P]`` E_y R(x, y)."""
        return (self.probs(theta) * self.rewards).sum(-1)

    def kl_sequence(self, theta: Tensor, ref: Tensor | None = None) -> Tensor:
        """``[P]`` KL(π_θ(·|x) ‖ π_ref(·|x)) over whole sequences."""
        ref = self.ref if ref is None else ref
        lp = self.seq_logp(theta)
        return (lp.exp() * (lp - self.seq_logp(ref))).sum(-1)

    def kl_sequence_reverse(self, theta: Tensor) -> Tensor:
        """``[P]`` KL(π_ref(·|x) ‖ π_θ(·|x)) over whole sequences."""
        lr = self.seq_logp(self.ref)
        return (lr.exp() * (lr - self.seq_logp(theta))).sum(-1)

    def kl_fixed_prefixes(self, theta: Tensor, *, direction: str) -> Tensor:
        """``[P]`` Σ_prefixes sg(P(prefix)) KL(next-token distributions): ``"theta||ref"`` or ``"ref||theta"``.
        Its gradient differentiates the next-token distributions only, the prefixes held fixed."""
        lq, lr = theta.log_softmax(-1), self.ref.log_softmax(-1)
        if direction == "theta||ref":
            per_prefix = (lq.exp() * (lq - lr)).sum(-1)
        else:
            per_prefix = (lr.exp() * (lr - lq)).sum(-1)
        return (self.reach(theta).detach() * per_prefix).sum(-1)

    def objective(self, theta: Tensor, beta: float) -> Tensor:
        """J_β averaged over prompts: the loss estimates −∇ of this."""
        return (self.expected_reward(theta) - beta * self.kl_sequence(theta)).mean()

    def grad(self, fn) -> Tensor:  # noqa: ANN001
        theta = self.theta.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(fn(theta), theta)
        return g

    def others(self, theta: Tensor, G: int) -> tuple[Tensor, Tensor]:
        """Every (G-1)-tuple of other samples of each prompt: their ids ``[M, G-1]`` and probabilities
        ``[P, M]`` (for conditional expectations E[· | y_1 = y] with y_2..y_G integrated out)."""
        ids = torch.cartesian_prod(*[torch.arange(self.S)] * (G - 1)).reshape(-1, G - 1)
        p = self.probs(theta).detach()  # [P, S]
        return ids, p[:, ids].prod(-1)

    # --- Monte Carlo batches --------------------------------------------------------------------------

    def sample(self, theta: Tensor, R: int, G: int, generator: torch.Generator) -> Tensor:
        """``[R, P, G]`` sequence ids, G independent samples per prompt and replication."""
        p = self.probs(theta).detach()
        draws = torch.multinomial(p, R * G, replacement=True, generator=generator)  # [P, R*G]
        return draws.reshape(self.P, R, G).permute(1, 0, 2)

    def batch(self, ids: Tensor, theta: Tensor | None = None) -> Batch:
        """The ``[R * P * G, L]`` batch of sequences ``ids`` with per-replication copies of θ."""
        R, P, G = ids.shape
        base = self.theta if theta is None else theta
        theta_rep = base.detach().expand(R, *base.shape).clone().requires_grad_(True)
        logp = self.logp_of(theta_rep, ids)
        flat = ids.reshape(R, P * G)
        prompt = torch.arange(P).repeat_interleave(G).expand(R, -1)
        return Batch(logp=logp, mask=self.mask[flat].reshape(R * P * G, self.L),
                     rewards=self.rewards[prompt, flat].reshape(-1), ids=ids, theta_rep=theta_rep)

    def logp_of(self, theta_rep: Tensor, ids: Tensor) -> Tensor:
        """``[R * P * G, L]`` log-probs of the sequences ``ids`` ``[R, P, G]`` under ``theta_rep`` ``[R, P, K, V]``
        (or a single table ``[P, K, V]``)."""
        R, P, G = ids.shape
        if theta_rep.dim() == 3:
            theta_rep = theta_rep.expand(R, *theta_rep.shape)
        table = theta_rep.log_softmax(-1)  # [R, P, K, V]
        r = torch.arange(R)[:, None, None, None]
        x = torch.arange(P)[None, :, None, None]
        pre, tok = self.prefix[ids], self.tokens[ids]  # [R, P, G, L]
        out = table[r, x, pre, tok] * self.mask[ids]
        return out.reshape(R * P * G, self.L)
