"""Shared argument checks and the validation switch.

Checks that force a device synchronisation (NaN costs, probabilities out of range) run only while
validation is on. It is on by default and follows ``__debug__``; ``gradest.set_validation(False)``
turns it off. Shape and type checks always run.
"""

from __future__ import annotations

import math

import torch
from torch.distributions import Distribution

_VALIDATE = __debug__


def set_validation(enabled: bool) -> None:
    """Turn the checks that force a device sync (NaN costs, ...) on or off for the whole process.

    Example:
        >>> import gradest
        >>> was = gradest.is_validation_enabled()
        >>> gradest.set_validation(False)          # the fast path, e.g. for a tuned training loop
        >>> gradest.is_validation_enabled()
        False
        >>> gradest.set_validation(was)
    """
    global _VALIDATE
    if not isinstance(enabled, bool):
        raise TypeError(f"set_validation: enabled={enabled!r} must be a bool (True or False).")
    _VALIDATE = enabled


def is_validation_enabled() -> bool:
    """Whether the sync-forcing checks run (never while ``torch.compile`` traces).

    Example:
        >>> import gradest
        >>> gradest.is_validation_enabled()        # on by default (it follows ``__debug__``)
        True
    """
    return _VALIDATE and not torch.compiler.is_compiling()


def describe(dist: Distribution) -> str:
    """A short description of a distribution for error messages, e.g. ``Bernoulli(batch_shape=(3,))``."""
    name = type(dist).__name__
    if hasattr(dist, "base_dist"):
        return f"{name}({describe(dist.base_dist)}, event_shape={tuple(dist.event_shape)})"
    return f"{name}(batch_shape={tuple(dist.batch_shape)}, event_shape={tuple(dist.event_shape)})"


def check_distribution(where: str, dist: object) -> Distribution:
    if not isinstance(dist, Distribution):
        raise TypeError(
            f"{where}: dist={type(dist).__name__} is not a torch.distributions.Distribution; "
            "pass a distribution object such as torch.distributions.Normal(loc, scale)."
        )
    return dist


def check_n(where: str, n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"{where}: n={n!r} must be an int, the number of samples per node.")
    if n < 1:
        raise ValueError(f"{where}: n={n} must be >= 1; use n=1 for a single sample.")
    return n


def check_unit_interval(where: str, name: str, value: float, *, open_right: bool = False) -> float:
    interval = "[0, 1)" if open_right else "[0, 1]"
    if isinstance(value, torch.Tensor):
        value = float(value)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{where}: {name}={value!r} must be a float in {interval}.")
    hi_ok = value < 1 if open_right else value <= 1
    if not (0 <= value and hi_ok):
        raise ValueError(f"{where}: {name}={value} must lie in {interval}; 0.9 to 0.99 is typical.")
    return float(value)


def check_finite(where: str, name: str, value: torch.Tensor, fix: str) -> None:
    """Raise if ``value`` holds NaN or ±inf (only while validation is on: this syncs with the device).

    One reduction and one sync on the fast path: the sum of a tensor is finite only when every element
    is (NaN or ±inf anywhere makes it NaN or ±inf). A sum that overflowed from finite elements is then
    told apart by the full check.
    """
    if is_validation_enabled() and not math.isfinite(float(value.detach().sum())):
        bad = describe_nonfinite(value)
        if bad:
            raise ValueError(f"{where}: {name} contains {bad}; {fix}")


def describe_nonfinite(value: torch.Tensor) -> str:
    """``"NaN (2 of 12 elements) and +inf (1 of 12 elements)"`` for the non-finite elements of ``value``,
    or ``""`` when all are finite."""
    v = value.detach()
    if not v.is_floating_point():
        return ""
    total = v.numel()
    counts = (("NaN", int(torch.isnan(v).sum())), ("+inf", int(torch.isposinf(v).sum())),
              ("-inf", int(torch.isneginf(v).sum())))
    return " and ".join(f"{kind} ({count} of {total} elements)" for kind, count in counts if count)


# --- time-major tensors (gradest.rl) --------------------------------------------------------------


def summarize(value: object) -> str:
    """A short description of an argument for error messages: ``tensor(shape=(5, 2), dtype=torch.int64)``."""
    if isinstance(value, torch.Tensor):
        return f"tensor(shape={tuple(value.shape)}, dtype={value.dtype})"
    text = repr(value)
    return text if len(text) <= 60 else f"{type(value).__name__}(...)"


def check_tensor(where: str, name: str, value: object, *, flag: bool = False) -> torch.Tensor:
    """A floating tensor, or with ``flag=True`` a bool tensor (episode flags); else a TypeError naming it."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"{where}: {name}={summarize(value)} is a {type(value).__name__}, not a tensor; "
            f"pass a torch.Tensor (torch.as_tensor({name}))."
        )
    if flag and value.dtype != torch.bool:
        raise TypeError(
            f"{where}: {name}={summarize(value)} must be a bool tensor of episode flags; "
            f"pass {name}.bool() (or {name} > 0.5 for 0/1 floats)."
        )
    if not flag and not value.is_floating_point():
        raise TypeError(f"{where}: {name}={summarize(value)} must be a floating tensor; pass {name}.float().")
    return value


def fits_time_major(tensors: tuple[object, ...], flags: tuple[object, ...]) -> bool:
    """The fast path of :func:`check_time_major`: True when every tensor is floating with the first
    one's shape (of rank >= 1) and every flag is a bool tensor of that shape (None entries are skipped).

    It only reads attributes, so it stays cheap for short rollouts. When it returns False, call
    :func:`check_time_major`, which names the argument at fault. Devices are left to torch, whose
    error callers translate through the same function.
    """
    try:
        shape = tensors[0].shape  # type: ignore[attr-defined]
        if not shape:
            return False
        for t in tensors:
            if t is not None and (t.shape != shape or not t.is_floating_point()):  # type: ignore[attr-defined]
                return False
        for f in flags:
            if f is not None and (f.dtype is not torch.bool or f.shape != shape):  # type: ignore[attr-defined]
                return False
    except AttributeError:
        return False
    return True


def check_time_major(where: str, tensors: dict[str, object], flags: dict[str, object]) -> tuple[int, ...]:
    """Check ``[T, *B]`` arguments: tensors of one shape (rank >= 1) and device; return the shape.

    ``tensors`` must be floating (mixed floating dtypes promote, as in torch), ``flags`` bool; None
    entries are skipped. The first tensor is the reference.
    """
    ref_name, ref = "", None
    for group, is_flag in ((tensors, False), (flags, True)):
        for name, value in group.items():
            if value is None:
                continue
            t = check_tensor(where, name, value, flag=is_flag)
            if ref is None:
                if t.dim() == 0:
                    raise ValueError(
                        f"{where}: {name}.shape=() has no time dimension; pass time-major [T, *B] "
                        f"tensors ({name}.unsqueeze(0) for a single step)."
                    )
                ref_name, ref = name, t
                continue
            if t.shape != ref.shape:
                raise ValueError(
                    f"{where}: {name}.shape={tuple(t.shape)} does not match {ref_name}.shape="
                    f"{tuple(ref.shape)}; every argument is a time-major [T, *B] tensor of one shape."
                )
            if t.device != ref.device:
                raise ValueError(
                    f"{where}: {name}.device={t.device} does not match {ref_name}.device={ref.device}; "
                    "move them to one device."
                )
    assert ref is not None, "check_time_major needs at least one tensor"
    return tuple(ref.shape)


def unit_interval(where: str, name: str, value: object) -> float:
    """:func:`check_unit_interval` with a fast path for a plain float in [0, 1]."""
    if type(value) is float and 0.0 <= value <= 1.0:
        return value
    return check_unit_interval(where, name, value)  # type: ignore[arg-type]


def check_exclusive_flags(where: str, terminated: torch.Tensor, truncated: torch.Tensor | None) -> None:
    """Raise if a step is both terminated and truncated (only while validation is on: this syncs)."""
    if truncated is None or not is_validation_enabled():
        return
    both = terminated & truncated
    if bool(both.any()):
        first = tuple(int(i) for i in both.nonzero()[0])
        raise ValueError(
            f"{where}: terminated=True and truncated=True at {int(both.sum())} step(s), first at index "
            f"{first}; a step either ends its episode (terminated: no bootstrap) or is cut by a time limit "
            "(truncated: bootstrap from next_values), never both; pass truncated & ~terminated."
        )


def check_positive(where: str, name: str, value: object, typical: str) -> float:
    """A positive finite float (thresholds, clip ranges); ``typical`` ends the error message."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = float(value)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{where}: {name}={value!r} must be a float > 0; {typical}.")
    if not (0 < value < float("inf")):
        raise ValueError(f"{where}: {name}={value} must be a finite float > 0; {typical}.")
    return float(value)


def broadcast_shapes(a: tuple[int, ...] | torch.Size, b: tuple[int, ...] | torch.Size) -> torch.Size:
    """The broadcast of two shapes, or a ValueError naming both (``torch.broadcast_shapes`` imports sympy
    on first use: ~1 s)."""
    a, b = tuple(a), tuple(b)
    width = max(len(a), len(b))
    a, b = (1,) * (width - len(a)) + a, (1,) * (width - len(b)) + b
    out = []
    for x, y in zip(a, b):
        if x != y and 1 not in (x, y):
            raise ValueError(f"shapes {a} and {b} do not broadcast")
        out.append(y if x == 1 else x)
    return torch.Size(out)
