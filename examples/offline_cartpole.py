"""Offline RL on CartPole-v1: evaluate and improve a policy from a fixed logged data set, with gradest.rl.

1. A weak behaviour policy μ (a noisy linear controller) plays ``--episodes`` episodes: the logged data
   set, one episode per column of time-major [T, N] tensors (padding after each episode's end).
2. Off-policy evaluation of a better target policy π, without touching the environment: every estimator
   of ``gradest.rl.off_policy_value`` (is, pdis, wis, wpdis, dr, wdr) with its 95% interval, against
   π's true value measured online (for the comparison only). The doubly robust ones use a Q̂ fitted to
   the data by fitted Q evaluation (FQE).
3. Offline policy improvement: a linear policy π_θ, started at μ, follows the gradient of
   ``gradest.rl.off_policy_policy_loss`` (doubly robust, Q̂ refitted by FQE for the current π_θ) on 70%
   of the episodes; the other 30% score each checkpoint by the lower end of the 95% interval of its
   ``off_policy_value`` (dr), and the best checkpoint is kept (a high-confidence choice: an importance
   sampling objective can be pushed up without the policy getting better). Only then is it run online.

The values are discounted (γ = 0.98, about 50 steps ahead); the CartPole score is the undiscounted
episode length (500 at most). With the defaults (seed 1; 124 s on a 2-core CPU shared with other jobs):
μ scores 60.3 and J(μ) = 30.6; π's J = 42.62 ± 0.09 online (10 000 episodes). Every estimator's 95%
interval covers it, trajectory-wise ``is`` only with a wide one (36.8 ± 4.7: its weights are products
over whole episodes); ``dr`` 42.09 ± 0.40, ``wdr`` 42.38 ± 0.22. The chosen checkpoint (step 240)
scores 352 online, 5.8x the behaviour policy (the stated margin: at least 2x), and J = 49.0. Run:

    python examples/offline_cartpole.py
    python examples/offline_cartpole.py --episodes 100 --truth-episodes 100 --steps 20 --no-plot  # smoke run

Needs gymnasium (``pip install 'gradest[rl]'``); the progress bars use rich and the figure matplotlib
when they are installed.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from torch import nn

import gradest.rl as rl


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


# ------------------------------------------------------------------------------------------------
# Flags
p = argparse.ArgumentParser(description=__doc__, formatter_class=_Help)
p.add_argument("--episodes", type=int, default=1000, help="logged episodes of the behaviour policy")
p.add_argument("--gamma", type=float, default=0.98, help="discount of the value being estimated")
p.add_argument("--behaviour-gain", type=float, default=3.0, help="μ: sigmoid(gain · w·s), a noisy controller")
p.add_argument("--target-gain", type=float, default=5.0, help="π to evaluate: sigmoid(gain · w·s)")
p.add_argument("--truth-episodes", type=int, default=10000, help="online episodes measuring π's true value")
p.add_argument("--fqe-iterations", type=int, default=60, help="fitted-Q iterations for Q̂ of π")
p.add_argument("--steps", type=int, default=300, help="gradient steps of offline policy improvement")
p.add_argument("--lr", type=float, default=0.05, help="Adam's learning rate for the linear policy")
p.add_argument("--clip", type=float, default=2.0, help="per-step truncation of the importance ratios")
p.add_argument("--refit-every", type=int, default=50, help="steps between refits of Q̂ for the current policy")
p.add_argument("--check-every", type=int, default=10, help="steps between scores on the held-out episodes")
p.add_argument("--holdout", type=float, default=0.3, help="share of the episodes held out to choose a checkpoint")
p.add_argument("--eval-episodes", type=int, default=500, help="online episodes scoring the chosen policy")
p.add_argument("--margin", type=float, default=2.0, help="the learned policy must score this many times μ's")
p.add_argument("--seed", type=int, default=1, help="seeds the environments, the data split and the models")
p.add_argument("--plot", default="offline_cartpole.png", help="figure (PNG)")
p.add_argument("--no-plot", action="store_true", help="write no figure")
args = p.parse_args()

import gymnasium as gym  # noqa: E402  (after the flags, so --help works without it)

torch.manual_seed(args.seed)
torch.set_num_threads(1)
t_start = time.perf_counter()

# ------------------------------------------------------------------------------------------------
# Progress: a rich bar in a terminal, else a line now and then
try:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("{task.description:<28}"), BarColumn(), TextColumn("{task.fields[status]}"),
                        TimeElapsedColumn()) if Console().is_terminal else None
except ImportError:
    progress = None
if progress is not None:
    progress.start()


def bar(description: str, total: int):
    """An update function ``(advance, status)`` for one stage."""
    if progress is not None:
        task = progress.add_task(description, total=total, status="")
        return lambda advance=1, status="": progress.update(task, advance=advance, status=status)
    state = {"done": 0}

    def update(advance: int = 1, status: str = "") -> None:
        state["done"] += advance
        if state["done"] == total or state["done"] % max(1, total // 5) == 0:
            print(f"{description}: {state['done']}/{total} {status}", flush=True)

    return update


# ------------------------------------------------------------------------------------------------
# Linear policies: P(push right | s) = sigmoid(θ[:4]·s + θ[4])
W = torch.tensor([0.0, 0.0, 1.0, 0.3])  # pole angle and angular velocity: a controller that balances


def linear(gain: float) -> torch.Tensor:
    return torch.cat([gain * W, torch.zeros(1)])


def log_prob(theta: torch.Tensor, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    logit = obs @ theta[:4] + theta[4]
    return torch.where(actions == 1, nn.functional.logsigmoid(logit), nn.functional.logsigmoid(-logit))


def probs(theta: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
    right = torch.sigmoid(obs @ theta[:4] + theta[4])
    return torch.stack([1 - right, right], -1)


def play(theta: torch.Tensor, episodes: int, seed: int, description: str) -> dict[str, torch.Tensor]:
    """``episodes`` whole episodes of the policy θ, as time-major [T, N] tensors, one episode per column."""
    n_envs = 64
    envs = gym.make_vec("CartPole-v1", num_envs=n_envs, vectorization_mode="sync",
                        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP})
    obs, _ = envs.reset(seed=seed)
    g = torch.Generator().manual_seed(seed)
    running = [{"obs": [], "act": [], "rew": []} for _ in range(n_envs)]
    finished = []
    update = bar(description, episodes)
    while len(finished) < episodes:
        s = torch.as_tensor(obs)
        with torch.no_grad():
            action = (torch.rand(n_envs, generator=g) < probs(theta, s)[:, 1]).long()
        obs, reward, terminated, truncated, info = envs.step(action.numpy())
        for i in range(n_envs):
            ep = running[i]
            ep["obs"].append(s[i])
            ep["act"].append(int(action[i]))
            ep["rew"].append(float(reward[i]))
            if terminated[i] or truncated[i]:
                final = torch.as_tensor(info["final_obs"][i])
                finished.append((ep, bool(terminated[i]), final))
                running[i] = {"obs": [], "act": [], "rew": []}
                if len(finished) <= episodes:
                    update(status=f"mean length {np.mean([len(e['act']) for e, _, _ in finished]):.0f}")
    finished = finished[:episodes]
    steps = max(len(ep["act"]) for ep, _, _ in finished)
    data = {"obs": torch.zeros(steps, episodes, 4), "next_obs": torch.zeros(steps, episodes, 4),
            "actions": torch.zeros(steps, episodes, dtype=torch.long), "rewards": torch.zeros(steps, episodes),
            "terminated": torch.zeros(steps, episodes, dtype=torch.bool),
            "truncated": torch.zeros(steps, episodes, dtype=torch.bool),
            "live": torch.zeros(steps, episodes, dtype=torch.bool)}
    for b, (ep, term, final) in enumerate(finished):
        n = len(ep["act"])
        o = torch.stack(ep["obs"])
        data["obs"][:n, b], data["actions"][:n, b] = o, torch.tensor(ep["act"])
        data["next_obs"][: n - 1, b], data["next_obs"][n - 1, b] = o[1:], final
        data["rewards"][:n, b] = torch.tensor(ep["rew"])
        data["live"][:n, b] = True
        data["terminated" if term else "truncated"][n - 1, b] = True
    return data


def score(data: dict[str, torch.Tensor]) -> tuple[float, float, float]:
    """Mean undiscounted return (episode length), mean discounted return J and its standard error."""
    discount = args.gamma ** torch.arange(data["rewards"].shape[0]).unsqueeze(1)
    returns = (discount * data["rewards"]).sum(0)
    return float(data["rewards"].sum(0).mean()), float(returns.mean()), float(returns.std() / math.sqrt(len(returns)))


def columns(data: dict[str, torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v[:, index] for k, v in data.items()}


# ------------------------------------------------------------------------------------------------
# Fitted Q evaluation: Q̂(s, a) of a policy, by regression on r + γ (1 - terminated) Σ_a' π(a'|s') Q̂(s', a')
def fqe(q: nn.Module, data: dict[str, torch.Tensor], theta: torch.Tensor, iterations: int) -> None:
    live = data["live"]
    s, a, r = data["obs"][live], data["actions"][live], data["rewards"][live]
    keep = (~data["terminated"][live]).float()
    s_next = data["next_obs"][live]
    with torch.no_grad():
        p_next = probs(theta, s_next)
    opt = torch.optim.Adam(q.parameters(), lr=1e-3)
    for _ in range(iterations):
        with torch.no_grad():
            target = r + args.gamma * keep * (p_next * q(s_next)).sum(-1)
        for _ in range(20):
            idx = torch.randint(len(s), (1024,))
            loss = (q(s[idx]).gather(1, a[idx, None]).squeeze(1) - target[idx]).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()


def model_values(q: nn.Module, data: dict[str, torch.Tensor], theta: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """q_values = Q̂(s_t, a_t) (constants) and v_values = Σ_a π_θ(a|s_t) Q̂(s_t, a) (with θ's gradient)."""
    with torch.no_grad():
        table = q(data["obs"])
    return table.gather(-1, data["actions"][..., None]).squeeze(-1), (probs(theta, data["obs"]) * table).sum(-1)


def critic() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 2))


# ------------------------------------------------------------------------------------------------
# 1. The logged data set
mu, pi = linear(args.behaviour_gain), linear(args.target_gain)
data = play(mu, args.episodes, args.seed, "logging μ's episodes")
behaviour = log_prob(mu, data["obs"], data["actions"])
mu_length, mu_value, _ = score(data)
print(f"behaviour policy μ: {args.episodes} episodes, mean length {mu_length:.1f}, J(μ) = {mu_value:.2f}")

# ------------------------------------------------------------------------------------------------
# 2. Off-policy evaluation of π, against its value measured online
truth_length, truth, truth_se = score(play(pi, args.truth_episodes, args.seed + 1, "measuring π online"))
q_pi = critic()
update = bar("fitting Q̂ of π (FQE)", 1)
fqe(q_pi, data, pi, args.fqe_iterations)
update()
q_values, v_values = model_values(q_pi, data, pi)
log_rhos = log_prob(pi, data["obs"], data["actions"]) - behaviour
estimates = {}
for method in ("is", "pdis", "wis", "wpdis", "dr", "wdr"):
    model = dict(q_values=q_values, v_values=v_values) if method in ("dr", "wdr") else {}
    est = rl.off_policy_value(rewards=data["rewards"], log_rhos=log_rhos, terminated=data["terminated"],
                              truncated=data["truncated"], gamma=args.gamma, method=method, **model)
    g = torch.Generator().manual_seed(args.seed)
    estimates[method] = (est, est.confidence_interval(0.95), est.confidence_interval(0.95, method="bootstrap",
                                                                                      generator=g))
if progress is not None:
    progress.stop()
print(f"\ntarget policy π: J(π) = {truth:.2f} ± {truth_se:.2f} online ({args.truth_episodes} episodes, mean length "
      f"{truth_length:.1f}); off-policy estimates from μ's {args.episodes} episodes:")
print(f"  {'method':<7}{'estimate':>10}{'stderr':>9}   {'95% interval (t)':<20}{'bootstrap-t':<20}covers J(π)")
for method, (est, (lo, hi), (blo, bhi)) in estimates.items():
    covers = "yes" if lo <= truth <= hi else "no"
    print(f"  {method:<7}{float(est.value):>10.2f}{float(est.stderr):>9.2f}   [{float(lo):6.2f}, {float(hi):6.2f}]"
          f"    [{float(blo):6.2f}, {float(bhi):6.2f}]    {covers}")
if progress is not None:
    progress.start()

# ------------------------------------------------------------------------------------------------
# 3. Offline policy improvement: off_policy_policy_loss on 70% of the episodes, checkpoints scored by
#    the lower end of the dr interval on the other 30%
order = torch.randperm(args.episodes, generator=torch.Generator().manual_seed(args.seed))
held = int(args.holdout * args.episodes)
train, valid = columns(data, order[held:]), columns(data, order[:held])
train_behaviour = log_prob(mu, train["obs"], train["actions"])
valid_behaviour = log_prob(mu, valid["obs"], valid["actions"])
theta = mu.clone().requires_grad_()
optimizer = torch.optim.Adam([theta], lr=args.lr)
q_theta = critic()
checks: list[tuple[int, float, float]] = []  # (step, held-out dr estimate, lower end of its 95% interval)
best = (-math.inf, 0, mu.clone())
update = bar("offline policy improvement", args.steps)
for step in range(args.steps + 1):
    if step % args.refit_every == 0:  # Q̂ of the current policy, warm-started
        fqe(q_theta, train, theta.detach(), args.fqe_iterations // 3 if step else args.fqe_iterations)
    if step % args.check_every == 0:
        with torch.no_grad():
            qv, vv = model_values(q_theta, valid, theta)
            est = rl.off_policy_value(rewards=valid["rewards"], terminated=valid["terminated"],
                                      truncated=valid["truncated"], gamma=args.gamma, method="dr",
                                      log_rhos=log_prob(theta, valid["obs"], valid["actions"]) - valid_behaviour,
                                      q_values=qv, v_values=vv)
            low = float(est.confidence_interval(0.95)[0])
        checks.append((step, float(est.value), low))
        if low > best[0]:
            best = (low, step, theta.detach().clone())
    if step == args.steps:
        break
    log_probs = torch.where(train["live"], log_prob(theta, train["obs"], train["actions"]), 0.0)
    qv, vv = model_values(q_theta, train, theta)
    loss = rl.off_policy_policy_loss(log_probs=log_probs, behaviour_log_probs=train_behaviour,
                                     rewards=train["rewards"], terminated=train["terminated"],
                                     truncated=train["truncated"], gamma=args.gamma, method="dr", q_values=qv,
                                     v_values=vv, clip=args.clip)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    update(status=f"held-out dr {checks[-1][1]:6.2f} (lower {checks[-1][2]:6.2f}), best at step {best[1]}")

learned_length, learned_value, learned_se = score(play(best[2], args.eval_episodes, args.seed + 2,
                                                       "scoring the learned policy"))
if progress is not None:
    progress.stop()
elapsed = time.perf_counter() - t_start
ratio = learned_length / mu_length
print(f"\nlearned policy (checkpoint of step {best[1]}, held-out dr lower bound {best[0]:.2f}): mean length "
      f"{learned_length:.1f} online against μ's {mu_length:.1f} ({ratio:.1f}x), J = {learned_value:.2f} ± "
      f"{learned_se:.2f} against J(μ) = {mu_value:.2f}; {elapsed:.0f} s")
verdict = "beats" if ratio >= args.margin else "does NOT beat"
print(f"the learned policy {verdict} the behaviour policy by the stated margin ({args.margin:g}x its score)")

# ------------------------------------------------------------------------------------------------
# Figure: the estimates with their intervals against the truth; the held-out score while learning
if not args.no_plot:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no figure")
    else:
        fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
        names = list(estimates)
        x = np.arange(len(names))
        for offset, idx, label in ((-0.12, 1, "95% interval (t)"), (0.12, 2, "95% interval (bootstrap-t)")):
            value = np.array([float(estimates[n][0].value) for n in names])
            lo = np.array([float(estimates[n][idx][0]) for n in names])
            hi = np.array([float(estimates[n][idx][1]) for n in names])
            ax.errorbar(x + offset, value, yerr=[value - lo, hi - value], fmt="o", capsize=4, label=label)
        ax.axhspan(truth - 1.96 * truth_se, truth + 1.96 * truth_se, color="k", alpha=0.15)
        ax.axhline(truth, color="k", lw=1, label=f"J(π) online = {truth:.1f}")
        ax.axhline(mu_value, color="tab:red", lw=1, ls=":", label=f"J(μ) = {mu_value:.1f}")
        ax.set_xticks(x, names)
        ax.set_ylabel(f"discounted value (γ = {args.gamma:g})")
        ax.set_title(f"off-policy evaluation of π from {args.episodes} episodes of μ")
        ax.legend(loc="lower right", fontsize=8)
        steps, values, lows = zip(*checks)
        bx.plot(steps, values, label="held-out dr estimate of J(π_θ)")
        bx.plot(steps, lows, label="its 95% lower bound")
        bx.axvline(best[1], color="tab:green", ls="--", lw=1, label=f"chosen step {best[1]}")
        bx.axhline(learned_value, color="tab:green", lw=1, label=f"chosen π_θ online: J = {learned_value:.1f}")
        bx.axhline(mu_value, color="tab:red", lw=1, ls=":", label=f"μ: J = {mu_value:.1f}")
        bx.set_xlabel("gradient step (off_policy_policy_loss, dr)")
        bx.set_ylabel(f"discounted value (γ = {args.gamma:g})")
        bx.set_title(f"offline improvement: length {mu_length:.0f} → {learned_length:.0f} online")
        bx.legend(loc="upper left", fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"figure: {args.plot}")
