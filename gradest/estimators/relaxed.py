r"""Relaxations and straight-through rules for discrete samples: GumbelSoftmax, StraightThrough, GumbelRao.

All three are pathwise rules for Bernoulli, Categorical and OneHotCategorical samples (and
``Independent`` of these): f is evaluated at points that carry a gradient, so the surrogate is just
the mean cost and the estimator is autograd's. They are *biased*; each docstring says towards what.

What f receives:

- ``Bernoulli``: ``[n, *B]`` (``Independent``: ``[n, *B, *R]``) floats: relaxed values in (0, 1), or
  exact 0/1 bits whose gradient is that of a soft value;
- ``Categorical`` and ``OneHotCategorical``: one-hot-shaped ``[n, *B, K]`` floats (for ``Categorical``
  too, whose own samples are indices: an index carries no gradient, so these rules hand f the one-hot
  vector; write f as ``(x * table).sum(-1)`` or ``x @ embedding`` rather than ``table[x]``).

References:
    Maddison et al. (2017). The Concrete Distribution: A Continuous Relaxation of Discrete Random
    Variables. ICLR. arXiv:1611.00712.
    Jang et al. (2017). Categorical Reparameterization with Gumbel-Softmax. ICLR. arXiv:1611.01144.
    Bengio et al. (2013). Estimating or Propagating Gradients Through Stochastic Neurons.
    arXiv:1308.3432.
    Paulus et al. (2021). Rao-Blackwellizing the Straight-Through Gumbel-Softmax Gradient Estimator.
    ICLR. arXiv:2010.04838.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor
from torch.distributions import Bernoulli, Categorical, Distribution
from torch.nn.functional import logsigmoid

from gradest._validation import check_positive, describe, is_validation_enabled
from gradest.estimators._families import (
    DISCRETE,
    categorical,
    check_parameters,
    event_dims,
    leaf,
    logits,
    parameter,
    probs,
    sum_last,
)
from gradest.estimators._gumbel import (
    binary_concrete_log_prob,
    concrete_log_prob,
    conditional_gumbel,
    conditional_logistic,
    gumbel,
    logistic,
)
from gradest.estimators.base import Draw, Estimator
from gradest.surrogate import stop_gradient, straight_through

__all__ = ["GumbelSoftmax", "StraightThrough", "GumbelRao", "RelaxedDraw", "StraightThroughDraw", "GumbelRaoDraw"]


@dataclass(frozen=True, eq=False)
class RelaxedDraw(Draw):
    """GumbelSoftmax's record: the noise G, the perturbed logits ℓ + G, the relaxed point's log-space
    ``scores`` ((ℓ + G)/τ), the relaxed sample ``soft`` and the exact sample ``hard`` it rounds to
    (``points`` is ``soft``, or ``straight_through(hard, soft)`` with ``hard=True``)."""

    noise: Tensor
    perturbed: Tensor
    scores: Tensor
    soft: Tensor

    @cached_property
    def hard(self) -> Tensor:
        """The exact sample the relaxed point rounds to, computed when first read from the perturbed logits
        of the draw (not from the distribution, whose parameters an optimiser may have changed since)."""
        return _rounded(self.perturbed, self.soft, isinstance(leaf(self.dist), Bernoulli))


def _rounded(perturbed: Tensor, soft: Tensor, binary: bool) -> Tensor:
    """The exact sample from the perturbed logits: bits ``perturbed > 0``, or the one-hot argmax (the
    Gumbel-max trick), in ``soft``'s dtype."""
    perturbed = stop_gradient(perturbed)
    if binary:
        return (perturbed > 0).to(soft.dtype)
    return torch.nn.functional.one_hot(perturbed.argmax(-1), perturbed.shape[-1]).to(soft.dtype)


@dataclass(frozen=True, eq=False)
class StraightThroughDraw(Draw):
    """StraightThrough's record: the exact sample ``hard``; ``points`` has its value and the gradient of E[x]."""

    hard: Tensor


@dataclass(frozen=True, eq=False)
class GumbelRaoDraw(Draw):
    """GumbelRao's record: the k conditional noises, their mean relaxation ``soft`` and the sample ``hard``."""

    noise: Tensor
    soft: Tensor
    hard: Tensor

_FAMILIES = "Bernoulli, Categorical, OneHotCategorical (and Independent of these)"

LOW_PRECISION_TEMPERATURE = 0.05
"""Below this temperature, parameters narrower than float64 get a warning (see ``_check_precision``)."""


def relax_binary(scores: Tensor) -> Tensor:
    """σ(scores) as ``exp(logsigmoid(scores))``: the same value, and a derivative σ(x)σ(−x) that stays
    finite and non-zero where σ(x) has rounded to 1 (torch's ``sigmoid`` differentiates as y(1 − y),
    which is exactly 0 there)."""
    return torch.exp(logsigmoid(scores))


def check_relaxation(where: str, temperature: float, scores: Tensor, soft: Tensor | None = None) -> None:
    """Refuse a relaxation that carries no derivative at all (only while validation is on: this syncs).

    At a temperature far below the scale of the perturbed logits every relaxed point rounds to its
    exact sample and its derivative underflows to zero, so every pathwise term vanishes and the
    estimate is exactly zero (or REINFORCE without a baseline, for REBAR); say so instead. For bits
    (``soft`` None) the derivative σ(x)σ(−x) of the relaxation at x = ``scores`` underflows where
    |x| > −log(tiny); for categories, where every probability but the largest in ``soft`` is exactly 0.
    """
    if not is_validation_enabled() or scores.numel() == 0:
        return
    if soft is None:
        dead = float(stop_gradient(scores).abs().min()) > -math.log(torch.finfo(scores.dtype).tiny)
    else:  # every row's second largest probability exactly 0 (a max of 1.0 may still have live neighbours)
        dead = soft.shape[-1] > 1 and float(stop_gradient(soft).topk(2, -1).values[..., 1].max()) == 0.0
    if dead:
        raise ValueError(
            f"{where}: temperature={temperature:g} is so low that every relaxed point rounds to an exact "
            f"sample in {scores.dtype} and its derivative underflows to zero, so the gradient would be exactly "
            "zero; raise the temperature (0.1 to 1 is typical; anneal towards 0.05 rather than below)."
        )


def check_family(where: str, dist: Distribution, fix: str, *, masked: bool = True) -> Distribution:
    """The leaf of a Bernoulli or categorical family (checked parameters; ``masked``: whether −inf logits
    are allowed), else NotImplementedError."""
    inner = leaf(dist)
    if not isinstance(inner, DISCRETE):  # the ``families`` of every rule that calls this
        raise NotImplementedError(
            f"{where}: dist={describe(dist)} is not a Bernoulli or categorical family; it supports {_FAMILIES}. {fix}"
        )
    check_parameters(where, dist, masked=masked)
    return inner


def check_temperature(where: str, temperature: object) -> float:
    """A finite float > 0, else a ``TypeError``/``ValueError`` naming the value."""
    return check_positive(where, "temperature", temperature, "values between 0.1 and 1 are typical")


def check_precision(where: str, temperature: float, inner: Distribution) -> None:
    """Warn for parameters narrower than float64 at temperatures below ``LOW_PRECISION_TEMPERATURE``."""
    dtype = parameter(inner).dtype
    if temperature < LOW_PRECISION_TEMPERATURE and torch.finfo(dtype).bits < 64:
        warnings.warn(
            f"{where}: temperature={temperature:g} with {dtype} parameters: relaxed samples round to exactly "
            "0 or 1 and most gradients underflow to zero while a few are of order 1/temperature; use "
            f"float64, or a temperature >= {LOW_PRECISION_TEMPERATURE} (anneal towards it rather than below).",
            stacklevel=4,  # past check() and expectation()/Graph.sample(): the user's line
        )


class Tempered(Estimator):
    """A rule with a ``temperature`` attribute, checked whenever it is set (annealing schedules too)."""

    _temperature: float

    @property
    def temperature(self) -> float:
        return self._temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        self._temperature = check_temperature(type(self).__name__, value)

    def get_extra_state(self) -> dict[str, object]:
        """The temperature, so that an annealed one survives a checkpoint (``state_dict()``)."""
        return {"version": 1, "temperature": self._temperature}

    def set_extra_state(self, state: object) -> None:
        if not isinstance(state, dict) or state.get("version") != 1 or "temperature" not in state:
            raise ValueError(
                f"{type(self).__name__}.load_state_dict: {state!r} is not a {type(self).__name__} state (version 1)."
            )
        self.temperature = state["temperature"]  # type: ignore[assignment]


class GumbelSoftmax(Tempered):
    r"""Concrete / Gumbel-Softmax relaxation; straight-through Gumbel with ``hard=True``.

    .. math::
        y = \operatorname{softmax}\!\Bigl(\frac{\ell + G}{\tau}\Bigr),\; G_k \sim \mathrm{Gumbel}(0, 1);
        \qquad y = \sigma\!\Bigl(\frac{\ell + L}{\tau}\Bigr),\; L \sim \mathrm{Logistic}(0, 1)
        \text{ (Bernoulli)}

    .. math::
        \hat g = \frac1n \sum_{i=1}^n \nabla_\theta f(y_i) \quad (\texttt{hard=False}), \qquad
        \hat g = \frac1n \sum_{i=1}^n \frac{\partial f}{\partial x}\Big|_{x = D_i} \nabla_\theta y_i,\;
        D_i = \operatorname{onehot}(\arg\max_k (\ell + G_i)_k) \quad (\texttt{hard=True})

    With ``hard=False`` f is evaluated **only at relaxed points**: the surrogate's value estimates the
    relaxed objective :math:`\mathbb{E}[f(y)]`, not :math:`\mathbb{E}[f(D)]`, and its gradient is
    unbiased for the relaxed objective's gradient. With ``hard=True`` f sees exact samples D (the
    value estimates :math:`\mathbb{E}[f(D)]`) and the gradient flows through y.

    Everything is computed in log space from noise drawn in the open interval: no NaN or inf at any
    temperature > 0 in float32 or float64, and the binary relaxation keeps a non-zero derivative where
    its value has rounded to 0 or 1. The draw (a :class:`RelaxedDraw`) holds ``noise``, ``scores``
    ((ℓ + G)/τ, the log-space form of y), ``soft`` (y) and ``hard`` (D); :meth:`relaxed_log_prob` gives
    the Concrete log-density of y from the scores, finite where torch's
    ``RelaxedOneHotCategorical.log_prob`` is not (it takes log y after y has rounded to 0). A temperature
    so low that every relaxed point's derivative underflows is refused (while validation is on).

    Requires: ``dist`` is Bernoulli, Categorical or OneHotCategorical (or Independent of these),
    from ``logits`` or ``probs``; f differentiable in x and defined on the relaxed points (for
    Categorical, f takes one-hot-shaped ``[n, *B, K]`` input, see the module docstring). An f that
    reaches x only through operations without a derivative (``x > 0.5``, ``table[x.argmax(-1)]``,
    ``round``, a numpy round trip) is refused while validation is on: its gradient would be zero.
    Bias: towards the gradient of the relaxed objective. The bias against the true gradient shrinks
    as the temperature falls, while the variance grows (roughly as 1/τ); ``hard=True`` adds the
    straight-through bias. Exact only in the limit τ → 0, where the variance is infinite.

    Args:
        temperature: τ > 0; 0.1 to 1 is typical. Below 0.05 with float32 parameters a warning is
            given (float64 is advised). The attribute may be changed between calls (annealing).
        hard: evaluate f at exact samples and pass the relaxed gradient straight through.

    Raises:
        ValueError: temperature ≤ 0 or not finite.
        NotImplementedError: dist is not one of the families above.

    Example:
        >>> import torch, gradest
        >>> _ = torch.manual_seed(0)
        >>> logits = torch.zeros(3, 4, requires_grad=True)
        >>> dist = torch.distributions.OneHotCategorical(logits=logits)
        >>> table = torch.tensor([0.0, 1.0, 2.0, 3.0])
        >>> s = gradest.expectation(lambda x: (x * table).sum(-1), dist, gradest.GumbelSoftmax(0.5), n=16)
        >>> s.sum().backward(); logits.grad.shape
        torch.Size([3, 4])

    References:
        Maddison et al. (2017). The Concrete Distribution: A Continuous Relaxation of Discrete Random
        Variables. ICLR. arXiv:1611.00712.
        Jang et al. (2017). Categorical Reparameterization with Gumbel-Softmax. ICLR. arXiv:1611.01144.
    """

    unbiased = False
    families = DISCRETE
    differentiable_f = "values"

    def __init__(self, temperature: float, *, hard: bool = False) -> None:
        super().__init__()
        self.temperature = temperature
        if not isinstance(hard, bool):
            raise TypeError(f"GumbelSoftmax: hard={hard!r} must be a bool (True: straight-through Gumbel).")
        self.hard = hard

    def check(self, dist: Distribution, n: int) -> None:
        inner = check_family(
            "GumbelSoftmax", dist,
            "For continuous families use Pathwise(); for other discrete ones ScoreFunction(LeaveOneOut()).",
        )
        check_precision("GumbelSoftmax", self.temperature, inner)

    def draw(self, dist: Distribution, n: int) -> RelaxedDraw:
        inner = leaf(dist)
        tau = self.temperature
        ell = logits(inner)
        binary = isinstance(inner, Bernoulli)
        noise = (logistic if binary else gumbel)((n, *ell.shape), dtype=ell.dtype, device=ell.device)
        perturbed = ell + noise
        scores = perturbed / tau  # the relaxed sample's logits
        soft = relax_binary(scores) if binary else torch.softmax(scores, -1)
        check_relaxation("GumbelSoftmax", tau, scores, None if binary else soft)
        value = straight_through(_rounded(perturbed, soft, binary), soft) if self.hard else soft
        return RelaxedDraw(value, n, dist, None, noise, perturbed, scores, soft)

    def relaxed_log_prob(self, draw: RelaxedDraw) -> Tensor:
        """Log-density ``[n, *B]`` of the relaxed points ``draw.soft`` under the Concrete
        distribution, computed in log space from ``draw.scores``.

        Finite at every temperature and dtype (torch's ``RelaxedBernoulli.log_prob`` and
        ``RelaxedOneHotCategorical.log_prob`` take the log of points that may have rounded to 0 or 1),
        and differentiable in θ through both the point and the density, as a relaxed KL term needs.
        """
        inner = leaf(draw.dist)
        ell, scores = logits(inner), draw.scores
        if isinstance(inner, Bernoulli):
            log_prob = binary_concrete_log_prob(ell, scores, self.temperature)
        else:
            log_prob = concrete_log_prob(ell, torch.log_softmax(scores, -1), self.temperature)
        return sum_last(log_prob, event_dims(draw.dist, inner))

    def extra_repr(self) -> str:
        return f"temperature={self.temperature:g}, hard={self.hard}"


class StraightThrough(Estimator):
    r"""The classic straight-through estimator: exact samples, the gradient of their mean.

    .. math::
        x_i \sim p_\theta, \qquad
        \hat g = \frac1n \sum_{i=1}^n \frac{\partial f}{\partial x}\Big|_{x_i}
        \frac{\partial\, \mathbb{E}_{p_\theta}[x]}{\partial \theta}

    f is evaluated at ``straight_through(x, E[x])``: the value of the exact sample x (bits, or one-hot
    vectors) and the gradient of the probabilities (σ(ℓ) for Bernoulli, softmax(ℓ) for categoricals),
    as torch's ``OneHotCategoricalStraightThrough``. For any other non-differentiable operation
    (round, sign, argmax, quantisation) use :func:`gradest.straight_through` directly.

    Requires: ``dist`` is Bernoulli, Categorical or OneHotCategorical (or Independent of these), from
    ``logits`` or ``probs``; f differentiable in x (for Categorical, on one-hot ``[n, *B, K]`` input).
    Bias: none when f is linear (affine) in the sample, where every single estimate is exact;
    otherwise towards the gradient of f linearised at the sample. Zero variance for linear f.

    Example:
        >>> import torch, gradest
        >>> _ = torch.manual_seed(0)
        >>> logits = torch.zeros(3, requires_grad=True)
        >>> dist = torch.distributions.Bernoulli(logits=logits)
        >>> s = gradest.expectation(lambda b: 2 * b - 1, dist, gradest.StraightThrough(), n=4)
        >>> s.sum().backward(); logits.grad.tolist()   # exact: d/dℓ (2σ(ℓ) − 1) = 2σ(1 − σ)
        [0.5, 0.5, 0.5]

    References:
        Bengio et al. (2013). Estimating or Propagating Gradients Through Stochastic Neurons.
        arXiv:1308.3432.
    """

    unbiased = False
    families = DISCRETE
    differentiable_f = "values"

    def check(self, dist: Distribution, n: int) -> None:
        check_family(
            "StraightThrough", dist,
            "For continuous families use Pathwise(); for a custom non-differentiable operation use "
            "gradest.straight_through(hard, soft).",
        )

    def draw(self, dist: Distribution, n: int) -> StraightThroughDraw:
        inner = leaf(dist)
        p = probs(inner)
        if isinstance(inner, Categorical):
            index = inner.sample((n,))
            hard = torch.nn.functional.one_hot(index, p.shape[-1]).to(p.dtype)
        else:
            hard = inner.sample((n,))
        value = straight_through(hard, p.expand(hard.shape))
        return StraightThroughDraw(value, n, dist, None, hard)


class GumbelRao(Tempered):
    r"""Gumbel-Rao: straight-through Gumbel, Rao-Blackwellised over k conditional relaxations.

    .. math::
        D \sim p_\theta, \quad G^{(j)} \sim G \mid \arg\max(\ell + G) = D \; (j = 1..k), \qquad
        \hat g = \frac{\partial f}{\partial x}\Big|_{x=D}\,
        \frac1k\sum_{j=1}^k \nabla_\theta \operatorname{softmax}\!\Bigl(\frac{\ell + G^{(j)}}{\tau}\Bigr)

    f is evaluated at the exact sample D (one-hot, or a bit), entered as
    ``straight_through(D, mean_j softmax((ℓ + G⁽ʲ⁾)/τ))``. The conditional noise comes from the
    top-down construction (``conditional_gumbel``; logistic noise given the bit for Bernoulli). Its
    mean equals that of ``GumbelSoftmax(temperature, hard=True)`` and its variance is no larger: it
    is that estimator's conditional expectation given D, estimated with k samples. k = 1 gives
    straight-through Gumbel itself; f is called once per sample, whatever k.

    Requires: as ``GumbelSoftmax``; f differentiable in x at the one-hot (or 0/1) points.
    Bias: that of straight-through Gumbel-Softmax at the same temperature (none for the relaxed
    objective's gradient when f is linear), no more.

    Note:
        The noise :math:`G^{(j)}` is held fixed when differentiating (a stop-gradient on the
        conditional sampler), so that the estimator is the conditional expectation of the
        straight-through Gumbel gradient; the paper's text takes the total derivative through
        :math:`G^{(j)}(\theta)`, which changes the estimator's mean.

    Args:
        k: conditional relaxations per sample, ≥ 1; 10 to 100 is typical (cost grows with k·K, no
            extra calls of f).
        temperature: τ > 0 of the relaxation whose gradient is passed straight through.

    Raises:
        ValueError: k < 1, temperature ≤ 0.
        NotImplementedError: dist is not one of the families above.

    Example:
        >>> import torch, gradest
        >>> _ = torch.manual_seed(0)
        >>> logits = torch.zeros(4, requires_grad=True)
        >>> dist = torch.distributions.OneHotCategorical(logits=logits)
        >>> s = gradest.expectation(lambda x: (x[..., 0] - 0.5) ** 2, dist, gradest.GumbelRao(10), n=8)
        >>> s.backward(); logits.grad.shape
        torch.Size([4])

    References:
        Paulus et al. (2021). Rao-Blackwellizing the Straight-Through Gumbel-Softmax Gradient
        Estimator. ICLR. arXiv:2010.04838.
    """

    unbiased = False
    families = DISCRETE
    differentiable_f = "values"

    def __init__(self, k: int, *, temperature: float = 1.0) -> None:
        super().__init__()
        if isinstance(k, bool) or not isinstance(k, int):
            raise TypeError(f"GumbelRao: k={k!r} must be an int >= 1; 10 to 100 is typical.")
        if k < 1:
            raise ValueError(f"GumbelRao: k={k} must be >= 1 (k = 1 is straight-through Gumbel); 10 to 100 is typical.")
        self.k = k
        self.temperature = temperature

    def check(self, dist: Distribution, n: int) -> None:
        inner = check_family(
            "GumbelRao", dist,
            "For continuous families use Pathwise(); for other discrete ones ScoreFunction(LeaveOneOut()).",
            masked=False,
        )
        check_precision("GumbelRao", self.temperature, inner)

    def draw(self, dist: Distribution, n: int) -> GumbelRaoDraw:
        inner = leaf(dist)
        tau = self.temperature
        ell = logits(inner)
        fixed = stop_gradient(ell)
        if isinstance(inner, Bernoulli):
            hard = inner.sample((n,)).to(ell.dtype)
            noise = conditional_logistic(fixed, hard.expand(self.k, *hard.shape))
            scores = (ell + noise) / tau
            check_relaxation("GumbelRao", tau, scores)
            soft = relax_binary(scores).mean(0)
        else:
            index = categorical(inner).sample((n,))
            noise = conditional_gumbel(fixed, index.expand(self.k, *index.shape))
            scores = (ell + noise) / tau
            relaxed = torch.softmax(scores, -1)
            check_relaxation("GumbelRao", tau, scores, relaxed)
            soft = relaxed.mean(0)
            hard = torch.nn.functional.one_hot(index, ell.shape[-1]).to(soft.dtype)
        return GumbelRaoDraw(straight_through(hard, soft), n, dist, None, noise, soft, hard)

    def extra_repr(self) -> str:
        return f"k={self.k}, temperature={self.temperature:g}"
