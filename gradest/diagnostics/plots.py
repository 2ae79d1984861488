"""Matplotlib figures from a Report (matplotlib is in the ``cli`` extra; it is imported when a figure is drawn).

:func:`plot_report` draws the decision: per problem, every estimator's variance × time, the
recommended one marked, biased ones hatched and labelled, and the estimators that could not run
listed with the reason. :func:`plot_sweeps` draws the sweeps (variance against n, the Gumbel-Softmax
temperature, GAE's λ). Both read the verdicts of the report (``Row.verdict``) and the picks of
:func:`~gradest.diagnostics.recommend`, so they agree with the table.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

from gradest.diagnostics.recommend import recommend
from gradest.diagnostics.report import Report, Row

__all__ = ["plot_report", "plot_sweeps", "decision_figure", "require_matplotlib"]

# Kelly's colours of maximum contrast (less white, black and the two nearest to others): 18 that
# stay apart, so that each estimator keeps one colour across panels.
PALETTE = [
    "#0067A5", "#F38400", "#008856", "#BE0032", "#875692", "#882D17", "#E68FAC", "#848482", "#F3C300",
    "#2B3D26", "#A1CAF1", "#8DB600", "#604E97", "#C2B280", "#F99379", "#B3446C", "#654522", "#E25822",
]
FONT = 12


def require_matplotlib() -> None:
    """Raise a one-line ImportError naming the extra when matplotlib is missing.

    Example:
        >>> from gradest.diagnostics.plots import require_matplotlib
        >>> require_matplotlib()      # silent when matplotlib is installed (the cli extra)
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError("figures need matplotlib: pip install 'gradest[cli]'") from None


def _pyplot() -> Any:
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _check(where: str, report: object, path: object) -> Path:
    if not isinstance(report, Report):
        raise TypeError(f"{where}: report={report!r} is a {type(report).__name__}, not a Report; "
                        "pass what gradest.diagnostics.compare(...) returns.")
    if not isinstance(path, (str, Path)) or not str(path):
        raise TypeError(f"{where}: path={path!r} must be a file name such as 'compare.png'.")
    return Path(path)


def colours(report: Report) -> dict[str, str]:
    """One colour per estimator label, in order of first appearance (the same in every panel)."""
    labels = list(dict.fromkeys(r.estimator for r in report.rows))
    return {e: PALETTE[i % len(PALETTE)] for i, e in enumerate(labels)}


def _na_lines(rows: list[Row], width: int) -> list[str]:
    """"could not run:" lines, estimators that share a reason on one line."""
    by_reason: dict[str, list[str]] = {}
    for r in rows:
        by_reason.setdefault(r.short_reason or r.error, []).append(r.estimator)
    lines = []
    for reason, names in by_reason.items():
        lines += textwrap.wrap(f"✗ {', '.join(names)}: {reason}", width, subsequent_indent="   ")
    return lines


BAR = 0.40  # inches per bar
LINE = 0.24  # inches per line of the "could not run" list
TITLE = 0.45  # inches above each panel
TICKS = 0.45  # inches under each panel's axes (tick labels)
NA_WIDTH = 72  # characters per line of that list


def _decision(ax: Any, rows: list[Row], pick: str | None, colour: dict[str, str], problem: str) -> None:
    ran = sorted((r for r in rows if r.status == "ok"), key=lambda r: (r.work_normalised_variance, r.seconds))
    positive = [r.work_normalised_variance for r in ran if r.work_normalised_variance > 0]
    low = math.log10(min(positive)) - 1 if positive else -9.0
    high = math.log10(max(positive)) if positive else low + 2
    lo, top = 10**low, 10 ** (high + 0.75 * (high - low) + 0.5)  # room on the right for the labels
    ys = list(range(len(ran)))[::-1]  # best on top
    for y, r in zip(ys, ran):
        value, verdict, chosen = r.work_normalised_variance, r.verdict, r.estimator == pick
        biased = verdict in ("biased", "biased by design")
        end = value if value > 0 else lo * 1.0001
        ax.barh(y, end - lo, left=lo, height=0.7, color=colour[r.estimator], alpha=0.45 if biased else 1.0,
                hatch="///" if biased else None, edgecolor="black" if chosen else colour[r.estimator],
                linewidth=2.0 if chosen else 0.5)
        note = "0: zero variance" if value == 0 else f"{value:.2g}"
        if verdict == "biased":
            note += f"  biased ({r.bias_z:.0f} SE)"
        elif verdict == "biased by design":
            note += "  biased by design"
        elif value == 0:
            note += ", exact"
        if chosen:
            note = "★ " + note + "  ← use this"
        if value == 0:  # no bar to see: a marker at the axis' left end
            ax.plot([lo * 1.08], [y], "D", color=colour[r.estimator], ms=8, mec="black" if chosen else "none")
        ax.text(end * 1.25 if value > 0 else lo * 1.5, y, note, va="center", fontsize=FONT - 1,
                fontweight="bold" if chosen else "normal")
    ax.set_xscale("log")
    ax.set_xlim(lo, top)
    ax.set_yticks(ys, [("★ " if r.estimator == pick else "") + r.estimator for r in ran], fontsize=FONT)
    for tick, r in zip(ax.get_yticklabels(), ran):
        if r.estimator == pick:
            tick.set_fontweight("bold")
    ax.set_ylim(-0.6, max(len(ran), 1) - 0.4)
    ax.tick_params(axis="x", labelsize=FONT - 2)
    ref = rows[0].reference if rows else ""
    ax.set_title(f"{problem}  ({'exact gradient' if ref == 'exact' else 'bias against a reference'})",
                 fontsize=FONT + 1, loc="left", fontweight="bold")
    if not ran:
        ax.text(0.5, 0.5, "no estimator ran", transform=ax.transAxes, ha="center", fontsize=FONT)


def plot_report(report: Report, path: str | Path) -> Path:
    """Write the decision figure: one panel per problem of the report's comparison rows.

    Each panel ranks the estimators that ran by variance × seconds per estimate (log scale, lower
    is better, the best on top), marks the recommended one (★, bold, outlined), hatches and labels
    the biased ones (measured, or biased by design), and lists under the axes the estimators that
    could not run, with the reason. Each estimator keeps its colour in every panel.

    Args:
        report: a Report with comparison rows (from :func:`~gradest.diagnostics.compare`).
        path: the PNG to write.

    Returns:
        The path written.

    Raises:
        TypeError: report is not a Report.
        ValueError: the report has no comparison rows.
        ImportError: matplotlib is not installed (``pip install 'gradest[cli]'``).

    Example:
        >>> import pathlib, tempfile
        >>> from gradest.diagnostics import compare
        >>> from gradest.diagnostics.plots import plot_report
        >>> report = compare(["gaussian-square", "bernoulli-0.499"], "pathwise,score,disarm", trials=200,
        ...                  timing_repeats=1)
        >>> path = plot_report(report, pathlib.Path(tempfile.mkdtemp()) / "compare.png")
        >>> path.read_bytes()[:4]
        b'\x89PNG'
    """
    path = _check("plot_report", report, path)
    fig = decision_figure(report)
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path


def decision_figure(report: Report) -> Any:
    """The matplotlib Figure that :func:`plot_report` writes (for a notebook, or to restyle).

    Example:
        >>> from gradest.diagnostics import compare
        >>> from gradest.diagnostics.plots import decision_figure
        >>> fig = decision_figure(compare("bernoulli-0.499", "score,pathwise", trials=200, timing_repeats=1))
        >>> [t.get_text().splitlines()[1] for t in fig.texts if t.get_text().startswith("could not run")]
        ['✗ pathwise: Bernoulli has no rsample']
    """
    if not isinstance(report, Report):
        raise TypeError(f"decision_figure: report={report!r} is a {type(report).__name__}, not a Report.")
    rows = [r for r in report.rows if r.kind == "compare"]
    if not rows:
        raise ValueError("plot_report: the report has no comparison rows (only sweeps); use plot_sweeps.")
    plt = _pyplot()
    problems = list(dict.fromkeys(r.problem for r in rows))
    picks = {p.problem: p.estimator for p in recommend(report)}
    colour = colours(report)
    cols = 1 if len(problems) == 1 else 2
    grid = [problems[i:i + cols] for i in range(0, len(problems), cols)]
    mine = {p: [r for r in rows if r.problem == p] for p in problems}
    na = {p: _na_lines([r for r in mine[p] if r.status != "ok"], NA_WIDTH) for p in problems}
    bars = {p: BAR * max(1, sum(r.status == "ok" for r in mine[p])) for p in problems}
    heights = [max(TITLE + bars[p] + TICKS + LINE * (len(na[p]) + 1) for p in line) + 0.25 for line in grid]
    cell = 7.0  # inches per column: estimator names, then the axes
    width, head = cell * cols, 0.8
    total = sum(heights) + head
    fig = plt.figure(figsize=(width, total))
    left, panel = 2.2, cell - 2.2 - 0.25
    y = total - head
    for line, h in zip(grid, heights):
        for j, p in enumerate(line):
            bottom = y - TITLE - bars[p]
            ax = fig.add_axes(((j * cell + left) / width, bottom / total, panel / width, bars[p] / total))
            _decision(ax, mine[p], picks.get(p), colour, p)
            if na[p]:
                fig.text((j * cell + 0.1) / width, (bottom - TICKS) / total, "could not run:\n" + "\n".join(na[p]),
                         va="top", fontsize=FONT - 1, color="#444444", linespacing=1.2)
        y -= h
    fig.suptitle("Which estimator? Variance × seconds per estimate (lower is better)\n"
                 "★ recommended: unbiased and cheapest.   Hatched: biased.",
                 fontsize=FONT + 3, x=0.01, y=1 - 0.08 / total, ha="left", va="top")
    return fig


def _samples(ax: Any, rows: list[Row], colour: dict[str, str]) -> None:
    for e in dict.fromkeys(r.estimator for r in rows):
        pts = sorted((r.setting["n"], r.variance) for r in rows if r.estimator == e and r.variance > 0)
        if not pts:
            continue
        ns, vs = zip(*pts)
        ax.plot(ns, vs, "o-", label=e, color=colour[e])
        ax.plot(ns, [vs[0] * ns[0] / n for n in ns], ":", color=colour[e], alpha=0.6)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("samples n", fontsize=FONT)
    ax.set_ylabel("variance", fontsize=FONT)
    ax.set_title(f"Variance against n on {rows[0].problem} (dotted: ∝ 1/n)", fontsize=FONT)
    ax.legend(fontsize=FONT - 1)


def _bias_variance(ax: Any, rows: list[Row], key: str, xlabel: str, title: str) -> None:
    rows = sorted(rows, key=lambda r: r.setting[key])
    xs = [r.setting[key] for r in rows]
    # (bias)² less its noise floor: an unbiased estimate of the squared bias; hollow where not significant
    bias2 = [(r.bias or 0.0) ** 2 - sum(v * v for v in r.bias_se) for r in rows]
    ax.plot(xs, [r.variance for r in rows], "s-", label="variance", color=PALETTE[0])
    kept = [(x, b, r) for x, b, r in zip(xs, bias2, rows) if b > 0]  # below the noise floor: not drawn
    ax.plot([x for x, _, _ in kept], [b for _, b, _ in kept], "-", label="bias² (noise floor removed)",
            color=PALETTE[3])
    for x, b, r in kept:
        ax.plot([x], [b], "o", color=PALETTE[3], fillstyle="full" if r.verdict == "biased" else "none", ms=8)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel, fontsize=FONT)
    ax.set_title(title + "\n(bias²: filled if significant, hollow if within noise)", fontsize=FONT)
    ax.legend(fontsize=FONT - 1)


def plot_sweeps(report: Report, path: str | Path) -> Path:
    """Write the sweeps figure: one panel per sweep in the report.

    Panels: variance against n on log–log axes with the 1/n slope; bias² and variance against the
    Gumbel-Softmax temperature; and against GAE's λ.

    Raises:
        TypeError: report is not a Report.
        ValueError: the report has no sweep rows.
        ImportError: matplotlib is not installed (``pip install 'gradest[cli]'``).

    Example:
        >>> import pathlib, tempfile
        >>> from gradest.diagnostics import sweep_gae_lambda
        >>> from gradest.diagnostics.plots import plot_sweeps
        >>> report = sweep_gae_lambda((0.0, 0.9, 1.0), trials=2000)
        >>> path = plot_sweeps(report, pathlib.Path(tempfile.mkdtemp()) / "s.png")
        >>> path.suffix
        '.png'
    """
    path = _check("plot_sweeps", report, path)
    kinds = {k: [r for r in report.rows if r.kind == k and r.status == "ok"] for k in ("n", "temperature", "lambda")}
    kinds = {k: v for k, v in kinds.items() if v}
    if not kinds:
        raise ValueError("plot_sweeps: the report has no measured sweep rows; run sweep_samples, "
                         "sweep_temperature or sweep_gae_lambda (gradest compare --sweeps).")
    plt = _pyplot()
    colour = colours(report)
    cols = min(2, len(kinds))
    lines = (len(kinds) + cols - 1) // cols
    fig, axes = plt.subplots(lines, cols, figsize=(7.0 * cols, 5.0 * lines), squeeze=False)
    for ax in list(axes.flat)[len(kinds):]:
        ax.set_visible(False)
    for ax, (kind, rows) in zip(axes.flat, kinds.items()):
        if kind == "n":
            _samples(ax, rows, colour)
        elif kind == "temperature":
            ax.set_xscale("log")
            _bias_variance(ax, rows, "temperature", "temperature",
                           f"Gumbel-Softmax on {rows[0].problem}:\nbias² falls, variance grows")
        else:
            _bias_variance(ax, rows, "lambda", "GAE λ", f"GAE on {rows[0].problem}:\nthe λ trade-off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
