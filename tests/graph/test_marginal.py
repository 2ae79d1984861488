"""Exact marginalisation in ``Graph``: enumerated nodes summed out by variable elimination.

Against float64 references computed independently: forward marginals (expected costs), autograd
through the forward algorithm (−log p(y)), and brute force over every joint state for small models.
Values and gradients agree to 1e-9; mixed graphs (Monte Carlo nodes above and below enumerated ones)
are unbiased within z·SE.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import Tensor
from torch.distributions import Bernoulli, Categorical, Independent, Normal

import gradest
from gradest import Enumerate, Graph, LeaveOneOut, Pathwise, ScoreFunction
from gradest.graph.eliminate import Factor, chain_expectation, chain_forward, chain_total, eliminate
from gradest.testing import assert_unbiased
from tests.graph.common import seeded

F64 = torch.float64
TIGHT = {"rtol": 1e-9, "atol": 1e-9}


def _params(k: int, seed: int, batch: tuple[int, ...] = ()) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(*batch, *s, generator=g, dtype=F64).requires_grad_() for s in ((k,), (k, k), (k,)))


def _grads(out: Tensor, params: tuple[Tensor, ...]) -> Tensor:
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(out, params)])


# ---- expected costs along a chain: forward marginals ----------------------------------------------------


def _expected_by_marginals(init: Tensor, trans: Tensor, costs: Tensor) -> Tensor:
    """Σ_t E[c_t(z_t)] for z_0 ~ softmax(init), z_t | z_{t−1} ~ softmax(trans[z_{t−1}]): forward marginals."""
    p = torch.softmax(init, -1)
    P = torch.softmax(trans, -1)
    total = (p * costs[0]).sum()
    for t in range(1, costs.shape[0]):
        p = p @ P
        total = total + (p * costs[t]).sum()
    return total


def _expected_by_graph(init: Tensor, trans: Tensor, costs: Tensor, *, track: bool = True) -> Tensor:
    with Graph(track=track) as g:
        z = g.sample("z_0", Categorical(logits=init), Enumerate())
        g.cost(costs[0][z], depends_on=None if track else "z_0")
        for t in g.markov(range(1, costs.shape[0])):
            z = g.sample(f"z_{t}", Categorical(logits=trans[z]), Enumerate(), depends_on=None if track else f"z_{t-1}")
            g.cost(costs[t][z], depends_on=None if track else f"z_{t}")
    return g.loss()


@pytest.mark.parametrize(("k", "length"), [(2, 2), (3, 3), (5, 50), (4, 2)])
def test_expected_costs_along_a_chain_are_exact(k: int, length: int) -> None:
    init, trans, _ = _params(k, length)
    costs = torch.randn(length, k, generator=torch.Generator().manual_seed(1), dtype=F64)
    exact = _expected_by_marginals(init, trans, costs)
    exact_grads = _grads(exact, (init, trans))
    for track in (True, False):
        loss = _expected_by_graph(init, trans, costs, track=track)
        torch.testing.assert_close(loss, exact, **TIGHT)
        torch.testing.assert_close(_grads(loss, (init, trans)), exact_grads, **TIGHT)


@pytest.mark.slow
@pytest.mark.parametrize("k", [2, 5])
def test_expected_costs_along_a_long_chain_are_exact(k: int) -> None:
    init, trans, _ = _params(k, 3)
    costs = torch.randn(10_000, k, generator=torch.Generator().manual_seed(2), dtype=F64)
    exact = _expected_by_marginals(init, trans, costs)
    loss = _expected_by_graph(init, trans, costs, track=False)
    torch.testing.assert_close(loss, exact, **TIGHT)
    torch.testing.assert_close(_grads(loss, (init, trans)), _grads(exact, (init, trans)), **TIGHT)


def test_second_derivatives_of_an_expected_cost_are_exact() -> None:
    """The weights are probabilities, so Hessian-vector products are exact too."""
    init, trans, _ = _params(3, 5)
    costs = torch.randn(6, 3, generator=torch.Generator().manual_seed(3), dtype=F64)
    v = torch.randn(3, 3, generator=torch.Generator().manual_seed(4), dtype=F64)

    def hvp(loss: Tensor) -> Tensor:
        (g,) = torch.autograd.grad(loss, trans, create_graph=True)
        return torch.autograd.grad((g * v).sum(), (init, trans))

    by_graph = hvp(_expected_by_graph(init, trans, costs))
    exact = hvp(_expected_by_marginals(init, trans, costs))
    for a, b in zip(by_graph, exact, strict=True):
        torch.testing.assert_close(a, b, **TIGHT)


# ---- observations: the forward algorithm -------------------------------------------------------------


def _forward_algorithm(init: Tensor, trans: Tensor, locs: Tensor, y: Tensor) -> Tensor:
    """−log p(y) of the Gaussian HMM, by the log-space forward algorithm (batch dims lead)."""
    log_trans = torch.log_softmax(trans, -1)
    log_emit = Normal(locs.unsqueeze(-2), 1.0).log_prob(y.unsqueeze(-1))  # [*B, T, K]
    alpha = torch.log_softmax(init, -1) + log_emit[..., 0, :]
    for t in range(1, y.shape[-1]):
        alpha = torch.logsumexp(alpha.unsqueeze(-1) + log_trans, -2) + log_emit[..., t, :]
    return -torch.logsumexp(alpha, -1)


def _hmm_by_graph(init: Tensor, trans: Tensor, locs: Tensor, y: Tensor, *, track: bool = True) -> Tensor:
    """The same model written as the issue writes it; batch dims B of the parameters are many chains."""
    rows = torch.arange(init.shape[0]) if init.dim() > 1 else ()
    with Graph(track=track) as g:
        z = g.sample("z_0", Categorical(logits=init), Enumerate())
        g.observe("y_0", Normal(_at(locs, z, rows), 1.0), y[..., 0], depends_on=None if track else "z_0")
        for t in g.markov(range(1, y.shape[-1])):
            logits = trans[rows, z] if init.dim() > 1 else trans[z]
            z = g.sample(f"z_{t}", Categorical(logits=logits), Enumerate(), depends_on=None if track else f"z_{t-1}")
            g.observe(f"y_{t}", Normal(_at(locs, z, rows), 1.0), y[..., t], depends_on=None if track else f"z_{t}")
    return g.loss()


def _at(locs: Tensor, z: Tensor, rows: object) -> Tensor:
    return locs[rows, z] if locs.dim() > 1 else locs[z]


@pytest.mark.parametrize(("k", "length"), [(2, 2), (3, 7), (4, 50), (5, 200)])
def test_marginal_likelihood_equals_the_forward_algorithm(k: int, length: int) -> None:
    init, trans, locs = _params(k, length + 10)
    y = torch.randn(length, generator=torch.Generator().manual_seed(5), dtype=F64)
    exact = _forward_algorithm(init, trans, locs, y)
    params = (init, trans, locs)
    exact_grads = _grads(exact, params)
    for track in (True, False):
        loss = _hmm_by_graph(init, trans, locs, y, track=track)
        torch.testing.assert_close(loss, exact, **TIGHT)
        torch.testing.assert_close(_grads(loss, params), exact_grads, **TIGHT)



def _discrete_hmm(init: Tensor, trans: Tensor, emit: Tensor, y: Tensor) -> Tensor:
    """−log p(y) of an HMM with categorical emissions ``emit[z]`` (probabilities, zeros allowed)."""
    with Graph() as g:
        z = g.sample("z_0", Categorical(logits=init), Enumerate())
        g.observe("y_0", Categorical(logits=emit[z].log()), y[0])
        for t in g.markov(range(1, y.shape[0])):
            z = g.sample(f"z_{t}", Categorical(logits=trans[z]), Enumerate())
            g.observe(f"y_{t}", Categorical(logits=emit[z].log()), y[t])
    return g.loss()


def test_observations_impossible_under_some_states_are_exact() -> None:
    """A symbol that some states cannot emit (log-probability −inf there) leaves a finite loss and
    gradient, equal to the forward algorithm's."""
    init, trans, _ = _params(3, 4)
    emit = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.3, 0.7], [0.2, 0.0, 0.8]], dtype=F64)
    y = torch.tensor([0, 2, 2, 1, 0, 2])
    log_emit = emit.log()[:, y].T  # [T, K]
    alpha = torch.log_softmax(init, -1) + log_emit[0]
    for t in range(1, len(y)):
        alpha = torch.logsumexp(alpha.unsqueeze(-1) + torch.log_softmax(trans, -1), -2) + log_emit[t]
    exact = -torch.logsumexp(alpha, -1)
    loss = _discrete_hmm(init, trans, emit, y)
    torch.testing.assert_close(loss, exact, **TIGHT)
    torch.testing.assert_close(_grads(loss, (init, trans)), _grads(exact, (init, trans)), **TIGHT)



def test_forbidden_transitions_are_exact_in_both_worlds() -> None:
    """A left-to-right chain (transition logits −inf below the diagonal: states never reached again
    have probability zero): expected costs and −log p(y) equal references computed with
    probabilities (no logs), gradients included, and nothing is NaN."""
    k, length = 3, 6
    init, trans, locs = _params(k, 9)
    forbidden = torch.full((k, k), -math.inf, dtype=F64).tril(-1)  # 0 on and above the diagonal
    costs = torch.randn(length, k, generator=torch.Generator().manual_seed(2), dtype=F64)
    y = torch.randn(length, generator=torch.Generator().manual_seed(3), dtype=F64)
    P = torch.softmax(trans + forbidden, -1)

    def graph(observed: bool) -> Tensor:
        with Graph() as g:
            z = g.sample("z_0", Categorical(logits=init), Enumerate())
            g.observe("y_0", Normal(locs[z], 1.0), y[0]) if observed else g.cost(costs[0][z])
            for t in g.markov(range(1, length)):
                z = g.sample(f"z_{t}", Categorical(logits=(trans + forbidden)[z]), Enumerate())
                g.observe(f"y_{t}", Normal(locs[z], 1.0), y[t]) if observed else g.cost(costs[t][z])
        return g.loss()

    p, expected = torch.softmax(init, -1), torch.zeros((), dtype=F64)
    for t in range(length):
        p = p if t == 0 else p @ P
        expected = expected + (p * costs[t]).sum()
    emit = Normal(locs, 1.0).log_prob(y.unsqueeze(-1)).exp()  # [T, K]
    alpha = torch.softmax(init, -1) * emit[0]
    for t in range(1, length):
        alpha = (alpha @ P) * emit[t]
    exact = {False: expected, True: -alpha.sum().log()}
    params = (init, trans, locs)
    for observed in (False, True):
        loss = graph(observed)
        torch.testing.assert_close(loss, exact[observed], **TIGHT)
        got, want = (torch.autograd.grad(v, params, allow_unused=True, retain_graph=True)
                     for v in (loss, exact[observed]))
        for a, b, x in zip(got, want, params):
            torch.testing.assert_close(a if a is not None else torch.zeros_like(x),
                                       b if b is not None else torch.zeros_like(x), **TIGHT)

def test_observations_impossible_under_every_state_are_an_error() -> None:
    init, trans, _ = _params(3, 4)
    emit = torch.tensor([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.2, 0.8, 0.0]], dtype=F64)  # nobody emits 2
    with pytest.raises(ValueError, match=r"probability zero under every joint state.*'y_0'"):
        _discrete_hmm(init, trans, emit, torch.tensor([0, 2, 1]))


def test_a_nan_observation_is_named_and_an_infinite_one_is_impossible() -> None:
    """NaN data (past torch's own check) gives a NaN log-probability: named at loss(); data at +inf has
    probability zero under every state."""
    init, trans, locs = _params(3, 4)

    def loss(y: Tensor) -> Tensor:
        with Graph() as g:
            z = g.sample("z_0", Categorical(logits=init), Enumerate())
            g.observe("y_0", Normal(locs[z], 1.0, validate_args=False), y[0])
            for t in g.markov(range(1, y.shape[0])):
                z = g.sample(f"z_{t}", Categorical(logits=trans[z]), Enumerate())
                g.observe(f"y_{t}", Normal(locs[z], 1.0, validate_args=False), y[t])
        return g.loss()

    with pytest.raises(ValueError, match=r"observation 'y_2' is NaN or \+inf"):
        loss(torch.tensor([0.3, -1.0, math.nan, 0.5], dtype=F64))
    with pytest.raises(ValueError, match=r"probability zero under every joint state"):
        loss(torch.tensor([0.3, -1.0, math.inf, 0.5], dtype=F64))

def test_many_chains_at_once() -> None:
    """Batch dims of the distributions are independent chains: the loss is the sum of their −log p(y)."""
    init, trans, locs = _params(3, 11, batch=(4,))
    y = torch.randn(4, 20, generator=torch.Generator().manual_seed(6), dtype=F64)
    exact = _forward_algorithm(init, trans, locs, y).sum()
    loss = _hmm_by_graph(init, trans, locs, y)
    torch.testing.assert_close(loss, exact, **TIGHT)
    params = (init, trans, locs)
    torch.testing.assert_close(_grads(loss, params), _grads(exact, params), **TIGHT)


def test_a_long_chain_is_exact_in_float64() -> None:
    init, trans, locs = _params(3, 12)
    y = torch.randn(2000, generator=torch.Generator().manual_seed(7), dtype=F64)
    exact = _forward_algorithm(init, trans, locs, y)
    loss = _hmm_by_graph(init, trans, locs, y, track=False)
    torch.testing.assert_close(loss, exact, **TIGHT)
    params = (init, trans, locs)
    torch.testing.assert_close(_grads(loss, params), _grads(exact, params), rtol=1e-9, atol=1e-8)


# ---- factorial and tree-structured models: brute force ---------------------------------------------------


def test_factorial_hmm_equals_brute_force() -> None:
    """Two chains a_t, b_t (3 and 2 states) with one emission per step from both: −log p(y) by summing
    over all (3·2)^T joint states."""
    gen = torch.Generator().manual_seed(8)
    ia, ta = torch.randn(3, generator=gen, dtype=F64), torch.randn(3, 3, generator=gen, dtype=F64)
    ib, tb = torch.randn(2, generator=gen, dtype=F64), torch.randn(2, 2, generator=gen, dtype=F64)
    la, lb = torch.randn(3, generator=gen, dtype=F64), torch.randn(2, generator=gen, dtype=F64)
    params = tuple(p.requires_grad_() for p in (ia, ta, ib, tb, la, lb))
    y = torch.randn(5, generator=gen, dtype=F64)
    length = y.shape[0]

    with Graph() as g:
        a = g.sample("a_0", Categorical(logits=ia), Enumerate())
        b = g.sample("b_0", Categorical(logits=ib), Enumerate())
        g.observe("y_0", Normal(la[a] + lb[b], 1.0), y[0])
        for t in g.markov(range(1, length)):
            a = g.sample(f"a_{t}", Categorical(logits=ta[a]), Enumerate())
            b = g.sample(f"b_{t}", Categorical(logits=tb[b]), Enumerate())
            g.observe(f"y_{t}", Normal(la[a] + lb[b], 1.0), y[t])
    loss = g.loss()

    terms = []
    for sa in itertools.product(range(3), repeat=length):
        for sb in itertools.product(range(2), repeat=length):
            lp = torch.log_softmax(ia, -1)[sa[0]] + torch.log_softmax(ib, -1)[sb[0]]
            for t in range(1, length):
                lp = lp + torch.log_softmax(ta, -1)[sa[t - 1], sa[t]] + torch.log_softmax(tb, -1)[sb[t - 1], sb[t]]
            for t in range(length):
                lp = lp + Normal(la[sa[t]] + lb[sb[t]], 1.0).log_prob(y[t])
            terms.append(lp)
    exact = -torch.logsumexp(torch.stack(terms), 0)
    torch.testing.assert_close(loss, exact, **TIGHT)
    torch.testing.assert_close(_grads(loss, params), _grads(exact, params), **TIGHT)


def test_tree_structured_expected_costs_equal_brute_force() -> None:
    """A root r, two children c1, c2 | r, a grandchild d | c1, c2 (a loop: min-fill elimination); costs on
    pairs and on single nodes."""
    gen = torch.Generator().manual_seed(9)
    lr = torch.randn(3, generator=gen, dtype=F64).requires_grad_()
    w1, w2 = (torch.randn(3, 2, generator=gen, dtype=F64).requires_grad_() for _ in range(2))
    wd = torch.randn(2, 2, 4, generator=gen, dtype=F64).requires_grad_()
    t_rc1, t_c2, t_d = (torch.randn(*s, generator=gen, dtype=F64) for s in ((3, 2), (2,), (2, 4)))
    with Graph() as g:
        r = g.sample("r", Categorical(logits=lr), Enumerate())
        c1 = g.sample("c1", Categorical(logits=w1[r]), Enumerate())
        c2 = g.sample("c2", Categorical(logits=w2[r]), Enumerate())
        d = g.sample("d", Categorical(logits=wd[c1, c2]), Enumerate())
        g.cost(t_rc1[r, c1], name="r,c1")
        g.cost(t_c2[c2], name="c2")
        g.cost(t_d[c1, d], name="c1,d")
    loss = g.loss()
    exact = torch.zeros((), dtype=F64)
    for sr, s1, s2, sd in itertools.product(range(3), range(2), range(2), range(4)):
        p = (torch.softmax(lr, -1)[sr] * torch.softmax(w1[sr], -1)[s1] * torch.softmax(w2[sr], -1)[s2]
             * torch.softmax(wd[s1, s2], -1)[sd])
        exact = exact + p * (t_rc1[sr, s1] + t_c2[s2] + t_d[s1, sd])
    params = (lr, w1, w2, wd)
    torch.testing.assert_close(loss, exact, **TIGHT)
    torch.testing.assert_close(_grads(loss, params), _grads(exact, params), **TIGHT)


# ---- mixed graphs: Monte Carlo nodes above and below enumerated ones -------------------------------------


def test_a_score_function_node_above_an_enumerated_chain_is_unbiased() -> None:
    """w ~ Bernoulli (score function, leave-one-out) selects the transition table of an enumerated chain
    z_0..z_3; costs on every z_t. Exact: enumerate w as well."""
    r = 4000
    gen = torch.Generator().manual_seed(10)
    lw = torch.tensor(0.3, dtype=F64)
    init = torch.randn(3, generator=gen, dtype=F64)
    trans = torch.randn(2, 3, 3, generator=gen, dtype=F64)
    costs = torch.randn(4, 3, generator=gen, dtype=F64)

    def exact(lw: Tensor, init: Tensor, trans: Tensor) -> Tensor:
        pw = torch.sigmoid(lw)
        off, on = (_expected_by_marginals(init, trans[k], costs) for k in (0, 1))
        return (1 - pw) * off + pw * on

    params = [p.expand(r, *p.shape).clone().requires_grad_() for p in (lw, init, trans)]
    rows = torch.arange(r)
    with seeded(11), Graph() as g:
        w = g.sample("w", Bernoulli(logits=params[0]), ScoreFunction(LeaveOneOut()), n=4).long()  # [4, R]
        z = g.sample("z_0", Categorical(logits=params[1]), Enumerate())  # [3, 1, R]: fresh position
        g.cost(costs[0][z])
        for t in g.markov(range(1, 4)):
            z = g.sample(f"z_{t}", Categorical(logits=params[2][rows, w, z]), Enumerate())
            g.cost(costs[t][z])
    loss = g.loss()
    draws = torch.cat([gr.reshape(r, -1) for gr in torch.autograd.grad(loss, params)], 1)
    base = [p.clone().requires_grad_() for p in (lw, init, trans)]
    target = torch.cat([gr.reshape(-1) for gr in torch.autograd.grad(exact(*base), base)])
    assert_unbiased(draws, target)


def test_a_pathwise_node_below_an_enumerated_node_is_unbiased() -> None:
    """z ~ Categorical (enumerated), x | z ~ N(μ_z, σ) (pathwise, 2 samples per value of z), cost (x − 1)²:
    E = Σ_z p(z) ((μ_z − 1)² + σ²)."""
    r = 4000
    gen = torch.Generator().manual_seed(12)
    logits, mu = torch.randn(3, generator=gen, dtype=F64), torch.randn(3, generator=gen, dtype=F64)
    params = [p.expand(r, *p.shape).clone().requires_grad_() for p in (logits, mu)]
    rows = torch.arange(r)
    with seeded(13), Graph() as g:
        z = g.sample("z", Categorical(logits=params[0]), Enumerate())  # [3, R]
        x = g.sample("x", Normal(params[1][rows, z], 0.7), Pathwise(), n=2)  # [2, 3, R]
        g.cost((x - 1.0) ** 2)
    draws = torch.cat([gr.reshape(r, -1) for gr in torch.autograd.grad(g.loss(), params)], 1)
    base = [p.clone().requires_grad_() for p in (logits, mu)]
    exact = (torch.softmax(base[0], -1) * ((base[1] - 1.0) ** 2 + 0.49)).sum()
    assert_unbiased(draws, torch.cat([gr.reshape(-1) for gr in torch.autograd.grad(exact, base)]))


def test_a_switching_chain_with_pathwise_emissions_is_unbiased() -> None:
    """A Rao-Blackwellised switching model: the switch s_t is an enumerated chain, x_t | s_t ~ N(a_{s_t}, 1) is
    pathwise, the cost Σ_t (x_t − y_t)² (an ELBO-like expected cost). E = Σ_t Σ_s p(s_t = s)((a_s − y_t)² + 1)."""
    r = 3000
    gen = torch.Generator().manual_seed(14)
    init, trans = torch.randn(2, generator=gen, dtype=F64), torch.randn(2, 2, generator=gen, dtype=F64)
    a, y = torch.randn(2, generator=gen, dtype=F64), torch.randn(5, generator=gen, dtype=F64)
    params = [p.expand(r, *p.shape).clone().requires_grad_() for p in (init, trans, a)]
    rows = torch.arange(r)
    with seeded(15), Graph() as g:
        s = g.sample("s_0", Categorical(logits=params[0]), Enumerate())
        x = g.sample("x_0", Normal(params[2][rows, s], 1.0))
        g.cost((x - y[0]) ** 2)
        for t in g.markov(range(1, 5)):
            s = g.sample(f"s_{t}", Categorical(logits=params[1][rows, s]), Enumerate())
            x = g.sample(f"x_{t}", Normal(params[2][rows, s], 1.0))
            g.cost((x - y[t]) ** 2)
    draws = torch.cat([gr.reshape(r, -1) for gr in torch.autograd.grad(g.loss(), params)], 1)
    base = [p.clone().requires_grad_() for p in (init, trans, a)]
    per_step = torch.stack([(base[2] - y[t]) ** 2 + 1 for t in range(5)])  # [T, S]
    exact = _expected_by_marginals(base[0], base[1], per_step)
    assert_unbiased(draws, torch.cat([gr.reshape(-1) for gr in torch.autograd.grad(exact, base)]))


# ---- errors -----------------------------------------------------------------------------------------------


def test_a_node_carrying_costs_and_observations_is_an_error() -> None:
    init, trans, locs = _params(2, 20)
    with Graph() as g:
        z = g.sample("z", Categorical(logits=init), Enumerate())
        g.observe("y", Normal(locs[z], 1.0), torch.tensor(0.3, dtype=F64))
        g.cost(locs[z] ** 2, name="c")
    with pytest.raises(ValueError, match=r"Graph.loss: enumerated node\(s\) \['z'\] carry both costs \(\['c'\]\) and "
                                         r"observations \(\['y'\]\)"):
        g.loss()


def test_an_observation_below_a_sampled_node_below_an_enumerated_one_is_an_error() -> None:
    init, _, locs = _params(2, 21)
    with Graph() as g:
        z = g.sample("z", Categorical(logits=init), Enumerate())
        x = g.sample("x", Normal(locs[z], 1.0))
        g.observe("y", Normal(x, 1.0), torch.tensor(0.3, dtype=F64))
    with pytest.raises(ValueError, match=r"observation\(s\) \['y'\] depend on sampled node\(s\) \['x'\] drawn below "
                                         r"enumerated node\(s\) \['z'\]; their Monte Carlo average would sit inside"):
        g.loss()


def test_markov_history_is_enforced() -> None:
    init, trans, _ = _params(2, 22)
    with Graph() as g, pytest.raises(ValueError, match=r"node 'z_2' \(step 2 of Graph.markov\(history=1\)\) is drawn "
                                                       r"from .* node 'z_0' of step 0, more than history=1 steps back"):
        for t in g.markov(range(3)):
            if t == 0:
                first = z = g.sample("z_0", Categorical(logits=init), Enumerate())
            elif t == 1:
                z = g.sample("z_1", Categorical(logits=trans[z]), Enumerate())
            else:
                g.sample("z_2", Categorical(logits=trans[first]), Enumerate())
    with Graph() as g:  # a cost that spans two steps sharing a position: more than the declared history
        z0 = None
        for t in g.markov(range(3)):
            z = g.sample(f"z_{t}", Categorical(logits=init if t == 0 else trans[z]), Enumerate())
            z0 = z if t == 0 else z0
        g.cost((z + z0).to(F64), name="span")
    with pytest.raises(ValueError, match=r"'span' depends on nodes 'z_0' and 'z_2', which share a sample position"):
        g.loss()


def test_markov_arguments() -> None:
    with Graph() as g:
        with pytest.raises(ValueError, match=r"Graph.markov: history=0 must be >= 1"):
            list(g.markov(range(2), history=0))
        with pytest.raises(TypeError, match=r"Graph.markov: history=1.5 must be an int >= 1"):
            list(g.markov(range(2), history=1.5))  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"Graph.observe: value of 'y' depends on node\(s\) \['z'\]"):
            z = g.sample("z", Categorical(logits=torch.zeros(2, requires_grad=True)), Enumerate())
            g.observe("y", Normal(0.0, 1.0), z.to(F64))


def test_a_factor_over_the_budget_is_an_error_or_the_named_fallback() -> None:
    """Three 40-way nodes fully connected by one cost: a factor of 64,000 joint values."""
    logits = torch.zeros(3, 40, dtype=F64, requires_grad=True)
    table = torch.randn(40, 40, 40, generator=torch.Generator().manual_seed(23), dtype=F64)
    with Graph(enumerate_budget=10_000) as g:
        a = g.sample("a", Categorical(logits=logits[0]), Enumerate())
        b = g.sample("b", Categorical(logits=logits[1]), Enumerate())
        c = g.sample("c", Categorical(logits=logits[2]), Enumerate())
        with pytest.raises(ValueError, match=r"cost 'abc' spans a joint enumerated support of 64000 points, over "
                                             r"enumerate_budget=10000"):
            g.cost(table[a, b, c], name="abc")
    # a node whose own factor is over the budget: its fallback samples it instead
    trans = torch.zeros(300, 300, dtype=F64, requires_grad=True)
    with Graph(enumerate_budget=10_000) as g:
        z = g.sample("z", Categorical(logits=trans[0]), Enumerate())
        with pytest.raises(ValueError, match=r"Graph.sample: node 'w' would add a factor over 90000 joint values"):
            g.sample("w", Categorical(logits=trans[z]), Enumerate())
        w = g.sample("w2", Categorical(logits=trans[z]), Enumerate(fallback=ScoreFunction(LeaveOneOut())), n=4)
        assert type(g.nodes[-1].estimator) is ScoreFunction and w.shape[0] == 4
        g.cost(torch.cos(w.to(F64)))
    g.loss().backward()
    assert bool(torch.isfinite(trans.grad).all())



def test_the_fallback_follows_the_graphs_budget_and_its_own() -> None:
    """The fallback is chosen against the graph's budget (a small graph budget, Enumerate's default
    budget), and against Enumerate's own budget (a large graph budget): in both, a sampled node, and
    the loss an unbiased estimate of the exact expectation."""
    logits = torch.randn(10, generator=torch.Generator().manual_seed(3), dtype=F64).requires_grad_()
    table = torch.randn(10, generator=torch.Generator().manual_seed(4), dtype=F64)
    fallback = ScoreFunction(LeaveOneOut())
    for graph_budget, own_budget in ((5, 2**16), (2**16, 4)):
        with Graph(enumerate_budget=graph_budget) as g:
            k = g.sample("k", Categorical(logits=logits), Enumerate(budget=own_budget, fallback=fallback), n=4)
            assert type(g.nodes[0].estimator) is ScoreFunction and k.shape == (4,)
            g.cost(table[k])

    def estimate() -> Tensor:
        with Graph(enumerate_budget=5) as g:
            k = g.sample("k", Categorical(logits=logits), Enumerate(fallback=fallback), n=4)
            g.cost(table[k])
        return torch.autograd.grad(g.loss(), logits)[0]

    exact = torch.autograd.grad((torch.softmax(logits, -1) * table).sum(), logits)[0]
    with seeded(31):
        assert_unbiased(torch.stack([estimate() for _ in range(400)]), exact)

# ---- the engine itself ------------------------------------------------------------------------------------


def test_elimination_equals_brute_force_on_random_factor_graphs() -> None:
    gen = torch.Generator().manual_seed(24)
    sizes = {0: 2, 1: 3, 2: 2, 3: 4, 4: 3}
    scopes = [(0,), (0, 1), (1, 2), (2, 3), (0, 3), (3, 4), (1, 4)]
    logs = [torch.randn(3, *[sizes[v] for v in s], generator=gen, dtype=F64) for s in scopes]  # plate of 3
    rs = [torch.randn(3, *[sizes[v] for v in s], generator=gen, dtype=F64) for s in scopes[:3]]
    factors = [Factor(s, lg, None) for s, lg in zip(scopes, logs)] + [Factor(s, None, r) for s, r in zip(scopes, rs)]
    result = eliminate(factors, sizes, budget=10**6)
    log_terms, weighted = [], []
    for state in itertools.product(*[range(sizes[v]) for v in range(5)]):
        lg = sum(t[(slice(None), *[state[v] for v in s])] for s, t in zip(scopes, logs))
        rr = sum(t[(slice(None), *[state[v] for v in s])] for s, t in zip(scopes[:3], rs))
        log_terms.append(lg)
        weighted.append(rr)
    lg = torch.stack(log_terms)  # [states, 3]
    torch.testing.assert_close(result.log, torch.logsumexp(lg, 0), **TIGHT)
    torch.testing.assert_close(result.r, (torch.softmax(lg, 0) * torch.stack(weighted)).sum(0), **TIGHT)


@pytest.mark.parametrize("length", [1, 2, 3, 7, 16, 33])
def test_chain_engines_equal_a_sequential_pass(length: int) -> None:
    gen = torch.Generator().manual_seed(25 + length)
    s = 3
    first = torch.log_softmax(torch.randn(2, s, generator=gen, dtype=F64), -1)
    pairs = torch.log_softmax(torch.randn(length, 2, s, s, generator=gen, dtype=F64), -1)
    r = torch.randn(length, 2, s, s, generator=gen, dtype=F64)
    r0 = torch.randn(2, s, generator=gen, dtype=F64)
    alpha, alphas, expected = first, [first], (first.exp() * r0).sum(-1)
    for t in range(length):
        joint = alpha.unsqueeze(-1) + pairs[t]
        expected = expected + (joint.exp() * r[t]).sum((-2, -1))
        alpha = torch.logsumexp(joint, -2)
        alphas.append(alpha)
    torch.testing.assert_close(chain_total(first, pairs), torch.logsumexp(alpha, -1), **TIGHT)
    torch.testing.assert_close(chain_forward(first, pairs), torch.stack(alphas[:-1]), **TIGHT)
    torch.testing.assert_close(chain_expectation(Factor((0,), first, r0), (pairs, r)), expected, **TIGHT)
    assert math.isfinite(float(expected.sum()))


def test_observe_is_minus_log_p_without_enumerated_nodes() -> None:
    """An observation of a pathwise node's samples is the cost −log p(y | x)."""
    loc = torch.tensor(0.3, dtype=F64, requires_grad=True)
    with seeded(26), Graph() as g:
        x = g.sample("x", Normal(loc, 1.0), n=3)
        g.observe("y", Normal(x, 0.5), torch.tensor(1.2, dtype=F64))
    with seeded(26):
        x_ref = Normal(loc, 1.0).rsample((3,))
    torch.testing.assert_close(g.loss(), -Normal(x_ref, 0.5).log_prob(torch.tensor(1.2, dtype=F64)).mean(), **TIGHT)
    assert gradest.Graph.observe.__doc__ is not None


def test_an_observation_coupling_an_enumerated_nodes_batch_elements_is_an_error() -> None:
    """Pyro's "no downstream coupling" restriction: a site that depends on all members of an
    enumerated plate. The enumerated rows hold every element at its i-th value (the diagonal of the
    joint), so summing over the batch would give a wrong marginal likelihood (2.84 instead of 1.23
    here, before the check); it is an error naming the remedy."""
    logits = torch.tensor([0.2, 0.8], dtype=F64).log().requires_grad_()
    with Graph() as g:
        a = g.sample("a", Categorical(logits=logits.expand(2, 2)), Enumerate())
        with pytest.raises(ValueError, match=r"Graph.observe: log-probability of 'b' has batch shape \(\) but "
                                             r"depends on node 'a' \(batch shape \(2,\)\).*Independent"):
            g.observe("b", Normal(a.sum(-1).to(F64), 1.0), torch.tensor(1.0, dtype=F64))
    # the remedy: the two coordinates as one enumerated event (their joint support)
    with Graph() as g:
        a = g.sample("a", Independent(Categorical(logits=logits.expand(2, 2)), 1), Enumerate())
        g.observe("b", Normal(a.sum(-1).to(F64), 1.0), torch.tensor(1.0, dtype=F64))
    p = torch.softmax(logits, -1)
    exact = -sum(p[i] * p[j] * Normal(float(i + j), 1.0).log_prob(torch.tensor(1.0, dtype=F64)).exp()
                 for i in range(2) for j in range(2)).log()
    torch.testing.assert_close(g.loss(), exact, **TIGHT)


def test_an_observation_reaching_a_pathwise_node_without_a_derivative_is_refused() -> None:
    """As for costs: Pathwise through ``round`` would give exactly zero (it did, before the check)."""
    mu = torch.zeros(3, requires_grad=True)
    with Graph() as g:
        y = g.sample("y", Normal(mu, 1.0), n=4)
        with pytest.raises(ValueError, match=r"Graph.observe: log-probability of 'o' reaches the points of "
                                             r"Pathwise's node 'y' .* only through operations without a derivative"):
            g.observe("o", Normal(y.round(), 1.0), torch.tensor(1.0))


def test_loss_is_built_once() -> None:
    """A second loss() (logging, then backward) returns the same tensor: a MovingAverage baseline
    updates once (a second update would put this batch's costs into its own baseline)."""
    from gradest import MovingAverage

    baseline = MovingAverage(0.5)
    logits = torch.zeros(3, requires_grad=True)
    with Graph() as g:
        k = g.sample("k", Categorical(logits=logits), ScoreFunction(baseline), n=4)
        g.cost(k.float())
    first = g.loss()
    state = {k: v.clone() for k, v in baseline.state_dict().items()}
    assert g.loss() is first
    assert all(torch.equal(v, baseline.state_dict()[k]) for k, v in state.items())


def test_a_chain_whose_first_state_has_another_size_equals_brute_force() -> None:
    """z_0 with 2 states, then a chain of 3-state nodes (a cryptic torch error before): expected costs
    and −log p(y) against every joint state."""
    gen = torch.Generator().manual_seed(41)
    init, first, trans = (torch.randn(*s, generator=gen, dtype=F64).requires_grad_() for s in ((2,), (2, 3), (3, 3)))
    y = torch.randn(5, generator=gen, dtype=F64)

    def graph(observed: bool) -> Tensor:
        with Graph() as g:
            z = g.sample("z_0", Categorical(logits=init), Enumerate())
            z = g.sample("z_1", Categorical(logits=first[z]), Enumerate())
            g.observe("y_1", Normal(z.to(F64), 1.0), y[1]) if observed else g.cost((z.to(F64) - y[1]) ** 2)
            for t in g.markov(range(2, 5)):
                z = g.sample(f"z_{t}", Categorical(logits=trans[z]), Enumerate())
                g.observe(f"y_{t}", Normal(z.to(F64), 1.0), y[t]) if observed else g.cost((z.to(F64) - y[t]) ** 2)
        return g.loss()

    def brute(observed: bool) -> Tensor:
        terms = []
        for zs in itertools.product(range(2), *[range(3)] * 4):
            lp = torch.log_softmax(init, -1)[zs[0]] + torch.log_softmax(first, -1)[zs[0], zs[1]]
            lp = lp + sum(torch.log_softmax(trans, -1)[zs[t - 1], zs[t]] for t in range(2, 5))
            terms.append(lp + sum(Normal(float(zs[t]), 1.0).log_prob(y[t]) for t in range(1, 5)) if observed
                         else lp.exp() * sum((zs[t] - y[t]) ** 2 for t in range(1, 5)))
        return -torch.logsumexp(torch.stack(terms), 0) if observed else torch.stack(terms).sum()

    params = (init, first, trans)
    for observed in (False, True):
        loss, exact = graph(observed), brute(observed)
        torch.testing.assert_close(loss, exact, **TIGHT)
        torch.testing.assert_close(_grads(loss, params), _grads(exact, params), **TIGHT)


def test_a_baseline_below_an_enumerated_node_sees_the_costs_given_its_states(monkeypatch: pytest.MonkeyPatch) -> None:
    """The costs a sampled node's baseline regresses on are those given each enumerated state (before:
    multiplied by the state's probability, which added variance)."""
    seen = []
    forward = LeaveOneOut.forward

    def spy(self, draw, cost):  # noqa: ANN001, ANN202
        seen.append(cost.detach().clone())
        return forward(self, draw, cost)

    monkeypatch.setattr(LeaveOneOut, "forward", spy)
    logits = torch.tensor([0.0, 2.0], requires_grad=True)
    with seeded(0), Graph() as g:
        z = g.sample("z", Categorical(logits=logits), Enumerate())
        b = g.sample("b", Bernoulli(probs=torch.tensor([0.3, 0.6])[z]), ScoreFunction(LeaveOneOut()), n=4)
        g.cost(b + z.float())
    g.loss().backward()
    torch.testing.assert_close(seen[0], (b + z.float()).detach().expand_as(seen[0]))


@pytest.mark.parametrize("markov", [True, False])
def test_a_shared_first_state_feeding_observed_chains_equals_brute_force(markov: bool) -> None:
    """z_0 (no batch dims) is shared by B chains (batch [B]) with observations: the chains' messages
    multiply before z_0 is summed out, −log Σ_{z_0} p(z_0) Π_b p(y^b | z_0) (each chain summed over z_0
    on its own before the plates were handled). Along a markov chain and in the general order."""
    k, b, length = 2, 2, 3
    gen = torch.Generator().manual_seed(71)
    init, trans, locs = (torch.randn(*s, generator=gen, dtype=F64).requires_grad_() for s in ((k,), (b, k, k), (k,)))
    y = torch.randn(length, b, generator=gen, dtype=F64)
    rows = torch.arange(b)
    with Graph() as g:
        z = g.sample("z_0", Categorical(logits=init), Enumerate())
        g.observe("y_0", Normal(locs[z].unsqueeze(-1), 1.0), y[0])  # [K, B]: z_0 shared by the B data
        steps = g.markov(range(1, length)) if markov else range(1, length)
        for t in steps:
            logits = trans[:, z].movedim(0, -2) if t == 1 else trans[rows, z]
            z = g.sample(f"z_{t}", Categorical(logits=logits), Enumerate())
            g.observe(f"y_{t}", Normal(locs[z], 1.0), y[t])

    def log_joint(s: tuple[int, ...]) -> Tensor:  # s = (z_0, z_1^0, z_1^1, z_2^0, z_2^1)
        total = torch.log_softmax(init, -1)[s[0]] + Normal(locs[s[0]], 1.0).log_prob(y[0]).sum()
        for chain in range(b):
            prev = s[0]
            for t in range(1, length):
                cur = s[1 + (t - 1) * b + chain]
                total = total + torch.log_softmax(trans[chain], -1)[prev, cur]
                total = total + Normal(locs[cur], 1.0).log_prob(y[t, chain])
                prev = cur
        return total

    states = itertools.product(range(k), repeat=1 + (length - 1) * b)
    exact = -torch.logsumexp(torch.stack([log_joint(s) for s in states]), 0)
    params = (init, trans, locs)
    loss = g.loss()
    torch.testing.assert_close(loss, exact, **TIGHT)
    torch.testing.assert_close(_grads(loss, params), _grads(exact, params), **TIGHT)


def test_crossed_plates_are_an_error() -> None:
    """a_i (3 copies) and b_j (4 copies) with observations y_ij of both: no plate order sums them out
    (Pyro's restriction too); an error naming the remedy, never a per-copy answer."""
    init = torch.zeros(2, dtype=F64, requires_grad=True)
    locs = torch.tensor([0.0, 1.0], dtype=F64)
    with Graph() as g:
        a = g.sample("a", Categorical(logits=init.expand(3, 1, 2)), Enumerate())
        b = g.sample("b", Categorical(logits=init.expand(1, 4, 2)), Enumerate())
        g.observe("y", Normal(locs[a] + locs[b], 1.0), torch.zeros(3, 4, dtype=F64))
    shared = r"Graph.loss: eliminating '[ab]': it is shared by the copies of a plate"
    with pytest.raises(NotImplementedError, match=shared):
        g.loss()


def test_enumerate_on_a_family_without_a_support_is_refused_by_name_in_a_graph() -> None:
    """Found by the slow property test: the graph sized the node's factor before the rule's check, and
    torch's bare NotImplementedError came out of Normal.enumerate_support."""
    with Graph() as g, pytest.raises(NotImplementedError, match=r"Enumerate: dist=Normal.* has no enumerable support"):
        g.sample("x", Normal(torch.zeros(2, requires_grad=True), 1.0), Enumerate())
