"""Measuring w(t) = sqrt(E[l | t]^2 + Var[l | t]) on a grid of t, for P-POTS (on one or many workers).

The objective now measures with ppots_measure.measure_moments (exact one-masked-token part, w at any t);
this plain-sample-moment version is kept for comparison: on a uniform grid it misses the t^-1/2 rise of w
below its first point. Its helpers (take_sequences, pack_rows, dist_info, stats_device) are shared.

    stats = measure_w(model, batches, mask_id=126336, grid=uniform_grid(16), num_samples_x0=32,
                      num_samples_xt=4, max_tokens_per_forward=16384, seed=0, device="cpu")
    stats.grid, stats.mean, stats.var, stats.count, stats.w      # numpy [T]

l is the per-sequence loss of loss.py (CE / p normalised by the eligible tokens, no importance weight)
with one Normal mask; mean and variance run over the sequences and the masks. With population
variance, E^2 + Var = E[l^2], so w = sqrt(sum l^2 / count).

Distributed (torch.distributed initialised, world_size > 1): rank r takes its share of the
`num_samples_x0` sequences (the first n_r with response tokens from the batches *it* is given: with
a per-worker data shard these are different sequences on every rank), and the sums, sums of squares
and counts are all-reduced, so every rank gets the same w. The masks of a sequence come from a
generator seeded by (seed, its global index), so the result equals a single process run over the
union of the ranks' sequences. Ranks run the same number of forwards (padding with repeats), which
ZeRO-3 needs, as its parameter gathering is collective.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import torch

from mdm.engines.llada_plus.diffusion import IGNORE_INDEX, mask_prob
from mdm.engines.llada_plus.loss import masked_ce_loss, model_logits


@dataclass
class WStats:
    """Per grid point: sample mean and (population) variance of l, number of samples, and w."""

    grid: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    count: np.ndarray
    w: np.ndarray


def dist_info() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def take_sequences(batches: Iterable[dict[str, torch.Tensor]], n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first n (input_ids [L_i], labels [L_i]) with >= 1 eligible token, padding stripped."""
    out: list[tuple[torch.Tensor, torch.Tensor]] = []
    if n <= 0:
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
                if len(out) == n:
                    return out
    return out


def _rows(seqs: list[tuple[torch.Tensor, torch.Tensor]], offset: int, p: torch.Tensor, n_xt: int,
          seed: int) -> list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """One row per (sequence, grid index j, mask k): (j, ids [L], labels [L], masked [L] bool)."""
    rows = []
    for i, (ids, labels) in enumerate(seqs):
        g = torch.Generator().manual_seed(seed * 1_000_003 + offset + i)
        u = torch.rand((len(p), n_xt, len(ids)), generator=g, dtype=torch.float64)
        masked = (u < p[:, None, None]) & (labels != IGNORE_INDEX)
        for j in range(len(p)):
            for k in range(n_xt):
                rows.append((j, ids, labels, masked[j, k]))
    return rows


def pack_rows(rows: list, max_tokens: int) -> list[list]:
    """Greedy groups of rows whose padded size (rows x longest row) stays <= max_tokens (>= 1 row)."""
    packs, cur, longest = [], [], 0
    for row in rows:
        new_longest = max(longest, len(row[1]))
        if cur and (len(cur) + 1) * new_longest > max_tokens:
            packs.append(cur)
            cur, new_longest = [], len(row[1])
        cur.append(row)
        longest = new_longest
    if cur:
        packs.append(cur)
    return packs


# The old private names (tests import `_packs`).
_packs = pack_rows


def _collate(pack: list, mask_id: int, device: Any) -> tuple[torch.Tensor, ...]:
    n, length = len(pack), max(len(r[1]) for r in pack)
    ids = torch.zeros((n, length), dtype=torch.long)
    labels = torch.full((n, length), IGNORE_INDEX, dtype=torch.long)
    masked = torch.zeros((n, length), dtype=torch.bool)
    attn = torch.zeros((n, length), dtype=torch.long)
    for r, (_, seq_ids, seq_labels, seq_masked) in enumerate(pack):
        m = len(seq_ids)
        ids[r, :m] = torch.where(seq_masked, torch.full_like(seq_ids, mask_id), seq_ids)
        labels[r, :m], masked[r, :m], attn[r, :m] = seq_labels, seq_masked, 1
    grid_idx = torch.tensor([r[0] for r in pack], dtype=torch.long)
    return ids.to(device), labels.to(device), masked.to(device), attn.to(device), grid_idx


def stats_device(device: Any) -> torch.device:
    # NCCL reduces CUDA tensors only; gloo (CPU) wants CPU tensors.
    if dist_info()[1] > 1 and torch.distributed.get_backend() == "nccl":
        return torch.device(device)
    return torch.device("cpu")


@torch.no_grad()
def measure_w(model: Any, batches: Iterable[dict[str, torch.Tensor]], *, mask_id: int, grid: np.ndarray,
              num_samples_x0: int, num_samples_xt: int, max_tokens_per_forward: int, seed: int = 0,
              eps: float = 1e-3, device: Any = "cpu") -> WStats:
    """Measure w(t) at `grid` [T] (see module docstring); the model is put in eval mode meanwhile."""
    rank, world = dist_info()
    shares = [num_samples_x0 // world + (r < num_samples_x0 % world) for r in range(world)]
    seqs = take_sequences(batches, shares[rank])
    p = mask_prob(torch.as_tensor(grid, dtype=torch.float64), eps)
    rows = _rows(seqs, sum(shares[:rank]), p, num_samples_xt, seed)
    packs = pack_rows(rows, max_tokens_per_forward)

    n_forwards = torch.tensor([len(packs)], dtype=torch.long, device=stats_device(device))
    if world > 1:
        torch.distributed.all_reduce(n_forwards, op=torch.distributed.ReduceOp.MAX)
    sums = torch.zeros((3, len(grid)), dtype=torch.float64)  # sum l, sum l^2, count
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        for f in range(int(n_forwards.item())):
            if f >= len(packs):  # equal forward counts on every rank; results of the repeat discarded
                dummy = torch.full((1, 1), mask_id, dtype=torch.long, device=device)
                model_logits(model, dummy, torch.ones_like(dummy))
                continue
            ids, labels, masked, attn, grid_idx = _collate(packs[f], mask_id, device)
            logits = model_logits(model, ids, attn)
            _, per_row = masked_ce_loss(logits, labels, masked, p.to(device)[grid_idx.to(device)])
            l = per_row.double().cpu()
            sums[0].index_add_(0, grid_idx, l)
            sums[1].index_add_(0, grid_idx, l * l)
            sums[2].index_add_(0, grid_idx, torch.ones_like(l))
    finally:
        model.train(was_training)
    if world > 1:
        sums = sums.to(stats_device(device))
        torch.distributed.all_reduce(sums)
        sums = sums.cpu()
    s1, s2, count = sums.numpy()
    if np.any(count == 0):
        raise ValueError("P-POTS estimation found no training sequence with response tokens (labels != -100) "
                         "in the batches given to prepare(); check train.train_data_path and the labels")
    mean = s1 / count
    var = np.maximum(s2 / count - mean * mean, 0.0)
    return WStats(grid=np.asarray(grid, dtype=np.float64), mean=mean, var=var, count=count,
                  w=np.sqrt(mean * mean + var))
