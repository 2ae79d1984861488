r"""The reverse linear recurrence behind every function in ``gradest.rl``.

.. math::
    y_t = a_t + b_t\, y_{t+1}, \qquad t = T-1, \dots, 0, \qquad y_T = 0

on time-major tensors ``[T, *B]``. Returns, λ-returns, GAE, V-trace and per-decision importance
weights are all this recurrence with different ``a`` and ``b``; episode ends are zeros of ``b``.

No Python loop runs over time steps. Two vectorised algorithms:

* :func:`reverse_scan` (any ``b``): a blocked Hillis–Steele scan. Time is cut into chunks of
  ``_CHUNK`` steps; inside every chunk, ``log2(_CHUNK)`` doubling steps compose the affine maps
  :math:`y \mapsto a + b y` (``y[t] += g[t] y[t+s]``, ``g[t] *= g[t+s]``), which gives each chunk's
  local solution and the product of its ``b`` from every step to the chunk's end. The values at the
  chunk starts solve the same recurrence one level up (a recursive call on ``T / _CHUNK`` steps), and
  one fused multiply-add adds each chunk's carry. Work is ``O(T log _CHUNK)``; only products and
  sums of the recurrence's own terms are formed (no division, no cumulative product over the whole
  horizon), so zeros, tiny and large ``b`` are all exact cases, and float32 stays within a few ulps
  of the float64 loop at any T.
* :func:`discounted_reverse_scan` (``b_t = discount · (1 − reset_t)``, a constant discount cut at
  episode ends): for short inputs, where the cost is the number of torch calls rather than the data,
  a closed form in eleven calls whatever T is: in reversed time
  :math:`y_t = c^{t}\bigl(S_t - S_{s(t)-1}\bigr)`, with :math:`S` the cumulative sum of
  :math:`c^{-t} a_t` and :math:`s(t)` the start of t's episode (one running maximum of the start
  indices). The powers :math:`c^{\pm t}` and the indices are computed once per (T, c, dtype, rank, device)
  and kept. It is used only while :math:`c^{-T}` stays far inside the floating-point range and T is
  small (its rounding error grows like ``eps · min(T, 1/(1 − c)) · max|a|``); otherwise it calls
  :func:`reverse_scan`.

* :func:`window_reverse_scan` (any ``b``, at most ``n`` terms): the same recurrence cut after ``n``
  steps, :math:`y_t = \sum_{j<n} \bigl(\prod_{i<j} b_{t+i}\bigr) a_{t+j}`, for n-step returns: n
  fused multiply-adds over the whole rollout for short windows; for long ones the doubling steps of
  the scan give the windows of width 1, 2, 4, ... and the binary digits of ``n`` join them,
  ``O(T log n)`` work, again only products and sums of the recurrence's own terms.

All are plain torch, differentiable, and run unchanged on CUDA.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["reverse_scan", "discounted_reverse_scan", "window_reverse_scan"]

_CHUNK = 16  # steps per chunk of the blocked scan (a power of two)
_FLAT = 64  # at most this many steps: one flat doubling scan, no chunks
_HORNER = 24  # windows of at most this many steps: n multiply-adds rather than doubling (measured: the
# crossover is between 16 and 32 steps at the task-2 sizes)
_CLOSED_FORM_STEPS = 256  # the closed form of discounted_reverse_scan runs up to this many steps ...
_CLOSED_FORM_ELEMENTS = 1 << 14  # ... and this many elements
_CLOSED_FORM_RANGE_BITS = {torch.float32: 60.0, torch.float64: 400.0}  # bound on log2(c^-T)


def reverse_scan(a: Tensor, b: Tensor) -> Tensor:
    r"""Solve :math:`y_t = a_t + b_t y_{t+1}` backwards from :math:`y_T = 0`.

    Args:
        a: ``[T, *B]`` floating tensor.
        b: ``[T, *B]`` tensor of the same shape, dtype and device.

    Returns:
        ``[T, *B]`` tensor ``y``.
    """
    shape = a.shape
    if a.numel() == 0:
        return a.clone()
    y = _blocked(a.reshape(shape[0], -1), b.reshape(shape[0], -1))
    return y.reshape(shape)


def discounted_reverse_scan(a: Tensor, discount: float, reset: Tensor | None) -> Tensor:
    r"""Solve :math:`y_t = a_t + c\,(1 - \mathrm{reset}_t)\, y_{t+1}` backwards from :math:`y_T = 0`.

    Args:
        a: ``[T, *B]`` floating tensor.
        discount: the constant c, a float in [0, 1].
        reset: ``[T, *B]`` bool tensor (nothing is carried across a step where it is True), or None.

    Returns:
        ``[T, *B]`` tensor ``y``.
    """
    steps = a.shape[0]
    if steps <= _CLOSED_FORM_STEPS and a.numel() <= _CLOSED_FORM_ELEMENTS:
        tables = _TABLES.get((steps, discount, a.dtype, a.dim(), None if a.is_cpu else a.device))
        if tables is None:
            tables = _tables(steps, discount, a)
        if tables:
            return _closed_form(a, discount, reset, tables)
    if discount == 0.0 or steps == 0:
        return a.clone()
    if reset is None:
        return reverse_scan(a, torch.full_like(a, discount))
    return reverse_scan(a, torch.where(reset, a.new_zeros(()), discount))  # faster than masked_fill_ on bool


def window_reverse_scan(a: Tensor, b: Tensor, n: int, tail: Tensor | None = None) -> Tensor:
    r"""The reverse recurrence cut after ``n`` terms, closed by ``tail`` at the window's end.

    .. math::
        y_t = \sum_{j=0}^{n-1} \Bigl(\prod_{i=0}^{j-1} b_{t+i}\Bigr) a_{t+j}
            + \Bigl(\prod_{i=0}^{n-1} b_{t+i}\Bigr)\, \mathrm{tail}_{t+n-1},

    with :math:`a_s = b_s = 0` past the end (s ≥ T), and tail = 0 when None. Up to ``_HORNER`` terms it
    runs the window backwards from its end, :math:`y \leftarrow a_{t+i} + b_{t+i}\, y` for i = n-1, ..., 0
    (n fused multiply-adds over the whole rollout, RLax's n-step loop); beyond, the doubling steps of
    the scan give the windows of width 1, 2, 4, ... and the binary digits of n join them (``O(T log n)``
    work). Both form only products and sums of the recurrence's own terms. For n > T it is
    :func:`reverse_scan` (every window runs past the end).

    Args:
        a: ``[T, *B]`` floating tensor.
        b: ``[T, *B]`` tensor of the same shape, dtype and device.
        n: the window, an int >= 1.
        tail: ``[T, *B]`` tensor, the value at each step that closes a window ending there, or None.

    Returns:
        ``[T, *B]`` tensor ``y``.
    """
    steps = a.shape[0]
    if n > steps or a.numel() == 0:
        return reverse_scan(a, b)
    if n <= _HORNER:
        pad = a.new_zeros((n - 1, *a.shape[1:]))
        a_pad, b_pad = torch.cat([a, pad]), torch.cat([b, pad])
        if tail is None:
            out = a_pad[n - 1:]
        else:
            out = torch.addcmul(a_pad[n - 1:], b_pad[n - 1:], torch.cat([tail, pad])[n - 1:])
        for i in range(n - 2, -1, -1):
            out = torch.addcmul(a_pad[i: i + steps], b_pad[i: i + steps], out)
        return out
    y_w, g_w, w = a, b, 1  # the windows of width w = 1, 2, 4, ...
    y: Tensor | None = None  # the result so far, over the first m steps (m = the low bits of n)
    g: Tensor | None = None
    m = 0
    while True:
        if n & w:
            if y is None or g is None:
                y, g = y_w, g_w
            else:  # append the window of width w at offset m: y += g * y_w[t + m], g *= g_w[t + m]
                y = torch.cat([torch.addcmul(y[:-m], g[:-m], y_w[m:]), y[-m:]])
                g = torch.cat([g[:-m] * g_w[m:], g.new_zeros((m, *g.shape[1:]))])
            m += w
        if 2 * w > n:
            break
        y_w, g_w = _double(y_w, g_w, w)
        w *= 2
    assert y is not None and g is not None
    if tail is not None:  # windows that run past the end have g = 0
        y = torch.cat([torch.addcmul(y[: steps - n + 1], g[: steps - n + 1], tail[n - 1:]), y[steps - n + 1:]])
    return y


def _double(y: Tensor, g: Tensor, w: int) -> tuple[Tensor, Tensor]:
    """Windows of width w to width 2w: ``y[t] + g[t] y[t+w]`` and ``g[t] g[t+w]`` (zero past the end)."""
    if w >= y.shape[0]:
        return y, torch.zeros_like(g)
    return (torch.cat([torch.addcmul(y[:-w], g[:-w], y[w:]), y[-w:]]),
            torch.cat([g[:-w] * g[w:], g.new_zeros((w, *g.shape[1:]))]))


def _flat(a: Tensor, b: Tensor) -> Tensor:
    """Hillis–Steele doubling over all of ``[T, N]``: ``log2 T`` steps of ``y[t] += g[t] y[t+s]``."""
    steps = a.shape[0]
    shifts = []
    s = 1
    while s < steps:
        shifts.append(s)
        s *= 2
    if not shifts:
        return a.clone()
    # Zero padding past the end: y[t + s] reads 0 there, so no step needs a mask or a copy.
    pad = a.new_zeros((sum(shifts), a.shape[1]))
    y = torch.cat([a, pad])
    g = torch.cat([b, pad])
    for s in shifts[:-1]:
        g_head = g[:-s]
        y = torch.addcmul(y[:-s], g_head, y[s:])
        g = g_head * g[s:]
    s = shifts[-1]
    return torch.addcmul(y[:-s], g[:-s], y[s:])


def _blocked(a: Tensor, b: Tensor) -> Tensor:
    """The blocked scan on ``[T, N]``: local doubling in chunks, then the chunk starts, recursively."""
    steps, n = a.shape
    if steps <= _FLAT:
        return _flat(a, b)
    chunk = _CHUNK
    chunks = -(-steps // chunk)
    tail = chunks * chunk - steps
    if tail:  # steps past the end: a = 0 and b = 0, so they add nothing and carry nothing
        a = torch.cat([a, a.new_zeros((tail, n))])
        b = torch.cat([b, b.new_zeros((tail, n))])
    # Inside each chunk, pad with y = 0 and g = 1: y stays the chunk-local solution, and g ends as
    # the product of b from each step to the chunk's last step (the coefficient of the carry).
    y = torch.cat([a.reshape(chunks, chunk, n), a.new_zeros((chunks, chunk - 1, n))], 1)
    g = torch.cat([b.reshape(chunks, chunk, n), b.new_ones((chunks, chunk - 1, n))], 1)
    s = 1
    while s < chunk:
        g_head = g[:, :-s]
        y = torch.addcmul(y[:, :-s], g_head, y[:, s:])
        g = g_head * g[:, s:]
        s *= 2
    # y[c, 0] + g[c, 0] * start[c + 1] is the full solution at the start of chunk c.
    start = _blocked(y[:, 0], g[:, 0])
    carry = torch.cat([start[1:], start.new_zeros((1, n))])
    out = torch.addcmul(y, g, carry.unsqueeze(1))
    return out.view(chunks * chunk, n)[:steps]


Tables = tuple[Tensor, ...]  # (c^t, c^-t, t) as [T, 1, ...] columns, or () where the closed form is not used
_TABLES: dict[tuple[object, ...], Tables] = {}
_TABLES_KEPT = 64  # at most this many (T, c, dtype, rank, device) are kept; then the cache starts afresh


def _tables(steps: int, discount: float, a: Tensor) -> Tables:
    """``c^t``, ``c^-t`` (``a``'s dtype) and ``t`` (int64) for t = 0 .. T-1, as ``[T, 1, ...]`` columns.

    Empty where the closed form does not apply: c = 0, T = 0, or :math:`c^{-T}` not far inside the
    range of ``a``'s dtype (float32 and float64 only). Computed once per (T, c, dtype, rank, device)
    and kept, since building them would cost the closed form three more calls. Never written to.
    """
    tables: Tables = ()
    if 0.0 < discount and 0 < steps and steps * -math.log2(discount) <= _CLOSED_FORM_RANGE_BITS.get(a.dtype, -1.0):
        column = (steps,) + (1,) * (a.dim() - 1)
        # Ordinary tensors even when called under inference_mode, so that autograd may save them later.
        with torch.inference_mode(False):
            # Each rounded once: logspace raises the base to exact integers.
            power = torch.logspace(0, steps - 1, steps, base=discount, dtype=a.dtype, device=a.device)
            inverse = torch.logspace(0, steps - 1, steps, base=1.0 / discount, dtype=a.dtype, device=a.device)
            index = torch.arange(steps, device=a.device)
        tables = (power.view(column), inverse.view(column), index.view(column))
    if not torch.compiler.is_compiling():  # a traced (fake) tensor must not outlive its trace
        if len(_TABLES) >= _TABLES_KEPT:
            _TABLES.clear()
        _TABLES[(steps, discount, a.dtype, a.dim(), None if a.is_cpu else a.device)] = tables
    return tables


def _closed_form(a: Tensor, discount: float, reset: Tensor | None, tables: Tables | None = None) -> Tensor:
    """Short inputs with a constant discount: cumulative sums in reversed time (see the module doc).

    Eleven torch calls whatever T is (five without resets): for short rollouts the cost is the calls,
    not the data, so every call that can work in place does. ``tables`` are :func:`_tables`'s.
    """
    power, inverse, index = _tables(a.shape[0], discount, a) if tables is None else tables
    u = a.flip(0).mul_(inverse)  # reversed time: u[t] = c^-t a[T-1-t]
    total = u.cumsum(0)
    if reset is None:
        return total.mul_(power).flip(0)
    # In reversed time an episode starts where reset is True; the running maximum of t · reset is the
    # last start <= t, or 0 before the first one. The sum before an episode's first step s is
    # total[s] - u[s]; at s = 0 that is exactly 0, which is also what t before the first start needs.
    last = reset.flip(0).mul(index).cummax(0).values
    before = torch.gather(total - u, 0, last)
    return total.sub_(before).mul_(power).flip(0)
