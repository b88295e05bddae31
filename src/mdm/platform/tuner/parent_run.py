"""The MLflow parent run of a sweep or a comparison, and its one child run per trial.

    tracker = connect(cfg.tracking, cfg.ray)          # Ray started or joined; None when tracking is off
    parent = open_parent(tracker, "sweep-ab12cd34", space, params={"tune.metric": "eval/loss", ...})
    # each trial: its run is `child_run_name(sweep, trial_id)`, tagged `child_tags(parent, sweep, trial_id)`
    finish_parent(tracker, parent, rows, metric="eval/loss", mode="min", artifacts=[best_yaml])

`connect` opens the tracking store before anything starts (an unreachable server is an error now, naming
its address), starts or joins Ray, and on a cluster of several nodes refuses a file-backed store (trials log
from other nodes, onto a disk nobody reads). The parent's params are the search space (`space.<key>`) and
what the caller adds; it is found again by name on resume (tag `mdm.sweep`), never duplicated.

The children are created by the trials (`Tracker.start_run` resumes a run of the same name, so a retried or
resumed trial keeps its one run). A trial that the scheduler stops is killed mid-function (train_driver then
ends its run FAILED, or leaves it RUNNING when killed outright), and a killed driver leaves its trials' runs
open: `finish_parent` first gives every child its trial's final status (FINISHED; KILLED for stopped early or
interrupted; FAILED for errors), so no child is left RUNNING or mislabelled. Then it logs the trial counts,
the best trial's metric and the artifacts to the parent, and ends it FINISHED when at least one trial
finished, else FAILED (`parent_status`, the rule `mdm tune`'s exit code follows too).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional

from mlflow.entities import Metric, Param, RunTag

from mdm.platform.runtime.ray_config import RayConfig
from mdm.platform.tracking.tracker import MAX_PARAM_CHARS, Tracker
from mdm.platform.tracking.tracking_config import TrackingConfig
from mdm.platform.tuner.space import SweepSpace

if TYPE_CHECKING:
    from mlflow.entities import Run

SWEEP_TAG = "mdm.sweep"
ROLE_TAG = "mdm.role"
TRIAL_TAG = "mdm.trial_id"
STATUS_TAG = "mdm.trial_status"


def connect(tracking: TrackingConfig, ray: RayConfig) -> Optional[Tracker]:
    """Open the tracking store (None when tracking is off), start or join Ray, and check that every node
    can reach the store."""
    from mdm.platform.runtime.ray_runtime import alive_nodes, ensure_ray, is_local_cluster
    from mdm.platform.tracking.tracker import check_cluster_store

    tracker = Tracker.open(tracking) if tracking.enabled else None
    ensure_ray(ray)
    if tracker is not None and not is_local_cluster(ray):
        check_cluster_store(tracker.uri, alive_nodes())  # trials log from other nodes
    return tracker


def child_tags(parent_id: Optional[str], sweep_name: str, trial_id: str) -> dict[str, str]:
    tags = {SWEEP_TAG: sweep_name, ROLE_TAG: "trial", TRIAL_TAG: trial_id}
    if parent_id:
        tags["mlflow.parentRunId"] = parent_id
    return tags


def open_parent(tracker: Tracker, sweep_name: str, space: SweepSpace, params: Mapping[str, Any],
                tags: Optional[Mapping[str, str]] = None) -> str:
    """Create the sweep's parent run, or reopen it (same name) when the sweep resumes; returns its id.
    Its params: the search space as `space.<key>`, then `params`; `tags` (context tags, the description) are
    set either way."""
    params = {**{f"space.{k}": v for k, v in space.describe().items()}, **params}
    exp = tracker.experiment_id()
    found = tracker.client.search_runs([exp], filter_string=f"tags.`{SWEEP_TAG}` = '{sweep_name}' and "
                                                          f"tags.`{ROLE_TAG}` = 'parent'",
                                       order_by=["attributes.start_time ASC"], max_results=1)
    if found:
        run_id = found[0].info.run_id
        tracker.client.update_run(run_id, status="RUNNING")
        old = found[0].data.params
    else:
        run_id = tracker.client.create_run(exp, run_name=sweep_name,
                                           tags={SWEEP_TAG: sweep_name, ROLE_TAG: "parent"}).info.run_id
        old = {}
    if tags:
        tracker.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
    # MLflow refuses to change a param: log only the ones not logged before (the space is part of the name).
    items = [Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in sorted(params.items()) if k not in old]
    for i in range(0, len(items), 100):
        tracker.client.log_batch(run_id, params=items[i:i + 100])
    return run_id


def children(tracker: Tracker, parent_id: str) -> list[Run]:
    """The child runs of `parent_id` (mlflow.entities.Run), oldest first."""
    return tracker.client.search_runs([tracker.experiment_id()],
                                      filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'",
                                      order_by=["attributes.start_time ASC"], max_results=10_000)


def close_children(tracker: Tracker, parent_id: str, statuses: Mapping[str, str]) -> dict[str, str]:
    """Give each child its trial's final status (by trial id, the tag `mdm.trial_id`; KILLED when unknown: an
    interrupted trial), so none stays RUNNING, and tag it with that status. Returns {trial id: status}."""
    out: dict[str, str] = {}
    for run in children(tracker, parent_id):
        name = run.data.tags.get(TRIAL_TAG, run.info.run_name)
        status = statuses.get(name, "KILLED")
        if run.info.status != status:
            # The trial's outcome is the authority: a trial stopped by the scheduler sees its fit() interrupted,
            # and train_driver ends the run FAILED; a killed one leaves it RUNNING. Keep an existing end time.
            tracker.client.set_terminated(run.info.run_id, status=status,
                                          end_time=run.info.end_time if run.info.status != "RUNNING" else None)
        out[name] = status
        tracker.client.set_tag(run.info.run_id, STATUS_TAG, status)
    return out


def parent_status(statuses: Iterable[str]) -> str:
    """The parent's end status: FINISHED when at least one trial finished, else FAILED."""
    return "FINISHED" if any(s == "FINISHED" for s in statuses) else "FAILED"


def finish_parent(tracker: Tracker, parent_id: str, rows: list[dict[str, Any]], metric: str, mode: str,
                  artifacts: Iterable[str] = ()) -> None:
    """Close the children by the rows' statuses ({trial_id, status, metric} each), log the best `metric`
    (`mode` min|max), trial counts and artifacts (table, best config) to the parent; end it (`parent_status`)."""
    close_children(tracker, parent_id, {r["trial_id"]: r["status"] for r in rows})
    scored = [r for r in rows if r.get("metric") is not None]
    metrics = [Metric("sweep/trials", float(len(rows)), 0, 0),
               Metric("sweep/trials_finished", float(sum(r["status"] == "FINISHED" for r in rows)), 0, 0)]
    tags = []
    if scored:
        best = rank_rows(scored, mode)[0]
        metrics.append(Metric(f"best/{metric}", float(best["metric"]), 0, 0))
        tags.append(RunTag("mdm.best_trial", str(best["trial_id"])))
    tracker.client.log_batch(parent_id, metrics=metrics, tags=tags)
    for path in artifacts:
        tracker.client.log_artifact(parent_id, path)
    tracker.client.set_terminated(parent_id, status=parent_status(r["status"] for r in rows))


def rank_rows(rows: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    """Rows sorted best first by "metric" (mode min|max); rows without a metric (or NaN) last."""
    def key(r: dict[str, Any]) -> tuple[int, float]:
        v = r.get("metric")
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return (1, 0.0)
        return (0, float(v) if mode == "min" else -float(v))
    return sorted(rows, key=key)
