"""The argument check every time-major function of ``gradest.rl`` shares.

Each function calls :func:`check_args` before computing: a fast test that only reads attributes
(:func:`gradest._validation.fits_time_major`), then, with ``truncated`` given and validation on,
the check that no step is both terminated and truncated. When the fast test fails, or torch rejects a
dtype or device during the computation, :func:`explain` raises the error that names the argument at
fault; the names are paired with the tensors only on that slow path.
"""

from __future__ import annotations

from gradest._validation import check_exclusive_flags, check_time_major, fits_time_major

__all__ = ["FLAGS", "check_args", "explain"]

FLAGS = ("terminated", "truncated")  # the episode flags, in the order every function passes them


def explain(where: str, names: tuple[str, ...], tensors: tuple[object, ...], flags: tuple[object, ...]) -> None:
    """Raise the TypeError or ValueError that names the argument at fault; return if none is found.

    ``names`` are the names of ``tensors`` (floating, the first one the reference, later ones may be
    None); ``flags`` are ``(terminated, truncated)``, either of which may be None.
    """
    check_time_major(where, dict(zip(names, tensors)), dict(zip(FLAGS, flags)))


def check_args(where: str, names: tuple[str, ...], tensors: tuple[object, ...], flags: tuple[object, ...]) -> None:
    """Check time-major arguments: :func:`explain` unless the fast test passes (it does for every
    valid call), then, while validation is on, that no step is both terminated and truncated.

    ``flags`` are ``(terminated, truncated)``; without ``truncated`` there is nothing to sync for.
    """
    if not fits_time_major(tensors, flags):
        explain(where, names, tensors, flags)
    if flags[1] is not None:
        check_exclusive_flags(where, flags[0], flags[1])  # type: ignore[arg-type]
