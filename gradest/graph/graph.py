"""``Graph``: stochastic computation graphs with an estimator per node and exact credit assignment."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import TypeVar

import torch
from torch import Tensor
from torch.distributions import Bernoulli, Distribution, Independent, OneHotCategorical

from gradest._validation import check_distribution, check_n, describe, is_validation_enabled, summarize
from gradest.estimators._families import leaf, support_size
from gradest.estimators._families import tensors as dist_tensors
from gradest.estimators.base import Draw, Estimator
from gradest.graph.checks import check_cost, check_differentiable, check_gradient, resolve_estimator
from gradest.graph.compose import Cost, Node, Slot, terms
from gradest.graph.dependencies import Provenance, Scope, Tag, plain, shadows_of
from gradest.graph.dependencies import depends_on as depends_on_nodes
from gradest.graph.marginal import marginalise

__all__ = ["Graph"]

T = TypeVar("T")


class Graph:
    r"""A stochastic computation graph: sample nodes with their own estimators, add costs, get a loss.

    .. code-block:: python

        with gradest.Graph() as g:
            z = g.sample("z", Categorical(logits=enc(x)), gradest.ScoreFunction(gradest.LeaveOneOut()), n=4)
            y = g.sample("y", Normal(mu[z], 1.0))            # pathwise by default
            g.cost(decoder_loss(y, x), name="recon")
        g.loss().backward()

    Semantics:

    - ``sample(name, dist, estimator=None, n=1)`` returns the node's *samples* along a new leading
      *sample dimension*: n exact samples (``Enumerate``: the whole support; ``UnorderedSet(k)``: the
      k·n members of n sets; ``GumbelSoftmax(hard=False)``: n relaxed samples) — never a rule's
      auxiliary points (REBAR's relaxations, ARM's and DisARM's antithetic partners, MeasureValued's
      perturbations). The costs at those are computed by replaying every operation on them, with the
      other nodes held at their samples (a tracked graph only; such a node may have no stochastic node
      below it, and its samples may not be turned into Python values). A node whose distribution was
      built from earlier samples keeps their sample dimensions after its own: ``[n_y, n_z, *B]``.
      Independent Monte Carlo nodes with the same n share a dimension (their i-th samples form the
      i-th joint sample); an enumerated node always gets a fresh one, with singleton dims below it, so
      that costs broadcast over the joint support.
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

    **Enumerated nodes are summed out exactly.** A node drawn with ``Enumerate()`` is never sampled:
    ``loss()`` sums it out by variable elimination. Along a ``Graph.markov`` chain this is a balanced
    tree of K×K log-semiring products (O(T·K³) work in O(log T) depth for T steps of K states; the
    forward messages of expected costs by a doubling scan, O(T log T·K³)), never the K^T joint states;
    elsewhere the enumerated nodes are eliminated in a min-fill order read from the dependencies the
    graph found, and
    ``enumerate_budget`` bounds the largest factor that order creates (a node whose own factor would
    exceed it is an error, or is drawn by ``Enumerate(fallback=...)``, never approximated silently).
    The loss holds two kinds of terms, both exact in the enumerated nodes:

    - *expected costs* (``cost``): Σ_c E[c], each cost averaged over its Monte Carlo nodes and summed
      with the probabilities of the enumerated nodes it depends on (outside any log: an exact ELBO of
      a chain-structured posterior, the exact expected return of a tabular policy);
    - *observations* (``observe``): −log Σ_z p(z) Π_o p(o | z), the enumerated nodes the observations
      depend on summed out *inside* the log (Pyro's enumeration semantics: fitting an HMM by its
      marginal likelihood), averaged over the Monte Carlo nodes above them, whose gradient is then a
      score term with −log p(observations | their samples) as the cost (and pathwise where the
      estimator is pathwise).

    So with both, ``loss() = E_mc[ Σ_c E_enum[c] − log Σ_z p(z) Π_o p(o | z) ]``. A graph is refused
    (at ``loss()``) where that meaning is unclear: a cost and an observation that depend on the same
    enumerated nodes (an expectation outside the log and a marginal inside it over one variable), or
    a Monte Carlo node drawn below an enumerated node that observations depend on (its samples would
    have to be drawn inside the log). Monte Carlo nodes below enumerated nodes feeding *costs* are
    fine (a Rao-Blackwellised switching model): each is weighted by the enumerated states above it.

    The graph holds no global state: several can be open at once. Once a graph is closed (its ``with``
    block ended), its samples and costs are ordinary tensors: log them, print them, keep computing
    with them (in another graph they are data, depending on no node).

    A cost that depends on no node and carries no gradient adds nothing to the gradient, and is
    refused; so is a cost that depends on no node after a tensor computed from samples was turned into
    a Python value or a numpy array (``.tolist()``, ``.item()``, ``.numpy()``) in the open graph —
    such a cost has probably been rebuilt from those values and lost its dependencies. Pass
    ``depends_on=()`` for a cost that truly depends on no node. While validation is on, a cost that
    reaches a pathwise or relaxed node's samples only through operations without a derivative is
    refused (see ``Estimator.differentiable_f``).

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
    independent of one it does depend on gives a biased gradient, and where that node is enumerated a
    wrong value too (its sample dim is read as a batch dim): the graph cannot check what it does not
    track. ``track=False`` is the mode for
    ``torch.compile`` (with ``fullgraph=True``): torch's compiler cannot trace the subclass.

    Args:
        enumerate_budget: the largest number of joint values of enumerated nodes one factor may hold:
            a node's own factor (its support times that of the enumerated nodes its distribution
            depends on), a cost's span, and each intermediate factor of the elimination.
        track: find each node's and cost's dependencies (True), or take them from ``depends_on=``.

    Example:
        >>> import torch, gradest
        >>> from torch.distributions import Bernoulli, Categorical
        >>> _ = torch.manual_seed(0)
        >>> logits = torch.zeros(3, requires_grad=True)
        >>> table = torch.tensor([1.0, 2.0, 4.0])
        >>> with gradest.Graph() as g:
        ...     k = g.sample("k", Categorical(logits=logits), gradest.Enumerate())       # summed out
        ...     b = g.sample("b", Bernoulli(probs=table[k] / 5), gradest.ScoreFunction(gradest.LeaveOneOut()), n=8)
        ...     g.cost(b * table[k], name="reward")
        >>> loss = g.loss()
        >>> loss.backward()
        >>> logits.grad.shape
        torch.Size([3])

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
        self.observes: list[Cost] = []  # log-probabilities of observations, with their dependencies
        self._scope = Scope()
        self._names: dict[str, int] = {}  # node name -> index
        self._observed: set[str] = set()  # the observations' names
        self._chains: list[_Chain] = []  # the open markov contexts, innermost last
        self._chain_count = 0
        self._loss: tuple[tuple[int, int, int], Tensor] | None = None  # (sizes when built, the loss)

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

    def _new_name(self, where: str, name: object) -> None:
        """Refuse a closed graph, a name that is not a str, or one already given to a node or an observation."""
        self._open(where)
        if not isinstance(name, str):
            raise TypeError(f"Graph.{where}: name={name!r} must be a str.")
        if name in self._names or name in self._observed:
            raise ValueError(
                f"Graph.{where}: name={name!r} is already a node or an observation of this graph; give each its "
                "own name."
            )

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
            declared = self._declared(depends_on, where)
            if self.track:  # the tracker knows better: a declaration that leaves out a node is refused
                covered = declared.union(*(self.nodes[i].ancestors | self.nodes[i].scope for i in declared))
                missed = self._node_ids(depends_on_nodes(tensors), where) - covered
                if missed:
                    raise ValueError(
                        f"Graph.{where}: depends_on={depends_on!r} leaves out node(s) {self._names_of(missed)}, "
                        "which the tensors were computed from; name them too, or leave depends_on out in a "
                        "tracked graph (it finds the dependencies itself)."
                    )
            return declared
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
        """Draw node ``name`` from ``dist``; returns its samples ``[n, *dist.batch_shape, *E]``
        (``Enumerate``: the support along the leading dim; with singleton dims inserted when the node
        needs a fresh sample dimension).

        Args:
            name: the node's name, unique in the graph (errors and ``depends_on=`` use it).
            dist: its distribution, built from parameters and earlier samples (their sample dims first).
            estimator: its rule; None takes the registered default (``Pathwise()`` with ``rsample``, else
                ``ScoreFunction(LeaveOneOut())`` for n > 1). ``Enumerate()`` nodes are summed out by
                ``loss()``; an ``Enumerate(fallback=...)`` node whose factor exceeds the budget is drawn by
                the fallback.
            n: samples per batch element (ignored by ``Enumerate``, which takes the support).
            depends_on: the nodes whose samples ``dist``'s parameters were computed from; by default the
                graph finds them (``track=True``) or takes every earlier node (``track=False``).

        Raises:
            TypeError: name is not a str; dist is not a Distribution; n is not an int.
            ValueError: a repeated name; dist's batch shape does not lead with its parents' sample dims;
                an enumerated factor over ``enumerate_budget`` without a fallback; a chain node drawn
                from a node more than ``history`` steps back; the rule's own checks (non-finite
                parameters, unsupported families, ...).
            NotImplementedError: nodes with auxiliary points nested, or one in a ``track=False`` graph.
        """
        where = "sample"
        self._new_name(where, name)
        dist = check_distribution("Graph.sample", dist)
        n = check_n("Graph.sample", n)
        estimator = resolve_estimator("Graph.sample", estimator, dist, n)
        tensors = dist_tensors(dist)
        replayed = shadows_of(tensors)
        # The rule works on a plain copy of the distribution (its parameters as ordinary tensors, autograd
        # kept): the tracking is only needed to find the parents, which the tensors above already tell.
        tracked = dist
        dist = _plain_dist(dist) if any(isinstance(t, Provenance) for t in tensors) else dist
        parents = self._dependencies(tensors, depends_on, where)
        # ancestors: the sampled (not eliminated) ones; enumerated ancestors are reached through the
        # enumerated parents' scopes when the graph sums them out (so a chain's sets do not grow with it)
        ancestors = {p for p in parents if not self.nodes[p].estimator.eliminable}
        for p in parents:
            ancestors |= self.nodes[p].ancestors
        depth = max([0] + [self.nodes[p].dims for p in parents])
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

        state = _rng_state(tensors) if replayed else None
        chain = self._chains[-1] if self._chains else None
        if estimator.eliminable:
            scope = self._scope_of(parents)
            # (a family without an enumerable support is refused by the rule's check below)
            limit = support_size(dist) * math.prod(self.nodes[a].size for a in scope) \
                if leaf(dist).has_enumerate_support else 0
            estimator = estimator.delegate(dist, n, too_large=limit > self.enumerate_budget)
            if estimator.eliminable and limit > self.enumerate_budget:
                raise ValueError(
                    f"Graph.sample: node {name!r} would add a factor over {limit} joint values (its support times "
                    f"the enumerated nodes {self._names_of(scope)} its distribution depends on), over "
                    f"enumerate_budget={self.enumerate_budget}; raise Graph(enumerate_budget=...), or name a "
                    "sampling estimator for such nodes: Enumerate(fallback=ScoreFunction(LeaveOneOut()))."
                )
            for a in scope if estimator.eliminable else ():  # (a sampled node takes no recycled position)
                step = self.nodes[a].step
                if chain is not None and step is not None and step[0] == chain.index \
                        and step[1] < chain.step - chain.history:
                    raise ValueError(
                        f"Graph.sample: node {name!r} (step {chain.step} of Graph.markov(history={chain.history})) "
                        f"is drawn from a distribution computed from node {self.nodes[a].name!r} of step "
                        f"{step[1]}, more than history={chain.history} steps back; raise history"
                        f"{_UNDECLARED if not self.track and depends_on is None else ''}."
                    )
        else:
            estimator = estimator.delegate(dist, n)
        rule = type(estimator).__name__
        estimator.check(dist, n)
        if estimator.eliminable and is_validation_enabled():
            _refuse_clamped_probabilities(name, dist)
        if estimator.auxiliary_points and not self.track:
            raise ValueError(
                f"Graph.sample: node {name!r} uses {rule}, which evaluates the costs at auxiliary points "
                "of its samples by replaying each operation on them; that needs a tracked graph "
                "(Graph(track=True), the default), or gradest.expectation with f."
            )
        if replayed and estimator.auxiliary_points:
            above = self.nodes[next(iter(replayed))]
            raise NotImplementedError(
                f"Graph.sample: node {name!r} ({rule}) is drawn from a distribution computed from node "
                f"{above.name!r} ({type(above.estimator).__name__}); both evaluate the costs at auxiliary "
                "points of their samples, and such nodes cannot be nested. Use ScoreFunction(LeaveOneOut()) "
                f"or RELAX(control) for one of them."
            )
        draw = estimator.draw(dist, n)
        shadow_draws = {a: self._replay(name, tracked, estimator, n, a, len(copies), state)
                        for a, copies in replayed.items()}
        if estimator.eliminable and chain is not None:
            position = chain.position(self, draw.n)
        else:
            position = self._place(depth, draw.n, estimator.shares_sample_dim)
        if position > _MAX_POSITIONS:
            self.slots.pop()
            raise ValueError(
                f"Graph.sample: node {name!r} would take the graph's sample dimension {position}, past "
                f"{_MAX_POSITIONS}: each enumerated node outside Graph.markov (and each Monte Carlo node that "
                "cannot share one) takes its own, and torch tensors have at most 64 dims (many GPU kernels 25). "
                "Draw a chain's nodes inside Graph.markov (nested loops: a markov context for each), so that "
                "their dimensions are reused."
            )
        index = len(self.nodes)
        node = Node(name, index, dist if draw.dist is dist else draw.dist, estimator, draw, position=position,
                    parent_depth=depth, parents=frozenset(parents), ancestors=frozenset(ancestors),
                    shadow_draws=shadow_draws, step=None if chain is None else (chain.index, chain.step),
                    scope=frozenset({index}) if estimator.eliminable else frozenset(self._scope_of(parents)))
        self.nodes.append(node)
        self._names[name] = index
        self.slots[position - 1].nodes.append(index)

        values = draw.values
        if estimator.eliminable and depth:  # the support does not vary along the enumerated parents: no copies
            for i in range(depth):
                if not self.slots[depth - i - 1].shared:
                    values = values.narrow(1 + i, 0, 1)
        value = node.view(values)
        if not self.track:
            return value
        shadows = {a: tuple(node.view(d.values) for d in draws) for a, draws in shadow_draws.items()}
        if estimator.auxiliary_points:
            shadows[index] = tuple(node.view(block) for block in draw.auxiliary.split(draw.n))
        return Provenance.wrap(value, (Tag(self._scope, index, name, rule),), shadows or None)

    def _replay(self, name: str, dist: Distribution, estimator: Estimator, n: int, above: int, copies: int,
                state: tuple[Tensor, dict[int, Tensor]] | None) -> tuple[Draw, ...]:
        """Node ``name``'s draw at each block of ``above``'s auxiliary points: the distribution rebuilt
        from the parameters' copies there, sampled from the same random-number state as the draw itself
        (common random numbers: the same ε for a pathwise node, the same uniforms for bits)."""
        parent = self.nodes[above]
        draws = []
        for block in range(copies):
            with _replaying(state):
                draws.append(estimator.draw(_shadow_dist(dist, above, block), n))
        needs_slope = parent.estimator.differentiable_f == "auxiliary"
        if needs_slope and estimator.differentiable_f != "values" and estimator.weight(draws[0]) is None:
            raise NotImplementedError(
                f"Graph.sample: node {name!r} ({type(estimator).__name__}) is drawn from a distribution "
                f"computed from node {parent.name!r}, whose {type(parent.estimator).__name__} differentiates "
                f"the costs at its relaxed points; {type(estimator).__name__}'s samples carry no derivative "
                "there. Give the lower node a pathwise rule, ScoreFunction or Enumerate, or use "
                f"RELAX(control) for {parent.name!r}."
            )
        return tuple(draws)

    def _place(self, depth: int, m: int, shared: bool) -> int:
        """The position of a new node: the first shareable slot above its parents, else a fresh one."""
        if shared:
            for q in range(depth + 1, len(self.slots) + 1):
                slot = self.slots[q - 1]
                if slot.shared and slot.size == m:
                    return q
        self.slots.append(Slot(m, shared))
        return len(self.slots)

    def _names_of(self, ids: Iterable[int]) -> list[str]:
        return [self.nodes[i].name for i in sorted(ids)]

    def _scope_of(self, ids: Iterable[int]) -> set[int]:
        """The enumerated nodes whose dims the tensors computed from nodes ``ids`` span."""
        return set().union(*(self.nodes[i].scope for i in ids))

    # -- markov chains and observations ---------------------------------------------------------

    def markov(self, iterable: Iterable[T], history: int = 1) -> Iterator[T]:
        """Iterate over ``iterable`` as the steps of a Markov chain: a node drawn at a step depends on
        nodes of at most the last ``history`` steps (and on nodes drawn outside the chain).

        Enumerated nodes of the chain then reuse ``history + 1`` sample positions, so their tensors
        never grow with the chain's length, and ``loss()`` sums them out along the chain by a balanced
        tree of K×K log-semiring products — O(T·K³) work in O(log T) depth for T steps of K states (the
        forward messages of expected costs by a doubling scan, O(T log T·K³)) — never over the K^T joint
        states. Like ``pyro.markov``.

        Raises:
            ValueError: history < 1 (``TypeError`` if not an int), or, at ``sample``, a node of the
                chain drawn from a distribution computed from a node more than ``history`` steps back.

        Example:
            >>> import torch, gradest
            >>> from torch.distributions import Categorical, Normal
            >>> init, trans = torch.zeros(2, requires_grad=True), torch.tensor([[2.0, -2.0], [-2.0, 2.0]])
            >>> y = torch.tensor([0.9, 1.1, -1.0, -0.8])
            >>> with gradest.Graph() as g:
            ...     z = g.sample("z_0", Categorical(logits=init), gradest.Enumerate())
            ...     g.observe("y_0", Normal(2.0 * z - 1.0, 1.0), y[0])
            ...     for t in g.markov(range(1, 4)):
            ...         z = g.sample(f"z_{t}", Categorical(logits=trans[z]), gradest.Enumerate())
            ...         g.observe(f"y_{t}", Normal(2.0 * z - 1.0, 1.0), y[t])
            >>> loss = g.loss()   # −log p(y_0, …, y_3), every z summed out
            >>> loss.backward(); init.grad.shape
            torch.Size([2])
        """
        self._open("markov")
        if isinstance(history, bool) or not isinstance(history, int):
            raise TypeError(
                f"Graph.markov: history={history!r} must be an int >= 1 (1: each step depends on the last)."
            )
        if history < 1:
            raise ValueError(f"Graph.markov: history={history} must be >= 1 (1: each step depends on the last).")
        outer = self._chains[-1] if self._chains else None
        positions = None
        if outer is not None:  # a nested chain reuses the positions of the one at this step's residue
            positions = outer.nested.setdefault((outer.step % (outer.history + 1), outer.inner, history), {})
            outer.inner += 1
        chain = _Chain(self._chain_count, history, positions)
        self._chain_count += 1
        self._chains.append(chain)
        try:
            for step, item in enumerate(iterable):
                chain.step, chain.lane, chain.inner = step, 0, 0
                yield item
        finally:
            self._chains.remove(chain)

    def observe(self, name: str, dist: Distribution, value: Tensor | float, *,
                depends_on: str | Iterable[str] | None = None) -> None:
        """Add the likelihood factor p(value) of observed data under ``dist``.

        ``loss()`` then contains −log of the observations' probability with the enumerated nodes it
        depends on summed out *inside* the log: −log Σ_z p(z) Π p(observations | z) (Pyro's enumeration
        semantics; see the class docstring). Observations that depend on no enumerated node add
        −log p(value) as a cost, credited to the nodes the distribution depends on.

        Args:
            name: a name for error messages.
            dist: the distribution of the data, built from samples and parameters (its dependencies
                are found as for ``sample``).
            value: the data, broadcastable to ``dist``'s batch and event shape; it must not depend on
                any node.
            depends_on: the nodes whose samples ``dist``'s parameters were computed from (names; their
                ancestors are added); by default the graph finds them (``track=True``) or takes every
                node (``track=False``, where a chain's observations should name their step's nodes).

        Raises:
            TypeError: dist is not a Distribution, value is not a tensor or number.
            ValueError: value depends on a node; its log-probability has the wrong shape for the nodes
                it depends on, or combines the batch elements of an enumerated node; a pathwise or
                relaxed node reached only through operations without a derivative. NaN or +inf
                log-probabilities are reported by ``loss()`` (while validation is on).

        Example:
            >>> import torch, gradest
            >>> from torch.distributions import Categorical, Normal
            >>> weights = torch.zeros(2, requires_grad=True)       # a two-component mixture
            >>> locs = torch.tensor([-1.0, 1.0], requires_grad=True)
            >>> y = torch.tensor([0.9, 1.2, -1.1])
            >>> with gradest.Graph() as g:
            ...     k = g.sample("k", Categorical(logits=weights.expand(3, 2)), gradest.Enumerate())
            ...     g.observe("y", Normal(locs[k], 1.0), y)
            >>> loss = g.loss()   # −Σ_i log Σ_k p(k) N(y_i; locs[k], 1)
            >>> per_k = Normal(locs, 1.0).log_prob(y[:, None]) + torch.log_softmax(weights, -1)
            >>> torch.allclose(loss, -torch.logsumexp(per_k, -1).sum())
            True
        """
        where = "observe"
        self._new_name(where, name)
        dist = check_distribution("Graph.observe", dist)
        tensors = dist_tensors(dist)
        if not isinstance(value, Tensor):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"Graph.observe: value={value!r} for {name!r} must be a tensor or a number (the data).")
            floating = [t.dtype for t in tensors if t.is_floating_point()]
            value = torch.as_tensor(value, dtype=floating[0] if floating else torch.get_default_dtype())
        found = depends_on_nodes([value]) if self.track else []
        if found:
            raise ValueError(
                f"Graph.observe: value of {name!r} depends on node(s) {[t.name for t in found]}; "
                "an observation is data: pass the observed tensor itself (a cost of the samples is g.cost)."
            )
        direct = self._dependencies(tensors, depends_on, where)
        deps = set(direct)
        for i in direct:
            deps |= self.nodes[i].ancestors
        depth = max([0] + [self.nodes[i].dims for i in deps])
        extra = value.dim() - len(dist.event_shape) - (len(dist.batch_shape) - depth)
        if extra > 0 and any(size != 1 for size in value.shape[:extra]):
            raise ValueError(
                f"Graph.observe: value of {name!r} has shape {tuple(value.shape)}, whose leading dims would line "
                f"up with the sample dims of nodes {self._names_of(deps)} (dist's batch_shape "
                f"{tuple(dist.batch_shape)} has {depth} of them first): data cannot vary with a latent state. "
                "Give dist the data's batch dims after the sample dims (e.g. Normal(locs[z].unsqueeze(-1), 1.0) "
                "for data of shape [N]), or make the data one event with Independent(...)."
            )
        if not shadows_of(tensors) and any(isinstance(t, Provenance) for t in tensors):
            dist = _plain_dist(dist)  # replayed computations need the tracked distribution; others a plain one
        try:
            log_prob = dist.log_prob(plain(value))
        except ValueError as err:  # torch's validation: a value outside the support
            raise ValueError(
                f"Graph.observe: value of {name!r} is not in the support of dist={describe(dist)} ({err}); check "
                "the data (its range and dtype) or the distribution."
            ) from err
        replayed = shadows_of([log_prob])
        log_prob = plain(log_prob)
        self._check_layout("Graph.observe", f"log-probability of {name!r}", log_prob.shape, depth, deps,
                           self._scope_of(direct), "build dist from the samples without reducing their sample dims"
                           + (_UNDECLARED if not self.track and depends_on is None else ""))
        # NaN and +inf log-probabilities are found by loss() from its value, in one sync for all of them
        auxiliary = self._auxiliary("Graph.observe", f"log-probability of {name!r}", deps, replayed,
                                    tuple(log_prob.shape))
        self.observes.append(self._differentiable("Graph.observe", f"log-probability of {name!r}",
                                                  Cost(log_prob, name, frozenset(deps), depth, auxiliary,
                                                       direct=frozenset(direct))))
        self._observed.add(name)

    # -- costs -----------------------------------------------------------------------------------

    def cost(self, value: Tensor, name: str | None = None, *, depends_on: str | Iterable[str] | None = None) -> None:
        """Add a cost: any tensor computed from samples and parameters (see the class docstring).

        Args:
            value: ``[*sample dims of the nodes it depends on, *batch]``, floating point.
            name: a name for errors (default ``"cost<i>"``).
            depends_on: the nodes whose samples ``value`` was computed from (their ancestors are added;
                ``()`` for none); by default the graph finds them (``track=True``) or takes every node
                (``track=False``).

        Raises:
            TypeError: value is not a floating tensor.
            ValueError: NaN or ±inf values (while validation is on); a shape whose sample or batch dims
                do not line up with the nodes it depends on; a span of enumerated values over the
                budget; a cost that depends on no node and carries no gradient, or may have been rebuilt
                from Python values (unless ``depends_on=()``); a pathwise or relaxed node reached only
                through operations without a derivative.
        """
        where = "cost"
        self._open(where)
        if name is not None and not isinstance(name, str):
            swapped = " (the arguments look swapped)" if isinstance(value, str) else ""
            raise TypeError(
                f"Graph.cost: name={summarize(name)} must be a str{swapped}; the cost comes first: "
                "g.cost(value, name) (sample and observe take the name first)."
            )
        name = name if name is not None else f"cost{len(self.costs)}"
        if not isinstance(value, Tensor):
            raise TypeError(
                f"Graph.cost: cost {name!r} is a {type(value).__name__}, not a tensor; keep the cost in torch "
                "(a cost rebuilt from .tolist(), .item() or .numpy() loses the nodes it depends on)."
            )
        direct = self._dependencies([value], depends_on, where)
        deps = set(direct)
        for i in direct:
            deps |= self.nodes[i].ancestors
        depth = max([0] + [self.nodes[i].dims for i in deps])
        scope = self._scope_of(direct)
        replayed = shadows_of([value])
        value = plain(value)
        check_cost("Graph.cost", value, None, f"cost {name!r}")
        if not deps and depends_on is None and self.track:
            if not value.requires_grad:
                raise ValueError(
                    f"Graph.cost: cost {name!r} depends on no node and carries no gradient, so it adds nothing "
                    "to the gradient; if it was computed from samples through .tolist(), .item(), .numpy() or "
                    "torch.tensor(...), the graph lost track of them: keep the computation in torch ops. Pass "
                    "depends_on=() to add it anyway."
                )
            if self._scope.escaped is not None:
                raise ValueError(
                    f"Graph.cost: cost {name!r} depends on no node, but a tensor computed from samples went "
                    f"through {self._scope.escaped} in this graph: if the cost was rebuilt from such values it "
                    "has lost the nodes it depends on, and their gradient would miss it. Keep the computation "
                    "in torch ops, or pass depends_on=() if this cost truly depends on no node."
                )
        self._check_layout("Graph.cost", f"cost {name!r}", value.shape, depth, deps, scope,
                           "keep the sample dims in the cost (the graph averages over them)"
                           + (_UNDECLARED if not self.track and depends_on is None else ""))
        auxiliary = self._auxiliary("Graph.cost", f"cost {name!r}", deps, replayed, tuple(value.shape))
        record = Cost(value, name, frozenset(deps), depth, auxiliary, direct=frozenset(direct))
        self.costs.append(self._differentiable("Graph.cost", f"cost {name!r}", record))

    def _differentiable(self, where: str, what: str, record: Cost) -> Cost:
        """``record``, refused (while validation is on) where it reaches a pathwise or relaxed node's
        samples only through operations without a derivative."""
        for i in sorted(record.deps):
            if self.nodes[i].estimator.differentiable_f is not None:
                check_differentiable(where, self.nodes[i], record, self.nodes, what)
        return record

    def _check_layout(self, where: str, what: str, shape: torch.Size, depth: int, deps: set[int], scope: set[int],
                      fix: str) -> None:
        """A cost's or an observation's log-probability's shape ``[*sample dims, *batch]`` against the
        nodes ``deps`` it depends on (``scope``: the enumerated nodes it spans directly): each sample dim
        lines up with its position, batch dims with the nodes' batch dims, and the enumerated support it
        spans is within the budget."""
        if len(shape) < depth:
            raise ValueError(
                f"{where}: {what} has shape {tuple(shape)} but depends on nodes {self._names_of(deps)} whose "
                f"samples occupy {depth} leading dims; {fix}."
            )
        at: dict[int, list[int]] = {}  # position -> the nodes it depends on there
        for i in deps | scope:
            at.setdefault(self.nodes[i].position, []).append(i)
        for q in range(1, depth + 1):
            size, slot = shape[depth - q], self.slots[q - 1]
            owners = at.get(q, [])
            # an enumerated ancestor that is not spanned directly leaves a size-1 dim (its children's
            # values are not copied along it); every other owner must keep its dim
            spanned = [i for i in owners if not self.nodes[i].estimator.eliminable or i in scope]
            if size == 1 and spanned and slot.size > 1:
                raise ValueError(
                    f"{where}: {what} has shape {tuple(shape)}: dim {depth - q} has size 1 but it depends on "
                    f"node(s) {self._names_of(spanned)} with {slot.size} samples there; {fix}."
                )
            if size not in (1, slot.size) or (size > 1 and not owners):
                raise ValueError(
                    f"{where}: {what} has shape {tuple(shape)}: dim {depth - q} has size {size}, which does not "
                    f"line up with sample position {q} (nodes {self._names_of(slot.nodes)}, {slot.size} samples) "
                    "of the nodes it depends on."
                )
        batch = shape[depth:]
        for i in sorted(deps):
            node = self.nodes[i]
            if node.estimator.elementwise and len(batch) < len(node.batch):
                raise ValueError(
                    f"{where}: {what} has batch shape {tuple(batch)} but depends on node {node.name!r} (batch "
                    f"shape {tuple(node.batch)}), whose {type(node.estimator).__name__} varies all batch elements "
                    "at once (its i-th row holds every element's i-th value, not their joint values), so a value "
                    "that combines elements would see only that diagonal; keep the node's batch dims, or make "
                    "the coupled coordinates one event with Independent(...)."
                )
            for d, (size, own) in enumerate(zip(batch, node.batch)):
                if size != own and own != 1:  # a size-1 dim would count the cost once per node element
                    raise ValueError(
                        f"{where}: {what} has batch shape {tuple(batch)} but depends on node {node.name!r} with "
                        f"batch shape {tuple(node.batch)}: batch dim {d} has size {size}, not {own} (batch dims "
                        "are matched from the left); keep the node's batch dims, or reduce them away entirely "
                        "(sum without keepdim=True)."
                    )
        joint = 1
        for q in range(1, depth + 1):
            if not self.slots[q - 1].shared and shape[depth - q] > 1:
                joint *= self.slots[q - 1].size
        if joint > self.enumerate_budget:
            raise ValueError(
                f"{where}: {what} spans a joint enumerated support of {joint} points, over "
                f"enumerate_budget={self.enumerate_budget}; raise Graph(enumerate_budget=...) or use "
                "ScoreFunction for some nodes."
            )

    def _auxiliary(self, where: str, what: str, deps: Iterable[int], replayed: dict[int, tuple[Tensor, ...]],
                   shape: tuple[int, ...]) -> dict[int, tuple[Tensor, ...]]:
        """A cost's values at the auxiliary points of the nodes it depends on that have some (their
        replayed copies), each checked like the cost itself."""
        out: dict[int, tuple[Tensor, ...]] = {}
        for i in sorted(deps):
            node = self.nodes[i]
            if not node.estimator.auxiliary_points:
                continue
            if i not in replayed:
                raise ValueError(
                    f"{where}: {what} depends on node {node.name!r}, whose {type(node.estimator).__name__} needs it "
                    "at auxiliary points of its samples, but its computation could not be replayed there (it was "
                    "declared with depends_on=, or left torch); compute it from the node's samples with torch "
                    "operations."
                )
            out[i] = tuple(check_cost(where, plain(t), shape, what) for t in replayed[i])
        return out

    def loss(self) -> Tensor:
        """The scalar surrogate: value = the estimate (see the class docstring for what it is with
        enumerated nodes and observations), gradient = the estimator.

        Built once: a second call returns the same tensor while no node, cost or observation was added
        (stateful baselines such as ``MovingAverage`` update when it is built, and a second update would
        put this batch's own costs into its baseline).

        Raises:
            ValueError: no costs or observations; nothing to differentiate; non-finite observations
                (while validation is on); a graph whose meaning is unclear (see the class docstring).
        """
        size = (len(self.nodes), len(self.costs), len(self.observes))
        if self._loss is not None and self._loss[0] == size:
            return self._loss[1]
        if not self.costs and not self.observes:
            raise ValueError("Graph.loss: no costs were added; call g.cost(value) or g.observe(...) first.")
        if self.observes or any(node.estimator.eliminable for node in self.nodes):
            costs, inside = marginalise(self.nodes, self.slots, self.costs, self.observes, self.enumerate_budget)
            parts = terms(self.nodes, self.slots, costs, exclude=inside) if costs else []
        else:
            parts = terms(self.nodes, self.slots, self.costs)
        if not parts:
            raise ValueError("Graph.loss: no cost depends on a sampled node's parameters or on any parameter; "
                             "there is nothing to differentiate.")
        total = parts[0].sum()
        for t in parts[1:]:
            total = total + t.sum()
        if self.observes and is_validation_enabled() and not math.isfinite(float(total.detach())):
            self._non_finite_observations()
        self._loss = (size, check_gradient("Graph.loss", total))
        return total

    def _non_finite_observations(self) -> None:
        """Raise the reason the loss of a graph with observations is not finite (the costs and the
        distributions' parameters were checked when they were added; a log-probability of -inf is an
        observation impossible under some states, which is fine unless it is under all)."""
        for o in self.observes:
            if bool((o.value.isnan() | (o.value == torch.inf)).any()):
                raise ValueError(
                    f"Graph.loss: the log-probability of observation {o.name!r} is NaN or +inf; check the "
                    "distribution's parameters and the data (NaN, inf) for this observation."
                )
        names = [o.name for o in self.observes]
        raise ValueError(
            "Graph.loss: the observations have probability zero under every joint state of the enumerated "
            "nodes they depend on (or at the samples of the sampled ones), so -log p(observations) = +inf and "
            f"its gradient is undefined; check the data and the distributions of observations {names[:5]}"
            f"{' …' if len(names) > 5 else ''} (a value outside its distribution's support has log-probability -inf)."
        )


_MAX_POSITIONS = 32  # sample dims a graph may use (chains under Graph.markov reuse theirs)
_UNDECLARED = (" (or, as this graph has track=False and no depends_on= was given, it was taken to depend on every "
               "node so far: name the nodes it was computed from with depends_on=)")


def _refuse_clamped_probabilities(name: str, dist: Distribution) -> None:
    """An enumerated node built from probabilities of exactly 0 (or a Bernoulli's 1) that require grad:
    the graph works with log-probabilities, which torch clamps there, losing the gradient."""
    base = leaf(dist)
    probs = vars(base).get("probs")
    if probs is None or not probs.requires_grad:
        return
    logits = base.logits  # type: ignore[attr-defined]  # from probs: clamped (finite) where one is 0 or 1
    edge = (probs == 0) | (probs == 1) if isinstance(base, Bernoulli) else probs == 0
    if bool((edge & torch.isfinite(logits)).any()):
        raise ValueError(
            f"Graph.sample: node {name!r} is built from probs with entries of exactly 0"
            f"{' or 1' if isinstance(base, Bernoulli) else ''} that require grad; the graph sums enumerated "
            "nodes out in log space, where torch clamps log 0 and the gradient with respect to such a "
            "probability is lost. Build the distribution from logits (-inf masks a state exactly), or compute "
            "the expectation of one node with gradest.expectation(..., Enumerate())."
        )


class _Chain:
    """An open ``Graph.markov`` context: its step, and the sample positions its enumerated nodes reuse
    (``history + 1`` sets of lanes, one lane per enumerated node drawn in a step). A chain opened inside
    another one shares its positions with the chains opened at the same place of the outer steps with
    the same residue (the outer history keeps them apart), as nested ``pyro.markov`` contexts do."""

    def __init__(self, index: int, history: int, positions: dict[tuple[int, int, int], int] | None = None) -> None:
        self.index, self.history = index, history
        self.step, self.lane, self.inner = 0, 0, 0  # inner: chains opened so far in this step
        # (step mod (history+1), lane, size) -> position
        self.positions: dict[tuple[int, int, int], int] = {} if positions is None else positions
        self.nested: dict[tuple[int, int, int], dict[tuple[int, int, int], int]] = {}

    def position(self, graph: Graph, size: int) -> int:
        """The position of the next enumerated node of this step (a fresh one the first time round)."""
        key = (self.step % (self.history + 1), self.lane, size)
        self.lane += 1
        if key not in self.positions:
            graph.slots.append(Slot(size, False))
            self.positions[key] = len(graph.slots)
        return self.positions[key]


def _rng_state(tensors: list[Tensor]) -> tuple[Tensor, dict[int, Tensor]]:
    """The CPU generator's state and that of every CUDA device ``tensors`` live on."""
    devices = {t.device.index or 0 for t in tensors if t.device.type == "cuda"}
    return torch.get_rng_state(), {d: torch.cuda.get_rng_state(d) for d in devices}


@contextmanager
def _replaying(state: tuple[Tensor, dict[int, Tensor]] | None) -> Iterator[None]:
    """Run the block from the random-number ``state``, and leave the generators as they were."""
    assert state is not None
    cpu, cuda = state
    with torch.random.fork_rng(devices=list(cuda)):
        torch.set_rng_state(cpu)
        for device, s in cuda.items():
            torch.cuda.set_rng_state(s, device)
        yield


def _shadow_dist(dist: Distribution, above: int, copy: int) -> Distribution:
    """``dist`` with every tensor computed from samples replaced by its copy at ``above``'s ``copy``-th
    block of auxiliary points (plain where it has none)."""

    def swap(t: Provenance) -> Tensor:
        own = t._gradest_shadows
        return plain(own[above][copy]) if own and above in own else plain(t)

    return _substitute(dist, swap)


def _plain_dist(dist: Distribution) -> Distribution:
    """``dist``, or a shallow copy whose :class:`Provenance` tensors (parameters built from samples,
    e.g. ``logits=W[z]``) are plain."""
    return _substitute(dist, plain)


def _substitute(dist: Distribution, swap: Callable[[Provenance], Tensor]) -> Distribution:
    """``dist``, or a shallow copy (through ``Independent`` and ``OneHotCategorical`` wrappers) with
    ``swap(t)`` in place of each :class:`Provenance` tensor ``t`` it holds."""
    own = vars(dist)
    inner = None
    if isinstance(dist, Independent):
        inner = dist.base_dist
    elif isinstance(dist, OneHotCategorical):
        inner = dist._categorical
    new_inner = None if inner is None else _substitute(inner, swap)
    if new_inner is inner and not any(isinstance(v, Provenance) for v in own.values()):
        return dist
    out = copy.copy(dist)
    for k, v in own.items():
        if isinstance(v, Provenance):
            setattr(out, k, swap(v))
    if new_inner is not inner:
        if isinstance(dist, Independent):
            out.base_dist = new_inner  # type: ignore[attr-defined]
        else:
            out._categorical = new_inner  # type: ignore[attr-defined]
    return out
