"""Every misuse the "Core v2" probe found: each ends in a correct gradient or a gradest error naming the
argument and the fix (each of these failed silently, or with a torch-internal message, before)."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, Categorical, Gamma, Normal, OneHotCategorical

import gradest
from gradest import Graph, expectation

F64 = torch.float64
TABLE = torch.tensor([0.3, -1.0], dtype=F64)
TABLE3 = torch.tensor([0.3, -1.0, 2.0], dtype=F64)


def _logits(*shape: int) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=F64).requires_grad_()


# ---- f not differentiable where a pathwise or relaxed rule needs it ------------------------------------

RELAXED_RULES = {
    "REBAR": lambda: gradest.REBAR(),
    "REBAR(learn)": lambda: gradest.REBAR(learn=True).double(),
    "GumbelSoftmax": lambda: gradest.GumbelSoftmax(0.5),
    "GumbelSoftmax(hard)": lambda: gradest.GumbelSoftmax(0.5, hard=True),
    "StraightThrough": gradest.StraightThrough,
    "GumbelRao": lambda: gradest.GumbelRao(4),
}
TRAINABLE = TABLE.clone().requires_grad_()
BITS_F = {
    "round-long": lambda x: TABLE[x.round().long()],
    "comparison": lambda x: (x > 0.5).to(F64),
    "numpy-round-trip": lambda x: torch.tensor(np.round(x.detach().numpy())),
    "trainable-table": lambda x: TRAINABLE[x.round().long()],
    "round": lambda x: x.round(),
}


@pytest.mark.parametrize("f", list(BITS_F), ids=str)
@pytest.mark.parametrize("rule", list(RELAXED_RULES), ids=str)
def test_relaxed_rules_refuse_an_f_without_a_derivative_on_bits(rule: str, f: str) -> None:
    """Before: (1 − η)·∇ — exactly zero at η = 1 — for REBAR, None gradients for GumbelSoftmax."""
    name = rule.split("(")[0]
    message = rf"expectation: f reaches the points of {name}'s node 'x' .* without a derivative"
    with pytest.raises(ValueError, match=message):
        expectation(BITS_F[f], Bernoulli(logits=_logits(3)), RELAXED_RULES[rule](), n=4)


@pytest.mark.parametrize("trainable", [False, True], ids=["table", "trainable-table"])
@pytest.mark.parametrize("rule", list(RELAXED_RULES), ids=str)
def test_relaxed_rules_refuse_an_argmax_lookup_on_one_hot_samples(rule: str, trainable: bool) -> None:
    table = TABLE3.clone().requires_grad_(trainable)
    name = rule.split("(")[0]
    with pytest.raises(ValueError, match=rf"f reaches the points of {name}'s node .* \(x \* table\).sum\(-1\)"):
        expectation(lambda x: table[x.argmax(-1)], OneHotCategorical(logits=_logits(3)), RELAXED_RULES[rule](), n=4)


def test_pathwise_refuses_an_f_without_a_derivative_also_through_a_graph() -> None:
    loc = torch.zeros(3, dtype=F64, requires_grad=True)
    with pytest.raises(ValueError, match=r"f reaches the points of Pathwise's node 'x' .* ScoreFunction"):
        expectation(lambda x: (x > 0).to(F64), Normal(loc, 1.0), gradest.Pathwise(), n=4)
    # a pathwise node thresholded into the logits of a discrete node: its influence runs through no derivative
    with Graph() as g, pytest.raises(ValueError, match=r"Graph.cost: cost 'c' reaches the points of Pathwise's"):
        y = g.sample("y", Normal(loc, 1.0), n=4)
        k = g.sample("k", Categorical(logits=torch.stack([(y > 0).to(F64), -(y > 0).to(F64)], -1)))
        g.cost(TABLE[k], name="c")
    # ... and through a smooth function it is fine: the discrete node's score carries y's gradient
    with Graph() as g:
        y = g.sample("y", Normal(loc, 1.0), n=4)
        k = g.sample("k", Categorical(logits=torch.stack([y, -y], -1)))
        g.cost(TABLE[k], name="c")
    g.loss().backward()
    assert bool(loc.grad.abs().sum() > 0)


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=str)
@pytest.mark.parametrize("rule", ["REBAR", "GumbelSoftmax"])
def test_a_temperature_at_which_every_relaxation_underflows_is_refused(rule: str, dtype: torch.dtype) -> None:
    """Before: REBAR at τ = 1e-6 returned exactly zero (float32 with a warning, float64 silently)."""
    est = gradest.REBAR(temperature=1e-6) if rule == "REBAR" else gradest.GumbelSoftmax(1e-6)
    logits = torch.randn(3, dtype=dtype).requires_grad_()
    with pytest.warns(UserWarning) if dtype == torch.float32 else _nothing(), pytest.raises(
        ValueError, match=rf"{rule}: temperature=1e-06 is so low that every relaxed point rounds"
    ):
        expectation(lambda b: (b - 0.45) ** 2, Bernoulli(logits=logits), est, n=4)


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def test_rebar_keeps_a_gradient_where_the_relaxation_rounds_to_its_sample() -> None:
    """Logits of ±20 at τ = 0.5 in float32: σ(z/τ) rounds to 0 or 1, yet the relaxation's derivative
    σ(x)σ(−x) stays non-zero (it is not computed as y(1 − y))."""
    logits = torch.tensor([20.0, -20.0, 0.0], requires_grad=True)
    s = expectation(lambda b: (b - 0.45) ** 2, Bernoulli(logits=logits), gradest.REBAR(temperature=0.5), n=8)
    (g,) = torch.autograd.grad(s.sum(), logits)
    assert bool(torch.isfinite(g).all())


# ---- costs that leave torch, in a graph ------------------------------------------------------------------


@pytest.mark.parametrize("leave", ["numpy", "tolist", "item"])
def test_a_graph_cost_rebuilt_outside_torch_is_refused(leave: str) -> None:
    """Before: credited to no node, it silently dropped out of the gradient next to other costs."""
    logits = _logits(3)
    with Graph() as g:
        z = g.sample("z", Categorical(logits=logits), n=4)
        g.cost(TABLE3[z], name="kept")
        c = TABLE3[z]
        rebuilt = {"numpy": lambda: torch.tensor(c.numpy()), "tolist": lambda: torch.tensor(c.tolist()),
                   "item": lambda: torch.tensor([v.item() for v in c]) * logits.sum()}[leave]()
        with pytest.raises(ValueError, match=r"Graph.cost: cost 'lost' depends on no node"):
            g.cost(rebuilt, name="lost")
        g.cost(rebuilt, name="declared", depends_on=())  # declared: the user says it depends on no node


def test_a_cost_with_no_node_but_a_gradient_is_fine_when_nothing_left_torch() -> None:
    logits = _logits(3)
    with Graph() as g:
        z = g.sample("z", Categorical(logits=logits), n=4)
        g.cost(TABLE3[z])
        g.cost(torch.softmax(logits, -1).square().sum(), name="penalty")  # a KL-like term: no node
    g.loss().backward()


def test_graph_sample_returns_the_samples_not_the_relaxations() -> None:
    logits = _logits(3)
    with Graph() as g:
        x = g.sample("x", Bernoulli(logits=logits), gradest.REBAR(), n=2)
        d = g.sample("d", Bernoulli(logits=logits), gradest.DisARM(), n=2)
        assert x.shape == (2, 3) and d.shape == (2, 3)
        with pytest.raises(RuntimeError, match=r"TensorBase.__bool__ turned a tensor computed from node 'x' into a "
                                                r"Python value that differs at the node's auxiliary points"):
            bool((x == 1).any())  # control flow on x would not follow x's relaxed points
        g.cost((x - 0.3).square() + (d - 0.6).square())
    g.loss().backward()
    assert bool(((x == 0) | (x == 1)).all()) and bool(((d == 0) | (d == 1)).all())  # plain samples now


# ---- non-finite values ------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [math.inf, -math.inf], ids=["+inf", "-inf"])
def test_infinite_graph_costs_are_refused(bad: float) -> None:
    with Graph() as g:
        x = g.sample("x", Normal(torch.zeros(3, requires_grad=True), 1.0), n=2)
        with pytest.raises(ValueError, match=r"Graph.cost: cost 'cost0' contains [+-]inf"):
            g.cost(x * 0 + bad)


def test_pathwise_overflow_is_refused() -> None:
    loc = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match=r"f's output contains \+inf"):
        expectation(lambda x: torch.exp(100 * x), Normal(loc, 10.0), gradest.Pathwise(), n=4)


def test_iwae_bound_with_every_log_weight_minus_inf_is_refused() -> None:
    q = Normal(torch.zeros(3, requires_grad=True), 1.0)
    with pytest.raises(ValueError, match=r"iwae_bound: log_joint's output is -inf for all n=3 samples"):
        gradest.iwae_bound(lambda z: torch.full(z.shape, -math.inf), q, n=3)
    # some -inf (zero-probability samples) are legal
    log_joint = lambda z: torch.where(z > 3, -math.inf, -(z - 1) ** 2)  # noqa: E731
    assert bool(torch.isfinite(gradest.iwae_bound(log_joint, q, n=64)).all())


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "+inf", "-inf"])
@pytest.mark.parametrize("rule", ["Enumerate", "DisARM", "ScoreFunction", "OptimalConstant", "RELAX", "REBAR"])
def test_non_finite_bernoulli_logits_are_refused(rule: str, bad: float) -> None:
    est = {"Enumerate": gradest.Enumerate(), "DisARM": gradest.DisARM(), "ScoreFunction": gradest.ScoreFunction(),
           "OptimalConstant": gradest.ScoreFunction(gradest.OptimalConstant()),
           "RELAX": gradest.RELAX(nn.Linear(1, 1)), "REBAR": gradest.REBAR()}[rule]
    logits = torch.tensor([0.0, bad, 0.5], requires_grad=True)
    where = "ScoreFunction" if rule == "OptimalConstant" else rule
    kind = {"nan": "NaN", "inf": r"\+inf", "-inf": "-inf"}[str(bad)]
    with pytest.raises(ValueError, match=rf"{where}: dist=Bernoulli.* has logits with {kind} \(1 of 3 elements\)"):
        expectation(lambda b: (b - 0.3) ** 2, Bernoulli(logits=logits, validate_args=False), est, n=4)


@pytest.mark.parametrize("rule", ["REBAR", "RELAX", "GumbelRao"])
def test_masked_logits_are_refused_where_a_rule_perturbs_them(rule: str) -> None:
    """Before: REBAR's relaxed points were NaN and the error blamed f."""
    est = {"REBAR": gradest.REBAR(), "RELAX": gradest.RELAX(nn.Linear(3, 1)), "GumbelRao": gradest.GumbelRao(3)}[rule]
    logits = torch.tensor([[0.0, -math.inf, 0.5]], requires_grad=True)
    with pytest.raises(ValueError, match=rf"{rule}: .* logits of -inf, masked categories.*masked_fill\(mask, -1e4\)"):
        expectation(lambda x: (x * TABLE3.float()).sum(-1), OneHotCategorical(logits=logits), est, n=4)


@pytest.mark.parametrize("rule", ["Enumerate", "ScoreFunction", "LeaveOneOut", "OptimalConstant", "GumbelSoftmax",
                                  "StraightThrough", "UnorderedSet"])
def test_masked_logits_get_the_exact_zero_gradient_elsewhere(rule: str) -> None:
    est = {"Enumerate": gradest.Enumerate(), "ScoreFunction": gradest.ScoreFunction(),
           "LeaveOneOut": gradest.ScoreFunction(gradest.LeaveOneOut()),
           "OptimalConstant": gradest.ScoreFunction(gradest.OptimalConstant()),
           "GumbelSoftmax": gradest.GumbelSoftmax(0.5), "StraightThrough": gradest.StraightThrough(),
           "UnorderedSet": gradest.UnorderedSet(2)}[rule]
    logits = torch.tensor([[0.0, -math.inf, 0.5]], dtype=F64, requires_grad=True)
    s = expectation(lambda x: (x * TABLE3).sum(-1), OneHotCategorical(logits=logits), est, n=8)
    (g,) = torch.autograd.grad(s.sum(), logits)
    assert bool(torch.isfinite(g).all()) and float(g[0, 1]) == 0.0


def test_constant_baseline_values() -> None:
    with pytest.raises(ValueError, match=r"Constant: b=nan must be finite"):
        gradest.Constant(math.nan)
    with pytest.raises(ValueError, match=r"Constant: b has shape \(7,\), which does not broadcast to dist.batch_shape"):
        expectation(lambda b: b, Bernoulli(logits=_logits(3)), gradest.ScoreFunction(gradest.Constant(torch.ones(7))),
                    n=2)


def test_enumerate_is_exact_at_probabilities_zero_and_one() -> None:
    """Before: the gradient was 0 at p ∈ {0, 1} (through clamped logits); exact: f(1) − f(0)."""
    p = torch.tensor([0.0, 1.0, 0.5], dtype=F64, requires_grad=True)
    s = expectation(lambda b: 3 * b + b**2, Bernoulli(probs=p), gradest.Enumerate())
    (g,) = torch.autograd.grad(s.sum(), p)
    assert g.tolist() == [4.0, 4.0, 4.0]
    with pytest.raises(ValueError, match=r"ScoreFunction: .* has probs of exactly 0 or 1 at 2 element\(s\)"):
        expectation(lambda b: 3 * b, Bernoulli(probs=p), gradest.ScoreFunction(), n=2)


def test_optimal_constant_moments_do_not_overflow_in_float32() -> None:
    """Costs near 1e37 in float32: the moments f·s² are formed in float64, and the baseline (hence the
    gradient) is linear in f, so scaling the costs by 1e37 scales the gradient by exactly that."""
    grads = []
    for scale in (1.0, 1e37):
        logits = torch.zeros(3, requires_grad=True)
        torch.manual_seed(3)
        s = expectation(lambda b, scale=scale: scale * (b + 1), Bernoulli(logits=logits), gradest.ScoreFunction(
            gradest.OptimalConstant()), n=4)
        grads.append(torch.autograd.grad(s.sum(), logits)[0])
    assert bool(torch.isfinite(grads[1]).all()) and bool((grads[0] != 0).any())
    torch.testing.assert_close(grads[1].double(), 1e37 * grads[0].double(), rtol=1e-5, atol=0.0)


# ---- contract violations ---------------------------------------------------------------------------------


def test_control_variate_with_a_constant_mean_where_it_depends_on_theta() -> None:
    """Before: ControlVariate(g, 0.5) silently dropped c·∇E[g]."""
    logits = _logits(3)
    with pytest.raises(ValueError, match=r"ControlVariate: mean_of_g=0.5 is a constant, but the distribution"):
        expectation(lambda b: b, Bernoulli(logits=logits), gradest.ScoreFunction(gradest.ControlVariate(
            lambda b: b, 0.5)), n=4)
    with pytest.raises(ValueError, match=r"ControlVariate: mean_of_g\(dist\) carries no gradient"):
        expectation(lambda b: b, Bernoulli(logits=logits), gradest.ScoreFunction(gradest.ControlVariate(
            lambda b: b, lambda d: d.mean.detach())), n=4)
    with pytest.raises(TypeError, match=r"ControlVariate: mean_of_g='a' must be a callable"):
        gradest.ControlVariate(lambda b: b, "a")


def test_cryptic_errors_now_name_the_argument() -> None:
    logits = _logits(4)
    with pytest.raises(TypeError, match=r"f returned dtype=torch.bool; costs must be floating point"):
        expectation(lambda k: k == 1, Categorical(logits=logits), gradest.ScoreFunction(gradest.LeaveOneOut()), n=4)
    with pytest.raises(ValueError, match=r"Critic: module=Linear failed on inputs of shape \(3, 1\)"):
        expectation(lambda b: b, Bernoulli(logits=_logits(3)), gradest.ScoreFunction(gradest.Critic(nn.Linear(5, 1))),
                    n=2)
    with pytest.raises(ValueError, match=r"expectation: nothing in the surrogate requires grad"):
        expectation(lambda x: x, Normal(torch.zeros(3), 1.0), n=2)


@pytest.mark.parametrize("rule", ["UnorderedSet", "Critic", "REBAR", "GumbelSoftmax", "DisARM", "Enumerate"])
def test_empty_batches_give_empty_surrogates(rule: str) -> None:
    est = {"UnorderedSet": gradest.UnorderedSet(2), "Critic": gradest.ScoreFunction(gradest.Critic(nn.Linear(1, 1))),
           "REBAR": gradest.REBAR(), "GumbelSoftmax": gradest.GumbelSoftmax(0.5), "DisARM": gradest.DisARM(),
           "Enumerate": gradest.Enumerate()}[rule]
    logits = torch.zeros(0, requires_grad=True)
    s = expectation(lambda b: b * 1.0, Bernoulli(logits=logits), est, n=2)
    assert s.shape == (0,)
    s.sum().backward()


def test_implicit_reparam_on_gamma_points_to_pathwise() -> None:
    """Before: the backward failed inside torch ("derivative for igamma not implemented")."""
    with pytest.raises(NotImplementedError, match=r"ImplicitReparam: dist=Gamma.* use Pathwise\(\)"):
        expectation(lambda x: x, Gamma(torch.ones(3, requires_grad=True), 1.0), gradest.ImplicitReparam(), n=2)


@pytest.mark.parametrize("make", [lambda: gradest.GumbelSoftmax(1.0), lambda: gradest.GumbelRao(3),
                                  lambda: gradest.REBAR()], ids=["GumbelSoftmax", "GumbelRao", "REBAR"])
def test_an_annealed_temperature_survives_a_checkpoint(make) -> None:  # noqa: ANN001
    est = make()
    est.temperature = 0.123
    buffer = io.BytesIO()
    torch.save(est.state_dict(), buffer)
    buffer.seek(0)
    loaded = make()
    loaded.load_state_dict(torch.load(buffer, weights_only=True))
    assert loaded.temperature == 0.123
    with pytest.raises(ValueError, match=r"load_state_dict: .* is not a .* state \(version 1\)"):
        loaded.load_state_dict({"_extra_state": {"temperature": 0.5}})


def test_a_default_predicate_that_raises_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: every later expectation without an estimator failed with the predicate's raw error."""
    from gradest.estimators import base

    monkeypatch.setattr(base, "_DEFAULTS", list(base._DEFAULTS))

    def small(dist) -> bool:  # noqa: ANN001
        return dist.param_shape[-1] <= 8  # Normal has no param_shape

    gradest.register_default(small)(lambda dist, n: gradest.Enumerate())
    with pytest.raises(TypeError, match=r"register_default: the predicate .*small.* raised AttributeError.*Normal"):
        expectation(lambda x: x, Normal(torch.zeros(2, requires_grad=True), 1.0))
