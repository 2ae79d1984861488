"""One home for what estimators need to know about ``torch.distributions`` families.

Unwrapping ``Independent``, reading a family's parameters (logits, probs, the tensors it was built
from), rebuilding it from substituted parameters, and checking those parameters for values no
estimator can differentiate (NaN, ±inf, probabilities on the boundary) all live here, so that every
rule sees a family the same way and refuses the same inputs with the same words.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import Tensor
from torch.distributions import Bernoulli, Categorical, Distribution, Independent, OneHotCategorical

from gradest._validation import describe, describe_nonfinite, is_validation_enabled

__all__ = [
    "DISCRETE",
    "leaf",
    "event_dims",
    "sum_last",
    "logits",
    "probs",
    "categorical",
    "parameter",
    "parameters",
    "rebuild",
    "tensors",
    "check_parameters",
    "support_size",
    "sample_with_log_prob",
]

DISCRETE = (Bernoulli, Categorical, OneHotCategorical)
"""The families that relaxations, REBAR/RELAX and the unordered-set estimator take (and Independent of these)."""

_EXCLUSIVE = (("logits", "probs"), ("scale_tril", "covariance_matrix", "precision_matrix"))


def leaf(dist: Distribution) -> Distribution:
    """The distribution inside any ``Independent`` wrappers."""
    while isinstance(dist, Independent):
        dist = dist.base_dist
    return dist


def event_dims(dist: Distribution, inner: Distribution | None = None) -> int:
    """How many of the leaf's batch dims ``Independent`` reinterpreted as event dims (R)."""
    inner = leaf(dist) if inner is None else inner
    return len(inner.batch_shape) - len(dist.batch_shape)


def sum_last(x: Tensor, r: int) -> Tensor:
    """``x`` summed over its last ``r`` dims (``x`` itself when r = 0)."""
    return x.sum(tuple(range(-r, 0))) if r else x


def categorical(dist: Distribution) -> Categorical:
    """The ``Categorical`` a ``OneHotCategorical`` wraps (or ``dist`` itself)."""
    return dist._categorical if isinstance(dist, OneHotCategorical) else cast(Categorical, dist)


def logits(inner: Distribution) -> Tensor:
    """The logits of a Bernoulli or (one-hot) categorical leaf, differentiable (from probs if built so)."""
    return cast("Bernoulli | Categorical | OneHotCategorical", inner).logits


def probs(inner: Distribution) -> Tensor:
    """The probabilities of a Bernoulli or (one-hot) categorical leaf, differentiable."""
    return cast("Bernoulli | Categorical | OneHotCategorical", inner).probs


def parameter(inner: Distribution) -> Tensor:
    """The tensor a Bernoulli or categorical leaf was built from (logits or probs), computing neither."""
    own = vars(categorical(inner)) if isinstance(inner, OneHotCategorical) else vars(inner)
    return own["logits"] if "logits" in own else own["probs"]


def parameters(dist: Distribution) -> dict[str, Tensor]:
    """The tensors the leaf of ``dist`` was built from, by constructor keyword.

    The instance dict is read in insertion order: the constructor's own argument (``logits``, say)
    precedes an alternative that a lazy property cached later (``probs``, the first time ``sample``
    reads it), so the first of each exclusive group is the one the caller passed. OneHotCategorical
    keeps its parameters on the Categorical it wraps.
    """
    inner = leaf(dist)
    own = vars(categorical(inner)) if isinstance(inner, OneHotCategorical) else vars(inner)
    names = [k for k in own if k in inner.arg_constraints and isinstance(own[k], Tensor)]
    for group in _EXCLUSIVE:
        present = [k for k in names if k in group]
        names = [k for k in names if k not in present[1:]]
    return {k: own[k] for k in names}


def rebuild(dist: Distribution, params: dict[str, Tensor], where: str) -> Distribution:
    """``dist``'s family (and ``Independent`` wrappers) built anew from ``params`` (constructor keywords)."""
    if isinstance(dist, Independent):
        base = rebuild(dist.base_dist, params, where)
        return Independent(base, dist.reinterpreted_batch_ndims, validate_args=False)
    try:
        return type(dist)(**params, validate_args=False)  # type: ignore[arg-type]
    except (TypeError, ValueError) as e:
        raise NotImplementedError(
            f"{where}: cannot rebuild dist={describe(dist)} from its parameters {sorted(params)} ({e}); it "
            "supports families built from their arg_constraints (Normal, Bernoulli, Categorical, Poisson, "
            "Gamma, Beta ... and Independent of these). Use LeaveOneOut() instead."
        ) from e


def tensors(dist: Distribution) -> list[Tensor]:
    """Every tensor a distribution holds (its parameters and cached derived values), through wrappers."""
    out: list[Tensor] = []
    while True:
        out += [v for v in vars(dist).values() if isinstance(v, Tensor)]
        if isinstance(dist, OneHotCategorical):
            out += [v for v in vars(dist._categorical).values() if isinstance(v, Tensor)]
        if isinstance(dist, Independent):
            dist = dist.base_dist
            continue
        return out


def check_parameters(where: str, dist: Distribution, *, boundary: bool = False, masked: bool = True) -> None:
    """Refuse parameters no estimator can differentiate (only while validation is on: this syncs).

    - NaN anywhere, and +inf anywhere: the distribution is undefined.
    - Bernoulli logits of ±inf: the bit is deterministic and its score (b − σ(ℓ)) is inf − inf.
    - Categorical logits: −inf is a mask (the category has probability 0, and the exact gradient with
      respect to its logit is 0); a row with every logit −inf is refused, and so is any −inf for a rule
      that perturbs the logits themselves (``masked=False``: REBAR, RELAX, GumbelRao), where −inf − (−inf)
      would appear.
    - Probabilities of exactly 0 or 1 (Bernoulli ``probs``, Categorical ``probs``): the exact gradient
      with respect to such a probability involves the outcome that is never drawn, so sampling rules
      cannot estimate it; with ``boundary=True`` (exact enumeration) they are allowed.
    """
    if not is_validation_enabled():
        return
    inner = leaf(dist)
    for name, value in parameters(dist).items():
        if not value.is_floating_point() or value.numel() == 0:
            continue
        with torch._C.DisableTorchFunctionSubclass():  # a graph's tracked tensor read as a plain one
            v = value.detach()
            if name == "probs":  # the common case in one reduction and one sync (NaN fails both comparisons)
                low, high = torch.stack(v.aminmax()).tolist() if v.dim() else (float(v), float(v))
                if 0 < low and high < 1:
                    continue
            elif math.isfinite(float(v.sum())):  # finite only when every element is
                continue
            v = v.as_subclass(torch.Tensor)
        categories = name == "logits" and isinstance(inner, (Categorical, OneHotCategorical))
        bad = torch.isnan(v) | torch.isposinf(v)
        if not (categories and masked):
            bad = bad | torch.isneginf(v)
        if bool(bad.any()):
            if categories and not bool((torch.isnan(v) | torch.isposinf(v)).any()):
                raise ValueError(
                    f"{where}: dist={describe(dist)} has logits of -inf, masked categories "
                    f"({int(torch.isneginf(v).sum())} of {v.numel()} elements); {where} perturbs the logits "
                    "themselves, where -inf - (-inf) is undefined. "
                    "Mask with a large negative finite logit instead (e.g. logits.masked_fill(mask, -1e4)), or "
                    "use ScoreFunction, Enumerate, GumbelSoftmax or UnorderedSet, which take -inf logits."
                )
            raise ValueError(
                f"{where}: dist={describe(dist)} has {name} with {describe_nonfinite(v)}; every parameter must "
                f"be finite{' (a logit of -inf masks a category)' if categories and masked else ''}. Check what "
                f"computed {name} for overflow, log(0) or 0/0."
            )
        if categories and bool(torch.isneginf(v).all(-1).any()):
            raise ValueError(
                f"{where}: dist={describe(dist)} has a row of logits that are all -inf (every category masked); "
                "leave at least one category with a finite logit."
            )
        if name == "probs" and not boundary and bool(((v == 0) | (v == 1)).any()):
            raise ValueError(
                f"{where}: dist={describe(dist)} has probs of exactly 0 or 1 at "
                f"{int(((v == 0) | (v == 1)).sum())} element(s); the gradient with respect to such a "
                "probability depends on the outcome that is never drawn, so no sampling estimator can "
                "estimate it. Keep probs inside (0, 1) (e.g. clamp to [1e-6, 1 - 1e-6]), build the "
                "distribution from logits (-inf logits mask categories exactly), or use Enumerate()."
            )


def support_size(dist: Distribution) -> int:
    """The number of support points per batch element (K^m jointly for ``Independent``), read off the
    parameters' shapes for Bernoulli and categorical families (no tensor op)."""
    inner = leaf(dist)
    if isinstance(inner, Bernoulli):
        k = 2
    elif isinstance(inner, (Categorical, OneHotCategorical)):
        k = categorical(inner).param_shape[-1]
    else:
        return _support_size(dist)
    r = event_dims(dist, inner)
    return k ** math.prod(inner.batch_shape[len(inner.batch_shape) - r :]) if r else k


def _support_size(dist: Distribution) -> int:
    """Number of joint configurations of one batch element (K^m for m independent K-way events)."""
    if isinstance(dist, Independent):
        base = dist.base_dist
        k = base.enumerate_support(expand=False).shape[0]
        r = dist.reinterpreted_batch_ndims
        m = math.prod(base.batch_shape[len(base.batch_shape) - r :])
        return k**m
    return dist.enumerate_support(expand=False).shape[0]


def sample_with_log_prob(dist: Distribution, n: int) -> tuple[Tensor, Tensor]:
    """``dist.sample((n,))`` and ``dist.log_prob`` of it, with a shortcut for one-hot categoricals.

    ``OneHotCategorical.log_prob`` recovers each sample's index with ``value.max(-1)``, and its sampler
    recomputes the probabilities with a softmax of logits that the constructor has already
    normalised. For exactly ``OneHotCategorical``, possibly inside ``Independent``, the indices are
    drawn from ``exp(logits)`` (the same probabilities, up to rounding; the user's cached ``probs``
    when present) and their log-probabilities gathered directly, as a hand-written surrogate would.
    Likewise for exactly ``Bernoulli`` (possibly inside ``Independent``): bits are drawn as
    ``rand < probs`` (``torch.bernoulli`` costs about three times as much on CPU) and their
    log-probabilities computed as ``b·logits − softplus(logits)``, the value torch's ``log_prob`` gives.
    Subclasses and every other family take the general path.
    """
    sums: list[int] = []
    base = dist
    while type(base) is Independent:
        sums.append(base.reinterpreted_batch_ndims)
        base = base.base_dist
    if type(base) is Bernoulli:
        return _bernoulli_with_log_prob(base, n, sum(sums))
    if type(base) is not OneHotCategorical:
        value = dist.sample((n,))
        return value, dist.log_prob(value)
    categorical = base._categorical
    logits = categorical.logits  # normalised: log-probabilities
    k = logits.shape[-1]
    with torch.no_grad():
        probs = vars(categorical).get("probs")
        probs = logits.exp() if probs is None else probs
        index = torch.multinomial(probs.reshape(-1, k), n, True).T.reshape((n,) + logits.shape[:-1])
    value = torch.nn.functional.one_hot(index, k).to(logits)
    log_prob = logits.expand((n,) + logits.shape).gather(-1, index.unsqueeze(-1)).squeeze(-1)
    for d in reversed(sums):  # as Independent.log_prob: sum the d rightmost dims, innermost first
        if d > 0:
            log_prob = log_prob.reshape(log_prob.shape[: log_prob.dim() - d] + (-1,)).sum(-1)
    return value, log_prob


def _bernoulli_with_log_prob(base: Bernoulli, n: int, event_dims: int) -> tuple[Tensor, Tensor]:
    """n bits ``[n, *batch]`` of ``base`` and their log-probabilities summed over ``event_dims`` dims."""
    logits = base.logits
    with torch.no_grad():
        probs = vars(base).get("probs")  # the user's, when built from probs; else σ(logits)
        probs = torch.sigmoid(logits) if probs is None else probs
        value = (torch.rand((n, *probs.shape), dtype=probs.dtype, device=probs.device) < probs).to(probs.dtype)
    log_prob = value * logits - torch.nn.functional.softplus(logits)
    if event_dims:
        log_prob = log_prob.sum(tuple(range(-event_dims, 0)))
    return value, log_prob
