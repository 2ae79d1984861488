"""Gradient estimators: each a rule for building a surrogate (see ``base.py``)."""

from gradest.estimators.arm import ARM, DisARM
from gradest.estimators.base import Draw, Estimator, default_for, register_default
from gradest.estimators.baselines import (
    Baseline,
    Constant,
    ControlVariate,
    Critic,
    LeaveOneOut,
    MovingAverage,
    OptimalConstant,
)
from gradest.estimators.enumerate import Enumerate
from gradest.estimators.measure_valued import MeasureValued
from gradest.estimators.pathwise import ImplicitReparam, Pathwise
from gradest.estimators.rebar_relax import REBAR, RELAX
from gradest.estimators.relaxed import GumbelRao, GumbelSoftmax, StraightThrough
from gradest.estimators.score_function import ScoreFunction
from gradest.estimators.unordered import UnorderedSet

__all__ = [
    "Draw", "Estimator", "default_for", "register_default", "Baseline", "Constant", "ControlVariate", "Critic",
    "LeaveOneOut", "MovingAverage", "OptimalConstant", "Enumerate", "ImplicitReparam", "Pathwise", "ScoreFunction",
    "GumbelSoftmax", "StraightThrough", "GumbelRao", "ARM", "DisARM", "MeasureValued", "REBAR", "RELAX",
    "UnorderedSet",
]
