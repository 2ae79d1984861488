"""Smoke tests of benchmarks/vae_task1.py: its pieces run, on a tiny synthetic data set (no scikit-learn).

Timings are never asserted (benchmarks/ measures them). Peers (Pyro, Storchastic) run in a subprocess
when installed: importing Storchastic patches torch for the whole process, which other tests must not see.
"""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "vae_task1.py"


def _load():
    spec = importlib.util.spec_from_file_location("vae_task1", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


vb = _load()
LOCAL = [n for n in vb.IMPLS if n not in vb.PEERS]


@pytest.fixture(autouse=True)
def one_thread():
    """As the benchmark runs (tiny matrices; several threads on a busy 2-core machine are far slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _data(num_images: int = 230) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return (torch.rand(num_images, 64, generator=g) < 0.3).float()


def test_batches_are_fresh_permutations_with_the_remainder_dropped():
    batches = vb.batch_indices(1797, 20)
    assert len(batches) == 20 and all(b.shape == (100,) for b in batches)
    epoch = torch.cat(batches[:17])
    assert epoch.unique().numel() == 1700  # 17 disjoint batches, 97 images dropped
    assert not torch.equal(batches[0], batches[17])  # a new permutation in the next epoch
    assert all(torch.equal(a, b) for a, b in zip(batches, vb.batch_indices(1797, 20)))


def test_kl_uniform_is_the_exact_kl():
    logits = torch.randn(3, vb.LATENTS, vb.CATEGORIES)
    q = torch.distributions.Categorical(logits=logits)
    p = torch.distributions.Categorical(logits=torch.zeros_like(logits))
    exact = torch.distributions.kl_divergence(q, p).sum(-1)
    torch.testing.assert_close(vb.kl_uniform(logits.log_softmax(-1)), exact)


def test_local_implementations_train_evaluate_and_measure_variance():
    data = _data()
    rng = torch.get_rng_state()
    runners, quality, ref = vb.train(LOCAL, data, 3, eval_at=(3,), variance_at=2, eval_samples=5, log=lambda s: None)
    assert torch.equal(torch.get_rng_state(), rng)  # each implementation's stream is its own
    assert ref is not None and set(ref) == set(vb.initial_state())
    for name in LOCAL:
        assert len(runners[name].times) == 3
        assert math.isfinite(quality[name][3]) and quality[name][3] < 0
    trace, mean = vb.gradient_variance("gradest", ref, data[:100], 3, 0, [])
    assert trace > 0 and mean.shape == (256 * 200 + 200,)


def test_gradest_matches_the_hand_written_estimator_draw_for_draw():
    state, x = vb.initial_state(), _data()[:100]
    grads = {}
    for name in ("rloo-dist", "gradest", "gradest-noval"):
        impl = vb.CLASSES[name](state)
        vb.Runner(impl, seed=7).call(impl.grad, x)
        grads[name] = vb.encoder_last_layer_grad(impl.model)
    torch.testing.assert_close(grads["gradest"], grads["rloo-dist"], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grads["gradest-noval"], grads["gradest"], rtol=0, atol=0)


def test_peers_run_when_installed():
    peers = [n for n in ("pyro", "storch") if vb.available(n)]  # pyro-nobaseline shares pyro's code
    if not peers:
        pytest.skip("no peer installed (pip install -c constraints.txt -e '.[bench]')")
    code = textwrap.dedent(
        f"""
        import importlib.util, math, torch
        torch.set_num_threads(1)
        spec = importlib.util.spec_from_file_location("vae_task1", {str(SCRIPT)!r})
        vb = importlib.util.module_from_spec(spec); spec.loader.exec_module(vb)
        torch.distributions.Distribution.set_default_validate_args(False)
        x = (torch.rand(230, 64, generator=torch.Generator().manual_seed(0)) < 0.3).float()
        names = ["rloo"] + {peers!r}
        runners, quality, ref = vb.train(names, x, 2, eval_at=(2,), variance_at=2, eval_samples=5, log=print)
        for n in names:
            assert math.isfinite(quality[n][2]), n
            trace, _ = vb.gradient_variance(n, ref, x[:100], 2, 0, [x[:100], x[100:200]])
            assert math.isfinite(trace) and trace > 0, n
        print("ok")
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stdout + out.stderr
