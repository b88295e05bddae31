"""`eval` section: batch inference and scoring (read by `mdm.platform.batch_infer`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class EvalConfig:
    """`min_actors`/`max_actors`: the autoscaling sampler actor pool; `gpus_per_actor` 0 runs on CPU."""

    task: Optional[str] = None
    split: str = "test"
    limit: Optional[int] = None
    batch_size: int = 16
    min_actors: int = 1
    max_actors: int = 1
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0
    out: Optional[str] = None
