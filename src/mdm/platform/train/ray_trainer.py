"""The Ray Train TorchTrainer of one training run (`build_trainer`), as `train.driver` runs it.

    trainer = build_trainer(cfg, run, sft_workload(cfg, tokenizer), callbacks,
                            StopRequest(run_dir, cfg.ray.stop_grace_s, total))
    result = trainer.fit()

`ray.num_workers` workers (`ray.cpus_per_worker` / `ray.gpus_per_worker` each) run the workload's function
(workload.py: `worker.train_fn_per_worker` on the `train` and `eval` datasets, or `mdm rl`'s); checkpoints go
under the storage root, scored by eval/loss when the run evaluates; Ctrl-C is the graceful stop of `stop.py`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from mdm.platform.runs import storage_root
from mdm.platform.train.stop import GracefulTorchTrainer, StopRequest

if TYPE_CHECKING:
    from mdm.platform.config import RunConfig
    from mdm.platform.train.run_spec import RunInfo
    from mdm.platform.train.workload import Workload


def build_trainer(cfg: RunConfig, run: RunInfo, work: Workload, callbacks: Sequence[Any],
                  stop: StopRequest) -> GracefulTorchTrainer:
    """The TorchTrainer of a run: `ray.num_workers` workers running the workload's function (SFT:
    train_fn_per_worker on the `train` and `eval` datasets), checkpoints under the storage root scored by
    eval/loss when there is one."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig

    from mdm.platform.runtime.ray_runtime import TRAIN_LOG_LEVEL, is_local_cluster
    from mdm.platform.train.ingest import ingest_options
    from mdm.platform.train.local_pg import LocalTorchConfig
    from mdm.platform.train.progress import ProgressCallback
    from mdm.platform.train.run_spec import WorkerSections

    rcfg, tcfg = cfg.ray, cfg.train
    sections = WorkerSections(engine=cfg.engine, auto_import=list(cfg.auto_import), train=tcfg, model=cfg.model,
                              deepspeed=cfg.deepspeed, export=cfg.export)
    resources = {"CPU": rcfg.cpus_per_worker, **({"GPU": rcfg.gpus_per_worker} if rcfg.use_gpu else {})}
    datasets = work.datasets
    scored = run.has_eval and tcfg.eval_strategy != "no"
    return GracefulTorchTrainer(
        work.train_fn, stop=stop,
        train_loop_config={"sections": sections, "run": run, **work.loop_config},
        # On this machine's own Ray the process group meets through a file: torch's TCP store would listen
        # on every interface (local_pg.py). A cluster keeps Ray's default.
        torch_config=LocalTorchConfig() if is_local_cluster(rcfg) else None,
        scaling_config=ScalingConfig(num_workers=rcfg.num_workers, use_gpu=rcfg.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=run.run_name, storage_path=storage_root(cfg),
            checkpoint_config=CheckpointConfig(num_to_keep=rcfg.num_to_keep,
                                               checkpoint_score_attribute="eval/loss" if scored else None,
                                               checkpoint_score_order="min"),
            failure_config=FailureConfig(max_failures=rcfg.max_failures),
            logging_config=LoggingConfig(log_level=TRAIN_LOG_LEVEL),
            callbacks=[ProgressCallback(run.run_name), *callbacks]),
        datasets=datasets,
        # One worker reads each dataset whole: no split, so no coordinator actor per dataset (the same rows in
        # the same order: the ingest preserves order either way).
        dataset_config=DataConfig(datasets_to_split=[d for d in ("train", "eval") if d in datasets and
                                                     rcfg.num_workers > 1],
                                  execution_options=ingest_options(), enable_shard_locality=False))
