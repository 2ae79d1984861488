"""gradest: gradients of expectations, ∇θ E_{x∼p_θ}[f(x)], for PyTorch.

Every estimator builds a *surrogate*: a tensor whose value is the Monte Carlo estimate of E[f] and
whose autograd gradient is the estimator. See ``gradest.expectation``.
"""

from gradest import optim, rl
from gradest._validation import is_validation_enabled, set_validation
from gradest.bounds import IWAE, VIMCO, DReG, iwae_bound
from gradest.estimators import (
    ARM,
    REBAR,
    RELAX,
    Baseline,
    Constant,
    ControlVariate,
    Critic,
    DisARM,
    Draw,
    Enumerate,
    Estimator,
    GumbelRao,
    GumbelSoftmax,
    ImplicitReparam,
    LeaveOneOut,
    MeasureValued,
    MovingAverage,
    OptimalConstant,
    Pathwise,
    ScoreFunction,
    StraightThrough,
    UnorderedSet,
    register_default,
)
from gradest.expect import expectation
from gradest.graph import Graph
from gradest.surrogate import magic_box, straight_through

__version__ = "0.1.0"

__all__ = [
    "rl",
    "optim",
    "expectation",
    "Graph",
    "magic_box",
    "straight_through",
    "set_validation",
    "is_validation_enabled",
    "Estimator",
    "Draw",
    "register_default",
    "Pathwise",
    "ImplicitReparam",
    "ScoreFunction",
    "Enumerate",
    "Baseline",
    "Constant",
    "MovingAverage",
    "LeaveOneOut",
    "OptimalConstant",
    "Critic",
    "ControlVariate",
    "GumbelSoftmax",
    "StraightThrough",
    "GumbelRao",
    "ARM",
    "DisARM",
    "MeasureValued",
    "REBAR",
    "RELAX",
    "UnorderedSet",
    "iwae_bound",
    "IWAE",
    "VIMCO",
    "DReG",
]
