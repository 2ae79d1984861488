r"""The policy-gradient surrogate loss, with PPO's clipped ratio as an option."""

from __future__ import annotations

import torch
from torch import Tensor

from gradest._validation import check_positive, check_tensor
from gradest.rl._checks import check_values
from gradest.surrogate import magic_box, stop_gradient

__all__ = ["policy_gradient_loss"]


def policy_gradient_loss(
    *,
    log_probs: Tensor,
    advantages: Tensor,
    old_log_probs: Tensor | None = None,
    clip: float | None = None,
) -> Tensor:
    r"""Per-step policy-gradient surrogate loss: its gradient is minus the score-function estimator.

    .. math::
        \ell_t = -\,r_t \hat A_t, \qquad r_t = \frac{\pi_\theta(a_t|s_t)}{\pi_{\text{old}}(a_t|s_t)},
        \qquad \nabla_\theta \ell_t\big|_{\pi_\theta = \pi_{\text{old}}}
        = -\hat A_t \nabla_\theta \log \pi_\theta(a_t|s_t),

    and with ``clip`` = ε, PPO's pessimistic bound
    :math:`\ell_t = -\min\bigl(r_t \hat A_t,\ \mathrm{clip}(r_t, 1-ε, 1+ε)\,\hat A_t\bigr)`.
    Without ``old_log_probs`` the ratio is DiCE's magic box of ``log_probs``: value 1 and gradient
    :math:`\nabla\log\pi`, so the loss's value is :math:`-\hat A_t` and its gradient REINFORCE's.

    Requires: ``log_probs`` differentiable in θ (log π of the actions taken); ``advantages`` of the
    same shape, built without the action's own influence on a baseline.
    Bias: none without ``clip`` (given unbiased advantages); PPO's clipping zeroes the gradient of
    steps whose ratio has left [1−ε, 1+ε] in the advantage's direction, a deliberate bias.

    Args:
        log_probs: floating tensor, log π_θ(a_t|s_t), any shape ``[*S]``.
        advantages: ``[*S]`` advantage estimates; detached here, so no gradient ever flows through
            them (a critic is trained by its own loss).
        old_log_probs: ``[*S]`` log-probabilities under the policy that collected the data, or None
            (on-policy: the ratio is 1 at the current parameters).
        clip: PPO's ε > 0 (0.1 to 0.3 is typical), or None for the plain surrogate.

    Returns:
        ``[*S]`` per-step losses; reduce them (``.mean()``) and call ``.backward()``.

    Raises:
        TypeError: an argument is not a floating tensor.
        ValueError: shapes differ, clip is not > 0, or a value is NaN or ±inf (while validation is on).

    Note:
        The ratio is :func:`gradest.surrogate.magic_box` of ``log_probs`` (value 1, gradient
        :math:`\nabla\log\pi`, correct under repeated differentiation), times the ratio to
        ``old_log_probs`` as a constant when they are given: the same value and derivatives as
        :math:`\exp(\log\pi_\theta - \bot\log\pi_{\text{old}})`.

    Example:
        >>> import torch
        >>> from gradest.rl import policy_gradient_loss
        >>> _ = torch.manual_seed(0)
        >>> logits = torch.zeros(3, requires_grad=True)
        >>> dist = torch.distributions.Categorical(logits=logits)
        >>> action = torch.tensor(2)
        >>> loss = policy_gradient_loss(log_probs=dist.log_prob(action), advantages=torch.tensor(1.0))
        >>> loss.backward(); [round(g, 4) for g in logits.grad.tolist()]
        [0.3333, 0.3333, -0.6667]

    References:
        Williams (1992). Simple Statistical Gradient-Following Algorithms for Connectionist
        Reinforcement Learning. Machine Learning 8.
        Schulman et al. (2017). Proximal Policy Optimization Algorithms. arXiv:1707.06347.
        Foerster et al. (2018). DiCE: The Infinitely Differentiable Monte Carlo Estimator. ICML.
        arXiv:1802.05098.
    """
    where = "policy_gradient_loss"
    log_probs = check_tensor(where, "log_probs", log_probs)
    advantages = check_tensor(where, "advantages", advantages)
    for name, other in (("advantages", advantages), ("old_log_probs", old_log_probs)):
        if other is None:
            continue
        other = check_tensor(where, name, other)
        if other.shape != log_probs.shape:
            raise ValueError(
                f"{where}: {name}.shape={tuple(other.shape)} does not match log_probs.shape="
                f"{tuple(log_probs.shape)}; pass one value per action taken."
            )
    if clip is not None:
        clip = check_positive(where, "clip", clip, "0.1 to 0.3 is typical")
    check_values(where, ("log_probs", "advantages", "old_log_probs"), (log_probs, advantages, old_log_probs))
    ratio = magic_box(log_probs)
    if old_log_probs is not None:
        ratio = ratio * stop_gradient(torch.exp(log_probs - old_log_probs))
    advantages = stop_gradient(advantages)
    surrogate = ratio * advantages
    if clip is not None:
        surrogate = torch.minimum(surrogate, ratio.clamp(1.0 - clip, 1.0 + clip) * advantages)
    return -surrogate
