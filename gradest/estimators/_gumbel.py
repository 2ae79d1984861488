r"""Gumbel and logistic noise, their conditional versions, and Concrete log-densities, all finite.

Shared by the relaxed estimators (``relaxed.py``: GumbelSoftmax, GumbelRao) and by REBAR/RELAX
(``rebar_relax.py``). Everything is computed in log space from uniforms drawn in the *open* interval,
so no value here is ever ±inf or NaN for finite logits, whatever the dtype or temperature:

- ``uniform``: U in [tiny, 1 − ε/2] (``torch.rand`` can return exactly 0);
- ``exponential``: E = −log U > 0;
- ``gumbel``: G = −log E, the Gumbel-max trick's noise: argmax(logits + G) ∼ Categorical(logits);
- ``logistic``: L = log U − log(1 − U), the binary case: 1[logits + L > 0] ∼ Bernoulli(logits);
- ``conditional_gumbel``, ``conditional_logistic``: the same noise conditioned on the discrete
  sample it produces (REBAR's z̃ | b, Gumbel-Rao's G | D);
- ``concrete_log_prob``, ``binary_concrete_log_prob``: log-densities of relaxed samples from their
  log-space representation (torch's ``RelaxedOneHotCategorical.log_prob`` takes log y of a sample
  y that may have rounded to 0).

The conditional samplers are differentiable in ``logits``: ``logits + conditional_gumbel(logits, ...)``
is the reparameterisation of the conditional perturbed logits that REBAR differentiates through.
Estimators that treat the noise as fixed (Gumbel-Rao) pass it through ``stop_gradient``.

These names are stable: ``uniform``, ``exponential``, ``gumbel``, ``logistic``, ``conditional_gumbel``,
``conditional_logistic``, ``concrete_log_prob``, ``binary_concrete_log_prob``.

References:
    Maddison et al. (2014). A* Sampling. NeurIPS. arXiv:1411.0030.
    Maddison et al. (2017). The Concrete Distribution: A Continuous Relaxation of Discrete Random
    Variables. ICLR. arXiv:1611.00712.
    Tucker et al. (2017). REBAR: Low-Variance, Unbiased Gradient Estimates for Discrete Latent
    Variable Models. NeurIPS. arXiv:1703.07370.
    Paulus et al. (2021). Rao-Blackwellizing the Straight-Through Gumbel-Softmax Gradient Estimator.
    ICLR. arXiv:2010.04838.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn.functional import logsigmoid

from gradest._validation import broadcast_shapes

__all__ = [
    "uniform",
    "exponential",
    "gumbel",
    "logistic",
    "conditional_gumbel",
    "conditional_logistic",
    "concrete_log_prob",
    "binary_concrete_log_prob",
]

Shape = Sequence[int] | torch.Size


def uniform(
    shape: Shape,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Uniform noise in the open interval (0, 1), in one kernel: ``uniform_(tiny, 1)``.

    ``torch.rand`` draws from [0, 1) on a grid of spacing 2^-digits (ε/2); ``uniform_(tiny, 1)`` draws
    the same random numbers from the generator and returns the same values, except that an exact 0
    becomes the smallest normal number ``tiny`` (adding it to any other grid point rounds back to it),
    so ``log`` of the noise is finite. (float16 keeps ``rand`` and a clamp: its tiny, 6e-5, is not
    negligible beside its values, which ``uniform_(tiny, 1)`` would shift.)
    """
    dtype = torch.get_default_dtype() if dtype is None else dtype
    tiny = torch.finfo(dtype).tiny
    if dtype == torch.float16:
        return torch.rand(tuple(shape), dtype=dtype, device=device, generator=generator).clamp_(min=tiny)
    return torch.empty(tuple(shape), dtype=dtype, device=device).uniform_(tiny, 1.0, generator=generator)


def exponential(
    shape: Shape,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Standard exponential noise E = −log U, strictly positive and finite."""
    return -torch.log(uniform(shape, dtype=dtype, device=device, generator=generator))


def gumbel(
    shape: Shape,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Standard Gumbel noise :math:`G = -\log(-\log U)`, finite.

    ``argmax(logits + G)`` is an exact sample of ``Categorical(logits=logits)`` (the Gumbel-max trick),
    and ``softmax((logits + G) / temperature)`` is a Concrete sample.
    """
    return -torch.log(exponential(shape, dtype=dtype, device=device, generator=generator))


def logistic(
    shape: Shape,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Standard logistic noise :math:`L = \log U - \log(1 - U)`, finite (the difference of two Gumbels).

    ``1[logits + L > 0]`` is an exact sample of ``Bernoulli(logits=logits)``, and
    ``sigmoid((logits + L) / temperature)`` is a binary Concrete sample.
    """
    u = uniform(shape, dtype=dtype, device=device, generator=generator)
    return torch.log(u) - torch.log1p(-u)


def conditional_gumbel(
    logits: Tensor, index: Tensor, *, generator: torch.Generator | None = None
) -> Tensor:
    r"""Gumbel noise conditioned on the argmax it produces: :math:`G \mid \arg\max_k(\ell_k + G_k) = i`.

    Top-down construction (Maddison et al. 2014; Tucker et al. 2017, appendix): with
    :math:`E_k \sim \mathrm{Exp}(1)` i.i.d. and :math:`Z = \operatorname{logsumexp}(\ell)`, the
    maximum is :math:`z_i = Z - \log E_i` (a Gumbel with location Z), and every other coordinate is a
    Gumbel(ℓ_k) truncated below it:

    .. math::
        z_k = -\log\bigl(e^{-z_i} + E_k e^{-\ell_k}\bigr)
            = -\operatorname{logaddexp}\bigl(\log E_i - Z,\; \log E_k - \ell_k\bigr), \qquad k \ne i.

    The returned noise is :math:`z - \ell`, so ``logits + noise`` has its argmax at ``index`` and,
    averaged over index ∼ Categorical(logits), is distributed as ``logits + gumbel(...)``.

    Args:
        logits: ``[*S, K]`` (or broadcastable to it) unnormalised log-probabilities.
        index: ``[*S]`` integer tensor, the argmax to condition on.
        generator: optional ``torch.Generator`` for the noise.

    Returns:
        ``[*S, K]`` noise, differentiable in ``logits`` (the reparameterisation REBAR needs; detach
        it to treat the noise as fixed).
    """
    k = logits.shape[-1]
    shape = broadcast_shapes(index.shape + (k,), logits.shape)
    logits = logits.expand(shape)
    log_e = torch.log(exponential(shape, dtype=logits.dtype, device=logits.device, generator=generator))
    lse = torch.logsumexp(logits, -1, keepdim=True)
    at = index.expand(shape[:-1]).unsqueeze(-1)
    log_e_top = log_e.gather(-1, at)
    top = lse - log_e_top  # the maximum, [*S, 1]
    others = -torch.logaddexp(log_e_top - lse, log_e - logits)
    is_top = torch.zeros(shape, dtype=torch.bool, device=logits.device).scatter_(-1, at, True)
    z = torch.where(is_top, top.expand(shape), others)
    return z - logits


def conditional_logistic(
    logits: Tensor, b: Tensor, *, perturbed: bool = False, generator: torch.Generator | None = None
) -> Tensor:
    r"""Logistic noise conditioned on the bit it produces: :math:`L \mid 1[\ell + L > 0] = b`.

    With :math:`L = \operatorname{logit} U` and :math:`p = \sigma(\ell)`, the bit is 1 exactly when
    :math:`U > 1 - p`, so U given b is uniform on (1 − p, 1) or (0, 1 − p): :math:`1 - U = pV` or
    :math:`U = (1 - p)V` with V ∼ U(0, 1). Both cases are one formula in the sign s = 2b − 1 of the
    bit: with :math:`a = \mathrm{ls}(s\ell)` and :math:`c = \mathrm{ls}(-s\ell)` (``ls`` =
    log-sigmoid; the log-probabilities of the drawn bit and of the other one),

    .. math::
        t = \operatorname{logaddexp}\bigl(c,\; a + \log(1 - V)\bigr) - \log V, \qquad
        L = s\,(t - a), \qquad \ell + L = s\,(t - c),

    where :math:`t = \log\bigl(1 - e^{a} V\bigr) - \log V`, with :math:`1 - e^{a}V = e^{c} + e^{a}(1 - V)`
    taken in log space, so it is finite for every finite ℓ and V in the open interval. One
    log-add-exp per element, and no selection between the two cases.

    Args:
        logits: ``[*S]`` (or broadcastable) logits of the Bernoulli.
        b: ``[*S]`` bits (0/1, float or bool) to condition on.
        perturbed: return the perturbed logits :math:`\tilde z = \ell + L` (what REBAR evaluates
            its relaxation at), computed directly rather than as ``logits + L``.
        generator: optional ``torch.Generator`` for the noise.

    Returns:
        ``[*S]`` noise L with ``1[logits + L > 0] == b`` (or ``logits + L`` with ``perturbed=True``),
        differentiable in ``logits``.
    """
    shape = broadcast_shapes(b.shape, logits.shape)
    v = uniform(shape, dtype=logits.dtype, device=logits.device, generator=generator)
    log_v, log_1mv = torch.log(v), torch.log1p(-v)
    sign = 2 * b.to(logits.dtype) - 1
    signed = sign * logits
    a, c = logsigmoid(signed), logsigmoid(-signed)  # log P(bit = b), log P(bit ≠ b)
    t = torch.logaddexp(c, a + log_1mv) - log_v
    return sign * (t - c) if perturbed else sign * (t - a)


def concrete_log_prob(logits: Tensor, log_value: Tensor, temperature: float) -> Tensor:
    r"""Log-density of a Concrete (relaxed one-hot) point y on the simplex, from log y.

    .. math::
        \log p(y) = \log (K-1)! + (K-1)\log\tau + \sum_k \bigl(\ell_k - (\tau + 1)\log y_k\bigr)
                    - K \operatorname{logsumexp}_k(\ell_k - \tau \log y_k)

    (Maddison et al. 2017, eq. 8, with respect to Lebesgue measure on the first K − 1 coordinates,
    as torch's ``RelaxedOneHotCategorical.log_prob``). Computed from ``log_value = log_softmax(...)``
    it is finite even where y rounds to 0.

    Args:
        logits: ``[*S, K]`` (broadcastable) logits of the categorical.
        log_value: ``[*S, K]`` log y, e.g. ``log_softmax((logits + G) / temperature, -1)``.
        temperature: τ > 0.

    Returns:
        ``[*S]`` log-densities.
    """
    k = log_value.shape[-1]
    scores = logits - temperature * log_value
    const = math.lgamma(k) + (k - 1) * math.log(temperature)
    return const + (scores - log_value).sum(-1) - k * torch.logsumexp(scores, -1)


def binary_concrete_log_prob(logits: Tensor, logit_value: Tensor, temperature: float) -> Tensor:
    r"""Log-density of a binary Concrete point y = σ(x) on (0, 1), from its logit x.

    With x = (ℓ + L)/τ and L standard logistic, x is logistic with location ℓ/τ and scale 1/τ, so

    .. math::
        \log p(y) = \log\tau + \ell - \tau x - 2\operatorname{softplus}(\ell - \tau x)
                    - \mathrm{ls}(x) - \mathrm{ls}(-x)

    (the last two terms are the log-Jacobian of y = σ(x); equal to torch's
    ``RelaxedBernoulli.log_prob(y)`` wherever that is finite, and finite where y rounds to 0 or 1).

    Args:
        logits: ``[*S]`` (broadcastable) logits of the Bernoulli.
        logit_value: ``[*S]`` x, the logit of the relaxed sample.
        temperature: τ > 0.

    Returns:
        ``[*S]`` log-densities.
    """
    diff = logits - temperature * logit_value
    log_logistic = math.log(temperature) + diff - 2 * torch.nn.functional.softplus(diff)
    return log_logistic - logsigmoid(logit_value) - logsigmoid(-logit_value)
