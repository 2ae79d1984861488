"""Diagnostics: measure which estimator wins on a problem."""

from gradest.diagnostics.compare import ESTIMATORS, PROBLEMS, compare
from gradest.diagnostics.report import Report, Row

__all__ = ["compare", "Report", "Row", "ESTIMATORS", "PROBLEMS"]
