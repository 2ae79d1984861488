"""Batch-major data (``time_dim=``): every time-major function of gradest.rl gives the time-major result
in the caller's layout, through views, with no extra copy."""

from __future__ import annotations

import re

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from gradest import rl

from .conftest import make_rollout

F = dict(gamma=0.97, lambda_=0.9)


def _calls(d):
    """Each function with its tensor arguments and options, as (name, tensors, options)."""
    flags = dict(terminated=d.terminated, truncated=d.truncated)
    return [
        (rl.gae, dict(rewards=d.rewards, values=d.values, next_values=d.next_values, **flags), F),
        (rl.td_lambda, dict(rewards=d.rewards, next_values=d.next_values, **flags), F),
        (rl.discounted_returns, dict(rewards=d.rewards, next_values=d.next_values, **flags), dict(gamma=0.97)),
        (rl.vtrace, dict(log_rhos=d.log_rhos, rewards=d.rewards, values=d.values, next_values=d.next_values,
                         **flags), dict(gamma=0.97, lambda_=0.9, rho_bar=1.5, c_bar=0.8)),
        (rl.per_decision_importance_weights, dict(log_rhos=d.log_rhos, **flags), dict(clip=2.0)),
        (rl.retrace, dict(q_values=d.values, next_values=d.next_values, rewards=d.rewards, log_rhos=d.log_rhos,
                          **flags), F),
        (rl.n_step_returns, dict(rewards=d.rewards, next_values=d.next_values, **flags), dict(gamma=0.97, n=5)),
    ]


def _outputs(out):
    return out if isinstance(out, tuple) else (out,)


@pytest.mark.parametrize("steps", [7, 300])  # the closed form and the blocked scan
@pytest.mark.parametrize("batch,time_dim", [((3,), 1), ((3,), -1), ((3, 1), 1), ((3, 1), -2), ((2, 3), 2),
                                            ((2, 3), 1), ((4,), 0)])
def test_batch_major_gives_the_time_major_result(steps, batch, time_dim):
    d = make_rollout((steps, *batch), seed=steps)
    for fn, tensors, options in _calls(d):
        want = _outputs(fn(**tensors, **options))
        moved = {k: v.movedim(0, time_dim) for k, v in tensors.items()}
        got = _outputs(fn(**moved, **options, time_dim=time_dim))
        for g, w in zip(got, want):
            assert g.shape == moved["terminated"].shape, fn.__name__
            torch.testing.assert_close(g.movedim(time_dim, 0), w, rtol=1e-12, atol=1e-12)


class _Ops(TorchDispatchMode):
    """The aten ops a call runs, views left out (movedim is a view)."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if torch.Tag.view_copy not in func.tags and not func.is_view:
            self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("steps", [7, 300])
@pytest.mark.parametrize("layout", ["[B, T]", "[B, T, 1]"])
def test_batch_major_copies_nothing_more_than_time_major(steps, layout):
    """The same non-view ops run for [T, B] and for the batch-major layouts TorchRL and SB3 use: no
    input is copied into time-major order."""
    d = make_rollout((steps, 3), seed=1)
    for fn, tensors, options in _calls(d):
        with _Ops() as time_major:
            fn(**tensors, **options)
        if layout == "[B, T]":
            moved, time_dim = {k: v.T.contiguous() for k, v in tensors.items()}, 1
        else:
            moved, time_dim = {k: v.T.contiguous().unsqueeze(-1) for k, v in tensors.items()}, -2
        with _Ops() as batch_major:
            fn(**moved, **options, time_dim=time_dim)
        assert batch_major.ops == time_major.ops, fn.__name__


def test_a_step_both_terminated_and_truncated_is_reported_in_the_callers_layout():
    d = make_rollout((6, 2), seed=0)
    both = torch.zeros(2, 6, dtype=torch.bool)
    both[1, 4] = True
    with pytest.raises(ValueError, match=re.escape("first at index (1, 4)")):
        rl.gae(rewards=d.rewards.T, values=d.values.T, next_values=d.next_values.T, terminated=both,
               truncated=both.clone(), time_dim=1, **F)


@pytest.mark.parametrize("fn,tensors,options", _calls(make_rollout((5, 2))))
@pytest.mark.parametrize("time_dim,error,match", [
    (2, ValueError, "time_dim=2 is not a dim of "),
    (-3, ValueError, "time_dim=-3 is not a dim of "),
    (1.0, TypeError, "time_dim=1.0 must be an int: 0 for time-major [T, *B] tensors"),
    (True, TypeError, "time_dim=True must be an int"),
    ("1", TypeError, "time_dim='1' must be an int"),
])
def test_bad_time_dim(fn, tensors, options, time_dim, error, match):
    with pytest.raises(error, match=re.escape(match)):
        fn(**tensors, **options, time_dim=time_dim)
    if error is ValueError:
        first = next(iter(tensors))
        with pytest.raises(error, match=re.escape(f"{first}.shape=(5, 2); pass a dim in [-2, 2)")):
            fn(**tensors, **options, time_dim=time_dim)


@pytest.mark.parametrize("layout,time_dim", [("[B, T]", 1), ("[B, T, 1]", -2)])
def test_off_policy_value_batch_major(layout, time_dim):
    d = make_rollout((12, 5), seed=3, p_terminated=0.2, p_truncated=0.0)
    first_end = d.terminated & (d.terminated.cumsum(0) == 1)  # one logged episode per column
    kw = dict(rewards=d.rewards, log_rhos=d.log_rhos, terminated=first_end, q_values=d.values,
              v_values=d.next_values)
    moved = {k: v.T if layout == "[B, T]" else v.T.unsqueeze(-1) for k, v in kw.items()}
    for method in ("is", "pdis", "wis", "wpdis", "dr", "wdr"):
        model = ("q_values", "v_values") if method in ("dr", "wdr") else ()
        pick = lambda x: {k: v for k, v in x.items() if k not in ("q_values", "v_values") or k in model}  # noqa: E731,B023
        want = rl.off_policy_value(**pick(kw), gamma=0.9, method=method)
        got = rl.off_policy_value(**pick(moved), gamma=0.9, method=method, time_dim=time_dim)
        torch.testing.assert_close(got.value, want.value, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got.stderr, want.stderr, rtol=1e-12, atol=1e-12)
        if want.per_episode is not None:
            assert got.per_episode.shape == moved["rewards"].shape[:time_dim] + moved["rewards"].shape[time_dim:][1:]
