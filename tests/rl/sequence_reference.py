"""The loss of ``gradest.rl.sequence_policy_loss`` as a plain float64 loop, one sequence and one token at a
time, written the way its docstring reads."""

from __future__ import annotations

import torch


def sequence_policy_loss(*, logp, rewards, group_size, mask=None, advantage="rloo", ref_logp=None, kl_coef=0.0,
                         kl="k1-reward", old_logp=None, clip=None, ratio="token", behaviour_logp=None, tis_cap=None,
                         length_norm="none"):
    """The loss of ``gradest.rl.sequence_policy_loss`` one sequence and one token at a time, as its docstring
    reads: returns, group baselines, KL-to-go, weights, ratios, clipping, importance weights, KL terms."""
    N, L = logp.shape
    G = group_size
    mask = torch.ones(N, L, dtype=torch.bool) if mask is None else mask.bool()
    beta = float(kl_coef)
    in_reward = beta > 0 and kl.endswith("reward")
    in_loss = beta > 0 and kl.endswith("loss")
    kind = kl[:2]

    def k(delta):
        if kind == "k1":
            return delta
        if kind == "k2":
            return 0.5 * delta**2
        return torch.exp(-delta) - 1 + delta

    rollout = (logp if old_logp is None else old_logp).detach()
    tokens = [[t for t in range(L) if mask[i, t]] for i in range(N)]
    kappa = [{t: (k(rollout[i, t] - ref_logp[i, t]) if in_reward else 0.0) for t in tokens[i]} for i in range(N)]
    returns = [rewards[i] - beta * sum(kappa[i].values()) if in_reward else rewards[i] for i in range(N)]
    baseline, scale = [], []
    for i in range(N):
        members = [j for j in range(N) if j // G == i // G]
        group = torch.stack([torch.as_tensor(returns[j]) for j in members])
        if advantage == "rloo":
            baseline.append((group.sum() - returns[i]) / (G - 1))
        else:
            baseline.append(group.mean())
        scale.append(1.0 / (group.std() + 1e-4) if advantage == "grpo" else 1.0)
    total_tokens = sum(len(ts) for ts in tokens)

    def weight(i):
        if length_norm == "none":
            return 1.0
        if length_norm == "sequence":
            return 1.0 / len(tokens[i])
        return N / total_tokens

    lo, hi = (None, None)
    if clip is not None:
        eps_lo, eps_hi = clip if isinstance(clip, tuple) else (clip, clip)
        lo, hi = 1 - eps_lo, 1 + eps_hi

    def clipped(r, a):
        return r * a if clip is None else torch.minimum(r * a, r.clamp(lo, hi) * a)

    def tis_of(log_w):
        w = torch.exp(log_w)
        return w if tis_cap is None else w.clamp(max=tis_cap)

    loss = 0.0
    for i in range(N):
        seq_adv = (returns[i] - baseline[i]) * scale[i]
        if behaviour_logp is not None and ratio == "sequence":
            tis_seq = tis_of(sum(rollout[i, t] - behaviour_logp[i, t] for t in tokens[i]))
        for t in tokens[i]:
            tis = 1.0
            if behaviour_logp is not None:
                tis = tis_of(rollout[i, t] - behaviour_logp[i, t]) if ratio == "token" else tis_seq
            if ratio == "token":
                if in_reward and advantage != "grpo":
                    a = rewards[i] - beta * sum(kappa[i][s] for s in tokens[i] if s >= t) - baseline[i]
                else:
                    a = seq_adv
                old = logp[i, t].detach() if old_logp is None else old_logp[i, t]
                loss = loss - weight(i) * tis * clipped(torch.exp(logp[i, t] - old), a) / N
            if in_loss:
                loss = loss + weight(i) * tis * beta * k(logp[i, t] - ref_logp[i, t]) / N
        if ratio == "sequence":
            old = logp[i].detach() if old_logp is None else old_logp[i]
            log_s = sum(weight(i) * (logp[i, t] - old[t]) for t in tokens[i])
            tis = tis_seq if behaviour_logp is not None else 1.0
            loss = loss - tis * clipped(torch.exp(log_s), seq_adv) / N
    return loss
