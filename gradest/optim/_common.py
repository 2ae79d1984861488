"""What SAGA and SVRG share: argument checks, per-example gradients, evaluation at other parameters.

Per-example gradients come from the user's ``losses`` closure, which closes over the model's own
parameters, so ``torch.func.functional_call`` is out of reach. One forward pass gives the ``[b]`` vector
of losses; its Jacobian with respect to every parameter is one *batched* vector-Jacobian product
(``torch.autograd.grad(..., is_grads_batched=True)`` with the rows of the identity), which vmaps the
backward pass. Measured on a 2-core CPU (logistic regression with 100 features, and a 64-64-10 MLP),
this costs 1.8x / 3.2x one ordinary backward at b = 32, against 30x / 19x for a loop of backward passes
and 50x / 28x for one ``losses`` call per example. Its work still grows as b² (each of the b rows
repeats the whole batch's backward), so batches of up to a few dozen examples are the sweet spot.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from itertools import chain
from typing import Any

import torch
from torch import Tensor

from gradest._validation import check_finite, is_validation_enabled

Losses = Callable[[Tensor], Tensor]


# ---------------------------------------------------------------------------------------------------
# Constructor arguments
# ---------------------------------------------------------------------------------------------------


def check_number(where: str, name: str, value: Any, *, positive: bool, fix: str) -> float:
    """A real number that is > 0 (``positive``) or >= 0; 0-d tensors are read with ``float``."""
    if isinstance(value, Tensor) and value.numel() == 1:
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{where}: {name}={value!r} must be a number; {fix}")
    bad = value <= 0 if positive else value < 0
    if bad or value != value or value == float("inf"):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{where}: {name}={value} must be finite and {bound}; {fix}")
    return float(value)


def check_count(where: str, name: str, value: Any, *, fix: str) -> int:
    """An int >= 1."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{where}: {name}={value!r} must be an int; {fix}")
    if value < 1:
        raise ValueError(f"{where}: {name}={value} must be >= 1; {fix}")
    return value


def check_same_in_groups(where: str, groups: Sequence[dict[str, Any]], group: dict[str, Any],
                         keys: Sequence[str]) -> None:
    """Options that describe the whole finite sum (``num_examples``, ...) must agree across groups."""
    if not groups:
        return
    for key in keys:
        if group[key] != groups[0][key]:
            raise ValueError(
                f"{where}: param group has {key}={group[key]!r} but the first group has "
                f"{key}={groups[0][key]!r}; {key} describes the whole finite sum, so give every "
                "group the same value."
            )


# ---------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------

# the expected state of one parameter: key -> shape of its tensor (None: a number, e.g. a step count)
Expected = dict[str, tuple[int, ...] | None]


def check_checkpoint(where: str, state_dict: Any, param_groups: Sequence[dict[str, Any]],
                     expect: Callable[[int, Tensor], Expected],
                     explain: Callable[[int, Tensor, str, Any, Expected], str]) -> None:
    """Refuse a ``state_dict`` saved for another configuration, before anything is loaded.

    Checks, in order: the layout (param groups and their sizes), ``num_examples``, and for every
    parameter with saved state, its keys and the shape of each tensor against ``expect(k, p)`` (k the
    position of p among all parameters). ``explain(k, p, key, saved_state, expected)`` words the
    mismatch of ``key`` (``""`` for the key set) and its fix.
    """
    if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= state_dict.keys():
        raise TypeError(
            f"{where}: state_dict={type(state_dict).__name__} is not an optimiser state_dict (a dict with "
            "'state' and 'param_groups'); pass what optimizer.state_dict() returned."
        )
    saved = state_dict["param_groups"]
    if len(saved) != len(param_groups):
        raise ValueError(
            f"{where}: the checkpoint has {len(saved)} param group(s), this optimiser {len(param_groups)}; "
            "build the optimiser with the param groups of the run that was saved."
        )
    for i, (old, new) in enumerate(zip(saved, param_groups)):
        if len(old["params"]) != len(new["params"]):
            raise ValueError(
                f"{where}: param group {i} holds {len(old['params'])} parameter(s) in the checkpoint and "
                f"{len(new['params'])} here; build the optimiser with the parameters of the run that was saved."
            )
    count = param_groups[0]["num_examples"]
    for old in saved:
        if old.get("num_examples", count) != count:
            raise ValueError(
                f"{where}: the checkpoint has num_examples={old['num_examples']}, this optimiser "
                f"num_examples={count}; its state belongs to that finite sum: build the optimiser with "
                f"num_examples={old['num_examples']} on the same data to resume, or start the new problem "
                "without loading it."
            )
    params = dict(zip(chain.from_iterable(g["params"] for g in saved),
                      enumerate(chain.from_iterable(g["params"] for g in param_groups))))
    for key, state in state_dict["state"].items():
        if key not in params:
            continue
        k, p = params[key]
        expected = expect(k, p)
        if set(state) != set(expected):
            raise ValueError(f"{where}: {explain(k, p, '', state, expected)}")
        for name, shape in expected.items():
            value = state[name]
            if shape is not None and (not isinstance(value, Tensor) or tuple(value.shape) != shape):
                raise ValueError(f"{where}: {explain(k, p, name, state, expected)}")


def describe_state(state: dict[str, Any]) -> str:
    """``{'table': (10, 3), 'table_mean': (3,)}``: a saved state's keys and tensor shapes."""
    return "{" + ", ".join(f"'{key}': {tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__}"
                           for key, v in sorted(state.items())) + "}"


# ---------------------------------------------------------------------------------------------------
# step() arguments
# ---------------------------------------------------------------------------------------------------


def check_indices(where: str, indices: Any, num_examples: int) -> Tensor:
    """A non-empty 1-D integer tensor with values in [0, num_examples).

    The range check reads the values: on the CPU it always runs; on an accelerator (a device sync) only
    while validation is on, as an out-of-range index there is a device-side assert.
    """
    if not isinstance(indices, Tensor):
        raise TypeError(
            f"{where}: indices={type(indices).__name__} must be a 1-D integer tensor of example "
            "indices, e.g. torch.randint(num_examples, (32,)) or torch.tensor([i])."
        )
    if indices.dtype.is_floating_point or indices.dtype.is_complex or indices.dtype == torch.bool:
        raise TypeError(
            f"{where}: indices has dtype {indices.dtype}; example indices must be an integer tensor "
            "(torch.long); convert with indices.long()."
        )
    if indices.ndim != 1 or indices.numel() == 0:
        raise ValueError(
            f"{where}: indices has shape {tuple(indices.shape)}; expected a non-empty 1-D tensor "
            "(len(indices),); use indices.reshape(-1), or torch.tensor([i]) for a single example."
        )
    if indices.device.type == "cpu" or is_validation_enabled():
        if indices.shape[0] == 1:
            lo = hi = int(indices.item())
        else:
            lo_t, hi_t = torch.aminmax(indices)
            lo, hi = int(lo_t), int(hi_t)
        if lo < 0 or hi >= num_examples:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{where}: index={bad} is outside [0, num_examples={num_examples}).")
    return indices


def check_losses(where: str, losses: Any) -> Losses:
    if not callable(losses):
        raise TypeError(
            f"{where}: losses={type(losses).__name__} is not callable; pass a function "
            "losses(indices) -> per-example losses [len(indices)] at the current parameters."
        )
    return losses  # type: ignore[no-any-return]


def evaluate(where: str, losses: Losses, indices: Tensor, *, need_grad: bool = True) -> Tensor:
    """Call ``losses(indices)`` and check that it returned one differentiable loss per example."""
    out = losses(indices)
    b = indices.shape[0]
    if not isinstance(out, Tensor):
        raise TypeError(
            f"{where}: losses(indices) returned {type(out).__name__}; it must return a tensor of "
            f"per-example losses with shape (len(indices),) = ({b},)."
        )
    if tuple(out.shape) != (b,):
        raise ValueError(
            f"{where}: losses(indices) returned shape {tuple(out.shape)}, expected (len(indices),) = "
            f"({b},); return one loss per example (reduction='none', then squeeze any trailing "
            "dimension of size 1)."
        )
    if not out.dtype.is_floating_point:
        raise TypeError(f"{where}: losses(indices) returned dtype {out.dtype}; losses must be floating point.")
    if need_grad and not out.requires_grad:
        raise ValueError(
            f"{where}: losses(indices) does not depend on the parameters (requires_grad=False); compute "
            "the losses from the parameters given to the optimiser, outside torch.no_grad()."
        )
    check_finite(where, "losses(indices)", out.detach(), "check the model and the data for these indices.")
    return out


# ---------------------------------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------------------------------


def _fill(grads: Sequence[Tensor | None], params: Sequence[Tensor], lead: tuple[int, ...]) -> list[Tensor]:
    """A parameter that the losses do not use has a zero gradient."""
    return [
        g if g is not None else p.new_zeros(lead + tuple(p.shape))
        for g, p in zip(grads, params, strict=True)
    ]


def batch_grads(out: Tensor, params: Sequence[Tensor]) -> list[Tensor]:
    """Gradients of ``out.mean()``: each ``[*p.shape]``."""
    return _fill(torch.autograd.grad(out.mean(), params, allow_unused=True), params, ())


def per_example_grads(out: Tensor, params: Sequence[Tensor]) -> list[Tensor]:
    """The Jacobian of the ``[b]`` losses, split by parameter: each ``[b, *p.shape]``.

    One batched vector-Jacobian product (vmap over the backward pass); should the backward contain an
    operation that vmap cannot batch, a loop of b backward passes gives the same rows.
    """
    b = out.shape[0]
    if b == 1:
        grads = torch.autograd.grad(out, params, torch.ones_like(out), allow_unused=True)
        return [g.unsqueeze(0) for g in _fill(grads, params, ())]
    eye = torch.eye(b, dtype=out.dtype, device=out.device)
    try:
        grads = torch.autograd.grad(out, params, eye, retain_graph=True, allow_unused=True,
                                    is_grads_batched=True)
    except RuntimeError:
        rows = [_fill(torch.autograd.grad(out[i], params, retain_graph=True, allow_unused=True), params, ())
                for i in range(b)]
        return [torch.stack(col) for col in zip(*rows, strict=True)]
    return _fill(grads, params, (b,))


@contextmanager
def parameters_at(params: Sequence[Tensor], values: Sequence[Tensor]) -> Iterator[None]:
    """Temporarily give ``params`` the ``values`` (in place, so the user's closure sees them).

    Forward *and* backward must both run inside: autograd checks that saved parameters were not
    modified in between.
    """
    with torch.no_grad():
        saved = [p.detach().clone() for p in params]
        for p, v in zip(params, values, strict=True):
            p.copy_(v)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)


def first_occurrences(indices: Tensor) -> tuple[Tensor, Tensor] | None:
    """For a batch that repeats an index: ``canon[k]``, the first position holding ``indices[k]``, and
    ``first[k]``, whether position k is that first position. None when no index repeats (known for
    sure only on the CPU, where the check is cheap; on an accelerator the answer, sync-free, is always
    computed)."""
    b = indices.shape[0]
    if b == 1 or (indices.device.type == "cpu" and len(set(indices.tolist())) == b):
        return None
    pos = torch.arange(b, device=indices.device)
    sorted_idx, perm = torch.sort(indices, stable=True)
    starts = torch.ones(b, dtype=torch.bool, device=indices.device)
    starts[1:] = sorted_idx[1:] != sorted_idx[:-1]
    # position (in sorted order) where each run of equal indices starts
    run_start = torch.cummax(torch.where(starts, pos, torch.zeros_like(pos)), 0).values
    canon = torch.empty_like(perm)
    canon[perm] = perm[run_start]
    return canon, canon == pos


def flat_params(param_groups: Sequence[dict[str, Any]]) -> list[Tensor]:
    """Every trainable parameter, in group order (the order of the optimiser's state)."""
    return [p for group in param_groups for p in group["params"] if p.requires_grad]
