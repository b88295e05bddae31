"""Attempts of one training run in MLflow: a resumed attempt never leaves two points for one step.

    run_id = begin_attempt(client, run_id, kept_through=120)   # rank 0, after restoring the step-120 checkpoint
    run_id = begin_attempt(client, run_id, kept_through=None)  # rank 0, starting from scratch
    run_id = current_run(client, run_id)                       # the driver, to end the run that holds the attempt

An attempt killed after its last checkpoint (step S) logged points past S that the resumed attempt logs
again, and MLflow cannot delete a point. So when the run holds any point past S (any point at all when the
attempt starts from scratch), the attempt continues in a fresh MLflow run of the same name: it gets the old
run's params, tags, dataset inputs and artifacts and every point up to S (with their original timestamps), and the old run is
renamed `<name> (attempt N, superseded)`, ended KILLED, tagged `mdm.superseded_by` / `mdm.superseded_after_step`
and nested under the new run, so the UI shows one run per name, with one point per step, and the lost work
folded beneath it. When nothing was lost (killed right after a checkpoint) the attempt continues in the same
run. Either way the run's tag `mdm.attempt` counts the attempts (1 for a run never interrupted).
"""

from __future__ import annotations

import tempfile
from typing import TYPE_CHECKING, Any, Optional

from mlflow.entities import Metric, Param, RunTag

if TYPE_CHECKING:
    from mlflow import MlflowClient

ATTEMPT_TAG = "mdm.attempt"
SUPERSEDED_BY = "mdm.superseded_by"
SUPERSEDED_AFTER = "mdm.superseded_after_step"
RESUMED_FROM = "mdm.resumed_from_step"
MAX_METRICS_PER_BATCH = 1000  # MLflow's limit per log_batch call
_NOT_COPIED = ("mlflow.runName", SUPERSEDED_BY, SUPERSEDED_AFTER, RESUMED_FROM, ATTEMPT_TAG)


def current_run(client: MlflowClient, run_id: str) -> str:
    """Follow `mdm.superseded_by` from `run_id` to the run that holds the latest attempt."""
    seen = {run_id}
    while (nxt := client.get_run(run_id).data.tags.get(SUPERSEDED_BY)) and nxt not in seen:
        seen.add(nxt)
        run_id = nxt
    return run_id


def _history(client: MlflowClient, run_id: str, keys: list[str]) -> dict[str, list[Any]]:
    return {k: client.get_metric_history(run_id, k) for k in keys}


def begin_attempt(client: MlflowClient, run_id: str, kept_through: Optional[int]) -> str:
    """Start an attempt of the run `run_id` (or of its successor); returns the run id to log it into.

    `kept_through`: the step of the checkpoint this attempt restored (its points up to there stay), or None
    when it starts from scratch (no earlier point stays)."""
    run_id = current_run(client, run_id)
    run = client.get_run(run_id)
    attempt = int(run.data.tags.get(ATTEMPT_TAG, "0")) + 1
    history = _history(client, run_id, list(run.data.metrics))
    limit = -1 if kept_through is None else kept_through
    lost = any(m.step > limit for points in history.values() for m in points)
    if not lost:
        tags = [RunTag(ATTEMPT_TAG, str(attempt))]
        if kept_through is not None and attempt > 1:
            tags.append(RunTag(RESUMED_FROM, str(kept_through)))
        client.log_batch(run_id, tags=tags)
        return run_id

    name = run.info.run_name
    tags = {k: v for k, v in run.data.tags.items() if k not in _NOT_COPIED}
    tags.update({ATTEMPT_TAG: str(attempt), RESUMED_FROM: str(max(limit, 0))})
    new_id = client.create_run(run.info.experiment_id, run_name=name, tags=tags).info.run_id
    params = [Param(k, v) for k, v in sorted(run.data.params.items())]
    for i in range(0, len(params), 100):
        client.log_batch(new_id, params=params[i:i + 100])
    if inputs := run.inputs.dataset_inputs:  # "Datasets used" in the UI
        client.log_inputs(new_id, datasets=list(inputs))
    kept = [Metric(k, m.value, m.timestamp, m.step) for k, points in history.items() for m in points
            if m.step <= limit]
    for i in range(0, len(kept), MAX_METRICS_PER_BATCH):
        client.log_batch(new_id, metrics=kept[i:i + MAX_METRICS_PER_BATCH])
    if client.list_artifacts(run_id):
        with tempfile.TemporaryDirectory() as tmp:
            client.log_artifacts(new_id, client.download_artifacts(run_id, "", tmp))
    client.log_batch(run_id, tags=[RunTag(SUPERSEDED_BY, new_id), RunTag(SUPERSEDED_AFTER, str(max(limit, 0))),
                                   RunTag("mlflow.parentRunId", new_id)])
    client.update_run(run_id, name=f"{name} (attempt {attempt - 1}, superseded)")
    client.set_terminated(run_id, status="KILLED")
    return new_id
