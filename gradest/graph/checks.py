"""The checks ``expectation`` and ``Graph`` share: the estimator argument, a cost, and whether a cost
is differentiable where its node's rule needs it."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Distribution

from gradest._validation import check_finite, is_validation_enabled
from gradest.estimators._paths import differentiable_path
from gradest.estimators.base import Draw, Estimator, default_for
from gradest.graph.compose import Cost, Node

__all__ = ["resolve_estimator", "check_cost", "check_differentiable", "check_gradient"]


def resolve_estimator(where: str, estimator: object, dist: Distribution, n: int) -> Estimator:
    """``estimator``, or the registered default; a clear TypeError for anything else (a multi-sample
    estimator names the function to use it through)."""
    if estimator is None:
        return default_for(dist, n)
    if isinstance(estimator, Estimator):
        return estimator
    entry = getattr(type(estimator), "entry_point", None)
    if entry is not None:
        raise TypeError(
            f"{where}: estimator={type(estimator).__name__}() estimates the gradient of a multi-sample "
            "(IWAE) bound log (1/n) Σ_i p(x, z_i)/q(z_i), which is not an expectation of a per-sample "
            f"cost; use {entry} instead."
        )
    if isinstance(estimator, type) and issubclass(estimator, Estimator):
        raise TypeError(
            f"{where}: estimator={estimator.__name__} is a class; pass an instance, {estimator.__name__}(...)."
        )
    raise TypeError(
        f"{where}: estimator={estimator!r} is not a gradest Estimator; pass e.g. gradest.Pathwise() "
        "or gradest.ScoreFunction(gradest.LeaveOneOut())."
    )


def check_cost(where: str, cost: object, expected: tuple[int, ...] | None, what: str = "f") -> Tensor:
    """A floating tensor of the expected shape (None: any; and finite, while validation is on). ``what``
    is ``"f"`` (a function's output) or the name of a graph's cost (``"cost 'recon'"``)."""
    said, called = (f"{what} returned", f"{what}'s output") if what == "f" else (f"{what} has", what)
    if not isinstance(cost, Tensor):
        shape = "" if expected is None else f" of shape {tuple(expected)}"
        raise TypeError(
            f"{where}: {said} {type(cost).__name__}, expected a tensor{shape}; keep the computation in torch "
            "(a cost built from .tolist() or .numpy() has no gradient)."
        )
    if not cost.is_floating_point():
        raise TypeError(
            f"{where}: {said} dtype={cost.dtype}; costs must be floating point: return cost.float() (or .to() "
            "the distribution's dtype)."
        )
    if expected is not None and cost.shape != expected:
        raise ValueError(
            f"{where}: {said} shape {tuple(cost.shape)}, expected (n, *dist.batch_shape) = "
            f"{tuple(expected)}; reduce the event dimensions inside {what} and keep the sample dimension."
        )
    check_finite(where, called, cost, "check it for 0/0, log(0), overflow or inf - inf at the sampled points.")
    return cost


def check_differentiable(where: str, node: Node, cost: Cost, nodes: list[Node], what: str) -> None:
    """Refuse a cost that reaches ``node``'s points only through operations without a derivative, when
    the node's rule needs f differentiable there (only while validation is on).

    The cost may also reach the points through the weight of a node drawn from them (a discrete node
    whose distribution is computed from the values; at the auxiliary points, the weight of its replayed
    draw there). f was given the points, or views of them (the values, blocks of auxiliary points, a
    graph's aliases): every differentiable path from a cost to them runs through ``draw.points``.
    """
    need = node.estimator.differentiable_f
    if need is None or not is_validation_enabled() or not node.draw.points.requires_grad:
        return
    draw: Draw = node.draw
    others = [n for n in nodes if n.index in cost.deps and n.index != node.index]
    walked: dict[object, bool] = {}  # by autograd node: the blocks of one call of f share theirs

    def reaches(t: Tensor) -> bool:
        if t.grad_fn is None:
            return differentiable_path(t, [draw.points])
        if t.grad_fn not in walked:
            walked[t.grad_fn] = differentiable_path(t, [draw.points])
        return walked[t.grad_fn]

    if need == "values":
        via = [cost.value] + [w for n in others if (w := n.estimator.weight(n.draw)) is not None]
        ok = any(reaches(t) for t in via)
    else:
        copies = cost.auxiliary.get(node.index, ())
        ok = bool(copies)
        for copy, c in enumerate(copies):
            via = [c] + [w for n in others if node.index in n.shadow_draws
                         and (w := n.estimator.weight(n.shadow_draws[node.index][copy])) is not None]
            ok = ok and any(reaches(t) for t in via)
    if not ok:
        rule = type(node.estimator).__name__
        at = "its samples" if need == "values" else "its relaxed points"
        raise ValueError(
            f"{where}: {what} reaches the points of {rule}'s node {node.name!r} ({at}) only through operations "
            f"without a derivative (a comparison such as x > 0.5, .long(), argmax, round, .detach(), or a "
            f"numpy round trip), so {rule}'s gradient would be exactly zero or biased. {rule} needs f "
            "differentiable there: write it with differentiable operations (for discrete samples, "
            "(x * table).sum(-1) instead of table[x.argmax(-1)]), or use ScoreFunction(LeaveOneOut()) "
            "(or RELAX(control) for an f that is not differentiable), which need no derivative of f."
        )


def check_gradient(where: str, surrogate: Tensor) -> Tensor:
    """``surrogate``, refused when autograd is on and nothing in it requires grad: its ``backward()``
    would fail with torch's "element 0 of tensors does not require grad", which names nothing."""
    if torch.is_grad_enabled() and not surrogate.requires_grad:
        raise ValueError(
            f"{where}: nothing in the surrogate requires grad: neither the distribution's parameters nor "
            "anything the costs close over are tensors with requires_grad=True (or they were detached), so "
            "there is no gradient to estimate. Create the parameters with requires_grad=True (nn.Parameter), "
            "or, to compute only the estimate, call it under torch.no_grad()."
        )
    return surrogate
