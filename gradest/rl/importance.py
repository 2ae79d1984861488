r"""Importance weights for off-policy and offline data: per-step (optionally clipped) and per-decision.

``log_rhos`` = log π(a_t|s_t) − log μ(a_t|s_t), with π the policy being evaluated or learned and μ the
policy that collected the data; time-major ``[T, *B]``, with the episode-end convention of
:mod:`gradest.rl.returns` for the per-decision products.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gradest._validation import check_positive, check_tensor
from gradest.rl._checks import check_args, check_values, explain, to_caller
from gradest.rl._scan import discounted_reverse_scan

__all__ = ["importance_weights", "per_decision_importance_weights"]


def importance_weights(*, log_rhos: Tensor, clip: float | None = None) -> Tensor:
    r"""Per-step importance weights :math:`\rho_t = \pi(a_t|s_t)/\mu(a_t|s_t)`, optionally clipped.

    .. math::
        \rho_t = e^{\log\rho_t}, \qquad \text{or } \min\bigl(\bar\rho, e^{\log\rho_t}\bigr)
        \text{ with } \texttt{clip} = \bar\rho.

    Requires: μ(a_t|s_t) > 0 wherever π(a_t|s_t) > 0 (μ covers π). A log-ratio of -inf (π(a_t|s_t) = 0,
    e.g. a deterministic policy that never takes the logged action) is a weight of 0.
    Bias: none without ``clip``: :math:`\mathbb{E}_\mu[\rho f] = \mathbb{E}_\pi[f]`. Clipping
    (truncated importance sampling, as in Retrace and V-trace) bounds the variance and biases the
    estimate towards μ's expectation wherever :math:`\rho > \bar\rho`.

    Args:
        log_rhos: floating tensor of log-ratios, any shape.
        clip: the truncation level :math:`\bar\rho > 0`, or None.

    Returns:
        Tensor of weights, the shape of ``log_rhos``, without autograd history.

    Raises:
        TypeError: log_rhos is not a floating tensor.
        ValueError: clip is not > 0, or log_rhos holds NaN or +inf (while validation is on).

    Example:
        >>> import math, torch
        >>> from gradest.rl import importance_weights
        >>> log_rhos = torch.tensor([math.log(0.5), 0.0, math.log(3.0)])
        >>> [round(w, 4) for w in importance_weights(log_rhos=log_rhos, clip=1.0).tolist()]
        [0.5, 1.0, 1.0]

    References:
        Precup et al. (2000). Eligibility Traces for Off-Policy Policy Evaluation. ICML.
        Munos et al. (2016). Safe and Efficient Off-Policy Reinforcement Learning. NeurIPS.
        arXiv:1606.02647.
    """
    where = "importance_weights"
    log_rhos = check_tensor(where, "log_rhos", log_rhos)
    if clip is not None:
        clip = check_positive(where, "clip", clip, "1.0 is typical")
    check_values(where, ("log_rhos",), (log_rhos,))
    with torch.no_grad():
        weights = log_rhos.exp()
        return weights if clip is None else weights.clamp_(max=clip)


def per_decision_importance_weights(
    *,
    log_rhos: Tensor,
    terminated: Tensor,
    truncated: Tensor | None = None,
    clip: float | None = None,
    time_dim: int = 0,
) -> Tensor:
    r"""Per-decision importance weights: the product of the ratios since the episode began.

    .. math::
        w_t = \prod_{k = t_0}^{t} \rho_k, \qquad \rho_k = \min\bigl(\bar\rho, e^{\log\rho_k}\bigr)
        \text{ with } \texttt{clip} = \bar\rho, \text{ else } e^{\log\rho_k},

    with :math:`t_0` the first step of t's episode (the step after the last ``terminated`` or
    ``truncated`` before t, or 0). Weighting :math:`r_t` by :math:`w_t` gives Precup et al.'s
    per-decision estimator :math:`\sum_t \gamma^t w_t r_t` of π's return from μ's episodes. The
    products are formed in log space; like any product of ratios they can grow or vanish quickly. A
    log-ratio of -inf (π never takes the logged action) makes the weight 0 from that step to the
    episode's end.

    Requires: μ covers π; tensors ``[T, *B]`` of one shape; flags bool, never both True at one step.
    Bias: none without ``clip`` (for episodes that start at step 0 of the rollout); with ``clip``
    the per-step truncation of :func:`importance_weights`.

    Args:
        log_rhos: ``[T, *B]`` log-ratios.
        terminated: ``[T, *B]`` bool, the episode ended after step t.
        truncated: ``[T, *B]`` bool, the episode was cut after step t, or None.
        clip: per-step truncation level :math:`\bar\rho > 0`, or None.
        time_dim: the dim that is time in every tensor: 0 for time-major ``[T, *B]`` (the default),
            1 for batch-major ``[B, T, ...]`` (TorchRL's and Stable-Baselines3's layout). The inputs are
            read through ``movedim`` views (no copy) and the results come back in the same layout. Not
            an int naming a dim of the tensors: a TypeError or ValueError.

    Returns:
        ``[T, *B]`` weights, without autograd history.

    Raises:
        TypeError: an argument is not a tensor, log_rhos is not floating, a flag is not bool.
        ValueError: shapes or devices differ, clip is not > 0, or (while validation is on) a step is
            both terminated and truncated or log_rhos holds NaN or +inf.

    Example:
        >>> import math, torch
        >>> from gradest.rl import per_decision_importance_weights
        >>> log_rhos = torch.full((4, 1), math.log(2.0))
        >>> terminated = torch.tensor([[False], [True], [False], [False]])
        >>> per_decision_importance_weights(log_rhos=log_rhos, terminated=terminated).flatten().tolist()
        [2.0, 4.0, 2.0, 4.0]

    References:
        Precup et al. (2000). Eligibility Traces for Off-Policy Policy Evaluation. ICML.
    """
    where = "per_decision_importance_weights"
    tensors, flags = (log_rhos,), (terminated, truncated)
    (log_rhos,), (terminated, truncated) = check_args(where, ("log_rhos",), tensors, flags, time_dim)
    if clip is not None:
        clip = check_positive(where, "clip", clip, "1.0 is typical")
    try:
        with torch.no_grad():
            logs = log_rhos if clip is None else log_rhos.clamp(max=math.log(clip))
            done = terminated if truncated is None else terminated | truncated
            # A forward cumulative sum that restarts after every episode end, as a reverse scan in
            # reversed time: step t keeps the sum of step t-1 unless step t-1 ended an episode. Two
            # channels in one scan: the finite log-ratios, and the count of ratios that are 0 (log -inf,
            # kept apart so that no -inf enters a sum: the difference of two would be NaN).
            zero = torch.isneginf(logs)
            channels = torch.stack([logs.masked_fill(zero, 0.0), zero.to(logs.dtype)], -1).flip(0)
            restart = done.new_ones(done.shape)  # contiguous, as channels is, whatever the caller's layout
            restart[1:] = done[:-1]
            restart = restart.flip(0).unsqueeze(-1).expand(channels.shape)
            total = discounted_reverse_scan(channels, 1.0, restart).flip(0)
            return to_caller(total[..., 0].exp().masked_fill_(total[..., 1] > 0, 0.0), time_dim)
    except (RuntimeError, TypeError):
        explain(where, ("log_rhos",), tensors, flags)
        raise
