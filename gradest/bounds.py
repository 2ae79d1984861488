r"""``iwae_bound`` and the estimators of its gradient: multi-sample (importance-weighted, IWAE) bounds.

The objective is not an expectation of a per-sample cost, so these rules do not follow the
``Estimator`` contract of ``base.py``. With :math:`w_i = p_\theta(x, z_i) / q_\phi(z_i)` and
:math:`z_1, \dots, z_K` drawn independently from q,

.. math::
    \mathcal{L}_K(\theta, \phi) = \mathbb{E}_{z_{1:K} \sim q_\phi}
    \Bigl[\log \frac{1}{K} \sum_{i=1}^{K} w_i\Bigr] \;\le\; \log p_\theta(x)

couples its K samples inside the logarithm: the "cost" of one sample depends on all the others.
``gradest.iwae_bound(log_joint, dist, estimator, n=K)`` is the one entry point; it makes the calls an
expectation makes (``check``, ``draw``), then the rule's ``surrogate`` with the values of ``log_joint``
at the drawn points in place of costs. Why these rules refuse ``expectation`` and
``Graph``: both combine per-sample costs linearly (``reduce(cost·weight + correction)``), and a
graph credits each cost to the nodes it depends on; the bound is a log-mean-exp over the samples, so
neither the value nor the learning signals (VIMCO's leave-one-out bounds, DReG's squared weights) can
be written as a per-sample cost. The rules declare ``entry_point``, which both name in their error.

Rules (:class:`MultisampleEstimator` subclasses):

- :class:`IWAE`: the plain gradient of the bound: reparameterised when ``dist.has_rsample``, else the
  score function with no baseline.
- :class:`VIMCO`: score function with per-sample learning signals and leave-one-out baselines
  (n ≥ 2; any family, meant for discrete ones).
- :class:`DReG`: doubly-reparameterised gradient for reparameterisable q; with n = 1 it is
  sticking-the-landing.

References:
    Burda et al. (2016). Importance Weighted Autoencoders. ICLR. arXiv:1509.00519.
    Mnih & Rezende (2016). Variational Inference for Monte Carlo Objectives. ICML. arXiv:1602.06725.
    Tucker et al. (2019). Doubly Reparameterized Gradient Estimators for Monte Carlo Objectives. ICLR.
    arXiv:1810.04152.
    Roeder et al. (2017). Sticking the Landing: Simple, Lower-Variance Gradient Estimators for
    Variational Inference. NeurIPS. arXiv:1703.09194.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.distributions import Distribution
from torch.distributions.transforms import Transform

from gradest._validation import check_distribution, check_finite, check_n, describe, is_validation_enabled
from gradest.estimators._families import check_parameters, sample_with_log_prob
from gradest.estimators.base import Draw, Estimator
from gradest.surrogate import magic_box, stop_gradient


@dataclass(frozen=True, eq=False)
class BoundDraw(Draw):
    """A multi-sample rule's record: the n samples (``points``, all values), ``log_prob`` = log q(z_i)
    ``[n, *B]`` *with the gradient the rule needs inside the weights*, DiCE's box of each log q
    (``box``, or None) and of their sum (``joint_box``, or None)."""

    log_prob: Tensor
    box: Tensor | None = None
    joint_box: Tensor | None = None

__all__ = ["iwae_bound", "MultisampleEstimator", "IWAE", "VIMCO", "DReG", "BoundDraw"]


class MultisampleEstimator(nn.Module):
    r"""Base class of estimators of the gradient of the multi-sample bound :math:`\mathcal{L}_K`.

    - ``check(dist, n)``: raise the documented errors.
    - ``draw(dist, n)``: a :class:`~gradest.Draw` with the points ``value`` ``[n, *B, *E]`` and, in
      ``log_prob``, ``log q(z_i)`` ``[n, *B]`` *with the gradient this rule needs inside the weights*
      (full for IWAE and VIMCO, with q's parameters stopped for DReG).
    - ``surrogate(draw, log_joint)``: from ``log p(x, z_i)`` ``[n, *B]``, a ``[*B]`` tensor whose value
      is the Monte Carlo bound :math:`\log\frac1n\sum_i w_i` and whose gradient is the estimator.

    Use them through :func:`gradest.iwae_bound`, not ``expectation`` or ``Graph`` (see the module
    docstring for why).
    """

    unbiased: ClassVar[bool] = True
    """Unbiased for the gradient of the bound :math:`\\mathcal{L}_K` (not of log p(x))."""

    entry_point: ClassVar[str] = "gradest.iwae_bound(log_joint, dist, estimator, n=n)"
    """The function to use these rules through; ``expectation`` and ``Graph.sample`` name it in their error."""

    def __init__(self) -> None:
        super().__init__()

    def check(self, dist: Distribution, n: int) -> None:
        """Raise ``NotImplementedError``/``ValueError`` if this rule cannot handle ``dist`` with ``n``."""

    def draw(self, dist: Distribution, n: int) -> BoundDraw:
        raise NotImplementedError(f"{type(self).__name__} does not implement draw()")

    def surrogate(self, draw: BoundDraw, log_joint: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not implement surrogate()")


def _log_weights(draw: BoundDraw, log_joint: Tensor) -> Tensor:
    """``log w_i = log p(x, z_i) − log q(z_i)`` ``[n, *B]``."""
    return log_joint - draw.log_prob


def _log_mean_exp(log_weights: Tensor) -> Tensor:
    """``log (1/n) Σ_i exp(log_weights[i])`` over dim 0, computed stably."""
    return torch.logsumexp(log_weights, 0) - math.log(log_weights.shape[0])


class IWAE(MultisampleEstimator):
    r"""The plain gradient of the importance-weighted bound: pathwise if q has ``rsample``, else score function.

    .. math::
        \hat{\mathcal{L}} = \log \frac1n \sum_{i=1}^n w_i, \quad
        \nabla \hat{\mathcal{L}} = \sum_{i=1}^n \tilde w_i\, \nabla \log w_i
        \;\Bigl[+\; \hat{\mathcal{L}} \sum_{i=1}^n \nabla_\phi \log q_\phi(z_i)\Bigr],
        \qquad \tilde w_i = \frac{w_i}{\sum_j w_j}

    With ``rsample`` the samples are :math:`z_i = g_\phi(\epsilon_i)` and :math:`\nabla \log w_i` is the
    total derivative through :math:`z_i` (Burda et al.); the bracketed score term is absent. Without
    it the bracketed term is added (through DiCE's magic box on :math:`\sum_i \log q(z_i)`), with no
    baseline: prefer :class:`VIMCO` for discrete q (n ≥ 2).

    Requires: ``dist.log_prob`` differentiable in φ; ``log_joint`` differentiable in z when q has
    ``rsample``.
    Bias: none for the gradient of the bound :math:`\mathcal{L}_n`. Note: the variance of the
    reparameterised gradient for q's parameters *grows* relative to its mean as n grows (Rainforth et
    al. 2018); :class:`DReG` removes that.

    Example:
        >>> import torch, gradest
        >>> _ = torch.manual_seed(0)
        >>> loc = torch.zeros(3, requires_grad=True)
        >>> q = torch.distributions.Normal(loc, 1.0)
        >>> log_joint = lambda z: torch.distributions.Normal(1.0, 1.0).log_prob(z)
        >>> bound = gradest.iwae_bound(log_joint, q, gradest.IWAE(), n=8)
        >>> bound.shape
        torch.Size([3])

    References:
        Burda et al. (2016). Importance Weighted Autoencoders. ICLR. arXiv:1509.00519.
        Rainforth et al. (2018). Tighter Variational Bounds are Not Necessarily Better. ICML.
        arXiv:1802.04537.
        Foerster et al. (2018). DiCE: The Infinitely Differentiable Monte Carlo Estimator. ICML.
        arXiv:1802.05098.
    """

    def draw(self, dist: Distribution, n: int) -> BoundDraw:
        if dist.has_rsample:
            z = dist.rsample((n,))
            return BoundDraw(z, n, dist, dist.log_prob(z))
        z, log_q = sample_with_log_prob(dist, n)
        return BoundDraw(z, n, dist, log_q, joint_box=magic_box(log_q.sum(0)))

    def surrogate(self, draw: BoundDraw, log_joint: Tensor) -> Tensor:
        bound = _log_mean_exp(_log_weights(draw, log_joint))
        return bound if draw.joint_box is None else bound * draw.joint_box


class VIMCO(MultisampleEstimator):
    r"""Score-function gradient of the multi-sample bound with leave-one-out baselines (VIMCO).

    .. math::
        \nabla \mathcal{L}_n \approx \sum_{j=1}^n \bigl(\hat{\mathcal{L}} - \hat{\mathcal{L}}_{-j}\bigr)
        \nabla_\phi \log q_\phi(z_j) + \sum_{j=1}^n \tilde w_j \nabla \log w_j,
        \qquad
        \hat{\mathcal{L}}_{-j} = \log \frac1n \Bigl(\sum_{i\ne j} w_i + \hat w_{-j}\Bigr),\;
        \hat w_{-j} = \exp\Bigl(\frac{1}{n-1}\sum_{i\ne j}\log w_i\Bigr)

    Sample j's baseline replaces its own weight by the geometric mean of the others, so it does not
    depend on :math:`z_j` and the estimator stays unbiased, while each sample gets its own learning
    signal: how much it raised the bound over a typical replacement. The surrogate is
    :math:`\hat{\mathcal{L}}\,\boxdot(\sum_i \log q(z_i)) + \sum_j (1 - \boxdot(\log q(z_j)))\,
    \bot\hat{\mathcal{L}}_{-j}`, so its value is the Monte Carlo bound.

    Requires: n ≥ 2; ``dist.log_prob`` differentiable in φ. Works for every family; it is meant for
    discrete q (for reparameterisable q, :class:`DReG` has far lower variance). Costs O(n²) per batch
    element for the n leave-one-out bounds.
    Bias: none for the gradient of the bound :math:`\mathcal{L}_n`.

    Note:
        First derivatives only: the baselines are not "loaded" for higher derivatives.

    Example:
        >>> import torch, gradest
        >>> _ = torch.manual_seed(0)
        >>> logits = torch.zeros(4, requires_grad=True)
        >>> table = torch.tensor([0.0, -1.0, -2.0, -3.0])
        >>> q = torch.distributions.Categorical(logits=logits)
        >>> bound = gradest.iwae_bound(lambda z: table[z], q, gradest.VIMCO(), n=5)
        >>> bound.backward(); logits.grad.shape
        torch.Size([4])

    References:
        Mnih & Rezende (2016). Variational Inference for Monte Carlo Objectives. ICML. arXiv:1602.06725.
    """

    def check(self, dist: Distribution, n: int) -> None:
        if n < 2:
            raise ValueError(
                f"VIMCO: n={n} leaves no other sample to form the leave-one-out baseline; use n >= 2 "
                "(5 to 50 is typical), or IWAE() for a single sample."
            )

    def draw(self, dist: Distribution, n: int) -> BoundDraw:
        z, log_q = sample_with_log_prob(dist, n)
        return BoundDraw(z, n, dist, log_q, magic_box(log_q), magic_box(log_q.sum(0)))

    def surrogate(self, draw: BoundDraw, log_joint: Tensor) -> Tensor:
        assert draw.box is not None and draw.joint_box is not None
        log_w = _log_weights(draw, log_joint)
        bound = _log_mean_exp(log_w)
        baselines = leave_one_out_bounds(stop_gradient(log_w))
        return bound * draw.joint_box + ((1 - draw.box) * baselines).sum(0)


def leave_one_out_bounds(log_weights: Tensor) -> Tensor:
    r"""VIMCO's baselines :math:`\hat{\mathcal{L}}_{-j}`, ``[n, *B]`` from ``log_weights`` ``[n, *B]``.

    Row j is the bound with :math:`\log w_j` replaced by the mean of the other n − 1 log-weights (the
    log of their geometric mean), computed by one log-sum-exp over an ``[n, n, *B]`` table, which is
    stable however unequal the weights are.
    """
    n = log_weights.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=log_weights.device)
    eye = eye.reshape((n, n) + (1,) * (log_weights.dim() - 1))
    rows = log_weights.unsqueeze(0).expand(n, *log_weights.shape)  # [j, i, *B]
    # the sum of the others, not the total minus log w_j: a log-weight of -inf (an impossible sample)
    # would make that -inf - (-inf)
    others = rows.masked_fill(eye, 0.0).sum(1) / (n - 1)  # [n, *B]
    table = torch.where(eye, others.unsqueeze(1), rows)  # [j, i, *B]
    return torch.logsumexp(table, 1) - math.log(n)


class DReG(MultisampleEstimator):
    r"""Doubly-reparameterised gradient of the multi-sample bound; sticking-the-landing when n = 1.

    .. math::
        \nabla_\phi \mathcal{L}_n \approx \sum_{i=1}^n \tilde w_i^{\,2}\,
        \frac{\partial \log w_i}{\partial z_i}\frac{\partial z_i}{\partial \phi},
        \qquad
        \nabla_\theta \mathcal{L}_n \approx \sum_{i=1}^n \tilde w_i\, \nabla_\theta \log p_\theta(x, z_i)

    with :math:`z_i = g_\phi(\epsilon_i)` and :math:`\log w_i = \log p_\theta(x, z_i) - \log
    q_{\bot\phi}(z_i)` (q's parameters stopped, so φ enters only through the samples). The score term
    of the plain reparameterised gradient, whose variance grows relative to its mean with n, is
    replaced by its reparameterised equivalent; p's parameters θ get the ordinary IWAE gradient.

    Implementation: the weights are built from q with its parameter tensors stopped, and the
    gradient that reaches the samples z (through ``log_joint`` and ``log q``) is multiplied by
    :math:`\tilde w_i` with a tensor hook, turning the IWAE weights :math:`\tilde w_i` into
    :math:`\tilde w_i^2` on the path to φ only; log_joint is evaluated once. The surrogate's value is
    the Monte Carlo bound.

    With n = 1 the weights are 1 and this is sticking-the-landing (Roeder et al. 2017) for the ELBO:
    ``gradest.iwae_bound(log_joint, q, gradest.DReG(), n=1)``. When q is the exact posterior, the gradient for φ is
    exactly zero for every sample.

    Requires: ``dist.has_rsample`` (explicit or implicit reparameterisation); ``log_joint`` and
    ``dist.log_prob`` differentiable in z. Parameters of p and q are told apart by path: whatever
    reaches the loss only through the samples z gets the doubly-reparameterised weights.
    Bias: none, for both φ and θ, for the gradient of the bound :math:`\mathcal{L}_n`.

    Note:
        First derivatives only (the hook rescales first derivatives). Do not reuse the samples z
        outside ``log_joint``: the hook rescales every gradient that reaches them.

    Example:
        >>> import torch, gradest
        >>> _ = torch.manual_seed(0)
        >>> loc = torch.zeros(3, requires_grad=True)
        >>> q = torch.distributions.Normal(loc, 1.0)
        >>> log_joint = lambda z: torch.distributions.Normal(1.0, 1.0).log_prob(z)
        >>> gradest.iwae_bound(log_joint, q, gradest.DReG(), n=16).sum().backward()
        >>> loc.grad.shape
        torch.Size([3])

    References:
        Tucker et al. (2019). Doubly Reparameterized Gradient Estimators for Monte Carlo Objectives.
        ICLR. arXiv:1810.04152.
        Roeder et al. (2017). Sticking the Landing: Simple, Lower-Variance Gradient Estimators for
        Variational Inference. NeurIPS. arXiv:1703.09194.
    """

    def check(self, dist: Distribution, n: int) -> None:
        if not dist.has_rsample:
            raise NotImplementedError(
                f"DReG: dist={describe(dist)} has no rsample, so there is no path from φ to the samples; "
                "use VIMCO() (n >= 2) or IWAE() (score function) for discrete q."
            )

    def draw(self, dist: Distribution, n: int) -> BoundDraw:
        z = dist.rsample((n,))
        return BoundDraw(z, n, dist, with_stopped_parameters(dist).log_prob(z))

    def surrogate(self, draw: BoundDraw, log_joint: Tensor) -> Tensor:
        log_w = _log_weights(draw, log_joint)
        z = draw.points
        n = log_w.shape[0]
        if n > 1 and z.requires_grad:
            weights = torch.softmax(stop_gradient(log_w), 0)
            weights = weights.reshape(weights.shape + (1,) * (z.dim() - weights.dim()))
            z.register_hook(lambda grad: grad * weights)
        return _log_mean_exp(log_w)


def with_stopped_parameters(dist: Distribution) -> Distribution:
    """A shallow copy of ``dist`` whose tensors (parameters, cached derived values, those of wrapped
    distributions and transforms) have the same values and no gradient.

    Copying the instance, rather than rebuilding it from constructor arguments, works for every family
    whose state lives in tensors on the instance (including lazily cached ``probs``/``logits``, scale
    factorisations, and the transforms of a ``TransformedDistribution``).
    """
    stopped = _stopped(dist)
    assert isinstance(stopped, Distribution)
    return stopped


def _stopped(obj: object) -> object:
    new = copy.copy(obj)
    state = vars(new)
    for key, value in vars(obj).items():
        if isinstance(value, Tensor):
            state[key] = stop_gradient(value)
        elif isinstance(value, (Distribution, Transform)):
            state[key] = _stopped(value)
        elif isinstance(value, (list, tuple)) and any(isinstance(v, (Distribution, Transform)) for v in value):
            state[key] = type(value)(_stopped(v) if isinstance(v, (Distribution, Transform)) else v for v in value)
    return new


def default_bound_estimator(dist: Distribution, n: int) -> MultisampleEstimator:
    """The estimator ``iwae_bound`` uses when none is given.

    ``IWAE()`` (reparameterised) when the family has ``rsample``; else ``VIMCO()`` when ``n >= 2``;
    else ``IWAE()`` (score function; with one sample the bound is the ELBO).
    """
    if not dist.has_rsample and n >= 2:
        return VIMCO()
    return IWAE()


def iwae_bound(
    log_joint: Callable[[Tensor], Tensor],
    dist: Distribution,
    estimator: MultisampleEstimator | None = None,
    n: int = 1,
) -> Tensor:
    r"""The surrogate of the importance-weighted bound :math:`\mathcal{L}_n` on :math:`\log p_\theta(x)`.

    .. math::
        \mathcal{L}_n(\theta, \phi) = \mathbb{E}_{z_{1:n} \sim q_\phi}
        \Bigl[\log \frac1n \sum_{i=1}^n \frac{p_\theta(x, z_i)}{q_\phi(z_i)}\Bigr]
        \;\le\; \log p_\theta(x)

    Its value is the Monte Carlo bound :math:`\log\frac1n\sum_i w_i` at n fresh samples of ``dist``
    (the IWAE bound; with n = 1, the ELBO's one-sample estimate), and its autograd gradient is the
    estimator's: with respect to q's parameters φ (those of ``dist``, and whatever produced them,
    e.g. an encoder) and to p's parameters θ (whatever ``log_joint`` closes over). Maximise it:
    ``(-iwae_bound(...)).mean().backward()``.

    This is a separate entry point from :func:`gradest.expectation` because the bound is not an
    expectation of a per-sample cost: its n samples meet inside one logarithm.

    Args:
        log_joint: maps samples ``[n, *B, *E]`` to :math:`\log p_\theta(x, z_i)` ``[n, *B]`` (the
            prior plus the likelihood of the batch element's data). It may close over parameters θ.
        dist: the proposal :math:`q_\phi(z)` with batch shape B (one bound per batch element, e.g. per
            data point) and event shape E; put a latent vector's dims in the event shape
            (``Independent(..., 1)``) so ``log_prob`` sums over them.
        estimator: a :class:`~gradest.bounds.MultisampleEstimator`: ``IWAE()``
            (plain: reparameterised with ``rsample``, else score function), ``VIMCO()`` (discrete q,
            n ≥ 2) or ``DReG()`` (reparameterisable q; n = 1 gives sticking-the-landing). By default
            ``IWAE()`` when ``dist.has_rsample``, else ``VIMCO()`` for n ≥ 2, else ``IWAE()``.
        n: samples per bound, K in the papers.

    Returns:
        ``[*B]`` surrogate of the bound, one per batch element.

    Raises:
        TypeError: log_joint is not callable or returns a non-tensor; dist is not a Distribution;
            estimator is an ``expectation`` estimator or not an estimator at all.
        ValueError: n < 1 (n < 2 for VIMCO); log_joint's output has the wrong shape, or holds NaN
            (while validation is on).
        NotImplementedError: the estimator does not support the family (DReG without ``rsample``).

    Example:
        >>> import torch, gradest
        >>> _ = torch.manual_seed(0)
        >>> loc = torch.zeros(2, requires_grad=True)
        >>> q = torch.distributions.Normal(loc, 1.0)
        >>> log_joint = lambda z: torch.distributions.Normal(0.5, 1.0).log_prob(z)
        >>> bound = gradest.iwae_bound(log_joint, q, n=10)
        >>> (-bound.sum()).backward(); loc.grad.shape
        torch.Size([2])

    References:
        Burda et al. (2016). Importance Weighted Autoencoders. ICLR. arXiv:1509.00519.
        Mnih & Rezende (2016). Variational Inference for Monte Carlo Objectives. ICML. arXiv:1602.06725.
        Tucker et al. (2019). Doubly Reparameterized Gradient Estimators for Monte Carlo Objectives.
        ICLR. arXiv:1810.04152.
    """
    where = "iwae_bound"
    if not callable(log_joint):
        raise TypeError(
            f"{where}: log_joint={log_joint!r} is not callable; pass a function mapping samples "
            "[n, *B, *E] to log p(x, z) [n, *B]."
        )
    dist = check_distribution(where, dist)
    n = check_n(where, n)
    if estimator is None:
        estimator = default_bound_estimator(dist, n)
    elif isinstance(estimator, Estimator):
        raise TypeError(
            f"{where}: estimator={type(estimator).__name__}() estimates the gradient of an expectation "
            "E[f], not of a multi-sample bound; use IWAE() (plain; reparameterised when dist has "
            "rsample), DReG() (reparameterisable q) or VIMCO() (discrete q, n >= 2), or gradest.expectation for E[f]."
        )
    elif not isinstance(estimator, MultisampleEstimator):
        raise TypeError(
            f"{where}: estimator={estimator!r} is not a multi-sample estimator; pass IWAE(), DReG() or "
            "VIMCO()."
        )
    check_parameters(where, dist)
    estimator.check(dist, n)
    draw = estimator.draw(dist, n)
    value = log_joint(draw.points)
    expected = draw.points.shape[: 1 + len(dist.batch_shape)]
    if not isinstance(value, Tensor):
        raise TypeError(
            f"{where}: log_joint returned {type(value).__name__}, expected a tensor of shape {tuple(expected)}."
        )
    if value.shape != expected:
        raise ValueError(
            f"{where}: log_joint returned shape {tuple(value.shape)}, expected (n, *dist.batch_shape) = "
            f"{tuple(expected)}; sum log p(x, z) over the event (latent and data) dimensions inside "
            "log_joint and keep the sample dimension."
        )
    if not value.is_floating_point():
        raise TypeError(f"{where}: log_joint returned dtype={value.dtype}; log-densities must be floating point.")
    # -inf is a legal log-density (a sample of zero joint probability) as long as one sample per batch
    # element has a finite weight; NaN, +inf and a batch element with every weight zero are not.
    check_finite(where, "log_joint's output", value.masked_fill(value == -torch.inf, 0.0),
                 "check log_joint for 0/0, inf - inf or log of an overflow at the sampled points.")
    if is_validation_enabled() and bool((value == -torch.inf).all(0).any()):
        dead = int((value == -torch.inf).all(0).sum())
        raise ValueError(
            f"{where}: log_joint's output is -inf for all n={value.shape[0]} samples of {dead} batch "
            "element(s), so the bound is -inf and its gradient undefined; raise n, or make q cover the "
            "support of p(x, z) (a proposal that puts its mass where p is zero)."
        )
    return estimator.surrogate(draw, value)
