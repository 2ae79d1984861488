r"""Node terms → loss: the one place where several nodes' rules are combined.

For costs c with dependency sets D(c) (closed under ancestry) and nodes w with estimator rules
(weight, correction, reduce):

.. math::
    L = \sum_c \mathrm{R}\Bigl[c \prod_{w \in D(c)} \mathrm{weight}_w\Bigr]
      + \sum_w \mathrm{R}\Bigl[\mathrm{correction}_w\bigl(\bar c_w\bigr)
        \prod_{a \in \mathrm{anc}(w)} \mathrm{weight}_a\Bigr]

where R reduces each sample dimension with the rule of the node that owns it (a Monte Carlo mean,
or a sum for enumeration) and sums the rest, and :math:`\bar c_w` is the value of the costs that
depend on w, reduced to w's own shape (what w's baseline regresses on). Monte Carlo weights are
DiCE magic boxes (value 1), so L's value is the plain estimate and its derivatives of every order are
the score-function estimator's; enumeration weights are the probabilities. Corrections carry the
boxes of their node's ancestors ("loaded" baselines, Farquhar et al. 2019).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from gradest.estimators.base import Estimator
from gradest.surrogate import stop_gradient

if TYPE_CHECKING:
    from gradest.graph.graph import Cost, Node, Slot

__all__ = ["loss"]


def _align(node: Node, t: Tensor, depth: int, batch_len: int, *, what: str) -> Tensor:
    """A node's native ``[m, *dist.batch_shape]`` weight in the layout of a tensor with ``depth``
    sample dims and ``batch_len`` batch dims."""
    g = node.view(t)
    g = g.reshape((1,) * (depth - node.position) + g.shape)
    extra = len(node.batch) - batch_len
    if extra > 0:  # the cost spans several of the node's batch elements: their weights multiply
        if node.estimator.reduce.__func__ is not Estimator.reduce:  # type: ignore[attr-defined]
            raise ValueError(
                f"Graph.loss: {what} has {batch_len} batch dims but depends on enumerated node "
                f"{node.name!r} with {len(node.batch)}; enumeration treats batch elements independently, "
                "so keep the node's batch dims in the cost, or enumerate jointly with Independent(...)."
            )
        g = g.flatten(g.dim() - extra).prod(-1)
    elif extra < 0:
        g = g.reshape(g.shape + (1,) * -extra)
    return g


def _reduce_block(nodes: list[Node], slots: list[Slot], x: Tensor, depth: int) -> Tensor:
    """Reduce the ``depth`` leading sample dims, outermost first, each by its owner's rule."""
    for q in range(depth, 0, -1):
        owner = nodes[slots[q - 1].nodes[0]]
        x = owner.estimator.reduce(owner.draw, x)
    return x


def _downstream(nodes: list[Node], slots: list[Slot], costs: list[Cost], w: Node, weights: dict) -> Tensor:
    """The value of the costs that depend on w, reduced to w's native shape ``[m, *dist.batch_shape]``."""
    shape = w.draw.value.shape[: 1 + len(w.dist.batch_shape)]
    total = None
    for c in costs:
        if w.index not in c.deps:
            continue
        batch_len = c.value.dim() - c.depth
        v = stop_gradient(c.value)
        for i in c.deps:
            if i != w.index and weights[i] is not None:
                v = v * stop_gradient(_align(nodes[i], weights[i], c.depth, batch_len, what=f"cost {c.name!r}"))
        for q in range(c.depth, w.position, -1):  # positions outside w's block
            owner = nodes[slots[q - 1].nodes[0]]
            v = owner.estimator.reduce(owner.draw, v)
        layout = shape[:1] + (1,) * w.pad + shape[1:]
        for q in range(w.position - 1, 0, -1):  # inside w's block, where w itself does not vary
            d = w.position - q
            if layout[d] == 1 and v.shape[d] > 1:
                owner = nodes[slots[q - 1].nodes[0]]
                v = owner.estimator.reduce(owner.draw, v.movedim(d, 0)).unsqueeze(0).movedim(0, d)
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
        v = v.expand(shape)
        total = v if total is None else total + v
    assert total is not None
    return total


def one_node(nodes: list[Node], costs: list[Cost]) -> Tensor | None:
    """The loss of a graph that is one node with one cost in the node's own layout ``[m, *B]``, by the
    estimator's own one-node surrogate (what ``gradest.expectation`` builds), which is the general
    composition below specialised to that case; None for any other graph."""
    if len(nodes) != 1 or len(costs) != 1:
        return None
    w, c = nodes[0], costs[0]
    if c.depth != 1 or w.pad or c.value.shape != w.draw.value.shape[: 1 + len(w.dist.batch_shape)]:
        return None
    return w.estimator.surrogate(w.draw, c.value).sum()


def loss(nodes: list[Node], slots: list[Slot], costs: list[Cost]) -> Tensor:
    """The graph's scalar surrogate (see the module docstring)."""
    shortcut = one_node(nodes, costs)
    if shortcut is not None:
        return shortcut
    weights: dict[int, Tensor | None] = {w.index: w.estimator.weight(w.draw) for w in nodes}
    total: Tensor | None = None
    for c in costs:
        batch_len = c.value.dim() - c.depth
        x = c.value
        for i in sorted(c.deps):
            if (wi := weights[i]) is not None:
                x = x * _align(nodes[i], wi, c.depth, batch_len, what=f"cost {c.name!r}")
        term = _reduce_block(nodes, slots, x, c.depth).sum()
        total = term if total is None else total + term
    for w in nodes:
        if type(w.estimator).correction is Estimator.correction or not any(w.index in c.deps for c in costs):
            continue
        corr = w.estimator.correction(w.draw, _downstream(nodes, slots, costs, w, weights))
        if corr is None:
            continue
        corr = corr.expand(w.draw.value.shape[: 1 + len(w.dist.batch_shape)])
        x = w.view(corr)
        for a in sorted(w.ancestors):
            if (wa := weights[a]) is not None:
                x = x * _align(nodes[a], wa, w.position, len(w.batch), what=f"node {w.name!r}")
        term = _reduce_block(nodes, slots, x, w.position).sum()
        total = term if total is None else total + term
    assert total is not None
    return total
