"""`tracking` section: MLflow (read by `mdm.platform.tracking.tracker`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class TrackingConfig:
    """`tracking_uri`: None means the embedded store `sqlite:///mlruns.db` in the working directory (or
    MLFLOW_TRACKING_URI when set); any http(s):// tracking server works and is checked at start."""

    enabled: bool = True
    tracking_uri: Optional[str] = None
    experiment_name: str = "mdm"
