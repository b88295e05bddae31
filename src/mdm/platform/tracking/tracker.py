"""MLflow tracking for training runs: the driver opens (or resumes) the run, rank 0 logs into it.

    tracker = Tracker.open(cfg.tracking)                 # checks the server is reachable, else TrackingError
    run_id = tracker.start_run("gsm8k-ab12cd34", params=flatten(cfg), config_yaml=dump_config(cfg),
                               tags={"mlflow.parentRunId": parent})   # same name again -> same run
    tracker.start_run("sweep-1-ab_00001", ..., display_name="MIRROR lr=1e-3 seed=1")  # identity != display
    # in the rank-0 worker:
    log = RunLogger(tracker.uri, run_id); log.metrics({"train/loss": 1.2}, step=10); log.artifact(path)

The default store is `sqlite:///mlruns.db` in the driver's working directory, made absolute so Ray workers
(whose working directory differs) write to the same file; its artifacts go to `mlartifacts/` beside it.
An http(s) server is probed once at start so a wrong address fails the run before any training.
A run is found again by its identity, the tag `mdm.run` (runs written before that tag, by their name), so
its display name (`mlflow.runName`) can be what a person reads, e.g. a sweep trial's swept values.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

if TYPE_CHECKING:
    from mdm.platform.tracking.tracking_config import TrackingConfig

DEFAULT_URI = "sqlite:///mlruns.db"
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
BATCH = 100             # MLflow's limit on params per log_batch call
RUN_TAG = "mdm.run"     # a run's identity (the run name the platform derives), whatever its display name


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message names the address tried."""


def resolve_uri(uri: Optional[str]) -> str:
    """The tracking URI to use: config, else MLFLOW_TRACKING_URI, else the embedded sqlite store; relative
    sqlite/file paths become absolute (against the current directory)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    if "://" not in uri:
        return "file://" + str(Path(uri).resolve())
    return uri


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Raise TrackingError when an http(s) tracking server does not answer at `uri`."""
    if not uri.startswith(("http://", "https://")):
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 (user-given tracking URI)
            if resp.status >= 500:
                raise TrackingError(f"MLflow tracking server {uri} answered {resp.status} at {url}")
    except urllib.error.HTTPError as e:
        if e.code >= 500:
            raise TrackingError(f"MLflow tracking server {uri} answered {e.code} at {url}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise TrackingError(f"cannot reach the MLflow tracking server at {uri} ({reason}); start it, or set "
                            f"tracking.tracking_uri (default {DEFAULT_URI}), or tracking.enabled: false") from None


def check_cluster_store(uri: str, nodes: int) -> None:
    """Raise TrackingError when a file-backed store (sqlite, ./mlruns) would be written on a multi-node Ray:
    rank 0 opens it on whichever node it runs, so its metrics land on a disk nobody reads."""
    if nodes > 1 and uri.startswith(("sqlite:", "file:")):
        raise TrackingError(f"the MLflow store {uri} is a file on one machine, but Ray is a cluster of {nodes} "
                            f"nodes whose workers log from their own disks: start a tracking server on the head "
                            f"(`mdm tracking-server`) and set tracking.tracking_uri (or MLFLOW_TRACKING_URI) to "
                            f"its http://HOST:PORT address, or set tracking.enabled: false")


@dataclass
class Tracker:
    """The driver's handle on the tracking store."""

    uri: str
    experiment_name: str
    client: MlflowClient

    @classmethod
    def open(cls, tracking_cfg: TrackingConfig) -> "Tracker":
        uri = resolve_uri(tracking_cfg.tracking_uri)
        check_reachable(uri)
        return cls(uri, tracking_cfg.experiment_name, MlflowClient(tracking_uri=uri))

    def experiment_id(self) -> str:
        exp = self.client.get_experiment_by_name(self.experiment_name)
        if exp is not None:
            return exp.experiment_id
        location = None
        if self.uri.startswith("sqlite:///"):
            # Pin artifacts beside the store; the default (./mlruns) would follow each process's cwd.
            location = (Path(self.uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
        return self.client.create_experiment(self.experiment_name, artifact_location=location)

    def find_run(self, run_name: str) -> Optional[str]:
        """The id of the run `run_name` (tag `mdm.run`, else display name) in this experiment, if any (the
        oldest, if several)."""
        for key in (RUN_TAG, "mlflow.runName"):
            runs = self.client.search_runs([self.experiment_id()], filter_string=f"tags.`{key}` = '{run_name}'",
                                           order_by=["attributes.start_time ASC"], max_results=1)
            if runs:
                return runs[0].info.run_id
        return None

    def start_run(self, run_name: str, *, params: dict[str, Any], config_yaml: str,
                  tags: Optional[dict[str, str]] = None, display_name: Optional[str] = None) -> str:
        """Create the run `run_name` (shown as `display_name` when given), or resume it when it exists; log
        params, tags and the config YAML."""
        run_id = self.find_run(run_name)
        if run_id is None:
            tags = {**(tags or {}), RUN_TAG: run_name}
            run_id = self.client.create_run(self.experiment_id(), run_name=display_name or run_name,
                                            tags=tags).info.run_id
        else:
            self.client.update_run(run_id, status="RUNNING")
            if tags:
                self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        old = self.client.get_run(run_id).data.params
        # MLflow refuses to change a logged param; on resume log only the new ones (a changed value is kept
        # as it was first logged, and the current config is in the config artifact).
        items = [Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in sorted(params.items()) if k not in old]
        for i in range(0, len(items), BATCH):
            self.client.log_batch(run_id, params=items[i:i + BATCH])
        self.client.log_text(run_id, config_yaml, "config.yaml")
        return run_id

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)


class RunLogger:
    """Rank 0's writer into an existing run (built inside the worker from the uri and run id)."""

    def __init__(self, uri: str, run_id: str) -> None:
        self.client = MlflowClient(tracking_uri=uri)
        self.run_id = run_id

    def metrics(self, values: dict[str, float], step: int) -> None:
        import time

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step) for k, v in values.items() if v is not None]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def tags(self, values: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in values.items()])

    def artifact(self, path: str, artifact_path: Optional[str] = None) -> None:
        if os.path.isdir(path):
            self.client.log_artifacts(self.run_id, path, artifact_path)
        else:
            self.client.log_artifact(self.run_id, path, artifact_path)
