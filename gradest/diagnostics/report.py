"""``Report``: what ``compare`` measured, with a JSON round trip and a terminal table."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Row", "Report"]

SCHEMA_VERSION = 1


@dataclass
class Row:
    """One (problem, estimator) measurement over ``trials`` independent gradient estimates.

    Attributes:
        problem, estimator: names.
        n: samples per estimate.
        trials: independent estimates measured.
        mean: per-parameter mean gradient.
        exact: per-parameter exact gradient (None when unknown).
        bias: ‖mean − exact‖₂ (None when exact is unknown).
        bias_se: the standard error of each mean coordinate, so a bias can be judged against noise.
        variance: trace of the covariance of one estimate.
        variance_se: its standard error (per-coordinate SEs from the fourth moment, combined as if
            the coordinates were independent).
        snr: ‖exact‖₂ / √variance.
        seconds: median wall time of one estimate (forward + backward), unbatched.
        status: "ok", or "n/a" when the estimator does not apply to the problem's family.
        reason: why it does not apply (the estimator's own error message).
        setting: the swept setting of this row ({"n": 8}, {"temperature": 0.5}); empty in comparisons.
        unbiased: the estimator's own claim (``type(estimator).unbiased``).
        bias_z: the largest |mean − exact| / SE over coordinates.
        biased: whether bias_z exceeds z at the report's family-wise false-alarm rate.
        reference: "exact", or how the reference gradient was computed.
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
    setting: dict[str, float] = field(default_factory=dict)
    unbiased: bool = True
    bias_z: float | None = None
    biased: bool = False
    reference: str = "exact"

    @property
    def work_normalised_variance(self) -> float:
        """variance × time: the variance per unit of compute (lower is better)."""
        return self.variance * self.seconds


@dataclass
class Report:
    rows: list[Row]
    settings: dict[str, Any] = field(default_factory=dict)

    def __add__(self, other: Report) -> Report:
        return Report(self.rows + other.rows, {**self.settings, **other.settings})

    def to_json(self) -> str:
        return json.dumps({"version": SCHEMA_VERSION, "settings": self.settings,
                           "rows": [asdict(r) for r in self.rows]}, indent=2, allow_nan=True)

    @classmethod
    def from_json(cls, text: str) -> Report:
        data = json.loads(text)
        if data.get("version") != SCHEMA_VERSION:
            raise ValueError(f"Report.from_json: version={data.get('version')!r}, expected {SCHEMA_VERSION}.")
        return cls([Row(**r) for r in data["rows"]], data.get("settings", {}))

    def table(self) -> list[list[str]]:
        """Header and rows as strings: problem, estimator, [setting], n, bias, variance, SNR, time, var×time.

        Estimators that do not apply to a problem are left out (their reason is in the JSON). A bias
        marked ``*`` is significant at the report's false-alarm rate; ``≈0`` means within noise.
        """
        keys = sorted({k for r in self.rows for k in r.setting} - {"n"})  # n has its own column
        out = [["problem", "estimator", *keys, "n", "bias", "variance", "SNR", "time/est", "var×time"]]
        for r in self.rows:
            if r.status != "ok":
                continue
            if r.bias is None:
                bias = "—"
            elif r.biased:
                bias = f"{r.bias:.2g}*"
            else:
                bias = f"≈0 (±{(sum(v * v for v in r.bias_se) ** 0.5):.1g})" if r.bias_se else "≈0"
            out.append([
                r.problem, r.estimator, *[f"{r.setting[k]:g}" if k in r.setting else "" for k in keys], str(r.n),
                bias, f"{r.variance:.3g}", f"{r.snr:.3g}", f"{r.seconds * 1e6:.0f} µs",
                f"{r.work_normalised_variance:.3g}",
            ])
        return out

    def render(self) -> str:
        """A plain-text table (used when rich is not installed, and by tests)."""
        cells = self.table()
        widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def print(self, title: str = "gradest compare: bias, variance and cost of gradient estimators") -> None:
        """Print with rich when available, else as plain text."""
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:  # the cli extra is not installed
            print(self.render())
            return
        cells = self.table()
        widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
        t = Table(title=title, caption="bias: ‖mean − exact‖; * significant, ≈0 within noise (±SE)")
        for i, h in enumerate(cells[0]):
            t.add_column(h, justify="left" if i < 2 else "right", no_wrap=True, min_width=widths[i])
        for row in cells[1:]:
            t.add_row(*row)
        console = Console()
        console.width = max(console.width, sum(widths) + 3 * len(widths) + 1)  # never truncate names
        console.print(t)
