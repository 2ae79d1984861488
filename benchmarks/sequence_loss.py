"""Benchmark task 6 (shared/BENCHMARKS-SPEC.md): the sequence policy loss against hand-written PyTorch.

Data (float32, ``torch.Generator().manual_seed(0)``): P = 64 prompts × G = 8 samples, N = 512 sequences
of L = 256 positions; per-token log-probabilities ``logp = −3·rand`` (a leaf with a gradient; the
vocabulary's logits are not part of the task), ``ref_logp``, ``old_logp`` and ``behaviour_logp`` near
it, a prefix mask with lengths uniform in [32, 256], binary rewards.

Each configuration is a recipe in use (RLOO, REINFORCE with the KL in the reward, Dr. GRPO, GRPO with
each KL in the loss, DAPO, GSPO, truncated importance sampling per token and per sequence); together
they take every value of every option of ``sequence_policy_loss``. For each, the minimal hand-written
loss with the same value and gradient is written out below (checked against gradest before timing).
A timed call is ``logp.grad = None``, the loss, and ``backward()``. Three implementations per
configuration — gradest with validation on (its default: one sync for the finiteness and mask checks,
one for the loss), gradest with ``gradest.set_validation(False)``, and the hand-written loss — run in
one process, interleaved: every round times each (configuration, implementation) pair once, in an order
reshuffled every round (seeded), after a warm-up round; one thread (``OMP_NUM_THREADS=1`` before torch
loads, and ``torch.set_num_threads(1)``). Reported: median time per call, the ratios to the
hand-written loss, and the minor page faults per call (on the CPU, each large temporary that glibc's
malloc has to map afresh costs a page fault per 4 KiB; the number of live ``[N, L]`` temporaries, not
only the arithmetic, sets the time).

Run (about a minute on a 2-core CPU):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sequence_loss.py --json sequence_loss.json
"""

from __future__ import annotations

import os

if __name__ == "__main__":  # one thread, set before torch loads (not when imported by tests)
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import torch  # noqa: E402
from torch import Tensor  # noqa: E402

try:  # page-fault counts (Unix)
    import resource  # noqa: E402
except ImportError:  # pragma: no cover
    resource = None  # type: ignore[assignment]

import gradest  # noqa: E402
from gradest.rl import sequence_policy_loss  # noqa: E402

PROMPTS, GROUP, LENGTH = 64, 8, 256
MIN_LENGTH = 32
BETA = 0.04
EPS = 1e-4  # GRPO's std epsilon, as gradest.rl.sequence.STD_EPS


class Data:
    def __init__(self, prompts: int = PROMPTS, group: int = GROUP, length: int = LENGTH, seed: int = 0,
                 min_length: int = MIN_LENGTH) -> None:
        g = torch.Generator().manual_seed(seed)
        self.G = group
        N = prompts * group
        self.logp = (-3 * torch.rand(N, length, generator=g)).requires_grad_(True)
        base = self.logp.detach()
        self.ref_logp = (base + 0.1 * torch.randn(N, length, generator=g)).clamp(max=0)
        self.old_logp = (base + 0.05 * torch.randn(N, length, generator=g)).clamp(max=0)
        self.behaviour_logp = (self.old_logp + 0.05 * torch.randn(N, length, generator=g)).clamp(max=0)
        lengths = torch.randint(min(min_length, length), length + 1, (N,), generator=g)
        self.mask = torch.arange(length)[None, :] < lengths[:, None]
        self.rewards = torch.randint(2, (N,), generator=g).float()


# --- the configurations: gradest's arguments, and the same loss written by hand ------------------------

def _rloo(r: Tensor, G: int) -> Tensor:
    g = r.view(-1, G)
    return (g - (g.sum(1, keepdim=True) - g) / (G - 1)).view(-1)


def _grpo(r: Tensor, G: int) -> Tensor:
    g = r.view(-1, G)
    return ((g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True) + EPS)).view(-1)


def _mean(r: Tensor, G: int) -> Tensor:
    g = r.view(-1, G)
    return (g - g.mean(1, keepdim=True)).view(-1)


def _ppo(ratio: Tensor, adv: Tensor, low: float, high: float) -> Tensor:
    return torch.min(ratio * adv, ratio.clamp(1 - low, 1 + high) * adv)


def hand_rloo(d: Data) -> Tensor:
    m = d.mask.float()
    adv = _rloo(d.rewards, d.G)
    ratio = torch.exp(d.logp - d.logp.detach())
    return -(ratio * adv[:, None] * m).sum() / m.shape[0]


def _kl_to_go_rloo(d: Data, m: Tensor, kl: Tensor) -> Tensor:
    """REINFORCE with the KL in the reward: per-token advantages with the KL-to-go, rloo baseline."""
    with torch.no_grad():
        totals = d.rewards - BETA * kl.sum(1)
        g = totals.view(-1, d.G)
        baseline = ((g.sum(1, keepdim=True) - g) / (d.G - 1)).view(-1)
        to_go = kl.flip(1).cumsum(1).flip(1)
        adv = (d.rewards - baseline)[:, None] - BETA * to_go
    ratio = torch.exp(d.logp - d.logp.detach())
    return -(ratio * adv * m).sum() / m.shape[0]


def hand_rloo_k1_reward(d: Data) -> Tensor:
    m = d.mask.float()
    return _kl_to_go_rloo(d, m, (d.logp.detach() - d.ref_logp) * m)


def hand_rloo_k3_reward(d: Data) -> Tensor:
    m = d.mask.float()
    delta = d.logp.detach() - d.ref_logp
    return _kl_to_go_rloo(d, m, (torch.exp(-delta) - 1 + delta) * m)


def hand_dr_grpo(d: Data) -> Tensor:
    m = d.mask.float()
    adv = _mean(d.rewards, d.G)
    ratio = torch.exp(d.logp - d.old_logp)
    return -(_ppo(ratio, adv[:, None], 0.2, 0.2) * m).sum() / m.shape[0]


def _grpo_kl_loss(d: Data, kl: Callable[[Tensor], Tensor]) -> Tensor:
    """GRPO as DeepSeekMath writes it: clipped token ratios, the KL in the loss, 1/|y| per sequence."""
    m = d.mask.float()
    adv = _grpo(d.rewards, d.G)
    ratio = torch.exp(d.logp - d.old_logp)
    per_token = -_ppo(ratio, adv[:, None], 0.2, 0.2) + BETA * kl(d.logp - d.ref_logp)
    return ((per_token * m).sum(1) / m.sum(1)).mean()


def hand_grpo_k3_loss(d: Data) -> Tensor:
    return _grpo_kl_loss(d, lambda delta: torch.exp(-delta) - 1 + delta)


def hand_grpo_k2_loss(d: Data) -> Tensor:
    return _grpo_kl_loss(d, lambda delta: 0.5 * delta.square())


def hand_grpo_k1_loss(d: Data) -> Tensor:
    return _grpo_kl_loss(d, lambda delta: delta)


def hand_dapo(d: Data) -> Tensor:
    m = d.mask.float()
    adv = _grpo(d.rewards, d.G)
    ratio = torch.exp(d.logp - d.old_logp)
    return -(_ppo(ratio, adv[:, None], 0.2, 0.28) * m).sum() / m.sum()


def hand_gspo(d: Data) -> Tensor:
    m = d.mask.float()
    adv = _grpo(d.rewards, d.G)
    ratio = torch.exp(((d.logp - d.old_logp) * m).sum(1) / m.sum(1))
    return -_ppo(ratio, adv, 3e-4, 4e-4).mean()


def hand_tis_token(d: Data) -> Tensor:
    m = d.mask.float()
    adv = _grpo(d.rewards, d.G)
    weights = torch.exp(d.old_logp - d.behaviour_logp).clamp(max=2.0)
    ratio = torch.exp(d.logp - d.old_logp)
    return -(weights * _ppo(ratio, adv[:, None], 0.2, 0.2) * m).sum() / m.sum()


def hand_tis_sequence(d: Data) -> Tensor:
    m = d.mask.float()
    adv = _rloo(d.rewards, d.G)
    with torch.no_grad():
        weights = torch.exp(((d.logp - d.behaviour_logp) * m).sum(1)).clamp(max=2.0)
    log_s = (d.logp * m).sum(1)
    return -(weights * torch.exp(log_s - log_s.detach()) * adv).sum() / m.shape[0]


OLD, BEHAVIOUR = "old_logp", "behaviour_logp"
CONFIGS: dict[str, tuple[dict, Callable[[Data], Tensor]]] = {
    "RLOO (no KL)": (dict(), hand_rloo),
    "RLOO, k1-reward (KL-to-go)": (dict(kl_coef=BETA, kl="k1-reward"), hand_rloo_k1_reward),
    "RLOO, k3-reward": (dict(kl_coef=BETA, kl="k3-reward"), hand_rloo_k3_reward),
    "Dr. GRPO (mean, clip 0.2)": (dict(advantage="mean", old_logp=OLD, clip=0.2), hand_dr_grpo),
    "GRPO, k3-loss, 1/|y|": (dict(advantage="grpo", kl_coef=BETA, kl="k3-loss", old_logp=OLD, clip=0.2,
                                   length_norm="sequence"), hand_grpo_k3_loss),
    "GRPO, k2-loss, 1/|y|": (dict(advantage="grpo", kl_coef=BETA, kl="k2-loss", old_logp=OLD, clip=0.2,
                                   length_norm="sequence"), hand_grpo_k2_loss),
    "GRPO, k1-loss, 1/|y|": (dict(advantage="grpo", kl_coef=BETA, kl="k1-loss", old_logp=OLD, clip=0.2,
                                   length_norm="sequence"), hand_grpo_k1_loss),
    "DAPO (token mean, clip (0.2, 0.28))": (dict(advantage="grpo", old_logp=OLD, clip=(0.2, 0.28),
                                                  length_norm="token"), hand_dapo),
    "GSPO (sequence ratio, 1/|y|)": (dict(advantage="grpo", old_logp=OLD, clip=(3e-4, 4e-4), ratio="sequence",
                                          length_norm="sequence"), hand_gspo),
    "DAPO + token TIS (cap 2)": (dict(advantage="grpo", old_logp=OLD, clip=0.2, length_norm="token",
                                      behaviour_logp=BEHAVIOUR, tis_cap=2.0), hand_tis_token),
    "RLOO + sequence TIS (cap 2)": (dict(ratio="sequence", behaviour_logp=BEHAVIOUR, tis_cap=2.0),
                                    hand_tis_sequence),
}


def make_gradest(d: Data, name: str) -> Callable[[], Tensor]:
    kwargs = {k: (getattr(d, v) if v in (OLD, BEHAVIOUR) else v) for k, v in CONFIGS[name][0].items()}
    if kwargs.get("kl_coef", 0) > 0:
        kwargs["ref_logp"] = d.ref_logp
    return lambda: sequence_policy_loss(logp=d.logp, rewards=d.rewards, mask=d.mask, group_size=d.G, **kwargs)


def check(d: Data, name: str) -> tuple[float, float]:
    """Largest differences of the loss and of the gradient, gradest against the hand-written loss."""
    out = []
    for fn in (make_gradest(d, name), lambda: CONFIGS[name][1](d)):
        d.logp.grad = None
        loss = fn()
        loss.backward()
        out.append((loss.detach().clone(), d.logp.grad.clone()))
    d.logp.grad = None
    (a, ga), (b, gb) = out
    return float((a - b).abs()), float((ga - gb).abs().max())


def _faults() -> int:
    """Minor page faults of this process so far (0 where ``resource`` is missing)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource is not None else 0


def timed(fn: Callable[[], Tensor], d: Data, validate: bool) -> tuple[float, int]:
    """Seconds and minor page faults of one call (zero_grad, loss, backward)."""
    gradest.set_validation(validate)
    try:
        faults = _faults()
        start = time.perf_counter()
        d.logp.grad = None
        fn().backward()
        return time.perf_counter() - start, _faults() - faults
    finally:
        gradest.set_validation(True)


IMPLS = ("gradest", "gradest (validation off)", "hand-written")


def run(d: Data, names: list[str], rounds: int, seed: int = 0, log: Callable[[str], None] = print) -> dict:
    calls = {}
    for name in names:
        calls[(name, "gradest")] = (make_gradest(d, name), True)
        calls[(name, "gradest (validation off)")] = (make_gradest(d, name), False)
        hand = CONFIGS[name][1]
        calls[(name, "hand-written")] = ((lambda hand=hand: hand(d)), True)
    times: dict[tuple[str, str], list[float]] = {key: [] for key in calls}
    faults: dict[tuple[str, str], list[int]] = {key: [] for key in calls}
    order = list(calls)
    rng = random.Random(seed)
    for key in order:  # warm-up round
        timed(calls[key][0], d, calls[key][1])
    for r in range(rounds):
        rng.shuffle(order)
        for key in order:
            seconds, page_faults = timed(calls[key][0], d, calls[key][1])
            times[key].append(seconds)
            faults[key].append(page_faults)
        if (r + 1) % max(1, rounds // 5) == 0:
            log(f"  round {r + 1}/{rounds}")
    result = {}
    for name in names:
        medians = {impl: statistics.median(times[(name, impl)]) * 1e3 for impl in IMPLS}
        loss_diff, grad_diff = check(d, name)
        result[name] = {"median_ms": medians,
                        "ratio": {impl: medians[impl] / medians["hand-written"] for impl in IMPLS},
                        "page_faults_per_call": {impl: statistics.mean(faults[(name, impl)]) for impl in IMPLS},
                        "max_abs_diff_loss": loss_diff, "max_abs_diff_grad": grad_diff}
    return result


def table(result: dict) -> str:
    lines = ["| configuration | hand-written (ms) | gradest (ms) | ratio | validation off (ms) | ratio | "
             "page faults per call (hand / gradest) |",
             "|---|---|---|---|---|---|---|"]
    for name, r in result.items():
        m, q, f = r["median_ms"], r["ratio"], r["page_faults_per_call"]
        cell = name.replace("|", "\\|")  # a markdown table: |y| would end the cell
        lines.append(f"| {cell} | {m['hand-written']:.2f} | {m['gradest']:.2f} | {q['gradest']:.3f} | "
                     f"{m['gradest (validation off)']:.2f} | {q['gradest (validation off)']:.3f} | "
                     f"{f['hand-written']:.0f} / {f['gradest']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=200, help="interleaved rounds (each times every pair once)")
    p.add_argument("--configs", help="comma-separated subset of the configurations (default: all)")
    p.add_argument("--json", metavar="PATH", help="write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    names = list(CONFIGS) if not args.configs else [n.strip() for n in args.configs.split(",")]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        p.error(f"unknown configuration(s) {unknown}; choose from {list(CONFIGS)}")
    d = Data()
    for name in names:
        loss_diff, grad_diff = check(d, name)
        if loss_diff > 1e-4 or grad_diff > 1e-6:
            raise SystemExit(f"{name}: gradest and the hand-written loss differ (loss {loss_diff:.2g}, "
                             f"gradient {grad_diff:.2g})")
    print(f"task 6: P={PROMPTS} x G={GROUP}, L={LENGTH}, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, threads={torch.get_num_threads()}, rounds={args.rounds}")
    result = run(d, names, args.rounds)
    print(table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "rounds": args.rounds, "configs": result}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
