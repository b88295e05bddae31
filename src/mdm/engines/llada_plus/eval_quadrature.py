"""Held-out diffusion loss by fixed Gauss-Legendre quadrature over t, with masks shared across models.

    from mdm.engines.llada_plus.eval_quadrature import quadrature_eval_loss
    value, stderr, per_node = quadrature_eval_loss(model, batches, mask_id=126336, n_points=16,
                                                   masks_per_point=1, seed=0, device="cuda")

The evaluation loss E_t[l] = ∫_0^1 E[l | t] dt is estimated as sum_k w_k E[l | t_k] with the Gauss-Legendre
nodes t_k and weights w_k of [0, 1] (weights sum to 1), instead of drawing t ~ U(0, 1): the t noise is gone,
and only the mask noise remains. For a sequence with n eligible tokens, E[l | t] is a polynomial of degree
<= n - 1 in t (E[1{j masked} CE_j(M)] is a polynomial of degree n in p, divisible by p), so n_points nodes are
exact in expectation whenever n <= 2 n_points; for longer sequences the error is that of a smooth integrand.

l is loss.masked_ce_loss's per-sequence loss (CE / p summed over the masked tokens, divided by the eligible
count, p = (1 - eps) t + eps), sequences weighted equally; rows with no eligible token are skipped (they carry
no loss; diffusion_loss would count them as 0). Each sequence i gets Q_i = sum_k w_k mean_m l_i(t_k, mask m);
the value is mean_i Q_i and stderr = std_i(Q_i) / sqrt(n) (ddof 1): the standard error of the value from mask
randomness and from the choice of sequences together (so an upper bound on the mask-only error).
per_node_means [n_points] is mean_i mean_m l_i(t_k, m), the measured E[l | t_k].

Shared masks: the masks of (sequence, node k) are `diffusion.normal_mask` draws (shape [masks_per_point, L])
from a generator seeded by `mask_seed(seed, k, input_ids)`, a blake2b hash of the seed, the node index and the
sequence's token ids (padding stripped). Two models evaluated with the same seed on the same rows see
identical masks, whatever the batching, the order of the rows or the number of ranks, so the difference of two
models' values has no mask noise of its own beyond their differing responses to the same masks.

Distributed (torch.distributed initialised, world_size > 1): each rank evaluates the batches it is given (its
shard), ranks run the same number of forwards, and the sums are all-reduced, so all ranks return the same.
"""

from __future__ import annotations

import hashlib
import math
from typing import Iterable

import numpy as np
import torch

from mdm.engines.llada_plus.diffusion import mask_prob, normal_mask
from mdm.engines.llada_plus.rows import Row, all_reduce, eval_mode, row_losses, take_sequences


def gauss_legendre_01(n_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes [n] in (0, 1), increasing, and weights [n] summing to 1."""
    x, w = np.polynomial.legendre.leggauss(n_points)  # on [-1, 1], weights sum to 2
    return 0.5 * (x + 1.0), 0.5 * w


def mask_seed(seed: int, node: int, input_ids: torch.Tensor) -> int:
    """A 63-bit generator seed from (seed, node index, the token ids [L]); stable across processes and runs
    (unlike Python's hash(), which is salted per process)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(f"{int(seed)}:{int(node)}:".encode())
    h.update(input_ids.detach().cpu().to(torch.int64).numpy().astype("<i8").tobytes())
    return int.from_bytes(h.digest(), "little") & ((1 << 63) - 1)


def quadrature_rows(seqs: list[tuple[torch.Tensor, torch.Tensor]], nodes: np.ndarray, masks_per_point: int,
                    seed: int, eps: float) -> list[Row]:
    """Rows (ids, labels, masked, p) ordered by sequence, then node, then mask: len(seqs) * K * M rows."""
    p = mask_prob(torch.as_tensor(nodes, dtype=torch.float32), eps)  # float32, as diffusion_loss computes it
    rows: list[Row] = []
    for ids, labels in seqs:
        for k in range(len(nodes)):
            g = torch.Generator().manual_seed(mask_seed(seed, k, ids))
            masked = normal_mask(labels[None].expand(masks_per_point, -1), p[k].expand(masks_per_point), g)
            rows += [(ids, labels, masked[m], p[k]) for m in range(masks_per_point)]
    return rows


def quadrature_eval_loss(model: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]], *, mask_id: int,
                         n_points: int = 16, masks_per_point: int = 1, seed: int = 0, eps: float = 1e-3,
                         max_tokens_per_forward: int = 16384,
                         device: torch.device | str = "cpu") -> tuple[float, float, np.ndarray]:
    """(value, stderr, per_node_means [n_points]) of the quadrature held-out loss (module docstring).

    batches: dicts of input_ids [B, L], labels [B, L] (-100 = not eligible), attention_mask [B, L].
    No grad; the model is in eval mode meanwhile and its training mode is restored."""
    if n_points < 1 or masks_per_point < 1:
        raise ValueError(f"n_points and masks_per_point must be >= 1, got {n_points}, {masks_per_point}")
    nodes, weights = gauss_legendre_01(n_points)
    seqs = take_sequences(batches, None)
    rows = quadrature_rows(seqs, nodes, masks_per_point, seed, eps)
    with eval_mode(model):
        l = row_losses(model, rows, mask_id=mask_id, max_tokens_per_forward=max_tokens_per_forward, device=device)
    node_means = l.view(len(seqs), n_points, masks_per_point).mean(dim=2)  # [n_seq, K]
    q = node_means @ torch.as_tensor(weights, dtype=torch.float64)       # [n_seq] Q_i
    # One vector of sums so one all-reduce serves every rank: n, sum Q, sum Q^2, per-node sums [K].
    sums = torch.cat([torch.tensor([float(len(seqs)), float(q.sum()), float((q * q).sum())], dtype=torch.float64),
                      node_means.sum(dim=0)])
    sums = all_reduce(sums, device)
    n = float(sums[0])
    if n == 0:
        raise ValueError("quadrature_eval_loss: no sequence with response tokens (labels != -100) in the batches")
    value = float(sums[1]) / n
    var = max(float(sums[2]) / n - value * value, 0.0) * n / (n - 1) if n > 1 else float("nan")
    return value, math.sqrt(var / n), (sums[3:] / n).numpy()
