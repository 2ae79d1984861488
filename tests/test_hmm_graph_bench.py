"""Smoke tests of benchmarks/hmm_task4.py (task 4) and benchmarks/graph_task5.py (task 5).

Timings are never asserted. What is asserted: every implementation of task 4 computes the same −log p(y)
and gradients as float64 autograd through the forward algorithm; the interleaved runner, the skip rule,
the tables and the profile run; the gradest implementations of task 5, and the hand-written one that
samples through the same distribution, give the same gradient from the same random state. Pyro and the
memory subprocesses run in a subprocess, slow-marked.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hmm = _load("hmm_task4")
task5 = _load("graph_task5")
LOCAL = [n for n in hmm.IMPLS if n not in hmm.PEERS]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_task_is_as_specified():
    init, trans, locs = hmm.parameters()
    torch.manual_seed(0)
    assert torch.equal(init, torch.randn(3)) and torch.equal(trans, torch.randn(3, 3))
    assert torch.equal(locs, torch.randn(3)) and init.dtype == torch.float32 and init.requires_grad
    assert torch.equal(hmm.observations(5), torch.randn(5, generator=torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("length", [1, 2, 37])
@pytest.mark.parametrize("name", LOCAL)
def test_every_local_implementation_is_the_exact_marginal_likelihood(name, length):
    params, y = hmm.parameters(), hmm.observations(length)
    _, _, loss = hmm.call(hmm.IMPLS[name], params, y)
    err = hmm.errors(loss, params, hmm.exact(length))
    assert err["loss_rel"] < 1e-6, err
    assert max(v for k, v in err.items() if k.startswith("grad")) < 1e-4, err


def test_the_float64_reference_is_the_sum_over_all_paths():
    """The reference itself: the forward algorithm equals brute-force enumeration of the 3^5 paths."""
    import itertools

    init, trans, locs = hmm.parameters(torch.float64)
    y = hmm.observations(5, torch.float64)
    log_a, log_pi = trans.log_softmax(-1), init.log_softmax(-1)
    terms = []
    for path in itertools.product(range(3), repeat=5):
        lp = log_pi[path[0]] + sum(log_a[a, b] for a, b in zip(path, path[1:]))
        terms.append(lp + torch.distributions.Normal(locs[list(path)], 1.0).log_prob(y).sum())
    want = -torch.logsumexp(torch.stack(terms), 0)
    torch.testing.assert_close(torch.tensor(hmm.exact(5)[0], dtype=torch.float64), want.detach())


def test_measure_interleaves_skips_and_tabulates():
    logs: list[str] = []
    result = hmm.measure(LOCAL, [20, 40], budget_s=60.0, max_call_s=60.0, rounds={20: 2, 40: 1}, log=logs.append)
    assert set(result) == {"20", "40"}
    for length, rounds in (("20", 2), ("40", 1)):
        for name in LOCAL:
            r = result[length]["impls"][name]
            assert r["rounds"] == rounds and len(r["times_s"]) == rounds and r["ratio"] > 0
    assert result["20"]["impls"]["forward"]["ratio"] == 1.0
    # a limit below every call's time: everything but the first length is skipped, with the reason
    skipped = hmm.measure(["forward", "graph"], [20, 40, 80], budget_s=1.0, max_call_s=1e-9, rounds={}, log=logs.append)
    assert all("skipped" in r for r in skipped["40"]["impls"].values())
    assert "skipped at a shorter T" in skipped["80"]["impls"]["graph"]["skipped"]
    text = hmm.table({"timings": skipped})
    assert "| 40 | graph | skipped: one call predicted" in text and "| 20 | graph |" in text


def test_profile_runs_and_accounts_for_the_time():
    out = hmm.profile(length=20, repeats=1, log=lambda s: None)
    assert set(out["phases_s"]) == {"forward", "user objects alone", "graph", "graph-untracked"}
    assert sum(out["cprofile_areas_s"].values()) == pytest.approx(out["cprofile_total_s"], rel=1e-6)
    assert "gradest: elimination (graph/marginal.py, eliminate.py)" in out["cprofile_areas_s"]


@pytest.mark.slow
def test_pyro_is_exact_and_memory_is_measured_in_subprocesses(tmp_path):
    pytest.importorskip("pyro")
    out = tmp_path / "hmm.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "hmm_task4.py"), "--quick", "--memory", "--lengths",
                    "50", "--impls", "forward,pyro", "--json", str(out)], check=True, env=env, capture_output=True,
                   timeout=600)
    result = json.loads(out.read_text())
    pyro = result["timings"]["50"]["impls"]["pyro"]
    assert pyro["loss_rel"] < 1e-6 and max(v for k, v in pyro.items() if k.startswith("grad_")) < 1e-4
    assert all(result["memory"]["50"][n]["peak_mib"] >= 0 for n in ("forward", "pyro"))


def test_task5_gradest_implementations_agree_and_run():
    model, x = task5.make_model(), task5.make_batch()
    grads = {}
    for name in ("rloo-dist", "expectation", "graph", "graph-untracked"):
        model.zero_grad(set_to_none=True)
        with torch.random.fork_rng():
            torch.manual_seed(3)
            task5.IMPLS[name](model, x)
        grads[name] = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert grads["expectation"].abs().max() > 0
    torch.testing.assert_close(grads["rloo-dist"], grads["expectation"], rtol=1e-5, atol=1e-6)  # same samples
    torch.testing.assert_close(grads["graph"], grads["expectation"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads["graph-untracked"], grads["expectation"], rtol=1e-5, atol=1e-6)
    with torch.random.fork_rng():
        result = task5.run(list(task5.IMPLS), steps=2, warmup=1)
    assert result["rloo"]["ratio"] == 1.0 and all(r["median_ms"] > 0 for r in result.values())
    assert "| graph-untracked |" in task5.table(result)
    with torch.random.fork_rng():
        phases = task5.phases(steps=2, warmup=1)
    assert set(phases) == {"graph", "graph-untracked"} and all(v >= 0 for p in phases.values() for v in p.values())
