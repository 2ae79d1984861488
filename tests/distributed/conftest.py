"""One spawn of 2 gloo ranks (CPU) per test session, shared by every check in this folder."""

from __future__ import annotations

import os
import tempfile
import time

import pytest
import torch
import torch.multiprocessing as mp

from tests.distributed import _problems as P
from tests.distributed import _worker

TIMEOUT_S = 120


def spawn(checks: list[str]) -> list[dict]:
    """Run ``_worker.main`` on 2 ranks; return each rank's results."""
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    with tempfile.TemporaryDirectory() as directory:
        context = mp.spawn(_worker.main, args=(directory, checks), nprocs=P.WORLD, join=False)
        deadline = time.monotonic() + TIMEOUT_S
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                for process in context.processes:
                    if process.is_alive():
                        process.kill()
                pytest.fail(f"distributed worker timed out after {TIMEOUT_S}s (checks {checks})")
        results = []
        for rank in range(P.WORLD):
            path = os.path.join(directory, f"rank{rank}.pt")
            results.append(torch.load(path, weights_only=False))
    for rank, r in enumerate(results):
        errors = {k: v for k, v in r.items() if k.startswith("error:")}
        if errors:
            pytest.fail(f"rank {rank} failed:\n" + "\n".join(errors.values()))
    return results


@pytest.fixture(scope="session")
def ranks() -> list[dict]:
    return spawn(list(_worker.CHECKS))
