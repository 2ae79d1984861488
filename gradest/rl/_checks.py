"""The argument checks every function of ``gradest.rl`` shares.

Each time-major function calls :func:`check_args` before computing: a fast test that only reads
attributes (:func:`gradest._validation.fits_time_major`), then, while validation is on, the check that
no step is both terminated and truncated and :func:`check_values`, the check that no value is NaN or
±inf. When the fast test fails, or torch rejects a dtype or device during the computation,
:func:`explain` raises the error that names the argument at fault; the names are paired with the
tensors only on that slow path. The functions that are not time-major call :func:`check_values`
themselves.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gradest._validation import (
    check_exclusive_flags,
    check_time_major,
    describe_nonfinite,
    fits_time_major,
    is_validation_enabled,
)

__all__ = ["FLAGS", "check_args", "check_time_dim", "check_values", "explain", "to_caller"]

FLAGS = ("terminated", "truncated")  # the episode flags, in the order every function passes them

# What a non-finite value of each argument means, and what to do about it (the end of the message).
_FIXES = {
    "rewards": "rewards must be finite; find the steps with torch.isfinite(rewards) and fix or clip the "
               "reward there (an environment or reward model returned it)",
    "values": "critic values must be finite; a diverging critic returns inf (lower its learning rate or "
              "clip its gradient), and check torch.isfinite(values)",
    "log_rhos": "log_rhos = log π(a|s) - log μ(a|s) may be -inf (π(a|s) = 0: that action gets weight 0) "
                "but never NaN or +inf (+inf means μ(a|s) = 0 for an action μ took: log the behaviour "
                "policy's log-probability of the action it actually sampled)",
    "advantages": "advantages must be finite; they inherit NaN or inf from the rewards or the critic "
                  "values they were computed from",
    "log_probs": "log-probabilities must be finite (-inf means the policy gives the logged action "
                 "probability 0, where the gradient of log π is not defined); check the policy's logits",
}
_FIXES["next_values"] = _FIXES["q_values"] = _FIXES["v_values"] = _FIXES["values"]
_FIXES["old_log_probs"] = _FIXES["behaviour_log_probs"] = _FIXES["log_probs"]
_NEGINF_ALLOWED = frozenset({"log_rhos"})  # -inf is a ratio of 0: the evaluated policy never takes the action


def explain(where: str, names: tuple[str, ...], tensors: tuple[object, ...], flags: tuple[object, ...]) -> None:
    """Raise the TypeError or ValueError that names the argument at fault; return if none is found.

    ``names`` are the names of ``tensors`` (floating, the first one the reference, later ones may be
    None); ``flags`` are ``(terminated, truncated)``, either of which may be None.
    """
    check_time_major(where, dict(zip(names, tensors)), dict(zip(FLAGS, flags)))


def check_args(
    where: str, names: tuple[str, ...], tensors: tuple[object, ...], flags: tuple[object, ...], time_dim: int = 0,
) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """Check time-major arguments: :func:`explain` unless the fast test passes (it does for every
    valid call), then, while validation is on, that no step is both terminated and truncated and
    that no value is NaN or ±inf (:func:`check_values`).

    ``flags`` are ``(terminated, truncated)``; without ``truncated`` there is no flag to sync for.
    Every check reads the arguments in the caller's layout. Returns ``tensors`` and ``flags`` with
    dim ``time_dim`` moved to the front (views, no copy; the same objects for ``time_dim=0``).
    """
    if not fits_time_major(tensors, flags):
        explain(where, names, tensors, flags)
    if type(time_dim) is not int or time_dim != 0:
        check_time_dim(where, time_dim, names[0], tensors[0])  # type: ignore[arg-type]
    if flags[1] is not None:
        check_exclusive_flags(where, flags[0], flags[1])  # type: ignore[arg-type]
    try:
        check_values(where, names, tensors)  # type: ignore[arg-type]
    except RuntimeError:
        explain(where, names, tensors, flags)  # tensors on different devices: name the argument
        raise
    if time_dim == 0:
        return tensors, flags  # type: ignore[return-value]
    return (tuple(None if t is None else t.movedim(time_dim, 0) for t in tensors),  # type: ignore[attr-defined, misc]
            tuple(None if f is None else f.movedim(time_dim, 0) for f in flags))  # type: ignore[attr-defined, misc]


def check_time_dim(where: str, time_dim: object, name: str, ref: Tensor) -> int:
    """``time_dim``, an int naming a dim of ``ref`` (negative counts from the end); else the error."""
    if isinstance(time_dim, bool) or not isinstance(time_dim, int):
        raise TypeError(
            f"{where}: time_dim={time_dim!r} must be an int: 0 for time-major [T, *B] tensors, 1 for "
            "batch-major [B, T, ...] (TorchRL's and Stable-Baselines3's layout)."
        )
    if not -ref.dim() <= time_dim < ref.dim():
        raise ValueError(
            f"{where}: time_dim={time_dim} is not a dim of {name}.shape={tuple(ref.shape)}; pass a dim in "
            f"[{-ref.dim()}, {ref.dim()}) (0 for [T, *B], 1 for [B, T, ...])."
        )
    return time_dim


def to_caller(out: Tensor, time_dim: int) -> Tensor:
    """A time-major result in the caller's layout: dim 0 moved back to ``time_dim`` (a view)."""
    return out if time_dim == 0 else out.movedim(0, time_dim)


def check_values(where: str, names: tuple[str, ...], tensors: tuple[Tensor | None, ...]) -> None:
    """While validation is on, raise a ValueError naming the first argument that holds NaN or ±inf.

    ``log_rhos`` may hold -inf (a ratio of 0). On the fast path, one sum over the tensors and one
    device sync for the whole call: a sum is NaN or ±inf whenever an element is (or when finite
    elements overflow, which the element-wise count on the slow path then tells apart).
    """
    if not is_validation_enabled():
        return
    finite: list[Tensor] = []
    neginf: list[Tensor] = []
    for name, t in zip(names, tensors):
        if t is not None:
            (neginf if name in _NEGINF_ALLOWED else finite).append(t)
    total, ratios = _sum(finite), _sum(neginf)
    if ratios is None:
        if total is None or math.isfinite(float(total)):
            return
    elif total is None:
        if _neginf_or_finite(float(ratios)):
            return
    else:
        must_be_finite, may_be_neginf = torch.stack([total, ratios.to(total.dtype)]).tolist()
        if math.isfinite(must_be_finite) and _neginf_or_finite(may_be_neginf):
            return
    for name, t in zip(names, tensors):
        if t is None:
            continue
        bad = _describe(name, t)
        if bad:
            fix = _FIXES.get(name, f"{name} must be finite")
            raise ValueError(f"{where}: {name} contains {bad}; {fix}.")


_STACKED = 1 << 13  # up to this many elements per tensor, one stack and one sum beat a sum per tensor (measured)


def _sum(tensors: list[Tensor]) -> Tensor | None:
    """The sum of every element of ``tensors`` (None for none): NaN or ±inf if any element is."""
    if not tensors:
        return None
    tensors = [t.detach() if t.requires_grad else t for t in tensors]
    if len(tensors) > 1 and tensors[0].numel() <= _STACKED:
        try:
            return torch.stack(tensors).sum()
        except RuntimeError:  # shapes or devices differ: one sum each
            pass
    total = tensors[0].sum()
    for t in tensors[1:]:
        total = total + t.sum()
    return total


def _neginf_or_finite(x: float) -> bool:
    return not (math.isnan(x) or x == math.inf)


def _describe(name: str, t: Tensor) -> str:
    """The NaN and ±inf elements of ``t`` as :func:`describe_nonfinite` words them (without -inf where allowed)."""
    if name not in _NEGINF_ALLOWED:
        return describe_nonfinite(t)
    v = t.detach()
    counts = (("NaN", int(torch.isnan(v).sum())), ("+inf", int(torch.isposinf(v).sum())))
    return " and ".join(f"{kind} ({count} of {v.numel()} elements)" for kind, count in counts if count)
