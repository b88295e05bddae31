"""Where an evaluation's results go: the predictions file (replaced whole, and said so) and its MLflow keys.

    announce_replace("preds.jsonl")       # one line when the file exists: what will be replaced
    write_jsonl("preds.jsonl", records)   # written beside it, then moved into place
    metric_prefix("gsm8k", "test", "fast")  # "infer/gsm8k/test/fast": metrics and artifacts of this evaluation
    log_evaluation(cfg, src, "gsm8k", "test", metrics, [files.out, files.metrics], prefix, records)  # MLflow
    files = OutputFiles.plan("s3://b/mdm/evals/preds.jsonl")   # or a local path; metrics file beside it
    write_jsonl(files.out, records); ...; files.publish()     # a URI: written locally, then uploaded

`--out` may be a storage URI (`s3://`, `gs://`): both files are written to a temporary local folder, uploaded
by `publish` once complete, and the folder removed.

Keys carry task, split and sampler, so a second evaluation of the same model (another split, another sampler)
lands beside the first in its MLflow run instead of overwriting it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional

from mdm.platform import storage

if TYPE_CHECKING:
    from mdm.platform.config import RunConfig
    from mdm.platform.infer.model_source import ModelSource


def metric_prefix(task: str, split: str, sampler: str, prompts: Optional[str] = None) -> str:
    """`infer/<task>/<split>/<sampler>`; the split is `prompts-<file stem>` for a `--prompts` file."""
    where = f"prompts-{Path(prompts).stem}" if prompts else split
    return f"infer/{task}/{where}/{sampler}"


def announce_replace(out: str) -> None:
    """Print one line naming `out` when it exists: how many predictions it holds and when it was written."""
    p = Path(out)
    if p.is_file():
        with p.open("rb") as f:
            n = sum(1 for _ in f)
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(p.stat().st_mtime))
        print(f"mdm infer: {out} exists ({n} predictions, written {when}); it will be replaced when this run "
              f"completes (pass another --out to keep it)", flush=True)


def write_jsonl(out: str, records: Iterable[dict[str, Any]]) -> None:
    """One JSON object per line into `out`, through a temporary file beside it (atomic on one filesystem)."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    partial = f"{out}.partial-{os.getpid()}"
    with open(partial, "w") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")
    os.replace(partial, out)


def metrics_path(out: str) -> str:
    """`<out without its extension>.metrics.json`, for a local path or a URI."""
    head, _, name = out.rpartition("/")
    stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    return f"{head}/{stem}.metrics.json" if head or out.startswith("/") else f"{stem}.metrics.json"


@dataclass
class OutputFiles:
    """An evaluation's predictions and metrics files: `out` / `metrics` are the local paths to write, and
    `remote_out` / `remote_metrics` the storage URIs they go to (None: the local path is the destination)."""

    out: str
    metrics: str
    remote_out: Optional[str] = None
    remote_metrics: Optional[str] = None
    staging: Optional[str] = None  # the temporary folder holding the local copies of URI destinations

    @classmethod
    def plan(cls, out: str, metrics_out: Optional[str] = None) -> "OutputFiles":
        metrics_out = metrics_out or metrics_path(out)
        if not (storage.is_uri(out) or storage.is_uri(metrics_out)):
            return cls(out, metrics_out)
        staging = tempfile.mkdtemp(prefix="mdm_infer_")

        def local(path: str) -> tuple[str, Optional[str]]:  # same file name: MLflow logs the local copy by it
            return (os.path.join(staging, path.rstrip("/").rsplit("/", 1)[-1]), path) if storage.is_uri(path) \
                else (path, None)

        (o, ro), (m, rm) = local(out), local(metrics_out)
        return cls(o, m, ro, rm, staging)

    @property
    def shown_out(self) -> str:
        """Where the predictions end up: the URI, or the absolute local path."""
        return self.remote_out or str(Path(self.out).resolve())

    @property
    def shown_metrics(self) -> str:
        return self.remote_metrics or str(Path(self.metrics).resolve())

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        Path(self.metrics).write_text(json.dumps(metrics, indent=2) + "\n")

    def publish(self) -> None:
        """Upload the files bound for storage, then remove the staging folder (nothing to do when local)."""
        for local, remote in ((self.out, self.remote_out), (self.metrics, self.remote_metrics)):
            if remote is not None:
                storage.upload(local, remote)
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)


def log_evaluation(cfg: RunConfig, src: ModelSource, task: str, split: str, metrics: dict, files: list[str],
                   prefix: str, records: Optional[list[dict]] = None) -> Optional[str]:
    """Log an evaluation's metrics under `prefix`, its `files` as artifacts and `records` as a table, into the
    training run the model came from (`src`: a ModelSource; its adapter's run when it has one), else into a new
    eval run; returns the run id."""
    from mdm.platform.config_ops import dump_config, flatten
    from mdm.platform.tracking.attempts import current_run
    from mdm.platform.tracking.predictions import log_predictions
    from mdm.platform.tracking.tracker import RunLogger, Tracker

    tracker = Tracker.open(cfg.tracking)
    trained = src.adapter or src  # what a training run wrote: the adapter, when there is one
    run_id = trained.run_id
    where = trained.spec.rstrip("/") if trained.kind == "uri" else trained.path
    if run_id is None and trained.kind in ("hf_dir", "run_dir", "uri") and where.rsplit("/", 1)[-1] == "final":
        run_id = tracker.find_run(where.rsplit("/", 2)[-2])  # the trainer's <output_dir>/<run_name>/final
    if run_id is not None:  # a resumed run may have moved on to a fresh MLflow run (tracking.attempts)
        run_id = current_run(tracker.client, run_id)
    new_run = run_id is None
    if new_run:
        adapter = {"adapter": src.adapter.spec} if src.adapter else {}
        digest = hashlib.sha1(f"{src.spec}|{task}|{split}{'|' + src.adapter.spec if src.adapter else ''}"
                              .encode()).hexdigest()[:8]
        name = cfg.eval.eval_run_name or f"eval-{task}-{split}-{digest}"
        params = {k: v for k, v in flatten(cfg).items() if k.split(".")[0] in ("eval", "sampler")}
        run_id = tracker.start_run(name, params={**params, "model": src.spec, **adapter},
                                   config_yaml=dump_config(cfg), tags={"mdm.kind": "eval"})
    log = RunLogger(tracker.uri, run_id)
    log.metrics({f"{prefix}/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}, step=0)
    for f in files:
        log.artifact(f, prefix)
    log_predictions(tracker.client, run_id, records or [], f"{prefix}/predictions_table.json")
    if new_run:
        tracker.end_run(run_id)
    return run_id
