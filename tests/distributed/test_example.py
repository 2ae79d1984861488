"""``examples/ddp_categorical_vae.py``: one process in the default run; 2 processes via torchrun (slow)."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("sklearn")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ddp_categorical_vae.py"
_TEARDOWN_ABORT = "terminate called without an active exception"


def test_single_process(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("example_ddp_categorical_vae", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with torch.random.fork_rng():
        out = module.main(["--steps", "4", "--eval-every", "2", "--eval-samples", "2", "--baseline", "average",
                           "--plot", str(tmp_path / "ddp.png")])
    assert out["world"] == 1 and math.isfinite(out["elbo"]) and out["elbo"] < 0
    assert (tmp_path / "ddp.png").read_bytes()[:4] == b"\x89PNG"
    assert "final: ELBO" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("baseline", ["loo", "average", "critic"])
def test_torchrun_two_processes(baseline: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(EXAMPLE),
           "--steps", "6", "--eval-every", "3", "--eval-samples", "2", "--baseline", baseline,
           "--plot", str(tmp_path / "ddp.png")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    if out.returncode != 0 and "final: ELBO" in out.stdout and _TEARDOWN_ABORT in out.stderr:
        # The run finished, then a rank aborted inside torch's gloo teardown at interpreter exit (seen
        # 3 times in ~400 runs of the example before DDP was freed before destroy_process_group, none
        # in 290 after; kept as a guard): run it once more; a second failure of any kind fails the test.
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, f"stdout:\n{out.stdout[-1000:]}\nstderr:\n{out.stderr[-3000:]}"
    assert "on 2 process(es)" in out.stdout and out.stdout.count("final: ELBO") == 1
