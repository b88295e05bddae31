"""`mdm rl`: GRPO on the Ray Train worker group with rollouts on an actor pool, through the `mdm train` driver.

    from mdm.platform.rl.driver import rl_driver
    result = rl_driver(cfg)                       # ray.train.Result; cfg.rl.enabled is set for you

    mdm rl --config experiments/configs/rl_arithmetic.yaml --set rl.logp_estimator=mirror

The driver is `train.driver.train_driver` (lease, Ray, the MLflow run, checkpoints, resume, Ctrl-C) with the
RL workload: no dataset (the prompts are `train.task`'s `rl.split`, read by the workers), `train.max_steps`
optimizer steps, and `rl.worker.rl_fn_per_worker` on every worker. The run name is derived from the config as
for `mdm train` (the `rl` keys are part of it), so the same command resumes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

from mdm.platform.config_ops import with_overrides
from mdm.platform.rl.rl_config import RLSections
from mdm.platform.train.workload import Workload

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from mdm.platform.config import RunConfig


def check_rl(cfg: RunConfig) -> None:
    """ValueError (one line, naming the key) for a config `mdm rl` cannot run."""
    from mdm.platform.registry import get_registry

    tcfg, rl = cfg.train, cfg.rl
    spec = get_registry("engines").get(cfg.engine)
    if spec.build_rl_objective is None:
        raise ValueError(f"engine {cfg.engine!r} has no GRPO objective (EngineSpec.build_rl_objective): it cannot "
                         f"be trained with mdm rl")
    spec.build_rl_objective(rl)  # the engine checks its keys (rl.logp_estimator) now, not in the workers
    if not tcfg.task:
        raise ValueError("train.task is not set: name the task whose prompts and rewards mdm rl trains on")
    try:  # the task as the workers and actors build it: its arguments are checked now
        get_registry("tasks").get(tcfg.task)(data_dir=cfg.data.task_data_dir, **rl.task_args)
    except (TypeError, ValueError) as e:  # an unknown argument, or a value the task refuses
        raise ValueError(f"rl.task_args {dict(rl.task_args)} do not fit task {tcfg.task!r}: {e}") from None
    if tcfg.max_steps <= 0 or tcfg.max_steps % rl.num_iterations:
        raise ValueError(f"train.max_steps ({tcfg.max_steps}) must be > 0 and a multiple of "
                         f"rl.num_iterations ({rl.num_iterations}): each rollout batch gives that many steps")
    if getattr(cfg.sampler, "temperature", None) == 0 and rl.num_generations > 1:
        raise ValueError(f"sampler.temperature is 0: the rl.num_generations ({rl.num_generations}) completions of a "
                         f"prompt would be the same, so no group has an advantage; sample above 0 (d1: 0.9)")
    world = cfg.ray.num_workers
    per_rank, rest = divmod(rl.rollout_size, world)
    want = per_rank // max(1, tcfg.batch_size_per_gpu)
    if rest or per_rank % tcfg.batch_size_per_gpu or want != tcfg.grad_accum:
        raise ValueError(f"a rollout batch of rl.prompts_per_step x rl.num_generations = {rl.rollout_size} "
                         f"sequences on {world} worker(s) must be train.grad_accum x train.batch_size_per_gpu per "
                         f"worker; got {tcfg.grad_accum} x {tcfg.batch_size_per_gpu}"
                         + (f" (set train.grad_accum={want})" if not rest and not per_rank % tcfg.batch_size_per_gpu
                            else ""))


def rl_workload(cfg: RunConfig, tokenizer: PreTrainedTokenizerBase) -> Workload:
    """The RL side of the driver (train/workload.py): a step plan from train.max_steps and the RL worker."""
    from mdm.platform.rl.worker import rl_fn_per_worker

    rl = cfg.rl
    total = cfg.train.max_steps
    sections = RLSections(rl=rl, sampler=cfg.sampler, task=cfg.train.task, data_dir=cfg.data.task_data_dir)
    summary = (f"GRPO on {cfg.train.task} ({rl.split}): {total // rl.num_iterations} rollout batches of "
               f"{rl.prompts_per_step} prompts x {rl.num_generations} completions ({cfg.sampler.name} sampler, "
               f"{rl.rollout_actors} actor(s), staleness <= {rl.max_staleness})")
    return Workload(total=total, per_epoch=total, epochs=1, summary=summary, train_fn=rl_fn_per_worker,
                    loop_config={"rl": sections})


def driver_for(cfg: RunConfig) -> Callable[..., Any]:
    """The driver that trains `cfg`: `rl_driver` when `rl.enabled`, else `train_driver` (what a sweep's or a
    comparison's trial runs, so both sweep RL keys as they sweep SFT ones)."""
    from mdm.platform.train.driver import train_driver

    return rl_driver if cfg.rl.enabled else train_driver


def rl_driver(cfg: RunConfig, *, run_name: Optional[str] = None, **kwargs: Any) -> Any:
    """`mdm rl` (see the module docstring); keyword arguments as `train_driver`'s."""
    from mdm.platform.train.driver import train_driver

    if not cfg.rl.enabled:
        cfg = with_overrides(cfg, {"rl.enabled": True})
    check_rl(cfg)
    return train_driver(cfg, run_name=run_name, workload=rl_workload, **kwargs)
