r"""Enumerated nodes summed out of a graph by variable elimination, before the Monte Carlo composition.

The enumerated nodes (rules that declare ``eliminable``) fall into connected *components*: two are
connected when a factor spans both — a node's probability given its enumerated parents, a cost, an
observation. Each component becomes one term, which depends only on the sampled nodes the component's
factors depend on; ``compose.terms`` then composes those terms with the sampled nodes' estimators as it
does any cost:

- a component with costs (and no observations) contributes the exact expected cost
  :math:`\sum_c \mathbb{E}_{z}[c]` (weights: the conditional probabilities, so Z = 1 identically);
- a component with observations (and no costs) contributes :math:`-\log\sum_z \prod_e p(z_e\mid
  \mathrm{pa}_e)\prod_o p(y_o\mid z)`, the negative log-probability of the observations with the
  enumerated nodes summed out inside the log;
- a component with both is an error: whether its costs are expectations under the prior or under
  the posterior given the observations is not something to guess.

Sampled nodes drawn *below* an enumerated node of a cost component (a pathwise or score-function
node whose distribution is built from the enumerated samples) are handled inside: their weights multiply
the costs and their corrections join as costs, before the component's sum (all of it is linear, so
their Monte Carlo reductions and the enumerated sums commute). Below an enumerated node of an
observation component they would put a Monte Carlo average inside the log: an error.

The elimination itself is ``eliminate.py``: a component that is a chain of ``Graph.markov`` steps is
reduced by a balanced tree of semiring matrix products over the stacked per-step factors; any other one
by greedy min-fill elimination, with the graph's ``enumerate_budget`` bounding every intermediate factor.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import torch
from torch import Tensor

from gradest._validation import broadcast_shapes
from gradest.graph.compose import Cost, Node, Slot, correction_term, reduce_position, weighted
from gradest.graph.eliminate import (
    BudgetError,
    Factor,
    chain_expectation,
    chain_total,
    combine,
    eliminate,
    plate,
    reduce_plates,
)

__all__ = ["marginalise"]


class _Weights(dict):  # type: ignore[type-arg]
    """Nodes' weights, computed when first read (a chain's enumerated nodes never need theirs here)."""

    def __init__(self, nodes: list[Node]) -> None:
        super().__init__()
        self.nodes = nodes

    def __missing__(self, i: int) -> Tensor | None:
        self[i] = w = self.nodes[i].estimator.weight(self.nodes[i].draw)
        return w


class _Components:
    """Union-find over node indices."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, a: int) -> int:
        self.parent.setdefault(a, a)
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def join(self, items: Iterable[int]) -> None:
        items = list(items)
        for a in items[1:]:
            self.parent[self.find(a)] = self.find(items[0])


def marginalise(nodes: list[Node], slots: list[Slot], costs: list[Cost], observes: list[Cost],
                budget: int) -> tuple[list[Cost], frozenset[int]]:
    """The costs for ``compose.terms``: the costs and observations that touch no enumerated node (an
    observation as the cost −log p), plus one cost per component (see the module docstring); and the
    nodes handled here (enumerated ones, and the sampled nodes drawn below them)."""
    scope = [node.scope for node in nodes]
    enumerated = {n.index for n in nodes if n.estimator.eliminable}
    inner = {n.index for n in nodes if n.index not in enumerated and scope[n.index]}


    groups = _Components()
    for e in enumerated:
        groups.join([e, *scope_of_parents(nodes, scope, e)])
    for i in inner:
        groups.join(scope[i])
    records = [(c, False) for c in costs] + [(o, True) for o in observes]
    for c, _ in records:
        groups.join(_record_scope(c, scope))

    regular: list[Cost] = []
    by_component: dict[int, list[tuple[Cost, bool]]] = defaultdict(list)
    for c, observed in records:
        s = _record_scope(c, scope)
        if not s:
            regular.append(Cost(-c.value, f"-log p({c.name})", c.deps, c.depth,
                                {i: tuple(-t for t in v) for i, v in c.auxiliary.items()}) if observed else c)
        else:
            by_component[groups.find(next(iter(s)))].append((c, observed))
    members: dict[int, list[int]] = defaultdict(list)
    for e in sorted(enumerated):
        members[groups.find(e)].append(e)

    weights = _Weights(nodes)
    for root, recs in by_component.items():
        comp = members[root]
        comp_inner = sorted(i for i in inner if scope[i] and groups.find(next(iter(scope[i]))) == root)
        regular += _component(nodes, slots, comp, comp_inner, recs, scope, weights, budget)
    return regular, frozenset(enumerated | inner)


def scope_of_parents(nodes: list[Node], scope: list[frozenset[int]], e: int) -> frozenset[int]:
    return frozenset().union(*(scope[p] for p in nodes[e].parents))


def _component(nodes: list[Node], slots: list[Slot], comp: list[int], comp_inner: list[int],
               records: list[tuple[Cost, bool]], scope: list[frozenset[int]], weights: dict[int, Tensor | None],
               budget: int) -> list[Cost]:
    names = [nodes[e].name for e in comp]
    observed = [c for c, o in records if o]
    costed = [c for c, o in records if not o]
    if observed and costed:
        raise ValueError(
            f"Graph.loss: enumerated node(s) {names} carry both costs ({[c.name for c in costed]}) and observations "
            f"({[c.name for c in observed]}); a cost's expectation under the prior and the observations' marginal "
            "likelihood cannot share the nodes summed out: keep costs on nodes that no observation depends on "
            "(for an ELBO, write the log-likelihood as a cost), or turn the costs into observations."
        )
    inner = set(comp_inner)
    if observed:
        below = sorted({i for c in observed for i in c.deps if i in inner})
        if below:
            raise ValueError(
                f"Graph.loss: observation(s) {[c.name for c in observed]} depend on sampled node(s) "
                f"{[nodes[i].name for i in below]} drawn below enumerated node(s) {names}; their Monte Carlo "
                "average would sit inside the log of the marginal likelihood (a biased estimate of it). Enumerate "
                "those nodes too, or write the log-likelihood as a cost (an expectation, as an ELBO does)."
            )

    # Each entry: (tensor in graph layout, its sample dims, its enumerated scope, the sampled nodes outside
    # the component it depends on, and a name for errors). Log weights first, then the costs.
    members = frozenset(comp)
    logs: list[tuple[Tensor, int, frozenset[int], frozenset[int], str]] = []
    for e in comp:
        node = nodes[e]
        log = node.view(node.draw.log_probs)  # type: ignore[attr-defined]
        logs.append((log, node.dims, frozenset({e}) | scope_of_parents(nodes, scope, e), node.ancestors, node.name))
    for c in observed:
        logs.append((c.value, c.depth, _record_scope(c, scope), c.deps - inner - members, c.name))
    additive: list[tuple[Tensor, int, frozenset[int], frozenset[int], str]] = []
    for c in costed:
        additive.append((weighted(nodes, c, weights, inner), c.depth, _record_scope(c, scope), c.deps - inner - members,
                         c.name))
    for i in comp_inner:
        w = nodes[i]
        # the baseline regresses on the costs given the enumerated states (their probabilities enter
        # through the elimination below, not into the costs it sees)
        given = {j: None if j in members else weights[j] for c in costed if i in c.deps for j in c.deps}
        x = correction_term(nodes, slots, w, costed, weights, inner, given)
        if x is not None:
            additive.append((x, w.position, scope[i], w.ancestors - inner, f"correction of {w.name!r}"))

    entries = logs + additive
    depth = max(d for _, d, _, _, _ in entries)
    batch_rank = max(t.dim() - d for t, d, _, _, _ in entries)
    enum_positions = {q for q, slot in enumerate(slots, 1) if not slot.shared}

    def factor(entry: tuple[Tensor, int, frozenset[int], frozenset[int], str], is_log: bool) -> Factor:
        t, d, labels, _, role = entry
        labels_t = tuple(sorted(labels))
        f = _labelled(t, d, labels_t, depth, batch_rank, nodes, enum_positions, role)
        return Factor(labels_t, f, None) if is_log else Factor(labels_t, None, f)

    weights_f = [factor(e, True) for e in logs]
    # The batch dims are plates: a node has its own copies along those where its own factor varies
    # ("inside"); a factor varying along a plate none of its nodes is inside is the product of its copies.
    width = weights_f[0].log.dim() - len(weights_f[0].labels)  # type: ignore[union-attr]
    plates = range(width - batch_rank, width)
    inside = {e: frozenset(d for d in plates if weights_f[k].log.shape[d] > 1)  # type: ignore[union-attr]
              for k, e in enumerate(comp)}
    weights_f = [reduce_plates(f, inside, plates) for f in weights_f]
    if observed:  # one term: −log Z, credited to every sampled node outside it that it depends on
        outer = frozenset().union(*(e[3] for e in logs)) - inner
        chained = _chain(nodes, comp, weights_f, inside)
        if chained is not None:
            first, (pair_log, _), shared = chained
            assert first.log is not None
            log_z = chain_total(first.log, pair_log, shared)
        else:
            log_z = _eliminate(nodes, comp, weights_f, budget, inside, plates).log  # type: ignore[assignment]
        assert log_z is not None
        return [_term(nodes, slots, -log_z, depth, enum_positions, outer, inner,
                      "-log p(" + ", ".join(c.name for c in observed) + ")")]
    # Costs: each is credited to exactly the nodes it depends on — the sampled ones outside (its own
    # and those of the enumerated nodes above it) and the enumerated ones above it, whose factors alone
    # enter its expectation (a later node's normalisation never reaches it, not even by rounding).
    chained = _chain(nodes, comp, weights_f + [factor(e, False) for e in additive], inside)
    parents = {e: scope_of_parents(nodes, scope, e) for e in comp} if chained is None else {}
    groups: dict[tuple[frozenset[int], frozenset[int] | None], list[int]] = defaultdict(list)
    for k, entry in enumerate(additive):
        # an enumerated node's ancestors are the sampled ones above it, through its enumerated parents too
        outer = entry[3].union(*(nodes[e].ancestors for e in entry[2])) - inner
        groups[(outer, None if chained is not None else _closure(entry[2], parents))].append(k)
    out = []
    for (outer, closed), members_k in groups.items():
        costs_f = [factor(additive[k], False) for k in members_k]
        label = "E[" + ", ".join(additive[k][4] for k in members_k) + "]"
        if chained is not None:
            first, (pair_log, pair_r), shared = _chain(nodes, comp, weights_f + costs_f, inside)  # type: ignore[misc]
            value = chain_expectation(first, (pair_log, pair_r), shared)
        else:
            assert closed is not None
            kept = [f for f, e in zip(weights_f, logs) if e[2] <= closed]
            result = _eliminate(nodes, sorted(closed), kept + costs_f, budget, inside, plates)
            value = result.r if result.r is not None else torch.zeros_like(result.log)  # type: ignore[arg-type]
        out.append(_term(nodes, slots, value, depth, enum_positions, outer, inner, label))
    return out


def _closure(labels: frozenset[int], parents: dict[int, frozenset[int]]) -> frozenset[int]:
    """``labels`` and every enumerated node above them."""
    out, todo = set(labels), list(labels)
    while todo:
        for p in parents[todo.pop()]:
            if p not in out:
                out.add(p)
                todo.append(p)
    return frozenset(out)


def _eliminate(nodes: list[Node], comp: list[int], factors: list[Factor], budget: int,
               inside: dict[int, frozenset[int]], plates: range) -> Factor:
    """``factors`` with every enumerated node of ``comp`` summed out (greedy min-fill order)."""
    try:
        return eliminate(factors, {e: nodes[e].size for e in comp}, budget=budget,
                         names={e: nodes[e].name for e in comp}, inside=inside, plates=plates)
    except BudgetError as err:
        raise ValueError(
            f"Graph.loss: {err} (enumerate_budget); raise Graph(enumerate_budget=...), declare the chain structure "
            "with Graph.markov, or name a sampling estimator for the widest nodes: "
            "Enumerate(fallback=ScoreFunction(LeaveOneOut()))."
        ) from None
    except NotImplementedError as err:
        raise NotImplementedError(
            f"Graph.loss: {err}; give the shared node the batch dim too, or make the batch one event with "
            "Independent(...)."
        ) from None


def _term(nodes: list[Node], slots: list[Slot], value: Tensor, depth: int, enum_positions: set[int],
          outer: frozenset[int], inner: set[int], label: str) -> Cost:
    """An eliminated component's value (plate layout) as a cost in graph layout for ``compose.terms``: the
    sample positions of the sampled nodes drawn below it reduced by their rules, credited to ``outer``."""
    value = _graph_layout(value, depth, enum_positions)
    for q in range(depth, 0, -1):  # reduce the positions of the sampled nodes drawn below (only theirs)
        owners = set(slots[q - 1].nodes)
        if q in enum_positions or owners & outer or not owners & inner:
            continue
        dim = depth - q
        value = reduce_position(nodes[slots[q - 1].nodes[0]], value.movedim(dim, 0)).unsqueeze(0).movedim(0, dim)
    deps = frozenset(outer).union(*(nodes[i].ancestors for i in outer))
    keep = max([0] + [nodes[i].dims for i in deps])
    value = value.reshape(value.shape[depth - keep :]) if keep < depth else value
    return Cost(value, label, deps, keep)


def _record_scope(c: Cost, scope: list[frozenset[int]]) -> frozenset[int]:
    return frozenset().union(*(scope[i] for i in (c.deps if c.direct is None else c.direct)))


def _labelled(t: Tensor, d: int, labels: tuple[int, ...], depth: int, batch_rank: int, nodes: list[Node],
              enum_positions: set[int], role: str) -> Tensor:
    """A graph-layout tensor (``d`` sample dims) as ``[*plate, *labels]``: its enumerated positions moved to
    the end in label order (the others, all of size 1, dropped), the plate being the sample positions of
    the sampled nodes and the batch dims, padded to ``depth`` sample dims and ``batch_rank`` batch dims."""
    if d < depth:
        t = t.reshape((1,) * (depth - d) + t.shape)
    batch = t.dim() - depth
    if batch < batch_rank:
        t = t.reshape(t.shape + (1,) * (batch_rank - batch))
    at: dict[int, int] = {}
    for e in labels:
        q = nodes[e].position
        if q in at.values():
            other = next(k for k, v in at.items() if v == q)
            raise ValueError(
                f"Graph.loss: {role!r} depends on nodes {nodes[other].name!r} and {nodes[e].name!r}, which share a "
                "sample position under Graph.markov: it spans more steps than the chain's history; raise "
                "Graph.markov(history=...)."
            )
        at[e] = q
    label_dims = [depth - at[e] for e in labels]
    drop = [depth - q for q in enum_positions if q <= depth and depth - q not in label_dims]
    for dim in drop:
        if t.shape[dim] != 1:
            raise ValueError(
                f"Graph.loss: {role!r} varies along the sample position of an enumerated node it is not known to "
                "depend on; build it from the samples with torch operations (so the graph tracks them)."
            )
    t = t.movedim(label_dims, list(range(t.dim() - len(labels), t.dim())))
    keep = [k for k in range(t.dim() - len(labels)) if k not in _shifted(drop, label_dims)]
    return t.reshape([t.shape[k] for k in keep] + list(t.shape[t.dim() - len(labels):]))


def _shifted(drop: list[int], moved: list[int]) -> list[int]:
    """Indices of the ``drop`` dims after ``moved`` dims were moved to the end."""
    return [k - sum(1 for m in moved if m < k) for k in drop]


def _graph_layout(value: Tensor, depth: int, enum_positions: set[int]) -> Tensor:
    """A plate tensor (sampled positions, then batch) back in graph layout: size-1 dims at the enumerated
    positions, ``depth`` sample dims."""
    for q in sorted((q for q in enum_positions if q <= depth), reverse=True):
        value = value.unsqueeze(depth - q)
    return value


def _chain(nodes: list[Node], comp: list[int], factors: list[Factor], inside: dict[int, frozenset[int]]
           ) -> tuple[Factor, tuple[Tensor, Tensor | None], tuple[int, ...]] | None:
    """The component's factors as a chain of ``Graph.markov`` steps: the first state's factor ``[*plate, S]``,
    the stacked pair factors ``[T, *plate, S, S]`` (log, r), and the plates the first state is shared by
    (the later states have copies along them); None when it is not a chain.

    The enumerated nodes group into states (a markov step's nodes, or a node drawn outside a chain);
    it is a chain when every factor spans one state or two consecutive ones, every state has the same
    sizes, and every state after the first is inside the same plates (the first inside some of them).
    Each step's factors are summed into one pair factor ``[*plate, S, S]``; factors of the same role at
    every step are stacked first, so the work is a few tensor operations whatever the length.
    """
    keys: dict[int, object] = {e: nodes[e].step if nodes[e].step is not None else ("node", e) for e in comp}
    order: list[object] = list(dict.fromkeys(keys[e] for e in comp))  # the states, in creation order
    if len(order) < 3:
        return None
    where = {k: i for i, k in enumerate(order)}
    lanes: dict[object, list[int]] = defaultdict(list)
    for e in comp:
        lanes[keys[e]].append(e)
    shapes = [tuple(nodes[e].size for e in lanes[k]) for k in order]
    if any(s != shapes[0] for s in shapes[1:]):  # (a first state of another size: the general order)
        return None
    within = [frozenset().union(*(inside[e] for e in lanes[k])) for k in order]
    if any(w != within[1] for w in within[2:]) or not within[0] <= within[1]:
        return None
    per_step: list[list[Factor]] = [[] for _ in order]
    for f in factors:
        touched = sorted({where[keys[e]] for e in f.labels})
        if len(touched) > 2 or (len(touched) == 2 and touched[1] - touched[0] != 1):
            return None
        per_step[touched[-1]].append(f)

    def relative(f: Factor, t: int) -> tuple[int, ...]:
        out = []
        for e in f.labels:
            s = where[keys[e]]
            out.append(lanes[order[s]].index(e) + (len(lanes[order[t - 1]]) if s == t else 0))
        return tuple(out)

    first = combine(per_step[0], tuple(lanes[order[0]])) if per_step[0] else None
    if first is None or any(e not in first.labels for e in lanes[order[0]]):
        return None
    first = _flatten_lanes(first, len(lanes[order[0]]))
    prev_width = len(lanes[order[0]])
    width = len(lanes[order[1]])
    union = tuple(range(prev_width + width))
    signature = [(f.log is not None, relative(f, 1), _tensor(f).shape) for f in per_step[1]]
    uniform = all(
        [(f.log is not None, relative(f, t), _tensor(f).shape) for f in per_step[t]] == signature
        for t in range(2, len(order))
    ) and prev_width == width
    if uniform:
        stacked = []
        for k, (is_log, labels, _) in enumerate(signature):
            tensors = [_tensor(per_step[t][k]) for t in range(1, len(order))]
            big = torch.stack(tensors, 0)  # [T - 1, *plate, *labels]
            stacked.append(Factor(labels, big if is_log else None, None if is_log else big))
        pair = combine(stacked, union)
    else:
        if prev_width != width:
            return None
        steps = []
        for t in range(1, len(order)):
            steps.append(combine([Factor(relative(f, t), f.log, f.r) for f in per_step[t]], union))
        plate_dims = max(len(plate(s)) for s in steps)
        pair = Factor(union, _stack([s.log for s in steps], plate_dims, union),
                      _stack([s.r for s in steps], plate_dims, union))
    sizes = shapes[0] + shapes[0]  # a lane no factor of a step spans (a leaf of the step before) is expanded
    pair = _flatten_pairs(Factor(pair.labels, _full(pair.log, sizes), _full(pair.r, sizes)), prev_width, width)
    assert pair.log is not None
    return first, (pair.log, pair.r), tuple(sorted(within[1] - within[0]))


def _full(t: Tensor | None, sizes: tuple[int, ...]) -> Tensor | None:
    """``t`` ``[..., *labels]`` with each label dim expanded to its size (a missing label has size 1)."""
    return None if t is None else t.expand(*t.shape[: t.dim() - len(sizes)], *sizes)


def _tensor(f: Factor) -> Tensor:
    """A factor's one part (a log weight or a cost)."""
    t = f.log if f.log is not None else f.r
    assert t is not None
    return t


def _stack(parts: list[Tensor | None], plate_dims: int, union: tuple[int, ...]) -> Tensor | None:
    """The per-step tensors (None: 0) stacked along a new leading dim, broadcast to one shape."""
    if all(p is None for p in parts):
        return None
    ref = next(p for p in parts if p is not None)
    full = []
    for p in parts:
        p = torch.zeros_like(ref) if p is None else p
        if p.dim() < plate_dims + len(union):
            p = p.reshape((1,) * (plate_dims + len(union) - p.dim()) + p.shape)
        full.append(p)
    shape = full[0].shape
    for p in full[1:]:
        shape = broadcast_shapes(shape, p.shape)
    return torch.stack([p.expand(shape) for p in full], 0)


def _flatten_lanes(f: Factor, width: int) -> Factor:
    """A factor over one state's ``width`` lanes as one label of their joint size."""
    def flat(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.flatten(t.dim() - width) if width > 1 else t
    return Factor((0,), flat(f.log), flat(f.r))


def _flatten_pairs(f: Factor, prev_width: int, width: int) -> Factor:
    """``[T, *plate, *prev lanes, *lanes]`` as ``[T, *plate, S_prev, S]``."""
    def flat(t: Tensor | None) -> Tensor | None:
        if t is None:
            return None
        n = t.dim()
        t = t.flatten(n - width) if width > 1 else t
        n = t.dim()
        return t.flatten(n - 1 - prev_width, n - 2) if prev_width > 1 else t
    return Factor((0, 1), flat(f.log), flat(f.r))
