"""Attacks on exact marginalisation in ``Graph`` (issue 13): inputs a user writes by mistake or ambition.

The tests marked ``FINDING`` fail on the code they were written against (each comment says what happens
and what should); the others are attacks the code survives, not already covered by ``test_marginal.py``.
References are independent float64 computations: brute force over every joint state, the forward
algorithm, or quadrature for Monte Carlo nodes (then ``assert_unbiased``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np
import pytest
import torch
from torch import Tensor
from torch.distributions import Bernoulli, Categorical, Independent, Normal, OneHotCategorical

from gradest import Enumerate, Graph, LeaveOneOut, ScoreFunction
from gradest.testing import assert_unbiased
from tests.graph.common import flat_grads, seeded

F64 = torch.float64
TIGHT = {"rtol": 1e-9, "atol": 1e-9}


def _randn(*shape: int, seed: int, grad: bool = True) -> Tensor:
    t = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return t.requires_grad_() if grad else t


def _same(loss: Tensor, exact: Tensor, params: Sequence[Tensor]) -> None:
    """Value and gradient (zeros where unused) agree to 1e-9."""
    torch.testing.assert_close(loss, exact, **TIGHT)
    torch.testing.assert_close(flat_grads(loss, params, retain_graph=True), flat_grads(exact, params), **TIGHT)


def _brute_minus_log_p(sizes: Sequence[int], log_joint: Callable[[tuple[int, ...]], Tensor]) -> Tensor:
    """−log Σ_s exp(log_joint(s)) over every joint state ``s``."""
    return -torch.logsumexp(torch.stack([log_joint(s) for s in itertools.product(*map(range, sizes))]), 0)


def _brute_expectation(sizes: Sequence[int], log_p: Callable[[tuple[int, ...]], Tensor],
                       cost: Callable[[tuple[int, ...]], Tensor]) -> Tensor:
    return sum(log_p(s).exp() * cost(s) for s in itertools.product(*map(range, sizes)))  # type: ignore[return-value]


def _log_chain(init: Tensor, trans: Tensor, s: Sequence[int]) -> Tensor:
    lp = torch.log_softmax(init, -1)[s[0]]
    for t in range(1, len(s)):
        lp = lp + torch.log_softmax(trans, -1)[s[t - 1], s[t]]
    return lp


def _forward(init: Tensor, trans: Tensor, log_emit: Tensor) -> Tensor:
    """−log p(y) by the forward algorithm; ``log_emit`` ``[T, K]``."""
    alpha = torch.log_softmax(init, -1) + log_emit[0]
    for t in range(1, log_emit.shape[0]):
        alpha = torch.logsumexp(alpha.unsqueeze(-1) + torch.log_softmax(trans, -1), -2) + log_emit[t]
    return -torch.logsumexp(alpha, -1)


def _quadrature(n: int = 60) -> tuple[Tensor, Tensor]:
    """Gauss–Hermite nodes and weights for E over a standard normal."""
    x, w = np.polynomial.hermite_e.hermegauss(n)
    return torch.tensor(x, dtype=F64), torch.tensor(w / w.sum(), dtype=F64)


# =====================================================================================================
# FINDINGS: each fails on the current code
# =====================================================================================================


def test_two_enumerated_nodes_per_step_one_without_a_transition_of_its_own() -> None:
    """FINDING. A markov step with two enumerated nodes, z_t | z_{t−1} and e_t | z_t (a per-step
    mixture component), and T >= 3: the chain engine flattens the previous step's lanes, but e_{t−1}
    has no factor reaching step t, so its lane is a size-1 dim and `_log_matmul` raises torch's
    "The size of tensor a (6) must match the size of tensor b (3)". Right: −log p(y) (as for T = 2)."""
    k, length = 3, 3
    init, trans, locs, emit = _randn(k, seed=1), _randn(k, k, seed=2), _randn(k, seed=3), _randn(k, 2, seed=4)
    y = _randn(length, seed=5, grad=False)
    with Graph() as g:
        z = None
        for t in g.markov(range(length)):
            z = g.sample(f"z_{t}", Categorical(logits=init if t == 0 else trans[z]), Enumerate())
            e = g.sample(f"e_{t}", Categorical(logits=emit[z]), Enumerate())
            g.observe(f"y_{t}", Normal(locs[z] + e.to(F64), 1.0), y[t])
    loss = g.loss()

    def log_joint(s: tuple[int, ...]) -> Tensor:
        zs, es = s[:length], s[length:]
        lp = _log_chain(init, trans, zs)
        for t in range(length):
            lp = lp + torch.log_softmax(emit, -1)[zs[t], es[t]] + Normal(locs[zs[t]] + es[t], 1.0).log_prob(y[t])
        return lp

    _same(loss, _brute_minus_log_p([k] * length + [2] * length, log_joint), (init, trans, locs, emit))


def test_an_enumerated_node_shared_by_a_batch_of_observations() -> None:
    """FINDING (silent wrong value). One enumerated z (no batch dims) and a batch of i.i.d. observations
    y_b | z: the class docstring says a factor with more batch dims than a node is credited to all its
    elements, i.e. z is shared, so −log p(y) = −log Σ_z p(z) Π_b p(y_b | z) (Pyro's semantics for a
    site outside the plate). The graph returns Σ_b −log Σ_z p(z) p(y_b | z) (z redrawn per datum):
    7.298 instead of 6.680. Right: the shared marginal (as with Independent(..., 1), which is exact),
    or an error naming Independent(...)."""
    init, locs = _randn(3, seed=1), _randn(3, seed=4)
    y = _randn(4, seed=62, grad=False)
    with Graph() as g:
        z = g.sample("z", Categorical(logits=init), Enumerate())
        g.observe("y", Normal(locs[z].unsqueeze(-1), 1.0), y)  # log-probability [K, B]
    exact = -torch.logsumexp(torch.log_softmax(init, -1) + Normal(locs.unsqueeze(-1), 1.0).log_prob(y).sum(-1), 0)
    _same(g.loss(), exact, (init, locs))


def test_an_hmm_with_several_emissions_per_step_as_a_batch() -> None:
    """FINDING (silent wrong value). The same in a chain: y_t has M coordinates, observed as a batch
    [M] (the natural way to write a multivariate emission). Each coordinate is treated as its own copy
    of the chain: 14.121 instead of the forward algorithm's 14.341."""
    k, m, length = 3, 2, 4
    init, trans, locs = _randn(k, seed=1), _randn(k, k, seed=2), _randn(k, m, seed=4)
    y = _randn(length, m, seed=5, grad=False)
    with Graph() as g:
        z = None
        for t in g.markov(range(length)):
            z = g.sample(f"z_{t}", Categorical(logits=init if t == 0 else trans[z]), Enumerate())
            g.observe(f"y_{t}", Normal(locs[z], 1.0), y[t])
    exact = _forward(init, trans, Normal(locs, 1.0).log_prob(y.unsqueeze(1)).sum(-1))
    _same(g.loss(), exact, (init, trans, locs))


def test_a_shared_first_state_feeding_a_batch_of_chains() -> None:
    """FINDING (silent wrong value). z_0 has no batch dims; B chains continue from it (transition
    tables [B, K, K]). Expected costs: the chain engine adds z_0's cost once per chain (B times:
    3.346 instead of 2.037 for B = 4). Observations: each chain gets its own sum over z_0 (27.03
    instead of 24.97 in a variant of this test; min-fill without markov is wrong the same way).
    Right: E[c_0(z_0)] + Σ_b Σ_t E[c_t(z_t^b)]; −log Σ_{z_0} p(z_0) Π_b p(y^b | z_0)."""
    k, b, length = 3, 4, 4
    init, trans = _randn(k, seed=1), _randn(b, k, k, seed=61)
    costs = _randn(length, k, seed=3, grad=False)
    rows = torch.arange(b)
    with Graph() as g:
        z = g.sample("z_0", Categorical(logits=init), Enumerate())
        g.cost(costs[0][z])
        for t in g.markov(range(1, length)):
            z = g.sample(f"z_{t}", Categorical(logits=trans[:, z].movedim(0, -2) if t == 1 else trans[rows, z]),
                         Enumerate())
            g.cost(costs[t][z])
    p0 = torch.softmax(init, -1)
    exact = (p0 * costs[0]).sum()
    for chain in range(b):
        p = p0
        for t in range(1, length):
            p = p @ torch.softmax(trans[chain], -1)
            exact = exact + (p * costs[t]).sum()
    _same(g.loss(), exact, (init, trans))


@pytest.mark.parametrize("observed", [False, True])
def test_probabilities_of_exactly_zero_that_require_grad_are_refused_in_a_graph(observed: bool) -> None:
    """FINDING (silent wrong gradient, now an error). gradest.expectation gives the exact gradient at a
    probability of exactly 0 ([0, 1, 3] here: its weights are the probabilities). A Graph eliminates
    through log-probabilities, which torch clamps there: the gradient was [0, 0, 0] (and wrong rows of a
    transition matrix in a chain). Log space cannot carry it, so the node is refused, naming logits;
    masked logits (−inf) are exact and accepted."""
    table = torch.tensor([1.0, 2.0, 4.0], dtype=F64)
    y = torch.tensor(3.0, dtype=F64)
    probs = torch.tensor([1.0, 0.0, 0.0], dtype=F64, requires_grad=True)
    refused = r"node 'z' is built from probs with entries of exactly 0.*logits"
    with Graph() as g, pytest.raises(ValueError, match=refused):
        g.sample("z", Categorical(probs=probs), Enumerate())
    logits = torch.tensor([0.0, -torch.inf, -torch.inf], dtype=F64, requires_grad=True)
    with Graph() as g:
        z = g.sample("z", Categorical(logits=logits), Enumerate())
        g.observe("y", Normal(table[z], 1.0), y) if observed else g.cost(table[z])
    p = torch.softmax(logits, -1)
    exact = -(p * Normal(table, 1.0).log_prob(y).exp()).sum().log() if observed else (p * table).sum()
    torch.testing.assert_close(g.loss(), exact, **TIGHT)
    torch.testing.assert_close(torch.autograd.grad(g.loss(), logits)[0], torch.zeros(3, dtype=F64), **TIGHT)


def test_many_enumerated_nodes_without_markov_are_an_error_naming_markov() -> None:
    """FINDING (unhelpful crash). A chain of 70 enumerated nodes written without Graph.markov: each node
    gets a fresh sample dim, and at ~64 torch raises "only tensors with up to 64 dims are supported"
    (inside the user's Categorical(...)). Right: refuse the node before that (at sample), naming
    Graph.markov."""
    init, trans = _randn(2, seed=1), _randn(2, 2, seed=2)
    with pytest.raises(ValueError, match=r"markov"), Graph() as g:
        z = None
        for t in range(70):
            z = g.sample(f"z_{t}", Categorical(logits=init if t == 0 else trans[z]), Enumerate())
            g.cost(trans.detach()[0][z])


def test_many_markov_loops_do_not_exhaust_the_sample_dims() -> None:
    """FINDING (unhelpful crash). 40 independent sequences, each its own inner Graph.markov inside an
    outer Graph.markov (pyro.markov nests like this): every inner chain takes two fresh sample
    positions that are never recycled, and at ~32 sequences torch raises "only tensors with up to 64
    dims are supported". Right: recycle them (the outer markov declares the sequences' history), or
    an error naming the fix."""
    k, n, length = 2, 40, 3
    init, trans, locs = _randn(k, seed=1), _randn(k, k, seed=2), _randn(k, seed=3)
    y = _randn(n, length, seed=4, grad=False)
    try:
        with Graph() as g:
            for i in g.markov(range(n)):
                z = None
                for t in g.markov(range(length)):
                    z = g.sample(f"z_{i}_{t}", Categorical(logits=init if t == 0 else trans[z]), Enumerate())
                    g.observe(f"y_{i}_{t}", Normal(locs[z], 1.0), y[i, t])
        loss = g.loss()
    except ValueError as err:  # an error is acceptable if it names the remedy
        assert "markov" in str(err)
        return
    exact = sum(_forward(init, trans, Normal(locs, 1.0).log_prob(y[i].unsqueeze(-1))) for i in range(n))
    _same(loss, exact, (init, trans, locs))


def test_a_history_2_chain_is_ordered_in_linear_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """FINDING (time blow-up, fixed). A Graph.markov(history=2) chain is not a chain to `_chain` (a
    factor spans three steps), so loss() hands all T nodes to greedy min-fill, whose ordering was
    O(T²) in Python: loss() took 0.06, 0.24, 1.12, 6.8 s at T = 200, 400, 800, 1600 (one thread). The
    order now keeps a heap whose keys change only around each eliminated variable: the work (keys
    computed) doubles, not quadruples, with the length. Speed itself is not asserted in tests."""
    import gradest.graph.eliminate as engine

    computed = []

    def ordered(length: int) -> None:
        computed.append(0)
        original = engine.math.prod

        def counting(values):  # type: ignore[no-untyped-def]
            computed[-1] += 1
            return original(values)

        monkeypatch.setattr(engine.math, "prod", counting)
        scopes = [(t,) if t == 0 else (t - 1, t) if t == 1 else (t - 2, t - 1, t) for t in range(length)]
        engine.order(scopes, dict.fromkeys(range(length), 2), list(range(length)))
        monkeypatch.setattr(engine.math, "prod", original)

    ordered(500)
    ordered(1000)
    assert computed[1] < 2.2 * computed[0], computed

    k, length = 2, 300  # and the loss of such a chain is exact (against a brute force on a short one below)
    init, trans, w = _randn(k, seed=1), _randn(k, k, seed=2), _randn(k, k, k, seed=3)
    y = _randn(length, seed=4, grad=False)
    with Graph() as g:
        zs: list[Tensor] = []
        for t in g.markov(range(length), history=2):
            logits = init if t == 0 else trans[zs[-1]] if t == 1 else w[zs[-2], zs[-1]]
            zs.append(g.sample(f"z_{t}", Categorical(logits=logits), Enumerate()))
            g.observe(f"y_{t}", Normal(zs[-1].to(F64), 1.0), y[t])
    assert torch.isfinite(g.loss())


def test_enumerate_fallback_applies_when_the_support_exceeds_its_own_budget() -> None:
    """FINDING. Enumerate(budget=10, fallback=ScoreFunction(LeaveOneOut())) on 50 categories: expectation
    uses the fallback; Graph.sample raises "has 50 joint support points, over budget=10; ... name a
    sampling estimator for such nodes: Enumerate(fallback=...)" — the one the user named. Right: the
    node is drawn by the fallback (Enumerate's docstring)."""
    logits = torch.zeros(50, dtype=F64, requires_grad=True)
    with Graph() as g:
        z = g.sample("z", Categorical(logits=logits), Enumerate(budget=10, fallback=ScoreFunction(LeaveOneOut())), n=4)
        g.cost(torch.cos(z.to(F64)))
    assert type(g.nodes[0].estimator) is ScoreFunction


def test_enumerate_fallback_applies_when_the_factor_exceeds_the_graph_budget() -> None:
    """FINDING. A 40-state chain in Graph(enumerate_budget=1000) with Enumerate(fallback=...): z_1's factor
    has 1600 joint values, over the graph's budget, but `Enumerate.delegate` compares it with
    Enumerate's own budget (65536), keeps Enumerate, and Graph.sample raises "... name a sampling
    estimator for such nodes: Enumerate(fallback=ScoreFunction(LeaveOneOut()))" — named already. (The
    fallback test in test_marginal.py passes only because its 90,000 exceeds both budgets.) Right:
    z_1 onwards drawn by the fallback."""
    s = 40
    init, trans, locs = _randn(s, seed=2), _randn(s, s, seed=3), _randn(s, seed=4)
    y = _randn(4, seed=1, grad=False)
    with seeded(0), Graph(enumerate_budget=1000) as g:
        z = None
        for t in g.markov(range(4)):
            z = g.sample(f"z_{t}", Categorical(logits=init if t == 0 else trans[z]),
                         Enumerate(fallback=ScoreFunction(LeaveOneOut())), n=4)
            g.cost((locs[z] - y[t]) ** 2)
    assert [type(n.estimator).__name__ for n in g.nodes] == ["Enumerate"] + ["ScoreFunction"] * 3
    assert bool(torch.isfinite(flat_grads(g.loss(), (init, trans, locs))).all())


def test_an_enumerated_node_below_a_sampled_node_below_an_enumerated_one() -> None:
    """FINDING (crash). z1 (enumerated) -> x | z1 (pathwise) -> z2 | x (enumerated, Bernoulli(logits=x)) ->
    cost(z2, z1): `compose.terms` raises KeyError: 1 (x's weight was excluded as 'inside' z1's component,
    but z2 formed its own). Right: an unbiased gradient (reference by quadrature over x)."""
    r, k = 3000, 3
    gen = torch.Generator().manual_seed(7)
    logits0, mu0 = torch.randn(k, generator=gen, dtype=F64), torch.randn(k, generator=gen, dtype=F64)
    table = torch.tensor([0.5, 2.0], dtype=F64)
    params = [p.expand(r, *p.shape).clone().requires_grad_() for p in (logits0, mu0)]
    rows = torch.arange(r)
    with seeded(5), Graph() as g:
        z1 = g.sample("z1", Categorical(logits=params[0]), Enumerate())
        x = g.sample("x", Normal(params[1][rows, z1], 1.0), n=2)
        z2 = g.sample("z2", Bernoulli(logits=x), Enumerate())
        g.cost(table[z2.long()] * (1 + z1.to(F64)))
    draws = flat_grads(g.loss(), params, r)
    base = [p.clone().requires_grad_() for p in (logits0, mu0)]
    nodes, weights = _quadrature()
    p_on = torch.sigmoid(base[1].unsqueeze(-1) + nodes)  # [K, Q]
    inner = (weights * ((1 - p_on) * table[0] + p_on * table[1])).sum(-1)
    exact = (torch.softmax(base[0], -1) * inner * (1 + torch.arange(k, dtype=F64))).sum()
    assert_unbiased(draws, flat_grads(exact, base))


@pytest.mark.parametrize("shape", [(3,), (3, 1)])
def test_observed_data_lined_up_with_a_sample_dim_is_an_error(shape: tuple[int, ...]) -> None:
    """FINDING (silent wrong value). z has K = 3 states (its samples are a leading dim of size 3). Data of
    shape (3,) broadcasts *along z's sample dim* (y_k is scored only under z = k: loss 1.706, neither the
    i.i.d. 6.264 nor the per-datum 5.489), and data of shape (3, 1) puts a data dim left of it, read as
    the sample dim (5.491). Data cannot vary with a latent state: right is an error naming value= and
    the fix (batch dims after the sample dims; Independent for one event)."""
    init, locs = _randn(3, seed=1), _randn(3, seed=4)
    y = torch.tensor([0.3, -1.0, 2.0], dtype=F64).reshape(shape)
    with Graph() as g:
        z = g.sample("z", Categorical(logits=init), Enumerate())
        with pytest.raises(ValueError, match=r"value"):
            g.observe("y", Normal(locs[z], 1.0), y)
            g.loss()


@pytest.mark.parametrize("kind", ["observe", "cost"])
def test_depends_on_that_omits_a_tracked_dependency_is_an_error(kind: str) -> None:
    """FINDING (silent wrong value). In a tracked graph, depends_on="a" for a value built from node b
    (a, b independent) overrides what the tracker found: the factor is laid out as a's, and the loss is
    wrong (cost: −0.098 instead of −0.470; observation: a's marginal instead of b's). The graph knows the
    true dependencies: right is an error naming depends_on, the missing node and the fix."""
    init, locs = _randn(3, seed=1), _randn(3, seed=4)
    with Graph() as g:
        g.sample("a", Categorical(logits=init), Enumerate())
        b = g.sample("b", Categorical(logits=2 * init), Enumerate())
        with pytest.raises(ValueError, match=r"depends_on.*'b'"):
            if kind == "observe":
                g.observe("y", Normal(locs[b], 1.0), torch.tensor(0.3, dtype=F64), depends_on="a")
            else:
                g.cost(locs[b], depends_on="a")
            g.loss()


def test_a_python_float_observation_keeps_the_distributions_dtype() -> None:
    """FINDING (silent precision loss). observe(..., 0.3) with a float64 distribution converts the data to
    torch's default dtype (float32: 0.30000001192...) before log_prob: the loss is off by 2.5e-9.
    Right: the distribution's dtype."""
    init, locs = _randn(3, seed=1), _randn(3, seed=4)
    with Graph() as g:
        z = g.sample("z", Categorical(logits=init), Enumerate())
        g.observe("y", Normal(locs[z], 1.0), 0.3)
    exact = -torch.logsumexp(torch.log_softmax(init, -1) + Normal(locs, 1.0).log_prob(torch.tensor(0.3, dtype=F64)), 0)
    _same(g.loss(), exact, (init, locs))


def test_observed_data_outside_the_support_names_the_observation() -> None:
    """FINDING (unhelpful error). A symbol outside a categorical emission's support at step 2 of a chain
    raises torch's "Expected value argument (Tensor of shape ()) to be within the support
    (IntegerInterval(...)) ... found invalid values: 7", which does not say which of the observations
    it is or what to do. Right: an error naming the observation ('y_2'), the value and the fix."""
    init, trans, emit = _randn(3, seed=1), _randn(3, 3, seed=2), _randn(3, 4, seed=3)
    y = torch.tensor([0, 3, 7, 1])
    with pytest.raises(ValueError, match=r"'y_2'"), Graph() as g:
        z = None
        for t in g.markov(range(4)):
            z = g.sample(f"z_{t}", Categorical(logits=init if t == 0 else trans[z]), Enumerate())
            g.observe(f"y_{t}", Categorical(logits=emit[z]), y[t])


def test_an_observation_name_used_twice_is_an_error() -> None:
    """FINDING (minor). Graph.sample refuses a name used twice; Graph.observe accepts a repeated name (and
    a node's name), so its errors ("the log-probability of observation 'y' is NaN") can name the wrong
    one. Right: the same refusal as sample's (Pyro refuses duplicate sites too)."""
    init, locs = _randn(3, seed=1), _randn(3, seed=4)
    with Graph() as g:
        z = g.sample("z", Categorical(logits=init), Enumerate())
        g.observe("y", Normal(locs[z], 1.0), torch.tensor(0.3, dtype=F64))
        with pytest.raises(ValueError, match=r"name='y'"):
            g.observe("y", Normal(locs[z], 1.0), torch.tensor(0.5, dtype=F64))


# =====================================================================================================
# Attacks survived (not covered by test_marginal.py)
# =====================================================================================================


@pytest.mark.parametrize("history", [2, 3])
@pytest.mark.parametrize("observed", [False, True])
def test_higher_order_chains_equal_brute_force(history: int, observed: bool) -> None:
    """z_t | z_{t−history..t−1} (a table over all of them), costs or observations on each z_t."""
    k, length = 2, 6
    init, locs = _randn(k, seed=1), _randn(k, seed=4)
    tables = [_randn(*(k,) * (d + 1), seed=10 + d) for d in range(1, history + 1)]  # z_t | the last d states
    y, costs = _randn(length, seed=5, grad=False), _randn(length, k, seed=6, grad=False)
    with Graph() as g:
        zs: list[Tensor] = []
        for t in g.markov(range(length), history=history):
            d = min(t, history)
            logits = init if d == 0 else tables[d - 1][tuple(zs[-d:])]
            zs.append(g.sample(f"z_{t}", Categorical(logits=logits), Enumerate()))
            g.observe(f"y_{t}", Normal(locs[zs[-1]], 1.0), y[t]) if observed else g.cost(costs[t][zs[-1]])

    def log_p(s: tuple[int, ...]) -> Tensor:
        lp = torch.log_softmax(init, -1)[s[0]]
        for t in range(1, length):
            d = min(t, history)
            lp = lp + torch.log_softmax(tables[d - 1], -1)[s[t - d : t + 1]]
        return lp

    params = (init, locs, *tables)
    if observed:
        exact = _brute_minus_log_p([k] * length, lambda s: log_p(s) + sum(
            Normal(locs[s[t]], 1.0).log_prob(y[t]) for t in range(length)))
    else:
        exact = _brute_expectation([k] * length, log_p, lambda s: sum(costs[t][s[t]] for t in range(length)))
    _same(g.loss(), exact, params)


def _hmm_log_emit(locs: Tensor, y: Tensor) -> Tensor:
    return Normal(locs, 1.0).log_prob(y.unsqueeze(-1))


def test_chain_control_flow_equals_the_forward_algorithm() -> None:
    """markov over an enumerate() of tensors; a held generator left by break and resumed; nodes drawn
    after the break outside the loop; two chains advanced in lockstep by zip of two markov generators;
    nested markov carrying one chain across the inner loops; two sequential chains."""
    k = 3
    init, trans, locs = _randn(k, seed=1), _randn(k, k, seed=2), _randn(k, seed=3)
    y = _randn(12, seed=4, grad=False)
    params = (init, trans, locs)

    def step(g: Graph, name: str, z: Tensor | None, yt: Tensor) -> Tensor:
        z = g.sample(name, Categorical(logits=init if z is None else trans[z]), Enumerate())
        g.observe("y" + name, Normal(locs[z], 1.0), yt)
        return z

    with Graph() as g:  # break, resume the same generator, then continue outside it
        z = step(g, "z_0", None, y[0])
        steps = g.markov(enumerate(y[1:8], 1))
        for t, yt in steps:
            z = step(g, f"z_{t}", z, yt)
            if t == 3:
                break
        for t, yt in steps:
            z = step(g, f"z_{t}", z, yt)
            if t == 5:
                break
        for t in range(6, 9):
            z = step(g, f"z_{t}", z, y[t])
    _same(g.loss(), _forward(init, trans, _hmm_log_emit(locs, y[:9])), params)

    with Graph() as g:  # zipped generators: two chains in lockstep
        a, b = step(g, "a_0", None, y[0]), step(g, "b_0", None, y[6])
        for t, _ in zip(g.markov(range(1, 6)), g.markov(range(1, 6))):
            a, b = step(g, f"a_{t}", a, y[t]), step(g, f"b_{t}", b, y[6 + t])
    exact = _forward(init, trans, _hmm_log_emit(locs, y[:6])) + _forward(init, trans, _hmm_log_emit(locs, y[6:]))
    _same(g.loss(), exact, params)

    with Graph() as g:  # nested markov carrying one chain through the inner loops
        z, n = step(g, "z_s", None, y[0]), 1
        for i in g.markov(range(2)):
            for t in g.markov(range(2)):
                z, n = step(g, f"z_{i}_{t}", z, y[n]), n + 1
    _same(g.loss(), _forward(init, trans, _hmm_log_emit(locs, y[:5])), params)


def test_steps_with_different_state_sizes_equal_brute_force() -> None:
    """Alternating 3- and 2-state steps (the chain engine refuses: min-fill), costs and observations."""
    sizes = [3, 2, 3, 2, 3]
    tables = {(a, b): _randn(a, b, seed=10 + 7 * a + b) for a in (2, 3) for b in (2, 3)}
    init, emit = _randn(3, seed=20), {3: _randn(3, seed=21), 2: _randn(2, seed=22)}
    y = _randn(5, seed=5, grad=False)
    params = (init, *tables.values(), *emit.values())

    def log_p(s: tuple[int, ...]) -> Tensor:
        return torch.log_softmax(init, -1)[s[0]] + sum(
            torch.log_softmax(tables[(sizes[t - 1], sizes[t])], -1)[s[t - 1], s[t]] for t in range(1, 5))

    for observed in (False, True):
        with Graph() as g:
            z = None
            for t in g.markov(range(5)):
                z = g.sample(f"z_{t}", Categorical(logits=init if t == 0 else tables[(sizes[t - 1], sizes[t])][z]),
                             Enumerate())
                if observed:
                    g.observe(f"y_{t}", Normal(emit[sizes[t]][z], 1.0), y[t])
                else:
                    g.cost((t + 1) * emit[sizes[t]][z])
        if observed:
            exact = _brute_minus_log_p(sizes, lambda s: log_p(s) + sum(
                Normal(emit[sizes[t]][s[t]], 1.0).log_prob(y[t]) for t in range(5)))
        else:
            exact = _brute_expectation(sizes, log_p, lambda s: sum((t + 1) * emit[sizes[t]][s[t]] for t in range(5)))
        _same(g.loss(), exact, params)


@pytest.mark.parametrize("family", ["bernoulli", "onehot", "independent"])
def test_chains_of_other_families_equal_brute_force(family: str) -> None:
    """Bernoulli, OneHotCategorical and Independent(Bernoulli, 1) (a 2-bit state) chains, observed."""
    length = 4
    y = _randn(length, seed=5, grad=False)
    w0, w, m = _randn(2, seed=50), _randn(2, 2, 2, seed=51), _randn(2, seed=52)
    with Graph() as g:
        z = None
        for t in g.markov(range(length)):
            if family == "bernoulli":
                z = g.sample(f"z_{t}", Bernoulli(logits=w0[0] if t == 0 else w[0, 0][z.long()]), Enumerate())
                loc = m[z.long()]
            elif family == "onehot":
                z = g.sample(f"z_{t}", OneHotCategorical(logits=w0 if t == 0 else z.to(F64) @ w[0]), Enumerate())
                loc = (z.to(F64) * m).sum(-1)
            else:
                logits = w0 if t == 0 else w[z[..., 0].long(), z[..., 1].long()]
                z = g.sample(f"z_{t}", Independent(Bernoulli(logits=logits), 1), Enumerate())
                loc = (z * m).sum(-1)
            g.observe(f"y_{t}", Normal(loc, 1.0), y[t])

    ls = torch.nn.functional.logsigmoid
    if family == "independent":
        states = list(itertools.product(range(2), repeat=2))

        def bits(logits: Tensor, s: tuple[int, int]) -> Tensor:
            return ls(logits[0] if s[0] else -logits[0]) + ls(logits[1] if s[1] else -logits[1])

        def log_joint(idx: tuple[int, ...]) -> Tensor:
            s = [states[i] for i in idx]
            lp = bits(w0, s[0]) + sum(bits(w[s[t - 1][0], s[t - 1][1]], s[t]) for t in range(1, length))
            return lp + sum(Normal(s[t][0] * m[0] + s[t][1] * m[1], 1.0).log_prob(y[t]) for t in range(length))

        exact = _brute_minus_log_p([4] * length, log_joint)
    elif family == "bernoulli":
        def log_joint(s: tuple[int, ...]) -> Tensor:
            lp = ls(w0[0] if s[0] else -w0[0])
            for t in range(1, length):
                logit = w[0, 0][s[t - 1]]
                lp = lp + ls(logit if s[t] else -logit)
            return lp + sum(Normal(m[s[t]], 1.0).log_prob(y[t]) for t in range(length))

        exact = _brute_minus_log_p([2] * length, log_joint)
    else:
        exact = _forward(w0, w[0], _hmm_log_emit(m, y))
    _same(g.loss(), exact, (w0, w, m))


def test_a_loopy_grid_of_observations_equals_brute_force() -> None:
    """A 2×3 grid of bits, x_ij | x_{i−1,j}, x_{i,j−1} (loops: min-fill), observations on horizontal pairs,
    and a collider (two independent roots, one observation of both) in the same graph."""
    tables = {(i, j): _randn(2, 2, seed=10 + 3 * i + j) for i in range(2) for j in range(3)}
    m, ra, rb, mc = _randn(2, 2, seed=51), _randn(3, seed=52), _randn(2, seed=53), _randn(3, 2, seed=54)
    y = _randn(2, 2, seed=7, grad=False)
    keys = list(tables)
    with Graph() as g:
        x: dict[tuple[int, int], Tensor] = {}
        for i, j in keys:
            up = x[(i - 1, j)].long() if i else 0
            left = x[(i, j - 1)].long() if j else 0
            x[(i, j)] = g.sample(f"x{i}{j}", Bernoulli(logits=tables[(i, j)][up, left]), Enumerate())
        for i, j in itertools.product(range(2), range(2)):
            g.observe(f"y{i}{j}", Normal(m[x[(i, j)].long(), x[(i, j + 1)].long()], 1.0), y[i, j])
        a = g.sample("a", Categorical(logits=ra), Enumerate())
        b = g.sample("b", Categorical(logits=rb), Enumerate())
        g.observe("collider", Normal(mc[a, b], 1.0), y[0, 0])

    def log_joint(s: tuple[int, ...]) -> Tensor:
        v = dict(zip(keys, s))
        lp = torch.zeros((), dtype=F64)
        for i, j in keys:
            logit = tables[(i, j)][v[(i - 1, j)] if i else 0, v[(i, j - 1)] if j else 0]
            lp = lp + torch.nn.functional.logsigmoid(logit if v[(i, j)] else -logit)
        return lp + sum(Normal(m[v[(i, j)], v[(i, j + 1)]], 1.0).log_prob(y[i, j])
                        for i, j in itertools.product(range(2), range(2)))

    collider = -torch.logsumexp((torch.log_softmax(ra, -1)[:, None] + torch.log_softmax(rb, -1)[None]
                                 + Normal(mc, 1.0).log_prob(y[0, 0])).reshape(-1), 0)
    exact = _brute_minus_log_p([2] * 6, log_joint) + collider
    _same(g.loss(), exact, (*tables.values(), m, ra, rb, mc))


def test_third_derivatives_of_a_marginal_likelihood_are_exact() -> None:
    k, length = 3, 5
    init, trans, locs = _randn(k, seed=1), _randn(k, k, seed=2), _randn(k, seed=3)
    y = _randn(length, seed=4, grad=False)
    v = _randn(k, k, seed=5, grad=False)
    with Graph() as g:
        z = None
        for t in g.markov(range(length)):
            z = g.sample(f"z_{t}", Categorical(logits=init if t == 0 else trans[z]), Enumerate())
            g.observe(f"y_{t}", Normal(locs[z], 1.0), y[t])

    def derivatives(loss: Tensor) -> list[Tensor]:
        (gt,) = torch.autograd.grad(loss, trans, create_graph=True)
        second = torch.autograd.grad((gt * v).sum(), (init, trans, locs), create_graph=True)
        return [*second, *torch.autograd.grad((second[1] * v).sum(), (init, trans, locs))]

    for a, b in zip(derivatives(g.loss()), derivatives(_forward(init, trans, _hmm_log_emit(locs, y))), strict=True):
        torch.testing.assert_close(a, b, **TIGHT)


def test_a_pathwise_node_above_an_observed_enumerated_node_is_unbiased() -> None:
    """x ~ N(m, 1) (pathwise, 2 samples) shifts the emission of an enumerated z: the loss is
    E_x[−log Σ_z p(z) p(y | z, x)] (reference by quadrature)."""
    r = 3000
    m0, init0, locs0 = torch.tensor(0.2, dtype=F64), _randn(3, seed=1, grad=False), _randn(3, seed=4, grad=False)
    y = torch.tensor(0.3, dtype=F64)
    params = [p.expand(r, *p.shape).clone().requires_grad_() for p in (m0, init0, locs0)]
    rows = torch.arange(r)
    with seeded(4), Graph() as g:
        x = g.sample("x", Normal(params[0], 1.0), n=2)
        z = g.sample("z", Categorical(logits=params[1]), Enumerate())
        g.observe("y", Normal(params[2][rows, z] + x, 1.0), y)
    draws = flat_grads(g.loss(), params, r)
    base = [p.clone().requires_grad_() for p in (m0, init0, locs0)]
    nodes, weights = _quadrature(80)
    xs = (base[0] + nodes).unsqueeze(-1)
    log_z = torch.logsumexp(torch.log_softmax(base[1], -1) + Normal(base[2] + xs, 1.0).log_prob(y), -1)
    exact = -(weights * log_z).sum()
    assert_unbiased(draws, flat_grads(exact, base))


def test_a_switching_linear_dynamical_system_is_unbiased() -> None:
    """A Rao-Blackwellised SLDS: s_t an enumerated chain, x_t | s_t, x_{t−1} ~ N(a_{s_t}/2 + x_{t−1}/2, 1)
    pathwise, cost Σ_t (x_t − y_t)² (the continuous state carries the whole switch history: exact
    reference by enumerating s with Gaussian moments)."""
    r, k, length = 3000, 2, 3
    init0, trans0, a0 = (_randn(*s, seed=i, grad=False) for i, s in enumerate(((k,), (k, k), (k,)), 1))
    y = _randn(length, seed=0, grad=False)
    params = [p.expand(r, *p.shape).clone().requires_grad_() for p in (init0, trans0, a0)]
    rows = torch.arange(r)
    with seeded(1), Graph() as g:
        s = g.sample("s_0", Categorical(logits=params[0]), Enumerate())
        x = g.sample("x_0", Normal(params[2][rows, s], 1.0))
        g.cost((x - y[0]) ** 2)
        for t in g.markov(range(1, length)):
            s = g.sample(f"s_{t}", Categorical(logits=params[1][rows, s]), Enumerate())
            x = g.sample(f"x_{t}", Normal(params[2][rows, s] * 0.5 + 0.5 * x, 1.0))
            g.cost((x - y[t]) ** 2)
    draws = flat_grads(g.loss(), params, r)
    base = [p.clone().requires_grad_() for p in (init0, trans0, a0)]

    def cost(st: tuple[int, ...]) -> Tensor:
        mean, var = base[2][st[0]], 1.0
        total = (mean - y[0]) ** 2 + var
        for t in range(1, length):
            mean, var = 0.5 * base[2][st[t]] + 0.5 * mean, 0.25 * var + 1.0
            total = total + (mean - y[t]) ** 2 + var
        return total

    exact = _brute_expectation([k] * length, lambda st: _log_chain(base[0], base[1], st), cost)
    assert_unbiased(draws, flat_grads(exact, base))


def test_unclear_or_unsupported_combinations_are_errors() -> None:
    """A cost on z_0 and an observation on z_1 (one component through the transition); an observation of
    an enumerated node drawn from a sampled node below another enumerated one; a node drawn from two
    steps back with history=1 (a skipped step); a sampled node and its cost spanning z_t and z_{t−2}."""
    init, trans, locs = _randn(3, seed=1), _randn(3, 3, seed=2), _randn(3, seed=3)
    y = torch.tensor(0.3, dtype=F64)
    with Graph() as g:
        z0 = g.sample("z0", Categorical(logits=init), Enumerate())
        g.cost(locs[z0] ** 2, name="c0")
        z1 = g.sample("z1", Categorical(logits=trans[z0]), Enumerate())
        g.observe("y1", Normal(locs[z1], 1.0), y)
    with pytest.raises(ValueError, match=r"\['z0', 'z1'\] carry both costs \(\['c0'\]\) and observations"):
        g.loss()
    with Graph() as g:
        z1 = g.sample("z1", Categorical(logits=init), Enumerate())
        x = g.sample("x", Normal(locs[z1], 1.0))
        z2 = g.sample("z2", Bernoulli(logits=x), Enumerate())
        g.observe("y", Normal(z2.to(F64), 1.0), y)
    with pytest.raises(ValueError, match=r"\['y'\] depend on sampled node\(s\) \['x'\] drawn below"):
        g.loss()
    with Graph() as g, pytest.raises(ValueError, match=r"node 'z_3' .* from node 'z_1' of step 0, more than history=1"):
        z = g.sample("z_0", Categorical(logits=init), Enumerate())
        for t in g.markov(range(1, 5)):
            if t != 2:
                z = g.sample(f"z_{t}", Categorical(logits=trans[z]), Enumerate())
    with Graph() as g:
        zs = []
        for t in g.markov(range(3)):
            zs.append(g.sample(f"z_{t}", Categorical(logits=init if t == 0 else trans[zs[-1]]), Enumerate()))
        x = g.sample("x", Normal(locs[zs[0]] + locs[zs[2]], 1.0))
        g.cost(x**2, name="far")
    with pytest.raises(ValueError, match=r"'far' depends on nodes 'z_0' and 'z_2', which share a sample position"):
        g.loss()


def test_float32_long_chain_is_accurate() -> None:
    """float32 parameters, T = 2000: relative error of −log p(y) and its gradient against float64."""
    k, length = 3, 2000
    init, trans, locs = _randn(k, seed=1), _randn(k, k, seed=2), _randn(k, seed=3)
    y = _randn(length, seed=9, grad=False)
    params32 = [p.detach().float().requires_grad_() for p in (init, trans, locs)]
    with Graph(track=False) as g:
        z = g.sample("z_0", Categorical(logits=params32[0]), Enumerate())
        g.observe("y_0", Normal(params32[2][z], 1.0), y[0].float(), depends_on="z_0")
        for t in g.markov(range(1, length)):
            z = g.sample(f"z_{t}", Categorical(logits=params32[1][z]), Enumerate(), depends_on=f"z_{t-1}")
            g.observe(f"y_{t}", Normal(params32[2][z], 1.0), y[t].float(), depends_on=f"z_{t}")
    loss = g.loss()
    assert loss.dtype == torch.float32
    exact = _forward(init, trans, _hmm_log_emit(locs, y.float().double()))
    torch.testing.assert_close(loss.double(), exact, rtol=1e-6, atol=0)
    got, want = flat_grads(loss, params32).double(), flat_grads(exact, (init, trans, locs))
    assert float((got - want).abs().max() / want.abs().max()) < 1e-3


def test_observation_value_forms_that_are_fine() -> None:
    """Integer data for a Normal, float32 data for a float64 distribution, data that requires grad
    (the gradient in the data is the forward algorithm's), and a (1,)-shaped datum."""
    init, locs = _randn(3, seed=1), _randn(3, seed=4)
    data = torch.tensor(1.0, dtype=F64, requires_grad=True)
    for value, ref in ((torch.tensor(1), torch.tensor(1.0, dtype=F64)), (torch.tensor([1.0], dtype=F64), data),
                       (data, data)):
        with Graph() as g:
            z = g.sample("z", Categorical(logits=init), Enumerate())
            g.observe("y", Normal(locs[z], 1.0), value)
        exact = -torch.logsumexp(torch.log_softmax(init, -1) + Normal(locs, 1.0).log_prob(ref), 0)
        params = (init, locs, data) if value is data else (init, locs)
        _same(g.loss(), exact, params)
