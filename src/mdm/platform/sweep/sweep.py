"""`mdm tune`: hyperparameter sweeps with Ray Tune over the trainer, tracked as MLflow parent/child runs.

    mdm tune --config base.yaml [--config overlay.yaml] --sweep sweep.yaml [--set tune.scheduler=asha ...]

    from mdm.platform.sweep.sweep import run_sweep
    res = run_sweep(cfg, "sweep.yaml")        # or a dict {"train.lr": {"loguniform": [1e-5, 1e-3]}, ...}
    res.rows[0]                               # the best trial: trial_id, status, metric, step, params, run_name
    res.best_config_path                      # YAML for `mdm train --config`

The sweep file's format, its validation and the deduplication of conditional keys (p_model when PPOTS is off)
are described in `mdm.platform.tuner.space`. The shape is Ray Train V2's: each trial is a Tune function
(`_trial`) that calls `train.driver.train_driver` (`tuner.trial.train_job`), which builds and fits its own
TorchTrainer (its own worker group, ScalingConfig from `ray.*`); a `TuneReportCallback` forwards Train's
reports to Tune. The trial function holds `tune.cpus_per_trial` (a fraction: Tune rejects 0); the worker
groups' CPUs are accounted for by `max_concurrent_trials` (`tuner.tuner.TrialResources`). ASHA's time axis is
the reported `step`.

Names are deterministic (`mdm.platform.runs`): the sweep is `tune.name`, else `sweep-<hash of config and
sweep>`; its Tune experiment lives in `<ray.storage_path>/<sweep>`, each trial's Train run in
`<ray.storage_path>/<sweep>-<trial id>`, which is also its MLflow child run's identity (tag `mdm.run`); the
child is shown by its swept values (`runs.trial_label`, e.g. `MIRROR lr=3e-4`) with the trial id in the tag
`mdm.trial_id`. The parent's description holds the command line and the search space; MLflow's context tags
(user, source, git commit) are resolved here, on the driver, and given to every child. Tune's terminal table
shows the metric and the swept keys by name (`tuner.reporter`). Re-running the same command after the driver
was killed restores the experiment (`tuner.tuner.fit`): finished trials are kept, unfinished ones restart
(resuming their Train checkpoint and MLflow run). At the end (`sweep_results`) the driver closes child runs
left open, prints the trials sorted by `tune.metric`, writes the best trial's full config to
`<output root>/<sweep>/best_config.yaml` (`runs.output_root`: `train.output_dir`, or under an object-store
storage root) and prints the `mlflow ui` command.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

from mdm.platform.config_ops import flatten, with_overrides
from mdm.platform.fields import ConfigError
from mdm.platform.rl.driver import driver_for
from mdm.platform.runs import absolute_paths, child_run_name, storage_root, sweep_name, trial_label
from mdm.platform.sweep.sweep_results import report, sweep_rows
from mdm.platform.tuner.parent_run import child_tags, connect, open_parent, rank_rows
from mdm.platform.tuner.space import SweepSpace, load_sweep
from mdm.platform.tuner.trial import start_trial, train_job
from mdm.platform.tuner.tuner import Experiment, TrialNamer, TrialResources, experiment_path, fit

if TYPE_CHECKING:
    from ray.tune import Callback
    from ray.tune.schedulers import TrialScheduler
    from ray.tune.search import Searcher

    from mdm.platform.config import RunConfig


@dataclass
class SweepResult:
    """What a sweep produced. `rows` are best first: {trial_id, run_name, status, metric, step, params}."""

    name: str
    experiment_path: str
    rows: list[dict[str, Any]]
    best_config_path: Optional[str]
    parent_run_id: Optional[str]
    tracking_uri: Optional[str]
    restored: bool = False
    space: Optional[SweepSpace] = field(default=None, repr=False)


def sweep_label(base: RunConfig, space: SweepSpace, params: Mapping[str, Any]) -> str:
    """A trial's display name: its swept values (`runs.trial_label`)."""
    return trial_label(flatten(with_overrides(base, dict(params))), [d.key for d in space.dims])


def _trial(config: dict[str, Any], *, base: RunConfig, plugins: Sequence[str], space: SweepSpace, name: str,
           parent_id: Optional[str], context: Optional[dict[str, str]] = None) -> None:
    """One trial (runs in a Tune actor): the base config + this trial's overrides -> a Ray Train job."""
    trial_id = start_trial(plugins)
    run_name = child_run_name(name, trial_id)
    params = space.overrides_for(config)
    cfg = with_overrides(base, {**params, "run_name": run_name})
    tags = {**(context or {}), **child_tags(parent_id, name, trial_id)}
    train_job(cfg, run_name, tags, sweep_label(base, space, params), driver=driver_for(cfg))


def _scheduler(cfg: RunConfig) -> Optional[TrialScheduler]:
    if cfg.tune.scheduler == "fifo":
        return None
    from ray.tune.schedulers import ASHAScheduler

    max_t = cfg.train.max_steps if cfg.train.max_steps > 0 else 10 ** 9
    return ASHAScheduler(time_attr="step", grace_period=cfg.tune.grace_period,
                         reduction_factor=cfg.tune.reduction_factor, max_t=max_t)


def _searcher(cfg: RunConfig) -> Optional[Searcher]:
    if cfg.tune.searcher == "random":
        return None
    try:
        from ray.tune.search.optuna import OptunaSearch
        import optuna  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"tune.searcher: optuna needs the optional package optuna ({e}); "
                          "pip install optuna, or set tune.searcher: random") from None
    import optuna

    return OptunaSearch(sampler=optuna.samplers.TPESampler(seed=cfg.train.seed))


def run_sweep(cfg: RunConfig, sweep: str | Path | Mapping[str, Any], *,
              callbacks: Sequence[Callback] = ()) -> SweepResult:
    """Run (or resume) the sweep `sweep` over base config `cfg`; see the module docstring.

    `callbacks`: extra `ray.tune.Callback`s for a new sweep (a restored one keeps those it was started with)."""
    import ray

    from mdm.platform.tracking.context import DESCRIPTION_TAG, context_tags, describe_command
    from mdm.platform.tuner.reporter import trial_reporter

    space = load_sweep(sweep, cfg)  # every key and value checked before anything starts
    cfg = absolute_paths(cfg)
    name, tcfg, root = sweep_name(cfg, space), cfg.tune, storage_root(cfg)
    tracker = connect(cfg.tracking, cfg.ray)
    need = TrialResources.train_job(tcfg, cfg.ray, cfg.rl)
    concurrent = need.max_concurrent(ray.cluster_resources(), tcfg.max_concurrent_trials)
    too_big = need.too_big(ray.cluster_resources())
    if too_big:
        print(f"mdm tune: warning: {too_big}", file=sys.stderr)
    print(f"mdm tune {name}: {len(space.trials)} grid trial(s) (from {space.n_grid_raw} before dedup of ignored "
          f"keys) x {tcfg.num_samples} sample(s); {tcfg.scheduler}/{tcfg.searcher}; up to {concurrent} at once; "
          f"experiment {experiment_path(root, name)}", file=sys.stderr)

    parent_id = None
    context = context_tags()
    if tracker is not None:
        parent_id = open_parent(tracker, name, space, {
            **{k: v for k, v in flatten(cfg).items() if k.startswith("tune.")},
            "grid_trials": len(space.trials), "grid_before_dedup": space.n_grid_raw,
            "max_concurrent_trials": concurrent},
            tags={**context, DESCRIPTION_TAG: describe_command(f"mdm tune {name}", space.describe_yaml())})

    exp = Experiment(
        name, root, _trial, {"base": cfg, "plugins": tuple(cfg.auto_import), "space": space, "name": name,
                             "parent_id": parent_id, "context": context},
        space.param_space(tcfg.searcher), need, concurrent, tcfg.max_failures,
        TrialNamer(space, functools.partial(sweep_label, cfg, space)),
        trial_reporter(space, {tcfg.metric: tcfg.metric, "step": "step"}), callbacks,
        {"metric": tcfg.metric, "mode": tcfg.mode, "num_samples": tcfg.num_samples,
         "scheduler": _scheduler(cfg), "search_alg": _searcher(cfg)})
    results, restored = fit(exp, "mdm tune", "sweep")

    rows = rank_rows(sweep_rows(results, space, name, tcfg.metric, functools.partial(sweep_label, cfg, space)),
                     tcfg.mode)
    best_path = report(cfg, name, space, rows, tracker, parent_id)
    return SweepResult(name, exp.path, rows, best_path, parent_id, tracker.uri if tracker else None, restored,
                       space)
