"""gradest.rl.sequence_policy_loss and kl_estimate: the vectorised loss equals its loop definition in every
configuration; identities at θ = θ_old; clipping; masked positions; kl_estimate's values; dtypes and
devices. (Unbiasedness and the documented biases: test_sequence_unbiased.py; errors: test_sequence_errors.py.)"""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gradest.rl import group_advantages, kl_estimate, sequence_policy_loss
from gradest.rl.sequence import ADVANTAGES, KLS, LENGTH_NORMS, RATIOS

from . import sequence_reference as ref

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]


def _data(P: int, G: int, L: int, seed: int, *, prefix_mask: bool = True, dtype=torch.float64, device="cpu"):
    """Random log-probs of N = P·G sequences (ref, old and behaviour near logp), a mask with >= 1 token
    per row, and rewards with ties."""
    g = torch.Generator().manual_seed(seed)
    N = P * G
    logp = -torch.rand(N, L, generator=g, dtype=torch.float64) * 2 - 0.05
    near = [logp + 0.3 * torch.randn(N, L, generator=g, dtype=torch.float64) for _ in range(3)]
    ref_logp, old_logp, behaviour_logp = (x.clamp(max=-0.01) for x in near)
    if prefix_mask:
        lengths = torch.randint(1, L + 1, (N,), generator=g)
        mask = torch.arange(L)[None, :] < lengths[:, None]
    else:  # tool output or prompt tokens masked in the middle
        mask = torch.rand(N, L, generator=g) < 0.6
        mask[torch.arange(N), torch.randint(L, (N,), generator=g)] = True
    rewards = torch.randint(3, (N,), generator=g).double()
    out = dict(logp=logp, ref_logp=ref_logp, old_logp=old_logp, behaviour_logp=behaviour_logp, mask=mask,
               rewards=rewards)
    return {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in out.items()}


def _loss_and_grad(fn, data: dict, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
    logp = data["logp"].clone().requires_grad_(True)
    args = {k: v for k, v in data.items() if k != "logp"}
    for name in ("old_logp", "behaviour_logp", "ref_logp"):
        if kwargs.pop(f"no_{name}", False):
            args.pop(name)
    loss = fn(logp=logp, **args, **kwargs)
    (grad,) = torch.autograd.grad(loss, logp)
    return loss.detach(), grad


CONFIGS = st.fixed_dictionaries({
    "advantage": st.sampled_from(ADVANTAGES),
    "kl": st.sampled_from(KLS),
    "kl_coef": st.sampled_from([0.0, 0.1]),
    "ratio": st.sampled_from(RATIOS),
    "length_norm": st.sampled_from(LENGTH_NORMS),
    "clip": st.sampled_from([None, 0.2, (0.1, 0.3)]),
    "no_old_logp": st.booleans(),
    "no_behaviour_logp": st.booleans(),
    "tis_cap": st.sampled_from([None, 1.5]),
})


@settings(max_examples=150, deadline=None)
@given(config=CONFIGS, P=st.integers(1, 3), G=st.integers(2, 4), L=st.integers(1, 5), seed=st.integers(0, 2**16),
       prefix_mask=st.booleans())
def test_loss_and_gradient_equal_the_loop_definition(config: dict, P: int, G: int, L: int, seed: int,
                                                     prefix_mask: bool) -> None:
    data = _data(P, G, L, seed, prefix_mask=prefix_mask)
    if config["no_behaviour_logp"]:
        config = {**config, "tis_cap": None}
    got = _loss_and_grad(sequence_policy_loss, data, group_size=G, **config)
    want = _loss_and_grad(ref.sequence_policy_loss, data, group_size=G, **config)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])


@pytest.mark.parametrize("ratio,clip", [("token", None), ("token", 0.2), ("token", (0.2, 0.28)),
                                        ("sequence", None), ("sequence", 3e-4)])
@pytest.mark.parametrize("kl", ["k1-reward", "k3-loss"])
@pytest.mark.parametrize("length_norm", LENGTH_NORMS)
def test_at_theta_old_the_gradient_is_the_on_policy_one(ratio: str, clip, kl: str, length_norm: str) -> None:  # noqa: ANN001
    """ρ = 1 at θ = θ_old: old_logp and clip change nothing (a tie of PPO's min splits the gradient 1/2 + 1/2)."""
    data = _data(3, 4, 6, seed=1)
    data["old_logp"] = data["logp"].clone()
    kwargs = dict(group_size=4, kl=kl, kl_coef=0.1, length_norm=length_norm, ratio=ratio, no_behaviour_logp=True)
    off = _loss_and_grad(sequence_policy_loss, data, clip=clip, **kwargs)
    on = _loss_and_grad(sequence_policy_loss, data, no_old_logp=True, **kwargs)
    torch.testing.assert_close(off, on, rtol=0, atol=1e-15)


def test_sequence_ratio_at_theta_old_is_the_token_ratio_with_the_sequence_advantage() -> None:
    """GSPO (ratio="sequence", length_norm="sequence") at θ_old: A_i Σ_t ∇log π / |y_i|, the token loss
    with the sequence's advantage (KL in the loss, so the two advantages agree)."""
    data = _data(2, 4, 5, seed=2)
    kwargs = dict(group_size=4, kl="k2-loss", kl_coef=0.1, length_norm="sequence", no_behaviour_logp=True,
                  no_old_logp=True)
    seq = _loss_and_grad(sequence_policy_loss, data, ratio="sequence", **kwargs)
    tok = _loss_and_grad(sequence_policy_loss, data, ratio="token", **kwargs)
    torch.testing.assert_close(seq, tok)


def test_advantages_without_kl_equal_group_advantages() -> None:
    """rloo and grpo are group_advantages' leave-one-out and normalised forms (P groups of G)."""
    P, G = 3, 4
    data = _data(P, G, 1, seed=3)
    data["mask"] = torch.ones_like(data["mask"])
    columns = data["rewards"].reshape(P, G).T  # [G, P]: samples lead
    for advantage, normalize in (("rloo", False), ("grpo", True)):
        _, grad = _loss_and_grad(sequence_policy_loss, data, group_size=G, advantage=advantage,
                                 no_old_logp=True, no_behaviour_logp=True, no_ref_logp=True)
        want = group_advantages(rewards=columns, normalize=normalize).T.reshape(-1)
        torch.testing.assert_close(grad[:, 0], -want / (P * G))


def test_clipping_zeroes_the_gradient_where_the_ratio_left_the_range_in_the_advantages_direction() -> None:
    """PPO's pessimistic min, token by token, and DAPO's asymmetric range."""
    logp = torch.zeros(4, 1, dtype=torch.float64, requires_grad=True)
    ratios = torch.tensor([1.25, 1.25, 0.7, 0.7], dtype=torch.float64)
    old = -ratios.log()[:, None]  # exp(logp − old) = ratio
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)  # rloo (G = 2): A = +1, −1, −1, +1

    def grad(clip):  # noqa: ANN001, ANN202
        loss = sequence_policy_loss(logp=logp, rewards=rewards, group_size=2, old_logp=old, clip=clip)
        return torch.autograd.grad(loss, logp)[0][:, 0]

    n = 4
    # ε = 0.2: 1.25 > 1.2 with A > 0 is clipped; 0.7 < 0.8 with A < 0 is clipped; the others keep ρA's gradient
    torch.testing.assert_close(grad(0.2), torch.tensor([0.0, 1.25 / n, 0.0, -0.7 / n], dtype=torch.float64))
    # DAPO (0.2, 0.28): 1.25 < 1.28 is inside the range now
    torch.testing.assert_close(grad((0.2, 0.28)), torch.tensor([-1.25 / n, 1.25 / n, 0.0, -0.7 / n],
                                                              dtype=torch.float64))
    torch.testing.assert_close(grad(None), torch.tensor([-1.25 / n, 1.25 / n, 0.7 / n, -0.7 / n],
                                                        dtype=torch.float64))


def test_gspo_clips_whole_sequences() -> None:
    """ratio="sequence": one ratio per sequence, the geometric mean of its tokens' ratios under
    length_norm="sequence"; a sequence outside the range gets no gradient at all."""
    logp = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[0.0, -0.3, 0.0], [0.0, 0.0, -0.03]], dtype=torch.float64)  # s = e^0.1, e^0.01
    loss = sequence_policy_loss(logp=logp, rewards=torch.tensor([1.0, 0.0], dtype=torch.float64), group_size=2,
                                old_logp=old, clip=0.05, ratio="sequence", length_norm="sequence")
    (grad,) = torch.autograd.grad(loss, logp)
    assert torch.equal(grad[0], torch.zeros(3, dtype=torch.float64))  # s = 1.105 > 1.05 with A = +1
    s = torch.tensor(0.01, dtype=torch.float64).exp()
    torch.testing.assert_close(grad[1], torch.full((3,), float(s) / 3 / 2, dtype=torch.float64))  # A = −1


def test_values_at_masked_positions_are_ignored() -> None:
    """Finite garbage under the mask (zeros in one tensor, −1e9 in another) changes nothing: it never
    reaches an exp, a square or a sum."""
    data = _data(2, 3, 6, seed=4)
    garbage = {k: v.clone() for k, v in data.items()}
    for name, fill in (("logp", 0.0), ("ref_logp", -1e9), ("old_logp", 5.0), ("behaviour_logp", -1e9)):
        garbage[name] = garbage[name].masked_fill(~data["mask"], fill)
    for kl, ratio in itertools.product(["k1-reward", "k3-reward", "k2-loss", "k3-loss"], RATIOS):
        kwargs = dict(group_size=3, kl=kl, kl_coef=0.1, ratio=ratio, clip=0.2, tis_cap=2.0)
        clean_loss, clean_grad = _loss_and_grad(sequence_policy_loss, data, **kwargs)
        loss, grad = _loss_and_grad(sequence_policy_loss, garbage, **kwargs)
        torch.testing.assert_close(loss, clean_loss)
        torch.testing.assert_close(grad, clean_grad.masked_fill(~data["mask"], 0.0))


def test_a_numeric_mask_is_a_bool_mask() -> None:
    data = _data(2, 2, 4, seed=5)
    want = _loss_and_grad(sequence_policy_loss, data, group_size=2, kl_coef=0.1)
    for dtype in (torch.float32, torch.int64, torch.uint8):
        numeric = {**data, "mask": data["mask"].to(dtype)}
        torch.testing.assert_close(_loss_and_grad(sequence_policy_loss, numeric, group_size=2, kl_coef=0.1), want)


def test_no_mask_is_all_tokens() -> None:
    data = _data(2, 2, 4, seed=6)
    data["mask"] = torch.ones_like(data["mask"])
    want = _loss_and_grad(sequence_policy_loss, data, group_size=2, kl_coef=0.1, length_norm="token")
    data.pop("mask")
    torch.testing.assert_close(_loss_and_grad(sequence_policy_loss, data, group_size=2, kl_coef=0.1,
                                              length_norm="token"), want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_dtype_and_device_are_kept(dtype: torch.dtype, device: str) -> None:
    data = _data(2, 4, 5, seed=7, dtype=dtype, device=device)
    data["rewards"] = data["rewards"].float()  # rewards of another floating dtype are cast to logp's
    # no clip: bfloat16 rounding of a ratio near 1 ± ε could pick the other branch of the min
    loss, grad = _loss_and_grad(sequence_policy_loss, data, group_size=4, kl="k3-loss", kl_coef=0.1)
    assert loss.dtype == dtype and loss.device.type == device and grad.dtype == dtype
    rounded = {k: v.cpu().double() if v.is_floating_point() else v.cpu() for k, v in data.items()}
    want = _loss_and_grad(ref.sequence_policy_loss, rounded, group_size=4, kl="k3-loss", kl_coef=0.1)
    # each dtype's own tolerance (the comparison is in float64): torch's defaults for float32, whose
    # rounding alone differs from the float64 reference by up to ~4e-7 here, depending on the order of the sums
    tol = {torch.bfloat16: {"rtol": 2e-2, "atol": 2e-2}, torch.float32: {"rtol": 1.3e-6, "atol": 1e-5}}.get(dtype, {})
    torch.testing.assert_close(loss.double().cpu(), want[0], **tol)
    torch.testing.assert_close(grad.double().cpu(), want[1], **tol)


def test_docstring_examples_run() -> None:
    import doctest

    from gradest.rl import sequence

    result = doctest.testmod(sequence)
    assert result.failed == 0 and result.attempted > 0


def test_without_grad_mode_the_loss_can_be_logged() -> None:
    data = _data(2, 2, 3, seed=8)
    with torch.no_grad():
        loss = sequence_policy_loss(**data, group_size=2, kl_coef=0.1)
    assert loss.dim() == 0 and not loss.requires_grad


def test_loss_value_is_the_mean_weighted_advantage_plus_the_kl_terms() -> None:
    data = _data(2, 2, 3, seed=9)
    args = dict(rewards=data["rewards"], mask=data["mask"], group_size=2)
    lengths = data["mask"].sum(1).double()
    with torch.no_grad():
        rloo = (data["rewards"] - data["rewards"].reshape(2, 2).flip(1).reshape(-1))  # G = 2: r_i − r_other
        plain = sequence_policy_loss(logp=data["logp"], **args)
        torch.testing.assert_close(plain, -(rloo * lengths).sum() / 4)  # every box has the value 1
        normed = sequence_policy_loss(logp=data["logp"], **args, length_norm="sequence")
        assert abs(float(normed)) < 1e-12  # Σ_t w_t = 1 and a group's rloo advantages sum to zero
        k3 = kl_estimate(logp=data["logp"], ref_logp=data["ref_logp"], mask=data["mask"], kind="k3")
        loss = sequence_policy_loss(logp=data["logp"], **args, ref_logp=data["ref_logp"], kl_coef=0.5, kl="k3-loss")
        torch.testing.assert_close(loss, plain + 0.5 * k3.sum() / 4)


# ------------------------------------------------------------------------------------------------
# kl_estimate
# ------------------------------------------------------------------------------------------------


def test_kl_estimate_values_by_hand() -> None:
    logp = torch.tensor([[-1.0, -2.0, -0.5]])
    ref_logp = torch.tensor([[-1.5, -1.0, -9.0]])
    mask = torch.tensor([[True, True, False]])
    delta = torch.tensor([0.5, -1.0, 0.0])
    torch.testing.assert_close(kl_estimate(logp=logp, ref_logp=ref_logp, mask=mask, kind="k1")[0], delta)
    torch.testing.assert_close(kl_estimate(logp=logp, ref_logp=ref_logp, mask=mask, kind="k2")[0], delta**2 / 2)
    torch.testing.assert_close(kl_estimate(logp=logp, ref_logp=ref_logp, mask=mask, kind="k3")[0],
                               torch.exp(-delta) - 1 + delta)
    out = kl_estimate(logp=logp.requires_grad_(True), ref_logp=ref_logp)
    assert not out.requires_grad and out.shape == (1, 3)
    assert (kl_estimate(logp=logp, ref_logp=ref_logp, kind="k3") >= 0).all()


@pytest.mark.parametrize("ratio", ["token", "sequence"])
@pytest.mark.parametrize("length_norm", ["none", "sequence", "token"])
def test_log_probs_of_mixed_dtypes_promote_as_in_torch(ratio: str, length_norm: str) -> None:
    """float32 logp with float64 old, behaviour and reference log-probs: a float64 loss, the float64 one's value."""
    data = _data(2, 3, 4, seed=3)
    kwargs = dict(group_size=3, ratio=ratio, length_norm=length_norm, clip=0.2, tis_cap=2.0, kl="k3-loss",
                  kl_coef=0.1)
    want = _loss_and_grad(sequence_policy_loss, data, **kwargs)
    mixed = dict(data, logp=data["logp"].float())
    loss, grad = _loss_and_grad(sequence_policy_loss, mixed, **kwargs)
    assert loss.dtype == torch.float64 and grad.dtype == torch.float32
    torch.testing.assert_close(loss, want[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, want[1].float(), rtol=1e-5, atol=1e-6)
