"""Estimators by name, with options: the grammar of ``gradest compare --estimators``.

A spec is ``NAME`` or ``NAME:KEY=VALUE[:KEY=VALUE...]``, and a list joins specs with commas::

    disarm,rebar:temperature=0.5,score:baseline=leave-one-out,gumbel-softmax:temperature=0.1:hard=true

Names are matched without regard to case, ``-`` or ``_``, and the class names work too
(``DisARM``, ``GumbelSoftmax``). ``gradest estimators`` lists every name with its options and defaults.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, Distribution, Independent

from gradest.estimators import (
    ARM,
    REBAR,
    RELAX,
    Baseline,
    Constant,
    DisARM,
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
)
from gradest.problems import Problem

__all__ = ["ESTIMATORS", "Recipe", "parse_estimators", "describe_estimators"]


@dataclass(frozen=True)
class _Option:
    kind: Any  # float, int, bool, or a tuple of choices
    default: Any
    help: str


@dataclass(frozen=True)
class _Entry:
    summary: str
    build: Callable[..., Estimator]  # build(problem, **options)
    options: dict[str, _Option] = field(default_factory=dict)


BASELINES = ("none", "moving-average", "leave-one-out", "optimal-constant", "constant")
_BASELINE_ALIASES = {"loo": "leave-one-out", "rloo": "leave-one-out", "average": "moving-average",
                     "optimal": "optimal-constant"}


def _baseline(kind: str, decay: float, b: float) -> Baseline | None:
    if kind == "none":
        return None
    if kind == "moving-average":
        return MovingAverage(decay)
    if kind == "leave-one-out":
        return LeaveOneOut()
    if kind == "optimal-constant":
        return OptimalConstant(decay=decay)
    return Constant(b)


def _score(fixed: str | None) -> _Entry:
    decay = _Option(float, 0.9, "decay of the moving-average and optimal-constant baselines")
    if fixed is None:
        options = {"baseline": _Option(BASELINES, "none", "the baseline subtracted from f"), "decay": decay,
                   "b": _Option(float, 0.0, "the constant of baseline=constant")}
        summary = "ScoreFunction(baseline): REINFORCE, with a baseline by option"
    else:
        options = {"decay": decay} if fixed in ("moving-average", "optimal-constant") else {}
        summary = f"ScoreFunction({_baseline_class(fixed)}): REINFORCE with the {fixed} baseline"

    def build(problem: Problem | None, baseline: str = fixed or "none", decay: float = 0.9,
              b: float = 0.0) -> Estimator:
        return ScoreFunction(_baseline(baseline, decay, b))

    return _Entry(summary, build, options)


def _baseline_class(kind: str) -> str:
    return {"moving-average": "MovingAverage(decay)", "leave-one-out": "LeaveOneOut()",
            "optimal-constant": "OptimalConstant(decay)", "constant": "Constant(b)"}.get(kind, "")


class RelaxedCostControl(nn.Module):
    r"""RELAX's control :math:`c_\phi(z) = \eta\, f(\sigma_\tau(z))`, with η and log τ learned.

    The control of Grathwohl et al. (2018) without its free-form residual network (whose input
    shape would depend on the problem): REBAR's control variate with both of its parameters trained
    on the estimator's variance. ``sigmoid(z/τ)`` for Bernoulli families, ``softmax(z/τ, -1)`` for
    categorical ones (f then sees one-hot-shaped points, as under REBAR).
    """

    def __init__(self, f: Callable[[Tensor], Tensor], *, categorical: bool, temperature: float, eta: float) -> None:
        super().__init__()
        self.f, self.categorical = f, categorical
        self.eta = nn.Parameter(torch.tensor(float(eta)))
        self.log_temperature = nn.Parameter(torch.tensor(float(temperature)).log())

    def forward(self, z: Tensor) -> Tensor:
        scaled = z / self.log_temperature.exp().to(z)
        relaxed = scaled.softmax(-1) if self.categorical else scaled.sigmoid()
        return self.eta.to(z) * self.f(relaxed)


def _is_categorical(dist: Distribution) -> bool:
    while isinstance(dist, Independent):
        dist = dist.base_dist
    return not isinstance(dist, Bernoulli)


class _NeedsProblem(Exception):
    """Raised by a builder whose options are fine but that needs the problem to build (RELAX's control)."""


def _relax(problem: Problem | None, temperature: float = 0.5, eta: float = 1.0) -> Estimator:
    if not temperature > 0 or temperature == float("inf"):
        raise ValueError(f"relax: temperature={temperature} must be a finite number > 0; 0.1 to 1 is typical.")
    if problem is None:
        raise _NeedsProblem
    categorical = _is_categorical(problem.dist(*problem.params(dtype=problem.dtype)))
    return RELAX(RelaxedCostControl(problem.f, categorical=categorical, temperature=temperature, eta=eta))


_ENTRIES: dict[str, _Entry] = {
    "pathwise": _Entry("Pathwise(): reparameterisation through rsample", lambda problem: Pathwise()),
    "implicit": _Entry("ImplicitReparam(): implicit reparameterisation through the CDF",
                       lambda problem: ImplicitReparam()),
    "score": _score(None),
    "score+moving-average": _score("moving-average"),
    "score+leave-one-out": _score("leave-one-out"),
    "score+optimal-constant": _score("optimal-constant"),
    "enumerate": _Entry("Enumerate(budget): the exact sum over the support", lambda problem, budget=2**16:
                        Enumerate(budget=budget), {"budget": _Option(int, 2**16, "largest support to sum over")}),
    "gumbel-softmax": _Entry(
        "GumbelSoftmax(temperature, hard): the Concrete relaxation (biased)",
        lambda problem, temperature=0.5, hard=False: GumbelSoftmax(temperature, hard=hard),
        {"temperature": _Option(float, 0.5, "τ > 0"), "hard": _Option(bool, False, "straight-through Gumbel")}),
    "straight-through": _Entry("StraightThrough(): exact samples, the gradient of their mean (biased)",
                               lambda problem: StraightThrough()),
    "gumbel-rao": _Entry(
        "GumbelRao(k, temperature): Rao-Blackwellised straight-through Gumbel (biased)",
        lambda problem, k=10, temperature=1.0: GumbelRao(k, temperature=temperature),
        {"k": _Option(int, 10, "conditional relaxations per sample"), "temperature": _Option(float, 1.0, "τ > 0")}),
    "arm": _Entry("ARM(): augment-REINFORCE-merge, Bernoulli families", lambda problem: ARM()),
    "disarm": _Entry("DisARM(): ARM with the antithetic pair integrated out, Bernoulli families",
                     lambda problem: DisARM()),
    "rebar": _Entry(
        "REBAR(temperature, eta, learn): REINFORCE with the relaxed f as control variate",
        lambda problem, temperature=0.5, eta=1.0, learn=False: REBAR(temperature=temperature, eta=eta, learn=learn),
        {"temperature": _Option(float, 0.5, "τ > 0"), "eta": _Option(float, 1.0, "control-variate scale η"),
         "learn": _Option(bool, False, "train η and τ on the variance")}),
    "relax": _Entry(
        "RELAX(control) with the control η·f(σ_τ(z)), η and τ trained on the variance",
        _relax, {"temperature": _Option(float, 0.5, "initial τ > 0"), "eta": _Option(float, 1.0, "initial η")}),
    "unordered-set": _Entry("UnorderedSet(k): k distinct samples without replacement, built-in baseline",
                            lambda problem, k=4: UnorderedSet(k), {"k": _Option(int, 4, "distinct samples per set")}),
    "measure-valued": _Entry("MeasureValued(): weak derivatives, Normal, Bernoulli and Poisson families",
                             lambda problem: MeasureValued()),
}

_ALIASES = {
    "implicitreparam": "implicit", "scorefunction": "score", "reinforce": "score", "gumbelsoftmax": "gumbel-softmax",
    "straightthrough": "straight-through", "gumbelrao": "gumbel-rao", "unorderedset": "unordered-set",
    "measurevalued": "measure-valued",
}
_BOUNDS = ("iwae", "vimco", "dreg")

ESTIMATORS: dict[str, str] = {name: entry.summary for name, entry in _ENTRIES.items()}
"""Every estimator ``compare`` knows by name, with a one-line summary: the default of ``compare`` and
``gradest compare``. Options: :func:`describe_estimators`."""


def _key(name: str) -> str:
    return re.sub(r"[-_ ]", "", name.strip().lower())


_LOOKUP = {_key(name): name for name in _ENTRIES} | _ALIASES


@dataclass(frozen=True)
class Recipe:
    """How ``compare`` makes an estimator for a problem: a label and ``build(problem) -> Estimator``.

    Attributes:
        label: the estimator's name in tables, JSON and figures.
        build: returns a new estimator for the problem (a spec builds one afresh; an instance
            passed to ``compare`` is deep-copied, so the caller's object and its state are untouched).

    Example:
        >>> from gradest.diagnostics import parse_estimators
        >>> from gradest.problems import BernoulliToy
        >>> (recipe,) = parse_estimators("rebar:eta=0.5")
        >>> recipe.label, recipe.build(BernoulliToy())
        ('rebar:eta=0.5', REBAR(temperature=0.5, eta=0.5))
    """

    label: str
    build: Callable[[Problem], Estimator]


def _parse_value(where: str, name: str, key: str, text: str, option: _Option) -> Any:
    kind = option.kind
    if isinstance(kind, tuple):
        value = _BASELINE_ALIASES.get(text.lower(), text.lower())
        if value not in kind:
            raise ValueError(f"{where}: {name}:{key}={text!r} is not one of {', '.join(kind)}.")
        return value
    if kind is bool:
        low = text.lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise ValueError(f"{where}: {name}:{key}={text!r} must be true or false.")
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"{where}: {name}:{key}={text!r} must be {'an int' if kind is int else 'a number'}.") from None


def parse_estimators(specs: str | Sequence[str], *, where: str = "compare") -> list[Recipe]:
    """Recipes for estimator specs: ``"disarm,rebar:temperature=0.5"`` or ``["disarm", "rebar:eta=0.5"]``.

    Each spec is checked now (name, options, and the estimator's own argument checks), so a typo
    fails before any work.

    Raises:
        ValueError: an unknown name or option, or an option value the estimator refuses.

    Example:
        >>> from gradest.diagnostics import parse_estimators
        >>> [r.label for r in parse_estimators("DisARM, rebar:temperature=0.3,score:baseline=loo")]
        ['disarm', 'rebar:temperature=0.3', 'score:baseline=leave-one-out']
        >>> parse_estimators("rebar:tau=0.3")
        Traceback (most recent call last):
        ...
        ValueError: compare: estimator 'rebar:tau=0.3' has no option 'tau'; rebar takes temperature, eta, learn.
    """
    if isinstance(specs, str):
        specs = [specs]
    out = []
    for chunk in specs:
        if not isinstance(chunk, str):
            raise TypeError(f"{where}: estimator spec {chunk!r} must be a string such as 'rebar:temperature=0.5'.")
        out += [_parse_one(where, s.strip()) for s in chunk.split(",") if s.strip()]
    if not out:
        raise ValueError(f"{where}: estimators={list(specs)!r} names no estimator; choose from {', '.join(_ENTRIES)}.")
    return out


def _parse_one(where: str, spec: str) -> Recipe:
    name, *parts = spec.split(":")
    key = _key(name)
    if key in _BOUNDS:
        raise ValueError(
            f"{where}: estimator {name!r} estimates the gradient of a multi-sample bound (gradest.iwae_bound), "
            f"not of E[f]; compare measures the estimators of E[f]: {', '.join(_ENTRIES)}."
        )
    if key not in _LOOKUP:
        raise ValueError(f"{where}: estimator={name!r} is unknown; choose from {', '.join(_ENTRIES)}.")
    canonical = _LOOKUP[key]
    entry = _ENTRIES[canonical]
    options: dict[str, Any] = {}
    for part in parts:
        if "=" not in part:
            raise ValueError(f"{where}: estimator {spec!r}: option {part!r} must be KEY=VALUE, e.g. temperature=0.5.")
        k, v = (s.strip() for s in part.split("=", 1))
        if k not in entry.options:
            takes = ", ".join(entry.options) or "no options"
            raise ValueError(f"{where}: estimator {spec!r} has no option {k!r}; {canonical} takes {takes}.")
        options[k] = _parse_value(where, spec, k, v, entry.options[k])
    try:
        entry.build(None, **options)  # the estimator's own argument checks, now
    except _NeedsProblem:  # RELAX's control is built from the problem's f
        pass
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: estimator {spec!r}: {e}") from None
    label = canonical + "".join(f":{k}={_format(v)}" for k, v in options.items())

    def build(problem: Problem) -> Estimator:
        return entry.build(problem, **options)

    return Recipe(label, build)


def _format(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else f"{value:g}" if isinstance(value, float) else str(value)


def recipe_for(item: Any, label: str | None = None, *, where: str = "compare") -> list[Recipe]:
    """Recipes for one entry of ``compare``'s ``estimators``: a spec string, an Estimator, a factory or a Recipe."""
    if isinstance(item, Recipe):
        return [Recipe(label, item.build) if label is not None else item]
    if isinstance(item, str):
        recipes = parse_estimators(item, where=where)
        if label is not None and len(recipes) == 1:
            return [Recipe(label, recipes[0].build)]
        return recipes
    if isinstance(item, Baseline):
        raise TypeError(
            f"{where}: estimators entry {type(item).__name__}() is a baseline, not an estimator; "
            f"wrap it: ScoreFunction({type(item).__name__}(...))."
        )
    if isinstance(item, Estimator):
        original: Estimator = item

        def copied(problem: Problem) -> Estimator:
            return copy.deepcopy(original)

        return [Recipe(label or estimator_label(item), copied)]
    if isinstance(item, nn.Module):
        raise TypeError(
            f"{where}: estimators entry {type(item).__name__}() is not an estimator of E[f] (IWAE, VIMCO and "
            "DReG estimate multi-sample bounds; see gradest.iwae_bound); pass a gradest.Estimator."
        )
    if callable(item):
        def build(problem: Problem, item: Callable[[], Any] = item) -> Estimator:
            est = item()
            if not isinstance(est, Estimator):
                raise TypeError(
                    f"{where}: the estimator factory {getattr(item, '__name__', item)!r} returned "
                    f"{type(est).__name__}, not a gradest.Estimator."
                )
            return est

        name = getattr(item, "__name__", "")
        return [Recipe(label or (name if name and name != "<lambda>" else estimator_label(build(None))), build)]  # type: ignore[arg-type]
    raise TypeError(
        f"{where}: estimators entry {item!r} must be a name ('disarm', 'rebar:temperature=0.5'), "
        "a gradest.Estimator, or a function returning one."
    )


def estimator_label(est: nn.Module) -> str:
    """``ScoreFunction(LeaveOneOut())``, ``REBAR(temperature=0.5, eta=1)``: a one-line name for tables."""
    inner = [est.extra_repr()] if est.extra_repr() else []
    inner += [type(child).__name__ + "()" for child in est.children()]
    return f"{type(est).__name__}({', '.join(inner)})"


def describe_estimators() -> str:
    """Every name ``compare`` takes, with its options and their defaults (``gradest estimators``).

    Example:
        >>> from gradest.diagnostics import describe_estimators
        >>> print(describe_estimators().splitlines()[0])
        pathwise                Pathwise(): reparameterisation through rsample
    """
    lines = []
    for name, entry in _ENTRIES.items():
        lines.append(f"{name:<24}{entry.summary}")
        for key, option in entry.options.items():
            kind = "|".join(option.kind) if isinstance(option.kind, tuple) else option.kind.__name__
            lines.append(f"{'':<26}:{key}={kind} (default {_format(option.default)}): {option.help}")
    lines.append("Options follow the name: rebar:temperature=0.3:eta=0.8. Join estimators with commas.")
    return "\n".join(lines)
