"""What the driver hands the Ray Train worker group (`train_loop_config`): the config sections a worker reads
and the run the driver planned.

Plain dataclasses in a module of their own, importing no torch, MLflow or model code: Ray Train's controller
unpickles the `train_loop_config` of every run, so what these classes import is imported by the controller
too (the worker module would add about a second of imports to every run's controller).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from mdm.platform.engine_api import BaseTrainConfig
from mdm.platform.train.deepspeed_config import DeepSpeedConfig
from mdm.platform.train.export_config import ExportConfig


@dataclass
class WorkerSections:
    """The config sections a worker reads (never the whole root config)."""

    engine: str
    auto_import: list[str]
    train: BaseTrainConfig
    model: Any                    # the engine's own `model` section dataclass (engine_api.EngineSpec.model_config)
    deepspeed: DeepSpeedConfig
    export: ExportConfig


@dataclass
class RunInfo:
    """What the driver decided: names, paths, and the step plan."""

    run_name: str
    tokenizer: str
    export_dir: str
    total_steps: int
    steps_per_epoch: int
    epochs: int
    has_eval: bool
    tracking_uri: Optional[str] = None
    mlflow_run_id: Optional[str] = None
    system_metrics_s: float = 0.0            # MLflow system-metrics sampling interval (0: off)
    model_config_yaml: Optional[str] = None  # set: log the export as an MLflow model with this config
    spool_dir: Optional[str] = None          # set: rank 0 logs through the durable tracking spool there
    flush_timeout_s: float = 60.0            # how long rank 0 waits at the end for the spool to be shipped
    run_dir: str = ""                        # the run's directory in the storage root (Ray Train's checkpoints)
    stop_marker: str = ""                    # the driver asks for a graceful stop by writing it (stop.py)
