"""Task 3 of BENCHMARKS-SPEC.md: L2 logistic regression, finite-sum variance reduction.

f(w, b) = (1/N) Σ log(1 + exp(−s_i (x_i·w + b))) + (λ/2)‖w‖², λ = 1e-3, intercept unpenalised
(scikit-learn's C = 1/(λN)). Data: ``load_breast_cancer`` standardised (569 × 30), and the synthetic
20000 × 100 set of the spec, standardised. The optimum comes from L-BFGS polished with Newton steps (float64);
the metric is the relative suboptimality (f − f*)/|f*|.

Methods, all in float64 on one thread:
- scikit-learn SAGA: epochs from fresh fits ``max_iter=k, random_state=0`` (exact prefixes of one run);
  wall time = median of 3 fits at the first k reaching the threshold.
- scikit-learn L-BFGS: the same with ``solver="lbfgs"`` (k = iterations, each one pass or slightly more).
- gradest SAGA, b = 1, GLM table (one scalar per example, like scikit-learn's), scikit-learn's step rule
  η = 1/(2L + min(2Nλ, L)), L = max‖x_i‖²/4 + 1/4 + λ; indices uniform with replacement.
- gradest SAGA, b = 32, GLM table, η = 1/(3 L(b)), the mini-batch smoothness of Gazagnadou et al. (2019)
  L(b) = N(b−1)/(b(N−1)) L_f + (N−b)/(b(N−1)) L_max; each epoch a fresh permutation in batches of 32.
- gradest SVRG, b = 32, the same η, a snapshot every ⌈2N/b⌉ steps. For every method "epochs" counts
  gradient evaluations / N (SVRG: 2 per example per step and N per snapshot), not passes of steps.
- torch SGD, batch 32, constant lr: the best of a grid (fewest epochs to 1e-4, then lowest value).

gradest and SGD wall times are the step time summed over the run up to the epoch that reached the
threshold (the objective is evaluated between epochs, off the clock). A second table measures the
cost of one epoch of each method interleaved (rounds A B C …, order rotated, warm-up first).

Run (about 25 minutes on a 2-core CPU):
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/optim_finite_sum.py --json benchmarks/optim_finite_sum.json.out
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy / torch load

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from scipy.optimize import minimize  # noqa: E402
from scipy.special import expit  # noqa: E402
from sklearn.datasets import load_breast_cancer  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

import gradest  # noqa: E402
from gradest.optim import SAGA, SVRG  # noqa: E402

torch.set_num_threads(1)
warnings.filterwarnings("ignore", category=ConvergenceWarning)

LAM = 1e-3
THRESHOLDS = (1e-4, 1e-6)
BATCH = 32


# ---------------------------------------------------------------------------------------------------
# Data, objective, optimum
# ---------------------------------------------------------------------------------------------------


def load(name: str) -> tuple[np.ndarray, np.ndarray]:
    if name == "breast_cancer":
        X, y = load_breast_cancer(return_X_y=True)
    else:
        rng = np.random.default_rng(0)
        X = rng.standard_normal((20000, 100))
        w = rng.standard_normal(100) * 2 / math.sqrt(100)
        y = rng.random(20000) < expit(X @ w + 0.5)
    return StandardScaler().fit_transform(X), y.astype(np.float64)


class Objective:
    def __init__(self, X: np.ndarray, y: np.ndarray) -> None:
        self.X, self.s, self.N, self.D = X, 2 * y - 1, X.shape[0], X.shape[1]

    def value(self, theta: np.ndarray) -> float:
        w, b = theta[:-1], theta[-1]
        return float(np.mean(np.logaddexp(0, -self.s * (self.X @ w + b))) + LAM / 2 * w @ w)

    def grad(self, theta: np.ndarray) -> np.ndarray:
        w, b = theta[:-1], theta[-1]
        a = -self.s * expit(-self.s * (self.X @ w + b)) / self.N
        return np.concatenate([self.X.T @ a + LAM * w, [a.sum()]])

    def hess(self, theta: np.ndarray) -> np.ndarray:
        w, b = theta[:-1], theta[-1]
        z = self.X @ w + b
        p = expit(z) * expit(-z) / self.N
        A = np.hstack([self.X, np.ones((self.N, 1))])
        H = A.T @ (A * p[:, None])
        H[:-1, :-1] += LAM * np.eye(self.D)
        return H

    def optimum(self) -> tuple[np.ndarray, float]:
        res = minimize(self.value, np.zeros(self.D + 1), jac=self.grad, method="L-BFGS-B",
                       options={"maxiter": 10000, "ftol": 0, "gtol": 1e-12})
        theta = res.x
        for _ in range(5):  # Newton polish: quadratic convergence from L-BFGS's point
            theta = theta - np.linalg.solve(self.hess(theta), self.grad(theta))
        return theta, self.value(theta)

    def constants(self) -> tuple[float, float]:
        """L_max (largest per-example smoothness) and L_f (of the mean), intercept as a feature of 1."""
        A = np.hstack([self.X, np.ones((self.N, 1))])
        l_max = 0.25 * float((A**2).sum(1).max()) + LAM
        l_f = 0.25 * float(np.linalg.eigvalsh(A.T @ A / self.N).max()) + LAM
        return l_max, l_f


def first_reaching(curve: list[float], threshold: float) -> int | None:
    """1-based epoch of the first value below the threshold."""
    return next((k + 1 for k, v in enumerate(curve) if v <= threshold), None)


# ---------------------------------------------------------------------------------------------------
# scikit-learn: fresh fits with max_iter = k
# ---------------------------------------------------------------------------------------------------


def sklearn_fit(X: np.ndarray, y: np.ndarray, solver: str, k: int) -> np.ndarray:
    model = LogisticRegression(solver=solver, C=1 / (LAM * X.shape[0]), tol=0, max_iter=k, random_state=0)
    model.fit(X, y)
    return np.concatenate([model.coef_[0], model.intercept_])


def sklearn_first_k(obj: Objective, X: np.ndarray, y: np.ndarray, solver: str, f_star: float,
                    threshold: float, k_max: int) -> tuple[int | None, float]:
    """First k with relative suboptimality <= threshold: galloping, then bisection (the prefix property
    makes subopt(k) one trajectory; bisection assumes it is monotone near the crossing). Also the best
    value seen."""
    cache: dict[int, float] = {}

    def gap(k: int) -> float:
        if k not in cache:
            cache[k] = (obj.value(sklearn_fit(X, y, solver, k)) - f_star) / abs(f_star)
        return cache[k]

    hi = 1
    while gap(hi) > threshold:
        if hi >= k_max:
            return None, min(cache.values())
        hi = min(2 * hi, k_max)
    lo = hi // 2  # gap(lo) > threshold, or lo = 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if gap(mid) <= threshold:
            hi = mid
        else:
            lo = mid
    return hi, min(cache.values())


def sklearn_time(X: np.ndarray, y: np.ndarray, solver: str, k: int, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        sklearn_fit(X, y, solver, k)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


# ---------------------------------------------------------------------------------------------------
# torch runs: gradest SAGA / SVRG and SGD
# ---------------------------------------------------------------------------------------------------


class TorchProblem:
    def __init__(self, X: np.ndarray, y: np.ndarray) -> None:
        self.X = torch.tensor(X)
        self.y = torch.tensor(y)
        self.N, self.D = X.shape
        self.w = torch.zeros(self.D, dtype=torch.float64, requires_grad=True)
        self.b = torch.zeros((), dtype=torch.float64, requires_grad=True)
        self.evaluations = 0  # examples whose loss (and gradient) was computed: passes = evaluations / N

    def losses(self, i: torch.Tensor) -> torch.Tensor:
        self.evaluations += len(i)
        return F.binary_cross_entropy_with_logits(self.X[i] @ self.w + self.b, self.y[i], reduction="none")

    def groups(self) -> list[dict]:
        return [{"params": [self.w], "weight_decay": LAM}, {"params": [self.b], "weight_decay": 0.0}]

    def theta(self) -> np.ndarray:
        return np.concatenate([self.w.detach().numpy(), [float(self.b.detach())]])


Stepper = Callable[[TorchProblem, torch.Generator], Callable[[], None]]


def saga_single(lr: float) -> Stepper:
    def make(pb: TorchProblem, g: torch.Generator) -> Callable[[], None]:
        opt = SAGA(pb.groups(), lr=lr, num_examples=pb.N, features=pb.X)

        def epoch() -> None:
            for j in torch.randint(pb.N, (pb.N, 1), generator=g):
                opt.step(j, pb.losses)

        return epoch

    return make


def minibatches(N: int, g: torch.Generator) -> tuple[torch.Tensor, ...]:
    return torch.randperm(N, generator=g).split(BATCH)


def saga_batch(lr: float) -> Stepper:
    def make(pb: TorchProblem, g: torch.Generator) -> Callable[[], None]:
        opt = SAGA(pb.groups(), lr=lr, num_examples=pb.N, features=pb.X)

        def epoch() -> None:
            for idx in minibatches(pb.N, g):
                opt.step(idx, pb.losses)

        return epoch

    return make


def svrg_batch(lr: float) -> Stepper:
    """One 'epoch' of steps; its cost in gradient evaluations (2 per example, N per snapshot) is
    counted by ``TorchProblem.evaluations``."""

    def make(pb: TorchProblem, g: torch.Generator) -> Callable[[], None]:
        opt = SVRG(pb.groups(), lr=lr, num_examples=pb.N)

        def epoch() -> None:
            for idx in minibatches(pb.N, g):
                opt.step(idx, pb.losses)

        return epoch

    return make


def sgd_batch(lr: float) -> Stepper:
    def make(pb: TorchProblem, g: torch.Generator) -> Callable[[], None]:
        opt = torch.optim.SGD(pb.groups(), lr=lr)

        def epoch() -> None:
            for idx in minibatches(pb.N, g):
                opt.zero_grad()
                pb.losses(idx).mean().backward()
                opt.step()

        return epoch

    return make


def run(make: Stepper, X: np.ndarray, y: np.ndarray, obj: Objective, f_star: float, max_epochs: int,
        stop: float = 1e-6) -> tuple[list[float], list[float], list[float]]:
    """Relative suboptimality, cumulative step time (s) and passes (gradient evaluations / N) after
    each epoch of steps."""
    pb = TorchProblem(X, y)
    g = torch.Generator().manual_seed(0)
    epoch = make(pb, g)
    gaps, clock, passes, total = [], [], [], 0.0
    for _ in range(max_epochs):
        t = time.perf_counter()
        epoch()
        total += time.perf_counter() - t
        gap = (obj.value(pb.theta()) - f_star) / abs(f_star)
        gaps.append(gap)
        clock.append(total)
        passes.append(pb.evaluations / pb.N)
        if gap <= stop or not math.isfinite(gap) or gap > 1e6:
            break
    return gaps, clock, passes


# ---------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------


def fmt_epochs(e: int | float | None) -> str:
    if e is None:
        return "never"
    return f"{e:.0f}" if float(e).is_integer() else f"{e:.1f}"


def fmt_time(t: float | None) -> str:
    if t is None:
        return "—"
    return f"{t * 1e3:.1f} ms" if t < 1 else f"{t:.1f} s"


def bench_dataset(name: str, quick: bool, log: Callable[[str], None]) -> dict:
    X, y = load(name)
    obj = Objective(X, y)
    theta_star, f_star = obj.optimum()
    N = X.shape[0]
    grad_norm = float(np.abs(obj.grad(theta_star)).max())
    log(f"\n## {name}: N={N}, D={X.shape[1]}, f*={f_star:.12f} (|grad|_max {grad_norm:.1e})")
    l_max, l_f = obj.constants()
    lr_sk = 1 / (2 * l_max + min(2 * N * LAM, l_max))
    l_b = N * (BATCH - 1) / (BATCH * (N - 1)) * l_f + (N - BATCH) / (BATCH * (N - 1)) * l_max
    lr_b = 1 / (3 * l_b)
    log(f"L_max={l_max:.3f} L_f={l_f:.3f} L(32)={l_b:.3f}; lr: scikit-learn rule {lr_sk:.5f}, "
        f"mini-batch 1/(3L(32)) {lr_b:.5f}")
    big = name != "breast_cancer"
    rows: dict[str, dict] = {}

    # scikit-learn
    for label, solver, k_max in [("scikit-learn SAGA", "saga", 4000), ("scikit-learn L-BFGS", "lbfgs", 500)]:
        row: dict = {"unit": "epochs" if solver == "saga" else "iterations"}
        for thr in THRESHOLDS:
            k, best = sklearn_first_k(obj, X, y, solver, f_star, thr, k_max)
            row[f"epochs_{thr:g}"] = k
            row[f"time_{thr:g}"] = sklearn_time(X, y, solver, k) if k is not None else None
            row["best"] = best
        rows[label] = row
        log(f"{label}: {row}")

    # gradest and SGD
    max_single = 60 if big else 4000
    max_batch = 200 if big else 8000
    if quick:
        max_single, max_batch = min(max_single, 5), min(max_batch, 50)
    torch_methods: list[tuple[str, Stepper, int]] = [
        ("gradest SAGA b=1 (GLM table)", saga_single(lr_sk), max_single),
        ("gradest SAGA b=32 (GLM table)", saga_batch(lr_b), max_batch),
        ("gradest SVRG b=32", svrg_batch(lr_b), max_batch),
    ]
    for label, make, max_epochs in torch_methods:
        gaps, clock, passes = run(make, X, y, obj, f_star, max_epochs)
        row = {"unit": "epochs", "best": min(gaps), "epochs_run": len(gaps),
               "s_per_epoch": clock[-1] / len(clock)}
        for thr in THRESHOLDS:
            e = first_reaching(gaps, thr)
            row[f"time_{thr:g}"] = clock[e - 1] if e else None
            row[f"steps_epochs_{thr:g}"] = e  # epochs of steps
            row[f"epochs_{thr:g}"] = passes[e - 1] if e else None  # gradient evaluations / N
        rows[label] = row
        log(f"{label}: {row}")

    # SGD: best constant lr on a grid
    sgd_epochs = 100 if big else 2000
    grid = [0.001, 0.003, 0.01, 0.03, 0.1] if big else [0.03, 0.1, 0.3, 1.0]
    if quick:
        sgd_epochs, grid = 5, [0.3]
    best_row = None
    for lr in grid:
        gaps, clock, _ = run(sgd_batch(lr), X, y, obj, f_star, sgd_epochs)
        row = {"unit": "epochs", "lr": lr, "best": min(gaps), "epochs_run": len(gaps),
               "s_per_epoch": clock[-1] / len(clock)}
        for thr in THRESHOLDS:
            e = first_reaching(gaps, thr)
            row[f"epochs_{thr:g}"] = e
            row[f"time_{thr:g}"] = clock[e - 1] if e else None
        e4 = row[f"epochs_{1e-4:g}"]
        log(f"SGD lr={lr}: epochs to 1e-4 {e4}, best {row['best']:.2e}")
        key = (e4 if e4 is not None else math.inf, row["best"])
        if best_row is None or key < best_row[0]:
            best_row = (key, row)
    assert best_row is not None
    rows["torch SGD b=32, best constant lr"] = best_row[1]
    return {"N": N, "f_star": f_star, "lr_sklearn_rule": lr_sk, "lr_minibatch": lr_b, "rows": rows}


def per_epoch_costs(quick: bool, log: Callable[[str], None]) -> dict:
    """Interleaved timing of one epoch of each torch method (rounds, order rotated, warm-up first)."""
    out: dict = {}
    for name in ("breast_cancer", "synthetic"):
        X, y = load(name)
        obj = Objective(X, y)
        l_max, l_f = obj.constants()
        N = X.shape[0]
        lr_sk = 1 / (2 * l_max + min(2 * N * LAM, l_max))
        l_b = N * (BATCH - 1) / (BATCH * (N - 1)) * l_f + (N - BATCH) / (BATCH * (N - 1)) * l_max
        methods = {
            "gradest SAGA b=1": saga_single(lr_sk),
            "gradest SAGA b=1, validation on": saga_single(lr_sk),
            "gradest SAGA b=32": saga_batch(1 / (3 * l_b)),
            "gradest SVRG b=32": svrg_batch(1 / (3 * l_b)),
            "torch SGD b=32": sgd_batch(0.1),
        }
        epochs = {}
        for label, make in methods.items():
            pb = TorchProblem(X, y)
            epochs[label] = make(pb, torch.Generator().manual_seed(0))
            epochs[label]()  # warm-up
        times: dict[str, list[float]] = {k: [] for k in methods}
        labels = list(methods)
        rounds = 2 if quick else 3
        for r in range(rounds):
            order = labels[r % len(labels):] + labels[: r % len(labels)]
            for label in order:
                gradest.set_validation("validation on" in label)
                t = time.perf_counter()
                epochs[label]()
                times[label].append(time.perf_counter() - t)
        gradest.set_validation(False)
        med = {k: statistics.median(v) for k, v in times.items()}
        t_sk = []
        for _ in range(rounds):
            t = time.perf_counter()
            sklearn_fit(X, y, "saga", 1)
            t_sk.append(time.perf_counter() - t)
        med["scikit-learn SAGA (1 epoch fit)"] = statistics.median(t_sk)
        out[name] = med
        log(f"per-epoch ({name}): " + ", ".join(f"{k} {fmt_time(v)}" for k, v in med.items()))
    return out


def markdown(results: dict, costs: dict) -> str:
    lines = ["| method | breast_cancer 1e-4 / 1e-6 | synthetic 1e-4 / 1e-6 |", "|---|---|---|"]
    labels = list(results["breast_cancer"]["rows"])
    for label in labels:
        cells = []
        for name in ("breast_cancer", "synthetic"):
            row = results[name]["rows"][label]
            e4, e6 = row.get("epochs_0.0001"), row.get("epochs_1e-06")
            t6 = row.get("time_1e-06")
            unit = "iterations" if row["unit"] == "iterations" else "epochs"
            cell = f"{fmt_epochs(e4)} / {fmt_epochs(e6)} {unit}"
            if t6 is not None:
                cell += f" ({fmt_time(t6)} to 1e-6)"
            else:
                cell += f" (best {row['best']:.1e})"
            if "lr" in row:
                cell += f", lr {row['lr']}"
            cells.append(cell)
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    lines += ["", "| one epoch (median, interleaved) | breast_cancer | synthetic |", "|---|---|---|"]
    for label in costs["breast_cancer"]:
        lines.append(f"| {label} | {fmt_time(costs['breast_cancer'][label])} | "
                     f"{fmt_time(costs['synthetic'][label])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few epochs of everything (smoke test)")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--datasets", default="breast_cancer,synthetic")
    args = parser.parse_args()
    gradest.set_validation(False)  # the NaN / GLM-form checks sync every step; a benchmark measures the loop

    def log(msg: str) -> None:
        print(msg, flush=True)

    log(f"torch {torch.__version__}, threads {torch.get_num_threads()}, OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS')}")
    results = {name: bench_dataset(name, args.quick, log) for name in args.datasets.split(",")}
    costs = per_epoch_costs(args.quick, log)
    if set(results) == {"breast_cancer", "synthetic"}:
        log("\n" + markdown(results, costs))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"results": results, "per_epoch": costs}, fh, indent=1, default=float)


if __name__ == "__main__":
    main()
