"""The per-worker training function of the Ray Train worker group (`train_fn_per_worker`).

Built by `mdm.platform.train.driver.train_driver`, which passes `{"sections": WorkerSections, "run": RunInfo}`
(`train.run_spec`) as the TorchTrainer's `train_loop_config`. Each worker imports the registries' plugins, builds the tokenizer, the model
(after `torch.manual_seed(train.seed)`: the same weights on every rank) and the objective through the engine
spec, and hands them to the one `trainer.Trainer` with its shards of the datasets (`sources.RayShards`) and a
`RayTrainReporter`: every logging step goes to Ray Train (metrics averaged over ranks; the `diag/` window is
rank 0's), with a checkpoint when `train.save_strategy` says so, and on rank 0 into the MLflow run the driver
opened (`tracking.session.attach_run`: the attempt begins after the restore, system metrics while training),
through the run's durable tracking spool (`tracking.spool`), so training never waits on the server.
The parameter counts (all, and those that train: with LoRA the adapters) are logged at step 0.
At the end rank 0 exports the model in Hugging Face format (with LoRA: PEFT's adapter directory, plus the
merged model with `export.merge_lora`) and logs it (with `tracking.log_model`, as an MLflow
model too), and every rank reports once more with a checkpoint, so `Result.metrics` carries the final metrics.
All ranks report at the same steps (`ray.train.report` is a barrier). After each checkpoint the workers look
whether the driver asked for a graceful stop (Ctrl-C: `stop.py`); if so they return there, without the export.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import TYPE_CHECKING, Callable, Optional, Union

import torch

from mdm.platform.adapter import is_adapter_model
from mdm.platform.storage import StorageError, tree_size, write_failure
from mdm.platform.tracking.session import TrackedRun, attach_run
from mdm.platform.train.checkpoint import cleanup
from mdm.platform.train.reporters import tracked
from mdm.platform.train.run_spec import RunInfo, WorkerSections
from mdm.platform.train.stop import stop_asked
from mdm.platform.train.sources import RayShards
from mdm.platform.train.trainer import Metrics, Objective, Trainer

if TYPE_CHECKING:
    from ray.train import Checkpoint
    from transformers import PreTrainedTokenizerBase


class RayTrainReporter:
    """The Trainer's reporter in a Ray Train worker: every logging step to Ray Train (with the checkpoint the
    Trainer writes when one is due) and, on rank 0, into the MLflow run (`run`; a no-op session elsewhere)."""

    keeps_checkpoints = True

    def __init__(self, run: TrackedRun, rank: int, export_dir: str, run_dir: str = "", world: int = 1,
                 stop_marker: str = "") -> None:
        self.run, self.rank, self.export_dir, self.run_dir = run, rank, export_dir, run_dir
        self.world, self.stop_marker = world, stop_marker
        self.saved: Optional[int] = None  # the step of the latest complete checkpoint
        self.stopping = False  # the driver asked for a graceful stop and a checkpoint was just saved

    def begin(self, kept_through: Optional[int]) -> None:
        self.saved = kept_through
        self.run.begin_attempt(kept_through)  # points an earlier attempt logged past the restored step must go

    def log(self, step: int, metrics: Metrics) -> None:
        self.run.metrics(metrics, step=step)

    def tags(self, tags: dict[str, str]) -> None:
        self.run.tags(tags)

    def report(self, metrics: Metrics, save: Optional[Callable[[], Checkpoint]], final: bool) -> None:
        self.run.metrics(tracked(metrics), step=int(metrics["step"]))
        if not final:  # the last step is reported by `finish`, after the export
            self.send(metrics, save() if save is not None else None)

    def finish(self, metrics: dict[str, Union[float, str]], save: Optional[Callable[[], Checkpoint]]) -> None:
        """The last report, always with a checkpoint so `Result.metrics` holds it: the Trainer's, or (`save`
        None: `train.save_strategy: "no"`) a marker naming the export (Ray keeps only metrics with one)."""
        self.send(metrics, save() if save is not None else self.marker())

    def marker(self) -> Checkpoint:
        import ray.train

        ckpt_dir = tempfile.mkdtemp(prefix="mdm_final_")
        with open(os.path.join(ckpt_dir, f"final_{self.rank}.txt"), "w") as f:
            f.write(self.export_dir)
        return ray.train.Checkpoint.from_directory(ckpt_dir)

    def send(self, metrics: dict[str, Union[float, str]], checkpoint: Optional[Checkpoint]) -> None:
        """`ray.train.report` (a barrier: every rank, same steps); the checkpoint's temp dir is removed after.
        After a checkpoint, `stopping` says whether the driver asked for a graceful stop (stop.py)."""
        import ray.train

        if checkpoint is None:
            ray.train.report(metrics)
            return
        try:
            ray.train.report(metrics, checkpoint=checkpoint)
        except OSError as e:  # the storage root is full or unreachable (after the S3 client's retries)
            raise StorageError(self.failed_save(int(metrics["step"]), e, tree_size(checkpoint.path))) from e
        finally:
            cleanup(checkpoint)
        self.saved = int(metrics["step"])
        self.stopping = stop_asked(self.stop_marker, self.rank, self.world)

    def failed_save(self, step: int, err: OSError, needed: int) -> str:
        """One line: where the checkpoint of `step` could not go, and where the same command resumes from."""
        latest = (f"the latest complete checkpoint, step {self.saved}, is intact" if self.saved is not None
                  else "there is no complete checkpoint yet")
        return (f"checkpoint of step {step} not saved: {write_failure(err, self.run_dir or 'storage', needed)}; "
                f"{latest}: the same command resumes from it once the storage takes writes again")


def train_fn_per_worker(config: dict[str, Union[WorkerSections, RunInfo]]) -> None:
    """One Ray Train worker's run (see the module docstring)."""
    import ray.train

    sec: WorkerSections = config["sections"]  # type: ignore[assignment]
    run: RunInfo = config["run"]  # type: ignore[assignment]
    rank, world, device = start_worker(sec)
    tokenizer, model, objective = build_parts(sec, run, device)
    session = attach_run(run.tracking_uri, run.mlflow_run_id if rank == 0 else None, run.spool_dir,
                         run.flush_timeout_s)
    reporter = RayTrainReporter(session, rank, run.export_dir, run.run_dir, world, run.stop_marker)
    source = RayShards(device, epochs=run.epochs, seed=sec.train.seed, has_eval=run.has_eval)
    trainer = Trainer(model, objective, train_cfg=sec.train, ds_cfg=sec.deepspeed, total_steps=run.total_steps,
                      steps_per_epoch=run.steps_per_epoch, source=source, reporter=reporter, device=device,
                      rank=rank, world=world)
    try:
        trainer.start(ray.train.get_checkpoint())
        with session.system_metrics(run.system_metrics_s):
            trainer.train()
        if not reporter.stopping:  # a graceful stop ends at the checkpoint just saved: no export
            finish_run(trainer, reporter, session, tokenizer, sec, run)
    finally:
        session.close()  # ship what the spool holds, within tracking.flush_timeout_s


def start_worker(sec: WorkerSections) -> tuple[int, int, torch.device]:
    """Quiet Ray's console, load the registries' plugins; this worker's (rank, world size, device)."""
    import ray.train
    import ray.train.torch

    from mdm.platform.registry import auto_import, load_builtins
    from mdm.platform.train.progress import quiet_ray_console

    quiet_ray_console()
    load_builtins()
    auto_import(sec.auto_import)
    ctx = ray.train.get_context()
    return ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device()


def build_parts(sec: WorkerSections, run: RunInfo, device: torch.device
           ) -> tuple[PreTrainedTokenizerBase, torch.nn.Module, Objective]:
    """The tokenizer, the model on `device` (the same initial weights on every rank) and the objective."""
    from mdm.platform.registry import get_registry
    from mdm.platform.tokenizer import load_tokenizer

    spec = get_registry("engines").get(sec.engine)
    tokenizer = load_tokenizer(run.tokenizer, sec.model.trust_remote_code)
    torch.manual_seed(sec.train.seed)
    model = spec.build_model(sec.model, sec.train.model, tokenizer).to(device)
    if sec.export.merge_lora and not is_adapter_model(model):  # said now, not after training
        raise ValueError("export.merge_lora: true, but the model has no adapters to merge (LoRA is off); "
                         "set export.merge_lora: false")
    return tokenizer, model, spec.build_objective(sec.train)


def finish_run(trainer: Trainer, reporter: RayTrainReporter, session: TrackedRun,
            tokenizer: PreTrainedTokenizerBase, sec: WorkerSections, run: RunInfo) -> None:
    """Export (collective under ZeRO-3), log it on rank 0, and make the final report.

    A URI export_dir (the storage root is an object store) is written on this node, then uploaded; the MLflow
    artifacts are logged from the local copy, which is then removed."""
    zero_stage = sec.deepspeed.zero_stage if sec.deepspeed.enabled else 0
    local_export = trainer.export(tokenizer, run.export_dir, zero_stage=zero_stage, merge_lora=sec.export.merge_lora)
    if session.enabled:
        with tempfile.TemporaryDirectory() as tmp:
            save_plot = getattr(trainer.objective, "save_plot", None)
            plot = save_plot(os.path.join(tmp, "ppots.png")) if save_plot is not None else None
            if plot:
                session.artifact(plot)
        session.log_export(local_export, run.model_config_yaml)
    if local_export != run.export_dir:
        shutil.rmtree(os.path.dirname(local_export), ignore_errors=True)
    st = trainer.state
    final: dict[str, Union[float, str]] = {"step": st.step, "epoch": st.epoch, "total_steps": run.total_steps,
                                           "optimizer_steps": trainer.updater.global_step,
                                           "export_dir": run.export_dir}
    if st.eval_loss is not None:
        final["eval/loss"] = st.eval_loss
    final.update({k: v for k, v in trainer.last.items() if k.startswith(("train/", "rl/"))})
    reporter.finish(final, trainer.save if sec.train.save_strategy != "no" else None)
