"""``compare`` and the sweeps: run estimators on the same objectives and measure bias, variance, cost."""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor

from gradest.diagnostics._stats import bias_z, mean_and_moments, sample_variance_se
from gradest.diagnostics.estimators import ESTIMATORS, Recipe, recipe_for
from gradest.diagnostics.report import FALSE_ALARM, Report, Row
from gradest.estimators import Estimator, GumbelSoftmax
from gradest.expect import expectation
from gradest.problems import (
    BernoulliToy,
    CategoricalTable,
    DigitsVAE,
    Gaussian,
    LogisticRegression,
    Problem,
    as_problem,
    gradient_draws,
)

__all__ = [
    "PROBLEMS", "PROBLEM_SUMMARIES", "SWEEPS", "compare", "sweep_samples", "sweep_temperature", "sweep_gae_lambda",
    "run_sweeps",
]

PROBLEMS: dict[str, Callable[[], Problem]] = {
    "gaussian-square": lambda: Gaussian("square", mu=0.5, sigma=1.0),
    "gaussian-shifted-square": lambda: Gaussian("shifted_square", k=3.0, mu=0.5, sigma=1.0),
    "gaussian-cos3": lambda: Gaussian("cos", k=3.0, mu=0.5, sigma=1.0),
    "gaussian-bump": lambda: Gaussian("bump", k=1.0, mu=0.5, sigma=1.0),
    "bernoulli-0.499": lambda: BernoulliToy(0.499, logit=0.0),
    "categorical-10": lambda: CategoricalTable(10, seed=0),
    "logistic-regression": LogisticRegression,
    "digits-vae": lambda: DigitsVAE(images=4),
}
"""Built-in problems by CLI name (``logistic-regression`` and ``digits-vae`` need scikit-learn's data)."""

PROBLEM_SUMMARIES: dict[str, str] = {
    "gaussian-square": "E[x²], x ~ N(0.5, 1); gradient in (μ, σ), exact",
    "gaussian-shifted-square": "E[(x − 3)²], x ~ N(0.5, 1); exact",
    "gaussian-cos3": "E[cos 3x], x ~ N(0.5, 1): an oscillating cost where pathwise loses; exact",
    "gaussian-bump": "E[exp(−x²)], x ~ N(0.5, 1): a baseline can raise the variance; exact",
    "bernoulli-0.499": "E[(b − 0.499)²], b ~ Bernoulli(σ(0)): tiny signal (Tucker et al. 2017); exact",
    "categorical-10": "E[table[k]], k ~ Categorical(10 logits); exact by enumeration",
    "logistic-regression": "Bayesian logistic regression on breast_cancer, 62 parameters; exact by "
                           "quadrature (needs scikit-learn: pip install 'gradest[cli]')",
    "digits-vae": "a trained categorical VAE on 4 digits, 800 logits; against a reference (needs scikit-learn: "
                  "pip install 'gradest[cli]')",
}
"""One line per built-in problem (``gradest problems``)."""

EstimatorSpec = str | Estimator | Recipe | Callable[[], Estimator]
"""A name with options (``"rebar:temperature=0.5"``), an Estimator (deep-copied per problem), or a factory."""
Estimators = EstimatorSpec | Sequence[EstimatorSpec] | Mapping[str, EstimatorSpec]
ProblemSpec = str | Problem | tuple
"""A name from ``PROBLEMS``, a :class:`~gradest.problems.Problem`, or ``(f, dist_builder, params)``."""
Problems = ProblemSpec | Sequence[ProblemSpec] | Mapping[str, ProblemSpec]

CALLS = 10
"""Estimates are drawn in this many calls, after ``WARMUP`` discarded ones, so that stateful baselines
(moving averages, running moments) are measured in their steady state, as in training."""
WARMUP = 3
TRAIN_LR = 1e-2
"""Adam's learning rate for an estimator's own parameters (RELAX's control, REBAR(learn=True), a Critic)."""
TRAIN_REPLICATIONS = 16
"""Replications per training step (a batch of 16 estimates, as a training loop would see)."""


def _recipes(estimators: Estimators, where: str) -> list[Recipe]:
    if isinstance(estimators, Mapping):
        out = [r for label, spec in estimators.items() for r in recipe_for(spec, str(label), where=where)]
    elif isinstance(estimators, (str, Estimator)) or callable(estimators):
        out = recipe_for(estimators, where=where)
    elif isinstance(estimators, Sequence):
        out = [r for spec in estimators for r in recipe_for(spec, where=where)]
    else:
        raise TypeError(
            f"{where}: estimators={estimators!r} must be names ('disarm,rebar:temperature=0.5'), estimators, "
            "factories, a list of these, or a dict label -> one of these."
        )
    if not out:
        raise ValueError(f"{where}: estimators is empty; name at least one, e.g. ['pathwise', 'score'].")
    seen: dict[str, int] = {}
    for i, r in enumerate(out):  # labels are keys of the table: make repeats distinct
        seen[r.label] = seen.get(r.label, 0) + 1
        if seen[r.label] > 1:
            out[i] = Recipe(f"{r.label}#{seen[r.label]}", r.build)
    return out


def _problems(specs: Problems, where: str) -> list[tuple[str, Problem]]:
    if isinstance(specs, Mapping):
        return [(str(label), _problems(p, where)[0][1]) for label, p in specs.items()]
    if isinstance(specs, (str, Problem)) or (isinstance(specs, tuple) and len(specs) == 3 and callable(specs[0])):
        specs = [specs]
    if not isinstance(specs, Sequence) or not specs:
        raise TypeError(f"{where}: problems={specs!r} must be a name, a Problem, (f, dist_builder, params), or a list.")
    out: list[tuple[str, Problem]] = []
    for i, p in enumerate(specs):
        if isinstance(p, str):
            if p not in PROBLEMS:
                raise ValueError(f"{where}: problem={p!r} is unknown; choose from {', '.join(PROBLEMS)}.")
            out.append((p, PROBLEMS[p]()))
        else:
            problem = as_problem(p, name="custom" if len(specs) == 1 else f"custom-{i}", where=where)
            label = problem.name
            if any(label == seen for seen, _ in out):  # labels are keys of the table: make repeats distinct
                label = f"{label}#{i + 1}"
            out.append((label, problem))
    return out


def _check_int(where: str, name: str, value: object, low: int, hint: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{where}: {name}={value!r} must be an int >= {low}{hint}.")
    if value < low:
        raise ValueError(f"{where}: {name}={value!r} must be an int >= {low}{hint}.")
    return value


def _check_settings(where: str, n: object, trials: object, seed: object, timing_repeats: object,
                    train_steps: object, false_alarm: object) -> None:
    _check_int(where, "n", n, 1)
    _check_int(where, "trials", trials, 2 * CALLS, " (the variance and its standard error need several)")
    _check_int(where, "seed", seed, 0)
    _check_int(where, "timing_repeats", timing_repeats, 1)
    _check_int(where, "train_steps", train_steps, 0)
    if isinstance(false_alarm, bool) or not isinstance(false_alarm, (int, float)) or not 0 < false_alarm < 1:
        raise ValueError(f"{where}: false_alarm={false_alarm!r} must lie in (0, 1); 1e-3 is the default.")


@contextmanager
def _progress(total: int, enabled: bool, description: str) -> Iterator[Callable[[str], None]]:
    """A rich progress bar when enabled and rich is installed; else a no-op ``advance(label)``."""
    if not enabled:
        yield lambda label: None
        return
    try:
        from rich.progress import Progress
    except ImportError:
        yield lambda label: None
        return
    with Progress(transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda label: bar.update(task, advance=1, description=f"{description}: {label}")


def _time_one(problem: Problem, estimator: Estimator, n: int, repeats: int) -> float:
    """Median seconds of one unbatched estimate (forward and backward), after two warm-up calls."""
    times = []
    for _ in range(repeats + 2):
        params = problem.params(dtype=problem.timing_dtype)
        t0 = time.perf_counter()
        s = expectation(problem.f, problem.dist(*params), estimator, n=n)
        if s.requires_grad:
            torch.autograd.grad(s.sum(), params, allow_unused=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[2:])


def _probe(problem: Problem, estimator: Estimator, n: int) -> None:
    """One estimate at the problem's own shapes (no replication dimension): errors name the user's shapes,
    and an error raised inside f says so, with the points f was given (relaxed one-hot floats, say)."""
    params = problem.params(dtype=problem.dtype)
    failed: list[str] = []

    def f(x: Tensor) -> Tensor:
        try:
            return problem.f(x)
        except Exception:
            failed.append(f"{str(x.dtype).replace('torch.', '')} {list(x.shape)}")
            raise

    try:
        s = expectation(f, problem.dist(*params), estimator, n=n)
        if s.requires_grad:
            torch.autograd.grad(s.sum(), params, allow_unused=True)
    except Exception as e:
        if failed:
            raise RuntimeError(f"f failed at this estimator's points ({failed[0]}): {type(e).__name__}: {e}") from e
        raise


def _train(problem: Problem, estimator: Estimator, n: int, steps: int, replications: int) -> None:
    """Adam steps on the estimator's own parameters at the problem's θ (its surrogate's backward
    trains them: RELAX's control and REBAR(learn=True) on the variance, a Critic on the costs)."""
    own = [p for p in estimator.parameters() if p.requires_grad]
    if not own or steps == 0:
        return
    opt = torch.optim.Adam(own, lr=TRAIN_LR)
    for _ in range(steps):
        params = problem.params(replications if problem.batched else None, dtype=problem.dtype)
        opt.zero_grad()
        expectation(problem.f, problem.dist(*params), estimator, n=n).sum().backward()
        opt.step()


def _draws(problem: Problem, estimator: Estimator, n: int, trials: int) -> Tensor:
    replications = max(1, trials // CALLS)
    gradient_draws(problem, estimator, n=n, replications=replications, calls=WARMUP, dtype=problem.dtype)
    return gradient_draws(problem, estimator, n=n, replications=replications, calls=CALLS, dtype=problem.dtype)


Reference = tuple[Tensor, Tensor, Tensor, str]
"""The gradient measured against, the variance and third cumulant of its error (0 when exact), and how."""


def _reference(problem: Problem, trials: int) -> Reference | str:
    """The exact gradient (SE 0), a high-precision reference with its standard error, or why there is none."""
    if problem.exact:
        exact = problem.exact_gradient(dtype=torch.float64)
        return exact, torch.zeros_like(exact), torch.zeros_like(exact), "exact"
    estimator, n = problem.reference()
    label = f"reference: {type(estimator).__name__}, n={n}, {2 * trials} estimates"
    try:
        draws = _draws(problem, copy.deepcopy(estimator), n, 2 * trials).to(torch.float64)
    except Exception as e:  # noqa: BLE001 - reported in every row of the problem
        return f"no reference: {type(estimator).__name__} failed on this problem ({type(e).__name__}: {e})"
    mean, variance, third = mean_and_moments(draws)
    return mean, variance, third, label


def _claim(estimator: Estimator) -> bool:
    return bool(getattr(type(estimator), "unbiased", True))


def _measure(problem: Problem, label: str, recipe: Recipe, n: int, trials: int, repeats: int, train_steps: int,
             reference: Reference | str, setting: dict[str, float] | None = None) -> Row:
    row = Row(problem=label, estimator=recipe.label, n=n, trials=trials, setting=dict(setting or {}),
              reference=reference if isinstance(reference, str) else reference[3])
    try:
        estimator = recipe.build(problem)
        row.unbiased = _claim(estimator)
        _probe(problem, copy.deepcopy(estimator), n)  # does it run here at all? (its state is left alone)
        _train(problem, estimator, n, train_steps, TRAIN_REPLICATIONS)
        draws = _draws(problem, estimator, n, trials).to(torch.float64)
        if not bool(torch.isfinite(draws).all()):
            raise ValueError(f"{int((~torch.isfinite(draws)).sum())} gradient coordinates were NaN or inf")
        row.seconds = _time_one(problem, recipe.build(problem), n, repeats)  # a fresh copy: untrained, unwarmed
    except Exception as e:  # noqa: BLE001 - the row says why, and the comparison goes on
        row.status, row.error, row.reason = "n/a", type(e).__name__, str(e)
        return row
    mean, mean_variance, third = mean_and_moments(draws)
    per_coordinate, per_coordinate_se = sample_variance_se(draws)
    eps = torch.finfo(problem.dtype).eps
    scale = max(1.0, float((mean if isinstance(reference, str) else reference[0]).abs().max()))
    rounding = 64 * eps * scale
    if float(draws.std(0).max()) <= rounding:  # a deterministic rule (enumeration): variance 0, bias exact
        per_coordinate, per_coordinate_se = torch.zeros_like(mean), torch.zeros_like(mean)
        mean_variance, third = torch.zeros_like(mean), torch.zeros_like(mean)
    row.trials = draws.shape[0]
    row.mean = mean.tolist()
    row.variance = float(per_coordinate.sum())
    row.variance_se = float(per_coordinate_se.square().sum().sqrt())
    if isinstance(reference, str):
        row.reference, row.bias_se = reference, mean_variance.sqrt().tolist()
        row.snr = float(mean.norm()) / row.variance**0.5 if row.variance > 0 else math.inf
        return row
    exact, exact_variance, exact_third, row.reference = reference
    total = mean_variance + exact_variance
    row.exact, row.bias_se = exact.tolist(), total.sqrt().tolist()
    row.bias = float((mean - exact).norm())
    row.bias_z = float(bias_z(mean - exact, total, third - exact_third, rounding).max())
    row.snr = float(exact.norm()) / row.variance**0.5 if row.variance > 0 else math.inf
    return row


def compare(
    problems: Problems = tuple(PROBLEMS),
    estimators: Estimators = tuple(ESTIMATORS),
    *,
    n: int = 4,
    trials: int = 2000,
    seed: int = 0,
    timing_repeats: int = 30,
    train_steps: int = 100,
    false_alarm: float = FALSE_ALARM,
    progress: bool = False,
) -> Report:
    r"""Measure each estimator on each problem: bias, variance (trace of the covariance), SNR, time.

    **Bias** is measured against the exact gradient when the problem knows it (closed form,
    quadrature, enumeration, or the ``exact_gradient``/``objective`` you give) and otherwise against
    a high-precision reference (:meth:`Problem.reference`: twice as many estimates, with more
    samples), whose standard error enters the test. A row is flagged ``biased`` when some coordinate's
    |mean − exact| exceeds z·SE, with z chosen so that the chance of *any* false flag in the whole
    report stays at ``false_alarm`` (Bonferroni over every coordinate of every row). The flag is the
    report's: adding reports tests every row again at the combined rate.

    **Estimators that cannot run** on a problem (a family they do not support, an f that cannot be
    evaluated at their relaxed points, an error) get a row with ``status="n/a"`` and the reason.

    **State.** Each (problem, estimator) row uses its own estimator: a name or a factory is built
    afresh; an Estimator instance is deep-copied, so your object and its state (a moving average, a
    trained control) are never changed, and every row starts from the state you passed. Estimates
    are drawn in batches of ``trials // 10`` replications (one per estimate when the problem is not
    ``batched``) over 3 warm-up and 10 measured calls, with the state carried from call to call as in
    training. An estimator with trainable parameters of its own (RELAX's control, ``REBAR(learn=True)``,
    a ``Critic`` baseline) first takes ``train_steps`` Adam steps (lr 1e-2, 16 replications per step) on them
    at the problem's θ,
    through the same backward that trains them in a training loop. Time is the median of
    ``timing_repeats`` single, unbatched estimates (forward and backward) by a fresh copy.

    Randomness is seeded inside ``torch.random.fork_rng()``, so the caller's RNG is untouched.

    Args:
        problems: names from ``PROBLEMS``, :class:`~gradest.problems.Problem` objects, or
            ``(f, dist_builder, params)`` tuples for your own objective ``E_{dist_builder(*params)}[f(x)]``;
            a list of these, or a dict label → one of these.
        estimators: names with options (``"disarm,rebar:temperature=0.5"``; see
            :func:`~gradest.diagnostics.describe_estimators`), Estimator instances, factories
            returning one, a list of these, or a dict label → one of these.
        n: samples per estimate.
        trials: independent estimates per (problem, estimator), at least 20.
        seed: the seed of the whole comparison.
        timing_repeats: unbatched estimates timed per (problem, estimator).
        train_steps: Adam steps on an estimator's own parameters before it is measured.
        false_alarm: the chance that any unbiased row of the report is flagged biased.
        progress: show a progress bar (rich).

    Returns:
        A :class:`~gradest.diagnostics.Report`.

    Raises:
        ValueError: an unknown name, an option an estimator refuses, or a setting out of range.
        TypeError: a problem or estimator of the wrong kind.

    Example:
        >>> from gradest.diagnostics import compare
        >>> report = compare(["gaussian-cos3"], "pathwise,score,disarm", trials=400, timing_repeats=2)
        >>> [(r.estimator, r.status, r.biased, r.error) for r in report.rows]
        [('pathwise', 'ok', False, ''), ('score', 'ok', False, ''), ('disarm', 'n/a', False, 'NotImplementedError')]
        >>> pathwise, score, disarm = report.rows
        >>> pathwise.variance > 2 * score.variance     # on cos 3x the pathwise gradient loses
        True
    """
    where = "compare"
    _check_settings(where, n, trials, seed, timing_repeats, train_steps, false_alarm)
    recipes = _recipes(estimators, where)
    rows = []
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        probs = _problems(problems, where)
        with _progress(len(probs) * len(recipes), progress, "gradest compare") as advance:
            for label, problem in probs:
                reference = _reference(problem, trials)
                for recipe in recipes:
                    advance(f"{label} / {recipe.label}")
                    rows.append(_measure(problem, label, recipe, n, trials, timing_repeats, train_steps, reference))
    return Report(rows, {"n": n, "trials": trials, "seed": seed, "torch": torch.__version__,
                         "false_alarm": false_alarm})


def sweep_samples(
    problem: Problems,
    estimators: Estimators = ("pathwise", "score+leave-one-out"),
    ns: Sequence[int] = (2, 4, 8, 16, 32),
    *,
    trials: int = 1000,
    seed: int = 0,
    timing_repeats: int = 10,
    false_alarm: float = FALSE_ALARM,
) -> Report:
    """Variance against the sample count n (for an unbiased Monte Carlo estimator, variance ∝ 1/n).

    Rows carry ``setting={"n": n}``; estimators and problems are given as for :func:`compare`.

    Example:
        >>> from gradest.diagnostics import sweep_samples
        >>> report = sweep_samples("gaussian-square", ["pathwise"], ns=(2, 8), trials=400, timing_repeats=1)
        >>> small, large = report.rows
        >>> 2 < small.variance / large.variance < 8    # 4 in expectation
        True
    """
    where = "sweep_samples"
    _check_settings(where, 1, trials, seed, timing_repeats, 0, false_alarm)
    for v in ns:
        _check_int(where, "ns[...]", v, 1)
    (label, prob), recipes = _problems(problem, where)[0], _recipes(estimators, where)
    rows = []
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        reference = _reference(prob, trials)
        for recipe in recipes:
            for n in ns:
                rows.append(_measure(prob, label, recipe, n, trials, timing_repeats, 0, reference, {"n": n}))
    return Report(rows, {"sweep": "n", "trials": trials, "seed": seed, "torch": torch.__version__,
                         "false_alarm": false_alarm})


def sweep_temperature(
    problem: Problems,
    temperatures: Sequence[float] = (2.0, 1.0, 0.5, 0.25, 0.1, 0.05),
    *,
    hard: bool = False,
    n: int = 1,
    trials: int = 2000,
    seed: int = 0,
    timing_repeats: int = 10,
    false_alarm: float = FALSE_ALARM,
) -> Report:
    """Gumbel-Softmax's bias against its variance as the temperature falls.

    Rows carry ``setting={"temperature": t}``; on a problem whose family Gumbel-Softmax does not
    support, every row is ``n/a`` with the reason.

    Example:
        >>> from gradest.diagnostics import sweep_temperature
        >>> report = sweep_temperature("categorical-10", (2.0, 0.1), trials=2000, timing_repeats=1)
        >>> hot, cold = report.rows
        >>> hot.biased, cold.variance > hot.variance     # bias at τ = 2; variance grows as τ falls
        (True, True)
    """
    where = "sweep_temperature"
    _check_settings(where, n, trials, seed, timing_repeats, 0, false_alarm)
    for t in temperatures:
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
            raise ValueError(f"{where}: temperatures contains {t!r}; each must be a number > 0.")
    label, prob = _problems(problem, where)[0]
    rows = []
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        reference = _reference(prob, trials)
        for t in temperatures:
            def relaxation(problem: Problem, t: float = t) -> Estimator:
                return GumbelSoftmax(float(t), hard=hard)

            recipe = Recipe(f"gumbel-softmax{':hard=true' if hard else ''}", relaxation)
            rows.append(_measure(prob, label, recipe, n, trials, timing_repeats, 0, reference, {"temperature": t}))
    return Report(rows, {"sweep": "temperature", "trials": trials, "seed": seed, "torch": torch.__version__,
                         "false_alarm": false_alarm})


def sweep_gae_lambda(
    lambdas: Sequence[float] = (0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 1.0),
    *,
    states: int = 10,
    gamma: float = 0.95,
    critic_error: float = 0.5,
    horizon: int = 200,
    trials: int = 20000,
    seed: int = 0,
    false_alarm: float = FALSE_ALARM,
) -> Report:
    r"""GAE's bias against its variance as λ goes from 0 (one-step TD) to 1 (Monte Carlo returns).

    On a ring random walk (``states`` states, ±1 steps, a fixed reward per state plus N(0, 1) noise)
    the true values :math:`V^* = (I - \gamma P)^{-1}\bar r` are known exactly; the critic is
    :math:`V = V^* + \epsilon`, a fixed error of scale ``critic_error`` per state. For each λ, the
    λ-return at the first step, :math:`\hat A^{GAE}_0 + V(s_0)`, is compared with :math:`V^*(s_0)`
    over ``trials`` rollouts of ``horizon`` steps (truncated: the last step bootstraps from the
    critic): λ = 1 is unbiased with the most variance, λ = 0 inherits the critic's error.

    Example:
        >>> from gradest.diagnostics import sweep_gae_lambda
        >>> td, mc = sweep_gae_lambda((0.0, 1.0), trials=4000).rows
        >>> td.biased, mc.biased, mc.variance > td.variance
        (True, False, True)

    References:
        Schulman et al. (2016). High-Dimensional Continuous Control Using Generalized Advantage
        Estimation. ICLR. arXiv:1506.02438.
    """
    from gradest.rl import gae

    where = "sweep_gae_lambda"
    _check_int(where, "states", states, 3)
    _check_int(where, "horizon", horizon, 1)
    _check_int(where, "trials", trials, 2 * states, f" (two rollouts per state at least; states={states})")
    _check_settings(where, 1, 2 * CALLS, seed, 1, 0, false_alarm)
    for lam in lambdas:
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0 <= lam <= 1:
            raise ValueError(f"{where}: lambdas contains {lam!r}; each must lie in [0, 1].")
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 <= gamma < 1:
        raise ValueError(f"{where}: gamma={gamma!r} must lie in [0, 1); 0.9 to 0.99 is typical.")
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
            mean, mean_variance, third = mean_and_moments(target.T)
            var, var_se = sample_variance_se(target.T)
            se = mean_variance.sqrt()
            row = Row(problem=label, estimator="gae", n=1, trials=start.numel(), setting={"lambda": lam},
                      reference="exact: (I - γP)⁻¹ r")
            row.mean, row.exact, row.bias_se = mean.tolist(), v_star.tolist(), se.tolist()
            row.bias = float((mean - v_star).norm())
            row.bias_z = float(bias_z(mean - v_star, mean_variance, third, 0.0).max())
            row.unbiased = lam == 1.0
            row.variance = float(var.sum())
            row.variance_se = float(var_se.square().sum().sqrt())
            row.snr = float(v_star.norm()) / row.variance**0.5
            row.seconds = seconds
            rows.append(row)
    return Report(rows, {"sweep": "lambda", "trials": trials, "seed": seed, "torch": torch.__version__,
                         "false_alarm": false_alarm})


SWEEPS = ("n", "temperature", "lambda")
"""The sweeps :func:`run_sweeps` knows: variance against ``n``, Gumbel-Softmax's ``temperature``, GAE's ``lambda``."""


def run_sweeps(
    specs: str | Sequence[str],
    problems: Problems,
    estimators: Estimators = ("pathwise", "score+leave-one-out"),
    *,
    trials: int = 2000,
    seed: int = 0,
    timing_repeats: int = 10,
    false_alarm: float = FALSE_ALARM,
) -> Report:
    """The sweeps ``gradest compare --sweeps`` asks for, on the run's problems.

    ``specs`` joins ``n``, ``temperature`` and ``lambda`` (or ``all``) with commas; ``n=PROBLEM`` or
    ``temperature=PROBLEM`` picks the problem by its label (else: the first problem for ``n``, the
    first whose family Gumbel-Softmax supports for ``temperature``). ``n`` sweeps those of
    ``estimators`` that run on its problem over n ∈ {2, 4, 8, 16, 32}, with ``trials // 2`` estimates each;
    ``temperature`` sweeps
    Gumbel-Softmax (n = 1, ``4 · trials`` estimates) over τ ∈ {2, 1, 0.5, 0.25, 0.1, 0.05};
    ``lambda`` is :func:`sweep_gae_lambda` with ``10 · trials`` rollouts.

    Raises:
        ValueError: an unknown sweep, or a problem label that is not in ``problems``.

    Example:
        >>> from gradest.diagnostics import run_sweeps
        >>> report = run_sweeps("n", ["gaussian-square"], ["pathwise"], trials=200, timing_repeats=1)
        >>> [r.setting["n"] for r in report.rows]
        [2, 4, 8, 16, 32]
    """
    where = "run_sweeps"
    probs = _problems(problems, where)
    chosen: dict[str, str | None] = {}
    for spec in ([specs] if isinstance(specs, str) else list(specs)):
        for part in (p.strip() for p in spec.split(",") if p.strip()):
            name, _, on = part.partition("=")
            names = SWEEPS if name == "all" else (name,)
            for k in names:
                if k not in SWEEPS:
                    raise ValueError(f"{where}: sweep {name!r} is unknown; choose from {', '.join(SWEEPS)} or all.")
                if on and k == "lambda":
                    raise ValueError(f"{where}: sweep 'lambda' runs on its own random walk; drop '={on}'.")
                chosen[k] = on or chosen.get(k)
    report = Report([], {"false_alarm": false_alarm})
    by_label = dict(probs)

    def pick(kind: str, label: str | None, fits: Callable[[Problem], bool]) -> tuple[str, Problem]:
        if label is not None:
            if label not in by_label:
                raise ValueError(f"{where}: {kind}={label!r} is not a problem of this run; choose from "
                                 f"{', '.join(by_label)}.")
            return label, by_label[label]
        return next(((lb, p) for lb, p in probs if fits(p)), probs[0])

    def runs(problem: Problem, recipe: Recipe, n: int = 1) -> bool:
        try:
            _probe(problem, recipe.build(problem), n)
        except Exception:  # noqa: BLE001 - only asks whether it runs
            return False
        return True

    gumbel = Recipe("gumbel-softmax", lambda problem: GumbelSoftmax(1.0))

    for kind in (k for k in SWEEPS if k in chosen):
        if kind == "n":
            label, prob = pick("n", chosen[kind], lambda p: True)
            fit = [r for r in _recipes(estimators, where) if runs(prob, r, 2)]
            if not fit:
                raise ValueError(f"{where}: none of the estimators runs on {label}: nothing to sweep over n.")
            sweep = sweep_samples({label: prob}, fit, trials=max(2 * CALLS, trials // 2), seed=seed,
                                 timing_repeats=timing_repeats, false_alarm=false_alarm)
        elif kind == "temperature":
            label, prob = pick("temperature", chosen[kind], lambda p: runs(p, gumbel))
            sweep = sweep_temperature({label: prob}, trials=4 * trials, seed=seed, timing_repeats=timing_repeats,
                                     false_alarm=false_alarm)
        else:
            sweep = sweep_gae_lambda(trials=10 * trials, seed=seed, false_alarm=false_alarm)
        report = report + sweep
    return report
