"""What a training run shows on the terminal: one bar on the driver (step, loss, tokens/s, ETA), fed by the
workers' `ray.train.report`s, and nothing else from Ray's INFO logs.

    TorchTrainer(..., run_config=RunConfig(callbacks=[ProgressCallback()]))
    quiet_ray_console()      # first thing in train_fn_per_worker

The callback runs in Ray Train's controller; `ray.experimental.tqdm_ray` draws its bar in the driver's
terminal (plain `tqdm` would only print into the controller's log). The ETA is tqdm's, from the step rate.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any, Optional


def quiet_ray_console(level: int = logging.WARNING) -> None:
    """In a Train worker: records from Ray's own code below `level` go to the worker's log file only.

    Ray Train logs one INFO line per report ("Reporting training result N: TrainingReport(...)") through a
    logger named after its file path, not `ray.train.*`, so the level set on the RunConfig's LoggingConfig
    never reaches it and every report prints on the driver's terminal. This applies that level to Ray's
    records on the worker's console handler only; its log files keep everything."""
    import ray

    ray_dir = os.path.dirname(ray.__file__) + os.sep

    def keep(record: logging.LogRecord) -> bool:
        return record.levelno >= level or not record.pathname.startswith(ray_dir)

    for handler in logging.getLogger().handlers:
        if handler.get_name() == "console":
            handler.addFilter(keep)

from ray.train.v2.api.callback import UserCallback

if TYPE_CHECKING:
    from ray.train import Checkpoint


def describe(metrics: dict[str, Any]) -> str:
    """The postfix shown beside the bar, e.g. 'loss 2.314 eval 2.401 tok/s 5.1k lr 1.0e-04 epoch 0'."""
    parts = []
    if "train/loss" in metrics:
        parts.append(f"loss {metrics['train/loss']:.4f}")
    if "eval/loss" in metrics:
        parts.append(f"eval {metrics['eval/loss']:.4f}")
    if "train/tokens_per_s" in metrics:
        parts.append(f"tok/s {metrics['train/tokens_per_s'] / 1000:.1f}k")
    if "train/lr" in metrics:
        parts.append(f"lr {metrics['train/lr']:.1e}")
    if "epoch" in metrics:
        parts.append(f"epoch {metrics['epoch']}")
    return " ".join(parts)


class ProgressCallback(UserCallback):
    """Advance a bar to each reported `step` (of `total_steps`) with the rank-0 metrics as its postfix."""

    def __init__(self, desc: str = "train") -> None:
        self.desc = desc
        self._bar: Optional[Any] = None
        self._step = 0

    def after_report(self, run_context: object, metrics: list[dict[str, Any]],
                     checkpoint: Optional[Checkpoint]) -> None:
        m = metrics[0] if metrics else {}
        if "step" not in m:
            return
        step = int(m["step"])
        if self._bar is not None and step < self._step:  # the group restarted from an earlier checkpoint
            self._bar.close()
            self._bar = None
        if self._bar is None:
            from ray.experimental.tqdm_ray import tqdm

            self._bar = tqdm(total=int(m.get("total_steps", 0)) or None, desc=self.desc, unit="step")
            self._step = 0
        self._bar.update(step - self._step)
        self._step = step
        self._bar.set_description(f"{self.desc} {describe(m)}")
        if m.get("export_dir"):
            self._bar.close()
            self._bar = None
