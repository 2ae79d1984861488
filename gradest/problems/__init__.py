"""Built-in problems with exact answers (closed form, quadrature or enumeration)."""

from gradest.problems.base import Problem, gradient_draws
from gradest.problems.discrete import BernoulliTable, BernoulliToy, CategoricalTable
from gradest.problems.gaussian import COSTS, Gaussian

__all__ = ["Problem", "gradient_draws", "Gaussian", "COSTS", "BernoulliToy", "CategoricalTable", "BernoulliTable"]
