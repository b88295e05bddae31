"""`mdm tune`: hyperparameter sweeps with Ray Tune over the trainer, tracked as MLflow parent/child runs.

    mdm tune --config base.yaml [--config overlay.yaml] --sweep sweep.yaml [--set tune.scheduler=asha ...]

    from mdm.platform.sweep.sweep import run_sweep
    res = run_sweep(cfg, "sweep.yaml")        # or a dict {"train.lr": {"loguniform": [1e-5, 1e-3]}, ...}
    res.rows[0]                               # the best trial: trial_id, status, metric, step, params, run_name
    res.best_config_path                      # YAML for `mdm train --config`

The sweep file's format, its validation and the deduplication of conditional keys (p_model when PPOTS is off)
are described in `mdm.platform.tuner.space`. The shape is Ray Train V2's: each trial is a Tune function
(`_trial`) that calls `train.driver.train_driver`, which builds and fits its own TorchTrainer (its own worker
group, ScalingConfig from `ray.*`); a `TuneReportCallback` forwards Train's reports to Tune. The trial
function holds `tune.cpus_per_trial` (a fraction: Tune rejects 0); the worker groups' CPUs are accounted for
by `max_concurrent_trials` (see `tune_config`). ASHA's time axis is the reported `step`.

Names are deterministic (`mdm.platform.runs`): the sweep is `tune.name`, else `sweep-<hash of config and sweep>`; its Tune
experiment lives in `<ray.storage_path>/<sweep>`, each trial's Train run in `<ray.storage_path>/<sweep>-<trial
id>`, which is also its MLflow child run's identity (tag `mdm.run`); the child is shown by its swept values
(`runs.trial_label`, e.g. `MIRROR lr=3e-4`) with the trial id in the tag `mdm.trial_id`. The parent's
description holds the command line and the search space; MLflow's context tags (user, source, git commit)
are resolved here, on the driver, and given to every child. Tune's terminal table shows the metric and the
swept keys by name (`reporter.py`). Re-running the same command after the driver was killed
restores the experiment (`Tuner.restore`): finished trials are kept, unfinished ones restart (resuming their
Train checkpoint and MLflow run). At the end the driver closes child runs left open (`tuner.parent_run`), prints
the trials sorted by `tune.metric`, writes the best trial's full config to
`<output root>/<sweep>/best_config.yaml` (`runs.output_root`: `train.output_dir`, or under an object-store
storage root) and prints the `mlflow ui` command.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from mdm.platform.config_ops import dump_config, flatten, with_overrides
from mdm.platform.fields import ConfigError
from mdm.platform import storage
from mdm.platform.runs import absolute_paths, child_run_name, output_root, storage_root, sweep_name, trial_label
from mdm.platform.tuner.space import SweepSpace, load_sweep
from mdm.platform.tuner.trial import report_callback
from mdm.platform.tuner.parent_run import (child_tags, close_children, finish_parent,
                                         format_table, open_parent, rank_rows)

COMPLETED_KEY = "export_dir"  # only the trainer's final report carries it: the trial ran to its last step


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


def max_concurrent(cfg: Any, cluster: Mapping[str, float]) -> int:
    """Trials that fit at once: (CPUs - reserve) / per-trial CPUs, capped by GPUs; at least 1."""
    if cfg.tune.max_concurrent_trials:
        return int(cfg.tune.max_concurrent_trials)
    per_trial = cfg.tune.cpus_per_trial + cfg.ray.num_workers * cfg.ray.cpus_per_worker
    n = math.floor((float(cluster.get("CPU", 0.0)) - cfg.tune.reserve_cpus) / per_trial + 1e-9)
    if cfg.ray.use_gpu:
        n = min(n, math.floor(float(cluster.get("GPU", 0.0)) / (cfg.ray.num_workers * cfg.ray.gpus_per_worker)
                              + 1e-9))
    return max(1, n)


def _label(base: Any, space: SweepSpace, params: Mapping[str, Any]) -> str:
    """The trial's display name: its swept values (`runs.trial_label`)."""
    return trial_label(flatten(with_overrides(base, dict(params))), [d.key for d in space.dims])


def _trial(config: dict[str, Any], *, base: Any, plugins: Sequence[str], space: SweepSpace, name: str,
           parent_id: Optional[str], context: Optional[dict[str, str]] = None) -> None:
    """One trial (runs in a Tune actor): the base config + this trial's overrides -> train_driver.

    `base` arrives pickled; the registries its names are checked against are filled first (the builtins and
    the config's `auto_import` plugins), as the driver's were when it loaded the config."""
    from ray import tune

    from mdm.platform.registry import auto_import, load_builtins
    from mdm.platform.train.driver import train_driver

    load_builtins()
    auto_import(list(plugins))
    trial_id = tune.get_context().get_trial_id()
    run_name = child_run_name(name, trial_id)
    params = space.overrides_for(config)
    cfg = with_overrides(base, {**params, "run_name": run_name})
    tags = {**(context or {}), **child_tags(parent_id, name, trial_id)}
    train_driver(cfg, run_name=run_name, callbacks=[report_callback(cfg.tune.metric, cfg.tune.mode)],
                 mlflow_tags=tags if cfg.tracking.enabled else None, display_name=_label(base, space, params),
                 lease=False)  # Tune runs a trial once at a time; a retried trial must not wait for a dead lease


def _trial_dirname(trial: Any) -> str:
    return trial.trial_id  # so a result's directory names its trial even when it never reported


def _trial_name(trial: Any, *, base: Any, space: SweepSpace) -> str:
    """Tune's name of a trial (its terminal table's first column): the run's display name."""
    return _label(base, space, space.overrides_for(trial.config or {}))


def _scheduler(cfg: Any) -> Any:
    if cfg.tune.scheduler == "fifo":
        return None
    from ray.tune.schedulers import ASHAScheduler

    max_t = cfg.train.max_steps if cfg.train.max_steps > 0 else 10 ** 9
    return ASHAScheduler(time_attr="step", grace_period=cfg.tune.grace_period,
                         reduction_factor=cfg.tune.reduction_factor, max_t=max_t)


def _searcher(cfg: Any) -> Any:
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


def _rows(results: Any, space: SweepSpace, name: str, metric: str, base: Any) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        trial_id = Path(r.path).name
        df = r.metrics_dataframe
        value = step = None
        completed = False
        if df is not None and len(df):
            if metric in df and df[metric].notna().any():
                value = float(df[metric].dropna().iloc[-1])
            if "step" in df and df["step"].notna().any():
                step = int(df["step"].dropna().iloc[-1])
            completed = COMPLETED_KEY in df and df[COMPLETED_KEY].notna().any()
        status = "FAILED" if r.error is not None else "FINISHED" if completed else "KILLED"
        params = space.overrides_for(r.config or {})
        rows.append({"trial_id": trial_id, "run_name": child_run_name(name, trial_id), "status": status,
                     "label": _label(base, space, params), "metric": value, "step": step, "params": params,
                     "error": None if r.error is None else str(r.error).splitlines()[0][:300]})
    return rows


def run_sweep(cfg: Any, sweep: str | Path | Mapping[str, Any], *, callbacks: Sequence[Any] = ()) -> SweepResult:
    """Run (or resume) the sweep `sweep` over base config `cfg`; see the module docstring.

    `callbacks`: extra `ray.tune.Callback`s for a new sweep (a restored one keeps those it was started with)."""
    import ray
    from ray import tune

    from mdm.platform.runtime.ray_runtime import alive_nodes, ensure_ray, is_local_cluster
    from mdm.platform.tracking.context import DESCRIPTION_TAG, context_tags, describe_command
    from mdm.platform.tracking.tracker import Tracker, check_cluster_store
    from mdm.platform.tuner.reporter import legacy_output, trial_reporter

    space = load_sweep(sweep, cfg)  # every key and value checked before anything starts
    cfg = absolute_paths(cfg)
    name = sweep_name(cfg, space)
    tcfg = cfg.tune
    tracker = Tracker.open(cfg.tracking) if cfg.tracking.enabled else None
    ensure_ray(cfg.ray)
    if tracker is not None and not is_local_cluster(cfg.ray):
        check_cluster_store(tracker.uri, alive_nodes())  # trials log from other nodes
    concurrent = max_concurrent(cfg, ray.cluster_resources())
    root = storage_root(cfg)
    exp_path = f"{root.rstrip('/')}/{name}"
    print(f"mdm tune {name}: {len(space.trials)} grid trial(s) (from {space.n_grid_raw} before dedup of ignored "
          f"keys) x {tcfg.num_samples} sample(s); {tcfg.scheduler}/{tcfg.searcher}; up to {concurrent} at once; "
          f"experiment {exp_path}", file=sys.stderr)

    parent_id = None
    context = context_tags()
    if tracker is not None:
        space_yaml = "\n".join(f"{k}: {v}" for k, v in space.describe().items())
        parent_id = open_parent(tracker, name, {
            **{f"space.{k}": v for k, v in space.describe().items()},
            **{k: v for k, v in flatten(cfg).items() if k.startswith("tune.")},
            "grid_trials": len(space.trials), "grid_before_dedup": space.n_grid_raw,
            "max_concurrent_trials": concurrent},
            tags={**context, DESCRIPTION_TAG: describe_command(f"mdm tune {name}", space_yaml)})

    # Trials report eval/loss only at eval steps; Tune's strict check would fail their first train-only report.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    trainable = tune.with_resources(
        tune.with_parameters(_trial, base=cfg, plugins=tuple(cfg.auto_import), space=space, name=name,
                             parent_id=parent_id, context=context),
        {"CPU": tcfg.cpus_per_trial})
    param_space = space.param_space(tcfg.searcher)
    restored = tune.Tuner.can_restore(exp_path)
    if restored:
        print(f"mdm tune {name}: resuming the interrupted sweep in {exp_path}", file=sys.stderr)
        tuner = tune.Tuner.restore(exp_path, trainable=trainable, param_space=param_space,
                                   resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable, param_space=param_space,
            tune_config=tune.TuneConfig(metric=tcfg.metric, mode=tcfg.mode, num_samples=tcfg.num_samples,
                                        max_concurrent_trials=concurrent, scheduler=_scheduler(cfg),
                                        search_alg=_searcher(cfg), trial_dirname_creator=_trial_dirname,
                                        trial_name_creator=functools.partial(_trial_name, base=cfg, space=space)),
            run_config=tune.RunConfig(name=name, storage_path=root, verbose=1, callbacks=list(callbacks),
                                      failure_config=tune.FailureConfig(max_failures=tcfg.max_failures),
                                      progress_reporter=trial_reporter(space, {tcfg.metric: tcfg.metric,
                                                                               "step": "step"})))
    with legacy_output():
        results = tuner.fit()

    rows = rank_rows(_rows(results, space, name, tcfg.metric, cfg), tcfg.mode)
    best_path = _report(cfg, name, space, rows, tracker, parent_id)
    return SweepResult(name, exp_path, rows, best_path, parent_id, tracker.uri if tracker else None, restored, space)


def _report(cfg: Any, name: str, space: Any, rows: list[dict[str, Any]], tracker: Any,
            parent_id: Optional[str]) -> Optional[str]:
    """After the trials: close the children, write the best config and the table under <output root>/<sweep>
    (uploaded when that is an object store), print them, finish the parent run. Returns the best config's
    path (a URI when uploaded), or None when no trial reported the metric."""
    from mdm.platform.tracking.context import run_link

    tcfg = cfg.tune
    if tracker is not None and parent_id is not None:
        close_children(tracker, parent_id, {r["trial_id"]: r["status"] for r in rows})
    best_path = None
    # The sweep's files: in <output root>/<sweep>; with an object-store root written here, then uploaded.
    remote = storage.join(output_root(cfg), name) if storage.is_uri(output_root(cfg)) else None
    out = Path(tempfile.mkdtemp(prefix="mdm_sweep_")) / name if remote else Path(output_root(cfg)) / name
    out.mkdir(parents=True, exist_ok=True)
    best = next((r for r in rows if r["metric"] is not None), None)
    if best is not None:
        best_cfg = with_overrides(cfg, {**best["params"], "run_name": None})
        best_path = str(out / "best_config.yaml")
        Path(best_path).write_text(dump_config(best_cfg))
    keys = [d.key for d in space.dims]
    print(f"\nmdm tune {name}: {len(rows)} trial(s), sorted by {tcfg.metric} ({tcfg.mode})")
    print(format_table(rows, tcfg.metric, keys))
    if best is None:
        print(f"mdm tune {name}: no trial reported {tcfg.metric}; check tune.metric against the trainer's "
              f"metrics (eval/loss needs eval data and train.eval_strategy other than 'no')", file=sys.stderr)
    else:
        shown = storage.join(remote, "best_config.yaml") if remote else best_path
        print(f"best: {best['trial_id']} ({tcfg.metric} {best['metric']:.5g}); config: {shown}\n"
              f"  train it: mdm train --config {shown if not remote else 'best_config.yaml (download it first)'}")
    if tracker is not None and parent_id is not None:
        table = out / "trials.txt"
        table.write_text(format_table(rows, tcfg.metric, keys) + "\n")
        finish_parent(tracker, parent_id, rows, tcfg.metric, tcfg.mode,
                      artifacts=[p for p in (best_path, str(table)) if p],
                      status="FINISHED" if any(r["status"] != "FAILED" for r in rows) else "FAILED")
        print(f"compare runs: {run_link(tracker.uri, tracker.experiment_id(), parent_id)}")
    if remote is not None:
        storage.upload(str(out), remote)
        best_path = best_path and storage.join(remote, "best_config.yaml")
    return best_path
