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


def _stepped(opt: torch.optim.Optimizer, problem: Problem) -> dict:
    opt.step(torch.tensor([1, 2]), problem.losses)
    return _round_trip(opt.state_dict())


def _rank_shard(state_dict: dict) -> dict:
    """The checkpoint rank 0 of 2 would save: rows 0, 2, 4, ... of the table."""
    for state in state_dict["state"].values():
        if "table" in state:
            state["table"] = state["table"][0::2].clone()
    return state_dict


def _mismatches() -> list:
    small, wide = logistic(N=10, D=3), logistic(N=10, D=4)
    other_n, frozen = logistic(N=12, D=3), logistic(N=10, D=3)
    frozen.params[1].requires_grad_(False)
    return [
        ("SAGA, another num_examples",
         lambda: _stepped(SAGA(small.params, lr=0.1, num_examples=10), small),
         lambda: SAGA(other_n.params, lr=0.1, num_examples=12),
         r"SAGA.load_state_dict: the checkpoint has num_examples=10, this optimiser num_examples=12; .*"
         r"build the optimiser with num_examples=10"),
        ("SVRG, another num_examples",
         lambda: _stepped(SVRG(small.params, lr=0.1, num_examples=10), small),
         lambda: SVRG(other_n.params, lr=0.1, num_examples=12),
         r"SVRG.load_state_dict: the checkpoint has num_examples=10, this optimiser num_examples=12"),
        ("SAGA, GLM table into the dense one",
         lambda: _stepped(SAGA(small.params, lr=0.1, num_examples=10, features=small.X), small),
         lambda: SAGA(small.params, lr=0.1, num_examples=10),
         r"parameter 0 \(shape \(3,\)\) is \{'table': \(10,\), 'table_mean': \(3,\)\}, expected .* for the "
         r"dense table; it holds the GLM table: build SAGA with features="),
        ("SAGA, dense table into the GLM one",
         lambda: _stepped(SAGA(small.params, lr=0.1, num_examples=10), small),
         lambda: SAGA(small.params, lr=0.1, num_examples=10, features=small.X),
         r"\{'table': \(10, 3\), 'table_mean': \(3,\)\}, expected .* for the GLM table \(features=...\); it "
         r"holds the dense table: build SAGA without features=..."),
        ("SAGA, another parameter shape",
         lambda: _stepped(SAGA(small.params, lr=0.1, num_examples=10), small),
         lambda: SAGA(wide.params, lr=0.1, num_examples=10),
         r"parameter 0 \(shape \(4,\)\) .* another shape there: the checkpoint is for another model"),
        ("SVRG, another parameter shape",
         lambda: _stepped(SVRG(small.params, lr=0.1, num_examples=10), small),
         lambda: SVRG(wide.params, lr=0.1, num_examples=10),
         r"parameter 0 \(shape \(4,\)\) .* another shape there: the checkpoint is for another model"),
        ("SAGA, another rank's shard",
         lambda: _rank_shard(_stepped(SAGA(small.params, lr=0.1, num_examples=10), small)),
         lambda: SAGA(small.params, lr=0.1, num_examples=10),
         r"it holds 5 rows and this rank 10 \(rank 0 of 1 .*\): it was saved on another rank or with another "
         r"number of ranks"),
        ("SVRG state into SAGA",
         lambda: _stepped(SVRG(small.params, lr=0.1, num_examples=10), small),
         lambda: SAGA(small.params, lr=0.1, num_examples=10),
         r"SAGA.load_state_dict: .* it was saved by SVRG: load a SAGA checkpoint"),
        ("SAGA state into SVRG",
         lambda: _stepped(SAGA(small.params, lr=0.1, num_examples=10), small),
         lambda: SVRG(small.params, lr=0.1, num_examples=10),
         r"SVRG.load_state_dict: .* it was saved by SAGA: load an SVRG checkpoint"),
        ("SAGA, a parameter frozen here",
         lambda: _stepped(SAGA(small.params, lr=0.1, num_examples=10), small),
         lambda: SAGA(frozen.params, lr=0.1, num_examples=10),
         r"parameter 1 \(shape \(\)\) .* the parameter has requires_grad=False here"),
        ("SVRG, a parameter frozen here",
         lambda: _stepped(SVRG(small.params, lr=0.1, num_examples=10), small),
         lambda: SVRG(frozen.params, lr=0.1, num_examples=10),
         r"parameter 1 \(shape \(\)\) .* the parameter has requires_grad=False here"),
        ("SAGA, other param groups",
         lambda: _stepped(SAGA(small.groups(weight_decay=0.1), lr=0.1, num_examples=10), small),
         lambda: SAGA(small.params, lr=0.1, num_examples=10),
         r"SAGA.load_state_dict: the checkpoint has 2 param group\(s\), this optimiser 1; build the optimiser "
         r"with the param groups"),
        ("SVRG, another group size",
         lambda: _stepped(SVRG([small.params[0]], lr=0.1, num_examples=10), small),
         lambda: SVRG([small.params[1]] + [torch.zeros(2, requires_grad=True)], lr=0.1, num_examples=10),
         r"SVRG.load_state_dict: param group 0 holds 1 parameter\(s\) in the checkpoint and 2 here"),
    ]


@pytest.mark.parametrize("case", _mismatches(), ids=lambda c: c[0])
def test_a_checkpoint_of_another_configuration_is_refused_and_nothing_loads(case) -> None:  # noqa: ANN001
    _, save, make, match = case
    state_dict = save()
    opt = make()
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(state_dict)
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"]
    assert after["state"].keys() == before["state"].keys()


def test_a_checkpoint_of_another_configuration_is_refused_before_the_first_step() -> None:
    problem = logistic(N=10, D=3)
    fresh = SAGA(problem.params, lr=0.1, num_examples=10).state_dict()  # no state yet: num_examples decides
    SAGA(problem.params, lr=0.1, num_examples=10).load_state_dict(fresh)
    with pytest.raises(ValueError, match="the checkpoint has num_examples=10, this optimiser num_examples=11"):
        SAGA(problem.params, lr=0.1, num_examples=11).load_state_dict(fresh)


@pytest.mark.parametrize("bad", [None, [1, 2], {"state": {}}])
def test_a_checkpoint_that_is_not_a_state_dict_is_refused(bad) -> None:  # noqa: ANN001
    problem = logistic(N=10, D=3)
    for opt in (SAGA(problem.params, lr=0.1, num_examples=10), SVRG(problem.params, lr=0.1, num_examples=10)):
        with pytest.raises(TypeError, match=r"load_state_dict: state_dict=\w+ is not an optimiser state_dict"):
            opt.load_state_dict(bad)


def test_deepcopy_keeps_the_glm_features() -> None:
    problem = logistic(N=10, D=3)
    opt = SAGA(problem.params, lr=0.1, num_examples=10, features=problem.X)
    opt.step(torch.tensor([1]), problem.losses)
    twin = copy.deepcopy(opt)
    assert torch.equal(twin.features, problem.X)
    assert twin.state_dict()["state"][0]["table"].shape == (10,)
