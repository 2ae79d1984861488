"""Problems to measure estimators on: yours (:class:`Problem`, :func:`load_problem`) and the built-in ones,
with exact answers (closed form, quadrature or enumeration) or a reference."""

from gradest.problems.base import CustomProblem, Problem, gradient_draws
from gradest.problems.digits_vae import DigitsVAE
from gradest.problems.discrete import BernoulliTable, BernoulliToy, CategoricalTable
from gradest.problems.gaussian import COSTS, Gaussian
from gradest.problems.loading import as_problem, load_problem
from gradest.problems.logistic import LogisticRegression

__all__ = [
    "Problem", "CustomProblem", "gradient_draws", "Gaussian", "COSTS", "BernoulliToy", "CategoricalTable",
    "BernoulliTable", "LogisticRegression", "DigitsVAE", "load_problem", "as_problem",
]
