"""Reinforcement learning: returns, TD(λ), GAE, V-trace, importance weights, group advantages and the
policy-gradient loss, as plain functions of time-major ``[T, *B]`` tensors (``time_dim=1`` for
batch-major ``[B, T, ...]``); off-policy and offline RL (:mod:`gradest.rl.offline`): off-policy
evaluation with standard errors and intervals, an off-policy policy-gradient loss, Retrace and n-step
returns.

Episode ends: ``terminated[t]`` means the episode ended after step t (nothing is bootstrapped past it);
``truncated[t]`` means it was cut, e.g. by a time limit (step t bootstraps from ``next_values[t]``, the
value of the final observation, and nothing is carried into the next episode). Nothing is carried past
the last step of a rollout. Every recurrence runs through one vectorised reverse scan (``_scan.py``),
with no Python loop over time steps. While validation is on (``gradest.set_validation``), every function
refuses NaN and ±inf values with an error naming the argument (a log-ratio may be -inf: a ratio of 0).
This package imports only torch, ``gradest.surrogate``, ``gradest._validation`` and ``gradest._distributed``.

Sequence models (language-model RL, :mod:`gradest.rl.sequence`): ``sequence_policy_loss`` and
``kl_estimate`` on batch-major ``[N, L]`` per-token log-probabilities, N sampled answers of L positions.
"""

from gradest.rl.advantages import gae, group_advantages, vtrace
from gradest.rl.importance import importance_weights, per_decision_importance_weights
from gradest.rl.losses import policy_gradient_loss
from gradest.rl.offline import (  # off-policy and offline RL (issue 14)
    OffPolicyEstimate,
    n_step_returns,
    off_policy_policy_loss,
    off_policy_value,
    retrace,
)
from gradest.rl.returns import discounted_returns, td_lambda
from gradest.rl.sequence import kl_estimate, sequence_policy_loss

__all__ = [
    "discounted_returns",
    "td_lambda",
    "gae",
    "vtrace",
    "group_advantages",
    "importance_weights",
    "per_decision_importance_weights",
    "policy_gradient_loss",
    # off-policy and offline RL (issue 14): offline.py
    "off_policy_value",
    "OffPolicyEstimate",
    "off_policy_policy_loss",
    "retrace",
    "n_step_returns",
    # sequence models (language-model RL): sequence.py
    "sequence_policy_loss",
    "kl_estimate",
]
