"""Smoke tests of benchmarks/binary_vae.py on tiny random data (no MNIST files, no peer estimators).

Timings are never asserted (benchmarks/ measures them). Storchastic is left out: importing it patches
torch for the whole process, which other tests must not see.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "binary_vae.py"
BASE = ["reinforce", "rloo", "arm", "disarm", "gumbel", "unordered"]  # the estimators that need no peer module


def _load():
    spec = importlib.util.spec_from_file_location("binary_vae", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bv = _load()
PEERS = [e for e in ("rebar", "rebar-learn", "relax") if e in bv.estimator_status()[0]]  # tested when present


@pytest.fixture(autouse=True)
def isolated_torch_settings():
    """One thread, as the benchmark runs; and torch's global settings restored afterwards."""
    threads = torch.get_num_threads()
    validate = torch.distributions.Distribution._validate_args
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.distributions.Distribution.set_default_validate_args(validate)


def _data(num_images: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(num_images, bv.PIXELS, generator=g) < 0.2).float()


@pytest.mark.parametrize("name", BASE + PEERS)
def test_hand_written_and_gradest_give_the_same_gradient_from_the_same_noise(name):
    """Each hand-written reference computes the same estimator: from the same RNG state, the same
    encoder gradient (the rules draw the same uniforms in the same order)."""
    train = _data(100)
    state = bv.initial_state(train.mean(0))
    x = train[: bv.BATCH]
    grads = []
    for cls in (bv.GradestImpl, bv.HandImpl):
        impl = cls(name, state)
        torch.manual_seed(3)
        impl.grad(x)
        grads.append(bv.encoder_grad(impl.model))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-4 * float(grads[1].abs().max()))


def test_run_measures_everything_on_tiny_data(tmp_path):
    train, test = _data(150), _data(60, seed=1)
    result = bv.run(
        train_data=train, test_data=test, steps=3, estimators=BASE, kinds=("gradest", "hand"), snapshots=(2,),
        variance_estimates=20, eval_train_images=100, eval_samples=2, bound_samples=3, log=lambda s: None,
    )
    labels = [f"{k}-{e}" for e in BASE for k in ("gradest", "hand")]
    assert set(result["timing"]) == set(labels)
    assert set(result["variance"]["2"]) == set(labels)
    assert all(v["trace"] > 0 and v["estimates"] == 20 for v in result["variance"]["2"].values())
    assert set(result["quality"]) == {f"gradest-{e}" for e in BASE}
    for q in result["quality"].values():
        assert q["test_bound"] >= q["test"] - 50  # finite numbers of the right magnitude
    assert all(t.get("paired_ratio", 1.0) > 0 for t in result["timing"].values())
    text = bv.tables(result)
    assert "(a)" in text and "(b)" in text and "(c)" in text
    json.dumps(result)  # JSON-ready
    bv.plot(result, str(tmp_path / "fig.png"))
    assert (tmp_path / "fig.png").stat().st_size > 1000


def test_main_end_to_end_on_fake_files(tmp_path):
    for split, n in (("train", 120), ("test", 40)):
        bits = (np.random.default_rng(0).random((n, 784)) < 0.2).astype(np.uint8)
        np.save(tmp_path / f"binarized_mnist_{split}.packbits.npy", np.packbits(bits, axis=1))
    out = tmp_path / "r.json"
    code = bv.main([
        "--data", str(tmp_path), "--steps", "2", "--variance-estimates", "20", "--kinds", "gradest,hand",
        "--estimators", "arm,disarm", "--json", str(out), "--figure", str(tmp_path / "f.png"),
    ])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["config"]["estimators"] == ["arm", "disarm"] and (tmp_path / "f.png").exists()


def test_missing_data_names_the_path_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="binarized_mnist_train.packbits.npy is missing; pass --data"):
        bv.load_binarized_mnist(tmp_path)


def test_peer_estimators_are_reported_when_missing():
    ok, missing = bv.estimator_status()
    assert set(BASE) <= set(ok)
    assert set(ok) | set(missing) == set(bv.ESTIMATORS)
