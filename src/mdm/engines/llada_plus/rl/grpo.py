"""GRPO for masked diffusion models, as d1 (dllm-reasoning/d1, `diffu-grpo/`) defines it: the loss of one update.

    adv = group_advantages(rewards, group_size=6)                        # [N]: r - mean of its group
    loss, stats = grpo_loss(logps, old_logps, ref_logps, adv, completion_mask, epsilon=0.2, beta=0.04)

A rollout batch holds N = prompts x `group_size` completions, the G completions of a prompt next to each other.
Advantages are group-normalised: the reward minus its group's mean (d1's choice, which computes the group's
standard deviation but does not divide by it); `scale_by_std` divides by std + 1e-4 as DeepSeekMath's GRPO does.

Per completion token i (`*_logps` [N, T], the policy's per-token log-probability estimates, policy_logp.py):

    ratio_i = exp(logp_i - old_logp_i)
    loss_i  = -min(ratio_i A, clip(ratio_i, 1 - epsilon, 1 + epsilon) A) + beta KL_i
    KL_i    = exp(ref_i - logp_i) - (ref_i - logp_i) - 1          (the k3 estimator of KL(pi || pi_ref), >= 0)

and the loss is the mean of loss_i over every completion token of the batch (`completion_mask`; d1 normalises
by the batch's token count, not per sequence). `old_logps` are the estimates of the policy that generated the
batch, taken before the first of the `num_iterations` (mu) inner updates; with mu = 1 they equal `logps`
detached, so the ratio is 1 and its gradient is the plain policy gradient. `ref_logps` are the frozen
reference model's (None with beta = 0). All three must come from the same masks (d1 keeps one mask seed per
inner iteration), or the ratio compares two different estimates.

`stats`: `kl` (mean KL_i; absent with beta = 0) and `clip_ratio`, the fraction of completion tokens whose
clipped term is the smaller one (their gradient is zero).
"""

from __future__ import annotations

from typing import Optional

import torch

STD_EPS = 1e-4  # DeepSeekMath / TRL's epsilon when advantages are divided by the group's std


def group_advantages(rewards: torch.Tensor, group_size: int, scale_by_std: bool = False) -> torch.Tensor:
    """[N] rewards of N = prompts x group_size completions (groups contiguous) -> [N] advantages."""
    if group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    grouped = rewards.to(torch.float32).view(-1, group_size)
    adv = grouped - grouped.mean(dim=1, keepdim=True)
    if scale_by_std:
        std = grouped.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(adv[:, :1])
        adv = adv / (std + STD_EPS)
    return adv.reshape(-1)


def grpo_loss(logps: torch.Tensor, old_logps: Optional[torch.Tensor], ref_logps: Optional[torch.Tensor],
              advantages: torch.Tensor, completion_mask: torch.Tensor, *, epsilon: float = 0.2,
              beta: float = 0.04) -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped-ratio loss with the KL penalty (see the module docstring); (scalar loss, stats)."""
    if beta != 0.0 and ref_logps is None:
        raise ValueError("beta != 0 needs the reference model's log-probabilities (ref_logps)")
    mask = completion_mask.to(logps.dtype)
    n_tokens = mask.sum().clamp(min=1.0)
    old = logps.detach() if old_logps is None else old_logps
    ratio = torch.exp(logps - old)
    adv = advantages.to(logps.dtype)[:, None]
    unclipped, clipped = ratio * adv, torch.clamp(ratio, 1.0 - epsilon, 1.0 + epsilon) * adv
    per_token = -torch.min(unclipped, clipped)
    stats = {"clip_ratio": float(((clipped < unclipped).to(logps.dtype) * mask).sum() / n_tokens)}
    if beta != 0.0:
        delta = ref_logps - logps
        kl = torch.exp(delta) - delta - 1.0
        per_token = per_token + beta * kl
        stats["kl"] = float((kl.detach() * mask).sum() / n_tokens)
    return (per_token * mask).sum() / n_tokens, stats
