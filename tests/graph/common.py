"""Shared helpers for the graph tests: seeding, replicated parameters, flattened per-replication gradients."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor

DTYPE = torch.float64


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's CPU generator seeded, restoring the caller's RNG state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def leaves(*tensors: Tensor) -> tuple[Tensor, ...]:
    """Fresh float64 leaf copies that require grad."""
    return tuple(t.detach().to(DTYPE).clone().requires_grad_() for t in tensors)


def replicate(r: int, *tensors: Tensor) -> tuple[Tensor, ...]:
    """Leaf copies ``[R, *shape]`` of each tensor: replication r's estimate lands in ``grad[r]``."""
    return tuple(t.detach().to(DTYPE).expand(r, *t.shape).clone().requires_grad_() for t in tensors)


def flat_grads(out: Tensor, params: Sequence[Tensor], r: int | None = None, **kwargs) -> Tensor:
    """Gradients of ``out`` w.r.t. ``params`` (zeros where unused), flattened: ``[D]``, or ``[R, D]``
    per replication when ``r`` is given (each parameter's leading dim is the replication)."""
    grads = torch.autograd.grad(out, list(params), allow_unused=True, **kwargs)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]
    if r is None:
        return torch.cat([g.reshape(-1) for g in grads])
    return torch.cat([g.reshape(r, -1) for g in grads], 1)


def exact_grad(objective, params: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """The exact objective's value and flattened gradient at ``params`` (unreplicated)."""
    params = leaves(*params)
    value = objective(*params)
    return value.detach(), flat_grads(value, params)
