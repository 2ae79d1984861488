"""The surrogate contract, checked deterministically for every estimator.

For every rule of the registry (``rules.py``; every public estimator and baseline) on every family it
supports, the surrogate returned by ``gradest.expectation``:

- has the *value* of the Monte Carlo estimate recomputed by hand from the very points f was called at
  and the rule's draw (the mean at the values; over every point for ARM and DisARM; ``Σ p·cost`` for
  ``Enumerate``; ``Σ p(s)R(S, s)·cost`` for the unordered set), read off spies around f and ``draw``;
- has shape ``dist.batch_shape`` for B = (), (3,), (2, 3);
- keeps the dtype (float32, float64) in its value and in every gradient, and keeps the device;
- calls f on exactly the rule's points, whose first n are its values;

and, for the score-function rules with each baseline, the pathwise and implicit rules and enumeration,
has the gradient of the hand-written estimator on the same draw (the other rules' hand-written
gradients are in ``test_relaxed.py`` and ``test_rebar_relax.py``).

No statistics here: unbiasedness against exact gradients is ``test_unbiased.py``'s job.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torch.distributions import (
    Bernoulli,
    Distribution,
    Independent,
    Normal,
    OneHotCategorical,
)

import gradest
from gradest.testing.fakes import NonreparameterizedNormal
from tests.estimators.rules import FAMILIES, PAIRS, RULES, Family, K, Rule

BATCH_SHAPES = [(), (3,), (2, 3)]
DTYPES = [torch.float32, torch.float64]
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]


# ---------------------------------------------------------------------------------------------------
# The spies: what f saw and returned, and the rule's draw
# ---------------------------------------------------------------------------------------------------


class Spy:
    """Wraps f and records every input it is called at and every output it returns."""

    def __init__(self, f: Callable[[Tensor], Tensor]) -> None:
        self.f = f
        self.inputs: list[Tensor] = []
        self.outputs: list[Tensor] = []

    def __call__(self, x: Tensor) -> Tensor:
        y = self.f(x)
        self.inputs.append(x)
        self.outputs.append(y)
        return y


def _recording(est: gradest.Estimator) -> list[gradest.Draw]:
    """Record every draw ``est`` makes (an instance attribute shadowing the method)."""
    draws: list[gradest.Draw] = []
    method = est.draw

    def draw(dist: Distribution, n: int) -> gradest.Draw:
        draws.append(method(dist, n))
        return draws[-1]

    est.draw = draw  # type: ignore[method-assign]
    return draws


def _run(rule: Rule, family: Family, B: tuple[int, ...], dtype: torch.dtype = torch.float64, device: str = "cpu", *,
         n: int | None = None, calls: int = 1, seed: int = 0):
    """Build everything, call ``expectation`` ``calls`` times; return (estimator, params, spy, draws, surrogates)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        est = rule.factory(family).to(device=device, dtype=dtype)
        draws = _recording(est)
        params = family.params(B, dtype, device)
        w = torch.tensor(1.3, dtype=dtype, device=device)
        spy = Spy(lambda x: family.f(x, w))
        n = max(3, rule.min_n) if n is None else n
        out = [gradest.expectation(spy, family.make(*params), est, n=n) for _ in range(calls)]
    return est, params, spy, draws, out


def _assert_ulps(actual: Tensor, expected: Tensor, ulps: int = 8) -> None:
    """Equal up to a few units in the last place (of the larger magnitude, or of 1 near zero)."""
    eps = torch.finfo(actual.dtype).eps
    scale = torch.maximum(actual.abs(), expected.abs()).clamp_min(1.0)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    assert bool(((actual - expected).abs() <= ulps * eps * scale).all()), (actual, expected)


PAIR_PARAMS = [pytest.param(rule, fam, id=f"{rule.name}/{fam.name}") for rule, fam in PAIRS]


# ---------------------------------------------------------------------------------------------------
# Value: the estimate recomputed by hand from the same draw
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B", BATCH_SHAPES, ids=str)
@pytest.mark.parametrize(("rule", "family"), PAIR_PARAMS)
def test_value_is_the_estimate_from_the_same_draw(rule: Rule, family: Family, B: tuple[int, ...],
                                                 dtype: torch.dtype) -> None:
    # Two calls: stateful baselines (a moving average) are non-zero on the second one.
    _, _, spy, draws, out = _run(rule, family, B, dtype, calls=2)
    for x, cost, draw, s in zip(spy.inputs, spy.outputs, draws, out, strict=True):
        assert x is draw.points  # f saw exactly the rule's points
        _assert_ulps(s.detach(), rule.value(draw, cost.detach()))


@pytest.mark.parametrize(("rule", "family"), PAIR_PARAMS)
def test_values_are_samples_of_dist(rule: Rule, family: Family) -> None:
    """The values f sees first are in the support (exact samples, the support, or set members; relaxed
    points for GumbelSoftmax) and differ from call to call (for the sampling rules)."""
    _, params, _, draws, _ = _run(rule, family, (2, 3), calls=2)
    dist = family.make(*params)
    v0, v1 = (d.values for d in draws)
    own = dist.sample((v0.shape[0],)).shape == v0.shape  # the family's own sample type (not one-hot for Categorical)
    if own and rule.name != "gumbel-softmax":
        assert bool(dist.support.check(v0).all())
    if rule.name != "enumerate":
        assert not torch.equal(v0, v1)


# ---------------------------------------------------------------------------------------------------
# Shape, dtype, device, n
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B", BATCH_SHAPES, ids=str)
@pytest.mark.parametrize(("rule", "family"), PAIR_PARAMS)
def test_shape_dtype_device(rule: Rule, family: Family, B: tuple[int, ...], dtype: torch.dtype, device: str) -> None:
    est, params, spy, _, (s,) = _run(rule, family, B, dtype, device)
    dist = family.make(*params)
    assert s.shape == dist.batch_shape == torch.Size(B)
    assert s.dtype == dtype
    assert s.device.type == device
    assert spy.inputs[0].device.type == device
    s.sum().backward()
    for p in (*params, *(q for q in est.parameters() if q.requires_grad)):
        assert p.grad is not None, rule.name
        assert p.grad.dtype == dtype and p.grad.device.type == device
        assert bool(p.grad.isfinite().all())


@pytest.mark.parametrize(("rule", "family"), PAIR_PARAMS)
def test_f_sees_the_rules_points_and_n_values(rule: Rule, family: Family) -> None:
    B = (2,)
    for n in sorted({rule.min_n, rule.min_n + 1, 5}):
        _, _, spy, (draw,), _ = _run(rule, family, B, n=n)
        (x,) = spy.inputs
        assert x.shape[1:2] == B and x.shape[0] == draw.points.shape[0]
        expected = family.support if rule.name == "enumerate" else 2 * n if rule.name == "unordered-set" else n
        assert draw.n == expected


def test_enumerate_ignores_n() -> None:
    rule, family = RULES["enumerate"], FAMILIES["categorical"]
    values = [_run(rule, family, (3,), n=n)[4][0] for n in (1, 7)]
    assert torch.equal(values[0], values[1])
    assert _run(rule, family, (3,), n=7)[2].inputs[0].shape == (K, 3)


def _public_classes(base: type) -> set[type]:
    return {
        obj for name in gradest.__all__
        if inspect.isclass(obj := getattr(gradest, name)) and issubclass(obj, base) and obj is not base
    }


def test_the_rule_registry_covers_every_public_estimator_and_baseline() -> None:
    """A new estimator or baseline in ``gradest.__all__`` must add a rule (and cases: test_unbiased.py)."""
    used = {type(m) for rule, family in PAIRS for m in rule.factory(family).modules()}
    missing = (_public_classes(gradest.Estimator) | _public_classes(gradest.Baseline)) - used
    assert not missing, f"no rule uses {sorted(c.__name__ for c in missing)}; add rules to tests/estimators/rules.py"


# ---------------------------------------------------------------------------------------------------
# Gradient: the hand-written estimator on the same draw
# ---------------------------------------------------------------------------------------------------


def _randn(shape: tuple[int, ...], dtype: torch.dtype, device: str, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)


def _bernoulli_grads(est: gradest.Estimator, *, n: int = 5, calls: int = 1):
    """Run ``est`` on Bernoulli(logits) [2, 3]; return logits, spy, surrogates and d(sum s)/d logits."""
    logits = _randn((2, 3), torch.float64, "cpu", 7).requires_grad_()
    spy = Spy(lambda x: (x - 0.45).square() + 0.1 * x.cumsum(-1))
    torch.manual_seed(0)
    grads, outs = [], []
    for _ in range(calls):
        s = gradest.expectation(spy, Bernoulli(logits=logits), est, n=n)
        (g,) = torch.autograd.grad(s.sum(), logits, retain_graph=True)
        grads.append(g)
        outs.append(s)
    return logits, spy, outs, grads


def _score(x: Tensor, logits: Tensor) -> Tensor:
    """Per-sample ∂ log Bern(x; σ(logits)) / ∂ logits = x − σ(logits): [n, *B]."""
    return x - torch.sigmoid(logits.detach())


def test_grad_score_function_plain() -> None:
    logits, spy, _, (g,) = _bernoulli_grads(gradest.ScoreFunction())
    x, c = spy.inputs[0], spy.outputs[0]
    torch.testing.assert_close(g, (c * _score(x, logits)).mean(0))


def test_grad_score_function_constant() -> None:
    logits, spy, _, (g,) = _bernoulli_grads(gradest.ScoreFunction(gradest.Constant(0.3)))
    x, c = spy.inputs[0], spy.outputs[0]
    torch.testing.assert_close(g, ((c - 0.3) * _score(x, logits)).mean(0))


def test_grad_score_function_leave_one_out() -> None:
    logits, spy, _, (g,) = _bernoulli_grads(gradest.ScoreFunction(gradest.LeaveOneOut()), n=5)
    x, c = spy.inputs[0], spy.outputs[0]
    b = torch.stack([torch.cat([c[:i], c[i + 1 :]]).mean(0) for i in range(5)])
    torch.testing.assert_close(g, ((c - b) * _score(x, logits)).mean(0))


def test_grad_score_function_moving_average() -> None:
    decay = 0.8
    logits, spy, _, grads = _bernoulli_grads(gradest.ScoreFunction(gradest.MovingAverage(decay)), calls=3)
    m = w = 0.0
    for x, c, g in zip(spy.inputs, spy.outputs, grads, strict=True):
        b = m / w if w > 0 else 0.0  # read before the update, bias-corrected
        torch.testing.assert_close(g, ((c - b) * _score(x, logits)).mean(0))
        m, w = decay * m + (1 - decay) * float(c.mean()), decay * w + (1 - decay)


def test_grad_score_function_optimal_constant() -> None:
    logits, spy, _, (g,) = _bernoulli_grads(gradest.ScoreFunction(gradest.OptimalConstant()), n=5)
    x, c = spy.inputs[0], spy.outputs[0]
    s = _score(x, logits)
    b = torch.stack([
        (torch.cat([c[:i], c[i + 1 :]]) * torch.cat([s[:i], s[i + 1 :]]).square()).sum(0)
        / torch.cat([s[:i], s[i + 1 :]]).square().sum(0)
        for i in range(5)
    ])
    torch.testing.assert_close(g, ((c - b) * s).mean(0))


def test_grad_score_function_critic() -> None:
    critic = nn.Linear(1, 1).double()
    logits, spy, (s,), (g,) = _bernoulli_grads(gradest.ScoreFunction(gradest.Critic(critic)))
    x, c = spy.inputs[0], spy.outputs[0]
    with torch.no_grad():
        b = critic(logits.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(g, ((c - b) * _score(x, logits)).mean(0))
    # The critic's regression gradient comes out of the same backward pass.
    critic_grads = torch.autograd.grad(s.sum(), list(critic.parameters()))
    expected = torch.autograd.grad(
        (critic(logits.detach().unsqueeze(-1)).squeeze(-1) - c.detach()).square().mean(0).sum(),
        list(critic.parameters()),
    )
    for a, e in zip(critic_grads, expected, strict=True):
        torch.testing.assert_close(a, e)


def test_grad_score_function_control_variate() -> None:
    cv = gradest.ControlVariate(lambda x: x, lambda d: d.probs, coefficient=0.7)
    logits, spy, _, (g,) = _bernoulli_grads(gradest.ScoreFunction(cv))
    x, c = spy.inputs[0], spy.outputs[0]
    p = torch.sigmoid(logits.detach())
    torch.testing.assert_close(g, ((c - 0.7 * x) * _score(x, logits)).mean(0) + 0.7 * p * (1 - p))


@pytest.mark.parametrize("estimator", [gradest.Pathwise, gradest.ImplicitReparam])
def test_grad_reparameterised(estimator: Callable[[], gradest.Estimator]) -> None:
    """For a Normal both are x = loc + scale·ε: recompute ε from the points f saw and differentiate."""
    loc, scale = (_randn((2, 3), torch.float64, "cpu", seed).requires_grad_() for seed in (1, 2))
    family = Normal if estimator is gradest.Pathwise else NonreparameterizedNormal
    spy = Spy(lambda x: torch.sin(3 * x) + x.square())
    torch.manual_seed(0)
    s = gradest.expectation(spy, family(loc, scale.exp()), estimator(), n=5)
    grads = torch.autograd.grad(s.sum(), (loc, scale))
    eps = ((spy.inputs[0] - loc) / scale.exp()).detach()
    expected = torch.autograd.grad(spy.f(loc + scale.exp() * eps).mean(0).sum(), (loc, scale))
    for a, e in zip(grads, expected, strict=True):
        torch.testing.assert_close(a, e)


# ---------------------------------------------------------------------------------------------------
# Enumerate over joint supports of Independent sites, against brute force
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("m", [1, 3])
def test_enumerate_independent_bernoulli_matches_brute_force(m: int) -> None:
    logits = _randn((2, m), torch.float64, "cpu", 8).requires_grad_()
    w = torch.linspace(-1.0, 2.0, m, dtype=torch.float64)
    f = Spy(lambda x: torch.cos((x * w).sum(-1)) + x.prod(-1))
    s = gradest.expectation(f, Independent(Bernoulli(logits=logits), 1), gradest.Enumerate())
    assert f.inputs[0].shape == (2**m, 2, m)
    # every joint state appears exactly once, for each batch element
    assert {tuple(r.tolist()) for r in f.inputs[0][:, 0]} == set(itertools.product([0.0, 1.0], repeat=m))
    # Brute force over the 2^m joint states, with the log-probability written out by hand.
    exact = 0
    for bits in itertools.product([0.0, 1.0], repeat=m):
        b = torch.tensor(bits, dtype=torch.float64)
        log_p = (b * nn.functional.logsigmoid(logits) + (1 - b) * nn.functional.logsigmoid(-logits)).sum(-1)
        exact = exact + log_p.exp() * f.f(b.expand(1, 2, m)).squeeze(0)
    torch.testing.assert_close(s, exact)
    torch.testing.assert_close(torch.autograd.grad(s.sum(), logits), torch.autograd.grad(exact.sum(), logits))


@pytest.mark.parametrize("B", [(), (2,)], ids=str)
def test_enumerate_independent_one_hot_matches_brute_force(B: tuple[int, ...]) -> None:
    m, k = 3, 4
    logits = _randn((*B, m, k), torch.float64, "cpu", 9).requires_grad_()
    table = _randn((m, k), torch.float64, "cpu", 10)
    f = Spy(lambda x: torch.tanh((x * table).sum((-1, -2))) + x[..., 0, 1] * x[..., 2, 3])
    s = gradest.expectation(f, Independent(OneHotCategorical(logits=logits), 1), gradest.Enumerate())
    assert s.shape == B
    assert f.inputs[0].shape == (k**m, *B, m, k)
    # Brute force over the k^m joint states, with the log-probability written out by hand.
    log_softmax = torch.log_softmax(logits, -1)  # [*B, m, k]
    eye = torch.eye(k, dtype=torch.float64)
    exact = 0
    for ix in itertools.product(range(k), repeat=m):
        log_p = log_softmax[..., torch.arange(m), list(ix)].sum(-1)  # [*B]
        exact = exact + log_p.exp() * f.f(eye[list(ix)].expand(1, *B, m, k)).squeeze(0)
    torch.testing.assert_close(s, exact)
    torch.testing.assert_close(torch.autograd.grad(s.sum(), logits), torch.autograd.grad(exact.sum(), logits))


# ---------------------------------------------------------------------------------------------------
# The two primitives
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_straight_through_value_of_hard_gradient_of_soft(dtype: torch.dtype) -> None:
    x = torch.linspace(-2.3, 2.7, 11, dtype=dtype).mul(1e3).requires_grad_()
    hard = torch.round(x) * 3 + 1e-3 * x  # depends on x too: no gradient may reach it
    soft = torch.sin(x) * x
    out = gradest.straight_through(hard, soft)
    assert torch.equal(out, hard.detach())
    assert out.dtype == dtype
    (g,) = torch.autograd.grad(out.sum(), x, retain_graph=True)
    (e,) = torch.autograd.grad(soft.sum(), x)
    assert torch.equal(g, e)


def test_straight_through_with_a_number_adds_zero_valued_auxiliary() -> None:
    w = torch.tensor([1.5, -2.0], requires_grad=True)
    aux = (w - 3).square().sum() * 1e5
    out = gradest.straight_through(0.0, aux)
    assert out.item() == 0.0
    (g,) = torch.autograd.grad(out, w)
    torch.testing.assert_close(g, 2e5 * (w.detach() - 3))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_magic_box_value_one_and_derivative_reproduces_the_box(dtype: torch.dtype) -> None:
    theta = torch.tensor([0.3, -1.2, 2.0], dtype=dtype, requires_grad=True)
    log_prob = Normal(theta, 1.0).log_prob(torch.tensor([1.0, 5.0, -3.0], dtype=dtype)) * 10
    box = gradest.magic_box(log_prob)
    assert torch.equal(box, torch.ones_like(box))
    assert box.dtype == dtype
    (d_box,) = torch.autograd.grad(box.sum(), theta, create_graph=True)
    (d_lp,) = torch.autograd.grad(log_prob.sum(), theta, create_graph=True)
    torch.testing.assert_close(d_box, (box * d_lp).detach())
    # Second derivative: d²□ = □ (∇l ∇l + ∇²l), here elementwise (l_i depends on θ_i only).
    (dd_box,) = torch.autograd.grad(d_box.sum(), theta)
    (dd_lp,) = torch.autograd.grad(d_lp.sum(), theta)
    torch.testing.assert_close(dd_box, d_lp.detach().square() + dd_lp)
