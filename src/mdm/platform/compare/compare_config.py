"""`compare` section: a comparison of training configurations over seeds (read by `mdm.platform.compare.compare`).

    compare:
      grid: {train.train_mode: [Normal, MIRROR], train.PPOTS: [false, true], train.p_model: [EPR]}
      lrs: [1.0e-3]              # the same learning rates in every cell (empty: train.lr)
      seeds: [1, 2, 3]
      equalize: forwards         # or batch

`grid`: the configurations, dotted keys (as --set) -> values, crossed; keys that cannot matter in a cell
(the engine's conditions: train.p_model with train.PPOTS off) are deduplicated, so the grid above is 4
configurations. `--set` merges into it key by key (`--set compare.grid.train.PPOTS=[true]` keeps the other
keys); a whole new grid: `--set 'compare.grid={...}'` still merges, so list every key you change. Everything else is shared. `lrs` and `seeds` are crossed with every configuration.
`equalize`: `batch` gives every configuration `train.batch_size_per_gpu` sequences per micro-batch;
`forwards` gives each the same model forward rows instead, dividing the batch by the engine's forwards per
sequence (MIRROR runs two masks of each sequence, so it gets half the sequences). Recorded on every run.
`runner`: `in_process` trains each trial inside its Tune trial process (no Train worker group; small models,
`cpus_per_trial` CPUs and as many torch threads each); `ray_train` runs each trial as a Ray Train job
(`train_driver`, DeepSpeed, GPUs, the `ray` section) followed by batch inference (`run_inference`).
`eval_split` / `eval_limit`: every trial ends with an exact-match evaluation on the first `eval_limit`
problems of the task's held-out split (the task is `eval.task`, else `train.task`, built with `task_args`),
and with two low-noise measures that resolve differences exact match cannot: `eval/loss_quad`, the held-out
loss by fixed-grid quadrature over t (`quad_points` Gauss-Legendre nodes, masks shared by every configuration
of a seed), and `eval/loglik_per_token`, the likelihood bound per answer token on the same held-out problems
(`loglik_mc` masks per answer, shared within a seed; 0 skips it).

Paired statistics (design.md, "Comparisons are statistics"): within a seed every configuration starts from
the same weights and data order, so the summary reports each configuration's paired difference from
`baseline` (a configuration label, default Standard) over seeds, with a 95% CI and an exact sign-flip p-value,
on `paired_metrics` (the first is the headline).
`control_batch_multipliers`: positive-control arms, the baseline configuration with k x its batch (e.g.
[1.6, 2]); a regime in which they are not separable from the baseline cannot show a smaller effect either.
`target_halfwidth`: add seeds in rounds (new seeds after the last) until every paired CI half-width on the
headline metric is below it, or `max_seeds` seeds have run; null runs `seeds` only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from mdm.platform.fields import choice


@dataclass
class CompareConfig:
    grid: Dict[str, Any] = field(default_factory=dict)
    lrs: List[float] = field(default_factory=list)
    seeds: List[int] = field(default_factory=lambda: [1, 2, 3])
    equalize: str = choice("forwards", ("forwards", "batch"))
    runner: str = choice("in_process", ("in_process", "ray_train"))
    cpus_per_trial: float = 1.0
    eval_split: str = "test"
    eval_limit: int = 200
    task_args: Dict[str, Any] = field(default_factory=dict)
    baseline: str = "Standard"
    paired_metrics: List[str] = field(default_factory=lambda: ["eval/loss_quad", "eval/loglik_per_token",
                                                                "eval/accuracy", "eval/loss"])
    control_batch_multipliers: List[float] = field(default_factory=list)
    batch_multiplier: float = 1.0            # per cell: set by the control arms, not by hand
    target_halfwidth: Optional[float] = None
    max_seeds: int = 20
    quad_points: int = 16
    loglik_mc: int = 16

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("compare.seeds must list at least one seed, e.g. [1, 2, 3]")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"compare.seeds has a repeated seed: {self.seeds}")
        if any(lr <= 0 for lr in self.lrs):
            raise ValueError(f"compare.lrs must be > 0, got {self.lrs}")
        if self.cpus_per_trial <= 0:
            raise ValueError(f"compare.cpus_per_trial must be > 0, got {self.cpus_per_trial}")
        if self.eval_limit < 1:
            raise ValueError(f"compare.eval_limit must be >= 1, got {self.eval_limit}")
        if any(k <= 0 or k == 1.0 for k in self.control_batch_multipliers):
            raise ValueError(f"compare.control_batch_multipliers must be > 0 and != 1, got "
                             f"{self.control_batch_multipliers}")
        if self.batch_multiplier <= 0:
            raise ValueError(f"compare.batch_multiplier must be > 0, got {self.batch_multiplier}")
        if self.target_halfwidth is not None and self.target_halfwidth <= 0:
            raise ValueError(f"compare.target_halfwidth must be > 0 or null, got {self.target_halfwidth}")
        if self.max_seeds < len(self.seeds):
            raise ValueError(f"compare.max_seeds ({self.max_seeds}) is below the {len(self.seeds)} compare.seeds")
        if self.quad_points < 1 or self.loglik_mc < 0:
            raise ValueError(f"compare.quad_points must be >= 1 and compare.loglik_mc >= 0, got "
                             f"{self.quad_points}, {self.loglik_mc}")
        if not self.paired_metrics:
            raise ValueError("compare.paired_metrics must name at least one metric, e.g. [eval/loss_quad]")
