"""Diagnostics: measure which estimator wins on a problem, and recommend one."""

from gradest.diagnostics.compare import (
    ESTIMATORS,
    PROBLEMS,
    compare,
    sweep_gae_lambda,
    sweep_samples,
    sweep_temperature,
)
from gradest.diagnostics.recommend import Recommendation, recommend
from gradest.diagnostics.report import Report, Row

__all__ = [
    "compare", "sweep_samples", "sweep_temperature", "sweep_gae_lambda", "recommend", "Recommendation", "Report", "Row",
    "ESTIMATORS", "PROBLEMS",
]
