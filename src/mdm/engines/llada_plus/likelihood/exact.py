"""The likelihood bound of a short answer computed exactly, by running the model on every mask.

    from mdm.engines.llada_plus.likelihood.exact import exact_bound, exact_strata
    exact_bound(model, prompt_ids, answer_ids, mask_id=255)           # float: the bound, nats
    exact_strata(model, prompt_ids, answer_ids, mask_id=255)          # [L] float64: g(1..L)

For an answer of L tokens, g(k) = (L/k) * mean over all C(L, k) k-subsets M of sum_{i in M} CE_i, and
bound = -(1/L) sum_k g(k) (see likelihood.py). This enumerates all 2^L - 1 masks (L <= 16; ~10 is practical on
a CPU), one plain forward per chunk of same-length rows: no padding, no packing, no logits slice, so it is an
independent check of the estimator in likelihood.py. With cfg_scale > 0 each mask also runs the unconditional
input (the prompt replaced by masks) and the logits are un + (cfg_scale + 1) * (cond - un), as upstream.
"""

from __future__ import annotations

from typing import Sequence

import torch


@torch.no_grad()
def exact_strata(model: torch.nn.Module, prompt_ids: Sequence[int], answer_ids: Sequence[int], *, mask_id: int,
                 cfg_scale: float = 0.0, chunk: int = 256) -> torch.Tensor:
    """g(k) for k = 1..L, [L] float64, by enumerating every mask (rows in chunks of `chunk`)."""
    P, L = len(prompt_ids), len(answer_ids)
    if not 1 <= L <= 16:
        raise ValueError(f"exact enumeration needs 1 <= L <= 16 answer tokens, got {L}")
    device = next(model.parameters()).device
    seq = torch.tensor(list(prompt_ids) + list(answer_ids), dtype=torch.long)
    bits = torch.arange(1, 2 ** L)[:, None] >> torch.arange(L)[None, :] & 1  # [2^L - 1, L]: every nonempty mask
    masked = bits.bool()
    sums = torch.zeros(len(masked), dtype=torch.float64)
    for lo in range(0, len(masked), chunk):
        m = masked[lo:lo + chunk]
        x = seq.repeat(len(m), 1)
        x[:, P:][m] = mask_id
        logits = model(x.to(device)).logits.to(torch.float64)
        if cfg_scale > 0:
            un = x.clone()
            un[:, :P] = mask_id
            un_logits = model(un.to(device)).logits.to(torch.float64)
            logits = un_logits + (cfg_scale + 1.0) * (logits - un_logits)
        logp = torch.log_softmax(logits[:, P:].cpu(), dim=-1)  # [n, L, V]
        tok_ce = -logp.gather(-1, seq[P:].expand(len(m), L)[..., None])[..., 0]  # [n, L]
        sums[lo:lo + chunk] = (tok_ce * m).sum(dim=1)
    k = masked.sum(dim=1)
    per_k = torch.zeros(L + 1, dtype=torch.float64).index_add_(0, k, sums)[1:]
    n_k = torch.bincount(k, minlength=L + 1)[1:].to(torch.float64)  # C(L, k)
    return (L / torch.arange(1, L + 1, dtype=torch.float64)) * per_k / n_k


def exact_bound(model: torch.nn.Module, prompt_ids: Sequence[int], answer_ids: Sequence[int], *, mask_id: int,
                cfg_scale: float = 0.0) -> float:
    """The bound -(1/L) sum_k g(k) on log p(answer | prompt), exactly (every mask of every size)."""
    return -float(exact_strata(model, prompt_ids, answer_ids, mask_id=mask_id, cfg_scale=cfg_scale).mean())
