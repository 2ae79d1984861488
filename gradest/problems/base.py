"""Problems: J(θ) = E_{x∼p_θ}[f(x)] with the exact gradient, or a reference estimator for it.

A problem builds its parameters as leaf tensors with an optional leading *replication* dimension R:
one call of an estimator on the batched distribution then gives R independent gradient estimates,
one per replication, in ``param.grad[r]`` (the cost of each replication touches only its own slice).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent

from gradest.estimators.base import Estimator
from gradest.expect import expectation

__all__ = ["Problem", "CustomProblem", "gradient_draws"]

REFERENCE_SAMPLES = 64
"""Samples per estimate of the default reference, ``ScoreFunction(LeaveOneOut())``."""


class Problem:
    r"""A stochastic objective :math:`J(\theta) = \mathbb{E}_{x\sim p_\theta}[f(x)]` to compare estimators on.

    Build one from its parts, ``Problem(f, dist, params)``, or subclass it (the built-in problems do:
    they define ``initial()``, ``dist(*params)``, ``f(x)`` and ``objective(*params)`` as methods).
    ``gradest compare --problem FILE.py:FUNCTION`` calls ``FUNCTION()`` and takes the Problem it returns.

    The gradient that estimates are measured against is, in this order: ``exact_gradient`` when given;
    the gradient of ``objective`` (the exact J, differentiable in the parameters) when given; else a
    high-precision *reference*: the ``reference`` estimator when given, else ``Enumerate()`` when the
    support is small enough to sum over, else ``ScoreFunction(LeaveOneOut())`` with 64 samples, which
    is unbiased for any f (a pathwise reference would be silently wrong for an f that is not
    differentiable, such as a step; pass ``reference=(gradest.Pathwise(), 16)`` when f is smooth and
    the family has ``rsample``, for a sharper reference).

    Args:
        f: the cost, mapping samples ``[n, *B, *E]`` to ``[n, *B]`` (as for
            :func:`gradest.expectation`). Relaxation-based estimators (Gumbel-Softmax, REBAR, ...)
            call it at relaxed points too: for ``Categorical`` at one-hot-shaped ``[n, *B, K]`` floats.
        dist: the distribution builder, ``dist(*params) -> torch.distributions.Distribution``.
        params: the parameter values θ at which the gradient is estimated: floating-point tensors, of
            any shapes; the gradient's coordinates are theirs, flattened and concatenated (``[D]``).
        exact_gradient: the exact ∇θ J at ``params``: one tensor per parameter (of its shape), or one
            flat ``[D]`` tensor.
        objective: the exact ``J(*params)``, differentiable in the parameters (autograd gives the
            exact gradient); ``[*B]`` for a batch of independent objectives, summed as the estimates are.
        reference: an unbiased ``Estimator`` (or ``(estimator, n)``) for the reference gradient when
            the exact one is unknown; ``compare`` averages twice as many of its estimates as of any
            measured estimator, and adds its standard error to every bias test.
        name: the problem's name in tables and figures.
        batched: whether ``dist`` and ``f`` accept parameters with an extra leading replication
            dimension R (``dist(*[R, *shape] tensors)`` with batch shape ``[R, *B]``, and f mapping
            ``[n, R, *B, *E]`` to ``[n, R, *B]``). Then ``compare`` draws R estimates in one call,
            which is much faster; otherwise it makes one call per estimate.

    Raises:
        TypeError: f or dist is not callable, a parameter is not a tensor, or reference is not an Estimator.
        ValueError: a parameter is not floating-point, the exact gradient's size differs from the
            parameters', or both ``exact_gradient`` and ``objective`` are given.

    Example:
        >>> import torch
        >>> from gradest.problems import Problem
        >>> problem = Problem(lambda x: x**2, lambda loc: torch.distributions.Normal(loc, 1.0),
        ...                   [torch.tensor(0.5)], objective=lambda loc: loc**2 + 1.0, name="x²")
        >>> problem.exact_gradient()          # d/dμ (μ² + 1) at μ = 0.5
        tensor([1.], dtype=torch.float64)
        >>> from gradest.diagnostics import compare
        >>> report = compare(problem, ["pathwise", "score"], trials=200, timing_repeats=1)
        >>> [(r.estimator, r.biased) for r in report.rows]
        [('pathwise', False), ('score', False)]
    """

    name: str = "problem"
    batched: bool = True
    """Whether ``dist`` and ``f`` accept parameters with a leading replication dimension."""
    dtype: torch.dtype = torch.float64
    """The dtype ``compare`` measures in: float64 for the built-in problems, the parameters' own otherwise."""
    timing_dtype: torch.dtype = torch.float32
    """The dtype ``compare`` times one estimate in: float32 (as in training) for the built-in problems."""
    dist: Callable[..., Distribution]
    """``dist(*params)``: the distribution p_θ at the given parameters."""
    objective: Callable[..., Tensor]
    """``objective(*params)``: the exact J, differentiable in the parameters (when known; see ``exact``)."""

    def __init__(
        self,
        f: Callable[[Tensor], Tensor] | None = None,
        dist: Callable[..., Distribution] | None = None,
        params: Sequence[Tensor] | None = None,
        *,
        exact_gradient: Tensor | Sequence[Tensor] | None = None,
        objective: Callable[..., Tensor] | None = None,
        reference: Estimator | tuple[Estimator, int] | None = None,
        name: str = "problem",
        batched: bool = False,
    ) -> None:
        where = "Problem"
        if f is None and dist is None and params is None:  # a subclass that defines the methods itself
            return
        if not callable(f):
            raise TypeError(f"{where}: f={f!r} is not callable; pass the cost, mapping samples [n, *B, *E] to [n, *B].")
        if not callable(dist):
            raise TypeError(
                f"{where}: dist={dist!r} is not callable; pass a builder such as "
                "lambda loc: torch.distributions.Normal(loc, 1.0), called with the parameters."
            )
        if isinstance(params, Tensor) or not isinstance(params, Sequence) or not params:
            raise TypeError(
                f"{where}: params={_short(params)} must be a non-empty list or tuple of tensors, "
                "e.g. [torch.tensor([0.3, -0.2])], the arguments of dist."
            )
        params = [torch.tensor(float(p)) if isinstance(p, (int, float)) and not isinstance(p, bool) else p
                  for p in params]
        for i, p in enumerate(params):
            if not isinstance(p, Tensor):
                raise TypeError(f"{where}: params[{i}]={_short(p)} is not a tensor; wrap it: torch.tensor(...).")
            if not p.is_floating_point():
                raise ValueError(
                    f"{where}: params[{i}] has dtype={p.dtype}; parameters are differentiated, so they must be "
                    "floating-point (torch.tensor(0.5), not torch.tensor(0)); put integer constants inside dist or f."
                )
        if exact_gradient is not None and objective is not None:
            raise ValueError(f"{where}: give exact_gradient= or objective=, not both.")
        if objective is not None and not callable(objective):
            raise TypeError(f"{where}: objective={objective!r} is not callable; pass J(*params) or leave it out.")
        if not isinstance(batched, bool):
            raise TypeError(f"{where}: batched={batched!r} must be a bool.")
        self.f = f  # type: ignore[method-assign,assignment]
        self.dist = dist  # type: ignore[method-assign]
        self._initial = tuple(p.detach().clone() for p in params)
        self.name, self.batched = str(name), batched
        self.dtype = self.timing_dtype = self._initial[0].dtype
        self._reference = _check_reference(where, reference)
        if objective is not None:
            self.objective = objective  # type: ignore[method-assign]
        self._exact = None
        if exact_gradient is not None:
            self._exact = _flat_gradient(where, exact_gradient, self._initial)

    # ---- what a subclass defines --------------------------------------------------------------------

    def initial(self) -> tuple[Tensor, ...]:
        """The parameter values θ (detached tensors)."""
        if not hasattr(self, "_initial"):
            raise NotImplementedError(f"{type(self).__name__} must define initial() or pass params to Problem().")
        return self._initial

    def f(self, x: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must define f(x) or pass f to Problem().")

    # ---- derived ------------------------------------------------------------------------------------

    @property
    def exact(self) -> bool:
        """Whether the exact gradient is known (``exact_gradient`` or ``objective``); if not, see ``reference``."""
        return getattr(self, "_exact", None) is not None or callable(getattr(self, "objective", None))

    def params(self, replications: int | None = None, dtype: torch.dtype = torch.float64) -> tuple[Tensor, ...]:
        """Fresh leaf parameters, ``[R, *shape]`` each when ``replications=R`` is given."""
        out = []
        for p in self.initial():
            p = p.to(dtype)
            if replications is not None:
                p = p.expand(replications, *p.shape)
            out.append(p.clone().requires_grad_())
        return tuple(out)

    def reference(self) -> tuple[Estimator, int]:
        """The unbiased estimator and sample count of the reference gradient (when the exact one is unknown).

        The ``reference`` given to the constructor; else ``Enumerate()`` when the support of
        ``dist(*params)`` can be enumerated within its budget; else ``ScoreFunction(LeaveOneOut())``
        with 64 samples, which needs nothing of f.
        """
        given = getattr(self, "_reference", None)
        if given is not None:
            return given
        from gradest.estimators import Enumerate, LeaveOneOut, ScoreFunction

        dist = self.dist(*self.params())
        base = dist.base_dist if isinstance(dist, Independent) else dist
        if base.has_enumerate_support:
            size = base.enumerate_support(expand=False).shape[0] ** math.prod(dist.event_shape[: len(dist.event_shape)
                                                                            - len(base.event_shape)])
            if size <= Enumerate().budget:
                return Enumerate(), 1
        return ScoreFunction(LeaveOneOut()), REFERENCE_SAMPLES

    def exact_value(self, dtype: torch.dtype = torch.float64) -> Tensor:
        """The exact J at θ (needs ``objective``)."""
        self._require_objective()
        return self.objective(*self.params(dtype=dtype)).detach()

    def _require_objective(self) -> None:
        if not callable(getattr(self, "objective", None)):
            raise NotImplementedError(f"{self.name}: the exact objective is not known; see reference().")

    def exact_gradient(self, dtype: torch.dtype = torch.float64) -> Tensor:
        """The exact gradient, flattened over all parameters: ``[D]``."""
        given = getattr(self, "_exact", None)
        if given is not None:
            return given.to(dtype)
        self._require_objective()
        params = self.params(dtype=dtype)
        grads = torch.autograd.grad(self.objective(*params).sum(), params, allow_unused=True)
        return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)])

    def __repr__(self) -> str:
        return self.name


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_reference(where: str, reference: object) -> tuple[Estimator, int] | None:
    if reference is None:
        return None
    est, n = reference if isinstance(reference, tuple) and len(reference) == 2 else (reference, REFERENCE_SAMPLES)
    if not isinstance(est, Estimator):
        raise TypeError(
            f"{where}: reference={_short(reference)} must be an unbiased Estimator or (estimator, n), "
            "e.g. (gradest.Pathwise(), 16) for a smooth f."
        )
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{where}: reference=(estimator, n={n!r}) needs an int n >= 1; 16 to 64 is typical.")
    return est, n


def _flat_gradient(where: str, gradient: Tensor | Sequence[Tensor], params: tuple[Tensor, ...]) -> Tensor:
    size = sum(p.numel() for p in params)
    parts = [gradient] if isinstance(gradient, Tensor) else list(gradient)
    if not all(isinstance(g, Tensor) for g in parts):
        raise TypeError(
            f"{where}: exact_gradient={_short(gradient)} must be a tensor or a list of tensors, one per parameter."
        )
    if len(parts) == len(params) and all(g.shape == p.shape for g, p in zip(parts, params)):
        flat = torch.cat([g.detach().reshape(-1) for g in parts])
    elif len(parts) == 1 and parts[0].numel() == size:
        flat = parts[0].detach().reshape(-1)
    else:
        shapes = [tuple(g.shape) for g in parts]
        raise ValueError(
            f"{where}: exact_gradient has shapes {shapes} but the parameters have shapes "
            f"{[tuple(p.shape) for p in params]} ({size} numbers); give one tensor per parameter, of its shape."
        )
    if not bool(torch.isfinite(flat).all()):
        raise ValueError(f"{where}: exact_gradient contains NaN or inf; pass the finite exact gradient.")
    return flat.to(torch.float64)


def gradient_draws(
    problem: Problem,
    estimator: Estimator | Callable[[], Estimator],
    *,
    n: int = 1,
    replications: int = 1000,
    calls: int = 1,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """``[calls · R, D]`` independent gradient estimates of ``problem`` by ``estimator``.

    Each call draws R replications at once along a leading batch dimension (one call per estimate
    when the problem is not ``batched``). ``estimator`` is an Estimator, or a factory returning one
    (called once; state such as a moving average persists across ``calls``, as it would across
    training steps).

    Example:
        >>> import torch, gradest
        >>> from gradest.problems import Gaussian, gradient_draws
        >>> _ = torch.manual_seed(0)
        >>> draws = gradient_draws(Gaussian("square"), gradest.Pathwise(), n=4, replications=1000)
        >>> draws.shape                      # 1000 estimates of (∂/∂μ, ∂/∂σ) of E[x²] = μ² + σ²
        torch.Size([1000, 2])
        >>> [round(v, 1) for v in draws.mean(0).tolist()]     # exact: (2μ, 2σ) = (1, 2)
        [1.0, 2.0]
    """
    est = estimator if isinstance(estimator, Estimator) else estimator()
    out = []
    for _ in range(calls):
        if problem.batched:
            out.append(_gradient(problem, est, n, problem.params(replications, dtype=dtype), replications))
        else:  # one estimate per call
            out += [_gradient(problem, est, n, problem.params(dtype=dtype), 1) for _ in range(replications)]
    return torch.cat(out, 0)


def _gradient(problem: Problem, est: Estimator, n: int, params: tuple[Tensor, ...], rows: int) -> Tensor:
    s = expectation(problem.f, problem.dist(*params), est, n=n)
    if s.requires_grad:
        grads: Sequence[Tensor | None] = torch.autograd.grad(s.sum(), params, allow_unused=True)
    else:  # nothing reaches θ (a cost that does not depend on the sample, say): the estimate is 0
        grads = [None] * len(params)
    flat = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    return torch.cat([g.reshape(rows, -1) for g in flat], 1)


class CustomProblem(Problem):
    """``Problem(f, dist, params, name=name)`` (the name this class had first; kept for old code).

    Example:
        >>> import torch
        >>> from gradest.problems import CustomProblem
        >>> CustomProblem(lambda x: x**2, lambda m: torch.distributions.Normal(m, 1.0), [torch.tensor(0.5)]).exact
        False
    """

    def __init__(self, f: Callable[[Tensor], Tensor], dist: Callable[..., Distribution],
                 params: Sequence[Tensor], *, name: str = "custom") -> None:
        super().__init__(f, dist, params, name=name)
