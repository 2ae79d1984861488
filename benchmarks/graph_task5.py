"""Benchmark task 5 (shared/BENCHMARKS-SPEC.md): dependency tracking on a deep decoder.

Encoder ``Linear(64, 64)`` giving 8 independent 8-way ``OneHotCategorical`` latents (``Independent(...,
1)`` over the 8), n = 4 samples, batch B = 32; decoder ``Linear(64, 64)``, then 12 × (``Linear(64, 64)``,
``LayerNorm(64)``, ``GELU``), then ``Linear(64, 64)`` (38 modules; the one-hot samples flattened to 64 are its
input); Bernoulli likelihood (logits from the decoder) of a random binary batch ``x`` ``[32, 64]``, which is
also the encoder's input. The objective is the per-image negative log-likelihood E_q[−log p(x | z)]
averaged over the batch, with the leave-one-out score-function estimator over the 4 samples. A timed step
is the parameters' ``.grad`` cleared, the forward pass and ``backward()`` (no optimiser).

Implementations (``--impls``; ``rloo`` is the reference of every ratio):

    rloo             hand-written RLOO surrogate (raw torch: multinomial, one_hot, the surrogate by hand)
    rloo-dist        the same, sampling and log_prob through the Independent(OneHotCategorical) gradest is
                     given (separates the cost of torch.distributions from gradest's own)
    expectation      gradest.expectation(f, q, ScoreFunction(LeaveOneOut()), n=4)
    graph            gradest.Graph(): one node, the cost per image divided by B (the loss sums)
    graph-untracked  gradest.Graph(track=False): the same, the cost's node named with depends_on=

All share one model (created after ``torch.manual_seed(0)``) and one batch (``Generator().manual_seed(1)``);
each draws from its own RNG stream (all seeded alike). One process, one thread (``OMP_NUM_THREADS=1``
before torch loads, ``torch.set_num_threads(1)``), interleaved: every step runs each implementation once,
the order rotated every step; 5 warm-up steps, then the median of 200. Reported: the median wall time,
its ratio to ``rloo``, the median of the per-step ratios (the implementations of one step run back to
back, so they share the machine's state: steadier on a loaded machine), and the ratio of median CPU
times; with ``--phases``, also the median CPU time of each phase of the two graphs. torch.distributions
argument validation is pinned off for all (``set_default_validate_args(False)``, as in task 1);
gradest's own validation keeps its default (on).

Run (5 seconds on a 2-core CPU; 15 with --phases; --floor also times the decoder's forward pass on a
subclass that only keeps its class, the least a per-op tracker can cost):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/graph_task5.py --phases --floor --json graph_task5.json
"""

from __future__ import annotations

import os

if __name__ == "__main__":  # one thread, set before torch loads (not when imported by tests)
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from torch.distributions import Independent, OneHotCategorical  # noqa: E402

import gradest  # noqa: E402

LATENTS, CATEGORIES = 8, 8
N = 4  # samples
BATCH = 32
WIDTH = 64
BLOCKS = 12
MODEL_SEED, DATA_SEED, SAMPLE_SEED = 0, 1, 12345
STEPS, WARMUP = 200, 5


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(WIDTH, LATENTS * CATEGORIES)
        layers: list[nn.Module] = [nn.Linear(LATENTS * CATEGORIES, WIDTH)]
        for _ in range(BLOCKS):
            layers += [nn.Linear(WIDTH, WIDTH), nn.LayerNorm(WIDTH), nn.GELU()]
        layers.append(nn.Linear(WIDTH, WIDTH))
        self.dec = nn.Sequential(*layers)


def make_model() -> Model:
    with torch.random.fork_rng():
        torch.manual_seed(MODEL_SEED)
        return Model()


def make_batch() -> Tensor:
    return (torch.rand(BATCH, WIDTH, generator=torch.Generator().manual_seed(DATA_SEED)) < 0.5).float()


def nll(dec: nn.Module, z: Tensor, x: Tensor) -> Tensor:
    """−log p(x | z): z ``[..., B, 8, 8]`` one-hot, x ``[B, 64]`` -> ``[..., B]``."""
    logits = dec(z.flatten(-2))
    return (F.softplus(logits) - x * logits).sum(-1)


# ---------------------------------------------------------------------------------------------------
# Implementations: step(model, x) = forward + backward of the batch-mean objective


def rloo(model: Model, x: Tensor) -> None:
    log_q = model.enc(x).view(-1, LATENTS, CATEGORIES).log_softmax(-1)  # [B, 8, 8]
    with torch.no_grad():
        idx = torch.multinomial(log_q.exp().view(-1, CATEGORIES), N, True).T.reshape(N, -1, LATENTS)
    z = F.one_hot(idx, CATEGORIES).to(log_q.dtype)  # [N, B, 8, 8]
    lq = (z * log_q).sum(-1).sum(-1)  # [N, B]
    f = nll(model.dec, z, x)
    fd = f.detach()
    b = (fd.sum(0) - fd) / (N - 1)
    (f + (fd - b) * (lq - lq.detach())).mean(0).mean().backward()


def _posterior(model: Model, x: Tensor) -> Independent:
    return Independent(OneHotCategorical(logits=model.enc(x).view(-1, LATENTS, CATEGORIES)), 1)


def rloo_dist(model: Model, x: Tensor) -> None:
    q = _posterior(model, x)
    z = q.sample((N,))  # [N, B, 8, 8]
    lq = q.log_prob(z)  # [N, B]
    f = nll(model.dec, z, x)
    fd = f.detach()
    b = (fd.sum(0) - fd) / (N - 1)
    (f + (fd - b) * (lq - lq.detach())).mean(0).mean().backward()


ESTIMATOR = gradest.ScoreFunction(gradest.LeaveOneOut())


def expectation(model: Model, x: Tensor) -> None:
    s = gradest.expectation(lambda z: nll(model.dec, z, x), _posterior(model, x), ESTIMATOR, n=N)  # [B]
    s.mean().backward()


def graph(model: Model, x: Tensor) -> None:
    with gradest.Graph() as g:
        z = g.sample("z", _posterior(model, x), ESTIMATOR, n=N)
        g.cost(nll(model.dec, z, x) / x.shape[0], name="nll")
    g.loss().backward()


def graph_untracked(model: Model, x: Tensor) -> None:
    with gradest.Graph(track=False) as g:
        z = g.sample("z", _posterior(model, x), ESTIMATOR, n=N)
        g.cost(nll(model.dec, z, x) / x.shape[0], name="nll", depends_on="z")
    g.loss().backward()


IMPLS: dict[str, Callable[[Model, Tensor], None]] = {
    "rloo": rloo, "rloo-dist": rloo_dist, "expectation": expectation, "graph": graph,
    "graph-untracked": graph_untracked,
}
REFERENCE = "rloo"


def run(names: list[str], steps: int = STEPS, warmup: int = WARMUP) -> dict[str, dict[str, float]]:
    """Interleaved steps; per implementation the median wall and CPU times, and the ratios."""
    model, x = make_model(), make_batch()
    rng = {}
    for name in names:
        with torch.random.fork_rng():
            torch.manual_seed(SAMPLE_SEED)
            rng[name] = torch.get_rng_state()
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for step in range(warmup + steps):
        shift = step % len(names)
        for name in names[shift:] + names[:shift]:
            outer = torch.get_rng_state()
            torch.set_rng_state(rng[name])
            model.zero_grad(set_to_none=True)
            c0, t0 = time.thread_time(), time.perf_counter()
            IMPLS[name](model, x)
            dt, dc = time.perf_counter() - t0, time.thread_time() - c0
            rng[name] = torch.get_rng_state()
            torch.set_rng_state(outer)
            if step >= warmup:
                wall[name].append(dt)
                cpu[name].append(dc)
    ref, ref_cpu = statistics.median(wall[REFERENCE]), statistics.median(cpu[REFERENCE])
    out = {}
    for name in names:
        paired = statistics.median(a / b for a, b in zip(wall[name], wall[REFERENCE]))
        out[name] = {"median_ms": statistics.median(wall[name]) * 1e3, "ratio": statistics.median(wall[name]) / ref,
                     "paired_ratio": paired, "cpu_ratio": statistics.median(cpu[name]) / ref_cpu}
    return out


def phases(steps: int = 300, warmup: int = 50) -> dict[str, dict[str, float]]:
    """Median thread CPU ms of each phase of the tracked and the untracked graph, interleaved: ``sample``,
    the decoder and likelihood (``nll``), ``cost``, ``loss()`` and ``backward()``."""
    model, x = make_model(), make_batch()
    runs: dict[str, list[list[float]]] = {"graph": [], "graph-untracked": []}
    for step in range(warmup + steps):
        for name in (list(runs) if step % 2 else list(runs)[::-1]):
            track = name == "graph"
            model.zero_grad(set_to_none=True)
            t = [time.thread_time()]
            with gradest.Graph(track=track) as g:
                z = g.sample("z", _posterior(model, x), ESTIMATOR, n=N)
                t.append(time.thread_time())
                c = nll(model.dec, z, x) / x.shape[0]
                t.append(time.thread_time())
                g.cost(c, name="nll", depends_on=None if track else "z")
            t.append(time.thread_time())
            loss = g.loss()
            t.append(time.thread_time())
            loss.backward()
            t.append(time.thread_time())
            if step >= warmup:
                runs[name].append([b - a for a, b in zip(t, t[1:])])
    keys = ("sample", "decoder + nll", "cost", "loss()", "backward()")
    return {name: {k: statistics.median(r[i] for r in rows) * 1e3 for i, k in enumerate(keys)}
            for name, rows in runs.items()}



class _Floor(Tensor):
    """A tensor subclass whose ``__torch_function__`` does nothing but keep its class on the results: the
    least any per-op tracker built on a subclass can cost (``--floor``)."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def,override]
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **(kwargs or {}))
        if type(out) is Tensor:
            out.__class__ = cls
        return out


def floor(steps: int = 300, warmup: int = 50) -> dict[str, float]:
    """Median thread CPU ms of the decoder and likelihood's forward pass on the same samples as a plain
    tensor, as ``_Floor`` and as gradest's tracked samples (an open graph's ``Provenance``), interleaved."""
    from gradest.graph.dependencies import Provenance, Scope, Tag

    model, x = make_model(), make_batch()
    z = _posterior(model, x).sample((N,))
    scope = Scope()
    make = {"plain": lambda: z, "subclass floor": lambda: z.as_subclass(_Floor),
            "gradest tracking": lambda: Provenance.wrap(z, (Tag(scope, 0, "z"),))}
    times: dict[str, list[float]] = {k: [] for k in make}
    for step in range(warmup + steps):
        for name in (list(make) if step % 2 else list(make)[::-1]):
            t = time.thread_time()
            nll(model.dec, make[name](), x)
            if step >= warmup:
                times[name].append(time.thread_time() - t)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}

def table(result: dict[str, dict[str, float]]) -> str:
    lines = ["| implementation | median step (ms) | / rloo | paired / rloo | CPU time / rloo |",
             "|---|---|---|---|---|"]
    for name, r in result.items():
        lines.append(f"| {name} | {r['median_ms']:.3f} | {r['ratio']:.3f} | {r['paired_ratio']:.3f} "
                     f"| {r['cpu_ratio']:.3f} |")
    return "\n".join(lines)


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help: the defaults after each flag, the docstring as written."""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=_Help)
    p.add_argument("--steps", type=int, default=STEPS, help="timed steps after the warm-up")
    p.add_argument("--impls", default=",".join(IMPLS), help="comma-separated; rloo (the reference) always runs")
    p.add_argument("--phases", action="store_true", help="also time the phases of the two graphs (CPU ms)")
    p.add_argument("--floor", action="store_true",
                   help="also time the decoder's forward pass on plain, minimally subclassed and tracked samples")
    p.add_argument("--json", metavar="PATH", help="write the results here")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.impls.split(",") if n.strip()]
    unknown = [n for n in names if n not in IMPLS]
    if unknown:
        p.error(f"--impls: unknown {unknown}; choose from {list(IMPLS)}")
    if REFERENCE not in names:
        names.insert(0, REFERENCE)
    torch.set_num_threads(1)
    torch.distributions.Distribution.set_default_validate_args(False)
    print(f"task 5: B={BATCH}, n={N}, {LATENTS}x{CATEGORIES} latents, decoder of {2 + 3 * BLOCKS} modules; "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.steps} steps after {WARMUP}, "
          f"{platform.processor() or platform.machine()}")
    result = run(names, args.steps)
    print(table(result))
    out: dict = {"torch": torch.__version__, "steps": args.steps, "impls": result}
    if args.phases:
        out["phases_cpu_ms"] = phases()
        rows = out["phases_cpu_ms"]
        keys = list(next(iter(rows.values())))
        print("\n| phase (median CPU ms) | " + " | ".join(rows) + " |\n|---|---|---|")
        for k in keys:
            print(f"| {k} | " + " | ".join(f"{rows[n][k]:.3f}" for n in rows) + " |")
    if args.floor:
        out["floor_cpu_ms"] = rows = floor()
        ops = 2 + 3 * BLOCKS + 5  # the decoder's modules, the flatten and the likelihood's ops
        print("\n| decoder + likelihood forward | median CPU ms | over plain, per op (µs) |\n|---|---|---|")
        for k, v in rows.items():
            print(f"| {k} | {v:.3f} | {(v - rows['plain']) * 1e3 / ops:.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
