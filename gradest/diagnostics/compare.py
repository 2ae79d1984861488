"""``compare``: run estimators on the same objectives and measure bias, variance and cost."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch

from gradest.estimators import (
    Enumerate,
    Estimator,
    ImplicitReparam,
    LeaveOneOut,
    MovingAverage,
    OptimalConstant,
    Pathwise,
    ScoreFunction,
)
from gradest.diagnostics.report import Report, Row
from gradest.expect import expectation
from gradest.problems import BernoulliToy, CategoricalTable, Gaussian, Problem, gradient_draws

__all__ = ["ESTIMATORS", "PROBLEMS", "compare"]

ESTIMATORS: dict[str, Callable[[], Estimator]] = {
    "pathwise": Pathwise,
    "implicit": ImplicitReparam,
    "score": ScoreFunction,
    "score+moving-average": lambda: ScoreFunction(MovingAverage(0.9)),
    "score+leave-one-out": lambda: ScoreFunction(LeaveOneOut()),
    "score+optimal-constant": lambda: ScoreFunction(OptimalConstant(decay=0.9)),
    "enumerate": Enumerate,
}
"""Estimators by CLI name."""

PROBLEMS: dict[str, Callable[[], Problem]] = {
    "gaussian-square": lambda: Gaussian("square", mu=0.5, sigma=1.0),
    "gaussian-shifted-square": lambda: Gaussian("shifted_square", k=2.0, mu=0.5, sigma=1.0),
    "gaussian-cos3": lambda: Gaussian("cos", k=3.0, mu=0.5, sigma=1.0),
    "gaussian-bump": lambda: Gaussian("bump", k=1.0, mu=0.5, sigma=1.0),
    "bernoulli-0.499": lambda: BernoulliToy(0.499, logit=0.0),
    "categorical-10": lambda: CategoricalTable(10, seed=0),
}
"""Built-in problems by CLI name."""


def _time_one(problem: Problem, estimator: Estimator, n: int, repeats: int) -> float:
    """Median seconds of one unbatched estimate (forward and backward), after two warm-up calls."""
    times = []
    for _ in range(repeats + 2):
        params = problem.params(dtype=torch.float32)
        t0 = time.perf_counter()
        s = expectation(problem.f, problem.dist(*params), estimator, n=n)
        torch.autograd.grad(s, params, allow_unused=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[2:])


CALLS = 10
"""Estimates are drawn in this many calls (after as many warm-up calls), so that stateful baselines
(moving averages, running moments) are measured in their steady state, as in training."""


def _measure(
    problem: Problem, label: str, name: str, fresh: Callable[[], Estimator], n: int, trials: int, repeats: int
) -> Row:
    row = Row(problem=label, estimator=name, n=n, trials=trials)
    estimator = fresh()
    try:
        estimator.check(problem.dist(*problem.params()), n)
    except (NotImplementedError, ValueError) as e:
        row.status = "n/a"
        row.reason = str(e)
        return row
    replications = max(1, trials // CALLS)
    gradient_draws(problem, estimator, n=n, replications=replications, calls=CALLS)  # warm-up
    draws = gradient_draws(problem, estimator, n=n, replications=replications, calls=CALLS)
    trials = row.trials = draws.shape[0]
    mean = draws.mean(0)
    exact = problem.exact_gradient()
    variance = float(draws.var(0).sum()) if trials > 1 else float("nan")
    row.mean = mean.tolist()
    row.exact = exact.tolist()
    row.bias = float((mean - exact).norm())
    row.bias_se = (draws.std(0) / trials**0.5).tolist()
    row.variance = variance
    row.snr = float(exact.norm()) / variance**0.5 if variance > 0 else float("inf")
    row.seconds = _time_one(problem, fresh(), n, repeats)  # unbatched: a fresh copy of any state
    return row


def compare(
    problems: Sequence[str | Problem] = tuple(PROBLEMS),
    estimators: Sequence[str] = tuple(ESTIMATORS),
    *,
    n: int = 4,
    trials: int = 2000,
    seed: int = 0,
    timing_repeats: int = 30,
) -> Report:
    """Measure each estimator on each problem: bias against the exact gradient, variance, SNR, time.

    Estimators that do not apply to a problem's family get a row with ``status="n/a: ..."``.
    Randomness is seeded inside ``torch.random.fork_rng()``, so the caller's RNG is untouched.

    Args:
        problems: names from ``PROBLEMS`` or Problem objects.
        estimators: names from ``ESTIMATORS``.
        n: samples per estimate.
        trials: independent estimates per (problem, estimator).
        seed: the seed of the whole comparison.
        timing_repeats: unbatched estimates timed per (problem, estimator).

    Returns:
        A :class:`Report`.
    """
    unknown = [e for e in estimators if e not in ESTIMATORS]
    if unknown:
        raise ValueError(f"compare: estimators={unknown} unknown; choose from {sorted(ESTIMATORS)}.")
    probs = []
    for p in problems:
        if isinstance(p, Problem):
            probs.append((p.name, p))
        elif p in PROBLEMS:
            probs.append((p, PROBLEMS[p]()))
        else:
            raise ValueError(f"compare: problem={p!r} unknown; choose from {sorted(PROBLEMS)}.")
    rows = []
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for label, problem in probs:
            for name in estimators:
                rows.append(_measure(problem, label, name, ESTIMATORS[name], n, trials, timing_repeats))
    settings = {"n": n, "trials": trials, "seed": seed, "torch": torch.__version__}
    return Report(rows, settings)
