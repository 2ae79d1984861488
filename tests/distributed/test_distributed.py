"""Issue 8: on 2 gloo ranks, synchronised statistics and gradients equal one process on the global
batch, and are identical on both ranks."""

from __future__ import annotations

import pytest
import torch

import gradest
from tests.distributed import _problems as P

TOL = {"rtol": 1e-10, "atol": 1e-12}


def assert_close_tree(actual, expected, what: str) -> None:  # noqa: ANN001
    if isinstance(expected, dict):
        assert actual.keys() == expected.keys(), what
        for k in expected:
            assert_close_tree(actual[k], expected[k], f"{what}[{k!r}]")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), what
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_close_tree(a, e, f"{what}[{i}]")
    else:
        torch.testing.assert_close(actual, expected, **TOL, msg=lambda m: f"{what}: {m}")


def assert_same_on_ranks(ranks: list[dict], key: str) -> None:
    assert_close_tree(ranks[1][key], ranks[0][key], f"rank 1 vs rank 0: {key}")


# ------------------------------------------------------------------------------------------------
# Baselines
# ------------------------------------------------------------------------------------------------


def test_moving_average_equals_global_batch(ranks: list[dict]) -> None:
    ma = gradest.MovingAverage(0.8)
    b = [ma(None, P.moving_average_costs(t)) for t in range(P.STEPS)]
    for key in ("moving_average_b", "moving_average_state"):
        assert_same_on_ranks(ranks, key)
    assert_close_tree(ranks[0]["moving_average_b"], b, "b")
    assert_close_tree(ranks[0]["moving_average_state"], dict(ma.state_dict()), "state")


def test_optimal_constant_running_moments_equal_global_batch(ranks: list[dict]) -> None:
    oc = gradest.OptimalConstant(decay=0.7)
    logits = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64, requires_grad=True)
    grads = []
    for t in range(P.STEPS):
        values, costs = P.optimal_constant_problem(t)
        grads.append(P.optimal_constant_step(oc, logits, values, costs))
    assert_same_on_ranks(ranks, "optimal_constant_state")
    assert_close_tree(ranks[0]["optimal_constant_state"], dict(oc.state_dict()), "state")
    # each rank's surrogate is the mean over its half of the samples: the global gradient is their mean
    for t in range(P.STEPS):
        mean = (ranks[0]["optimal_constant_grads"][t] + ranks[1]["optimal_constant_grads"][t]) / 2
        assert_close_tree(mean, grads[t], f"gradient at step {t}")


# ------------------------------------------------------------------------------------------------
# DDP
# ------------------------------------------------------------------------------------------------


def test_ddp_gradients_equal_global_batch(ranks: list[dict]) -> None:
    model = P.Model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = P.ddp_data()
    grads = []
    for t in range(P.STEPS):
        opt.zero_grad()
        model(x, P.ddp_values(t)).backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
        opt.step()
    for key in ("ddp_grads", "ddp_state"):
        assert_same_on_ranks(ranks, key)
    assert_close_tree(ranks[0]["ddp_grads"], grads, "gradients")
    assert_close_tree(ranks[0]["ddp_state"], dict(model.state_dict()), "state")


# ------------------------------------------------------------------------------------------------
# Finite sums and group advantages
# ------------------------------------------------------------------------------------------------


def test_svrg_snapshot_equals_full_gradient(ranks: list[dict]) -> None:
    from gradest.optim import SVRG

    X, y = P.finite_sum()
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    svrg = SVRG([w], lr=0.3, num_examples=P.N_EXAMPLES, chunk_size=4, snapshot_every=2)
    snaps = []
    for t, batch in enumerate(P.finite_sum_batches()):
        if t % 2 == 0:  # a snapshot is due: check it against the full gradient by hand
            full = torch.autograd.grad(P.logistic_losses(X, y, w)(torch.arange(P.N_EXAMPLES)).mean(), w)[0]
        svrg.step(batch, P.logistic_losses(X, y, w))
        snaps.append(svrg.state[w]["snapshot_grad"].clone())
        torch.testing.assert_close(snaps[-1], full, **TOL)
    for key in ("svrg_snapshot_grads", "svrg_w"):
        assert_same_on_ranks(ranks, key)
    assert_close_tree(ranks[0]["svrg_snapshot_grads"], snaps, "snapshot_grad")
    assert_close_tree(ranks[0]["svrg_w"], w.detach(), "parameters")


def test_saga_sharded_table_equals_single_process(ranks: list[dict]) -> None:
    from gradest.optim import SAGA

    X, y = P.finite_sum()
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    saga = SAGA([w], lr=0.3, num_examples=P.N_EXAMPLES, weight_decay=0.01)
    for batch in P.saga_batches():
        saga.step(batch, P.logistic_losses(X, y, w))
    assert_same_on_ranks(ranks, "saga_w")
    assert_close_tree(ranks[0]["saga_w"], w.detach(), "parameters")
    table = saga.state[w]["table"]
    for rank in range(P.WORLD):  # rank r holds rows r, r + 2, ... of the single process's table
        state = ranks[rank]["saga_state"]
        assert_close_tree(state["table_mean"], saga.state[w]["table_mean"], f"rank {rank} table_mean")
        assert_close_tree(state["table"], table[rank::P.WORLD], f"rank {rank} table")


def test_saga_functional_core_with_a_process_group_equals_one_process(ranks: list[dict]) -> None:
    from gradest.optim import saga_direction, saga_step

    params, deltas, means, first = P.saga_core()
    direction = saga_direction(params, deltas, means, weight_decay=[0.1, 0.0])
    saga_step(params, deltas, means, lr=0.5, weight_decay=[0.1, 0.0], num_examples=P.N_EXAMPLES, first=first)
    for key in ("saga_core_direction", "saga_core"):
        assert_same_on_ranks(ranks, key)
    assert_close_tree(ranks[0]["saga_core_direction"], direction, "direction")
    assert_close_tree(ranks[0]["saga_core"], {"params": params, "means": means}, "step")


@pytest.mark.parametrize("normalize", [False, True])
def test_group_advantages_split_over_ranks(ranks: list[dict], normalize: bool) -> None:
    from gradest.rl import group_advantages

    expected = group_advantages(rewards=P.group_rewards(), normalize=normalize)
    key = "group_normalized" if normalize else "group_loo"
    got = torch.cat([ranks[r][key] for r in range(P.WORLD)])
    assert_close_tree(got, expected, key)


@pytest.mark.parametrize("name", list(P.SEQUENCE_CONFIGS))
def test_sequence_loss_with_groups_split_over_ranks_equals_one_process(ranks: list[dict], name: str) -> None:
    """Each rank holds 6 of the 12 sequences (group 1 spans both): with the group statistics and the token
    count all-reduced, the mean of the ranks' gradients (what DDP applies) is one process's gradient."""
    problem = P.sequence_problem()
    config = P.SEQUENCE_CONFIGS[name]
    want = P.sequence_gradient(problem, config, slice(None))
    got = (ranks[0]["sequence_grads"][name] + ranks[1]["sequence_grads"][name]) / P.WORLD
    assert_close_tree(got, want, name)


def test_sequence_loss_errors_are_raised_on_every_rank(ranks: list[dict]) -> None:
    for rank in range(P.WORLD):
        errors = ranks[rank]["sequence_errors"]
        assert "the ranks hold different numbers of sequences" in errors["different_n"]
        assert "group_size=5 does not divide 2 ranks x N=6 = 12 sequences" in errors["group_size"]
    assert "rewards contains NaN (1 of 6 elements)" in ranks[1]["sequence_errors"]["nan_on_rank_1"]
    assert "another rank's input failed validation" in ranks[0]["sequence_errors"]["nan_on_rank_1"]


# ------------------------------------------------------------------------------------------------
# Opting out, errors, and no process group
# ------------------------------------------------------------------------------------------------


def test_process_group_none_keeps_a_per_rank_average(ranks: list[dict]) -> None:
    for rank in range(P.WORLD):
        ma = gradest.MovingAverage(0.8, process_group=None)
        for t in range(P.STEPS):
            ma(None, P.shard(P.moving_average_costs(t), rank, dim=1))
        assert_close_tree(ranks[rank]["moving_average_local_state"], dict(ma.state_dict()), f"rank {rank}")


def test_distributed_errors(ranks: list[dict]) -> None:
    for rank in range(P.WORLD):
        errors = ranks[rank]["errors"]
        assert "n=1 samples of each group in all" in errors["group_advantages"]
        other = 1 - rank
        assert f"index={other} belongs to rank {other} of 2" in errors["saga"]
        assert f"not to this rank {rank}" in errors["saga"]
