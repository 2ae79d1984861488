"""The off-policy recurrences of gradest.rl (issue 14) at the task-2 sizes: Retrace and n-step returns.

Data (float32, one generator seeded per size), as benchmark task 2 (shared/BENCHMARKS-SPEC.md) plus what
the recurrences read: ``reward = randn(T, B)``, ``values_ext = randn(T+1, B)`` (``next_values =
values_ext[1:]``), ``q_values = randn(T, B)``, ``log_rhos = 0.5 · randn(T, B)``, ``done = rand(T, B) <
0.01`` (terminated); γ = 0.99, λ = 0.95 (Retrace), n = 5 and n = 20 (n-step); sizes (T, B) = (128, 8),
(1000, 64), (10000, 16).

Same protocol as ``rl_gae.py``: one process, interleaved call by call (the order reshuffled every k
rounds, rotated in between, after a warm-up round that also checks accuracy), one thread, medians,
the largest absolute error against a float64 loop (``correct``: at most 1e-5).

Implementations (``--impls``; gradest always runs):

    gradest          gradest.rl.retrace / gradest.rl.n_step_returns (validation on, the default)
    loop64           the float64 reference loop over time (the definition)
    rlax             RLax's algorithm in torch, float32: Retrace as rlax's
                     general_off_policy_returns_from_q_and_v (a reversed loop over time); n-step as
                     rlax's n_step_bootstrapped_returns (a loop over the n steps, vectorised over time)
    torchrl          n-step only: windows by ``unfold`` and a cumulative product of the discounts, the
                     approach of TorchRL's MultiStep (vectorised, T·B·n memory); TorchRL has no Retrace

Each port computes the same quantity with gradest's episode-end convention (terminated: no bootstrap;
the last step bootstraps), so the errors are comparable. Run (about 4 minutes on a 2-core CPU):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/rl_offline.py --json rl_offline.json
"""

from __future__ import annotations

import os

if __name__ == "__main__":  # one thread, set before numpy and torch load (not when imported by tests)
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

import gradest  # noqa: E402
from gradest.rl import n_step_returns, retrace  # noqa: E402

GAMMA, LAMBDA = 0.99, 0.95
SIZES = ((128, 8), (1000, 64), (10000, 16))
DONE_RATE = 0.01
TOLERANCE = 1e-5
SEED = 0
BUDGET_S = {128: 15.0, 1000: 25.0, 10000: 30.0}  # per size and task; rounds = what fits, in [MIN, MAX]
MIN_ROUNDS, MAX_ROUNDS = 5, 2001
TASKS = ("retrace", "n_step_5", "n_step_20")
IMPLS = {"retrace": ("gradest", "loop64", "rlax"), "n_step_5": ("gradest", "loop64", "rlax", "torchrl"),
         "n_step_20": ("gradest", "loop64", "rlax", "torchrl")}


class Data:
    def __init__(self, steps: int, batch: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.reward = torch.randn(steps, batch, generator=g)
        values_ext = torch.randn(steps + 1, batch, generator=g)
        self.next_value = values_ext[1:]
        self.q = torch.randn(steps, batch, generator=g)
        self.log_rhos = 0.5 * torch.randn(steps, batch, generator=g)
        self.done = torch.rand(steps, batch, generator=g) < DONE_RATE


# ---------------------------------------------------------------------------------------------------
# Retrace


def retrace_loop64(d: Data) -> Tensor:
    """G_t = r_t + γ(1 - done_t) nv_t + γ (1 - done_t) c_{t+1} (G_{t+1} - q_{t+1}), in float64."""
    r, nv, q, lr = (x.double() for x in (d.reward, d.next_value, d.q, d.log_rhos))
    keep = 1.0 - d.done.double()
    out = torch.empty_like(r)
    steps = r.shape[0]
    out[-1] = r[-1] + GAMMA * keep[-1] * nv[-1]
    for t in range(steps - 2, -1, -1):
        c = LAMBDA * lr[t + 1].exp().clamp(max=1.0)
        out[t] = r[t] + GAMMA * keep[t] * (nv[t] + c * (out[t + 1] - q[t + 1]))
    return out


def make_retrace(name: str, d: Data) -> Callable[[], Tensor]:
    if name == "gradest":
        return lambda: retrace(q_values=d.q, next_values=d.next_value, rewards=d.reward, log_rhos=d.log_rhos,
                               terminated=d.done, gamma=GAMMA, lambda_=LAMBDA)
    if name == "loop64":
        return lambda: retrace_loop64(d)
    # rlax: general_off_policy_returns_from_q_and_v with discount_t = γ(1 - done_t) (an input of RLax's
    # API, prepared untimed) and c_t = λ min(1, ρ_t), computed in the call as rlax.retrace does
    r, nv, q, log_rhos = d.reward, d.next_value, d.q, d.log_rhos
    discount = GAMMA * (1.0 - d.done.float())

    def call() -> Tensor:
        c = LAMBDA * log_rhos.exp().clamp(max=1.0)
        out = torch.empty_like(r)
        g = r[-1] + discount[-1] * nv[-1]
        out[-1] = g
        for t in range(r.shape[0] - 2, -1, -1):
            g = r[t] + discount[t] * (nv[t] - c[t + 1] * q[t + 1] + c[t + 1] * g)
            out[t] = g
        return out

    return call


# ---------------------------------------------------------------------------------------------------
# n-step returns


def n_step_loop64(d: Data, n: int) -> Tensor:
    """Up to n rewards from t, stopping after the episode's last step, then bootstrap unless terminated."""
    r, nv = d.reward.double(), d.next_value.double()
    keep = 1.0 - d.done.double()
    steps = r.shape[0]
    out = torch.empty_like(r)
    for t in range(steps):
        total = torch.zeros_like(r[0])
        alive = torch.ones_like(r[0])  # 1 while the window is still inside t's episode
        for j in range(n):
            k = t + j
            if k >= steps:
                break
            total += alive * GAMMA**j * r[k]
            last = (j == n - 1) or (k == steps - 1)
            # bootstrap where the window ends at step k: at the n-th step or the rollout's end (not terminated)
            boot = alive * keep[k] * (1.0 if last else 0.0)
            total += boot * GAMMA ** (j + 1) * nv[k]
            alive = alive * keep[k]
        out[t] = total
    return out


def make_n_step(name: str, d: Data, n: int) -> Callable[[], Tensor]:
    if name == "gradest":
        return lambda: n_step_returns(rewards=d.reward, next_values=d.next_value, terminated=d.done, gamma=GAMMA, n=n)
    if name == "loop64":
        return lambda: n_step_loop64(d, n)
    steps = d.reward.shape[0]
    r, nv = d.reward, d.next_value
    discount = GAMMA * (1.0 - d.done.float())  # the discounts are an input of RLax's API; prepared untimed
    if name == "rlax":
        # rlax.n_step_bootstrapped_returns (λ = 1): targets start as the value n - 1 steps ahead (the last
        # value past the end), then n passes backwards, each adding one reward: G <- r_t + γ_t G.

        def call() -> Tensor:
            zeros, ones = torch.zeros((n - 1, *r.shape[1:])), torch.ones((n - 1, *r.shape[1:]))
            r_pad, d_pad = torch.cat([r, zeros]), torch.cat([discount, ones])
            targets = torch.cat([nv[n - 1:], nv[-1:].expand(min(n - 1, steps), *nv.shape[1:])])
            for i in reversed(range(n)):
                targets = torch.addcmul(r_pad[i: i + steps], d_pad[i: i + steps], targets)
            return targets

        return call

    # torchrl-style: windows of n steps by unfold, the discount to each step by a cumulative product (the
    # approach of TorchRL's MultiStep), the bootstrap from the window's last value (the last one past the end)
    def call() -> Tensor:
        zeros, ones = torch.zeros((n - 1, *r.shape[1:])), torch.ones((n - 1, *r.shape[1:]))
        r_win = torch.cat([r, zeros]).unfold(0, n, 1)  # [T, B, n]
        d_win = torch.cat([discount, ones]).unfold(0, n, 1)
        weights = torch.cat([torch.ones_like(d_win[..., :1]), d_win[..., :-1].cumprod(-1)], -1)
        last = torch.cat([nv[n - 1:], nv[-1:].expand(min(n - 1, steps), *nv.shape[1:])])
        return (weights * r_win).sum(-1) + d_win.prod(-1) * last

    return call


def reference(task: str, d: Data) -> Tensor:
    return retrace_loop64(d) if task == "retrace" else n_step_loop64(d, int(task.split("_")[-1]))


def make(task: str, name: str, d: Data) -> Callable[[], Tensor]:
    return make_retrace(name, d) if task == "retrace" else make_n_step(name, d, int(task.split("_")[-1]))


# ---------------------------------------------------------------------------------------------------


def run_size(task: str, names: list[str], steps: int, batch: int, seed: int, rounds: int | None, budget_s: float,
             log: Callable[[str], None] = print) -> dict:
    d = Data(steps, batch, seed)
    ref = reference(task, d)
    calls = {name: make(task, name, d) for name in names}
    order = list(calls)
    errors, warm = {}, {}
    for name in order:  # warm-up round, also the accuracy check
        t0 = time.perf_counter()
        out = calls[name]()
        warm[name] = time.perf_counter() - t0
        errors[name] = float((out.double() - ref).abs().max())
    if rounds is None:
        rounds = int(min(MAX_ROUNDS, max(MIN_ROUNDS, budget_s / max(sum(warm.values()), 1e-9))))
    times: dict[str, list[float]] = {name: [] for name in order}
    rng = random.Random(seed)
    k = len(order)
    for i in range(rounds):
        if i % k == 0:
            rng.shuffle(order)
        shift = i % k
        for name in order[shift:] + order[:shift]:
            t0 = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - t0)
    median = {name: statistics.median(ts) for name, ts in times.items()}
    out = {"task": task, "T": steps, "B": batch, "rounds": rounds, "impls": {}}
    for name in names:
        out["impls"][name] = {"median_ms": median[name] * 1e3, "ratio_to_gradest": median[name] / median["gradest"],
                              "max_abs_error": errors[name], "correct": errors[name] <= TOLERANCE}
    g = out["impls"]["gradest"]
    ratios = ", ".join(f"{n} {out['impls'][n]['ratio_to_gradest']:.1f}x" for n in names if n != "gradest")
    log(f"{task} T={steps} B={batch}: {rounds} rounds; gradest {g['median_ms']:.4f} ms "
        f"(error {g['max_abs_error']:.1e}); {ratios}")
    return out


def table(results: list[dict]) -> str:
    lines = []
    for task in TASKS:
        rows = [r for r in results if r["task"] == task]
        if not rows:
            continue
        lines.append(f"| {task}: median ms (ratio to gradest) [max abs error] | "
                     + " | ".join(f"{r['T']}×{r['B']}" for r in rows) + " |")
        lines.append("|---" * (1 + len(rows)) + "|")
        names = list(dict.fromkeys(n for r in rows for n in r["impls"]))
        for name in names:
            cells = [name]
            for r in rows:
                x = r["impls"].get(name)
                if x is None:
                    cells.append("not timed")
                    continue
                flag = "" if x["correct"] else ", fails 1e-5"
                cells.append(f"{x['median_ms']:.4g} ({x['ratio_to_gradest']:.3g}×) [{x['max_abs_error']:.1e}{flag}]")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated, from " + ", ".join(TASKS))
    p.add_argument("--sizes", default=",".join(f"{t}x{b}" for t, b in SIZES), help="e.g. 128x8,1000x64")
    p.add_argument("--rounds", type=int, help="interleaved rounds per size (default: what fits the time budget)")
    p.add_argument("--budget-scale", type=float, default=1.0, help="scale the per-size time budget")
    p.add_argument("--skip-loop64-above", type=int, default=1000,
                   help="time the float64 loop only up to this T (it is still the accuracy reference)")
    p.add_argument("--json", metavar="PATH", help="write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        p.error(f"--tasks: unknown {unknown}; choose from {list(TASKS)}")
    sizes = [tuple(int(x) for x in s.lower().split("x")) for s in args.sizes.split(",")]
    print(f"off-policy recurrences: torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    results = []
    for task in tasks:
        for i, (t, b) in enumerate(sizes):
            names = [n for n in IMPLS[task] if not (n == "loop64" and t > args.skip_loop64_above)]
            budget = BUDGET_S.get(t, 20.0) * args.budget_scale
            results.append(run_size(task, names, t, b, SEED + i, args.rounds, budget))
    print()
    print(table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": " ".join([os.path.basename(sys.executable), *sys.argv]),
                       "versions": {"torch": torch.__version__, "numpy": np.__version__, "gradest": gradest.__version__,
                                    "python": platform.python_version()},
                       "gamma": GAMMA, "lambda": LAMBDA, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
