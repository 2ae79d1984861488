r"""Discounted returns and λ-returns on time-major ``[T, *B]`` tensors, exact at episode ends.

Episode ends follow one convention everywhere in ``gradest.rl``: ``terminated[t]`` means the episode
ended after step t and nothing is bootstrapped past it; ``truncated[t]`` means it was cut (a time
limit), so step t bootstraps from ``next_values[t]``, the value of the final observation, and nothing
is carried into the next episode. The last step of the rollout is cut the same way: nothing is carried
past it, and it bootstraps from ``next_values[T-1]`` unless it terminated.

Results are *targets*: they are computed without autograd history (see the Note in each function).
"""

from __future__ import annotations

import torch
from torch import Tensor

from gradest._validation import unit_interval
from gradest.rl._checks import check_args, explain, to_caller
from gradest.rl._scan import discounted_reverse_scan

__all__ = ["discounted_returns", "td_lambda"]


def discounted_returns(
    *,
    rewards: Tensor,
    terminated: Tensor,
    truncated: Tensor | None = None,
    gamma: float,
    next_values: Tensor | None = None,
    time_dim: int = 0,
) -> Tensor:
    r"""Discounted returns :math:`G_t`, reset at episode ends, optionally bootstrapped.

    .. math::
        G_t = r_t + \gamma\,\mathbb{1}[\text{cut}_t]\,V(s'_t) + \gamma\,(1 - \mathrm{done}_t)\,G_{t+1},
        \qquad G_T = 0,

    with :math:`\mathrm{done} = \mathrm{terminated} \lor \mathrm{truncated}`, :math:`V(s'_t)` =
    ``next_values[t]`` and :math:`\text{cut}_t` true where step t was truncated, or is the last step
    of the rollout and did not terminate. Without ``next_values`` nothing is bootstrapped: a
    truncated episode's return counts only the rewards it saw.

    Requires: rewards, next_values ``[T, *B]`` floating tensors of one shape and dtype; terminated,
    truncated bool tensors of that shape, never both True at one step.
    Bias: none for terminated episodes; a bootstrapped return is as biased as ``next_values``, and one
    cut without ``next_values`` is biased low in magnitude (the rewards after the cut are missing).

    Args:
        rewards: ``[T, *B]`` rewards :math:`r_t`.
        terminated: ``[T, *B]`` bool, the episode ended after step t (no bootstrap).
        truncated: ``[T, *B]`` bool, the episode was cut after step t (bootstrap), or None.
        gamma: discount γ in [0, 1].
        next_values: ``[T, *B]`` value of the observation after step t, or None for no bootstrap.
        time_dim: the dim that is time in every tensor: 0 for time-major ``[T, *B]`` (the default),
            1 for batch-major ``[B, T, ...]`` (TorchRL's and Stable-Baselines3's layout). The inputs are
            read through ``movedim`` views (no copy) and the results come back in the same layout. Not
            an int naming a dim of the tensors: a TypeError or ValueError.

    Returns:
        ``[T, *B]`` returns, without autograd history.

    Raises:
        TypeError: an argument is not a tensor, rewards is not floating, a flag is not bool.
        ValueError: shapes or devices differ, gamma is outside [0, 1], or (while validation is on) a
            step is both terminated and truncated or a value is NaN or ±inf.

    Note:
        The result is a regression target (for a critic, or the REINFORCE weight), so it is computed
        under ``torch.no_grad()``: no gradient flows into rewards or next_values through it.

    Example:
        >>> import torch
        >>> from gradest.rl import discounted_returns
        >>> rewards = torch.ones(4, 1)
        >>> terminated = torch.tensor([[False], [True], [False], [False]])
        >>> discounted_returns(rewards=rewards, terminated=terminated, gamma=0.5).flatten().tolist()
        [1.5, 1.0, 1.5, 1.0]

    References:
        Sutton & Barto (2018). Reinforcement Learning: An Introduction (2nd ed.), §3.3. MIT Press.
        Pardo et al. (2018). Time Limits in Reinforcement Learning. ICML. arXiv:1712.00378.
    """
    where = "discounted_returns"
    tensors, flags = (rewards, next_values), (terminated, truncated)
    (rewards, next_values), (terminated, truncated) = check_args(where, _ARGS, tensors, flags, time_dim)
    gamma = unit_interval(where, "gamma", gamma)
    try:
        with torch.no_grad():
            done = terminated if truncated is None else terminated | truncated
            a = rewards
            if next_values is not None and rewards.shape[0] > 0:
                # Bootstrap where the episode was cut: at truncations, and at the last step unless it terminated.
                cut = done.clone()
                cut[-1] = True
                cut &= ~terminated
                a = torch.addcmul(rewards, next_values, cut.to(rewards.dtype), value=gamma)
            return to_caller(discounted_reverse_scan(a, gamma, done), time_dim)
    except (RuntimeError, TypeError):
        explain(where, _ARGS, tensors, flags)  # a dtype or device torch rejected first: name the argument
        raise


_ARGS = ("rewards", "next_values")  # the floating arguments of both functions, in the order checked


def td_lambda(
    *,
    rewards: Tensor,
    next_values: Tensor,
    terminated: Tensor,
    truncated: Tensor | None = None,
    gamma: float,
    lambda_: float,
    time_dim: int = 0,
) -> Tensor:
    r"""λ-returns :math:`G^\lambda_t`: TD(λ) targets, exact at terminations and truncations.

    .. math::
        G^\lambda_t = r_t + \gamma\,(1 - \mathrm{terminated}_t)\,V(s'_t)
            + \gamma\lambda\,(1 - \mathrm{done}_t)\,\bigl(G^\lambda_{t+1} - V(s'_t)\bigr),

    with :math:`V(s'_t)` = ``next_values[t]`` and nothing carried past the last step (it bootstraps
    fully from ``next_values[T-1]``). Inside an episode this is the familiar
    :math:`r_t + \gamma\bigl((1-\lambda) V(s_{t+1}) + \lambda G^\lambda_{t+1}\bigr)`; λ = 0 gives the
    one-step target :math:`r_t + \gamma V(s'_t)`, λ = 1 the bootstrapped discounted return. When
    ``next_values[t] == values[t+1]`` inside episodes, it equals ``gae(...) + values``.

    Requires: rewards, next_values ``[T, *B]`` floating tensors of one shape and dtype; terminated,
    truncated bool tensors of that shape, never both True at one step.
    Bias: that of the bootstrapped values, weighted by :math:`(1-\lambda)`; none at λ = 1 for
    terminated episodes.

    Args:
        rewards: ``[T, *B]`` rewards :math:`r_t`.
        next_values: ``[T, *B]`` value of the observation after step t (for a truncated step, of the
            final observation before the reset).
        terminated: ``[T, *B]`` bool, the episode ended after step t (no bootstrap).
        truncated: ``[T, *B]`` bool, the episode was cut after step t (bootstrap), or None.
        gamma: discount γ in [0, 1].
        lambda_: λ in [0, 1].
        time_dim: the dim that is time in every tensor: 0 for time-major ``[T, *B]`` (the default),
            1 for batch-major ``[B, T, ...]`` (TorchRL's and Stable-Baselines3's layout). The inputs are
            read through ``movedim`` views (no copy) and the results come back in the same layout. Not
            an int naming a dim of the tensors: a TypeError or ValueError.

    Returns:
        ``[T, *B]`` λ-returns, without autograd history.

    Raises:
        TypeError: an argument is not a tensor, a value tensor is not floating, a flag is not bool.
        ValueError: shapes or devices differ, gamma or lambda_ is outside [0, 1], or (while validation
            is on) a step is both terminated and truncated or a value is NaN or ±inf.

    Note:
        The result is a regression target, so it is computed under ``torch.no_grad()``.

    Example:
        >>> import torch
        >>> from gradest.rl import td_lambda
        >>> rewards = torch.tensor([[1.0], [1.0], [1.0]])
        >>> next_values = torch.tensor([[2.0], [2.0], [4.0]])
        >>> truncated = torch.tensor([[False], [True], [False]])
        >>> terminated = torch.zeros(3, 1, dtype=torch.bool)
        >>> td_lambda(rewards=rewards, next_values=next_values, terminated=terminated,
        ...           truncated=truncated, gamma=0.5, lambda_=0.5).flatten().tolist()
        [2.0, 2.0, 3.0]

    References:
        Sutton & Barto (2018). Reinforcement Learning: An Introduction (2nd ed.), §12.1. MIT Press.
        Schulman et al. (2016). High-Dimensional Continuous Control Using Generalized Advantage
        Estimation. ICLR. arXiv:1506.02438.
    """
    where = "td_lambda"
    tensors, flags = (rewards, next_values), (terminated, truncated)
    (rewards, next_values), (terminated, truncated) = check_args(where, _ARGS, tensors, flags, time_dim)
    gamma = unit_interval(where, "gamma", gamma)
    lambda_ = unit_interval(where, "lambda_", lambda_)
    try:
        with torch.no_grad():
            if rewards.shape[0] == 0:
                return to_caller(torch.empty_like(rewards), time_dim)
            done = terminated if truncated is None else terminated | truncated
            # a_t = r_t + γ V'_t [(1 - terminated_t) - λ (1 - done_t)], with the last step counted as done.
            carried = ~done
            carried[-1] = False
            weight = (~terminated).to(rewards.dtype).sub_(carried.to(rewards.dtype), alpha=lambda_)
            a = torch.addcmul(rewards, next_values, weight, value=gamma)
            return to_caller(discounted_reverse_scan(a, gamma * lambda_, done), time_dim)
    except (RuntimeError, TypeError):
        explain(where, _ARGS, tensors, flags)
        raise
