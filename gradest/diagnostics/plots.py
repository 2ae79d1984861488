"""Matplotlib figures from a Report (imported lazily: matplotlib is in the ``cli`` extra)."""

from __future__ import annotations

from pathlib import Path

from gradest.diagnostics.report import Report, Row

__all__ = ["plot_report"]


def _ok(rows: list[Row]) -> list[Row]:
    return [r for r in rows if r.status == "ok"]


def _bars(ax, rows: list[Row]) -> None:  # noqa: ANN001
    problems = list(dict.fromkeys(r.problem for r in rows))
    estimators = list(dict.fromkeys(r.estimator for r in rows))
    colors = matplotlib_colors(len(estimators))
    width = 0.8 / max(1, len(estimators))
    for j, e in enumerate(estimators):
        xs, ys = [], []
        for i, p in enumerate(problems):
            match = [r for r in rows if r.problem == p and r.estimator == e]
            if match and match[0].variance > 0:
                xs.append(i + (j - (len(estimators) - 1) / 2) * width)
                ys.append(match[0].variance / max(r.variance for r in rows if r.problem == p))
        ax.bar(xs, ys, width, label=e, color=colors[j], hatch="//" if any(
            not r.unbiased for r in rows if r.estimator == e) else None)
    ax.set_yscale("log")
    ax.set_xticks(range(len(problems)), problems, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("variance / worst on the problem")
    ax.set_title("Variance per estimator (hatched: biased; zero-variance rules not drawn)", fontsize=10)
    ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.32), frameon=False)


def matplotlib_colors(k: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["tab20" if k > 10 else "tab10"]
    return [cmap(i) for i in range(k)]


def _samples(ax, rows: list[Row]) -> None:  # noqa: ANN001
    for e in dict.fromkeys(r.estimator for r in rows):
        pts = sorted((r.n, r.variance) for r in rows if r.estimator == e and r.variance > 0)
        if not pts:
            continue
        ns, vs = zip(*pts)
        line = ax.plot(ns, vs, "o-", label=e)[0]
        ax.plot(ns, [vs[0] * ns[0] / n for n in ns], ":", color=line.get_color(), alpha=0.6)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("samples n")
    ax.set_ylabel("variance")
    ax.set_title(f"Variance against n on {rows[0].problem} (dotted: ∝ 1/n)", fontsize=10)
    ax.legend(fontsize=7)


def _temperature(ax, rows: list[Row]) -> None:  # noqa: ANN001
    rows = sorted(rows, key=lambda r: r.setting["temperature"])
    ts = [r.setting["temperature"] for r in rows]
    noise = [sum(v * v for v in r.bias_se) for r in rows]
    # (bias)² less its noise floor: an unbiased estimate of the squared bias; hollow where not significant
    bias2 = [(r.bias or 0.0) ** 2 - f for r, f in zip(rows, noise)]
    ax.plot(ts, [r.variance for r in rows], "s-", label="variance (n = 1)")
    kept = [(t, b, r) for t, b, r in zip(ts, bias2, rows) if b > 0]  # below the noise floor: not drawn
    line = ax.plot([t for t, _, _ in kept], [b for _, b, _ in kept], "-", label="bias² (noise floor removed)")[0]
    for t, b, r in kept:
        ax.plot([t], [b], "o", color=line.get_color(), fillstyle="full" if r.biased else "none")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("temperature")
    ax.set_title(f"Gumbel-Softmax on {rows[0].problem}: bias² falls, variance grows\n"
                 "(hollow: within noise; missing: below the noise floor)", fontsize=10)
    ax.legend(fontsize=7)


def _lambda(ax, rows: list[Row]) -> None:  # noqa: ANN001
    rows = sorted(rows, key=lambda r: r.setting["lambda"])
    ls = [r.setting["lambda"] for r in rows]
    bias2 = [(r.bias or 0.0) ** 2 - sum(v * v for v in r.bias_se) for r in rows]
    ax.plot(ls, [r.variance for r in rows], "s-", label="variance")
    kept = [(x, b, r) for x, b, r in zip(ls, bias2, rows) if b > 0]
    line = ax.plot([x for x, _, _ in kept], [b for _, b, _ in kept], "-", label="bias² (noise floor removed)")[0]
    for x, b, r in kept:
        ax.plot([x], [b], "o", color=line.get_color(), fillstyle="full" if r.biased else "none")
    ax.set_yscale("log")
    ax.set_xlabel("GAE λ")
    ax.set_title(f"GAE on {rows[0].problem}: the λ trade-off\n(hollow: within noise)", fontsize=10)
    ax.legend(fontsize=7)


def plot_report(report: Report, path: str | Path) -> Path:
    """Write a PNG with one panel per kind of result in ``report``.

    Panels: per-problem variance bars (comparison rows), variance against n on log–log axes with
    the 1/n slope (rows swept over n), bias² and variance against the Gumbel-Softmax temperature
    (rows swept over temperature) and against GAE's λ (rows swept over lambda).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _ok(report.rows)
    kinds = {
        "bars": [r for r in rows if not r.setting],
        "n": [r for r in rows if "n" in r.setting],
        "temperature": [r for r in rows if "temperature" in r.setting],
        "lambda": [r for r in rows if "lambda" in r.setting],
    }
    kinds = {k: v for k, v in kinds.items() if v}
    if not kinds:
        raise ValueError("plot_report: the report has no measured rows to plot.")
    cols = min(2, len(kinds))
    lines = (len(kinds) + cols - 1) // cols
    fig, axes = plt.subplots(lines, cols, figsize=(7.5 * cols, 5.6 * lines), squeeze=False)
    draw = {"bars": _bars, "n": _samples, "temperature": _temperature, "lambda": _lambda}
    for ax, (kind, rs) in zip(axes.flat, kinds.items()):
        draw[kind](ax, rs)
    for ax in list(axes.flat)[len(kinds):]:
        ax.set_visible(False)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


