"""Deterministic problems shared by the 2-rank worker and the single-process references.

Every random quantity is drawn here from a fixed seed for the *global* batch; rank r takes its shard
(``shard``), so the ranks together see exactly what one process sees.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Categorical

import gradest

WORLD = 2
STEPS = 4
K = 3  # categories
N_SAMPLES = 2  # samples per element in the DDP model
B = 8  # global batch of the DDP model
N_EXAMPLES = 11  # finite sum of SVRG / SAGA (odd: uneven shards)


def shard(t: Tensor, rank: int, dim: int = 0, world: int = WORLD) -> Tensor:
    """Rank ``rank``'s contiguous block of ``t`` along ``dim`` (sizes divisible by ``world``)."""
    size = t.shape[dim] // world
    return t.narrow(dim, rank * size, size)


class FixedCategorical(Categorical):
    """A Categorical whose ``sample`` returns preset values, so ranks and a single process agree."""

    values: Tensor | None = None

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:  # noqa: B008
        values = type(self).values
        assert values is not None and values.shape == torch.Size(sample_shape) + self.batch_shape
        return values


def fixed(logits: Tensor, values: Tensor) -> FixedCategorical:
    # one class per call: _rebuild (OptimalConstant) constructs type(dist) from the parameters alone
    cls = type("Fixed", (FixedCategorical,), {"values": values})
    return cls(logits=logits)


# ------------------------------------------------------------------------------------------------
# Baselines on their own
# ------------------------------------------------------------------------------------------------


def moving_average_costs(step: int) -> Tensor:
    """Global costs ``[n=3, B=4]`` of call ``step``."""
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(3, 4, generator=g, dtype=torch.float64)


def optimal_constant_problem(step: int) -> tuple[Tensor, Tensor]:
    """Global samples ``[2 * 3]`` of one shared Categorical(K) and the per-category costs."""
    g = torch.Generator().manual_seed(200 + step)
    values = torch.randint(K, (WORLD * 3,), generator=g)
    costs = torch.randn(K, generator=g, dtype=torch.float64)
    return values, costs


def optimal_constant_step(baseline: gradest.OptimalConstant, logits: Tensor, values: Tensor,
                          costs: Tensor) -> Tensor:
    """One surrogate with samples ``values``; returns d(surrogate)/d(logits)."""
    est = gradest.ScoreFunction(baseline)
    s = gradest.expectation(lambda x: costs[x], fixed(logits, values), est, n=values.shape[0])
    (grad,) = torch.autograd.grad(s, logits)
    return grad


# ------------------------------------------------------------------------------------------------
# A small model with score-function nodes under DDP
# ------------------------------------------------------------------------------------------------


def ddp_data() -> Tensor:
    g = torch.Generator().manual_seed(300)
    return torch.randn(B, 4, generator=g, dtype=torch.float64)


def ddp_values(step: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(400 + step)
    return torch.randint(K, (N_SAMPLES, B), generator=g), torch.randint(K, (N_SAMPLES, B), generator=g)


class Model(nn.Module):
    """Two score-function nodes: one with a Critic, one with a MovingAverage (and a LeaveOneOut term).

    ``forward(x, values)`` returns the loss per element of the local batch summed / local batch size,
    so DDP's mean over ranks is the global batch mean.
    """

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Linear(4, 2 * K)
        self.decoder = nn.Linear(2 * K, 4)
        self.critic = gradest.ScoreFunction(gradest.Critic(nn.Linear(K, 1)))
        self.moving = gradest.ScoreFunction(gradest.MovingAverage(0.5))
        self.loo = gradest.ScoreFunction(gradest.LeaveOneOut())
        self.double()

    def forward(self, x: Tensor, values: tuple[Tensor, Tensor]) -> Tensor:
        logits = self.encoder(x)
        losses = []
        for est, lg, v in ((self.critic, logits[:, :K], values[0]), (self.moving, logits[:, K:], values[1]),
                           (self.loo, logits[:, K:], values[1])):
            with gradest.Graph() as g:
                z = g.sample("z", fixed(lg, v), est, n=N_SAMPLES)  # [n, b]
                recon = self.decoder(torch.cat([F.one_hot(z, K), F.one_hot(z, K)], -1).to(x))
                g.cost((recon - x).square().sum(-1))
            losses.append(g.loss())
        return torch.stack(losses).sum() / x.shape[0]


# ------------------------------------------------------------------------------------------------
# Finite sums
# ------------------------------------------------------------------------------------------------


def finite_sum() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(500)
    X = torch.randn(N_EXAMPLES, 3, generator=g, dtype=torch.float64)
    y = torch.rand(N_EXAMPLES, generator=g, dtype=torch.float64).round()
    return X, y


def finite_sum_batches() -> list[Tensor]:
    """Global batches of 4 indices; SVRG ranks take contiguous halves, SAGA ranks their own indices."""
    g = torch.Generator().manual_seed(600)
    return [torch.randperm(N_EXAMPLES, generator=g)[:4] for _ in range(STEPS)]


def logistic_losses(X: Tensor, y: Tensor, w: Tensor):  # noqa: ANN201
    return lambda i: F.binary_cross_entropy_with_logits(X[i] @ w, y[i], reduction="none")


def group_rewards() -> Tensor:
    g = torch.Generator().manual_seed(700)
    return torch.randn(WORLD * 3, 5, generator=g, dtype=torch.float64)


def saga_batches() -> list[Tensor]:
    """Global batches of 4 indices, 2 owned by each rank (index i belongs to rank i % 2)."""
    g = torch.Generator().manual_seed(800)
    even, odd = torch.arange(0, N_EXAMPLES, 2), torch.arange(1, N_EXAMPLES, 2)
    return [torch.cat([even[torch.randperm(len(even), generator=g)[:2]],
                       odd[torch.randperm(len(odd), generator=g)[:2]]]) for _ in range(STEPS)]


def saga_core() -> tuple[list[Tensor], list[Tensor], list[Tensor], Tensor]:
    """Arguments of one ``saga_step`` on a global batch of 4: parameters, deltas ``[4, *p.shape]``,
    table means, and the first-occurrence mask (position 3 repeats position 1, on the other rank)."""
    g = torch.Generator().manual_seed(900)
    params = [torch.randn(3, generator=g, dtype=torch.float64), torch.randn((), generator=g, dtype=torch.float64)]
    deltas = [torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)]
    means = [torch.randn(3, generator=g, dtype=torch.float64), torch.randn((), generator=g, dtype=torch.float64)]
    return params, deltas, means, torch.tensor([True, True, True, False])


# ------------------------------------------------------------------------------------------------
# Sequence losses: 3 prompts x 4 samples; rank r holds sequences 6r..6r+5, so group 1 spans both ranks
# ------------------------------------------------------------------------------------------------

SEQ_PROMPTS, SEQ_GROUP, SEQ_LEN, SEQ_VOCAB = 3, 4, 5, 4

SEQUENCE_CONFIGS = {
    "rloo, k1-reward": dict(kl_coef=0.1),
    "grpo, k3-loss, sequence norm": dict(advantage="grpo", kl="k3-loss", kl_coef=0.1, length_norm="sequence"),
    "mean, token norm": dict(advantage="mean", kl="k2-loss", kl_coef=0.1, length_norm="token"),
    "GSPO, token norm, truncated IS": dict(ratio="sequence", length_norm="token", old_logp=True, clip=0.05,
                                           behaviour_logp=True, tis_cap=1.5, kl_coef=0.1, kl="k3-reward"),
}


def sequence_problem() -> dict:
    """The global batch: a logit table (the parameters), tokens, mask, rewards and the other log-probs."""
    g = torch.Generator().manual_seed(1000)
    N = SEQ_PROMPTS * SEQ_GROUP
    tokens = torch.randint(SEQ_VOCAB, (N, SEQ_LEN), generator=g)
    lengths = torch.randint(1, SEQ_LEN + 1, (N,), generator=g)

    def logp_of(table: Tensor) -> Tensor:
        return table.log_softmax(-1).gather(-1, tokens[..., None])[..., 0]

    ref = logp_of(torch.randn(N, SEQ_LEN, SEQ_VOCAB, generator=g, dtype=torch.float64))
    return dict(theta=torch.randn(N, SEQ_LEN, SEQ_VOCAB, generator=g, dtype=torch.float64), tokens=tokens,
                mask=torch.arange(SEQ_LEN)[None] < lengths[:, None], ref_logp=ref, old_logp=ref + 0.05,
                behaviour_logp=ref + 0.1, rewards=torch.randint(3, (N,), generator=g).double())


def sequence_gradient(problem: dict, config: dict, rows: slice, process_group: object = None) -> Tensor:
    """The gradient, with respect to the whole table, of the loss on the sequences ``rows``."""
    theta = problem["theta"].clone().requires_grad_(True)
    logp = theta.log_softmax(-1).gather(-1, problem["tokens"][..., None])[..., 0][rows]
    extra = {k: (problem[k][rows] if v is True else v) for k, v in config.items()}
    from gradest.rl import sequence_policy_loss

    loss = sequence_policy_loss(logp=logp, rewards=problem["rewards"][rows], group_size=SEQ_GROUP,
                                mask=problem["mask"][rows], ref_logp=problem["ref_logp"][rows],
                                process_group=process_group, **extra)
    (grad,) = torch.autograd.grad(loss, theta)
    return grad
