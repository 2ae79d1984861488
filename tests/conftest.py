"""Test-session settings: one torch thread (CI and dev machines have 2 shared cores; worker threads
fighting over them triple wall time without making anything more correct), and every test starts from
the same torch RNG state, so that a test that draws without seeding is still deterministic, whichever
tests ran before it."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fixed_torch_seed() -> None:
    torch.manual_seed(0)
