"""Does a cost reach a node's points through operations with a derivative? (autograd's graph, read)

Pathwise rules and relaxations are right only when f is differentiable at the points they evaluate it
at. A cost that reaches those points only through a comparison, an integer cast, ``argmax``, a
``.detach()`` or a numpy round trip has no autograd path to them at all, and one through ``round``,
``sign``, ``floor``, ``ceil`` or ``trunc`` has a path whose derivative is zero everywhere: either way
the estimator would be exactly zero or biased without a word. :func:`differentiable_path` walks the
cost's autograd graph once (not a backward pass) and answers whether some path avoids those.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor

__all__ = ["differentiable_path", "ZERO_DERIVATIVE"]

ZERO_DERIVATIVE = frozenset({
    "RoundBackward0", "RoundBackward1", "SignBackward0", "SgnBackward0", "FloorBackward0", "CeilBackward0",
    "TruncBackward0",
})
"""autograd nodes of operations whose derivative is zero wherever it exists."""


def differentiable_path(output: Tensor, targets: Iterable[Tensor]) -> bool:
    """Whether ``output`` depends on any of ``targets`` through operations with a derivative.

    The walk starts at ``output.grad_fn`` and follows ``next_functions`` depth first, never through a
    node in :data:`ZERO_DERIVATIVE`; it stops at the first target reached (a target's ``grad_fn``, or
    its gradient accumulator when it is a leaf). Targets that do not require grad are ignored: with
    nothing to differentiate there is nothing to check, and the function returns True.
    """
    wanted = set()
    for t in targets:
        if not t.requires_grad:
            continue
        node = t.grad_fn
        if node is None:  # a leaf: its accumulator is reached through the graph of any output using it
            node = t.view_as(t).grad_fn.next_functions[0][0]  # type: ignore[union-attr]
        wanted.add(node)
    if not wanted:
        return True
    if output.grad_fn is None:
        return False
    stack, seen = [output.grad_fn], set()
    while stack:
        node = stack.pop()
        if node in wanted:
            return True
        if node is None or node in seen or type(node).__name__ in ZERO_DERIVATIVE:
            continue
        seen.add(node)
        stack.extend(child for child, _ in node.next_functions if child is not None)
    return False
