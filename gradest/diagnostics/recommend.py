"""``recommend``: pick an estimator per problem from a Report's measured numbers."""

from __future__ import annotations

from dataclasses import dataclass

from gradest.diagnostics.report import Report, Row

__all__ = ["Recommendation", "recommend"]


@dataclass
class Recommendation:
    """The pick for one problem.

    Attributes:
        problem: the problem's name.
        estimator: the unbiased estimator with the lowest variance × time (None if none applies).
        alternative: a biased estimator whose variance × time beats it by more than ``margin``, if any.
        text: one or two sentences saying why, with the measured numbers.
    """

    problem: str
    estimator: str | None
    alternative: str | None
    text: str


def _score(r: Row) -> float:
    return r.work_normalised_variance


def recommend(report: Report, *, margin: float = 10.0) -> list[Recommendation]:
    """For each problem: the unbiased estimator with the lowest variance × time.

    An estimator counts as unbiased when it claims to be and its measured bias is not significant.
    When a biased estimator (a relaxation, straight-through) is cheaper per unit of variance by more
    than ``margin`` times, the recommendation says so, with its measured bias, and leaves the choice
    to the user: bias does not average away with more samples.

    Args:
        report: from :func:`compare` (rows with a ``setting`` — sweeps — are ignored).
        margin: how many times lower variance × time a biased estimator needs to be mentioned.
    """
    out = []
    problems = list(dict.fromkeys(r.problem for r in report.rows))
    for p in problems:
        rows = [r for r in report.rows if r.problem == p and r.status == "ok" and not r.setting]
        unbiased = sorted((r for r in rows if r.unbiased and not r.biased), key=_score)
        biased = sorted((r for r in rows if not r.unbiased or r.biased), key=_score)
        best = unbiased[0] if unbiased else None
        alt = biased[0] if biased and (best is None or _score(biased[0]) * margin < _score(best)) else None
        if best is None:
            text = f"{p}: no unbiased estimator applies."
        elif best.variance == 0:
            text = f"{p}: use {best.estimator} — exact, zero variance, {best.seconds * 1e6:.0f} µs per estimate."
        else:
            runner = unbiased[1] if len(unbiased) > 1 else None
            vs = (f" ({_score(runner) / _score(best):.3g}× lower variance × time than {runner.estimator})"
                  if runner and _score(best) > 0 else "")
            text = (f"{p}: use {best.estimator} — variance {best.variance:.3g}, "
                    f"{best.seconds * 1e6:.0f} µs per estimate{vs}.")
        if alt is not None:
            ratio = _score(best) / _score(alt) if best is not None and _score(alt) > 0 else float("inf")
            text += (f" {alt.estimator} is {ratio:.3g}× cheaper per unit of variance but biased "
                     f"(measured bias {alt.bias:.2g}, {alt.bias_z:.1f} SE): use it only if that bias is acceptable.")
        out.append(Recommendation(p, best.estimator if best else None, alt.estimator if alt else None, text))
    return out
