"""Finite sums f(θ) = (1/N) Σ_i ℓ_i(θ): variance-reduced optimisers, where the gradients of past
iterates are the control variate.

``SAGA`` and ``SVRG`` are ``torch.optim.Optimizer`` subclasses (param groups, ``state_dict``,
learning-rate schedulers) whose ``step(indices, losses)`` takes the example indices of the batch and a
closure ``losses(indices) -> [len(indices)]`` of per-example losses at the current parameters.
``saga_step`` and ``svrg_step`` are their functional cores. Only torch is needed.
"""

from gradest.optim.saga import SAGA, saga_direction, saga_step
from gradest.optim.svrg import SVRG, svrg_direction, svrg_step

__all__ = ["SAGA", "SVRG", "saga_direction", "saga_step", "svrg_direction", "svrg_step"]
