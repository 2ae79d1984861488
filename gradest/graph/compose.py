r"""The one composition: node rules and costs become the terms of the surrogate.

``gradest.expectation`` is its one-node, one-cost case; ``Graph.loss`` sums every term. For costs c
with dependency sets D(c) and nodes w with rules (weight, correction, reduction):

.. math::
    L = \sum_c \mathrm{R}\Bigl[c \prod_{w \in D(c)} \mathrm{weight}_w\Bigr]
      + \sum_w \mathrm{R}\Bigl[\mathrm{correction}_w\bigl(\bar c_w\bigr)
        \prod_{a \in \mathrm{anc}(w)} \mathrm{weight}_a\Bigr]

where R reduces each sample dimension with the declared reduction of the node that owns it (a Monte
Carlo mean, or a sum for enumeration and sets) and keeps the batch dimensions, and :math:`\bar c_w` is
the value of the costs that depend on w, reduced to w's own shape ``[m, *B]``: at its values, then at
its auxiliary points (a rule's relaxed copies or antithetic partners), with the other nodes' weights
multiplied in and stopped. It carries its gradient only for rules that declare ``live_costs``. Monte
Carlo weights are DiCE magic boxes (value 1), so L's value is the plain estimate and its derivatives of
every order are the score-function estimator's; enumeration weights are the probabilities.
Corrections carry the boxes of their node's ancestors ("loaded" baselines, Farquhar et al. 2019).
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.distributions import Distribution

from gradest.estimators.base import Draw, Estimator
from gradest.surrogate import stop_gradient

__all__ = ["Node", "Slot", "Cost", "terms"]


@dataclass(eq=False)
class Node:
    """One stochastic node: its rule, its draw and where its values sit among the graph's dims.

    The graph's sample dimensions are *positions* counted leftwards from the batch dimensions: a
    tensor with d sample dims has position q at dim d − q. A node's distribution has batch shape
    ``[*parent_block, *B]``, its parents' sample dims (positions ``parent_depth``..1) first; its values
    sit at its own ``position``, left of that block (``[n, *(1,)*pad, *parent_block, *B]``), or — for an
    enumerated node whose position a ``Graph.markov`` chain recycles — inside it, at a position no
    parent occupies. Its graph-layout tensors have ``dims`` sample dims.
    """

    name: str
    index: int
    dist: Distribution
    estimator: Estimator
    draw: Draw
    position: int = 1
    parent_depth: int = 0
    parents: frozenset[int] = frozenset()
    ancestors: frozenset[int] = frozenset()
    """The sampled (not eliminable) nodes above this one; enumerated ones are reached through the
    enumerated parents' scopes (``marginal.py``)."""
    shadow_draws: dict[int, tuple[Draw, ...]] = field(default_factory=dict)
    """For each ancestor with auxiliary points: this node's draw replayed at each block of them (the
    same random numbers, the distribution's parameters at that block)."""
    step: tuple[int, int] | None = None
    """(markov context, step) for a node drawn inside ``Graph.markov``, else None."""
    scope: frozenset[int] = frozenset()
    """The enumerated nodes whose dims this node's tensors span: itself, if it is enumerated; else its
    parents' scopes (its samples were drawn per value of them)."""

    @property
    def size(self) -> int:
        """How many values the node has along its sample dimension."""
        return self.draw.n

    @property
    def dims(self) -> int:
        """The number of leading sample dims of the node's tensors in graph layout."""
        return max(self.position, self.parent_depth)

    @property
    def pad(self) -> int:
        """Singleton dims between the node's own dim and its parents' block (0 when recycled inside it)."""
        return max(self.position - 1 - self.parent_depth, 0)

    @property
    def batch(self) -> torch.Size:
        """The node's own batch dims (after its parents' sample dims)."""
        return self.dist.batch_shape[self.parent_depth :]

    def view(self, t: Tensor) -> Tensor:
        """A native ``[n, *dist.batch_shape, ...]`` tensor in graph layout."""
        if self.position > self.parent_depth:
            pad = self.position - 1 - self.parent_depth
            return t.reshape(t.shape[:1] + (1,) * pad + t.shape[1:]) if pad else t
        inside = self.parent_depth - self.position  # the dim of the parent block at this position (size 1)
        return t.squeeze(1 + inside).movedim(0, inside)


@dataclass(eq=False)
class Slot:
    """A sample position: its size and the nodes whose values run along it."""

    size: int
    shared: bool  # i.i.d. Monte Carlo values: independent nodes of equal size may share it
    nodes: list[int] = field(default_factory=list)


@dataclass(eq=False)
class Cost:
    """A cost: its value in graph layout ``[*sample dims, *batch]``, the nodes it depends on, and its
    values at the auxiliary points of those nodes that have them (one tensor per block of n points,
    each in the value's layout)."""

    value: Tensor
    name: str
    deps: frozenset[int]
    depth: int
    auxiliary: dict[int, tuple[Tensor, ...]] = field(default_factory=dict)
    direct: frozenset[int] | None = None
    """The nodes the value was computed from directly (``deps`` adds their ancestors); None: ``deps``."""


def _align(node: Node, t: Tensor, depth: int, batch_len: int, *, what: str) -> Tensor:
    """A node's native ``[n, *dist.batch_shape]`` weight in the layout of a tensor with ``depth``
    sample dims and ``batch_len`` batch dims."""
    g = node.view(t)
    if depth > node.dims:
        g = g.reshape((1,) * (depth - node.dims) + g.shape)
    extra = len(node.batch) - batch_len
    if extra > 0:  # the cost spans several of the node's batch elements: their weights multiply
        if node.estimator.reduction != "mean":
            raise ValueError(
                f"Graph.loss: {what} has {batch_len} batch dims but depends on enumerated node "
                f"{node.name!r} with {len(node.batch)}; enumeration treats batch elements independently, "
                "so keep the node's batch dims in the cost, or enumerate jointly with Independent(...)."
            )
        g = g.flatten(g.dim() - extra).prod(-1)
    elif extra < 0:
        g = g.reshape(g.shape + (1,) * -extra)
    return g


def reduce_position(owner: Node, x: Tensor) -> Tensor:
    """Reduce ``x``'s leading dim (a sample position of ``owner``'s slot) by the owner's declared rule.

    A term of size 1 there does not depend on the nodes of that position: its mean, or its sum with
    their probabilities (which it does not carry, and which sum to 1), is the term itself."""
    return x.mean(0) if owner.estimator.reduction == "mean" else x.sum(0)


def _reduce_block(nodes: list[Node], slots: list[Slot], x: Tensor, depth: int) -> Tensor:
    """Reduce the ``depth`` leading sample dims, outermost first, each by its owner's rule."""
    for q in range(depth, 0, -1):
        slot = slots[q - 1]
        x = reduce_position(nodes[slot.nodes[0]], x)
    return x


def _to_native(nodes: list[Node], slots: list[Slot], w: Node, c: Cost, v: Tensor, weights: Mapping[int, Tensor],
               shape: torch.Size) -> Tensor:
    """A cost (or its copy at w's auxiliary points) ``v`` in graph layout, reduced to w's native
    shape ``[n, *dist.batch_shape]``: the other nodes' weights (``weights``: those of the cost's other
    dependencies) multiplied in, their sample dims reduced, and batch dims matched with w's."""
    batch_len = v.dim() - c.depth
    for i, t in weights.items():  # the other nodes' weights (those of ``c.deps`` that have one)
        v = v * _align(nodes[i], t, c.depth, batch_len, what=f"cost {c.name!r}")
    for q in range(c.depth, w.position, -1):  # positions outside w's block
        slot = slots[q - 1]
        v = reduce_position(nodes[slot.nodes[0]], v)
    layout = shape[:1] + (1,) * w.pad + shape[1:]
    for q in range(w.position - 1, 0, -1):  # inside w's block, where w itself does not vary
        d = w.position - q
        if layout[d] == 1 and v.shape[d] > 1:
            slot = slots[q - 1]
            v = reduce_position(nodes[slot.nodes[0]], v.movedim(d, 0)).unsqueeze(0).movedim(0, d)
    if w.pad:
        v = v.reshape(v.shape[:1] + v.shape[1 + w.pad :])
    extra = batch_len - len(w.batch)
    if extra > 0:
        v = v.flatten(v.dim() - extra).sum(-1)
    elif extra < 0:
        v = v.reshape(v.shape + (1,) * -extra)
    shared = [d for d in range(len(shape) - len(w.batch), len(shape)) if shape[d] == 1 and v.shape[d] > 1]
    if shared:  # a batch element of w that several cost elements are credited to: their sum
        v = v.sum(shared, keepdim=True)
    return v if v.shape == shape else v.expand(shape)


def world_weights(nodes: list[Node], weights: Mapping[int, Tensor | None], w: Node, copy: int,
                  deps: Iterable[int]) -> dict[int, Tensor | None]:
    """The weights of the nodes ``deps`` other than w in the world of w's ``copy``-th block of auxiliary
    points: a node drawn below w was replayed there (``shadow_draws``), so its weight is the replayed
    draw's; the others keep theirs."""
    out: dict[int, Tensor | None] = {}
    for i in deps:
        if i == w.index:
            continue
        replayed = nodes[i].shadow_draws.get(w.index)
        out[i] = weights[i] if replayed is None else nodes[i].estimator.weight(replayed[copy])
    return out


def _downstream(nodes: list[Node], slots: list[Slot], costs: list[Cost], w: Node,
                weights: Mapping[int, Tensor | None]) -> Tensor:
    """The costs that depend on w, at w's values and then at its auxiliary points: ``[m, *B]``.

    At the values everything is stopped (a baseline never differentiates the costs it regresses on).
    At the auxiliary points the costs carry their gradient when the rule declares ``live_costs``
    (REBAR's control variate η f(σ(z)) is differentiated in z), and so do the weights of the nodes
    replayed below w, which carry the dependence of their distributions on w's relaxed points.
    """
    shape = w.draw.values.shape[: 1 + len(w.dist.batch_shape)]
    live = w.estimator.live_costs
    total: Tensor | None = None
    for c in costs:
        others = {}
        for i in c.deps:
            t = weights[i] if i != w.index else None
            if t is not None:
                others[i] = stop_gradient(t)
        parts = [_to_native(nodes, slots, w, c, stop_gradient(c.value), others, shape)]
        for copy, v in enumerate(c.auxiliary.get(w.index, ())):
            world = {i: t if live and w.index in nodes[i].shadow_draws else stop_gradient(t)
                     for i, t in world_weights(nodes, weights, w, copy, c.deps).items() if t is not None}
            parts.append(_to_native(nodes, slots, w, c, v if live else stop_gradient(v), world, shape))
        v = parts[0] if len(parts) == 1 else torch.cat(parts, 0)
        total = v if total is None else total + v
    assert total is not None
    return total


def weighted(nodes: list[Node], c: Cost, weights: Mapping[int, Tensor | None],
             among: Container[int] | None = None) -> Tensor:
    """A cost's value times the weights of the nodes it depends on (those in ``among``; default all)."""
    x, batch_len = c.value, c.value.dim() - c.depth
    for i in sorted(c.deps):
        if (among is None or i in among) and (wi := weights[i]) is not None:
            x = x * _align(nodes[i], wi, c.depth, batch_len, what=f"cost {c.name!r}")
    return x


def correction_term(nodes: list[Node], slots: list[Slot], w: Node, costs: list[Cost],
                    weights: Mapping[int, Tensor | None], among: Container[int] | None = None,
                    seen: Mapping[int, Tensor | None] | None = None) -> Tensor | None:
    """Node w's correction from the costs that depend on it, in graph layout, times the weights of its
    ancestors (those in ``among``; default all); None when it has none. ``seen``: the weights of the
    other nodes as w's rule sees them in the costs (default ``weights``)."""
    if not w.estimator.has_correction:
        return None
    relevant = [c for c in costs if w.index in c.deps]
    if not relevant:
        return None
    corr = w.estimator.correction(w.draw, _downstream(nodes, slots, relevant, w, weights if seen is None else seen))
    if corr is None:
        return None
    x = w.view(corr)
    for a in sorted(w.ancestors):
        if (among is None or a in among) and (wa := weights[a]) is not None:
            x = x * _align(nodes[a], wa, w.position, len(w.batch), what=f"node {w.name!r}")
    return x


def terms(nodes: list[Node], slots: list[Slot], costs: list[Cost], *, exclude: frozenset[int] = frozenset()
          ) -> list[Tensor]:
    """The surrogate's terms (see the module docstring), each reduced over its sample dims and keeping
    its batch dims: one per group of costs and corrections of the same shape and sample dims (summed
    before the one reduction they share: the reductions are linear). Nodes in ``exclude`` (summed out
    by ``marginal.py``, with the corrections of the nodes drawn below them) add no correction here."""
    weights: dict[int, Tensor | None] = {w.index: w.estimator.weight(w.draw) for w in nodes if w.index not in exclude}
    pending: list[tuple[int, Tensor]] = []  # (depth, unreduced term)

    def add(depth: int, x: Tensor) -> None:
        for k, (d, y) in enumerate(pending):
            if d == depth and y.shape == x.shape:  # same layout (broadcasting would change the reductions)
                pending[k] = (d, y + x)
                return
        pending.append((depth, x))

    for c in costs:
        add(c.depth, weighted(nodes, c, weights))
    for w in nodes:
        if w.index not in exclude and (x := correction_term(nodes, slots, w, costs, weights)) is not None:
            add(w.position, x)
    return [_reduce_block(nodes, slots, x, depth) for depth, x in pending]
