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
    many seconds while training; 0 turns them off.
    `spool`: training logs into a durable local spool (`<train.output_dir>/<run>/tracking_spool`, spool.py)
    shipped in the background, so it never waits on the server; off: rank 0 logs to the server directly.
    `flush_timeout_s`: at the end of a run, how long to wait for the spool to reach the server before saying
    how to ship the rest later (`mdm tracking sync RUN_DIR`)."""

    enabled: bool = True
    tracking_uri: Optional[str] = None
    experiment_name: str = "mdm"
    log_model: bool = True
    system_metrics_interval_s: float = 10.0
    spool: bool = True
    flush_timeout_s: float = 60.0
