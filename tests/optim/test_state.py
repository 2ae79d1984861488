"""State: a state_dict taken mid-run, saved and loaded with weights_only=True into a fresh optimiser
over fresh parameters, continues bit for bit; old checkpoints get defaults; mismatches raise."""

from __future__ import annotations

import copy
import io

import pytest
import torch

from gradest.optim import SAGA, SVRG

from .problems import Problem, logistic, mlp

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]


def _make(kind: str, problem: Problem) -> torch.optim.Optimizer:
    groups = problem.groups(weight_decay=1e-2)
    if kind == "saga":
        return SAGA(groups, lr=0.1, num_examples=problem.N)
    if kind == "saga-glm":
        return SAGA(groups, lr=0.1, num_examples=problem.N, features=problem.X)
    return SVRG(groups, lr=0.1, num_examples=problem.N, snapshot_every=7)


def _steps(opt: torch.optim.Optimizer, problem: Problem, batches: torch.Tensor) -> None:
    for idx in batches:
        opt.step(idx, problem.losses)


def _round_trip(state_dict: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state_dict, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["saga", "saga-glm", "svrg"])
def test_state_dict_mid_run_continues_bit_for_bit(kind: str, dtype: torch.dtype, device: str) -> None:
    g = torch.Generator().manual_seed(0)
    batches = torch.randint(20, (25, 3), generator=g).to(device)
    a = logistic(N=20, D=3, dtype=dtype, device=device)
    opt_a = _make(kind, a)
    _steps(opt_a, a, batches[:10])  # SVRG: snapshots at steps 0 and 7, the next due at 14

    b = logistic(N=20, D=3, dtype=dtype, device=device)
    with torch.no_grad():
        for p, q in zip(b.params, a.params, strict=True):
            p.copy_(q)
    opt_b = _make(kind, b)
    opt_b.load_state_dict(_round_trip(opt_a.state_dict()))

    _steps(opt_a, a, batches[10:])
    _steps(opt_b, b, batches[10:])
    for p, q in zip(a.params, b.params, strict=True):
        assert torch.equal(p, q)
    for p, q in zip(a.params, b.params, strict=True):
        sa, sb = opt_a.state[p], opt_b.state[q]
        assert sa.keys() == sb.keys()
        for key in sa:
            assert torch.equal(torch.as_tensor(sa[key]), torch.as_tensor(sb[key])), key


def test_state_holds_the_documented_tensors() -> None:
    problem = mlp(N=6)
    saga = SAGA(problem.params, lr=0.1, num_examples=6)
    saga.step(torch.tensor([0, 1]), problem.losses)
    for p in problem.params:
        assert saga.state[p]["table"].shape == (6, *p.shape)
        assert saga.state[p]["table_mean"].shape == p.shape
    svrg = SVRG(problem.params, lr=0.1, num_examples=6)
    svrg.step(torch.tensor([0, 1]), problem.losses)
    for p in problem.params:
        assert set(svrg.state[p]) == {"step", "next_snapshot", "snapshot", "snapshot_grad"}
        assert svrg.state[p]["snapshot"].shape == svrg.state[p]["snapshot_grad"].shape == p.shape
    lin = logistic(N=6, D=3)
    glm = SAGA(lin.params, lr=0.1, num_examples=6, features=lin.X)
    glm.step(torch.tensor([2]), lin.losses)
    w, c = lin.params
    assert glm.state[w]["table"].shape == (6,)
    assert set(glm.state[c]) == {"table_mean"}


def test_old_checkpoint_without_an_option_gets_its_default() -> None:
    problem = logistic(N=10, D=3)
    for opt in (SAGA(problem.params, lr=0.1, num_examples=10),
                SVRG(problem.params, lr=0.1, num_examples=10, snapshot_every=3)):
        opt.step(torch.tensor([1]), problem.losses)
        sd = opt.state_dict()
        for key in ("weight_decay", "snapshot_every", "chunk_size"):
            sd["param_groups"][0].pop(key, None)
        fresh = type(opt)(problem.params, lr=0.1, num_examples=10)
        fresh.load_state_dict(sd)
        group = fresh.param_groups[0]
        assert group["weight_decay"] == 0.0
        if isinstance(opt, SVRG):
            assert group["snapshot_every"] is None and group["chunk_size"] == 1024
        fresh.step(torch.tensor([2]), problem.losses)


def test_loading_a_glm_state_into_a_dense_optimiser_raises() -> None:
    problem = logistic(N=10, D=3)
    glm = SAGA(problem.params, lr=0.1, num_examples=10, features=problem.X)
    glm.step(torch.tensor([1]), problem.losses)
    dense = SAGA(problem.params, lr=0.1, num_examples=10)
    dense.load_state_dict(glm.state_dict())
    with pytest.raises(ValueError, match=r"SAGA: the state's table has shape \(10,\), expected"):
        dense.step(torch.tensor([1]), problem.losses)
    glm2 = SAGA(problem.params, lr=0.1, num_examples=10, features=problem.X)
    dense = SAGA(problem.params, lr=0.1, num_examples=10)
    dense.step(torch.tensor([1]), problem.losses)
    glm2.load_state_dict(dense.state_dict())
    with pytest.raises(ValueError, match=r"SAGA: the state's table has shape \(10, 3\), expected \(10,\)"):
        glm2.step(torch.tensor([1]), problem.losses)


def test_deepcopy_keeps_the_glm_features() -> None:
    problem = logistic(N=10, D=3)
    opt = SAGA(problem.params, lr=0.1, num_examples=10, features=problem.X)
    opt.step(torch.tensor([1]), problem.losses)
    twin = copy.deepcopy(opt)
    assert torch.equal(twin.features, problem.X)
    assert twin.state_dict()["state"][0]["table"].shape == (10,)
