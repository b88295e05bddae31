"""The per-worker training function of the Ray Train worker group (`train_fn_per_worker`).

Built by `mdm.platform.train.driver.train_driver`, which passes `{"sections": WorkerSections, "run": RunInfo}` as the
TorchTrainer's `train_loop_config`. Each worker: imports the registries' plugins, builds the model through the
engine spec, wraps it in an updater (DeepSpeed or plain torch: `updater.py`), restores the latest checkpoint or runs the objective's `prepare` (P-POTS),
then streams its shard of ready micro-batches and steps until `run.total_steps`. Every `train.logging_steps`
it reports metrics (averaged over ranks; the `diag/` window of step_window.py is rank 0's) to Ray Train and,
on rank 0, to MLflow (with MLflow's system metrics while it trains); evals and checkpoints follow
`train.eval_strategy` / `train.save_strategy`; at the end rank 0 exports the model in Hugging Face format
(and, with `tracking.log_model`, logs it as an MLflow model).
All ranks report at the same steps (`ray.train.report` is a barrier).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
import torch.distributed as dist

from mdm.platform.train.checkpoint import TrainState, cleanup, export_hf, restore_checkpoint, save_checkpoint
from mdm.platform.train.digests import DATA_TAG, INIT_TAG, batch_digest, weights_digest


@dataclass
class WorkerSections:
    """The config sections a worker reads (never the whole root config)."""

    engine: str
    auto_import: list
    train: Any
    model: Any
    deepspeed: Any


@dataclass
class RunInfo:
    """What the driver decided: names, paths, and the step plan."""

    run_name: str
    tokenizer: str
    export_dir: str
    total_steps: int
    steps_per_epoch: int
    epochs: int
    has_eval: bool
    tracking_uri: Optional[str] = None
    mlflow_run_id: Optional[str] = None
    system_metrics_s: float = 0.0            # MLflow system-metrics sampling interval (0: off)
    model_config_yaml: Optional[str] = None  # set: log the export as an MLflow model with this config


class _Shard:
    """Lazy iterable of micro-batches (dicts of tensors on `device`) over one dataset shard."""

    def __init__(self, name: str, device: torch.device, prefetch: int = 4) -> None:
        import ray.train

        self.it, self.device, self.prefetch = ray.train.get_dataset_shard(name), device, prefetch

    def _to_device(self, batches: Any) -> Iterator[dict[str, torch.Tensor]]:
        for mb in batches:
            yield {k: v.to(self.device, non_blocking=True) for k, v in mb.items()}

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        from mdm.platform.train.ingest import shard_batches

        return self._to_device(shard_batches(self.it, self.prefetch))

    def epochs(self, start_epoch: int, skip: int, epochs: int, seed: int) -> Iterator[tuple[int, dict]]:
        """(epoch, micro-batch) from `start_epoch` on, skipping the first `skip` micro-batches of it."""
        from mdm.platform.train.ingest import epoch_batches

        for epoch in range(start_epoch, epochs):
            for i, mb in enumerate(self._to_device(epoch_batches(self.it, epoch, seed, self.prefetch))):
                if epoch > start_epoch or i >= skip:
                    yield epoch, mb


def due(strategy: str, step: int, every: int, steps_per_epoch: int) -> bool:
    """Whether an eval/save with `strategy` ("steps": every `every` steps, "epoch": at each epoch's end,
    "no": never) falls on optimizer step `step` (shared with the in-process trainer, inprocess.py)."""
    if strategy == "steps":
        return step % every == 0
    if strategy == "epoch":
        return step % max(1, steps_per_epoch) == 0
    return False


def _mean_over_ranks(values: list[float], world: int) -> list[float]:
    if world == 1 or not dist.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return (t / world).tolist()


def _evaluate(objective: Any, model: torch.nn.Module, device: torch.device, seed: int, rank: int,
              world: int) -> float:
    """Mean eval loss over this rank's eval shard, averaged over ranks (fixed noise: comparable evals)."""
    gen = torch.Generator(device=device).manual_seed(seed + 7 + 1_000_003 * rank)
    total, n = 0.0, 0
    model.eval()
    with torch.no_grad():
        for mb in _Shard("eval", device):
            mb.pop("n_tokens")
            total += float(objective.eval_loss(model, mb, gen)[0])
            n += 1
    model.train()
    if world > 1 and dist.is_initialized():
        t = torch.tensor([total, n], dtype=torch.float64)
        dist.all_reduce(t)
        total, n = float(t[0]), int(t[1])
    return total / max(n, 1)


def train_fn_per_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    from mdm.platform.train.progress import quiet_ray_console
    from mdm.platform.train.updater import build_updater
    from mdm.platform.registry import auto_import, get_registry, load_builtins
    from mdm.platform.tracking.system_metrics import start_system_metrics
    from mdm.platform.tracking.tracker import RunLogger
    from mdm.platform.train.step_window import StepWindow
    from mdm.platform.tokenizer import load_tokenizer

    sec: WorkerSections = config["sections"]
    run: RunInfo = config["run"]
    quiet_ray_console()
    load_builtins()
    auto_import(sec.auto_import)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    tcfg = sec.train

    spec = get_registry("engines").get(sec.engine)
    tokenizer = load_tokenizer(run.tokenizer, sec.model.trust_remote_code)
    torch.manual_seed(tcfg.seed)  # the same initial weights on every rank
    model = spec.build_model(sec.model, tcfg.model, tokenizer).to(device)
    model.train()
    init_digest = weights_digest(model) if rank == 0 else None
    updater = build_updater(model, sec.deepspeed, tcfg, total_steps=run.total_steps, world_size=world,
                          on_gpu=device.type == "cuda")
    objective = spec.build_objective(tcfg)
    gen = torch.Generator(device=device).manual_seed(tcfg.seed + 1_000_003 * rank)
    logger = RunLogger(run.tracking_uri, run.mlflow_run_id) if rank == 0 and run.mlflow_run_id else None
    prepare_batches = _Shard("prepare", device, prefetch=1)

    state = TrainState()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        state = restore_checkpoint(checkpoint, updater, objective, rank=rank, generator=gen)
    if logger:  # points an earlier attempt logged past the restored step must not stay beside ours
        from mdm.platform.tracking.attempts import begin_attempt

        logger.run_id = begin_attempt(logger.client, logger.run_id, state.step if checkpoint is not None else None)
    if checkpoint is None:
        ppots = objective.prepare(updater.module, prepare_batches, device) or {}
        if logger and ppots:
            logger.metrics(ppots, step=0)
        if logger:
            logger.tags({INIT_TAG: init_digest})

    def report(metrics: dict[str, Any], with_checkpoint: bool, light: bool = False) -> None:
        if not with_checkpoint:
            ray.train.report(metrics)
            return
        if light:  # save_strategy "no": a marker so Result.metrics is filled (Ray only keeps metrics with one)
            import tempfile

            ckpt_dir = tempfile.mkdtemp(prefix="mdm_final_")
            with open(os.path.join(ckpt_dir, f"final_{rank}.txt"), "w") as f:
                f.write(run.export_dir)
            ckpt = ray.train.Checkpoint.from_directory(ckpt_dir)
        else:
            ckpt = save_checkpoint(updater, objective, state, rank=rank, generator=gen)
        try:
            ray.train.report(metrics, checkpoint=ckpt)
        finally:
            cleanup(ckpt)

    # Data position: the restored epoch, minus the micro-batches of it that the restored steps consumed.
    stream = _Shard("train", device).epochs(state.epoch, state.microbatches, run.epochs, tcfg.seed)
    window = {"loss": 0.0, "n": 0, "tokens": 0, "wait": 0.0, "time": 0.0}
    diag = StepWindow()
    last_eval: Optional[float] = state.eval_loss
    last_train: dict[str, float] = {}
    stop_monitor = start_system_metrics(run.tracking_uri, run.mlflow_run_id if logger else None,
                                        run.system_metrics_s)
    while state.step < run.total_steps:
        t0 = time.perf_counter()
        for _ in range(tcfg.grad_accum):
            tw = time.perf_counter()
            item = next(stream, None)
            window["wait"] += time.perf_counter() - tw
            if item is None:
                raise RuntimeError(f"rank {rank}: the training data ran out at step {state.step} of "
                                   f"{run.total_steps} (epoch {state.epoch}, micro-batch {state.microbatches})")
            epoch, mb = item
            if epoch != state.epoch:
                state.epoch, state.microbatches = epoch, 0
            window["tokens"] += int(mb.pop("n_tokens"))
            if logger and state.step == 0 and state.microbatches == 0:
                logger.tags({DATA_TAG: batch_digest(mb)})
            state.microbatches += 1
            loss, loss_metrics = objective.loss(updater.module, mb, gen)
            diag.add_micro(loss_metrics)
            updater.backward(loss)
            updater.step()
            window["loss"] += float(loss.detach())
            window["n"] += 1
        diag.add_step(updater.grad_norm)
        state.step += 1
        window["time"] += time.perf_counter() - t0
        re = objective.maybe_reestimate(state.step, updater.module, prepare_batches, device)
        if logger and re:
            logger.metrics(re, step=state.step)

        final = state.step == run.total_steps
        do_eval = run.has_eval and tcfg.eval_strategy != "no" and (
            final or due(tcfg.eval_strategy, state.step, tcfg.eval_steps, run.steps_per_epoch))
        do_save = tcfg.save_strategy != "no" and not final and due(
            tcfg.save_strategy, state.step, tcfg.save_steps, run.steps_per_epoch)
        do_log = final or do_eval or do_save or state.step % tcfg.logging_steps == 0
        if not do_log:
            continue
        loss_mean, tokens, wait, dt = _mean_over_ranks(
            [window["loss"] / max(window["n"], 1), window["tokens"], window["wait"], window["time"]], world)
        metrics: dict[str, Any] = {
            "step": state.step, "epoch": state.epoch, "total_steps": run.total_steps,
            "train/loss": loss_mean, "train/lr": updater.lr, "train/grad_norm": updater.grad_norm,
            "train/tokens_per_s": tokens * world / max(dt, 1e-9), "train/data_wait_fraction": wait / max(dt, 1e-9)}
        window = {k: 0 * v for k, v in window.items()}
        metrics.update(diag.flush(objective))
        last_train = {k: v for k, v in metrics.items() if k.startswith("train/")}
        if do_eval:
            last_eval = state.eval_loss = _evaluate(objective, updater.module, device, tcfg.seed, rank, world)
            metrics["eval/loss"] = last_eval
        if do_save and run.has_eval and tcfg.eval_strategy != "no":
            if last_eval is None:  # the checkpoint score needs an eval loss
                last_eval = state.eval_loss = _evaluate(objective, updater.module, device, tcfg.seed, rank, world)
            metrics["eval/loss"] = last_eval
        if logger:
            logger.metrics({k: v for k, v in metrics.items() if "/" in k}, step=state.step)
        if not final:
            report(metrics, with_checkpoint=do_save)

    stop_monitor()
    # Final: export, artifacts, and one report with a checkpoint so Result.metrics carries it all.
    # A URI export_dir (the storage root is an object store): written on this node, then uploaded; the MLflow
    # artifacts below are logged from the local copy.
    local_export = export_hf(updater, tokenizer, run.export_dir, rank=rank,
                             zero_stage=sec.deepspeed.zero_stage if sec.deepspeed.enabled else 0)
    if logger:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            plot = objective.save_plot(os.path.join(tmp, "ppots.png")) if hasattr(objective, "save_plot") else None
            if plot:
                logger.artifact(plot)
        logger.artifact(local_export, "final_model")
        if run.model_config_yaml is not None:
            from mdm.platform.tracking.model_log import log_sampler_model

            log_sampler_model(run.tracking_uri, run.mlflow_run_id, local_export, run.model_config_yaml)
    if local_export != run.export_dir:  # a URI export: its local copy (uploaded, logged above) is not kept
        shutil.rmtree(os.path.dirname(local_export), ignore_errors=True)
    final_metrics = {"step": state.step, "epoch": state.epoch, "total_steps": run.total_steps,
                     "optimizer_steps": updater.global_step, "export_dir": run.export_dir}
    if last_eval is not None:
        final_metrics["eval/loss"] = last_eval
    final_metrics.update(last_train)
    report(final_metrics, with_checkpoint=True, light=tcfg.save_strategy == "no")
