"""SVRG and SAGA on a small MLP (scikit-learn's digits) against SGD and Adam: training loss and the
variance of the update direction, both against passes over the data.

Data: ``load_digits()``, pixels / 16, 1797 × 64, float32; model ``Linear(64, 32) Tanh Linear(32, 10)``
created after ``torch.manual_seed(0)`` (every method starts from the same state); loss: mean
cross-entropy, no penalty. Batches of 32 from a fresh permutation each epoch
(``Generator().manual_seed(1)``). Each method takes the best constant step of a small grid (lowest
median training loss over the last 3 epoch ends within the budget). The x axis counts gradient
evaluations / N ("passes"): 1 per epoch for SGD, Adam and SAGA; SVRG evaluates each batch twice (at θ
and at the snapshot) and the full gradient at each snapshot: 2.5 passes per epoch with a snapshot
every 2 epochs (the default ⌈2N/b⌉ steps), 3 with one every epoch.

Gradient variance at a checkpoint: E‖d_B − ∇F(θ)‖² over 32 random batches B (the trace of the
covariance of the direction, as every direction here is unbiased for ∇F), where d_B is the mini-batch
gradient for SGD and Adam (Adam's input, not its rescaled step) and ``opt.direction(B, losses)`` for
SAGA and SVRG. For these two, the plain mini-batch gradient's variance on the same batches at the same
θ is measured too (dotted in the figure): their ratio is the variance reduction itself, free of the
fact that each method sits at a different θ. Measured off the clock and not counted in passes.

Run (about 3 minutes on a 2-core CPU):
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/optim_digits.py --png benchmarks/optim_digits.png
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy / torch load

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from torch import Tensor, nn  # noqa: E402

import gradest  # noqa: E402
from gradest.optim import SAGA, SVRG  # noqa: E402

torch.set_num_threads(1)
BATCH = 32
PROBES = 32


class Problem:
    def __init__(self) -> None:
        X, y = load_digits(return_X_y=True)
        self.X = torch.tensor(X / 16, dtype=torch.float32)
        self.y = torch.tensor(y)
        self.N = self.X.shape[0]
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
        self.params = list(self.net.parameters())
        self.evaluations = 0

    def losses(self, i: Tensor) -> Tensor:
        self.evaluations += len(i)
        return F.cross_entropy(self.net(self.X[i]), self.y[i], reduction="none")

    def full(self) -> tuple[float, list[Tensor]]:
        loss = F.cross_entropy(self.net(self.X), self.y)
        return float(loss.detach()), list(torch.autograd.grad(loss, self.params))


def make(method: str, pb: Problem, lr: float) -> tuple[torch.optim.Optimizer, Callable[[Tensor], None]]:
    if method == "SAGA":
        opt: torch.optim.Optimizer = SAGA(pb.params, lr=lr, num_examples=pb.N)
    elif method == "SVRG":
        opt = SVRG(pb.params, lr=lr, num_examples=pb.N)  # a snapshot every 2N/b steps (2 epochs)
    elif method == "SVRG1":
        opt = SVRG(pb.params, lr=lr, num_examples=pb.N, snapshot_every=-(-pb.N // BATCH))  # every epoch
    elif method == "SGD":
        opt = torch.optim.SGD(pb.params, lr=lr)
    else:
        opt = torch.optim.Adam(pb.params, lr=lr)

    def step(idx: Tensor) -> None:
        if isinstance(opt, (SAGA, SVRG)):
            opt.step(idx, pb.losses)
        else:
            opt.zero_grad()
            pb.losses(idx).mean().backward()
            opt.step()

    return opt, step


def variance(opt: torch.optim.Optimizer, pb: Problem, g: torch.Generator) -> tuple[float, float]:
    """E‖d_B − ∇F‖² over PROBES random batches for the method's direction, and for the plain
    mini-batch gradient on the same batches at the same θ; off the books (evaluations restored)."""
    evaluations = pb.evaluations
    _, full = pb.full()
    ours = plain = 0.0
    for _ in range(PROBES):
        idx = torch.randperm(pb.N, generator=g)[:BATCH]
        grad = list(torch.autograd.grad(pb.losses(idx).mean(), pb.params))
        d = opt.direction(idx, pb.losses) if isinstance(opt, (SAGA, SVRG)) else grad
        ours += sum(float((a - b).square().sum()) for a, b in zip(d, full, strict=True))
        plain += sum(float((a - b).square().sum()) for a, b in zip(grad, full, strict=True))
    pb.evaluations = evaluations
    return ours / PROBES, plain / PROBES


def run(method: str, lr: float, budget: float, with_variance: bool) -> dict:
    """Train until ``budget`` passes; record (passes, loss, variance) after each epoch of steps."""
    pb = Problem()
    opt, step = make(method.split(" ")[0], pb, lr)
    g, probe = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    loss0, _ = pb.full()
    curve = {"passes": [0.0], "loss": [loss0], "variance": [], "variance_sgd": [], "variance_passes": [],
             "seconds": 0.0}
    while pb.evaluations / pb.N < budget:
        t = time.perf_counter()
        for idx in torch.randperm(pb.N, generator=g).split(BATCH):
            step(idx)
        curve["seconds"] += time.perf_counter() - t
        loss, _ = pb.full()
        curve["passes"].append(pb.evaluations / pb.N)
        curve["loss"].append(loss)
        if with_variance:
            ours, plain = variance(opt, pb, probe)
            curve["variance"].append(ours)
            curve["variance_sgd"].append(plain)
            curve["variance_passes"].append(pb.evaluations / pb.N)
    return curve


GRIDS = {
    "SGD": [0.1, 0.3, 1.0, 3.0],
    "Adam": [1e-3, 3e-3, 1e-2, 3e-2, 1e-1],
    "SAGA": [0.1, 0.3, 1.0, 3.0],
    "SVRG": [0.1, 0.3, 1.0, 3.0],
    "SVRG1": [0.1, 0.3, 1.0, 3.0],
}
LABELS = {"SVRG": "SVRG (snapshot every 2 epochs)", "SVRG1": "SVRG (snapshot every epoch)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--passes", type=float, default=30.0, help="budget in gradient evaluations / N")
    parser.add_argument("--png", default="benchmarks/optim_digits.png")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    gradest.set_validation(False)

    results = {}
    for method, grid in GRIDS.items():
        best = None
        for lr in grid:
            curve = run(method, lr, args.passes, with_variance=False)
            final = statistics.median(curve["loss"][-3:])  # robust to a lucky last checkpoint
            print(f"{method} lr={lr}: loss {curve['loss'][-1]:.4f} after {curve['passes'][-1]:.1f} passes, "
                  f"median of the last 3 checkpoints {final:.4f} ({curve['seconds']:.1f} s)", flush=True)
            if final == final and (best is None or final < best[1]):
                best = (lr, final)
        assert best is not None
        curve = run(method, best[0], args.passes, with_variance=True)
        curve["lr"] = best[0]
        results[method] = curve

    def at(curve: dict, p: float) -> float:
        """The loss at the last epoch end within ``p`` passes."""
        return [loss for q, loss in zip(curve["passes"], curve["loss"], strict=True) if q <= p + 1e-9][-1]

    print("\n| method (best lr) | loss @10 passes | @20 | @30 | direction variance, last checkpoint | "
          "÷ mini-batch gradient variance at the same θ | seconds per pass |")
    print("|---|---|---|---|---|---|---|")
    for method, c in results.items():
        per_pass = c["seconds"] / c["passes"][-1]
        ratio = c["variance"][-1] / c["variance_sgd"][-1]
        print(f"| {LABELS.get(method, method)} (lr {c['lr']}) | {at(c, 10):.4f} | {at(c, 20):.4f} | "
              f"{at(c, 30):.4f} | {c['variance'][-1]:.3g} | {ratio:.3g} | {per_pass * 1e3:.0f} ms |")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for method, c in results.items():
        label = LABELS.get(method, method)
        (line,) = ax1.semilogy(c["passes"], c["loss"], label=f"{label}, lr {c['lr']}")
        ax2.semilogy(c["variance_passes"], c["variance"], color=line.get_color(), label=label)
        if method in ("SAGA", "SVRG", "SVRG1"):
            ax2.semilogy(c["variance_passes"], c["variance_sgd"], color=line.get_color(), ls=":", lw=1)
    ax2.plot([], [], "k:", lw=1, label="plain mini-batch gradient at the same θ")
    ax1.set_xlabel("gradient evaluations / N")
    ax1.set_ylabel("training loss (mean cross-entropy)")
    ax1.set_title("digits MLP 64-32-10, batch 32")
    ax2.set_xlabel("gradient evaluations / N")
    ax2.set_ylabel("E‖d_B − ∇F‖² (direction variance)")
    ax2.set_title("variance of the update direction")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.png, dpi=120)
    print(f"wrote {args.png}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
