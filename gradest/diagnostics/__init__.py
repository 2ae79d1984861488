"""Diagnostics: measure which estimator wins on a problem, and recommend one.

:func:`compare` runs estimators on problems (yours, as a :class:`~gradest.problems.Problem` or an
``(f, dist_builder, params)`` tuple, or the built-in ones) and returns a :class:`Report`;
:func:`recommend` reads it; ``gradest.diagnostics.plots.plot_report`` draws it (matplotlib, in the
``cli`` extra). ``gradest compare`` is the command line.
"""

from gradest.diagnostics.compare import (
    PROBLEM_SUMMARIES,
    PROBLEMS,
    SWEEPS,
    compare,
    run_sweeps,
    sweep_gae_lambda,
    sweep_samples,
    sweep_temperature,
)
from gradest.diagnostics.estimators import ESTIMATORS, Recipe, describe_estimators, parse_estimators
from gradest.diagnostics.recommend import Recommendation, recommend
from gradest.diagnostics.report import FALSE_ALARM, Report, Row

__all__ = [
    "compare", "sweep_samples", "sweep_temperature", "sweep_gae_lambda", "recommend", "Recommendation", "Report", "Row",
    "ESTIMATORS", "PROBLEMS", "PROBLEM_SUMMARIES", "SWEEPS", "run_sweeps", "FALSE_ALARM", "parse_estimators",
    "describe_estimators", "Recipe",
]
