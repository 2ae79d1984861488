"""Without a process group nothing changes, and ``import gradest`` imports no more of
``torch.distributed`` than ``import torch`` does."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import gradest
from gradest import _distributed
from gradest.optim import SAGA, SVRG
from gradest.rl import group_advantages


def test_import_does_not_load_more_of_torch_distributed() -> None:
    code = (
        "import sys, torch\n"
        "before = {m for m in sys.modules if m.startswith('torch.distributed')}\n"
        "import gradest, gradest.optim, gradest.rl\n"
        "after = {m for m in sys.modules if m.startswith('torch.distributed')}\n"
        "print(sorted(after - before))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("process_group", ["world", None])
def test_no_process_group_changes_nothing(process_group) -> None:  # noqa: ANN001
    assert _distributed.resolve(process_group) is None
    costs = torch.arange(12.0).reshape(3, 4)
    ma = gradest.MovingAverage(0.5, process_group=process_group)
    ma(None, costs)
    assert float(ma.mean) == pytest.approx(0.5 * costs.mean().item())
    rewards = torch.tensor([[1.0], [0.0], [0.0], [1.0]])
    torch.testing.assert_close(group_advantages(rewards=rewards, process_group=process_group),
                               group_advantages(rewards=rewards))


def test_all_reduce_without_group_is_identity() -> None:
    t = torch.arange(3.0)
    assert _distributed.all_reduce_sum(t, None) is t
    assert _distributed.world_size(None) == 1 and _distributed.rank(None) == 0
    assert _distributed.all_reduce_flat([t], None)[0] is t


@pytest.mark.parametrize("make", [
    lambda pg: gradest.MovingAverage(0.9, process_group=pg),
    lambda pg: gradest.OptimalConstant(0.9, process_group=pg),
    lambda pg: SVRG([torch.zeros(1, requires_grad=True)], num_examples=3, process_group=pg),
    lambda pg: SAGA([torch.zeros(1, requires_grad=True)], num_examples=3, process_group=pg),
    lambda pg: group_advantages(rewards=torch.zeros(2, 1), process_group=pg),
], ids=["MovingAverage", "OptimalConstant", "SVRG", "SAGA", "group_advantages"])
@pytest.mark.parametrize("bad", ["wrold", True, 0, object()])
def test_bad_process_group(make, bad) -> None:  # noqa: ANN001
    with pytest.raises(TypeError, match=r"process_group=.* must be 'world'"):
        make(bad)
