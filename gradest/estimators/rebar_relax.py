r"""REBAR and RELAX: score functions whose control variate is a relaxation, differentiated pathwise.

Both perturb the logits ℓ of a Bernoulli or categorical distribution with noise u (logistic for bits,
Gumbel for categories), :math:`z = \ell + u`, take the exact sample :math:`b = H(z)` (the sign for
bits, the argmax for categories) and a second point :math:`\tilde z \sim p(z \mid b)` drawn from the
noise *conditioned on the sample it produced* (``_gumbel.conditional_logistic`` and
``conditional_gumbel``, reparameterised in ℓ). With a control variate c that is differentiable in z,

.. math::
    \hat g_\ell = \bigl(f(b) - c(\tilde z)\bigr)\nabla_\ell \log p_\ell(b)
                  + \nabla_\ell c(z) - \nabla_\ell c(\tilde z)

is unbiased for :math:`\nabla_\ell \mathbb{E}[f(b)]` whatever c is: the second and third terms
remove in expectation exactly what :math:`c(\tilde z)` subtracts from the first (Tucker et al. 2017,
§3; Grathwohl et al. 2018, §3.3). REBAR takes :math:`c(z) = \eta\, f(\sigma_\tau(z))`, f itself at the
Concrete relaxation of temperature τ (fixed, or with ``learn=True`` η and τ trained as RELAX trains
its control); RELAX takes a learned network :math:`c_\phi` and trains φ to minimise the estimator's
variance (its squared norm), in the same ``backward()``. Both training rules share one implementation
(``_learned_correction``).

The gradient is with respect to the logits and flows from there, by the chain rule, to whatever
produced them (``probs`` when the distribution was built from probabilities; an encoder). The
surrogate's value is the mean of f at the n exact samples.

References:
    Tucker et al. (2017). REBAR: Low-Variance, Unbiased Gradient Estimates for Discrete Latent
    Variable Models. NeurIPS. arXiv:1703.07370.
    Grathwohl et al. (2018). Backpropagation through the Void: Optimizing Control Variates for
    Black-Box Gradient Estimation. ICLR. arXiv:1711.00123.
    Maddison et al. (2017). The Concrete Distribution: A Continuous Relaxation of Discrete Random
    Variables. ICLR. arXiv:1611.00712.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, Categorical, Distribution
from torch.nn.functional import one_hot

from gradest._validation import is_validation_enabled
from gradest.estimators._families import DISCRETE, event_dims, leaf, logits, sum_last
from gradest.estimators._gumbel import conditional_gumbel, conditional_logistic, gumbel, logistic
from gradest.estimators._paths import differentiable_path
from gradest.estimators.base import Draw, Estimator
from gradest.estimators.relaxed import (
    Tempered,
    check_family,
    check_precision,
    check_relaxation,
    check_temperature,
    relax_binary,
)
from gradest.surrogate import stop_gradient, straight_through

__all__ = ["REBAR", "RELAX", "REBARDraw", "RELAXDraw"]


@dataclass(frozen=True, eq=False)
class REBARDraw(Draw):
    """REBAR's record. ``points`` is ``[b; σ_τ(z); σ_τ(z̃)]`` (``3n`` rows; the n exact samples b are
    the values); ``z``, ``z_tilde`` the perturbed logits; ``hard`` the samples as floats; ``score`` the
    zero-valued score term (``learn=False``) or None; ``free`` the logits held apart from θ
    (``learn=True``) or None."""

    z: Tensor
    z_tilde: Tensor
    hard: Tensor
    score: Tensor | None
    free: Tensor | None


@dataclass(frozen=True, eq=False)
class RELAXDraw(Draw):
    """RELAX's record: the n exact samples (``points``), the logits held apart from θ (``free``), the
    perturbed logits z and z̃ the control is evaluated at, and the samples as floats (``hard``)."""

    free: Tensor
    z: Tensor
    z_tilde: Tensor
    hard: Tensor


def _perturb(inner: Distribution, ell: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Perturbed logits z ``[n, *logits.shape]``, the exact sample they give, and z̃ ∼ p(z | sample).

    Returns ``(z, z_tilde, hard, index)``: ``hard`` is the sample as floats (bits, or one-hot
    vectors), ``index`` the integer category (the bits again for Bernoulli). z and z̃ are
    differentiable in ``logits`` (z̃ through the conditional sampler's reparameterisation); the sample
    is not.
    """
    shape = (n, *ell.shape)
    if isinstance(inner, Bernoulli):
        z = ell + logistic(shape, dtype=ell.dtype, device=ell.device)
        hard = (stop_gradient(z) > 0).to(ell.dtype)
        return z, conditional_logistic(ell, hard, perturbed=True), hard, hard
    z = ell + gumbel(shape, dtype=ell.dtype, device=ell.device)
    index = stop_gradient(z).argmax(-1)
    hard = one_hot(index, ell.shape[-1]).to(ell.dtype)
    return z, ell + conditional_gumbel(ell, index), hard, index


def _score(inner: Distribution, ell: Tensor, hard: Tensor) -> Tensor:
    """∇_ℓ log p(sample) in closed form: ``hard − σ(ℓ)`` or ``hard − softmax(ℓ)``."""
    if isinstance(inner, Bernoulli):
        return hard - torch.sigmoid(ell)
    return hard - torch.softmax(ell, -1)


def _score_term(inner: Distribution, ell: Tensor, hard: Tensor, r: int) -> Tensor:
    """``[n, *B]`` of value 0 whose gradient is ∇ log p(sample): ``straight_through(0, Σ ⊥(∇_ℓ log p)·ℓ)``.

    The closed-form score dotted into the logits (summed over the ``r`` event dims of ``Independent``
    and the categories) has the gradient of ``log p`` to first order, one softplus cheaper than
    differentiating ``log p`` itself.
    """
    term = _score(inner, stop_gradient(ell), hard) * ell
    if not isinstance(inner, Bernoulli):
        term = term.sum(-1)
    return straight_through(0.0, sum_last(term, r))


def _relax(inner: Distribution, scores: Tensor) -> Tensor:
    """The Concrete relaxation σ_τ(z) from ``scores`` = z / τ: ``sigmoid`` for bits (with a derivative
    that survives rounding, ``relax_binary``), ``softmax`` for categories."""
    if isinstance(inner, Bernoulli):
        return relax_binary(scores)
    return torch.softmax(scores, -1)


def _learned_correction(
    inner: Distribution, free: Tensor, hard: Tensor, f: Tensor, c_z: Tensor, c_tilde: Tensor, params: Sequence[Tensor]
) -> Tensor:
    r"""The zero-valued term ``[*B]`` of a control variate trained on its own variance (RELAX, and
    ``REBAR(learn=True)``).

    From the stopped costs f ``[n, *B]`` at the exact samples ``hard`` and the control c at z and z̃
    (``[n, *B]``, differentiable in ``free``, the logits held apart from θ, and in ``params``):

    .. math::
        \hat g = \frac1n\sum_i \bigl(f_i - c(\tilde z_i)\bigr)\nabla_\ell \log p(b_i)
                 + \nabla_\ell c(z_i) - \nabla_\ell c(\tilde z_i)

    by ``torch.autograd.grad(..., create_graph=True)`` with respect to ``free``. Returned:
    ``straight_through(0, Σ ⊥(ĝ)·ℓ)``, which routes ĝ from the distribution's own logits ℓ to θ, plus
    ``straight_through(0, Σ_p ⊥(∂_p Σ_b‖ĝ_b‖²)·p / |B|)`` for the trainable ``params`` p, so that
    ``surrogate.sum().backward()`` gives each exactly :math:`\partial_p \sum_b \lVert \hat g_b\rVert^2`.
    """
    n, batch = f.shape[0], f.shape[1:]
    event = free.dim() - len(batch)  # R, and K for categorical families
    coefficient = (f - c_tilde).reshape(f.shape + (1,) * event)
    g = (coefficient * _score(inner, free, hard)).sum(0)
    path = (c_z - c_tilde).sum()
    if path.requires_grad:
        (g_path,) = torch.autograd.grad(path, free, create_graph=True, allow_unused=True)
        if g_path is not None:
            g = g + g_path
    g = g / n  # [*B, *R(, K)]: the estimate of ∂E[f]/∂ℓ, a differentiable function of the params
    ell = logits(inner)
    term = straight_through(0.0, sum_last(stop_gradient(g).to(ell.dtype) * ell, event))
    trainable = [p for p in params if p.requires_grad]
    if trainable and g.requires_grad:
        # retain_graph: the surrogate's own backward may still pass through f's graph (REBAR's
        # relaxed rows share one call of f with the exact samples); it is freed with g.
        grads = torch.autograd.grad(g.square().sum(), trainable, allow_unused=True, retain_graph=True)
        linear = sum(((stop_gradient(d) * p).sum() for d, p in zip(grads, trainable) if d is not None),
                     torch.zeros((), dtype=term.dtype, device=term.device))
        term = term + straight_through(0.0, linear / max(batch.numel(), 1))
    return term


def _scale(eta: float | Tensor, x: Tensor) -> Tensor:
    """η·x, skipping the multiplication by a fixed η = 1 (the default)."""
    return x if isinstance(eta, float) and eta == 1.0 else eta * x


def _check_eta(eta: object) -> float:
    if isinstance(eta, Tensor) and eta.numel() == 1:
        eta = float(eta)
    if isinstance(eta, bool) or not isinstance(eta, (int, float)):
        raise TypeError(f"REBAR: eta={eta!r} must be a float (the control variate's scale); 1.0 is typical.")
    if not math.isfinite(eta):
        raise ValueError(f"REBAR: eta={eta} must be finite; 1.0 is typical (0 gives plain REINFORCE).")
    return float(eta)


class REBAR(Tempered):
    r"""REBAR: REINFORCE with f at the Concrete relaxation as its control variate, made unbiased.

    .. math::
        \hat g = \frac1n\sum_{i=1}^n \Bigl[\bigl(f(b_i) - \eta f(\sigma_\tau(\tilde z_i))\bigr)
        \nabla_\theta \log p_\theta(b_i)
        + \eta\,\nabla_\theta f(\sigma_\tau(z_i)) - \eta\,\nabla_\theta f(\sigma_\tau(\tilde z_i))\Bigr]

    with :math:`z_i = \ell + u_i` (logistic or Gumbel noise), :math:`b_i = H(z_i)` the exact sample,
    :math:`\tilde z_i \sim p(z \mid b_i)` reparameterised in ℓ (b held fixed), and
    :math:`\sigma_\tau` the Concrete relaxation (``sigmoid(z/τ)``, or ``softmax(z/τ)``).

    f is called once on ``[3n, *B, *E]`` points: the n exact samples, then :math:`\sigma_\tau(z_i)`,
    then :math:`\sigma_\tau(\tilde z_i)`. For Categorical (whose own samples are indices) all three
    blocks are one-hot-shaped ``[3n, *B, K]`` floats, as for ``GumbelSoftmax``: write f as
    ``(x * table).sum(-1)`` or ``x @ embedding``. The surrogate's value is the mean of f over the
    exact samples only. In a :class:`~gradest.Graph` the node's samples are the n exact ones, and
    the costs at σ_τ(z) and σ_τ(z̃) are computed by replaying the operations on them (a node drawn
    below is replayed from the same random numbers; its weight carries the derivative of its
    distribution there).

    The surrogate is the mean of f at the exact samples plus the correction, a zero-valued score term
    ``⊥(f(b_i) − η f(σ_τ(z̃_i)))·straight_through(0, log p(b_i))`` (from the closed-form score) and
    the zero-valued pathwise difference ``straight_through(0, η·(f(σ(z_i)) − f(σ(z̃_i))))``, averaged
    over the n samples (the rule declares ``live_costs``: it differentiates f at the relaxed points).
    So the gradient of parameters ψ inside f (a decoder) is
    :math:`\nabla_\psi f(b_i) + \eta(\nabla_\psi f(\sigma_\tau(z_i)) - \nabla_\psi f(\sigma_\tau(\tilde z_i)))`:
    unbiased, because z and z̃ have the same marginal distribution; the second part only adds noise
    of mean zero.

    **Learning η and τ** (``learn=True``; Tucker et al. 2017, §3.3). The mean of ĝ does not depend
    on η or τ, so the gradient of the estimator's variance is that of its second moment,

    .. math::
        \nabla_{\eta,\,\log\tau}\, \mathrm{Var}[\hat g_\ell]
        = \mathbb{E}\bigl[\nabla_{\eta,\,\log\tau} \lVert \hat g_\ell \rVert^2\bigr],

    with :math:`\hat g_\ell` the estimate of the gradient with respect to the logits. η and log τ
    become ``nn.Parameter``\ s of this module, and the estimator is :class:`RELAX` with the control
    :math:`c(z) = \eta f(\sigma_\tau(z))`, its two evaluations supplied by the same call of f on
    ``[3n, *B, *E]``: ĝ_ℓ is formed with ``torch.autograd.grad(..., create_graph=True)`` with respect
    to a copy of the logits held apart from θ, enters the surrogate as ``straight_through(0, Σ ⊥(ĝ)·ℓ)``,
    and :math:`\partial_{\eta,\log\tau}\sum_b \lVert \hat g_b\rVert^2` enters as a second
    zero-valued term, so ``surrogate.sum().backward()`` trains θ on ĝ and (η, log τ) on the variance
    at once, and the value is unchanged. Put ``estimator.parameters()`` in your optimiser.
    Parameters ψ inside f then receive :math:`\nabla_\psi f(b_i)` only (as under RELAX), and the
    gradient with respect to θ is the same as with ``learn=False`` at the same η and τ.

    Requires: ``dist`` is Bernoulli, Categorical or OneHotCategorical (or Independent of these), from
    ``logits`` or ``probs``; f defined, continuous and differentiable on the relaxed points (bits in
    (0, 1), points of the simplex). A cost that is piecewise constant in x (an argmax, a table
    lookup by ``x.long()``, a comparison) has zero pathwise derivative and makes the estimate biased:
    while validation is on, a cost that reaches the relaxed points only through such operations is
    refused, and so is a temperature at which every relaxed point's derivative underflows; a cost that
    mixes a smooth part with a piecewise-constant one cannot be detected: extend it multilinearly
    instead (``(x * table).sum(-1)``). Logits of −inf (masked categories) are refused: mask with a
    large negative finite logit. With ``learn=True``: one extra backward pass through f and a
    double-backward per call, and no ``torch.compile(fullgraph=True)`` (it calls
    ``torch.autograd.grad``).
    Bias: none, for every temperature τ > 0 and every η, fixed or learned.

    Note:
        First derivatives only.

    Args:
        temperature: τ > 0 of the relaxation used by the control variate; 0.1 to 1 is typical
            (it changes the variance only, never the mean). The initial value with ``learn=True``.
        eta: η, the control variate's scale; 1.0 is typical, 0 gives REINFORCE without a baseline.
            The initial value with ``learn=True``.
        learn: train η and log τ on the estimator's variance in the same ``backward()`` (as the
            paper does); they become the parameters ``eta`` and ``log_temperature``.

    Raises:
        TypeError: learn is not a bool, temperature or eta not a number.
        ValueError: temperature ≤ 0, a non-finite temperature or eta.
        NotImplementedError: dist is not one of the families above; ``learn=True`` where f's
            output carries no gradient at the relaxed points (see Requires).

    Example:
        >>> import torch, gradest
        >>> _ = torch.manual_seed(0)
        >>> logits = torch.zeros(3, requires_grad=True)
        >>> dist = torch.distributions.Bernoulli(logits=logits)
        >>> s = gradest.expectation(lambda b: (b - 0.45) ** 2, dist, gradest.REBAR(temperature=0.5), n=4)
        >>> s.sum().backward(); logits.grad.shape
        torch.Size([3])
        >>> est = gradest.REBAR(temperature=0.5, eta=1.0, learn=True)
        >>> opt = torch.optim.Adam([logits, *est.parameters()], lr=1e-2)
        >>> s = gradest.expectation(lambda b: (b - 0.45) ** 2, dist, est, n=4)
        >>> s.sum().backward(); opt.step()   # θ on ĝ, (η, log τ) on the variance, in one backward
        >>> sorted(name for name, _ in est.named_parameters())
        ['eta', 'log_temperature']

    References:
        Tucker et al. (2017). REBAR: Low-Variance, Unbiased Gradient Estimates for Discrete Latent
        Variable Models. NeurIPS. arXiv:1703.07370.
        Grathwohl et al. (2018). Backpropagation through the Void: Optimizing Control Variates for
        Black-Box Gradient Estimation. ICLR. arXiv:1711.00123.
        Maddison et al. (2017). The Concrete Distribution: A Continuous Relaxation of Discrete Random
        Variables. ICLR. arXiv:1611.00712.
    """

    unbiased = True
    families = DISCRETE
    auxiliary_points = True
    live_costs = True
    differentiable_f = "auxiliary"
    has_correction = True
    eta: float | nn.Parameter

    def __init__(self, *, temperature: float = 0.5, eta: float = 1.0, learn: bool = False) -> None:
        super().__init__()
        if not isinstance(learn, bool):
            raise TypeError(
                f"REBAR: learn={learn!r} must be a bool: True trains eta and log(temperature) on the "
                "estimator's variance in the same backward(); pass learn=True or learn=False."
            )
        self.learn = learn
        temperature = check_temperature("REBAR", temperature)
        eta = _check_eta(eta)
        if learn:
            self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))
            self.eta = nn.Parameter(torch.tensor(eta))
        else:
            self.temperature = temperature
            self.eta = eta

    @property
    def temperature(self) -> float:
        """τ; with ``learn=True`` the current ``exp(log_temperature)`` (reading it syncs the device)."""
        if self.learn:
            return float(stop_gradient(self.log_temperature).exp())
        return self._temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        value = check_temperature("REBAR", value)
        if self.learn:
            with torch.no_grad():
                self.log_temperature.fill_(math.log(value))
        else:
            self._temperature = value

    def get_extra_state(self) -> dict[str, object]:
        """The configuration a checkpoint must carry: η and τ when they are fixed (``learn=False``); with
        ``learn=True`` they are parameters, already in the state dict."""
        if self.learn:
            return {"version": 1, "learn": True}
        return {"version": 1, "learn": False, "temperature": self._temperature, "eta": self.eta}

    def set_extra_state(self, state: object) -> None:
        if not isinstance(state, dict) or state.get("version") != 1 or "learn" not in state:
            raise ValueError(f"REBAR.load_state_dict: {state!r} is not a REBAR state (version 1).")
        if state["learn"] != self.learn:
            raise ValueError(
                f"REBAR.load_state_dict: the state is of REBAR(learn={state['learn']}) but this estimator has "
                f"learn={self.learn}; create REBAR(learn={state['learn']}) to load it."
            )
        if not self.learn:
            self.temperature = state["temperature"]  # type: ignore[assignment]
            self.eta = _check_eta(state["eta"])

    def check(self, dist: Distribution, n: int) -> None:
        inner = check_family(
            "REBAR", dist,
            "For continuous families use Pathwise(); for other discrete ones ScoreFunction(LeaveOneOut()).",
            masked=False,
        )
        if not self.learn or is_validation_enabled():  # a learned τ is read from the device
            check_precision("REBAR", self.temperature, inner)

    def draw(self, dist: Distribution, n: int) -> REBARDraw:
        inner = leaf(dist)
        score = free = None
        if self.learn:  # differentiated with respect to a copy of the logits held apart from θ
            free = stop_gradient(logits(inner)).requires_grad_()
            z, z_tilde, hard, _ = _perturb(inner, free, n)
            tau: float | Tensor = self.log_temperature.exp()
        else:
            ell = logits(inner)
            z, z_tilde, hard, _ = _perturb(inner, ell, n)
            tau = self._temperature
            score = _score_term(inner, ell, hard, event_dims(dist, inner))
        scores = z / tau
        relaxed = _relax(inner, scores)
        check_relaxation("REBAR", float(stop_gradient(tau)) if isinstance(tau, Tensor) else tau, scores,
                         None if isinstance(inner, Bernoulli) else relaxed)
        points = torch.cat([hard, relaxed, _relax(inner, z_tilde / tau)], 0)
        return REBARDraw(points, n, dist, None, z, z_tilde, hard, score, free)

    def correction(self, draw: REBARDraw, cost: Tensor) -> Tensor | None:  # type: ignore[override]
        """``cost`` ``[3n, *B]``: f at b, σ_τ(z), σ_τ(z̃), with its gradient (``live_costs``)."""
        n = draw.n
        if self.learn:
            if not torch.is_grad_enabled():
                return None
            assert draw.free is not None
            f = stop_gradient(cost[:n]).to(draw.free.dtype)
            c_z, c_tilde = self.eta * cost[n : 2 * n], self.eta * cost[2 * n :]  # c(z) = η f(σ_τ(z))
            term = _learned_correction(leaf(draw.dist), draw.free, draw.hard, f, c_z, c_tilde, list(self.parameters()))
            return term.to(cost.dtype).unsqueeze(0)
        assert draw.score is not None
        c = stop_gradient(cost)
        # value 0; gradient (f(b) − η f(σ(z̃)))∇log p(b): η f(σ(z̃)) knows b only through z̃ | b
        score = (c[:n] - _scale(self.eta, c[2 * n :])) * draw.score
        # value 0; gradient η(∇f(σ(z)) − ∇f(σ(z̃))): the pathwise part of the control variate
        pathwise = straight_through(0.0, _scale(self.eta, cost[n : 2 * n] - cost[2 * n :]))
        return score + pathwise

    def extra_repr(self) -> str:
        eta = float(stop_gradient(self.eta)) if isinstance(self.eta, Tensor) else self.eta
        learn = ", learn=True" if self.learn else ""
        return f"temperature={self.temperature:g}, eta={eta:g}{learn}"


class RELAX(Estimator):
    r"""RELAX: a learned control variate :math:`c_\phi(z)`, trained to minimise the estimator's variance.

    .. math::
        \hat g_\ell = \frac1n\sum_{i=1}^n \Bigl[\bigl(f(b_i) - c_\phi(\tilde z_i)\bigr)
        \nabla_\ell \log p_\ell(b_i) + \nabla_\ell c_\phi(z_i) - \nabla_\ell c_\phi(\tilde z_i)\Bigr],
        \qquad
        \nabla_\phi \mathcal{L} = \frac{\partial}{\partial\phi} \sum_{\text{batch}} \lVert \hat g_\ell \rVert^2

    with :math:`z_i = \ell + u_i`, :math:`b_i = H(z_i)` and :math:`\tilde z_i \sim p(z \mid b_i)` as in
    :class:`REBAR`. f is called only at the n exact samples (``[n, *B, *E]``, the family's own sample
    type: bits, category indices or one-hot vectors) and need not be differentiable.

    **What the control receives.** ``control(z)`` is called twice, on z and on z̃: the perturbed
    logits, ``[n, *B, *R]`` for Bernoulli (R: the event dims of ``Independent``, none otherwise) and
    ``[n, *B, *R, K]`` for Categorical and OneHotCategorical. The sample is ``z > 0`` or
    ``z.argmax(-1)``; ``sigmoid(z / τ)`` or ``softmax(z / τ, -1)`` is the Concrete relaxation. It must
    return ``[n, *B]`` (or ``[n, *B, 1]``), one number per sample and batch element, depending only
    on that element's z, and be differentiable in z.

    **What the gradient reaches.** ĝ (computed with ``torch.autograd.grad(..., create_graph=True)``
    with respect to the logits, held apart from θ) enters the surrogate as
    ``straight_through(0, Σ ⊥(ĝ)·ℓ)`` and flows from the logits to θ. The variance loss
    :math:`\sum_b \lVert \hat g_b\rVert^2` (summed over batch elements) is differentiated with
    respect to the control's own parameters, ``control.parameters()``, and enters as
    ``straight_through(0, ·)`` spread evenly over the batch, so ``surrogate.sum().backward()`` gives
    them exactly :math:`\partial_\phi \sum_b \lVert \hat g_b\rVert^2` (``.mean()`` divides by the
    batch size) and the surrogate's value is unchanged. Put the control's parameters in your
    optimiser. Parameters ψ inside f (a decoder) receive :math:`\nabla_\psi f(b_i)` only: unbiased,
    and untouched by the variance loss even when the control calls f, as long as f's parameters are
    not registered in the control module.

    Requires: ``dist`` is Bernoulli, Categorical or OneHotCategorical (or Independent of these), from
    ``logits`` or ``probs``; a control as above. Builds a second-order autograd graph through the
    control (one extra backward pass through it per call, and a double-backward for φ), and calls
    ``torch.autograd.grad``, so it is not traceable by ``torch.compile(fullgraph=True)``.
    Bias: none, whatever the control (trained or not).

    Note:
        First derivatives only. Under ``torch.no_grad()`` no gradient terms are built: the surrogate
        is the mean of f.

    Args:
        control: an ``nn.Module`` c_φ mapping z as above to ``[n, *B]``. A common choice (Grathwohl
            et al. 2018) is :math:`c_\phi(z) = \eta\, f(\sigma_\tau(z)) + r_\rho(z)` with learnable
            log τ and η and a small network r.

    Raises:
        TypeError: control is not an ``nn.Module``.
        ValueError: the control returns the wrong shape.
        NotImplementedError: dist is not one of the families above.

    Example:
        >>> import torch, gradest
        >>> _ = torch.manual_seed(0)
        >>> logits = torch.zeros(5, 3, requires_grad=True)
        >>> dist = torch.distributions.Independent(torch.distributions.Bernoulli(logits=logits), 1)
        >>> control = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        >>> est = gradest.RELAX(control)
        >>> opt = torch.optim.Adam([logits, *control.parameters()], lr=1e-2)
        >>> s = gradest.expectation(lambda b: (b.sum(-1) - 1.5) ** 2, dist, est, n=2)
        >>> s.sum().backward(); opt.step()   # trains θ on ĝ and φ on the variance, in one backward
        >>> logits.grad.shape, control[0].weight.grad.shape
        (torch.Size([5, 3]), torch.Size([16, 3]))

    References:
        Grathwohl et al. (2018). Backpropagation through the Void: Optimizing Control Variates for
        Black-Box Gradient Estimation. ICLR. arXiv:1711.00123.
        Tucker et al. (2017). REBAR: Low-Variance, Unbiased Gradient Estimates for Discrete Latent
        Variable Models. NeurIPS. arXiv:1703.07370.
    """

    unbiased = True
    families = DISCRETE
    has_correction = True

    def __init__(self, control: nn.Module) -> None:
        super().__init__()
        if not isinstance(control, nn.Module):
            raise TypeError(
                f"RELAX: control={control!r} must be an nn.Module mapping perturbed logits z [n, *B, *E'] "
                "to [n, *B] (so that its parameters are trained and checkpointed); wrap a function in "
                "an nn.Module."
            )
        self.control = control

    def check(self, dist: Distribution, n: int) -> None:
        check_family(
            "RELAX", dist,
            "For continuous families use Pathwise(); for other discrete ones ScoreFunction(LeaveOneOut()).",
            masked=False,
        )

    def draw(self, dist: Distribution, n: int) -> RELAXDraw:
        inner = leaf(dist)
        # The control's terms are differentiated with respect to a copy of the logits held apart from
        # θ: ĝ is routed to θ explicitly, and the variance loss must never reach θ.
        with torch.enable_grad():
            free = stop_gradient(logits(inner)).requires_grad_()
            z, z_tilde, hard, index = _perturb(inner, free, n)
        value = index if isinstance(inner, Categorical) else hard
        return RELAXDraw(value, n, dist, None, free, z, z_tilde, hard)

    def _evaluate(self, z: Tensor, shape: torch.Size) -> Tensor:
        c = self.control(z)
        if not isinstance(c, Tensor):
            raise TypeError(f"RELAX: control returned {type(c).__name__}, expected a tensor of shape {tuple(shape)}.")
        if c.shape == shape + (1,):
            c = c.squeeze(-1)
        if c.shape != shape:
            raise ValueError(
                f"RELAX: control returned shape {tuple(c.shape)} for z of shape {tuple(z.shape)}, expected "
                f"(n, *dist.batch_shape) = {tuple(shape)} (or with a trailing 1); reduce the event "
                "dimensions of z inside the control."
            )
        if is_validation_enabled() and not differentiable_path(c, [z]):
            raise ValueError(
                "RELAX: the control's output does not depend on z through operations with a derivative (a "
                "comparison, .long(), argmax, round, .detach() or a numpy round trip cut it), so its pathwise "
                "terms vanish and the estimate is biased; the control must be continuous and differentiable "
                "in z, e.g. a small network of z or of the relaxation softmax(z / temperature)."
            )
        return c.to(z.dtype)

    def correction(self, draw: RELAXDraw, cost: Tensor) -> Tensor | None:  # type: ignore[override]
        if not torch.is_grad_enabled():
            return None
        f = stop_gradient(cost).to(draw.free.dtype)
        c_z = self._evaluate(draw.z, cost.shape)
        c_tilde = self._evaluate(draw.z_tilde, cost.shape)
        params = list(self.control.parameters())
        term = _learned_correction(leaf(draw.dist), draw.free, draw.hard, f, c_z, c_tilde, params)
        return term.to(cost.dtype).unsqueeze(0)

