from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import Tensor


@dataclass
class Rollout:
    rewards: Tensor
    values: Tensor
    next_values: Tensor
    terminated: Tensor
    truncated: Tensor
    log_rhos: Tensor


def make_rollout(shape: tuple[int, ...], *, dtype: torch.dtype = torch.float64, seed: int = 0,
                 p_terminated: float = 0.05, p_truncated: float = 0.05) -> Rollout:
    """Random time-major data with both kinds of episode end (never both at one step).

    ``next_values[t] == values[t+1]`` inside episodes; at an episode end, next_values holds the value of
    the final observation, which differs from the value of the next episode's first observation.
    """
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(shape, generator=g, dtype=dtype)
    values_ext = torch.randn((shape[0] + 1,) + shape[1:], generator=g, dtype=dtype)
    u = torch.rand(shape, generator=g, dtype=dtype)
    terminated = u < p_terminated
    truncated = (u >= p_terminated) & (u < p_terminated + p_truncated)
    values = values_ext[:-1].clone()
    next_values = values_ext[1:].clone()
    final = torch.randn(shape, generator=g, dtype=dtype)  # V(final observation) at truncations
    next_values = torch.where(truncated, final, next_values)
    log_rhos = 0.5 * torch.randn(shape, generator=g, dtype=dtype)
    return Rollout(rewards, values, next_values, terminated, truncated, log_rhos)


@pytest.fixture
def rollout() -> Rollout:
    return make_rollout((50, 3))
