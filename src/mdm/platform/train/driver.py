"""`mdm train`: the Ray Train driver (TorchTrainer over `worker.train_fn_per_worker`).

    from mdm.platform.train.driver import train_driver
    result = train_driver(cfg)                         # ray.train.Result
    result.metrics["export_dir"]                       # <train.output_dir>/<run_name>/final (save_pretrained)

    mdm train --config experiments/gsm8k.yaml --set train.lr=1e-5   # = run(cfg)

Order of work, so that mistakes surface before any worker starts: precision check, tracking store reachable,
Ray started or joined (ray_runtime), worker sizing leaves room for Ray Data, data validated (ingest), MLflow
run opened or resumed (tracking), then `TorchTrainer.fit()`. The run name is `run_name`, else derived from
the config (`mdm.platform.runs`: a hash of the keys that define the run, never a clock), so re-running the
same command resumes: Ray Train restores the latest checkpoint under
`<ray.storage_path>/<run_name>` and MLflow logs into the run of that name.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any, Optional, Sequence

from mdm.platform.config_ops import dump_config
from mdm.platform.runs import export_dir, run_name as derive_name, storage_root

def tokenizer_path(cfg: Any) -> str:
    if cfg.data.tokenizer:
        return cfg.data.tokenizer
    if cfg.train.model != "tiny":
        return cfg.train.model
    raise ValueError("train.model: tiny has no saved tokenizer; set data.tokenizer to the tokenizer used by "
                     "preprocessing (a directory or hub id)")


def plan_steps(n_train: int, train_cfg: Any, world: int) -> tuple[int, int, int]:
    """(total optimizer steps, steps per epoch, epochs to stream) for `n_train` rows on `world` workers.

    A worker gets at least floor(ceil(n_train / batch) / world) micro-batches an epoch (Ray Data may add a few
    partial ones); `train.max_steps` > 0 overrides `train.epochs`, iterating as many epochs as it needs."""
    per_epoch = math.ceil(n_train / train_cfg.batch_size_per_gpu)
    per_worker = per_epoch // world  # the equal split drops the remainder
    steps_per_epoch = per_worker // train_cfg.grad_accum
    if steps_per_epoch < 1:
        raise ValueError(f"{n_train} training rows make {per_epoch} micro-batches of train.batch_size_per_gpu="
                         f"{train_cfg.batch_size_per_gpu}, fewer than one step of train.grad_accum="
                         f"{train_cfg.grad_accum} on {world} workers")
    if train_cfg.max_steps > 0:
        return train_cfg.max_steps, steps_per_epoch, math.ceil(train_cfg.max_steps * train_cfg.grad_accum / per_worker)
    return train_cfg.epochs * per_worker // train_cfg.grad_accum, steps_per_epoch, train_cfg.epochs


def train_driver(cfg: Any, *, run_name: Optional[str] = None, callbacks: Sequence[Any] = (),
                 mlflow_tags: Optional[dict[str, str]] = None, display_name: Optional[str] = None) -> Any:
    """Validate, then train with a TorchTrainer; returns the ray.train.Result (raises on failure).

    `mlflow_tags` go on the MLflow run (a sweep passes its parent and trial tags, and the context tags it
    resolved on its driver); `display_name` is the run's name in the MLflow UI (default: `run_name`)."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from mdm.platform.train.updater import check_precision
    from mdm.platform.train.ingest import build_datasets, ingest_options
    from mdm.platform.train.progress import ProgressCallback
    from mdm.platform.runtime.ray_runtime import check_worker_fit, ensure_ray
    from mdm.platform.runs import tracked_params
    from mdm.platform.tracking.context import context_tags
    from mdm.platform.tracking.dataset import describe_dataset, log_dataset
    from mdm.platform.tracking.tracker import Tracker
    from mdm.platform.train.worker import RunInfo, WorkerSections, train_fn_per_worker
    from mdm.platform.tokenizer import load_tokenizer

    rcfg, tcfg = cfg.ray, cfg.train
    check_precision(cfg.deepspeed, on_gpu=rcfg.use_gpu)
    if not tcfg.train_data_path:
        raise ValueError("train.train_data_path is not set: point it at processed JSONL (`mdm preprocess`)")
    run_name = run_name or derive_name(cfg)
    tracker = Tracker.open(cfg.tracking) if cfg.tracking.enabled else None  # unreachable -> TrackingError now
    ensure_ray(rcfg)
    check_worker_fit(rcfg)

    tok_path = tokenizer_path(cfg)
    tokenizer = load_tokenizer(tok_path, cfg.model.trust_remote_code)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    data = build_datasets(cfg.data, train_path=tcfg.train_data_path, seed=tcfg.seed, train_ratio=tcfg.train_ratio,
                          max_len=tcfg.max_len, batch_size=tcfg.batch_size_per_gpu, pad_id=pad_id,
                          vocab_size=len(tokenizer))
    total, per_epoch, epochs = plan_steps(data.n_train, tcfg, rcfg.num_workers)
    datasets = data.datasets()
    print(f"mdm train {run_name}: {data.summary()}; {total} steps ({per_epoch}/epoch) on {rcfg.num_workers} "
          f"worker(s)", file=sys.stderr)

    run_id = None
    if tracker is not None:
        tags = {**({} if mlflow_tags and "mlflow.source.name" in mlflow_tags else context_tags()),
                **(mlflow_tags or {})}
        run_id = tracker.start_run(run_name, params=tracked_params(cfg), config_yaml=dump_config(cfg), tags=tags,
                                   display_name=display_name)
        log_dataset(tracker.client, run_id, describe_dataset(tcfg.train_data_path, rows=data.n_rows))
    has_eval = "eval" in datasets
    run = RunInfo(run_name=run_name, tokenizer=os.path.abspath(tok_path) if os.path.isdir(tok_path) else tok_path,
                  export_dir=export_dir(cfg, run_name),
                  total_steps=total, steps_per_epoch=per_epoch, epochs=epochs, has_eval=has_eval,
                  tracking_uri=tracker.uri if tracker else None, mlflow_run_id=run_id,
                  system_metrics_s=cfg.tracking.system_metrics_interval_s,
                  model_config_yaml=dump_config(cfg) if cfg.tracking.log_model else None)
    sections = WorkerSections(engine=cfg.engine, auto_import=list(cfg.auto_import), train=tcfg, model=cfg.model,
                              deepspeed=cfg.deepspeed)
    resources = {"CPU": rcfg.cpus_per_worker, **({"GPU": rcfg.gpus_per_worker} if rcfg.use_gpu else {})}
    scored = has_eval and tcfg.eval_strategy != "no"
    trainer = TorchTrainer(
        train_fn_per_worker,
        train_loop_config={"sections": sections, "run": run},
        scaling_config=ScalingConfig(num_workers=rcfg.num_workers, use_gpu=rcfg.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=run_name, storage_path=storage_root(cfg),
            checkpoint_config=CheckpointConfig(num_to_keep=rcfg.num_to_keep,
                                               checkpoint_score_attribute="eval/loss" if scored else None,
                                               checkpoint_score_order="min"),
            failure_config=FailureConfig(max_failures=rcfg.max_failures),
            callbacks=[ProgressCallback(run_name), *callbacks]),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=["train", "eval"] if has_eval else ["train"],
                                  execution_options=ingest_options(), enable_shard_locality=False))
    try:
        result = trainer.fit()
    except BaseException:
        if tracker is not None and run_id is not None:
            tracker.end_run(run_id, status="FAILED")
        raise
    if tracker is not None and run_id is not None:
        tracker.end_run(run_id, status="FINISHED")
    return result
