"""Benchmark: the binary VAE of the ARM and DisARM papers on static binarized MNIST, scaled down.

The model (Yin & Zhou 2019; Dong et al. 2020, "linear"): an encoder ``Linear(784, 200)`` giving the
logits of q(z|x) over 200 independent Bernoulli latents, a decoder ``Linear(200, 784)`` giving the
logits of p(x|z), and a learned factorised Bernoulli prior p(z). Batch 50, Adam. Every estimator
maximises the ELBO E_q[f(z)] with f(z) = log p(x|z) + log p(z) − log q(z|x); q's logits enter f
stopped (the dropped term −∇φ log q has mean zero), so the encoder's gradient comes entirely from the
estimator, alike for all of them. The encoder sees x minus the training mean; the decoder's bias starts
at the logit of the training mean.

Estimators (each with 2 evaluations of f per image and step, as in the papers):

    reinforce   ScoreFunction(), n=2 (no baseline)
    rloo        ScoreFunction(LeaveOneOut()), n=2
    arm         ARM(), n=1 (one antithetic pair)
    disarm      DisARM(), n=1
    rebar       REBAR(temperature=0.5, eta=1.0), n=1 (f at b, σ(z/τ), σ(z̃/τ): 3 evaluations)
    rebar-learn REBAR(temperature=0.5, eta=1.0, learn=True), n=1: the same 3 evaluations, with η and
                log τ trained on the estimator's variance in the same backward (Tucker et al. 2017,
                §3.3), as RELAX trains its control
    relax       RELAX(RelaxControl()), n=1: c(z) = η·cost(σ(z/τ)) + r(σ(z)), η, log τ and a 200-50-1
                tanh network r learned by the variance loss (f at b, plus 2 evaluations in the control)
    gumbel      GumbelSoftmax(0.5), n=2 (biased: f at relaxed points)
    unordered   UnorderedSet(2), n=1: one set of 2 distinct joint states of the 200 bits, drawn by
                stochastic beam search (2 evaluations of f)

REBAR, RELAX and UnorderedSet come from modules other engineers wrote (gradest.estimators.rebar_relax,
.unordered); an estimator whose module is missing is skipped with a note.

Implementations of each: ``gradest`` (``gradest.expectation``), ``hand`` (a minimal hand-written
surrogate in raw torch, the reference for the overhead ratio) and ``storch`` (Storchastic's method,
where it has one and is installed; timing only). Storchastic's versions are not all the same
estimator: its REBAR also learns τ and η, its RELAX uses its own control network, and its DisARM fails
with a data plate (``comp_estimator`` indexes with ``None`` where ``slice(None)`` is meant), which the
run reports as a failure.

Measured, in one process, on one thread (OMP_NUM_THREADS=1 before torch loads):

(a) encoder-gradient variance at fixed parameter snapshots: the parameters of the reference run
    (gradest DisARM) after given steps; every estimator, at the same parameters, on the same fixed
    batch of 50 training images, gives R independent estimates of the gradient of the encoder's
    weight and bias (157,000 numbers); reported: the trace of their covariance, its standard error
    (from G disjoint groups), and ||mean − mean(DisARM)|| against the size noise alone gives it;
    RELAX's control, which its own run trains alongside the model, is first trained alone for up to
    300 batches at the snapshot's parameters, and so are rebar-learn's η and τ (the rebar row keeps
    τ = 0.5 and η = 1 fixed; rebar-learn tunes them online, as the paper does);
(b) the ELBO on the first 10,000 training images and on the 10,000 test images (exact KL + a
    10-sample reconstruction term) after a fixed step budget, and the 100-sample importance-weighted
    bound on the test set (``gradest.iwae_bound``);
(c) step time (zero_grad + forward + backward + Adam step), all implementations interleaved step by
    step with a rotating order: median wall time from step 21, the median of the per-step ratios to
    the hand-written version of the same estimator (paired), and thread CPU time. ``--timing-only``
    measures (c) alone: the same interleaved training run, without the ELBO evaluations along it,
    the snapshots, (a) and (b).

Data: ``../shared/data/binarized_mnist/`` (the static binarization of Salakhutdinov & Murray 2008, as
the ARM paper used; see its README). ``--data`` points elsewhere. Nothing in gradest needs it.

Run (a quarter of an hour or more on a 2-core CPU; ``--timing-only`` for (c) alone, ``--quick`` for a
smoke run):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/binary_vae.py --json benchmarks/binary_vae.json \
        --figure benchmarks/binary_vae.png

References:
    Yin & Zhou (2019). ARM: Augment-REINFORCE-Merge Gradient for Stochastic Binary Networks. ICLR.
    arXiv:1807.11143.
    Dong et al. (2020). DisARM: An Antithetic Gradient Estimator for Binary Latent Variables. NeurIPS.
    arXiv:2006.10680.
"""

from __future__ import annotations

import os

if __name__ == "__main__":  # one thread, set before numpy and torch load (not when imported by tests)
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"

import argparse  # noqa: E402
import importlib  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from torch.distributions import Bernoulli, Independent  # noqa: E402

import gradest  # noqa: E402
from gradest import iwae_bound  # noqa: E402

# ---------------------------------------------------------------------------------------------------
# The task
PIXELS, LATENTS = 784, 200
BATCH = 50
LR = 1e-3  # the papers use 1e-4 over ~10^6 steps; a budget of minutes needs a larger step
STEPS = 3000
TIME_FROM = 21  # step times: median over steps TIME_FROM..STEPS (the first 20 are warm-up)
EVAL_POINTS = 6  # ELBO curve: evaluations spread over the run (the last at STEPS)
EVAL_TRAIN_IMAGES = 10_000  # train ELBO on the first 10,000 training images
EVAL_SAMPLES = 10  # reconstruction-term samples per image in the ELBO
BOUND_SAMPLES = 100  # the importance-weighted test bound
EVAL_SEED = 2
SNAPSHOTS = (100, 1000, 3000)  # steps of the reference run whose parameters the variance is taken at
VARIANCE_ESTIMATES = 400
VARIANCE_GROUPS = 10
VARIANCE_IMAGES = 50  # training images 0..49
CONTROL_WARMUP = 300  # batches that train RELAX's control alone at a snapshot's parameters
TEMPERATURE = 0.5  # Gumbel-Softmax
REBAR_TEMPERATURE = 0.5  # REBAR's (gradest's default), and rebar-learn's initial τ
DATA_SEED, MODEL_SEED, SAMPLE_SEED, VARIANCE_SEED = 1, 0, 12345, 1000
REFERENCE = "disarm"  # its gradest run supplies the snapshots; variance ratios are to it
DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "binarized_mnist"

ESTIMATORS = ("reinforce", "rloo", "arm", "disarm", "rebar", "rebar-learn", "relax", "gumbel", "unordered")
PEER_MODULES = {  # estimators other engineers add; used when present
    "rebar": "gradest.estimators.rebar_relax",
    "rebar-learn": "gradest.estimators.rebar_relax",
    "relax": "gradest.estimators.rebar_relax",
    "unordered": "gradest.estimators.unordered",
}
KINDS = ("gradest", "hand", "storch")  # also "noval": gradest with validation off (opt-in)


# ---------------------------------------------------------------------------------------------------
# Data and model


def load_binarized_mnist(data_dir: Path = DATA_DIR) -> tuple[Tensor, Tensor]:
    """The static binarized MNIST train (50,000) and test (10,000) splits as ``[N, 784]`` float32."""
    out = []
    for split in ("train", "test"):
        path = Path(data_dir) / f"binarized_mnist_{split}.packbits.npy"
        if not path.exists():
            raise FileNotFoundError(
                f"binary_vae: {path} is missing; pass --data DIR with the binarized_mnist_*.packbits.npy "
                "files (see ../shared/data/binarized_mnist/README.md)."
            )
        out.append(torch.from_numpy(np.unpackbits(np.load(path), axis=1)).float())
    return out[0], out[1]


def batch_indices(num_images: int, steps: int, batch: int = BATCH, seed: int = DATA_SEED) -> list[Tensor]:
    """One ``[batch]`` index tensor per step: a fresh permutation each epoch, the remainder dropped."""
    g = torch.Generator().manual_seed(seed)
    per_epoch = num_images // batch
    out: list[Tensor] = []
    while len(out) < steps:
        perm = torch.randperm(num_images, generator=g)
        out.extend(perm[: per_epoch * batch].view(per_epoch, batch))
    return out[:steps]


class BinaryVAE(nn.Module):
    """Linear 784-200-784 with 200 Bernoulli latents and a learned factorised Bernoulli prior."""

    offset: Tensor

    def __init__(self, mean: Tensor) -> None:
        super().__init__()
        self.enc = nn.Linear(PIXELS, LATENTS)
        self.dec = nn.Linear(LATENTS, PIXELS)
        self.prior_logits = nn.Parameter(torch.zeros(LATENTS))
        self.register_buffer("offset", mean.clone())
        with torch.no_grad():
            self.dec.bias.copy_(torch.logit(mean.clamp(1e-3, 1 - 1e-3)))

    def logits(self, x: Tensor) -> Tensor:
        """q(z|x)'s logits ``[B, 200]``."""
        return self.enc(x - self.offset)

    def f(self, z: Tensor, x: Tensor, q_logits: Tensor) -> Tensor:
        """``log p(x|z) + log p(z) − log q(z|x)`` ``[..., B]`` at z ``[..., B, 200]`` (bits or relaxed)."""
        px = self.dec(z)
        log_px = (x * px - F.softplus(px)).sum(-1)
        pz = self.prior_logits
        log_pz = (z * pz - F.softplus(pz)).sum(-1)
        log_qz = (z * q_logits - F.softplus(q_logits)).sum(-1)
        return log_px + log_pz - log_qz


def initial_state(mean: Tensor) -> dict[str, Tensor]:
    with torch.random.fork_rng():
        torch.manual_seed(MODEL_SEED)
        return {k: v.clone() for k, v in BinaryVAE(mean).state_dict().items()}


def encoder_grad(model: BinaryVAE) -> Tensor:
    """The encoder's gradient, weight then bias, flattened: ``[157000]``."""
    assert model.enc.weight.grad is not None and model.enc.bias.grad is not None
    return torch.cat([model.enc.weight.grad.flatten(), model.enc.bias.grad.flatten()])


@torch.no_grad()
def elbo(model: BinaryVAE, data: Tensor, *, samples: int = EVAL_SAMPLES, seed: int = EVAL_SEED,
         chunk: int = 1000) -> float:
    """Mean per-image ELBO: exact KL(q || prior) plus a ``samples``-sample E_q log p(x|z)."""
    g = torch.Generator().manual_seed(seed)
    prior = model.prior_logits
    total = 0.0
    for start in range(0, data.shape[0], chunk):
        x = data[start : start + chunk]
        logits = model.logits(x)
        z = (torch.rand((samples, *logits.shape), generator=g) < torch.sigmoid(logits)).float()
        px = model.dec(z)
        rec = (x * px - F.softplus(px)).sum(-1).mean(0)
        kl = bernoulli_kl(logits, prior).sum(-1)
        total += float((rec - kl).sum())
    return total / data.shape[0]


def bernoulli_kl(q_logits: Tensor, p_logits: Tensor) -> Tensor:
    """KL(Bernoulli(q) || Bernoulli(p)) per coordinate, from logits (broadcasting)."""
    q = torch.sigmoid(q_logits)
    return q * (F.softplus(-p_logits) - F.softplus(-q_logits)) + (1 - q) * (F.softplus(p_logits) - F.softplus(q_logits))


@torch.no_grad()
def test_bound(model: BinaryVAE, data: Tensor, *, samples: int = BOUND_SAMPLES, seed: int = EVAL_SEED,
               chunk: int = 500) -> float:
    """Mean per-image importance-weighted bound with ``samples`` samples (gradest.iwae_bound)."""
    total = 0.0
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for start in range(0, data.shape[0], chunk):
            x = data[start : start + chunk]
            logits = model.logits(x)
            q = Independent(Bernoulli(logits=logits), 1)

            def log_joint(z: Tensor, x: Tensor = x) -> Tensor:
                px, pz = model.dec(z), model.prior_logits
                return (x * px - F.softplus(px)).sum(-1) + (z * pz - F.softplus(pz)).sum(-1)

            total += float(iwae_bound(log_joint, q, n=samples).sum())
    return total / data.shape[0]


# ---------------------------------------------------------------------------------------------------
# Estimators: which exist, and how gradest builds each


def estimator_status() -> tuple[list[str], dict[str, str]]:
    """The estimators that can run now, and why the others cannot."""
    ok, missing = [], {}
    for name in ESTIMATORS:
        module = PEER_MODULES.get(name)
        if module is None:
            ok.append(name)
            continue
        try:
            mod = importlib.import_module(module)
        except ImportError as e:
            missing[name] = f"{module} not importable ({e})"
            continue
        cls = {"rebar": "REBAR", "rebar-learn": "REBAR", "relax": "RELAX", "unordered": "UnorderedSet"}[name]
        if not hasattr(mod, cls):
            missing[name] = f"{module} has no {cls}"
            continue
        try:
            estimator, n = gradest_estimator(name)
        except TypeError as e:  # e.g. a REBAR without learn=
            missing[name] = f"{module}.{cls} does not take this configuration ({e})"
            continue
        try:  # does it take this model's q, Independent(Bernoulli) with 200 latents?
            estimator.check(Independent(Bernoulli(logits=torch.zeros(1, LATENTS)), 1), n)
        except (NotImplementedError, ValueError) as e:
            missing[name] = f"not applicable to this model: {str(e).split(';')[0]}"
            continue
        ok.append(name)
    return ok, missing


def gradest_estimator(name: str) -> tuple[gradest.Estimator, int]:
    """The gradest estimator for ``name`` and its n (2 evaluations of f per image)."""
    if name == "reinforce":
        return gradest.ScoreFunction(), 2
    if name == "rloo":
        return gradest.ScoreFunction(gradest.LeaveOneOut()), 2
    if name == "arm":
        return gradest.ARM(), 1
    if name == "disarm":
        return gradest.DisARM(), 1
    if name == "gumbel":
        return gradest.GumbelSoftmax(TEMPERATURE), 2
    if name == "rebar":
        from gradest.estimators.rebar_relax import REBAR

        return REBAR(), 1
    if name == "rebar-learn":
        from gradest.estimators.rebar_relax import REBAR

        return REBAR(temperature=REBAR_TEMPERATURE, eta=1.0, learn=True), 1
    if name == "relax":
        from gradest.estimators.rebar_relax import RELAX

        return RELAX(RelaxControl()), 1
    if name == "unordered":
        from gradest.estimators.unordered import UnorderedSet

        return UnorderedSet(2), 1  # one set of 2 distinct states: 2 evaluations of f
    raise ValueError(f"unknown estimator {name!r}; choose from {ESTIMATORS}")


class RelaxControl(nn.Module):
    r"""RELAX's control, as Grathwohl et al. (2018) build it for this model:
    :math:`c(z) = \eta\, \mathrm{cost}(\sigma(z/\tau)) + r_\rho(\sigma(z))` with learnable η, log τ
    and a 200-50-1 tanh network r. ``cost`` (the negative ELBO integrand of the current batch) is set
    before each call as a plain attribute, so the decoder's parameters stay out of the control's."""

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng():  # the same initial control for every implementation
            torch.manual_seed(MODEL_SEED + 1)
            self.net = nn.Sequential(nn.Linear(LATENTS, 50), nn.Tanh(), nn.Linear(50, 1))
        self.log_temperature = nn.Parameter(torch.tensor(math.log(TEMPERATURE)))
        self.eta = nn.Parameter(torch.tensor(1.0))
        self.cost: Callable[[Tensor], Tensor] | None = None

    def forward(self, z: Tensor) -> Tensor:
        assert self.cost is not None, "set control.cost before calling"
        relaxed = torch.sigmoid(z / self.log_temperature.exp())
        return self.eta * self.cost(relaxed) + self.net(torch.sigmoid(z)).squeeze(-1)


# ---------------------------------------------------------------------------------------------------
# Implementations. Each owns a model copy and an Adam; ``loss(x)`` is the negative ELBO surrogate
# averaged over the batch.


class Impl:
    kind = ""

    def __init__(self, name: str, state: dict[str, Tensor]) -> None:
        self.name = name
        with torch.random.fork_rng():  # the initialisation is overwritten; leave the global stream alone
            self.model = BinaryVAE(state["offset"])
        self.model.load_state_dict(state)
        self.extra: nn.Module = nn.Module()  # trainable parts of the estimator (RELAX's control)
        self.setup()
        self.opt = torch.optim.Adam(list(self.model.parameters()) + list(self.extra.parameters()), lr=LR)

    @property
    def label(self) -> str:
        return f"{self.kind}-{self.name}"

    def setup(self) -> None:
        """Build the estimator (before the optimiser, which gets its parameters)."""

    def loss(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def grad(self, x: Tensor) -> None:
        self.opt.zero_grad()
        self.loss(x).backward()

    def step(self, x: Tensor) -> None:
        self.opt.zero_grad()
        self.loss(x).backward()
        self.opt.step()


class GradestImpl(Impl):
    """``gradest.expectation(f, Independent(Bernoulli(logits)), estimator, n)``."""

    kind = "gradest"

    def setup(self) -> None:
        self.estimator, self.n = gradest_estimator(self.name)
        self.extra = self.estimator

    def loss(self, x: Tensor) -> Tensor:
        model = self.model
        logits = model.logits(x)
        q_logits = logits.detach()
        q = Independent(Bernoulli(logits=logits), 1)

        def cost(z: Tensor) -> Tensor:  # the negative ELBO integrand: gradest minimises costs
            return -model.f(z, x, q_logits)

        control = getattr(self.estimator, "control", None)
        if isinstance(control, RelaxControl):
            control.cost = cost
        s = gradest.expectation(cost, q, self.estimator, n=self.n)
        return s.mean()


class NoValidationImpl(GradestImpl):
    """``GradestImpl`` with ``gradest.set_validation(False)`` during its steps: the checks that sync
    (finite parameters and costs, a relaxation that underflows, f differentiable where the rule needs it)
    are skipped, so the difference to ``gradest-`` is their cost."""

    kind = "noval"

    def step(self, x: Tensor) -> None:
        gradest.set_validation(False)
        try:
            super().step(x)
        finally:
            gradest.set_validation(True)


class HandImpl(Impl):
    """Minimal hand-written surrogates in raw torch, one per estimator (the overhead reference)."""

    kind = "hand"

    def setup(self) -> None:
        fn = getattr(self, "_" + self.name.replace("-", "_"), None)
        if fn is None:
            raise NotImplementedError(f"no hand-written {self.name}")
        self.fn = fn
        if self.name == "relax":
            self.extra = self.control = RelaxControl()
        if self.name == "rebar-learn":
            self.extra = self.rebar = nn.Module()
            self.rebar.eta = nn.Parameter(torch.tensor(1.0))
            self.rebar.log_temperature = nn.Parameter(torch.tensor(math.log(REBAR_TEMPERATURE)))

    def loss(self, x: Tensor) -> Tensor:
        return self.fn(x)

    def _score(self, x: Tensor, loo: bool) -> Tensor:
        logits = self.model.logits(x)
        with torch.no_grad():
            b = (torch.rand((2, *logits.shape)) < torch.sigmoid(logits)).float()
        lq = (b * logits - F.softplus(logits)).sum(-1)  # [2, B]
        f = self.model.f(b, x, logits.detach())
        fd = f.detach()
        signal = fd - (fd.sum(0) - fd) if loo else fd  # n = 2: the other sample's cost is the baseline
        return -(f + signal * (lq - lq.detach())).mean()

    def _reinforce(self, x: Tensor) -> Tensor:
        return self._score(x, loo=False)

    def _rloo(self, x: Tensor) -> Tensor:
        return self._score(x, loo=True)

    def _antithetic(self, x: Tensor, disarm: bool) -> Tensor:
        logits = self.model.logits(x)
        ld = logits.detach()
        u = torch.rand(logits.shape)
        p = torch.sigmoid(ld)
        b, b_anti = (u < p).float(), (1 - u < p).float()
        f = self.model.f(torch.stack([b, b_anti]), x, ld)  # [2, B]
        diff = (f[0] - f[1]).detach().unsqueeze(-1)
        if disarm:
            g = 0.5 * diff * (1 - 2 * b_anti) * (b != b_anti).float() * torch.sigmoid(ld.abs())
        else:
            g = -diff * (u - 0.5)
        return -(f.mean(0) + (g * logits).sum(-1)).mean()

    def _arm(self, x: Tensor) -> Tensor:
        return self._antithetic(x, disarm=False)

    def _unordered(self, x: Tensor) -> Tensor:
        """UnorderedSet(2): the set {a, b} of 2 distinct joint states comes from gradest's beam search
        (the sampler is not hand-written again: the ratio measures the estimator around it); then the
        k = 2 closed forms: P(S) = p_a p_b (1/(1 − p_a) + 1/(1 − p_b)), weight p_a R(S, a) =
        p_a p_b / ((1 − p_a) P(S)), and a's baseline p_a f_a + (1 − p_a) f_b, so that f_a minus it is
        (1 − p_a)(f_a − f_b)."""
        from gradest.estimators.unordered import _beam_search, _log1mexp

        logits = self.model.logits(x)
        ld = logits.detach()
        with torch.no_grad():
            table = torch.stack([-F.softplus(ld), -F.softplus(-ld)], -1)  # [B, 200, 2]
            b = _beam_search(table, 2, 1)[0].movedim(-2, 0).float()  # [2, B, 200]
        lp = (b * logits - F.softplus(logits)).sum(-1)  # [2, B], differentiable
        f = self.model.f(b, x, ld)  # [2, B]
        with torch.no_grad():
            l = lp.detach()
            log_rest = _log1mexp(l)  # log(1 − p_s)
            log_set = l.sum(0) + torch.logaddexp(-log_rest[0], -log_rest[1])  # log P(S)
            weight = torch.exp(l + l.flip(0) - log_rest - log_set)  # p_s R(S, s)
            signal = torch.exp(log_rest) * (f.detach() - f.detach().flip(0))  # f_s minus its baseline
        return -((weight * f).sum(0) + (weight * signal * (lp - l)).sum(0)).mean()

    def _disarm(self, x: Tensor) -> Tensor:
        return self._antithetic(x, disarm=True)

    def _perturbed(self, logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """z = ℓ + logistic noise, the bits b = 1[z > 0], and z̃ ∼ p(z | b), differentiable in ℓ.

        z̃ in one formula for both bits, with s = 2b − 1: s·(logaddexp(c, a + log(1 − v)) − log v − c),
        a = log σ(sℓ), c = log σ(−sℓ) (the math gradest's ``conditional_logistic`` uses)."""
        u = torch.rand(logits.shape)
        z = logits + torch.log(u) - torch.log1p(-u)
        b = (z.detach() > 0).float()
        v = torch.rand(logits.shape)
        s = 2 * b - 1
        a, c = F.logsigmoid(s * logits), F.logsigmoid(-s * logits)
        return z, b, s * (torch.logaddexp(c, a + torch.log1p(-v)) - torch.log(v) - c)

    def _rebar(self, x: Tensor) -> Tensor:
        """REBAR with fixed τ = 0.5, η = 1 (gradest's defaults), n = 1; costs c = −f; the score term
        from the closed-form score b − σ(ℓ)."""
        logits = self.model.logits(x)
        ld = logits.detach()
        z, b, zt = self._perturbed(logits)
        c = -self.model.f(torch.stack([b, torch.sigmoid(z / TEMPERATURE), torch.sigmoid(zt / TEMPERATURE)]), x, ld)
        score = ((b - torch.sigmoid(ld)) * logits).sum(-1)
        return (c[0] + (c[0] - c[2]).detach() * (score - score.detach()) + c[1] - c[2]).mean()

    def _rebar_learn(self, x: Tensor) -> Tensor:
        """REBAR with η and log τ learned, n = 1: RELAX's recipe with the control c(z) = η·cost(σ(z/τ)),
        whose two evaluations share one call of f with the exact sample (as gradest's REBAR makes it)."""
        logits = self.model.logits(x)
        ld = logits.detach()
        free = ld.clone().requires_grad_()
        z, b, zt = self._perturbed(free)
        eta, tau = self.rebar.eta, self.rebar.log_temperature.exp()
        c = -self.model.f(torch.stack([b, torch.sigmoid(z / tau), torch.sigmoid(zt / tau)]), x, ld)
        g = (c[0].detach() - eta * c[2]).unsqueeze(-1) * (b - torch.sigmoid(free))
        g = g + torch.autograd.grad(eta * (c[1] - c[2]).sum(), free, create_graph=True)[0]
        params = [self.rebar.eta, self.rebar.log_temperature]
        d = torch.autograd.grad(g.square().sum(), params, retain_graph=True)  # c[0] is backpropagated below
        linear = sum((di.detach() * p).sum() for di, p in zip(d, params))
        return (c[0] + (g.detach() * logits).sum(-1)).mean() + linear / x.shape[0]

    def _relax(self, x: Tensor) -> Tensor:
        """RELAX with the same control, n = 1: ĝ by autograd.grad on a copy of the logits, the control
        trained on ∂Σ‖ĝ‖²/∂φ divided by the batch size (as gradest's surrogate.mean() gives)."""
        logits = self.model.logits(x)
        ld = logits.detach()
        free = ld.clone().requires_grad_()
        z, b, zt = self._perturbed(free)
        cost = -self.model.f(b, x, ld)  # [B]
        self.control.cost = lambda zr: -self.model.f(zr, x, ld)
        cz, czt = self.control(z), self.control(zt)
        g = (cost.detach() - czt).unsqueeze(-1) * (b - torch.sigmoid(free))
        g = g + torch.autograd.grad((cz - czt).sum(), free, create_graph=True)[0]
        params = list(self.control.parameters())
        d = torch.autograd.grad(g.square().sum(), params)
        linear = sum((di.detach() * p).sum() for di, p in zip(d, params))
        return (cost + (g.detach() * logits).sum(-1)).mean() + linear / x.shape[0]

    def _gumbel(self, x: Tensor) -> Tensor:
        logits = self.model.logits(x)
        u = torch.rand((2, *logits.shape))
        z = torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / TEMPERATURE)
        return -self.model.f(z, x, logits.detach()).mean()


class StorchImpl(Impl):
    """Storchastic's method for the same estimator (timing only; see the module docstring)."""

    kind = "storch"

    def setup(self) -> None:
        import storch
        from storch import method as m

        self.storch = storch
        makers: dict[str, Callable[[], nn.Module]] = {
            "reinforce": lambda: m.ScoreFunction("z", n_samples=2),
            "rloo": lambda: m.ScoreFunction("z", n_samples=2, baseline_factory="batch_average"),
            "arm": lambda: m.ARM("z", n_samples=1),
            "disarm": lambda: m.DisARM("z", n_samples=1),
            "rebar": lambda: m.REBAR("z", n_samples=1),
            "relax": lambda: m.RELAX("z", n_samples=1, in_dim=LATENTS),
            "gumbel": lambda: m.GumbelSoftmax("z", n_samples=2, initial_temperature=TEMPERATURE, annealing_rate=0.0),
        }
        if self.name not in makers:
            raise NotImplementedError(f"no storch {self.name}")
        self.method = makers[self.name]()
        self.extra = self.method

    def loss(self, x: Tensor) -> Tensor:
        raise NotImplementedError("storch computes its own backward")

    def grad(self, x: Tensor) -> None:
        self.opt.zero_grad()
        self._backward(x)

    def step(self, x: Tensor) -> None:
        self.opt.zero_grad()
        self._backward(x)
        self.opt.step()

    def _backward(self, x: Tensor) -> None:
        storch = self.storch
        xs = storch.denote_independent(x, 0, "data")
        logits = self.model.logits(xs)
        try:
            z = self.method(Bernoulli(logits=logits))
        except Exception:
            storch.reset()
            raise
        if z.dtype == torch.bool:  # Storchastic's DisARM hands out bool samples
            z = z.float()
        try:
            storch.add_cost(-self.model.f(z, xs, logits.detach()), "negative_elbo")
            storch.backward()
        except Exception:
            storch.reset()  # a failed backward leaves its costs registered for the next implementation
            raise


CLASSES: dict[str, type[Impl]] = {c.kind: c for c in (GradestImpl, NoValidationImpl, HandImpl, StorchImpl)}
# hand-written versions
HAND = {"reinforce", "rloo", "arm", "disarm", "rebar", "rebar-learn", "relax", "gumbel", "unordered"}
STORCH = {"reinforce", "rloo", "arm", "disarm", "rebar", "relax", "gumbel"}  # Storchastic methods used


def storch_available() -> bool:
    try:
        return importlib.util.find_spec("storch") is not None
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
        self.times: list[float] = []
        self.cpu_times: list[float] = []
        self.failed: str | None = None

    def call(self, fn: Callable[[Tensor], None], x: Tensor) -> tuple[float, float]:
        outer = torch.get_rng_state()
        torch.set_rng_state(self.rng)
        c0, t0 = time.thread_time(), time.perf_counter()
        try:
            fn(x)
        finally:
            dt, dc = time.perf_counter() - t0, time.thread_time() - c0
            self.rng = torch.get_rng_state()
            torch.set_rng_state(outer)
        return dt, dc


def make_runners(labels: list[str], state: dict[str, Tensor]) -> dict[str, Runner]:
    runners = {}
    for label in labels:
        kind, name = label.split("-", 1)
        runners[label] = Runner(CLASSES[kind](name, state), SAMPLE_SEED)
    return runners


def train(
    labels: list[str],
    train_data: Tensor,
    eval_sets: dict[str, Tensor],
    steps: int,
    *,
    eval_at: tuple[int, ...],
    snapshot_at: tuple[int, ...],
    reference: str,
    eval_samples: int = EVAL_SAMPLES,
    log: Callable[[str], None] = print,
) -> tuple[dict[str, Runner], dict[str, dict[str, dict[int, float]]], dict[int, dict[str, Tensor]]]:
    """Train every implementation from one state on one batch sequence, interleaved step by step.

    Returns the runners (step times), the ELBO curves ``{label: {set: {step: elbo}}}`` of the gradest
    implementations, and the reference run's parameters at each step of ``snapshot_at``.
    """
    state = initial_state(train_data.mean(0))
    runners = make_runners(labels, state)
    snapshots: dict[int, dict[str, Tensor]] = {}
    if 0 in snapshot_at and reference in runners:
        snapshots[0] = {k: v.clone() for k, v in runners[reference].impl.model.state_dict().items()}
    curves: dict[str, dict[str, dict[int, float]]] = {
        label: {s: {} for s in eval_sets} for label in labels if label.startswith("gradest-")
    }
    batches = batch_indices(train_data.shape[0], steps)
    t_start = time.perf_counter()
    for step, idx in enumerate(batches, start=1):
        x = train_data[idx]
        live = [label for label in labels if runners[label].failed is None]
        shift = step % max(len(live), 1)
        for label in live[shift:] + live[:shift]:
            r = runners[label]
            try:
                dt, dc = r.call(r.impl.step, x)
            except Exception as e:  # noqa: BLE001 - a peer failing mid-run is reported, not fatal
                r.failed = f"step {step}: {type(e).__name__}: {e}"
                log(f"{label} failed at {r.failed}")
                continue
            r.times.append(dt)
            r.cpu_times.append(dc)
        if step in snapshot_at and reference in runners:
            snapshots[step] = {k: v.clone() for k, v in runners[reference].impl.model.state_dict().items()}
        if step in eval_at:
            for label in curves:
                if runners[label].failed is None:
                    for s, data in eval_sets.items():
                        curves[label][s][step] = elbo(runners[label].impl.model, data, samples=eval_samples)
            row = "  ".join(f"{lab[8:]} {c['train'][step]:.1f}" for lab, c in curves.items() if step in c["train"])
            log(f"step {step:5d} ({time.perf_counter() - t_start:6.1f} s)  train ELBO: {row}")
    return runners, curves, snapshots


def gradient_variance(
    label: str, state: dict[str, Tensor], x: Tensor, estimates: int, seed: int, groups: int = VARIANCE_GROUPS,
    warmup: list[Tensor] | None = None,
) -> dict[str, object]:
    """Trace of the covariance of ``estimates`` independent encoder-gradient estimates at ``state``
    on images ``x``, its standard error from ``groups`` disjoint groups, and the mean gradient.

    A learned control (RELAX's network, rebar-learn's η and τ) is state that training carries: it is
    first trained alone, with the model frozen at ``state``, on the batches ``warmup`` (those that
    precede the snapshot in the training sequence), then frozen while the estimates are taken."""
    kind, name = label.split("-", 1)
    runner = Runner(CLASSES[kind](name, state), seed)
    impl = runner.impl
    learned = list(impl.extra.parameters())
    if learned and warmup:
        control_opt = torch.optim.Adam(learned, lr=LR)

        def control_step(xb: Tensor) -> None:
            impl.grad(xb)
            control_opt.step()

        for xb in warmup:
            runner.call(control_step, xb)
    per = estimates // groups
    size = LATENTS * PIXELS + LATENTS
    total_sum = torch.zeros(size, dtype=torch.float64)
    group_traces = []
    total_sq = torch.zeros(size, dtype=torch.float64)
    for _ in range(groups):
        s = torch.zeros(size, dtype=torch.float64)
        sq = torch.zeros(size, dtype=torch.float64)
        for _ in range(per):
            runner.call(impl.grad, x)
            g = encoder_grad(impl.model).double()
            s += g
            sq += g * g
        group_traces.append(float(((sq - s * s / per) / (per - 1)).sum()))
        total_sum += s
        total_sq += sq
    m = per * groups
    trace = float(((total_sq - total_sum * total_sum / m) / (m - 1)).sum())
    se = statistics.stdev(group_traces) / math.sqrt(groups) if groups > 1 else float("nan")
    return {"trace": trace, "trace_se": se, "estimates": m, "mean": total_sum / m}


# ---------------------------------------------------------------------------------------------------
# Report


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__, "gradest": gradest.__version__,
           "numpy": np.__version__}
    if "storch" in sys.modules:
        from importlib.metadata import version

        out["storchastic"] = version("storchastic")
    return out


def tables(result: dict) -> str:
    """Markdown tables (a), (b) and (c) from a result dict."""
    lines: list[str] = []
    if result["variance"]:
        lines += _variance_table(result)
    if result["quality"]:
        lines += _quality_table(result)
    lines += _timing_table(result)
    return "\n".join(lines)


def _variance_table(result: dict) -> list[str]:
    lines = []
    variance = result["variance"]
    snaps = sorted(variance, key=int)
    ref = f"gradest-{result['config']['reference']}"
    lines.append("(a) Encoder-gradient variance: trace of the covariance ± SE "
                 f"({result['config']['variance_estimates']} estimates, fixed batch of {VARIANCE_IMAGES} images), "
                 f"and its ratio to {ref}")
    lines.append("")
    ref_name = result["config"]["reference"]
    lines.append("| implementation | " + " | ".join(f"step {s}: trace | / {ref_name}" for s in snaps)
                 + " | mean vs ref (/noise) |")
    lines.append("|---|" + "---|---|" * len(snaps) + "---|")
    labels = list(variance[snaps[0]])
    for label in labels:
        cells = [label]
        for s in snaps:
            v = variance[s][label]
            r = variance[s].get(ref)
            cells += [f"{v['trace']:.4g} ± {v['trace_se']:.2g}", f"{v['trace'] / r['trace']:.3g}" if r else "-"]
        last = variance[snaps[-1]][label]
        cells.append(f"{last.get('mean_diff_over_noise', float('nan')):.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def _quality_table(result: dict) -> list[str]:
    lines = []
    lines.append(f"(b) ELBO after {result['config']['steps']} steps (nats per image; higher is better)")
    lines.append("")
    lines.append("| estimator | train ELBO | test ELBO | test 100-sample bound |")
    lines.append("|---|---|---|---|")
    for label, q in result["quality"].items():
        lines.append(f"| {label} | {q['train']:.2f} | {q['test']:.2f} | {q.get('test_bound', float('nan')):.2f} |")
    lines.append("")
    return lines


def _timing_table(result: dict) -> list[str]:
    lines = []
    lines.append("(c) Step time, interleaved, one thread (ms; ratios to the hand-written version of the same "
                 "estimator)")
    lines.append("")
    lines.append("| implementation | median step (ms) | / hand | paired / hand | CPU / hand |")
    lines.append("|---|---|---|---|---|")
    for label, t in result["timing"].items():
        ratios = ["-" if t.get(k) is None else f"{t[k]:.3f}" for k in ("ratio", "paired_ratio", "cpu_ratio")]
        lines.append(f"| {label} | {t['median_ms']:.3f} | " + " | ".join(ratios) + " |")
    return lines


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    if result["variance"]:
        _plot_variance(axes[0], result)
    curves = any(c.get("train") for c in result["curves"].values())
    if curves:
        _plot_curves(axes[1], result)
    for ax, measured in ((axes[0], bool(result["variance"])), (axes[1], curves)):
        if not measured:
            ax.text(0.5, 0.5, "not measured (--timing-only)", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
    _plot_timing(axes[2], result)
    fig.suptitle("Binary VAE (784-200-784, 200 Bernoulli latents) on static binarized MNIST")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_variance(ax, result: dict) -> None:
    variance = result["variance"]
    snaps = sorted(variance, key=int)
    names = [lab for lab in variance[snaps[0]] if lab.startswith("gradest-")]
    width = 0.8 / len(snaps)
    for i, s in enumerate(snaps):
        vals = [variance[s][lab]["trace"] for lab in names]
        errs = [variance[s][lab]["trace_se"] for lab in names]
        ax.bar([j + i * width for j in range(len(names))], vals, width, yerr=errs, label=f"step {s}")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], [n[8:] for n in names], rotation=30)
    ax.set_yscale("log")
    ax.set_ylabel("trace of covariance (encoder gradient)")
    ax.set_title("(a) gradient variance at the same parameters")
    ax.legend(fontsize=8)


def _plot_curves(ax, result: dict) -> None:
    for label, c in result["curves"].items():
        steps = sorted(c["train"], key=int)
        ax.plot([int(s) for s in steps], [c["train"][s] for s in steps], marker="o", label=label[8:])
    ax.set_xlabel("Adam step")
    ax.set_ylabel("train ELBO (nats)")
    lows = [v for c in result["curves"].values() for v in c["train"].values()]
    if lows:
        top = max(lows)
        ax.set_ylim(max(min(lows), top - 150), top + 5)
    ax.set_title("(b) training curves (batch 50)")
    ax.legend(fontsize=8)


def _plot_timing(ax, result: dict) -> None:
    timing = result["timing"]
    labels = [lab for lab in timing if timing[lab].get("paired_ratio") is not None and not lab.startswith("hand-")]
    ax.barh(range(len(labels)), [timing[lab]["paired_ratio"] for lab in labels],
            color=["C0" if lab.startswith("gradest-") else "C1" for lab in labels])
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.axvline(1.0, color="k", lw=0.8)
    ax.axvline(1.1, color="r", lw=0.8, ls="--")
    ax.set_xlim(0, max([timing[lab]["paired_ratio"] for lab in labels] + [1.2]) * 1.05)
    ax.set_xlabel("step time / hand-written (paired median); dashed: 1.10")
    ax.set_title("(c) overhead: gradest (blue), Storchastic (orange)")


def run(
    *,
    train_data: Tensor,
    test_data: Tensor,
    steps: int,
    estimators: list[str],
    kinds: tuple[str, ...] = KINDS,
    snapshots: tuple[int, ...] = SNAPSHOTS,
    variance_estimates: int = VARIANCE_ESTIMATES,
    variance_groups: int = VARIANCE_GROUPS,
    eval_train_images: int = EVAL_TRAIN_IMAGES,
    eval_samples: int = EVAL_SAMPLES,
    bound_samples: int = BOUND_SAMPLES,
    control_warmup: int = CONTROL_WARMUP,
    timing_only: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """Everything (a), (b), (c) measure, as a JSON-ready dict; with ``timing_only`` (c) alone (the
    same interleaved training run, without evaluations, snapshots, (a) and (b))."""
    labels = []
    for name in estimators:
        labels.append(f"gradest-{name}")
        if "noval" in kinds:
            labels.append(f"noval-{name}")
        if "hand" in kinds and name in HAND:
            labels.append(f"hand-{name}")
        if "storch" in kinds and name in STORCH:
            labels.append(f"storch-{name}")
    reference = REFERENCE if REFERENCE in estimators else estimators[0]
    ref_label = f"gradest-{reference}"
    snapshots = () if timing_only else tuple(sorted({min(s, steps) for s in snapshots}))
    eval_at = () if timing_only else tuple(
        sorted({max(1, round(steps * (i + 1) / EVAL_POINTS)) for i in range(EVAL_POINTS)}))
    # the curve; the test set is evaluated at the end
    eval_sets = {} if timing_only else {"train": train_data[:eval_train_images]}
    log(f"binary VAE: {len(labels)} implementations x {steps} steps, interleaved; torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s)")
    runners, curves, snaps = train(
        labels, train_data, eval_sets, steps, eval_at=eval_at, snapshot_at=snapshots, reference=ref_label,
        eval_samples=eval_samples, log=log,
    )

    # (a) variance at the reference run's snapshots, every gradest and hand implementation
    x0 = train_data[:VARIANCE_IMAGES]
    all_batches = batch_indices(train_data.shape[0], max(steps, 1))
    variance: dict[str, dict[str, dict]] = {}
    var_labels = [lab for lab in labels if not lab.startswith("storch-")]
    for s, state in sorted(snaps.items()):
        variance[str(s)] = {}
        for i, label in enumerate(var_labels):
            t0 = time.perf_counter()
            try:
                warmup = [train_data[idx] for idx in all_batches[max(0, s - control_warmup) : s]]
                v = gradient_variance(label, state, x0, variance_estimates, VARIANCE_SEED + 100 * s + i,
                                      variance_groups, warmup)
            except Exception as e:  # noqa: BLE001 - reported, not fatal
                log(f"variance {label} at step {s} failed: {type(e).__name__}: {e}")
                continue
            variance[str(s)][label] = v
            log(f"variance at step {s}: {label} trace {v['trace']:.4g} ± {v['trace_se']:.2g} "
                f"({time.perf_counter() - t0:.1f} s)")
        # ||mean − reference mean|| against the size noise alone gives it: all unbiased estimators agree
        means = {label: v.pop("mean") for label, v in variance[str(s)].items()}
        ref = variance[str(s)].get(ref_label)
        for label, v in variance[str(s)].items():
            if ref is not None and label != ref_label:
                noise = math.sqrt((v["trace"] + ref["trace"]) / variance_estimates)
                v["mean_diff_over_noise"] = float((means[label] - means[ref_label]).norm()) / noise

    # (b) quality after the budget
    quality = {}
    for label, r in runners.items():
        if timing_only or not label.startswith("gradest-") or r.failed is not None:
            continue
        model = r.impl.model
        quality[label] = {
            "train": elbo(model, eval_sets["train"], samples=eval_samples),
            "test": elbo(model, test_data, samples=eval_samples),
            "test_bound": test_bound(model, test_data, samples=bound_samples),
        }
        log(f"{label}: train ELBO {quality[label]['train']:.2f}, test ELBO {quality[label]['test']:.2f}, "
            f"test {bound_samples}-sample bound {quality[label]['test_bound']:.2f}")

    # (c) step times
    first = min(TIME_FROM, steps) - 1
    timing = {}
    for label, r in runners.items():
        times, cpu = r.times[first:], r.cpu_times[first:]
        if not times:
            continue
        entry: dict[str, object] = {"median_ms": statistics.median(times) * 1e3,
                                    "median_cpu_ms": statistics.median(cpu) * 1e3, "failed": r.failed}
        hand = runners.get("hand-" + label.split("-", 1)[1])
        if hand is not None and hand is not r and len(hand.times) == len(r.times):
            h_times, h_cpu = hand.times[first:], hand.cpu_times[first:]
            entry["ratio"] = statistics.median(times) / statistics.median(h_times)
            entry["paired_ratio"] = statistics.median(t / h for t, h in zip(times, h_times))
            entry["cpu_ratio"] = statistics.median(cpu) / statistics.median(h_cpu)
        timing[label] = entry

    return {
        "task": "binary VAE, linear 784-200-784, static binarized MNIST (ARM/DisARM papers, scaled down)",
        "config": {
            "steps": steps, "batch": BATCH, "lr": LR, "estimators": estimators, "kinds": list(kinds),
            "reference": reference, "snapshots": list(snapshots), "eval_at": list(eval_at),
            "variance_estimates": variance_estimates, "variance_groups": variance_groups,
            "eval_train_images": eval_train_images, "control_warmup": control_warmup,
            "eval_samples": eval_samples, "bound_samples": bound_samples, "timing_only": timing_only,
            "timed_steps": f"{first + 1}..{steps}", "threads": torch.get_num_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "failed": {lab: r.failed for lab, r in runners.items() if r.failed},
        },
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
        "versions": versions(),
        "variance": variance,
        "curves": {lab: {s: {str(k): v for k, v in c.items()} for s, c in cs.items()} for lab, cs in curves.items()},
        "quality": quality,
        "timing": timing,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DATA_DIR), help="folder with binarized_mnist_{train,test}.packbits.npy")
    p.add_argument("--steps", type=int, help=f"Adam steps (default {STEPS}; 200 with --quick)")
    p.add_argument("--estimators", default=",".join(ESTIMATORS), help="comma-separated subset")
    p.add_argument("--kinds", default=",".join(KINDS),
                   help="comma-separated: gradest,hand,storch; noval adds gradest with validation off")
    p.add_argument("--variance-estimates", type=int, help=f"default {VARIANCE_ESTIMATES}; 40 with --quick")
    p.add_argument("--quick", action="store_true", help="a smoke run: 200 steps, 40 variance estimates")
    p.add_argument("--timing-only", action="store_true",
                   help="measure (c) step times alone: no ELBO evaluations, snapshots, (a) or (b)")
    p.add_argument("--json", metavar="PATH", help="write the results here")
    p.add_argument("--figure", metavar="PATH", help="write the PNG figure here")
    args = p.parse_args(argv)
    steps = args.steps or (200 if args.quick else STEPS)
    estimates = args.variance_estimates or (40 if args.quick else VARIANCE_ESTIMATES)
    if steps < 1 or estimates < 2 * VARIANCE_GROUPS:
        p.error(f"--steps={steps} must be >= 1 and --variance-estimates={estimates} >= {2 * VARIANCE_GROUPS}")
    torch.set_num_threads(1)

    ok, missing = estimator_status()
    wanted = [e.strip() for e in args.estimators.split(",") if e.strip()]
    unknown = [e for e in wanted if e not in ESTIMATORS]
    if unknown:
        p.error(f"--estimators: unknown {unknown}; choose from {list(ESTIMATORS)}")
    for e in wanted:
        if e in missing:
            print(f"skipping {e}: {missing[e]}")
    estimators = [e for e in wanted if e in ok]
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    if "storch" in kinds:
        if not storch_available():
            print("skipping storch: storchastic is not installed (pip install -c constraints.txt storchastic)")
            kinds = tuple(k for k in kinds if k != "storch")
        else:
            try:  # importing it patches torch for the whole process: every implementation pays alike
                importlib.import_module("storch")
            except Exception as e:  # noqa: BLE001 - any import failure of a peer means: skip it
                print(f"skipping storch: import failed: {type(e).__name__}: {e}")
                kinds = tuple(k for k in kinds if k != "storch")
    torch.distributions.Distribution.set_default_validate_args(False)  # Storchastic does this anyway

    train_data, test_data = load_binarized_mnist(Path(args.data))
    snapshots = tuple(s for s in SNAPSHOTS if s <= steps) or (steps,)
    if args.quick:
        snapshots = (steps,)
    result = run(train_data=train_data, test_data=test_data, steps=steps, estimators=estimators, kinds=kinds,
                 snapshots=snapshots, variance_estimates=estimates, timing_only=args.timing_only)
    result["config"]["missing"] = {e: missing[e] for e in wanted if e in missing}
    result["config"]["command"] = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/binary_vae.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    print()
    print(tables(result))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
        print(f"wrote {args.json}")
    if args.figure:
        plot(result, args.figure)
        print(f"wrote {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
