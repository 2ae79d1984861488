"""The reverse scan against a float64 loop: both algorithms, every shape class, every kind of ``b``."""

from __future__ import annotations

import pytest
import torch

from gradest.rl import _scan
from gradest.rl._scan import discounted_reverse_scan, reverse_scan

from . import references as ref

# Lengths around the flat/blocked and chunk boundaries, and through two levels of recursion.
STEPS = [0, 1, 2, 3, 5, 16, 17, 63, 64, 65, 100, 255, 256, 257, 1000, 1029]
BATCH = [(), (3,), (2, 3)]


def _close(got: torch.Tensor, want: torch.Tensor, tol: float = 1e-9) -> None:
    assert got.shape == want.shape and got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("batch", BATCH)
def test_reverse_scan_matches_the_loop(steps, batch):
    g = torch.Generator().manual_seed(steps)
    shape = (steps, *batch)
    a = torch.randn(shape, generator=g, dtype=torch.float64)
    # b mixes exact zeros (episode ends), tiny values, values above 1 and ordinary discounts.
    b = torch.rand(shape, generator=g, dtype=torch.float64) * 1.02
    b[torch.rand(shape, generator=g) < 0.05] = 0.0
    b[torch.rand(shape, generator=g) < 0.02] = 1e-30
    _close(reverse_scan(a, b), ref.reverse_scan(a, b))


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("discount", [0.0, 0.5, 0.9405, 0.999, 1.0])
@pytest.mark.parametrize("closed_form", [True, False])
def test_discounted_reverse_scan_matches_the_loop(steps, discount, closed_form, monkeypatch):
    if not closed_form:
        monkeypatch.setattr(_scan, "_CLOSED_FORM_STEPS", -1)
    g = torch.Generator().manual_seed(steps)
    a = torch.randn(steps, 4, generator=g, dtype=torch.float64)
    reset = torch.rand(steps, 4, generator=g) < 0.1
    b = discount * (~reset).double()
    _close(discounted_reverse_scan(a, discount, reset), ref.reverse_scan(a, b))
    _close(discounted_reverse_scan(a, discount, None), ref.reverse_scan(a, torch.full_like(a, discount)))


@pytest.mark.parametrize("reset_rate", [0.0, 0.5, 1.0])
def test_closed_form_handles_any_density_of_episode_ends(reset_rate):
    g = torch.Generator().manual_seed(1)
    a = torch.randn(200, 3, generator=g, dtype=torch.float64)
    reset = torch.rand(200, 3, generator=g) < reset_rate
    for discount in (0.3, 0.97, 1.0):
        want = ref.reverse_scan(a, discount * (~reset).double())
        _close(_scan._closed_form(a, discount, reset), want)


def test_closed_form_is_used_only_within_its_range():
    a = torch.zeros(300, 2)
    calls = []
    real = _scan._closed_form

    def spy(*args):
        calls.append(args[0].shape)
        return real(*args)

    _scan._closed_form, saved = spy, _scan._closed_form
    try:
        discounted_reverse_scan(a[:128], 0.9405, None)  # short: closed form
        discounted_reverse_scan(a, 0.9405, None)  # longer than _CLOSED_FORM_STEPS: blocked scan
        discounted_reverse_scan(a[:128], 0.3, None)  # 0.3^-128 leaves float32's range: blocked scan
        discounted_reverse_scan(a[:128].half(), 0.9, None)  # no closed form for float16
    finally:
        _scan._closed_form = saved
    assert calls == [torch.Size([128, 2])]


@pytest.mark.parametrize("batch", [(), (3,), (2, 3)])
def test_closed_form_keeps_its_tables_apart_by_rank_and_dtype(batch):
    """The kept tables are keyed by (T, c, dtype, rank, device): one T and c, every rank and dtype."""
    g = torch.Generator().manual_seed(2)
    for dtype in (torch.float64, torch.float32):
        a = torch.randn(40, *batch, generator=g, dtype=dtype)
        reset = torch.rand(40, *batch, generator=g) < 0.1
        want = ref.reverse_scan(a, 0.9 * (~reset).double())
        got = discounted_reverse_scan(a, 0.9, reset)
        assert got.dtype == dtype and got.shape == a.shape
        torch.testing.assert_close(got.double(), want, rtol=1e-5 if dtype == torch.float32 else 1e-9,
                                   atol=1e-5 if dtype == torch.float32 else 1e-9)


def test_closed_form_tables_are_bounded_and_serve_autograd_after_inference_mode(monkeypatch):
    monkeypatch.setattr(_scan, "_TABLES", {})
    a = torch.randn(30, 2, dtype=torch.float64)
    reset = torch.zeros(30, 2, dtype=torch.bool)
    reset[10] = True
    with torch.inference_mode():  # the tables made here must still be ordinary tensors
        discounted_reverse_scan(a, 0.8, reset)
    x = a.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: discounted_reverse_scan(t, 0.8, reset), (x,))
    for i in range(3 * _scan._TABLES_KEPT):
        discounted_reverse_scan(a, 0.5 + i / (10 * _scan._TABLES_KEPT), reset)
    assert 0 < len(_scan._TABLES) <= _scan._TABLES_KEPT


def test_cummax_ties_do_not_matter():
    """The closed form takes the running maximum of the start *indices* (its values), so it relies on
    no tie-breaking rule: every reset pattern of a short column, checked exhaustively."""
    steps = 6
    a = torch.randn(steps, 1 << steps, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    bits = torch.arange(1 << steps)
    reset = ((bits.unsqueeze(0) >> torch.arange(steps).unsqueeze(1)) & 1).bool()  # column k: the bits of k
    for discount in (0.5, 1.0):
        _close(_scan._closed_form(a, discount, reset), ref.reverse_scan(a, discount * (~reset).double()))


@pytest.mark.parametrize("steps,batch", [(128, 8), (1000, 64), (10000, 16)])
@pytest.mark.parametrize("discount", [0.99 * 0.95, 0.99, 1.0])
def test_float32_stays_within_1e_5_of_the_float64_loop(steps, batch, discount):
    """The benchmark's accuracy bar, at its sizes (the longest also exercises two recursion levels)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(steps, batch, generator=g)
    reset = torch.rand(steps, batch, generator=g) < 0.01
    want = ref.reverse_scan(a, discount * (~reset).double())
    got = discounted_reverse_scan(a, discount, reset)
    assert got.dtype == torch.float32
    scale = want.abs().max().clamp_min(1.0)  # undiscounted sums grow with T; compare relative to them
    assert float((got.double() - want).abs().max()) <= 1e-5 * float(scale)
    b = discount * (~reset).float()
    assert float((reverse_scan(a, b).double() - want).abs().max()) <= 1e-5 * float(scale)


def test_float32_gae_at_ten_thousand_steps_is_within_1e_5_absolute():
    from gradest.rl import gae

    g = torch.Generator().manual_seed(0)
    r = torch.randn(10000, 16, generator=g)
    ve = torch.randn(10001, 16, generator=g)
    done = torch.rand(10000, 16, generator=g) < 0.01
    got = gae(rewards=r, values=ve[:-1], next_values=ve[1:], terminated=done, gamma=0.99, lambda_=0.95)
    want = ref.gae(r, ve[:-1], ve[1:], done, None, 0.99, 0.95)
    assert float((got.double() - want).abs().max()) <= 1e-5


def test_scan_is_differentiable():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(40, 2, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.rand(40, 2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(reverse_scan, (a, b))
    reset = torch.rand(40, 2, generator=g) < 0.2
    assert torch.autograd.gradcheck(lambda x: discounted_reverse_scan(x, 0.9, reset), (a,))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("steps", [100, 5000])
def test_cuda_matches_cpu(steps):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(steps, 8, generator=g)
    reset = torch.rand(steps, 8, generator=g) < 0.05
    want = discounted_reverse_scan(a, 0.95, reset)
    got = discounted_reverse_scan(a.cuda(), 0.95, reset.cuda()).cpu()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _window_loop(a, b, n, tail):
    """y_t = Σ_{j<n} (Π_{i<j} b_{t+i}) a_{t+j} + (Π_{i<n} b_{t+i}) tail_{t+n-1}, zero past the end."""
    steps = a.shape[0]
    out = torch.zeros_like(a)
    for t in range(steps):
        prod = torch.ones_like(a[0])
        for j in range(n):
            if t + j >= steps:
                prod = torch.zeros_like(prod)
                break
            out[t] += prod * a[t + j]
            prod = prod * b[t + j]
        if tail is not None and t + n - 1 < steps:
            out[t] += prod * tail[t + n - 1]
    return out


@pytest.mark.parametrize("steps", [1, 2, 5, 16, 17, 40])
@pytest.mark.parametrize("n", [1, 2, 3, 7, 16, 17, 31, 32, 33, 41])
@pytest.mark.parametrize("with_tail", [False, True])
def test_window_reverse_scan_matches_the_loop(steps, n, with_tail):
    """Both paths (n multiply-adds up to _HORNER, doubling above) and n past the end."""
    g = torch.Generator().manual_seed(steps * 100 + n)
    a = torch.randn(steps, 3, generator=g, dtype=torch.float64)
    b = torch.rand(steps, 3, generator=g, dtype=torch.float64) * 1.02
    b[torch.rand(steps, 3, generator=g) < 0.1] = 0.0
    tail = torch.randn(steps, 3, generator=g, dtype=torch.float64) if with_tail else None
    got = _scan.window_reverse_scan(a, b, n, tail)
    want = _window_loop(a, b, n, tail) if n <= steps else ref.reverse_scan(a, b)
    _close(got, want)
