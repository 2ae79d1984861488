"""sequence_policy_loss compiles with torch.compile(fullgraph=True): no graph break, the same loss and
gradient as eager. The value checks (which sync) are off while compiling; shape and type checks run
when the function is traced, and their errors reach the caller."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from gradest.rl import sequence_policy_loss

N, L, V, G = 8, 6, 5, 4


@pytest.fixture(autouse=True)
def fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _problem() -> dict:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(V, (N, L), generator=g)
    lengths = torch.randint(1, L + 1, (N,), generator=g)
    ref = torch.randn(N, L, V, generator=g).log_softmax(-1).gather(-1, tokens[..., None])[..., 0]
    return dict(tokens=tokens, mask=torch.arange(L)[None] < lengths[:, None], ref_logp=ref, old_logp=ref + 0.1,
                behaviour_logp=ref + 0.05, rewards=torch.randint(3, (N,), generator=g).float(),
                theta=torch.randn(N, L, V, generator=g))


CONFIGS = {
    "rloo, k1-reward (the default)": dict(),
    "grpo, k3-loss, sequence norm": dict(advantage="grpo", kl="k3-loss", length_norm="sequence"),
    "PPO epochs, DAPO clip, token norm": dict(old_logp=True, clip=(0.2, 0.28), length_norm="token"),
    "GSPO with truncated IS": dict(ratio="sequence", length_norm="sequence", old_logp=True, clip=3e-4,
                                   behaviour_logp=True, tis_cap=2.0),
}


def _step(problem: dict, config: dict):  # noqa: ANN202
    tokens, mask, rewards, ref = problem["tokens"], problem["mask"], problem["rewards"], problem["ref_logp"]
    extra = {k: (problem[k] if v is True else v) for k, v in config.items()}

    def step(theta: torch.Tensor) -> torch.Tensor:
        logp = theta.log_softmax(-1).gather(-1, tokens[..., None])[..., 0]
        return sequence_policy_loss(logp=logp, rewards=rewards, group_size=G, mask=mask, ref_logp=ref,
                                    kl_coef=0.1, **extra)

    return step


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_compiled_loss_and_gradient_equal_eager(name: str, backend: str) -> None:
    problem = _problem()
    step = _step(problem, CONFIGS[name])
    theta = problem["theta"].clone().requires_grad_(True)
    eager = step(theta)
    (eager_grad,) = torch.autograd.grad(eager, theta)
    compiled = torch.compile(step, fullgraph=True, backend=backend)
    loss = compiled(theta)
    (grad,) = torch.autograd.grad(loss, theta)
    tol = {} if backend == "aot_eager" else {"rtol": 1e-5, "atol": 1e-6}
    torch.testing.assert_close(loss, eager, **tol)
    torch.testing.assert_close(grad, eager_grad, **tol)


def test_shape_errors_are_raised_when_tracing() -> None:
    problem = _problem()

    def step(logp: torch.Tensor) -> torch.Tensor:
        return sequence_policy_loss(logp=logp, rewards=problem["rewards"], group_size=G, mask=problem["mask"][:, :-1])

    logp = problem["ref_logp"].clone().requires_grad_(True)
    message = r"sequence_policy_loss: mask.shape=\(8, 5\) does not match logp.shape=\(8, 6\)"
    # fullgraph=True turns any exception into Dynamo's Unsupported, which quotes ours
    with pytest.raises(torch._dynamo.exc.Unsupported, match=message):
        torch.compile(step, fullgraph=True, backend="aot_eager")(logp)
    torch._dynamo.reset()
    with pytest.raises(ValueError, match=message):  # without fullgraph Dynamo falls back to eager, which raises
        torch.compile(step, backend="aot_eager")(logp)
