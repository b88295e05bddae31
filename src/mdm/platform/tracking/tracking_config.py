"""`tracking` section: MLflow (read by `mdm.platform.tracking.tracker`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class TrackingConfig:
    """`tracking_uri`: None means the embedded store `sqlite:///mlruns.db` in the working directory (or
    MLFLOW_TRACKING_URI when set); any http(s):// tracking server works and is checked at start.
    `log_model`: also log the final export as an MLflow model (a pyfunc that samples: it shows under
    Models and can be registered; the weights are copied, so turn it off for multi-GB checkpoints).
    `system_metrics_interval_s`: MLflow's system metrics (CPU, memory, GPU with nvidia-ml-py) every this
    many seconds while training; 0 turns them off."""

    enabled: bool = True
    tracking_uri: Optional[str] = None
    experiment_name: str = "mdm"
    log_model: bool = True
    system_metrics_interval_s: float = 10.0
