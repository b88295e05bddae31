"""Packed forwards for likelihood evaluation: the summed cross-entropy of an answer's masked tokens, for many
(prompt, answer, mask) rows at once.

    from mdm.engines.llada_plus.likelihood.batch import masked_ce_sums, pack_rows
    sums = masked_ce_sums(model, [(prompt_ids, answer_ids)], [masks], mask_id=126336)  # masks [n, L] bool
    sums[0]   # [n] float64: sum over the masked answer positions j of -log p(answer_j | prompt, masked answer)

A row is one item's sequence `prompt + answer` with the answer's masked positions replaced by `mask_id`.
Rows are sorted by length and packed greedily into forwards of at most `max_tokens_per_forward` tokens,
counting padding and (with CFG) the unconditional copy of every row; a row longer than the budget runs alone.
Rows are left-padded so that every answer ends in the last column: the output head then runs only over the
widest answer's columns (`logits_slice`), not over the prompts. Padding keys are masked out of attention and
positions restart at each row's first real token, so a row's logits are those it gets alone (tested).
Memory: a forward's logits are [sequences, widest answer, vocab] in the model's dtype, plus a float32 copy of
the masked positions' rows; for long answers (rolling windows) with a 126k vocabulary, lower the budget.

CFG as upstream LLaDA: logits = un + (cfg_scale + 1) * (cond - un), where the unconditional row has every
prompt token replaced by `mask_id`. Cross-entropy is taken in float32 (float64 for a float64 model) and summed
per row in float64.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F

Item = tuple[Sequence[int], Sequence[int]]  # (prompt_ids, answer_ids)


def pack_rows(lengths: Sequence[int], *, max_tokens_per_forward: int, copies: int = 1,
              batch_rows: Optional[int] = None) -> list[list[int]]:
    """Row indices per forward: rows sorted by length (longest first, ties in input order), taken greedily
    while rows * width * copies <= max_tokens_per_forward (width = the forward's longest row) and
    rows <= batch_rows. A forward always holds at least one row."""
    if max_tokens_per_forward < 1:
        raise ValueError(f"max_tokens_per_forward must be >= 1, got {max_tokens_per_forward}")
    if batch_rows is not None and batch_rows < 1:
        raise ValueError(f"batch_rows must be >= 1 or None, got {batch_rows}")
    order = sorted(range(len(lengths)), key=lambda r: -lengths[r])
    out, i = [], 0
    while i < len(order):
        width = max(1, lengths[order[i]])
        take = max(1, max_tokens_per_forward // (width * copies))
        if batch_rows is not None:
            take = min(take, batch_rows)
        out.append(order[i:i + take])
        i += take
    return out


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _logits(model: torch.nn.Module, ids: torch.Tensor, attention_mask: Optional[torch.Tensor],
            position_ids: Optional[torch.Tensor], sl: slice) -> torch.Tensor:
    """logits [B, len, V] at columns `sl`; the head runs only there for models that support `logits_slice`."""
    kw: dict[str, Any] = {"attention_mask": attention_mask}
    if position_ids is not None:
        kw["position_ids"] = position_ids
    if getattr(model, "supports_logits_slice", False):
        return model(ids, logits_slice=sl, **kw).logits
    return model(ids, **kw).logits[:, sl]


@torch.no_grad()
def masked_ce_sums(model: torch.nn.Module, items: Sequence[Item], masks: Sequence[torch.Tensor], *, mask_id: int,
                   cfg_scale: float = 0.0, max_tokens_per_forward: int = 16384,
                   batch_rows: Optional[int] = None) -> list[torch.Tensor]:
    """Per item i, a [n_i] float64 tensor: for each mask row masks[i][r] ([L_i] bool over the answer), the sum
    over the masked answer positions of CE(answer_j | prompt, answer with those positions masked).

    items: (prompt_ids, answer_ids) id sequences; masks: per item a [n_i, L_i] bool tensor (any device)."""
    if len(items) != len(masks):
        raise ValueError(f"{len(items)} items but {len(masks)} mask tensors")
    if cfg_scale < 0:
        raise ValueError(f"cfg_scale must be >= 0 (0 = no guidance), got {cfg_scale}")
    device = _model_device(model)
    seqs = [torch.as_tensor(list(p) + list(a), dtype=torch.long) for p, a in items]
    ans_len = [len(a) for _, a in items]
    for i, m in enumerate(masks):
        if m.dim() != 2 or m.shape[1] != ans_len[i]:
            raise ValueError(f"item {i}: masks must be [n, {ans_len[i]}] (answer length), got {tuple(m.shape)}")
    # flat row list: (item, row within item)
    row_item = [i for i, m in enumerate(masks) for _ in range(m.shape[0])]
    row_local = [r for m in masks for r in range(m.shape[0])]
    out = [torch.zeros(m.shape[0], dtype=torch.float64) for m in masks]
    copies = 2 if cfg_scale > 0 else 1
    plan = pack_rows([len(seqs[i]) for i in row_item], max_tokens_per_forward=max_tokens_per_forward,
                     copies=copies, batch_rows=batch_rows)
    was_training = model.training
    model.eval()
    try:
        for rows in plan:
            sums = _forward_rows(model, [(row_item[r], row_local[r]) for r in rows], seqs, ans_len, masks,
                                 mask_id, cfg_scale, device)
            for r, s in zip(rows, sums.tolist()):
                out[row_item[r]][row_local[r]] = s
    finally:
        model.train(was_training)
    return out


def _forward_rows(model: torch.nn.Module, rows: list[tuple[int, int]], seqs: list[torch.Tensor],
                  ans_len: list[int], masks: Sequence[torch.Tensor], mask_id: int, cfg_scale: float,
                  device: torch.device) -> torch.Tensor:
    """One (CFG: one doubled) forward over `rows` ((item, row) pairs) -> [len(rows)] float64 CE sums."""
    n = len(rows)
    tot = torch.tensor([len(seqs[i]) for i, _ in rows])
    ans = torch.tensor([ans_len[i] for i, _ in rows])
    width, lmax = int(tot.max()), int(ans.max())
    ids = torch.full((n, width), mask_id, dtype=torch.long)
    sel = torch.zeros(n, lmax, dtype=torch.bool)  # masked answer positions, right-aligned in the answer slice
    for b, (i, r) in enumerate(rows):
        ids[b, width - len(seqs[i]):] = seqs[i]
        if ans_len[i]:
            sel[b, lmax - ans_len[i]:] = masks[i][r].cpu()
    target = ids[:, width - lmax:].clone()
    ids[:, width - lmax:] = target.masked_fill(sel, mask_id)
    cols = torch.arange(width)[None, :]
    real = cols >= (width - tot)[:, None]
    padded = bool((tot < width).any())
    attn = real.long() if padded else None
    pos = (real.long().cumsum(1) - 1).clamp(min=0) if padded else None
    sl = slice(width - lmax, width)
    ids, sel, target = ids.to(device), sel.to(device), target.to(device)
    attn = attn.to(device) if attn is not None else None
    pos = pos.to(device) if pos is not None else None
    if cfg_scale > 0:
        prompt = (real & (cols < (width - ans)[:, None])).to(device)
        un = ids.masked_fill(prompt, mask_id)
        both = _logits(model, torch.cat((ids, un)), None if attn is None else torch.cat((attn, attn)),
                       None if pos is None else torch.cat((pos, pos)), sl)
        cond, uncond = both.chunk(2)
    else:
        cond, uncond = _logits(model, ids, attn, pos, sl), None
    b_idx, c_idx = sel.nonzero(as_tuple=True)
    dt = torch.float64 if cond.dtype == torch.float64 else torch.float32
    lg = cond[b_idx, c_idx].to(dt)  # [N, V]: only the masked positions are upcast
    if uncond is not None:
        u = uncond[b_idx, c_idx].to(dt)
        lg = u + (cfg_scale + 1.0) * (lg - u)
    ce = F.cross_entropy(lg, target[b_idx, c_idx], reduction="none")
    sums = torch.zeros(n, dtype=torch.float64, device=device).index_add_(0, b_idx, ce.to(torch.float64))
    return sums.cpu()
