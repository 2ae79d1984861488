"""Shared argument checks and the validation switch.

Checks that force a device synchronisation (NaN costs, probabilities out of range) run only while
validation is on. It is on by default and follows ``__debug__``; ``gradest.set_validation(False)``
turns it off. Shape and type checks always run.
"""

from __future__ import annotations

import torch
from torch.distributions import Distribution

_VALIDATE = __debug__


def set_validation(enabled: bool) -> None:
    """Turn the checks that force a device sync (NaN costs, ...) on or off for the whole process."""
    global _VALIDATE
    if not isinstance(enabled, bool):
        raise TypeError(f"set_validation: enabled={enabled!r} must be a bool (True or False).")
    _VALIDATE = enabled


def is_validation_enabled() -> bool:
    """Whether the sync-forcing checks run (never while ``torch.compile`` traces)."""
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
    if isinstance(value, torch.Tensor):
        value = float(value)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{where}: {name}={value!r} must be a float in [0, 1].")
    hi_ok = value < 1 if open_right else value <= 1
    if not (0 <= value and hi_ok):
        interval = "[0, 1)" if open_right else "[0, 1]"
        raise ValueError(f"{where}: {name}={value} must lie in {interval}; 0.9 to 0.99 is typical.")
    return float(value)


def check_finite(where: str, name: str, value: torch.Tensor, fix: str) -> None:
    """Raise if ``value`` holds NaN (only while validation is on: this syncs with the device)."""
    if is_validation_enabled() and bool(torch.isnan(value).any()):
        bad = int(torch.isnan(value).sum())
        raise ValueError(f"{where}: {name} contains NaN ({bad} of {value.numel()} elements); {fix}")
