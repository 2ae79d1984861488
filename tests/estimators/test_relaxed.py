"""Theorems and biases of the relaxed, straight-through, antithetic and measure-valued estimators.

The registry (``cases_relaxed.py``) checks what these rules claim to be unbiased for. Here:

- DisARM's variance is at most ARM's, coordinate by coordinate: exactly, by enumerating the
  distribution of the antithetic pair (3^d boxes of u on which (b, b̃) is constant), and the
  implementations' sample variances match those exact variances; DisARM has zero variance at p = ½
  in one dimension.
- StraightThrough is exact for costs linear in the sample and has the predicted bias otherwise.
- GumbelSoftmax is unbiased for the relaxed objective (binary Concrete, by quadrature); against the
  true gradient its bias shrinks and its variance grows as the temperature falls; nothing is NaN at
  temperature 1e-4 in float32 or float64; its relaxed log-density matches torch's where torch's is finite.
- GumbelRao has the mean of straight-through Gumbel at the same temperature and a lower variance.
- Bad input gives the documented errors; low precision at low temperature gives a warning.
- Every estimator works as a node of a ``Graph``: a one-node graph equals ``expectation`` on the same
  seed, and a node upstream of a pathwise node gives the exact gradient on average.

Every comparison is at z·SE with z from a false-alarm rate (``gradest.testing.z_for``), never an epsilon.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import Tensor
from torch.distributions import (
    Bernoulli,
    Categorical,
    Distribution,
    Gamma,
    Independent,
    Normal,
    OneHotCategorical,
    Poisson,
    RelaxedBernoulli,
    RelaxedOneHotCategorical,
)

from gradest import Graph, expectation
from gradest.estimators._gumbel import conditional_gumbel, conditional_logistic, gumbel, logistic, uniform
from gradest.estimators.arm import ARM, DisARM
from gradest.estimators.base import Estimator
from gradest.estimators.measure_valued import MeasureValued
from gradest.estimators.relaxed import GumbelRao, GumbelSoftmax, StraightThrough
from gradest.problems import BernoulliTable, BernoulliToy, Problem, gradient_draws
from gradest.testing import assert_unbiased, assert_variance, sample_variance_se, z_for
from tests.estimators.cases import ClosedForm, seeded
from tests.estimators.cases_relaxed import one_hot, relaxed_moment, relaxed_toy

F64 = torch.float64
FALSE_ALARM = 1e-6


def _rounding(x: Tensor) -> Tensor:
    return 64 * torch.finfo(F64).eps * x.abs().clamp_min(1.0)


def _draws(problem: Problem, factory: Callable[[], Estimator], r: int, seed: int, n: int = 1) -> Tensor:
    with seeded(seed):
        return gradient_draws(problem, factory, n=n, replications=r)


def assert_positive(diff: Tensor, *, tests: int = 1, what: str = "difference") -> None:
    """Each coordinate of the mean of ``diff`` ``[R, D]`` (independent rows) exceeds z·SE."""
    diff = diff.reshape(diff.shape[0], -1)
    z = z_for(FALSE_ALARM, tests * diff.shape[1])
    mean, se = diff.mean(0), diff.std(0) / diff.shape[0] ** 0.5
    assert bool((mean > z * se).all()), f"{what} not significantly > 0: mean {mean.tolist()}, z·SE {(z * se).tolist()}"


def assert_variance_greater(high: Tensor, low: Tensor, *, tests: int = 1) -> None:
    """Per coordinate, Var(high) − Var(low) > z·SE for two independent sets of draws."""
    v_hi, se_hi = sample_variance_se(high)
    v_lo, se_lo = sample_variance_se(low)
    z = z_for(FALSE_ALARM, tests * v_hi.numel())
    margin = z * (se_hi.square() + se_lo.square()).sqrt()
    assert bool((v_hi - v_lo > margin).all()), f"variances {v_hi.tolist()} not above {v_lo.tolist()} by z·SE"


def assert_same_mean(a: Tensor, b: Tensor, *, tests: int = 1) -> None:
    """Two independent sets of draws have equal means per coordinate, within z·SE of the difference."""
    se = (a.var(0) / a.shape[0] + b.var(0) / b.shape[0]).sqrt()
    z = z_for(FALSE_ALARM, tests * se.numel())
    off = (a.mean(0) - b.mean(0)).abs() > z * se + _rounding(a.mean(0))
    assert not off.any(), f"means differ: {a.mean(0).tolist()} vs {b.mean(0).tolist()} (z={z:.1f})"


# ---------------------------------------------------------------------------------------------------
# ARM and DisARM: exact moments by enumerating the antithetic pair
# ---------------------------------------------------------------------------------------------------


def antithetic_moments(f: Callable[[Tensor], Tensor], logits: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
    """Exact mean and variance ``[d]`` of one ARM and one DisARM pair estimate, by enumeration.

    For each coordinate, the thresholds min(p, 1 − p) ≤ max(p, 1 − p) cut u_j ∈ (0, 1) into three
    intervals on which b_j = 1[u_j < p_j] and b̃_j = 1[1 − u_j < p_j] are constant. On each of the 3^d
    boxes f(b) − f(b̃) is constant, so ARM's moments factorise into ∫(u_j − ½)^k du_j over the
    interval times the other intervals' lengths, and DisARM (a function of (b, b̃) only) is constant.
    """
    p = torch.sigmoid(logits)
    d = p.numel()
    lo, hi = torch.minimum(p, 1 - p), torch.maximum(p, 1 - p)
    cuts = torch.stack([torch.zeros_like(p), lo, hi, torch.ones_like(p)])  # [4, d]
    start, end = cuts[:-1], cuts[1:]  # [3, d]
    length = end - start
    m1 = ((end - 0.5).square() - (start - 0.5).square()) / 2
    m2 = ((end - 0.5).pow(3) - (start - 0.5).pow(3)) / 3
    middle = (start + end) / 2
    weight = torch.sigmoid(logits.abs())
    sums = {k: [torch.zeros(d, dtype=F64) for _ in range(2)] for k in ("arm", "disarm")}
    for box in itertools.product(range(3), repeat=d):
        j = torch.arange(d)
        i = torch.tensor(box)
        u = middle[i, j]
        b, b_anti = (u < p).to(F64), (1 - u < p).to(F64)
        delta = float(f(b.unsqueeze(0)) - f(b_anti.unsqueeze(0)))  # f(b) − f(b̃)
        size = length[i, j]
        others = torch.stack([size[torch.arange(d) != k].prod() for k in range(d)])
        sums["arm"][0] += -delta * m1[i, j] * others
        sums["arm"][1] += delta**2 * m2[i, j] * others
        g = 0.5 * delta * (1 - 2 * b_anti) * (b != b_anti).to(F64) * weight
        sums["disarm"][0] += size.prod() * g
        sums["disarm"][1] += size.prod() * g.square()
    return {k: (m, s - m.square()) for k, (m, s) in sums.items()}


def _table_problem(seed: int, logits: list[float]) -> BernoulliTable:
    problem = BernoulliTable(len(logits), seed=seed)
    problem.logits0 = torch.tensor(logits, dtype=F64)
    return problem


ANTITHETIC_CONFIGS = [
    (0, [0.3, -1.2, 0.8]),
    (1, [0.0, 0.0, 0.0]),
    (2, [2.5, -0.1, 0.05]),
    (3, [-3.0, 1.0]),
    (4, [0.7]),
]


@pytest.mark.parametrize(("seed", "logits"), ANTITHETIC_CONFIGS)
def test_disarm_variance_at_most_arm_exactly(seed: int, logits: list[float]) -> None:
    """The theorem (DisARM is ARM's conditional expectation given the pair), checked on exact moments."""
    problem = _table_problem(seed, logits)
    moments = antithetic_moments(problem.f, problem.logits0)
    exact = problem.exact_gradient()
    for mean, _ in moments.values():  # both unbiased: the enumeration itself is right
        torch.testing.assert_close(mean, exact, rtol=1e-12, atol=1e-12)
    (_, v_arm), (_, v_disarm) = moments["arm"], moments["disarm"]
    assert bool((v_disarm <= v_arm + _rounding(v_arm)).all()), (v_disarm, v_arm)
    assert bool((v_disarm < v_arm).any())


@pytest.mark.parametrize(("label", "factory"), [("arm", ARM), ("disarm", DisARM)])
@pytest.mark.parametrize(("seed", "logits"), [ANTITHETIC_CONFIGS[0], ANTITHETIC_CONFIGS[2]])
def test_antithetic_sample_variance_matches_enumeration(label: str, factory, seed: int, logits: list[float]) -> None:
    """The implementations have the enumerated variances (so the theorem above is about them)."""
    problem = _table_problem(seed, logits)
    _, variance = antithetic_moments(problem.f, problem.logits0)[label]
    draws = _draws(problem, factory, 40_000, seed=100 + seed)
    assert_unbiased(draws, problem.exact_gradient())
    assert_variance(draws, variance)


@pytest.mark.parametrize("problem", [BernoulliToy(0.45), BernoulliToy(0.499), _table_problem(5, [0.0])], ids=repr)
def test_disarm_has_zero_variance_at_one_half(problem: Problem) -> None:
    """In one dimension at p = ½ every pair has b ≠ b̃ and DisARM gives (f(1) − f(0))/4: the exact gradient."""
    exact = problem.exact_gradient()
    draws = _draws(problem, DisARM, 1_000, seed=7)
    assert bool(((draws - exact).abs() <= _rounding(exact)).all())
    arm = _draws(problem, ARM, 1_000, seed=7)
    assert bool((arm.std(0) > 0.1 * exact.abs()).all())  # ARM does vary there


# ---------------------------------------------------------------------------------------------------
# StraightThrough: exact for linear costs, the linearised gradient otherwise
# ---------------------------------------------------------------------------------------------------


def test_straight_through_exact_for_linear_cost_of_independent_one_hot() -> None:
    table = torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    logits = torch.randn(5, 3, 4, generator=torch.Generator().manual_seed(1), dtype=F64).requires_grad_()
    exact = torch.autograd.grad((torch.softmax(logits, -1) * table).sum(), logits)[0]
    for seed in range(3):
        with seeded(seed):
            s = expectation(lambda x: (x * table).sum((-1, -2)) + 1.0,
                            Independent(OneHotCategorical(logits=logits), 1), StraightThrough(), n=2)
        (g,) = torch.autograd.grad(s.sum(), logits)
        assert bool(((g - exact).abs() <= _rounding(exact)).all())


def test_straight_through_bias_for_a_nonlinear_bernoulli_cost() -> None:
    """For f(b) = (b − t)² autograd sees f'(b) = 2(b − t), so E[ĝ] = 2(p − t) p(1 − p), not (1 − 2t) p(1 − p)."""
    problem = BernoulliToy(0.45, logit=0.8)
    draws = _draws(problem, StraightThrough, 20_000, seed=3)
    p = torch.sigmoid(torch.tensor(0.8, dtype=F64))
    predicted = (2 * (p - 0.45) * p * (1 - p)).reshape(1)
    assert_unbiased(draws, predicted)
    with pytest.raises(AssertionError, match="biased at"):
        assert_unbiased(draws, problem.exact_gradient())


def test_straight_through_bias_for_a_nonlinear_one_hot_cost() -> None:
    """For f(x) = (w · x)², E[ĝ] = Jᵀ E[∇f(x)] = Jᵀ 2(w · p) w with J = diag(p) − ppᵀ (softmax's Jacobian)."""
    w = torch.tensor([0.3, -1.2, 0.8, 2.0], dtype=F64)
    logits = [0.5, -0.3, 0.0, 1.0]
    problem = ClosedForm("one-hot-square", lambda a: OneHotCategorical(logits=a), (logits,),
                         lambda x: (x * w).sum(-1).square(), lambda a: (torch.softmax(a, -1) * w.square()).sum(-1))
    p = torch.softmax(torch.tensor(logits, dtype=F64), -1)
    jacobian = torch.diag(p) - torch.outer(p, p)
    predicted = jacobian.T @ (2 * (w @ p) * w)
    draws = _draws(problem, StraightThrough, 20_000, seed=4)
    assert_unbiased(draws, predicted)
    with pytest.raises(AssertionError, match="biased at"):
        assert_unbiased(draws, problem.exact_gradient())


# ---------------------------------------------------------------------------------------------------
# GumbelSoftmax: the relaxed objective, the bias-variance trade-off, robustness
# ---------------------------------------------------------------------------------------------------


def _composite(h: Callable[[Tensor], Tensor], logits: Tensor, temperature: float, pieces: int = 16) -> Tensor:
    """The relaxed moment by a composite rule: 64-node Gauss–Legendre on each of ``pieces`` sub-intervals."""
    x, w = (torch.from_numpy(t) for t in np.polynomial.legendre.leggauss(64))
    edges = torch.linspace(0, 1, pieces + 1, dtype=F64)
    half = (edges[1:] - edges[:-1]).unsqueeze(-1) / 2
    u = ((edges[:-1].unsqueeze(-1) + half) + half * x).reshape(-1)
    weights = (half * w).reshape(-1)
    y = torch.sigmoid((logits.unsqueeze(-1) + torch.log(u) - torch.log1p(-u)) / temperature)
    return (h(y) * weights).sum(-1)


@pytest.mark.parametrize("temperature", [1.0, 0.5, 0.1])
def test_quadrature_of_the_relaxed_objective_is_converged(temperature: float) -> None:
    """The 256-node rule of the registry agrees with a 1024-point composite rule to rounding, in value
    and gradient."""
    logits = torch.tensor([-2.0, 0.0, 0.7, 1.5], dtype=F64, requires_grad=True)

    def h(y: Tensor) -> Tensor:
        return (y - 0.45).square()

    coarse, fine = relaxed_moment(h, logits, temperature), _composite(h, logits, temperature)
    torch.testing.assert_close(coarse, fine, rtol=0, atol=1e-13)
    g_coarse = torch.autograd.grad(coarse.sum(), logits)[0]
    g_fine = torch.autograd.grad(fine.sum(), logits)[0]
    torch.testing.assert_close(g_coarse, g_fine, rtol=0, atol=1e-12)


TEMPERATURES = (1.0, 0.5, 0.1)


def _bias_shrinks(draws: dict[float, Tensor], exact: Tensor) -> None:
    """|bias| falls from each temperature to the next colder one, per coordinate, at z·SE.

    With b_hot, b_cold the biases and s = sign(b_hot): |b_cold| < |b_hot| exactly when both
    s·(b_hot − b_cold) > 0 and s·(b_hot + b_cold) > 0, two linear statistics of the draws. The draws
    share their noise across temperatures (the same seed gives the same noise), so the paired
    differences ĝ_hot − ĝ_cold have a small variance; every mean is tested against z·SE of its own rows.
    """
    pairs = list(itertools.pairwise(TEMPERATURES))
    tests = 3 * len(pairs)
    for hot, cold in pairs:
        sign = torch.sign(draws[hot].mean(0) - exact)
        assert_positive(sign * (draws[hot] - exact), tests=tests, what=f"signed bias at temperature {hot}")
        assert_positive(sign * (draws[hot] - draws[cold]), tests=tests, what=f"b({hot}) − b({cold})")
        assert_positive(sign * (draws[hot] + draws[cold] - 2 * exact), tests=tests, what=f"b({hot}) + b({cold})")


def _variance_grows(problem: Problem, factory: Callable[[float], Estimator], r: int) -> None:
    """Independent draws per temperature: Var(ĝ) rises from each temperature to the next colder one."""
    draws = {t: _draws(problem, lambda t=t: factory(t), r, seed=int(1000 * t) + 17) for t in TEMPERATURES}
    for hot, cold in itertools.pairwise(TEMPERATURES):
        assert_variance_greater(draws[cold], draws[hot], tests=len(TEMPERATURES) - 1)


def test_gumbel_softmax_bias_shrinks_and_variance_grows_as_temperature_falls_binary() -> None:
    """Bernoulli toy E[(b − 0.45)²] at logit −2: GumbelSoftmax is unbiased for the relaxed gradient at each
    temperature (quadrature), and that gradient approaches the true one as τ falls, while the variance grows."""
    logit, r = -2.0, 100_000
    true = BernoulliToy(0.45, logit=logit).exact_gradient()
    draws, relaxed = {}, {}
    for t in TEMPERATURES:
        problem = relaxed_toy(0.45, logit, t)
        relaxed[t] = problem.exact_gradient()
        draws[t] = _draws(problem, lambda t=t: GumbelSoftmax(t), r, seed=11)  # common random numbers
        assert_unbiased(draws[t], relaxed[t])
    biases = [float((relaxed[t] - true).abs()) for t in TEMPERATURES]
    assert biases == sorted(biases, reverse=True), biases  # the exact relaxed biases, by quadrature
    _bias_shrinks(draws, true)
    _variance_grows(relaxed_toy(0.45, logit, 1.0), GumbelSoftmax, 20_000)


_CAT_TABLE = torch.tensor([0.3, -1.2, 0.8, 2.0], dtype=F64)


def _categorical_square() -> ClosedForm:
    """E[(w · x − ½)² + 3 x₀x₁] over one-hot x (the product vanishes on one-hot points, not on relaxed ones)."""
    w = _CAT_TABLE
    return ClosedForm(
        "one-hot-nonlinear", one_hot, ([0.5, -0.3, 0.0, 1.0],),
        lambda x: ((x * w).sum(-1) - 0.5).square() + 3 * x[..., 0] * x[..., 1],
        lambda a: (torch.softmax(a, -1) * (w - 0.5).square()).sum(-1),
    )


def test_gumbel_softmax_bias_shrinks_and_variance_grows_as_temperature_falls_categorical() -> None:
    problem = _categorical_square()
    exact = problem.exact_gradient()
    draws = {t: _draws(problem, lambda t=t: GumbelSoftmax(t), 100_000, seed=12) for t in TEMPERATURES}
    _bias_shrinks(draws, exact)
    _variance_grows(problem, GumbelSoftmax, 20_000)


FAMILIES: dict[str, Callable[[Tensor], Distribution]] = {
    "bernoulli": lambda a: Bernoulli(logits=a),
    "bernoulli(probs)": lambda a: Bernoulli(probs=torch.sigmoid(a)),
    "independent-bernoulli": lambda a: Independent(Bernoulli(logits=a), 1),
    "categorical": lambda a: Categorical(logits=torch.stack([a, -a, 2 * a], -1)),
    "one-hot": lambda a: OneHotCategorical(logits=torch.stack([a, -a, 2 * a], -1)),
    "independent-one-hot": lambda a: Independent(OneHotCategorical(logits=torch.stack([a, -a, 2 * a], -1)), 1),
}


def _smooth_cost(x: Tensor, batch_shape: torch.Size) -> Tensor:
    """A smooth cost of the (relaxed) points ``[n, *B, *E]`` -> ``[n, *B]``."""
    flat = x.reshape(x.shape[0], *batch_shape, -1)
    weights = torch.linspace(-1.0, 2.0, flat.shape[-1], dtype=x.dtype)
    return (torch.sin(3 * flat * weights) + (flat - 0.3).square()).sum(-1)


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=str)
@pytest.mark.parametrize("temperature", [1e-4, 1e-3])
@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("rule", ["soft", "hard", "rao"])
def test_no_nan_at_tiny_temperature(rule: str, family: str, temperature: float, dtype: torch.dtype) -> None:
    """Values, gradients and relaxed log-densities stay finite; float32 warns (float64 does not)."""
    logits = (4 * torch.randn(5, 4, generator=torch.Generator().manual_seed(0), dtype=F64)).to(dtype)
    logits.requires_grad_()
    dist = FAMILIES[family](logits)
    est = {"soft": GumbelSoftmax(temperature), "hard": GumbelSoftmax(temperature, hard=True),
           "rao": GumbelRao(8, temperature=temperature)}[rule]

    def f(x: Tensor) -> Tensor:
        return _smooth_cost(x, dist.batch_shape)

    with seeded(0):
        if dtype == torch.float32:
            with pytest.warns(UserWarning, match=f"temperature={temperature:g}"):
                s = expectation(f, dist, est, n=64)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                s = expectation(f, dist, est, n=64)
        draw = est.draw(dist, 64)
    (g,) = torch.autograd.grad(s.sum(), logits, retain_graph=True)
    assert s.dtype == g.dtype == dtype
    assert bool(torch.isfinite(s).all()) and bool(torch.isfinite(g).all())
    assert bool(((draw.points >= 0) & (draw.points <= 1)).all())
    if isinstance(est, GumbelSoftmax):
        log_prob = est.relaxed_log_prob(draw)
        assert log_prob.shape == (64, *dist.batch_shape) and log_prob.dtype == dtype
        assert bool(torch.isfinite(log_prob).all())
        (g,) = torch.autograd.grad(log_prob.sum(), logits)
        assert bool(torch.isfinite(g).all())


@pytest.mark.parametrize("family", list(FAMILIES))
def test_relaxed_log_prob_matches_torch_where_torch_is_finite(family: str) -> None:
    logits = torch.randn(5, 4, generator=torch.Generator().manual_seed(2), dtype=F64)
    dist = FAMILIES[family](logits)
    est = GumbelSoftmax(0.5)
    with seeded(1):
        draw = est.draw(dist, 6)
    leaf = dist.base_dist if isinstance(dist, Independent) else dist
    temperature = torch.tensor(0.5, dtype=F64)
    if isinstance(leaf, Bernoulli):
        relaxed: Distribution = RelaxedBernoulli(temperature, logits=leaf.logits)
    else:
        relaxed = RelaxedOneHotCategorical(temperature, logits=leaf.logits)
    if isinstance(dist, Independent):
        relaxed = Independent(relaxed, 1)
    torch.testing.assert_close(est.relaxed_log_prob(draw), relaxed.log_prob(draw.soft))


@pytest.mark.parametrize("family", ["bernoulli", "one-hot", "categorical"])
def test_hard_gumbel_samples_are_exact_samples(family: str) -> None:
    """Gumbel-max and the logistic threshold draw the distribution itself: frequencies within z·SE."""
    logits = torch.tensor([0.4, -1.3], dtype=F64)
    dist = FAMILIES[family](logits)
    with seeded(5):
        x = GumbelSoftmax(0.5, hard=True).draw(dist, 40_000).values
    probs = dist.probs.reshape(x.shape[1:])
    assert_unbiased(x.reshape(x.shape[0], -1), probs.reshape(-1))


# ---------------------------------------------------------------------------------------------------
# The noise helpers shared with REBAR/RELAX (_gumbel.py)
# ---------------------------------------------------------------------------------------------------


def _class_moments(index: Tensor, z: Tensor, classes: int) -> Tensor:
    """Per draw ``[N, ...]``: 1[i = c], z_k·1[i = c] and z_k²·1[i = c] for every class c and coordinate k."""
    at = torch.nn.functional.one_hot(index, classes).to(F64).unsqueeze(-1)  # [N, *S, C, 1]
    z = (z if z.dim() > index.dim() else z.unsqueeze(-1)).unsqueeze(-2)  # [N, *S, 1, K]
    n = index.shape[0]
    return torch.cat([at.reshape(n, -1), (at * z).reshape(n, -1), (at * z.square()).reshape(n, -1)], 1)


def test_conditional_gumbel_gives_the_joint_distribution() -> None:
    """(argmax, perturbed logits) drawn jointly vs. argmax ∼ Categorical then conditional noise: per class,
    the same probability and the same first and second moments of every coordinate (two-sample z·SE)."""
    logits = torch.tensor([[0.5, -1.0, 2.0, 0.0], [3.0, -3.0, 0.0, 0.1]], dtype=F64)
    r = 100_000
    with seeded(41):
        z = logits + gumbel((r, *logits.shape), dtype=F64)
        index = z.argmax(-1)
        other = Categorical(logits=logits).sample((r,))
        z_cond = logits + conditional_gumbel(logits, other)
    assert torch.equal(z_cond.argmax(-1), other)
    assert_same_mean(_class_moments(index, z, 4), _class_moments(other, z_cond, 4))


def test_conditional_logistic_gives_the_joint_distribution() -> None:
    logits = torch.tensor([0.7, -2.0, 0.0, 4.0], dtype=F64)
    r = 100_000
    with seeded(42):
        z = logits + logistic((r, 4), dtype=F64)
        bits = (z > 0).long()
        other = Bernoulli(logits=logits).sample((r,))
        z_cond = logits + conditional_logistic(logits, other)
    assert torch.equal((z_cond > 0).long(), other.long())
    assert_same_mean(_class_moments(bits, z, 2), _class_moments(other.long(), z_cond, 2))


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=str)
def test_noise_is_finite_and_differentiable_at_extreme_logits(dtype: torch.dtype) -> None:
    logits = torch.tensor([[-80.0, 0.0, 80.0], [30.0, -30.0, 1e-3]], dtype=dtype, requires_grad=True)
    with seeded(43):
        z = logits + conditional_gumbel(logits, torch.tensor([0, 1]).expand(1000, 2))
        b = torch.tensor([1.0, 0.0, 1.0], dtype=dtype).expand(1000, 2, 3)
        y = logits + conditional_logistic(logits, b)
        noise = [gumbel((1000, 3), dtype=dtype), logistic((1000, 3), dtype=dtype)]
    for t in (z, y, *noise):
        assert bool(torch.isfinite(t).all())
    assert torch.equal(z.argmax(-1), torch.tensor([0, 1]).expand(1000, 2))
    assert torch.equal((y > 0).to(dtype), b)
    (g,) = torch.autograd.grad(z.sum() + y.sum(), logits)
    assert bool(torch.isfinite(g).all())



@pytest.mark.parametrize("dtype", [torch.float32, F64, torch.float16, torch.bfloat16], ids=str)
def test_uniform_noise_is_torch_rand_with_its_zeros_moved_into_the_open_interval(dtype: torch.dtype) -> None:
    # bfloat16's and float16's grids are coarse enough that 10⁵ draws of torch.rand include exact zeros
    with seeded(5):
        reference = torch.rand(100_000, dtype=dtype)
    with seeded(5):
        u = uniform((100_000,), dtype=dtype)
    tiny = torch.finfo(dtype).tiny
    low = reference < tiny  # exact zeros (and float16's subnormals)
    assert torch.equal(u[~low], reference[~low])
    assert bool((u[low] == tiny).all())
    assert bool((u > 0).all()) and bool((u < 1).all())
    generator = torch.Generator().manual_seed(5)
    assert torch.equal(uniform((100_000,), dtype=dtype, generator=generator), u)


@pytest.mark.parametrize("family", ["bernoulli", "categorical"])
@pytest.mark.parametrize("hard", [False, True])
def test_gumbel_softmax_draws_exact_sample_is_that_of_its_perturbed_logits(family: str, hard: bool) -> None:
    logits = torch.randn(5, 4, generator=torch.Generator().manual_seed(2), requires_grad=True)
    dist = Bernoulli(logits=logits) if family == "bernoulli" else OneHotCategorical(logits=logits)
    with seeded(6):
        draw = GumbelSoftmax(0.5, hard=hard).draw(dist, 3)
    perturbed = (logits + draw.noise).detach()
    with torch.no_grad():
        logits.add_(50.0)  # an optimiser step between the draw and the read changes nothing drawn
    if family == "bernoulli":
        expected = (perturbed > 0).float()
    else:
        expected = torch.nn.functional.one_hot(perturbed.argmax(-1), 4).float()
    assert torch.equal(draw.hard, expected) and not draw.hard.requires_grad
    assert torch.equal(draw.points, expected if hard else draw.soft)

# ---------------------------------------------------------------------------------------------------
# GumbelRao: the mean of straight-through Gumbel, lower variance
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.5, 0.1])
@pytest.mark.parametrize("problem", [BernoulliToy(0.45, logit=-1.0), _categorical_square()], ids=repr)
def test_gumbel_rao_same_mean_lower_variance_than_straight_through_gumbel(problem: Problem, temperature: float) -> None:
    r = 20_000
    st = _draws(problem, lambda: GumbelSoftmax(temperature, hard=True), r, seed=21)
    rao = _draws(problem, lambda: GumbelRao(10, temperature=temperature), r, seed=22)
    rao_1 = _draws(problem, lambda: GumbelRao(1, temperature=temperature), r, seed=23)
    assert_same_mean(rao, st, tests=2)
    assert_same_mean(rao_1, st, tests=2)
    assert_variance_greater(st, rao)
    # k = 1 is straight-through Gumbel itself: the same variance (two-sided, at z·SE).
    (v_st, se_st), (v_1, se_1) = sample_variance_se(st), sample_variance_se(rao_1)
    z = z_for(FALSE_ALARM, v_st.numel())
    assert bool(((v_st - v_1).abs() <= z * (se_st.square() + se_1.square()).sqrt()).all())


# ---------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf")])
@pytest.mark.parametrize("make", [GumbelSoftmax, lambda t: GumbelRao(3, temperature=t)], ids=["gumbel", "rao"])
def test_bad_temperature(make, temperature: float) -> None:
    with pytest.raises(ValueError, match=f"temperature={temperature}.*must be a finite float > 0"):
        make(temperature)


def test_temperature_is_checked_when_annealed() -> None:
    est = GumbelSoftmax(0.5)
    est.temperature = torch.tensor(0.3)
    assert est.temperature == pytest.approx(0.3)
    with pytest.raises(ValueError, match="GumbelSoftmax: temperature=0.0 must be a finite float > 0"):
        est.temperature = 0.0
    with pytest.raises(TypeError, match="GumbelSoftmax: temperature='0.5'"):
        GumbelSoftmax("0.5")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="GumbelSoftmax: hard='yes'"):
        GumbelSoftmax(0.5, hard="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize(("k", "error"), [(0, ValueError), (-2, ValueError), (2.5, TypeError), (True, TypeError)])
def test_bad_k(k, error: type) -> None:
    with pytest.raises(error, match=f"GumbelRao: k={k}"):
        GumbelRao(k)


UNSUPPORTED = [
    (lambda: GumbelSoftmax(0.5), Normal(torch.zeros(2), 1.0), "GumbelSoftmax: dist=Normal.*Pathwise"),
    (lambda: GumbelRao(4), Gamma(torch.ones(2), 1.0), "GumbelRao: dist=Gamma.*Pathwise"),
    (StraightThrough, Poisson(torch.ones(2)), "StraightThrough: dist=Poisson.*straight_through"),
    (ARM, Categorical(logits=torch.zeros(2, 3)), "ARM: dist=Categorical.*REBAR.*UnorderedSet"),
    (DisARM, Independent(OneHotCategorical(logits=torch.zeros(2, 3)), 1), "DisARM: dist=Independent.*RELAX"),
    (ARM, Normal(torch.zeros(2), 1.0), "ARM: dist=Normal.*Pathwise"),
    (MeasureValued, Gamma(torch.ones(2), 1.0), "MeasureValued: dist=Gamma.*Normal, Bernoulli and Poisson"),
    (MeasureValued, Categorical(logits=torch.zeros(3)), "MeasureValued: dist=Categorical.*ScoreFunction"),
]


@pytest.mark.parametrize(("factory", "dist", "match"), UNSUPPORTED, ids=[m.split(":")[0] for *_, m in UNSUPPORTED])
def test_unsupported_family(factory, dist: Distribution, match: str) -> None:
    with pytest.raises(NotImplementedError, match=match):
        expectation(lambda x: x.reshape(4, *dist.batch_shape, -1).sum(-1).float(), dist, factory(), n=4)


def test_low_precision_warning_only_where_risky() -> None:
    logits = torch.zeros(3, dtype=torch.float32, requires_grad=True)
    with pytest.warns(UserWarning, match=r"GumbelSoftmax: temperature=0.01 with torch.float32 .* float64") as record:
        expectation(lambda x: x, Bernoulli(logits=logits), GumbelSoftmax(0.01), n=2)
    assert record[0].filename == __file__  # points at the caller
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        expectation(lambda x: x, Bernoulli(logits=logits), GumbelSoftmax(0.05), n=2)
        expectation(lambda x: x, Bernoulli(logits=logits.double()), GumbelSoftmax(0.01), n=2)


# ---------------------------------------------------------------------------------------------------
# The contract: values, shapes, dtypes, and the gradient of the hand-written rule on the same draw
# ---------------------------------------------------------------------------------------------------


class Spy:
    def __init__(self, f: Callable[[Tensor], Tensor]) -> None:
        self.f, self.inputs, self.outputs = f, [], []

    def __call__(self, x: Tensor) -> Tensor:
        y = self.f(x)
        self.inputs.append(x.detach())
        self.outputs.append(y.detach())
        return y


def _bernoulli_setup(family: str = "bernoulli"):
    logits = torch.randn(2, 3, generator=torch.Generator().manual_seed(9), dtype=F64).requires_grad_()
    dist = FAMILIES[family](logits)
    if family == "bernoulli":
        f = Spy(lambda x: (x - 0.45).square() + 0.1 * x.cumsum(-1))
    else:
        f = Spy(lambda x: torch.cos(x @ torch.tensor([1.0, -2.0, 0.5], dtype=F64)))
    return logits, dist, f


@pytest.mark.parametrize("family", ["bernoulli", "independent-bernoulli"])
@pytest.mark.parametrize("rule", ["arm", "disarm"])
def test_antithetic_gradient_is_the_hand_written_rule(rule: str, family: str) -> None:
    logits, dist, f = _bernoulli_setup(family)
    est = ARM() if rule == "arm" else DisARM()
    n = 4
    with seeded(0):
        u = est.draw(dist, n).u
    with seeded(0):
        s = expectation(f, dist, est, n=n)
    (g,) = torch.autograd.grad(s.sum(), logits)
    p = torch.sigmoid(logits.detach())
    b, b_anti = (u < p).to(F64), (1 - u < p).to(F64)
    x, cost = f.inputs[0], f.outputs[0]
    assert torch.equal(x, torch.cat([b, b_anti]))
    diff = cost[:n] - cost[n:]
    if family != "bernoulli":
        diff = diff.unsqueeze(-1)
    if rule == "arm":
        per_pair = -diff * (u - 0.5)
    else:
        per_pair = 0.5 * diff * (1 - 2 * b_anti) * (b != b_anti).to(F64) * torch.sigmoid(logits.detach().abs())
    torch.testing.assert_close(g, per_pair.mean(0), rtol=1e-12, atol=1e-14)


def test_measure_valued_gradient_is_the_hand_written_rule_for_normal() -> None:
    """Rebuild each point from the exact sample and W, M, and recompute the estimator by hand."""
    loc0 = torch.tensor([[0.3, -1.0, 0.5]], dtype=F64)
    scale0 = torch.tensor([[1.2, 0.4, 2.0]], dtype=F64)
    loc, scale = loc0.clone().requires_grad_(), scale0.clone().requires_grad_()
    w = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    f = Spy(lambda x: torch.cos(x @ w) + x.sum(-1))
    n, d = 3, 3
    s = expectation(f, Independent(Normal(loc, scale), 1), MeasureValued(), n=n)
    grads = torch.autograd.grad(s.sum(), (loc, scale))
    x, cost = f.inputs[0], f.outputs[0]
    assert x.shape == (n * (1 + 3 * d), 1, d)
    exact_x = x[:n]
    blocks = x[n:].reshape(3, d, n, 1, d)
    c = cost[n:].reshape(3, d, n, 1)
    g_loc, g_scale = torch.zeros(1, d, dtype=F64), torch.zeros(1, d, dtype=F64)
    for j in range(d):
        others = [k for k in range(d) if k != j]
        for block in range(3):  # coordinate j replaced, the others from the exact sample
            assert torch.equal(blocks[block, j][..., others], exact_x[..., others])
        weibull = (blocks[1, j][..., j] - loc0[..., j]) / scale0[..., j]
        torch.testing.assert_close((blocks[2, j][..., j] - loc0[..., j]) / scale0[..., j], -weibull)
        assert bool((weibull > 0).all())
        sigma = scale0[..., j]
        g_loc[..., j] = ((c[1, j] - c[2, j]) / (sigma * math.sqrt(2 * math.pi))).mean(0)
        g_scale[..., j] = ((c[0, j] - cost[:n]) / sigma).mean(0)
    torch.testing.assert_close(grads[0], g_loc, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grads[1], g_scale, rtol=1e-12, atol=1e-14)


def test_measure_valued_gradient_is_the_hand_written_rule_for_bernoulli_and_poisson() -> None:
    logits, dist, f = _bernoulli_setup("independent-bernoulli")
    n, d = 2, 3
    s = expectation(f, dist, MeasureValued(), n=n)
    (g,) = torch.autograd.grad(s.sum(), logits)
    x, cost = f.inputs[0], f.outputs[0]
    c = cost[n:].reshape(d, n, 2)
    p = torch.sigmoid(logits.detach())
    expected = torch.zeros_like(p)
    for j in range(d):
        sign = 1 - 2 * x[:n][..., j]
        expected[..., j] = (sign * (c[j] - cost[:n])).mean(0) * p[..., j] * (1 - p[..., j])
    torch.testing.assert_close(g, expected, rtol=1e-12, atol=1e-14)

    rate = torch.tensor([0.5, 2.0, 4.0], dtype=F64, requires_grad=True)
    f = Spy(torch.cos)
    s = expectation(f, Poisson(rate), MeasureValued(), n=5)
    (g,) = torch.autograd.grad(s.sum(), rate)
    x, cost = f.inputs[0], f.outputs[0]
    assert torch.equal(x[5:], x[:5] + 1)
    torch.testing.assert_close(g, (cost[5:] - cost[:5]).mean(0), rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------------------------------
# Graphs
# ---------------------------------------------------------------------------------------------------

_W = torch.tensor(1.3, dtype=F64)


def _normal(loc: Tensor) -> Distribution:
    return Normal(loc, torch.exp(0.3 * loc))


def _upstream_problem(kind: str) -> tuple[Callable[..., Tensor], list[Tensor], Callable[..., Tensor]]:
    """z (the node under test) feeds y ∼ N(μ + 2z, 1) (pathwise); cost (y − 1)². Returns the graph's
    loss for replicated parameters, the parameters, and the exact objective."""
    if kind == "normal":
        def node(a: Tensor, s: Tensor) -> Distribution:
            return Normal(a, s)

        def objective(a: Tensor, s: Tensor, mu: Tensor) -> Tensor:  # y = μ + 2z + ε
            return (mu + 2 * a - 1).square() + 4 * s.square() + 1

        params = [torch.tensor(0.4, dtype=F64), torch.tensor(0.8, dtype=F64), torch.tensor(-0.2, dtype=F64)]
    else:
        def node(a: Tensor) -> Distribution:  # type: ignore[misc]
            return Bernoulli(logits=a)

        def objective(a: Tensor, mu: Tensor) -> Tensor:  # type: ignore[misc]
            p = torch.sigmoid(a)
            return (1 - p) * ((mu - 1).square() + 1) + p * ((mu + 1).square() + 1)

        params = [torch.tensor(0.7, dtype=F64), torch.tensor(0.3, dtype=F64)]
    return node, params, objective


@pytest.mark.parametrize(
    ("factory", "kind"),
    [(ARM, "bernoulli"), (DisARM, "bernoulli"), (MeasureValued, "bernoulli"), (MeasureValued, "normal")],
    ids=["arm", "disarm", "measure-valued-bernoulli", "measure-valued-normal"],
)
def test_node_upstream_of_a_pathwise_node_is_unbiased(factory, kind: str) -> None:
    """The node's correction receives the downstream cost (averaged over y's samples): exact on average."""
    node, params, objective = _upstream_problem(kind)
    r = 20_000
    leaves = [p.expand(r).clone().requires_grad_() for p in params]
    with seeded(31), Graph() as g:
        z = g.sample("z", node(*leaves[:-1]), factory(), n=2)
        y = g.sample("y", Normal(leaves[-1] + 2 * z, 1.0), n=2)
        g.cost((y - 1).square())
    draws = torch.stack(torch.autograd.grad(g.loss(), leaves), 1)
    exact_params = [p.clone().requires_grad_() for p in params]
    exact = torch.stack(torch.autograd.grad(objective(*exact_params), exact_params))
    assert_unbiased(draws, exact)
