"""``compare`` and the sweeps: run estimators on the same objectives and measure bias, variance, cost."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor

from gradest.diagnostics.report import Report, Row
from gradest.estimators import (
    Enumerate,
    Estimator,
    GumbelSoftmax,
    ImplicitReparam,
    LeaveOneOut,
    MovingAverage,
    OptimalConstant,
    Pathwise,
    ScoreFunction,
    StraightThrough,
)
from gradest.expect import expectation
from gradest.problems import (
    BernoulliToy,
    CategoricalTable,
    CustomProblem,
    DigitsVAE,
    Gaussian,
    LogisticRegression,
    Problem,
    gradient_draws,
)
from gradest.testing.stats import sample_variance_se, z_for

__all__ = ["ESTIMATORS", "PROBLEMS", "compare", "sweep_samples", "sweep_temperature", "sweep_gae_lambda"]

ESTIMATORS: dict[str, Callable[[], Estimator]] = {
    "pathwise": Pathwise,
    "implicit": ImplicitReparam,
    "score": ScoreFunction,
    "score+moving-average": lambda: ScoreFunction(MovingAverage(0.9)),
    "score+leave-one-out": lambda: ScoreFunction(LeaveOneOut()),
    "score+optimal-constant": lambda: ScoreFunction(OptimalConstant(decay=0.9)),
    "enumerate": Enumerate,
    "gumbel-softmax": lambda: GumbelSoftmax(0.5),  # biased: the table marks the measured bias
    "straight-through": StraightThrough,  # biased
}
"""Estimators by CLI name."""

PROBLEMS: dict[str, Callable[[], Problem]] = {
    "gaussian-square": lambda: Gaussian("square", mu=0.5, sigma=1.0),
    "gaussian-shifted-square": lambda: Gaussian("shifted_square", k=3.0, mu=0.5, sigma=1.0),
    "gaussian-cos3": lambda: Gaussian("cos", k=3.0, mu=0.5, sigma=1.0),
    "gaussian-bump": lambda: Gaussian("bump", k=1.0, mu=0.5, sigma=1.0),
    "bernoulli-0.499": lambda: BernoulliToy(0.499, logit=0.0),
    "categorical-10": lambda: CategoricalTable(10, seed=0),
    "logistic-regression": LogisticRegression,
    "digits-vae": DigitsVAE,
}
"""Built-in problems by CLI name."""

EstimatorSpec = str | Estimator | Callable[[], Estimator]
ProblemSpec = str | Problem | tuple

FALSE_ALARM = 1e-3
"""Bias is flagged when some coordinate's |mean − exact| exceeds z·SE at this family-wise rate."""


def _estimators(specs: Sequence[EstimatorSpec] | dict[str, Callable[[], Estimator]]) -> list[tuple[str, Callable]]:
    if isinstance(specs, dict):
        return list(specs.items())
    out = []
    for s in specs:
        if isinstance(s, str):
            if s not in ESTIMATORS:
                raise ValueError(f"compare: estimator={s!r} is unknown; choose from {sorted(ESTIMATORS)}.")
            out.append((s, ESTIMATORS[s]))
        elif isinstance(s, Estimator):
            out.append((repr(s).replace("\n", ""), lambda s=s: s))  # type: ignore[misc]
        elif callable(s):
            out.append((getattr(s, "__name__", repr(s)), s))
        else:
            raise TypeError(f"compare: estimators entry {s!r} must be a name, an Estimator or a factory.")
    return out


def _problems(specs: Sequence[ProblemSpec] | ProblemSpec) -> list[tuple[str, Problem]]:
    if isinstance(specs, (str, Problem)) or (isinstance(specs, tuple) and len(specs) == 3 and callable(specs[0])):
        specs = [specs]
    out = []
    for p in specs:
        if isinstance(p, Problem):
            out.append((p.name, p))
        elif isinstance(p, tuple):
            if len(p) != 3:
                raise ValueError(f"compare: problem={p!r} must be a name, a Problem or (f, dist_builder, params).")
            out.append(("custom", CustomProblem(*p)))
        elif p in PROBLEMS:
            out.append((p, PROBLEMS[p]()))
        else:
            raise ValueError(f"compare: problem={p!r} is unknown; choose from {sorted(PROBLEMS)}.")
    return out


@contextmanager
def _progress(total: int, enabled: bool, description: str) -> Iterator[Callable[[], None]]:
    """A rich progress bar when enabled and rich is installed; else a no-op ``advance``."""
    if not enabled:
        yield lambda: None
        return
    try:
        from rich.progress import Progress
    except ImportError:
        yield lambda: None
        return
    with Progress(transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)


def _time_one(problem: Problem, estimator: Estimator, n: int, repeats: int) -> float:
    """Median seconds of one unbatched estimate (forward and backward), after two warm-up calls."""
    times = []
    for _ in range(repeats + 2):
        params = problem.params(dtype=torch.float32)
        t0 = time.perf_counter()
        s = expectation(problem.f, problem.dist(*params), estimator, n=n)
        torch.autograd.grad(s.sum(), params, allow_unused=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[2:])


CALLS = 10
"""Estimates are drawn in this many calls, after ``WARMUP`` discarded ones, so that stateful baselines
(moving averages, running moments) are measured in their steady state, as in training."""
WARMUP = 3


def _draws(problem: Problem, estimator: Estimator, n: int, trials: int) -> Tensor:
    replications = max(1, trials // CALLS)
    gradient_draws(problem, estimator, n=n, replications=replications, calls=WARMUP)
    return gradient_draws(problem, estimator, n=n, replications=replications, calls=CALLS)


def _reference(problem: Problem, trials: int) -> tuple[Tensor, Tensor, str]:
    """The exact gradient (SE 0), or a high-precision reference with its standard error."""
    if problem.exact:
        exact = problem.exact_gradient()
        return exact, torch.zeros_like(exact), "exact"
    estimator, n = problem.reference()
    draws = _draws(problem, estimator, n, 2 * trials)
    return draws.mean(0), draws.std(0) / draws.shape[0] ** 0.5, f"reference: {type(estimator).__name__}, n={n}"


def _measure(problem: Problem, label: str, name: str, fresh: Callable[[], Estimator], n: int, trials: int,
             repeats: int, reference: tuple[Tensor, Tensor, str], setting: dict[str, float] | None = None) -> Row:
    row = Row(problem=label, estimator=name, n=n, trials=trials, setting=dict(setting or {}))
    estimator = fresh()
    row.unbiased = bool(type(estimator).unbiased)
    try:
        estimator.check(problem.dist(*problem.params()), n)
    except (NotImplementedError, ValueError) as e:
        row.status, row.reason = "n/a", str(e)
        return row
    try:
        draws = _draws(problem, estimator, n, trials)
    except (IndexError, TypeError) as e:  # f cannot take this rule's points (relaxed points as indices)
        row.status, row.reason = "n/a", f"f cannot be evaluated at {name}'s points: {e}"
        return row
    exact, exact_se, row.reference = reference
    mean, se = draws.mean(0), draws.std(0) / draws.shape[0] ** 0.5
    per_coordinate, per_coordinate_se = sample_variance_se(draws)
    scale = max(1.0, float(exact.abs().max()))
    rounding = 64 * torch.finfo(draws.dtype).eps * scale
    if float(draws.std(0).max()) <= rounding:  # a deterministic rule (enumeration): variance 0, bias exact
        per_coordinate, per_coordinate_se, se = torch.zeros_like(mean), torch.zeros_like(mean), torch.zeros_like(mean)
    variance = float(per_coordinate.sum())
    row.variance_se = float(per_coordinate_se.square().sum().sqrt())
    total_se = (se.square() + exact_se.square()).sqrt()
    row.trials = draws.shape[0]
    row.mean, row.exact, row.bias_se = mean.tolist(), exact.tolist(), total_se.tolist()
    row.bias = float((mean - exact).norm())
    row.bias_z = float(((mean - exact).abs() / (total_se + rounding)).max())
    row.biased = row.bias_z > z_for(FALSE_ALARM, exact.numel())
    row.variance = variance
    row.snr = float(exact.norm()) / variance**0.5 if variance > 0 else float("inf")
    row.seconds = _time_one(problem, fresh(), n, repeats)  # unbatched: a fresh copy of any state
    return row


def compare(
    problems: Sequence[ProblemSpec] | ProblemSpec = tuple(PROBLEMS),
    estimators: Sequence[EstimatorSpec] | dict[str, Callable[[], Estimator]] = tuple(ESTIMATORS),
    *,
    n: int = 4,
    trials: int = 2000,
    seed: int = 0,
    timing_repeats: int = 30,
    progress: bool = False,
) -> Report:
    """Measure each estimator on each problem: bias, variance (trace of covariance), SNR, time.

    Bias is measured against the exact gradient when the problem knows it (closed form, quadrature
    or enumeration) and otherwise against a high-precision reference (2× the trials of the problem's
    reference estimator, with its larger n), with the reference's standard error included. A row is flagged ``biased``
    when some coordinate's error exceeds z·SE at the family-wise false-alarm rate ``FALSE_ALARM``.
    Estimators that do not apply to a problem's family get a row with ``status="n/a"`` and the reason.
    Randomness is seeded inside ``torch.random.fork_rng()``, so the caller's RNG is untouched.

    Args:
        problems: names from ``PROBLEMS``, ``Problem`` objects, or ``(f, dist_builder, params)``
            tuples for your own objective E_{dist_builder(*params)}[f(x)].
        estimators: names from ``ESTIMATORS``, Estimator objects, factories, or a dict name → factory.
        n: samples per estimate.
        trials: independent estimates per (problem, estimator).
        seed: the seed of the whole comparison.
        timing_repeats: unbatched estimates timed per (problem, estimator).
        progress: show a progress bar (rich).

    Returns:
        A :class:`Report`.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"compare: n={n!r} must be an int >= 1.")
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 2 * CALLS:
        raise ValueError(f"compare: trials={trials!r} must be an int >= {2 * CALLS} (the variance needs several).")
    ests = _estimators(estimators)
    rows = []
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        probs = _problems(problems)
        with _progress(len(probs) * len(ests), progress, "gradest compare") as advance:
            for label, problem in probs:
                reference = _reference(problem, trials)
                for name, fresh in ests:
                    rows.append(_measure(problem, label, name, fresh, n, trials, timing_repeats, reference))
                    advance()
    return Report(rows, {"n": n, "trials": trials, "seed": seed, "torch": torch.__version__,
                         "false_alarm": FALSE_ALARM})


def sweep_samples(
    problem: ProblemSpec,
    estimators: Sequence[EstimatorSpec] | dict[str, Callable[[], Estimator]] = ("pathwise", "score+leave-one-out"),
    ns: Sequence[int] = (2, 4, 8, 16, 32),
    *,
    trials: int = 1000,
    seed: int = 0,
    timing_repeats: int = 10,
) -> Report:
    """Variance against the sample count n (for an unbiased Monte Carlo estimator, variance ∝ 1/n)."""
    (label, prob), ests = _problems(problem)[0], _estimators(estimators)
    rows = []
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        reference = _reference(prob, trials)
        for name, fresh in ests:
            for n in ns:
                rows.append(_measure(prob, label, name, fresh, n, trials, timing_repeats, reference, {"n": n}))
    return Report(rows, {"sweep": "n", "trials": trials, "seed": seed, "torch": torch.__version__})


def sweep_temperature(
    problem: ProblemSpec,
    temperatures: Sequence[float] = (2.0, 1.0, 0.5, 0.25, 0.1, 0.05),
    *,
    hard: bool = False,
    n: int = 1,
    trials: int = 2000,
    seed: int = 0,
    timing_repeats: int = 10,
) -> Report:
    """Gumbel-Softmax's bias against its variance as the temperature falls."""
    label, prob = _problems(problem)[0]
    rows = []
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        reference = _reference(prob, trials)
        for t in temperatures:
            def fresh(t: float = t) -> Estimator:
                return GumbelSoftmax(t, hard=hard)

            name = f"gumbel-softmax{'-hard' if hard else ''}"
            rows.append(_measure(prob, label, name, fresh, n, trials, timing_repeats, reference,
                                 {"temperature": t}))
    return Report(rows, {"sweep": "temperature", "trials": trials, "seed": seed, "torch": torch.__version__})


def sweep_gae_lambda(
    lambdas: Sequence[float] = (0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 1.0),
    *,
    states: int = 10,
    gamma: float = 0.95,
    critic_error: float = 0.5,
    horizon: int = 200,
    trials: int = 20000,
    seed: int = 0,
) -> Report:
    r"""GAE's bias against its variance as λ goes from 0 (one-step TD) to 1 (Monte Carlo returns).

    On a ring random walk (``states`` states, ±1 steps, a fixed reward per state plus N(0, 1) noise)
    the true values :math:`V^* = (I - \gamma P)^{-1}\bar r` are known exactly; the critic is
    :math:`V = V^* + \epsilon`, a fixed error of scale ``critic_error`` per state. For each λ, the
    λ-return at the first step, :math:`\hat A^{GAE}_0 + V(s_0)`, is compared with :math:`V^*(s_0)`
    over ``trials`` rollouts of ``horizon`` steps (truncated: the last step bootstraps from the
    critic): λ = 1 is unbiased with the most variance, λ = 0 inherits the critic's error.

    References:
        Schulman et al. (2016). High-Dimensional Continuous Control Using Generalized Advantage
        Estimation. ICLR. arXiv:1506.02438.
    """
    from gradest.rl import gae

    rows = []
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        g = torch.float64
        reward = torch.randn(states, dtype=g)
        p = torch.zeros(states, states, dtype=g)
        idx = torch.arange(states)
        p[idx, (idx + 1) % states] = 0.5
        p[idx, (idx - 1) % states] = 0.5
        v_star = torch.linalg.solve(torch.eye(states, dtype=g) - gamma * p, reward)
        v = v_star + critic_error * torch.randn(states, dtype=g)
        per_state = max(2, trials // states)
        start = idx.repeat_interleave(per_state)  # every state equally often
        steps = torch.randint(0, 2, (horizon, start.numel())) * 2 - 1
        s = torch.cat([start.unsqueeze(0), (start + steps.cumsum(0)) % states])  # [T+1, B]
        rewards = reward[s[:-1]] + torch.randn(horizon, start.numel(), dtype=g)
        terminated = torch.zeros(horizon, start.numel(), dtype=torch.bool)
        truncated = terminated.clone()
        truncated[-1] = True
        label = f"random-walk(states={states},gamma={gamma:g})"
        for lam in lambdas:
            t0 = time.perf_counter()
            adv = gae(rewards=rewards, values=v[s[:-1]], next_values=v[s[1:]], terminated=terminated,
                      truncated=truncated, gamma=gamma, lambda_=lam)
            seconds = (time.perf_counter() - t0) / start.numel()  # per rollout, in one vectorised call
            target = (adv[0] + v[start]).view(states, per_state)  # [states, per_state]
            mean = target.mean(1)
            var, var_se = sample_variance_se(target.T)
            se = (var / per_state).sqrt()
            row = Row(problem=label, estimator="gae", n=1, trials=start.numel(), setting={"lambda": lam},
                      reference="exact: (I - γP)⁻¹ r")
            row.mean, row.exact, row.bias_se = mean.tolist(), v_star.tolist(), se.tolist()
            row.bias = float((mean - v_star).norm())
            row.bias_z = float(((mean - v_star).abs() / se).max())
            row.biased = row.bias_z > z_for(FALSE_ALARM, states)
            row.unbiased = lam == 1.0
            row.variance = float(var.sum())
            row.variance_se = float(var_se.square().sum().sqrt())
            row.snr = float(v_star.norm()) / row.variance**0.5
            row.seconds = seconds
            rows.append(row)
    return Report(rows, {"sweep": "lambda", "trials": trials, "seed": seed, "torch": torch.__version__})
