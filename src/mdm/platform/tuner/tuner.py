"""One Tune experiment of a sweep or a comparison: restore-or-create, trial names, concurrency, the status rule.

    need = TrialResources.train_job(cfg.tune, cfg.ray)       # or TrialResources(cpus=1.0): trains in-process
    exp = Experiment(name, storage_root(cfg), my_trial, {"inputs": inputs}, space.param_space("random"),
                     need, need.max_concurrent(ray.cluster_resources(), cfg.tune.max_concurrent_trials),
                     cfg.tune.max_failures, TrialNamer(space, label), reporter)
    results, restored = fit(exp, "mdm tune", "sweep")
    outcomes = [trial_outcome(r, done_key="export_dir") for r in results]   # trial id, status, error, history

Restore-or-create: the experiment lives in `<storage root>/<name>`; when Tune can restore it there (a driver
was killed), it is restored with its unfinished and errored trials resumed (finished ones are kept, and the
trial function, its inputs and the search space are given again, since they are not stored); otherwise a new
Tuner is built. Re-running the same command therefore resumes: names are deterministic (`mdm.platform.runs`).

Trial names: each trial's directory is its trial id (`trial_dirname`), so a result names its trial even when
it never reported; its Tune name (the live table's first column) is its display label (`TrialNamer`).

Concurrency: a trial holds `TrialResources.cpus` for its Tune function, plus the Ray Train worker group it
starts, if any; as many run at once as the cluster's CPUs (less `reserve_cpus`, kept free for Ray Data's
read and map tasks) and GPUs hold, at least one, unless `tune.max_concurrent_trials` says.

The status rule (`trial_status`): FAILED when the trial raised; FINISHED when it reported its `done_key` (the
report only a complete trial makes); KILLED otherwise (stopped by the scheduler, or interrupted).

While the trials run, Tune's strict metric check is off (a trial's first reports may lack the tune metric:
eval/loss arrives at eval steps, accuracy at the end) and Tune's classic output is on, which honours the
progress reporter (`reporter.py`); both are restored afterwards.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Optional, Sequence

from mdm.platform.runtime.ray_config import RayConfig
from mdm.platform.tuner.space import SweepSpace
from mdm.platform.tuner.tune_config import TuneConfig

if TYPE_CHECKING:
    import pandas as pd
    from ray.tune import Callback, ProgressReporter, Result, ResultGrid
    from ray.tune.experiment import Trial

ERROR_CHARS = 300             # an error's first line, cut to this, in rows, tables and logs
TUNE_ENV = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1"}


@dataclass(frozen=True)
class TrialResources:
    """What one trial holds while it runs: `cpus` for its Tune function (its `with_resources` request), and the
    Ray Train worker group it starts (none for a trial that trains in its own process)."""

    cpus: float
    group_cpus: float = 0.0
    group_gpus: float = 0.0
    reserve_cpus: float = 0.0     # kept free for Ray Data's tasks, which the worker groups' ingest needs

    @classmethod
    def train_job(cls, tune: TuneConfig, ray: RayConfig, rl: Any = None) -> TrialResources:
        """A trial that runs a Ray Train job: `tune.cpus_per_trial` plus the `ray` section's worker group, and
        with `rl.enabled` (the `rl` section) its rollout actors."""
        actors = rl.rollout_actors if rl is not None and rl.enabled else 0
        gpus = ray.num_workers * ray.gpus_per_worker if ray.use_gpu else 0.0
        return cls(cpus=tune.cpus_per_trial,
                   group_cpus=ray.num_workers * ray.cpus_per_worker + (actors * rl.actor_cpus if actors else 0.0),
                   group_gpus=gpus + (actors * rl.actor_gpus if actors else 0.0),
                   reserve_cpus=tune.reserve_cpus)

    def too_big(self, cluster: Mapping[str, float]) -> Optional[str]:
        """Why no trial can start on `cluster` as it is now (an autoscaling one may still grow); None if one fits."""
        cpus = float(cluster.get("CPU", 0.0)) - self.reserve_cpus
        if self.cpus + self.group_cpus > cpus + 1e-9:
            return (f"one trial needs {self.cpus + self.group_cpus:g} CPUs (tune.cpus_per_trial {self.cpus:g} + its "
                    f"worker group and rollout actors {self.group_cpus:g}) and the cluster has {cpus:g} free of "
                    f"tune.reserve_cpus now: no trial starts until it grows; lower tune.cpus_per_trial, "
                    f"ray.cpus_per_worker or rl.actor_cpus to run on it as it is")
        if self.group_gpus > float(cluster.get("GPU", 0.0)) + 1e-9:
            return (f"one trial needs {self.group_gpus:g} GPUs and the cluster has {cluster.get('GPU', 0.0):g} now: "
                    f"no trial starts until it grows")
        return None

    def max_concurrent(self, cluster: Mapping[str, float], fixed: Optional[int] = None) -> int:
        """Trials that fit at once: (CPUs - reserve) / per-trial CPUs, capped by GPUs; at least 1. `fixed`
        (tune.max_concurrent_trials), when set, wins."""
        if fixed:
            return int(fixed)
        n = math.floor((float(cluster.get("CPU", 0.0)) - self.reserve_cpus) / (self.cpus + self.group_cpus)
                       + 1e-9)
        if self.group_gpus > 0:
            n = min(n, math.floor(float(cluster.get("GPU", 0.0)) / self.group_gpus + 1e-9))
        return max(1, n)


@dataclass(frozen=True)
class TrialNamer:
    """Tune's name of a trial: `label` of the overrides it runs (Tune pickles this: no lambdas inside)."""

    space: SweepSpace
    label: Callable[[dict[str, Any]], str]

    def __call__(self, trial: Trial) -> str:
        return self.label(self.space.overrides_for(trial.config or {}))


def trial_dirname(trial: Trial) -> str:
    """A trial's directory: its trial id, so a result names its trial even when it never reported."""
    return trial.trial_id


@dataclass
class Experiment:
    """One Tune experiment: the trial function and what it is given, the space, where it lives, how it runs.
    `options`: more `tune.TuneConfig` arguments (metric, mode, num_samples, scheduler, search_alg, reuse_actors)."""

    name: str
    storage_root: str
    trial: Callable[..., None]                 # trial(config, **inputs), run in a Tune actor
    inputs: dict[str, Any]                     # shipped to every trial through the object store
    param_space: dict[str, Any]
    resources: TrialResources
    concurrent: int
    max_failures: int
    namer: TrialNamer
    reporter: ProgressReporter
    callbacks: Sequence[Callback] = ()
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> str:
        """Where Tune keeps the experiment (and finds it again to restore it)."""
        return experiment_path(self.storage_root, self.name)


def experiment_path(storage_root: str, name: str) -> str:
    return f"{storage_root.rstrip('/')}/{name}"


def fit(exp: Experiment, prog: str, what: str) -> tuple[ResultGrid, bool]:
    """Restore the experiment when Tune can (printing `<prog> <name>: resuming the interrupted <what>`), else
    create it; run it to the end. Returns the results and whether it was restored."""
    from ray import tune

    trainable = tune.with_resources(tune.with_parameters(exp.trial, **exp.inputs), {"CPU": exp.resources.cpus})
    restored = tune.Tuner.can_restore(exp.path)
    if restored:
        print(f"{prog} {exp.name}: resuming the interrupted {what} in {exp.path}", file=sys.stderr)
        tuner = tune.Tuner.restore(exp.path, trainable=trainable, param_space=exp.param_space,
                                   resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable, param_space=exp.param_space,
            tune_config=tune.TuneConfig(max_concurrent_trials=exp.concurrent, trial_dirname_creator=trial_dirname,
                                        trial_name_creator=exp.namer, **exp.options),
            run_config=tune.RunConfig(name=exp.name, storage_path=exp.storage_root, verbose=1,
                                      callbacks=list(exp.callbacks), progress_reporter=exp.reporter,
                                      failure_config=tune.FailureConfig(max_failures=exp.max_failures)))
    with environ(TUNE_ENV):
        return tuner.fit(), restored


@contextlib.contextmanager
def environ(values: Mapping[str, str]) -> Iterator[None]:
    """The environment variables `values` set for the block, restored (or removed) afterwards."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass
class TrialOutcome:
    """How one trial ended: its id, status (`trial_status`), error text, reports (one row each) and config."""

    trial_id: str
    status: str
    error: Optional[str]
    history: Optional[pd.DataFrame]
    config: dict[str, Any]
    last: dict[str, Any] = field(default_factory=dict)   # the trial's last report (Tune's Result.metrics)


def trial_outcome(result: Result, done_key: str) -> TrialOutcome:
    """A Tune result as an outcome; `done_key` is the metric that only a complete trial's last report carries.

    Complete when the last report or any row of the history carries it: a trial that a resumed sweep ran again
    from the start can leave a history file without the later columns (measured: an empty result.json and a
    progress.csv whose header came from the killed attempt's first report), while its last report is whole."""
    history, last = result.metrics_dataframe, dict(result.metrics or {})
    done = done_key in last or (history is not None and done_key in history and bool(history[done_key].notna().any()))
    return TrialOutcome(Path(result.path).name, trial_status(result.error, done), error_text(result.error),
                        history, dict(result.config or {}), last)


def trial_status(error: Optional[BaseException], done: bool) -> str:
    """FAILED when the trial raised, FINISHED when it completed, KILLED otherwise (stopped or interrupted)."""
    return "FAILED" if error is not None else "FINISHED" if done else "KILLED"


def error_text(error: Optional[BaseException]) -> Optional[str]:
    """An error as one line for a table or a log: its first line, at most ERROR_CHARS characters."""
    if error is None:
        return None
    lines = str(error).splitlines()
    return (lines[0] if lines else type(error).__name__)[:ERROR_CHARS]


def last_value(history: Optional[pd.DataFrame], key: str) -> Optional[float]:
    """The last reported value of `key` in a trial's reports, or None when it never reported one."""
    if history is None or key not in history or not history[key].notna().any():
        return None
    return float(history[key].dropna().iloc[-1])
