"""What every Tune trial of a sweep or a comparison does, whatever it trains.

    from mdm.platform.tuner.trial import report_callback
    train_driver(cfg, callbacks=[report_callback("eval/loss", "min")], ...)   # Train's reports reach Tune

`report_callback` forwards a Ray Train run's reports to the Tune trial that started it, with a non-finite
tune metric replaced by a very bad finite value (`WORST`): a diverged trial reports NaN, which ASHA's
comparisons (NaN < cutoff is False) would never stop. MLflow keeps the real value.
"""

from __future__ import annotations

import math
from typing import Any

WORST = 1e30                  # what Tune sees instead of a NaN/inf metric (MLflow keeps the real value)


def report_callback(metric: str, mode: str) -> Any:
    """A `ray.tune.integration.ray_train.TuneReportCallback` that replaces a non-finite `metric` by the worst
    finite value for `mode` (min|max)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class _Report(TuneReportCallback):
        def after_report(self, run_context: Any, metrics: list, checkpoint: Any) -> None:
            if metrics and metric in metrics[0]:
                v = metrics[0][metric]
                if isinstance(v, (int, float)) and not math.isfinite(v):
                    metrics = [{**metrics[0], metric: WORST if mode == "min" else -WORST}, *metrics[1:]]
            super().after_report(run_context, metrics, checkpoint)

    return _Report()
