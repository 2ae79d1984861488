r"""SAGA: a stochastic gradient corrected by a table of past per-example gradients.

``saga_direction`` and ``saga_step`` are the functional core (tensors in, tensors updated in place; with a
process group, sums over the ranks); ``SAGA`` is the ``torch.optim.Optimizer`` shell that calls the
user's ``losses``, computes per-example gradients, keeps the table in ``self.state``, and moves through
``saga_step`` on one process and on many alike.

References:
    Defazio et al. (2014). SAGA: A Fast Incremental Gradient Method With Support for Non-Strongly
    Convex Composite Objectives. NeurIPS. arXiv:1407.0202.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from gradest._distributed import WORLD, all_reduce_flat, check_process_group, rank, resolve, world_size
from gradest._validation import is_validation_enabled
from gradest.optim._common import (
    Expected,
    Losses,
    check_checkpoint,
    check_count,
    check_indices,
    check_losses,
    check_number,
    check_same_in_groups,
    describe_state,
    evaluate,
    first_occurrences,
    flat_params,
    per_example_grads,
)
from gradest.optim._tables import DenseTable, GLMTable

__all__ = ["SAGA", "saga_direction", "saga_step"]

_LR_FIX = "for smooth per-example losses lr = 1/(3 L) is safe, L the largest per-example smoothness constant."


def saga_direction(params: Sequence[Tensor], deltas: Sequence[Tensor], table_means: Sequence[Tensor], *,
                   weight_decay: float | Sequence[float], process_group: object = None) -> list[Tensor]:
    r"""The SAGA direction for one batch, one tensor per parameter.

    .. math:: d = \frac{1}{b}\sum_{k=1}^{b} \Delta_k + \bar g + \lambda\theta,
        \qquad \Delta_k = \nabla\ell_{j_k}(\theta) - g_{j_k}

    Args:
        params: θ, each ``[*p.shape]``.
        deltas: Δ, each ``[b, *p.shape]``: new minus stored gradient of every example in the batch.
        table_means: ḡ, each ``[*p.shape]``: the mean of the table over all N examples.
        weight_decay: λ, one number, or one per parameter.
        process_group: None (the batch is all there is), ``"world"`` or a
            ``torch.distributed.ProcessGroup``: the sums over k and b run over the batches of every rank
            (one all-reduce), so every rank gets the direction of the union of the batches.

    Returns:
        d, each ``[*p.shape]``.

    Example:
        >>> import torch
        >>> from gradest.optim import saga_direction
        >>> _ = torch.manual_seed(0)
        >>> w, table = torch.randn(2), torch.randn(10, 2)     # θ, and the stored gradients g_i of N = 10 examples
        >>> new = torch.randn(1, 2)                            # ∇ℓ_j(θ) of the batch j = [3]
        >>> d, = saga_direction([w], [new - table[[3]]], [table.mean(0)], weight_decay=0.0)
        >>> torch.allclose(d, new[0] - table[3] + table.mean(0))
        True
    """
    totals, _, b = _sums(deltas, None, resolve(process_group))
    return [_direction(p, mean, total, b, decay)
            for p, mean, total, decay in zip(params, table_means, totals,
                                             _per_param("saga_direction", "weight_decay", weight_decay, params),
                                             strict=True)]


def _per_param(where: str, name: str, value: float | Sequence[float], params: Sequence[Tensor]) -> list[float]:
    """One number per parameter: a number repeated, or a sequence of the right length."""
    if isinstance(value, (int, float)) or (isinstance(value, Tensor) and value.ndim == 0):
        return [float(value)] * len(params)
    values = [float(v) for v in value]
    if len(values) != len(params):
        raise ValueError(f"{where}: {name}={values} has {len(values)} value(s) for {len(params)} parameters; "
                         "give one number, or one per parameter.")
    return values


def _sums(deltas: Sequence[Tensor], first: Tensor | None,
          group: object) -> tuple[list[Tensor], list[Tensor] | None, int | Tensor]:
    """Σ_k Δ_k per parameter, the same over first occurrences (when ``first`` is given or under a
    group), and b; under a group each is summed over the ranks in one all-reduce."""
    totals = [d[0] if d.shape[0] == 1 else d.sum(0) for d in deltas]
    firsts = None if first is None else [(d * first.reshape((-1,) + (1,) * (d.ndim - 1))).sum(0)
                                         for d in deltas]
    if group is None:
        return totals, firsts, deltas[0].shape[0]
    # every rank packs the same pieces (a rank without repeats sends its totals as its first-occurrence
    # sums), so the collective has one size on every rank
    local = firsts if firsts is not None else totals
    *reduced, b = all_reduce_flat([*totals, *local, deltas[0].new_tensor(float(deltas[0].shape[0]))], group)
    k = len(totals)
    return reduced[:k], reduced[k:], b


def _direction(p: Tensor, mean: Tensor, total: Tensor, b: int | Tensor, weight_decay: float) -> Tensor:
    """d from ``total`` = Σ_k Δ_k over a batch of b examples (shared with the update of the mean)."""
    d = torch.add(mean, total, alpha=1.0 / b) if isinstance(b, int) else mean + total / b
    if weight_decay != 0:
        d.add_(p.detach(), alpha=weight_decay)
    return d


@torch.no_grad()
def saga_step(params: Sequence[Tensor], deltas: Sequence[Tensor], table_means: Sequence[Tensor], *,
              lr: float | Sequence[float], weight_decay: float | Sequence[float], num_examples: int,
              first: Tensor | None = None, process_group: object = None) -> None:
    r"""One SAGA update, in place: θ ← θ − η d, then ḡ ← ḡ + (1/N) Σ_k Δ_k over distinct examples.

    Args:
        params, deltas, table_means, weight_decay, process_group: as in :func:`saga_direction` (with a
            process group, Σ_k Δ_k over distinct examples is summed over the ranks too, so ḡ stays the
            mean over all N examples on every rank).
        lr: η, one number, or one per parameter.
        num_examples: N.
        first: ``[b]`` bool, whether position k is the first occurrence of its example in the batch
            (so a repeated example updates ḡ once); None when the batch has no repeats.

    The table rows themselves are written by the caller (their layout, dense or GLM, is its business).

    Example:
        Least squares, ℓ_i(θ) = (x_iᵀθ − y_i)²/2, one example per step:

        >>> import torch
        >>> from gradest.optim import saga_step
        >>> _ = torch.manual_seed(0)
        >>> X, y = torch.randn(20, 2), torch.randn(20)
        >>> w, table = torch.zeros(2), torch.zeros(20, 2)        # θ and the stored gradients g_i
        >>> mean, lr = table.mean(0), 1 / (3 * X.square().sum(1).max().item())
        >>> for j in torch.randint(20, (2000, 1)):
        ...     new = (X[j] @ w - y[j])[:, None] * X[j]          # ∇ℓ_j(θ), [1, 2]
        ...     saga_step([w], [new - table[j]], [mean], lr=lr, weight_decay=0.0, num_examples=20)
        ...     table[j] = new
        >>> torch.allclose(w, torch.linalg.lstsq(X, y[:, None]).solution[:, 0], atol=1e-4)
        True
    """
    totals, firsts, b = _sums(deltas, first, resolve(process_group))
    for p, mean, total, first_total, rate, decay in zip(
            params, table_means, totals, firsts if firsts is not None else totals,
            _per_param("saga_step", "lr", lr, params), _per_param("saga_step", "weight_decay", weight_decay, params),
            strict=True):
        p.add_(_direction(p, mean, total, b, decay), alpha=-rate)
        mean.add_(first_total, alpha=1.0 / num_examples)


class SAGA(Optimizer):
    r"""SAGA for a finite sum f(θ) = (1/N) Σ_i ℓ_i(θ) + (λ/2)‖θ‖², one table entry per example.

    Each step draws a batch B of example indices j_1..j_b, computes ∇ℓ_j(θ) for each (per-example
    gradients, one batched backward pass), and moves along the stored-gradient-corrected direction

    .. math::
        d = \frac{1}{b}\sum_{k=1}^{b}\bigl(\nabla\ell_{j_k}(\theta) - g_{j_k}\bigr)
            + \frac{1}{N}\sum_{i=1}^{N} g_i + \lambda\theta,
        \qquad \theta \leftarrow \theta - \eta\, d,
        \qquad g_{j} \leftarrow \nabla\ell_{j}(\theta)\ \ (j \in B).

    Requires: ``losses(indices)`` returns the ``[len(indices)]`` per-example losses ℓ_j at the current
    parameters, each depending on its own example only (no batch norm in training mode), so that its
    Jacobian holds the per-example gradients. Put the L2 penalty in ``weight_decay``, not in ``losses``:
    it is applied exactly at every step instead of being stored in the table. Indices are drawn by the
    caller, uniformly (with or without replacement within a batch).

    Bias: none. For j uniform on {1..N}, E_j[d] = ∇f(θ) exactly, whatever the table holds; the
    variance of d vanishes as θ and the table converge, so a constant step converges linearly on
    strongly convex problems, where SGD with the same step stalls at a noise floor.

    Memory: the dense table holds N × (number of parameters) numbers. For a generalised linear model
    ℓ_i(W, c) = φ_i(W x_i + c), pass ``features`` (the N × D matrix of x_i): the table then holds
    α_i = φ_i'(W x_i + c) only, N numbers (N × K for W of shape ``[K, D]``), and ∇ℓ_i = (α_i x_iᵀ, α_i)
    is rebuilt from it. α_i is read off the per-example gradient (the bias gradient, or the projection
    of the weight gradient on x_i without a bias); while validation is on each step checks that the
    gradients do have the GLM form, and raises if they do not.

    Step size: the paper takes η = 1/(3L), L the largest per-example smoothness constant (for the
    logistic loss L = max_i ‖x_i‖²/4 + λ, counting an intercept as a feature equal to 1).
    scikit-learn takes η = 1/(2L + min(2Nλ, L)), which is 1/(3L) once 2Nλ ≥ L. With b > 1 a larger
    step is safe: η = 1/(3 L(b)), L(b) = N(b−1)/(b(N−1)) L_f + (N−b)/(b(N−1)) L, L_f the smoothness of
    the mean (Gazagnadou et al. 2019, arXiv:1901.08669).

    Cost: one call of ``losses`` and one batched backward pass per step (the b per-example gradients
    cost about 2-3 ordinary backward passes at b = 32, and grow as b²). A step is a Python call of a few
    dozen small tensor operations, about 0.2 ms on a laptop CPU: single-example steps suit expensive
    per-example losses or the GPU poorly; batches of 16-64 amortise it (``benchmarks/optim.md``).

    Example:
        >>> import torch, torch.nn.functional as F
        >>> from gradest.optim import SAGA
        >>> g = torch.Generator().manual_seed(0)
        >>> X, y = torch.randn(100, 3, generator=g), torch.rand(100, generator=g).round()
        >>> w, c = torch.zeros(3, requires_grad=True), torch.zeros((), requires_grad=True)
        >>> losses = lambda i: F.binary_cross_entropy_with_logits(X[i] @ w + c, y[i], reduction="none")
        >>> opt = SAGA([{"params": [w], "weight_decay": 1e-2}, {"params": [c]}], lr=0.2,
        ...            num_examples=100, features=X)
        >>> for j in torch.randint(100, (1000, 1), generator=g):
        ...     _ = opt.step(j, losses)

    Args:
        params: parameters or param groups, as for any ``torch.optim.Optimizer``. With ``features``,
            the weight ``[D]`` or ``[K, D]`` first and then, optionally, the bias (one group each, or one
            group with both).
        lr: η > 0.
        num_examples: N, the number of terms in the sum; indices must lie in [0, N).
        weight_decay: λ ≥ 0 (per group), added to the direction as λθ, not stored in the table.
        features: ``[N, D]``: the GLM table (one scalar per example); None for the dense table.
        process_group: ``"world"`` (the default process group when one is initialised *at
            construction*, else none), a ``torch.distributed.ProcessGroup``, or None for no
            synchronisation (each rank a separate SAGA over all N examples).

    Distributed: under a process group of R ranks, rank r owns the examples i with i % R == r and
    keeps their table rows only (row i // R of its ``table``, about N/R rows), so the memory per rank
    falls R-fold. Each rank calls ``step`` with a batch of global indices that it owns (e.g. a
    ``DistributedSampler``-style shard filtered by ``indices % R == rank``; an index owned by another
    rank raises ``ValueError``), every rank once per step, each with at least one index. One
    all-reduce per step sums the ranks' Σ_k Δ_k and batch sizes, so every rank moves along the
    direction a single process would take on the union of the batches, and ``table_mean`` (over all
    N examples) and the parameters stay identical on every rank. Start every rank from the same
    parameters, and build the optimiser after ``torch.distributed.init_process_group``.

    Note:
        The paper initialises the table with the gradients at θ₀ (one extra pass). Here it starts at
        zero, and the mean is always over N, so d is unbiased from the first step. scikit-learn's
        solver also starts at zero but averages over the examples seen so far (biased during the first
        epoch).

    References:
        Defazio et al. (2014). SAGA: A Fast Incremental Gradient Method With Support for Non-Strongly
        Convex Composite Objectives. NeurIPS. arXiv:1407.0202.
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, *, num_examples: int,
                 weight_decay: float = 0.0, features: Tensor | None = None, process_group: object = WORLD) -> None:
        lr = check_number("SAGA", "lr", lr, positive=True, fix=_LR_FIX)
        num_examples = check_count("SAGA", "num_examples", num_examples,
                                   fix="pass the number of terms N of the finite sum (len of the data set).")
        weight_decay = check_number("SAGA", "weight_decay", weight_decay, positive=False,
                                    fix="use 0 for no L2 penalty.")
        if features is not None:
            if not isinstance(features, Tensor):
                raise TypeError(f"SAGA: features={type(features).__name__} must be a tensor [N, D] or None.")
            if features.ndim != 2 or features.shape[0] != num_examples:
                raise ValueError(
                    f"SAGA: features has shape {tuple(features.shape)}, expected (num_examples, D) = "
                    f"({num_examples}, D); pass the design matrix whose row i is example i's input."
                )
        defaults = {"lr": lr, "weight_decay": weight_decay, "num_examples": num_examples}
        super().__init__(params, defaults)
        self.features = features
        self.process_group = check_process_group("SAGA", process_group)  # configuration, not state
        self._table = self._make_table()
        self._ready = False  # state initialised and its shapes checked

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        for key, positive in (("lr", True), ("weight_decay", False)):
            if key in param_group:
                param_group[key] = check_number("SAGA", key, param_group[key], positive=positive,
                                                fix=_LR_FIX if key == "lr" else "use 0 for no L2 penalty.")
        super().add_param_group(param_group)
        check_same_in_groups("SAGA", self.param_groups[:-1], self.param_groups[-1], ["num_examples"])
        if getattr(self, "_table", None) is not None:
            self._table = self._make_table()
            self._ready = False

    def _make_table(self) -> DenseTable:
        params = flat_params(self.param_groups)
        N = self.param_groups[0]["num_examples"]
        self._group = resolve(self.process_group)  # fixed with the table: its rows are this rank's shard
        self._rank, self._world = rank(self._group), world_size(self._group)
        rows = len(range(self._rank, N, self._world))
        if self.features is None:
            return DenseTable("SAGA", params, rows)
        return GLMTable("SAGA", params, rows, self.features)

    def __getstate__(self) -> dict[str, Any]:
        state: dict[str, Any] = super().__getstate__()
        state["features"] = self.features
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("features", None)
        self.__dict__.setdefault("process_group", WORLD)
        for group in self.param_groups:
            group.setdefault("weight_decay", 0.0)
        self._table = self._make_table()
        self._ready = False

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state saved by ``state_dict()`` (loads with ``torch.load(..., weights_only=True)``).

        Raises:
            TypeError: ``state_dict`` is not an optimiser state_dict.
            ValueError: it was saved for another configuration: other param groups, another
                ``num_examples``, other parameter shapes, the other table kind (``features=...`` or not),
                another rank or number of ranks, or by SVRG. Nothing is loaded then.
        """
        check_checkpoint("SAGA.load_state_dict", state_dict, self.param_groups, self._expected_state,
                         self._explain_state)
        super().load_state_dict(state_dict)
        self._ready = False

    def _expected_state(self, k: int, p: Tensor) -> Expected:
        if not p.requires_grad:
            return {}
        table = self._table
        if isinstance(table, GLMTable):
            if p is not table.weight:
                return {"table_mean": tuple(p.shape)}
            return {"table_mean": tuple(p.shape), "table": (table.num_examples, *table.out_shape)}
        return {"table_mean": tuple(p.shape), "table": (table.num_examples, *p.shape)}

    def _explain_state(self, k: int, p: Tensor, key: str, state: dict[str, Any], expected: Expected) -> str:
        glm = isinstance(self._table, GLMTable)
        kind = "the GLM table (features=...)" if glm else "the dense table"
        head = (f"the checkpoint's state of parameter {k} (shape {tuple(p.shape)}) is {describe_state(state)}, "
                f"expected {{{', '.join(f'{n!r}: {s}' for n, s in expected.items())}}} for {kind}")
        if key == "" and "snapshot" in state:
            return f"{head}; it was saved by SVRG: load a SAGA checkpoint."
        if key == "" and not p.requires_grad:
            return f"{head}; the parameter has requires_grad=False here: build the optimiser as it was saved."
        if key == "" and glm and "table" in state:
            return f"{head}; it holds the dense table: build SAGA without features=... to resume it."
        if key == "" and not glm and "table" not in state and "table_mean" in state:
            return (f"{head}; it holds the GLM table: build SAGA with features= (the same design matrix) to "
                    "resume it.")
        if key == "table_mean":
            return f"{head}; the parameter has another shape there: the checkpoint is for another model."
        saved = tuple(state["table"].shape)
        want = expected["table"]
        assert want is not None
        if key == "table" and saved[1:] != want[1:]:
            fix = "build SAGA without features=... to resume it" if glm else \
                "build SAGA with features= (the same design matrix) to resume it"
            other = "the dense table" if glm else "the GLM table"
            return f"{head}; it holds {other}: {fix}."
        if key == "table":
            return (f"{head}; it holds {saved[0]} rows and this rank {want[0]} (rank {self._rank} of "
                    f"{self._world} keeps the examples i with i % {self._world} == {self._rank}): it was saved on "
                    "another rank or with another number of ranks; load each rank's own checkpoint under the same "
                    "number of ranks.")
        return f"{head}; it was saved by another optimiser."

    @property
    def num_examples(self) -> int:
        return int(self.param_groups[0]["num_examples"])

    def _deltas(self, indices: Tensor, losses: Losses,
                where: str) -> tuple[Tensor, list[Tensor], list[Tensor], Tensor | None, Tensor]:
        """Losses, Δ = new − stored gradients per parameter ``[b, *p.shape]``, new table entries, the
        first-occurrence mask (None for b = 1), and the rows of this rank's table for ``indices``."""
        check_losses(where, losses)
        check_indices(where, indices, self.num_examples)
        rows = indices
        if self._world > 1:
            if indices.device.type == "cpu" or is_validation_enabled():
                owner = indices % self._world
                if bool((owner != self._rank).any()):
                    bad = int(indices[owner != self._rank][0])
                    raise ValueError(
                        f"{where}: index={bad} belongs to rank {bad % self._world} of {self._world} (example i "
                        f"is owned by rank i % {self._world}), not to this rank {self._rank}; give each rank "
                        f"the examples it owns, e.g. indices[indices % {self._world} == rank]."
                    )
            rows = indices // self._world
        table = self._table
        if not self._ready:
            table.init_state(self.state)
            self._ready = all("table_mean" in self.state[p] for p in table.params)
        out = evaluate(where, losses, indices)
        new = table.entries(per_example_grads(out, table.params), indices, where)
        first = None
        repeats = first_occurrences(indices)
        if repeats is not None:  # a repeated example gets one new entry, and updates the mean once
            canon, first = repeats
            new = [e.index_select(0, canon.to(e.device)) for e in new]
        old = table.read(self.state, rows)
        deltas = table.expand([n - o for n, o in zip(new, old, strict=True)], indices)
        return out.detach(), deltas, new, first, rows

    def _trainable(self) -> tuple[list[Tensor], list[float], list[float]]:
        """Every trainable parameter in group order, with its group's lr and weight_decay."""
        rows = [(p, group["lr"], group["weight_decay"])
                for group in self.param_groups for p in group["params"] if p.requires_grad]
        return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]

    def direction(self, indices: Tensor, losses: Losses) -> list[Tensor]:
        """The direction d that ``step`` would take (θ ← θ − lr·d), without changing any state.

        Args:
            indices: ``[b]`` example indices.
            losses: ``losses(indices) -> [b]`` per-example losses at the current parameters.

        Returns:
            d for every trainable parameter, in param-group order.
        """
        _, deltas, _, _, _ = self._deltas(indices, losses, "SAGA.direction")
        params, _, decays = self._trainable()
        return saga_direction(params, deltas, [self.state[p]["table_mean"] for p in params], weight_decay=decays,
                              process_group=self._group)

    def step(self, indices: Tensor, losses: Losses) -> Tensor:  # type: ignore[override]
        """One SAGA step on the examples ``indices``.

        Args:
            indices: ``[b]`` integer tensor of example indices in [0, num_examples), drawn uniformly.
            losses: ``losses(indices) -> [b]`` per-example losses at the current parameters.

        Returns:
            The ``[b]`` losses at the parameters before the step (detached).

        Raises:
            TypeError: ``indices`` is not an integer tensor, ``losses`` is not callable or returns no
                floating tensor.
            ValueError: an index is outside [0, num_examples), ``indices`` is not 1-D, ``losses``
                returns the wrong shape, does not depend on the parameters, or (while validation is on)
                NaN; with ``features``, gradients that are not of the GLM form.
        """
        out, deltas, new, first, rows = self._deltas(indices, losses, "SAGA.step")
        params, rates, decays = self._trainable()
        saga_step(params, deltas, [self.state[p]["table_mean"] for p in params], lr=rates, weight_decay=decays,
                  num_examples=self.num_examples, first=first, process_group=self._group)
        self._table.write(self.state, rows, new)
        return out
