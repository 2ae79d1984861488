"""Registry cases for UnorderedSet on factorised families (see cases.py for the Case contract).

Sets of k distinct *joint* states of ``Bernoulli``, ``Independent(Bernoulli)``, ``Independent(Categorical)``
and ``Independent(OneHotCategorical)`` are drawn by stochastic beam search; the estimator is claimed
unbiased for every k, and exact on every draw when k is the size of the joint support. (The
single-categorical cases are in ``cases_rebar_relax.py``.)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import Categorical, Independent

from gradest.estimators.base import Estimator
from gradest.estimators.unordered import UnorderedSet
from gradest.problems import BernoulliTable
from tests.estimators.cases import _JOINT_TABLE, BERNOULLI_TOYS, Case, ClosedForm, _case, joint_one_hot_table


def independent_categorical(logits: Tensor) -> Independent:
    return Independent(Categorical(logits=logits), 1)


def joint_categorical_table() -> ClosedForm:
    """``joint_one_hot_table`` with the three 4-way variables as Categorical indices."""

    def f(k: Tensor) -> Tensor:
        return _JOINT_TABLE.to(k.device)[k[..., 0], k[..., 1], k[..., 2]]

    def objective(logits: Tensor) -> Tensor:
        p = torch.softmax(logits, -1)
        joint = torch.einsum("...a,...b,...c->...abc", p[..., 0, :], p[..., 1, :], p[..., 2, :])
        return (joint * _JOINT_TABLE.to(logits)).sum((-3, -2, -1))

    logits = [[0.5, -0.3, 0.0, 1.0], [-1.0, 0.2, 0.7, 0.1], [0.0, 0.0, -0.6, 0.9]]
    return ClosedForm("joint-categorical-table", independent_categorical, (logits,), f, objective)


def _unordered(k: int) -> Callable[[], Estimator]:
    return lambda: UnorderedSet(k)


def _cases() -> list[Case]:
    toy, bits, wide = BERNOULLI_TOYS[1], BernoulliTable(3), BernoulliTable(8, seed=2)  # 8 bits: 2 beam steps
    one_hot, categorical = joint_one_hot_table(), joint_categorical_table()
    return [
        _case("unordered-set(1)", _unordered(1), toy, 2, replications=20_000),
        _case("unordered-set(2)", _unordered(2), toy, 1, claim="exact", replications=3),
        _case("unordered-set(2)", _unordered(2), bits, 1, replications=20_000),
        _case("unordered-set(3)", _unordered(3), bits, 2, replications=10_000),
        _case("unordered-set(8)", _unordered(8), bits, 1, claim="exact", replications=3),
        _case("unordered-set(4)", _unordered(4), wide, 1, replications=20_000),
        _case("unordered-set(3)", _unordered(3), one_hot, 1, replications=20_000),
        _case("unordered-set(5)", _unordered(5), categorical, 2, replications=10_000),
    ]


CASES: list[Case] = _cases()
