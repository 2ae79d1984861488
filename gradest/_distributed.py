r"""Reductions over the ranks of a ``torch.distributed`` process group, and nothing else.

Every statistic that needs the global batch (moving averages of costs, running moments, group
advantages over groups split across ranks, SVRG's full gradient, SAGA's table mean) is reduced here, so
that a run on R ranks gives what one process would give on the concatenation of the R batches.

``process_group=`` arguments across gradest take:

- ``"world"`` (the default for baselines and optimisers): the default group when one is initialised
  (``torch.distributed.is_initialized()``), else no synchronisation. Nothing changes for a single
  process, and nothing is looked up until the first call.
- a ``torch.distributed.ProcessGroup`` (from ``torch.distributed.new_group``): reduce over its ranks.
- ``None``: never synchronise; every rank keeps its own statistics.

Collectives are *blocking in program order*: every rank of the group must make the same calls in the
same order (as with DDP's gradient all-reduce), or the ranks hang. One collective per call site and
step: the pieces of a statistic are packed into one flat tensor first.

This module imports nothing from ``torch.distributed`` at import time; availability and initialisation
are checked when a reduction is asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["WORLD", "check_process_group", "resolve", "world_size", "rank", "all_reduce_sum", "all_reduce_flat"]

WORLD = "world"


def check_process_group(where: str, process_group: Any) -> Any:
    """Validate a ``process_group=`` argument at a constructor: ``"world"``, None or a ProcessGroup."""
    if process_group is None or (isinstance(process_group, str) and process_group == WORLD):
        return process_group
    if isinstance(process_group, (str, bool, int, float)):
        raise TypeError(
            f"{where}: process_group={process_group!r} must be 'world' (the default group when one is "
            "initialised), a torch.distributed.ProcessGroup, or None (no synchronisation)."
        )
    if not (torch.distributed.is_available() and isinstance(process_group, torch.distributed.ProcessGroup)):
        raise TypeError(
            f"{where}: process_group={type(process_group).__name__} must be 'world' (the default group when "
            "one is initialised), a torch.distributed.ProcessGroup (torch.distributed.new_group(...)), or "
            "None (no synchronisation)."
        )
    return process_group


def resolve(process_group: Any) -> Any | None:
    """The group to reduce over now, or None for no reduction (a single process, or opted out).

    ``"world"`` resolves to the default group only while one is initialised with more than one rank;
    an explicit ProcessGroup is used as given.
    """
    if process_group is None:
        return None
    if isinstance(process_group, str):  # "world"
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return None
        group = torch.distributed.group.WORLD
        return group if torch.distributed.get_world_size(group) > 1 else None
    return process_group


def world_size(group: Any | None) -> int:
    """The number of ranks of a resolved group (1 for None)."""
    return 1 if group is None else int(torch.distributed.get_world_size(group))


def rank(group: Any | None) -> int:
    """This process's rank within a resolved group (0 for None)."""
    return 0 if group is None else int(torch.distributed.get_rank(group))


def all_reduce_sum(tensor: Tensor, group: Any | None) -> Tensor:
    """Sum ``tensor`` over the ranks of ``group``, in place (and returned); a no-op for None.

    Must not carry autograd history: reductions here are of statistics, never of differentiable terms.
    """
    if group is not None:
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM, group=group)
    return tensor


def all_reduce_flat(tensors: Sequence[Tensor], group: Any | None) -> list[Tensor]:
    """Sum each tensor over the ranks of ``group`` with one collective; new tensors of the same shapes.

    The tensors are flattened into one buffer of their promoted dtype (on the first tensor's device)
    and split back, each cast to its own dtype. For None they are returned as they are.
    """
    if group is None:
        return list(tensors)
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    device = tensors[0].device
    flat = torch.cat([t.detach().reshape(-1).to(device=device, dtype=dtype) for t in tensors])
    all_reduce_sum(flat, group)
    out, start = [], 0
    for t in tensors:
        out.append(flat[start:start + t.numel()].reshape(t.shape).to(device=t.device, dtype=t.dtype))
        start += t.numel()
    return out
