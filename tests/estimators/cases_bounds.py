"""Registry cases for the multi-sample estimators: none, on purpose (see cases.py for the Case contract).

``IWAE``, ``VIMCO`` and ``DReG`` estimate the gradient of the multi-sample bound
E[log (1/K) Σ_i p(x, z_i)/q(z_i)], which is not E[f] for a per-sample f, so they cannot run on the
registry's problems (``gradient_draws`` calls ``expectation``). They are not ``Estimator`` subclasses,
so the registry's guard does not ask for them; ``tests/test_bounds.py`` tests them against exact
references (enumeration of all K-tuples; Gauss–Hermite quadrature) and has its own guard over the
public ``MultisampleEstimator`` subclasses.
"""

from __future__ import annotations

CASES: list = []
