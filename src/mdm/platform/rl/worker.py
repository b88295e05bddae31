"""The per-worker function of `mdm rl` (`rl_fn_per_worker`): the SFT worker's parts with rollouts and GRPO.

Like `train.worker.train_fn_per_worker` (the same start, model build, reporter, MLflow session, checkpoints,
graceful stop and export), except that the Trainer's source is a `RolloutSource` over the task's prompts and
its objective is the engine's GRPO objective (`EngineSpec.build_rl_objective`). Rank 0 starts the rollout
actors (`rl.rollout_actors`, outside the worker group's placement group) and pushes its trainable weights to
them through the object store, never through a disk (under DeepSpeed ZeRO-3 every rank first takes part in
gathering them). With `rl.beta` > 0 every rank builds the reference from
the initial weights (the same seed and source as the policy), unless the model has LoRA adapters (then the
reference is the model with them disabled). Rollout tables go to the MLflow run as `rollouts/step_<N>.jsonl`
(and the table `rollouts/step_<N>.json`). After the last step rank 0 measures held-out exact match once more
(`rl/eval_accuracy`, when `rl.eval_steps` > 0) before the export.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import TYPE_CHECKING, Any, Optional, Union

import torch

from mdm.platform.adapter import is_adapter_model
from mdm.platform.rl.rl_config import RLSections
from mdm.platform.rl.rollouts import ActorSpec, RolloutActor, RolloutPool
from mdm.platform.rl.source import Prompt, RolloutSource
from mdm.platform.tracking.session import attach_run
from mdm.platform.train.adapters import trainable_state
from mdm.platform.train.run_spec import RunInfo, WorkerSections
from mdm.platform.train.trainer import Trainer
from mdm.platform.train.worker import RayTrainReporter, build_parts, finish_run, start_worker

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def rl_fn_per_worker(config: dict[str, Union[WorkerSections, RunInfo, RLSections]]) -> None:
    """One Ray Train worker of an `mdm rl` run (see the module docstring)."""
    import ray.train

    from mdm.platform.registry import get_registry

    sec: WorkerSections = config["sections"]  # type: ignore[assignment]
    run: RunInfo = config["run"]  # type: ignore[assignment]
    rls: RLSections = config["rl"]  # type: ignore[assignment]
    rank, world, device = start_worker(sec)
    tokenizer, model, _ = build_parts(sec, run, device)
    spec = get_registry("engines").get(sec.engine)
    objective = spec.build_rl_objective(rls.rl, ref_model=reference(spec, sec, tokenizer, model, rls, device))
    pool = start_pool(sec, run, rls) if rank == 0 else None
    source = rollout_source(sec, rls, tokenizer, model, pool, device, rank, world, run.total_steps)
    session = attach_run(run.tracking_uri, run.mlflow_run_id if rank == 0 else None, run.spool_dir,
                         run.flush_timeout_s)
    reporter = RayTrainReporter(session, rank, run.export_dir, run.run_dir, world, run.stop_marker)
    trainer = Trainer(model, objective, train_cfg=sec.train, ds_cfg=sec.deepspeed, total_steps=run.total_steps,
                      steps_per_epoch=run.steps_per_epoch, source=source, reporter=reporter, device=device,
                      rank=rank, world=world)
    tables = tempfile.mkdtemp(prefix="mdm_rollouts_")
    source.bind(lambda: trainer.state.step, lambda: learner_weights(trainer.module), objective.advantages, reporter.log,
                lambda step, records: session.log_predictions(records, os.path.join(tables, f"step_{step:06d}.jsonl"),
                                                              artifact_dir="rollouts"),
                collective=partitioned(trainer.module))
    try:
        trainer.start(ray.train.get_checkpoint())
        with session.system_metrics(run.system_metrics_s):
            trainer.train()
        if not reporter.stopping:
            if rls.rl.eval_steps:
                source.publish()  # every rank: gathering ZeRO-3's partitioned weights takes them all
                if pool is not None:
                    session.metrics({"rl/eval_accuracy": source.evaluate()}, step=trainer.state.step)
            finish_run(trainer, reporter, session, tokenizer, sec, run)
    finally:
        if pool is not None:
            pool.close()
        session.close()
        shutil.rmtree(tables, ignore_errors=True)


def partitioned(module: torch.nn.Module) -> bool:
    """Whether DeepSpeed ZeRO-3 partitions the module's parameters over the ranks (each holds a shard)."""
    return any(hasattr(p, "ds_id") for p in module.parameters())


def learner_weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What the actors take of the learner (`Trainer.module`, unwrapped): its trainable state
    (`adapters.trainable_state`: all parameters, with LoRA the adapters, plus buffers) as CPU copies. Under
    ZeRO-3 the partitioned parameters are gathered first: a collective call, on every rank at once."""
    state = trainable_state(module)
    gathered = contextlib.nullcontext()
    if partitioned(module):
        import deepspeed

        gathered = deepspeed.zero.GatheredParameters([t for t in state.values() if hasattr(t, "ds_id")])
    with gathered:
        return {n: t.detach().to("cpu", copy=True) for n, t in state.items()}


def reference(spec: Any, sec: WorkerSections, tokenizer: PreTrainedTokenizerBase, model: torch.nn.Module,
              rls: RLSections, device: torch.device) -> Optional[torch.nn.Module]:
    """The frozen reference for the KL term: the initial model built again (None: no KL, or LoRA's base)."""
    if not rls.rl.beta or is_adapter_model(model):
        return None
    torch.manual_seed(sec.train.seed)
    ref = spec.build_model(sec.model, sec.train.model, tokenizer).to(device).eval()
    return ref.requires_grad_(False)


def start_pool(sec: WorkerSections, run: RunInfo, rls: RLSections) -> RolloutPool:
    """Rank 0's rollout actors, scheduled outside the worker group's placement group."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    actor = ActorSpec(engine=sec.engine, auto_import=list(sec.auto_import), model_cfg=sec.model,
                      model=sec.train.model, tokenizer=run.tokenizer, sampler_cfg=rls.sampler, task=rls.task,
                      data_dir=rls.data_dir, num_generations=rls.rl.num_generations,
                      format_reward=rls.rl.format_reward, seed=sec.train.seed, task_args=dict(rls.rl.task_args))
    options = RolloutActor.options(num_cpus=rls.rl.actor_cpus, num_gpus=rls.rl.actor_gpus,
                                   scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=None))
    return RolloutPool(lambda: options.remote(actor), rls.rl.rollout_actors)


def task_prompts(rls: RLSections, tokenizer: PreTrainedTokenizerBase, split: str,
                 limit: Optional[int] = None) -> list[Prompt]:
    """The task's `split` as prompts laid out as training lays them out (`Task.encode_prompts`)."""
    from mdm.platform.registry import get_registry

    task = get_registry("tasks").get(rls.task)(data_dir=rls.data_dir, **rls.rl.task_args)
    examples = list(task.examples(split, limit=limit))
    ids = task.encode_prompts(tokenizer, [e.prompt for e in examples])
    return [Prompt(ids=i, gold=e.gold_raw, text=e.prompt) for i, e in zip(ids, examples)]


def rollout_source(sec: WorkerSections, rls: RLSections, tokenizer: PreTrainedTokenizerBase, model: torch.nn.Module,
                   pool: Optional[RolloutPool], device: torch.device, rank: int, world: int,
                   total_steps: int) -> RolloutSource:
    end = getattr(model.config, "eos_token_id", None)
    end = int(end if end is not None else tokenizer.eos_token_id)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end
    evals = task_prompts(rls, tokenizer, rls.rl.eval_split, rls.rl.eval_prompts) if rls.rl.eval_steps else []
    return RolloutSource(rls.rl, sec.train, task_prompts(rls, tokenizer, rls.rl.split), evals, pool=pool,
                         device=device, rank=rank, world=world, pad_id=int(pad), end_id=end,
                         gen_length=int(rls.sampler.gen_length), total_steps=total_steps)
