"""Tune's live table in the terminal: the tune metric, accuracy and the swept keys by name, printed when a trial
starts or ends (and every `every_s` seconds, 5 minutes by default, otherwise), not every few seconds.

    reporter = trial_reporter(space, metrics={"eval/loss": "eval loss", "eval/accuracy": "accuracy"},
                              metric="eval/loss", mode="min")
    fit(Experiment(..., reporter=reporter), ...)   # tuner.py: with Tune's classic output, which honours it

Ray Tune's default output infers its columns from the first results (for a sweep: `step`, `epoch`,
`total_steps`, and the grid as one truncated dict), so the table is Tune's CLIReporter with explicit
`metric_columns` and `parameter_columns`. A sweep's trial config is `{"grid": {key: value}, "sample":
{key: value}}` (see space.py); a column is addressed as `grid/train.lr` and named by the key's last part.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Mapping, Optional

from mdm.platform.tuner.space import SweepSpace

if TYPE_CHECKING:
    from ray.tune import ProgressReporter


def parameter_columns(space: SweepSpace, keys: Optional[list[str]] = None) -> dict[str, str]:
    """{"grid/train.train_mode": "train_mode", "sample/train.lr": "lr", ...} for the swept keys."""
    keys = keys or [d.key for d in space.dims]
    where = {d.key: "sample" if d.dist != "grid" else "grid" for d in space.dims}
    tails = [k.rsplit(".", 1)[-1] for k in keys]
    return {f"{where.get(k, 'grid')}/{k}": (t if tails.count(t) == 1 else k) for k, t in zip(keys, tails)}


def trial_reporter(space: SweepSpace, metrics: Mapping[str, str], metric: Optional[str] = None,
                   mode: Optional[str] = None, every_s: float = 300.0,
                   keys: Optional[list[str]] = None) -> ProgressReporter:
    """A CLIReporter showing `metrics` ({result key: column name}) and the swept keys, sorted by `metric`
    (leave `metric`/`mode` None when the TuneConfig has them: Tune refuses both)."""
    from ray.tune import CLIReporter

    class _OnChange(CLIReporter):
        """Prints when the set of trial statuses changes, at the end, and every `every_s` seconds."""

        def __init__(self, **kw: Any) -> None:  # CLIReporter's keyword arguments, passed on as they are
            super().__init__(**kw)
            self._seen: tuple = ()
            self._printed = 0.0

        def should_report(self, trials: list, done: bool = False) -> bool:
            now = tuple(sorted((t.trial_id, t.status) for t in trials))
            if done or now != self._seen or time.time() - self._printed >= every_s:
                self._seen, self._printed = now, time.time()
                return True
            return False

    return _OnChange(metric_columns=dict(metrics), parameter_columns=parameter_columns(space, keys),
                     metric=metric, mode=mode, sort_by_metric=True, max_report_frequency=1,
                     print_intermediate_tables=True, max_column_length=24, max_progress_rows=64)
