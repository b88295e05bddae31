"""One tracked run: the session that opens (or resumes) an MLflow run and fills it, wherever the work runs.

    tracker = Tracker.open(cfg.tracking) if cfg.tracking.enabled else None    # None: a session that drops all
    with tracked_run(tracker, "gsm8k-ab12cd34", params=tracked_params(cfg), config_yaml=dump_config(cfg),
                     tags=tags, display_name="MIRROR lr=1e-3", dataset=describe_dataset(path)) as run:
        ...                                      # FINISHED on leaving, KILLED on Ctrl-C, else FAILED (re-raised)
    run = attach_run(uri, run_id, spool_dir)     # the Ray Train rank-0 worker: the run its driver opened,
                                                 # logged through a durable spool (spool_logger.py); run.close()
    run = find_run(tracker, "gsm8k-ab12cd34")    # after the fact: the run holding the name's latest attempt
    run.begin_attempt(kept_through=120)          # a resumed attempt never leaves two points for one step
    with run.system_metrics(interval_s=10):      # MLflow's system/... metrics while the block runs
        run.metrics({"train/loss": 1.2}, step=10); run.tags({"mdm.init_digest": "3f2a..."})
    run.log_export("outputs/run/final", model_config_yaml=dump_config(cfg))   # files + an MLflow model
    run.log_predictions(records, "outputs/run/predictions_test.jsonl", "eval")  # JSONL artifact + table

`tracked_run` creates the run by its identity (`Tracker.start_run`: same name again -> same run), logs its
params, tags and config YAML and the dataset input, and ends it on leaving: the run that holds the latest
attempt (`attempts.current_run`: a Ray Train worker may have continued it in a fresh run). `attach_run` only
logs into a run someone else opened and ends. Every method of a session without a tracker (tracking
disabled, or a rank other than 0) does nothing, so callers need no `if tracking:`. What each piece logs is
documented where it lives: attempts.py, system_metrics.py, dataset.py, model_log.py, predictions.py.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

from mdm.platform.tracking.dataset import DatasetRecord, log_dataset
from mdm.platform.tracking.spool_logger import SpoolLogger
from mdm.platform.tracking.tracker import RunLogger, Tracker


class TrackedRun:
    """A handle on one MLflow run (`run_id`, `uri`); with no run (`TrackedRun()`) every method is a no-op."""

    def __init__(self, uri: Optional[str] = None, run_id: Optional[str] = None) -> None:
        self.uri, self.run_id = uri, run_id
        self.logger: Optional[RunLogger | SpoolLogger] = RunLogger(uri, run_id) if uri and run_id else None
        self.spool_dir: Optional[str] = None  # set: the run is ended through this spool (spool_logger.end_run)
        self.flush_timeout_s = 60.0

    def spooled(self, spool_dir: Optional[str], flush_timeout_s: float = 60.0) -> "TrackedRun":
        """Log through the durable spool at `spool_dir` (spool_logger.py; None: directly); returns self."""
        self.flush_timeout_s = flush_timeout_s
        if spool_dir and self.uri and self.run_id:
            self.logger = SpoolLogger(self.uri, self.run_id, spool_dir)
        return self

    def close(self) -> bool:
        """Ship what the spool holds (waiting at most `flush_timeout_s`); False: records are left (said once)."""
        return self.logger.close(self.flush_timeout_s) if isinstance(self.logger, SpoolLogger) else True

    @property
    def enabled(self) -> bool:
        return self.logger is not None

    def metrics(self, values: Mapping[str, float], step: int) -> None:
        if self.logger is not None:
            self.logger.metrics(dict(values), step=step)

    def tags(self, values: Mapping[str, str]) -> None:
        if self.logger is not None and values:
            self.logger.tags(dict(values))

    def artifact(self, path: str, artifact_path: Optional[str] = None) -> None:
        """A file or a directory's files, under `artifact_path` in the run's artifacts."""
        if self.logger is not None:
            self.logger.artifact(path, artifact_path)

    def begin_attempt(self, kept_through: Optional[int]) -> None:
        """Start an attempt after restoring the checkpoint of step `kept_through` (None: from scratch); the
        session follows the attempt into a fresh run when earlier points past that step must not stay."""
        if isinstance(self.logger, SpoolLogger):
            self.run_id = self.logger.begin_attempt(kept_through)
        elif self.logger is not None:
            from mdm.platform.tracking.attempts import begin_attempt

            self.run_id = self.logger.run_id = begin_attempt(self.logger.client, self.run_id, kept_through)

    @contextlib.contextmanager
    def system_metrics(self, interval_s: float) -> Iterator[None]:
        """Sample system metrics into the run while the block runs (`interval_s` <= 0: off)."""
        from mdm.platform.tracking.system_metrics import system_metrics

        with system_metrics(self.uri, self.run_id if self.enabled else None, interval_s):
            yield

    def log_export(self, local_dir: str, model_config_yaml: Optional[str] = None) -> None:
        """The exported model's files as `final_model`, and (with `model_config_yaml`, the run's config) as an
        MLflow model that samples (model_log.py)."""
        if self.logger is None:
            return
        self.artifact(local_dir, "final_model")
        if model_config_yaml is not None:
            from mdm.platform.tracking.model_log import log_sampler_model

            if isinstance(self.logger, SpoolLogger) and not self.logger.online:
                print(f"mdm: tracking is offline: the MLflow model of {local_dir} is not logged (its files are, "
                      f"as final_model, once the spool is shipped)", file=sys.stderr)
                return
            log_sampler_model(self.uri, self.run_id, local_dir, model_config_yaml)

    def log_predictions(self, records: Sequence[dict[str, Any]], path: str, artifact_dir: str = "eval") -> Path:
        """Write `records` as JSONL at `path` (also without a run), log it under `artifact_dir` and as the
        table `<artifact_dir>/<stem>.json` (predictions.py); returns the file."""
        out = Path(path)
        out.write_text("".join(json.dumps(r) + "\n" for r in records))
        if self.logger is not None:
            from mdm.platform.tracking.predictions import log_predictions

            self.artifact(str(out), artifact_dir)
            log_predictions(self.logger.client, self.run_id, records, f"{artifact_dir}/{out.stem}.json")
        return out

    def end(self, status: str = "FINISHED") -> None:
        """End the run that holds the latest attempt with `status` (FINISHED, FAILED, KILLED)."""
        if self.logger is not None and self.spool_dir and self.uri and self.run_id:
            from mdm.platform.tracking.spool_logger import end_run

            end_run(self.uri, self.run_id, self.spool_dir, status, self.flush_timeout_s)
        elif self.logger is not None:
            from mdm.platform.tracking.attempts import current_run

            self.logger.client.set_terminated(current_run(self.logger.client, self.run_id), status=status)


@contextlib.contextmanager
def tracked_run(tracker: Optional[Tracker], run_name: str, *, params: Mapping[str, Any], config_yaml: str,
                tags: Optional[dict[str, str]] = None, display_name: Optional[str] = None,
                dataset: Optional[DatasetRecord] = None, spool_dir: Optional[str] = None,
                flush_timeout_s: float = 60.0) -> Iterator[TrackedRun]:
    """Open or resume the run `run_name` and yield its session; end it when the block ends (see the module
    docstring). `tracker` None yields a session that logs nothing. `spool_dir`: the run's tracking spool, through
    which the end goes (after what rank 0 left in it), so a server down at the end does not fail the run."""
    if tracker is None:
        yield TrackedRun()
        return
    run_id = tracker.start_run(run_name, params=dict(params), config_yaml=config_yaml, tags=tags,
                               display_name=display_name)
    if dataset is not None:
        log_dataset(tracker.client, run_id, dataset)
    run = TrackedRun(tracker.uri, run_id)
    run.spool_dir, run.flush_timeout_s = spool_dir, flush_timeout_s
    try:
        yield run
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM (train.interrupt): stopped, not failed
        run.end("KILLED")
        raise
    except BaseException:
        run.end("FAILED")
        raise
    run.end("FINISHED")


def attach_run(uri: Optional[str], run_id: Optional[str], spool_dir: Optional[str] = None,
               flush_timeout_s: float = 60.0) -> TrackedRun:
    """A session on a run opened elsewhere (the driver's); it never ends the run. None of either: no-op.
    `spool_dir`: log through the durable spool there (`close()` ships what is left)."""
    return TrackedRun(uri, run_id).spooled(spool_dir, flush_timeout_s)


def find_run(tracker: Optional[Tracker], run_name: str) -> TrackedRun:
    """A session on the run `run_name` that holds its latest attempt (a no-op session when there is none)."""
    if tracker is None or (run_id := tracker.find_run(run_name)) is None:
        return TrackedRun()
    from mdm.platform.tracking.attempts import current_run

    return TrackedRun(tracker.uri, current_run(tracker.client, run_id))
