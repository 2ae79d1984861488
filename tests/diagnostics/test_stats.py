"""``z_for`` and ``sample_variance_se``: one definition (in ``gradest.diagnostics._stats``), which
``gradest.testing`` re-exports; the quantile refuses a rate outside (0, 1) and counts no test as one."""

from __future__ import annotations

import pytest

import gradest.testing
from gradest.diagnostics import _stats


def test_testing_reexports_the_one_definition() -> None:
    assert gradest.testing.z_for is _stats.z_for
    assert gradest.testing.sample_variance_se is _stats.sample_variance_se


@pytest.mark.parametrize("false_alarm", [0.0, 1.0, -0.1, float("nan")])
def test_z_for_refuses_a_rate_outside_the_unit_interval(false_alarm: float) -> None:
    with pytest.raises(ValueError, match=f"z_for: false_alarm={false_alarm} must lie in"):
        _stats.z_for(false_alarm, 3)


def test_z_for_is_the_bonferroni_normal_quantile() -> None:
    assert _stats.z_for(1e-6, 1) == pytest.approx(4.891638, abs=1e-6)  # Φ⁻¹(1 − 5e-7)
    assert _stats.z_for(1e-3, 10) == pytest.approx(_stats.z_for(1e-4, 1), rel=1e-12)
    assert _stats.z_for(1e-3, 0) == _stats.z_for(1e-3, 1)  # an empty report is tested as one coordinate
