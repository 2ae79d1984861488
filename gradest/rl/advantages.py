r"""Advantages: GAE, V-trace and group advantages (leave-one-out, group-normalised).

Time-major ``[T, *B]`` tensors and the episode-end convention of :mod:`gradest.rl.returns`:
``terminated[t]`` stops bootstrapping after step t, ``truncated[t]`` bootstraps from
``next_values[t]`` (the value of the final observation) and carries nothing into the next episode,
and nothing is carried past the last step. Group advantages are not time-major: they compare ``n``
samples of the same prompt or state along dim 0 (samples lead, as everywhere in gradest).

Results are *targets*: computed without autograd history. Gradients flow through the log-probabilities
in :func:`gradest.rl.policy_gradient_loss`, never through an advantage.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gradest._distributed import all_reduce_flat, check_process_group, resolve
from gradest._validation import check_positive, check_tensor, unit_interval
from gradest.rl._checks import check_args, check_values, explain, to_caller
from gradest.rl._scan import discounted_reverse_scan, reverse_scan

__all__ = ["gae", "vtrace", "group_advantages"]


def gae(
    *,
    rewards: Tensor,
    values: Tensor,
    next_values: Tensor,
    terminated: Tensor,
    truncated: Tensor | None = None,
    gamma: float,
    lambda_: float,
    time_dim: int = 0,
) -> Tensor:
    r"""Generalised advantage estimates :math:`\hat A_t`, exact at terminations and truncations.

    .. math::
        \delta_t = r_t + \gamma\,(1 - \mathrm{terminated}_t)\,V(s'_t) - V(s_t), \qquad
        \hat A_t = \delta_t + \gamma\lambda\,(1 - \mathrm{done}_t)\,\hat A_{t+1}, \qquad \hat A_T = 0,

    with :math:`V(s_t)` = ``values[t]``, :math:`V(s'_t)` = ``next_values[t]`` (for a truncated step,
    the value of the final observation before the reset) and
    :math:`\mathrm{done} = \mathrm{terminated} \lor \mathrm{truncated}`. λ = 0 gives the one-step TD
    errors :math:`\delta_t`; λ = 1 gives the bootstrapped discounted return minus ``values``.

    Requires: rewards, values, next_values ``[T, *B]`` floating tensors of one shape and dtype;
    terminated, truncated bool tensors of that shape, never both True at one step.
    Bias: none at λ = 1 with exact values at truncations; for λ < 1, that of the critic, weighted
    towards the near future (the bias–variance trade-off of Schulman et al.).

    Args:
        rewards: ``[T, *B]`` rewards :math:`r_t`.
        values: ``[T, *B]`` critic values of the observations at step t.
        next_values: ``[T, *B]`` critic values of the observations after step t.
        terminated: ``[T, *B]`` bool, the episode ended after step t (no bootstrap).
        truncated: ``[T, *B]`` bool, the episode was cut after step t (bootstrap), or None.
        gamma: discount γ in [0, 1].
        lambda_: λ in [0, 1].
        time_dim: the dim that is time in every tensor: 0 for time-major ``[T, *B]`` (the default),
            1 for batch-major ``[B, T, ...]`` (TorchRL's and Stable-Baselines3's layout). The inputs are
            read through ``movedim`` views (no copy) and the results come back in the same layout. Not
            an int naming a dim of the tensors: a TypeError or ValueError.

    Returns:
        ``[T, *B]`` advantages, without autograd history; ``gae(...) + values`` are the λ-returns.

    Raises:
        TypeError: an argument is not a tensor, a value tensor is not floating, a flag is not bool.
        ValueError: shapes or devices differ, gamma or lambda_ is outside [0, 1], or (while validation
            is on) a step is both terminated and truncated or a value is NaN or ±inf.

    Note:
        Advantages are weights of the score, never something to differentiate, so they are computed
        under ``torch.no_grad()``; a critic's gradient comes from its own regression loss.

    Example:
        >>> import torch
        >>> from gradest.rl import gae
        >>> rewards = torch.tensor([[1.0], [1.0], [1.0]])
        >>> values = torch.tensor([[0.0], [1.0], [2.0]])
        >>> next_values = torch.tensor([[1.0], [3.0], [5.0]])  # step 1 was cut: V(final obs) = 3
        >>> truncated = torch.tensor([[False], [True], [False]])
        >>> terminated = torch.zeros(3, 1, dtype=torch.bool)
        >>> gae(rewards=rewards, values=values, next_values=next_values, terminated=terminated,
        ...     truncated=truncated, gamma=0.5, lambda_=1.0).flatten().tolist()
        [2.25, 1.5, 1.5]

    References:
        Schulman et al. (2016). High-Dimensional Continuous Control Using Generalized Advantage
        Estimation. ICLR. arXiv:1506.02438.
        Pardo et al. (2018). Time Limits in Reinforcement Learning. ICML. arXiv:1712.00378.
    """
    where = "gae"
    tensors, flags = (rewards, values, next_values), (terminated, truncated)
    (rewards, values, next_values), (terminated, truncated) = check_args(where, _GAE_ARGS, tensors, flags, time_dim)
    gamma = unit_interval(where, "gamma", gamma)
    lambda_ = unit_interval(where, "lambda_", lambda_)
    try:
        if rewards.requires_grad or values.requires_grad or next_values.requires_grad:
            with torch.no_grad():
                out = _gae(rewards, values, next_values, terminated, truncated, gamma, lambda_)
        else:
            out = _gae(rewards, values, next_values, terminated, truncated, gamma, lambda_)
        return to_caller(out, time_dim)
    except (RuntimeError, TypeError):
        explain(where, _GAE_ARGS, tensors, flags)  # a dtype or device torch rejected first: name the argument
        raise


_GAE_ARGS = ("rewards", "values", "next_values")


def _gae(
    rewards: Tensor, values: Tensor, next_values: Tensor, terminated: Tensor, truncated: Tensor | None,
    gamma: float, lambda_: float,
) -> Tensor:
    # torch.where rather than masked_fill: the same values, faster on long rollouts
    delta = torch.sub(rewards - values, torch.where(terminated, 0.0, next_values), alpha=-gamma)
    done = terminated if truncated is None else terminated | truncated
    return discounted_reverse_scan(delta, gamma * lambda_, done)


def vtrace(
    *,
    log_rhos: Tensor,
    rewards: Tensor,
    values: Tensor,
    next_values: Tensor,
    terminated: Tensor,
    truncated: Tensor | None = None,
    gamma: float,
    lambda_: float = 1.0,
    rho_bar: float = 1.0,
    c_bar: float = 1.0,
    time_dim: int = 0,
) -> tuple[Tensor, Tensor]:
    r"""V-trace value targets and policy-gradient advantages for off-policy actor-critic (IMPALA).

    .. math::
        \rho_t = \min\bigl(\bar\rho, e^{\log\rho_t}\bigr), \quad
        c_t = \lambda \min\bigl(\bar c, e^{\log\rho_t}\bigr), \quad
        \delta_t = \rho_t\bigl(r_t + \gamma (1 - \mathrm{terminated}_t) V(s'_t) - V(s_t)\bigr),

    .. math::
        v_t - V(s_t) = \delta_t + \gamma\, c_t\,(1 - \mathrm{done}_t)\,\bigl(v_{t+1} - V(s_{t+1})\bigr),
        \qquad
        A^{\mathrm{pg}}_t = \rho_t\bigl(r_t + \gamma (1 - \mathrm{terminated}_t)\, v'_{t} - V(s_t)\bigr),

    where :math:`v'_t = v_{t+1}` inside an episode and :math:`v'_t = V(s'_t)` (``next_values[t]``) at a
    truncation or the last step. With π = μ (``log_rhos = 0``) and :math:`\bar\rho, \bar c \ge 1`, the
    targets :math:`v_t` are the λ-returns and :math:`A^{\mathrm{pg}}_t` the one-step advantages
    towards them.

    Requires: ``log_rhos`` = log π(a_t|s_t) − log μ(a_t|s_t) with π the learner's policy and μ the
    behaviour policy; all tensors ``[T, *B]`` of one shape; flags bool, never both True at one step.
    Bias: none when π = μ; otherwise the targets are those of the policy
    :math:`\pi_{\bar\rho} \propto \min(\bar\rho\mu, \pi)` (Espeholt et al., Theorem 1), trading
    bias for bounded variance.

    Args:
        log_rhos: ``[T, *B]`` log importance ratios.
        rewards: ``[T, *B]`` rewards.
        values: ``[T, *B]`` critic values V(s_t).
        next_values: ``[T, *B]`` critic values of the observations after step t.
        terminated: ``[T, *B]`` bool, the episode ended after step t.
        truncated: ``[T, *B]`` bool, the episode was cut after step t, or None.
        gamma: discount γ in [0, 1].
        lambda_: λ in [0, 1] (Espeholt et al., Remark 2); 1 by default.
        rho_bar: clip :math:`\bar\rho > 0` of the TD and policy-gradient weights.
        c_bar: clip :math:`\bar c > 0` of the traces.
        time_dim: the dim that is time in every tensor: 0 for time-major ``[T, *B]`` (the default),
            1 for batch-major ``[B, T, ...]`` (TorchRL's and Stable-Baselines3's layout). The inputs are
            read through ``movedim`` views (no copy) and the results come back in the same layout. Not
            an int naming a dim of the tensors: a TypeError or ValueError.

    Returns:
        ``(vs, pg_advantages)``, both ``[T, *B]`` and without autograd history.

    Raises:
        TypeError: an argument is not a tensor, a value tensor is not floating, a flag is not bool.
        ValueError: shapes or devices differ, gamma or lambda_ is outside [0, 1], rho_bar or c_bar is
            not > 0, or (while validation is on) a step is both terminated and truncated, a value is
            NaN or ±inf, or log_rhos is NaN or +inf (-inf is a ratio of 0).

    Note:
        Targets carry no gradient (computed under ``torch.no_grad()``), as in the paper and rlax's
        default ``stop_target_gradients=True``. Truncations are handled as everywhere in gradest;
        the paper's formulation has no notion of them.

    Example:
        >>> import torch
        >>> from gradest.rl import vtrace
        >>> _ = torch.manual_seed(0)
        >>> T, B = 5, 2
        >>> vs, adv = vtrace(log_rhos=torch.zeros(T, B), rewards=torch.ones(T, B),
        ...                  values=torch.zeros(T, B), next_values=torch.zeros(T, B),
        ...                  terminated=torch.zeros(T, B, dtype=torch.bool), gamma=0.5)
        >>> vs[:, 0].tolist()
        [1.9375, 1.875, 1.75, 1.5, 1.0]

    References:
        Espeholt et al. (2018). IMPALA: Scalable Distributed Deep-RL with Importance Weighted
        Actor-Learner Architectures. ICML. arXiv:1802.01561.
    """
    where = "vtrace"
    tensors, flags = (log_rhos, rewards, values, next_values), (terminated, truncated)
    (log_rhos, rewards, values, next_values), (terminated, truncated) = check_args(
        where, _VTRACE_ARGS, tensors, flags, time_dim)
    gamma = unit_interval(where, "gamma", gamma)
    lambda_ = unit_interval(where, "lambda_", lambda_)
    rho_bar = check_positive(where, "rho_bar", rho_bar, "1.0 is the paper's choice")
    c_bar = check_positive(where, "c_bar", c_bar, "1.0 is the paper's choice")
    try:
        with torch.no_grad():
            ratio = log_rhos.exp()
            rho = ratio.clamp(max=rho_bar)
            done = terminated if truncated is None else terminated | truncated
            bootstrap = next_values.masked_fill(terminated, 0.0)
            delta = rho * torch.add(rewards - values, bootstrap, alpha=gamma)
            traces = ratio.clamp_(max=c_bar).mul_(gamma * lambda_).masked_fill_(done, 0.0)
            vs = values + reverse_scan(delta, traces)
            # v'_t: v_{t+1} inside an episode, next_values[t] at a cut or the last step.
            vs_next = torch.where(done, next_values, torch.cat([vs[1:], next_values[-1:]]))
            vs_next.masked_fill_(terminated, 0.0)
            pg_advantages = rho * torch.add(rewards - values, vs_next, alpha=gamma)
            return to_caller(vs, time_dim), to_caller(pg_advantages, time_dim)
    except (RuntimeError, TypeError):
        explain(where, _VTRACE_ARGS, tensors, flags)
        raise


_VTRACE_ARGS = ("log_rhos", "rewards", "values", "next_values")


def group_advantages(*, rewards: Tensor, normalize: bool = False, eps: float = 1e-4,
                     process_group: object = None) -> Tensor:
    r"""Advantages of ``n`` samples of the same prompt or state against their own group.

    .. math::
        A_i = r_i - \frac{1}{n-1}\sum_{j \ne i} r_j = \frac{n}{n-1}\bigl(r_i - \bar r\bigr)
        \quad\text{(leave-one-out)}, \qquad
        A_i = \frac{r_i - \bar r}{s + \epsilon} \quad\text{(normalize=True)},

    with :math:`\bar r` the group mean and :math:`s` the group's sample standard deviation (Bessel
    corrected). The leave-one-out form is RLOO's baseline; the normalised form is GRPO's.

    Requires: ``rewards`` ``[n, *B]`` with the n ≥ 2 samples of each group along dim 0.
    Bias: none for leave-one-out (the baseline excludes the sample's own reward). Normalising is
    biased: :math:`s` depends on :math:`r_i`, and it reweights groups by :math:`1/s`.

    Groups split across ranks: by default each rank's groups are its own (``process_group=None``),
    which suits data-parallel training where every rank holds whole groups. When the n samples of each
    group are instead spread over the ranks of a process group (every rank holds ``n_r`` samples of
    the *same* ``*B`` groups, in the same order), pass ``process_group="world"`` or a group: the
    group mean (and standard deviation) is then over all :math:`n = \sum_r n_r` samples, one
    all-reduce (two with ``normalize``), and each rank gets the advantages of its own samples, as one
    process would for the concatenated ``[n, *B]`` rewards. Every rank must make the call.

    Args:
        rewards: ``[n, *B]`` floating tensor, one group per index of ``*B`` (``[n_r, *B]``, this rank's
            samples, with a process group).
        normalize: divide by the group's standard deviation (GRPO) instead of leaving one out.
        eps: added to the standard deviation with ``normalize=True``, so constant groups give 0.
        process_group: None (groups are local to each rank), ``"world"`` (the default process group
            when one is initialised, else none) or a ``torch.distributed.ProcessGroup``: the ranks
            whose samples make up each group.

    Returns:
        ``[n, *B]`` advantages (``[n_r, *B]`` with a process group), without autograd history.

    Raises:
        TypeError: rewards is not a floating tensor, or process_group is not None, "world" or a
            ProcessGroup.
        ValueError: rewards has fewer than 2 samples along dim 0 (over all ranks, with a process
            group), eps is not > 0, or rewards holds NaN or ±inf (while validation is on).

    Example:
        >>> import torch
        >>> from gradest.rl import group_advantages
        >>> rewards = torch.tensor([[1.0], [0.0], [0.0], [1.0]])  # 4 samples of one prompt
        >>> group_advantages(rewards=rewards).flatten().tolist()
        [0.6666666865348816, -0.6666666865348816, -0.6666666865348816, 0.6666666865348816]

    References:
        Kool et al. (2019). Buy 4 REINFORCE Samples, Get a Baseline for Free! ICLR workshop.
        Ahmadian et al. (2024). Back to Basics: Revisiting REINFORCE Style Optimization for Learning
        from Human Feedback in LLMs. ACL. arXiv:2402.14740.
        Shao et al. (2024). DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open
        Language Models. arXiv:2402.03300.
    """
    where = "group_advantages"
    rewards = check_tensor(where, "rewards", rewards)
    check_values(where, ("rewards",), (rewards,))
    group = resolve(check_process_group(where, process_group))
    if group is not None:
        if not isinstance(normalize, bool):
            raise TypeError(f"{where}: normalize={normalize!r} must be a bool.")
        eps = check_positive(where, "eps", eps, "1e-4 is typical")
        return _split_group_advantages(where, rewards, normalize, eps, group)
    if rewards.dim() == 0 or rewards.shape[0] < 2:
        shape = tuple(rewards.shape)
        raise ValueError(
            f"{where}: rewards.shape={shape} needs n >= 2 samples of each group along dim 0 "
            "(samples lead: [n, *B]); a group of one has no baseline."
        )
    if not isinstance(normalize, bool):
        raise TypeError(f"{where}: normalize={normalize!r} must be a bool.")
    eps = check_positive(where, "eps", eps, "1e-4 is typical")
    with torch.no_grad():
        n = rewards.shape[0]
        centred = rewards - rewards.mean(0)
        if normalize:
            return centred / (rewards.std(0) + eps)
        return centred * (n / (n - 1))


def _split_group_advantages(where: str, rewards: Tensor, normalize: bool, eps: float, group: object) -> Tensor:
    """``group_advantages`` for groups whose samples are spread over the ranks of ``group``."""
    if rewards.dim() == 0:
        raise ValueError(
            f"{where}: rewards.shape=() needs this rank's samples of each group along dim 0 "
            "(samples lead: [n_r, *B])."
        )
    with torch.no_grad():
        r = rewards.detach()
        total, count = all_reduce_flat([r.sum(0), r.new_tensor(float(r.shape[0]))], group)
        n = int(round(float(count)))  # the same on every rank, so every rank raises alike
        if n < 2:
            raise ValueError(
                f"{where}: the ranks hold n={n} samples of each group in all; a group of one has no "
                "baseline; draw n >= 2 samples per group over the ranks."
            )
        centred = r - total / n
        if normalize:  # two passes, as torch.std: Σ (r − mean)² over every rank
            (squares,) = all_reduce_flat([centred.square().sum(0)], group)
            return centred / ((squares / (n - 1)).sqrt() + eps)
        return centred * (n / (n - 1))
