"""REBAR, RELAX and UnorderedSet beyond the registry (``cases_rebar_relax.py`` checks unbiasedness).

- Gradients by hand: on one draw, each estimator's gradient equals the paper's formula recomputed
  independently (REBAR and RELAX for bits with the conditional noise's derivative in closed form;
  UnorderedSet with its set probabilities by brute force over permutations), and so do the gradients
  of a parameter inside f and of RELAX's control (∂‖ĝ‖²/∂φ). REBAR(τ, η) is RELAX with the control
  η f(σ_τ(z)) on the same noise, and RELAX then trains η and τ.
- RELAX: the surrogate's value is the mean of f at the exact samples, whatever the control's training
  term; training the control on its variance loss lowers the estimator's variance (z·SE comparison of
  the trace of the covariance, same problem, same control before and after).
- REBAR(learn=True): the value is unchanged; θ's gradient is REBAR's, and η, log τ get exactly what
  RELAX gives the control η f(σ_τ(z)); a parameter inside f gets ∇ψ f(b) only; a few optimiser steps
  on η lower the variance (z·SE); the parameters round-trip through ``state_dict``.
- The harness has power: a REBAR without its pathwise correction, and an unordered-set baseline
  without its own term, are caught as biased.
- Bad input gives the documented errors; every estimator works as a node of a ``Graph``: a one-node
  graph equals ``expectation`` on the same seed, and a node upstream of a pathwise node gives the
  exact gradient on average.

Every statistical comparison is at z·SE with z from a false-alarm rate, never an epsilon.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import math
import warnings
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, Categorical, Distribution, Independent, Normal, OneHotCategorical

from gradest import Graph, expectation
from gradest.estimators.base import Draw, Estimator
from gradest.estimators.rebar_relax import REBAR, RELAX
from gradest.estimators.unordered import UnorderedSet
from gradest.problems import BernoulliTable, BernoulliToy, CategoricalTable, Problem, gradient_draws
from gradest.testing import assert_unbiased, surrogate, z_for
from tests.estimators.cases import seeded
from tests.estimators.cases_rebar_relax import EventMLP, MultilinearBernoulliTable

F64 = torch.float64
FALSE_ALARM = 1e-6


def _rounding(x: Tensor) -> Tensor:
    return 64 * torch.finfo(F64).eps * x.abs().clamp_min(1.0)


def _close(actual: Tensor, expected: Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------------
# Gradients by hand, on one draw (bits: the conditional noise's derivative in closed form)
# ---------------------------------------------------------------------------------------------------


def conditional_derivative(logits: Tensor, b: Tensor, z_tilde: Tensor) -> Tensor:
    r"""dz̃/dℓ with the conditional uniform held fixed, from the point z̃ itself.

    z̃ = ℓ + logit(U) with U = 1 − pV given b = 1 and U = (1 − p)V given b = 0 (V uniform), so
    dU/dℓ = −(1 − p)(1 − U) resp. −pU, and dz̃/dℓ = 1 + (dU/dℓ)/(U(1 − U)) = 1 − (1 − p)/U resp.
    1 − p/(1 − U), with U = σ(z̃ − ℓ).
    """
    p = torch.sigmoid(logits)
    u = torch.sigmoid(z_tilde - logits)
    return torch.where(b > 0, 1 - (1 - p) / u, 1 - p / (1 - u))


T = 0.45


def _bits(seed: int = 0, batch: tuple[int, ...] = (4,)) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, generator=g, dtype=F64).requires_grad_()
    w = torch.tensor(1.7, dtype=F64, requires_grad=True)  # a parameter inside f (a "decoder")
    return logits, w


@pytest.mark.parametrize(("temperature", "eta"), [(0.5, 1.0), (0.2, 0.6)])
def test_rebar_gradient_by_hand(temperature: float, eta: float) -> None:
    logits, w = _bits()
    est = REBAR(temperature=temperature, eta=eta)
    n = 5
    with seeded(1):
        draw = est.draw(Bernoulli(logits=logits), n)
    cost = w * (draw.points - T).square()
    s = surrogate(est, draw, cost)
    b, y, y_tilde = draw.points.detach().split(n)
    _close(s, (w * (b - T).square()).mean(0))  # value: the mean of f at the exact samples
    g_logits, g_w = torch.autograd.grad(s.sum(), (logits, w))

    ell = logits.detach()
    p = torch.sigmoid(ell)
    z_tilde = draw.z_tilde.detach()
    wd = w.detach()
    f_b, f_tilde = wd * (b - T).square(), wd * (y_tilde - T).square()
    dy = y * (1 - y) / temperature  # dσ(z/τ)/dz
    dy_tilde = y_tilde * (1 - y_tilde) / temperature * conditional_derivative(ell, b, z_tilde)
    expected = ((f_b - eta * f_tilde) * (b - p)
                + eta * 2 * wd * (y - T) * dy - eta * 2 * wd * (y_tilde - T) * dy_tilde).mean(0)
    _close(g_logits, expected)
    # f's own parameter: ∇ψ f(b) plus η(∇ψ f(σ(z)) − ∇ψ f(σ(z̃))), which has mean zero.
    _close(g_w, ((b - T).square() + eta * ((y - T).square() - (y_tilde - T).square())).mean(0).sum())


class Quadratic(nn.Module):
    """c(z) = a·tanh(z)² + β·z: a control with two parameters, for gradients by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(0.8, dtype=F64))
        self.beta = nn.Parameter(torch.tensor(-0.3, dtype=F64))

    def forward(self, z: Tensor) -> Tensor:
        return self.a * torch.tanh(z).square() + self.beta * z


def _relax_by_hand(control: nn.Module, logits: Tensor, draw: Draw, f_b: Tensor) -> Tensor:
    """ĝ of RELAX ``[*B]`` as a differentiable function of the control's parameters."""
    ell = logits.detach()
    p = torch.sigmoid(ell)
    b = draw.points.detach()
    z = draw.z.detach().requires_grad_()
    z_tilde = draw.z_tilde.detach().requires_grad_()
    c_z, c_tilde = control(z), control(z_tilde)
    (dc_z,) = torch.autograd.grad(c_z.sum(), z, create_graph=True)
    (dc_tilde,) = torch.autograd.grad(c_tilde.sum(), z_tilde, create_graph=True)
    dz_tilde = conditional_derivative(ell, b, z_tilde.detach())
    return ((f_b - c_tilde) * (b - p) + dc_z - dc_tilde * dz_tilde).mean(0)


def test_relax_gradients_by_hand_and_value_unchanged() -> None:
    logits, w = _bits()
    control = Quadratic()
    est = RELAX(control)
    n = 6
    with seeded(2):
        draw = est.draw(Bernoulli(logits=logits), n)
    cost = w * (draw.points - T).square()
    s = surrogate(est, draw, cost)
    # The value is exactly the mean of f at the exact samples: the control's training term adds 0.
    assert torch.equal(s, cost.mean(0))
    grads = torch.autograd.grad(s.sum(), (logits, w, control.a, control.beta))

    g = _relax_by_hand(control, logits, draw, (w * (draw.points - T).square()).detach())
    _close(grads[0], g.detach())
    _close(grads[1], (draw.points - T).square().mean(0).sum())  # f's parameter: ∇ψ f(b) only
    expected_phi = torch.autograd.grad(g.square().sum(), (control.a, control.beta))
    _close(grads[2], expected_phi[0])
    _close(grads[3], expected_phi[1])


def test_relax_variance_loss_never_reaches_fs_parameters() -> None:
    """A control that calls f (REBAR-style, c = η f(σ(z/τ))) with f's parameter w not registered in
    it: w receives ∇_w f(b) only, and the control's own parameter η gets ∂‖ĝ‖²/∂η."""
    logits, w = _bits(3)

    class FAtRelaxed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.eta = nn.Parameter(torch.tensor(0.9, dtype=F64))

        def forward(self, z: Tensor) -> Tensor:
            return self.eta * w * (torch.sigmoid(z / 0.5) - T).square()

    control = FAtRelaxed()
    est = RELAX(control)
    with seeded(3):
        draw = est.draw(Bernoulli(logits=logits), 4)
    cost = w * (draw.points - T).square()
    s = surrogate(est, draw, cost)
    g_logits, g_w, g_eta = torch.autograd.grad(s.sum(), (logits, w, control.eta))
    _close(g_w, (draw.points - T).square().mean(0).sum())
    g = _relax_by_hand(control, logits, draw, cost.detach())
    _close(g_logits, g.detach())
    _close(g_eta, torch.autograd.grad(g.square().sum(), control.eta)[0])


class REBARControl(nn.Module):
    """c(z) = η f(σ(z / τ)) with learnable η and log τ: REBAR's control, as a RELAX control."""

    def __init__(self, f: Callable[[Tensor], Tensor], temperature: float, eta: float, *, event: bool) -> None:
        super().__init__()
        self.f, self.event = f, event
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature), dtype=F64))
        self.eta = nn.Parameter(torch.tensor(eta, dtype=F64))

    def forward(self, z: Tensor) -> Tensor:
        scores = z / self.log_temperature.exp()
        return self.eta * self.f(torch.softmax(scores, -1) if self.event else torch.sigmoid(scores))


@pytest.mark.parametrize("family", ["bernoulli", "one-hot"])
def test_rebar_is_relax_with_its_control(family: str) -> None:
    """REBAR(τ, η) and RELAX with c(z) = η f(σ_τ(z)) give the same θ-gradient on the same noise, and
    RELAX trains η and τ (the paper's online tuning) in the same backward."""
    g = torch.Generator().manual_seed(12)
    if family == "bernoulli":
        logits = torch.randn(3, generator=g, dtype=F64).requires_grad_()
        make: type[Bernoulli | OneHotCategorical] = Bernoulli

        def f(x: Tensor) -> Tensor:
            return (x - T).square()
    else:
        logits = torch.randn(3, 4, generator=g, dtype=F64).requires_grad_()
        make = OneHotCategorical
        table = torch.randn(4, generator=g, dtype=F64)

        def f(x: Tensor) -> Tensor:
            return torch.sin((x * table).sum(-1))
    with seeded(13):
        rebar = expectation(f, make(logits=logits), REBAR(temperature=0.4, eta=0.7), n=4)
    control = REBARControl(f, 0.4, 0.7, event=family != "bernoulli")
    with seeded(13):
        relax = expectation(f, make(logits=logits), RELAX(control), n=4)
    _close(relax.detach(), rebar.detach())
    _close(torch.autograd.grad(relax.sum(), logits, retain_graph=True)[0],
           torch.autograd.grad(rebar.sum(), logits)[0])
    g_tau, g_eta = torch.autograd.grad(relax.sum(), (control.log_temperature, control.eta))
    assert bool(g_tau != 0) and bool(g_eta != 0)


class Spy:
    """Wraps f and records the points it is called at and what it returns."""

    def __init__(self, f: Callable[[Tensor], Tensor]) -> None:
        self.f, self.inputs, self.outputs = f, [], []  # type: ignore[var-annotated]

    def __call__(self, x: Tensor) -> Tensor:
        y = self.f(x)
        self.inputs.append(x.detach())
        self.outputs.append(y.detach())
        return y


def _learn_setup(family: str) -> tuple[Tensor, type[Bernoulli | OneHotCategorical], Callable[[Tensor], Tensor]]:
    g = torch.Generator().manual_seed(12)
    if family == "bernoulli":
        logits = torch.randn(3, generator=g, dtype=F64).requires_grad_()
        return logits, Bernoulli, lambda x: (x - T).square()
    logits = torch.randn(3, 4, generator=g, dtype=F64).requires_grad_()
    table = torch.randn(4, generator=g, dtype=F64)
    return logits, OneHotCategorical, lambda x: torch.sin((x * table).sum(-1))


@pytest.mark.parametrize("family", ["bernoulli", "one-hot"])
@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=str)
def test_rebar_learn_is_relax_with_its_control(family: str, dtype: torch.dtype) -> None:
    """REBAR(learn=True) on one draw: the value is the mean of f at the exact samples (the training
    term adds exactly 0); θ gets the gradient REBAR(learn=False) gives at the same η, τ and noise;
    and η, log τ get exactly what RELAX gives the parameters of the control c(z) = η f(σ_τ(z)):
    ∂Σ‖ĝ‖²/∂(η, log τ), checked by hand for that control in the RELAX tests above. ``dtype`` is
    the estimator's parameters' (the logits are float64 either way)."""
    logits, make, f = _learn_setup(family)
    spy = Spy(f)
    est = REBAR(temperature=0.4, eta=0.7, learn=True).to(dtype)
    tau, eta = est.temperature, float(est.eta.detach())  # as rounded to the parameters' dtype
    with seeded(13):
        learned = expectation(spy, make(logits=logits), est, n=4)
    with seeded(13):
        fixed = expectation(f, make(logits=logits), REBAR(temperature=tau, eta=eta), n=4)
    control = REBARControl(f, tau, eta, event=family != "bernoulli")
    with seeded(13):
        relax = expectation(f, make(logits=logits), RELAX(control), n=4)
    (x,), (cost,) = spy.inputs, spy.outputs
    assert x.shape[0] == 12 and learned.dtype == F64
    assert torch.equal(learned.detach(), cost[:4].mean(0))
    _close(learned.detach(), fixed.detach())
    g_learned = torch.autograd.grad(learned.sum(), (logits, est.log_temperature, est.eta))
    g_fixed = torch.autograd.grad(fixed.sum(), logits)[0]
    g_relax = torch.autograd.grad(relax.sum(), (logits, control.log_temperature, control.eta))
    _close(g_learned[0], g_fixed)
    _close(g_learned[0], g_relax[0])
    rtol = 1e-10 if dtype == F64 else 1e-5  # float32 parameters: their gradients are rounded to float32
    for mine, theirs in zip(g_learned[1:], g_relax[1:]):
        assert mine.dtype == dtype and bool(mine != 0)
        torch.testing.assert_close(mine.to(F64), theirs, rtol=rtol, atol=rtol * float(theirs.abs()))


def test_rebar_learn_leaves_fs_parameters_the_exact_sample_gradient() -> None:
    """A parameter ψ inside f gets ∇ψ f(b) only: the relaxed rows feed ĝ and the variance, not ψ."""
    logits, w = _bits(4)
    est = REBAR(temperature=0.5, learn=True).double()
    with seeded(14):
        draw = est.draw(Bernoulli(logits=logits), 5)
    cost = w * (draw.points - T).square()
    s = surrogate(est, draw, cost)
    (g_w,) = torch.autograd.grad(s.sum(), w)
    _close(g_w, (draw.points[:5] - T).square().mean(0).sum())


class MultilinearShiftedTable(MultilinearBernoulliTable):
    """The multilinear BernoulliTable(3) + 3: far from zero, where η = 0 (no control) leaves a large variance."""

    def f(self, b: Tensor) -> Tensor:
        return super().f(b) + 3.0

    def objective(self, logits: Tensor) -> Tensor:
        return super().objective(logits) + 3.0


def test_rebar_learning_eta_lowers_the_variance() -> None:
    """From η = 0 (REINFORCE without a baseline), 20 Adam steps on η alone, each one backward() of
    the surrogate as in training, lower the trace of the covariance of ĝ by many standard errors,
    and the estimator stays unbiased."""
    problem = MultilinearShiftedTable(3)
    r = 20_000
    with seeded(15):
        est = REBAR(temperature=0.5, eta=0.0, learn=True).double()
        log_temperature = est.log_temperature.detach().clone()
        before = gradient_draws(problem, est, replications=r)
        _train_on_variance(est, [est.eta], problem, steps=20, lr=0.1)
        after = gradient_draws(problem, est, replications=r)
    assert torch.equal(est.log_temperature, log_temperature)  # τ was not in the optimiser: untouched
    (v_before, se_before), (v_after, se_after) = _trace_variance(before), _trace_variance(after)
    z = z_for(FALSE_ALARM, 1)
    assert v_before - v_after > z * math.hypot(se_before, se_after), (v_before, v_after)
    assert_unbiased(before, problem.exact_gradient())
    assert_unbiased(after, problem.exact_gradient())


def test_rebar_learn_under_no_grad_is_the_mean_cost() -> None:
    logits, _ = _bits()
    with torch.no_grad():
        s = expectation(lambda b: (b - T).square(), Bernoulli(logits=logits), REBAR(learn=True), n=3)
    assert not s.requires_grad and s.shape == (4,)


def test_rebar_learn_temperature_is_the_parameter() -> None:
    est = REBAR(temperature=0.5, eta=0.3, learn=True)
    assert math.isclose(est.temperature, 0.5, rel_tol=1e-6)
    est.temperature = 0.25  # an annealing schedule writes into the learned parameter
    assert math.isclose(float(est.log_temperature.detach()), math.log(0.25), rel_tol=1e-6)
    assert est.log_temperature.requires_grad and "learn=True" in repr(est)
    with pytest.raises(ValueError, match="REBAR: temperature=-1.0 must be a finite float > 0"):
        est.temperature = -1.0


def test_relax_under_no_grad_is_the_mean_cost() -> None:
    logits, _ = _bits()
    with torch.no_grad():
        s = expectation(lambda b: (b - T).square(), Bernoulli(logits=logits), RELAX(Quadratic()), n=3)
    assert not s.requires_grad and s.shape == (4,)


def _set_probability(p: Tensor, s: list[int], domain: set[int]) -> Tensor:
    """P^{domain}(s): the probability that the first |s| draws without replacement from ``domain``
    (probabilities p renormalised) are the elements of s, in any order; by brute force."""
    total = torch.zeros((), dtype=F64)
    for order in itertools.permutations(s):
        prob, rest = torch.ones((), dtype=F64), p[sorted(domain)].sum()
        for a in order:
            prob, rest = prob * p[a] / rest, rest - p[a]
        total = total + prob
    return total


@pytest.mark.parametrize("family", [Categorical, OneHotCategorical], ids=lambda c: c.__name__)
@pytest.mark.parametrize("k", [1, 2, 3])
def test_unordered_set_by_brute_force(family: type, k: int) -> None:
    size = 5
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(size, generator=g, dtype=F64).requires_grad_()
    table = torch.randn(size, generator=g, dtype=F64)
    w = torch.tensor(0.7, dtype=F64, requires_grad=True)

    def f(x: Tensor) -> Tensor:
        return w * ((x * table).sum(-1) if x.is_floating_point() else table[x])

    est = UnorderedSet(k)
    n = 2
    with seeded(5):
        draw = est.draw(family(logits=logits), n)
    cost = f(draw.points)
    s = surrogate(est, draw, cost)
    g_logits, g_w = torch.autograd.grad(s, (logits, w))

    index = draw.points.argmax(-1) if family is OneHotCategorical else draw.points
    sets = index.reshape(k, n).T.tolist()  # [n, k]: row j·n + i is element j of set i
    p = torch.softmax(logits.detach(), -1)
    domain = set(range(size))
    value, grad, grad_w = torch.zeros((), dtype=F64), torch.zeros(size, dtype=F64), torch.zeros((), dtype=F64)
    for members in sets:
        assert len(set(members)) == k
        total = _set_probability(p, members, domain)
        for s_ in members:
            rest = [x for x in members if x != s_]
            r1 = _set_probability(p, rest, domain - {s_}) / total
            baseline = torch.zeros((), dtype=F64)
            if k > 1:
                for t in members:
                    r2 = 1.0 if t == s_ else (
                        _set_probability(p, [x for x in rest if x != t], domain - {s_, t})
                        / _set_probability(p, rest, domain - {s_})
                    )
                    baseline = baseline + p[t] * r2 * w.detach() * table[t]
            f_s = w.detach() * table[s_]
            value = value + p[s_] * r1 * f_s / n
            grad_p = p[s_] * (torch.eye(size, dtype=F64)[s_] - p)  # ∇_ℓ p(s)
            grad = grad + grad_p * r1 * (f_s - baseline) / n
            grad_w = grad_w + p[s_] * r1 * table[s_] / n
    _close(s.detach(), value)
    _close(g_logits, grad)
    _close(g_w, grad_w)


def test_unordered_set_weights_sum_to_one_and_full_support_is_exact() -> None:
    problem = CategoricalTable(10)
    logits = problem.params(3)[0]
    with seeded(6):
        draw = UnorderedSet(4).draw(Categorical(logits=logits), 5)
    weights = (draw.log_weight.exp() * 5).reshape(4, 5, 3).sum(0)  # log_weight holds p(s)R(S, s)/n
    _close(weights, torch.ones_like(weights))
    with seeded(7):
        s = expectation(problem.f, problem.dist(logits), UnorderedSet(10), n=2)
    exact = problem.objective(logits)
    assert bool(((s - exact).abs() <= _rounding(exact)).all())


# ---------------------------------------------------------------------------------------------------
# RELAX: training the control on its variance loss lowers the variance
# ---------------------------------------------------------------------------------------------------


class ShiftedBernoulliTable(BernoulliTable):
    """BernoulliTable(3) + 3: a cost far from zero, where an untrained control leaves a large variance."""

    def f(self, b: Tensor) -> Tensor:
        return super().f(b) + 3.0

    def objective(self, logits: Tensor) -> Tensor:
        return super().objective(logits) + 3.0


def _trace_variance(draws: Tensor) -> tuple[float, float]:
    """Trace of the covariance of ``draws`` ``[R, D]`` and its SE (from the per-row squared deviations)."""
    r = draws.shape[0]
    t = (draws - draws.mean(0)).square().sum(1)
    return float(t.sum() / (r - 1)), float(t.std() / r**0.5 * r / (r - 1))


def _train_on_variance(est, parameters, problem, *, steps: int, lr: float) -> None:
    """Adam on ``parameters`` for ``steps`` steps, each one backward of the surrogate, as in training."""
    opt = torch.optim.Adam(parameters, lr=lr)
    for _ in range(steps):
        params = problem.params(64)
        s = expectation(problem.f, problem.dist(*params), est, n=1)
        opt.zero_grad()
        s.sum().backward()
        opt.step()


def test_relax_training_lowers_the_variance() -> None:
    problem = ShiftedBernoulliTable(3)
    r = 20_000
    with seeded(8):
        est = RELAX(EventMLP(3, 1))
        before = gradient_draws(problem, est, replications=r)
        _train_on_variance(est, est.control.parameters(), problem, steps=100, lr=1e-2)
        after = gradient_draws(problem, est, replications=r)
    (v_before, se_before), (v_after, se_after) = _trace_variance(before), _trace_variance(after)
    z = z_for(FALSE_ALARM, 1)
    assert v_before - v_after > z * math.hypot(se_before, se_after), (v_before, v_after)
    assert v_after < 0.5 * v_before  # the reduction is substantial, not marginal
    # Both stay unbiased.
    assert_unbiased(after, problem.exact_gradient())


# ---------------------------------------------------------------------------------------------------
# The harness has power
# ---------------------------------------------------------------------------------------------------


class REBARWithoutPathwise(REBAR):
    """REBAR with the pathwise difference dropped: the baseline η f(σ(z̃)) depends on b, so biased."""

    def correction(self, draw: Draw, cost: Tensor) -> Tensor:
        n = draw.n
        c = cost.detach()
        return (c[:n] - self.eta * c[2 * n :]) * draw.score


class UnorderedSetWithoutOwnTerm(UnorderedSet):
    """The built-in baseline without its s' = s term: its mean then depends on s, so biased."""

    def draw(self, dist: Distribution, n: int) -> Draw:
        draw = super().draw(dist, n)
        k = self.k
        eye = torch.eye(k, dtype=torch.bool).reshape(k, k, *[1] * (draw.log_pair.dim() - 2))
        return dataclasses.replace(draw, log_pair=draw.log_pair.masked_fill(eye, -math.inf))


@pytest.mark.parametrize(
    ("broken", "correct", "problem"),
    [
        (REBARWithoutPathwise, REBAR, CategoricalTable(10)),
        (REBARWithoutPathwise, REBAR, BernoulliToy(0.45, logit=1.5)),
        (lambda: UnorderedSetWithoutOwnTerm(3), lambda: UnorderedSet(3), CategoricalTable(10)),
    ],
    ids=["rebar-categorical", "rebar-toy", "unordered-set"],
)
def test_harness_catches_a_broken_estimator(broken: Callable[[], Estimator], correct: Callable[[], Estimator],
                                            problem: Problem) -> None:
    exact = problem.exact_gradient()
    with seeded(9):
        bad = gradient_draws(problem, broken, replications=50_000)
        good = gradient_draws(problem, correct, replications=50_000)
    with pytest.raises(AssertionError, match="biased at"):
        assert_unbiased(bad, exact, power=0.05)
    assert_unbiased(good, exact, power=0.05)


# ---------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.0, -0.5, math.inf])
def test_rebar_temperature_must_be_positive(temperature: float) -> None:
    with pytest.raises(ValueError, match=f"REBAR: temperature={temperature}"):
        REBAR(temperature=temperature)
    est = REBAR()
    with pytest.raises(ValueError, match=f"temperature={temperature}"):
        est.temperature = temperature


def test_rebar_eta_must_be_a_finite_number() -> None:
    with pytest.raises(ValueError, match="REBAR: eta=nan"):
        REBAR(eta=math.nan)
    with pytest.raises(TypeError, match="REBAR: eta='1'"):
        REBAR(eta="1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="temperature='0.5'"):
        REBAR(temperature="0.5")  # type: ignore[arg-type]


@pytest.mark.parametrize("learn", ["yes", 1, None, torch.tensor(True)], ids=repr)
def test_rebar_learn_must_be_a_bool(learn: object) -> None:
    with pytest.raises(TypeError, match=r"REBAR: learn=.* must be a bool: True trains eta and log\(temperature\)"):
        REBAR(learn=learn)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="REBAR: learn='yes'"):
        REBAR(learn="yes")  # type: ignore[arg-type]


def test_rebar_learn_refuses_costs_without_gradient() -> None:
    """f not differentiable at the relaxed points: learning η and τ from it would train on zero pathwise
    terms, and the estimate would be biased; refused while validating, in expectation and in a graph."""
    logits = torch.zeros(3, dtype=F64, requires_grad=True)
    with pytest.raises(ValueError, match=r"expectation: f reaches the points of REBAR's node .* relaxed points"):
        expectation(lambda b: (b > 0.5).to(F64), Bernoulli(logits=logits), REBAR(learn=True), n=2)
    with Graph() as g, pytest.raises(ValueError, match=r"Graph.cost: cost 'cost0' reaches the points of REBAR"):
        x = g.sample("x", Bernoulli(logits=logits), REBAR(learn=True), n=2)
        g.cost((x > 0.5).to(F64) * logits)


UNSUPPORTED = [
    Normal(torch.zeros(3), 1.0),
    Independent(Normal(torch.zeros(2, 3), 1.0), 1),
]


@pytest.mark.parametrize("dist", UNSUPPORTED, ids=lambda d: type(d).__name__)
@pytest.mark.parametrize("factory", [REBAR, lambda: RELAX(Quadratic()), lambda: UnorderedSet(2)],
                         ids=["REBAR", "RELAX", "UnorderedSet"])
def test_unsupported_family_raises(factory: Callable[[], Estimator], dist: Distribution) -> None:
    est = factory()
    with pytest.raises(NotImplementedError, match=f"{type(est).__name__}: dist={type(dist).__name__}"):
        expectation(lambda x: x.sum(-1) if x.dim() > 1 else x, dist, est)


def test_unordered_set_k_out_of_range() -> None:
    dist = Categorical(logits=torch.zeros(4))
    with pytest.raises(ValueError, match=r"UnorderedSet: k=5 is larger than the support size 4"):
        expectation(lambda x: x.double(), dist, UnorderedSet(5))
    with pytest.raises(ValueError, match=r"UnorderedSet: k=5 is larger than the support size 4"):
        UnorderedSet(5).check(OneHotCategorical(logits=torch.zeros(2, 4)), 1)
    for k in (0, -2):
        with pytest.raises(ValueError, match=f"UnorderedSet: k={k} must be >= 1 and at most the support size"):
            UnorderedSet(k)
    with pytest.raises(ValueError, match="UnorderedSet: k=17 is over 16"):
        UnorderedSet(17)
    with pytest.raises(TypeError, match="UnorderedSet: k=2.0"):
        UnorderedSet(2.0)  # type: ignore[arg-type]


def test_relax_control_errors() -> None:
    with pytest.raises(TypeError, match="RELAX: control="):
        RELAX(lambda z: z)  # type: ignore[arg-type]

    class Wrong(nn.Module):
        def forward(self, z: Tensor) -> Tensor:
            return z.unsqueeze(-1).expand(*z.shape, 2)

    dist = Bernoulli(logits=torch.zeros(3, requires_grad=True))
    expected = r"RELAX: control returned shape \(2, 3, 2\).*expected \(n, \*dist.batch_shape\) = \(2, 3\)"
    with pytest.raises(ValueError, match=expected):
        expectation(lambda b: b, dist, RELAX(Wrong()), n=2)


def test_rebar_low_precision_warns() -> None:
    dist = Bernoulli(logits=torch.zeros(3, dtype=torch.float32, requires_grad=True))
    with pytest.warns(UserWarning, match="REBAR: temperature=0.01 with torch.float32"):
        expectation(lambda b: b, dist, REBAR(temperature=0.01))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        logits = torch.zeros(3, dtype=F64, requires_grad=True)
        expectation(lambda b: b, Bernoulli(logits=logits), REBAR(temperature=0.01))


def test_rebar_learn_state_round_trips() -> None:
    est = REBAR(temperature=0.5, eta=1.0, learn=True)
    with torch.no_grad():
        est.eta.fill_(0.37)
        est.log_temperature.fill_(-0.9)
    buffer = io.BytesIO()
    torch.save(est.state_dict(), buffer)
    buffer.seek(0)
    other = REBAR(learn=True)
    other.load_state_dict(torch.load(buffer, weights_only=True))
    assert set(est.state_dict()) == {"eta", "log_temperature", "_extra_state"}
    assert torch.equal(other.eta, est.eta) and torch.equal(other.log_temperature, est.log_temperature)
    fixed = REBAR(temperature=0.3, eta=0.7)
    fixed.temperature = 0.2  # annealed
    buffer = io.BytesIO()
    torch.save(fixed.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    loaded = REBAR()
    loaded.load_state_dict(state)
    assert (loaded.temperature, loaded.eta) == (0.2, 0.7)  # an annealed temperature survives a checkpoint
    with pytest.raises(ValueError, match=r"REBAR.load_state_dict: the state is of REBAR\(learn=False\) but this"):
        REBAR(learn=True).load_state_dict(state, strict=False)


def test_relax_state_round_trips() -> None:
    est = RELAX(EventMLP(3, 1))
    buffer = io.BytesIO()
    torch.save(est.state_dict(), buffer)
    buffer.seek(0)
    other = RELAX(EventMLP(3, 1))
    other.load_state_dict(torch.load(buffer, weights_only=True))
    for a, b in zip(est.parameters(), other.parameters(), strict=True):
        assert torch.equal(a, b)
    assert "control.net.0.weight" in est.state_dict()


# ---------------------------------------------------------------------------------------------------
# Graphs
# ---------------------------------------------------------------------------------------------------

_UP_TABLE = torch.tensor([-0.5, 0.4, 1.2], dtype=F64)


def _double(z: Tensor) -> Tensor:
    return 2 * z


def _up_table(z: Tensor) -> Tensor:
    return (z * _UP_TABLE).sum(-1) if z.is_floating_point() else _UP_TABLE[z]


def _upstream(kind: str, r: int, est: Estimator) -> tuple[Tensor, list[Tensor]]:
    """The node under test (z) feeds y ∼ N(μ + h(z), 1), pathwise; cost (y − 1)². Returns the graph's
    loss for R replications and the replicated parameters [a, μ]."""
    if kind == "bernoulli":
        a = torch.full((r,), 0.4, dtype=F64, requires_grad=True)
        dist: Distribution = Bernoulli(logits=a)
        h = _double
    else:
        a = torch.tensor([0.2, -0.4, 0.5], dtype=F64).expand(r, 3).clone().requires_grad_()
        dist = Categorical(logits=a)
        h = _up_table
    mu = torch.full((r,), -0.2, dtype=F64, requires_grad=True)
    with Graph() as g:
        z = g.sample("z", dist, est, n=2)
        y = g.sample("y", Normal(mu + h(z), 1.0))
        g.cost((y - 1).square())
    return g.loss(), [a, mu]


def _upstream_exact(kind: str) -> Tensor:
    """E[(μ + h(z) + ε − 1)²] = E_z[(μ + h(z) − 1)²] + 1, by enumerating z."""
    if kind == "bernoulli":
        a, mu = torch.tensor(0.4, dtype=F64, requires_grad=True), torch.tensor(-0.2, dtype=F64, requires_grad=True)
        p = torch.sigmoid(a)
        value = p * (mu + 1).square() + (1 - p) * (mu - 1).square() + 1
    else:
        a = torch.tensor([0.2, -0.4, 0.5], dtype=F64, requires_grad=True)
        mu = torch.tensor(-0.2, dtype=F64, requires_grad=True)
        value = (torch.softmax(a, -1) * (mu + _UP_TABLE - 1).square()).sum() + 1
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(value, (a, mu))])


@pytest.mark.parametrize(
    ("factory", "kind"),
    [
        pytest.param(lambda: REBAR(temperature=0.5), "bernoulli", id="rebar/bernoulli"),
        pytest.param(lambda: REBAR(temperature=0.5), "categorical", id="rebar/categorical"),
        pytest.param(lambda: REBAR(temperature=0.5, learn=True).double(), "bernoulli", id="rebar-learn/bernoulli"),
        pytest.param(lambda: REBAR(temperature=0.5, learn=True).double(), "categorical", id="rebar-learn/categorical"),
        pytest.param(lambda: RELAX(EventMLP(1, 0)), "bernoulli", id="relax/bernoulli"),
        pytest.param(lambda: RELAX(EventMLP(3, 1)), "categorical", id="relax/categorical"),
        pytest.param(lambda: UnorderedSet(2), "categorical", id="unordered-set/categorical"),
    ],
)
def test_upstream_of_a_pathwise_node_is_unbiased(factory: Callable[[], Estimator], kind: str) -> None:
    r = 20_000
    with seeded(11):
        loss, params = _upstream(kind, r, factory())
        grads = torch.autograd.grad(loss, params)
    draws = torch.cat([g.reshape(r, -1) for g in grads], 1)
    assert_unbiased(draws, _upstream_exact(kind), power=0.05)
