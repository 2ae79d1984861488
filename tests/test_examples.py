"""The examples in ``examples/`` run end to end with tiny settings and return finite numbers.

They are scripts, not a package, so each is loaded from its file; its ``main(argv)`` returns a dict
of the figures it printed. How well they learn with the default settings is in their docstrings.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("sklearn")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(autouse=True)
def _keep_global_rng():
    """The examples seed torch's global generator; give it back as it was."""
    with torch.random.fork_rng():
        yield


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_graph_categorical_vae(capsys, tmp_path):
    out = load("graph_categorical_vae").main(["--steps", "4", "--eval-every", "2", "--eval-samples", "2",
                                              "--plot", str(tmp_path / "vae.png")])
    assert (tmp_path / "vae.png").read_bytes()[:4] == b"\x89PNG"
    assert math.isfinite(out["elbo"]) and out["elbo"] < 0
    assert [step for step, _ in out["history"]] == [2, 4]
    assert "final: ELBO" in capsys.readouterr().out


@pytest.mark.parametrize("discrete", ["score", "enumerate"])
def test_graph_hierarchical(discrete, capsys, tmp_path):
    out = load("graph_hierarchical").main(["--discrete", discrete, "--steps", "4", "--points", "64", "--batch", "16",
                                           "--eval-every", "4", "--repeats", "3", "--plot", str(tmp_path / "h.png")])
    assert (tmp_path / "h.png").exists()
    assert all(math.isfinite(out[k]) for k in ("elbo", "log_px", "ari"))
    assert out["elbo"] <= out["log_px"] + 0.5  # a bound, up to the Monte Carlo error of 64 draws of y
    for head, total in out["variance"].values():
        assert math.isfinite(head) and math.isfinite(total) and total >= head >= 0
    assert "final:" in capsys.readouterr().out


@pytest.mark.parametrize("baseline", ["critic", "average", "none"])
def test_graph_hard_attention_critic(baseline, capsys, tmp_path):
    out = load("graph_hard_attention_critic").main(["--baseline", baseline, "--steps", "4", "--batch", "8",
                                                    "--eval-every", "2", "--plot", str(tmp_path / "a.png")])
    assert (tmp_path / "a.png").exists()
    assert 0.0 <= out["accuracy"] <= 1.0
    assert [step for step, _ in out["history"]] == [2, 4]
    assert "final: baseline" in capsys.readouterr().out


def test_hmm_example_fits_decodes_and_agrees_with_its_forward_pass(tmp_path, capsys):
    """examples/hmm.py on the first 100 returns, 3 Adam steps: the log-likelihood rises, the graph's value
    equals the example's own forward pass, Viterbi labels every day, the figure is written."""
    pytest.importorskip("matplotlib")
    import re
    import runpy
    import sys

    plot = tmp_path / "hmm.png"
    saved_argv, threads = sys.argv, torch.get_num_threads()
    sys.argv = ["hmm.py", "--steps", "3", "--length", "100", "--plot", str(plot)]
    try:
        runpy.run_path(str(EXAMPLES / "hmm.py"), run_name="__main__")
    finally:
        sys.argv = saved_argv
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    before, after = map(float, re.search(r"log-likelihood (\S+) -> (\S+) nats per day", out).groups())
    assert after > before
    forward, graph = map(float, re.search(r"forward pass gives (\S+) nats per day, the graph (\S+)", out).groups())
    assert forward == pytest.approx(graph, abs=2e-4)
    days = [int(d) for d in re.findall(r"(\d+) days on the Viterbi path", out)]
    assert len(days) == 2 and sum(days) == 100
    assert plot.stat().st_size > 0
