"""Benchmark task 2 (shared/BENCHMARKS-SPEC.md): GAE on time-major [T, B] tensors.

Data (float32, one generator seeded per size): ``reward = randn(T, B)``, ``values_ext = randn(T+1, B)``,
``value = values_ext[:-1]``, ``next_value = values_ext[1:]``, ``done = rand(T, B) < 0.01`` (terminated);
γ = 0.99, λ = 0.95; sizes (T, B) = (128, 8), (1000, 64), (10000, 16).

Every implementation computes the advantages of that data, in one process, interleaved call by call
(A B C A B C ..., the order rotated every round, after a warm-up round), on one thread
(``OMP_NUM_THREADS=1`` is set before numpy and torch load, and ``torch.set_num_threads(1)``). Every
``k`` rounds (k = the number of implementations) the cyclic order itself is reshuffled (seeded):
rotation alone keeps each implementation behind the same neighbour, and a call right after CleanRL's
loop was measured ~0.1 ms slower on the reference machine (caches and the allocator are cold). Each
implementation gets its inputs in its own layout, prepared outside the timed call. Reported: the
median time per call, its ratio to gradest, the largest absolute error against a float64 loop
(``correct`` means at most 1e-5), and the memory floor: 17 bytes per element (reward, value,
next_value, output: 4 B each; done: 1 B) at the bandwidth of a same-size ``clone()`` (timed warm, in
a tight loop, since it measures the machine rather than an implementation).

Implementations (``--impls``, comma-separated; gradest always runs):

    gradest          gradest.rl.gae (validation on, its default)
    gradest-noval    gradest.rl.gae after gradest.set_validation(False): no check that syncs (NaN/±inf
                     values, steps both terminated and truncated); the switch is flipped inside the
                     timed call, two Python calls
    gradest-bt       gradest.rl.gae on TorchRL's batch-major layout [B, T, 1], time_dim=-2 (views, no copy)
    cleanrl          reversed torch loop, as in CleanRL's ppo.py
    sb3              Stable-Baselines3 RolloutBuffer.compute_returns_and_advantage (numpy loop)
    torchrl          TorchRL generalized_advantage_estimate (torch loop)
    torchrl-vec      TorchRL vec_generalized_advantage_estimate (vectorised)
    lfilter          scipy.signal.lfilter on float64 deltas: ignores episode ends (a speed reference)

Peers that are not installed, or fail to import, are skipped with a note.

Run (a few minutes on a 2-core CPU):

    .venv/bin/python benchmarks/rl_gae.py --json rl_gae.json
"""

from __future__ import annotations

import os

if __name__ == "__main__":  # one thread, set before numpy and torch load (not when imported by tests)
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"

import argparse  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

import gradest  # noqa: E402
from gradest.rl import gae  # noqa: E402

GAMMA, LAMBDA = 0.99, 0.95
SIZES = ((128, 8), (1000, 64), (10000, 16))
DONE_RATE = 0.01
TOLERANCE = 1e-5  # largest absolute error against the float64 loop
BYTES_PER_ELEMENT = 17  # reward, value, next_value, advantage (4 B each) + done (1 B)
SEED = 0  # torch.Generator().manual_seed(SEED + size index)
BUDGET_S = {128: 20.0, 1000: 40.0, 10000: 60.0}  # time per size; rounds = what fits, in [MIN, MAX]
MIN_ROUNDS, MAX_ROUNDS = 11, 2001

IMPLS = ("gradest", "gradest-noval", "gradest-bt", "cleanrl", "sb3", "torchrl", "torchrl-vec", "lfilter")
PEERS = {"sb3": "stable_baselines3", "torchrl": "torchrl", "torchrl-vec": "torchrl", "lfilter": "scipy.signal"}
HANDLES_DONES = {"gradest": True, "gradest-noval": True, "gradest-bt": True, "cleanrl": True, "sb3": True,
                 "torchrl": True, "torchrl-vec": True, "lfilter": False}


class Data:
    """One size's inputs, in the layout the spec fixes."""

    def __init__(self, steps: int, batch: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.reward = torch.randn(steps, batch, generator=g)
        values_ext = torch.randn(steps + 1, batch, generator=g)
        self.value = values_ext[:-1]
        self.next_value = values_ext[1:]
        self.done = torch.rand(steps, batch, generator=g) < DONE_RATE


def reference(d: Data) -> Tensor:
    """The float64 loop everything is checked against."""
    r, v, nv = d.reward.double(), d.value.double(), d.next_value.double()
    nonterminal = 1.0 - d.done.double()
    out = torch.empty_like(r)
    last = torch.zeros_like(r[0])
    for t in range(r.shape[0] - 1, -1, -1):
        delta = r[t] + GAMMA * nv[t] * nonterminal[t] - v[t]
        last = delta + GAMMA * LAMBDA * nonterminal[t] * last
        out[t] = last
    return out


# ---------------------------------------------------------------------------------------------------
# Implementations: each ``make(d)`` prepares inputs in its own layout (untimed) and returns the timed
# call, which returns the advantages as something ``np.asarray`` / ``torch.as_tensor`` accepts, [T, B].


def make_gradest(d: Data) -> Callable[[], Tensor]:
    r, v, nv, done = d.reward, d.value, d.next_value, d.done

    def call() -> Tensor:
        return gae(rewards=r, values=v, next_values=nv, terminated=done, gamma=GAMMA, lambda_=LAMBDA)

    return call


def make_gradest_noval(d: Data) -> Callable[[], Tensor]:
    r, v, nv, done = d.reward, d.value, d.next_value, d.done

    def call() -> Tensor:
        gradest.set_validation(False)
        try:
            return gae(rewards=r, values=v, next_values=nv, terminated=done, gamma=GAMMA, lambda_=LAMBDA)
        finally:
            gradest.set_validation(True)

    return call


def make_gradest_bt(d: Data) -> Callable[[], Tensor]:
    """The same call on TorchRL's layout [B, T, 1] (prepared outside the timed call, as for TorchRL)."""
    value, next_value, reward, done = _torchrl_inputs(d)

    def call() -> Tensor:
        adv = gae(rewards=reward, values=value, next_values=next_value, terminated=done, gamma=GAMMA, lambda_=LAMBDA,
                  time_dim=-2)
        return adv.squeeze(-1).T

    return call


def make_cleanrl(d: Data) -> Callable[[], Tensor]:
    """CleanRL's ppo.py loop: ``dones[t]`` flags the *observation* at t as the first of an episode."""
    rewards, values = d.reward.clone(), d.value.clone()
    dones = torch.cat([torch.zeros_like(d.reward[:1]), d.done[:-1].float()])
    next_value, next_done = d.next_value[-1].clone(), d.done[-1].float()
    num_steps = rewards.shape[0]

    def call() -> Tensor:
        with torch.no_grad():
            advantages = torch.zeros_like(rewards)
            lastgaelam = 0
            for t in reversed(range(num_steps)):
                if t == num_steps - 1:
                    nextnonterminal = 1.0 - next_done
                    nextvalues = next_value
                else:
                    nextnonterminal = 1.0 - dones[t + 1]
                    nextvalues = values[t + 1]
                delta = rewards[t] + GAMMA * nextvalues * nextnonterminal - values[t]
                advantages[t] = lastgaelam = delta + GAMMA * LAMBDA * nextnonterminal * lastgaelam
        return advantages

    return call


def make_sb3(d: Data) -> Callable[[], np.ndarray]:
    """A filled RolloutBuffer; the timed call is its ``compute_returns_and_advantage``."""
    from gymnasium import spaces
    from stable_baselines3.common.buffers import RolloutBuffer

    steps, batch = d.reward.shape
    box = spaces.Box(-1.0, 1.0, (1,), np.float32)
    buffer = RolloutBuffer(steps, box, box, device="cpu", gae_lambda=LAMBDA, gamma=GAMMA, n_envs=batch)
    buffer.rewards[:] = d.reward.numpy()
    buffer.values[:] = d.value.numpy()
    buffer.episode_starts[:] = np.concatenate([np.zeros((1, batch), np.float32), d.done[:-1].float().numpy()])
    last_values = d.next_value[-1].clone()
    dones = d.done[-1].numpy().copy()

    def call() -> np.ndarray:
        buffer.compute_returns_and_advantage(last_values=last_values, dones=dones)
        return buffer.advantages

    return call


def _torchrl_inputs(d: Data) -> tuple[Tensor, ...]:
    """TorchRL's layout: [B, T, 1] with time_dim=-2, contiguous."""
    return tuple(x.T.contiguous().unsqueeze(-1) for x in (d.value, d.next_value, d.reward, d.done))


def make_torchrl(d: Data) -> Callable[[], Tensor]:
    from torchrl.objectives.value.functional import generalized_advantage_estimate

    value, next_value, reward, done = _torchrl_inputs(d)

    def call() -> Tensor:
        adv, _ = generalized_advantage_estimate(GAMMA, LAMBDA, value, next_value, reward, done, done)
        return adv.squeeze(-1).T

    return call


def make_torchrl_vec(d: Data) -> Callable[[], Tensor]:
    from torchrl.objectives.value.functional import vec_generalized_advantage_estimate

    value, next_value, reward, done = _torchrl_inputs(d)

    def call() -> Tensor:
        adv, _ = vec_generalized_advantage_estimate(GAMMA, LAMBDA, value, next_value, reward, done, done)
        return adv.squeeze(-1).T

    return call


def make_lfilter(d: Data) -> Callable[[], np.ndarray]:
    """A discounted reverse filter of the float64 TD errors: fast, but it runs across episode ends."""
    from scipy.signal import lfilter

    r, v, nv = (x.double().numpy() for x in (d.reward, d.value, d.next_value))
    nonterminal = 1.0 - d.done.double().numpy()
    coeffs = np.array([1.0, -GAMMA * LAMBDA])

    def call() -> np.ndarray:
        delta = r + GAMMA * nv * nonterminal - v
        return lfilter([1.0], coeffs, delta[::-1], axis=0)[::-1]

    return call


MAKERS: dict[str, Callable[[Data], Callable[[], object]]] = {
    "gradest": make_gradest,
    "gradest-noval": make_gradest_noval,
    "gradest-bt": make_gradest_bt,
    "cleanrl": make_cleanrl,
    "sb3": make_sb3,
    "torchrl": make_torchrl,
    "torchrl-vec": make_torchrl_vec,
    "lfilter": make_lfilter,
}


def available(names: list[str], log: Callable[[str], None] = print) -> tuple[list[str], dict[str, str]]:
    """The implementations whose modules import; the others with the reason they were skipped."""
    ok, skipped = [], {}
    for name in names:
        module = PEERS.get(name)
        try:
            if module is not None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    importlib.import_module(module)
                    if name == "sb3":
                        importlib.import_module("gymnasium")
            ok.append(name)
        except Exception as e:  # noqa: BLE001 - any import failure of a peer means: skip it
            skipped[name] = f"importing {module} failed: {type(e).__name__}: {e}"
            log(f"skipping {name}: {skipped[name]}")
    return ok, skipped


# ---------------------------------------------------------------------------------------------------


def run_size(
    names: list[str], steps: int, batch: int, seed: int, rounds: int | None, budget_s: float,
    log: Callable[[str], None] = print,
) -> dict:
    d = Data(steps, batch, seed)
    ref = reference(d).numpy()
    calls = {name: MAKERS[name](d) for name in names}
    order = list(calls)
    errors = {}
    warm = {}
    for name in order:  # warm-up round, also the accuracy check
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            out = calls[name]()
            warm[name] = time.perf_counter() - t0
        errors[name] = float(np.abs(np.asarray(out, dtype=np.float64) - ref).max())
    if rounds is None:
        per_round = sum(warm.values())
        rounds = int(min(MAX_ROUNDS, max(MIN_ROUNDS, budget_s / max(per_round, 1e-9))))
    times: dict[str, list[float]] = {name: [] for name in order}
    k = len(order)
    rng = random.Random(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(rounds):
            if i % k == 0:  # a fresh order every k rounds, rotated in between (see the module doc)
                rng.shuffle(order)
            shift = i % k
            for name in order[shift:] + order[:shift]:
                fn = calls[name]
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    median = {name: statistics.median(ts) for name, ts in times.items()}
    clone = clone_time(d.reward)
    floor = clone * BYTES_PER_ELEMENT / 8  # a clone moves 8 bytes per float32 element
    out = {
        "T": steps, "B": batch, "rounds": rounds,
        "floor_ms": floor * 1e3, "clone_ms": clone * 1e3,
        "impls": {},
    }
    for name in names:
        out["impls"][name] = {
            "median_ms": median[name] * 1e3,
            "ratio_to_gradest": median[name] / median["gradest"],
            "max_abs_error": errors[name],
            "correct": errors[name] <= TOLERANCE,
            "handles_dones": HANDLES_DONES[name],
            "floor_multiple": median[name] / floor,
        }
    g = out["impls"]["gradest"]
    peers = [n for n in names if not n.startswith("gradest") and HANDLES_DONES[n]]
    if peers:
        fastest = min(peers, key=lambda n: out["impls"][n]["median_ms"])
        out["fastest_peer_with_dones"] = fastest
        out["speedup_vs_fastest_peer"] = out["impls"][fastest]["median_ms"] / g["median_ms"]
    log(
        f"T={steps} B={batch}: {rounds} rounds; gradest {g['median_ms']:.4f} ms "
        f"({g['floor_multiple']:.1f}x floor, error {g['max_abs_error']:.1e})"
        + (f"; {out['speedup_vs_fastest_peer']:.1f}x faster than {out['fastest_peer_with_dones']}" if peers else "")
    )
    return out


def clone_time(x: Tensor, repeats: int = 2000) -> float:
    """Median time of ``x.clone()`` in a tight loop: the bandwidth the memory floor is computed from."""
    x = x.clone()
    x.clone()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        x.clone()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def versions() -> dict[str, str]:
    out = {
        "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
        "gradest": gradest.__version__, "machine": platform.machine(), "processor": _cpu_name(),
    }
    for module, dist in (("stable_baselines3", "stable-baselines3"), ("torchrl", "torchrl"), ("scipy", "scipy"),
                         ("gymnasium", "gymnasium"), ("tensordict", "tensordict")):
        if module in sys.modules:
            from importlib.metadata import version

            out[dist] = version(dist)
    return out


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def table(result: dict) -> str:
    sizes = result["sizes"]
    head = "| GAE, median ms (ratio to gradest) [max abs error] | " + " | ".join(
        f"{s['T']}×{s['B']}" for s in sizes) + " |"
    lines = [head, "|---" * (1 + len(sizes)) + "|"]
    names = list(sizes[0]["impls"])
    for name in names:
        cells = [name + ("" if HANDLES_DONES[name] else " (ignores episode ends)")]
        for s in sizes:
            r = s["impls"][name]
            flag = "" if r["correct"] else ", fails 1e-5"
            cells.append(f"{r['median_ms']:.4g} ({r['ratio_to_gradest']:.3g}×) [{r['max_abs_error']:.1e}{flag}]")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("| memory floor (17 B/element at clone bandwidth) | "
                 + " | ".join(f"{s['floor_ms']:.4g}" for s in sizes) + " |")
    lines.append("| gradest / floor | " + " | ".join(f"{s['impls']['gradest']['floor_multiple']:.1f}×" for s in sizes)
                 + " |")
    if all("speedup_vs_fastest_peer" in s for s in sizes):
        lines.append("| fastest peer with episode ends / gradest | " + " | ".join(
            f"{s['speedup_vs_fastest_peer']:.1f}× ({s['fastest_peer_with_dones']})" for s in sizes) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--impls", default=",".join(IMPLS), help="comma-separated; gradest always runs")
    p.add_argument("--sizes", default=",".join(f"{t}x{b}" for t, b in SIZES), help="e.g. 128x8,1000x64")
    p.add_argument("--rounds", type=int, help="interleaved rounds per size (default: what fits the time budget)")
    p.add_argument("--budget-scale", type=float, default=1.0, help="scale the per-size time budget")
    p.add_argument("--json", metavar="PATH", help="write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    names = [n.strip() for n in args.impls.split(",") if n.strip()]
    unknown = [n for n in names if n not in MAKERS]
    if unknown:
        p.error(f"--impls: unknown {unknown}; choose from {list(IMPLS)}")
    if "gradest" not in names:
        names.insert(0, "gradest")
    names, skipped = available(names)
    sizes = []
    for spec in args.sizes.split(","):
        t, b = (int(x) for x in spec.lower().split("x"))
        sizes.append((t, b))
    print(f"task 2: {names}; torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    results = []
    for i, (t, b) in enumerate(sizes):
        budget = BUDGET_S.get(t, 30.0) * args.budget_scale
        results.append(run_size(names, t, b, SEED + i, args.rounds, budget))
    result = {
        "task": 2, "gamma": GAMMA, "lambda": LAMBDA, "tolerance": TOLERANCE,
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "versions": versions(), "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "skipped": skipped, "sizes": results,
    }
    print()
    print(table(result))
    if skipped:
        print("\nskipped: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
