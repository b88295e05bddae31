"""`tune` section: Ray Tune sweeps (`mdm.platform.sweep`; the search space itself is the sweep file); comparisons
(`mdm.platform.compare`) read `name`, `max_concurrent_trials`, `max_failures` and, with compare.runner ray_train,
`cpus_per_trial`, `reserve_cpus`, `metric` and `mode`.

`metric`/`mode`: what the sweep optimises and ranks by (any metric the trainer reports, `eval/loss` by default).
`scheduler`: fifo runs every trial to the end; asha stops trials whose metric is behind at a rung
(`grace_period` steps first, then every `reduction_factor`x more; the time axis is the reported `step`).
`searcher`: random (Tune's variant generator: the deduplicated grid x `num_samples` random draws) or optuna
(TPE; grid keys become categorical; needs the optional `optuna` package). `max_concurrent_trials`: None derives
it from the cluster: (CPUs - `reserve_cpus`) / (`cpus_per_trial` + ray.num_workers x ray.cpus_per_worker),
capped by GPUs when ray.use_gpu. `reserve_cpus` stays free for Ray Data's read/map tasks (1 CPU each by
default), which would otherwise starve and hang. `max_failures`: retries of a failed trial (same trial id, so
the same Train run and MLflow run are resumed). `name`: the sweep's name (Tune experiment directory under
ray.storage_path, MLflow parent run); None derives it from the config and the sweep file, so re-running the
same command resumes the same sweep.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from mdm.platform.fields import choice


@dataclass
class TuneConfig:
    metric: str = "eval/loss"
    mode: str = choice("min", ("min", "max"))
    num_samples: int = 1
    scheduler: str = choice("fifo", ("fifo", "asha"))
    grace_period: int = 1
    reduction_factor: int = 2
    searcher: str = choice("random", ("random", "optuna"))
    max_concurrent_trials: Optional[int] = None
    max_failures: int = 1
    cpus_per_trial: float = 0.1
    reserve_cpus: float = 1.0
    name: Optional[str] = None

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ValueError(f"tune.num_samples must be >= 1, got {self.num_samples}")
        if self.grace_period < 1:
            raise ValueError(f"tune.grace_period must be >= 1, got {self.grace_period}")
        if self.reduction_factor < 2:
            raise ValueError(f"tune.reduction_factor must be >= 2, got {self.reduction_factor}")
        if self.cpus_per_trial <= 0:  # Tune rejects {"CPU": 0}; a small fraction works
            raise ValueError(f"tune.cpus_per_trial must be > 0 (a small fraction like 0.1), got {self.cpus_per_trial}")
        if self.max_concurrent_trials is not None and self.max_concurrent_trials < 1:
            raise ValueError(f"tune.max_concurrent_trials must be >= 1 or null, got {self.max_concurrent_trials}")
        if self.reserve_cpus < 0:
            raise ValueError(f"tune.reserve_cpus must be >= 0, got {self.reserve_cpus}")
