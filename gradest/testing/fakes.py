"""Distributions with their reparameterisation hidden, to force score-function or implicit paths.

The same model, the same densities and CDFs, but ``has_rsample = False`` and ``rsample`` raises, as
in Pyro's testing fakes. Useful to test ``ImplicitReparam`` and default-estimator selection.
"""

from __future__ import annotations

import torch
from torch.distributions import Exponential, Laplace, Normal

__all__ = ["NonreparameterizedNormal", "NonreparameterizedLaplace", "NonreparameterizedExponential"]


def _hide_rsample(cls: type) -> type:
    def rsample(self, sample_shape=torch.Size()):  # noqa: ANN001, ANN202
        raise NotImplementedError(f"{type(self).__name__} hides rsample on purpose (a testing fake).")

    def sample(self, sample_shape=torch.Size()):  # noqa: ANN001, ANN202
        with torch.no_grad():
            return cls.rsample(self, sample_shape)

    name = f"Nonreparameterized{cls.__name__}"
    return type(name, (cls,), {"has_rsample": False, "rsample": rsample, "sample": sample, "__module__": __name__})


NonreparameterizedNormal = _hide_rsample(Normal)
NonreparameterizedLaplace = _hide_rsample(Laplace)
NonreparameterizedExponential = _hide_rsample(Exponential)
