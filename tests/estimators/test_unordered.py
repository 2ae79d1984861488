"""UnorderedSet on factorised families, beyond the registry (``cases_unordered.py`` checks unbiasedness).

Stochastic beam search must draw k distinct joint states with the law of sampling without
replacement: the frequency of every unordered set matches its probability, computed by brute force
over the orders in which it can be drawn.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import Tensor
from torch.distributions import Bernoulli, Categorical, Distribution, Independent, Normal, OneHotCategorical

from gradest import UnorderedSet, expectation
from gradest.estimators import unordered
from gradest.testing import z_for
from tests.graph.common import seeded

F64 = torch.float64


def _set_probability(p: dict[tuple, float], members: list[tuple]) -> float:
    """P(the first |members| draws without replacement are ``members``, in any order)."""
    total = 0.0
    for order in itertools.permutations(members):
        prob, taken = 1.0, 0.0
        for s in order:
            prob *= p[s] / (1.0 - taken)
            taken += p[s]
        total += prob
    return total


@pytest.mark.parametrize("children", [2, 4, 64], ids=lambda c: f"children={c}")
@pytest.mark.parametrize("family", ["bits", "categorical"])
def test_beam_search_draws_sets_with_the_law_of_sampling_without_replacement(
        family: str, children: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every unordered set's frequency over 40,000 draws is within z·SE of its exact probability (a
    binomial standard error, z for a family-wise false-alarm rate of 1e-3 over all sets), whether the
    search extends one coordinate per step, two, or all at once (``CHILDREN``)."""
    monkeypatch.setattr(unordered, "CHILDREN", children)
    k, draws = 2, 40_000
    if family == "bits":
        logits = torch.tensor([0.8, -0.4, 0.1], dtype=F64)
        dist: Distribution = Independent(Bernoulli(logits=logits), 1)
        states = list(itertools.product((0, 1), repeat=3))
        prob = {s: math.prod(float(torch.sigmoid(logits[j] if b else -logits[j])) for j, b in enumerate(s))
                for s in states}
    else:
        logits = torch.tensor([[0.5, -0.3, 0.0], [-1.0, 0.2, 0.7]], dtype=F64)
        dist = Independent(Categorical(logits=logits), 1)
        p = torch.softmax(logits, -1)
        states = list(itertools.product(range(3), repeat=2))
        prob = {s: float(p[0, s[0]] * p[1, s[1]]) for s in states}
    with seeded(3):
        value = UnorderedSet(k).draw(dist, draws).values  # [k·n, d]
    members = value.reshape(k, draws, -1).long()
    counts: dict[frozenset, int] = {}
    for i in range(draws):
        key = frozenset(tuple(members[j, i].tolist()) for j in range(k))
        assert len(key) == k  # distinct
        counts[key] = counts.get(key, 0) + 1
    sets = [frozenset(c) for c in itertools.combinations(states, k)]
    z = z_for(1e-3, len(sets))
    for s in sets:
        expected = _set_probability(prob, list(s))
        se = math.sqrt(expected * (1 - expected) / draws)
        assert abs(counts.get(s, 0) / draws - expected) <= z * se, (sorted(s), counts.get(s, 0) / draws, expected)


@pytest.mark.parametrize("make", [
    lambda logits: Independent(Bernoulli(logits=logits), 2),
    lambda logits: Independent(OneHotCategorical(logits=logits.unsqueeze(-1).expand(3, 2, 2, 2)), 2),
], ids=["Independent(Bernoulli, 2)", "Independent(OneHotCategorical, 2)"])
def test_sets_over_several_event_dims_have_the_event_shape_and_are_exact_at_full_support(make) -> None:
    """Event shape [2, 2]: values ``[k·n, *B, *E]``; k = the joint support size gives the exact value."""
    logits = torch.randn(3, 2, 2, generator=torch.Generator().manual_seed(1), dtype=F64).requires_grad_()
    dist = make(logits)
    support = 16
    table = torch.randn(support, generator=torch.Generator().manual_seed(2), dtype=F64)

    def f(x: Tensor) -> Tensor:
        bits = x.argmax(-1) if x.dim() == 5 else x.long()  # one-hot [.., 2, 2, 2] or bits [.., 2, 2]
        return table[(bits.flatten(-2) * torch.tensor([8, 4, 2, 1])).sum(-1)]

    with seeded(4):
        draw = UnorderedSet(3).draw(dist, 2)
    assert draw.points.shape == (6, 3, *dist.event_shape)
    with seeded(5):
        s = expectation(f, dist, UnorderedSet(support))
    states = torch.tensor(list(itertools.product((0, 1), repeat=4)), dtype=F64).reshape(support, 1, 2, 2)
    if isinstance(dist.base_dist, OneHotCategorical):
        states = torch.nn.functional.one_hot(states.long(), 2).to(F64)
    exact = (dist.log_prob(states).exp() * f(states)).sum(0)
    torch.testing.assert_close(s, exact)


def test_large_factorised_support_runs_and_weights_sum_to_one() -> None:
    """200 bits (the binary VAE's latent): the joint support cannot be enumerated; the k distinct
    states are found by the beam, their weights p(s)R(S, s) sum to 1 per set."""
    logits = torch.randn(5, 200, generator=torch.Generator().manual_seed(6), dtype=F64)
    with seeded(7):
        draw = UnorderedSet(4).draw(Independent(Bernoulli(logits=logits), 1), 3)
    assert draw.points.shape == (12, 5, 200)
    weights = (draw.log_weight.exp() * 3).reshape(4, 3, 5).sum(0)  # log_weight holds p(s)R(S, s)/n
    torch.testing.assert_close(weights, torch.ones_like(weights))
    v = draw.points.reshape(4, 3, 5, 200)
    assert all(len({tuple(v[j, i, b].tolist()) for j in range(4)}) == 4 for i in range(3) for b in range(5))


def test_unordered_set_family_and_support_errors() -> None:
    for dist in (Normal(torch.zeros(3), 1.0), Independent(Normal(torch.zeros(3), 1.0), 1)):
        with pytest.raises(NotImplementedError, match=r"UnorderedSet: dist=.* is not Bernoulli, Categorical "
                                                      r"or OneHotCategorical .*use Pathwise\(\)"):
            UnorderedSet(2).check(dist, 1)
    with pytest.raises(ValueError, match=r"UnorderedSet: k=9 is larger than the support size 8 of "
                                         r"dist=Independent\(Bernoulli"):
        UnorderedSet(9).check(Independent(Bernoulli(logits=torch.zeros(4, 3)), 1), 1)
    with pytest.raises(ValueError, match=r"UnorderedSet: k=3 is larger than the support size 2"):
        UnorderedSet(3).check(Bernoulli(logits=torch.zeros(4)), 1)
    with pytest.raises(ValueError, match=r"UnorderedSet: k=10 is larger than the support size 9"):
        UnorderedSet(10).check(Independent(OneHotCategorical(logits=torch.zeros(2, 3)), 1), 1)
