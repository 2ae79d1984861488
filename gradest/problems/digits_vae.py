"""The categorical VAE of benchmark task 1 on scikit-learn's digits, at a fixed trained state."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributions import Independent, OneHotCategorical

from gradest.estimators import Estimator, LeaveOneOut, ScoreFunction
from gradest.expect import expectation
from gradest.problems.base import Problem

__all__ = ["DigitsVAE"]


def _digits() -> Tensor:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - the cli extra installs scikit-learn
        raise ImportError("DigitsVAE: needs scikit-learn for load_digits; pip install 'gradest[cli]'.") from e
    return torch.from_numpy(load_digits().data > 7).float()


class DigitsVAE(Problem):
    r"""J(logits) = E_{z∼q}[log p(x | z)] for a trained categorical VAE, per image of a fixed batch.

    The model is that of benchmark task 1 (20 independent 10-way categoricals, encoder and decoder
    MLPs 64-256-200 and 200-256-64, Bernoulli likelihood), trained for ``steps`` Adam steps with the
    leave-one-out score-function estimator from ``torch.manual_seed(seed)`` when the problem is built.
    The parameters whose gradient is estimated are the encoder's logits for the first ``images``
    digits, ``[images, 20, 10]``. The joint support (10²⁰ per image) is far too large to enumerate,
    so the exact gradient is unknown: ``compare`` measures bias against a high-precision reference
    (``reference``).

    Example:
        >>> from gradest.problems import DigitsVAE
        >>> problem = DigitsVAE(images=2, steps=5)       # needs scikit-learn (the cli extra)
        >>> problem.dist(*problem.params()).event_shape, problem.exact
        (torch.Size([20, 10]), False)
    """

    exact = False

    def __init__(self, *, images: int = 8, steps: int = 200, seed: int = 0) -> None:
        x = _digits()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            enc = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 200))
            self.decoder = nn.Sequential(nn.Linear(200, 256), nn.ReLU(), nn.Linear(256, 64))
            opt = torch.optim.Adam([*enc.parameters(), *self.decoder.parameters()], lr=1e-3)
            est = ScoreFunction(LeaveOneOut())
            g = torch.Generator().manual_seed(seed)
            for _ in range(steps):
                batch = x[torch.randint(0, x.shape[0], (100,), generator=g)]
                q = Independent(OneHotCategorical(logits=enc(batch).view(-1, 20, 10)), 1)
                rec = expectation(lambda z, b=batch: -self._log_lik(z, b), q, est, n=4)  # type: ignore[misc]
                kl = (q.base_dist.probs * (q.base_dist.logits + torch.log(torch.tensor(10.0)))).sum((-1, -2))
                opt.zero_grad()
                (rec + kl).mean().backward()
                opt.step()
            with torch.no_grad():
                self.x = x[:images]
                self.logits0 = enc(self.x).view(images, 20, 10).double()
        self.decoder = self.decoder.double().requires_grad_(False)
        self.name = f"digits-vae(images={images},trained={steps})"

    def _log_lik(self, z: Tensor, x: Tensor) -> Tensor:
        logits = self.decoder(z.flatten(-2).to(next(self.decoder.parameters()).dtype))
        return (x.to(logits) * logits - nn.functional.softplus(logits)).sum(-1)

    def initial(self) -> tuple[Tensor, ...]:
        return (self.logits0,)

    def dist(self, logits: Tensor) -> Independent:
        return Independent(OneHotCategorical(logits=logits), 1)

    def f(self, z: Tensor) -> Tensor:
        return self._log_lik(z, self.x).to(z.dtype)

    def reference(self) -> tuple[Estimator, int]:
        """The estimator and sample count used for the high-precision reference gradient."""
        return ScoreFunction(LeaveOneOut()), 16
