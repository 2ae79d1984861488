"""Which sampled nodes a tensor depends on: the :class:`Provenance` subclass and the search over it.

Samples leave a tracked graph as :class:`Provenance`, a light tensor subclass that carries the tags
of the nodes it was computed from through every op, floating or not. Autograd alone could not do
this: discrete samples are used as indices, compared and converted to integers, and a continuous
sample thresholded into an index (``table[(y > 0).long()]``) leaves autograd's graph too; with the
tags, ``table[z]``, ``embedding(z)``, ``(b.long() * powers).sum()``, ``b == 1`` and ``y > 0`` all
keep their dependencies. An op that writes samples into a plain tensor in place (``buf[t] = z``,
``h.add_(y)``) makes that tensor carry the tags too, while their graph is open.

The cost is one Python call per op on tensors computed from samples (≈ 5 µs on a CPU); outputs are
re-classed in place, so autograd's graph is the one the plain ops would build. The graph benchmark
measures the total (``BENCHMARKS.md``, task 1).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.utils._pytree import tree_map

__all__ = ["Provenance", "Scope", "Tag", "depends_on", "plain"]


class Scope:
    """A graph's identity and open/closed state, as its tags see it.

    Tags hold this rather than the :class:`~gradest.graph.Graph`: the graph holds its costs as plain
    aliases of tensors carrying tags, and an alias's link to its base is invisible to Python's garbage
    collector, so a tag that held its graph would make every tracked graph uncollectable.
    """

    __slots__ = ("closed",)

    def __init__(self) -> None:
        self.closed = False


class Tag:
    """One node of one graph, as carried by the tensors computed from its samples."""

    __slots__ = ("scope", "index", "name")

    def __init__(self, scope: Scope, index: int, name: str) -> None:
        self.scope, self.index, self.name = scope, index, name


class Provenance(Tensor):
    """A tensor computed from a graph's samples, carrying the tags of the nodes it depends on.

    A tensor that borrowed tags by being updated in place (a buffer the user owns) becomes plain
    again once their graphs have closed; a tensor computed from samples may not be used after that.
    """

    _gradest_tags: tuple[Tag, ...]
    _gradest_borrowed: bool

    @staticmethod
    def wrap(x: Tensor, tags: tuple[Tag, ...]) -> Provenance:
        out = x.as_subclass(Provenance)
        out._gradest_tags = tags
        out._gradest_borrowed = False
        return out

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if kwargs is None:
            kwargs = {}
        if func in _DISPLAY:  # printing a sample (a log line, a traceback) is allowed after its graph closed
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs)
        if _is_compiling():  # the compiler does not run this method: credit would be lost silently
            raise RuntimeError(_COMPILE_MESSAGE)
        found = _collect(args, kwargs)
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **kwargs)
        if not found or func in _NO_WRAP:
            return out
        kind = _KINDS.get(func)
        if kind is None:
            kind = _KINDS[func] = _kind(func)
        if kind is _GETTER:  # an attribute (.grad, .data, .shape): only new tensors are wrapped
            return Provenance.wrap(out, found) if type(out) is Tensor else out
        mutated = kwargs.get("out", args[0] if args and kind is _IN_PLACE else None)
        if isinstance(mutated, Tensor):
            _borrow(mutated, found)
        if type(out) is Tensor and not any(out is a for a in args) and out is not mutated:
            # a new tensor: re-class it rather than wrap it (``as_subclass`` would add an alias node to
            # autograd's graph for every op)
            out.__class__ = Provenance
            out._gradest_tags = found  # type: ignore[attr-defined]
            out._gradest_borrowed = False  # type: ignore[attr-defined]
            return out
        if isinstance(out, Tensor):
            return out if isinstance(out, Provenance) else Provenance.wrap(out, found)
        if isinstance(out, (tuple, list)) and not hasattr(out, "_fields"):
            return type(out)(Provenance.wrap(t, found) if isinstance(t, Tensor) else t for t in out)
        return tree_map(lambda t: Provenance.wrap(t, found) if isinstance(t, Tensor) else t, out)


_is_compiling = torch.compiler.is_compiling
_COMPILE_MESSAGE = (
    "Graph: a tracked graph (track=True, the default) cannot be traced by torch.compile, whose compiler "
    "does not follow the tensor subclass that carries each sample's node; use Graph(track=False) and name "
    "each cost's nodes with depends_on=, or keep the graph outside the compiled function."
)
_DISPLAY = {Tensor.__repr__, Tensor.__format__}
_NO_WRAP = {Tensor.__repr__, Tensor.__format__, Tensor.tolist, Tensor.item, Tensor.numpy}
_SETTERS = {"__setitem__", "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__", "__imod__",
            "__ipow__", "__iand__", "__ior__", "__ixor__", "__ilshift__", "__irshift__"}


_GETTER, _IN_PLACE, _OTHER = "getter", "in-place", "other"
_KINDS: dict[Any, str] = {}  # func -> kind, filled on first use


def _kind(func: Any) -> str:
    name = getattr(func, "__name__", "")
    if name == "__get__":
        return _GETTER
    if name in _SETTERS or (name.endswith("_") and not name.endswith("__")):
        return _IN_PLACE
    return _OTHER


def _borrow(t: Tensor, tags: tuple[Tag, ...]) -> None:
    """``t`` was updated in place from tensors carrying ``tags``: it carries them too."""
    if isinstance(t, Provenance):
        extra = tuple(g for g in tags if g not in t._gradest_tags)
        if extra:
            t._gradest_tags = t._gradest_tags + extra
    elif type(t) is Tensor:  # not nn.Parameter or another subclass
        t.__class__ = Provenance
        t._gradest_tags = tags  # type: ignore[attr-defined]
        t._gradest_borrowed = True  # type: ignore[attr-defined]


def _scan(items: Any, tags: dict[int, Tag]) -> None:
    for a in items:
        if isinstance(a, Provenance):
            for g in _live(a):
                tags[id(g)] = g
        elif isinstance(a, (tuple, list)):
            _scan(a, tags)
        elif isinstance(a, dict):
            _scan(a.values(), tags)


def _live(t: Provenance) -> tuple[Tag, ...]:
    """``t``'s tags, after checking their graphs are open (a borrowed tensor drops closed ones)."""
    tags = t._gradest_tags
    for g in tags:
        if g.scope.closed:
            if not t._gradest_borrowed:
                raise RuntimeError(
                    f"Graph: a sample of node {g.name!r} was used after its graph was closed; "
                    "do all computation on samples inside the `with Graph() as g:` block."
                )
            tags = tuple(h for h in tags if not h.scope.closed)
            t._gradest_tags = tags
            if not tags:
                t.__class__ = Tensor  # type: ignore[assignment]
            break
    return tags


def _collect(args: Any, kwargs: dict[str, Any]) -> tuple[Tag, ...]:
    """The tags carried by an op's arguments (the union)."""
    found: tuple[Tag, ...] = ()
    nested = bool(kwargs)
    for a in args:  # fast path: the op's tensors are top-level arguments, with the same tags
        if isinstance(a, Provenance):
            tags = _live(a)
            if not found or tags is found:
                found = tags
            else:
                nested = True
        elif isinstance(a, (tuple, list, dict)):
            nested = True
    if nested:
        merged: dict[int, Tag] = {}
        _scan(args, merged)
        _scan(kwargs.values(), merged)
        found = tuple(merged.values())
    return found


def plain(t: Tensor) -> Tensor:
    """``t`` as an ordinary tensor (drops :class:`Provenance`, keeps autograd)."""
    return t.as_subclass(Tensor) if isinstance(t, Provenance) else t


def depends_on(tensors: Iterable[Tensor]) -> list[Tag]:
    """The tags of the nodes that ``tensors`` (a cost, or a distribution's parameters) depend on."""
    found: dict[int, Tag] = {}
    for t in tensors:
        if isinstance(t, Provenance):
            for g in _live(t):
                found[id(g)] = g
    return list(found.values())
