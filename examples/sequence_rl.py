"""KL-regularised RL fine-tuning of a small language model, with the true KL computed exactly.

The language: a prompt x in {1, 2, 3} asks for an answer of at most 6 tokens from {a, b, c, END} that
contains exactly x tokens ``a`` and ends with END (the reward is 1 when it does, else 0: verifiable).
A GRU language model, pre-trained from scratch by maximum likelihood on samples of a small stochastic
grammar (a few seconds), is the reference policy π_ref. It is then fine-tuned with
``gradest.rl.sequence_policy_loss`` (RLOO and GRPO advantages, G samples per prompt) to maximise

    J_β(θ) = E_x [ E_{y∼π_θ} R(x, y) − β KL(π_θ(·|x) ‖ π_ref(·|x)) ],

once for every KL configuration: no KL, the KL in the reward (k1, unbiased for this sequence KL; k3,
"low-var"), and the KL in the loss (k1, k2, k3: each the gradient of another quantity, see the
docstring's table). There are only 1 + 3 + ... + 3^5 + 3^6 = 1093 answers per prompt, so every few steps
the script computes, by enumerating all of them, the policy's exact expected reward and its exact KL to
π_ref, and the optimum of J_β itself: π*(y|x) ∝ π_ref(y|x) exp(R(x, y)/β), whose reward and KL are
the dashed lines of the figure. The configuration whose gradient is that of J_β (RLOO with k1 in the
reward) should head for the optimum's KL; the others keep another quantity small, or nothing.

Run (about a minute on a laptop CPU):

    python examples/sequence_rl.py
    python examples/sequence_rl.py --steps 5 --pretrain-steps 20 --no-plot   # a smoke run

The progress bar uses rich and the figure matplotlib when they are installed.
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch
from torch import Tensor, nn

import gradest.rl as rl

# ------------------------------------------------------------------------------------------------
# Flags
p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
p.add_argument("--steps", type=int, default=400, help="fine-tuning steps per configuration")
p.add_argument("--beta", type=float, default=0.3, help="KL coefficient β")
p.add_argument("--group", type=int, default=8, help="samples per prompt G")
p.add_argument("--prompts", type=int, default=8, help="prompts per step (drawn uniformly, with repeats)")
p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate of the fine-tuning")
p.add_argument("--advantages", default="rloo,grpo", help="comma-separated advantage estimators")
p.add_argument("--kls", default="none,k1-reward,k3-reward,k1-loss,k2-loss,k3-loss",
               help="comma-separated KL configurations ('none': β = 0)")
p.add_argument("--pretrain-steps", type=int, default=400, help="maximum-likelihood steps of the reference model")
p.add_argument("--eval-every", type=int, default=10, help="steps between exact evaluations")
p.add_argument("--seed", type=int, default=0, help="seeds the language, the models and the samples")
p.add_argument("--plot", default="sequence_rl.png", help="figure (PNG)")
p.add_argument("--no-plot", action="store_true", help="write no figure")
args = p.parse_args()

torch.manual_seed(args.seed)
torch.set_num_threads(1)
A, B, C, END = 0, 1, 2, 3  # tokens; the model's input at step 0 is BOS = 4
VOCAB, LENGTH, PROMPTS = 4, 6, (1, 2, 3)

# ------------------------------------------------------------------------------------------------
# The language: every answer, its mask and reward


def all_answers() -> tuple[Tensor, Tensor]:
    """Every answer of at most LENGTH tokens: ``[S, LENGTH]`` tokens (END after the end) and the mask."""
    rows = []
    for n in range(LENGTH):  # n content tokens, then END
        rows += [list(c) + [END] * (LENGTH - n) for c in itertools.product((A, B, C), repeat=n)]
    rows += [list(c) for c in itertools.product((A, B, C), repeat=LENGTH)]  # cut at LENGTH, no END
    tokens = torch.tensor(rows)
    ended = (tokens == END).cumsum(1)
    mask = (ended == 0) | ((ended == 1) & (tokens == END))  # the content tokens and the first END
    return tokens, mask


def reward(x: Tensor, tokens: Tensor, mask: Tensor) -> Tensor:
    """1 when the answer holds exactly x tokens ``a`` and ends with END."""
    count = ((tokens == A) & mask).sum(1)
    ended = ((tokens == END) & mask).any(1)
    return ((count == x) & ended).float()


ANSWERS, ANSWER_MASK = all_answers()  # [1093, 6]

# ------------------------------------------------------------------------------------------------
# The model: a GRU over the previous token, conditioned on the prompt


class LM(nn.Module):
    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.token = nn.Embedding(VOCAB + 1, hidden)
        self.prompt = nn.Embedding(max(PROMPTS) + 1, hidden)
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.out = nn.Linear(hidden, VOCAB)

    def logits(self, x: Tensor, tokens: Tensor) -> Tensor:
        """``[B, LENGTH, VOCAB]`` next-token logits of the answers ``tokens`` to prompts ``x`` (teacher forcing)."""
        inputs = torch.cat([torch.full_like(tokens[:, :1], VOCAB), tokens[:, :-1]], 1)
        h0 = self.prompt(x)[None]  # [1, B, H]
        out, _ = self.gru(self.token(inputs), h0)
        return self.out(out)

    def logp(self, x: Tensor, tokens: Tensor) -> Tensor:
        """``[B, LENGTH]`` log π(y_t | x, y_<t)."""
        return self.logits(x, tokens).log_softmax(-1).gather(-1, tokens[..., None])[..., 0]

    @torch.no_grad()
    def sample(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Answers to prompts ``x`` ``[B]``: tokens ``[B, LENGTH]`` and their mask."""
        h = self.prompt(x)[None]
        prev = torch.full_like(x, VOCAB)
        tokens = []
        for _ in range(LENGTH):
            out, h = self.gru(self.token(prev)[:, None], h)
            prev = torch.distributions.Categorical(logits=self.out(out[:, 0])).sample()
            tokens.append(prev)
        tokens_t = torch.stack(tokens, 1)
        ended = (tokens_t == END).cumsum(1)
        mask = (ended == 0) | ((ended == 1) & (tokens_t == END))
        return tokens_t.masked_fill(~mask, END), mask


# ------------------------------------------------------------------------------------------------
# 1. Pre-train the reference model on a small stochastic grammar


def grammar(n: int, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Prompts and answers of a Markov chain (a tends to repeat, b and c to alternate) that stops with
    probability 1/4 after each token; the prompt does not matter to it."""
    trans = torch.tensor([[0.5, 0.25, 0.25], [0.25, 0.15, 0.6], [0.25, 0.6, 0.15]])
    x = torch.randint(len(PROMPTS), (n,), generator=g) + 1
    tokens = torch.full((n, LENGTH), END)
    prev = torch.multinomial(torch.tensor([0.3, 0.35, 0.35]), n, replacement=True, generator=g)
    alive = torch.ones(n, dtype=torch.bool)
    for t in range(LENGTH):
        tokens[:, t] = torch.where(alive, prev, END)
        alive &= torch.rand(n, generator=g) >= 0.25  # a stopped answer has END next (the fill)
        prev = torch.multinomial(trans[prev], 1, generator=g)[:, 0]
    ended = (tokens == END).cumsum(1)
    return x, tokens, (ended == 0) | ((ended == 1) & (tokens == END))


def pretrain(steps: int) -> LM:
    g = torch.Generator().manual_seed(args.seed)
    x, tokens, mask = grammar(20_000, g)
    model = LM()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        idx = torch.randint(x.shape[0], (256,), generator=g)
        nll = -(model.logp(x[idx], tokens[idx]) * mask[idx]).sum() / 256
        opt.zero_grad()
        nll.backward()
        opt.step()
    return model


t0 = time.perf_counter()
ref_model = pretrain(args.pretrain_steps).requires_grad_(False)
print(f"reference model pre-trained in {time.perf_counter() - t0:.1f} s")

# ------------------------------------------------------------------------------------------------
# 2. Exact evaluation: every answer to every prompt


@torch.no_grad()
def answer_logp(model: LM) -> Tensor:
    """``[len(PROMPTS), S]`` log π(y | x) of every answer."""
    x = torch.tensor(PROMPTS).repeat_interleave(ANSWERS.shape[0])
    tokens = ANSWERS.repeat(len(PROMPTS), 1)
    mask = ANSWER_MASK.repeat(len(PROMPTS), 1)
    return (model.logp(x, tokens) * mask).sum(1).reshape(len(PROMPTS), -1)


REWARDS = torch.stack([reward(torch.tensor(x), ANSWERS, ANSWER_MASK) for x in PROMPTS])  # [P, S]
REF_LOGP = answer_logp(ref_model)


def exact(model: LM) -> tuple[float, float]:
    """The exact expected reward and KL(π_θ ‖ π_ref), averaged over the prompts."""
    lp = answer_logp(model)
    probs = lp.exp()
    return float((probs * REWARDS).sum(1).mean()), float((probs * (lp - REF_LOGP)).sum(1).mean())


def optimum(beta: float) -> tuple[float, float]:
    """Reward and KL of π* ∝ π_ref exp(R/β), the maximiser of J_β."""
    tilted = (REF_LOGP + REWARDS / beta).log_softmax(1)
    probs = tilted.exp()
    return float((probs * REWARDS).sum(1).mean()), float((probs * (tilted - REF_LOGP)).sum(1).mean())


ref_reward, _ = exact(ref_model)
best_reward, best_kl = optimum(args.beta)
print(f"reference: expected reward {ref_reward:.3f}; optimum of J_β (β = {args.beta}): reward {best_reward:.3f}, "
      f"KL {best_kl:.3f} nats")

# ------------------------------------------------------------------------------------------------
# 3. Fine-tune once per (advantage, KL configuration)
try:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[status]}"),
                        TimeElapsedColumn()) if Console().is_terminal else None
except ImportError:
    progress = None

runs = [(a, k) for a in args.advantages.split(",") for k in args.kls.split(",")]
curves: dict[tuple[str, str], list[tuple[int, float, float]]] = {}
if progress is not None:
    progress.start()
    task = progress.add_task("fine-tuning", total=len(runs) * args.steps, status="")
for advantage, kl in runs:
    torch.manual_seed(args.seed + 1)
    policy = LM()
    policy.load_state_dict(ref_model.state_dict())
    policy.requires_grad_(True)
    opt = torch.optim.Adam(policy.parameters(), lr=args.lr)
    curve = [(0, *exact(policy))]
    for step in range(1, args.steps + 1):
        x = (torch.randint(len(PROMPTS), (args.prompts,)) + 1).repeat_interleave(args.group)  # groups contiguous
        tokens, mask = policy.sample(x)
        with torch.no_grad():
            ref_logp = ref_model.logp(x, tokens)
        loss = rl.sequence_policy_loss(
            logp=policy.logp(x, tokens), mask=mask, rewards=reward(x, tokens, mask), group_size=args.group,
            advantage=advantage, ref_logp=ref_logp, kl_coef=0.0 if kl == "none" else args.beta,
            kl="k1-reward" if kl == "none" else kl,
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % args.eval_every == 0 or step == args.steps:
            curve.append((step, *exact(policy)))
        status = f"{advantage:>4} {kl:<9} reward {curve[-1][1]:.3f} KL {curve[-1][2]:.3f}"
        if progress is not None:
            progress.update(task, advance=1, status=status)
        elif step == args.steps:
            print(status, flush=True)
    curves[(advantage, kl)] = curve
if progress is not None:
    progress.stop()

print(f"\nafter {args.steps} steps (exact; the optimum of J_β has reward {best_reward:.3f}, KL {best_kl:.3f}):")
print(f"{'advantage':<10}{'KL configuration':<18}{'reward':>8}{'KL(π‖π_ref)':>14}{'J_β':>9}")
for (advantage, kl), curve in curves.items():
    _, r, k = curve[-1]
    print(f"{advantage:<10}{kl:<18}{r:>8.3f}{k:>14.3f}{r - args.beta * k:>9.3f}")
print(f"{'optimum':<28}{best_reward:>8.3f}{best_kl:>14.3f}{best_reward - args.beta * best_kl:>9.3f}")

# ------------------------------------------------------------------------------------------------
# 4. Figure: reward and true KL per KL configuration, one row per advantage
if not args.no_plot:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no figure")
    else:
        advantages = list(dict.fromkeys(a for a, _ in curves))
        fig, axes = plt.subplots(len(advantages), 2, figsize=(10, 3.2 * len(advantages)), squeeze=False)
        for row, advantage in enumerate(advantages):
            for (a, kl), curve in curves.items():
                if a != advantage:
                    continue
                steps, rewards, kls = zip(*curve)
                style = {"lw": 2.2} if kl == "k1-reward" else {"lw": 1.2}
                axes[row, 0].plot(steps, rewards, label=kl, **style)
                axes[row, 1].plot(steps, kls, label=kl, **style)
            axes[row, 0].axhline(best_reward, color="k", ls="--", lw=1, label="optimum of J_β")
            axes[row, 1].axhline(best_kl, color="k", ls="--", lw=1, label="optimum of J_β")
            axes[row, 0].set_ylabel(f"{advantage}: expected reward")
            axes[row, 1].set_ylabel(f"{advantage}: KL(π_θ ‖ π_ref), nats")
        for ax in axes[-1]:
            ax.set_xlabel("step")
        axes[0, 1].legend(fontsize=8, loc="center right", framealpha=0.9)
        fig.suptitle(f"sequence_policy_loss on a 1093-answer language, β = {args.beta} (exact reward and KL)")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"figure: {args.plot}")
