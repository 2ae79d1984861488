"""``Report``: what ``compare`` measured, with one verdict per row, a JSON round trip and tables."""

from __future__ import annotations

import copy
import json
import math
import re
import sys
from dataclasses import asdict, dataclass, field, fields
from typing import IO, Any

from gradest.diagnostics._stats import z_for

__all__ = ["Row", "Report", "FALSE_ALARM", "SCHEMA_VERSION"]

SCHEMA_VERSION = 2
FALSE_ALARM = 1e-3
"""The default chance that any unbiased row of a report is flagged biased (family-wise, over every
coordinate of every row)."""

TITLES = {
    "compare": "gradest compare: bias, variance and cost of gradient estimators",
    "n": "variance against samples n: unbiased estimators fall as 1/n",
    "temperature": "Gumbel-Softmax temperature: bias falls, variance grows",
    "lambda": "GAE λ: one-step TD (λ = 0) inherits the critic's bias, λ = 1 pays in variance",
}


@dataclass
class Row:
    """One (problem, estimator) measurement over ``trials`` independent gradient estimates.

    Attributes:
        problem: the problem's name.
        estimator: the estimator's label (its spec, such as ``rebar:temperature=0.5``).
        n: samples per estimate.
        trials: independent estimates measured.
        mean: per-coordinate mean gradient ``[D]``.
        exact: the exact (or reference) gradient ``[D]``; None when there is none.
        bias: ‖mean − exact‖₂ (None without a reference).
        bias_se: the standard error of each coordinate's mean − exact (the reference's included).
        variance: trace of the covariance of one estimate.
        variance_se: its standard error (per-coordinate SEs from the fourth moment, combined as if
            the coordinates were independent).
        snr: ‖exact‖₂ / √variance.
        seconds: median wall time of one estimate (forward + backward), unbatched.
        status: "ok", or "n/a" when the estimator could not run on the problem.
        reason: why not (the error's message), when ``status == "n/a"``.
        error: the error's type (``NotImplementedError`` for a family the estimator does not support).
        setting: the swept setting of this row ({"n": 8}, {"temperature": 0.5}); empty in comparisons.
        unbiased: the estimator's own claim (its class's ``unbiased``).
        bias_z: the largest |mean − exact| / SE over coordinates (None without a reference).
        biased: whether ``bias_z`` exceeds the report's z (set by the :class:`Report`, see ``Report.z``).
        reference: "exact", how the reference gradient was computed, or why there is none.

    Example:
        >>> from gradest.diagnostics import compare
        >>> row = compare("bernoulli-0.499", "gumbel-softmax", trials=400, timing_repeats=1).rows[0]
        >>> row.unbiased, row.verdict          # biased by its own account, though not measurably here
        (False, 'biased by design')
        >>> len(row.mean) == len(row.exact) == 1 and row.variance > 0
        True
    """

    problem: str
    estimator: str
    n: int
    trials: int
    mean: list[float] = field(default_factory=list)
    exact: list[float] | None = None
    bias: float | None = None
    bias_se: list[float] = field(default_factory=list)
    variance: float = math.nan
    variance_se: float = math.nan
    snr: float = math.nan
    seconds: float = math.nan
    status: str = "ok"
    reason: str = ""
    error: str = ""
    setting: dict[str, float] = field(default_factory=dict)
    unbiased: bool = True
    bias_z: float | None = None
    biased: bool = False
    reference: str = "exact"

    @property
    def work_normalised_variance(self) -> float:
        """variance × time: the variance per unit of compute (lower is better)."""
        return self.variance * self.seconds

    @property
    def kind(self) -> str:
        """``"compare"`` for a comparison row, else the swept setting (``"n"``, ``"temperature"``, ``"lambda"``)."""
        return next(iter(self.setting), "compare")

    @property
    def verdict(self) -> str:
        """The one answer to "is it biased?", which the table, :func:`recommend` and the figure all show.

        ``"n/a"`` (did not run); ``"biased"`` (measured: ``bias_z`` above the report's z, whatever the
        estimator claims); ``"biased by design"`` (the estimator says it is biased, and this run could
        not see it: a linear f, or too few trials); ``"unchecked"`` (no reference to measure against);
        ``"unbiased"`` (claims it, and the measurement agrees).
        """
        if self.status != "ok":
            return "n/a"
        if self.biased:
            return "biased"
        if not self.unbiased:
            return "biased by design"
        return "unchecked" if self.bias_z is None else "unbiased"

    @property
    def short_reason(self) -> str:
        """Why the row is n/a, in a few words for tables and figures (the JSON keeps the whole ``reason``):
        its first clause, without the estimator's name (the row has it) and with each distribution
        named by its family only."""
        text = self.reason.splitlines()[0] if self.reason else ""
        text = _families(text.split("; ")[0])
        head, sep, rest = text.partition(": ")
        if sep and " " not in head:  # "Pathwise: ..." -> "..."
            text = rest
        return text if len(text) <= 70 else text[:69] + "…"


def _families(text: str) -> str:
    """``dist=Independent(OneHotCategorical(batch_shape=(8,), ...), ...)`` -> ``Independent(OneHotCategorical)``."""
    out, i = [], 0
    while (j := text.find("dist=", i)) >= 0:
        out.append(text[i:j])
        k = j + len("dist=")
        names: list[str] = []
        depth, m = 0, k
        while m < len(text):
            word = re.match(r"[A-Za-z_]\w*\(", text[m:])
            if word and (depth == len(names)):
                names.append(word.group(0)[:-1])
                depth += 1
                m += len(word.group(0))
                continue
            if text[m] == "(":
                depth += 1
            elif text[m] == ")":
                depth -= 1
                if depth == 0:
                    m += 1
                    break
            elif depth == 0:
                break
            m += 1
        out.append("(".join(names) + ")" * (len(names) - 1) if names else "")
        i = m
    out.append(text[i:])
    return "".join(out)


_ROW_FIELDS = {f.name for f in fields(Row)}


@dataclass
class Report:
    """Rows of ``compare`` and the sweeps, and the settings they ran with.

    The ``biased`` flag of every row is set here, for the report as a whole: z is the normal
    quantile that keeps the chance of any false flag among all the report's coordinates at
    ``settings["false_alarm"]`` (Bonferroni). ``report + other`` tests every row again at the
    combined rate; the table, :func:`~gradest.diagnostics.recommend`, the JSON and the figure read
    the same flags (through ``Row.verdict``).

    Attributes:
        rows: the measurements.
        settings: n, trials, seed, torch's version, the false-alarm rate.

    Example:
        >>> from gradest.diagnostics import Report, compare
        >>> report = compare(["gaussian-square", "bernoulli-0.499"], "pathwise,score", trials=200, timing_repeats=1)
        >>> report.tests, round(report.z, 2)     # 3 rows ran, 2 + 2 + 1 coordinates, tested at 1e-3 together
        (5, 3.72)
        >>> [r.verdict for r in report.rows]
        ['unbiased', 'unbiased', 'n/a', 'unbiased']
        >>> Report.from_json(report.to_json()).to_json() == report.to_json()
        True
        >>> print(report.render().splitlines()[1][:35])   # also report.print(), with rich
        problem          estimator  n  bias
    """

    rows: list[Row]
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.rows, list) or not all(isinstance(r, Row) for r in self.rows):
            raise TypeError(f"Report: rows must be a list of Row, got {type(self.rows).__name__}.")
        alpha = self.settings.setdefault("false_alarm", FALSE_ALARM)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
            raise ValueError(f"Report: settings['false_alarm']={alpha!r} must lie in (0, 1).")
        for r in self.rows:
            r.biased = r.status == "ok" and r.bias_z is not None and r.bias_z > self.z

    @property
    def tests(self) -> int:
        """How many coordinates are tested for bias in the whole report."""
        return sum(len(r.exact) for r in self.rows if r.status == "ok" and r.bias_z is not None and r.exact)

    @property
    def z(self) -> float:
        """The bias threshold: |mean − exact| / SE above it is flagged (family-wise over ``tests``)."""
        return z_for(float(self.settings["false_alarm"]), self.tests)

    def __add__(self, other: Report) -> Report:
        if not isinstance(other, Report):
            return NotImplemented
        rows = [copy.copy(r) for r in self.rows + other.rows]  # the flags are the new report's own
        return Report(rows, {**other.settings, **self.settings})  # the first report's settings win

    def kinds(self) -> list[str]:
        """The kinds of rows present, in order: ``"compare"``, ``"n"``, ``"temperature"``, ``"lambda"``."""
        return list(dict.fromkeys(r.kind for r in self.rows))

    # ---- JSON ---------------------------------------------------------------------------------------

    def to_json(self) -> str:
        """The report as JSON (``version``, ``settings``, ``rows`` with every field, and each row's ``verdict``)."""
        return json.dumps({"version": SCHEMA_VERSION, "settings": self.settings,
                           "rows": [{**asdict(r), "verdict": r.verdict} for r in self.rows]}, indent=2, allow_nan=True)

    @classmethod
    def from_json(cls, text: str) -> Report:
        """Read :meth:`to_json`'s output back.

        Raises:
            ValueError: not JSON, another schema version, or rows with unknown fields.
        """
        try:
            data = json.loads(text)
        except (TypeError, json.JSONDecodeError) as e:
            raise ValueError(f"Report.from_json: text is not JSON ({e}); pass what Report.to_json() wrote.") from None
        if not isinstance(data, dict):
            raise ValueError(f"Report.from_json: expected a JSON object, got {type(data).__name__}.")
        if data.get("version") != SCHEMA_VERSION:
            raise ValueError(f"Report.from_json: version={data.get('version')!r}, expected {SCHEMA_VERSION}; "
                             "rerun gradest compare with this version.")
        rows = []
        for i, r in enumerate(data.get("rows", [])):
            r = {k: v for k, v in r.items() if k != "verdict"}
            unknown = set(r) - _ROW_FIELDS
            if unknown:
                raise ValueError(f"Report.from_json: rows[{i}] has unknown fields {sorted(unknown)}.")
            rows.append(Row(**r))
        return cls(rows, data.get("settings", {}))

    # ---- tables -------------------------------------------------------------------------------------

    def table(self, kind: str = "compare") -> list[list[str]]:
        """Header and rows of one kind, as strings.

        Columns: problem, estimator, [the swept setting], n, bias, variance, SNR, time/est,
        var×time, and a note: ``★ recommended``, the verdict (``biased, z=…``), or ``n/a:`` and the
        reason. Within each problem, estimators that could not run come last.
        """
        if kind not in self.kinds():
            raise ValueError(f"Report.table: kind={kind!r} is not in this report; it has {self.kinds()}.")
        rows = [r for r in self.rows if r.kind == kind]
        problems = list(dict.fromkeys(r.problem for r in rows))
        picks = set()
        if kind == "compare":  # the estimator recommend() picks for each problem
            for p in problems:
                unbiased, _ = ranked([r for r in rows if r.problem == p])
                if unbiased:
                    picks.add((p, unbiased[0].estimator))
        rows = [r for p in problems for ok in (True, False)
                for r in rows if r.problem == p and (r.status == "ok") == ok]
        key = [] if kind == "compare" else [kind]
        out = [["problem", "estimator", *[k for k in key if k != "n"], "n", "bias", "variance", "SNR", "time/est",
                "var×time", "note"]]
        for r in rows:
            setting = [f"{r.setting[k]:g}" for k in key if k != "n"]
            if r.status != "ok":
                out.append([r.problem, r.estimator, *setting, str(r.n), *["—"] * 5, f"n/a: {r.short_reason}"])
                continue
            out.append([
                r.problem, r.estimator, *setting, str(r.n), _bias_cell(r), f"{r.variance:.3g}", f"{r.snr:.3g}",
                _seconds(r.seconds), f"{r.work_normalised_variance:.3g}", _note(r, (r.problem, r.estimator) in picks),
            ])
        return out

    def caption(self) -> str:
        return (f"bias: ‖mean − exact‖; * significant: some coordinate off by more than z = {self.z:.2f} SE, which "
                f"keeps the chance of any false flag in this report at {self.settings['false_alarm']:g} "
                f"({self.tests} coordinates); ≈0 within noise (±SE)")

    def render(self, kind: str | None = None) -> str:
        """Plain-text tables (every kind, or one), with their titles and the caption."""
        parts = []
        for k in [kind] if kind else self.kinds():
            cells = self.table(k)
            widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
            lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
            lines.insert(1, "  ".join("-" * w for w in widths))
            parts.append(TITLES.get(k, k) + "\n" + "\n".join(lines))
        return "\n\n".join(parts) + "\n" + self.caption()

    def print(self, kind: str | None = None, *, file: IO[str] | None = None) -> None:
        """Print the tables (every kind, or one) with rich when it is installed, else as plain text."""
        file = file or sys.stdout
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:  # the cli extra is not installed
            print(self.render(kind), file=file)
            return
        for k in [kind] if kind else self.kinds():
            cells = self.table(k)
            widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
            t = Table(title=TITLES.get(k, k))
            for i, h in enumerate(cells[0]):
                last = i == len(cells[0]) - 1
                t.add_column(h, justify="left" if i < 2 or last else "right", no_wrap=not last,
                             min_width=None if last else widths[i], overflow="fold")
            for row in cells[1:]:
                t.add_row(*row)
            console = Console(file=file)
            # never truncate names or numbers; the note column wraps at 60 characters
            console.width = max(console.width, sum(widths[:-1]) + min(widths[-1], 60) + 3 * len(widths) + 1)
            console.print(t)
        Console(file=file, width=max(len(self.caption()), 80)).print(self.caption(), style="dim")


def ranked(rows: list[Row]) -> tuple[list[Row], list[Row]]:
    """The rows that ran, split by verdict into unbiased (``unbiased``, ``unchecked``) and biased
    (``biased``, ``biased by design``), each ordered by variance × time, then time: the order
    :func:`~gradest.diagnostics.recommend` picks from (the table's ★ is the first unbiased row)."""
    ran = [r for r in rows if r.status == "ok"]
    key = lambda r: (r.work_normalised_variance, r.seconds)  # noqa: E731
    return (sorted((r for r in ran if r.verdict in ("unbiased", "unchecked")), key=key),
            sorted((r for r in ran if r.verdict in ("biased", "biased by design")), key=key))


def _bias_cell(r: Row) -> str:
    if r.bias is None:
        return "—"
    if r.biased:
        return f"{r.bias:.2g}*"
    return f"≈0 (±{(sum(v * v for v in r.bias_se) ** 0.5):.1g})" if r.bias_se else "≈0"


def _seconds(s: float) -> str:
    return f"{s * 1e6:.0f} µs" if s < 0.1 else f"{s:.3g} s"


def _note(r: Row, recommended: bool) -> str:
    verdict = r.verdict
    if recommended:
        return "★ recommended" + (f"; bias not measured ({r.reference})" if verdict == "unchecked" else "")
    if verdict == "biased":
        return f"biased, z={r.bias_z:.1f}" + ("" if not r.unbiased else " (claims unbiased: check f and the reference)")
    if verdict == "biased by design":
        return "biased by design (not detected here)"
    if verdict == "unchecked":
        return f"bias not measured ({r.reference})"
    return ""
