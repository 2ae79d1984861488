"""Built-in problems with exact answers (closed form, quadrature or enumeration)."""

from gradest.problems.base import CustomProblem, Problem, gradient_draws
from gradest.problems.digits_vae import DigitsVAE
from gradest.problems.discrete import BernoulliTable, BernoulliToy, CategoricalTable
from gradest.problems.gaussian import COSTS, Gaussian
from gradest.problems.logistic import LogisticRegression

__all__ = [
    "Problem", "CustomProblem", "gradient_draws", "Gaussian", "COSTS", "BernoulliToy", "CategoricalTable",
    "BernoulliTable", "LogisticRegression", "DigitsVAE",
]
