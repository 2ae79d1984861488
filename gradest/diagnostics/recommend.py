"""``recommend``: pick an estimator per problem from a Report's measured numbers."""

from __future__ import annotations

import math
from dataclasses import dataclass

from gradest.diagnostics.report import Report, Row, ranked

__all__ = ["Recommendation", "recommend"]


@dataclass
class Recommendation:
    """The pick for one problem.

    Attributes:
        problem: the problem's name.
        estimator: the estimator whose verdict is unbiased with the lowest variance × time (None if none ran).
        alternative: a biased estimator whose variance × time beats it by more than ``margin``, if any.
        text: one to three sentences saying why, with the measured numbers.

    Example:
        >>> from gradest.diagnostics import compare, recommend
        >>> (pick,) = recommend(compare("gaussian-square", "pathwise,score", trials=400, timing_repeats=2))
        >>> pick.problem, pick.estimator, pick.alternative
        ('gaussian-square', 'pathwise', None)
    """

    problem: str
    estimator: str | None
    alternative: str | None
    text: str


def _significantly_better(best: Row, runner: Row) -> bool:
    """Whether best's variance × time is lower than runner's by more than two standard errors of the ratio
    (times are medians, taken as exact)."""
    if best.variance == 0:
        return runner.variance > 0
    ratio = runner.work_normalised_variance / best.work_normalised_variance
    rel = math.hypot(best.variance_se / best.variance, runner.variance_se / runner.variance)
    return ratio - 1 > 2 * rel * ratio


def recommend(report: Report, *, margin: float = 10.0) -> list[Recommendation]:
    """For each problem: the estimator with the lowest variance × time among those whose verdict is unbiased.

    An estimator counts as unbiased when it claims to be and its measured bias is not significant
    (``Row.verdict``, the same verdict the table and the figure show). When a biased estimator (a
    relaxation, straight-through) is cheaper per unit of variance by more than ``margin`` times, the
    recommendation says so, with its measured bias, and leaves the choice to the user: bias does
    not average away with more samples. An estimator that claims to be unbiased but is measured
    biased is named too: that is a bug, in f or in the estimator.

    Args:
        report: from :func:`compare` (rows with a ``setting`` — sweeps — are ignored).
        margin: how many times lower variance × time a biased estimator needs to be mentioned; > 1.

    Raises:
        TypeError: report is not a Report.
        ValueError: margin is not a number > 1.

    Example:
        >>> from gradest.diagnostics import compare, recommend
        >>> report = compare(["bernoulli-0.499"], "score,score+leave-one-out,enumerate", trials=200,
        ...                  timing_repeats=2)
        >>> (pick,) = recommend(report)
        >>> pick.estimator, pick.text.split(" — ")[1].split(",")[0]
        ('enumerate', 'exact')
    """
    if not isinstance(report, Report):
        raise TypeError(
            f"recommend: report={report!r} is a {type(report).__name__}, not a Report; pass what "
            "gradest.diagnostics.compare(...) returns (or Report.from_json(text) for a saved one)."
        )
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not margin > 1 or math.isinf(margin):
        raise ValueError(f"recommend: margin={margin!r} must be a finite number > 1; 10 is the default.")
    out = []
    rows = [r for r in report.rows if r.kind == "compare"]
    for p in dict.fromkeys(r.problem for r in rows):
        mine = [r for r in rows if r.problem == p]
        ran = [r for r in mine if r.status == "ok"]
        unbiased, biased = ranked(mine)
        best = unbiased[0] if unbiased else None
        alt = biased[0] if biased and (best is None or biased[0].work_normalised_variance * margin
                                       < best.work_normalised_variance) else None
        if best is None:
            missing = len(mine) - len(ran)
            text = f"{p}: no unbiased estimator ran" + (f" ({missing} could not run: see the table)." if missing
                                                        else ".")
        elif best.variance == 0:
            text = f"{p}: use {best.estimator} — exact, zero variance, {best.seconds * 1e6:.0f} µs per estimate."
        else:
            runner = unbiased[1] if len(unbiased) > 1 else None
            vs = ""
            if runner is not None:
                ratio = runner.work_normalised_variance / best.work_normalised_variance
                vs = (f" ({ratio:.3g}× lower variance × time than {runner.estimator}"
                      + ("" if _significantly_better(best, runner) else ", within the measurement's noise") + ")")
            text = (f"{p}: use {best.estimator} — variance {best.variance:.3g}, "
                    f"{best.seconds * 1e6:.0f} µs per estimate{vs}.")
            if best.verdict == "unchecked":
                text += f" Its bias was not measured ({best.reference})."
        if alt is not None:
            alt_cost = alt.work_normalised_variance
            ratio = best.work_normalised_variance / alt_cost if best is not None and alt_cost > 0 else math.inf
            cheaper = f"{ratio:.3g}× cheaper per unit of variance" if best is not None else "the cheapest"
            if alt.verdict == "biased":
                how = f"biased (measured bias {alt.bias:.2g}, {alt.bias_z:.1f} SE, significant)"
            else:
                z = f", {alt.bias_z:.1f} SE" if alt.bias_z is not None else ""
                how = f"biased by design (its bias is below this run's noise{z})"
            text += f" {alt.estimator} is {cheaper} but {how}: use it only if that bias is acceptable."
        wrong = [r for r in ran if r.verdict == "biased" and r.unbiased]
        for r in wrong:
            text += (f" {r.estimator} claims to be unbiased but is {r.bias_z:.1f} SE off ({r.reference}): "
                     "check that f accepts its points, or report a bug.")
        out.append(Recommendation(p, best.estimator if best else None, alt.estimator if alt else None, text))
    return out
