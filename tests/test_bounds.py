"""Multi-sample (IWAE) bound estimators: IWAE, VIMCO, DReG through ``iwae_bound``.

They do not estimate E[f] for a per-sample f, so they are not in the E[f] registry (``cases.py``);
their exact references are built here instead:

- discrete q: the bound :math:`E[\\log \\frac1K \\sum_i w_i]` by enumerating all K-tuples of a small
  support, differentiated by autograd;
- Gaussian q and p: the bound by tensor-product Gauss–Hermite quadrature over the K standard-normal
  noises (converged: two rules agree to rounding), and for K = 1 the ELBO in closed form.

Tolerances are z·SE from ``gradest.testing`` (false-alarm rate 1e-6), never an epsilon.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch
from torch.distributions import (
    Bernoulli,
    Categorical,
    Independent,
    LogNormal,
    MultivariateNormal,
    Normal,
    OneHotCategorical,
)

import gradest
from gradest.bounds import (
    IWAE,
    VIMCO,
    DReG,
    MultisampleEstimator,
    default_bound_estimator,
    iwae_bound,
    leave_one_out_bounds,
    with_stopped_parameters,
)
from gradest.surrogate import magic_box, stop_gradient
from gradest.testing import assert_unbiased, sample_variance_se, z_for
from tests.estimators.cases import POWER, seeded

COVERED = {IWAE, VIMCO, DReG}
"""Every multi-sample estimator this file tests (the E[f] registry's guard does not see them)."""

F64 = torch.float64


# ---- exact references ---------------------------------------------------------------------------


def enumerated_bound(log_q: torch.Tensor, log_joint: torch.Tensor, k: int) -> torch.Tensor:
    """E[log (1/k) Σ_i w_i] over all k-tuples of a support with log q ``[s]`` and log p(x, z) ``[s]``."""
    s = log_q.shape[0]
    idx = torch.cartesian_prod(*[torch.arange(s)] * k).reshape(-1, k)  # [s^k, k]
    lq, lj = log_q[idx], log_joint[idx]
    log_mean_w = torch.logsumexp(lj - lq, 1) - math.log(k)
    return (lq.sum(1).exp() * log_mean_w).sum()


X = 1.3
"""The observation of the Gaussian model: z ~ N(mu, 1), x | z ~ N(z, 1)."""

GAUSS_INIT = (0.2, 1.1, -0.4)
"""q = N(m, s) and the prior mean mu: (m, s, mu)."""


def gaussian_log_joint(mu: torch.Tensor):
    return lambda z: Normal(mu, 1.0).log_prob(z) + Normal(z, 1.0).log_prob(torch.tensor(X, dtype=z.dtype))


def quadrature_bound(m: torch.Tensor, s: torch.Tensor, mu: torch.Tensor, k: int, points: int) -> torch.Tensor:
    """The K-sample bound of the Gaussian model by a ``points``-point Gauss–Hermite rule per noise dim."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(points)
    nodes, weights = torch.tensor(nodes, dtype=F64), torch.tensor(weights / math.sqrt(2 * math.pi), dtype=F64)
    eps = torch.cartesian_prod(*[nodes] * k).reshape(-1, k)
    w = torch.cartesian_prod(*[weights] * k).reshape(-1, k).prod(1)
    z = m + s * eps
    log_w = gaussian_log_joint(mu)(z) - Normal(m, s).log_prob(z)
    return (w * (torch.logsumexp(log_w, 1) - math.log(k))).sum()


def closed_form_elbo(m: torch.Tensor, s: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    prior = -half_log_2pi - 0.5 * ((m - mu) ** 2 + s**2)
    likelihood = -half_log_2pi - 0.5 * ((X - m) ** 2 + s**2)
    entropy = 0.5 * math.log(2 * math.pi * math.e) + torch.log(s)
    return prior + likelihood + entropy


def exact_gaussian_gradient(k: int, points: int) -> torch.Tensor:
    params = [torch.tensor(v, dtype=F64, requires_grad=True) for v in GAUSS_INIT]
    bound = closed_form_elbo(*params) if k == 1 else quadrature_bound(*params, k, points)
    return torch.stack(torch.autograd.grad(bound, params))


# ---- replicated estimates -----------------------------------------------------------------------


def gaussian_draws(estimator: MultisampleEstimator, k: int, replications: int) -> torch.Tensor:
    """``[R, 3]`` independent estimates of the gradient w.r.t. (m, s, mu), batched along R."""
    m, s, mu = (torch.full((replications,), v, dtype=F64, requires_grad=True) for v in GAUSS_INIT)
    bound = iwae_bound(gaussian_log_joint(mu), Normal(m, s), estimator, n=k)
    return torch.stack(torch.autograd.grad(bound.sum(), (m, s, mu)), 1)


CAT_LOGITS = [0.4, -0.3, 0.9]
CAT_TABLE = [-1.0, 0.5, -2.5]  # log p(x, z) for z = 0, 1, 2


def categorical_exact(k: int) -> torch.Tensor:
    logits = torch.tensor(CAT_LOGITS, dtype=F64, requires_grad=True)
    table = torch.tensor(CAT_TABLE, dtype=F64, requires_grad=True)
    bound = enumerated_bound(torch.log_softmax(logits, 0), table, k)
    return torch.cat(torch.autograd.grad(bound, (logits, table)))


def categorical_draws(estimator: MultisampleEstimator, k: int, replications: int, *, one_hot: bool = False):
    logits = torch.tensor(CAT_LOGITS, dtype=F64).repeat(replications, 1).requires_grad_()
    table = torch.tensor(CAT_TABLE, dtype=F64).repeat(replications, 1).requires_grad_()
    if one_hot:
        dist = OneHotCategorical(logits=logits)
        log_joint = lambda z: (z * table).sum(-1)  # noqa: E731
    else:
        dist = Categorical(logits=logits)
        log_joint = lambda z: table.gather(1, z.T).T  # noqa: E731
    bound = iwae_bound(log_joint, dist, estimator, n=k)
    return torch.cat(torch.autograd.grad(bound.sum(), (logits, table)), 1)


BITS_LOGITS = [0.7, -1.1]
BITS_TABLE = [[-0.3, -2.0], [1.0, -1.5]]  # log p(x, z) for z = (b1, b2), indexed [b1, b2]


def bits_exact(k: int) -> torch.Tensor:
    logits = torch.tensor(BITS_LOGITS, dtype=F64, requires_grad=True)
    table = torch.tensor(BITS_TABLE, dtype=F64, requires_grad=True)
    support = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]], dtype=F64)
    log_q = Independent(Bernoulli(logits=logits), 1).log_prob(support)
    bound = enumerated_bound(log_q, table.reshape(-1), k)
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(bound, (logits, table))])


def bits_draws(estimator: MultisampleEstimator, k: int, replications: int) -> torch.Tensor:
    logits = torch.tensor(BITS_LOGITS, dtype=F64).repeat(replications, 1).requires_grad_()
    table = torch.tensor(BITS_TABLE, dtype=F64).repeat(replications, 1, 1).requires_grad_()

    def log_joint(z: torch.Tensor) -> torch.Tensor:  # z [k, R, 2]
        flat = (2 * z[..., 0] + z[..., 1]).long()  # [k, R]
        return table.reshape(replications, 4).gather(1, flat.T).T

    bound = iwae_bound(log_joint, Independent(Bernoulli(logits=logits), 1), estimator, n=k)
    grads = torch.autograd.grad(bound.sum(), (logits, table))
    return torch.cat([g.reshape(replications, -1) for g in grads], 1)


# ---- unbiasedness -------------------------------------------------------------------------------


@pytest.mark.parametrize(("factory", "k"), [(VIMCO, 2), (VIMCO, 3), (VIMCO, 4), (IWAE, 3)], ids=str)
def test_discrete_bound_gradient_is_unbiased_against_enumeration(factory, k):
    """VIMCO and the plain score-function IWAE gradient against all 3^k tuples of a 3-way categorical."""
    with seeded(100 + k):
        draws = categorical_draws(factory(), k, 40_000)
    assert_unbiased(draws, categorical_exact(k), power=POWER)


def test_vimco_is_unbiased_for_one_hot_and_independent_bernoulli():
    with seeded(1):
        one_hot = categorical_draws(VIMCO(), 3, 40_000, one_hot=True)
        bits = bits_draws(VIMCO(), 3, 40_000)
    assert_unbiased(one_hot, categorical_exact(3), power=POWER)
    assert_unbiased(bits, bits_exact(3), power=POWER)


def test_the_harness_catches_a_baseline_that_sees_its_own_sample():
    """VIMCO with L̂ itself as every baseline (it depends on z_j) loses the score term: must fail."""

    class SelfBaselined(VIMCO):
        def surrogate(self, draw, log_joint):
            log_w = log_joint - draw.log_prob
            bound = torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])
            own = stop_gradient(bound).expand_as(log_w)
            return bound * draw.joint_box + ((1 - draw.box) * own).sum(0)

    with seeded(2):
        draws = categorical_draws(SelfBaselined(), 3, 40_000)
    with pytest.raises(AssertionError, match="biased"):
        assert_unbiased(draws, categorical_exact(3), power=POWER)


QUADRATURE_POINTS = 56
"""Gauss–Hermite points per noise dimension for the K = 3 reference (56³ ≈ 175k nodes)."""


def test_the_gaussian_quadrature_reference_has_converged():
    """The reference moves by < 1e-6 from 56 to 80 points per dimension (measured ~3e-9): under a
    thousandth of the SE the unbiasedness checks below reach (≥ 1e-3), so it does not eat their power."""
    a, b = exact_gaussian_gradient(3, QUADRATURE_POINTS), exact_gaussian_gradient(3, 80)
    assert (a - b).abs().max() < 1e-6
    # and with k = 1 the rule reproduces the closed-form ELBO's gradient
    params = [torch.tensor(v, dtype=F64, requires_grad=True) for v in GAUSS_INIT]
    quad = torch.stack(torch.autograd.grad(quadrature_bound(*params, 1, 40), params))
    assert torch.allclose(quad, exact_gaussian_gradient(1, 0), atol=1e-12, rtol=0)


@pytest.mark.parametrize("factory", [DReG, IWAE], ids=lambda f: f.__name__)
@pytest.mark.parametrize("k", [1, 3])
def test_gaussian_bound_gradient_is_unbiased(factory, k):
    """DReG (q's and p's parameters) and the reparameterised IWAE gradient against the exact bound."""
    with seeded(200 + k):
        draws = gaussian_draws(factory(), k, 40_000)
    assert_unbiased(draws, exact_gaussian_gradient(k, QUADRATURE_POINTS), power=POWER)


def test_the_harness_catches_stopped_q_parameters_without_squared_weights():
    """Stopping q's parameters in the weights without DReG's extra w̃ (sticking-the-landing applied
    to K > 1) is biased for q's parameters (Tucker et al. 2019, §4): the check must fail."""

    class StickingTheLandingOnly(DReG):
        def surrogate(self, draw, log_joint):
            log_w = log_joint - draw.log_prob
            return torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])

    with seeded(9):
        draws = gaussian_draws(StickingTheLandingOnly(), 3, 40_000)
    with pytest.raises(AssertionError, match=r"biased at \[0, 1\]"):
        assert_unbiased(draws, exact_gaussian_gradient(3, QUADRATURE_POINTS), power=POWER)


# ---- DReG: what it is ---------------------------------------------------------------------------


def test_dreg_gives_p_the_plain_iwae_gradient_on_the_same_draw():
    a = gaussian_draws_seeded(DReG(), 5, seed=3)
    b = gaussian_draws_seeded(IWAE(), 5, seed=3)
    torch.testing.assert_close(a[:, 2], b[:, 2], rtol=0, atol=1e-12)  # mu
    assert not torch.allclose(a[:, :2], b[:, :2])  # q's parameters differ


def gaussian_draws_seeded(estimator: MultisampleEstimator, k: int, *, seed: int) -> torch.Tensor:
    with seeded(seed):
        return gaussian_draws(estimator, k, 50)


def test_dreg_with_one_sample_is_sticking_the_landing():
    """n = 1: the gradient of log p(x, z) − log q_⊥(z) at z = g_φ(ε), computed by hand."""
    m, s, mu = (torch.tensor(v, dtype=F64, requires_grad=True) for v in GAUSS_INIT)
    captured = []

    def log_joint(z):
        captured.append(z)
        return gaussian_log_joint(mu)(z)

    with seeded(4):
        got = torch.autograd.grad(iwae_bound(log_joint, Normal(m, s), DReG(), n=1).sum(), (m, s, mu))
    with seeded(4):
        z = Normal(m, s).rsample((1,))
    torch.testing.assert_close(z, captured[0])
    stl = gaussian_log_joint(mu)(z) - Normal(stop_gradient(m), stop_gradient(s)).log_prob(z)
    want = torch.autograd.grad(stl.sum(), (m, s, mu))
    torch.testing.assert_close(torch.stack(got), torch.stack(want), rtol=0, atol=1e-12)


@pytest.mark.parametrize("k", [1, 5])
def test_dreg_gradient_for_q_vanishes_at_the_exact_posterior(k):
    """q = p(z | x) = N((mu + x)/2, 1/2): every log-weight is log p(x), so DReG's φ-gradient is 0
    for every sample, while the plain reparameterised gradient's is not."""
    mu = -0.4
    post = ((mu + X) / 2, math.sqrt(0.5), mu)
    m, s, mu_t = (torch.full((200,), v, dtype=F64, requires_grad=True) for v in post)
    with seeded(5):
        dreg = torch.autograd.grad(iwae_bound(gaussian_log_joint(mu_t), Normal(m, s), DReG(), n=k).sum(), (m, s))
        plain = torch.autograd.grad(iwae_bound(gaussian_log_joint(mu_t), Normal(m, s), IWAE(), n=k).sum(), (m, s))
    assert all(g.abs().max() < 1e-12 for g in dreg)
    assert all(g.abs().max() > 1e-3 for g in plain)


def test_dreg_has_lower_variance_than_iwae_for_q_at_large_k():
    """Tucker et al. (2019), Fig. 1: at K = 64 the reparameterised IWAE gradient for q's parameters is
    noisy relative to its mean; DReG's is far less so. Significance: z·SE of the variance difference."""
    k, r = 64, 2000
    with seeded(6):
        dreg = gaussian_draws(DReG(), k, r)[:, :2]
        plain = gaussian_draws(IWAE(), k, r)[:, :2]
    var_d, se_d = sample_variance_se(dreg)
    var_p, se_p = sample_variance_se(plain)
    z = z_for(1e-6, 2)
    assert ((var_p - var_d) > z * (se_p.square() + se_d.square()).sqrt()).all(), (var_p, var_d)
    assert (var_d < var_p / 4).all(), (var_p, var_d)  # a clear margin (measured: ~10⁴×)


# ---- the surrogate's value and shapes -----------------------------------------------------------


def _capturing(log_joint):
    seen = []

    def f(z):
        seen.append(z)
        return log_joint(z)

    return f, seen


@pytest.mark.parametrize("factory", [IWAE, VIMCO, DReG], ids=lambda f: f.__name__)
@pytest.mark.parametrize("batch", [(), (3,), (2, 3)], ids=str)
def test_value_is_the_monte_carlo_bound(factory, batch):
    loc = torch.linspace(-1, 1, math.prod(batch)).reshape(batch).double().requires_grad_()
    q = Normal(loc, 0.8) if factory is not VIMCO else Categorical(logits=torch.stack([loc, -loc, 0 * loc], -1))
    table = torch.tensor([0.3, -0.7, 1.1], dtype=F64)
    base = (lambda z: Normal(0.5, 1.0).log_prob(z)) if factory is not VIMCO else (lambda z: table[z])
    f, seen = _capturing(base)
    with seeded(7):
        bound = iwae_bound(f, q, factory(), n=4)
    z = seen[0]
    assert bound.shape == batch and z.shape[:1 + len(batch)] == (4, *batch) and bound.dtype == F64
    want = torch.logsumexp(base(z) - q.log_prob(z), 0) - math.log(4)
    torch.testing.assert_close(bound, want, rtol=0, atol=1e-12)
    bound.sum().backward()
    assert loc.grad is not None and loc.grad.shape == batch


def test_leave_one_out_bounds_replace_each_weight_by_the_others_geometric_mean():
    log_w = torch.tensor([[0.1, -3.0], [2.0, 1.0], [-1.5, 700.0]], dtype=F64)  # one huge weight: stable
    got = leave_one_out_bounds(log_w)
    for j in range(3):
        replaced = log_w.clone()
        replaced[j] = torch.cat([log_w[:j], log_w[j + 1:]]).mean(0)
        want = torch.logsumexp(replaced, 0) - math.log(3)
        torch.testing.assert_close(got[j], want, rtol=1e-14, atol=1e-14)
    assert torch.isfinite(got).all()



def test_vimco_with_an_impossible_sample_equals_vimco_with_a_negligible_one():
    """A log-weight of −inf (an impossible sample, allowed unless all are) gave NaN in the baselines
    (−inf − (−inf)); now the bound and its gradient equal those with the weight at exp(−1e4) = 0."""
    logits = torch.zeros(4, requires_grad=True)
    results = []
    for low in (-math.inf, -1e4):
        table = torch.tensor([0.0, -1.0, -2.0, low])
        with seeded(3):
            b = gradest.iwae_bound(lambda z, t=table: t[z], Categorical(logits=logits), VIMCO(), n=5)
        results.append((b, *torch.autograd.grad(b, logits)))
    (b_inf, g_inf), (b_low, g_low) = results
    assert bool(torch.isfinite(g_inf).all())
    torch.testing.assert_close(b_inf, b_low)
    torch.testing.assert_close(g_inf, g_low)

def test_vimco_learning_signal_matches_the_paper_on_one_draw():
    """The score-function part of VIMCO is Σ_j (L̂ − L̂_{−j}) ∇ log q(z_j), by hand from the same draw."""
    logits = torch.tensor(CAT_LOGITS, dtype=F64, requires_grad=True)
    table = torch.tensor(CAT_TABLE, dtype=F64)
    f, seen = _capturing(lambda z: table[z])
    with seeded(8):
        got = torch.autograd.grad(iwae_bound(f, Categorical(logits=logits), VIMCO(), n=5), logits)[0]
    z = seen[0]
    log_q = Categorical(logits=logits).log_prob(z)
    log_w = table[z] - log_q
    bound = torch.logsumexp(log_w, 0) - math.log(5)
    signal = stop_gradient(bound) - leave_one_out_bounds(stop_gradient(log_w))
    want = torch.autograd.grad((signal * log_q).sum() + bound, logits)[0]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


# ---- families, defaults, the stopped copy ------------------------------------------------------


def test_default_estimator():
    assert type(default_bound_estimator(Normal(0.0, 1.0), 5)) is IWAE
    assert type(default_bound_estimator(Bernoulli(0.5), 5)) is VIMCO
    assert type(default_bound_estimator(Bernoulli(0.5), 1)) is IWAE
    loc = torch.zeros((), requires_grad=True)
    bound = iwae_bound(lambda z: Normal(1.0, 1.0).log_prob(z), Normal(loc, 1.0), n=3)
    assert bound.shape == () and bound.requires_grad


@pytest.mark.parametrize(
    "make",
    [
        lambda p: Normal(p, 1.5),
        lambda p: Independent(Normal(p.expand(3), 1.0), 1),
        lambda p: MultivariateNormal(p.expand(2), scale_tril=torch.eye(2, dtype=F64) * (1 + p.abs())),
        lambda p: LogNormal(p, 0.5),
        lambda p: Categorical(logits=torch.stack([p, -p])),
    ],
    ids=["normal", "independent", "mvn", "lognormal", "categorical"],
)
def test_stopped_copy_keeps_values_and_drops_parameter_gradients(make):
    p = torch.tensor(0.3, dtype=F64, requires_grad=True)
    dist = make(p)
    x = dist.sample((4,))
    stopped = with_stopped_parameters(dist)
    torch.testing.assert_close(stopped.log_prob(x), dist.log_prob(x), rtol=0, atol=0)
    assert not stopped.log_prob(x).requires_grad
    assert dist.log_prob(x).requires_grad  # the original is untouched


@pytest.mark.parametrize(
    ("make", "log_joint"),
    [
        (lambda p: LogNormal(p, 0.5), lambda z: Normal(0.0, 1.0).log_prob(z.log())),
        (lambda p: MultivariateNormal(p.expand(2), torch.eye(2, dtype=F64)),
         lambda z: Normal(0.0, 1.0).log_prob(z).sum(-1)),
    ],
    ids=["lognormal", "mvn"],
)
def test_dreg_runs_on_transformed_and_multivariate_families(make, log_joint):
    p = torch.tensor(0.3, dtype=F64, requires_grad=True)
    iwae_bound(log_joint, make(p), DReG(), n=4).backward()
    assert torch.isfinite(p.grad)


# ---- errors -------------------------------------------------------------------------------------


def test_vimco_needs_two_samples():
    with pytest.raises(ValueError, match=r"VIMCO: n=1 .* use n >= 2"):
        iwae_bound(lambda z: z.float(), Bernoulli(0.5), VIMCO(), n=1)


def test_dreg_needs_rsample():
    with pytest.raises(NotImplementedError, match=r"DReG: dist=Bernoulli\(batch_shape=\(\).* VIMCO\(\)"):
        iwae_bound(lambda z: z, Bernoulli(0.5), DReG(), n=4)


def test_expectation_estimators_are_refused_by_iwae_bound():
    with pytest.raises(TypeError, match=r"iwae_bound: estimator=Pathwise\(\) .* DReG\(\)"):
        iwae_bound(lambda z: z, Normal(0.0, 1.0), gradest.Pathwise(), n=2)
    with pytest.raises(TypeError, match=r"iwae_bound: estimator='dreg' is not a multi-sample estimator"):
        iwae_bound(lambda z: z, Normal(0.0, 1.0), "dreg", n=2)


@pytest.mark.parametrize("factory", [IWAE, VIMCO, DReG], ids=lambda f: f.__name__)
def test_multisample_estimators_are_refused_by_expectation_and_graph(factory):
    with pytest.raises(TypeError, match=rf"expectation: estimator={factory.__name__}\(\) .* gradest.iwae_bound"):
        gradest.expectation(lambda x: x, Normal(0.0, 1.0), factory(), n=2)
    with gradest.Graph() as g, pytest.raises(TypeError, match=r"Graph.sample: estimator=.* gradest.iwae_bound"):
        g.sample("z", Normal(0.0, 1.0), factory(), n=2)


def test_log_joint_errors():
    q = Normal(torch.zeros(3), 1.0)
    with pytest.raises(TypeError, match="log_joint=3 is not callable"):
        iwae_bound(3, q, n=2)
    with pytest.raises(ValueError, match=r"log_joint returned shape \(2, 3, 1\), expected .* \(2, 3\)"):
        iwae_bound(lambda z: z.unsqueeze(-1), q, n=2)
    with pytest.raises(TypeError, match="log_joint returned float"):
        iwae_bound(lambda z: 1.0, q, n=2)
    with pytest.raises(TypeError, match="dtype=torch.int64"):
        iwae_bound(lambda z: z.long(), q, n=2)
    with pytest.raises(ValueError, match="log_joint's output contains NaN"):
        iwae_bound(lambda z: z * float("nan"), q, n=2)
    with pytest.raises(ValueError, match="iwae_bound: n=0"):
        iwae_bound(lambda z: z, q, n=0)
    with pytest.raises(TypeError, match="iwae_bound: dist=str"):
        iwae_bound(lambda z: z, "normal", n=2)


def test_every_public_multisample_estimator_is_tested_here():
    """The E[f] registry's guard only sees ``Estimator`` subclasses; this one covers the bound's."""
    public = {
        obj for name in getattr(gradest, "__all__", [])
        if inspect.isclass(obj := getattr(gradest, name)) and issubclass(obj, MultisampleEstimator)
        and obj is not MultisampleEstimator
    }
    assert public <= COVERED, f"untested multi-sample estimators: {sorted(c.__name__ for c in public - COVERED)}"


def test_magic_box_is_value_one():  # the score terms above rely on it
    assert magic_box(torch.tensor([0.3, -2.0])).tolist() == [1.0, 1.0]


# ---- torch.compile ------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(torch._dynamo.config, "trace_autograd_ops"), reason="needs torch >= 2.13")
@pytest.mark.parametrize(("factory", "family"), [(IWAE, "normal"), (DReG, "normal"), (VIMCO, "bits"), (IWAE, "bits")],
                         ids=str)
def test_the_bound_compiles_without_graph_breaks(factory, family):
    """Value and gradients under ``torch.compile(fullgraph=True)`` equal eager ones from the same seed
    (DReG's tensor hook included; ``aot_eager`` runs the random ops eagerly)."""
    def step(loc, table):
        if family == "normal":
            q = Normal(loc, 1.0, validate_args=False)
            log_joint = lambda z: Normal(table, 1.0, validate_args=False).log_prob(z)  # noqa: E731
        else:
            q = Independent(Bernoulli(logits=loc, validate_args=False), 1)
            log_joint = lambda z: (z * table).sum(-1)  # noqa: E731
        bound = iwae_bound(log_joint, q, factory(), n=4)
        grads = torch.autograd.grad(bound.sum(), (loc, table))
        return (stop_gradient(bound), *grads)

    torch._dynamo.reset()
    try:
        loc = torch.linspace(-1, 1, 3, requires_grad=True)
        table = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
        with seeded(10), torch._dynamo.config.patch(trace_autograd_ops=True):
            compiled = torch.compile(step, fullgraph=True, backend="aot_eager")(loc, table)
        with seeded(10):
            eager = step(loc, table)
    finally:
        torch._dynamo.reset()
    for c, e in zip(compiled, eager, strict=True):
        torch.testing.assert_close(c, e)
