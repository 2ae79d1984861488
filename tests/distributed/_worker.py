"""What each of the 2 gloo ranks runs (spawned once per test session by ``conftest.py``).

Every check records its per-rank results in one dict, saved as ``rank{r}.pt``; the tests compare
them with each other and with a single process on the global batch.
"""

from __future__ import annotations

import gc
import os
import traceback

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import gradest
from tests.distributed import _problems as P


def run_baselines(rank: int) -> dict:
    out: dict = {}
    ma = gradest.MovingAverage(0.8)
    out["moving_average_b"] = [ma(None, P.shard(P.moving_average_costs(t), rank, dim=1)) for t in range(P.STEPS)]
    out["moving_average_state"] = {k: v.clone() for k, v in ma.state_dict().items()}
    local = gradest.MovingAverage(0.8, process_group=None)  # opted out: this rank's costs only
    for t in range(P.STEPS):
        local(None, P.shard(P.moving_average_costs(t), rank, dim=1))
    out["moving_average_local_state"] = {k: v.clone() for k, v in local.state_dict().items()}

    oc = gradest.OptimalConstant(decay=0.7)
    logits = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64, requires_grad=True)
    grads = []
    for t in range(P.STEPS):
        values, costs = P.optimal_constant_problem(t)
        grads.append(P.optimal_constant_step(oc, logits, P.shard(values, rank), costs))
    out["optimal_constant_grads"] = grads
    out["optimal_constant_state"] = {k: v.clone() for k, v in oc.state_dict().items()}
    return out


def run_ddp(rank: int) -> dict:
    model = P.Model()
    ddp = DistributedDataParallel(model, find_unused_parameters=False)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    x = P.shard(P.ddp_data(), rank)
    grads, losses = [], []
    for t in range(P.STEPS):
        values = tuple(P.shard(v, rank, dim=1) for v in P.ddp_values(t))
        opt.zero_grad()
        loss = ddp(x, values)
        loss.backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
        losses.append(loss.detach())
        opt.step()
    return {"ddp_grads": grads, "ddp_state": {k: v.clone() for k, v in model.state_dict().items()}}


def run_optim(rank: int) -> dict:
    from gradest.optim import SAGA, SVRG
    from gradest.rl import group_advantages

    X, y = P.finite_sum()
    out: dict = {}
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    svrg = SVRG([w], lr=0.3, num_examples=P.N_EXAMPLES, chunk_size=4, snapshot_every=2)
    snaps = []
    for batch in P.finite_sum_batches():
        svrg.step(P.shard(batch, rank), P.logistic_losses(X, y, w))
        snaps.append(svrg.state[w]["snapshot_grad"].clone())
    out["svrg_snapshot_grads"], out["svrg_w"] = snaps, w.detach().clone()

    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    saga = SAGA([w], lr=0.3, num_examples=P.N_EXAMPLES, weight_decay=0.01)
    for batch in P.saga_batches():
        saga.step(batch[batch % P.WORLD == rank], P.logistic_losses(X, y, w))
    out["saga_w"] = w.detach().clone()
    out["saga_state"] = {k: v.clone() for k, v in saga.state[w].items() if isinstance(v, torch.Tensor)}

    # the functional core with a process group: this rank's half of a global batch
    from gradest.optim import saga_direction, saga_step

    params, deltas, means, first = P.saga_core()
    deltas = [P.shard(d, rank) for d in deltas]
    out["saga_core_direction"] = saga_direction(params, deltas, means, weight_decay=[0.1, 0.0],
                                                process_group="world")
    saga_step(params, deltas, means, lr=0.5, weight_decay=[0.1, 0.0], num_examples=P.N_EXAMPLES,
              first=P.shard(first, rank), process_group="world")
    out["saga_core"] = {"params": params, "means": means}

    rewards = P.shard(P.group_rewards(), rank)
    out["group_loo"] = group_advantages(rewards=rewards, process_group="world")
    out["group_normalized"] = group_advantages(rewards=rewards, normalize=True, process_group="world")

    # errors: raised alike on every rank, so no rank is left waiting in a collective
    out["errors"] = {}
    try:
        group_advantages(rewards=rewards[: 1 - rank], process_group="world")  # 1 + 0 samples in all
    except ValueError as e:
        out["errors"]["group_advantages"] = str(e)
    try:
        saga.step(torch.tensor([1 - rank]), P.logistic_losses(X, y, w))  # the other rank's example
    except ValueError as e:
        out["errors"]["saga"] = str(e)
    return out


def run_sequence(rank: int) -> dict:
    from gradest.rl import sequence_policy_loss

    problem = P.sequence_problem()
    half = problem["rewards"].shape[0] // P.WORLD
    rows = slice(rank * half, (rank + 1) * half)
    out: dict = {"sequence_grads": {name: P.sequence_gradient(problem, config, rows, process_group="world")
                                    for name, config in P.SEQUENCE_CONFIGS.items()}}
    # errors, raised alike on every rank so that no rank is left waiting in a collective
    errors = {}
    logp, rewards = problem["ref_logp"].clone().requires_grad_(True), problem["rewards"]
    short = slice(rows.start, rows.stop - 2 * rank)  # rank 1 passes 4 sequences, rank 0 passes 6
    try:
        sequence_policy_loss(logp=logp[short], rewards=rewards[short], group_size=2, process_group="world")
    except ValueError as e:
        errors["different_n"] = str(e)
    bad = rewards[rows].clone()
    if rank == 1:
        bad[0] = float("nan")
    try:
        sequence_policy_loss(logp=logp[rows], rewards=bad, group_size=P.SEQ_GROUP, process_group="world")
    except ValueError as e:
        errors["nan_on_rank_1"] = str(e)
    try:
        sequence_policy_loss(logp=logp[rows], rewards=rewards[rows], group_size=5, process_group="world")
    except ValueError as e:
        errors["group_size"] = str(e)
    out["sequence_errors"] = errors
    return out


CHECKS = {"baselines": run_baselines, "ddp": run_ddp, "optim": run_optim, "sequence": run_sequence}


def main(rank: int, directory: str, checks: list[str]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{os.path.join(directory, 'store')}",
                            rank=rank, world_size=P.WORLD)
    results: dict = {}
    try:
        for name in checks:
            try:
                results.update(CHECKS[name](rank))
            except Exception:  # noqa: BLE001 - reported to the test, which fails with the traceback
                results[f"error:{name}"] = traceback.format_exc()
                break  # the other rank may now hang in a collective; stop here
    finally:
        torch.save(results, os.path.join(directory, f"rank{rank}.pt"))
        gc.collect()  # run_ddp's DDP sits in a reference cycle holding the group: free it before teardown
        if not any(k.startswith("error:") for k in results):
            dist.barrier()  # a rank tearing gloo down while the other still uses it aborts (SIGABRT)
        dist.destroy_process_group()
