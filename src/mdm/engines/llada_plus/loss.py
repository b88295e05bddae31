"""The LLaDA+ masked-diffusion loss, for one mask per sequence (Normal) or an antithetic pair (MIRROR).

    loss, per_seq = masked_ce_loss(logits, labels, masked, p, weight)
    loss, stats = diffusion_loss(model, batch, t, weight, mask_id=..., mode="MIRROR", generator=g)

Normalisation (identical in training and evaluation). For sequence b with time t_b, masking probability
p_b = (1 - eps) t_b + eps, eligible tokens E_b (labels != -100: the response, never prompt or padding),
masked set M_b ⊆ E_b and importance weight w_b (1 without P-POTS):

    l_b  = w_b * (1 / |E_b|) * sum_{j in M_b} CE(logits_bj, x_bj) / p_b
    loss = (1 / B) * sum_b l_b

so each sequence counts equally whatever its length, and E_mask[l_b] = w_b * mean_j E[CE_j | masked].
A sequence with no eligible token contributes 0 (|E_b| is clamped to 1). MIRROR averages the two
antithetic losses, (loss(M1) + loss(M2)) / 2, computed in one batched forward of 2B rows.

A batch where nothing is masked yields a finite 0 that is still connected to every logit (so backward
produces zero gradients, not None, for every parameter that feeds the logits, and DeepSpeed/DDP
gradient all-reduce runs on every rank).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mdm.engines.llada_plus.diffusion import apply_mask, eligible, mask_prob, mirror_masks, normal_mask


def masked_ce_loss(logits: torch.Tensor, labels: torch.Tensor, masked: torch.Tensor, p: torch.Tensor,
                   weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalised masked-token loss (see module docstring).

    logits [B, L, V], labels [B, L] (-100 = not eligible), masked [B, L] bool (subset of eligible),
    p [B] masking probabilities, weight [B] or None -> (loss scalar float32, per-sequence l_b [B] float32).
    """
    bsz = labels.shape[0]
    # Only the masked rows go through log-softmax: with a 126k vocabulary the full [B, L, V] float32
    # copy would dominate memory.
    rows = masked.nonzero(as_tuple=True)
    ce = F.cross_entropy(logits[rows].float(), labels[rows], reduction="none")  # [N]
    tok_sum = torch.zeros(bsz, dtype=torch.float32, device=logits.device).index_add(0, rows[0], ce)
    n_elig = eligible(labels).sum(dim=1).clamp(min=1).to(torch.float32)
    per_seq = tok_sum / (p.to(torch.float32) * n_elig)
    if weight is not None:
        per_seq = per_seq * weight.to(torch.float32)
    # `+ 0 * one logit` keeps the graph reaching every parameter even when nothing is masked, so all
    # parameters get (zero) gradients and distributed gradient sync never sees a missing grad. One
    # element (not logits.sum()) so fp16 logits cannot overflow to inf and turn the 0 into NaN.
    loss = per_seq.mean() + logits.reshape(-1)[0].to(torch.float32) * 0.0
    return loss, per_seq


def model_logits(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """logits [B, L, V] of `model(input_ids, attention_mask=...)` (HF-style output with `.logits`)."""
    out = model(input_ids, attention_mask=attention_mask)
    return out.logits if hasattr(out, "logits") else out[0]


def diffusion_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], t: torch.Tensor, weight: torch.Tensor | None,
                   *, mask_id: int, eps: float = 1e-3, mode: str = "Normal",
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mask `batch` at times `t` [B], run the model, return (loss scalar, stats).

    batch: `input_ids` [B, L], `labels` [B, L], optional `attention_mask` [B, L]. mode "Normal" draws one
    mask per sequence; "MIRROR" draws the antithetic pair and runs both as one [2B, L] forward.
    stats (detached tensors): `per_seq` [B] (MIRROR: the pair average), `n_masked` (total masked tokens
    over all masks), `n_eligible`; MIRROR adds `halves` [2, B], the loss of each sequence under M1 and M2.
    """
    input_ids, labels = batch["input_ids"], batch["labels"]
    attn = batch.get("attention_mask")
    p = mask_prob(t, eps)
    if mode == "Normal":
        masked = normal_mask(labels, p, generator)
        logits = model_logits(model, apply_mask(input_ids, masked, mask_id), attn)
        loss, per_seq = masked_ce_loss(logits, labels, masked, p, weight)
        n_masked = masked.sum()
    elif mode == "MIRROR":
        m1, m2 = mirror_masks(labels, p, generator)
        masked = torch.cat([m1, m2], dim=0)
        noisy = apply_mask(input_ids.repeat(2, 1), masked, mask_id)
        logits = model_logits(model, noisy, None if attn is None else attn.repeat(2, 1))
        w2 = None if weight is None else weight.repeat(2)
        # Mean over 2B rows == (loss(M1) + loss(M2)) / 2 since both halves have B rows.
        loss, per_row = masked_ce_loss(logits, labels.repeat(2, 1), masked, p.repeat(2), w2)
        per_seq = 0.5 * (per_row[: len(t)] + per_row[len(t):])
        halves = per_row.detach().view(2, len(t))
        n_masked = masked.sum()
    else:
        raise ValueError(f"train.train_mode must be 'Normal' or 'MIRROR', got {mode!r}")
    stats = {"per_seq": per_seq.detach(), "n_masked": n_masked.detach(),
             "n_eligible": eligible(labels).sum().detach()}
    if mode == "MIRROR":
        stats["halves"] = halves
    return loss, stats
