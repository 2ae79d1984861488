r"""The unordered set estimator: k distinct samples, drawn without replacement, with a built-in baseline.

A set S of k distinct categories is drawn by the Gumbel-top-k trick (the k largest of
:math:`\log p + G`), which draws k categories one after another without replacement. The
*leave-one-out ratio* :math:`R(S, s) = P^{D\setminus\{s\}}(S\setminus\{s\}) / P(S)` of unordered-set
probabilities makes

.. math::
    \mathbb{E}_S\Bigl[\sum_{s\in S} p(s) R(S, s)\, h(s)\Bigr] = \mathbb{E}_{x\sim p}[h(x)]

for any h, which gives an unbiased estimate of E[f] and of its gradient from the k distinct points.

Unordered-set probabilities are computed exactly by a recursion over the subsets of S, in log space:
for a set A and the probability mass r outside S (the categories not drawn),

.. math::
    G(A) = \sum_{a\in A} \frac{p(a)}{p(A) + r}\, G(A\setminus\{a\}), \qquad G(\emptyset) = 1,

is the probability that the first |A| draws from :math:`A \cup (D\setminus S)` are A, in any order.
It depends only on the ratios of p(a) and r, so :math:`G(S\setminus T) = P^{D\setminus T}(S\setminus T)`
for every T ⊆ S: one pass over the :math:`2^k` subsets gives P(S), every leave-one-out and every
leave-two-out probability. Every term is positive, so nothing cancels; r is summed over the categories
not drawn (not computed as 1 − p(S), which would cancel when S holds almost all the mass).

Factorised families (``Bernoulli`` and ``Independent`` Bernoulli, Categorical or OneHotCategorical)
have a joint support too large to perturb state by state; their k distinct joint states are drawn by
*stochastic beam search* (Kool et al. 2019): the states are built coordinate by coordinate, each
partial state carrying the maximum G of the Gumbel-perturbed log-probabilities of all its completions,
each extension's maximum drawn conditionally on its parent's (a Gumbel truncated at G), and the k
largest kept. The k complete states are then exactly the Gumbel-top-k of the joint distribution, so
the estimator is the same; r is then 1 − p(S), computed as ``log1mexp`` of log p(S) (the joint
support cannot be summed over).

References:
    Kool et al. (2020). Estimating Gradients for Discrete Random Variables by Sampling without
    Replacement. ICLR. arXiv:2002.06043.
    Kool et al. (2019). Stochastic Beams and Where to Find Them: The Gumbel-Top-k Trick for Sampling
    Sequences Without Replacement. ICML. arXiv:1903.06059.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.distributions import Bernoulli, Categorical, Distribution, Independent
from torch.nn.functional import one_hot, softplus

from gradest._validation import describe, is_validation_enabled
from gradest.estimators._families import DISCRETE, categorical, check_parameters
from gradest.estimators._gumbel import gumbel
from gradest.estimators.base import Draw, Estimator
from gradest.surrogate import magic_box, stop_gradient

__all__ = ["UnorderedSet", "UnorderedSetDraw"]


@dataclass(frozen=True, eq=False)
class UnorderedSetDraw(Draw):
    """The unordered set estimator's record: ``points`` holds n sets of k distinct states, ``[k·n, *B,
    *E]`` (row ``j·n + i`` is element j of set i; all of them values), ``log_prob`` their
    log-probabilities, ``box`` its magic box, ``log_weight`` log p(s)R(S, s) ``[k·n, *B]`` and
    ``log_pair`` log p(s')R^{D∖s}(S, s') ``[k, k, n, *B]``."""

    log_prob: Tensor
    box: Tensor
    log_weight: Tensor
    log_pair: Tensor
    sets: int

MAX_K = 16
"""The largest set size: the exact recursion visits all 2^k subsets of each sampled set."""


@functools.lru_cache(maxsize=32)
def _levels(k: int) -> tuple[tuple[Tensor, Tensor, Tensor], ...]:
    """For each subset size L = 1..k of {0..k−1} (as bit masks): the masks ``[C]``, their elements
    ``[C, L]`` and the masks with each element removed ``[C, L]`` (CPU index tensors)."""
    by_size: list[list[int]] = [[] for _ in range(k + 1)]
    for mask in range(1, 2**k):
        by_size[bin(mask).count("1")].append(mask)
    levels = []
    for size in range(1, k + 1):
        masks = by_size[size]
        elements = [[a for a in range(k) if mask >> a & 1] for mask in masks]
        smaller = [[mask ^ (1 << a) for a in e] for mask, e in zip(masks, elements, strict=True)]
        levels.append((torch.tensor(masks), torch.tensor(elements), torch.tensor(smaller)))
    return tuple(levels)


def _log_subset_probabilities(log_p: Tensor, log_rest: Tensor) -> Tensor:
    """log G(A) ``[2^k, *S]`` for every subset A (bit mask) of the k sampled categories.

    Args:
        log_p: ``[k, *S]`` log-probabilities of the sampled categories.
        log_rest: ``[*S]`` log of the mass of the categories not sampled (−inf when there are none).
    """
    k = log_p.shape[0]
    log_g = torch.zeros((2**k, *log_p.shape[1:]), dtype=log_p.dtype, device=log_p.device)
    for masks, elements, smaller in _levels(k):
        masks, elements, smaller = (t.to(log_p.device) for t in (masks, elements, smaller))
        lp = log_p[elements]  # [C, L, *S]
        denominator = torch.logaddexp(torch.logsumexp(lp, 1), log_rest)  # log(p(A) + r)
        log_g[masks] = torch.logsumexp(lp + log_g[smaller], 1) - denominator
    return log_g


def _leave_out_ratios(log_p: Tensor, log_rest: Tensor) -> tuple[Tensor, Tensor]:
    """log R(S, s) ``[k, *S]`` and the baseline's log R^{D∖s}(S, s') ``[k, k, *S]`` (0 where s' = s).

    R(S, s) = P^{D∖s}(S∖s) / P(S); R^{D∖s}(S, s') = P^{D∖{s,s'}}(S∖{s,s'}) / P^{D∖s}(S∖s) for s' ≠ s.
    """
    k = log_p.shape[0]
    log_g = _log_subset_probabilities(log_p, log_rest)
    full = 2**k - 1
    bits = 2 ** torch.arange(k, device=log_p.device)
    log_one_out = log_g[full ^ bits]  # [k, *S]
    log_r1 = log_one_out - log_g[full]
    pairs = full ^ bits.unsqueeze(1) ^ bits.unsqueeze(0)  # [k, k]; the diagonal is `full` itself
    log_r2 = log_g[pairs] - log_one_out.unsqueeze(1)
    diagonal = torch.eye(k, dtype=torch.bool, device=log_p.device).reshape(k, k, *[1] * (log_p.dim() - 1))
    return log_r1, torch.where(diagonal, torch.zeros_like(log_r2), log_r2)


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 − eˣ) for x ≤ 0, accurate near 0 and for very negative x (Mächler 2012)."""
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def _factorised(dist: Distribution) -> tuple[Distribution, int] | None:
    """``(leaf, r)`` for Bernoulli/Categorical/OneHotCategorical leaves with ``r`` reinterpreted batch
    dims (0 without Independent); None for other families."""
    r = 0
    while isinstance(dist, Independent):
        r += dist.reinterpreted_batch_ndims
        dist = dist.base_dist
    return (dist, r) if isinstance(dist, DISCRETE) else None


def _coordinate_table(leaf: Distribution, r: int) -> Tensor:
    """log-probabilities ``[*B, d, K]`` of each of the d = Π(event dims) coordinates taking each of
    its K values (K = 2 for bits), differentiable."""
    if isinstance(leaf, Bernoulli):
        table = torch.stack([-softplus(leaf.logits), -softplus(-leaf.logits)], -1)  # log(1 − p), log p
    else:
        table = categorical(leaf).logits
    batch = table.shape[: table.dim() - 1 - r]
    d = math.prod(table.shape[table.dim() - 1 - r : -1])  # explicit: -1 is ambiguous for an empty batch
    return table.reshape(*batch, d, table.shape[-1])


CHILDREN = 64
"""Stochastic beam search extends each partial state by as many coordinates at once as keep the number
of extensions at most this (6 bits, 2 four-way categories, 1 ten-way category)."""


@functools.lru_cache(maxsize=32)
def _combinations(size: int, width: int) -> Tensor:
    """All ``size**width`` value combinations of ``width`` coordinates ``[size**width, width]`` (CPU)."""
    grid = torch.arange(size**width).unsqueeze(-1) // size ** torch.arange(width - 1, -1, -1)
    return grid % size


def _beam_search(log_table: Tensor, k: int, n: int) -> Tensor:
    """k distinct joint states per set, without replacement (stochastic beam search; Kool et al.
    2019, Algorithm 2): returns their coordinates ``[n, *B, k, d]``.

    The coordinates are taken in chunks of c (the largest with K^c ≤ ``CHILDREN``): a chunk is one
    token of K^c values, so the search takes ⌈d / c⌉ steps; the law of the result does not depend on c.

    Args:
        log_table: ``[*B, d, K]`` coordinate log-probabilities (not differentiated).
        k: states per set, at most K^d.
        n: independent sets.
    """
    *batch, d, size = log_table.shape
    step = max(1, int(math.log(CHILDREN) / math.log(size) + 1e-9))
    shape = (n, *batch)
    phi = log_table.new_zeros((*shape, 1))  # log-probability of each partial state in the beam
    top = gumbel((*shape, 1), dtype=log_table.dtype, device=log_table.device)  # the max over its completions
    states = torch.zeros((*shape, 1, 0), dtype=torch.long, device=log_table.device)
    for start in range(0, d, step):
        width, chunk = phi.shape[-1], min(step, d - start)
        combos = _combinations(size, chunk).to(log_table.device)  # [C, chunk]
        token = log_table[..., start : start + chunk, :]  # [*B, chunk, K]
        token = token[..., torch.arange(chunk, device=combos.device), combos].sum(-1)  # [*B, C]
        children = combos.shape[0]
        child = phi.unsqueeze(-1) + token.unsqueeze(-2)  # [n, *B, width, C]
        perturbed = child + gumbel(child.shape, dtype=child.dtype, device=child.device)
        z = perturbed.amax(-1, keepdim=True)
        # Gumbel(child) conditioned on the maximum over the parent's children being the parent's own
        # maximum T: −log(e^{−T} − e^{−Z} + e^{−G}), in the stable form of Kool et al. (2019), App. B
        parent = top.unsqueeze(-1)
        v = parent - perturbed + _log1mexp((perturbed - z).clamp(max=0))
        keys = (parent - v.clamp(min=0) - torch.log1p(torch.exp(-v.abs()))).flatten(-2)
        top, chosen = keys.topk(min(k, width * children), -1)
        parent_index, value = chosen // children, chosen % children
        states = torch.cat([states.gather(-2, parent_index.unsqueeze(-1).expand(*parent_index.shape, start)),
                            combos[value]], -1)
        phi = child.flatten(-2).gather(-1, chosen)
    return states


class UnorderedSet(Estimator):
    r"""Unordered set estimator: k distinct states without replacement, with its built-in baseline.

    .. math::
        \hat J = \sum_{s\in S} p(s) R(S, s)\, f(s), \qquad
        \hat g = \sum_{s\in S} \nabla_\theta p_\theta(s)\, R(S, s)
        \Bigl(f(s) - \sum_{s'\in S} p(s') R^{D\setminus\{s\}}(S, s')\, f(s')\Bigr)

    where S is a set of k distinct states drawn without replacement (Gumbel-top-k),
    :math:`R(S, s) = P^{D\setminus\{s\}}(S\setminus\{s\}) / P(S)` and
    :math:`R^{D\setminus\{s\}}(S, s') = P^{D\setminus\{s,s'\}}(S\setminus\{s,s'\}) /
    P^{D\setminus\{s\}}(S\setminus\{s\})` (1 when s' = s), as in Kool et al. (2020).
    The baseline of s is itself an unordered-set estimate of E[f] that, in expectation, does not
    depend on s, so it removes variance without bias. With k = 1 there is no other sample to build
    it from: the estimator is REINFORCE without a baseline. With k equal to the support size the
    value and the gradient are exact.

    f is called once on ``[k·n, *B, *E]`` points: n independent sets of k distinct states each
    (rows ``j·n + i`` hold element j of set i), the family's own samples (indices for Categorical,
    one-hot vectors for OneHotCategorical, bits for Bernoulli; with the event shape of
    ``Independent``). The surrogate's value is :math:`\hat J` averaged over the n sets (the weights
    p(s)R(S, s) of a set sum to 1); its gradient is :math:`\hat g` averaged over them, and
    parameters inside f receive :math:`\sum_s p(s)R(S, s)\nabla f(s)`, unbiased.

    The weights enter as ``⊥(p(s)R(S, s))·□(log p(s))`` (DiCE's magic box) and the baseline as a
    zero-valued correction, so R is held fixed when differentiating, as in the paper.

    Requires: ``dist`` is Categorical, OneHotCategorical or Bernoulli, or ``Independent`` of one of
    them (a set is then k distinct *joint* states, drawn by stochastic beam search over the
    coordinates in d steps), from ``logits`` or ``probs``, with every state of positive probability
    (k at most the number of states with p > 0); k ≤ 16 (the probabilities of the unordered set are
    computed exactly over its 2^k subsets). Each cost element may depend only on its own batch
    element's samples (the sets of different batch elements are unrelated), as for every estimator
    in ``expectation``. On joint supports far larger than k (200 bits) the weights sum to 1 only to
    about 1e-5 in float32; use float64 where that matters.
    Bias: none.

    Note:
        First derivatives only: R(S, s) and the baseline are held fixed, so second derivatives of
        the surrogate are not unbiased.

    Args:
        k: distinct categories per set, 1 ≤ k ≤ support size; 2 to 8 is typical.

    Raises:
        ValueError: k < 1, k larger than the support, or k > 16.
        NotImplementedError: dist is not Categorical, OneHotCategorical or Bernoulli (or Independent
            of one of them).

    Example:
        >>> import torch, gradest
        >>> _ = torch.manual_seed(0)
        >>> logits = torch.tensor([0.5, -1.0, 0.0, 2.0], requires_grad=True)
        >>> table = torch.tensor([1.0, -2.0, 3.0, 0.5])
        >>> s = gradest.expectation(lambda x: table[x], torch.distributions.Categorical(logits=logits),
        ...                         gradest.UnorderedSet(4))   # k = support size: exact
        >>> exact = (torch.softmax(logits, -1) * table).sum()
        >>> bool(torch.allclose(s, exact))
        True

    References:
        Kool et al. (2020). Estimating Gradients for Discrete Random Variables by Sampling without
        Replacement. ICLR. arXiv:2002.06043.
    """

    unbiased = True
    families = DISCRETE
    elementwise = True
    reduction = "sum"
    shares_sample_dim = False
    has_correction = True

    def __init__(self, k: int) -> None:
        super().__init__()
        if isinstance(k, bool) or not isinstance(k, int):
            raise TypeError(
                f"UnorderedSet: k={k!r} must be an int, the number of distinct samples (2 to 8 is typical)."
            )
        if k < 1:
            raise ValueError(
                f"UnorderedSet: k={k} must be >= 1 and at most the support size (the number of "
                "categories); 2 to 8 is typical."
            )
        if k > MAX_K:
            raise ValueError(
                f"UnorderedSet: k={k} is over {MAX_K}: the set's probabilities are computed exactly over "
                f"its 2^k subsets; use k <= {MAX_K}, or ScoreFunction(LeaveOneOut()) with n = {k}."
            )
        self.k = k

    def check(self, dist: Distribution, n: int) -> None:
        found = _factorised(dist)
        if found is None:
            raise NotImplementedError(
                f"UnorderedSet: dist={describe(dist)} is not Bernoulli, Categorical or OneHotCategorical "
                "(or Independent of one of them); UnorderedSet supports those (from logits or probs). For "
                "continuous families use Pathwise() or ScoreFunction(LeaveOneOut())."
            )
        leaf, r = found
        check_parameters("UnorderedSet", dist)
        size = 2 if isinstance(leaf, Bernoulli) else categorical(leaf).param_shape[-1]
        coordinates = math.prod(leaf.batch_shape[len(leaf.batch_shape) - r :]) if r else 1
        if size**coordinates < self.k:
            support = size**coordinates
            raise ValueError(
                f"UnorderedSet: k={self.k} is larger than the support size {support} of dist={describe(dist)}; "
                f"use k <= {support} (k = {support} gives the exact gradient, as Enumerate() does)."
            )
        if r == 0 and not isinstance(leaf, Bernoulli) and is_validation_enabled() and dist.batch_shape.numel():
            possible = int((categorical(leaf).logits > -torch.inf).sum(-1).min())
            if possible < self.k:
                raise ValueError(
                    f"UnorderedSet: k={self.k} is larger than the {possible} categories of positive probability "
                    f"in some row of dist={describe(dist)} (the others are masked); use k <= {possible}."
                )

    def draw(self, dist: Distribution, n: int) -> Draw:
        leaf, r = _factorised(dist)  # type: ignore[misc]  # check() has run
        k = self.k
        if isinstance(leaf, Bernoulli) or r:
            log_table = _coordinate_table(leaf, r)  # [*B, d, K], differentiable
            states = _beam_search(stop_gradient(log_table), k, n)  # [n, *B, k, d]
            log_p = _gather_states(log_table, states)  # [n, *B, k], differentiable
            log_rest = _log1mexp(torch.logsumexp(stop_gradient(log_p), -1).clamp(max=0))
            index = states.movedim(-2, 0)  # [k, n, *B, d]
            event = dist.event_shape
            if isinstance(leaf, Bernoulli):
                value = index.to(log_table.dtype).reshape(k * n, *index.shape[2:-1], *event)
            elif isinstance(leaf, Categorical):
                value = index.reshape(k * n, *index.shape[2:-1], *event)
            else:
                value = one_hot(index, log_table.shape[-1]).to(log_table.dtype)
                value = value.reshape(k * n, *index.shape[2:-1], *event)
        else:
            log_probs = categorical(leaf).logits  # normalised: log-probabilities [*B, K], differentiable
            size = log_probs.shape[-1]
            fixed = stop_gradient(log_probs)
            keys = fixed + gumbel((n, *log_probs.shape), dtype=log_probs.dtype, device=log_probs.device)
            top = keys.topk(k, -1).indices  # [n, *B, k]: k distinct categories, the Gumbel-top-k
            log_p = log_probs.expand(keys.shape).gather(-1, top)  # [n, *B, k], differentiable
            taken = torch.zeros(keys.shape, dtype=torch.bool, device=keys.device).scatter_(-1, top, True)
            log_rest = torch.logsumexp(fixed.masked_fill(taken, -torch.inf), -1)  # [n, *B]
            flat = top.movedim(-1, 0).reshape(k * n, *top.shape[1:-1])
            value = flat if isinstance(leaf, Categorical) else one_hot(flat, size).to(log_probs.dtype)
        log_p_set = stop_gradient(log_p).movedim(-1, 0)  # [k, n, *B]
        log_r1, log_r2 = _leave_out_ratios(log_p_set, log_rest)
        log_prob = log_p.movedim(-1, 0).reshape(k * n, *log_p.shape[1:-1])
        return UnorderedSetDraw(
            value, k * n, dist, log_prob, magic_box(log_prob),
            (log_p_set + log_r1).reshape(log_prob.shape) - math.log(n),  # log p(s)R(S, s)/n
            log_p_set.unsqueeze(0) + log_r2,  # [k, k, n, *B]: log p(s')R^{D∖s}(S, s')
            n,
        )

    def weight(self, draw: UnorderedSetDraw) -> Tensor:  # type: ignore[override]
        """``p(s)R(S, s)/n · □(log p(s))``: the weights of a set sum to 1, and the sum over all k·n rows
        (the declared ``reduction``) is the mean over the n sets."""
        return torch.exp(draw.log_weight) * draw.box

    def correction(self, draw: UnorderedSetDraw, cost: Tensor) -> Tensor | None:  # type: ignore[override]
        k, n = self.k, draw.sets
        if k == 1:
            return None
        c = stop_gradient(cost).reshape(k, n, *cost.shape[1:]).to(draw.log_pair.dtype)
        baseline = (torch.exp(draw.log_pair) * c.unsqueeze(0)).sum(1)  # [k, n, *B]
        term = torch.exp(draw.log_weight) * (1 - draw.box) * baseline.reshape(cost.shape)
        return term.to(cost.dtype)

    def extra_repr(self) -> str:
        return f"k={self.k}"


def _gather_states(log_table: Tensor, states: Tensor) -> Tensor:
    """log p of joint states ``[n, *B, k, d]`` under coordinate log-probabilities ``[*B, d, K]``:
    ``[n, *B, k]``, differentiable in the table."""
    table = log_table.unsqueeze(-3).expand(*states.shape, log_table.shape[-1])  # [n, *B, k, d, K]
    return table.gather(-1, states.unsqueeze(-1)).squeeze(-1).sum(-1)
