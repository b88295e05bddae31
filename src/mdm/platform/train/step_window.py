"""The diagnostics of one logging window: the objective's per-micro-batch metrics and the gradient norms.

    window = StepWindow()
    window.add_micro(metrics)         # every micro-batch: the metrics dict the objective's loss returned
    window.add_step(updater.grad_norm)                # every optimizer step
    metrics.update(window.flush(objective))       # at a logging step: {"diag/...": value}, then empty

What a window yields, all under `diag/`:
- the mean of each metric the objective's `loss` returned (keys ending in `_max`: the maximum), except
  `loss` itself (that is `train/loss`); non-finite values (e.g. a correlation undefined for one sequence)
  are left out of the mean;
- `grad_norm_mean` and `grad_norm_var` (sample variance, n - 1) of the pre-clipping gradient norm over the
  window's optimizer steps: a large variance at a fixed norm is the gradient noise an estimator adds;
- what the objective pools over the window itself (`objective.window_metrics()` when it has one: LLaDA+
  gives P-POTS weight statistics and MIRROR's pair correlation over every sequence of the window), which
  replaces the per-micro-batch mean of the same name.
A metric named with its own section (`rl/reward`) keeps that name instead of going under `diag/`.
The Trainer (trainer.py) keeps one per rank; its reports carry rank 0's window.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

PREFIX = "diag/"


class StepWindow:
    """Accumulates one logging window (see the module docstring)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.maxes: dict[str, float] = {}
        self.grad_norms: list[float] = []

    def add_micro(self, metrics: Mapping[str, float]) -> None:
        """One micro-batch's metrics from `objective.loss`."""
        for k, v in metrics.items():
            if k == "loss" or not isinstance(v, (int, float)) or not math.isfinite(v):
                continue
            if k.endswith("_max"):
                self.maxes[k] = max(self.maxes.get(k, -math.inf), float(v))
            else:
                self.sums[k] = self.sums.get(k, 0.0) + float(v)
                self.counts[k] = self.counts.get(k, 0) + 1

    def add_step(self, grad_norm: float) -> None:
        """One optimizer step's gradient norm (before clipping); NaN (unknown) is skipped."""
        if math.isfinite(grad_norm):
            self.grad_norms.append(float(grad_norm))

    def flush(self, objective: Optional[Any] = None) -> dict[str, float]:
        """The window's `diag/...` metrics (plus the objective's pooled ones), then start a new window."""
        out = {k: s / self.counts[k] for k, s in self.sums.items()}
        out.update(self.maxes)
        g = self.grad_norms
        if g:
            mean = sum(g) / len(g)
            out["grad_norm_mean"] = mean
            if len(g) > 1:
                out["grad_norm_var"] = sum((x - mean) ** 2 for x in g) / (len(g) - 1)
        pooled = getattr(objective, "window_metrics", None)
        if callable(pooled):
            out.update({k: v for k, v in pooled().items() if math.isfinite(v)})
        self.__init__()
        return {(k if "/" in k else PREFIX + k): v for k, v in out.items()}
