"""Per-token log-probabilities of sampled completions under a masked diffusion model, for GRPO (grpo.py).

    logps = completion_logps(model, seqs, prompt_len=P, mask_id=126336, estimator="mirror", p_mask_prompt=0.3,
                             generator=g)     # [N, L - P] float32, with gradients when the model has them

`seqs` [N, L] are prompts (left-padded to a common length P, as d1 does) followed by their completions. A masked
diffusion model has no exact per-token likelihood, so each estimator defines a target and estimates it from
one or two forwards with random masks:

- "d1" (d1's diffu-GRPO; 1 forward): every completion token masked, each prompt token masked independently with
  probability `p_mask_prompt`. Target, per completion token i: E_m[log p(c_i | prompt masked by m, completion
  all masked)], m ~ Bernoulli(p)^P.
- "mirror" (the seed's MIRROR on the prompt mask; 2 forwards): the antithetic pair from one uniform u per
  prompt token, masks u < p and u > 1 - p (each Bernoulli(p), negatively correlated), their log-probabilities
  averaged. Same target as "d1".
- "coupled" (MIRROR on the completion, as DiffuCoder's coupled sampling; 2 forwards): per row a mask ratio
  t ~ U(0, 1) and per completion token a uniform u; the first forward masks the completion tokens with u < t,
  the second the others (the prompt is kept): every token is masked in exactly one of the two and scored
  there, given the tokens the other kept. Target, per token i: sum over the masked sets M containing i of
  w(|M|) log p(c_i | prompt, completion with M masked), w(k) = 2 k! (T - k)! / (T + 1)! for T completion
  tokens (t uniform, i masked on either side). `stratify_t`: the rows' t are stratified over [0, 1) (one in
  each of N equal bins, in random order): each row's t is still uniform, so the target is the same, and the
  batch's mix of mask ratios is even.

Left-padded prompts: pass the batch's `attention_mask` (0 on padding) and `position_ids` (0 at each row's first
real token), as the samplers do when they generate a padded batch, so each row is scored as it was sampled,
as if alone.

Random draws come from `generator` (CPU or the model's device), so the policy, old-policy and reference
estimates of one inner iteration can share their masks by sharing a seed (grpo.py).
"""

from __future__ import annotations

from typing import Optional

import torch

LOGP_ESTIMATORS = ("d1", "mirror", "coupled")


def _uniform(shape: tuple[int, ...], generator: Optional[torch.Generator], device: torch.device) -> torch.Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


def _token_logps(model: torch.nn.Module, noisy: torch.Tensor, targets: torch.Tensor, prompt_len: int,
                 padding: dict[str, torch.Tensor]) -> torch.Tensor:
    """log p(target_i | noisy) at every completion position, [N, T] float32."""
    logits = model(noisy, **padding).logits[:, prompt_len:].float()
    return torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None])[..., 0]


def mask_ratios(n: int, generator: Optional[torch.Generator], device: torch.device, stratify: bool) -> torch.Tensor:
    """[n] mask ratios t ~ U(0, 1); stratified: (perm(j) + u_j) / n (one per bin, each uniform on [0, 1))."""
    u = _uniform((n,), generator, device)
    if not stratify:
        return u
    order = torch.randperm(n, generator=generator, device=generator.device if generator is not None else device)
    return (order.to(device).to(u.dtype) + u) / n


def completion_logps(model: torch.nn.Module, seqs: torch.Tensor, *, prompt_len: int, mask_id: int,
                     estimator: str = "d1", p_mask_prompt: float = 0.3, stratify_t: bool = False,
                     generator: Optional[torch.Generator] = None, attention_mask: Optional[torch.Tensor] = None,
                     position_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-token log-probability estimates of the completions `seqs[:, prompt_len:]` (module docstring)."""
    if estimator not in LOGP_ESTIMATORS:
        raise ValueError(f"unknown policy log-probability estimator {estimator!r}; valid: {', '.join(LOGP_ESTIMATORS)}")
    if not 0 < prompt_len < seqs.shape[1]:
        raise ValueError(f"prompt_len {prompt_len} must leave prompt and completion tokens in length {seqs.shape[1]}")
    n, length = seqs.shape
    targets = seqs[:, prompt_len:]
    padding = {k: v for k, v in (("attention_mask", attention_mask), ("position_ids", position_ids)) if v is not None}
    if estimator in ("d1", "mirror"):
        u = _uniform((n, prompt_len), generator, seqs.device)
        masks = [u < p_mask_prompt] + ([u > 1.0 - p_mask_prompt] if estimator == "mirror" else [])
        out = 0.0
        for m in masks:
            noisy = seqs.clone()
            noisy[:, :prompt_len][m] = mask_id
            noisy[:, prompt_len:] = mask_id
            out = out + _token_logps(model, noisy, targets, prompt_len, padding)
        return out / len(masks)
    t = mask_ratios(n, generator, seqs.device, stratify_t)
    first = _uniform((n, length - prompt_len), generator, seqs.device) < t[:, None]  # masked in the first forward
    out = torch.zeros(targets.shape, dtype=torch.float32, device=seqs.device)
    for m in (first, ~first):
        noisy = seqs.clone()
        noisy[:, prompt_len:][m] = mask_id
        out = out + torch.where(m, _token_logps(model, noisy, targets, prompt_len, padding), 0.0)
    return out
