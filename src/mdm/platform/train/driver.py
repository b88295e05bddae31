"""`mdm train`: the Ray Train driver (TorchTrainer over `worker.train_fn_per_worker`).

    from mdm.platform.train.driver import train_driver
    result = train_driver(cfg)                         # ray.train.Result
    result.metrics["export_dir"]                       # <train.output_dir>/<run_name>/final (save_pretrained)

    mdm train --config experiments/gsm8k.yaml --set train.lr=1e-5   # = run(cfg)

Order of work, so that mistakes surface before any worker starts: precision and model checks, tracking store reachable, the
run's lease, tokenizer loaded (`model.trust_remote_code` passed), Ray started or joined (ray_runtime), worker
sizing leaves room for Ray Data, a GPU run's memory plan (one line; refused when it cannot fit unless `force`:
plan_check.py), data validated (ingest), MLflow run opened or resumed (tracking), then `TorchTrainer.fit()`
(Ctrl-C or SIGTERM there: interrupt.py). The run name is `run_name`, else derived from the config
(`mdm.platform.runs`: a hash of the keys that define the run, never a clock), so re-running the same command
resumes: Ray Train restores the latest checkpoint under `<ray.storage_path>/<run_name>` and MLflow logs into the
run of that name.

Re-runs are safe: the driver holds a lease on the run name (`lease.py`) from before Ray starts until it
returns, so a second live driver of the same run is refused at once, naming the first; a run that already
finished (its last report carries `export_dir` at the planned step) is not trained again: one line says so
and how to start afresh, the earlier `ray.train.Result` is returned and its MLflow run keeps its status.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from mdm.platform.config_ops import dump_config, with_overrides
from mdm.platform.runs import export_dir, run_name as derive_name, storage_root
from mdm.platform.train.workload import Workload, sft_workload

if TYPE_CHECKING:
    from ray.train import Result

    from mdm.platform.config import RunConfig
    from mdm.platform.tracking.tracker import Tracker

SEED_DATA_PATH = "./data/train/{task}.jsonl"  # the seed's default for an unset train.train_data_path


def train_data_path(cfg: RunConfig) -> str:
    """`train.train_data_path`, else the seed's `./data/train/<train.task>.jsonl`; ValueError saying how to
    make the file when the default does not exist (with `data.task_data_dir` when set)."""
    if cfg.train.train_data_path:
        return cfg.train.train_data_path
    if not cfg.train.task:
        raise ValueError("train.train_data_path is not set (nor train.task, which would default it to "
                         f"{SEED_DATA_PATH}): point it at processed JSONL (`mdm preprocess`)")
    path = SEED_DATA_PATH.format(task=cfg.train.task)
    if not os.path.exists(path):
        src = f" --data_dir {cfg.data.task_data_dir}" if cfg.data.task_data_dir else ""
        raise ValueError(f"train.train_data_path is not set, and its default {path} (from train.task) does not "
                         f"exist: make it with `mdm preprocess --task {cfg.train.task}{src} --tokenizer "
                         f"TOKENIZER --out {path}`, or set train.train_data_path")
    return path


def tokenizer_path(cfg: RunConfig) -> str:
    if cfg.data.tokenizer:
        return cfg.data.tokenizer
    if cfg.train.model != "tiny":
        return cfg.train.model
    raise ValueError("train.model: tiny has no saved tokenizer; set data.tokenizer to the tokenizer used by "
                     "preprocessing (a directory or hub id)")


def eval_note(n_eval: int, batch_size: int, workers: int) -> Optional[str]:
    """Why no worker would see an eval micro-batch (Ray Train splits the "eval" micro-batches equally over the
    workers, dropping the remainder), or None."""
    batches = -(-n_eval // max(batch_size, 1))
    if not n_eval or batches >= workers:
        return None
    return (f"the eval split's {n_eval} rows make {batches} micro-batch(es) of train.batch_size_per_gpu={batch_size}, "
            f"fewer than the {workers} workers: no eval loss (eval/loss is NaN); raise the eval split "
            "(train.train_ratio) or lower the micro-batch")


def previous_result(storage: str, run_name: str) -> Optional[Result]:
    """The `ray.train.Result` of the run's latest reported checkpoint in storage, or None (a new run)."""
    import logging

    import pyarrow.fs as pafs
    from ray.train import Result

    fs, root = pafs.FileSystem.from_uri(storage)
    run_dir = f"{root.rstrip('/')}/{run_name}"
    if fs.get_file_info(f"{run_dir}/checkpoint_manager_snapshot.json").type == pafs.FileType.NotFound:
        return None
    log = logging.getLogger("ray.train")
    level = log.level
    log.setLevel(logging.WARNING)  # Ray explains at INFO that a snapshot was found: we say it our way
    try:
        result = Result.from_path(f"{storage.rstrip('/')}/{run_name}")
    finally:
        log.setLevel(level)
    return result if result.checkpoint is not None else None


def _finished(previous: Optional[Result], total: int, save_strategy: str, run_name: str, run_dir: str) -> bool:
    """True when `previous` ended the run at `total` steps; ValueError when it ended earlier but cannot go on."""
    m = (previous.metrics or {}) if previous is not None else {}
    if "export_dir" not in m:
        return False  # an interrupted run: resume it
    afresh = f"to train afresh, set run_name to a new name or delete {run_dir}"
    if int(m.get("step", 0)) >= total:
        print(f"mdm train {run_name}: already finished at step {m.get('step')} (model: {m['export_dir']}); "
              f"nothing to train ({afresh})", file=sys.stderr)
        return True
    import pyarrow.fs as pafs

    ckpt = previous.checkpoint  # looked at in place: no download of a (possibly large) checkpoint
    if ckpt.filesystem.get_file_info(f"{ckpt.path}/worker_0.pt").type == pafs.FileType.NotFound:
        raise ValueError(f"run {run_name} finished at step {m.get('step')} with train.save_strategy: "
                         f"{save_strategy!r} and kept no training state to continue to step {total} from; {afresh}")
    return False


def _close_finished(tracker: Optional[Tracker], run_name: str, previous: Optional[Result]) -> Optional[Result]:
    """Return the finished run's result; its MLflow run keeps FINISHED (a RUNNING one is made FINISHED)."""
    if tracker is not None and (found := tracker.find_run(run_name)) is not None:
        # We hold the lease, so a RUNNING run of this name is a driver killed after it finished training.
        if tracker.client.get_run(found).info.status == "RUNNING":
            tracker.end_run(found, status="FINISHED")
    return previous


def train_driver(cfg: RunConfig, *, run_name: Optional[str] = None, callbacks: Sequence[Any] = (),
                 mlflow_tags: Optional[dict[str, str]] = None, display_name: Optional[str] = None,
                 lease: bool = True, force: bool = False,
                 workload: Callable[[RunConfig, Any], Workload] = sft_workload) -> Any:
    """Validate, then train with a TorchTrainer; returns the ray.train.Result (raises on failure).

    `mlflow_tags` go on the MLflow run (a sweep passes its parent and trial tags, and the context tags it
    resolved on its driver); `display_name` is the run's name in the MLflow UI (default: `run_name`).
    `lease`: hold the run's lease (see the module docstring); a Tune trial passes False, since Tune already
    runs each trial once at a time and a restarted trial must not wait for its dead predecessor's lease.
    `force`: train a GPU run whose memory plan does not fit (`mdm train --force`); else PlanError.
    `workload(cfg, tokenizer)`: what the run trains on and its per-worker function (workload.py): the processed
    JSONL by default, rollouts for `mdm rl` (mdm.platform.rl.driver)."""
    from mdm.platform.tracking.tracker import Tracker
    from mdm.platform.train.lease import RunLease
    from mdm.platform.train.plan_check import check_runnable

    check_runnable(cfg)  # precision, the engine's model check (a 4-bit base without GPUs): before any work
    # The seed's default data path (SFT only), before the name: the data path is part of it.
    if not cfg.train.train_data_path and workload is sft_workload:
        cfg = with_overrides(cfg, {"train.train_data_path": train_data_path(cfg)})
    run_name = run_name or derive_name(cfg)
    tracker = Tracker.open(cfg.tracking) if cfg.tracking.enabled else None  # unreachable -> TrackingError now
    held = RunLease.acquire(storage_root(cfg), run_name) if lease else None
    try:
        return _train(cfg, run_name, callbacks, mlflow_tags, display_name, tracker, force, workload)
    finally:
        if held is not None:
            held.release()


def _train(cfg: RunConfig, run_name: str, callbacks: Sequence[Any], mlflow_tags: Optional[dict[str, str]],
           display_name: Optional[str], tracker: Optional[Tracker], force: bool,
           workload: Callable[[RunConfig, Any], Workload]) -> Any:
    from mdm.platform.runtime.ray_runtime import check_worker_fit, ensure_ray, is_local_cluster
    from mdm.platform.train.ds_config import ds_config_notes
    from mdm.platform.train.interrupt import interruptible
    from mdm.platform.train.plan_check import check_plan
    from mdm.platform.runs import output_root, tracked_params
    from mdm.platform.tracking.spool import spool_path
    from mdm.platform.tracking.context import context_tags
    from mdm.platform.tracking.dataset import describe_dataset
    from mdm.platform.tracking.session import tracked_run
    from mdm.platform.train.ray_trainer import build_trainer
    from mdm.platform.train.run_spec import RunInfo
    from mdm.platform.train.stop import StopRequest
    from mdm.platform.tokenizer import load_tokenizer

    rcfg, tcfg = cfg.ray, cfg.train
    tok_path = tokenizer_path(cfg)  # before Ray: a missing or refused tokenizer starts nothing
    tokenizer = load_tokenizer(tok_path, cfg.model.trust_remote_code)
    run_dir = f"{storage_root(cfg).rstrip('/')}/{run_name}"
    previous = previous_result(storage_root(cfg), run_name)
    # With train.max_steps the plan is known now: a finished run is answered before Ray or the data pass.
    if tcfg.max_steps > 0 and _finished(previous, tcfg.max_steps, tcfg.save_strategy, run_name, run_dir):
        return _close_finished(tracker, run_name, previous)
    ensure_ray(rcfg)
    check_worker_fit(rcfg)
    planned = check_plan(cfg, vocab_size=len(tokenizer), force=force)  # GPU: a line, PlanError on no fit
    if tracker is not None and not is_local_cluster(rcfg):
        from mdm.platform.tracking.tracker import check_cluster_store
        from mdm.platform.runtime.ray_runtime import alive_nodes

        check_cluster_store(tracker.uri, alive_nodes())

    work = workload(cfg, tokenizer)
    total, per_epoch, epochs = work.total, work.per_epoch, work.epochs
    kept = (previous.metrics or {}).get("step") if previous is not None else None
    command = "rl" if cfg.rl.enabled else "train"
    print(f"mdm {command} {run_name}: {work.summary}; {total} steps ({per_epoch}/epoch) on {rcfg.num_workers} "
          f"worker(s)" + (f"; resuming from step {kept} ({previous.checkpoint.path})" if kept else ""), file=sys.stderr)
    short = eval_note(work.n_eval, tcfg.batch_size_per_gpu, rcfg.num_workers) if tcfg.eval_strategy != "no" else None
    for note in [*ds_config_notes(cfg.deepspeed, tcfg, rcfg.num_workers, total_steps=total, on_gpu=rcfg.use_gpu),
                 *([short] if short else [])]:
        print(f"mdm train: {note}", file=sys.stderr)

    if tcfg.max_steps <= 0 and _finished(previous, total, tcfg.save_strategy, run_name, run_dir):
        return _close_finished(tracker, run_name, previous)

    tags = dataset = None
    if tracker is not None:
        tags = {**({} if mlflow_tags and "mlflow.source.name" in mlflow_tags else context_tags()),
                **(mlflow_tags or {})}
        dataset = describe_dataset(tcfg.train_data_path, rows=work.n_rows) if work.n_rows is not None else None
    spool = spool_path(output_root(cfg), run_name) if tracker is not None and cfg.tracking.spool else None
    # The session ends the run FINISHED, or FAILED when fit raises (the run holding the latest attempt: rank 0
    # may have continued it in a fresh one); through the run's tracking spool, after what rank 0 left in it.
    params = {**tracked_params(cfg), **(planned.params() if planned is not None else {})}
    with tracked_run(tracker, run_name, params=params, config_yaml=dump_config(cfg), tags=tags,
                     display_name=display_name, dataset=dataset, spool_dir=spool,
                     flush_timeout_s=cfg.tracking.flush_timeout_s) as session:
        stop = StopRequest(run_dir, rcfg.stop_grace_s, total)  # Ctrl-C: stop at the next checkpoint (stop.py)
        run = RunInfo(run_name=run_name,
                      tokenizer=os.path.abspath(tok_path) if os.path.isdir(tok_path) else tok_path,
                      export_dir=export_dir(cfg, run_name), total_steps=total, steps_per_epoch=per_epoch,
                      epochs=epochs, has_eval=work.has_eval, tracking_uri=session.uri,
                      mlflow_run_id=session.run_id, system_metrics_s=cfg.tracking.system_metrics_interval_s,
                      model_config_yaml=dump_config(cfg) if cfg.tracking.log_model else None,
                      spool_dir=spool, flush_timeout_s=cfg.tracking.flush_timeout_s, run_dir=run_dir,
                      stop_marker=stop.marker)
        trainer = build_trainer(cfg, run, work, callbacks, stop)
        with interruptible(lambda: resume_line(storage_root(cfg), run_name, tracker is not None)):  # Ctrl-C, SIGTERM
            return trainer.fit()


def resume_line(storage: str, run_name: str, tracked: bool) -> str:
    """What an interrupted run says: its latest complete checkpoint, from which the same command resumes."""
    previous = previous_result(storage, run_name)
    step = (previous.metrics or {}).get("step") if previous is not None else None
    said = f"run {run_name} interrupted{'; its MLflow run is ended KILLED' if tracked else ''}"
    if step is None:
        return f"{said}; no checkpoint yet: the same command starts it again from step 0"
    return (f"{said}; the same command resumes it from its latest complete checkpoint, step {step} "
            f"({previous.checkpoint.path})")
