"""Public test helpers: statistics with tolerances from a false-alarm rate, fakes, and ``surrogate``
(an estimator's one-node surrogate from a draw in hand, for checking a rule by hand)."""

from gradest.expect import surrogate
from gradest.testing.fakes import (
    NonreparameterizedExponential,
    NonreparameterizedLaplace,
    NonreparameterizedNormal,
    SelfInclusiveMean,
)
from gradest.testing.stats import assert_unbiased, assert_variance, sample_variance_se, z_for

__all__ = [
    "assert_unbiased", "assert_variance", "sample_variance_se", "z_for",
    "NonreparameterizedNormal", "NonreparameterizedLaplace", "NonreparameterizedExponential",
    "SelfInclusiveMean", "surrogate",
]
