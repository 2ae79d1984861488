"""Importing gradest changes nothing global in torch: no monkey-patching, no seeding, no flags.

The import runs in a fresh interpreter (``python -c``), which snapshots torch's global state before
and after ``import gradest`` (and its public subpackages) and prints both as JSON. Each item is then
compared in its own test, so a failure names what changed.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import warnings

import pytest

import gradest

SNAPSHOT = r"""
import hashlib, json, random, sys, warnings
import torch
import torch.distributions as D

def digest(t):
    return hashlib.sha256(t.numpy().tobytes()).hexdigest()

def ids(namespace):
    return {k: id(v) for k, v in vars(namespace).items()}

def snapshot():
    classes = [getattr(D, name) for name in D.__all__ if isinstance(getattr(D, name), type)]
    return {
        "Distribution._validate_args": D.Distribution._validate_args,
        "torch.is_tensor": id(torch.is_tensor),
        "rng_state": digest(torch.random.get_rng_state()),
        "initial_seed": torch.initial_seed(),
        "python_random_state": hashlib.sha256(repr(random.getstate()).encode()).hexdigest(),
        "default_dtype": str(torch.get_default_dtype()),
        "default_device": str(torch.get_default_device()),
        "grad_enabled": torch.is_grad_enabled(),
        "inference_mode": torch.is_inference_mode_enabled(),
        "anomaly_enabled": torch.is_anomaly_enabled(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "num_threads": torch.get_num_threads(),
        "num_interop_threads": torch.get_num_interop_threads(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "printoptions": repr(torch._tensor_str.PRINT_OPTS.__dict__),
        "warnings_filters": repr(warnings.filters),
        "torch_namespace": ids(torch),
        "Tensor_attributes": ids(torch.Tensor),
        "distribution_classes": {c.__name__: ids(c) for c in classes},
        "kl_registry": sorted(f"{p.__name__},{q.__name__}" for p, q in D.kl._KL_REGISTRY),
        "biject_to_registry": sorted(c.__name__ for c in D.biject_to._registry),
        "transform_to_registry": sorted(c.__name__ for c in D.transform_to._registry),
    }

before = snapshot()
dynamo_before = "torch._dynamo" in sys.modules
import gradest, gradest.estimators, gradest.testing, gradest.problems, gradest.rl, gradest.optim  # noqa: E401
after = snapshot()
# Names that were already there must still be bound to the same objects; importing may only add
# submodules (torch loads some lazily), never rebind.
for key in ("torch_namespace", "Tensor_attributes"):
    after[key] = {k: after[key].get(k) for k in before[key]}
loaded = {"torch._dynamo": not dynamo_before and "torch._dynamo" in sys.modules}
# The harness must have power: changes made on purpose now must show.
torch.manual_seed(1); torch.set_default_dtype(torch.float64); D.Bernoulli.has_rsample = True  # noqa: E702
tampered = snapshot()
print(json.dumps({"before": before, "after": after, "loaded": loaded, "tampered": tampered}))
"""


@pytest.fixture(scope="module")
def snapshots() -> dict[str, dict[str, object]]:
    out = subprocess.run(
        [sys.executable, "-c", SNAPSHOT], capture_output=True, text=True, check=False, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


ITEMS = [
    "Distribution._validate_args",
    "torch.is_tensor",
    "rng_state",
    "initial_seed",
    "python_random_state",
    "default_dtype",
    "default_device",
    "grad_enabled",
    "inference_mode",
    "anomaly_enabled",
    "deterministic_algorithms",
    "num_threads",
    "num_interop_threads",
    "float32_matmul_precision",
    "printoptions",
    "warnings_filters",
    "torch_namespace",
    "Tensor_attributes",
    "distribution_classes",
    "kl_registry",
    "biject_to_registry",
    "transform_to_registry",
]


def test_import_does_not_load_torch_dynamo(snapshots: dict[str, dict[str, object]]) -> None:
    # Loading torch._dynamo rebinds torch.manual_seed and adds a warnings filter; gradest must not.
    assert not snapshots["loaded"]["torch._dynamo"]


@pytest.mark.parametrize("item", ITEMS)
def test_import_changes_nothing(snapshots: dict[str, dict[str, object]], item: str) -> None:
    before, after = snapshots["before"][item], snapshots["after"][item]
    if isinstance(before, dict):
        changed = sorted(k for k in before if before[k] != after.get(k))
        assert not changed, f"import gradest changed {item}: {changed[:20]}"
    assert before == after


def test_snapshot_sees_a_change(snapshots: dict[str, dict[str, object]]) -> None:
    """The harness has power: seeding, a new default dtype and a patched class attribute are caught."""
    after, tampered = snapshots["after"], snapshots["tampered"]
    assert after["rng_state"] != tampered["rng_state"]
    assert after["default_dtype"] != tampered["default_dtype"]
    assert after["distribution_classes"]["Bernoulli"] != tampered["distribution_classes"]["Bernoulli"]


def test_sources_compile_without_warnings() -> None:
    """No invalid escape sequences or other compile-time warnings (errors on newer Pythons)."""
    root = pathlib.Path(gradest.__file__).parent
    for path in sorted(root.rglob("*.py")):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            compile(path.read_text(encoding="utf-8"), str(path), "exec")


def test_validation_switch_is_gradest_own() -> None:
    """gradest's validation switch does not touch torch.distributions' default."""
    import torch

    before = torch.distributions.Distribution._validate_args
    try:
        gradest.set_validation(not gradest.is_validation_enabled())
        assert torch.distributions.Distribution._validate_args == before
    finally:
        gradest.set_validation(__debug__)
