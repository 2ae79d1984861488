r"""Baselines and control variates for score-function terms.

A baseline adds to each sample's surrogate a term whose *value is zero* and whose gradient is
:math:`-b_i \nabla_\theta \log p_\theta(x_i)` (plus, for a critic, the gradient of its own regression
loss). Subtracting b_i leaves the estimator unbiased exactly when b_i does not depend on x_i, so every
baseline here is built without the sample's own cost: a moving average is read before it is updated,
leave-one-out excludes the sample itself, a critic sees only inputs detached from θ.

References:
    Mnih & Gregor (2014). Neural Variational Inference and Learning in Belief Networks. ICML.
    arXiv:1402.0030.
    Kool et al. (2019). Buy 4 REINFORCE Samples, Get a Baseline for Free! ICLR workshop.
    Mohamed et al. (2020). Monte Carlo Gradient Estimation in Machine Learning. JMLR. arXiv:1906.10652.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from gradest._distributed import WORLD, all_reduce_flat, all_reduce_sum, check_process_group, resolve
from gradest._validation import check_unit_interval, describe
from gradest.estimators._families import parameters, rebuild
from gradest.estimators.base import Draw
from gradest.surrogate import magic_box, stop_gradient, straight_through

__all__ = [
    "Baseline",
    "Constant",
    "MovingAverage",
    "LeaveOneOut",
    "OptimalConstant",
    "Critic",
    "ControlVariate",
]


class Baseline(nn.Module):
    """Base class. Subclasses give ``forward(draw, cost) -> b`` (``[n, *B]`` or broadcastable)
    computed without each sample's own cost, or override ``term`` for more general corrections.

    ``draw`` is the score-function rule's record (``points``, ``n``, ``dist``, ``log_prob``, ``box``)
    and ``cost`` the costs ``[n, *B]`` at its samples, with their gradient stopped.

    Example:
        A baseline of your own, here the mean of a Bernoulli (it does not depend on the samples, so the
        estimator stays unbiased; for f(x) = x it is E[f] and removes all the variance):

        >>> import torch, gradest
        >>> class Mean(gradest.Baseline):
        ...     def forward(self, draw, cost):
        ...         return draw.dist.mean.detach()
        >>> _ = torch.manual_seed(0)
        >>> logits = torch.zeros(3, requires_grad=True)
        >>> dist = torch.distributions.Bernoulli(logits=logits)
        >>> s = gradest.expectation(lambda x: x, dist, gradest.ScoreFunction(Mean()), n=4)
        >>> s.sum().backward(); logits.grad.tolist()     # p(1 − p) exactly, whatever the samples
        [0.25, 0.25, 0.25]
    """

    def __init__(self) -> None:  # the real signature for help() and IDEs (nn.Module's is (*args, **kwargs))
        super().__init__()

    def check(self, dist: Distribution, n: int) -> None:
        """Raise ``ValueError`` if this baseline cannot be formed for ``n`` samples of ``dist``."""

    def forward(self, draw: Draw, cost: Tensor) -> Tensor:
        raise NotImplementedError

    def term(self, draw: Draw, cost: Tensor, box: Tensor) -> Tensor:
        """The zero-valued per-sample surrogate term ``(1 − □) b`` with gradient ``−b ∇log p``."""
        return (1 - box) * self(draw, cost)


class Constant(Baseline):
    r"""A fixed baseline b.

    .. math:: \hat g = \tfrac1n \textstyle\sum_i (f(x_i) - b)\nabla_\theta\log p_\theta(x_i)

    Bias: none. Variance falls when b is near E[f] and *rises* when b is far from it.

    Args:
        b: a number or a tensor broadcastable to ``dist.batch_shape``.

    Example:
        >>> import torch, gradest
        >>> _ = torch.manual_seed(0)
        >>> logits = torch.zeros(3, requires_grad=True)           # Bernoulli(0.5): E[x] = 0.5
        >>> dist = torch.distributions.Bernoulli(logits=logits)
        >>> s = gradest.expectation(lambda x: x, dist, gradest.ScoreFunction(gradest.Constant(0.5)), n=4)
        >>> s.sum().backward(); logits.grad.tolist()   # (x − 0.5)(x − 0.5) = 0.25 for x = 0 and 1: no variance
        [0.25, 0.25, 0.25]
    """

    b: Tensor

    def __init__(self, b: float | Tensor) -> None:
        super().__init__()
        if not isinstance(b, (int, float, Tensor)) or isinstance(b, bool):
            raise TypeError(
                f"Constant: b={b!r} must be a number or a floating tensor broadcastable to dist.batch_shape."
            )
        value = torch.as_tensor(b)
        if not value.is_floating_point():
            value = value.to(torch.get_default_dtype())
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"Constant: b={b!r} must be finite; a typical choice is a recent mean of the costs.")
        self.register_buffer("b", value)

    def check(self, dist: Distribution, n: int) -> None:
        batch = tuple(dist.batch_shape)
        shape = tuple(self.b.shape)
        if len(shape) > len(batch) or any(s not in (1, t) for s, t in zip(reversed(shape), reversed(batch))):
            raise ValueError(
                f"Constant: b has shape {shape}, which does not broadcast to dist.batch_shape={batch}; pass a "
                "number, or a tensor of shape batch_shape (or broadcastable to it)."
            )

    def forward(self, draw: Draw, cost: Tensor) -> Tensor:
        return self.b.to(cost.dtype)


class MovingAverage(Baseline):
    r"""Exponential moving average of past costs, read before the current costs update it.

    .. math::
        m_t = \delta\, m_{t-1} + (1-\delta)\,\bar f_t, \qquad b_t = m_{t-1} / (1 - \delta^{t-1})

    (the division removes the bias of starting at zero, as in Adam). :math:`\bar f_t` is the mean
    cost over every sample and batch element of call t; the first call uses b = 0.

    Under ``torch.distributed`` :math:`\bar f_t` is the mean over every rank's costs (one all-reduce
    of their sum and count per call), so each rank's running mean is the one a single process would
    keep on the global batch, and every rank subtracts the same b_t. Every rank of the group must then
    call the baseline the same number of times, as DDP requires of ``backward``.

    Bias: none (b_t depends only on earlier calls).

    Args:
        decay: δ in [0, 1); 0.9 to 0.99 is typical.
        process_group: ``"world"`` (the default process group when one is initialised, else none),
            a ``torch.distributed.ProcessGroup``, or None to keep a per-rank average.

    Example:
        >>> import torch, gradest
        >>> _ = torch.manual_seed(0)
        >>> dist = torch.distributions.Bernoulli(logits=torch.zeros(3, requires_grad=True))
        >>> baseline = gradest.MovingAverage(0.9)
        >>> estimator = gradest.ScoreFunction(baseline)
        >>> for step in range(20):
        ...     s = gradest.expectation(lambda x: x, dist, estimator, n=4)
        >>> # the b of the next call (near E[x] = 0.5), and the running mean in a checkpoint
        >>> round(float(baseline.mean / baseline.weight), 4), sorted(estimator.state_dict())
        (0.5371, ['baseline.mean', 'baseline.weight'])

    References:
        Williams (1992); Mnih & Gregor (2014). arXiv:1402.0030.
    """

    mean: Tensor
    weight: Tensor

    def __init__(self, decay: float = 0.9, *, process_group: object = WORLD) -> None:
        super().__init__()
        self.decay = check_unit_interval("MovingAverage", "decay", decay, open_right=True)
        self.process_group = check_process_group("MovingAverage", process_group)
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("weight", torch.zeros(()))

    def forward(self, draw: Draw, cost: Tensor) -> Tensor:
        b = torch.where(self.weight > 0, self.mean / self.weight.clamp_min(1e-30), 0.0).to(cost.dtype)
        with torch.no_grad():
            c = stop_gradient(cost)
            group = resolve(self.process_group)
            if group is None:
                batch_mean = c.mean().to(self.mean)
            else:  # the global mean: Σ cost and count over the ranks, in one all-reduce
                total = torch.stack([c.sum().to(self.mean), self.mean.new_tensor(float(c.numel()))])
                all_reduce_sum(total, group)
                batch_mean = total[0] / total[1]
            self.mean.mul_(self.decay).add_((1 - self.decay) * batch_mean)
            self.weight.mul_(self.decay).add_(1 - self.decay)
        return b

    def extra_repr(self) -> str:
        return f"decay={self.decay}"


class LeaveOneOut(Baseline):
    r"""Each sample's baseline is the mean cost of the other n − 1 samples (RLOO).

    .. math:: b_i = \frac{1}{n-1}\sum_{j\ne i} f(x_j)

    so that :math:`\hat g = \frac{1}{n-1}\sum_i (f_i - \bar f)\nabla\log p(x_i)`.

    Requires: n ≥ 2; each sample's cost a function of that sample alone (a cost that averages over
    the samples, ``x.mean(0).expand(n)``, is the same for all of them, so every baseline equals its own
    cost and the gradient is exactly zero — see ``ScoreFunction``). Bias: none.

    Example:
        >>> import torch, gradest
        >>> _ = torch.manual_seed(0)
        >>> logits = torch.zeros(4, requires_grad=True)
        >>> dist = torch.distributions.Categorical(logits=logits)
        >>> estimator = gradest.ScoreFunction(gradest.LeaveOneOut())
        >>> s = gradest.expectation(lambda k: (k == 2).float(), dist, estimator, n=8)
        >>> s.backward(); [round(g, 4) for g in logits.grad.tolist()]   # exact: [-0.0625, -0.0625, 0.1875, -0.0625]
        [-0.0357, -0.0714, 0.2143, -0.1071]

    References:
        Kool et al. (2019). Buy 4 REINFORCE Samples, Get a Baseline for Free! ICLR workshop.
    """

    def check(self, dist: Distribution, n: int) -> None:
        if n < 2:
            raise ValueError(
                f"LeaveOneOut: n={n} leaves no other sample to average; use n >= 2 "
                "(4 is typical) or MovingAverage(decay) for single samples."
            )

    def forward(self, draw: Draw, cost: Tensor) -> Tensor:
        c = stop_gradient(cost)
        n = c.shape[0]
        return (c.sum(0, keepdim=True) - c) / (n - 1)


class OptimalConstant(Baseline):
    r"""The variance-minimising constant baseline, one per coordinate of the distribution's parameters.

    For coordinate j of the parameter tensors φ of ``dist`` (loc and scale, logits, probs ...), with
    per-sample scores :math:`s_{ij} = \partial \log p_\phi(x_i) / \partial \phi_j`,

    .. math::
        b^*_j = \frac{\mathbb{E}[f(x)\, s_j(x)^2]}{\mathbb{E}[s_j(x)^2]}, \qquad
        \hat b_{ij} = \frac{A_j + \sum_{k\ne i} f_k s_{kj}^2}{C_j + \sum_{k\ne i} s_{kj}^2}

    The moments are estimated leave-one-out over the current n samples, so that sample i's baseline
    never sees its own cost, plus (with ``decay``) running sums A_j, C_j of earlier calls, read before
    the current call updates them: :math:`A_j \leftarrow \delta A_j + \sum_i f_i s_{ij}^2`. The
    correction :math:`-\sum_i \hat b_{ij} s_{ij}` enters the gradient of φ_j and flows from there to θ
    by the chain rule (φ = φ(θ), e.g. the logits an encoder outputs).

    Under ``torch.distributed``, with ``decay`` set, the sums over the current call's samples are
    all-reduced over the ranks (one collective per call) before they enter both the leave-one-out
    moments and A_j, C_j, so the running moments are identical on every rank. When every rank samples
    the same distribution (the same parameters φ, the n samples split across ranks) this is exactly one
    process with all the samples. When each rank holds its own shard of the batch (an amortised
    q(z|x) under DDP), coordinate j pools batch position j over the ranks, as a single process pools it
    over calls; the parameter shapes must then agree across ranks. Without ``decay`` nothing is reduced
    (the baseline is leave-one-out within each rank's samples, which needs no other rank).

    Requires: n ≥ 2 without ``decay``; a family rebuildable from its constructor parameters, whose
    parameter shapes stay fixed across calls (and ranks) when ``decay`` is set. Costs one extra
    backward pass through ``log_prob``.
    Bias: none (other ranks' samples are independent of x_i). Note: first derivatives only (second
    derivatives see no baseline).

    Args:
        decay: δ in [0, 1) for running moments across calls, or None for the current call only.
        process_group: with ``decay``, ``"world"`` (the default process group when one is initialised,
            else none), a ``torch.distributed.ProcessGroup``, or None to keep per-rank moments.

    Example:
        >>> import torch, gradest
        >>> _ = torch.manual_seed(0)
        >>> logits = torch.zeros(4, requires_grad=True)
        >>> dist = torch.distributions.Categorical(logits=logits)
        >>> estimator = gradest.ScoreFunction(gradest.OptimalConstant())     # one b per logit
        >>> s = gradest.expectation(lambda k: (k == 2).float(), dist, estimator, n=8)
        >>> s.backward(); [round(g, 4) for g in logits.grad.tolist()]   # exact: [-0.0625, -0.0625, 0.1875, -0.0625]
        [-0.0654, -0.0751, 0.2206, -0.0801]

    References:
        Mohamed et al. (2020). Monte Carlo Gradient Estimation in Machine Learning, §7.4. JMLR.
        arXiv:1906.10652.
    """

    num: Tensor
    den: Tensor

    def __init__(self, decay: float | None = None, *, process_group: object = WORLD) -> None:
        super().__init__()
        self.decay = None if decay is None else check_unit_interval("OptimalConstant", "decay", decay, open_right=True)
        self.process_group = check_process_group("OptimalConstant", process_group)
        self.register_buffer("num", torch.zeros(0))
        self.register_buffer("den", torch.zeros(0))

    def check(self, dist: Distribution, n: int) -> None:
        if n < 2 and self.decay is None:
            raise ValueError(
                f"OptimalConstant: n={n} gives no other sample to estimate the baseline from; "
                "use n >= 2, or OptimalConstant(decay=0.9) to keep running moments across calls."
            )
        if not parameters(dist):
            raise NotImplementedError(
                f"OptimalConstant: dist={describe(dist)} keeps its parameters out of reach (on a wrapped "
                "distribution), so there is nothing to scale; it supports families built from their "
                "arg_constraints (Normal, Bernoulli, Categorical, OneHotCategorical, Gamma, Dirichlet ... "
                "and Independent of these). Use LeaveOneOut() instead."
            )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        for name in ("num", "den"):  # the running moments take the shape of the checkpoint's
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _running(self, size: int, like: Tensor) -> tuple[Tensor, Tensor]:
        if self.num.numel() == 0:
            self.num = torch.zeros(size, dtype=like.dtype, device=like.device)
            self.den = torch.zeros(size, dtype=like.dtype, device=like.device)
        elif self.num.numel() != size:
            raise ValueError(
                f"OptimalConstant: the distribution now has {size} parameter coordinates but the running "
                f"moments hold {self.num.numel()}; with decay set, keep parameter shapes fixed (or use "
                "decay=None, or a fresh OptimalConstant per shape)."
            )
        return self.num.to(like), self.den.to(like)

    def term(self, draw: Draw, cost: Tensor, box: Tensor) -> Tensor:
        dist, x = draw.dist, draw.points
        params = parameters(dist)
        live = {k: p for k, p in params.items() if p.requires_grad}
        if not live or cost.numel() == 0:  # nothing to scale (torch's Independent cannot reshape an empty batch)
            return torch.zeros_like(cost)
        n = cost.shape[0]
        # Per-sample scores: one copy of the parameters per sample, so the vjp of the log-probs
        # separates them. torch.func.vjp (not autograd.grad on requires_grad_() leaves) also works
        # under torch.compile(fullgraph=True) and inside torch.func transforms.
        names = list(live)

        def log_prob(*copies: Tensor) -> Tensor:
            return rebuild(dist, {**params, **dict(zip(names, copies))}, "OptimalConstant").log_prob(x)

        copies = [stop_gradient(p).expand(n, *p.shape) for p in live.values()]
        lp, vjp = torch.func.vjp(log_prob, *copies)  # type: ignore[misc]
        scores = vjp(torch.ones_like(lp))
        # A contiguous copy: under torch.compile the fake strides of f's output (e.g. an index by a
        # transposed Categorical sample) can differ from the real ones, and the reshapes below
        # would then be traced as views that fail at run time.
        # The moments are formed in float64: f·s² of float32 costs near 1e38 would overflow, and the
        # running sums accumulate over many calls.
        c = stop_gradient(cost).to(torch.float64).clone(memory_format=torch.contiguous_format)
        scores = [s.to(torch.float64) for s in scores]
        s2 = torch.cat([s.square().reshape(n, -1) for s in scores], 1)  # [n, P]
        fs2 = torch.cat([(c.reshape(c.shape + (1,) * (s.dim() - c.dim())) * s.square()).reshape(n, -1)
                         for s in scores], 1)
        sum_fs2, sum_s2 = fs2.sum(0), s2.sum(0)
        if self.decay is not None:
            group = resolve(self.process_group)
            if group is not None:  # the sums over every rank's samples, in one all-reduce
                sum_fs2, sum_s2 = all_reduce_flat([sum_fs2, sum_s2], group)
        num = sum_fs2 - fs2
        den = sum_s2 - s2
        if self.decay is not None:
            run_num, run_den = self._running(s2.shape[1], s2)
            num, den = num + run_num, den + run_den
            with torch.no_grad():
                self.num.mul_(self.decay).add_(sum_fs2.to(self.num))
                self.den.mul_(self.decay).add_(sum_s2.to(self.den))
        b = torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), 0.0)
        scaled, start = {}, 0
        for k, p in live.items():
            size = p.numel()
            p_n = p.expand(n, *p.shape)
            b_k = b[:, start : start + size].reshape(p_n.shape).to(p.dtype)
            # value φ, gradient scaled by b (a masked logit of -inf has no gradient: keep b·φ finite there)
            scaled[k] = straight_through(p_n, b_k * torch.where(torch.isfinite(p_n), p_n, 0.0))
            start += size
        lp_b = rebuild(dist, {**params, **scaled}, "OptimalConstant").log_prob(x)
        return 1 - magic_box(lp_b)

    def extra_repr(self) -> str:
        return f"decay={self.decay}"


class Critic(Baseline):
    r"""A learned, input-dependent baseline :math:`b_\psi(u)`, trained by the same ``backward()``.

    .. math::
        \hat g = \tfrac1n\textstyle\sum_i (f(x_i) - b_\psi(u))\nabla_\theta\log p_\theta(x_i),
        \qquad \mathcal{L}_\psi = \tfrac1n\textstyle\sum_i (b_\psi(u) - f(x_i))^2

    The regression loss enters the surrogate as ``straight_through(0, L_ψ)``: the surrogate's value is
    unchanged, and one backward pass gives both θ's estimator and ψ's regression gradient. Put the
    critic's parameters in your optimiser.

    Args:
        module: maps the inputs ``u`` ``[*B, F]`` to baselines ``[*B]`` or ``[*B, 1]``.
        inputs: ``inputs(dist) -> u``; by default the distribution's parameters, detached from θ and
            flattened per batch element (for q(z|x) these summarise x). Pass e.g.
            ``inputs=lambda dist: x`` to condition on data directly.

    Bias: none (u never depends on the sample).

    Example:
        >>> import torch, gradest
        >>> _ = torch.manual_seed(0)
        >>> net = torch.nn.Linear(1, 1)           # by default it reads each batch element's logit
        >>> logits = torch.zeros(3, requires_grad=True)
        >>> dist = torch.distributions.Bernoulli(logits=logits)
        >>> s = gradest.expectation(lambda x: x, dist, gradest.ScoreFunction(gradest.Critic(net)), n=4)
        >>> s.sum().backward(); logits.grad.shape, net.weight.grad.shape   # one backward: θ and the critic
        (torch.Size([3]), torch.Size([1, 1]))

    References:
        Mnih & Gregor (2014). Neural Variational Inference and Learning in Belief Networks. ICML.
        arXiv:1402.0030.
    """

    def __init__(self, module: nn.Module, *, inputs: Callable[[Distribution], Tensor] | None = None) -> None:
        super().__init__()
        if not callable(module):
            raise TypeError(f"Critic: module={module!r} must be a callable nn.Module mapping inputs to baselines.")
        self.module = module
        self.inputs = inputs

    def check(self, dist: Distribution, n: int) -> None:
        if self.inputs is None and not parameters(dist):
            raise NotImplementedError(
                f"Critic: dist={describe(dist)} keeps its parameters out of reach (on a wrapped "
                "distribution), so there are no default inputs; pass Critic(module, inputs=lambda dist: u) "
                "with u [*batch_shape, F]."
            )

    def features(self, dist: Distribution) -> Tensor:
        if self.inputs is not None:
            return stop_gradient(self.inputs(dist))
        batch = dist.batch_shape
        parts = []
        for p in parameters(dist).values():
            p = stop_gradient(p)
            width = math.prod(p.shape[len(batch) :])  # explicit: -1 is ambiguous for an empty batch
            parts.append(p.reshape(*batch, width) if p.dim() >= len(batch) else p.expand(*batch).unsqueeze(-1))
        return torch.cat(parts, -1)

    def forward(self, draw: Draw, cost: Tensor) -> Tensor:
        u = self.features(draw.dist).to(cost.dtype)
        try:
            b = self.module(u)
        except RuntimeError as e:  # the user's module rejected the inputs: say what it was given
            raise ValueError(
                f"Critic: module={type(self.module).__name__} failed on inputs of shape {tuple(u.shape)} "
                f"(dist.batch_shape {tuple(draw.dist.batch_shape)} + {u.shape[-1]} features"
                f"{'' if self.inputs is not None else ': the flattened parameters of dist'}); make its input size "
                f"{u.shape[-1]}, or pass Critic(module, inputs=lambda dist: u) with u [*batch_shape, F]. ({e})"
            ) from e
        if not isinstance(b, Tensor):
            raise TypeError(
                f"Critic: module returned {type(b).__name__}, expected a tensor of shape {tuple(cost.shape[1:])}."
            )
        batch = cost.shape[1:]
        if b.shape == batch + (1,):
            b = b.squeeze(-1)
        if b.shape != batch:
            raise ValueError(
                f"Critic: module returned shape {tuple(b.shape)}, expected dist.batch_shape = "
                f"{tuple(batch)} (or with a trailing 1); make the module output one number per batch element."
            )
        return b

    def term(self, draw: Draw, cost: Tensor, box: Tensor) -> Tensor:
        b = self(draw, cost)
        aux = (b - stop_gradient(cost)).square()
        return (1 - box) * b + straight_through(0.0, aux)


class ControlVariate(Baseline):
    r"""A control variate g with known expectation, subtracted inside the score term.

    .. math::
        \hat g = \tfrac1n\textstyle\sum_i \bigl(f(x_i) - c\,g(x_i)\bigr)\nabla_\theta\log p_\theta(x_i)
        + c\,\nabla_\theta \mathbb{E}_{p_\theta}[g]

    The surrogate's value stays the plain mean of f; only its gradient changes.

    Requires: g a function of the sample alone (not of θ, and not of the other samples); ``mean_of_g``
    the exact :math:`\mathbb{E}_{p_\theta}[g]` *as a function of θ*. The term
    :math:`c\,\nabla_\theta \mathbb{E}[g]` comes from differentiating ``mean_of_g(dist)``, so a
    constant in place of a mean that depends on θ silently drops it: a constant ``mean_of_g`` is
    refused while the distribution's parameters require grad, and so is a callable whose result
    carries no gradient then.
    Bias: none, provided mean_of_g is exact.

    Args:
        g: maps samples ``[n, *B, *E]`` to ``[n, *B]``; must not depend on θ except through x.
        mean_of_g: a callable ``dist -> E_p[g]`` of shape ``[*B]`` (or broadcastable), differentiable
            in the distribution's parameters, e.g. ``lambda dist: dist.mean`` for g(x) = x; or a number
            or tensor when no parameter of the distribution requires grad.
        coefficient: c, a finite number or tensor broadcastable to ``[*B]``.

    Raises:
        TypeError: g or mean_of_g of the wrong kind.
        ValueError: a non-finite coefficient or constant mean; g of the wrong shape; a mean that
            carries no gradient while the distribution's parameters require one.

    Example:
        >>> import torch, gradest
        >>> _ = torch.manual_seed(0)
        >>> logits = torch.zeros(3, requires_grad=True)
        >>> cv = gradest.ControlVariate(lambda b: b, lambda dist: dist.mean, coefficient=0.5)
        >>> dist = torch.distributions.Bernoulli(logits=logits)
        >>> s = gradest.expectation(lambda b: (b - 0.3) ** 2, dist, gradest.ScoreFunction(cv), n=4)
        >>> s.sum().backward(); logits.grad.shape
        torch.Size([3])

    References:
        Mohamed et al. (2020). Monte Carlo Gradient Estimation in Machine Learning, §7. JMLR.
        arXiv:1906.10652.
    """

    def __init__(
        self,
        g: Callable[[Tensor], Tensor],
        mean_of_g: Tensor | float | Callable[[Distribution], Tensor],
        *,
        coefficient: float | Tensor = 1.0,
    ) -> None:
        super().__init__()
        if not callable(g):
            raise TypeError(f"ControlVariate: g={g!r} must be callable, mapping samples [n, *B, *E] to [n, *B].")
        if not callable(mean_of_g):
            if isinstance(mean_of_g, bool) or not isinstance(mean_of_g, (int, float, Tensor)):
                raise TypeError(
                    f"ControlVariate: mean_of_g={mean_of_g!r} must be a callable dist -> E_p[g] (differentiable "
                    "in the distribution's parameters), or a number or tensor."
                )
            if not bool(torch.isfinite(torch.as_tensor(mean_of_g)).all()):
                raise ValueError(f"ControlVariate: mean_of_g={mean_of_g!r} must be finite.")
        if isinstance(coefficient, bool) or not isinstance(coefficient, (int, float, Tensor)):
            raise TypeError(f"ControlVariate: coefficient={coefficient!r} must be a number or a tensor.")
        if not bool(torch.isfinite(torch.as_tensor(coefficient)).all()):
            raise ValueError(f"ControlVariate: coefficient={coefficient!r} must be finite; 1.0 is typical.")
        self.g = g
        self.mean_of_g = mean_of_g
        self.coefficient = coefficient

    def term(self, draw: Draw, cost: Tensor, box: Tensor) -> Tensor:
        gx = self.g(draw.points)
        if not isinstance(gx, Tensor):
            raise TypeError(
                f"ControlVariate: g returned {type(gx).__name__}, expected a tensor of shape {tuple(cost.shape)}."
            )
        if gx.shape != cost.shape:
            raise ValueError(
                f"ControlVariate: g returned shape {tuple(gx.shape)}, expected {tuple(cost.shape)} "
                "(the shape of the costs); reduce the event dimensions inside g."
            )
        live = torch.is_grad_enabled() and any(p.requires_grad for p in parameters(draw.dist).values())
        if callable(self.mean_of_g):
            m = self.mean_of_g(draw.dist)
            if not isinstance(m, Tensor):
                raise TypeError(f"ControlVariate: mean_of_g(dist) returned {type(m).__name__}, expected a tensor.")
            if live and not m.requires_grad:
                raise ValueError(
                    "ControlVariate: mean_of_g(dist) carries no gradient, but the distribution's parameters "
                    "require one: the term c·∇E[g] would be dropped and the gradient biased. Compute E_p[g] "
                    "from the distribution's (differentiable) parameters, e.g. lambda dist: dist.mean."
                )
        else:
            if live:
                raise ValueError(
                    f"ControlVariate: mean_of_g={self.mean_of_g!r} is a constant, but the distribution's "
                    "parameters require grad and E_p[g] depends on them: the term c·∇E[g] would be dropped "
                    "and the gradient biased. Pass a callable dist -> E_p[g] differentiable in the parameters "
                    "(e.g. lambda dist: dist.mean for g(x) = x)."
                )
            m = torch.as_tensor(self.mean_of_g)
        c = self.coefficient
        return (1 - box) * c * gx + c * straight_through(0.0, m.to(cost.dtype))
