"""Every error of sequence_policy_loss and kl_estimate names the argument, its value and the fix; random
misuse ends in a finite gradient or such an error, never a NaN or a torch-internal message."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import gradest
from gradest.rl import kl_estimate, sequence_policy_loss


def _args(N: int = 4, L: int = 3, **over):  # noqa: ANN003, ANN202
    g = torch.Generator().manual_seed(0)
    logp = (-torch.rand(N, L, generator=g) - 0.1).requires_grad_(True)
    args = dict(logp=logp, rewards=torch.tensor([1.0, 0.0, 2.0, 1.0])[:N], group_size=2,
                mask=torch.ones(N, L, dtype=torch.bool), ref_logp=logp.detach() - 0.1)
    args.update(over)
    return args


def _raises(error: type, match: str, **over) -> None:  # noqa: ANN003
    with pytest.raises(error, match=match):
        sequence_policy_loss(**_args(**over))


@pytest.mark.parametrize("over,error,match", [
    # options
    ({"advantage": "ppo"}, ValueError, r"advantage='ppo' is not one of 'rloo', 'grpo', 'mean'"),
    ({"advantage": None}, TypeError, r"advantage=None must be a string"),
    ({"kl": "k3"}, ValueError, r"kl='k3' is not one of 'k1-reward', 'k3-reward'"),
    ({"ratio": "seq"}, ValueError, r"ratio='seq' is not one of 'token', 'sequence'"),
    ({"length_norm": True}, TypeError, r"length_norm=True must be a string"),
    ({"length_norm": "mean"}, ValueError, r"length_norm='mean' is not one of 'none', 'sequence', 'token'"),
    # logp
    ({"logp": [[-1.0]]}, TypeError, r"logp=\[\[-1.0\]\] is a list, not a tensor"),
    ({"logp": torch.zeros(4, 3, dtype=torch.long)}, TypeError, r"logp=tensor\(shape=\(4, 3\), dtype=torch.int64\) "
                                                              r"must be a floating tensor"),
    ({"logp": torch.zeros(12, requires_grad=True)}, ValueError, r"logp.shape=\(12,\), expected \[N, L\]"),
    ({"logp": torch.zeros(4, 3, 1, requires_grad=True)}, ValueError, r"logp.shape=\(4, 3, 1\), expected \[N, L\]"),
    ({"logp": torch.zeros(4, 0, requires_grad=True)}, ValueError, r"logp.shape=\(4, 0\), expected \[N, L\] with "
                                                                 r"N >= 1 sequences and L >= 1"),
    ({"logp": torch.zeros(4, 3)}, ValueError, r"logp=tensor\(shape=\(4, 3\), dtype=torch.float32\) has "
                                              r"requires_grad=False.*outside torch.no_grad\(\)"),
    # the other log-probs
    ({"ref_logp": torch.zeros(4, 2)}, ValueError, r"ref_logp.shape=\(4, 2\) does not match logp.shape=\(4, 3\)"),
    ({"old_logp": torch.zeros(4, 3, dtype=torch.long)}, TypeError, r"old_logp=tensor\(.*int64\) must be a floating"),
    ({"behaviour_logp": 0.0}, TypeError, r"behaviour_logp=0.0 must be a floating tensor of shape \(4, 3\)"),
    # mask
    ({"mask": torch.ones(4, 2, dtype=torch.bool)}, ValueError, r"mask.shape=\(4, 2\) does not match logp.shape"),
    ({"mask": [[1, 1, 1]] * 4}, TypeError, r"mask=\[\[1, 1, 1\], .*\] must be a bool tensor \[N, L\]"),
    ({"mask": torch.ones(4, 3, dtype=torch.complex64)}, TypeError, r"mask=tensor\(.*complex64\) must be a bool"),
    ({"mask": torch.full((4, 3), 0.5)}, ValueError, r"mask holds 0.5 at 12 position\(s\); a mask is 0/1"),
    ({"mask": torch.tensor([[1, 1, 1], [0, 0, 0], [1, 0, 0], [1, 1, 0]], dtype=torch.bool)}, ValueError,
     r"mask has no generated token in 1 row\(s\), first row 1"),
    # rewards and groups
    ({"rewards": torch.ones(4, 1)}, ValueError, r"rewards.shape=\(4, 1\), expected \(N,\) = \(4,\).*reshape\(-1\)"),
    ({"rewards": torch.ones(4, dtype=torch.long)}, TypeError, r"rewards=tensor\(.*int64\) must be a floating tensor"),
    ({"rewards": [1.0, 0.0, 1.0, 0.0]}, TypeError, r"rewards=\[1.0, 0.0, 1.0, 0.0\] must be a floating tensor"),
    ({"rewards": torch.tensor([1.0, math.nan, 0.0, 0.0])}, ValueError,
     r"rewards contains NaN \(1 of 4 elements\); check the reward function"),
    ({"rewards": torch.tensor([1.0, math.inf, 0.0, 0.0])}, ValueError, r"rewards contains \+inf \(1 of 4 elements\)"),
    ({"group_size": 3}, ValueError, r"group_size=3 does not divide N=4; the batch must hold whole groups"),
    ({"group_size": 1}, ValueError, r"group_size=1 must be >= 2"),
    ({"group_size": 2.0}, TypeError, r"group_size=2.0 must be an int"),
    ({"group_size": True}, TypeError, r"group_size=True must be an int"),
    # KL
    ({"kl_coef": -0.1}, ValueError, r"kl_coef=-0.1 must be a finite float >= 0"),
    ({"kl_coef": math.nan}, ValueError, r"kl_coef=nan must be a finite float >= 0"),
    ({"kl_coef": "0.1"}, TypeError, r"kl_coef='0.1' must be a float >= 0"),
    ({"kl_coef": 0.1, "ref_logp": None}, ValueError, r"kl_coef=0.1 needs ref_logp=.*or kl_coef=0"),
    # ratios
    ({"clip": 0.0}, ValueError, r"clip=0.0: ε_low=0.0 must lie in \(0, 1\)"),
    ({"clip": 1.5}, ValueError, r"clip=1.5: ε_low=1.5 must lie in \(0, 1\)"),
    ({"clip": (0.2, -0.1)}, ValueError, r"clip=\(0.2, -0.1\): ε_high=-0.1 must be a finite float > 0"),
    ({"clip": [0.2, 0.3]}, TypeError, r"clip=\[0.2, 0.3\] must be a float ε or a pair"),
    ({"clip": (0.2, "x")}, TypeError, r"clip=\(0.2, 'x'\): ε_high='x' must be a float"),
    ({"tis_cap": 2.0}, ValueError, r"tis_cap=2.0 needs behaviour_logp="),
    ({"tis_cap": 0.0, "behaviour_logp": torch.zeros(4, 3)}, ValueError, r"tis_cap=0.0 must be a finite float > 0"),
    ({"process_group": "wrold"}, TypeError, r"process_group='wrold' must be 'world'"),
])
def test_errors_name_the_argument_and_the_fix(over: dict, error: type, match: str) -> None:
    _raises(error, "sequence_policy_loss: " + match, **over)


@pytest.mark.parametrize("name", ["logp", "ref_logp", "old_logp", "behaviour_logp"])
@pytest.mark.parametrize("value,word", [(math.nan, "NaN"), (math.inf, r"\+inf"), (-math.inf, "-inf")])
def test_non_finite_log_probs_are_refused_even_under_the_mask(name: str, value: float, word: str) -> None:
    args = _args(old_logp=torch.full((4, 3), -1.0), behaviour_logp=torch.full((4, 3), -1.0))
    args["mask"] = torch.ones(4, 3, dtype=torch.bool)
    args["mask"][0, 2] = False
    bad = args[name].detach().clone()
    bad[0, 2] = value  # a masked position: still refused (it would reach a NaN through 0 · inf)
    if name == "logp":
        bad.requires_grad_(True)
    args[name] = bad
    with pytest.raises(ValueError, match=rf"sequence_policy_loss: {name} contains {word} \(1 of 12 elements\); "
                                         r"log-probabilities must be finite, also at masked positions"):
        sequence_policy_loss(**args, kl_coef=0.1)


def test_an_overflowing_ratio_is_refused_while_validation_is_on() -> None:
    args = _args(old_logp=torch.full((4, 3), -200.0))  # float32: exp(200) = inf
    with pytest.raises(ValueError, match=r"sequence_policy_loss: the loss is (-?inf|nan): an importance ratio or KL "
                                         r"term overflowed \(torch.float32\).*clip=, tis_cap="):
        sequence_policy_loss(**args)


def test_validation_off_keeps_the_fast_path() -> None:
    gradest.set_validation(False)
    try:
        loss = sequence_policy_loss(**_args(rewards=torch.tensor([1.0, math.nan, 0.0, 0.0])))
        assert math.isnan(float(loss.detach()))  # the user switched the checks off: no sync, no error
        sequence_policy_loss(**_args(mask=torch.full((4, 3), 0.5)))  # read as mask != 0
    finally:
        gradest.set_validation(True)


@pytest.mark.parametrize("over,error,match", [
    ({"kind": "k4"}, ValueError, r"kind='k4' is not one of 'k1', 'k2', 'k3'"),
    ({"ref_logp": torch.zeros(2, 2)}, ValueError, r"ref_logp.shape=\(2, 2\) does not match logp.shape=\(2, 3\)"),
    ({"ref_logp": None}, TypeError, r"ref_logp=None must be a floating tensor"),
    ({"logp": torch.zeros(6)}, ValueError, r"logp.shape=\(6,\), expected \[N, L\]"),
    ({"mask": torch.full((2, 3), 2)}, ValueError, r"mask holds 2 at 6 position\(s\)"),
    ({"logp": torch.tensor([[0.0, math.nan, 0.0], [0.0, 0.0, 0.0]])}, ValueError,
     r"logp contains NaN \(1 of 6 elements\)"),
])
def test_kl_estimate_errors(over: dict, error: type, match: str) -> None:
    args = dict(logp=torch.zeros(2, 3), ref_logp=torch.zeros(2, 3), kind="k1")
    args.update(over)
    with pytest.raises(error, match="kl_estimate: " + match):
        kl_estimate(**args)


# --- attack: random misuse ends in a finite gradient or a gradest error ------------------------------

FINITE = st.sampled_from([0.0, -1.0, -1e-3, -0.7, -30.0, -1e9, 1.0, 60.0])
NASTY = st.sampled_from([0.0, -1.0, -1e-3, -30.0, -1e9, 1.0, math.nan, math.inf, -math.inf])


@settings(max_examples=300, deadline=None)
@given(P=st.integers(1, 3), L=st.integers(1, 4), G=st.sampled_from([1, 2, 2, 3, 3, 4]), data=st.data(),
       advantage=st.sampled_from(["rloo", "grpo", "mean"]),
       kl=st.sampled_from(["k1-reward", "k3-reward", "k1-loss", "k2-loss", "k3-loss"]),
       ratio=st.sampled_from(["token", "sequence"]), length_norm=st.sampled_from(["none", "sequence", "token"]),
       clip=st.sampled_from([None, 0.2, (0.2, 0.28)]), tis_cap=st.sampled_from([None, 2.0]),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_random_misuse_gives_a_finite_gradient_or_a_named_error(P, L, G, data, advantage, kl, ratio, length_norm,  # noqa: ANN001
                                                               clip, tis_cap, dtype) -> None:
    N = P * G + (1 if data.draw(st.integers(0, 9)) == 0 else 0)  # now and then a batch of broken groups
    def tensor(shape, elements=None):  # noqa: ANN001, ANN202
        if elements is None:  # mostly finite values, extreme ones included; now and then a NaN or ±inf
            elements = NASTY if data.draw(st.integers(0, 9)) == 0 else FINITE
        values = data.draw(st.lists(elements, min_size=math.prod(shape), max_size=math.prod(shape)))
        return torch.tensor(values, dtype=dtype).reshape(shape)

    logp = tensor((N, L)).requires_grad_(True)
    lengths = torch.tensor(data.draw(st.lists(st.integers(0 if data.draw(st.integers(0, 9)) == 0 else 1, L),
                                              min_size=N, max_size=N)))
    mask = torch.arange(L)[None, :] < lengths[:, None]  # now and then an empty row
    kwargs = dict(rewards=tensor((N,)), group_size=G, mask=mask, advantage=advantage, kl=kl, ratio=ratio,
                  length_norm=length_norm, clip=clip, ref_logp=tensor((N, L)), kl_coef=0.1)
    if data.draw(st.booleans()):
        kwargs["old_logp"] = tensor((N, L))
    if data.draw(st.booleans()):
        kwargs["behaviour_logp"] = tensor((N, L))
        kwargs["tis_cap"] = tis_cap
    try:
        loss = sequence_policy_loss(logp=logp, **kwargs)
    except (ValueError, TypeError) as e:
        assert str(e).startswith("sequence_policy_loss: "), e
        return
    (grad,) = torch.autograd.grad(loss, logp)
    assert torch.isfinite(loss) and torch.isfinite(grad).all(), (loss, grad)


@pytest.mark.parametrize("name", ["old_logp", "behaviour_logp"])
@pytest.mark.parametrize("value", [math.inf, -math.inf])
def test_an_infinite_ratio_that_a_clip_or_cap_would_hide_is_refused(name: str, value: float) -> None:
    """exp(logp − inf) = 0 and min(inf, C) = C: without its own check, such an input would vanish silently."""
    args = _args(old_logp=torch.full((4, 3), -1.0), behaviour_logp=torch.full((4, 3), -1.0))
    args[name][1, 1] = value
    with pytest.raises(ValueError, match=rf"sequence_policy_loss: {name} contains [+-]inf \(1 of 12 elements\)"):
        sequence_policy_loss(**args, clip=0.2, tis_cap=2.0)


# --- the one-sync value check, with every option: its triggers differ between the loss's paths ------------

SHAPES = [pytest.param(dict(ratio=r, length_norm=n), id=f"{r}-{n}") for r in ("token", "sequence")
          for n in ("none", "sequence", "token")]
EXTRAS = [pytest.param({}, id="on-policy"), pytest.param({"old_logp": True, "clip": 0.2}, id="clip"),
          pytest.param({"behaviour_logp": True, "tis_cap": 2.0}, id="tis"),
          pytest.param({"kl": "k3-loss", "kl_coef": 0.1}, id="k3-loss"),
          pytest.param({"kl": "k1-reward", "kl_coef": 0.1}, id="k1-reward")]


def _with(extra: dict) -> dict:
    return {k: (torch.full((4, 3), -1.0) if v is True else v) for k, v in extra.items()}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("extra", EXTRAS)
def test_an_empty_row_is_refused_with_every_option(shape: dict, extra: dict) -> None:
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [0, 0, 0], [1, 0, 0]], dtype=torch.bool)
    _raises(ValueError, r"sequence_policy_loss: mask has no generated token in 1 row\(s\), first row 2",
            mask=mask, **shape, **_with(extra))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", ["old_logp", "behaviour_logp"])
@pytest.mark.parametrize("value", [math.inf, -math.inf])
def test_an_infinite_ratio_is_refused_with_every_option(shape: dict, name: str, value: float) -> None:
    args = _args(old_logp=torch.full((4, 3), -1.0), behaviour_logp=torch.full((4, 3), -1.0), **shape)
    args[name][1, 1] = value
    with pytest.raises(ValueError, match=rf"sequence_policy_loss: {name} contains [+-]inf \(1 of 12 elements\)"):
        sequence_policy_loss(**args, clip=0.2, tis_cap=2.0)


@pytest.mark.parametrize("shape", SHAPES)
def test_a_check_sum_that_overflows_from_finite_inputs_is_no_error(shape: dict) -> None:
    """Log-ratios of −3e38 are finite but their sum is not: the inputs are scanned, nothing is wrong, and
    the (clipped, so finite) loss comes back."""
    old_logp = torch.full((4, 3), -1.0)
    old_logp[:, 0] = 3e38  # log ρ = logp − 3e38 on the first token of every sequence: ρ = 0, or clipped
    args = _args(old_logp=old_logp, **shape)
    loss = sequence_policy_loss(**args, clip=0.2)
    (grad,) = torch.autograd.grad(loss, args["logp"])
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
