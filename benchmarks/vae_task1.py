"""Benchmark task 1 (shared/BENCHMARKS-SPEC.md): a categorical VAE on scikit-learn's digits.

Every implementation trains its own copy of one model, from one initial state, on one sequence of
batches; all run in this one process, interleaved step by step (the order rotates every step), on one
thread. Three things are measured:

* step time: ``zero_grad`` + forward + backward + Adam step, median over steps 21 to the end (the first
  20 interleaved steps are the warm-up). Also reported, because a shared machine makes wall-clock
  medians noisy: the median of the per-step ratios to the reference (the steps of one round run back
  to back, so they share the machine's state), and the median of the thread's CPU time per step;
* quality: the ELBO on all 1797 images at steps 500/1000/2000 (exact KL plus a 100-sample estimate of
  E_q log p(x|z), from a generator seeded afresh for every evaluation);
* variance: at the reference run's step-500 parameters, on images 0-99, 200 independent estimates of
  the gradient of the encoder's last layer (51,400 numbers); the trace of their covariance.

Implementations (``--impls``, comma-separated; the reference ``rloo`` always runs):

    rloo             (a) minimal hand-written score-function surrogate, leave-one-out baseline, raw torch
    rloo-dist        (a) again, but sampling and log_prob through Independent(OneHotCategorical) (isolates
                     the cost of torch.distributions from the cost of gradest)
    gradest          (b) gradest.expectation(f, Independent(OneHotCategorical), ScoreFunction(LeaveOneOut()), n=4)
    gradest-noval    (b) with gradest.set_validation(False) during its steps (no NaN check)
    graph            (b) written with gradest.Graph: one node, the reconstruction cost per image
    graph-untracked  (b) with gradest.Graph(track=False): plain samples, the cost's node declared
    gumbel           (c) hand-written Gumbel-Softmax, temperature 0.5 (biased)
    pyro             (d) Pyro TraceGraph_ELBO, decaying-average baseline
    pyro-nobaseline      Pyro TraceGraph_ELBO, no baseline (Pyro's default)
    storch           (e) Storchastic ScoreFunction(baseline_factory="batch_average") (= RLOO)

Peers that are not installed are skipped with a note. torch.distributions argument validation is
switched off for all implementations (``set_default_validate_args(False)``), because importing
Storchastic switches it off for the whole process anyway. (Importing Storchastic also wraps
``Tensor.to``, ``le`` and ``gt`` and ``torch.is_tensor`` for the whole process: about 7 us more per
``.to`` call, paid alike by every implementation here, each of which calls it once a step.)

Each implementation draws from its own torch RNG stream, swapped in around its calls, all streams
seeded alike: rloo-dist and gradest draw the same samples, and rloo almost always does too. The variance
estimates use a separate, independent stream per implementation.

Run (5 to 10 minutes on a 2-core CPU; ``--quick`` for a 200-step smoke run):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/vae_task1.py --json benchmarks/vae_task1.json
"""

from __future__ import annotations

import os

if __name__ == "__main__":  # one thread, set before numpy and torch load (not when imported by tests)
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from torch.distributions import Independent, OneHotCategorical  # noqa: E402

import gradest  # noqa: E402

# ---------------------------------------------------------------------------------------------------
# The task, as the spec fixes it
STEPS = 2000  # Adam steps per implementation
BATCH = 100  # images per batch; 17 batches an epoch, the last 97 images dropped
DATA_SEED = 1  # Generator().manual_seed(1) draws one randperm per epoch
MODEL_SEED = 0  # torch.manual_seed(0) before the encoder and decoder are created
LATENTS, CATEGORIES = 20, 10  # 20 independent 10-way categoricals
N = 4  # samples of z per image
LR = 1e-3
TIME_FROM = 21  # step times: median over steps TIME_FROM..STEPS
EVAL_AT = (500, 1000, 2000)
EVAL_SAMPLES = 100  # samples of z per image in the quality estimate
EVAL_SEED = 2  # fresh Generator().manual_seed(EVAL_SEED) for every quality evaluation
VARIANCE_AT = 500  # the reference run's parameters after this many steps
VARIANCE_ESTIMATES = 200
VARIANCE_IMAGES = 100  # images 0..99
# Not fixed by the spec
SAMPLE_SEED = 12345  # every implementation's training draws start from this torch RNG state
VARIANCE_SEED = 1000  # + the implementation's index in IMPLS: independent streams for the variance
PYRO_BASELINE_WARMUP = 50  # training batches that settle Pyro's decaying average before measuring
TEMPERATURE = 0.5  # Gumbel-Softmax

IMPLS = ("rloo", "rloo-dist", "gradest", "gradest-noval", "graph", "graph-untracked", "gumbel", "pyro",
         "pyro-nobaseline", "storch")
PEERS = {"pyro": "pyro", "pyro-nobaseline": "pyro", "storch": "storch"}  # implementation -> module


# ---------------------------------------------------------------------------------------------------
# Data and model


def load_data() -> Tensor:
    """The 1797 digits, binarised ``x > 7``: ``[1797, 64]`` float32."""
    from sklearn.datasets import load_digits

    return torch.as_tensor(load_digits().data > 7, dtype=torch.float32)


def batch_indices(num_images: int, steps: int, batch: int = BATCH, seed: int = DATA_SEED) -> list[Tensor]:
    """One ``[batch]`` index tensor per step: a fresh randperm each epoch, the remainder dropped."""
    g = torch.Generator().manual_seed(seed)
    per_epoch = num_images // batch
    out: list[Tensor] = []
    while len(out) < steps:
        perm = torch.randperm(num_images, generator=g)
        out.extend(perm[: per_epoch * batch].view(per_epoch, batch))
    return out[:steps]


class VAE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, LATENTS * CATEGORIES))
        self.dec = nn.Sequential(nn.Linear(LATENTS * CATEGORIES, 256), nn.ReLU(), nn.Linear(256, 64))


def initial_state() -> dict[str, Tensor]:
    with torch.random.fork_rng():
        torch.manual_seed(MODEL_SEED)
        return {k: v.clone() for k, v in VAE().state_dict().items()}


def log_lik(dec: nn.Module, z: Tensor, x: Tensor) -> Tensor:
    """``log p(x|z)``: z ``[..., B, 20, 10]`` one-hot (or relaxed), x ``[B, 64]`` -> ``[..., B]``."""
    logits = dec(z.flatten(-2))
    return (x * logits - F.softplus(logits)).sum(-1)


def kl_uniform(log_q: Tensor) -> Tensor:
    """KL(q || uniform) from normalised log-probabilities ``[B, 20, 10]`` -> ``[B]``."""
    return (log_q.exp() * (log_q + math.log(CATEGORIES))).sum(-1).sum(-1)


def encoder_last_layer_grad(model: VAE) -> Tensor:
    """The gradient of the encoder's last layer, weight then bias, flattened: ``[51400]``."""
    layer = model.enc[2]
    return torch.cat([layer.weight.grad.flatten(), layer.bias.grad.flatten()])


@torch.no_grad()
def elbo(model: VAE, data: Tensor, samples: int = EVAL_SAMPLES, seed: int = EVAL_SEED, chunk: int = 300) -> float:
    """Mean per-image ELBO: exact KL, and E_q log p(x|z) from ``samples`` draws of a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    total = 0.0
    for start in range(0, data.shape[0], chunk):
        x = data[start : start + chunk]
        log_q = model.enc(x).view(-1, LATENTS, CATEGORIES).log_softmax(-1)
        idx = torch.multinomial(log_q.exp().view(-1, CATEGORIES), samples, True, generator=g)
        z = F.one_hot(idx.T.reshape(samples, -1, LATENTS), CATEGORIES).to(log_q.dtype)
        total += float((log_lik(model.dec, z, x).mean(0) - kl_uniform(log_q)).sum())
    return total / data.shape[0]


# ---------------------------------------------------------------------------------------------------
# Implementations. Each owns a model copy and an Adam; ``backward(x)`` is forward + backward of the
# per-image negative ELBO averaged over the batch, with N samples of z per image.


class Impl:
    name = ""

    def __init__(self, state: dict[str, Tensor]) -> None:
        with torch.random.fork_rng():  # the initialisation is overwritten; leave the global stream alone
            self.model = VAE()
        self.model.load_state_dict(state)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=LR)

    def backward(self, x: Tensor) -> None:
        raise NotImplementedError

    def grad(self, x: Tensor) -> None:
        self.opt.zero_grad()
        self.backward(x)

    def step(self, x: Tensor) -> None:
        self.opt.zero_grad()
        self.backward(x)
        self.opt.step()


class HandRLOO(Impl):
    """(a) The reference: a minimal hand-written score-function surrogate with RLOO, raw torch ops."""

    name = "rloo"

    def backward(self, x: Tensor) -> None:
        log_q = self.model.enc(x).view(-1, LATENTS, CATEGORIES).log_softmax(-1)  # [B, 20, 10]
        with torch.no_grad():
            idx = torch.multinomial(log_q.exp().view(-1, CATEGORIES), N, True).T.reshape(N, -1, LATENTS)
        z = F.one_hot(idx, CATEGORIES).to(log_q.dtype)  # [N, B, 20, 10]
        lq = (z * log_q).sum(-1).sum(-1)  # [N, B]
        f = -log_lik(self.model.dec, z, x)  # [N, B]
        fd = f.detach()
        b = (fd.sum(0) - fd) / (N - 1)
        surrogate = f + (fd - b) * (lq - lq.detach())  # value f, gradient ∇f + (f - b)∇log q
        (surrogate.mean(0) + kl_uniform(log_q)).mean().backward()


class HandRLOODist(Impl):
    """(a) with sampling and log_prob through the same distribution object gradest is given."""

    name = "rloo-dist"

    def backward(self, x: Tensor) -> None:
        q = Independent(OneHotCategorical(logits=self.model.enc(x).view(-1, LATENTS, CATEGORIES)), 1)
        z = q.sample((N,))
        lq = q.log_prob(z)
        f = -log_lik(self.model.dec, z, x)
        fd = f.detach()
        b = (fd.sum(0) - fd) / (N - 1)
        surrogate = f + (fd - b) * (lq - lq.detach())
        (surrogate.mean(0) + kl_uniform(q.base_dist.logits)).mean().backward()


class Gradest(Impl):
    """(b) gradest.expectation with ScoreFunction(LeaveOneOut())."""

    name = "gradest"
    validation: bool | None = None  # None: leave gradest's default

    def __init__(self, state: dict[str, Tensor]) -> None:
        super().__init__(state)
        self.estimator = gradest.ScoreFunction(gradest.LeaveOneOut())

    def backward(self, x: Tensor) -> None:
        dec = self.model.dec
        q = Independent(OneHotCategorical(logits=self.model.enc(x).view(-1, LATENTS, CATEGORIES)), 1)
        s = gradest.expectation(lambda z: -log_lik(dec, z, x), q, self.estimator, n=N)  # [B]
        (s + kl_uniform(q.base_dist.logits)).mean().backward()

    def grad(self, x: Tensor) -> None:
        with _gradest_validation(self.validation):
            super().grad(x)

    def step(self, x: Tensor) -> None:
        with _gradest_validation(self.validation):
            super().step(x)


class GradestNoValidation(Gradest):
    name = "gradest-noval"
    validation = False


class GradestGraph(Gradest):
    """(b) as a one-node ``gradest.Graph``: the loss sums the costs, so each image's cost is divided by B."""

    name = "graph"

    def backward(self, x: Tensor) -> None:
        dec = self.model.dec
        q = Independent(OneHotCategorical(logits=self.model.enc(x).view(-1, LATENTS, CATEGORIES)), 1)
        with gradest.Graph() as g:
            z = g.sample("z", q, self.estimator, n=N)
            g.cost(-log_lik(dec, z, x) / x.shape[0], name="reconstruction")
        (g.loss() + kl_uniform(q.base_dist.logits).mean()).backward()


class GradestGraphUntracked(Gradest):
    """(b) as a one-node ``gradest.Graph(track=False)``: plain samples, the cost's node declared."""

    name = "graph-untracked"

    def backward(self, x: Tensor) -> None:
        dec = self.model.dec
        q = Independent(OneHotCategorical(logits=self.model.enc(x).view(-1, LATENTS, CATEGORIES)), 1)
        with gradest.Graph(track=False) as g:
            z = g.sample("z", q, self.estimator, n=N)
            g.cost(-log_lik(dec, z, x) / x.shape[0], name="reconstruction", depends_on="z")
        (g.loss() + kl_uniform(q.base_dist.logits).mean()).backward()


class _gradest_validation:
    def __init__(self, enabled: bool | None) -> None:
        self.enabled = enabled

    def __enter__(self) -> None:
        self.old = gradest.is_validation_enabled()
        if self.enabled is not None:
            gradest.set_validation(self.enabled)

    def __exit__(self, *exc: object) -> None:
        gradest.set_validation(self.old)


class HandGumbel(Impl):
    """(c) Hand-written Gumbel-Softmax relaxation (biased), temperature 0.5."""

    name = "gumbel"

    def backward(self, x: Tensor) -> None:
        log_q = self.model.enc(x).view(-1, LATENTS, CATEGORIES).log_softmax(-1)
        gumbel = -torch.empty((N,) + log_q.shape).exponential_().log()
        z = ((log_q + gumbel) / TEMPERATURE).softmax(-1)
        f = -log_lik(self.model.dec, z, x)
        (f.mean(0) + kl_uniform(log_q)).mean().backward()


class PyroTraceGraph(Impl):
    """(d) Pyro TraceGraph_ELBO. Pyro's ELBO samples log p(z) - log q(z) too (it has no analytic KL for
    this objective), so that term sits inside its estimator; everything is scaled by 1/B to give the
    per-image mean. Site and parameter names are unique per instance (Pyro's param store is global)."""

    name = "pyro"
    decaying_average = True
    _count = 0

    def __init__(self, state: dict[str, Tensor]) -> None:
        super().__init__(state)
        import pyro
        import pyro.distributions as pdist
        from pyro import poutine
        from pyro.infer import TraceGraph_ELBO

        PyroTraceGraph._count += 1
        tag = f"{self.name}{PyroTraceGraph._count}"
        site = f"z_{tag}"
        infer = {"baseline": {"use_decaying_avg_baseline": True}} if self.decaying_average else {}
        enc, dec = self.model.enc, self.model.dec
        prior_logits = torch.zeros(BATCH, LATENTS, CATEGORIES)

        def model(x: Tensor) -> None:
            pyro.module(f"dec_{tag}", dec)
            b = x.shape[0]
            with pyro.plate(f"data_{tag}", b), poutine.scale(scale=1.0 / b):
                z = pyro.sample(site, pdist.OneHotCategorical(logits=prior_logits[:b]).to_event(1))
                pyro.sample(f"x_{tag}", pdist.Bernoulli(logits=dec(z.flatten(-2))).to_event(1), obs=x)

        def guide(x: Tensor) -> None:
            pyro.module(f"enc_{tag}", enc)
            b = x.shape[0]
            with pyro.plate(f"data_{tag}", b), poutine.scale(scale=1.0 / b):
                logits = enc(x).view(b, LATENTS, CATEGORIES)
                pyro.sample(site, pdist.OneHotCategorical(logits=logits).to_event(1), infer=infer)

        self._model, self._guide = model, guide
        self._store = pyro.get_param_store()
        self._baseline = f"__baseline_avg_downstream_cost_{site}"  # where Pyro keeps the decaying average
        self.elbo = TraceGraph_ELBO(num_particles=N, vectorize_particles=True, max_plate_nesting=1)

    def baseline_state(self) -> Tensor:
        return self._store[self._baseline].detach().clone()

    def set_baseline_state(self, value: Tensor) -> None:
        self._store[self._baseline] = value.clone()

    def backward(self, x: Tensor) -> None:
        self.elbo.loss_and_grads(self._model, self._guide, x)


class PyroNoBaseline(PyroTraceGraph):
    name = "pyro-nobaseline"
    decaying_average = False


class Storch(Impl):
    """(e) Storchastic ScoreFunction with the batch-average (leave-one-out) baseline."""

    name = "storch"

    def __init__(self, state: dict[str, Tensor]) -> None:
        super().__init__(state)
        import storch
        from storch.method import ScoreFunction

        self.storch = storch
        self.method = ScoreFunction("z", n_samples=N, baseline_factory="batch_average")

    def backward(self, x: Tensor) -> None:
        storch = self.storch
        xs = storch.denote_independent(x, 0, "data")
        logits = self.model.enc(xs)
        logits = logits.reshape(logits.shape[:-1] + (LATENTS, CATEGORIES))
        q = OneHotCategorical(logits=logits)
        z = self.method(q)
        storch.add_cost(kl_uniform(logits.log_softmax(-1)), "kl")
        storch.add_cost(-log_lik(self.model.dec, z, xs), "reconstruction")
        storch.backward()


CLASSES: dict[str, type[Impl]] = {
    c.name: c
    for c in (
        HandRLOO, HandRLOODist, Gradest, GradestNoValidation, GradestGraph, GradestGraphUntracked, HandGumbel,
        PyroTraceGraph, PyroNoBaseline, Storch,
    )
}


def available(name: str) -> bool:
    module = PEERS.get(name)
    if module is None:
        return True
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


# ---------------------------------------------------------------------------------------------------
# Running interleaved


class Runner:
    """An implementation with its own torch RNG stream, swapped in around each of its calls."""

    def __init__(self, impl: Impl, seed: int) -> None:
        self.impl = impl
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.rng = torch.get_rng_state()
        self.times: list[float] = []  # wall-clock seconds per step
        self.cpu_times: list[float] = []  # this thread's CPU seconds per step (blind to time spent descheduled)

    def call(self, fn: Callable[[Tensor], None], x: Tensor) -> tuple[float, float]:
        outer = torch.get_rng_state()
        torch.set_rng_state(self.rng)
        c0, t0 = time.thread_time(), time.perf_counter()
        fn(x)
        dt, dc = time.perf_counter() - t0, time.thread_time() - c0
        self.rng = torch.get_rng_state()
        torch.set_rng_state(outer)
        return dt, dc


def train(
    names: list[str],
    data: Tensor,
    steps: int,
    *,
    eval_at: tuple[int, ...] = EVAL_AT,
    variance_at: int | None = VARIANCE_AT,
    eval_samples: int = EVAL_SAMPLES,
    log: Callable[[str], None] = print,
) -> tuple[dict[str, Runner], dict[str, dict[int, float]], dict[str, Tensor] | None]:
    """Train every implementation from the same state, interleaved one step at a time.

    Returns the runners (with step times), ELBOs by step, and the reference's parameters at
    ``variance_at`` (None when that step is not reached or the reference is not among ``names``).
    """
    state = initial_state()
    runners = {name: Runner(CLASSES[name](state), SAMPLE_SEED) for name in names}
    batches = batch_indices(data.shape[0], steps)
    quality: dict[str, dict[int, float]] = {name: {} for name in names}
    reference_state = None
    k = len(names)
    t_start = time.perf_counter()
    for step, idx in enumerate(batches, start=1):
        x = data[idx]
        shift = step % k
        for name in names[shift:] + names[:shift]:
            r = runners[name]
            dt, dc = r.call(r.impl.step, x)
            r.times.append(dt)
            r.cpu_times.append(dc)
        if step == variance_at and "rloo" in runners:
            reference_state = {n: v.clone() for n, v in runners["rloo"].impl.model.state_dict().items()}
        if step in eval_at:
            for name in names:
                quality[name][step] = elbo(runners[name].impl.model, data, eval_samples)
            row = "  ".join(f"{n} {quality[n][step]:.2f}" for n in names)
            log(f"step {step:5d} ({time.perf_counter() - t_start:6.1f} s)  ELBO: {row}")
    return runners, quality, reference_state


def gradient_variance(
    name: str,
    state: dict[str, Tensor],
    x: Tensor,
    estimates: int,
    seed: int,
    warmup: list[Tensor],
    *,
    adapt: bool = False,
) -> tuple[float, Tensor]:
    """Trace of the covariance of ``estimates`` independent gradient estimates of the encoder's last
    layer at parameters ``state`` on images ``x``, and their mean.

    Pyro's decaying-average baseline is state that training carries: it is settled by gradient
    evaluations on the training batches ``warmup`` (those just before the reference step) at these
    parameters, then frozen, i.e. restored before every estimate. Left to run on the one fixed batch x,
    it would learn each batch position's own image and act as an oracle per-image baseline that
    training never has (and the estimates would no longer be independent); ``adapt=True`` measures that
    case too, settling the average on x itself and letting it run."""
    impl = CLASSES[name](state)
    runner = Runner(impl, seed)
    frozen = None
    if isinstance(impl, PyroTraceGraph) and impl.decaying_average:
        for xb in warmup:
            runner.call(impl.grad, xb)
        if not adapt:
            frozen = impl.baseline_state()
    grads = torch.empty(estimates, 256 * LATENTS * CATEGORIES + LATENTS * CATEGORIES, dtype=torch.float64)
    for i in range(estimates):
        if frozen is not None:
            impl.set_baseline_state(frozen)
        runner.call(impl.grad, x)
        grads[i] = encoder_last_layer_grad(impl.model)
    return float(grads.var(0).sum()), grads.mean(0)


# ---------------------------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__, "gradest": gradest.__version__}
    for module in ("pyro", "storch", "sklearn", "numpy"):
        if module in sys.modules:
            out[module] = getattr(sys.modules[module], "__version__", "?")
    if "storch" in sys.modules:
        from importlib.metadata import version

        out["storch"] = version("storchastic")
    return out


def table(result: dict) -> str:
    steps = result["config"]["eval_at"]
    head = "| implementation | median step (ms) | step time / (a) | paired / (a) | CPU time / (a) | "
    head += " | ".join(f"ELBO @{s}" for s in steps) + " | grad-variance trace | trace / (a) |"
    lines = [head, "|" + "---|" * (7 + len(steps))]
    for name, r in result["impls"].items():
        cells = [name, f"{r['median_step_ms']:.3f}", f"{r['step_time_ratio']:.3f}"]
        cells += [f"{r['paired_step_time_ratio']:.3f}", f"{r['step_cpu_time_ratio']:.3f}"]
        cells += [f"{r['elbo'][str(s)]:.2f}" for s in steps]
        v = r.get("variance_trace")
        cells += [f"{v:.4g}" if v is not None else "-", f"{r['variance_ratio']:.3f}" if v is not None else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, help=f"Adam steps (default {STEPS}; 200 with --quick)")
    p.add_argument("--impls", default=",".join(IMPLS), help="comma-separated; rloo (the reference) always runs")
    p.add_argument("--variance-estimates", type=int, help=f"default {VARIANCE_ESTIMATES}; 50 with --quick")
    p.add_argument("--quick", action="store_true", help="a smoke run: 200 steps, 50 variance estimates")
    p.add_argument("--json", metavar="PATH", help="write the results here")
    args = p.parse_args(argv)
    if args.steps is None:
        args.steps = 200 if args.quick else STEPS
    if args.variance_estimates is None:
        args.variance_estimates = 50 if args.quick else VARIANCE_ESTIMATES
    if args.steps < 1 or args.variance_estimates < 2:
        p.error(f"--steps={args.steps} must be >= 1 and --variance-estimates={args.variance_estimates} >= 2")

    torch.set_num_threads(1)
    torch.distributions.Distribution.set_default_validate_args(False)  # pinned for all (see docstring)

    names = [n.strip() for n in args.impls.split(",") if n.strip()]
    unknown = [n for n in names if n not in CLASSES]
    if unknown:
        p.error(f"--impls: unknown {unknown}; choose from {list(IMPLS)}")
    if "rloo" not in names:
        names.insert(0, "rloo")
    skipped = [n for n in names if not available(n)]
    for n in skipped:
        print(f"skipping {n}: {PEERS[n]} is not installed (pip install -c constraints.txt -e '.[bench]')")
    names = [n for n in names if n not in skipped]
    for n in names:  # import the peers now, so that an import failure skips them and none is timed
        if n in PEERS:
            try:
                importlib.import_module(PEERS[n])
            except Exception as e:  # noqa: BLE001 - any import failure of a peer means: skip it
                print(f"skipping {n}: importing {PEERS[n]} failed: {type(e).__name__}: {e}")
                skipped.append(n)
    names = [n for n in names if n not in skipped]
    torch.distributions.Distribution.set_default_validate_args(False)

    data = load_data()
    steps = args.steps
    eval_at = tuple(sorted({s for s in EVAL_AT if s <= steps} | {steps}))
    variance_at = min(VARIANCE_AT, steps)
    print(
        f"task 1: {len(names)} implementations x {steps} steps, interleaved; torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), gradest validation {gradest.is_validation_enabled()}"
    )
    runners, quality, ref_state = train(names, data, steps, eval_at=eval_at, variance_at=variance_at)
    assert ref_state is not None

    x0 = data[:VARIANCE_IMAGES]
    batches = batch_indices(data.shape[0], variance_at)
    warmup = [data[idx] for idx in batches[max(0, variance_at - PYRO_BASELINE_WARMUP) :]]
    variance: dict[str, tuple[float, Tensor]] = {}
    for name in names:
        t0 = time.perf_counter()
        seed = VARIANCE_SEED + IMPLS.index(name)
        variance[name] = gradient_variance(name, ref_state, x0, args.variance_estimates, seed, warmup)
        print(f"variance {name}: trace {variance[name][0]:.4g} ({time.perf_counter() - t0:.1f} s)")
    adapted = {}  # Pyro's decaying average left to learn the fixed batch (see gradient_variance)
    for name in names:
        if name == "pyro":
            seed = VARIANCE_SEED + IMPLS.index(name)
            trace, _ = gradient_variance(name, ref_state, x0, args.variance_estimates, seed, [x0] * 50, adapt=True)
            adapted[name] = trace
            print(f"variance {name}, baseline adapting on the fixed batch: trace {trace:.4g}")

    first = min(TIME_FROM, steps) - 1
    medians = {n: statistics.median(r.times[first:]) for n, r in runners.items()}
    quartiles = {n: statistics.quantiles(r.times[first:], n=4)[::2] for n, r in runners.items()}
    cpu_medians = {n: statistics.median(r.cpu_times[first:]) for n, r in runners.items()}
    ref_trace, ref_mean = variance["rloo"]
    result = {
        "task": "categorical VAE (BENCHMARKS-SPEC.md task 1)",
        "config": {
            "steps": steps,
            "timed_steps": f"{first + 1}..{steps}",
            "eval_at": list(eval_at),
            "variance_at": variance_at,
            "variance_estimates": args.variance_estimates,
            "threads": torch.get_num_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "torch_distributions_validate_args": torch.distributions.Distribution._validate_args,
            "gradest_validation_default": gradest.is_validation_enabled(),
            "skipped": skipped,
        },
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
        "versions": versions(),
        "impls": {},
    }
    for n in names:
        trace, mean = variance[n]
        noise = math.sqrt((trace + ref_trace) / args.variance_estimates)
        result["impls"][n] = {
            "median_step_ms": medians[n] * 1e3,
            "quartiles_step_ms": [q * 1e3 for q in quartiles[n]],
            "step_time_ratio": medians[n] / medians["rloo"],
            # the same comparison paired step by step (each step's times were taken back to back)
            "paired_step_time_ratio": statistics.median(
                t / t_ref for t, t_ref in zip(runners[n].times[first:], runners["rloo"].times[first:])
            ),
            # CPU time of the thread: what the step costs, without the time a shared machine takes away
            "median_step_cpu_ms": cpu_medians[n] * 1e3,
            "step_cpu_time_ratio": cpu_medians[n] / cpu_medians["rloo"],
            "elbo": {str(s): quality[n][s] for s in eval_at},
            "variance_trace": trace,
            "variance_ratio": trace / ref_trace,
            # ||mean gradient - reference's mean||, and the size that difference has from noise alone
            "mean_grad_diff": float((mean - ref_mean).norm()),
            "mean_grad_diff_noise": noise,
            "mean_grad_norm": float(mean.norm()),
        }
        if n in adapted:
            result["impls"][n]["variance_trace_baseline_adapting_on_batch"] = adapted[n]
            result["impls"][n]["variance_ratio_baseline_adapting_on_batch"] = adapted[n] / ref_trace
    print()
    print(table(result))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
