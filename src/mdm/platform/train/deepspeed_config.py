"""`deepspeed` section: how the model is wrapped by DeepSpeed in each worker.

`enabled: false` trains with plain torch DDP-free single-process steps per worker (useful as a baseline).
`config_path` points at a DeepSpeed JSON that replaces the generated one (the `train.*` batch, lr and
clipping keys are still filled in so the two never disagree). fp16 is GPU-only; on CPU use fp32 or bf16.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from mdm.platform.fields import choice


@dataclass
class DeepSpeedConfig:
    enabled: bool = True
    zero_stage: int = choice(0, (0, 1, 2, 3))
    precision: str = choice("fp32", ("fp32", "bf16", "fp16"))
    offload_optimizer: bool = False
    offload_params: bool = False
    optimizer: str = choice("adamw", ("adamw", "cpu_adam"))
    config_path: Optional[str] = None
