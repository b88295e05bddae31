"""`tune` section: Ray Tune sweeps (read by `mdm.platform.tune`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from mdm.platform.config import choice


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
