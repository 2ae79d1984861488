"""A hierarchical latent-variable model: a discrete cluster above a continuous latent, with ``gradest.Graph``.

Generative model, for 2-D points x (the data are drawn from it with the true cluster centres at the
corners (±2, ±2)):

    k ~ Categorical(uniform over K = 4)        which cluster
    y ~ Normal(mu_k, prior_scale² I)            a latent position; the centres mu_k are learned
    x ~ Normal(y, noise_scale² I)               the observation

Variational model, an encoder network of x:

    k ~ q(k | x) = Categorical(logits_φ(x))                     discrete node
    y ~ q(y | x, k) = Normal(m_φ(x)[k], s_φ(x)[k])              continuous node below it (pathwise)

The graph has two nodes. ``k`` uses ``ScoreFunction(LeaveOneOut())`` with 4 samples, or, with
``--discrete enumerate``, ``Enumerate()``, which sums over the 4 clusters exactly. ``y`` has no
estimator given, so the graph uses ``Pathwise`` (Normal has ``rsample``); its parameters are picked
out of per-cluster tables by the integer sample ``k``, which the graph tracks. The cost is
``-(log p(x|y) + log p(y|k) - log q(y|x,k))``; the KL from q(k|x) to the uniform prior is analytic
and added outside the graph.

Because p(x|k) is Gaussian, the exact log-likelihood log p(x) is known, and the model family
contains the true posterior, so the ELBO should climb to within a few hundredths of log p(x). The
script prints both, how well the clusters recover the truth (adjusted Rand index) and the learned
centres. At the end it freezes the model and compares the two estimators of the discrete node on the
same state: the variance (trace of the covariance over ``--repeats`` independent gradients) of the
gradient of the cluster head (the layer that outputs q(k|x)'s logits) and of all parameters. Both
choices cost the same here: 4 evaluations of the cost per point.

Run:

    .venv/bin/python examples/graph_hierarchical.py                        # score function + RLOO
    .venv/bin/python examples/graph_hierarchical.py --discrete enumerate   # exact sum over k

Both train (2000 steps, about 15 s of training and 24 s wall on a shared 2-core CPU): the ELBO at
step 2000 is -3.505 (score) and -3.530 (enumerate) against the exact log p(x) = -3.486 under the
learned centres, which land within 0.07 of the true corners (adjusted Rand index 0.989 / 0.988).
At the trained state the cluster head's gradient variance is 0.0033 with the score function and
2.5e-6 with enumeration (about 1300x less; 462x at the enumerate run's state). Over all parameters
enumeration is *higher* (4.2 vs 1.05): it draws one y per cluster, so the likely cluster gets one
pathwise sample of y, where 4 score-function draws of k mostly land on it and average 4. Enumerating
removes the discrete node's noise, not the continuous node's.
"""

import argparse
import math
import time

import torch
from sklearn.metrics import adjusted_rand_score
from torch import nn
from torch.distributions import Categorical, Independent, Normal

import gradest


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--discrete", choices=["score", "enumerate"], default="score",
                        help="estimator of the cluster node: ScoreFunction(LeaveOneOut()) or Enumerate()")
    parser.add_argument("--steps", type=int, default=2000, help="Adam steps")
    parser.add_argument("--seed", type=int, default=0, help="seeds the data, the model and the samples")
    parser.add_argument("--points", type=int, default=2000, help="size of the synthetic data set")
    parser.add_argument("--batch", type=int, default=200, help="points per batch")
    parser.add_argument("--n", type=int, default=4, help="samples of k per point (score function)")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    parser.add_argument("--eval-every", type=int, default=500, help="print the ELBO every this many steps")
    parser.add_argument("--repeats", type=int, default=300, help="gradients per estimator in the variance check")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--plot", default="graph_hierarchical.png", help="figure PNG ('' for none)")
    return parser.parse_args(argv)


def progress(iterable, total, description):
    """A rich progress bar when rich is installed (the cli extra), else the plain iterable."""
    try:
        from rich.progress import track
    except ImportError:
        return iterable
    return track(iterable, total=total, description=description, transient=True)


def save_curve(path, history, ylabel, title):
    """The learning curve (step, value) as a PNG, when matplotlib is installed (the cli extra)."""
    if not path or not history:
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install 'gradest[cli]'): no figure")
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(*zip(*history), "o-")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"figure: {path}")


K = 4  # clusters
PRIOR_SCALE = 0.5  # sd of y around its cluster centre
NOISE_SCALE = 0.5  # sd of x around y
TRUE_CENTRES = torch.tensor([[-2.0, -2.0], [-2.0, 2.0], [2.0, -2.0], [2.0, 2.0]])


class Encoder(nn.Module):
    """x [B, 2] -> cluster logits [B, K], and per-cluster means and scales of y, [B, K, 2] each."""

    def __init__(self, hidden=64):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh())
        self.cluster = nn.Linear(hidden, K)
        self.loc = nn.Linear(hidden, K * 2)
        self.log_scale = nn.Linear(hidden, K * 2)

    def forward(self, x):
        h = self.body(x)
        loc = self.loc(h).view(-1, K, 2) + x.unsqueeze(-2)  # start near the observation
        return self.cluster(h), loc, self.log_scale(h).view(-1, K, 2) - 1.0


def negative_elbo(encoder, centres, x, estimator, n):
    """The surrogate of the mean negative ELBO over the batch x [B, 2], built with a Graph."""
    logits, loc, log_scale = encoder(x)
    rows = torch.arange(x.shape[0])
    with gradest.Graph() as g:
        k = g.sample("k", Categorical(logits=logits), estimator, n=n)  # [n, B] (Enumerate: [K, B])
        q_y = Independent(Normal(loc[rows, k], log_scale[rows, k].exp()), 1)  # batch [n, B], event [2]
        y = g.sample("y", q_y)  # pathwise: [1, n, B, 2]
        log_p_y = Independent(Normal(centres[k], PRIOR_SCALE), 1).log_prob(y)
        log_p_x = Independent(Normal(y, NOISE_SCALE), 1).log_prob(x)
        g.cost(-(log_p_x + log_p_y - q_y.log_prob(y)), name="negative elbo given k")  # [1, n, B]
    log_q_k = logits.log_softmax(-1)
    kl_k = (log_q_k.exp() * (log_q_k + math.log(K))).sum(-1)  # KL(q(k|x) || uniform), exact
    return (g.loss() + kl_k.sum()) / x.shape[0]


@torch.no_grad()
def evaluate(encoder, centres, data, labels, samples=64):
    """Mean ELBO (exact sum over k, ``samples`` draws of y), exact mean log p(x), adjusted Rand index."""
    logits, loc, log_scale = encoder(data)
    log_q_k = logits.log_softmax(-1)  # [N, K]
    q_y = Independent(Normal(loc, log_scale.exp()), 1)  # batch [N, K]
    y = q_y.sample((samples,))  # [S, N, K, 2]
    inner = (Independent(Normal(y, NOISE_SCALE), 1).log_prob(data.unsqueeze(1))
             + Independent(Normal(centres, PRIOR_SCALE), 1).log_prob(y) - q_y.log_prob(y)).mean(0)  # [N, K]
    elbo = (log_q_k.exp() * (inner - math.log(K) - log_q_k)).sum(-1).mean()
    marginal = Independent(Normal(centres, math.hypot(PRIOR_SCALE, NOISE_SCALE)), 1)
    log_px = (marginal.log_prob(data.unsqueeze(1)) - math.log(K)).logsumexp(-1).mean()
    ari = adjusted_rand_score(labels.numpy(), logits.argmax(-1).numpy())
    return float(elbo), float(log_px), ari


def make_estimator(kind):
    return gradest.ScoreFunction(gradest.LeaveOneOut()) if kind == "score" else gradest.Enumerate()


def gradient_variance(encoder, centres, x, kind, n, repeats):
    """Trace of the covariance of ``repeats`` independent gradients: (cluster head, all parameters)."""
    params = [*encoder.parameters(), centres]
    head = [encoder.cluster.weight, encoder.cluster.bias]
    estimator = make_estimator(kind)
    head_draws, all_draws = [], []
    for _ in range(repeats):
        grads = torch.autograd.grad(negative_elbo(encoder, centres, x, estimator, n), params)
        flat = {id(p): g.flatten() for p, g in zip(params, grads)}
        head_draws.append(torch.cat([flat[id(p)] for p in head]))
        all_draws.append(torch.cat(list(flat.values())))
    return (float(torch.stack(head_draws).var(0).sum()), float(torch.stack(all_draws).var(0).sum()))


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    # Data: drawn from the generative model with the true centres
    labels = torch.randint(K, (args.points,))
    data = TRUE_CENTRES[labels] + math.hypot(PRIOR_SCALE, NOISE_SCALE) * torch.randn(args.points, 2)

    # Model: the encoder (variational parameters φ) and the cluster centres (generative parameters θ)
    encoder = Encoder()
    centres = nn.Parameter(torch.randn(K, 2))
    optimizer = torch.optim.Adam([*encoder.parameters(), centres], lr=args.lr)
    estimator = make_estimator(args.discrete)
    print(f"discrete node: {estimator}; continuous node: Pathwise (default)")

    start = time.perf_counter()
    history = []
    for step in progress(range(1, args.steps + 1), args.steps, "training"):
        x = data[torch.randint(args.points, (args.batch,))]
        loss = negative_elbo(encoder, centres, x, estimator, args.n)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % args.eval_every == 0 or step == args.steps:
            elbo, log_px, ari = evaluate(encoder, centres, data, labels)
            history.append((step, elbo))
            print(f"step {step:5d}  loss {loss.item():7.4f}  ELBO {elbo:8.4f}  log p(x) {log_px:8.4f}"
                  f"  gap {log_px - elbo:6.4f}  ARI {ari:5.3f}  {time.perf_counter() - start:5.1f}s", flush=True)
    train_seconds = time.perf_counter() - start
    save_curve(args.plot, history, "ELBO", f"Clusters: {args.discrete} node above a pathwise node")
    print("learned centres:", [[round(v, 2) for v in c] for c in centres.detach().tolist()])

    # Variance of the two choices for the discrete node, at the trained state, on one fixed batch
    x = data[: args.batch]
    variance = {kind: gradient_variance(encoder, centres, x, kind, args.n, args.repeats)
                for kind in ("score", "enumerate")}
    print(f"gradient variance (trace of covariance, {args.repeats} repeats, {args.batch} points):")
    for kind, (head, total) in variance.items():
        print(f"  {kind:9s}  cluster head {head:.4g}   all parameters {total:.4g}")
    print(f"final: {args.discrete}  ELBO {elbo:.4f}  log p(x) {log_px:.4f}  ARI {ari:.3f}  "
          f"variance ratio score/enumerate (cluster head) {variance['score'][0] / variance['enumerate'][0]:.3g}"
          f"  train {train_seconds:.1f}s  total {time.perf_counter() - start:.1f}s")
    return {"elbo": elbo, "log_px": log_px, "ari": ari, "variance": variance, "seconds": train_seconds}


if __name__ == "__main__":
    main()
