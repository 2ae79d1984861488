r"""SVRG: a stochastic gradient corrected by the same batch's gradient at a snapshot.

``svrg_direction`` and ``svrg_step`` are the functional core; ``SVRG`` is the ``torch.optim.Optimizer``
shell that calls the user's ``losses`` at the current and at the snapshot parameters, takes the
full-gradient snapshots (in chunks) and keeps them in ``self.state``.

References:
    Johnson & Zhang (2013). Accelerating Stochastic Gradient Descent using Predictive Variance
    Reduction. NeurIPS.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from gradest._distributed import WORLD, all_reduce_flat, check_process_group, rank, resolve, world_size
from gradest.optim._common import (
    Expected,
    Losses,
    batch_grads,
    check_checkpoint,
    check_count,
    check_indices,
    check_losses,
    check_number,
    check_same_in_groups,
    describe_state,
    evaluate,
    flat_params,
    parameters_at,
)

__all__ = ["SVRG", "svrg_direction", "svrg_step"]

_LR_FIX = "for smooth per-example losses lr = 1/(4 L) is safe, L the largest per-example smoothness constant."


def svrg_direction(params: Sequence[Tensor], grads: Sequence[Tensor], snapshot_batch_grads: Sequence[Tensor],
                   snapshot_grads: Sequence[Tensor], *, weight_decay: float) -> list[Tensor]:
    r"""The SVRG direction for one batch, one tensor per parameter.

    .. math:: d = \nabla\ell_B(\theta) - \nabla\ell_B(\tilde\theta) + \nabla F(\tilde\theta) + \lambda\theta

    Args:
        params: θ, each ``[*p.shape]``.
        grads: ∇ℓ_B(θ), the batch-mean gradient at θ, each ``[*p.shape]``.
        snapshot_batch_grads: ∇ℓ_B(θ̃), the same batch's mean gradient at the snapshot θ̃.
        snapshot_grads: ∇F(θ̃) = (1/N) Σ_i ∇ℓ_i(θ̃), the full gradient at the snapshot.
        weight_decay: λ.

    Returns:
        d, each ``[*p.shape]``.

    Example:
        At the snapshot itself (θ = θ̃) the direction is the full gradient:

        >>> import torch
        >>> from gradest.optim import svrg_direction
        >>> _ = torch.manual_seed(0)
        >>> w, batch, full = torch.randn(2), torch.randn(2), torch.randn(2)
        >>> d, = svrg_direction([w], [batch], [batch], [full], weight_decay=0.1)
        >>> torch.allclose(d, full + 0.1 * w)
        True
    """
    out = []
    for p, g, gs, mu in zip(params, grads, snapshot_batch_grads, snapshot_grads, strict=True):
        d = (g - gs) + mu
        if weight_decay != 0:
            d = d.add(p.detach(), alpha=weight_decay)
        out.append(d)
    return out


@torch.no_grad()
def svrg_step(params: Sequence[Tensor], grads: Sequence[Tensor], snapshot_batch_grads: Sequence[Tensor],
              snapshot_grads: Sequence[Tensor], *, lr: float, weight_decay: float) -> None:
    """One SVRG update, in place: θ ← θ − η d, with d from :func:`svrg_direction` and η = ``lr``.

    Example:
        Least squares, ℓ_i(θ) = (x_iᵀθ − y_i)²/2, a snapshot every 40 steps:

        >>> import torch
        >>> from gradest.optim import svrg_step
        >>> _ = torch.manual_seed(0)
        >>> X, y = torch.randn(20, 2), torch.randn(20)
        >>> grad = lambda w, i: (X[i] @ w - y[i]) @ X[i] / len(i)      # the batch-mean gradient
        >>> w, lr = torch.zeros(2), 1 / (3 * X.square().sum(1).max().item())
        >>> for _ in range(20):
        ...     snapshot = w.clone(); full = grad(snapshot, torch.arange(20))
        ...     for j in torch.randint(20, (40, 1)):
        ...         svrg_step([w], [grad(w, j)], [grad(snapshot, j)], [full], lr=lr, weight_decay=0.0)
        >>> torch.allclose(w, torch.linalg.lstsq(X, y[:, None]).solution[:, 0], atol=1e-4)
        True
    """
    for p, d in zip(params, svrg_direction(params, grads, snapshot_batch_grads, snapshot_grads,
                                           weight_decay=weight_decay), strict=True):
        p.add_(d, alpha=-lr)


class SVRG(Optimizer):
    r"""SVRG for a finite sum f(θ) = (1/N) Σ_i ℓ_i(θ) + (λ/2)‖θ‖², with periodic full-gradient snapshots.

    Every ``snapshot_every`` steps the current parameters become the snapshot θ̃ and the full gradient
    ∇F(θ̃) = (1/N) Σ_i ∇ℓ_i(θ̃) is computed, ``chunk_size`` examples per ``losses`` call. In between, a
    step on the batch B evaluates ``losses(B)`` at θ and at θ̃ and moves along

    .. math::
        d = \frac{1}{b}\sum_{j\in B}\bigl(\nabla\ell_j(\theta) - \nabla\ell_j(\tilde\theta)\bigr)
            + \nabla F(\tilde\theta) + \lambda\theta,
        \qquad \theta \leftarrow \theta - \eta\, d.

    Requires: ``losses(indices)`` returns the ``[len(indices)]`` per-example losses at the *current*
    parameters (the optimiser sets them to θ̃ in place for the snapshot terms, so the closure must read
    the parameters when called, as a closure over a module does), deterministically: the same indices at
    the same parameters give the same losses (no dropout, or a fixed dropout mask). Only batch-mean
    gradients are needed, no per-example ones, so any model works. Put L2 penalties in ``weight_decay``.

    Bias: none. For B uniform, E_B[d] = ∇f(θ) exactly; the variance of d vanishes as θ and θ̃ converge,
    so a constant step converges linearly on strongly convex problems.

    Cost: 2 gradient evaluations per example per step, plus N per snapshot. With ``snapshot_every`` left
    at None a snapshot is taken every ⌈2N/b⌉ steps (b = len(indices)), Johnson & Zhang's m = 2N for
    convex problems: 5 passes over the data for every 2 epochs of steps.

    Example:
        >>> import torch, torch.nn.functional as F
        >>> from gradest.optim import SVRG
        >>> g = torch.Generator().manual_seed(0)
        >>> X, y = torch.randn(100, 3, generator=g), torch.rand(100, generator=g).round()
        >>> w = torch.zeros(3, requires_grad=True)
        >>> losses = lambda i: F.binary_cross_entropy_with_logits(X[i] @ w, y[i], reduction="none")
        >>> opt = SVRG([w], lr=0.2, num_examples=100, weight_decay=1e-2)
        >>> for j in torch.randint(100, (300, 10), generator=g):
        ...     _ = opt.step(j, losses)

    Args:
        params: parameters or param groups, as for any ``torch.optim.Optimizer``.
        lr: η > 0.
        num_examples: N, the number of terms in the sum; indices must lie in [0, N).
        snapshot_every: steps between snapshots (≥ 1); None: ⌈2N / len(indices)⌉.
        weight_decay: λ ≥ 0 (per group), added to the direction as λθ.
        chunk_size: examples per ``losses`` call while computing the full gradient.
        process_group: ``"world"`` (the default process group when one is initialised, else none), a
            ``torch.distributed.ProcessGroup``, or None for no synchronisation (each rank on its own).

    Note:
        The snapshot is the last iterate (the paper's option I), the variant used in practice.

    Distributed: under ``torch.distributed`` (``process_group``), every rank starts from the same
    parameters and calls ``step`` with its own batch of *global* indices in [0, N). The full gradient
    is sharded: rank r of R sums the gradients of examples r, r + R, r + 2R, ... and one all-reduce
    gives Σ_i ∇ℓ_i(θ̃), divided by N. Each step all-reduces the batch correction
    (1/b) Σ_j (∇ℓ_j(θ) − ∇ℓ_j(θ̃)), weighted by the ranks' batch sizes, so every rank takes the step a
    single process would take on the union of the ranks' batches, and the parameters stay identical.
    With ``snapshot_every=None`` the batch size in ⌈2N/b⌉ is the global one, R·len(indices). Do not
    wrap the model in DDP for SVRG: it takes its gradients with ``torch.autograd.grad`` and reduces
    them itself.

    References:
        Johnson & Zhang (2013). Accelerating Stochastic Gradient Descent using Predictive Variance
        Reduction. NeurIPS.
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, *, num_examples: int,
                 snapshot_every: int | None = None, weight_decay: float = 0.0, chunk_size: int = 1024,
                 process_group: object = WORLD) -> None:
        lr = check_number("SVRG", "lr", lr, positive=True, fix=_LR_FIX)
        num_examples = check_count("SVRG", "num_examples", num_examples,
                                   fix="pass the number of terms N of the finite sum (len of the data set).")
        if snapshot_every is not None:
            snapshot_every = check_count("SVRG", "snapshot_every", snapshot_every,
                                         fix="give the steps between full-gradient snapshots, or None for "
                                             "2N / batch size.")
        weight_decay = check_number("SVRG", "weight_decay", weight_decay, positive=False,
                                    fix="use 0 for no L2 penalty.")
        chunk_size = check_count("SVRG", "chunk_size", chunk_size,
                                 fix="give the number of examples per losses call during a snapshot.")
        defaults = {"lr": lr, "weight_decay": weight_decay, "num_examples": num_examples,
                    "snapshot_every": snapshot_every, "chunk_size": chunk_size}
        super().__init__(params, defaults)
        self.process_group = check_process_group("SVRG", process_group)  # configuration, not state

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        for key, positive in (("lr", True), ("weight_decay", False)):
            if key in param_group:
                param_group[key] = check_number("SVRG", key, param_group[key], positive=positive,
                                                fix=_LR_FIX if key == "lr" else "use 0 for no L2 penalty.")
        super().add_param_group(param_group)
        check_same_in_groups("SVRG", self.param_groups[:-1], self.param_groups[-1],
                             ["num_examples", "snapshot_every", "chunk_size"])

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("weight_decay", 0.0)
            group.setdefault("snapshot_every", None)
            group.setdefault("chunk_size", 1024)
        self.__dict__.setdefault("process_group", WORLD)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state saved by ``state_dict()`` (loads with ``torch.load(..., weights_only=True)``).

        Raises:
            TypeError: ``state_dict`` is not an optimiser state_dict.
            ValueError: it was saved for another configuration: other param groups, another
                ``num_examples``, other parameter shapes, or by SAGA. Nothing is loaded then.
        """
        check_checkpoint("SVRG.load_state_dict", state_dict, self.param_groups, self._expected_state,
                         self._explain_state)
        super().load_state_dict(state_dict)

    @staticmethod
    def _expected_state(k: int, p: Tensor) -> Expected:
        if not p.requires_grad:
            return {}
        return {"snapshot": tuple(p.shape), "snapshot_grad": tuple(p.shape), "step": None, "next_snapshot": None}

    @staticmethod
    def _explain_state(k: int, p: Tensor, key: str, state: dict[str, Any], expected: Expected) -> str:
        head = (f"the checkpoint's state of parameter {k} (shape {tuple(p.shape)}) is {describe_state(state)}, "
                f"expected the snapshot and its full gradient of shape {tuple(p.shape)}")
        if key == "" and "table_mean" in state:
            return f"{head}; it was saved by SAGA: load an SVRG checkpoint."
        if key == "" and not p.requires_grad:
            return f"{head}; the parameter has requires_grad=False here: build the optimiser as it was saved."
        if key:
            return f"{head}; the parameter has another shape there: the checkpoint is for another model."
        return f"{head}; it was saved by another optimiser."

    @property
    def num_examples(self) -> int:
        return int(self.param_groups[0]["num_examples"])

    def _snapshot(self, params: list[Tensor], losses: Losses, indices: Tensor, where: str) -> None:
        """θ̃ ← θ and ∇F(θ̃), summed over chunks of ``chunk_size`` examples (of this rank's shard)."""
        group = self.param_groups[0]
        N, chunk = group["num_examples"], group["chunk_size"]
        pg = resolve(self.process_group)
        R = world_size(pg)
        shard = torch.arange(rank(pg), N, R, device=indices.device)  # examples r, r + R, ...
        sums = [torch.zeros_like(p, memory_format=torch.contiguous_format) for p in params]
        for idx in shard.split(chunk):
            out = evaluate(where, losses, idx)
            grads = torch.autograd.grad(out.sum(), params, allow_unused=True)
            with torch.no_grad():
                for s, g in zip(sums, grads, strict=True):
                    if g is not None:
                        s.add_(g)
        sums = all_reduce_flat(sums, pg)  # Σ over every rank's shard
        every = group["snapshot_every"] or math.ceil(2 * N / (indices.shape[0] * R))
        step = self.state[params[0]].get("step", 0)
        for p, s in zip(params, sums, strict=True):
            st = self.state[p]
            st["step"] = step
            st["snapshot"] = p.detach().clone(memory_format=torch.contiguous_format)
            st["snapshot_grad"] = s.div_(N)
            st["next_snapshot"] = step + every

    def _directions(self, params: list[Tensor], indices: Tensor, losses: Losses,
                    where: str) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """The batch's losses at θ, and its mean gradients at θ and at θ̃.

        Under a process group, the second list is the global batch's mean of ∇ℓ_j(θ) − ∇ℓ_j(θ̃) over
        every rank's examples, and the third zeros: their difference is what the direction needs.
        """
        out = evaluate(where, losses, indices)
        grads = batch_grads(out, params)
        with parameters_at(params, [self.state[p]["snapshot"] for p in params]):
            snap = batch_grads(evaluate(where, losses, indices), params)
        pg = resolve(self.process_group)
        if pg is not None:  # one all-reduce of b·(mean difference) and b
            b = indices.shape[0]
            diff = [(g - s).mul_(b) for g, s in zip(grads, snap, strict=True)]
            *diff, total = all_reduce_flat([*diff, out.new_tensor(float(b))], pg)
            grads = [d.div_(total) for d in diff]
            snap = [torch.zeros_like(g) for g in grads]
        return out.detach(), grads, snap

    def _groups(self) -> list[tuple[dict[str, Any], list[Tensor]]]:
        return [(g, [p for p in g["params"] if p.requires_grad]) for g in self.param_groups]

    def direction(self, indices: Tensor, losses: Losses) -> list[Tensor]:
        """The direction d at the current parameters and snapshot (θ ← θ − lr·d), changing no state.

        Raises:
            RuntimeError: no snapshot has been taken yet (the first ``step`` takes one).
        """
        where = "SVRG.direction"
        check_losses(where, losses)
        check_indices(where, indices, self.num_examples)
        params = flat_params(self.param_groups)
        if any("snapshot" not in self.state[p] for p in params):
            raise RuntimeError(f"{where}: no snapshot yet; call step() once first (it takes the snapshot).")
        _, grads, snap = self._directions(params, indices, losses, where)
        out: list[Tensor] = []
        k = 0
        for group, ps in self._groups():
            n = len(ps)
            out += svrg_direction(ps, grads[k:k + n], snap[k:k + n],
                                  [self.state[p]["snapshot_grad"] for p in ps],
                                  weight_decay=group["weight_decay"])
            k += n
        return out

    def step(self, indices: Tensor, losses: Losses) -> Tensor:  # type: ignore[override]
        """One SVRG step on the examples ``indices`` (after a snapshot, when one is due).

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
                NaN.
        """
        where = "SVRG.step"
        check_losses(where, losses)
        check_indices(where, indices, self.num_examples)
        params = flat_params(self.param_groups)
        st0 = self.state[params[0]]
        # due, or a parameter without one (a group added by add_param_group)
        if any("snapshot" not in self.state[p] for p in params) or st0["step"] >= st0["next_snapshot"]:
            # the batch first (its errors name the user's indices), then θ̃ = θ: the correction is zero
            out = evaluate(where, losses, indices)
            grads = snap = batch_grads(out, params)
            out = out.detach()
            self._snapshot(params, losses, indices, where + " (full-gradient snapshot)")
        else:
            out, grads, snap = self._directions(params, indices, losses, where)
        k = 0
        for group, ps in self._groups():
            n = len(ps)
            svrg_step(ps, grads[k:k + n], snap[k:k + n], [self.state[p]["snapshot_grad"] for p in ps],
                      lr=group["lr"], weight_decay=group["weight_decay"])
            k += n
        for p in params:
            self.state[p]["step"] += 1
        return out
