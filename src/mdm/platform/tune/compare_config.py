"""`compare` section: a comparison of training configurations over seeds (read by `mdm.platform.tune.compare`).

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
problems of the task's held-out split (the task is `eval.task`, else `train.task`, built with `task_args`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List

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
