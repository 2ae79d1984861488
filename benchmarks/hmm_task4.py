"""Benchmark task 4 (shared/BENCHMARKS-SPEC.md): exact marginalisation over a chain (an HMM).

K = 3 hidden states, Gaussian emissions with unit variance; the parameters (initial logits ``[K]``, the
transition logit table ``[K, K]``, the emission means ``[K]``, in that order) are ``randn`` draws after
``torch.manual_seed(0)``, float32; the observations are ``y = randn(T)`` from ``Generator().manual_seed(1)``;
T = 10², 10³, 10⁴, 10⁵. A timed call is: the parameters' ``.grad`` cleared, the loss −log p(y) with every
hidden state summed out, and ``backward()``.

Implementations (``--impls``, comma-separated; ``forward`` is the reference of every ratio):

    forward          (a) hand-written log-space forward algorithm, a Python loop over t (the floor): emissions
                     computed once for all t, then α_t = logsumexp_j(α_{t−1}(j) + log A(j, ·)) + log p(y_t | ·)
    forward-scan     (a') the same recursion as one parallel scan: a balanced tree of log-semiring K×K
                     matrix products over all steps at once (no Python loop over t; vectorised, labelled apart)
    graph            (b) gradest.Graph(): Enumerate nodes under Graph.markov, Graph.observe for the emissions
                     (the contract example of issue 13, written as a user would)
    graph-untracked  (c) the same with Graph(track=False): each sample and observe names its parents
                     with depends_on=
    pyro             (d) Pyro TraceEnum_ELBO (max_plate_nesting=0) with pyro.markov, parallel enumeration,
                     observations as obs=, an empty guide; ``differentiable_loss`` (the −ELBO, = −log p(y)
                     when every latent is enumerated and the guide is empty)

Protocol: one process, one thread (``OMP_NUM_THREADS=1`` before torch loads, ``torch.set_num_threads(1)``);
warm-up calls at T = 10 first; then for each T, one checked call per implementation (its loss and gradients
against autograd through the forward algorithm in float64: the max relative error of the loss and the max
error of each gradient relative to that gradient's largest entry), then interleaved rounds (every
implementation once per round, the order rotated each round); medians of the wall-clock time, the ratio
to ``forward``, and the median of the thread's CPU time. Each T has a time budget (``--budget-s``): the
number of rounds is cut to fit it (never below one). An implementation whose call at T would take longer
than ``--max-call-s`` (predicted from its median at the previous T, scaled linearly in T) is skipped at
that T and the rows say so.

torch.distributions argument validation (``set_default_validate_args``) and Pyro's validation
(``pyro.enable_validation``, which sets the former too) are pinned to one value for every implementation:
``--validate-args on`` (torch's and Pyro's default) or ``off``. gradest's own validation keeps its default
(on). Peak memory (``--memory``): each (implementation, T) runs once in a fresh subprocess, after the
imports and a warm-up call at T = 10; the peak resident set size (``ru_maxrss``) after the call minus the
same before it. It counts everything the call keeps alive at its peak (the autograd graph, the graph's
records, Python objects), not only tensors: a process-level figure for a CPU-only run, where torch has
no allocator statistics. ``--profile`` times the phases of the gradest calls at T = 1000 (the user's
own per-step distribution objects alone, the graph's ``with`` block, ``loss()``, ``backward()``) and
groups a cProfile of one tracked call by where the time goes.

Run (4 to 8 minutes on a 2-core CPU, depending on its load; ``--quick`` is a smoke run of 20 seconds):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/hmm_task4.py --memory --profile --json hmm_task4.json

One call of one implementation at one T in a fresh process (its seconds and peak memory as JSON), e.g.
where the 60 s rule skips it:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/hmm_task4.py --memory-child graph 100000
"""

from __future__ import annotations

import os

if __name__ == "__main__":  # one thread, set before torch loads (not when imported by tests)
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"

import argparse  # noqa: E402
import cProfile  # noqa: E402
import gc  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import pstats  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import torch  # noqa: E402
from torch import Tensor  # noqa: E402
from torch.distributions import Categorical, Normal  # noqa: E402

import gradest  # noqa: E402

try:
    import resource  # noqa: E402
except ImportError:  # pragma: no cover - not Unix
    resource = None  # type: ignore[assignment]

# ---------------------------------------------------------------------------------------------------
# The task, as the spec fixes it
K = 3  # hidden states
PARAM_SEED = 0  # torch.manual_seed(0): init [K], trans [K, K], locs [K], in that order
DATA_SEED = 1  # y = randn(T) from Generator().manual_seed(1)
LENGTHS = (100, 1000, 10_000, 100_000)
# Not fixed by the spec
ROUNDS = {100: 21, 1000: 9, 10_000: 3, 100_000: 3}  # at most; cut to --budget-s per T
WARMUP_LENGTH = 10
PROFILE_LENGTH = 1000

Loss = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


def parameters(dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor, Tensor]:
    """``init [K]``, ``trans [K, K]``, ``locs [K]``: leaves that require grad (the global RNG is left as it was)."""
    with torch.random.fork_rng():
        torch.manual_seed(PARAM_SEED)
        init, trans, locs = torch.randn(K), torch.randn(K, K), torch.randn(K)
    return tuple(p.to(dtype).requires_grad_() for p in (init, trans, locs))  # type: ignore[return-value]


def observations(length: int, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.randn(length, generator=torch.Generator().manual_seed(DATA_SEED)).to(dtype)


# ---------------------------------------------------------------------------------------------------
# Implementations: loss(init, trans, locs, y) -> −log p(y), a scalar


def forward(init: Tensor, trans: Tensor, locs: Tensor, y: Tensor) -> Tensor:
    """(a) The forward algorithm in log space, a Python loop over t. The emissions ``[T, K]`` are computed
    in one op and split with ``unbind`` (indexing ``emit[t]`` would make each step's backward write a
    zero-filled ``[T, K]`` gradient: quadratic in T)."""
    log_trans = trans.log_softmax(-1)
    emit = Normal(locs, 1.0).log_prob(y[:, None]).unbind(0)  # T × [K]
    alpha = init.log_softmax(-1) + emit[0]
    for t in range(1, y.shape[0]):
        alpha = torch.logsumexp(alpha[:, None] + log_trans, 0) + emit[t]
    return -torch.logsumexp(alpha, 0)


def _log_matmul(a: Tensor, b: Tensor) -> Tensor:
    return torch.logsumexp(a.unsqueeze(-1) + b.unsqueeze(-3), -2)


def forward_scan(init: Tensor, trans: Tensor, locs: Tensor, y: Tensor) -> Tensor:
    """(a') The same recursion as a parallel scan: step t's matrix M_t(j, k) = log A(j, k) + log p(y_t | k),
    reduced by a balanced tree of log-semiring products (log2 T levels of batched ops)."""
    emit = Normal(locs, 1.0).log_prob(y[:, None])  # [T, K]
    m = trans.log_softmax(-1) + emit[1:, None, :]  # [T - 1, K, K]
    while m.shape[0] > 1:
        half = m.shape[0] // 2
        merged = _log_matmul(m[: 2 * half : 2], m[1 : 2 * half : 2])
        m = torch.cat([merged, m[2 * half :]], 0) if m.shape[0] % 2 else merged
    alpha0 = init.log_softmax(-1) + emit[0]
    if m.shape[0] == 0:
        return -torch.logsumexp(alpha0, 0)
    return -torch.logsumexp(alpha0[:, None] + m[0], (0, 1))


def tracked_chain(init: Tensor, trans: Tensor, locs: Tensor, y: Tensor) -> gradest.Graph:
    """The contract example of issue 13, in a tracked gradest.Graph (closed, before ``loss()``)."""
    with gradest.Graph() as g:
        z = g.sample("z_0", Categorical(logits=init), gradest.Enumerate())
        g.observe("y_0", Normal(locs[z], 1.0), y[0])
        for t in g.markov(range(1, y.shape[0])):
            z = g.sample(f"z_{t}", Categorical(logits=trans[z]), gradest.Enumerate())
            g.observe(f"y_{t}", Normal(locs[z], 1.0), y[t])
    return g


def untracked_chain(init: Tensor, trans: Tensor, locs: Tensor, y: Tensor) -> gradest.Graph:
    """The same in gradest.Graph(track=False): every sample and observe names its parents."""
    with gradest.Graph(track=False) as g:
        z = g.sample("z_0", Categorical(logits=init), gradest.Enumerate(), depends_on=())
        g.observe("y_0", Normal(locs[z], 1.0), y[0], depends_on="z_0")
        for t in g.markov(range(1, y.shape[0])):
            z = g.sample(f"z_{t}", Categorical(logits=trans[z]), gradest.Enumerate(), depends_on=f"z_{t - 1}")
            g.observe(f"y_{t}", Normal(locs[z], 1.0), y[t], depends_on=f"z_{t}")
    return g


def graph(init: Tensor, trans: Tensor, locs: Tensor, y: Tensor) -> Tensor:
    """(b) The tracked graph's loss."""
    return tracked_chain(init, trans, locs, y).loss()


def graph_untracked(init: Tensor, trans: Tensor, locs: Tensor, y: Tensor) -> Tensor:
    """(c) The untracked graph's loss."""
    return untracked_chain(init, trans, locs, y).loss()


def pyro_enum(init: Tensor, trans: Tensor, locs: Tensor, y: Tensor) -> Tensor:
    """(d) Pyro's TraceEnum_ELBO on the same chain (sites enumerated in parallel, pyro.markov)."""
    import pyro
    import pyro.distributions as dist
    from pyro.infer import TraceEnum_ELBO

    enumerate_ = {"enumerate": "parallel"}

    def model() -> None:
        z = pyro.sample("z_0", dist.Categorical(logits=init), infer=enumerate_)
        pyro.sample("y_0", dist.Normal(locs[z], 1.0), obs=y[0])
        for t in pyro.markov(range(1, y.shape[0])):
            z = pyro.sample(f"z_{t}", dist.Categorical(logits=trans[z]), infer=enumerate_)
            pyro.sample(f"y_{t}", dist.Normal(locs[z], 1.0), obs=y[t])

    def guide() -> None:
        pass

    return TraceEnum_ELBO(max_plate_nesting=0).differentiable_loss(model, guide)


IMPLS: dict[str, Loss] = {
    "forward": forward,
    "forward-scan": forward_scan,
    "graph": graph,
    "graph-untracked": graph_untracked,
    "pyro": pyro_enum,
}
REFERENCE = "forward"
PEERS = {"pyro": "pyro"}  # implementation -> module


def available(name: str) -> bool:
    module = PEERS.get(name)
    return module is None or importlib.util.find_spec(module) is not None


def set_validate_args(on: bool) -> None:
    """Pin torch.distributions' argument validation (and Pyro's, when it is installed) to ``on``."""
    torch.distributions.Distribution.set_default_validate_args(on)
    if "pyro" in sys.modules:
        sys.modules["pyro"].enable_validation(on)


# ---------------------------------------------------------------------------------------------------
# Correctness and timing


def exact(length: int) -> tuple[float, list[Tensor]]:
    """−log p(y) and its gradients by autograd through the forward algorithm in float64."""
    params = parameters(torch.float64)
    loss = forward(*params, observations(length, torch.float64))
    grads = torch.autograd.grad(loss, params, allow_unused=True)  # T = 1: the transitions are unused
    return float(loss.detach()), [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, grads)]


def call(fn: Loss, params: tuple[Tensor, Tensor, Tensor], y: Tensor) -> tuple[float, float, Tensor]:
    """One timed call: grads cleared, loss, backward. Returns (wall s, thread CPU s, loss)."""
    c0, t0 = time.thread_time(), time.perf_counter()
    for p in params:
        p.grad = None
    loss = fn(*params, y)
    loss.backward()
    return time.perf_counter() - t0, time.thread_time() - c0, loss.detach()


def errors(loss: Tensor, params: tuple[Tensor, Tensor, Tensor], reference: tuple[float, list[Tensor]]
           ) -> dict[str, float]:
    """Relative error of the loss; per gradient, the max error over the largest entry of the exact one."""
    value, grads = reference
    out = {"loss_rel": abs(float(loss) - value) / abs(value)}
    for name, p, g in zip(("init", "trans", "locs"), params, grads):
        grad = torch.zeros_like(p) if p.grad is None else p.grad
        scale = float(g.abs().max())  # 0 for the transitions of a chain of length 1: then the absolute error
        out[f"grad_{name}_rel"] = float((grad.double() - g).abs().max()) / (scale if scale > 0 else 1.0)
    return out


def measure(names: list[str], lengths: list[int], *, budget_s: float, max_call_s: float,
            rounds: dict[int, int], log: Callable[[str], None] = print) -> dict[str, dict]:
    """Check and time every implementation at every length, interleaved (see the module docstring)."""
    params = parameters()
    for name in names:  # warm-up: lazy initialisation, imports of the peers
        for _ in range(2):
            call(IMPLS[name], params, observations(WARMUP_LENGTH))
    results: dict[str, dict] = {}
    previous: dict[str, float] = {}  # implementation -> median seconds at the previous length
    dropped: dict[str, str] = {}  # implementation -> the length where it was first skipped
    last_length = None
    for length in lengths:
        y = observations(length)
        reference = exact(length)
        row: dict[str, dict] = {}
        active = []
        for name in names:
            if name in dropped:
                row[name] = {"skipped": f"skipped at a shorter T ({dropped[name]})"}
                continue
            if name in previous and last_length is not None:
                predicted = previous[name] * length / last_length
                if predicted > max_call_s:
                    row[name] = {"skipped": f"one call predicted to take {predicted:.0f} s"
                                 f" > --max-call-s={max_call_s:g}"}
                    dropped[name] = f"T={length}"
                    log(f"T={length}: {name} skipped ({row[name]['skipped']})")
                    continue
            dt, dc, loss = call(IMPLS[name], params, y)
            row[name] = {"check_s": dt, "loss": float(loss), **errors(loss, params, reference)}
            active.append(name)
        results[str(length)] = {"loss_exact": reference[0], "impls": row}
        last_length = length
        if not active:
            continue
        round_s = sum(row[n]["check_s"] for n in active)
        n_rounds = max(1, min(rounds.get(length, 3), int(budget_s // max(round_s, 1e-9))))
        times: dict[str, list[float]] = {n: [] for n in active}
        cpu: dict[str, list[float]] = {n: [] for n in active}
        for r in range(n_rounds):
            shift = r % len(active)
            for name in active[shift:] + active[:shift]:
                dt, dc, _ = call(IMPLS[name], params, y)
                times[name].append(dt)
                cpu[name].append(dc)
        base = statistics.median(times[REFERENCE]) if REFERENCE in times else None
        base_cpu = statistics.median(cpu[REFERENCE]) if REFERENCE in cpu else None
        for name in active:
            med, med_cpu = statistics.median(times[name]), statistics.median(cpu[name])
            row[name].update(median_s=med, cpu_median_s=med_cpu, rounds=n_rounds, times_s=times[name],
                             ratio=med / base if base else None, cpu_ratio=med_cpu / base_cpu if base_cpu else None)
            previous[name] = med
        log(f"T={length}: {n_rounds} round(s); " + ", ".join(
            f"{n} {row[n]['median_s'] * 1e3:.1f} ms" for n in active))
    return results


# ---------------------------------------------------------------------------------------------------
# Peak memory, each (implementation, length) in a fresh subprocess


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _memory_child(name: str, length: int, validate_args: bool) -> None:
    """Run in the subprocess: print one JSON line with the peak RSS increase of one call.

    The kernel's high-water mark is reset just before the call (``/proc/self/clear_refs``, Linux >= 4.0),
    so the peak of the imports does not hide a smaller one of the call; without it, ``ru_maxrss`` deltas."""
    import gc

    torch.set_num_threads(1)
    if name in PEERS:
        __import__(PEERS[name])
    set_validate_args(validate_args)
    params = parameters()
    call(IMPLS[name], params, observations(WARMUP_LENGTH))
    y = observations(length)
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before, method = _rss_kib("VmRSS"), "VmHWM reset"
    except OSError:
        assert resource is not None
        before, method = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss"
    dt, _, _ = call(IMPLS[name], params, y)
    after = _rss_kib("VmHWM") if method == "VmHWM reset" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_mib": (after - before) / 1024, "baseline_mib": before / 1024, "call_s": dt,
                      "method": method}))


def memory(names: list[str], lengths: list[int], timings: dict[str, dict], validate_args: bool,
           log: Callable[[str], None] = print) -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = {}
    for length in lengths:
        out[str(length)] = {}
        for name in names:
            if "skipped" in timings[str(length)]["impls"][name]:
                continue
            cmd = [sys.executable, os.path.abspath(__file__), "--memory-child", name, str(length),
                   "--validate-args", "on" if validate_args else "off"]
            env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            if proc.returncode != 0:
                out[str(length)][name] = {"error": proc.stderr.strip().splitlines()[-1:]}
            else:
                out[str(length)][name] = json.loads(proc.stdout.strip().splitlines()[-1])
            log(f"memory T={length} {name}: {out[str(length)][name]}")
    return out


# ---------------------------------------------------------------------------------------------------
# Where the time goes in the gradest calls


def user_objects(init: Tensor, trans: Tensor, locs: Tensor, y: Tensor) -> Tensor:
    """What the user's own per-step code costs without any graph: the same distribution objects, built
    from a plain ``[K, 1]`` support tensor, and the log-probabilities an enumerated node and an
    observation need (the categorical's over its support, the emission's of y_t); their sum, so that
    the backward through them can be timed too."""
    support = torch.arange(K).view(K, 1)
    total = Categorical(logits=init).log_prob(support.view(K)).sum()
    total = total + Normal(locs[support.view(K)], 1.0).log_prob(y[0]).sum()
    for t in range(1, y.shape[0]):
        log_probs = Categorical(logits=trans[support]).logits  # [K, 1, K]: normalised, as Enumerate reads them
        total = total + log_probs.sum() + Normal(locs[support], 1.0).log_prob(y[t]).sum()
    return total


def _phases(fn: Callable[..., Tensor | gradest.Graph], params: tuple[Tensor, Tensor, Tensor], y: Tensor
            ) -> dict[str, float]:
    """Wall seconds of the forward (for a graph: its ``with`` block), ``loss()`` (0 if ``fn`` returns
    the loss itself) and ``backward()``."""
    for p in params:
        p.grad = None
    t0 = time.perf_counter()
    out = fn(*params, y)
    t1 = time.perf_counter()
    loss = out.loss() if isinstance(out, gradest.Graph) else out
    t2 = time.perf_counter()
    loss.backward()
    t3 = time.perf_counter()
    return {"build": t1 - t0, "loss": t2 - t1, "backward": t3 - t2, "total": t3 - t0}


AREAS = (  # (label, substring of the profiled function's file or name), first match wins
    ("gradest: dependency tracking (graph/dependencies.py)", "gradest/graph/dependencies.py"),
    ("gradest: elimination (graph/marginal.py, eliminate.py)", "gradest/graph/marginal.py"),
    ("gradest: elimination (graph/marginal.py, eliminate.py)", "gradest/graph/eliminate.py"),
    ("gradest: sample/observe/loss bookkeeping (graph/graph.py, compose.py, checks.py)", "gradest/graph/"),
    ("gradest: Enumerate, validation (estimators/, _validation.py)", "gradest/"),
    ("torch.distributions (the user's objects, and the copies the graph makes)", "torch/distributions"),
    ("autograd backward", "run_backward"),
    ("torch's Python layer (__torch_function__ dispatch, functional.py)", "torch/"),
    ("the user's loop itself (indexing, f-strings)", "hmm_task4.py"),
)


def _area(key: tuple[str, int, str]) -> str:
    where = f"{key[0]}:{key[2]}"
    return next((label for label, k in AREAS if k in where), "other")


def _areas(stats: dict) -> dict[str, float]:
    """Self time by area; a built-in function's (a torch op's) is credited to its callers' areas."""
    areas: dict[str, float] = {}
    for key, (_, _, tottime, _, callers) in stats.items():
        builtin = key[0] == "~" and "run_backward" not in key[2]
        share = sum(c[2] for c in callers.values()) if builtin and callers else 0.0
        if share > 0:
            for caller, c in callers.items():
                label = _area(caller)
                areas[label] = areas.get(label, 0.0) + tottime * c[2] / share
        else:
            label = _area(key)
            areas[label] = areas.get(label, 0.0) + tottime
    return dict(sorted(areas.items(), key=lambda kv: -kv[1]))


def profile(length: int = PROFILE_LENGTH, repeats: int = 5, log: Callable[[str], None] = print) -> dict:
    """Phase medians (interleaved) of the graph calls and the user's objects at ``length``, and a cProfile
    of one tracked call grouped by area (self time of each function, by its file)."""
    params, y = parameters(), observations(length)
    cases: dict[str, Callable[..., Tensor | gradest.Graph]] = {
        "forward": forward, "user objects alone": user_objects, "graph": tracked_chain,
        "graph-untracked": untracked_chain,
    }
    for fn in cases.values():
        _phases(fn, params, y)
    runs: dict[str, list[dict[str, float]]] = {c: [] for c in cases}
    for r in range(repeats):
        names = list(cases)
        for name in names[r % len(names):] + names[: r % len(names)]:
            runs[name].append(_phases(cases[name], params, y))
    phases = {c: {k: statistics.median(p[k] for p in v) for k in v[0]} for c, v in runs.items()}
    prof = cProfile.Profile()
    prof.enable()
    graph(*params, y).backward()
    prof.disable()
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in stats.values())
    top = sorted(((v[2], f"{k[0].split('site-packages/')[-1].split('benchmarks/')[-1]}:{k[1]}({k[2]})")
                  for k, v in stats.items()), reverse=True)
    out = {"length": length, "phases_s": phases, "cprofile_total_s": total, "cprofile_areas_s": _areas(stats),
           "cprofile_top": [(f"{t:.4f}", w) for t, w in top[:15]]}
    log(profile_table(out))
    return out


# ---------------------------------------------------------------------------------------------------
# Output


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__, "gradest": gradest.__version__}
    if "pyro" in sys.modules:
        out["pyro"] = sys.modules["pyro"].__version__
    return out


def table(result: dict) -> str:
    """Markdown rows; "Pyro / this" is Pyro's median CPU time over this implementation's (the speed-up)."""
    lines = ["| T | implementation | median (ms) | CPU median (ms) | / forward | CPU / forward | Pyro / this (CPU) "
             "| rounds | peak MiB | loss rel. err | grad rel. err (init, trans, locs) |", "|" + "---|" * 11]
    mem = result.get("memory", {})
    for length, block in result["timings"].items():
        pyro = block["impls"].get("pyro", {}).get("cpu_median_s")
        for name, r in block["impls"].items():
            if "skipped" in r:
                lines.append(f"| {length} | {name} | skipped: {r['skipped']} |" + " |" * 8)
                continue
            m = mem.get(length, {}).get(name, {})
            peak = f"{m['peak_mib']:.1f}" if "peak_mib" in m else "-"
            grads = ", ".join(f"{r[f'grad_{p}_rel']:.1e}" for p in ("init", "trans", "locs"))
            ratio = f"{r['ratio']:.2f}" if r.get("ratio") is not None else "-"
            cpu = f"{r['cpu_ratio']:.2f}" if r.get("cpu_ratio") is not None else "-"
            speedup = f"{pyro / r['cpu_median_s']:.2f}" if pyro else "-"
            lines.append(f"| {length} | {name} | {r['median_s'] * 1e3:.1f} | {r['cpu_median_s'] * 1e3:.1f} | {ratio} "
                         f"| {cpu} | {speedup} | {r['rounds']} | {peak} | {r['loss_rel']:.1e} | {grads} |")
    return "\n".join(lines)


def profile_table(p: dict) -> str:
    lines = [f"Phases at T = {p['length']} (median wall ms):", "",
             "| call | build (with block) | loss() | backward() | total |", "|---|---|---|---|---|"]
    for name, ph in p["phases_s"].items():
        lines.append(f"| {name} | {ph['build'] * 1e3:.1f} | {ph['loss'] * 1e3:.1f} | {ph['backward'] * 1e3:.1f} "
                     f"| {ph['total'] * 1e3:.1f} |")
    lines += ["", f"cProfile of one tracked call (self time; {p['cprofile_total_s'] * 1e3:.0f} ms in all, "
              "with the profiler's own overhead):", "", "| area | ms | share |", "|---|---|---|"]
    for label, t in p["cprofile_areas_s"].items():
        lines.append(f"| {label} | {t * 1e3:.0f} | {t / p['cprofile_total_s']:.0%} |")
    return "\n".join(lines)


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help: the defaults after each flag, the docstring as written."""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=_Help)
    p.add_argument("--impls", default=",".join(IMPLS), help="comma-separated; forward (the reference) always runs")
    p.add_argument("--lengths", help="comma-separated values of T; None: 100,1000,10000,100000 (100,300 with --quick)")
    p.add_argument("--validate-args", choices=("on", "off"), default="on",
                   help="torch.distributions (and Pyro) validation, pinned for all; on is their default")
    p.add_argument("--budget-s", type=float, default=300.0, help="time budget of the rounds at each T (s)")
    p.add_argument("--max-call-s", type=float, default=60.0,
                   help="skip an implementation at a T where one call is predicted to take longer (s)")
    p.add_argument("--rounds", type=int, help="rounds at every T; None: 21, 9, 3, 3 for 1e2..1e5, cut to --budget-s")
    p.add_argument("--memory", action="store_true", help="peak memory per (implementation, T) in subprocesses")
    p.add_argument("--profile", action="store_true", help=f"where the time goes at T={PROFILE_LENGTH}")
    p.add_argument("--quick", action="store_true", help="smoke run: 3 rounds, T = 100 and 300 unless --lengths")
    p.add_argument("--gc", choices=("on", "freeze"), default="on",
                   help="freeze: gc.freeze() after the imports, so Python's full collections (about one a call at "
                        "T=1000) skip the heap of the imported modules; for all implementations alike")
    p.add_argument("--json", metavar="PATH", help="write the results here")
    p.add_argument("--memory-child", nargs=2, metavar=("IMPL", "T"),
                   help="only time one call of IMPL at T and measure its peak memory (run in a fresh process)")
    args = p.parse_args(argv)
    on = args.validate_args == "on"
    if args.memory_child:
        _memory_child(args.memory_child[0], int(args.memory_child[1]), on)
        return 0

    torch.set_num_threads(1)
    names = [n.strip() for n in args.impls.split(",") if n.strip()]
    unknown = [n for n in names if n not in IMPLS]
    if unknown:
        p.error(f"--impls: unknown {unknown}; choose from {list(IMPLS)}")
    if REFERENCE not in names:
        names.insert(0, REFERENCE)
    for n in [n for n in names if not available(n)]:
        print(f"skipping {n}: {PEERS[n]} is not installed (pip install -c constraints.txt -e '.[bench]')")
        names.remove(n)
    for n in names:
        if n in PEERS:
            __import__(PEERS[n])
    lengths = [int(s) for s in (args.lengths or ("100,300" if args.quick else ",".join(map(str, LENGTHS)))).split(",")]
    rounds = {t: (3 if args.quick else args.rounds or ROUNDS.get(t, 3)) for t in lengths}
    set_validate_args(on)
    if args.gc == "freeze":
        gc.collect()
        gc.freeze()

    print(f"task 4: K={K}, T={lengths}, implementations {names}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s), validate_args={on}, gradest validation "
          f"{gradest.is_validation_enabled()}, gc {args.gc}, {platform.processor() or platform.machine()}")
    t0 = time.perf_counter()
    result: dict = {"config": {"K": K, "lengths": lengths, "validate_args": on, "gc": args.gc,
                               "budget_s": args.budget_s, "max_call_s": args.max_call_s, "versions": versions()}}
    result["timings"] = measure(names, lengths, budget_s=args.budget_s, max_call_s=args.max_call_s, rounds=rounds)
    if args.memory:
        result["memory"] = memory(names, lengths, result["timings"], on)
    print(table(result))
    if args.profile:
        result["profile"] = profile(100 if args.quick else PROFILE_LENGTH, 2 if args.quick else 5)
    result["elapsed_s"] = time.perf_counter() - t0
    print(f"elapsed {result['elapsed_s']:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
