"""``Graph``: stochastic computation graphs with an estimator per node and exact credit assignment."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import TracebackType

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent

from gradest._validation import check_distribution, check_finite, check_n, describe
from gradest.estimators.base import Draw, Estimator, default_for
from gradest.estimators.multisample import refuse_in_expectation
from gradest.graph import compose
from gradest.graph.dependencies import Provenance, Scope, Tag, plain
from gradest.graph.dependencies import depends_on as depends_on_nodes

__all__ = ["Graph"]


@dataclass(eq=False)
class Node:
    """One ``sample`` call: its rule, its draw and where its samples sit among the graph's dims.

    The graph's sample dimensions are *positions* counted leftwards from the batch dimensions: a node
    at position q has a value ``[m, *(1,)*pad, *parent_block, *B]`` whose first q dims are sample dims.
    """

    name: str
    index: int
    dist: Distribution
    estimator: Estimator
    draw: Draw
    position: int
    pad: int
    parent_depth: int
    parents: frozenset[int]
    ancestors: frozenset[int]

    @property
    def size(self) -> int:
        return self.draw.value.shape[0]

    @property
    def batch(self) -> torch.Size:
        """The node's own batch dims (after its parents' sample dims)."""
        return self.dist.batch_shape[self.parent_depth :]

    def view(self, t: Tensor) -> Tensor:
        """A native ``[m, *dist.batch_shape, ...]`` tensor in graph layout (pad dims inserted)."""
        return t.reshape(t.shape[:1] + (1,) * self.pad + t.shape[1:]) if self.pad else t


@dataclass(eq=False)
class Slot:
    """A sample position: its size and the nodes whose samples run along it."""

    size: int
    pairable: bool  # plain Monte Carlo means: independent nodes of equal size may share it
    nodes: list[int] = field(default_factory=list)


@dataclass(eq=False)
class Cost:
    value: Tensor
    name: str
    deps: frozenset[int]
    depth: int


class Graph:
    r"""A stochastic computation graph: sample nodes with their own estimators, add costs, get a loss.

    .. code-block:: python

        with gradest.Graph() as g:
            z = g.sample("z", Categorical(logits=enc(x)), gradest.ScoreFunction(gradest.LeaveOneOut()), n=4)
            y = g.sample("y", Normal(mu[z], 1.0))            # pathwise by default
            g.cost(decoder_loss(y, x), name="recon")
        g.loss().backward()

    Semantics:

    - ``sample(name, dist, estimator=None, n=1)`` draws ``n`` samples (``Enumerate``: the whole
      support) along a new leading *sample dimension*. A node whose distribution was built from
      earlier samples keeps their sample dimensions after its own: ``[n_y, n_z, *B]``. Independent
      Monte Carlo nodes with the same n share a dimension (their i-th samples form the i-th joint
      sample); an enumerated node always gets a fresh one, with singleton dims below it, so that
      costs broadcast over the joint support.
    - ``cost(value)``: ``value`` has the sample dims of the nodes it depends on first (those it
      reduced away are an error), then any batch dims; batch dims are matched with nodes' batch dims
      from the left and treated as independent (element b of a cost is credited to element b of a
      node; a cost with fewer batch dims is credited to all the node's elements, and a node's size-1
      dim to all the cost's elements along it; any other mismatch is an error).
    - ``loss()``: the sum over all cost elements, each averaged over its Monte Carlo sample dims and
      summed with the probabilities of its enumerated ones. Its gradient credits each cost only to
      the nodes it depends on — through values, integer indices, or the distributions of later
      nodes — which is the Rao-Blackwellisation of Schulman et al. (2015). Score terms use DiCE's
      magic box, and baselines enter "loaded" (Farquhar et al. 2019), so higher derivatives are right.

    The graph holds no global state: several can be open at once. Samples may be used only while
    their graph is open.

    Dependencies are found (``track=True``, the default): samples are a light tensor subclass that
    carries its node through every op, floating or not, so indices (``table[z]``), comparisons,
    integer casts and thresholds of continuous samples (``(y > 0).long()``) all keep their
    dependencies, as do plain tensors the samples are written into in place (``buf[t] = z``); it costs
    a few microseconds per op on tensors computed from samples. Writing into a *view* of a plain
    tensor (``buf[t].copy_(z)``) marks only the view: write through the tensor itself. With
    ``track=False`` the samples are plain tensors and nothing is tracked: each ``sample`` and
    ``cost`` takes the nodes it depends on from ``depends_on=`` (names; their ancestors are added),
    and without it from every node sampled so far. Crediting a cost to a node it does not depend on
    keeps the estimate unbiased (the term is zero in expectation) but adds variance; a node declared
    independent of one it does depend on gives a biased gradient. ``track=False`` is the mode for
    ``torch.compile`` (with ``fullgraph=True``): torch's compiler cannot trace the subclass.

    Args:
        enumerate_budget: the largest joint support (product of the sizes of all enumerated
            dimensions) a cost may span.
        track: find each node's and cost's dependencies (True), or take them from ``depends_on=``.

    References:
        Schulman et al. (2015). Gradient Estimation Using Stochastic Computation Graphs. NeurIPS.
        arXiv:1506.05254.
        Foerster et al. (2018). DiCE: The Infinitely Differentiable Monte Carlo Estimator. ICML.
        arXiv:1802.05098.
        Farquhar et al. (2019). Loaded DiCE: Trading off Bias and Variance in Any-Order Score Function
        Estimators for Reinforcement Learning. NeurIPS. arXiv:1909.10549.
    """

    def __init__(self, *, enumerate_budget: int = 2**16, track: bool = True) -> None:
        if isinstance(enumerate_budget, bool) or not isinstance(enumerate_budget, int):
            raise TypeError(f"Graph: enumerate_budget={enumerate_budget!r} must be an int; 65536 is the default.")
        if enumerate_budget < 1:
            raise ValueError(f"Graph: enumerate_budget={enumerate_budget} must be >= 1; 65536 is the default.")
        if not isinstance(track, bool):
            raise TypeError(
                f"Graph: track={track!r} must be True (find each cost's nodes) or False (declare them with "
                "depends_on=)."
            )
        self.enumerate_budget = enumerate_budget
        self.track = track
        self.nodes: list[Node] = []
        self.slots: list[Slot] = []  # slots[q - 1] is position q
        self.costs: list[Cost] = []
        self._scope = Scope()
        self._names: dict[str, int] = {}

    @property
    def closed(self) -> bool:
        """Whether the graph's ``with`` block has ended (its samples may no longer be used)."""
        return self._scope.closed

    # -- context ---------------------------------------------------------------------------------

    def __enter__(self) -> Graph:
        if self.closed:
            raise RuntimeError("Graph: this graph was already closed; create a new Graph() for each step.")
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._scope.closed = True

    def _open(self, where: str) -> None:
        if self.closed:
            raise RuntimeError(
                f"Graph.{where}: the graph is closed (its `with` block ended); call sample() and cost() "
                "inside the block, and loss() inside or after it."
            )

    # -- nodes -----------------------------------------------------------------------------------

    def _node_ids(self, tags: list[Tag], where: str) -> set[int]:
        ids = set()
        for tag in tags:
            if tag.scope is not self._scope:
                raise RuntimeError(
                    f"Graph.{where}: depends on node {tag.name!r} of another graph; a graph's samples may "
                    "only be used in its own costs."
                )
            ids.add(tag.index)
        return ids

    def _declared(self, depends_on: object, where: str) -> set[int]:
        """The node ids named by ``depends_on`` (a node name or an iterable of them)."""
        names = [depends_on] if isinstance(depends_on, str) else depends_on
        if not isinstance(names, Iterable):
            raise TypeError(
                f"Graph.{where}: depends_on={depends_on!r} must be a node name or a list of node names."
            )
        ids = set()
        for name in names:
            if name not in self._names:
                raise ValueError(
                    f"Graph.{where}: depends_on names {name!r}, which is not a node of this graph (nodes: "
                    f"{list(self._names)}); name nodes sampled earlier in this graph."
                )
            ids.add(self._names[name])
        return ids

    def _dependencies(self, tensors: list[Tensor], depends_on: object, where: str) -> set[int]:
        """The nodes that ``tensors`` depend on: as declared, found (``track=True``), or all so far."""
        if depends_on is not None:
            return self._declared(depends_on, where)
        if not self.track:
            return set(range(len(self.nodes)))
        return self._node_ids(depends_on_nodes(tensors), where)

    def sample(
        self,
        name: str,
        dist: Distribution,
        estimator: Estimator | None = None,
        n: int = 1,
        *,
        depends_on: str | Iterable[str] | None = None,
    ) -> Tensor:
        """Draw ``n`` samples of ``dist`` as node ``name``; returns ``[n, *dist.batch_shape, *E]``
        (``Enumerate``: the support along the leading dim; with singleton dims inserted when the node
        needs a fresh sample dimension).

        ``depends_on`` names the nodes whose samples ``dist``'s parameters were computed from; by
        default the graph finds them (``track=True``) or takes every earlier node (``track=False``).
        """
        where = "sample"
        self._open(where)
        if not isinstance(name, str):
            raise TypeError(f"Graph.sample: name={name!r} must be a str.")
        if name in self._names:
            raise ValueError(
                f"Graph.sample: name={name!r} is already a node of this graph; give each node its own name."
            )
        dist = check_distribution("Graph.sample", dist)
        n = check_n("Graph.sample", n)
        if estimator is None:
            estimator = default_for(dist, n)
        elif not isinstance(estimator, Estimator):
            refuse_in_expectation("Graph.sample", estimator)
            raise TypeError(
                f"Graph.sample: estimator={estimator!r} is not a gradest Estimator; pass e.g. gradest.Pathwise()."
            )
        estimator.check(dist, n)

        tensors = _dist_tensors(dist)
        parents = self._dependencies(tensors, depends_on, where)
        ancestors = set(parents)
        for p in parents:
            ancestors |= self.nodes[p].ancestors
        depth = max([0] + [self.nodes[p].position for p in parents])
        batch = dist.batch_shape
        if len(batch) < depth:
            raise ValueError(
                f"Graph.sample: node {name!r} depends on nodes whose samples occupy {depth} leading "
                f"dims, but dist={describe(dist)} has batch_shape {tuple(batch)}; build its parameters "
                "from the samples without reducing over their sample dims."
            )
        for q in range(1, depth + 1):
            size, slot = batch[depth - q], self.slots[q - 1]
            if size not in (1, slot.size):
                raise ValueError(
                    f"Graph.sample: dist of node {name!r} has batch_shape {tuple(batch)}; its dim "
                    f"{depth - q} has size {size}, but sample position {q} (nodes "
                    f"{self._names_of(slot.nodes)}) has {slot.size} samples; keep sample dims leading."
                )

        draw = estimator.draw(dist, n)
        m = draw.value.shape[0]
        pairable = type(estimator).reduce is Estimator.reduce
        position = self._place(depth, m, pairable)
        index = len(self.nodes)
        if any(isinstance(t, Provenance) for t in tensors):  # parameters computed from samples
            draw = _plain_draw(draw)
        node = Node(name, index, dist, estimator, draw, position, position - 1 - depth, depth,
                    frozenset(parents), frozenset(ancestors))
        self.nodes.append(node)
        self._names[name] = index
        self.slots[position - 1].nodes.append(index)

        value = node.view(plain(draw.value))
        if not self.track:
            return value
        return Provenance.wrap(value, (Tag(self._scope, index, name),))

    def _place(self, depth: int, m: int, pairable: bool) -> int:
        """The position of a new node: the first shareable slot above its parents, else a fresh one."""
        if pairable:
            for q in range(depth + 1, len(self.slots) + 1):
                slot = self.slots[q - 1]
                if slot.pairable and slot.size == m:
                    return q
        self.slots.append(Slot(m, pairable))
        return len(self.slots)

    def _names_of(self, ids: Iterable[int]) -> list[str]:
        return [self.nodes[i].name for i in sorted(ids)]

    # -- costs -----------------------------------------------------------------------------------

    def cost(self, value: Tensor, name: str | None = None, *, depends_on: str | Iterable[str] | None = None) -> None:
        """Add a cost: any tensor computed from samples and parameters (see the class docstring).

        ``depends_on`` names the nodes whose samples ``value`` was computed from (their ancestors are
        added); by default the graph finds them (``track=True``) or takes every node (``track=False``).
        """
        where = "cost"
        self._open(where)
        if not isinstance(value, Tensor):
            raise TypeError(f"Graph.cost: value={type(value).__name__} must be a tensor computed from the samples.")
        name = name if name is not None else f"cost{len(self.costs)}"
        direct = self._dependencies([value], depends_on, where)
        deps = set(direct)
        for i in direct:
            deps |= self.nodes[i].ancestors
        depth = max([0] + [self.nodes[i].position for i in deps])
        value = plain(value)
        if not (value.is_floating_point() or value.is_complex()):
            raise TypeError(f"Graph.cost: cost {name!r} has dtype={value.dtype}; costs must be floating point.")
        if value.dim() < depth:
            raise ValueError(
                f"Graph.cost: cost {name!r} has shape {tuple(value.shape)} but depends on nodes "
                f"{self._names_of(deps)} whose samples occupy {depth} leading dims; keep the sample dims "
                "in the cost (the graph averages over them)."
            )
        for q in range(1, depth + 1):
            size, slot = value.shape[depth - q], self.slots[q - 1]
            owners = [i for i in slot.nodes if i in deps]
            if size == 1 and owners and slot.size > 1:
                raise ValueError(
                    f"Graph.cost: cost {name!r} has shape {tuple(value.shape)}: dim {depth - q} has size 1 "
                    f"but it depends on node(s) {self._names_of(owners)} with {slot.size} samples there; "
                    "keep the sample dims in the cost (the graph averages over them)."
                )
            if size not in (1, slot.size) or (size > 1 and not owners):
                raise ValueError(
                    f"Graph.cost: cost {name!r} has shape {tuple(value.shape)}: dim {depth - q} has size "
                    f"{size}, which does not line up with sample position {q} (nodes "
                    f"{self._names_of(slot.nodes)}, {slot.size} samples) of the nodes it depends on."
                )
        batch = value.shape[depth:]
        for i in sorted(deps):
            node = self.nodes[i]
            if node.estimator.elementwise and len(batch) < len(node.batch):
                raise ValueError(
                    f"Graph.cost: cost {name!r} has batch shape {tuple(batch)} but depends on node "
                    f"{node.name!r} (batch shape {tuple(node.batch)}), whose {type(node.estimator).__name__} "
                    "varies all batch elements at once; keep the node's batch dims in the cost, or make "
                    "the coupled coordinates one event with Independent(...)."
                )
            for d, (size, own) in enumerate(zip(batch, node.batch)):
                if size != own and own != 1:  # a size-1 dim would count the cost once per node element
                    raise ValueError(
                        f"Graph.cost: cost {name!r} has batch shape {tuple(batch)} but depends on node "
                        f"{node.name!r} with batch shape {tuple(node.batch)}: batch dim {d} has size {size}, "
                        f"not {own} (batch dims are matched from the left); keep the node's batch dims in "
                        "the cost, or reduce them away entirely (sum without keepdim=True)."
                    )
        joint = 1
        for q in range(1, depth + 1):
            if not self.slots[q - 1].pairable and value.shape[depth - q] > 1:
                joint *= self.slots[q - 1].size
        if joint > self.enumerate_budget:
            raise ValueError(
                f"Graph.cost: cost {name!r} spans a joint enumerated support of {joint} points, over "
                f"enumerate_budget={self.enumerate_budget}; raise Graph(enumerate_budget=...) or use "
                "ScoreFunction for some nodes."
            )
        check_finite("Graph.cost", f"cost {name!r}", value, "check the computation for 0/0, log(0) or inf - inf.")
        self.costs.append(Cost(value, name, frozenset(deps), depth))

    def loss(self) -> Tensor:
        """The scalar surrogate: value = the estimate of Σ E[cost], gradient = the estimator."""
        if not self.costs:
            raise ValueError("Graph.loss: no costs were added; call g.cost(value) for each cost first.")
        return compose.loss(self.nodes, self.slots, self.costs)


def _plain_draw(draw: Draw) -> Draw:
    lp = None if draw.log_prob is None else plain(draw.log_prob)
    return Draw(plain(draw.value), lp, _plain_dist(draw.dist), {k: plain(v) for k, v in draw.extra.items()})


def _plain_dist(dist: Distribution) -> Distribution:
    """``dist``, or a shallow copy whose :class:`Provenance` tensors (parameters built from samples,
    e.g. ``logits=W[z]``) are plain: baselines read the draw's distribution in ``loss()``,
    which may run after the graph has closed."""
    tensors = vars(dist)
    base = dist.base_dist if isinstance(dist, Independent) else None
    plain_base = None if base is None else _plain_dist(base)
    if plain_base is base and not any(isinstance(v, Provenance) for v in tensors.values()):
        return dist
    out = copy.copy(dist)
    for k, v in tensors.items():
        if isinstance(v, Provenance):
            setattr(out, k, plain(v))
    if plain_base is not base:
        out.base_dist = plain_base  # type: ignore[attr-defined]
    return out


def _dist_tensors(dist: Distribution) -> list[Tensor]:
    """Every tensor a distribution holds (its parameters and cached derived values)."""
    out = []
    while True:
        out += [v for v in vars(dist).values() if isinstance(v, Tensor)]
        if isinstance(dist, Independent):
            dist = dist.base_dist
            continue
        return out
