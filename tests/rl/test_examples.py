"""Smoke runs of the RL examples (a handful of steps each) and of benchmarks/rl_gae.py (tiny sizes).

The examples run in this process through runpy, inside ``torch.random.fork_rng`` and with torch's
thread count restored, so they change nothing for other tests. Whether they *learn* is checked by
running them in full (see the README); here they must run end to end and write their curve.
"""

from __future__ import annotations

import importlib.util
import runpy
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _run(script: str, argv: list[str], capsys) -> str:
    saved_argv, threads = sys.argv, torch.get_num_threads()
    sys.argv = [script, *argv]
    try:
        with torch.random.fork_rng():
            runpy.run_path(str(ROOT / "examples" / script), run_name="__main__")
    finally:
        sys.argv = saved_argv
        torch.set_num_threads(threads)
    return capsys.readouterr().out


def _plot_args(tmp_path: Path, name: str) -> list[str]:
    if importlib.util.find_spec("matplotlib") is None:
        return ["--no-plot"]
    return ["--plot", str(tmp_path / name)]


@pytest.mark.parametrize("script,argv", [
    ("cartpole_actor_critic.py", ["--steps", "512", "--envs", "2", "--rollout", "64"]),
    ("cartpole_reinforce.py", ["--episodes", "4", "--envs", "2"]),
])
def test_cartpole_examples_run(script, argv, tmp_path, capsys):
    pytest.importorskip("gymnasium")
    plot = _plot_args(tmp_path, "curve.png")
    out = _run(script, argv + plot, capsys)
    assert "not solved" in out or "solved" in out
    if plot[0] == "--plot":
        assert (tmp_path / "curve.png").stat().st_size > 0


def test_model_based_example_runs(tmp_path, capsys):
    plot = _plot_args(tmp_path, "pendulum.png")
    out = _run("model_based_pendulum.py",
               ["--iterations", "3", "--replicates", "4", "--batch", "4", "--horizon", "10"] + plot, capsys)
    assert "trace of covariance" in out and "REINFORCE" in out
    if plot[0] == "--plot":
        assert (tmp_path / "pendulum.png").stat().st_size > 0


def _benchmark():
    spec = importlib.util.spec_from_file_location("rl_gae", ROOT / "benchmarks" / "rl_gae.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("peers", [
    pytest.param(False, id="gradest-and-cleanrl"),
    pytest.param(True, id="every-installed-peer", marks=pytest.mark.slow),  # torchrl and SB3 import slowly
])
def test_benchmark_runs_and_checks_accuracy(peers):
    bench = _benchmark()
    names, skipped = bench.available(list(bench.IMPLS) if peers else ["gradest", "cleanrl"], log=lambda s: None)
    assert "gradest" in names and "cleanrl" in names
    threads = torch.get_num_threads()
    try:
        result = bench.run_size(names, 40, 3, 0, rounds=2, budget_s=0.0, log=lambda s: None)
    finally:
        torch.set_num_threads(threads)
    for name, r in result["impls"].items():
        assert r["median_ms"] > 0
        if bench.HANDLES_DONES[name] and name != "torchrl-vec":
            assert r["correct"], (name, r["max_abs_error"])
    table = bench.table({"sizes": [result]})
    assert "gradest" in table and "memory floor" in table


def test_benchmark_reference_is_the_float64_loop():
    bench = _benchmark()
    d = bench.Data(30, 2, 0)
    from . import references as ref

    want = ref.gae(d.reward, d.value, d.next_value, d.done, None, bench.GAMMA, bench.LAMBDA)
    torch.testing.assert_close(bench.reference(d), want, rtol=1e-12, atol=1e-12)


def test_sequence_rl_example_runs(tmp_path, capsys):
    plot = _plot_args(tmp_path, "sequence_rl.png")
    out = _run("sequence_rl.py", ["--steps", "3", "--pretrain-steps", "5", "--eval-every", "1", "--prompts", "2",
                                  "--group", "2", "--kls", "none,k1-reward,k3-loss", "--advantages", "rloo,grpo"]
               + plot, capsys)
    assert "optimum of J_β" in out
    for kl in ("none", "k1-reward", "k3-loss"):
        assert f"grpo      {kl}" in out
    if plot[0] == "--plot":
        assert (tmp_path / "sequence_rl.png").stat().st_size > 0


def _sequence_benchmark():
    spec = importlib.util.spec_from_file_location("sequence_loss", ROOT / "benchmarks" / "sequence_loss.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sequence_benchmark_hand_written_losses_equal_gradest_and_it_runs():
    bench = _sequence_benchmark()
    d = bench.Data(prompts=4, group=4, length=16, min_length=2)
    for name in bench.CONFIGS:  # every documented configuration: the same loss value and gradient
        loss_diff, grad_diff = bench.check(d, name)
        assert loss_diff < 1e-5 and grad_diff < 1e-6, (name, loss_diff, grad_diff)
    threads = torch.get_num_threads()
    try:
        result = bench.run(d, list(bench.CONFIGS)[:2], rounds=2, log=lambda s: None)
    finally:
        torch.set_num_threads(threads)
    assert set(result) == set(list(bench.CONFIGS)[:2])
    assert "hand-written" in bench.table(result)


# --- off-policy and offline examples (issue 14) -----------------------------------------------------


def test_offline_example_runs(tmp_path, capsys):
    pytest.importorskip("gymnasium")
    plot = _plot_args(tmp_path, "offline.png")
    out = _run("offline_cartpole.py", ["--episodes", "64", "--truth-episodes", "64", "--fqe-iterations", "3",
                                       "--steps", "4", "--refit-every", "2", "--check-every", "2",
                                       "--eval-episodes", "16"] + plot, capsys)
    for method in ("is", "pdis", "wis", "wpdis", "dr", "wdr"):
        assert f"\n  {method} " in out
    assert "the behaviour policy by the stated margin" in out
    if plot[0] == "--plot":
        assert (tmp_path / "offline.png").stat().st_size > 0


@pytest.mark.slow  # about a minute: fewer logged episodes and steps than the defaults
def test_offline_example_learns_a_policy_that_beats_the_behaviour_policy(tmp_path, capsys):
    pytest.importorskip("gymnasium")
    out = _run("offline_cartpole.py", ["--episodes", "500", "--truth-episodes", "500", "--steps", "150",
                                       "--eval-episodes", "200", "--no-plot"], capsys)
    assert "the learned policy beats the behaviour policy by the stated margin" in out, out


@pytest.mark.parametrize("correction", [[], ["--no-correction"]])
def test_impala_example_runs(tmp_path, capsys, correction):
    pytest.importorskip("gymnasium")
    plot = _plot_args(tmp_path, "impala.png")
    out = _run("impala_cartpole.py", ["--steps", "2048", "--actors", "2", "--envs", "2", "--rollout", "16",
                                      "--lag", "2"] + correction + plot, capsys)
    assert ("V-trace off" in out) == bool(correction)
    assert "not solved within" in out and "mean policy lag" in out
    if plot[0] == "--plot":
        assert (tmp_path / "impala.png").stat().st_size > 0


def test_offline_benchmark_runs_and_every_port_is_correct():
    spec = importlib.util.spec_from_file_location("rl_offline", ROOT / "benchmarks" / "rl_offline.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    try:
        results = [bench.run_size(task, list(bench.IMPLS[task]), 40, 3, 0, rounds=2, budget_s=0.0, log=lambda s: None)
                   for task in bench.TASKS]
    finally:
        torch.set_num_threads(threads)
    for r in results:
        for name, x in r["impls"].items():
            assert x["correct"] and x["median_ms"] > 0, (r["task"], name, x["max_abs_error"])
    assert "gradest" in bench.table(results)


def test_offline_benchmark_reference_is_the_tested_loop():
    """The benchmark's float64 loops are the definitions the tests use (terminated episodes only)."""
    spec = importlib.util.spec_from_file_location("rl_offline", ROOT / "benchmarks" / "rl_offline.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    from . import references as ref

    d = bench.Data(30, 2, 1)
    torch.testing.assert_close(bench.retrace_loop64(d), ref.retrace(d.q, d.next_value, d.reward, d.log_rhos, d.done,
                                                                    None, bench.GAMMA, bench.LAMBDA))
    torch.testing.assert_close(bench.n_step_loop64(d, 5), ref.n_step_returns(d.reward, d.next_value, d.done, None,
                                                                             bench.GAMMA, 5))
