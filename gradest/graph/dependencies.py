"""Which sampled nodes a tensor depends on, and its value at other nodes' auxiliary points.

Samples leave a tracked graph as :class:`Provenance`, a light tensor subclass that carries the tags
of the nodes it was computed from through every op, floating or not. Autograd alone could not do
this: discrete samples are used as indices, compared and converted to integers, and a continuous
sample thresholded into an index (``table[(y > 0).long()]``) leaves autograd's graph too; with the
tags, ``table[z]``, ``embedding(z)``, ``(b.long() * powers).sum()``, ``b == 1`` and ``y > 0`` all
keep their dependencies. An op that writes samples into a plain tensor in place (``buf[t] = z``,
``h.add_(y)``) makes that tensor carry the tags too, while their graph is open.

**Auxiliary points.** A rule that evaluates the cost beyond its samples (REBAR's relaxations, ARM's
antithetic partners, measure-valued perturbations) hands the user only its samples; their tensor also
carries *shadows*: for that node, one copy of the computation per block of auxiliary points. Every op
on a shadowed tensor is replayed on each copy, with every other node held at its samples, so a cost
arrives at ``Graph.cost`` with its value at the node's auxiliary points — what the rule would get from
``f`` in ``expectation``. A shadowed value converted to a Python number or a numpy array
(``.item()``, ``bool(...)``, ``.numpy()``) would make the copies follow the samples' control flow, so
it is an error.

**After the graph closes** its tensors are ordinary tensors: the first op on one drops the tags of
closed graphs and re-classes it as ``torch.Tensor``, so logging (``loss.item()``, ``z.tolist()``) and
later computation just work, and a closed graph's sample used in another graph is data there.

The cost is one Python call per op on tensors computed from samples (≈ 5 µs on a CPU); outputs are
re-classed in place, so autograd's graph is the one the plain ops would build. The graph benchmark
measures the total (``BENCHMARKS.md``, tasks 1 and 5).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

__all__ = ["Provenance", "Scope", "Tag", "depends_on", "shadows_of", "plain"]

Shadows = dict[int, tuple[Tensor, ...]]
"""node index -> the tensor's value at each block of that node's auxiliary points (plain tensors)."""


class Scope:
    """A graph's identity and state, as its tags see it.

    Tags hold this rather than the :class:`~gradest.Graph`: the graph holds its costs as plain
    aliases of tensors carrying tags, and an alias's link to its base is invisible to Python's garbage
    collector, so a tag that held its graph would make every tracked graph uncollectable.

    Attributes:
        closed: whether the graph's ``with`` block has ended.
        escaped: the first operation that turned a tensor computed from samples into a Python value or
            a numpy array while the graph was open (``"Tensor.item"`` …), or None: a later cost that
            depends on no node may have been rebuilt from such a value, losing its dependencies.
    """

    __slots__ = ("closed", "escaped")

    def __init__(self) -> None:
        self.closed = False
        self.escaped: str | None = None


class Tag:
    """One node of one graph, as carried by the tensors computed from its samples."""

    __slots__ = ("scope", "index", "name", "rule")

    def __init__(self, scope: Scope, index: int, name: str, rule: str = "") -> None:
        self.scope, self.index, self.name, self.rule = scope, index, name, rule


class Provenance(Tensor):
    """A tensor computed from a graph's samples, carrying the tags of the nodes it depends on (and, for
    nodes with auxiliary points, its shadows)."""

    _gradest_tags: tuple[Tag, ...]
    _gradest_shadows: Shadows | None = None  # a class default: most tensors have none, and are not set

    @staticmethod
    def wrap(x: Tensor, tags: tuple[Tag, ...], shadows: Shadows | None = None) -> Provenance:
        out = x.as_subclass(Provenance)
        out._gradest_tags = tags
        if shadows is not None:
            out._gradest_shadows = shadows
        return out

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kind = _KINDS.get(func)
        if kind is None:
            kind = _KINDS[func] = _kind(func)
        if kind is _OTHER and (not kwargs or "out" not in kwargs):
            # the fast path (most ops): the tensors are top-level arguments carrying the same tags of an
            # open graph, without shadows, and nothing is written in place; anything else takes the
            # general path below
            found = None
            for a in args if not kwargs else (*args, *kwargs.values()):
                t = type(a)
                if t is Provenance:
                    if a._gradest_shadows is not None or (found is not None and a._gradest_tags is not found):
                        break
                    found = a._gradest_tags
                elif t is tuple or t is list:
                    for e in a:
                        if isinstance(e, (Tensor, tuple, list, dict)):
                            break
                    else:
                        continue
                    break
                elif t is dict:
                    break
            else:
                for g in found or (None,):  # None: no tagged tensor at the top level
                    if g is None or g.scope.closed:
                        break
                else:
                    if _is_compiling():
                        raise RuntimeError(_COMPILE_MESSAGE)
                    with _disable():
                        out = func(*args, **kwargs) if kwargs else func(*args)
                    if type(out) is Tensor:
                        for a in args:
                            if out is a:
                                break
                        else:
                            out.__class__ = Provenance
                            out._gradest_tags = found  # type: ignore[attr-defined]
                            return out
                    return _carry(out, found or (), None, args, None)
        if kwargs is None:
            kwargs = {}
        if kind is _DISPLAY_KIND:  # printing (a log line, a traceback) shows a plain tensor, at any time
            with _disable():
                return func(*tree_map(plain, args), **kwargs)
        if _is_compiling():  # the compiler does not run this method: credit would be lost silently
            raise RuntimeError(_COMPILE_MESSAGE)
        found, shadows = _collect(args, kwargs)
        if kind is _ESCAPE_KIND and found:
            if shadows:  # allowed only where every copy gives the same Python value (no divergence)
                with _disable():
                    out = func(*args, **kwargs)
                for results in _replay(func, args, kwargs, shadows, None).values():
                    if any(not _same(r, out) for r in results):
                        raise RuntimeError(_escape_message(func, found, shadows))
                return out
            for tag in found:
                if tag.scope.escaped is None:
                    tag.scope.escaped = getattr(func, "__qualname__", str(func))
        mutated = kwargs.get("out", args[0] if args and kind is _IN_PLACE else None)
        replayed = _replay(func, args, kwargs, shadows, mutated) if shadows else None
        with _disable():
            out = func(*args, **kwargs)
        if not found or kind is _ESCAPE_KIND:
            return out
        if kind is _GETTER:  # an attribute (.grad, .data, .shape): only new tensors are wrapped
            return Provenance.wrap(out, found) if type(out) is Tensor else out
        if isinstance(mutated, Tensor):
            _borrow(mutated, found, replayed)
        return _carry(out, found, replayed, args, mutated)


def _carry(out: Any, found: tuple[Tag, ...], replayed: Shadows | None, args: Any, mutated: Any) -> Any:
    """An op's result, carrying ``found`` (and the shadows ``replayed``): a new tensor is re-classed in
    place (``as_subclass`` would add an alias node to autograd's graph for every op); an argument
    returned as is keeps its own class; the tensors of a structure (a tuple, a named tuple) are wrapped."""
    if type(out) is Tensor and all(out is not a for a in args) and out is not mutated:
        out.__class__ = Provenance
        out._gradest_tags = found  # type: ignore[attr-defined]
        if replayed is not None:
            out._gradest_shadows = replayed  # type: ignore[attr-defined]
        return out
    if isinstance(out, Tensor):
        if isinstance(out, Provenance):
            if replayed is not None and out is not mutated:
                out._gradest_shadows = replayed
            return out
        return Provenance.wrap(out, found, replayed)
    if not isinstance(out, (tuple, list, dict)) or isinstance(out, torch.Size):
        return out  # a number, a shape, None: nothing to carry
    if not replayed and isinstance(out, (tuple, list)) and not hasattr(out, "_fields"):
        if not any(isinstance(t, Tensor) for t in out):
            return out
        return type(out)(Provenance.wrap(t, found) if isinstance(t, Tensor) else t for t in out)
    leaves, spec = tree_flatten(out)
    if not any(isinstance(t, Tensor) for t in leaves):
        return out
    per_leaf = _split_shadows(replayed, spec, len(leaves))
    wrapped = [Provenance.wrap(t, found, per_leaf[i]) if isinstance(t, Tensor) else t for i, t in enumerate(leaves)]
    return tree_unflatten(wrapped, spec)

_is_compiling = torch.compiler.is_compiling
_COMPILE_MESSAGE = (
    "Graph: a tracked graph (track=True, the default) cannot be traced by torch.compile, whose compiler "
    "does not follow the tensor subclass that carries each sample's node; use Graph(track=False) and name "
    "each cost's nodes with depends_on=, or keep the graph outside the compiled function."
)
_DISPLAY = {Tensor.__repr__, Tensor.__format__, Tensor.__str__}
_ESCAPES = {Tensor.tolist, Tensor.item, Tensor.numpy, Tensor.__array__, Tensor.__bool__, Tensor.__float__,
            Tensor.__int__, Tensor.__index__, Tensor.__complex__, torch.equal, torch.allclose, Tensor.is_nonzero}
_SETTERS = {"__setitem__", "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__", "__imod__",
            "__ipow__", "__iand__", "__ior__", "__ixor__", "__ilshift__", "__irshift__"}


_GETTER, _IN_PLACE, _OTHER = "getter", "in-place", "other"
_DISPLAY_KIND, _ESCAPE_KIND = "display", "escape"
_disable = torch._C.DisableTorchFunctionSubclass
_KINDS: dict[Any, str] = {}  # func -> kind, filled on first use


def _kind(func: Any) -> str:
    if func in _DISPLAY:
        return _DISPLAY_KIND
    if func in _ESCAPES:
        return _ESCAPE_KIND
    name = getattr(func, "__name__", "")
    if name == "__get__":
        return _GETTER
    if name in _SETTERS or (name.endswith("_") and not name.endswith("__")):
        return _IN_PLACE
    return _OTHER


def _escape_message(func: Any, found: tuple[Tag, ...], shadows: Shadows) -> str:
    names = [t.name for t in found if t.index in shadows]
    rule = next((t.rule for t in found if t.index in shadows), "")
    return (
        f"Graph: {getattr(func, '__qualname__', func)} turned a tensor computed from node {names[0]!r} into a "
        f"Python value that differs at the node's auxiliary points; {rule or 'its rule'} evaluates the costs "
        "there by replaying every tensor operation, and a Python value (an if on a tensor, .item(), .tolist(), "
        ".numpy()) would make them follow the samples' control flow. Keep the computation in tensor "
        "operations (torch.where instead of if), or use ScoreFunction(LeaveOneOut()) for the node."
    )


def _same(a: Any, b: Any) -> bool:
    """Whether two results of a conversion (numbers, lists, numpy arrays) are equal."""
    try:
        return bool(a == b) if not hasattr(a, "shape") else bool((a == b).all())
    except (TypeError, ValueError):
        return False


def _borrow(t: Tensor, tags: tuple[Tag, ...], replayed: Shadows | None) -> None:
    """``t`` was updated in place from tensors carrying ``tags``: it carries them too (and the shadows
    its copies took in the replay)."""
    if isinstance(t, Provenance):
        extra = tuple(g for g in tags if g not in t._gradest_tags)
        if extra:
            t._gradest_tags = t._gradest_tags + extra
        if replayed:
            t._gradest_shadows = {**(t._gradest_shadows or {}), **replayed}
    elif type(t) is Tensor:  # not nn.Parameter or another subclass
        t.__class__ = Provenance
        t._gradest_tags = tags  # type: ignore[attr-defined]
        if replayed:
            t._gradest_shadows = replayed  # type: ignore[attr-defined]


def _replay(func: Any, args: Any, kwargs: dict[str, Any], shadows: Shadows, mutated: Any) -> Shadows:
    """The op applied to each shadow copy of each node, the other nodes held at their samples.

    For an op that writes into ``mutated`` in place, each copy writes into that tensor's own copy (a
    clone of it before the op, when it has none yet: the replay runs before the op itself), and that
    copy is the replay's result."""
    out: Shadows = {}
    with _disable():
        for index, count in ((i, len(c)) for i, c in shadows.items()):
            results = []
            for copy in range(count):
                target = None
                if isinstance(mutated, Tensor):
                    own = mutated._gradest_shadows if isinstance(mutated, Provenance) else None
                    target = own[index][copy] if own and index in own else plain(mutated).clone()

                def pick(a: Any, index: int = index, copy: int = copy, target: Any = target) -> Any:
                    if a is mutated and target is not None:
                        return target
                    if isinstance(a, Provenance):
                        own = a._gradest_shadows
                        if own and index in own:
                            return own[index][copy]
                    return a

                result = func(*tree_map(pick, args), **tree_map(pick, kwargs))
                results.append(target if target is not None else result)
            out[index] = tuple(results)
    return out


def _split_shadows(replayed: Shadows | None, spec: Any, count: int) -> list[Shadows | None]:
    """Per leaf of a structured output (a tuple of tensors), the shadows of that leaf."""
    if not replayed:
        return [None] * count
    per: list[Shadows | None] = [{} for _ in range(count)]
    for index, results in replayed.items():
        flat = [tree_flatten(r)[0] for r in results]
        for i in range(count):
            per[i][index] = tuple(f[i] for f in flat)  # type: ignore[index]
    return per


def _live(t: Provenance) -> tuple[Tag, ...]:
    """``t``'s tags of open graphs; once none is left, ``t`` is re-classed as a plain tensor."""
    tags = t._gradest_tags
    for g in tags:
        if g.scope.closed:
            tags = tuple(h for h in tags if not h.scope.closed)
            t._gradest_tags = tags
            if t._gradest_shadows:
                live = {h.index for h in tags}
                t._gradest_shadows = {i: c for i, c in t._gradest_shadows.items() if i in live} or None
            if not tags:
                t.__class__ = Tensor  # type: ignore[assignment]
            break
    return tags


def _collect(args: Any, kwargs: dict[str, Any]) -> tuple[tuple[Tag, ...], Shadows | None]:
    """The tags carried by an op's arguments (the union), and their shadows (merged)."""
    found: tuple[Tag, ...] = ()
    shadows: Shadows | None = None
    nested = bool(kwargs) and any(isinstance(v, (Tensor, tuple, list, dict)) for v in kwargs.values())
    for a in args:  # fast path: the op's tensors are top-level arguments, with the same tags
        if isinstance(a, Provenance):
            tags = _live(a)
            if not tags:  # re-classed as a plain tensor: its graphs are closed
                continue
            if a._gradest_shadows:
                shadows = {**(shadows or {}), **a._gradest_shadows}
            if not found or tags is found:
                found = tags
            else:
                nested = True
        elif isinstance(a, (tuple, list, dict)):
            nested = True
    if nested:
        merged: dict[int, Tag] = {}
        for a in tree_flatten((args, kwargs))[0]:
            if isinstance(a, Provenance) and _live(a):
                for g in a._gradest_tags:
                    merged[id(g)] = g
                if a._gradest_shadows:
                    shadows = {**(shadows or {}), **a._gradest_shadows}
        found = tuple(merged.values())
    return found, shadows


def plain(t: Any) -> Any:
    """``t`` as an ordinary tensor (drops :class:`Provenance`, keeps autograd); anything else as is."""
    return t.as_subclass(Tensor) if isinstance(t, Provenance) else t


def depends_on(tensors: Iterable[Tensor]) -> list[Tag]:
    """The tags of the nodes that ``tensors`` (a cost, or a distribution's parameters) depend on."""
    found: dict[int, Tag] = {}
    for t in tensors:
        if isinstance(t, Provenance):
            for g in _live(t):
                found[id(g)] = g
    return list(found.values())


def shadows_of(tensors: Iterable[Tensor]) -> Shadows:
    """The shadows ``tensors`` carry (merged): their values at the auxiliary points of each node."""
    out: Shadows = {}
    for t in tensors:
        if isinstance(t, Provenance) and t._gradest_shadows:
            out.update(t._gradest_shadows)
    return out
