"""What every Tune trial of a sweep or a comparison does, whatever it trains.

    def my_trial(config, *, base, plugins, ...):          # a Tune function trainable
        trial_id = start_trial(plugins)                  # registries filled, this trial's id
        ...
        train_job(cfg, run_name, tags, label)            # a cell trained as a Ray Train job, reports -> Tune

`start_trial`: the trial's config arrives pickled and names registered things (engines, tasks, p_models), so
the registries are filled first, as the driver's were when it loaded the config (the builtins and the
config's `auto_import` plugins).

`train_job`: runs the trial's config through `train_driver` (its own TorchTrainer and worker group), with
Train's reports forwarded to Tune by `report_callback`, which replaces a non-finite tune metric by a very bad
finite value (`WORST`): a diverged trial reports NaN, which ASHA's comparisons (NaN < cutoff is False) would
never stop; MLflow keeps the real value. The trial takes no run lease: Tune already runs a trial once at a
time, and a retried trial must not wait for its dead predecessor's lease.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

if TYPE_CHECKING:
    from ray.train import Checkpoint, Result
    from ray.tune.integration.ray_train import TuneReportCallback

    from mdm.platform.config import RunConfig

WORST = 1e30                  # what Tune sees instead of a NaN/inf metric (MLflow keeps the real value)


def start_trial(plugins: Sequence[str]) -> str:
    """Fill the registries (builtins, then `plugins`: the config's `auto_import`); returns the trial id."""
    from ray import tune

    from mdm.platform.registry import auto_import, load_builtins

    load_builtins()
    auto_import(list(plugins))
    return tune.get_context().get_trial_id()


def train_job(cfg: RunConfig, run_name: str, tags: dict[str, str], label: str,
              driver: Optional[Callable[..., Result]] = None) -> Result:
    """Train the trial's `cfg` (the root config) as a Ray Train job named `run_name`, shown as `label`, with
    the MLflow `tags` when tracking is on; its reports reach Tune, the metric `tune.metric` (`tune.mode`)
    kept finite. `driver`: `train_driver` (None) or another with its signature (`rl.driver.rl_driver`).
    Returns Train's result."""
    from mdm.platform.train.driver import train_driver

    return (driver or train_driver)(cfg, run_name=run_name, callbacks=[report_callback(cfg.tune.metric, cfg.tune.mode)],
                        mlflow_tags=tags if cfg.tracking.enabled else None, display_name=label, lease=False)


def report_callback(metric: str, mode: str) -> TuneReportCallback:
    """A `TuneReportCallback` that replaces a non-finite `metric` by the worst finite value for `mode`."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class _Report(TuneReportCallback):
        # run_context: Ray's TrainRunContext (a private Ray class, not imported here), passed on to Ray as it came.
        def after_report(self, run_context: Any, metrics: list, checkpoint: Optional[Checkpoint]) -> None:
            if metrics and metric in metrics[0]:
                v = metrics[0][metric]
                if isinstance(v, (int, float)) and not math.isfinite(v):
                    metrics = [{**metrics[0], metric: WORST if mode == "min" else -WORST}, *metrics[1:]]
            super().after_report(run_context, metrics, checkpoint)

    return _Report()
