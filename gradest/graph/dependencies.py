"""Which sampled nodes a tensor depends on: one pure function, plus the markers it looks for.

Continuous samples are tracked through autograd: they leave the graph as ``value + probe``, where
``probe`` is a zero-valued scalar leaf owned by the node, and a tensor depends on the nodes whose
probes are reachable from its ``grad_fn``. This costs nothing per op.

Discrete samples (Bernoulli bits, categorical indices, one-hot vectors) are used as indices, compared,
converted to integers: autograd cannot follow them. They leave the graph as :class:`Provenance`, a
light tensor subclass that carries its nodes' probes through every op, floating or not, so
``table[z]``, ``embedding(z)``, ``(b.long() * powers).sum()`` and ``b == 1`` all keep their
dependencies. Its cost is one Python call per op on tensors derived from discrete samples; the
graph benchmark measures it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.utils._pytree import tree_map

__all__ = ["Provenance", "depends_on", "mark", "plain"]


class Provenance(Tensor):
    """An integer or boolean tensor that remembers which graph nodes produced it."""

    _gradest_probes: tuple[Tensor, ...]

    @staticmethod
    def wrap(x: Tensor, probes: tuple[Tensor, ...]) -> Provenance:
        out = x.as_subclass(Provenance)
        out._gradest_probes = probes
        return out

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if kwargs is None:
            kwargs = {}
        if func in _DISPLAY:  # printing a sample (a log line, a traceback) is allowed after its graph closed
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs)
        found = _collect(args, kwargs)
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **kwargs)
        if not found or func in _NO_WRAP:
            return out
        if type(out) is Tensor and "out" not in kwargs and not any(out is a for a in args) \
                and func.__name__ != "__get__":
            # A new tensor (not an argument updated in place, nor a stored attribute such as .grad):
            # re-class it rather than wrap it, since ``as_subclass`` would add an alias node to
            # autograd's graph for every op
            out.__class__ = Provenance
            out._gradest_probes = found  # type: ignore[attr-defined]
            return out
        if isinstance(out, Tensor):
            return Provenance.wrap(out, found)
        if isinstance(out, (tuple, list)) and not hasattr(out, "_fields"):
            return type(out)(Provenance.wrap(t, found) if isinstance(t, Tensor) else t for t in out)
        return tree_map(lambda t: Provenance.wrap(t, found) if isinstance(t, Tensor) else t, out)


_DISPLAY = {Tensor.__repr__, Tensor.__format__}
_NO_WRAP = {Tensor.__repr__, Tensor.__format__, Tensor.tolist, Tensor.item, Tensor.numpy}


def _scan(items: Any, probes: dict[int, Tensor]) -> None:
    for a in items:
        if isinstance(a, Provenance):
            for p in a._gradest_probes:
                probes[id(p)] = p
        elif isinstance(a, (tuple, list)):
            _scan(a, probes)
        elif isinstance(a, dict):
            _scan(a.values(), probes)


def _collect(args: Any, kwargs: dict[str, Any]) -> tuple[Tensor, ...]:
    """The probes carried by an op's arguments (the union), after checking their graphs are open."""
    found: tuple[Tensor, ...] = ()
    nested = bool(kwargs)
    for a in args:  # fast path: the op's tensors are top-level arguments, with the same probes
        if isinstance(a, Provenance):
            if not found or a._gradest_probes is found:
                found = a._gradest_probes
            else:
                nested = True
        elif isinstance(a, (tuple, list, dict)):
            nested = True
    if nested:
        probes: dict[int, Tensor] = {}
        _scan(args, probes)
        _scan(kwargs.values(), probes)
        found = tuple(probes.values())
    for p in found:
        if getattr(p, "_gradest_graph").closed:  # probes carry their node's graph, name and index
            raise RuntimeError(
                f"Graph: a sample of node {getattr(p, '_gradest_node')!r} was used after its graph was closed; "
                "do all computation on samples inside the `with Graph() as g:` block."
            )
    return found


def mark(t: Tensor, probe: Tensor) -> Tensor:
    """``t + probe``: the same value (the probe is zero), now reachable from the probe's node."""
    return t + probe.to(t.dtype)


def plain(t: Tensor) -> Tensor:
    """``t`` as an ordinary tensor (drops :class:`Provenance`, keeps autograd)."""
    return t.as_subclass(Tensor) if isinstance(t, Provenance) else t


def depends_on(tensors: Iterable[Tensor], *, autograd: bool = True) -> list[Tensor]:
    """The probes that ``tensors`` depend on (see :func:`_depends_on`).

    torch.compile cannot trace autograd's graph, so there the search runs outside the compiled
    region (a graph break); ``torch.compiler.disable`` is applied lazily so that importing gradest
    does not load the compiler.
    """
    if autograd and torch.compiler.is_compiling():
        return torch.compiler.disable(_depends_on, recursive=True)(tensors, autograd=True)
    return _depends_on(tensors, autograd=autograd)


def _depends_on(tensors: Iterable[Tensor], *, autograd: bool = True) -> list[Tensor]:
    """The probes that ``tensors`` depend on: reachable through autograd, or carried by Provenance.

    Args:
        tensors: the roots (a cost, or a distribution's parameters).
        autograd: also search autograd's graph, for continuous nodes' probes; a graph with no
            continuous nodes skips it (its discrete nodes' probes ride on Provenance).

    Returns:
        The probe tensors found (each marks one node), in no particular order.
    """
    found: dict[int, Tensor] = {}
    stack = []
    seen: set[int] = set()
    for t in tensors:
        for p in getattr(t, "_gradest_probes", ()):
            found[id(p)] = p
        if not autograd:
            continue
        if t.grad_fn is not None:
            stack.append(t.grad_fn)
        elif getattr(t, "_gradest_node", None) is not None:  # a probe itself
            found[id(t)] = t
    while stack:
        fn = stack.pop()
        if id(fn) in seen:
            continue
        seen.add(id(fn))
        variable = getattr(fn, "variable", None)  # AccumulateGrad: a leaf
        if variable is not None:
            if getattr(variable, "_gradest_node", None) is not None:
                found[id(variable)] = variable
            continue
        for nxt, _ in fn.next_functions:
            if nxt is not None and id(nxt) not in seen:
                stack.append(nxt)
    return list(found.values())
