"""Diagnostics that explain an objective's result: importance-weight statistics and MIRROR's pair correlation.

    weight_stats(w, cap)        # {"is_weight_mean", "is_weight_max", "is_ess_frac", "is_capped_frac"}
    pearson(a, b)               # Pearson correlation of two equal-length samples (nan when undefined)
    window = PooledWindow()
    window.add(weights=w, cap=10.0, halves=per_half)     # each micro-batch (tensors, detached)
    window.pop()                # the same statistics pooled over every sequence since the last pop

What they mean, for sequences b = 1..n of a window:
- P-POTS weights w_b = min(1 / p(t_b), max_is_weight). `is_ess_frac` is Kish's effective sample size as a
  fraction of n, (sum w)^2 / (n sum w^2), in (0, 1]: 1 when every weight is equal, small when a few
  sequences dominate the weighted loss. `is_capped_frac` is the fraction whose 1/p(t) reached the cap (their
  weight, and so the estimator, is then biased low for those t).
- MIRROR draws two complementary masks M1, M2 per sequence; `mirror_corr_pooled` is the Pearson correlation
  over sequences of l_b(M1) and l_b(M2). Both halves share x_b and t_b, so the correlation across a batch is
  positive when sequences and times differ a lot, even where the pairing works within each sequence: it is
  NOT the correlation that decides MIRROR's gain. That is the within-sequence correlation (the pair
  average's variance at fixed x_b, t_b is (1 + corr) / 2 of one half's), which the objective measures at
  `prepare` and each re-estimation (`diag/mirror_corr_within`, estimator_diagnostics.mirror_within_corr).
- Likewise the ESS of the P-POTS weights does not measure P-POTS' effect (the gain lives near t = 0, where
  few draws land): the variance ratios R that `prepare` reports do (`ppots/R_*`, `ppots/realised_*_R`).

A micro-batch of one sequence has no correlation of its own; pooling over the logging window (`pop`) gives
a defined value as long as the window holds two sequences or more.
"""

from __future__ import annotations

import math
from typing import Optional

import torch


def weight_stats(w: torch.Tensor, cap: float) -> dict[str, float]:
    """Importance-weight statistics of `w` [n] (weights after the cap `cap`)."""
    w = w.detach().double().flatten()
    n = w.numel()
    if n == 0:
        return {}
    total, sq = float(w.sum()), float((w * w).sum())
    return {"is_weight_mean": total / n, "is_weight_max": float(w.max()),
            "is_ess_frac": total * total / (n * sq) if sq > 0 else float("nan"),
            # the cap is applied in float64 and stored as float32: compare with a relative tolerance
            "is_capped_frac": float((w >= cap * (1 - 1e-6)).double().mean())}


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of `a` [n] and `b` [n]; nan for n < 2 or a constant sample."""
    a, b = a.detach().double().flatten(), b.detach().double().flatten()
    if a.numel() < 2:
        return float("nan")
    da, db = a - a.mean(), b - b.mean()
    den = math.sqrt(float((da * da).sum()) * float((db * db).sum()))
    return float((da * db).sum()) / den if den > 0 else float("nan")


class PooledWindow:
    """Weights and MIRROR half-losses of every sequence since the last `pop`, kept on the CPU."""

    def __init__(self) -> None:
        self.weights: list[torch.Tensor] = []
        self.halves: list[torch.Tensor] = []
        self.cap: Optional[float] = None

    def add(self, weights: Optional[torch.Tensor] = None, cap: Optional[float] = None,
            halves: Optional[torch.Tensor] = None) -> None:
        """`weights` [B] (P-POTS on) with their `cap`; `halves` [2, B] (MIRROR)."""
        if weights is not None:
            self.weights.append(weights.detach().float().cpu())
            self.cap = cap
        if halves is not None:
            self.halves.append(halves.detach().float().cpu())

    def pop(self) -> dict[str, float]:
        """The pooled statistics (see the module docstring), then an empty window."""
        out: dict[str, float] = {}
        if self.weights and self.cap is not None:
            out.update(weight_stats(torch.cat(self.weights), self.cap))
        if self.halves:
            h = torch.cat(self.halves, dim=1)
            out["mirror_corr_pooled"] = pearson(h[0], h[1])
        self.weights, self.halves = [], []
        return out
