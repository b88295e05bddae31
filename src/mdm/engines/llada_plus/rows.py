"""Rows of masked sequences and the forwards over them, shared by P-POTS measurement, the estimator
diagnostics and the quadrature evaluation (each draws its own masks; this module packs and runs them).

    batches = first_batches(batches, n_rows)           # a list: several consumers read the same rows
    seqs = take_sequences(batches, n)                  # [(input_ids [L], labels [L])] with response tokens
    packs = pack_rows([len(ids) for ids, _ in seqs], max_tokens_per_forward)   # index groups per forward
    with eval_mode(model):
        l = row_losses(model, rows, mask_id=..., max_tokens_per_forward=..., device=...)   # float64 [N]
    rank, world = dist_rank_world(); total = all_reduce(sums, device)

Distributed (torch.distributed initialised): `row_losses` is collective (every rank runs the largest rank's
number of forwards, which ZeRO-3's collective parameter gathering needs) and `all_reduce` sums or maxes over
ranks; alone, both are plain local operations.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator, Sequence

import torch

from mdm.engines.llada_plus.diffusion import IGNORE_INDEX
from mdm.engines.llada_plus.loss import masked_ce_loss, model_logits

# A row of a diagnostic forward: ids [L], labels [L] (-100 = not eligible), masked [L] bool, p [] float32.
Row = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def dist_rank_world() -> tuple[int, int]:
    """(rank, world_size) under torch.distributed, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def all_reduce(x: torch.Tensor, device: torch.device | str, op: str = "sum") -> torch.Tensor:
    """`x` reduced over ranks by "sum" or "max" (itself when not distributed), returned on the CPU."""
    if dist_rank_world()[1] == 1:
        return x
    # NCCL reduces CUDA tensors only; gloo (CPU) wants CPU tensors.
    dev = torch.device(device) if torch.distributed.get_backend() == "nccl" else torch.device("cpu")
    y = x.to(dev)
    reduce_op = torch.distributed.ReduceOp.MAX if op == "max" else torch.distributed.ReduceOp.SUM
    torch.distributed.all_reduce(y, op=reduce_op)
    return y.cpu()


def take_sequences(batches: Iterable[dict[str, torch.Tensor]],
                   n: int | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first `n` (all when None) rows with >= 1 eligible token as (input_ids [L_i], labels [L_i]) on the
    CPU, padding (attention_mask == 0) stripped, in batch order."""
    out: list[tuple[torch.Tensor, torch.Tensor]] = []
    if n is not None and n <= 0:
        return out
    for batch in batches:
        ids, labels = torch.as_tensor(batch["input_ids"]), torch.as_tensor(batch["labels"])
        attn = batch.get("attention_mask")
        attn = torch.ones_like(ids) if attn is None else torch.as_tensor(attn)
        for b in range(ids.shape[0]):
            keep = attn[b] != 0
            seq_ids, seq_labels = ids[b][keep].cpu(), labels[b][keep].cpu()
            if (seq_labels != IGNORE_INDEX).any():
                out.append((seq_ids, seq_labels))
                if n is not None and len(out) == n:
                    return out
    return out


def pack_rows(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Greedy consecutive groups of row indices whose padded size (rows x longest) stays <= max_tokens
    (a group always holds at least one row)."""
    packs: list[list[int]] = []
    cur: list[int] = []
    longest = 0
    for i, length in enumerate(lengths):
        new_longest = max(longest, length)
        if cur and (len(cur) + 1) * new_longest > max_tokens:
            packs.append(cur)
            cur, new_longest = [], length
        cur.append(i)
        longest = new_longest
    if cur:
        packs.append(cur)
    return packs


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """The model in eval mode inside the block, its previous training mode restored after."""
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def row_losses(model: torch.nn.Module, rows: list[Row], *, mask_id: int, max_tokens_per_forward: int,
               device: torch.device | str) -> torch.Tensor:
    """l of every row (masked_ce_loss's per-sequence loss, no weight) -> float64 CPU [N], in row order.

    Rows are packed under `max_tokens_per_forward` and right-padded with attention_mask 0. Collective under
    torch.distributed: every rank runs the largest rank's number of forwards (extra ones on a one-token
    dummy, results discarded). Call it inside `eval_mode(model)`."""
    packs = pack_rows([len(r[0]) for r in rows], max_tokens_per_forward)
    n_forwards = int(all_reduce(torch.tensor([len(packs)], dtype=torch.long), device, op="max").item())
    out = torch.zeros(len(rows), dtype=torch.float64)
    for f in range(n_forwards):
        if f >= len(packs):
            dummy = torch.full((1, 1), mask_id, dtype=torch.long, device=device)
            model_logits(model, dummy, torch.ones_like(dummy))
            continue
        pack = packs[f]
        n, length = len(pack), max(len(rows[i][0]) for i in pack)
        ids = torch.zeros((n, length), dtype=torch.long)
        labels = torch.full((n, length), IGNORE_INDEX, dtype=torch.long)
        masked = torch.zeros((n, length), dtype=torch.bool)
        attn = torch.zeros((n, length), dtype=torch.long)
        for r, i in enumerate(pack):
            seq_ids, seq_labels, seq_masked, _ = rows[i]
            m = len(seq_ids)
            ids[r, :m] = torch.where(seq_masked, torch.full_like(seq_ids, mask_id), seq_ids)
            labels[r, :m], masked[r, :m], attn[r, :m] = seq_labels, seq_masked, 1
        p = torch.stack([rows[i][3].reshape(()) for i in pack]).to(device)
        logits = model_logits(model, ids.to(device), attn.to(device))
        _, per_row = masked_ce_loss(logits, labels.to(device), masked.to(device), p)
        out[pack] = per_row.double().cpu()
    return out


def first_batches(batches: Iterable[dict[str, torch.Tensor]], n_rows: int) -> list[dict[str, torch.Tensor]]:
    """The leading batches of `batches` that hold at least `n_rows` rows (all of them when fewer), as a list,
    so that several measurements read the same rows from a one-shot iterator (a data shard, a generator)."""
    out: list[dict[str, torch.Tensor]] = []
    total = 0
    for batch in batches:
        out.append(batch)
        total += int(torch.as_tensor(batch["input_ids"]).shape[0])
        if total >= n_rows:
            break
    return out
