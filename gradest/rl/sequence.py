r"""Policy-gradient losses for sequence models (language-model RL), with KL terms whose gradients are
stated exactly.

A prompt x is answered by a sequence y = (y_1, ..., y_|y|) drawn token by token from π_θ(y_t | x, y_<t).
The objective is

.. math::
    J_\beta(\theta) = \mathbb{E}_x\Bigl[\mathbb{E}_{y\sim\pi_\theta(\cdot|x)} R(x, y)
        - \beta\,\mathrm{KL}\bigl(\pi_\theta(\cdot|x)\,\|\,\pi_{\text{ref}}(\cdot|x)\bigr)\Bigr],
    \qquad \mathrm{KL}(\pi_\theta\|\pi_{\text{ref}}) = \mathbb{E}_{y\sim\pi_\theta}
        \sum_t \log\frac{\pi_\theta(y_t|x,y_{<t})}{\pi_{\text{ref}}(y_t|x,y_{<t})},

the KL of the whole sequence. Tensors are ``[N, L]``: N sequences (``N = prompts × group_size``, the
samples of a prompt contiguous) and L token positions, with a mask on the generated tokens.

References:
    Schulman (2020). Approximating KL Divergence. http://joschu.net/blog/kl-approx.html.
    Tang & Munos (2025). On a few pitfalls in KL divergence gradient estimation for RL. arXiv:2506.09477.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gradest._distributed import all_reduce_flat, check_process_group, rank, resolve, world_size
from gradest._validation import check_finite, check_positive, describe_nonfinite, is_validation_enabled, summarize
from gradest.surrogate import magic_box, stop_gradient

__all__ = ["sequence_policy_loss", "kl_estimate"]

ADVANTAGES = ("rloo", "grpo", "mean")
KLS = ("k1-reward", "k3-reward", "k1-loss", "k2-loss", "k3-loss")
RATIOS = ("token", "sequence")
LENGTH_NORMS = ("none", "sequence", "token")
KINDS = ("k1", "k2", "k3")
STD_EPS = 1e-4  # added to the group's standard deviation under advantage="grpo", as group_advantages


def sequence_policy_loss(
    *,
    logp: Tensor,
    rewards: Tensor,
    group_size: int,
    mask: Tensor | None = None,
    advantage: str = "rloo",
    ref_logp: Tensor | None = None,
    kl_coef: float = 0.0,
    kl: str = "k1-reward",
    old_logp: Tensor | None = None,
    clip: float | tuple[float, float] | None = None,
    ratio: str = "token",
    behaviour_logp: Tensor | None = None,
    tis_cap: float | None = None,
    length_norm: str = "none",
    process_group: object = None,
) -> Tensor:
    r"""Policy-gradient loss for N sampled sequences in groups, with a KL penalty to a reference policy.

    With ``A`` the advantage, ``w`` the token weights of ``length_norm``, ``τ`` the truncated importance
    weights and ``k`` the KL terms placed in the loss (all detached except ``logp``):

    .. math::
        \mathcal{L} = \frac{1}{N}\sum_{i=1}^{N}\sum_{t} w_{it}\,\tau_{it}\Bigl(
            -\min\bigl(\rho_{it} A_{it},\ \mathrm{clip}(\rho_{it}, 1-\epsilon_{lo}, 1+\epsilon_{hi})\,A_{it}\bigr)
            + \beta\,k_{it}\Bigr),
        \qquad \rho_{it} = \frac{\pi_\theta(y_{it}|\cdot)}{\pi_{\text{old}}(y_{it}|\cdot)},

    where ``ρ`` is DiCE's magic box of ``logp`` (value 1, gradient ∇ log π_θ) without ``old_logp`` (so a
    clip never binds then), and there is no min without ``clip``. With ``ratio="sequence"`` the policy
    term is one per sequence, :math:`-\tau_i\min(s_i A_i, \mathrm{clip}(s_i) A_i)` with
    :math:`\log s_i = \sum_t w_{it} \log\rho_{it}`: GSPO's ratio for ``length_norm="sequence"``, the
    sequence likelihood ratio for ``"none"``.

    **Advantages** (``T_i = R_i − β Σ_t κ_it``, the return with the KL in the reward, or ``R_i``):
    ``"rloo"`` :math:`T_i - \frac{1}{G-1}\sum_{j\ne i} T_j`; ``"mean"`` :math:`T_i - \bar T`
    (Dr. GRPO); ``"grpo"`` :math:`(T_i - \bar T)/(s + 10^{-4})`, s the group's sample standard
    deviation (Bessel). With the KL in the reward, ``ratio="token"`` and rloo or mean, token t gets the
    KL-to-go: :math:`A_{it}` replaces :math:`T_i` by :math:`R_i - \beta\sum_{s\ge t}\kappa_{is}` before
    the baseline is subtracted (the KL of earlier tokens cannot depend on y_t; dropping it lowers the
    variance). Under grpo every token gets the sequence's :math:`A_i`: the standard deviation describes
    the sequence returns, not a return-to-go. (In a group whose rewards agree, grpo's advantages are
    then the standardised KL differences, ±1 however small the KL: GRPO puts the KL in the loss.)

    **KL** (``κ``, ``k``: per-token estimates of :func:`kl_estimate` with δ = log π − log π_ref):
    ``"k1-reward"``: κ = δ at the rollout policy (``old_logp``, else ``logp``) in the return;
    ``"k3-reward"``: κ = e^{−δ} − 1 + δ in the return (verl's ``low_var_kl``, unclamped);
    ``"k1-loss"``, ``"k2-loss"``, ``"k3-loss"``: k = δ, δ²/2, e^{−δ} − 1 + δ of ``logp`` in the loss.

    **Length normalisation**: ``"none"`` w = 1 (sums over each sequence's tokens); ``"sequence"``
    w = 1/|y_i| (GRPO); ``"token"`` w = N/Σ_j|y_j| (DAPO: a mean over the batch's tokens).

    **Importance sampling** for samples drawn by a rollout engine μ (``behaviour_logp``) rather than
    by π_old: ``ratio="token"`` τ_it = min(π_old/μ (y_it), C), per token (Yao et al.);
    ``ratio="sequence"`` τ_i = min(π_old(y_i)/μ(y_i), C), the ratio of the whole sequence (the product,
    not GSPO's geometric mean: only the product corrects the sampling distribution). No cap C
    without ``tis_cap``.

    Bias: with y ∼ π_θ (θ = θ_old), G samples per prompt, and Ā_t(y) = E[A_it | y_i = y] the advantage
    with the other samples of the group integrated out,

    =====================================  ======================================================================
    configuration                          E[∇ loss]
    =====================================  ======================================================================
    rloo, k1-reward, none (the default)    −∇J_β: **unbiased** (−∇E[R] with ``kl_coef=0``)
    mean                                   (G−1)/G × the rloo value: biased in scale only
    grpo                                   −∇_θ E_{y∼π_θ}[Ā(y)] with Ā held fixed: the gradient for a
                                           standardised reward, a transform that depends on the
                                           policy and weighs prompts by ≈ 1/σ_x(R); no fixed objective
    k3-reward                              −∇E[R] + β(∇KL(π_θ‖π_ref) − ∇F_←): biased (adding k3-loss's
                                           β∇F_← would make it unbiased)
    k1-loss                                −∇E[R] + 0: the KL term has mean zero, it regularises nothing
    k2-loss                                −∇E[R] + β∇F_→: the per-token KL(π_θ‖π_ref) with the prefixes
                                           held fixed, which drops the KL-to-go credit
    k3-loss                                −∇E[R] + β∇F_←: the per-token KL(π_ref‖π_θ) with the prefixes
                                           held fixed (neither KL(π_θ‖π_ref) nor the sequence-level
                                           KL(π_ref‖π_θ))
    length_norm="sequence"                 −E_y[(1/|y|) Σ_t Ā_t(y) ∇log π_θ(y_t|·)]: with rloo and rewards
                                           only, −(∇E[R/|y|] − E[R]∇E[1/|y|]) (the baseline no longer
                                           cancels); (1/L) × "none" when |y| = L always
    length_norm="token"                    (1/L) × "none" when |y| = L always; otherwise biased for finite
                                           batches (Σ_j|y_j| shares each sample's length); → "none"/E|y|
                                           as the batch grows
    ratio="sequence"                       as ratio="token" with every token given the sequence's advantage
                                           (no KL-to-go: under "none" the same expectation, more variance)
    old_logp, clip                         at θ = θ_old, the on-policy value above (ρ = 1); once θ moves,
                                           the gradient of the clipped surrogate, a deliberate bias (trust
                                           region: a token or sequence whose ratio left the range in the
                                           advantage's direction gets no gradient)
    behaviour_logp, ratio="sequence"       y ∼ μ: the on-policy value above, unbiased without a cap; with
                                           one, E_μ[min(W, C) g] = E_π[g] − E_μ[(W − C)₊ g] (W = π/μ of
                                           the sequence, g its term)
    behaviour_logp, ratio="token"          biased: each token's probability is corrected, not its prefix's
                                           or the later tokens' in the advantage; exact only when μ = π_old
    =====================================  ======================================================================

    with F_→(θ) = E_{y∼sg π_θ} Σ_t KL(π_θ‖π_ref)(·|x, y_<t) and F_← the same with KL(π_ref‖π_θ): the
    prefixes y_<t are drawn from π_θ and held fixed (sg), only the next-token distribution is
    differentiated. (KL(π_ref‖π_θ) is the "forward" KL in the usual RL naming.) The KL terms placed in
    the loss follow ``length_norm`` like the policy term; ``tests/rl/test_sequence_unbiased.py`` checks
    every line by enumerating a small language.

    Requires: ``logp`` differentiable in θ, log π_θ of the tokens taken (``log_softmax(logits)`` gathered
    at the tokens); the samples of a prompt contiguous (``group_size`` of them); ``rewards`` not depending
    on θ. Values at masked positions are ignored (they must be finite).

    Distributed: with ``process_group`` (``"world"`` or a ProcessGroup), the batches of the ranks,
    concatenated in rank order, form one batch of ``R × N`` sequences whose groups of ``group_size`` may
    span ranks (TRL's layout; every rank passes the same N). Group means and standard deviations, and
    Σ_j|y_j| for ``"token"``, are all-reduced; each rank's loss is scaled so that the mean of the ranks'
    gradients (DistributedDataParallel's) is the single-process gradient of the whole batch. Every rank
    must make the call. Without a process group, groups are local to each rank.

    Args:
        logp: ``[N, L]`` log π_θ(y_t | x, y_<t); carries the gradient.
        rewards: ``[N]`` sequence rewards.
        group_size: G ≥ 2, the samples per prompt; N (R × N with a process group) must be a multiple.
        mask: ``[N, L]`` bool (or 0/1 numbers), True on the generated tokens; None: all tokens.
        advantage: ``"rloo"``, ``"grpo"`` or ``"mean"``.
        ref_logp: ``[N, L]`` log π_ref of the same tokens; needed when ``kl_coef > 0``.
        kl_coef: β ≥ 0.
        kl: ``"k1-reward"``, ``"k3-reward"``, ``"k1-loss"``, ``"k2-loss"`` or ``"k3-loss"``.
        old_logp: ``[N, L]`` log π_old, the policy at the start of this round of updates (PPO/GRPO
            epochs); None: the samples are on-policy (ρ = 1).
        clip: ε (the range [1 − ε, 1 + ε]), or (ε_low, ε_high) (DAPO's asymmetric range, e.g.
            (0.2, 0.28)); None: no clipping.
        ratio: ``"token"`` (PPO/GRPO) or ``"sequence"`` (GSPO with ``length_norm="sequence"``).
        behaviour_logp: ``[N, L]`` log μ of the rollout engine that sampled the tokens, when it differs
            from π_old (another implementation or precision); None: no correction.
        tis_cap: C > 0, the truncation of the importance weights; None: untruncated.
        length_norm: ``"none"``, ``"sequence"`` or ``"token"``.
        process_group: None (groups local to each rank), ``"world"`` or a ProcessGroup.

    Returns:
        The scalar loss; ``loss.backward()`` puts −(the estimate of ∇J) in the gradients. Its value is
        −(mean weighted advantage) + β × (the KL terms in the loss): log the rewards and
        :func:`kl_estimate` to monitor training.

    Raises:
        TypeError: an argument of the wrong type (a tensor that is not floating, a mask that is not
            bool or numeric, a string option that is not a string).
        ValueError: shapes that do not match ``[N, L]`` and ``[N]``, N not a multiple of
            ``group_size``, an unknown option, a coefficient out of range, ``kl_coef > 0`` without
            ``ref_logp``, ``tis_cap`` without ``behaviour_logp``, ``logp`` without a gradient while grad
            mode is on, devices that differ; while validation is on, non-finite rewards or
            log-probabilities, a mask row without a token, mask values other than 0 and 1, ranks with
            different N, or a loss that overflowed. These value checks cost one sync, after the loss is
            computed (with a process group, one collective before it, so that all ranks raise
            together); an input the loss does not use (``ref_logp`` with ``kl_coef=0``) is not read.

    Example:
        >>> import torch
        >>> from gradest.rl import sequence_policy_loss
        >>> _ = torch.manual_seed(0)
        >>> logits = torch.randn(4, 3, 5, requires_grad=True)     # 2 prompts x 2 samples, 3 tokens
        >>> tokens = torch.randint(5, (4, 3))
        >>> logp = logits.log_softmax(-1).gather(-1, tokens[..., None])[..., 0]
        >>> loss = sequence_policy_loss(logp=logp, rewards=torch.tensor([1.0, 0.0, 0.0, 0.0]), group_size=2,
        ...                             ref_logp=logp.detach() - 0.1, kl_coef=0.05)
        >>> loss.backward()
        >>> round(loss.item(), 4), logits.grad.shape
        (-0.015, torch.Size([4, 3, 5]))

    References:
        Williams (1992). Simple Statistical Gradient-Following Algorithms for Connectionist
        Reinforcement Learning. Machine Learning 8.
        Kool et al. (2019). Buy 4 REINFORCE Samples, Get a Baseline for Free! ICLR workshop.
        Ahmadian et al. (2024). Back to Basics: Revisiting REINFORCE Style Optimization for Learning
        from Human Feedback in LLMs. ACL. arXiv:2402.14740.
        Shao et al. (2024). DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language
        Models. arXiv:2402.03300.
        Liu et al. (2025). Understanding R1-Zero-Like Training: A Critical Perspective. arXiv:2503.20783.
        Yu et al. (2025). DAPO: An Open-Source LLM Reinforcement Learning System at Scale.
        arXiv:2503.14476.
        Zheng et al. (2025). Group Sequence Policy Optimization. arXiv:2507.18071.
        Schulman et al. (2017). Proximal Policy Optimization Algorithms. arXiv:1707.06347.
        Yao et al. (2025). Your Efficient RL Framework Secretly Brings You Off-Policy RL Training.
        https://fengyao.notion.site/off-policy-rl.
        Tang & Munos (2025). On a few pitfalls in KL divergence gradient estimation for RL.
        arXiv:2506.09477.
        Foerster et al. (2018). DiCE: The Infinitely Differentiable Monte Carlo Estimator. ICML.
        arXiv:1802.05098.
    """
    where = "sequence_policy_loss"
    for name, value, choices in (("advantage", advantage, ADVANTAGES), ("kl", kl, KLS), ("ratio", ratio, RATIOS),
                                 ("length_norm", length_norm, LENGTH_NORMS)):
        _check_choice(where, name, value, choices)
    N, L = _check_logp(where, logp)
    tensors = {"ref_logp": ref_logp, "old_logp": old_logp, "behaviour_logp": behaviour_logp}
    for name, other in tensors.items():
        if other is not None:
            _check_like(where, name, other, logp)
    m = _check_mask(where, mask, logp)
    _check_rewards(where, rewards, logp)
    G = _check_group_size(where, group_size)
    beta = _check_kl_coef(where, kl_coef, ref_logp)
    clip_range = _check_clip(where, clip)
    if tis_cap is not None:
        tis_cap = check_positive(where, "tis_cap", tis_cap, "2 to 10 is typical (Yao et al. use 2)")
        if behaviour_logp is None:
            raise ValueError(
                f"{where}: tis_cap={tis_cap} needs behaviour_logp=, the log-probs of the engine that sampled "
                "the tokens; pass it, or drop tis_cap."
            )
    if torch.is_grad_enabled() and not logp.requires_grad:
        raise ValueError(
            f"{where}: logp={summarize(logp)} has requires_grad=False, so the loss would have no gradient; "
            "compute logp from the model's logits outside torch.no_grad() (log_softmax, then gather)."
        )
    group = resolve(check_process_group(where, process_group))
    mf = None if m is None else _float_mask(m, logp.dtype)
    validate = is_validation_enabled()
    lengths = None  # |y_i|, when the loss or the ranks' check needs them
    if mf is not None and (length_norm != "none" or (validate and group is not None)):
        lengths = mf.sum(1)
    if validate and mask is not None and mask.dtype != torch.bool:
        _raise(_binary_problem(where, mask))
    if validate and group is not None:  # first, so that every rank raises together (and has this N)
        _validate_ranks(where, logp, lengths, rewards, tensors, group, N)
    R = world_size(group)
    if (R * N) % G:
        total = f"N={N}" if R == 1 else f"{R} ranks x N={N} = {R * N} sequences"
        raise ValueError(
            f"{where}: group_size={G} does not divide {total}; the batch must hold whole groups of "
            f"group_size samples per prompt, contiguous (N = prompts x group_size)."
        )

    tokens = None  # Σ_j |y_j|
    if length_norm == "token":
        tokens = lengths.sum() if lengths is not None else logp.new_tensor(float(N * L))
    adv, token_adv, tokens = _advantages(logp, mf, rewards, G, advantage, ref_logp, beta, kl, old_logp, ratio,
                                         group, R, tokens)
    # the weight of sequence i's tokens: 1, 1/|y_i| (divide), or N/Σ_j|y_j| (the whole batch's: N·R/Σ over R ranks)
    divide = lengths if length_norm == "sequence" else None
    scale: Tensor | float | None = None
    if length_norm == "sequence" and lengths is None:
        scale = 1.0 / L
    elif length_norm == "token":
        scale = N * R / tokens  # type: ignore[operator]
    # Detached tensors whose sums must be finite while validation is on: the log-ratios of old_logp and
    # behaviour_logp before the exponential (a clipped or truncated ratio can turn ±inf into a finite value)
    logs: list[Tensor] = []
    tis = None
    if behaviour_logp is not None:
        tis, log_w = _importance_weights(logp, old_logp, behaviour_logp, mf, ratio, tis_cap)
        logs.append(log_w)
    k = None  # the KL terms placed in the loss, differentiable; 0 at masked positions (δ = 0 there)
    if beta > 0 and kl.endswith("loss") and ref_logp is not None:
        k = _kl_terms(_masked(logp - stop_gradient(ref_logp), mf), kl[:2])

    # The loss is Σ_i c_i x_i with detached coefficients c (advantages, weights, −1/N, ...) multiplied together
    # first: one product (a dot product) with the differentiable terms x, one node in the autograd graph.
    counts = None  # Σ_t mask_it ρ_it, when its value is |y_i|
    if ratio == "token":
        # −(1/N) × the weight of sequence i's tokens (a float, or detached [N] / 0-dim)
        w = -1.0 / N if divide is None else -1.0 / N / divide
        if scale is not None:
            w = w * scale
        if old_logp is None:  # ρ = 1 in value: clipping never binds
            rho = magic_box(logp)
        else:
            log_ratio = _masked(logp - stop_gradient(old_logp), mf)
            logs.append(log_ratio.detach())
            rho = _clipped_ratio(log_ratio, adv[:, None] if token_adv is None else token_adv, clip_range)
        # the detached factors of each token (mask, TIS weight, per-token advantage) multiplied together first:
        # one [N, L] product with ρ, in the forward and the backward pass, whatever their number
        factor = _product(mf, tis, token_adv)
        weighted = rho if factor is None else rho * factor
        if token_adv is None:  # a sequence's advantage multiplies its sum, not each of its tokens
            rows = weighted.sum(1)
            if old_logp is None and tis is None and mf is not None:
                counts = rows.detach()  # ρ = exp(0) = 1 exactly: Σ_t mask_it
            loss = _dot(rows, adv * w)
        else:
            loss = _weighted_sum(weighted, w)
        if k is not None:  # ρA − βk
            loss = torch.add(loss, _weighted_sum(k if tis is None else k * tis, w), alpha=-beta)
    else:  # one ratio per sequence: log s_i = Σ_t w_it log ρ_it
        if old_logp is None:
            s_ratio = magic_box(_rows(logp, mf, divide, scale))
        else:
            log_s = _rows(logp - stop_gradient(old_logp), mf, divide, scale)
            logs.append(log_s.detach())
            s_ratio = _clipped_ratio(log_s, adv, clip_range)
        w_seq = -1.0 / N if tis is None else tis * (-1.0 / N)
        loss = _dot(s_ratio, adv * w_seq)
        if k is not None:
            loss = torch.add(loss, _weighted_sum(_rows(k, None, divide, scale), w_seq), alpha=-beta)
    if validate:
        # One sync for every value check. A NaN or ±inf in logp, ref_logp or rewards makes the loss NaN or
        # ±inf (masked positions too: 0 · NaN = NaN); one in old_logp or behaviour_logp can instead vanish in
        # a clipped or truncated ratio (exp(−inf) = 0), so the log-ratios before the exponential are summed.
        # An empty row makes the loss NaN under length_norm="sequence" (0/0, or its sum 0 times 1/0);
        # otherwise the check is divided by the shortest row's length. The inputs are scanned only when the
        # check is not finite.
        check = loss.detach()
        for log in logs:
            check = check + log.sum()
        if mf is not None and length_norm != "sequence":  # |y_i|: computed already when possible
            shortest = lengths if lengths is not None else counts if counts is not None else mf.sum(1)
            check = check / shortest.min()
        if not math.isfinite(check.item()):
            lengths = lengths if lengths is not None or mf is None else mf.sum(1)
            _raise(_problem(where, rewards, logp, tensors, lengths))
            loss_value = loss.item()
            _raise(None if math.isfinite(loss_value) else (
                f"{where}: the loss is {loss_value}: an importance ratio or KL term overflowed ({logp.dtype}): the "
                "policy has moved far from old_logp, behaviour_logp or ref_logp; clip the ratios (clip=, "
                "tis_cap=) or refresh old_logp more often."))
    return loss


def kl_estimate(*, logp: Tensor, ref_logp: Tensor, mask: Tensor | None = None, kind: str = "k1") -> Tensor:
    r"""Per-token estimates of KL(π_θ‖π_ref) from tokens sampled from π_θ, for logging.

    With δ = log π_θ(y_t|·) − log π_ref(y_t|·) at the sampled token:

    .. math::
        k_1 = \delta, \qquad k_2 = \tfrac12\delta^2, \qquad k_3 = e^{-\delta} - 1 + \delta .

    Requires: y_t drawn from π_θ(·|x, y_<t) (for tokens drawn from another policy, weight them).
    Bias: given the prefix, E[k1] = E[k3] = KL(π_θ‖π_ref)(·|x, y_<t) exactly, so summing over t
    estimates the sequence KL without bias; k3 is never negative and has lower variance when the two
    policies are close. E[k2] = KL + O(δ³): biased (it is the second-order expansion; for policies far
    apart it can be far off in either direction). To penalise the KL, use
    :func:`sequence_policy_loss` (``kl=``): the *gradients* of these terms are a different matter.

    Args:
        logp: ``[N, L]`` log π_θ of the sampled tokens.
        ref_logp: ``[N, L]`` log π_ref of the same tokens.
        mask: ``[N, L]`` bool (or 0/1 numbers), True on generated tokens; None: all.
        kind: ``"k1"``, ``"k2"`` or ``"k3"``.

    Returns:
        ``[N, L]`` estimates, 0 where the mask is False, with no autograd history; ``.sum(1)`` is a
        per-sequence estimate of the sequence KL.

    Raises:
        TypeError: a tensor is not floating, or the mask is neither bool nor numeric.
        ValueError: shapes differ, ``kind`` is unknown, or (while validation is on) log-probs are not
            finite or mask values are not 0 or 1.

    Example:
        >>> import torch
        >>> from gradest.rl import kl_estimate
        >>> logp, ref = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -1.0]])
        >>> [[round(v, 4) for v in row] for row in kl_estimate(logp=logp, ref_logp=ref, kind="k3").tolist()]
        [[0.1065, 0.7183]]

    References:
        Schulman (2020). Approximating KL Divergence. http://joschu.net/blog/kl-approx.html.
    """
    where = "kl_estimate"
    _check_choice(where, "kind", kind, KINDS)
    _check_logp(where, logp)
    _check_like(where, "ref_logp", ref_logp, logp)
    m = _check_mask(where, mask, logp)
    if is_validation_enabled():
        check_finite(where, "logp", logp, _FINITE_FIX)
        check_finite(where, "ref_logp", ref_logp, _FINITE_FIX)
        problem = None if mask is None or mask.dtype == torch.bool else _binary_problem(where, mask)
        if problem is not None:
            raise ValueError(problem)
    with torch.no_grad():  # δ = 0 at masked positions, where every k is 0
        return _kl_terms(_masked(logp - ref_logp, None if m is None else _float_mask(m, logp.dtype)), kind)


# ---------------------------------------------------------------------------------------------------
# The pieces
# ---------------------------------------------------------------------------------------------------


def _advantages(logp: Tensor, mf: Tensor | None, rewards: Tensor, G: int, advantage: str, ref_logp: Tensor | None,
                beta: float, kl: str, old_logp: Tensor | None, ratio: str, group: object, R: int,
                tokens: Tensor | None) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """The sequences' advantages ``[N]``; the tokens' ``[N, L]`` when they differ (the KL-to-go), else None;
    and ``tokens`` (this rank's Σ_j |y_j|, or None) summed over the ranks.

    T_i = R_i − β Σ_t κ_it with the KL in the reward (κ at the rollout policy), else R_i. The baseline is
    the group's mean, or (rloo) the mean of the other G − 1 returns, (S − T_i)/(G − 1) with S the sum.
    """
    # every input detached: no autograd graph (cheaper than torch.no_grad()'s context)
    rewards = stop_gradient(rewards if rewards.dtype == logp.dtype else rewards.to(logp.dtype))
    totals = rewards
    kappa = None
    if beta > 0 and kl.endswith("reward") and ref_logp is not None:
        rollout = stop_gradient(logp if old_logp is None else old_logp)
        kappa = _kl_terms(_masked(rollout - stop_gradient(ref_logp), mf), kl[:2])
        totals = totals - beta * kappa.sum(1)
    to_go = kappa is not None and ratio == "token" and advantage != "grpo"  # per-token advantages
    adv, baselines, tokens = _group_advantages(totals, G, advantage, group, R, tokens, to_go)
    if kappa is None or baselines is None or not to_go:
        return adv, None, tokens
    # the KL-to-go: Σ_{s≥t} κ_s = Σ_s κ_s − Σ_{s<t} κ_s
    kl_to_go = kappa.sum(1, keepdim=True) - kappa.cumsum(1) + kappa
    return adv, (rewards - baselines)[:, None] - beta * kl_to_go, tokens


def _importance_weights(logp: Tensor, old_logp: Tensor | None, behaviour_logp: Tensor, mf: Tensor | None,
                        ratio: str, tis_cap: float | None) -> tuple[Tensor, Tensor]:
    """min(π_old/μ, C) per token ``[N, L]``, or per sequence ``[N]`` (the product over its tokens), detached;
    and its logarithm before the exponential and the cap (the masked log π_old/μ ``[N, L]``, or its row sums)."""
    log_w = _masked(stop_gradient(logp if old_logp is None else old_logp) - stop_gradient(behaviour_logp), mf)
    if ratio != "token":
        log_w = log_w.sum(1)
    w = log_w.exp()
    return (w if tis_cap is None else w.clamp(max=tis_cap)), log_w


def _float_mask(m: Tensor, dtype: torch.dtype) -> Tensor:
    """The bool mask ``m`` as 0/1 numbers of ``dtype``.

    On the CPU torch converts bool to floating one element at a time (70 µs for 512 × 256 on the benchmark's
    machine, more than the rest of a cheap loss's forward pass); the same bytes viewed as uint8 convert in
    12 µs. ``clamp(max=1)`` keeps torch's meaning, any nonzero byte is True, for a bool tensor whose bytes
    are not all 0 or 1 (made by ``.view(torch.bool)``): such a byte weighs 1, never its value."""
    if m.device.type != "cpu":
        return m.to(dtype)
    return m.view(torch.uint8).clamp(max=1).to(dtype)


def _masked(x: Tensor, mf: Tensor | None) -> Tensor:
    """x on the generated tokens, 0 elsewhere (finite values at masked positions never reach exp)."""
    return x if mf is None else x * mf


def _kl_terms(delta: Tensor, kind: str) -> Tensor:
    """k1, k2 or k3 of δ = log π − log π_ref (elementwise)."""
    if kind == "k1":
        return delta
    if kind == "k2":
        return 0.5 * delta.square()
    return torch.expm1(-delta) + delta


def _clipped_ratio(log_ratio: Tensor, adv: Tensor, clip_range: tuple[float, float] | None) -> Tensor:
    """ρ = exp(log_ratio), or with a clip range PPO's pessimistic bound of it: min(ρ, hi) where A ≥ 0 and
    max(ρ, lo) where A < 0, whose product with A is min(ρA, clip(ρ, lo, hi)A).

    The bound is applied to log ρ before the exp: a ratio clipped away never overflows, so it cannot
    send 0 · inf = NaN into the gradient."""
    if clip_range is None:
        return torch.exp(log_ratio)
    lo, hi = math.log(clip_range[0]), math.log(clip_range[1])
    return torch.exp(torch.where(adv >= 0, log_ratio.clamp(max=hi), log_ratio.clamp(min=lo)))


def _rows(x: Tensor, mf: Tensor | None, divide: Tensor | None, scale: Tensor | float | None) -> Tensor:
    """``[N]``: Σ_t mask_it x_it, divided by ``divide`` ``[N]`` and times ``scale`` (None: neither)."""
    rows = (x if mf is None else x * mf).sum(1)
    if divide is not None:
        rows = rows / divide
    return rows if scale is None else rows * scale


def _product(*factors: Tensor | None) -> Tensor | None:
    """The product of the factors that are not None (None when all are); for detached ``[N, L]`` factors."""
    out = None
    for f in factors:
        if f is not None:
            out = f if out is None else out * f
    return out


def _weighted_sum(x: Tensor, weights: Tensor | float) -> Tensor:
    """Σ_i weights_i x_i for ``x`` ``[N]``, or Σ_i weights_i Σ_t x_it for ``x`` ``[N, L]``; ``weights`` (detached)
    a float, a 0-dim tensor or ``[N]``."""
    if not isinstance(weights, Tensor) or weights.dim() == 0:
        return x.sum() * weights
    return _dot(x if x.dim() == 1 else x.sum(1), weights)


def _dot(x: Tensor, c: Tensor) -> Tensor:
    """Σ_i x_i c_i for ``[N]`` tensors, in their promoted dtype (as ``(x * c).sum()``: log-probabilities may
    come in several floating dtypes)."""
    if x.dtype != c.dtype:
        dtype = torch.promote_types(x.dtype, c.dtype)
        x, c = x.to(dtype), c.to(dtype)
    return torch.dot(x, c)


def _group_advantages(totals: Tensor, G: int, advantage: str, group: object, R: int, tokens: Tensor | None,
                      need_baselines: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """``[N]`` advantages of the returns in their groups; the baselines when asked (rloo: the mean of the
    group's other returns; mean: the group's mean); and ``tokens`` summed over the ranks. With a process
    group the groups are those of the ranks' concatenated batches (one all-reduce, two for grpo)."""
    N = totals.shape[0]
    if group is None:
        t = totals.reshape(-1, G)
        if advantage == "rloo":
            b = (t.sum(1, keepdim=True) - t) / (G - 1)
            return (t - b).reshape(N), (b.reshape(N) if need_baselines else None), tokens
        mean = t.mean(1, keepdim=True)
        if advantage == "mean":
            return (t - mean).reshape(N), (mean.expand(-1, G).reshape(N) if need_baselines else None), tokens
        return ((t - mean) / (t.std(1, keepdim=True) + STD_EPS)).reshape(N), None, tokens
    # the ranks' batches concatenated: sequence i of rank r is number r·N + i, in group (r·N + i) // G
    ids = torch.div(torch.arange(N, device=totals.device) + rank(group) * N, G, rounding_mode="floor")
    P = R * N // G
    local = totals.new_zeros(P).index_add_(0, ids, totals)
    if tokens is None:
        (sums,) = all_reduce_flat([local], group)
    else:
        sums, tokens = all_reduce_flat([local, tokens], group)
    group_sums = sums[ids]
    if advantage == "rloo":
        baselines = (group_sums - totals) / (G - 1)
        return totals - baselines, baselines, tokens
    centred = totals - group_sums / G
    if advantage == "mean":
        return centred, totals - centred, tokens
    # two passes, as torch.std: Σ (T − mean)² over every rank
    (squares,) = all_reduce_flat([totals.new_zeros(P).index_add_(0, ids, centred.square())], group)
    return centred / ((squares / (G - 1)).sqrt() + STD_EPS)[ids], None, tokens


# ---------------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------------

_FINITE_FIX = ("log-probabilities must be finite, also at masked positions (their values are ignored): "
               "fill them, e.g. logp.masked_fill(~mask, 0.0), and check the model for overflow.")


def _check_choice(where: str, name: str, value: object, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{where}: {name}={value!r} must be a string, one of {', '.join(map(repr, choices))}.")
    if value not in choices:
        raise ValueError(f"{where}: {name}={value!r} is not one of {', '.join(map(repr, choices))}.")


def _check_logp(where: str, logp: object) -> tuple[int, int]:
    if not isinstance(logp, Tensor):
        raise TypeError(
            f"{where}: logp={summarize(logp)} is a {type(logp).__name__}, not a tensor; pass the [N, L] "
            "log-probabilities of the sampled tokens."
        )
    if not logp.is_floating_point():
        raise TypeError(f"{where}: logp={summarize(logp)} must be a floating tensor; pass logp.float().")
    if logp.dim() != 2 or logp.shape[0] == 0 or logp.shape[1] == 0:
        raise ValueError(
            f"{where}: logp.shape={tuple(logp.shape)}, expected [N, L] with N >= 1 sequences and L >= 1 "
            "token positions (one row per sampled sequence, padded to L)."
        )
    return int(logp.shape[0]), int(logp.shape[1])


def _check_like(where: str, name: str, value: object, logp: Tensor) -> None:
    if not isinstance(value, Tensor) or not value.is_floating_point():
        raise TypeError(
            f"{where}: {name}={summarize(value)} must be a floating tensor of shape {tuple(logp.shape)} "
            "(the log-probabilities of the same tokens), or None."
        )
    if value.shape != logp.shape:
        raise ValueError(
            f"{where}: {name}.shape={tuple(value.shape)} does not match logp.shape={tuple(logp.shape)}; "
            "pass the log-probabilities of the same tokens, one per position."
        )
    if value.device != logp.device:
        raise ValueError(f"{where}: {name}.device={value.device} does not match logp.device={logp.device}; "
                         "move them to one device.")


def _check_mask(where: str, mask: object, logp: Tensor) -> Tensor | None:
    """The mask as a bool tensor (None stays None)."""
    if mask is None:
        return None
    if not isinstance(mask, Tensor) or mask.dtype.is_complex:
        raise TypeError(
            f"{where}: mask={summarize(mask)} must be a bool tensor [N, L] (True on generated tokens), or "
            "None for all tokens."
        )
    if mask.shape != logp.shape:
        raise ValueError(
            f"{where}: mask.shape={tuple(mask.shape)} does not match logp.shape={tuple(logp.shape)}; pass "
            "one flag per token position."
        )
    if mask.device != logp.device:
        raise ValueError(f"{where}: mask.device={mask.device} does not match logp.device={logp.device}; "
                         "move them to one device.")
    return mask if mask.dtype == torch.bool else mask != 0


def _binary_problem(where: str, mask: Tensor) -> str | None:
    """The error for a numeric mask with values other than 0 and 1, or None."""
    bad = (mask != 0) & (mask != 1)
    if not bool(bad.any()):
        return None
    value = mask[bad][0].item()
    return (f"{where}: mask holds {value} at {int(bad.sum())} position(s); a mask is 0/1 (or bool): pass "
            "mask > 0, and put token weights elsewhere.")


def _check_rewards(where: str, rewards: object, logp: Tensor) -> None:
    if not isinstance(rewards, Tensor) or not rewards.is_floating_point():
        raise TypeError(
            f"{where}: rewards={summarize(rewards)} must be a floating tensor [N], one reward per sequence; "
            "pass rewards.float()."
        )
    if rewards.shape != logp.shape[:1]:
        raise ValueError(
            f"{where}: rewards.shape={tuple(rewards.shape)}, expected (N,) = ({logp.shape[0]},), one reward "
            "per sequence (rewards.reshape(-1) for an [N, 1] column)."
        )
    if rewards.device != logp.device:
        raise ValueError(f"{where}: rewards.device={rewards.device} does not match logp.device={logp.device}; "
                         "move them to one device.")


def _check_group_size(where: str, group_size: object) -> int:
    if isinstance(group_size, bool) or not isinstance(group_size, int):
        raise TypeError(f"{where}: group_size={group_size!r} must be an int, the samples per prompt.")
    if group_size < 2:
        raise ValueError(
            f"{where}: group_size={group_size} must be >= 2: the advantage of a sample is measured against "
            "the other samples of its prompt; draw at least 2 per prompt."
        )
    return group_size


def _check_kl_coef(where: str, kl_coef: object, ref_logp: Tensor | None) -> float:
    if isinstance(kl_coef, Tensor) and kl_coef.numel() == 1:
        kl_coef = float(kl_coef)
    if isinstance(kl_coef, bool) or not isinstance(kl_coef, (int, float)):
        raise TypeError(f"{where}: kl_coef={kl_coef!r} must be a float >= 0 (β; 0.01 to 0.1 is typical).")
    if not 0 <= kl_coef < float("inf"):
        raise ValueError(f"{where}: kl_coef={kl_coef} must be a finite float >= 0 (β; 0.01 to 0.1 is typical).")
    if kl_coef > 0 and ref_logp is None:
        raise ValueError(
            f"{where}: kl_coef={kl_coef} needs ref_logp=, the reference policy's log-probs of the same tokens; "
            "pass it, or kl_coef=0 for no KL penalty."
        )
    return float(kl_coef)


def _check_clip(where: str, clip: object) -> tuple[float, float] | None:
    """The ratio range (1 − ε_low, 1 + ε_high)."""
    if clip is None:
        return None
    if isinstance(clip, tuple) and len(clip) == 2:
        low, high = clip
    elif isinstance(clip, (int, float)) and not isinstance(clip, bool):
        low = high = clip
    else:
        raise TypeError(f"{where}: clip={clip!r} must be a float ε or a pair (ε_low, ε_high), or None.")
    for name, value in (("ε_low", low), ("ε_high", high)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{where}: clip={clip!r}: {name}={value!r} must be a float.")
    if not 0 < low < 1:
        raise ValueError(f"{where}: clip={clip!r}: ε_low={low} must lie in (0, 1); 0.2 is typical.")
    if not 0 < high < float("inf"):
        raise ValueError(f"{where}: clip={clip!r}: ε_high={high} must be a finite float > 0; 0.2 to 0.28 is typical.")
    return 1.0 - float(low), 1.0 + float(high)


def _raise(problem: str | None) -> None:
    if problem is not None:
        raise ValueError(problem)


def _problem(where: str, rewards: Tensor, logp: Tensor, tensors: dict[str, Tensor | None],
             lengths: Tensor | None) -> str | None:
    """The error for non-finite inputs or an empty mask row, or None (the slow path: reads every input)."""
    for name, value in [("rewards", rewards), ("logp", logp)] + list(tensors.items()):
        bad = "" if value is None else describe_nonfinite(value)
        if bad:
            fix = "check the reward function for these sequences." if name == "rewards" else _FINITE_FIX
            return f"{where}: {name} contains {bad}; {fix}"
    if lengths is not None and bool((lengths == 0).any()):
        rows = (lengths == 0).nonzero().flatten()
        return (f"{where}: mask has no generated token in {rows.numel()} row(s), first row {int(rows[0])}; every "
                "sequence needs at least one token (keep the end-of-sequence token in the mask), or drop the empty "
                "rows with their whole group.")
    return None


def _validate_ranks(where: str, logp: Tensor, lengths: Tensor | None, rewards: Tensor,
                    tensors: dict[str, Tensor | None], group: object, N: int) -> None:
    """With a process group, the value checks run before the statistics are all-reduced, and one fixed-size
    collective tells every rank whether any rank failed (and that all have the same N: the statistics'
    collective has a size that depends on it), so that all raise together and none waits."""
    named = [rewards, logp] + [v for v in tensors.values() if v is not None]
    pieces = [v.detach().sum().to(torch.float64) for v in named]
    sums = torch.stack(pieces if lengths is None else pieces + [lengths.min().to(torch.float64)]).tolist()
    finite = all(math.isfinite(v) for v in sums[:len(named)])
    problem = None if finite and (lengths is None or sums[-1] > 0) else _problem(where, rewards, logp, tensors,
                                                                                 lengths)
    n, n2, failed = all_reduce_flat([logp.new_tensor([float(N), float(N) ** 2, float(problem is not None)],
                                                     dtype=torch.float64)], group)[0].tolist()
    R = world_size(group)
    if problem is None and failed > 0:
        problem = f"{where}: another rank's input failed validation (see its error)."
    if problem is None and abs(R * n2 - n * n) > 0.5:
        problem = (f"{where}: the ranks hold different numbers of sequences (this rank N={N}, mean {n / R:g}); "
                   "with a process group every rank passes the same N.")
    _raise(problem)
