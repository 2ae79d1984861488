r"""Exact elimination of enumerated variables: sum-product in the log-expectation semiring.

A *factor* is a tensor over some enumerated variables (its labels, the trailing dims) and any number of
leading *plate* dims (Monte Carlo sample dims and batch dims, which are never summed here). Each factor
holds two parts:

- ``log``: a log-weight (a log-probability p(z_i | parents), a log-likelihood log p(y | z), or 0), and
- ``r``: an additive cost (0, or a cost c(z)),

so that a set of factors stands for :math:`A(z) = \exp\sum_i \mathrm{log}_i(z)` and
:math:`R(z) = \sum_i r_i(z)`. Eliminating every variable gives

.. math::
    \log Z = \log\sum_z A(z), \qquad \bar R = \frac{\sum_z A(z) R(z)}{\sum_z A(z)},

the log partition function (−log Z is the negative marginal log-likelihood when the log parts include
observations) and the expected total cost under the normalised weights (Σ_c E[c] when the log parts are
conditional probabilities: then Z = 1 identically and R̄ is exactly the expected cost, with exact
derivatives of every order). Combining factors adds both parts; summing out a variable v is

.. math::
    \mathrm{log}' = \operatorname{logsumexp}_v \mathrm{log}, \qquad
    r' = \sum_v \operatorname{softmax}_v(\mathrm{log})\, r,

which never leaves log space for the weights, so long chains neither underflow nor overflow.

Two engines share these rules: :func:`eliminate` (any factor graph, variables summed out one at a time
in a greedy min-fill order, the largest intermediate factor bounded by a budget) and the chain
functions (a Markov chain given as stacked pair factors ``[T, *plate, S, S]``): :func:`chain_total`
reduces them by a balanced tree of log-semiring matrix products (O(T·S³) work in O(log T) sequential
steps) for log Z; :func:`chain_expectation` forms the forward messages by a doubling scan and weights each
step's costs by the marginals up to that step.

References:
    Eisner (2002). Parameter Estimation for Probabilistic Finite-State Transducers. ACL (the
    expectation semiring).
    Obermeyer et al. (2019). Tensor Variable Elimination for Plated Factor Graphs. ICML.
    arXiv:1902.03210.
    Särkkä & García-Fernández (2021). Temporal Parallelization of Bayesian Smoothers. IEEE TAC.
    arXiv:1905.13002.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Factor", "eliminate", "chain_total", "chain_forward", "chain_expectation", "order", "BudgetError",
           "plate"]


class BudgetError(ValueError):
    """An intermediate factor of the elimination would exceed the budget (names the variables)."""


@dataclass(frozen=True, eq=False)
class Factor:
    """``log`` and ``r`` ``[*plate, *sizes of labels]`` (either may be None for 0); ``labels`` name the
    trailing dims, in order."""

    labels: tuple[int, ...]
    log: Tensor | None
    r: Tensor | None


def plate(f: Factor) -> torch.Size:
    """A factor's plate: the dims before its labels."""
    t = f.log if f.log is not None else f.r
    assert t is not None
    return t.shape[: t.dim() - len(f.labels)]


def _aligned(t: Tensor, labels: tuple[int, ...], union: tuple[int, ...], plate_dims: int) -> Tensor:
    """``t`` ``[*plate, *labels]`` as ``[*plate', *union]`` (missing labels as size-1 dims; plate dims
    left-padded to ``plate_dims``)."""
    lead = t.dim() - len(labels)
    if lead < plate_dims:
        t = t.reshape((1,) * (plate_dims - lead) + t.shape)
    perm = [labels.index(v) for v in union if v in labels]
    if perm != sorted(perm):
        t = t.permute(*range(plate_dims), *(plate_dims + p for p in perm))
    shape = list(t.shape[:plate_dims])
    present = iter(t.shape[plate_dims:])
    for v in union:
        shape.append(next(present) if v in labels else 1)
    return t.reshape(shape)


def combine(factors: Sequence[Factor], union: tuple[int, ...]) -> Factor:
    """The product of ``factors`` (log parts added, r parts added) over the labels ``union``."""
    plate_dims = max(len(plate(f)) for f in factors)
    log: Tensor | None = None
    r: Tensor | None = None
    for f in factors:
        if f.log is not None:
            a = _aligned(f.log, f.labels, union, plate_dims)
            log = a if log is None else log + a
        if f.r is not None:
            b = _aligned(f.r, f.labels, union, plate_dims)
            r = b if r is None else r + b
    return Factor(union, log, r)


def sum_out(f: Factor, v: int) -> Factor:
    """Sum the variable ``v`` out of ``f`` in the log-expectation semiring."""
    dim = f.log.dim() - len(f.labels) + f.labels.index(v) if f.log is not None else None
    labels = tuple(u for u in f.labels if u != v)
    if f.log is None:  # uniform weights: a count, and the mean cost
        assert f.r is not None
        d = f.r.dim() - len(f.labels) + f.labels.index(v)
        size = f.r.shape[d]
        return Factor(labels, torch.full((), math.log(size), dtype=f.r.dtype, device=f.r.device), f.r.mean(d))
    assert dim is not None
    log = _logsumexp(f.log, dim)
    if f.r is None:
        return Factor(labels, log, None)
    weights = _softmax(f.log, dim)
    r = f.r
    if r.dim() < weights.dim():
        r = r.reshape((1,) * (weights.dim() - r.dim()) + r.shape)
    return Factor(labels, log, (weights * r).sum(dim))


def order(scopes: Sequence[tuple[int, ...]], sizes: dict[int, int], variables: Sequence[int]) -> list[int]:
    """A greedy min-fill elimination order: repeatedly the variable whose elimination creates the
    smallest factor (ties: fewest new edges, then the given order)."""
    neighbours: dict[int, set[int]] = {v: set() for v in variables}
    for scope in scopes:
        for v in scope:
            neighbours[v].update(u for u in scope if u != v)
    remaining = list(variables)
    out = []
    while remaining:
        def cost(v: int) -> tuple[int, int, int]:
            nb = neighbours[v]
            size = math.prod(sizes[u] for u in nb | {v})
            fill = sum(1 for a in nb for b in nb if a < b and b not in neighbours[a])
            return size, fill, remaining.index(v)

        v = min(remaining, key=cost)
        nb = neighbours.pop(v)
        for a in nb:
            neighbours[a].discard(v)
            neighbours[a].update(b for b in nb if b != a)
        remaining.remove(v)
        out.append(v)
    return out


def eliminate(factors: Sequence[Factor], sizes: dict[int, int], *, budget: int,
              names: dict[int, str] | None = None) -> Factor:
    """Sum every labelled variable out of ``factors``; the result has no labels.

    Raises:
        BudgetError: an intermediate factor would span more than ``budget`` joint values.
    """
    factors = list(factors)
    variables = sorted({v for f in factors for v in f.labels})
    for v in order([f.labels for f in factors], sizes, variables):
        touching = [f for f in factors if v in f.labels]
        union = tuple(sorted({u for f in touching for u in f.labels}))
        size = math.prod(sizes[u] for u in union)
        if size > budget:
            label = [names.get(u, str(u)) if names else str(u) for u in union]
            raise BudgetError(
                f"eliminating {label[union.index(v)]!r} needs a factor over {label} of {size} joint values, over "
                f"the budget of {budget}"
            )
        factors = [f for f in factors if v not in f.labels] + [sum_out(combine(touching, union), v)]
    return combine(factors, ()) if len(factors) > 1 else factors[0]



def _logsumexp(x: Tensor, dim: int) -> Tensor:
    """``torch.logsumexp`` with a zero gradient where a whole slice is −inf (states of probability
    zero, e.g. under an observation they cannot emit): torch's own gives NaN there, even for a zero
    upstream gradient."""
    empty = (x == -math.inf).all(dim, keepdim=True)
    return torch.logsumexp(x.masked_fill(empty, 0.0), dim).masked_fill(empty.squeeze(dim), -math.inf)


def _softmax(x: Tensor, dim: int) -> Tensor:
    """``torch.softmax`` with zero weights (not NaN) over a slice that is −inf throughout."""
    empty = (x == -math.inf).all(dim, keepdim=True)
    return torch.softmax(x.masked_fill(empty, 0.0), dim).masked_fill(empty, 0.0)


def _log_matmul(a: Tensor, b: Tensor) -> Tensor:
    """The log-semiring matrix product ``[..., i, j] × [..., j, k] -> [..., i, k]``."""
    return _logsumexp(a.unsqueeze(-1) + b.unsqueeze(-3), -2)


def chain_total(first: Tensor, pairs: Tensor) -> Tensor:
    """log Z of a Markov chain: ``first`` ``[*plate, S]`` the first state's log weights, ``pairs``
    ``[T, *plate, S, S]`` each step's log weights over (state t, state t + 1); a balanced tree of
    log-semiring matrix products, O(T·S³) work in O(log T) steps. Returns ``[*plate]``."""
    log = pairs
    while log.shape[0] > 1:
        half = log.shape[0] // 2
        merged = _log_matmul(log[: 2 * half : 2], log[1 : 2 * half : 2])
        log = torch.cat([merged, log[2 * half :]], 0) if log.shape[0] % 2 else merged
    return _logsumexp((first.unsqueeze(-1) + log[0]).flatten(-2), -1)


def chain_forward(first: Tensor, pairs: Tensor) -> Tensor:
    """The forward messages α_t ``[T, *plate, S]`` (t = 0 .. T − 1, the state before step t + 1) of a
    chain given as for :func:`chain_total`: α_0 = first, α_t = logsumexp_j(α_{t−1}(j) + pairs[t−1](j, ·)).

    The prefix products of the pair matrices are formed by a doubling scan (Hillis & Steele): log T
    levels of batched log-semiring products, O(T log T · S³) work; α_t depends only on the factors of
    the steps before it.
    """
    prefix = pairs
    k = 1
    while k < prefix.shape[0]:
        prefix = torch.cat([prefix[:k], _log_matmul(prefix[:-k], prefix[k:])], 0)
        k *= 2
    later = _logsumexp(first.unsqueeze(-1) + prefix, -2)  # [T, *plate, S]: α_1 .. α_T
    return torch.cat([first.unsqueeze(0).expand(1, *later.shape[1:]), later[:-1]], 0)


def chain_expectation(first: Factor, pairs: tuple[Tensor, Tensor | None]) -> Tensor:
    """Σ of the expected costs along a chain whose log parts are conditional probabilities (so the
    forward messages are log marginals): Σ_s p(s_0) r_0(s_0) + Σ_t Σ_{j,k} p(s_{t−1} = j, s_t = k) r_t(j, k).

    Each step's costs are weighted by the marginals of the steps up to it only, so a cost never reaches
    a later step's parameters, even by rounding. Returns ``[*plate]``.
    """
    log, r = pairs
    assert first.log is not None
    alpha = chain_forward(first.log, log)  # [T, *plate, S]
    total = torch.zeros((), dtype=log.dtype, device=log.device)
    if first.r is not None:
        total = (torch.exp(first.log) * first.r).sum(-1)
    if r is not None:
        joint = torch.exp(alpha.unsqueeze(-1) + log)  # [T, *plate, S, S]: p(s_{t-1}, s_t)
        total = total + (joint * r).sum((-2, -1)).sum(0)
    return total
