"""Measuring the P-POTS moments (ppots/moments.PPOTSMoments) of a model on training sequences.

    m = measure_moments(model, batches, mask_id=126336, grid=make_grid("sqrt", 16), grid_kind="sqrt",
                        num_samples_x0=32, num_samples_xt=4, max_tokens_per_forward=16384,
                        single_token_cap=32, target="loss", seed=0, eps=1e-3, device="cpu")

Per sequence (n eligible tokens) two kinds of forward rows:
- k = 1: one row per eligible token j masked alone (at most `single_token_cap` tokens, drawn without
  replacement beyond the cap, so the mean over them is still unbiased): CE_j (grad: ||grad CE_j||^2);
- k >= 2: at every grid t, `num_samples_xt` masks drawn conditionally on k >= 2 (k from the binomial
  truncated to >= 2, then a uniform k-subset), weighted by P(k >= 2 | t) (sequences with n = 1 have none).
target "grad": one backward per row with torch.autograd.grad (no .grad is touched, so DeepSpeed ZeRO-1/2
hooks do not fire; a DDP wrapper is looked through), rows one per forward; ||mu_g||^2 is the dot product
of the means of two independent halves of the sequences (even / odd global index), so it has no squared-
mean bias. Under ZeRO-3 (partitioned parameters) gradients cannot be taken this way: the loss target is
used, said on stderr.

Distributed: rank r takes its share of the sequences, draws come from
generators seeded by (seed, global sequence index), sums are all-reduced and every rank runs the same
number of forwards (ZeRO-3 gathers parameters collectively).
"""

from __future__ import annotations

import math
import sys
from typing import Iterable

import numpy as np
import torch

from mdm.engines.llada_plus.diffusion import IGNORE_INDEX
from mdm.engines.llada_plus.loss import masked_ce_loss, model_logits
from mdm.engines.llada_plus.rows import all_reduce, dist_rank_world, pack_rows, take_sequences
from mdm.engines.llada_plus.ppots.moments import PPOTSMoments, p_two_or_more


def truncated_binomial(n: int, p: float, g: torch.Generator) -> int:
    """k ~ Binomial(n, p) conditioned on k >= 2 (n >= 2, 0 < p < 1), by its exact pmf."""
    k = torch.arange(2, n + 1, dtype=torch.float64)
    logpmf = (torch.lgamma(torch.tensor(n + 1.0, dtype=torch.float64)) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)
              + k * math.log(p) + (n - k) * math.log1p(-min(p, 1 - 1e-16)))
    probs = torch.exp(logpmf - logpmf.max())
    return int(torch.multinomial(probs, 1, generator=g)) + 2


def build_rows(seqs: list, offset: int, p_grid: np.ndarray, n_xt: int, cap: int, seed: int) -> list:
    """Rows (tag, ids, labels, masked): tag = ("one", i, -1) or ("two", i, grid index), i local."""
    rows = []
    for i, (ids, labels) in enumerate(seqs):
        g = torch.Generator().manual_seed(seed * 1_000_003 + offset + i)
        pos = (labels != IGNORE_INDEX).nonzero(as_tuple=True)[0]
        n = len(pos)
        for j in pos[torch.randperm(n, generator=g)[:cap]].tolist():
            masked = torch.zeros(len(ids), dtype=torch.bool)
            masked[j] = True
            rows.append((("one", i, -1), ids, labels, masked))
        if n < 2:
            continue
        for gi, p in enumerate(p_grid):
            for _ in range(n_xt):
                k = truncated_binomial(n, float(p), g)
                masked = torch.zeros(len(ids), dtype=torch.bool)
                masked[pos[torch.randperm(n, generator=g)[:k]]] = True
                rows.append((("two", i, gi), ids, labels, masked))
    return rows


def collate_rows(pack: list, mask_id: int, p_grid: np.ndarray, device: torch.device | str) -> tuple[torch.Tensor, ...]:
    """(ids, labels, masked, attn, p) for a pack; p = 1 for single-token rows (their l is CE / n)."""
    n, length = len(pack), max(len(r[1]) for r in pack)
    ids = torch.zeros((n, length), dtype=torch.long)
    labels = torch.full((n, length), IGNORE_INDEX, dtype=torch.long)
    masked = torch.zeros((n, length), dtype=torch.bool)
    attn = torch.zeros((n, length), dtype=torch.long)
    p = torch.ones(n, dtype=torch.float64)
    for r, (tag, seq_ids, seq_labels, seq_masked) in enumerate(pack):
        m = len(seq_ids)
        ids[r, :m] = torch.where(seq_masked, torch.full_like(seq_ids, mask_id), seq_ids)
        labels[r, :m], masked[r, :m], attn[r, :m] = seq_labels, seq_masked, 1
        if tag[0] == "two":
            p[r] = float(p_grid[tag[2]])
    return ids.to(device), labels.to(device), masked.to(device), attn.to(device), p


def is_zero3(model: torch.nn.Module) -> bool:
    """True when parameters are partitioned (DeepSpeed ZeRO-3 marks them with ds_numel / ds_tensor)."""
    return any(hasattr(q, "ds_numel") or hasattr(q, "ds_tensor") for q in model.parameters())


def measure_moments(model: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]], *, mask_id: int,
                    grid: np.ndarray, grid_weights: np.ndarray, num_samples_x0: int, num_samples_xt: int,
                    max_tokens_per_forward: int, single_token_cap: int = 32, target: str = "loss",
                    seed: int = 0, eps: float = 1e-3, device: torch.device | str = "cpu") -> dict[str, PPOTSMoments]:
    """Measure the moments (module docstring): {"loss": ..., "grad": ... (target grad only)};
    `grid_weights` integrate over the grid (for ||mu_g||^2)."""
    if target not in ("loss", "grad"):
        raise ValueError(f"train.ppots_target must be 'loss' or 'grad', got {target!r}")
    if target == "grad" and is_zero3(model):
        print("P-POTS: ppots_target=grad needs unpartitioned parameters; under DeepSpeed ZeRO-3 the loss target "
              "is used instead", file=sys.stderr)
        target = "loss"
    if target == "grad" and isinstance(model, torch.nn.parallel.DistributedDataParallel):
        # DDP's forward under grad would arm a gradient all-reduce that autograd.grad never completes.
        model = model.module
    rank, world = dist_rank_world()
    shares = [num_samples_x0 // world + (r < num_samples_x0 % world) for r in range(world)]
    offset = sum(shares[:rank])
    seqs = take_sequences(batches, shares[rank])
    grid = np.asarray(grid, dtype=np.float64)
    p_grid = (1.0 - eps) * grid + eps
    rows = build_rows(seqs, offset, p_grid, num_samples_xt, single_token_cap, seed)
    # grad: one row per forward, as each autograd.grad would otherwise backpropagate the whole pack.
    packs = [[rows[i] for i in idx] for idx in
             pack_rows([len(r[1]) for r in rows], 1 if target == "grad" else max_tokens_per_forward)]
    n_elig = np.array([float((lab != IGNORE_INDEX).sum()) for _, lab in seqs])
    acc = Accumulator(num_samples_x0, len(grid), offset, n_elig, p_grid, np.asarray(grid_weights),
                      num_samples_xt, single_token_cap, eps, model if target == "grad" else None)
    n_forwards = all_reduce(torch.tensor([len(packs)], dtype=torch.long), device, op="max")
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        with torch.set_grad_enabled(target == "grad"):
            for f in range(int(n_forwards.item())):
                if f >= len(packs):  # equal forward counts on every rank; the repeat's result is discarded
                    dummy = torch.full((1, 1), mask_id, dtype=torch.long, device=device)
                    model_logits(model, dummy, torch.ones_like(dummy))
                    continue
                ids, labels, masked, attn, p = collate_rows(packs[f], mask_id, p_grid, device)
                _, per_row = masked_ce_loss(model_logits(model, ids, attn), labels, masked, p.to(device))
                acc.add(packs[f], per_row)
    finally:
        model.train(was_training)
    return acc.result(grid, device)


class Accumulator:
    """Sums over rows: per-sequence single-token moments, k >= 2 sums per grid point, grad half-means."""

    def __init__(self, n_slots: int, n_grid: int, offset: int, n_elig: np.ndarray, p_grid: np.ndarray,
                 grid_w: np.ndarray, n_xt: int, cap: int, eps: float, grad_model: torch.nn.Module | None) -> None:
        self.offset, self.n_elig, self.p_grid, self.grid_w = offset, n_elig, p_grid, grid_w
        self.n_xt, self.eps = n_xt, eps
        self.cnt = np.minimum(n_elig, cap)
        self.single = torch.zeros((n_slots, 5), dtype=torch.float64)  # n, sum c, sum c^2, sum ||grad c||^2, count
        self.two = torch.zeros((3, n_grid), dtype=torch.float64)       # sum P2 (l, l^2, ||g||^2) / n_xt
        for i, n in enumerate(n_elig):
            self.single[offset + i, 0] = n
        self.params = None if grad_model is None else [q for q in grad_model.parameters() if q.requires_grad]
        if self.params is not None:
            size = sum(q.numel() for q in self.params)
            self.halves = torch.zeros((2, size), dtype=torch.float64)
            self.half_counts = torch.zeros(2, dtype=torch.float64)
            for i in range(len(n_elig)):
                self.half_counts[(offset + i) % 2] += 1

    def _grad(self, value: torch.Tensor, retain: bool) -> torch.Tensor:
        grads = torch.autograd.grad(value, self.params, retain_graph=retain, allow_unused=True)
        return torch.cat([(torch.zeros_like(q) if gr is None else gr).reshape(-1).double().cpu()
                          for q, gr in zip(self.params, grads)])

    def add(self, pack: list, per_row: torch.Tensor) -> None:
        for r, (tag, *_rest) in enumerate(pack):
            kind, i, gi = tag
            n = self.n_elig[i]
            # single-token rows carry p = 1, so per_row = CE_j / n.
            scale = n if kind == "one" else 1.0
            vec, grad2 = None, 0.0
            if self.params is not None:
                vec = self._grad(per_row[r], retain=r < len(pack) - 1) * scale
                grad2 = float(vec @ vec)
            value = float(per_row[r].detach()) * scale
            values = torch.tensor([value, value * value, grad2], dtype=torch.float64)
            half = (self.offset + i) % 2
            if kind == "one":
                self.single[self.offset + i, 1:4] += values
                self.single[self.offset + i, 4] += 1.0
                if vec is not None:  # ∫ P(k=1) E[g|k=1] dt = mean_j grad CE_j (1 - eps)^(n-1) / n
                    self.halves[half] += vec * ((1.0 - self.eps) ** (n - 1) / n / self.cnt[i])
            else:
                p2 = float(p_two_or_more(np.array([n]), self.p_grid[gi:gi + 1])[0, 0])
                self.two[:, gi] += values * (p2 / self.n_xt)
                if vec is not None:
                    self.halves[half] += vec * (self.grid_w[gi] * p2 / self.n_xt)

    def result(self, grid: np.ndarray, device: torch.device | str) -> dict[str, PPOTSMoments]:
        tensors = [self.single, self.two] + ([self.halves, self.half_counts] if self.params is not None else [])
        for x in tensors:
            x.copy_(all_reduce(x, device))
        single = self.single.numpy()
        keep = single[:, 0] > 0
        if not keep.any():
            raise ValueError("P-POTS estimation found no training sequence with response tokens (labels != -100) "
                             "in the batches given to prepare(); check train.train_data_path and the labels")
        n_seq = int(keep.sum())
        cnt = single[keep, 4]
        mu_sq = None
        if self.params is not None:
            hc = self.half_counts.clamp(min=1.0)
            mu_sq = float((self.halves[0] / hc[0]) @ (self.halves[1] / hc[1]))
        two = self.two.numpy() / n_seq
        common = dict(eps=self.eps, grid=grid, s1=two[0], n=single[keep, 0], m1=single[keep, 1] / cnt,
                      n_rows_per_t=float(n_seq * self.n_xt))
        out = {"loss": PPOTSMoments(target="loss", s2=two[1], m2=single[keep, 2] / cnt, **common)}
        if mu_sq is not None:
            out["grad"] = PPOTSMoments(target="grad", s2=two[2], m2=single[keep, 3] / cnt, mu_sq_grad=mu_sq, **common)
        return out
