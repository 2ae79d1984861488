"""SAGA's gradient tables: one past gradient per example, dense or as one scalar per example (GLM).

A table has *entries* (what it stores for each example) and *expands* entries into per-example
gradients, one ``[b, *p.shape]`` tensor per parameter. Both kinds keep, per parameter,
``state[p]["table_mean"]``: the mean of the expanded table over all N examples, updated incrementally.

- ``DenseTable``: ``state[p]["table"]`` is ``[N, *p.shape]``; the entry *is* the gradient.
  Memory N × (number of parameters).
- ``GLMTable``: for a generalised linear model ℓ_i(θ) = φ_i(W x_i + c), the gradient of example i is
  α_i x_iᵀ for W and α_i for c, where α_i = φ_i'(W x_i + c) is the derivative of the loss with respect
  to the linear predictor. Only α is stored: ``state[W]["table"]`` is ``[N]`` for W of shape ``[D]``
  and ``[N, K]`` for W of shape ``[K, D]``. Memory N × K.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from gradest._validation import is_validation_enabled

State = dict[Tensor, dict[str, Any]]


class DenseTable:
    """``table [N, *p.shape]`` for every parameter."""

    def __init__(self, where: str, params: Sequence[Tensor], num_examples: int) -> None:
        self.where = where
        self.params = list(params)
        self.num_examples = num_examples

    def init_state(self, state: State) -> None:
        for p in self.params:
            if "table" not in state[p]:
                state[p]["table"] = p.new_zeros((self.num_examples, *p.shape))
                state[p]["table_mean"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
            self._check_shape(state, p)

    def _check_shape(self, state: State, p: Tensor) -> None:
        shape = (self.num_examples, *p.shape)
        if tuple(state[p]["table"].shape) != shape:
            raise ValueError(
                f"{self.where}: the state's table has shape {tuple(state[p]['table'].shape)}, expected "
                f"(num_examples, *p.shape) = {shape}; the state_dict comes from an optimiser with another "
                "num_examples or table kind (features=...)."
            )

    def entries(self, grads: list[Tensor], indices: Tensor, where: str) -> list[Tensor]:
        """What the table stores for the examples ``indices`` given their gradients ``[b, *p.shape]``."""
        return grads

    def read(self, state: State, indices: Tensor) -> list[Tensor]:
        return [state[p]["table"].index_select(0, self._on(p, indices)) for p in self.params]

    def expand(self, entries: list[Tensor], indices: Tensor) -> list[Tensor]:
        return entries

    def write(self, state: State, indices: Tensor, entries: list[Tensor]) -> None:
        for p, e in zip(self.params, entries, strict=True):
            state[p]["table"].index_copy_(0, self._on(p, indices), e)

    @staticmethod
    def _on(p: Tensor, indices: Tensor) -> Tensor:
        return indices if indices.device == p.device else indices.to(p.device, non_blocking=True)


class GLMTable(DenseTable):
    """One scalar (or K scalars) per example for ℓ_i(W, c) = φ_i(W x_i + c); x_i is ``features[i]``.

    The scalars are read off the per-example gradients: α_i is the gradient for the bias c when there is
    one, and otherwise the projection α_i = (∇_W ℓ_i) x_i / ‖x_i‖². While validation is on, the whole
    per-example gradient is checked against α_i x_iᵀ, so a model that is not a GLM in ``features`` (an
    L2 term inside ``losses``, other features) raises instead of giving a wrong direction.
    """

    def __init__(self, where: str, params: Sequence[Tensor], num_examples: int, features: Tensor) -> None:
        super().__init__(where, params, num_examples)
        if len(self.params) not in (1, 2):
            raise ValueError(
                f"{where}: features=... (the GLM table) needs exactly the weight, or the weight and the "
                f"bias, as parameters; got {len(self.params)} trainable tensors. Use the dense table "
                "(no features) for other models."
            )
        weight = self.params[0]
        D = features.shape[1]
        if weight.ndim not in (1, 2) or weight.shape[-1] != D:
            raise ValueError(
                f"{where}: the first parameter (the weight) has shape {tuple(weight.shape)}, expected (D,) "
                f"or (K, D) with D = features.shape[1] = {D}; pass the weight first, then the bias."
            )
        self.out_shape = tuple(weight.shape[:-1])  # () or (K,)
        K = math.prod(self.out_shape)
        self.bias = self.params[1] if len(self.params) == 2 else None
        if self.bias is not None and self.bias.numel() != K:
            raise ValueError(
                f"{where}: the bias has shape {tuple(self.bias.shape)}, expected {K} element(s) to match "
                f"the weight {tuple(weight.shape)}; pass the weight first, then the bias."
            )
        self.weight = weight
        self.features = features

    def init_state(self, state: State) -> None:
        w = self.weight
        if "table" not in state[w]:
            state[w]["table"] = w.new_zeros((self.num_examples, *self.out_shape))
            for p in self.params:
                state[p]["table_mean"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
        shape = (self.num_examples, *self.out_shape)
        if tuple(state[w]["table"].shape) != shape:
            raise ValueError(
                f"{self.where}: the state's table has shape {tuple(state[w]['table'].shape)}, expected "
                f"{shape} for the GLM table; the state_dict comes from an optimiser with another "
                "num_examples or without features=...."
            )

    def _x(self, indices: Tensor) -> Tensor:
        x = self.features.index_select(0, indices.to(self.features.device))
        return x.to(device=self.weight.device, dtype=self.weight.dtype)

    def entries(self, grads: list[Tensor], indices: Tensor, where: str) -> list[Tensor]:
        b = indices.shape[0]
        gw = grads[0].reshape(b, -1, self.weight.shape[-1])  # [b, K, D]
        x = self._x(indices)  # [b, D]
        if self.bias is not None:
            alpha = grads[1].reshape(b, -1)  # [b, K]
        else:
            sq = (x * x).sum(-1, keepdim=True)  # [b, 1]
            alpha = (gw * x.unsqueeze(1)).sum(-1) / sq.clamp_min(torch.finfo(sq.dtype).tiny)
        if is_validation_enabled():
            resid = (gw - alpha.unsqueeze(-1) * x.unsqueeze(1)).norm()
            scale = gw.norm() + (alpha.norm() if self.bias is not None else 0.0)
            tol = torch.finfo(gw.dtype).eps ** 0.5
            if bool(resid > tol * scale + torch.finfo(gw.dtype).tiny):
                raise ValueError(
                    f"{where}: the per-example gradients are not those of a generalised linear model "
                    f"in features (relative residual {float(resid / scale):.2e} > {tol:.1e}): with "
                    "features=..., losses(indices) must be φ_i(weight @ features[i] + bias) with nothing "
                    "else depending on the weight; put L2 penalties in weight_decay, or drop features=... "
                    "to use the dense table."
                )
        return [alpha.reshape(b, *self.out_shape)]

    def read(self, state: State, indices: Tensor) -> list[Tensor]:
        return [state[self.weight]["table"].index_select(0, self._on(self.weight, indices))]

    def expand(self, entries: list[Tensor], indices: Tensor) -> list[Tensor]:
        alpha = entries[0]
        b = alpha.shape[0]
        x = self._x(indices)
        gw = (alpha.reshape(b, -1, 1) * x.unsqueeze(1)).reshape(b, *self.weight.shape)
        if self.bias is None:
            return [gw]
        return [gw, alpha.reshape(b, *self.bias.shape)]

    def write(self, state: State, indices: Tensor, entries: list[Tensor]) -> None:
        state[self.weight]["table"].index_copy_(0, self._on(self.weight, indices), entries[0])
